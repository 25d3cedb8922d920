//! The `assignment` section: automatic assignment under a stream of new leads. One
//! organisation, 200 available agents of equal capacity, policy balanced; new leads arrive
//! through the real ingest path at full speed and the in-process assignment service hands them
//! out. Measured: assignments per second beside raw Postgres transactions of the same rows and
//! commits (same run, scratch schema), lead created -> assigned percentiles, agents' loads
//! sampled throughout (never over capacity, even at the end), every lead assigned once.

use super::{
    Args,
    events::{ACK_WINDOW, Prepared, Publisher, prepare},
    production_env,
    report::{Report, loadavg, machine_cpu_seconds, ms, process_cpu_seconds, progress, rate, stats, thousands},
};
use chrono::{DateTime, Utc};
use leads_tests::{Node, TestEnv, chat_event, pb, phone};
use platform::{ServiceName, settings::ExposeSecret};
use sqlx::Connection as _;
use std::time::{Duration, Instant};

const ORG: &str = "assign-org";
const AGENTS: usize = 200;
const CAPACITY: i32 = 600;
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Agents' clients renew their presence well inside the grace period.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// Raw assignments measured at most: enough for a steady rate, short beside the run.
const RAW_ASSIGNMENTS: u64 = 5_000;

type AssignmentClient = pb::assignment_service_client::AssignmentServiceClient<tonic::transport::Channel>;

pub async fn assignment(report: &mut Report, args: &Args) -> anyhow::Result<()> {
    let load = loadavg();
    let mut env = production_env().await?;
    // The sweep settles stale reservations and looks for untouched leads; neither happens here.
    env.settings.assignment.sweep_interval_secs = 5;
    let node = match env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Assignment]).await {
        Ok(node) => node,
        Err(error) => {
            env.cleanup().await?;
            return Err(error);
        }
    };
    let result = assignment_in(report, args, &env, &node, load).await;
    let stopped = node.stop().await;
    env.cleanup().await?;
    result?;
    stopped
}

fn agent_id(i: usize) -> String {
    format!("agent-{i:03}")
}

/// Agents' open leads as the lead service has them, sampled until every lead is assigned.
struct Loads {
    samples: usize,
    max_seen: i64,
    /// At the end: (max, min) over every agent, counting agents holding none.
    last_max: i64,
    last_min: i64,
    assigned: i64,
    /// What the assignment and lead services' connections were running at each sample:
    /// (service, statement's start, wait event) -> samples.
    running: std::collections::HashMap<(String, String, String), usize>,
}

async fn assignment_in(
    report: &mut Report,
    args: &Args,
    env: &TestEnv,
    node: &Node,
    load: String,
) -> anyhow::Result<()> {
    let n = args.assign_leads;
    let admin = env.admin_pool().await?;
    let assignments = node.assignment().await?;
    set_up_desk(&assignments).await?;
    let raw = raw_assignments(env, n.min(RAW_ASSIGNMENTS)).await?;
    let empty_count = time_load_count(&admin).await?;
    progress(format!("assignment: raw {} per assignment; publishing {n} new leads", ms(raw)));

    let heartbeat = {
        let assignments = assignments.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                if let Err(error) = set_available(&assignments).await {
                    progress(format!("assignment: heartbeat failed: {error:#}"));
                }
            }
        })
    };
    let events: Vec<Prepared> = (0..n)
        .map(|i| prepare(env, ORG, &chat_event(&format!("assign-{i:07}"), &phone(i as u32), "hello, is it free?")))
        .collect();
    let cpu_machine = machine_cpu_seconds();
    let cpu_process = process_cpu_seconds(std::process::id());
    let started = Instant::now();
    let sampler = tokio::spawn(sample_loads(admin.clone(), n as i64, deadline_for(n)));
    let mut publisher = Publisher::new(env.js.clone(), ACK_WINDOW);
    for p in events {
        publisher.publish(p.subject, &p.event_id, p.payload).await?;
    }
    publisher.drain().await?;
    let published = started.elapsed();
    progress(format!("assignment: published in {:.2} s; waiting for every lead's agent", published.as_secs_f64()));
    let loads = sampler.await??;
    let wall = started.elapsed();
    let cpu_machine = machine_cpu_seconds() - cpu_machine;
    let cpu_process = process_cpu_seconds(std::process::id()) - cpu_process;
    heartbeat.abort();
    let full_count = time_load_count(&admin).await?;

    let outcome = outcome(&admin).await?;
    admin.close().await;
    let elapsed = outcome.last_assigned.signed_duration_since(outcome.first_created).to_std().unwrap_or_default();
    let per_s = rate(outcome.assignments as u64, elapsed);
    let raw_per_s = 1.0 / raw.as_secs_f64();
    progress(format!(
        "assignment: {} assignments in {:.2} s = {per_s:.0}/s",
        outcome.assignments,
        elapsed.as_secs_f64()
    ));

    report.line("## 7. Automatic assignment\n");
    report.line(format!("Load average before: {load}\n"));
    report.line(format!(
        "One organisation, {AGENTS} agents of capacity {CAPACITY}, all available (presence renewed every {} s), \
         policy balanced. {} new leads, one per new contact, published to `interactions.<org>` at full speed \
         ({ACK_WINDOW} acks in flight; all published after {:.2} s) and carried by the ingest, lead and assignment \
         services in this process (production consumer settings, pools of {} connections). The dispatcher \
         (`services/assignment/src/auto.rs`) works in batches of up to 100 leads: one reservation under the \
         organisation's lock (the agents' load counters read, the leads chosen, their slots reserved, one \
         commit), AssignLeads over gRPC to the lead service per lead, 16 in flight (lead row updated, history \
         row and event, one commit each), and the answers recorded in one commit (assignment history rows, \
         the waiting rows deleted). The raw part is the old serial chain, kept as the yardstick: the same rows \
         with plain SQL on one connection, on a scratch schema of the same database: `UPDATE` of the \
         reserve row, `COMMIT`; `UPDATE` of the lead row and `INSERT` of its history row, `COMMIT`; `INSERT` of a \
         history row and `DELETE` of the reserve row, `COMMIT` ({} assignments).\n",
        HEARTBEAT_EVERY.as_secs(),
        thousands(n as f64),
        published.as_secs_f64(),
        env.settings.database_max_connections,
        thousands(n.min(RAW_ASSIGNMENTS) as f64),
    ));
    report.line("| measure | value |\n| --- | ---: |");
    report.line(format!(
        "| **assignments per second** (first lead created -> last assigned: {} in {:.2} s) | **{}/s** ({} each) |",
        thousands(outcome.assignments as f64),
        elapsed.as_secs_f64(),
        thousands(per_s),
        ms(elapsed.checked_div(outcome.assignments.max(1) as u32).unwrap_or_default()),
    ));
    report.line(format!(
        "| raw: three commits of the same rows, one connection | {}/s ({} each) |",
        thousands(raw_per_s),
        ms(raw)
    ));
    report.line(format!("| **ratio to raw** | **{:.3}** |", per_s / raw_per_s));
    report.line(format!(
        "| first tenth of the assignments / last tenth | {}/s / {}/s |",
        thousands(outcome.first_tenth_per_s),
        thousands(outcome.last_tenth_per_s)
    ));
    report.line(format!(
        "| the reservation's read of {AGENTS} agents' load counters, no lead held / all held | {} / {} |",
        ms(empty_count),
        ms(full_count)
    ));
    let latency = &outcome.latency;
    report.line(format!(
        "| lead created -> assigned (lead's `created_at` to its assignment's `at`), p50 / p99 / max | **{}** / **{}** / {} |",
        ms(latency.p50),
        ms(latency.p99),
        ms(latency.max)
    ));
    report.line(format!(
        "| machine CPU busy while running (2 cores = 200%) / this process's share (services, publisher, sampler) | {:.0}% / {:.0}% |",
        cpu_machine / wall.as_secs_f64() * 100.0,
        cpu_process / wall.as_secs_f64() * 100.0
    ));
    report.line(format!(
        "| agents' open leads, sampled every {} ms ({} samples): most seen on one agent / capacity | {} / {CAPACITY} |",
        SAMPLE_EVERY.as_millis(),
        loads.samples,
        loads.max_seen
    ));
    report.line(format!(
        "| at the end: most and fewest open leads of an agent (differ by at most one) | {} and {} |",
        loads.last_max, loads.last_min
    ));
    report.line(format!(
        "| leads / assigned / automatic assignments / leads assigned more than once | {} / {} / {} / {} |\n",
        thousands(outcome.leads as f64),
        thousands(loads.assigned as f64),
        thousands(outcome.assignments as f64),
        outcome.assignments - outcome.distinct_leads,
    ));
    report.line(running_table(&loads));
    let spread_ok = loads.last_max - loads.last_min <= 1;
    let once = outcome.assignments == outcome.distinct_leads && outcome.distinct_leads == n as i64;
    report.target(
        "Automatic assignment: capacity never exceeded, equal agents within one lead",
        format!("<= {CAPACITY} open each; max - min <= 1"),
        format!("{} at most; {} - {}", loads.max_seen, loads.last_max, loads.last_min),
        loads.max_seen <= i64::from(CAPACITY) && spread_ok,
    );
    report.target(
        "Automatic assignment: every lead assigned, none twice",
        format!("{} of {}", thousands(n as f64), thousands(n as f64)),
        format!("{} assigned, {} assignments", thousands(loads.assigned as f64), thousands(outcome.assignments as f64)),
        once && loads.assigned == n as i64,
    );
    Ok(())
}

/// The statements most often found running in the services' connections, as a share of the
/// samples: where the serial chain of an assignment spends its time in Postgres.
fn running_table(loads: &Loads) -> String {
    let mut rows: Vec<(&(String, String, String), &usize)> = loads.running.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let mut out = format!(
        "Statements found running in the assignment and lead services' connections at the {} samples \
         (`pg_stat_activity`, state active; a statement in several samples ran long or often):\n\n\
         | service | statement starts | waiting on | share of samples |\n| --- | --- | --- | ---: |\n",
        loads.samples
    );
    for ((service, statement, wait), count) in rows.into_iter().take(8) {
        out.push_str(&format!(
            "| {service} | `{}` | {wait} | {:.0}% |\n",
            statement.replace('|', "/").replace('`', "'"),
            *count as f64 / loads.samples.max(1) as f64 * 100.0
        ));
    }
    out
}

/// Long enough for the slowest rate worth reporting (50 assignments/s).
fn deadline_for(leads: u64) -> Duration {
    Duration::from_secs(120 + leads / 50)
}

async fn set_up_desk(assignments: &AssignmentClient) -> anyhow::Result<()> {
    progress(format!("assignment: {AGENTS} agents of capacity {CAPACITY}, policy balanced"));
    for i in 0..AGENTS {
        let request = pb::UpsertAgentRequest {
            org_id: ORG.into(),
            agent_id: agent_id(i),
            name: format!("Agent {i}"),
            capacity: Some(CAPACITY),
            ..Default::default()
        };
        assignments.clone().upsert_agent(request).await?;
    }
    set_available(assignments).await?;
    let request = pb::UpdateAssignmentSettingsRequest {
        org_id: ORG.into(),
        policy: pb::AssignmentPolicy::Balanced as i32,
        default_capacity: CAPACITY,
        expected_version: None,
        ..Default::default()
    };
    assignments.clone().update_assignment_settings(request).await?;
    Ok(())
}

async fn set_available(assignments: &AssignmentClient) -> anyhow::Result<()> {
    for i in 0..AGENTS {
        let request = pb::SetPresenceRequest {
            org_id: ORG.into(),
            agent_id: agent_id(i),
            presence: pb::Presence::Available as i32,
        };
        assignments.clone().set_presence(request).await?;
    }
    Ok(())
}

/// Reads every agent's open leads every `SAMPLE_EVERY` until `total` leads are assigned.
async fn sample_loads(admin: sqlx::PgPool, total: i64, deadline: Duration) -> anyhow::Result<Loads> {
    let started = Instant::now();
    let mut loads =
        Loads { samples: 0, max_seen: 0, last_max: 0, last_min: 0, assigned: 0, running: Default::default() };
    loop {
        let tick = Instant::now();
        let held: Vec<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM lead.leads WHERE org_id = $1 AND active AND agent_id IS NOT NULL GROUP BY agent_id",
        )
        .bind(ORG)
        .fetch_all(&admin)
        .await?;
        loads.samples += 1;
        let running: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT application_name, left(regexp_replace(query, '\\s+', ' ', 'g'), 40), \
               coalesce(wait_event_type || ':' || wait_event, 'cpu') \
             FROM pg_stat_activity \
             WHERE datname = current_database() AND state = 'active' \
               AND application_name IN ('leads-assignment', 'leads-lead')",
        )
        .fetch_all(&admin)
        .await?;
        for key in running {
            *loads.running.entry(key).or_default() += 1;
        }
        loads.max_seen = loads.max_seen.max(held.iter().copied().max().unwrap_or(0));
        loads.assigned = held.iter().sum();
        if loads.assigned >= total {
            loads.last_max = held.iter().copied().max().unwrap_or(0);
            // An agent holding none is missing from the rows.
            loads.last_min = if held.len() < AGENTS { 0 } else { held.iter().copied().min().unwrap_or(0) };
            return Ok(loads);
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "only {} of {total} leads assigned after {} s",
            loads.assigned,
            deadline.as_secs()
        );
        tokio::time::sleep(SAMPLE_EVERY.saturating_sub(tick.elapsed())).await;
    }
}

/// What the lead service recorded of the run.
struct Outcome {
    leads: i64,
    assignments: i64,
    distinct_leads: i64,
    first_created: DateTime<Utc>,
    last_assigned: DateTime<Utc>,
    first_tenth_per_s: f64,
    last_tenth_per_s: f64,
    latency: super::report::Stats,
}

async fn outcome(admin: &sqlx::PgPool) -> anyhow::Result<Outcome> {
    let leads: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lead.leads WHERE org_id = $1").bind(ORG).fetch_one(admin).await?;
    let rows: Vec<(uuid::Uuid, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT c.lead_id, l.created_at, c.at FROM lead.assignment_changes c JOIN lead.leads l ON l.id = c.lead_id \
         WHERE c.org_id = $1 AND c.actor = 'system' ORDER BY c.at, c.id",
    )
    .bind(ORG)
    .fetch_all(admin)
    .await?;
    anyhow::ensure!(!rows.is_empty(), "no automatic assignment recorded");
    let distinct = rows.iter().map(|(id, _, _)| *id).collect::<std::collections::HashSet<_>>().len();
    let first_created = rows.iter().map(|(_, created, _)| *created).min().unwrap_or_default();
    let last_assigned = rows.iter().map(|(_, _, at)| *at).max().unwrap_or_default();
    let tenth = (rows.len() / 10).max(1);
    let span_rate = |from: DateTime<Utc>, to: DateTime<Utc>| {
        rate(tenth as u64, to.signed_duration_since(from).to_std().unwrap_or_default())
    };
    let first_tenth_per_s = span_rate(first_created, rows[tenth - 1].2);
    let last_tenth_per_s = span_rate(rows[rows.len() - tenth - 1].2.max(first_created), last_assigned);
    let latency = stats(
        rows.iter().map(|(_, created, at)| at.signed_duration_since(*created).to_std().unwrap_or_default()).collect(),
    );
    Ok(Outcome {
        leads,
        assignments: rows.len() as i64,
        distinct_leads: distinct as i64,
        first_created,
        last_assigned,
        first_tenth_per_s,
        last_tenth_per_s,
        latency,
    })
}

/// The agents' loads as a reservation reads them (the counters, as `auto::reserve_batch` does),
/// timed over ten runs (median) on the admin pool.
async fn time_load_count(admin: &sqlx::PgPool) -> anyhow::Result<Duration> {
    let mut samples = Vec::with_capacity(10);
    for _ in 0..10 {
        let at = Instant::now();
        let _: Vec<(String, i64)> = sqlx::query_as(
            "SELECT a.agent_id, coalesce(c.held + c.reserved, 0) - coalesce(twice.leads, 0) AS load \
             FROM assignment.agents a \
             LEFT JOIN (SELECT agent_id, held, reserved FROM assignment.agent_loads_now WHERE org_id = $1) c \
               ON c.agent_id = a.agent_id \
             LEFT JOIN (SELECT w.reserved_for AS agent_id, count(*) AS leads FROM assignment.waiting_leads w \
                        JOIN assignment.lead_agents l ON l.org_id = w.org_id AND l.lead_id = w.lead_id \
                          AND l.agent_id = w.reserved_for AND l.active \
                        WHERE w.org_id = $1 AND w.reserved_for IS NOT NULL GROUP BY w.reserved_for) twice \
               ON twice.agent_id = a.agent_id \
             WHERE a.org_id = $1 AND a.active",
        )
        .bind(ORG)
        .fetch_all(admin)
        .await?;
        samples.push(at.elapsed());
    }
    Ok(stats(samples).p50)
}

/// The rows and commits of one automatic assignment in plain SQL, one assignment after the
/// other on one connection as the dispatcher does; answers the mean time of one assignment.
async fn raw_assignments(env: &TestEnv, count: u64) -> anyhow::Result<Duration> {
    let options = platform::db::connect_options(env.settings.database_url.expose_secret())?;
    let mut conn = sqlx::PgConnection::connect_with(&options).await?;
    for statement in [
        "CREATE SCHEMA raw_assign",
        "CREATE TABLE raw_assign.waiting (id bigint PRIMARY KEY, reserved_for text, reserved_at timestamptz)",
        "CREATE TABLE raw_assign.leads (id bigint PRIMARY KEY, agent_id text, version bigint NOT NULL, \
         updated_at timestamptz NOT NULL DEFAULT now())",
        "CREATE TABLE raw_assign.history (id bigserial PRIMARY KEY, lead bigint NOT NULL, agent_id text, \
         at timestamptz NOT NULL)",
    ] {
        sqlx::query(statement).execute(&mut conn).await?;
    }
    let count = count as i64;
    sqlx::query("INSERT INTO raw_assign.waiting (id) SELECT generate_series(1, $1)")
        .bind(count)
        .execute(&mut conn)
        .await?;
    sqlx::query("INSERT INTO raw_assign.leads (id, version) SELECT generate_series(1, $1), 1")
        .bind(count)
        .execute(&mut conn)
        .await?;
    let started = Instant::now();
    for id in 1..=count {
        let agent = agent_id(id as usize % AGENTS);
        let mut tx = conn.begin().await?;
        sqlx::query("UPDATE raw_assign.waiting SET reserved_for = $2, reserved_at = now() WHERE id = $1")
            .bind(id)
            .bind(&agent)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "UPDATE raw_assign.leads SET agent_id = $2, version = version + 1, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(&agent)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO raw_assign.history (lead, agent_id, at) VALUES ($1, $2, now())")
            .bind(id)
            .bind(&agent)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("INSERT INTO raw_assign.history (lead, agent_id, at) VALUES ($1, $2, now())")
            .bind(id)
            .bind(&agent)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM raw_assign.waiting WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
    }
    let elapsed = started.elapsed();
    sqlx::query("DROP SCHEMA raw_assign CASCADE").execute(&mut conn).await?;
    conn.close().await?;
    Ok(elapsed / count.max(1) as u32)
}
