//! Section 4 of `make bench`: broadcast tracking, against the real Postgres and NATS.
//!
//! In one run:
//! 1. Raw baseline: the same status rows upserted straight into a table shaped like
//!    `broadcast.statuses` (UNNEST batches of 1000, `ON CONFLICT DO NOTHING`), on 1 and on 4
//!    connections.
//! 2. Sustained ingestion: BroadcastMessages and DeliveryStatuses (repeats, shuffled, statuses
//!    before their message, as in the crash test; fixed seed) published to JetStream with the
//!    broadcast service running in-process, timed from the first publish until every distinct
//!    (message, status) is committed.
//! 3. Reads under load: GetBroadcastHistory (by lead, through the `lead_contacts` projection
//!    seeded with SQL) and GetCampaignStats every 20 ms while 2. runs, then the same idle.
//! 4. Backlog drain: the status events published with the service stopped, then the service
//!    started and timed until everything is committed.
//!
//! Self-contained: call [`run`] and append the markdown it returns to the report. Progress goes
//! to stderr. Every environment is dropped afterwards, also after a failure.

use super::{
    production_env,
    raw::raw_consume,
    report::{Stats, Target, loadavg, machine_cpu_seconds, micros, ms, progress, rate, target_rows, thousands},
};
use anyhow::bail;
use async_nats::{HeaderMap, Subject, jetstream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use leads_tests::{
    TestEnv,
    broadcast_gen::{
        self, CAMPAIGNS, Event, FAILED, error_of, headers, message_id, publish_windowed, sent_at, status_name,
    },
    pb, raw_pg,
};
use platform::{ServiceName, nats::StreamKind};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::{
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

/// Sizes of the broadcast section. The defaults are the sizes its targets are stated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastOptions {
    /// BroadcastMessages in the sustained run.
    pub messages: u64,
    /// DeliveryStatus events (distinct ones plus repeats) in the sustained run.
    pub statuses: u64,
    /// DeliveryStatus events in the backlog drain; its messages are in the same proportion to
    /// them as in the sustained run (1,200,000 for 4,000,000 at the defaults).
    pub backlog_statuses: u64,
    /// Items per NATS message: 1 publishes each message and status on its own as the contract
    /// has it; more publishes them in batches on `broadcasts.<org>.messages|statuses.batch`.
    pub batch: usize,
}

impl Default for BroadcastOptions {
    fn default() -> Self {
        Self { messages: 300_000, statuses: 1_000_000, backlog_statuses: 4_000_000, batch: 1 }
    }
}

const ORGS: [&str; 3] = ["bc-org-a", "bc-org-b", "bc-org-c"];
/// Publish acks awaited at most this far behind the publishes (as in the crash test).
const ACK_WINDOW: usize = 4_000;
const RAW_BATCH: usize = 1_000;
/// How often completion is polled.
const POLL: Duration = Duration::from_millis(50);
/// How often the reader issues its requests, during ingestion and idle.
const READ_EVERY: Duration = Duration::from_millis(20);
/// Requests of each kind measured on the idle system.
const IDLE_REQUESTS: usize = 200;
/// The broadcast-tracking targets.
const TARGET_EVENTS_PER_S: f64 = 50_000.0;
const TARGET_RATIO: f64 = 0.5;

/// Runs the whole broadcast section and returns its markdown (`## 4. Broadcast tracking`).
pub async fn run(options: &BroadcastOptions) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut out = Out { batch: options.batch, ..Out::default() };
    if options.batch > 1 {
        out.line(format!(
            "## 4b. Broadcast tracking, in batches of {} \n\nThe same as section 4, but messages and \
             statuses published {} to a NATS message on `broadcasts.<org>.messages.batch` and \
             `broadcasts.<org>.statuses.batch`, the contract's extension for high-volume publishers (each item is \
             still validated, applied or refused on its own). Where the tables below say \"event\", they mean one \
             NATS message: a batch (the last of each organisation and kind shorter).\n",
            options.batch, options.batch
        ));
    } else {
        out.line("## 4. Broadcast tracking \n");
    }
    out.line(format!("Load average before: {}\n", loadavg()));
    out.line(format!("Postgres: {}.\n", pg_settings().await?));
    if cfg!(debug_assertions) {
        out.line("**DEBUG build: these numbers are not meaningful.**\n");
    }
    sustained(&mut out, options).await?;
    backlog(&mut out, options).await?;
    out.line("### Targets of broadcast tracking\n");
    let suffix = if options.batch > 1 { format!(" (batches of {})", options.batch) } else { String::new() };
    let targets = std::mem::take(&mut out.targets);
    out.line(target_rows(&targets, &suffix));
    out.line(format!(
        "\nThe broadcast section took {:.0} s in all; load average at its end: {}.\n",
        started.elapsed().as_secs_f64(),
        loadavg()
    ));
    Ok(out.body)
}

// ---------------------------------------------------------------------------------------
// The section's report

#[derive(Default)]
struct Out {
    body: String,
    targets: Vec<Target>,
    /// From the sustained run, for the ceiling the backlog section works out.
    sustained: Option<Sustained>,
    batch: usize,
}

/// What the sustained run measured that the backlog section's ceiling needs.
#[derive(Debug, Clone, Copy)]
struct Sustained {
    status_rate: f64,
    statuses_per_event: f64,
    /// The faster raw upsert, rows/s, and the least machine CPU per row of the raw upserts.
    upsert_rate: f64,
    upsert_cpu_per_row: f64,
    /// The same for the same-rows baseline, per status event.
    same_rows_rate: f64,
    same_rows_cpu_per_status: f64,
    /// Machine CPU per event published, from the first publish until everything committed
    /// (publisher, NATS, Postgres, service and the reader).
    cpu_per_event: f64,
}

impl Out {
    fn line(&mut self, text: impl AsRef<str>) {
        self.body.push_str(text.as_ref());
        self.body.push('\n');
    }

    fn target(
        &mut self,
        what: impl Into<String>,
        goal: impl Into<String>,
        measured: impl Into<String>,
        met: Option<bool>,
    ) {
        self.targets.push(Target { what: what.into(), target: goal.into(), measured: measured.into(), met });
    }
}

/// The Postgres settings that decide whether the service's tables get statistics while the
/// section runs (without them its cached plans are made on empty tables).
async fn pg_settings() -> anyhow::Result<String> {
    let admin = leads_tests::connect_pool(&leads_tests::admin_url()).await?;
    let mut settings = Vec::new();
    for name in ["autovacuum", "autovacuum_naptime", "autovacuum_analyze_scale_factor", "plan_cache_mode"] {
        let value: String =
            sqlx::query_scalar("SELECT current_setting($1)").bind(name).fetch_one(&admin).await.unwrap_or_default();
        settings.push(format!("{name}={value}"));
    }
    admin.close().await;
    Ok(settings.join(", "))
}

/// Percentiles by nearest rank over the sorted samples; `None` without samples.
fn stats(samples: Vec<Duration>) -> Option<Stats> {
    (!samples.is_empty()).then(|| super::report::stats(samples))
}

// ---------------------------------------------------------------------------------------
// The generated events (the crash test's, from leads_tests::broadcast_gen)

/// The generated events, with the contacts their messages go to.
struct Generated {
    traffic: broadcast_gen::Generated,
    messages: u32,
    /// Distinct contacts (phones) the messages go to, a multiple of the organisations.
    contacts: u32,
}

impl Deref for Generated {
    type Target = broadcast_gen::Generated;

    fn deref(&self) -> &Self::Target {
        &self.traffic
    }
}

fn generate(messages: u64, statuses: u64, seed: u64) -> anyhow::Result<Generated> {
    let traffic = broadcast_gen::generate(u32::try_from(messages)?, statuses, seed)?;
    let messages = traffic.messages();
    // About ten messages per contact, every contact in one organisation (contact % 3 == org).
    let contacts = (messages / 30).max(1) * ORGS.len() as u32;
    Ok(Generated { traffic, messages, contacts })
}

fn org_index(message: u32) -> usize {
    message as usize % ORGS.len()
}

/// One event as the outside world publishes it: subject, headers (Nats-Msg-Id, Content-Type)
/// and JSON payload.
type Encoded = (Subject, HeaderMap, Bytes);

/// Subjects per organisation, so that publishing formats only the payload.
struct Encoder {
    messages: Vec<Subject>,
    statuses: Vec<Subject>,
    message_batches: Vec<Subject>,
    status_batches: Vec<Subject>,
    contacts: u32,
}

impl Encoder {
    fn new(env: &TestEnv, contacts: u32) -> Self {
        Self {
            messages: ORGS.iter().map(|org| Subject::from(env.subjects.broadcast_messages(org))).collect(),
            statuses: ORGS.iter().map(|org| Subject::from(env.subjects.broadcast_statuses(org))).collect(),
            message_batches: ORGS
                .iter()
                .map(|org| Subject::from(env.subjects.broadcast_message_batches(org)))
                .collect(),
            status_batches: ORGS.iter().map(|org| Subject::from(env.subjects.broadcast_status_batches(org))).collect(),
            contacts,
        }
    }

    /// One event in the contract's JSON form. Repeats get their own Nats-Msg-Id so that
    /// JetStream's deduplication does not hide them.
    fn encode(&self, event: Event) -> Encoded {
        let org = org_index(event.message);
        let subject = if event.status == 0 { &self.messages[org] } else { &self.statuses[org] };
        (subject.clone(), headers(&event.msg_id(ORGS[org])), Bytes::from(event.json(self.contacts)))
    }
}

impl Encoder {
    /// Every event, in order; with `batch` > 1 each organisation's messages and statuses go out
    /// in batches of that many (`{"messages": [...]}`, `{"statuses": [...]}`), each batch where
    /// its first item was.
    fn encode_all(&self, events: &[Event], batch: usize) -> Vec<Encoded> {
        if batch <= 1 {
            return events.iter().map(|event| self.encode(*event)).collect();
        }
        /// A batch being filled: its slot in the output, its body so far, its items.
        struct Open {
            slot: usize,
            body: Vec<u8>,
            items: usize,
        }
        let mut encoded: Vec<Encoded> = Vec::with_capacity(events.len() / batch * 2);
        // Per (organisation, kind): 0 messages, 1 statuses.
        let mut open: Vec<[Option<Open>; 2]> = (0..ORGS.len()).map(|_| [None, None]).collect();
        let mut closed = 0u64;
        let subject = |org: usize, kind: usize| {
            if kind == 0 { self.message_batches[org].clone() } else { self.status_batches[org].clone() }
        };
        let mut close = |encoded: &mut Vec<Encoded>, org: usize, kind: usize, mut full: Open| {
            closed += 1;
            full.body.extend_from_slice(b"]}");
            let msg_id = format!("{}/batch/{closed}", ORGS[org]);
            encoded[full.slot] = (subject(org, kind), headers(&msg_id), Bytes::from(full.body));
        };
        for event in events {
            let (org, kind) = (org_index(event.message), usize::from(event.status != 0));
            let (_, _, payload) = self.encode(*event);
            let current = open[org][kind].get_or_insert_with(|| {
                encoded.push((subject(org, kind), HeaderMap::new(), Bytes::new()));
                let start: &[u8] = if kind == 0 { b"{\"messages\":[" } else { b"{\"statuses\":[" };
                Open { slot: encoded.len() - 1, body: start.to_vec(), items: 0 }
            });
            if current.items > 0 {
                current.body.push(b',');
            }
            current.body.extend_from_slice(&payload);
            current.items += 1;
            if current.items == batch
                && let Some(full) = open[org][kind].take()
            {
                close(&mut encoded, org, kind, full);
            }
        }
        for (org, kinds) in open.iter_mut().enumerate() {
            for (kind, rest) in kinds.iter_mut().enumerate() {
                if let Some(rest) = rest.take() {
                    close(&mut encoded, org, kind, rest);
                }
            }
        }
        encoded
    }
}

/// Publishes every event with Nats-Msg-Id, at most `ACK_WINDOW` acks outstanding; returns the
/// time it took (until the last ack) and the payload bytes.
async fn publish_all(
    js: &jetstream::Context,
    events: impl ExactSizeIterator<Item = Encoded>,
) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let total = events.len();
    let mut last_print = Instant::now();
    let bytes = publish_windowed(js, events, ACK_WINDOW, |i| {
        if last_print.elapsed() > Duration::from_secs(10) {
            progress(format!("  published {i}/{total} events after {:.0} s", started.elapsed().as_secs_f64()));
            last_print = Instant::now();
        }
    })
    .await?;
    Ok((started.elapsed(), bytes))
}

// ---------------------------------------------------------------------------------------
// Waiting for the service

async fn count(admin: &sqlx::PgPool, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(admin).await?)
}

/// Publishing state shared with `wait_committed`.
const PUBLISHING: u8 = 0;
const PUBLISHED: u8 = 1;
const PUBLISH_FAILED: u8 = 2;

/// The broadcast consumer: (not yet delivered, acknowledged up to stream sequence).
async fn consumer_position(env: &TestEnv) -> anyhow::Result<(u64, u64)> {
    let stream = env.js.get_stream(env.subjects.stream_name(StreamKind::Broadcasts)).await?;
    let info = stream.consumer_info(broadcast::DURABLE).await?;
    Ok((info.num_pending, info.ack_floor.stream_sequence))
}

/// Waits until `broadcast.statuses` holds `distinct` rows and returns when it did. Polls
/// every 50 ms: the consumer's position (a cheap NATS request) until publishing is over and
/// the consumer has been handed every event, then `count(*)` on `broadcast.statuses`, so that
/// the count's scans do not compete with the service all along.
async fn wait_committed(
    env: &TestEnv,
    admin: &sqlx::PgPool,
    distinct: i64,
    published: &AtomicU8,
    started: Instant,
    events: usize,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let mut counting = false;
    let mut last_print = Instant::now();
    let mut acked = 0;
    loop {
        let state = published.load(Ordering::Acquire);
        if state == PUBLISH_FAILED {
            bail!("publishing failed");
        }
        if !counting && state == PUBLISHED {
            match consumer_position(env).await {
                Ok((pending, floor)) => {
                    acked = floor;
                    counting = pending == 0;
                }
                Err(_) => counting = false, // the consumer is being declared
            }
        } else if !counting && last_print.elapsed() > Duration::from_secs(5) {
            acked = consumer_position(env).await.map_or(acked, |(_, floor)| floor);
        }
        if counting {
            let stored = count(admin, "SELECT count(*) FROM broadcast.statuses").await?;
            if stored >= distinct {
                return Ok(Instant::now());
            }
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            progress(format!(
                "  {acked}/{events} events acknowledged by the service after {:.0} s (load {})",
                started.elapsed().as_secs_f64(),
                loadavg()
            ));
            last_print = Instant::now();
        }
        if started.elapsed() > timeout {
            let stored = count(admin, "SELECT count(*) FROM broadcast.statuses").await?;
            bail!("only {stored} of {distinct} distinct statuses committed after {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that the service kept what it was sent: every distinct status once, every
/// message once, nothing refused. Returns a line for the report.
async fn verify(admin: &sqlx::PgPool, generated: &Generated) -> anyhow::Result<String> {
    let statuses = count(admin, "SELECT count(*) FROM broadcast.statuses").await?;
    let messages = count(admin, "SELECT count(*) FROM broadcast.messages").await?;
    let states = count(admin, "SELECT count(*) FROM broadcast.message_states").await?;
    let refused = count(admin, "SELECT count(*) FROM broadcast.rejections").await?;
    anyhow::ensure!(
        statuses == generated.distinct as i64,
        "{statuses} statuses stored, {} expected",
        generated.distinct
    );
    anyhow::ensure!(messages == i64::from(generated.messages), "{messages} messages stored");
    anyhow::ensure!(refused == 0, "{refused} events refused");
    Ok(format!(
        "{} statuses, {} messages, {} message states, {refused} refused",
        thousands(statuses as f64),
        thousands(messages as f64),
        thousands(states as f64)
    ))
}

/// Waits until every message is committed too (they travel with the statuses).
async fn wait_messages(admin: &sqlx::PgPool, messages: i64, timeout: Duration) -> anyhow::Result<Instant> {
    let started = Instant::now();
    loop {
        if count(admin, "SELECT count(*) FROM broadcast.messages").await? >= messages {
            return Ok(Instant::now());
        }
        if started.elapsed() > timeout {
            bail!("not every message committed after {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------
// Raw baseline, sustained ingestion and reads

async fn sustained(out: &mut Out, options: &BroadcastOptions) -> anyhow::Result<()> {
    let env = production_env().await?;
    let result = sustained_in(out, options, &env).await;
    env.cleanup().await?;
    result
}

struct RawBatch {
    org: Vec<&'static str>,
    message: Vec<String>,
    status: Vec<&'static str>,
    at: Vec<DateTime<Utc>>,
    code: Vec<Option<i64>>,
    title: Vec<Option<String>>,
    class: Vec<Option<&'static str>>,
}

/// The status events in publish order, in batches of 1000, each sorted by key (as the service
/// sorts its batches, so that concurrent upserts lock rows in one order).
fn raw_batches(generated: &Generated) -> Vec<RawBatch> {
    let statuses: Vec<Event> = generated.events.iter().filter(|e| e.status != 0).copied().collect();
    statuses
        .chunks(RAW_BATCH)
        .map(|chunk| {
            let mut rows: Vec<(StatusKey, Event)> = chunk
                .iter()
                .map(|e| ((ORGS[org_index(e.message)], message_id(e.message), status_name(e.status)), *e))
                .collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            raw_batch(rows)
        })
        .collect()
}

/// (organisation, message id, status): the statuses' key.
type StatusKey = (&'static str, String, &'static str);

/// Status rows, in the order given, as the upserts' columns.
fn raw_batch(rows: Vec<(StatusKey, Event)>) -> RawBatch {
    let failed = |e: &Event| (e.status == FAILED).then(|| error_of(e.message));
    RawBatch {
        org: rows.iter().map(|r| r.0.0).collect(),
        status: rows.iter().map(|r| r.0.2).collect(),
        at: rows.iter().map(|r| r.1.status_at()).collect(),
        code: rows.iter().map(|r| failed(&r.1).map(|(code, _)| code)).collect(),
        title: rows.iter().map(|r| failed(&r.1).map(|(code, _)| format!("error {code}"))).collect(),
        class: rows.iter().map(|r| failed(&r.1).map(|(_, class)| class)).collect(),
        message: rows.into_iter().map(|r| r.0.1).collect(),
    }
}

/// One transaction of the same-rows baseline: the messages and statuses of `RAW_BATCH` events
/// in publish order, each deduplicated and sorted by key as the service's batches are.
struct RawRowsBatch {
    org: Vec<&'static str>,
    message: Vec<String>,
    phone: Vec<String>,
    campaign: Vec<String>,
    sent_at: Vec<DateTime<Utc>>,
    statuses: RawBatch,
    /// (org, campaign) and its newest message's time, as the service names campaigns.
    campaigns: Vec<((&'static str, String), DateTime<Utc>)>,
    /// Per organisation the one template's newest message's time.
    templates: Vec<(&'static str, DateTime<Utc>)>,
}

/// Every event (messages and statuses) in publish order, in transactions of `RAW_BATCH`
/// events: per key the first message and the earliest status, the service's rules.
fn raw_rows_batches(generated: &Generated) -> Vec<RawRowsBatch> {
    use std::collections::BTreeMap;
    generated
        .events
        .chunks(RAW_BATCH)
        .map(|chunk| {
            let mut messages = BTreeMap::new();
            let mut statuses: BTreeMap<StatusKey, Event> = BTreeMap::new();
            for event in chunk {
                let org = ORGS[org_index(event.message)];
                if event.status == 0 {
                    messages.entry((org, message_id(event.message))).or_insert(event.message);
                } else {
                    let slot =
                        statuses.entry((org, message_id(event.message), status_name(event.status))).or_insert(*event);
                    if event.status_at() < slot.status_at() {
                        *slot = *event;
                    }
                }
            }
            let contacts = generated.contacts;
            let mut campaigns = BTreeMap::new();
            let mut templates = BTreeMap::new();
            for (&(org, _), &m) in &messages {
                let newest = campaigns.entry((org, format!("cmp-{}", m % CAMPAIGNS))).or_insert(sent_at(m));
                *newest = (*newest).max(sent_at(m));
                let newest = templates.entry(org).or_insert(sent_at(m));
                *newest = (*newest).max(sent_at(m));
            }
            RawRowsBatch {
                org: messages.keys().map(|k| k.0).collect(),
                phone: messages.values().map(|m| leads_tests::phone(m % contacts)).collect(),
                campaign: messages.values().map(|m| format!("cmp-{}", m % CAMPAIGNS)).collect(),
                sent_at: messages.values().map(|m| sent_at(*m)).collect(),
                message: messages.into_keys().map(|k| k.1).collect(),
                campaigns: campaigns.into_iter().collect(),
                templates: templates.into_iter().collect(),
                statuses: raw_batch(statuses.into_iter().collect()),
            }
        })
        .collect()
}

/// The same rows the service stores, written straight into copies of its own tables
/// (`LIKE broadcast.* INCLUDING ALL`: columns, collations, checks, keys and every index, in a
/// schema of their own that is the connections' search path) by the service's own statements
/// (`broadcast::handler::sql`), one transaction per batch, batches dealt out round-robin over
/// `connections`: (time, machine CPU seconds, statuses stored, messages stored).
async fn raw_rows_upsert(
    env: &TestEnv,
    admin: &sqlx::PgPool,
    batches: Arc<Vec<RawRowsBatch>>,
    connections: usize,
) -> anyhow::Result<(Duration, f64, i64, i64)> {
    use broadcast::handler::sql;
    let schema = same_rows_schema(connections);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(admin).await?;
    for table in ["messages", "statuses", "campaigns", "templates"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {schema}.{table} (LIKE broadcast.{table} INCLUDING ALL)"
        )))
        .execute(admin)
        .await?;
    }
    let pool = raw_pg::pool(env, connections, Some(&schema)).await?;
    let cpu = machine_cpu_seconds();
    let elapsed = raw_pg::on_each_connection(&pool, connections, |connection, pool| {
        let batches = batches.clone();
        async move {
            for b in batches.iter().skip(connection).step_by(connections) {
                let mut tx = pool.begin().await?;
                if !b.org.is_empty() {
                    let n = b.org.len();
                    sqlx::query(sql::INSERT_MESSAGES)
                        .bind(&b.org)
                        .bind(&b.message)
                        .bind(&b.phone)
                        .bind(vec![None::<&str>; n])
                        .bind(&b.campaign)
                        .bind(vec!["bf_offer"; n])
                        .bind(vec!["en_US"; n])
                        .bind(&b.sent_at)
                        .execute(&mut *tx)
                        .await?;
                }
                let s = &b.statuses;
                if !s.org.is_empty() {
                    sqlx::query(sql::INSERT_STATUSES)
                        .bind(&s.org)
                        .bind(&s.message)
                        .bind(&s.status)
                        .bind(&s.at)
                        .bind(&s.code)
                        .bind(&s.title)
                        .bind(&s.class)
                        .execute(&mut *tx)
                        .await?;
                }
                if !b.campaigns.is_empty() {
                    let orgs: Vec<&str> = b.campaigns.iter().map(|c| c.0.0).collect();
                    let ids: Vec<&str> = b.campaigns.iter().map(|c| c.0.1.as_str()).collect();
                    let names: Vec<String> =
                        ids.iter().map(|id| format!("Campaign {}", id.trim_start_matches("cmp-"))).collect();
                    let ats: Vec<DateTime<Utc>> = b.campaigns.iter().map(|c| c.1).collect();
                    for statement in [sql::INSERT_CAMPAIGNS, sql::RENAME_CAMPAIGNS] {
                        sqlx::query(statement).bind(&orgs).bind(&ids).bind(&names).bind(&ats).execute(&mut *tx).await?;
                    }
                }
                if !b.templates.is_empty() {
                    let orgs: Vec<&str> = b.templates.iter().map(|t| t.0).collect();
                    let ats: Vec<DateTime<Utc>> = b.templates.iter().map(|t| t.1).collect();
                    let n = orgs.len();
                    for statement in [sql::INSERT_TEMPLATES, sql::RECATEGORISE_TEMPLATES] {
                        sqlx::query(statement)
                            .bind(&orgs)
                            .bind(vec!["bf_offer"; n])
                            .bind(vec!["en_US"; n])
                            .bind(vec!["MARKETING"; n])
                            .bind(&ats)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
            }
            anyhow::Ok(())
        }
    })
    .await?;
    let cpu = machine_cpu_seconds() - cpu;
    pool.close().await;
    let statuses = raw_pg::count(admin, &format!("{schema}.statuses")).await?;
    Ok((elapsed, cpu, statuses, raw_pg::count(admin, &format!("{schema}.messages")).await?))
}

/// The schema of the same-rows baseline's tables on `connections` connections.
fn same_rows_schema(connections: usize) -> String {
    format!("bench_broadcast_rows_{connections}")
}

/// Upserts the batches into a fresh copy of the statuses table on `connections` connections
/// (batches dealt out round-robin, one autocommit statement each): (rows sent, rows stored, time).
async fn raw_upsert(
    env: &TestEnv,
    admin: &sqlx::PgPool,
    batches: Arc<Vec<RawBatch>>,
    connections: usize,
) -> anyhow::Result<(u64, i64, Duration)> {
    let table = format!("bench_broadcast.statuses_{connections}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} ( \
           org_id text COLLATE \"C\" NOT NULL, message_id text COLLATE \"C\" NOT NULL, \
           status text COLLATE \"C\" NOT NULL CHECK (status IN ('sent', 'delivered', 'read', 'failed')), \
           at timestamptz NOT NULL, error_code bigint, error_title text, \
           error_class text COLLATE \"C\" CHECK (error_class IN ('undeliverable', 'frequency_cap', 'opted_out', 'window_closed', 'other')), \
           received_at timestamptz NOT NULL DEFAULT now(), \
           PRIMARY KEY (message_id, org_id, status) INCLUDE (error_class), \
           CHECK (status = 'failed' OR (error_code IS NULL AND error_title IS NULL)))"
    )))
    .execute(admin)
    .await?;
    let pool = raw_pg::pool(env, connections, None).await?;
    let sql = format!(
        "INSERT INTO {table} (org_id, message_id, status, at, error_code, error_title, error_class) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[], $6::text[], \
           $7::text[]) \
         ON CONFLICT (org_id, message_id, status) DO NOTHING"
    );
    let rows: u64 = batches.iter().map(|b| b.org.len() as u64).sum();
    let elapsed = raw_pg::on_each_connection(&pool, connections, |connection, pool| {
        let (sql, batches) = (sql.clone(), batches.clone());
        async move {
            for b in batches.iter().skip(connection).step_by(connections) {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(&b.org)
                    .bind(&b.message)
                    .bind(&b.status)
                    .bind(&b.at)
                    .bind(&b.code)
                    .bind(&b.title)
                    .bind(&b.class)
                    .execute(&pool)
                    .await?;
            }
            anyhow::Ok(())
        }
    })
    .await?;
    pool.close().await;
    Ok((rows, raw_pg::count(admin, &table).await?, elapsed))
}

/// What the reader measured.
#[derive(Default)]
struct Reads {
    history: Vec<Duration>,
    history_messages: usize,
    stats: Vec<Duration>,
    /// GetCampaignStats before the campaign's first message was committed.
    stats_not_found: usize,
    errors: usize,
    first_error: Option<String>,
}

/// Every 20 ms: a GetBroadcastHistory of a random seeded lead, then a GetCampaignStats of a
/// random campaign, until `stop` (or `limit` of each).
async fn read_loop(
    mut client: leads_proto::v1::broadcast_tracking_service_client::BroadcastTrackingServiceClient<
        tonic::transport::Channel,
    >,
    leads: Arc<Vec<(String, String)>>,
    stop: Arc<AtomicBool>,
    limit: usize,
    seed: u64,
) -> Reads {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut reads = Reads::default();
    let mut interval = tokio::time::interval(READ_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let note = |reads: &mut Reads, status: tonic::Status| {
        reads.errors += 1;
        reads.first_error.get_or_insert_with(|| format!("{}: {}", status.code(), status.message()));
    };
    while !stop.load(Ordering::Acquire) && reads.history.len() < limit {
        interval.tick().await;
        let (org, lead_id) = &leads[rng.random_range(0..leads.len())];
        let request = pb::GetBroadcastHistoryRequest {
            org_id: org.clone(),
            target: Some(pb::get_broadcast_history_request::Target::LeadId(lead_id.clone())),
            page_size: 50,
            page_token: String::new(),
            older_than: None,
        };
        let t = Instant::now();
        match client.get_broadcast_history(request).await {
            Ok(response) => {
                reads.history.push(t.elapsed());
                reads.history_messages += response.into_inner().messages.len();
            }
            Err(status) => note(&mut reads, status),
        }
        let request = pb::GetCampaignStatsRequest {
            org_id: ORGS[rng.random_range(0..ORGS.len())].to_owned(),
            campaign_id: format!("cmp-{}", rng.random_range(0..CAMPAIGNS)),
        };
        let t = Instant::now();
        match client.get_campaign_stats(request).await {
            Ok(_) => reads.stats.push(t.elapsed()),
            Err(status) if status.code() == tonic::Code::NotFound => reads.stats_not_found += 1,
            Err(status) => note(&mut reads, status),
        }
    }
    reads
}

async fn sustained_in(out: &mut Out, options: &BroadcastOptions, env: &TestEnv) -> anyhow::Result<()> {
    let started = Instant::now();
    let generated = generate(options.messages, options.statuses, 5)?;
    let events = generated.events.len();
    progress(format!(
        "broadcast: {} messages, {} status events ({} distinct, {} repeats), {events} events generated in {:.1} s",
        generated.messages,
        generated.status_events,
        generated.distinct,
        generated.duplicates,
        started.elapsed().as_secs_f64()
    ));
    let admin = env.admin_pool().await?;

    // 1. Raw baseline, before the service starts.
    sqlx::raw_sql("CREATE SCHEMA bench_broadcast").execute(&admin).await?;
    let batches = Arc::new(raw_batches(&generated));
    let mut raw = Vec::new();
    let mut upsert_cpu_per_row = f64::INFINITY;
    for connections in [1usize, 4] {
        progress(format!(
            "broadcast raw: upserting {} status rows on {connections} connection(s)",
            generated.status_events
        ));
        let cpu = machine_cpu_seconds();
        raw.push((connections, raw_upsert(env, &admin, batches.clone(), connections).await?));
        upsert_cpu_per_row = upsert_cpu_per_row.min((machine_cpu_seconds() - cpu) / generated.status_events as f64);
    }
    drop(batches);
    // The same rows the service will store, into copies of its tables: its schema first.
    env.start(&[ServiceName::Broadcast]).await?.stop().await?;
    let batches = Arc::new(raw_rows_batches(&generated));
    let mut same_rows = Vec::new();
    for connections in [1usize, 4] {
        progress(format!(
            "broadcast raw: upserting the messages and statuses of {events} events on {connections} connection(s)"
        ));
        let (elapsed, cpu, statuses, messages) = raw_rows_upsert(env, &admin, batches.clone(), connections).await?;
        let cpu_per_status = cpu / generated.status_events as f64;
        anyhow::ensure!(
            statuses == generated.distinct as i64 && messages == i64::from(generated.messages),
            "the same-rows baseline stored {statuses} statuses and {messages} messages"
        );
        same_rows.push(SameRows {
            connections,
            elapsed,
            status_rate: rate(generated.status_events, elapsed),
            cpu_per_status,
        });
    }
    drop(batches);
    sqlx::raw_sql("DROP SCHEMA bench_broadcast CASCADE").execute(&admin).await?;
    for connections in [1usize, 4] {
        let schema = same_rows_schema(connections);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&admin).await?;
    }
    let raw_rates: Vec<f64> = raw.iter().map(|(_, (rows, _, elapsed))| rate(*rows, *elapsed)).collect();
    let raw_best = raw_rates.iter().copied().fold(0.0, f64::max);
    let baselines = Baselines { raw, raw_rates, raw_best, upsert_cpu_per_row, same_rows };

    // 2. and 3. The service, its projection of leads seeded with SQL, the reader alongside.
    let node = env.start(&[ServiceName::Broadcast]).await?;
    let result = ingest_and_read(out, env, &node, &admin, &generated, &baselines).await;
    let stopped = node.stop().await;
    admin.close().await;
    result?;
    stopped
}

/// The same-rows baseline on some connections: how long it took, as status events per second.
struct SameRows {
    connections: usize,
    elapsed: Duration,
    status_rate: f64,
    /// Machine CPU time per status event.
    cpu_per_status: f64,
}

/// The raw baselines, measured before the service started: what its run is set beside.
struct Baselines {
    /// Statuses alone: per connection count, rows sent, rows stored and the time it took.
    raw: Vec<(usize, (u64, i64, Duration))>,
    raw_rates: Vec<f64>,
    raw_best: f64,
    /// The least machine CPU per row of the statuses-only upserts.
    upsert_cpu_per_row: f64,
    same_rows: Vec<SameRows>,
}

/// What the sustained run measured, from the first publish.
struct SustainedRun {
    total_events: usize,
    publish_time: Duration,
    /// JSON bytes published.
    bytes: u64,
    /// Until every distinct (message, status) was committed.
    elapsed: Duration,
    /// Until every message was committed.
    messages_elapsed: Duration,
    status_rate: f64,
    event_rate: f64,
    /// Machine CPU seconds until every distinct status was committed.
    cpu: f64,
    /// What the service stored, as checked afterwards.
    verified: String,
    /// The reader's requests while the service was ingesting.
    reads: Reads,
}

async fn ingest_and_read(
    out: &mut Out,
    env: &TestEnv,
    node: &leads_tests::Node,
    admin: &sqlx::PgPool,
    generated: &Generated,
    baselines: &Baselines,
) -> anyhow::Result<()> {
    let leads = seed_lead_contacts(admin, generated).await?;
    let run = publish_while_reading(env, node, admin, generated, out.batch, leads.clone()).await?;
    progress(format!("broadcast: {IDLE_REQUESTS} reads of each kind on the idle service"));
    let idle =
        read_loop(node.broadcast().await?, leads.clone(), Arc::new(AtomicBool::new(false)), IDLE_REQUESTS, 12).await;
    report_workload(out, env, generated, &run);
    report_baselines(out, generated, baselines);
    report_sustained(out, generated, &run, baselines);
    report_reads(out, generated, leads.len(), &run.reads, &idle);
    Ok(())
}

/// The service's `lead_contacts` projection, seeded with SQL: one lead per generated
/// recipient. Answers the first 2,000 leads, which the reader picks from.
async fn seed_lead_contacts(admin: &sqlx::PgPool, generated: &Generated) -> anyhow::Result<Arc<Vec<(String, String)>>> {
    sqlx::query(
        "INSERT INTO broadcast.lead_contacts (org_id, lead_id, contact_id, phone, external_id, version) \
         SELECT ($1::text[])[1 + i % 3], md5('lead:' || i)::uuid, md5('contact:' || i)::uuid, \
                '+1415' || lpad((2000000 + i)::text, 7, '0'), NULL, 1 \
         FROM generate_series(0, $2::bigint - 1) AS g(i)",
    )
    .bind(ORGS.map(str::to_owned).to_vec())
    .bind(i64::from(generated.contacts))
    .execute(admin)
    .await?;
    let leads: Vec<(String, String)> =
        sqlx::query_as("SELECT org_id, lead_id::text FROM broadcast.lead_contacts ORDER BY lead_id LIMIT 2000")
            .fetch_all(admin)
            .await?;
    Ok(Arc::new(leads))
}

/// Publishes every generated event with the service running and the reader alongside, until
/// every distinct status and every message is committed.
async fn publish_while_reading(
    env: &TestEnv,
    node: &leads_tests::Node,
    admin: &sqlx::PgPool,
    generated: &Generated,
    batch: usize,
    leads: Arc<Vec<(String, String)>>,
) -> anyhow::Result<SustainedRun> {
    // Encoded before the clock starts: the publishers' work is not the system's, and on these
    // two shared cores every cycle they spend is one the system under test does not get.
    let encoder = Encoder::new(env, generated.contacts);
    let events: Vec<Encoded> = encoder.encode_all(&generated.events, batch);
    let total_events = events.len();
    let published = Arc::new(AtomicU8::new(PUBLISHING));
    let stop_reading = Arc::new(AtomicBool::new(false));
    progress(format!("broadcast: publishing {total_events} events with the broadcast service running"));
    let reader = tokio::spawn(read_loop(node.broadcast().await?, leads, stop_reading.clone(), usize::MAX, 11));
    let started = Instant::now();
    let cpu_started = machine_cpu_seconds();
    let publisher = {
        let (js, published) = (env.js.clone(), published.clone());
        tokio::spawn(async move {
            let result = publish_all(&js, events.into_iter()).await;
            published.store(if result.is_ok() { PUBLISHED } else { PUBLISH_FAILED }, Ordering::Release);
            result
        })
    };
    let waited = wait_committed(
        env,
        admin,
        generated.distinct as i64,
        &published,
        started,
        total_events,
        Duration::from_secs(3600),
    )
    .await;
    let cpu = machine_cpu_seconds() - cpu_started;
    stop_reading.store(true, Ordering::Release);
    let (publish_time, bytes) = publisher.await??;
    let done = waited?;
    let busy = reader.await?;
    let elapsed = done.duration_since(started);
    let messages_done = wait_messages(admin, i64::from(generated.messages), Duration::from_secs(120)).await?;
    let messages_elapsed = messages_done.duration_since(started);
    let verified = verify(admin, generated).await?;
    let status_rate = rate(generated.status_events, elapsed);
    let event_rate = rate(total_events as u64, elapsed);
    progress(format!(
        "broadcast: {} status events committed in {:.2} s = {status_rate:.0}/s (published in {:.2} s)",
        generated.status_events,
        elapsed.as_secs_f64(),
        publish_time.as_secs_f64()
    ));
    Ok(SustainedRun {
        total_events,
        publish_time,
        bytes,
        elapsed,
        messages_elapsed,
        status_rate,
        event_rate,
        cpu,
        verified,
        reads: busy,
    })
}

fn report_workload(out: &mut Out, env: &TestEnv, generated: &Generated, run: &SustainedRun) {
    let avg_bytes = run.bytes / run.total_events.max(1) as u64;
    out.line(format!(
        "{} BroadcastMessages ({} of them published twice) and {} DeliveryStatus events ({} distinct (message, status), \
         {} repeats, half of them with a later timestamp), {} events in all, {avg_bytes} B JSON on average, over {} \
         organisations, {CAMPAIGNS} campaigns and {} recipients; shuffled with a fixed seed so that about half of the \
         statuses precede their message (as in the crash test). Published to `broadcasts.<org>.messages|statuses{}` with \
         Nats-Msg-Id ({ACK_WINDOW} acks in flight) and consumed by the broadcast service in this process with the \
         production consumer settings (batches of up to {} messages, {} batches in flight, pool of {} connections).\n",
        thousands(f64::from(generated.messages)),
        thousands(generated.repeated_messages as f64),
        thousands(generated.status_events as f64),
        thousands(generated.distinct as f64),
        thousands(generated.duplicates as f64),
        thousands(run.total_events as f64),
        ORGS.len(),
        thousands(f64::from(generated.contacts)),
        if out.batch > 1 { ".batch" } else { "" },
        env.settings.consumer.broadcast_batch_size,
        env.settings.consumer.concurrency,
        env.settings.database_max_connections,
    ));
}

fn report_baselines(out: &mut Out, generated: &Generated, baselines: &Baselines) {
    out.line("### Raw baseline\n");
    out.line(format!(
        "The same {} status rows (repeats included, in publish order) upserted straight into a table shaped like \
         `broadcast.statuses` (same columns, collations, checks and primary key), in UNNEST batches of {RAW_BATCH} sorted by key, \
         `ON CONFLICT DO NOTHING`, one autocommit statement per batch; in the same database before the service \
         started.\n",
        thousands(generated.status_events as f64)
    ));
    out.line("| baseline | rows sent / stored | time | throughput |\n| --- | ---: | ---: | ---: |");
    for ((connections, (rows, stored, elapsed)), per_s) in baselines.raw.iter().zip(&baselines.raw_rates) {
        out.line(format!(
            "| UNNEST upsert, {RAW_BATCH} rows/batch, {connections} connection(s) | {} / {} | {:.2} s | **{} rows/s** |",
            thousands(*rows as f64),
            thousands(*stored as f64),
            elapsed.as_secs_f64(),
            thousands(*per_s)
        ));
    }
    out.line("");
    out.line(format!(
        "The rows the service stores for the same {} events, written straight into copies of its own tables \
         (`CREATE TABLE ... (LIKE broadcast.<table> INCLUDING ALL)`: columns, collations, checks, keys and every \
         index) by the service's own statements (`broadcast::handler::sql`: a message's first version, a status's \
         earliest, campaigns and templates named by their newest message): the events in publish order, \
         {RAW_BATCH} to a transaction, each transaction's rows deduplicated and sorted by key, in the same \
         database after the statuses-only baseline. This is the issue's \"raw batched upsert of the same rows\": \
         what Postgres alone takes to store what the service stores.\n",
        thousands(generated.events.len() as f64)
    ));
    out.line("| baseline | statuses / messages stored | time | status events/s |\n| --- | ---: | ---: | ---: |");
    for r in &baselines.same_rows {
        out.line(format!(
            "| the same rows, {RAW_BATCH} events/transaction, {} connection(s) | {} / {} | {:.2} s | **{}** |",
            r.connections,
            thousands(generated.distinct as f64),
            thousands(f64::from(generated.messages)),
            r.elapsed.as_secs_f64(),
            thousands(r.status_rate)
        ));
    }
    out.line("");
}

fn report_sustained(out: &mut Out, generated: &Generated, run: &SustainedRun, baselines: &Baselines) {
    let (status_rate, event_rate) = (run.status_rate, run.event_rate);
    out.line("### Sustained ingestion: NATS to committed\n");
    out.line(
        "From the first publish until `broadcast.statuses` held every distinct (message, status): polled every 50 ms, \
         through the durable consumer's state (a NATS request) until publishing had ended and the service had been \
         handed every event, then with `SELECT count(*) FROM broadcast.statuses`. Throughput counts the status events \
         published (repeats included), as the issue's target does.\n",
    );
    out.line("| measure | value |\n| --- | ---: |");
    out.line(format!(
        "| publishing every event took | {:.2} s ({} events/s, {} status events/s) |",
        run.publish_time.as_secs_f64(),
        thousands(rate(run.total_events as u64, run.publish_time)),
        thousands(rate(generated.status_events, run.publish_time))
    ));
    out.line(format!("| every distinct status committed after | {:.2} s |", run.elapsed.as_secs_f64()));
    out.line(format!("| every message committed after | {:.2} s |", run.messages_elapsed.as_secs_f64()));
    out.line(format!("| **sustained status events/s** | **{}** |", thousands(status_rate)));
    out.line(format!("| all events (messages and statuses)/s | {} |", thousands(event_rate)));
    for ((connections, _), per_s) in baselines.raw.iter().zip(&baselines.raw_rates) {
        out.line(format!(
            "| ratio to the statuses-only raw upsert, {connections} connection(s) | {:.3} |",
            status_rate / per_s
        ));
    }
    for r in &baselines.same_rows {
        out.line(format!(
            "| ratio to the raw upsert of the same rows, {} connection(s) | **{:.3}** |",
            r.connections,
            status_rate / r.status_rate
        ));
    }
    out.line(format!(
        "| publishing was the limit | {} |",
        if run.elapsed < run.publish_time + Duration::from_millis(500) {
            "yes: everything was committed within 0.5 s of the last publish ack"
        } else {
            "no: the service was still catching up when publishing ended"
        }
    ));
    out.line(format!("| stored afterwards | {} |", run.verified));
    out.line("");
    let same_best = baselines.same_rows.iter().map(|r| r.status_rate).fold(0.0, f64::max);
    out.sustained = Some(Sustained {
        status_rate,
        statuses_per_event: generated.status_events as f64 / run.total_events as f64,
        upsert_rate: baselines.raw_best,
        upsert_cpu_per_row: baselines.upsert_cpu_per_row,
        same_rows_rate: same_best,
        same_rows_cpu_per_status: baselines.same_rows.iter().map(|r| r.cpu_per_status).fold(f64::INFINITY, f64::min),
        cpu_per_event: run.cpu / run.total_events as f64,
    });
    out.target(
        "Broadcast statuses, NATS to committed",
        ">= 50,000 events/s",
        format!("{} events/s", thousands(status_rate)),
        Some(status_rate >= TARGET_EVENTS_PER_S),
    );
    out.target(
        "Broadcast ingestion / raw upsert of the same rows (the faster of 1 and 4 connections)",
        ">= 0.5",
        format!(
            "{:.3} ({} / {} status events/s)",
            status_rate / same_best,
            thousands(status_rate),
            thousands(same_best)
        ),
        Some(status_rate / same_best >= TARGET_RATIO),
    );
    out.target(
        "Broadcast ingestion / raw upsert of the status rows alone (the faster of 1 and 4 connections)",
        "reported (leaves out the messages' rows and indexes)",
        format!(
            "{:.3} ({} / {} rows/s)",
            status_rate / baselines.raw_best,
            thousands(status_rate),
            thousands(baselines.raw_best)
        ),
        None,
    );
}

fn report_reads(out: &mut Out, generated: &Generated, leads: usize, busy: &Reads, idle: &Reads) {
    out.line("### Reads during ingestion and idle\n");
    out.line(format!(
        "One client over gRPC, every 20 ms: a GetBroadcastHistory by `lead_id` (first page of 50) of a random lead \
         among {}, then a GetCampaignStats of a random campaign of a random organisation. The leads' contacts are \
         seeded with SQL into the service's `broadcast.lead_contacts` projection ({} contacts, one lead each, each \
         the recipient of about {} messages), so a history request reads the projection twice, then the messages, \
         their campaign, template and state, then their statuses. A campaign has about {} messages per \
         organisation. \"While ingesting\" runs from the first publish until everything is committed; \"idle\" is \
         {IDLE_REQUESTS} of each afterwards on the same data.\n",
        thousands(leads as f64),
        thousands(f64::from(generated.contacts)),
        generated.messages / generated.contacts.max(1),
        thousands(f64::from(generated.messages / CAMPAIGNS / ORGS.len() as u32)),
    ));
    out.line(
        "| request | while ingesting: n | p50 | p99 | max | idle: n | p50 | p99 | max |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    let cells = |s: Option<Stats>| match s {
        Some(s) => format!("{} | {} | **{}** | {}", s.n, ms(s.p50), ms(s.p99), ms(s.max)),
        None => "0 | - | - | -".into(),
    };
    let (busy_history, idle_history) = (stats(busy.history.clone()), stats(idle.history.clone()));
    let (busy_stats, idle_stats) = (stats(busy.stats.clone()), stats(idle.stats.clone()));
    out.line(format!("| GetBroadcastHistory by lead | {} | {} |", cells(busy_history), cells(idle_history)));
    out.line(format!("| GetCampaignStats | {} | {} |", cells(busy_stats), cells(idle_stats)));
    out.line("");
    let per_history = |r: &Reads| r.history_messages as f64 / r.history.len().max(1) as f64;
    out.line(format!(
        "Messages per history response: {:.1} on average while ingesting, {:.1} idle. GetCampaignStats answered \
         NOT_FOUND (the campaign not committed yet, left out of the percentiles) {} time(s) while ingesting. Other \
         errors: {} while ingesting{}, {} idle{}.\n",
        per_history(busy),
        per_history(idle),
        busy.stats_not_found,
        busy.errors,
        busy.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        idle.errors,
        idle.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
    ));
    let p99 = |s: Option<Stats>| s.map_or_else(|| "-".into(), |s| ms(s.p99));
    out.target(
        "GetBroadcastHistory p99 while ingesting / idle",
        "reported (no goal stated)",
        format!("{} / {}", p99(busy_history), p99(idle_history)),
        None,
    );
    out.target(
        "GetCampaignStats p99 while ingesting / idle",
        "reported (no goal stated)",
        format!("{} / {}", p99(busy_stats), p99(idle_stats)),
        None,
    );
}

// ---------------------------------------------------------------------------------------
// Backlog drain

async fn backlog(out: &mut Out, options: &BroadcastOptions) -> anyhow::Result<()> {
    let env = production_env().await?;
    let result = backlog_in(out, options, &env).await;
    env.cleanup().await?;
    result
}

async fn backlog_in(out: &mut Out, options: &BroadcastOptions, env: &TestEnv) -> anyhow::Result<()> {
    let statuses = options.backlog_statuses;
    let messages = ((u128::from(options.messages) * u128::from(statuses)) / u128::from(options.statuses.max(1))) as u64;
    let started = Instant::now();
    let generated = generate(messages.max(1), statuses, 6)?;
    let events = generated.events.len();
    progress(format!(
        "broadcast backlog: {} messages, {} status events ({} distinct), {events} events generated in {:.1} s",
        generated.messages,
        generated.status_events,
        generated.distinct,
        started.elapsed().as_secs_f64()
    ));
    // Started once and stopped: the schema and the durable consumer exist, nothing consumes.
    env.start(&[ServiceName::Broadcast]).await?.stop().await?;
    let admin = env.admin_pool().await?;
    let result = drain(out, env, &admin, &generated).await;
    admin.close().await;
    result
}

async fn drain(out: &mut Out, env: &TestEnv, admin: &sqlx::PgPool, generated: &Generated) -> anyhow::Result<()> {
    // Encoded first, as in the sustained run, so that the publish's CPU time is the publish's.
    let encoder = Encoder::new(env, generated.contacts);
    let encoded: Vec<Encoded> = encoder.encode_all(&generated.events, out.batch);
    let events = encoded.len();
    progress(format!("broadcast backlog: publishing {events} events with the service stopped"));
    let cpu = machine_cpu_seconds();
    let (publish_time, _) = publish_all(&env.js, encoded.into_iter()).await?;
    let publish_cpu = machine_cpu_seconds() - cpu;
    let mut stream = env.js.get_stream(env.subjects.stream_name(StreamKind::Broadcasts)).await?;
    let stream_info = stream.info().await?.clone();
    progress(format!(
        "broadcast backlog: published in {:.1} s; starting the service ({} messages, {} MiB in the stream)",
        publish_time.as_secs_f64(),
        stream_info.state.messages,
        stream_info.state.bytes / (1024 * 1024)
    ));
    // The same messages through a plain consumer of the same stream (its own durable, so the
    // service's backlog is untouched): what NATS alone takes to deliver and acknowledge them.
    progress(format!("broadcast backlog: consuming the {events} events raw, acknowledging each"));
    let cpu = machine_cpu_seconds();
    let raw_consume_time = raw_consume(
        env,
        &env.subjects.stream_name(StreamKind::Broadcasts),
        jetstream::consumer::AckPolicy::Explicit,
        events as u64,
    )
    .await?;
    let raw_consume_rate = rate(events as u64, raw_consume_time);
    let consume_cpu = machine_cpu_seconds() - cpu;
    let cpu = machine_cpu_seconds();
    let started = Instant::now();
    let node = env.start(&[ServiceName::Broadcast]).await?;
    let started_in = started.elapsed();
    let waited = wait_committed(
        env,
        admin,
        generated.distinct as i64,
        &AtomicU8::new(PUBLISHED),
        started,
        events,
        Duration::from_secs(3 * 3600),
    )
    .await;
    let drain_cpu = machine_cpu_seconds() - cpu;
    let stopped = node.stop().await;
    let done = waited?;
    stopped?;
    let elapsed = done.duration_since(started);
    let verified = verify(admin, generated).await?;
    let status_rate = rate(generated.status_events, elapsed);
    progress(format!(
        "broadcast backlog: drained {} status events in {:.1} s = {status_rate:.0}/s",
        generated.status_events,
        elapsed.as_secs_f64()
    ));
    out.line("### Backlog drain\n");
    out.line(format!(
        "{} DeliveryStatus events ({} distinct) and {} BroadcastMessages ({} events, generated like the above with \
         another seed) published with the broadcast service stopped (it had run once to create its schema and \
         durable consumer), in a fresh database and stream; then the service started in-process and timed from the \
         start call until every distinct status was committed (same polling as above), nothing else running.\n",
        thousands(generated.status_events as f64),
        thousands(generated.distinct as f64),
        thousands(f64::from(generated.messages)),
        thousands(events as f64),
    ));
    out.line("| measure | value |\n| --- | ---: |");
    out.line(format!(
        "| publishing the backlog took | {:.1} s ({} events/s) |",
        publish_time.as_secs_f64(),
        thousands(rate(events as u64, publish_time))
    ));
    out.line(format!(
        "| stream before the drain | {} messages, {} MiB |",
        thousands(stream_info.state.messages as f64),
        stream_info.state.bytes / (1024 * 1024)
    ));
    out.line(format!("| service start (migrations already applied) | {} |", ms(started_in)));
    out.line(format!("| every distinct status committed after | {:.1} s |", elapsed.as_secs_f64()));
    out.line(format!("| **drain, status events/s** | **{}** |", thousands(status_rate)));
    out.line(format!("| drain, all events/s | {} |", thousands(rate(events as u64, elapsed))));
    out.line(format!("| stored afterwards | {verified} |"));
    out.line("");
    let per_event = |cpu: f64| cpu / events as f64;
    ceiling(
        out,
        Measured { rate: rate(events as u64, publish_time), cpu_per_event: per_event(publish_cpu) },
        Measured { rate: raw_consume_rate, cpu_per_event: per_event(consume_cpu) },
        Measured { rate: rate(generated.status_events, elapsed), cpu_per_event: per_event(drain_cpu) },
        events,
    );
    out.target(
        format!("Backlog drain of {} status events", thousands(generated.status_events as f64)),
        "reported (the 50,000/s goal is for sustained ingestion)",
        format!("{} events/s in {:.0} s", thousands(status_rate), elapsed.as_secs_f64()),
        None,
    );
    Ok(())
}

/// A rate and the machine's CPU time per event it took (every process together).
#[derive(Debug, Clone, Copy)]
struct Measured {
    rate: f64,
    cpu_per_event: f64,
}

/// What the raw parts measured in this run allow, added up. On one machine the publisher, NATS
/// and Postgres share the cores; when they are the limit, the CPU time each part spends per
/// event adds, and no pipeline made of these parts can go faster than the cores divided by that
/// sum. The upsert is the same-rows baseline: what Postgres alone spends storing what the
/// service stores.
fn ceiling(out: &mut Out, publish: Measured, consume: Measured, drain: Measured, events: usize) {
    let Some(sustained) = out.sustained else { return };
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let per_status = sustained.statuses_per_event;
    // The rows the service stores, not the status rows alone.
    let upsert_cpu_per_event = sustained.same_rows_cpu_per_status * per_status;
    let raw_with_publishing = publish.cpu_per_event + consume.cpu_per_event + upsert_cpu_per_event;
    let raw_drain = consume.cpu_per_event + upsert_cpu_per_event;
    let sustained_ceiling = per_status * cores / raw_with_publishing;
    let drain_ceiling = per_status * cores / raw_drain;
    out.line("### The raw parts added up\n");
    out.line(format!(
        "Each part alone, in this run, with the machine's busy CPU time (every process, from /proc/stat) over \
         its run: JetStream publish of the backlog's {} events (above); a plain pull consumer of the same stream \
         acknowledging each of them (its own durable, before the service started); the raw upsert of the \
         same rows as the sustained run's (the one of 1 and 4 connections that spent the least CPU; per \
         event, times the {per_status:.3} status events per event). On {cores} cores shared by all, the CPU \
         time per event of the parts adds up, and `cores / that sum` is as fast as a pipeline of these parts \
         alone could go. The pipelines' \
         CPU includes everything that ran: the sustained run's publisher and reader too.\n",
        thousands(events as f64),
    ));
    out.line("| | events/s | machine CPU per event |\n| --- | ---: | ---: |");
    out.line(format!(
        "| JetStream publish (Nats-Msg-Id, 4,000 acks in flight) | {} | {} |",
        thousands(publish.rate),
        micros(publish.cpu_per_event)
    ));
    out.line(format!(
        "| JetStream pull consume, acknowledging each | {} | {} |",
        thousands(consume.rate),
        micros(consume.cpu_per_event)
    ));
    out.line(format!(
        "| Postgres raw upsert of the same rows (messages and statuses) | {} status events/s | {} |",
        thousands(sustained.same_rows_rate),
        micros(upsert_cpu_per_event)
    ));
    out.line(format!(
        "| (Postgres raw upsert of the status rows alone) | {} rows/s | {} |",
        thousands(sustained.upsert_rate),
        micros(sustained.upsert_cpu_per_row * per_status)
    ));
    out.line(format!(
        "| **sustained run** (publish + service + reads) | {} | {} |",
        thousands(sustained.status_rate / per_status),
        micros(sustained.cpu_per_event)
    ));
    out.line(format!(
        "| **backlog drain** (service) | {} | {} |",
        thousands(drain.rate / per_status),
        micros(drain.cpu_per_event)
    ));
    out.line("");
    out.line("| | raw parts | measured | measured / ceiling |\n| --- | ---: | ---: | ---: |");
    out.line(format!(
        "| with publishing: status events/s | {} | {} | **{:.2}** |",
        thousands(sustained_ceiling),
        thousands(sustained.status_rate),
        sustained.status_rate / sustained_ceiling
    ));
    out.line(format!(
        "| drain (consume + upsert): status events/s | {} | {} | **{:.2}** |\n",
        thousands(drain_ceiling),
        thousands(drain.rate),
        drain.rate / drain_ceiling
    ));
    out.target(
        "Sustained statuses / the raw parts' ceiling on this machine",
        "reported",
        format!(
            "{:.2} ({} / {} status events/s)",
            sustained.status_rate / sustained_ceiling,
            thousands(sustained.status_rate),
            thousands(sustained_ceiling)
        ),
        None,
    );
}
