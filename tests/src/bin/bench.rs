//! `make bench`: the platform's benchmarks, in one run, against the real Postgres and NATS.
//!
//! Sections (choose with `--only raw,ingest,leads`):
//! - raw: what the infrastructure does on its own on this machine, measured in the same run:
//!   JetStream async publish with `Nats-Msg-Id`, and Postgres UNNEST batch inserts of rows
//!   shaped like interactions, on one connection and on four.
//! - ingest: InteractionEvents published to JetStream and carried through the ingest and lead
//!   services (in-process) until every interaction is committed; then per-event latency under
//!   a fixed publish rate.
//! - leads: the Leads page at scale (a seeded organisation of `--leads` leads): ListLeads,
//!   the total count, GetLeadHistory and ExportLeads.
//! - broadcast: delivery statuses from NATS to committed, sustained and as a backlog.
//! - desk: AssignLead, BulkAssign, CreateFollowUp and follow-ups coming due, beside the raw
//!   Postgres transaction of the same shape.
//!
//! The report (markdown) goes to stdout, and to `--out` when given; progress goes to stderr.
//! Every section runs in its own `TestEnv` and drops it afterwards, also after a failure.

use anyhow::{Context as _, bail};
use async_nats::{
    HeaderMap,
    jetstream::{self, stream},
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
#[path = "bench/broadcast.rs"]
mod broadcast;
#[path = "bench/desk.rs"]
mod desk;

use clap::{Parser, ValueEnum};
use leads_tests::{TestEnv, pb};
use platform::{ServiceName, Settings, nats::StreamKind};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Raw,
    Ingest,
    Leads,
    Broadcast,
    Desk,
}

#[derive(Debug, Clone, Parser)]
#[command(about = "Benchmarks of the lead platform against the real Postgres and NATS")]
struct Args {
    /// Broadcast messages in the broadcast section's sustained run.
    #[arg(long, default_value_t = 300_000)]
    broadcast_messages: u64,
    /// Status events in the broadcast section's sustained run.
    #[arg(long, default_value_t = 1_000_000)]
    broadcast_statuses: u64,
    /// Status events in the broadcast section's backlog drain.
    #[arg(long, default_value_t = 4_000_000)]
    broadcast_backlog: u64,
    /// The broadcast section runs once per value: messages and statuses per NATS message (1:
    /// each on its own, as the contract has it; more: batches on `broadcasts.<org>.*.batch`).
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    broadcast_batches: Vec<usize>,
    /// Sections to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "raw,ingest,leads,broadcast,desk")]
    only: Vec<Section>,
    /// Leads seeded in the large organisation of the leads section (four smaller ones get a
    /// twentieth of that each).
    #[arg(long, default_value_t = 1_000_000)]
    leads: u64,
    /// InteractionEvents published in the ingest throughput run.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Distinct contacts the ingest events come from.
    #[arg(long, default_value_t = 10_000)]
    contacts: u64,
    /// Organisations the ingest contacts are spread over.
    #[arg(long, default_value_t = 5)]
    orgs: u64,
    /// Messages in the raw JetStream publish baseline.
    #[arg(long, default_value_t = 100_000)]
    raw_messages: u64,
    /// Rows in each raw Postgres insert baseline.
    #[arg(long, default_value_t = 200_000)]
    raw_rows: u64,
    /// Rows per UNNEST batch in the raw Postgres baseline.
    #[arg(long, default_value_t = 1000)]
    raw_batch: usize,
    /// Publish rate (events/s) of the ingest latency run.
    #[arg(long, default_value_t = 2000)]
    latency_rate: u64,
    /// Duration of the ingest latency run, in seconds.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Requests per measured ListLeads / GetLeadHistory case.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Pages followed through next_page_token per ListLeads case.
    #[arg(long, default_value_t = 100)]
    pages: usize,
    /// Leads created through ingest in the desk section (assignment and follow-ups).
    #[arg(long, default_value_t = 10_000)]
    desk_leads: u32,
    /// AssignLead and CreateFollowUp requests each in the desk section.
    #[arg(long, default_value_t = 2_000)]
    desk_requests: usize,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Leave the leads section's seeded database in place (its name is printed), for
    /// looking at query plans afterwards.
    #[arg(long)]
    keep_leads_database: bool,
}

// ---------------------------------------------------------------------------------------
// Measurement helpers

#[derive(Debug, Clone, Copy)]
struct Stats {
    n: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
}

/// Percentiles by nearest rank over the sorted samples.
fn stats(mut samples: Vec<Duration>) -> Stats {
    assert!(!samples.is_empty(), "no samples");
    samples.sort();
    let n = samples.len();
    let rank = |p: f64| samples[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
    let total: Duration = samples.iter().sum();
    Stats { n, p50: rank(50.0), p90: rank(90.0), p99: rank(99.0), max: samples[n - 1], mean: total / n as u32 }
}

fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1000.0;
    if m >= 100.0 { format!("{m:.0} ms") } else { format!("{m:.2} ms") }
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn thousands(value: f64) -> String {
    let n = value.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn progress(message: impl AsRef<str>) {
    eprintln!("[bench {}] {}", Utc::now().format("%H:%M:%S"), message.as_ref());
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A value in kB from /proc/self/status (VmRSS, VmHWM).
fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// Samples VmRSS every 5 ms on a plain thread until dropped; keeps the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(proc_status_kb("VmRSS").unwrap_or(0)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = proc_status_kb("VmRSS") {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self { stop, peak, thread: Some(thread) }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// One line of the final comparison against the targets.
struct Target {
    what: String,
    target: String,
    measured: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    body: String,
    targets: Vec<Target>,
    raw_nats_per_s: Option<f64>,
    raw_pg_1_per_s: Option<f64>,
    raw_pg_4_per_s: Option<f64>,
}

impl Report {
    fn line(&mut self, text: impl AsRef<str>) {
        self.body.push_str(text.as_ref());
        self.body.push('\n');
    }

    fn target(&mut self, what: impl Into<String>, target: impl Into<String>, measured: impl Into<String>, met: bool) {
        self.targets.push(Target {
            what: what.into(),
            target: target.into(),
            measured: measured.into(),
            met: Some(met),
        });
    }
}

// ---------------------------------------------------------------------------------------
// Machine

async fn machine(report: &mut Report) -> anyhow::Result<()> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").and_then(|r| r.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let admin = leads_tests::connect_pool(&leads_tests::admin_url()).await?;
    let pg_version: String = sqlx::query_scalar("SELECT version()").fetch_one(&admin).await?;
    let mut pg_settings = Vec::new();
    for name in ["shared_buffers", "synchronous_commit", "work_mem", "max_connections"] {
        let value: String =
            sqlx::query_scalar("SELECT current_setting($1)").bind(name).fetch_one(&admin).await.unwrap_or_default();
        pg_settings.push(format!("{name}={value}"));
    }
    // The services and the raw baselines connect like this admin pool
    // (`platform::db::connect_options`: plaintext on loopback unless the URL or PGSSLMODE asks
    // for TLS); over TLS every figure changes, since sqlx's TLS writes without TCP_NODELAY
    // stall ~40 ms on each statement larger than a TLS record.
    let tls: bool =
        sqlx::query_scalar("SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)")
            .fetch_one(&admin)
            .await
            .unwrap_or(false);
    admin.close().await;
    let nats = platform::nats::connect(&leads_tests::nats_url(), "leads-bench").await?;
    nats.flush().await?; // the client connects in the background; INFO arrives first
    let info = nats.server_info();
    let build = if cfg!(debug_assertions) { "DEBUG (numbers not meaningful)" } else { "release" };
    report.line("## Machine\n");
    report.line("| | |\n| --- | --- |");
    report.line(format!("| CPU | {cpu} |"));
    report.line(format!("| cores (nproc) | {nproc} |"));
    report.line(format!("| memory | {} |", mib(mem_kb)));
    report.line(format!("| kernel | {kernel} |"));
    report.line(format!("| Postgres | {pg_version} |"));
    report.line(format!("| Postgres settings | {} |", pg_settings.join(", ")));
    let transport = if tls { "TLS (sslmode negotiated it)" } else { "plaintext (no TLS)" };
    report.line(format!(
        "| Postgres connections | {transport}; PGSSLMODE={} |",
        std::env::var("PGSSLMODE").unwrap_or_default()
    ));
    report.line(format!("| NATS server | {} (JetStream file storage) |", info.version));
    report.line(format!("| bench build | {build}; services in-process in the bench process |"));
    report.line(format!("| code | {} |", code_state()));
    report.line(format!("| load average at start | {} |", loadavg()));
    report.line(format!("| started | {} |", Utc::now().to_rfc3339()));
    report.line("");
    Ok(())
}

/// The commit the bench was built from, and whether the services had uncommitted changes.
fn code_state() -> String {
    if let Ok(described) = std::env::var("BENCH_CODE") {
        return described;
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else { return "unknown (no git)".into() };
    let dirty =
        git(&["status", "--porcelain", "--", "../services", "../migrations"]).map(|s| s.lines().count()).unwrap_or(0);
    if dirty == 0 {
        format!("commit {head}")
    } else {
        format!("commit {head} plus {dirty} uncommitted file(s) under services/ and migrations/ at run time")
    }
}

// ---------------------------------------------------------------------------------------
// Events

struct Generator {
    rng: StdRng,
}

const FIRST_NAMES: [&str; 40] = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Ken",
    "Dennis",
    "Margaret",
    "Linus",
    "Guido",
    "Bjarne",
    "James",
    "Niklaus",
    "John",
    "Frances",
    "Katherine",
    "Radia",
    "Tim",
    "Vint",
    "Robert",
    "Leslie",
    "Shafi",
    "Sophie",
    "Hedy",
    "Annie",
    "Mary",
    "Joan",
    "Jean",
    "Karen",
    "Lynn",
    "Adele",
    "Carol",
    "Susan",
    "Anita",
    "Lois",
    "Ruth",
    "Marian",
    "Evelyn",
    "Ida",
];
const LAST_NAMES: [&str; 40] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Thompson",
    "Ritchie",
    "Hamilton",
    "Torvalds",
    "Rossum",
    "Stroustrup",
    "Gosling",
    "Wirth",
    "McCarthy",
    "Allen",
    "Johnson",
    "Perlman",
    "Berners",
    "Cerf",
    "Tarjan",
    "Lamport",
    "Goldwasser",
    "Wilson",
    "Lamarr",
    "Easley",
    "Keller",
    "Clarke",
    "Bartik",
    "Jones",
    "Conway",
    "Goldberg",
    "Shaw",
    "Graham",
    "Borg",
    "Haibt",
    "Teitelbaum",
    "Wilkes",
    "Boyd",
    "Rhodes",
];
const TEXTS: [&str; 6] = [
    "Hi, how much is the premium plan? We are a team of twelve and need it before the end of the month.",
    "Thanks for the quick answer. Could you send me the brochure and the price list for the annual plan?",
    "I saw your offer on Instagram and would like to know whether the discount also applies to renewals.",
    "Good morning! Is the delivery to Lisbon included in the price or is there an extra shipping charge?",
    "We spoke last week about the integration with our shop; do you have time for a call tomorrow at ten?",
    "Perfect, please go ahead with the order. I will pay by card; what is the link for the secure payment?",
];

impl Generator {
    fn new(seed: u64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed) }
    }

    /// An InteractionEvent of about 400 bytes from contact `contact`; the first one of a
    /// contact is always inbound (it opens a lead), later ones are outbound 30% of the time.
    fn event(&mut self, event_id: &str, contact: u64, first: bool, occurred_at: DateTime<Utc>) -> serde_json::Value {
        let outbound = !first && self.rng.random_bool(0.3);
        let name = format!("{} {}", FIRST_NAMES[(contact % 40) as usize], LAST_NAMES[((contact / 40) % 40) as usize]);
        let mut event = serde_json::json!({
            "event_id": event_id,
            "occurred_at": occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "kind": "chat_message",
            "direction": if outbound { "outbound" } else { "inbound" },
            "channel": "whatsapp",
            "contact": {
                "phone": leads_tests::phone(contact as u32),
                "name": name,
                "email": format!("contact{contact}@example.com"),
            },
            "text": TEXTS[self.rng.random_range(0..TEXTS.len())],
            "conversation_id": format!("conv-{contact}"),
            "attributes": { "utm_source": "instagram" },
        });
        if outbound {
            event["agent_id"] = format!("agent-{:02}", contact % 50).into();
        } else {
            let roll: f64 = self.rng.random();
            if roll < 0.1 {
                event["kind"] = "broadcast_reply".into();
                event["broadcast"] = serde_json::json!({
                    "message_id": format!("wamid.{event_id}"),
                    "campaign_id": format!("cmp-{}", contact % 20),
                });
            } else if roll < 0.2 {
                event["kind"] = "integration".into();
                event["integration"] =
                    serde_json::json!({ "name": "shopify", "reference": format!("order-{event_id}") });
            }
        }
        event
    }
}

fn org_name(index: u64) -> String {
    format!("bench-org-{index}")
}

struct Prepared {
    subject: String,
    event_id: String,
    payload: Bytes,
}

fn prepare(env: &TestEnv, org: &str, event: &serde_json::Value) -> Prepared {
    Prepared {
        subject: env.subjects.interactions(org),
        event_id: event["event_id"].as_str().unwrap_or_default().to_owned(),
        payload: Bytes::from(serde_json::to_vec(event).expect("JSON")),
    }
}

/// Publishes with `Nats-Msg-Id`, keeping at most `window` acks outstanding (the oldest is
/// awaited before another publish once the window is full).
struct Publisher {
    js: jetstream::Context,
    window: usize,
    pending: VecDeque<jetstream::context::PublishAckFuture>,
}

impl Publisher {
    fn new(js: jetstream::Context, window: usize) -> Self {
        Self { js, window, pending: VecDeque::with_capacity(window) }
    }

    async fn publish(&mut self, subject: String, msg_id: &str, payload: Bytes) -> anyhow::Result<()> {
        if self.pending.len() >= self.window
            && let Some(ack) = self.pending.pop_front()
        {
            ack.await?;
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        let ack = self.js.publish_with_headers(subject, headers, payload).await?;
        self.pending.push_back(ack);
        Ok(())
    }

    async fn drain(&mut self) -> anyhow::Result<()> {
        while let Some(ack) = self.pending.pop_front() {
            ack.await?;
        }
        Ok(())
    }
}

const ACK_WINDOW: usize = 1000;

// ---------------------------------------------------------------------------------------
// Section 1: raw baselines

async fn raw(report: &mut Report, args: &Args) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let result = raw_in(report, args, &env).await;
    let stream = env.subjects.stream_name(StreamKind::Events("benchraw"));
    let _ = env.js.delete_stream(&stream).await;
    env.cleanup().await?;
    result
}

async fn raw_in(report: &mut Report, args: &Args, env: &TestEnv) -> anyhow::Result<()> {
    report.line("## 1. Raw baselines (same run, same machine)\n");
    report.line(format!("Load average before: {}\n", loadavg()));
    // (a) JetStream publish
    let stream_name = env.subjects.stream_name(StreamKind::Events("benchraw"));
    let subject_base = format!("{}benchraw", env.subjects.prefix());
    env.js
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{subject_base}.>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the raw stream: {e}"))?;
    let mut generator = Generator::new(7);
    let payloads: Vec<Prepared> = (0..args.raw_messages)
        .map(|i| {
            let event = generator.event(&format!("raw-{i}"), i % 10_000, i < 10_000, Utc::now());
            let mut p = prepare(env, "raw", &event);
            p.subject = format!("{subject_base}.{}", org_name(i % 5));
            p
        })
        .collect();
    let avg_bytes = payloads.iter().map(|p| p.payload.len()).sum::<usize>() / payloads.len().max(1);
    progress(format!("raw: publishing {} messages to JetStream", args.raw_messages));
    let mut publisher = Publisher::new(env.js.clone(), ACK_WINDOW);
    let started = Instant::now();
    for p in payloads {
        publisher.publish(p.subject, &p.event_id, p.payload).await?;
    }
    publisher.drain().await?;
    let nats_elapsed = started.elapsed();
    let nats_rate = rate(args.raw_messages, nats_elapsed);
    report.raw_nats_per_s = Some(nats_rate);

    // (b) JetStream pull consume of the same messages, acknowledging each message, then (a
    // second consumer) acknowledging only the last of each batch under AckPolicy::All
    let mut consumed = Vec::new();
    for (label, policy) in [
        ("each message", jetstream::consumer::AckPolicy::Explicit),
        ("last of each batch", jetstream::consumer::AckPolicy::All),
    ] {
        progress(format!("raw: consuming {} messages, acknowledging {label}", args.raw_messages));
        let elapsed = raw_consume(env, &stream_name, policy, args.raw_messages).await?;
        consumed.push((label, elapsed));
    }

    // (c) Postgres UNNEST batches
    let admin = env.admin_pool().await?;
    sqlx::raw_sql("CREATE SCHEMA bench").execute(&admin).await?;
    let mut pg_rows = Vec::new();
    for connections in [1usize, 4] {
        let table = format!("bench.interactions_{connections}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (org_id text NOT NULL, event_id text NOT NULL, phone text NOT NULL, \
             occurred_at timestamptz NOT NULL, kind text NOT NULL, direction text NOT NULL, text text, \
             PRIMARY KEY (org_id, event_id))"
        )))
        .execute(&admin)
        .await?;
        let pool = raw_pool(env, connections, None).await?;
        let per_conn = args.raw_rows / connections as u64;
        let batches: Vec<Vec<RawBatch>> =
            (0..connections).map(|c| raw_batches(c as u64 * per_conn, per_conn, args.raw_batch)).collect();
        progress(format!("raw: inserting {} rows on {connections} connection(s)", per_conn * connections as u64));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for work in batches {
            let pool = pool.clone();
            let sql = format!(
                "INSERT INTO {table} SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], \
                 $4::timestamptz[], $5::text[], $6::text[], $7::text[])"
            );
            tasks.spawn(async move {
                for b in work {
                    sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(&b.org)
                        .bind(&b.event)
                        .bind(&b.phone)
                        .bind(&b.at)
                        .bind(&b.kind)
                        .bind(&b.direction)
                        .bind(&b.text)
                        .execute(&pool)
                        .await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let elapsed = started.elapsed();
        pool.close().await;
        let inserted: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(&admin).await?;
        pg_rows.push((connections, inserted, elapsed));
    }
    admin.close().await;
    report.raw_pg_1_per_s = Some(rate(pg_rows[0].1 as u64, pg_rows[0].2));
    report.raw_pg_4_per_s = Some(rate(pg_rows[1].1 as u64, pg_rows[1].2));

    report.line("| baseline | volume | time | throughput |\n| --- | ---: | ---: | ---: |");
    report.line(format!(
        "| JetStream async publish, Nats-Msg-Id, {ACK_WINDOW} acks in flight, {avg_bytes} B JSON | {} msgs | {:.2} s | **{} msgs/s** |",
        thousands(args.raw_messages as f64),
        nats_elapsed.as_secs_f64(),
        thousands(nats_rate)
    ));
    for (label, elapsed) in &consumed {
        report.line(format!(
            "| JetStream pull consume, batches of {RAW_CONSUME_BATCH}, ack {label} | {} msgs | {:.2} s | **{} msgs/s** |",
            thousands(args.raw_messages as f64),
            elapsed.as_secs_f64(),
            thousands(rate(args.raw_messages, *elapsed))
        ));
    }
    for (connections, inserted, elapsed) in &pg_rows {
        report.line(format!(
            "| Postgres UNNEST insert, {} rows/batch, 1 tx per batch, PK, {connections} connection(s) | {} rows | {:.2} s | **{} rows/s** |",
            args.raw_batch,
            thousands(*inserted as f64),
            elapsed.as_secs_f64(),
            thousands(rate(*inserted as u64, *elapsed))
        ));
    }
    report.line("");
    Ok(())
}

const RAW_CONSUME_BATCH: usize = 500;

/// A pool of exactly `connections` connections to the environment's database, as the
/// services connect (within `schema`, when given, as its search path), for a raw baseline.
async fn raw_pool(env: &TestEnv, connections: usize, schema: Option<&str>) -> anyhow::Result<sqlx::PgPool> {
    let mut options = platform::db::connect_options(&env.settings.database_url)?;
    if let Some(schema) = schema {
        options = options.options([("search_path", schema)]);
    }
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections as u32)
        .min_connections(connections as u32)
        .connect_with(options)
        .await?)
}

/// Pulls `count` messages from `stream` through a new durable consumer, acknowledging under
/// `policy` (each message, or the last of each batch), and returns how long it took.
async fn raw_consume(
    env: &TestEnv,
    stream: &str,
    policy: jetstream::consumer::AckPolicy,
    count: u64,
) -> anyhow::Result<Duration> {
    use futures::StreamExt as _;
    let durable = format!("raw-{policy:?}").to_lowercase();
    let consumer = env
        .js
        .get_stream(stream)
        .await
        .map_err(|e| anyhow::anyhow!("raw stream: {e}"))?
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(durable),
            ack_policy: policy,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("raw consumer: {e}"))?;
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(RAW_CONSUME_BATCH * 4)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("raw pull: {e}"))?;
    let mut received = 0u64;
    while received < count {
        let Some(message) = messages.next().await else { bail!("the raw consumer ended after {received}") };
        let message = message.map_err(|e| anyhow::anyhow!("raw pull: {e}"))?;
        received += 1;
        let last_of_batch = received.is_multiple_of(RAW_CONSUME_BATCH as u64) || received == count;
        if policy == jetstream::consumer::AckPolicy::Explicit || last_of_batch {
            message.ack().await.map_err(|e| anyhow::anyhow!("raw ack: {e}"))?;
        }
    }
    env.nats.flush().await?;
    Ok(started.elapsed())
}

struct RawBatch {
    org: Vec<String>,
    event: Vec<String>,
    phone: Vec<String>,
    at: Vec<DateTime<Utc>>,
    kind: Vec<String>,
    direction: Vec<String>,
    text: Vec<String>,
}

fn raw_batches(from: u64, count: u64, batch: usize) -> Vec<RawBatch> {
    let now = Utc::now();
    let mut out = Vec::new();
    let mut i = from;
    while i < from + count {
        let end = (i + batch as u64).min(from + count);
        let range = i..end;
        out.push(RawBatch {
            org: range.clone().map(|n| org_name(n % 5)).collect(),
            event: range.clone().map(|n| format!("evt-{n:012}")).collect(),
            phone: range.clone().map(|n| leads_tests::phone((n % 10_000) as u32)).collect(),
            at: range.clone().map(|n| now + chrono::Duration::milliseconds(n as i64)).collect(),
            kind: range.clone().map(|_| "chat_message".to_owned()).collect(),
            direction: range.clone().map(|n| if n % 3 == 0 { "outbound" } else { "inbound" }.to_owned()).collect(),
            text: range.map(|n| TEXTS[(n % 6) as usize].to_owned()).collect(),
        });
        i = end;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Section 2: ingest end to end

async fn ingest(report: &mut Report, args: &Args) -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    // The production defaults, not the test harness's small batches.
    let defaults = Settings::default();
    env.settings.consumer = defaults.consumer.clone();
    // An operator's consumer tuning (LEADS_CONSUMER_*), to measure it; nothing else of the
    // environment reaches the services under test.
    env.settings
        .apply_env(|key| key.starts_with("LEADS_CONSUMER_").then(|| std::env::var(key).ok()).flatten())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    env.settings.database_max_connections = defaults.database_max_connections;
    let node = match env.start(&[ServiceName::Ingest, ServiceName::Lead]).await {
        Ok(node) => node,
        Err(error) => {
            env.cleanup().await?;
            return Err(error);
        }
    };
    let result = ingest_in(report, args, &env).await;
    let stopped = node.stop().await;
    env.cleanup().await?;
    result?;
    stopped
}

/// Waits until the lead service has committed `target` interactions. A `count(*)` confirms
/// it, run only when the lead consumer has acknowledged everything in its stream (it acks
/// after each commit; the consumer's state is a cheap NATS request, polled every 20 ms).
/// Counting rows every 20 ms instead cost Postgres a sequential scan of the growing table
/// each time, a fifth of a core taken from the services. Prints progress every 5 s.
async fn wait_for_interactions(
    env: &TestEnv,
    admin: &sqlx::PgPool,
    target: i64,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let stream_name = env.subjects.stream_name(StreamKind::Events("ingest"));
    let stream = env.js.get_stream(&stream_name).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut last_print = Instant::now();
    let mut committed = 0;
    loop {
        // A failed request is only a missed poll.
        let position = stream
            .consumer_info(lead::INTERACTIONS_DURABLE)
            .await
            .ok()
            .map(|info| (info.num_pending == 0 && info.num_ack_pending == 0, info.ack_floor.stream_sequence));
        let now = Instant::now();
        let (caught_up, acked) = position.unwrap_or((false, 0));
        if caught_up {
            committed = sqlx::query_scalar("SELECT count(*) FROM lead.interactions").fetch_one(admin).await?;
            if committed >= target {
                return Ok(now);
            }
        }
        if now.duration_since(last_print) > Duration::from_secs(5) {
            progress(format!(
                "  lead consumer at stream sequence {acked} ({committed}/{target} interactions counted when last \
                 caught up) after {:.0} s (load {})",
                started.elapsed().as_secs_f64(),
                loadavg()
            ));
            last_print = now;
        }
        if started.elapsed() > timeout {
            bail!(
                "{committed} of {target} interactions counted when the lead consumer was last caught up, after {timeout:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn consumer_acked(js: &jetstream::Context, stream: &str, durable: &str) -> anyhow::Result<u64> {
    let stream = js.get_stream(stream).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = stream.consumer_info(durable).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(info.ack_floor.stream_sequence)
}

async fn ingest_in(report: &mut Report, args: &Args, env: &TestEnv) -> anyhow::Result<()> {
    report.line("## 2. Ingest end to end (issue 3)\n");
    report.line(format!("Load average before: {}\n", loadavg()));
    let admin = env.admin_pool().await?;
    let n = args.events;
    let mut generator = Generator::new(42);
    let base = Utc::now() - chrono::Duration::days(1);
    let events: Vec<Prepared> = (0..n)
        .map(|j| {
            let contact = j % args.contacts;
            let event = generator.event(
                &format!("evt-{j:09}"),
                contact,
                j < args.contacts,
                base + chrono::Duration::milliseconds(j as i64),
            );
            prepare(env, &org_name(contact % args.orgs), &event)
        })
        .collect();
    let avg_bytes = events.iter().map(|p| p.payload.len()).sum::<usize>() / events.len().max(1);
    progress(format!("ingest: publishing {n} events ({avg_bytes} B avg) with ingest+lead running"));

    // Stage timing from the consumers' ack floors: cheap NATS requests, polled every 20 ms.
    let interactions_stream = env.subjects.stream_name(StreamKind::Interactions);
    let mut stages = {
        let js = env.js.clone();
        let stream = interactions_stream.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                if let Ok(acked) = consumer_acked(&js, &stream, ingest::DURABLE).await
                    && acked >= n
                {
                    return Some(start.elapsed());
                }
                if start.elapsed() > Duration::from_secs(1800) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let started = Instant::now();
    let mut publisher = Publisher::new(env.js.clone(), ACK_WINDOW);
    for p in events {
        publisher.publish(p.subject, &p.event_id, p.payload).await?;
    }
    publisher.drain().await?;
    let published = started.elapsed();
    progress(format!("ingest: published in {:.2} s; waiting for the lead service", published.as_secs_f64()));
    let done = wait_for_interactions(env, &admin, n as i64, started, Duration::from_secs(1800)).await?;
    let elapsed = done.duration_since(started);
    let ingest_done =
        tokio::time::timeout(Duration::from_secs(5), &mut stages).await.ok().and_then(|r| r.ok().flatten());
    stages.abort();
    let leads: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.leads").fetch_one(&admin).await?;
    let accepted: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest.accepted_events").fetch_one(&admin).await?;
    let throughput = rate(n, elapsed);
    progress(format!("ingest: {n} events in {:.2} s = {throughput:.0}/s", elapsed.as_secs_f64()));

    report.line("### Throughput\n");
    report.line(format!(
        "{} InteractionEvents (JSON, {avg_bytes} B avg, 70% inbound after each contact's first) from {} contacts in {} \
         organisations, published to `interactions.<org>` with Nats-Msg-Id ({ACK_WINDOW} acks in flight), consumed by \
         the ingest and lead services in this process with the production consumer settings (batch {}, {} batches in \
         flight per consumer, pools of {} connections). Finished when `SELECT count(*) FROM lead.interactions` found \
         all {} events, counted whenever the lead service's consumer had acknowledged everything in its stream (it \
         does so after each commit; polled every 20 ms).\n",
        thousands(n as f64),
        thousands(args.contacts as f64),
        args.orgs,
        env.settings.consumer.batch_size,
        env.settings.consumer.concurrency,
        env.settings.database_max_connections,
        thousands(n as f64),
    ));
    report.line("| measure | value |\n| --- | ---: |");
    report.line(format!(
        "| publishing all events took | {:.2} s ({} events/s) |",
        published.as_secs_f64(),
        thousands(rate(n, published))
    ));
    if let Some(at) = ingest_done {
        report.line(format!(
            "| ingest service had acknowledged all after | {:.2} s ({} events/s) |",
            at.as_secs_f64(),
            thousands(rate(n, at))
        ));
    }
    report.line(format!("| last interaction committed by the lead service after | {:.2} s |", elapsed.as_secs_f64()));
    report.line(format!("| **end-to-end throughput** | **{} events/s** |", thousands(throughput)));
    report.line(format!(
        "| leads created / events accepted by ingest | {} / {} |",
        thousands(leads as f64),
        thousands(accepted as f64)
    ));
    if let Some(raw) = report.raw_pg_1_per_s {
        report.line(format!("| ratio to raw Postgres UNNEST insert, 1 connection | {:.3} |", throughput / raw));
    }
    if let Some(raw) = report.raw_pg_4_per_s {
        report.line(format!("| ratio to raw Postgres UNNEST insert, 4 connections | {:.3} |", throughput / raw));
    }
    if let Some(raw) = report.raw_nats_per_s {
        report.line(format!("| ratio to raw JetStream publish | {:.3} |", throughput / raw));
    }
    report.line("");
    report.target(
        "Ingest end to end",
        ">= 10,000 events/s",
        format!("{} events/s", thousands(throughput)),
        throughput >= 10_000.0,
    );

    // Latency at a fixed rate.
    latency(report, args, env, &admin).await?;
    admin.close().await;
    Ok(())
}

const PROBE_ORG: &str = "bench-probe";

async fn latency(report: &mut Report, args: &Args, env: &TestEnv, admin: &sqlx::PgPool) -> anyhow::Result<()> {
    let tick = Duration::from_millis(10);
    let per_tick = (args.latency_rate / 100).max(1);
    let ticks = args.latency_secs * 100;
    progress(format!("ingest latency: {} events/s for {} s, one probe per 10 ms", per_tick * 100, args.latency_secs));
    let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let publishing = Arc::new(AtomicBool::new(true));
    // The poller: every 5 ms, which probes' interactions are committed (a point lookup by
    // primary key on lead.interactions; a probe creates its lead in the same transaction).
    let poller = {
        let (pending, latencies, publishing, admin) =
            (pending.clone(), latencies.clone(), publishing.clone(), admin.clone());
        tokio::spawn(async move {
            let mut drained_since: Option<Instant> = None;
            loop {
                let ids: Vec<String> = pending.lock().await.keys().cloned().collect();
                if !ids.is_empty() {
                    let found: Vec<String> = sqlx::query_scalar(
                        "SELECT event_id FROM lead.interactions WHERE org_id = $1 AND event_id = ANY($2)",
                    )
                    .bind(PROBE_ORG)
                    .bind(&ids)
                    .fetch_all(&admin)
                    .await?;
                    let seen = Instant::now();
                    let mut pending = pending.lock().await;
                    let mut latencies = latencies.lock().await;
                    for id in found {
                        if let Some(sent) = pending.remove(&id) {
                            latencies.push(seen.duration_since(sent));
                        }
                    }
                }
                if !publishing.load(Ordering::Relaxed) {
                    let since = *drained_since.get_or_insert_with(Instant::now);
                    if pending.lock().await.is_empty() || since.elapsed() > Duration::from_secs(60) {
                        return anyhow::Ok(pending.lock().await.len());
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.interactions").fetch_one(admin).await?;
    let mut generator = Generator::new(99);
    let mut publisher = Publisher::new(env.js.clone(), ACK_WINDOW);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut late_ticks = 0u64;
    let started = Instant::now();
    for t in 0..ticks {
        interval.tick().await;
        if started.elapsed() > tick * (t as u32 + 2) {
            late_ticks += 1;
        }
        // The probe: a new contact, so a new lead, in its own organisation.
        let probe_id = format!("probe-{t:06}");
        let event = generator.event(&probe_id, 1_000_000 + t, true, Utc::now());
        let probe = prepare(env, PROBE_ORG, &event);
        pending.lock().await.insert(probe_id.clone(), Instant::now());
        publisher.publish(probe.subject, &probe.event_id, probe.payload).await?;
        sent += 1;
        for k in 1..per_tick {
            let index = t * per_tick + k;
            let contact = index % args.contacts;
            let event = generator.event(&format!("lat-{index:09}"), contact, false, Utc::now());
            let p = prepare(env, &org_name(contact % args.orgs), &event);
            publisher.publish(p.subject, &p.event_id, p.payload).await?;
            sent += 1;
        }
    }
    publisher.drain().await?;
    let publish_elapsed = started.elapsed();
    publishing.store(false, Ordering::Relaxed);
    let lost = poller.await??;
    let total_after = before + sent as i64;
    wait_for_interactions(env, admin, total_after, Instant::now(), Duration::from_secs(600)).await?;
    let samples = latencies.lock().await.clone();
    let achieved = rate(sent, publish_elapsed);
    report.line("### Latency at a fixed publish rate\n");
    report.line(format!(
        "{} events/s for {} s ({} events, achieved {} events/s, {} of {} ticks late by more than one tick) on the \
         warm system of the run above. Every 10 ms one of the events is a probe: an inbound message from a new contact \
         in its own organisation, which creates a lead. Latency is from just before the probe's publish call to the \
         moment a poller (every 5 ms, a primary-key lookup on lead.interactions through the admin pool, the same \
         snapshot GetLead/ListLeads would read) sees its interaction committed with its new lead. Resolution about 5 ms.\n",
        thousands((per_tick * 100) as f64),
        args.latency_secs,
        thousands(sent as f64),
        thousands(achieved),
        late_ticks,
        ticks
    ));
    if samples.is_empty() {
        report.line("No probe was seen committed.\n");
        report.target("Ingest latency p99 at 2,000 events/s", "< 250 ms", "no probe seen", false);
        return Ok(());
    }
    let s = stats(samples);
    report.line("| probes | p50 | p90 | p99 | max | mean | not seen within 60 s |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    report.line(format!(
        "| {} | {} | {} | **{}** | {} | {} | {lost} |\n",
        s.n,
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max),
        ms(s.mean)
    ));
    report.target(
        format!("Ingest latency p99 at {} events/s", thousands((per_tick * 100) as f64)),
        "< 250 ms",
        format!("p99 {} (p50 {})", ms(s.p99), ms(s.p50)),
        s.p99 < Duration::from_millis(250) && lost == 0,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Section 3: the Leads page at scale

async fn leads(report: &mut Report, args: &Args) -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.database_max_connections = Settings::default().database_max_connections;
    let node = match env.start(&[ServiceName::Lead]).await {
        Ok(node) => node,
        Err(error) => {
            env.cleanup().await?;
            return Err(error);
        }
    };
    let result = leads_in(report, args, &env, &node).await;
    let stopped = node.stop().await;
    if args.keep_leads_database {
        progress(format!("leads: database {} kept", env.database));
    } else {
        env.cleanup().await?;
    }
    result?;
    stopped
}

const BIG_ORG: &str = "big-org";

/// Inserts `count` contacts and leads (one lead per contact) numbered from `from`, plus each
/// lead's opening interaction. Deterministic ids, random attributes.
async fn seed_chunk(admin: &sqlx::PgPool, org: &str, from: i64, to: i64) -> anyhow::Result<()> {
    let first = FIRST_NAMES.map(|s| s.to_owned()).to_vec();
    let last = LAST_NAMES.map(|s| s.to_owned()).to_vec();
    let mut tx = admin.begin().await?;
    sqlx::query(
        "INSERT INTO lead.contacts (id, org_id, phone, external_id, name, email, profile_at, created_at) \
         SELECT md5('c:' || $1 || ':' || i)::uuid, $1, '+1415' || lpad(i::text, 7, '0'), \
                CASE WHEN i % 3 = 0 THEN 'crm-' || i END, \
                f || ' ' || l, lower(f) || '.' || lower(l) || i || '@example.com', \
                now() - interval '400 days', now() - interval '400 days' \
         FROM (SELECT i, ($4::text[])[1 + (hashint8(i) & 1023) % 40] AS f, \
                         ($5::text[])[1 + ((hashint8(i) >> 10) & 1023) % 40] AS l \
               FROM generate_series($2::bigint, $3::bigint) AS g(i)) s",
    )
    .bind(org)
    .bind(from)
    .bind(to)
    .bind(&first)
    .bind(&last)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH s AS MATERIALIZED ( \
           SELECT i, random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5, \
                  random() AS r6, random() AS r7, random() AS r8, \
                  now() - random() * interval '365 days' AS created \
           FROM generate_series($2::bigint, $3::bigint) AS g(i)) \
         INSERT INTO lead.leads (id, org_id, contact_id, status, source_kind, channel, campaign_id, \
           broadcast_message_id, integration_name, integration_reference, score, score_source, score_version, \
           agent_id, interaction_count, last_message_preview, first_touch_at, last_interaction_at, created_at, \
           updated_at, version) \
         SELECT md5('l:' || $1 || ':' || i)::uuid, $1, md5('c:' || $1 || ':' || i)::uuid, \
           CASE WHEN r1 < 0.20 THEN 'new' WHEN r1 < 0.40 THEN 'contacted' WHEN r1 < 0.50 THEN 'qualifying' \
                WHEN r1 < 0.60 THEN 'qualified' WHEN r1 < 0.70 THEN 'follow_up' WHEN r1 < 0.80 THEN 'converted' \
                WHEN r1 < 0.92 THEN 'lost' ELSE 'archived' END, \
           CASE WHEN r2 < 0.6 THEN 'chat_message' WHEN r2 < 0.9 THEN 'broadcast_reply' ELSE 'integration' END, \
           'whatsapp', \
           CASE WHEN r2 >= 0.6 AND r2 < 0.9 THEN 'cmp-' || (i % 20) END, \
           CASE WHEN r2 >= 0.6 AND r2 < 0.9 THEN 'wamid.' || i END, \
           CASE WHEN r2 >= 0.9 THEN (ARRAY['shopify', 'hubspot', 'zapier'])[1 + i % 3] END, \
           CASE WHEN r2 >= 0.9 THEN 'ref-' || i END, \
           CASE WHEN r3 < 0.8 THEN floor(r4 * 101)::int END, \
           CASE WHEN r3 < 0.7 THEN 'ai' WHEN r3 < 0.8 THEN 'manual' END, \
           CASE WHEN r3 < 0.8 THEN 1 ELSE 0 END, \
           CASE WHEN r5 < 0.8 THEN 'agent-' || lpad(floor(r6 * 50)::int::text, 2, '0') END, \
           1 + floor(r7 * 40)::int, \
           'Hi, how much is the premium plan? We are a team of twelve and need it before the end of the month.', \
           created, least(created + r8 * interval '30 days', now()), created, created, 1 \
         FROM s",
    )
    .bind(org)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO lead.interactions (org_id, event_id, lead_id, contact_id, occurred_at, kind, direction, channel, \
           text, campaign_id, integration_name) \
         SELECT l.org_id, 'seed-' || g.i, l.id, l.contact_id, l.first_touch_at, l.source_kind, 'inbound', l.channel, \
           l.last_message_preview, l.campaign_id, l.integration_name \
         FROM generate_series($2::bigint, $3::bigint) AS g(i) \
         JOIN lead.leads l ON l.id = md5('l:' || $1 || ':' || g.i)::uuid",
    )
    .bind(org)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The seed's id of lead number `i` of `org`.
async fn lead_uuid(admin: &sqlx::PgPool, org: &str, i: i64) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar("SELECT md5('l:' || $1 || ':' || $2)::uuid::text").bind(org).bind(i).fetch_one(admin).await?)
}

/// The lead whose timeline is measured gets entries up to 500, dated within its lifetime.
async fn seed_history(admin: &sqlx::PgPool, lead_id: &str, entries: i64) -> anyhow::Result<()> {
    let interactions = entries * 4 / 5 - 1; // + the seeded opening one
    let status_changes = entries - interactions - 1;
    sqlx::query(
        "INSERT INTO lead.interactions (org_id, event_id, lead_id, contact_id, occurred_at, kind, direction, channel, text) \
         SELECT l.org_id, 'hist-' || g.i, l.id, l.contact_id, l.first_touch_at + g.i * interval '1 minute', \
           'chat_message', CASE WHEN g.i % 2 = 0 THEN 'inbound' ELSE 'outbound' END, 'whatsapp', \
           'Message number ' || g.i || ' of a long conversation about prices, delivery and the annual plan.' \
         FROM lead.leads l, generate_series(1, $2::bigint) AS g(i) WHERE l.id = $1::uuid",
    )
    .bind(lead_id)
    .bind(interactions)
    .execute(admin)
    .await?;
    sqlx::query(
        "INSERT INTO lead.status_changes (org_id, lead_id, from_status, to_status, actor, reason, lead_version, at) \
         SELECT l.org_id, l.id, CASE WHEN g.i % 2 = 0 THEN 'follow_up' ELSE 'qualifying' END, \
           CASE WHEN g.i % 2 = 0 THEN 'qualifying' ELSE 'follow_up' END, 'agent-07', 'bench', g.i, \
           l.first_touch_at + g.i * interval '7 minutes' \
         FROM lead.leads l, generate_series(1, $2::bigint) AS g(i) WHERE l.id = $1::uuid",
    )
    .bind(lead_id)
    .bind(status_changes)
    .execute(admin)
    .await?;
    Ok(())
}

struct Case {
    name: &'static str,
    filter: pb::LeadFilter,
}

fn cases() -> Vec<Case> {
    vec![
        Case { name: "no filter, sorted by last interaction", filter: pb::LeadFilter::default() },
        Case {
            name: "status in (new, contacted)",
            filter: pb::LeadFilter {
                statuses: vec![pb::LeadStatus::New as i32, pb::LeadStatus::Contacted as i32],
                ..Default::default()
            },
        },
        Case {
            name: "agent = agent-07",
            filter: pb::LeadFilter { agent_ids: vec!["agent-07".into()], ..Default::default() },
        },
        Case {
            name: "score 70-100, source ai",
            filter: pb::LeadFilter {
                min_score: Some(70),
                max_score: Some(100),
                score_source: pb::ScoreSource::Ai as i32,
                ..Default::default()
            },
        },
        Case {
            name: "search \"lovelace\" (1 name in 40)",
            filter: pb::LeadFilter { search: "lovelace".into(), ..Default::default() },
        },
        Case {
            name: "search \"Ada Lovelace\" (1 in 1,600)",
            filter: pb::LeadFilter { search: "Ada Lovelace".into(), ..Default::default() },
        },
        Case {
            name: "search \"ada lov\" while typing (1 in 1,600)",
            filter: pb::LeadFilter { search: "ada lov".into(), ..Default::default() },
        },
        Case {
            name: "search \"lovelace\", active, agent-07",
            filter: pb::LeadFilter {
                search: "lovelace".into(),
                active: pb::ActiveFilter::ActiveOnly as i32,
                agent_ids: vec!["agent-07".into()],
                ..Default::default()
            },
        },
    ]
}

fn list_request(filter: &pb::LeadFilter, token: String, skip_total: bool) -> pb::ListLeadsRequest {
    pb::ListLeadsRequest {
        org_id: BIG_ORG.into(),
        filter: Some(filter.clone()),
        page_size: 50,
        page_token: token,
        skip_total,
        ..Default::default()
    }
}

async fn leads_in(report: &mut Report, args: &Args, env: &TestEnv, node: &leads_tests::Node) -> anyhow::Result<()> {
    report.line("## 3. Leads page at scale (issue 4)\n");
    report.line(format!("Load average before: {}\n", loadavg()));
    let admin = env.admin_pool().await?;
    let n = args.leads as i64;
    let small = (n / 20).max(1);
    let chunk = 100_000i64;
    let seed_started = Instant::now();
    let mut orgs = vec![(BIG_ORG.to_owned(), n)];
    orgs.extend((1..=4).map(|k| (format!("small-org-{k}"), small)));
    for (org, count) in &orgs {
        let mut from = 1;
        while from <= *count {
            let to = (from + chunk - 1).min(*count);
            seed_chunk(&admin, org, from, to).await.with_context(|| format!("seeding {org} {from}..{to}"))?;
            progress(format!("leads: seeded {org} {to}/{count} ({:.0} s)", seed_started.elapsed().as_secs_f64()));
            from = to + 1;
        }
    }
    let history_lead = lead_uuid(&admin, BIG_ORG, 1).await?;
    seed_history(&admin, &history_lead, 500).await?;
    let seeded = seed_started.elapsed();
    progress("leads: VACUUM ANALYZE");
    let vacuum_started = Instant::now();
    for table in ["contacts", "leads", "interactions", "status_changes"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE lead.{table}"))).execute(&admin).await?;
    }
    let vacuumed = vacuum_started.elapsed();
    let total_leads: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.leads").fetch_one(&admin).await?;
    let sizes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
         WHERE s.nspname = 'lead' AND c.relkind = 'r' AND c.relname IN ('leads', 'contacts', 'interactions') ORDER BY 1",
    )
    .fetch_all(&admin)
    .await?;
    report.line(format!(
        "Seeded with SQL (generate_series, 100k-row transactions): `{BIG_ORG}` with {} leads and 4 smaller organisations \
         with {} each ({} leads in all), one contact and one opening interaction per lead. Status spread new 20%, \
         contacted 20%, qualifying/qualified/follow_up 10% each, converted 10%, lost 12%, archived 8%; 80% scored \
         (70% ai, 10% manual); 80% assigned among 50 agents; sources chat 60% / broadcast reply 30% over 20 \
         campaigns / integration 10%; created over the last 365 days, last interaction up to 30 days later; names \
         from 40 first x 40 last names. Seeding took {:.0} s, VACUUM ANALYZE {:.0} s. Sizes: {}.\n",
        thousands(n as f64),
        thousands(small as f64),
        thousands(total_leads as f64),
        seeded.as_secs_f64(),
        vacuumed.as_secs_f64(),
        sizes.iter().map(|(t, b)| format!("{t} {} MiB", b / (1024 * 1024))).collect::<Vec<_>>().join(", ")
    ));
    report.line(format!(
        "All requests over gRPC to the in-process LeadService, one at a time, page size 50, in `{BIG_ORG}`. First page: \
         {} requests after 3 warm-ups. Later pages: pages 2 to {} followed through next_page_token, one request each.\n",
        args.iterations,
        args.pages + 1
    ));
    let mut client = node.lead().await?;

    // The transport's own cost: the smallest request the lead service's gRPC server answers.
    let mut health = tonic_health::pb::health_client::HealthClient::new(node.channel(ServiceName::Lead).await?);
    let mut floor = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let t = Instant::now();
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?;
        floor.push(t.elapsed());
    }
    let floor = stats(floor);
    report.line(format!(
        "Transport floor: `grpc.health.v1.Health/Check` on the lead service's server, {} requests: p50 {}, p99 {}.\n",
        floor.n,
        ms(floor.p50),
        ms(floor.p99)
    ));

    report.line("### ListLeads\n");
    report.line(
        "| case | matching | first page p50 | first page p99 | later pages p50 | later pages p99 | with total: p50 | with total: p99 |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    let mut worst_page_p99 = Duration::ZERO;
    let mut worst_total_p99 = Duration::ZERO;
    for case in cases() {
        progress(format!("leads: ListLeads {}", case.name));
        for _ in 0..3 {
            client.list_leads(list_request(&case.filter, String::new(), true)).await?;
        }
        let mut first = Vec::with_capacity(args.iterations);
        for _ in 0..args.iterations {
            let t = Instant::now();
            client.list_leads(list_request(&case.filter, String::new(), true)).await?;
            first.push(t.elapsed());
        }
        let mut later = Vec::with_capacity(args.pages);
        let mut token =
            client.list_leads(list_request(&case.filter, String::new(), true)).await?.into_inner().next_page_token;
        while later.len() < args.pages && !token.is_empty() {
            let t = Instant::now();
            let page = client.list_leads(list_request(&case.filter, token, true)).await?.into_inner();
            later.push(t.elapsed());
            token = page.next_page_token;
        }
        let total_iterations = (args.iterations / 5).max(5);
        let mut with_total = Vec::with_capacity(total_iterations);
        let mut total = 0;
        for _ in 0..total_iterations {
            let t = Instant::now();
            total = client.list_leads(list_request(&case.filter, String::new(), false)).await?.into_inner().total_count;
            with_total.push(t.elapsed());
        }
        let (f, t) = (stats(first), stats(with_total));
        let l = (!later.is_empty()).then(|| stats(later));
        worst_page_p99 = worst_page_p99.max(f.p99).max(l.map(|l| l.p99).unwrap_or_default());
        worst_total_p99 = worst_total_p99.max(t.p99);
        report.line(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} (n={}) |",
            case.name,
            thousands(total as f64),
            ms(f.p50),
            ms(f.p99),
            l.map(|l| ms(l.p50)).unwrap_or_else(|| "-".into()),
            l.map(|l| format!("{} (n={})", ms(l.p99), l.n)).unwrap_or_else(|| "-".into()),
            ms(t.p50),
            ms(t.p99),
            t.n,
        ));
        report.target(
            format!("ListLeads p99, {}", case.name),
            "< 20 ms",
            format!(
                "first {} / later {} / with total {}",
                ms(f.p99),
                l.map(|l| ms(l.p99)).unwrap_or_else(|| "-".into()),
                ms(t.p99)
            ),
            f.p99 < Duration::from_millis(20) && l.is_none_or(|l| l.p99 < Duration::from_millis(20)),
        );
    }
    report.line(format!(
        "\nWorst page p99 without the total: {}; worst p99 with the total (skip_total false): {}. The PASS/MISS below \
         judges the pages without the total; the total is a separate `count(*)` over every matching row.\n",
        ms(worst_page_p99),
        ms(worst_total_p99)
    ));

    // The same queries without gRPC: the service's own read path, called in-process.
    progress("leads: ListLeads in-process, without gRPC");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(platform::db::service_options(&env.settings, ServiceName::Lead)?)
        .await?;
    report.line(
        "In-process, without gRPC (`lead::read::list_leads` on a pool of the lead role; the service's query and \
         row mapping, no transport, no protobuf):\n",
    );
    report.line(
        "| case | first page p50 | first page p99 | with total: p50 | with total: p99 |\n\
         | --- | ---: | ---: | ---: | ---: |",
    );
    for case in cases() {
        let query = lead::query::LeadQuery::parse(&list_request(&case.filter, String::new(), true))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for _ in 0..3 {
            lead::read::list_leads(&pool, &query, false).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let mut page = Vec::with_capacity(args.iterations);
        for _ in 0..args.iterations {
            let t = Instant::now();
            lead::read::list_leads(&pool, &query, false).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            page.push(t.elapsed());
        }
        let mut with_total = Vec::new();
        for _ in 0..(args.iterations / 5).max(5) {
            let t = Instant::now();
            lead::read::list_leads(&pool, &query, true).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            with_total.push(t.elapsed());
        }
        let (p, t) = (stats(page), stats(with_total));
        report.line(format!("| {} | {} | {} | {} | {} |", case.name, ms(p.p50), ms(p.p99), ms(t.p50), ms(t.p99)));
    }
    pool.close().await;
    report.line("");

    // GetLead and GetLeadHistory
    progress("leads: GetLead / GetLeadHistory");
    report.line("### GetLead and GetLeadHistory\n");
    let mut get = Vec::new();
    for i in 0..args.iterations {
        let id = lead_uuid(&admin, BIG_ORG, 1 + (i as i64 * 7919) % n).await?;
        let t = Instant::now();
        client.get_lead(pb::GetLeadRequest { org_id: BIG_ORG.into(), lead_id: id }).await?;
        get.push(t.elapsed());
    }
    let history_request = |page_size: i32, token: String| pb::GetLeadHistoryRequest {
        org_id: BIG_ORG.into(),
        lead_id: history_lead.clone(),
        page_size,
        page_token: token,
    };
    let mut entries_total = 0usize;
    let mut token = String::new();
    loop {
        let page = client.get_lead_history(history_request(500, token)).await?.into_inner();
        entries_total += page.entries.len();
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut h100 = Vec::new();
    let mut h500 = Vec::new();
    for _ in 0..args.iterations {
        let t = Instant::now();
        client.get_lead_history(history_request(100, String::new())).await?;
        h100.push(t.elapsed());
        let t = Instant::now();
        client.get_lead_history(history_request(500, String::new())).await?;
        h500.push(t.elapsed());
    }
    let mut walk = Vec::new();
    for _ in 0..(args.iterations / 10).max(3) {
        let t = Instant::now();
        let mut token = String::new();
        loop {
            let page = client.get_lead_history(history_request(100, token)).await?.into_inner();
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        walk.push(t.elapsed());
    }
    report.line("| request | n | p50 | p99 | max |\n| --- | ---: | ---: | ---: | ---: |");
    for (name, samples) in [
        ("GetLead (random leads)".to_owned(), get),
        (format!("GetLeadHistory, lead with {entries_total} entries, first page of 100"), h100),
        (format!("GetLeadHistory, lead with {entries_total} entries, one page of 500"), h500),
        ("GetLeadHistory, all 5 pages of 100 in sequence".to_owned(), walk),
    ] {
        let s = stats(samples);
        report.line(format!("| {name} | {} | {} | {} | {} |", s.n, ms(s.p50), ms(s.p99), ms(s.max)));
    }
    report.line("");

    // ExportLeads ALL
    progress("leads: ExportLeads ALL");
    let rss_before = proc_status_kb("VmRSS").unwrap_or(0);
    let hwm_before = proc_status_kb("VmHWM").unwrap_or(0);
    let sampler = RssSampler::start();
    let started = Instant::now();
    let mut stream = client
        .export_leads(pb::ExportLeadsRequest {
            query: Some(pb::ListLeadsRequest { org_id: BIG_ORG.into(), skip_total: true, ..Default::default() }),
            scope: pb::ExportScope::All as i32,
        })
        .await?
        .into_inner();
    let mut rows = 0i64;
    let mut bytes = 0usize;
    let mut chunks = 0usize;
    let mut first_chunk = None;
    while let Some(chunk) = stream.message().await? {
        first_chunk.get_or_insert_with(|| started.elapsed());
        rows += chunk.rows;
        bytes += chunk.csv.len();
        chunks += 1;
    }
    let elapsed = started.elapsed();
    let peak = sampler.finish();
    let hwm_after = proc_status_kb("VmHWM").unwrap_or(0);
    let export_rate = rate(rows as u64, elapsed);
    let delta = peak.saturating_sub(rss_before);
    anyhow::ensure!(rows == n, "the export returned {rows} rows, expected {n}");
    report.line("### ExportLeads ALL\n");
    report.line(format!(
        "Every lead of `{BIG_ORG}`, no filter, as CSV over the gRPC server stream; the client counts and drops the chunks. \
         Memory: VmRSS of this process (service and client together) sampled every 5 ms during the export.\n"
    ));
    report.line("| measure | value |\n| --- | ---: |");
    report.line(format!(
        "| rows / chunks / CSV bytes | {} / {chunks} / {:.1} MiB |",
        thousands(rows as f64),
        bytes as f64 / 1048576.0
    ));
    report.line(format!("| time to first chunk | {} |", ms(first_chunk.unwrap_or_default())));
    report.line(format!("| total time | {:.2} s |", elapsed.as_secs_f64()));
    report.line(format!("| **throughput** | **{} rows/s** |", thousands(export_rate)));
    report.line(format!("| VmRSS before / peak during | {} / {} |", mib(rss_before), mib(peak)));
    report.line(format!("| **RSS growth during the export** | **{}** |", mib(delta)));
    report.line(format!("| VmHWM before / after (process lifetime peak) | {} / {} |", mib(hwm_before), mib(hwm_after)));
    report.line("");
    report.target(
        format!("ExportLeads ALL over {} leads", thousands(n as f64)),
        ">= 200,000 rows/s",
        format!("{} rows/s", thousands(export_rate)),
        export_rate >= 200_000.0,
    );
    report.target(
        "ExportLeads memory",
        "< 100 MB",
        format!("+{} RSS (peak {})", mib(delta), mib(peak)),
        delta < 100 * 1000,
    );
    admin.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut report = Report::default();
    report.line("# Lead platform benchmarks\n");
    report.line(format!(
        "Command: `cargo run --release -p leads-tests --bin bench -- {}`\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    ));
    machine(&mut report).await?;
    let mut failures = Vec::new();
    for section in [Section::Raw, Section::Ingest, Section::Leads, Section::Broadcast, Section::Desk] {
        if !args.only.contains(&section) {
            continue;
        }
        let started = Instant::now();
        let result = match section {
            Section::Raw => raw(&mut report, &args).await,
            Section::Ingest => ingest(&mut report, &args).await,
            Section::Leads => leads(&mut report, &args).await,
            Section::Broadcast => {
                let mut result = Ok(());
                for &batch in &args.broadcast_batches {
                    let options = broadcast::BroadcastOptions {
                        messages: args.broadcast_messages,
                        statuses: args.broadcast_statuses,
                        backlog_statuses: args.broadcast_backlog,
                        batch,
                    };
                    result = broadcast::run(&options).await.map(|section| report.line(section));
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
            Section::Desk => {
                let options = desk::DeskOptions { leads: args.desk_leads, requests: args.desk_requests };
                desk::run(&options).await.map(|section| report.line(section))
            }
        };
        progress(format!("{section:?} section took {:.0} s", started.elapsed().as_secs_f64()));
        if let Err(error) = result {
            progress(format!("{section:?} section FAILED: {error:#}"));
            report.line(format!("**The {section:?} section failed: {error:#}**\n"));
            failures.push(section);
        }
    }
    report.line("## Targets\n");
    report.line("| target | goal | measured | |\n| --- | --- | --- | --- |");
    let targets = std::mem::take(&mut report.targets);
    for t in &targets {
        let verdict = match t.met {
            Some(true) => "PASS",
            Some(false) => "**MISS**",
            None => "",
        };
        report.line(format!("| {} | {} | {} | {verdict} |", t.what, t.target, t.measured));
    }
    report.line(format!("\nLoad average at the end: {}; finished {}.", loadavg(), Utc::now().to_rfc3339()));
    let out = report.body;
    println!("{out}");
    if let Some(path) = &args.out {
        std::fs::write(path, &out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !failures.is_empty() {
        bail!("sections failed: {failures:?}");
    }
    Ok(())
}
