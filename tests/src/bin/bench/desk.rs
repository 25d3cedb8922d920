//! The `desk` section: what an operator's desk does besides the Leads page. Assigning leads
//! (one at a time and in bulk), creating follow-ups and the scheduler bringing them due, each
//! through gRPC to the in-process services, beside the raw Postgres transaction of the same
//! shape (lock a row, update it, insert a history row and an outbox row, commit) measured in
//! the same run.

use super::report::{Stats, loadavg, ms, progress, rate, stats, thousands};
use futures::StreamExt;
use leads_tests::{desk::Desk, eventually, pb};
use platform::{ServiceName, settings::ExposeSecret};
use std::time::{Duration, Instant};

const ORG: &str = "desk-org";
/// Concurrent callers, as a busy desk of operators would be.
const CALLERS: usize = 8;

pub struct DeskOptions {
    /// Leads created (through ingest) before the measurements.
    pub leads: u32,
    /// Single AssignLead calls, and CreateFollowUp calls.
    pub requests: usize,
}

pub async fn run(options: &DeskOptions) -> anyhow::Result<String> {
    // Before the services start: what the machine was doing before this section.
    let load = loadavg();
    let desk =
        Desk::start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Assignment, ServiceName::FollowUp]).await?;
    let result = run_in(&desk, options, load).await;
    desk.stop().await?;
    result
}

fn stats_row(what: &str, samples: Vec<Duration>, elapsed: Duration) -> String {
    let Stats { n, p50, p99, max, .. } = stats(samples);
    format!("| {what} | {n} | {} /s | {} | {} | {} |", thousands(rate(n as u64, elapsed)), ms(p50), ms(p99), ms(max))
}

/// Runs `calls` requests with `CALLERS` in flight, timing each.
async fn timed<F, Fut>(calls: usize, call: F) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let samples = futures::stream::iter(0..calls)
        .map(|i| {
            let request = call(i);
            async move {
                let at = Instant::now();
                request.await.map(|()| at.elapsed())
            }
        })
        .buffer_unordered(CALLERS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((samples, started.elapsed()))
}

async fn run_in(desk: &Desk, options: &DeskOptions, load: String) -> anyhow::Result<String> {
    let admin = desk.env.admin_pool().await?;
    let assignments = desk.node.assignment().await?;
    let ids = seed_leads_and_agents(desk, &assignments, options).await?;
    let raw = measure_raw_transactions(&desk.env, &admin, options).await?;
    let single = measure_single_assignments(&assignments, &ids, options.requests).await?;
    let bulk = measure_bulk_assignment(&assignments, &ids).await?;
    let follow_ups = measure_follow_ups(&desk.node, &admin, &ids, options.requests, single.elapsed).await?;
    admin.close().await;
    Ok(report(options, &load, raw, single, &bulk, follow_ups))
}

type AssignmentClient = pb::assignment_service_client::AssignmentServiceClient<tonic::transport::Channel>;

/// Calls timed one by one, and the time all of them took.
struct Timed {
    samples: Vec<Duration>,
    elapsed: Duration,
}

/// The raw Postgres transaction of an assignment's shape, and the raw single UPDATE of as
/// many rows as a bulk assignment.
struct RawFigures {
    samples: Vec<Duration>,
    elapsed: Duration,
    bulk: Duration,
}

struct BulkFigures {
    leads: usize,
    changed: usize,
    elapsed: Duration,
}

/// CreateFollowUp calls, and how long after their due instant every one was marked due.
struct FollowUpFigures {
    samples: Vec<Duration>,
    elapsed: Duration,
    due: Duration,
    total: i64,
}

/// Leads created through ingest and two agents to assign them to; answers the leads' ids.
async fn seed_leads_and_agents(
    desk: &Desk,
    assignments: &AssignmentClient,
    options: &DeskOptions,
) -> anyhow::Result<Vec<String>> {
    progress(format!("desk: ingesting {} leads", options.leads));
    let leads = desk.ingest_leads(ORG, options.leads, "hello", Duration::from_secs(300)).await?;
    for agent in ["ann", "bob"] {
        let request = pb::UpsertAgentRequest {
            org_id: ORG.into(),
            agent_id: agent.into(),
            name: agent.into(),
            ..Default::default()
        };
        assignments.clone().upsert_agent(request).await?;
    }
    Ok(leads.iter().map(|l| l.id.clone()).collect())
}

/// The raw transaction: what one assignment costs Postgres at the least.
async fn measure_raw_transactions(
    env: &leads_tests::TestEnv,
    admin: &sqlx::PgPool,
    options: &DeskOptions,
) -> anyhow::Result<RawFigures> {
    sqlx::query("CREATE TABLE raw_desk (id bigint PRIMARY KEY, agent text, version bigint NOT NULL DEFAULT 1)")
        .execute(admin)
        .await?;
    sqlx::query("CREATE TABLE raw_desk_history (id bigserial PRIMARY KEY, lead bigint, agent text, at timestamptz)")
        .execute(admin)
        .await?;
    sqlx::query("INSERT INTO raw_desk (id) SELECT generate_series(0, $1)")
        .bind(i64::from(options.leads))
        .execute(admin)
        .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(CALLERS as u32)
        .connect_with(platform::db::connect_options(env.settings.database_url.expose_secret())?)
        .await?;
    let leads_count = i64::from(options.leads);
    let (raw_samples, raw_elapsed) = timed(options.requests, |i| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await?;
            let id = i as i64 % leads_count;
            sqlx::query("SELECT version FROM raw_desk WHERE id = $1 FOR UPDATE").bind(id).fetch_one(&mut *tx).await?;
            sqlx::query("UPDATE raw_desk SET agent = 'x', version = version + 1 WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO raw_desk_history (lead, agent, at) VALUES ($1, 'x', now()), ($1, 'outbox', now())",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        }
    })
    .await?;
    let raw_bulk_started = Instant::now();
    sqlx::query("UPDATE raw_desk SET agent = 'y', version = version + 1 WHERE id = ANY($1)")
        .bind((0..leads_count).collect::<Vec<i64>>())
        .execute(&pool)
        .await?;
    let bulk = raw_bulk_started.elapsed();
    pool.close().await;
    Ok(RawFigures { samples: raw_samples, elapsed: raw_elapsed, bulk })
}

async fn measure_single_assignments(
    assignments: &AssignmentClient,
    ids: &[String],
    requests: usize,
) -> anyhow::Result<Timed> {
    progress("desk: single assignments");
    let (assign_samples, assign_elapsed) = timed(requests, |i| {
        let mut client = assignments.clone();
        let lead_id = ids[i % ids.len()].clone();
        async move {
            let request = pb::AssignLeadRequest {
                org_id: ORG.into(),
                lead_id,
                agent_id: if i % 2 == 0 { "ann".into() } else { "bob".into() },
                actor: "bench".into(),
                ..Default::default()
            };
            client.assign_lead(request).await?;
            Ok(())
        }
    })
    .await?;
    Ok(Timed { samples: assign_samples, elapsed: assign_elapsed })
}

async fn measure_bulk_assignment(assignments: &AssignmentClient, ids: &[String]) -> anyhow::Result<BulkFigures> {
    progress("desk: bulk assignment");
    let bulk_started = Instant::now();
    let bulk = assignments
        .clone()
        .bulk_assign(pb::BulkAssignRequest {
            org_id: ORG.into(),
            lead_ids: ids.to_vec(),
            agent_id: "ann".into(),
            actor: "bench".into(),
            reason: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let bulk_elapsed = bulk_started.elapsed();
    let changed = bulk.results.iter().filter(|r| r.outcome == pb::BulkOutcome::Changed as i32).count();
    Ok(BulkFigures { leads: ids.len(), changed, elapsed: bulk_elapsed })
}

/// CreateFollowUp for follow-ups due at one instant, then the scheduler bringing them all due.
async fn measure_follow_ups(
    node: &leads_tests::Node,
    admin: &sqlx::PgPool,
    ids: &[String],
    requests: usize,
    assign_elapsed: Duration,
) -> anyhow::Result<FollowUpFigures> {
    progress("desk: follow-ups");
    let follow_ups = node.follow_up().await?;
    // Whole seconds, as the request carries them: the instant the follow-ups come due, far
    // enough ahead that creating them all ends before it (twice what as many assignments took).
    let lead_time = chrono::Duration::seconds(5) + chrono::Duration::from_std(assign_elapsed * 2)?;
    let due = chrono::DateTime::from_timestamp((chrono::Utc::now() + lead_time).timestamp(), 0)
        .unwrap_or_else(chrono::Utc::now);
    let (create_samples, create_elapsed) = timed(requests, |i| {
        let mut client = follow_ups.clone();
        let lead_id = ids[i % ids.len()].clone();
        async move {
            let request = pb::CreateFollowUpRequest {
                org_id: ORG.into(),
                lead_id,
                due_at: Some(prost_types::Timestamp { seconds: due.timestamp(), nanos: 0 }),
                note: format!("call back {i}"),
                actor: "bench".into(),
                ..Default::default()
            };
            client.create_follow_up(request).await?;
            Ok(())
        }
    })
    .await?;
    let created_due: i64 =
        sqlx::query_scalar("SELECT count(*) FROM followup.follow_ups WHERE state = 'due'").fetch_one(admin).await?;
    anyhow::ensure!(created_due == 0, "follow-ups came due before their time");
    let wait_due = (due - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait_due).await;
    let due_started = Instant::now();
    let total = requests as i64;
    eventually(Duration::from_secs(300), "every follow-up due", || {
        let admin = admin.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM followup.follow_ups WHERE state = 'due'")
                .fetch_one(&admin)
                .await
                .ok()?;
            (n == total).then_some(())
        }
    })
    .await;
    let due_elapsed = due_started.elapsed();
    Ok(FollowUpFigures { samples: create_samples, elapsed: create_elapsed, due: due_elapsed, total })
}

fn report(
    options: &DeskOptions,
    load: &str,
    raw: RawFigures,
    single: Timed,
    bulk: &BulkFigures,
    follow_ups: FollowUpFigures,
) -> String {
    let raw_rate = rate(raw.samples.len() as u64, raw.elapsed);
    let assign_rate = rate(single.samples.len() as u64, single.elapsed);
    let create_rate = rate(follow_ups.samples.len() as u64, follow_ups.elapsed);
    let mut out = String::from("## 5. Assignment and follow-ups\n\n");
    out.push_str(&format!("Load average before: {load}\n\n"));
    out.push_str(&format!(
        "{} leads in `{ORG}`, created through ingest; {CALLERS} callers in flight; services in this process, \
         called over gRPC on loopback. The raw row is one Postgres transaction on a connection pool of \
         {CALLERS}: `SELECT ... FOR UPDATE`, `UPDATE`, an `INSERT` of two rows, `COMMIT` (what an assignment \
         needs at the least: the lead, its history row and its outbox row).\n\n",
        thousands(f64::from(options.leads))
    ));
    out.push_str("| request | n | throughput | p50 | p99 | max |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
    out.push_str(&stats_row("raw Postgres transaction (lock, update, insert)", raw.samples, raw.elapsed));
    out.push('\n');
    out.push_str(&stats_row("AssignLead (agent checked, lead assigned, history kept)", single.samples, single.elapsed));
    out.push('\n');
    out.push_str(&stats_row(
        "CreateFollowUp (lead gate, follow-up kept with contact)",
        follow_ups.samples,
        follow_ups.elapsed,
    ));
    out.push_str("\n\n");
    out.push_str(&format!(
        "- AssignLead: {:.2} of the raw transaction's rate; CreateFollowUp: {:.2}.\n",
        assign_rate / raw_rate,
        create_rate / raw_rate
    ));
    out.push_str(&format!(
        "- BulkAssign of {} leads in one call ({} changed): {} ({} leads/s); the raw single UPDATE of \
         as many rows: {} ({:.2} of its speed).\n",
        thousands(bulk.leads as f64),
        bulk.changed,
        ms(bulk.elapsed),
        thousands(rate(bulk.leads as u64, bulk.elapsed)),
        ms(raw.bulk),
        raw.bulk.as_secs_f64() / bulk.elapsed.as_secs_f64()
    ));
    out.push_str(&format!(
        "- {} follow-ups due at one instant were all marked due and announced {} after it (the scheduler \
         looks every {} ms).\n\n",
        thousands(follow_ups.total as f64),
        ms(follow_ups.due),
        followup::DUE_TICK.as_millis()
    ));
    out
}
