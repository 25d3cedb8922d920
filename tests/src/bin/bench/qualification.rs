//! Section 6: the qualification service as operators run it, in `leads run --services
//! qualification` processes of the release binary. A backlog of lead events (interactions in
//! five languages through the ingest and lead services, with no qualification running) is
//! drained by one worker process and, in a fresh environment, by two; then the latency from an
//! interaction's publish to its lead's score in ListLeads, with ingest, lead and qualification
//! in one process under a paced load.

use super::{
    Args,
    events::{ACK_WINDOW, FIRST_NAMES, LAST_NAMES, Prepared, Publisher, org_name, prepare},
    production_env,
    report::{
        Report, Target, loadavg, machine_cpu_seconds, micros, ms, process_cpu_seconds, progress, rate, stats, thousands,
    },
};
use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use leads_tests::{TestEnv, pb};
use platform::{ServiceName, nats::StreamKind};
use qualification_model::{
    features::Direction,
    synthetic::{SyntheticConfig, generate},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::Mutex,
};

/// Probes waiting for their score, by phone: when published, and the time their message carries.
type Probes = HashMap<String, (Instant, DateTime<Utc>)>;

/// The qualification service's durable consumer of lead events.
const DURABLE: &str = "qualification";
const PROBE_ORG: &str = "bench-probe";

pub async fn qualification(report: &mut Report, args: &Args) -> anyhow::Result<()> {
    report.line("## 6. Qualification\n");
    report.line(format!("Load average before: {}\n", loadavg()));
    let binary = leads_binary()?;
    let texts = Texts::new();
    let mut drains = Vec::new();
    for &workers in &args.qualification_workers {
        let env = production_env().await?;
        let result = drain(args, &env, &binary, &texts, workers).await;
        env.cleanup().await?;
        drains.push(result?);
    }
    drain_report(report, args, &drains, &texts);
    let env = production_env().await?;
    let result = latency(report, args, &env, &binary, &texts).await;
    env.cleanup().await?;
    result
}

// ---------------------------------------------------------------------------------------
// What the contacts write

/// Messages of the synthetic organisations (English, Spanish, Portuguese, Hinglish and
/// Indonesian conversations of `qualification_model::synthetic`), by direction.
struct Texts {
    inbound: Vec<String>,
    outbound: Vec<String>,
}

impl Texts {
    fn new() -> Self {
        let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
        for seed in 1..=5 {
            for lead in generate(&SyntheticConfig { seed, leads: 400, ..SyntheticConfig::default() }).leads {
                for message in lead.messages {
                    match message.direction {
                        Direction::Inbound => inbound.push(message.text),
                        Direction::Outbound => outbound.push(message.text),
                    }
                }
            }
        }
        Self { inbound, outbound }
    }

    fn average_bytes(&self) -> usize {
        let all = self.inbound.iter().chain(&self.outbound);
        all.clone().map(String::len).sum::<usize>() / all.count().max(1)
    }
}

/// A chat message of `contact`; the first of a contact is inbound (it opens the lead), later
/// ones are outbound (an agent's reply) 30% of the time.
fn event(
    rng: &mut StdRng,
    texts: &Texts,
    event_id: &str,
    contact: u64,
    first: bool,
    at: DateTime<Utc>,
) -> serde_json::Value {
    let outbound = !first && rng.random_bool(0.3);
    let pool = if outbound { &texts.outbound } else { &texts.inbound };
    let text = &pool[rng.random_range(0..pool.len())];
    let name = format!("{} {}", FIRST_NAMES[(contact % 40) as usize], LAST_NAMES[((contact / 40) % 40) as usize]);
    let mut event = serde_json::json!({
        "event_id": event_id,
        "occurred_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "kind": "chat_message",
        "direction": if outbound { "outbound" } else { "inbound" },
        "channel": "whatsapp",
        "contact": { "phone": leads_tests::phone(contact as u32), "name": name },
        "text": text,
        "conversation_id": format!("conv-{contact}"),
    });
    if outbound {
        event["agent_id"] = format!("agent-{:02}", contact % 50).into();
    }
    event
}

// ---------------------------------------------------------------------------------------
// `leads run` child processes

/// The release `leads` binary (or `LEADS_BIN`), brought up to date first: built with the
/// bench's own package selection, so that features resolve as they did for the bench and
/// nothing is compiled twice.
pub(crate) fn leads_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("LEADS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| workspace.join("target"), PathBuf::from);
    let release = !cfg!(debug_assertions);
    progress("bringing the leads binary up to date (cargo build)");
    let mut command = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.arg("build");
    if release {
        command.arg("--release");
    }
    let status = command
        .args(["-p", "leads-tests", "--bin", "bench", "-p", "leads", "--bin", "leads"])
        .current_dir(&workspace)
        .stdout(Stdio::null())
        .status()
        .context("cannot run cargo")?;
    anyhow::ensure!(status.success(), "cannot build the leads binary");
    Ok(target.join(if release { "release" } else { "debug" }).join("leads"))
}

/// A `leads run` child process pointed at an environment, its Prometheus metrics on a port
/// of its own.
pub(crate) struct Child {
    child: tokio::process::Child,
    pid: u32,
    ready: tokio::sync::watch::Receiver<bool>,
    /// `(service, gRPC address)` as the process prints them.
    addrs: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    metrics: SocketAddr,
}

impl Child {
    fn spawn(env: &TestEnv, binary: &PathBuf, services: &str) -> anyhow::Result<Self> {
        Self::spawn_with(env, binary, services, &[])
    }

    /// As `spawn`, with more environment variables for the child.
    pub(crate) fn spawn_with(
        env: &TestEnv,
        binary: &PathBuf,
        services: &str,
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut command = tokio::process::Command::new(binary);
        command.args(["run", "--services", services]).stdout(Stdio::null()).stderr(Stdio::piped());
        for (key, value) in env.process_env() {
            command.env(key, value);
        }
        for service in ServiceName::ALL {
            command.env(format!("LEADS_GRPC_{}_PORT", service.as_str().to_uppercase()), "0");
        }
        command.env("LEADS_METRICS_ADDR", metrics.to_string()).kill_on_drop(true);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let mut child = command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the process has no id")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let addrs: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
        let seen = addrs.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let service = line.split_once(' ').filter(|(name, addr)| {
                    ServiceName::ALL.iter().any(|s| s.as_str() == *name) && addr.parse::<SocketAddr>().is_ok()
                });
                if line == "ready" {
                    ready_tx.send_replace(true);
                } else if let Some((name, addr)) = service {
                    seen.lock().expect("addresses").push((name.to_owned(), addr.to_owned()));
                } else {
                    eprintln!("{line}");
                }
            }
        });
        Ok(Self { child, pid, ready, addrs, metrics })
    }

    pub(crate) async fn ready(&mut self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(120), self.ready.wait_for(|ready| *ready))
            .await
            .map_err(|_| anyhow::anyhow!("the process did not become ready within 120 s"))?
            .map_err(|_| anyhow::anyhow!("the process exited before it was ready"))?;
        Ok(())
    }

    pub(crate) fn addr(&self, service: ServiceName) -> Option<String> {
        self.addrs.lock().expect("addresses").iter().find(|(name, _)| name == service.as_str()).map(|(_, a)| a.clone())
    }

    /// Leads the process has scored, from its `leads_qualification_scorings_total`.
    async fn scorings(&self) -> anyhow::Result<u64> {
        let mut stream = tokio::net::TcpStream::connect(self.metrics).await?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await?;
        let mut body = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut body)).await??;
        let total = body
            .lines()
            .filter(|line| line.starts_with(platform::telemetry::names::QUALIFICATION_SCORINGS))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        Ok(total as u64)
    }

    /// SIGTERM, then up to 30 s for the process to finish its in-flight work.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let status = tokio::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().await?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.pid);
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.is_err() {
            self.child.kill().await?;
            bail!("process {} did not stop within 30 s of SIGTERM", self.pid);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The backlog drain

struct Drain {
    workers: usize,
    interactions: i64,
    leads: i64,
    stream_messages: u64,
    stream_bytes: u64,
    prepared_in: Duration,
    /// From the first spawn until every process printed `ready`.
    ready_after: Duration,
    /// From the first spawn until every interaction was recorded as scored.
    elapsed: Duration,
    scorings: u64,
    /// Score versions written: the sum of `qualification.scores.version`.
    versions: i64,
    /// Messages the workers published (`EVENTS_QUALIFICATION`): scores go out batched.
    published: u64,
    /// CPU time of the worker processes, from their start until the backlog was drained.
    worker_cpu: f64,
    /// Busy CPU of the whole machine over the same time.
    machine_cpu: f64,
    /// CPU of the Postgres cluster's processes and of nats-server over the same time.
    servers_cpu: ServerCpu,
    /// CPU of this bench process over the same time (its polling of the consumer and counts).
    bench_cpu: f64,
}

impl Drain {
    fn interaction_rate(&self) -> f64 {
        rate(self.interactions as u64, self.elapsed)
    }

    fn scoring_rate(&self) -> f64 {
        rate(self.scorings, self.elapsed)
    }

    /// CPU seconds spent per scoring.
    fn per_scoring(&self, cpu: f64) -> f64 {
        cpu / self.scorings.max(1) as f64
    }

    /// The machine's busy CPU that is neither the workers', the servers' nor the bench's:
    /// the kernel's work outside those processes and whatever else ran on the machine.
    fn unattributed_cpu(&self) -> f64 {
        self.machine_cpu - self.worker_cpu - self.servers_cpu.postgres - self.servers_cpu.nats - self.bench_cpu
    }
}

/// CPU seconds (user + system) of the Postgres cluster the bench uses and of the nats-server
/// processes, from /proc/<pid>/stat. Postgres's backends come and go with their connections;
/// the time of one that has exited moves into the postmaster's reaped-children fields, so those
/// are counted too and a difference of two readings keeps every backend's share.
#[derive(Debug, Clone, Copy)]
struct ServerCpu {
    postgres: f64,
    nats: f64,
}

/// USER_HZ: 100 on every Linux architecture this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

impl ServerCpu {
    /// The postmaster and its children when `postmaster` is known, else every process named
    /// `postgres`; NaN for a server with no process in sight (another PID namespace).
    fn read(postmaster: Option<u32>) -> Self {
        let (mut postgres, mut nats) = (None::<f64>, None::<f64>);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // The command name (field 2) is in parentheses and may hold spaces; after it come
            // the state, the parent's pid, and utime, stime, cutime, cstime as the 12th to 15th.
            let Some((head, rest)) = stat.rsplit_once(')') else { continue };
            let Some((_, command)) = head.split_once('(') else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let parent = fields.get(1).and_then(|p| p.parse::<u32>().ok());
            let slot = match command {
                "postgres" if postmaster.is_none_or(|pm| pid == pm || parent == Some(pm)) => &mut postgres,
                "nats-server" => &mut nats,
                _ => continue,
            };
            let ticks: f64 = fields.iter().skip(11).take(4).filter_map(|t| t.parse::<f64>().ok()).sum();
            *slot.get_or_insert(0.0) += ticks / TICKS_PER_SECOND;
        }
        Self { postgres: postgres.unwrap_or(f64::NAN), nats: nats.unwrap_or(f64::NAN) }
    }

    fn since(self, before: Self) -> Self {
        Self { postgres: self.postgres - before.postgres, nats: self.nats - before.nats }
    }
}

/// The postmaster of the cluster behind `admin`: the parent of its own backend.
async fn postmaster_pid(admin: &sqlx::PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(admin).await.ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Publishes `args.qualification_backlog` interactions through ingest and lead (in-process)
/// until the lead service has published all its events, with no qualification running; then
/// starts `workers` qualification processes and times them until every interaction is scored.
async fn drain(args: &Args, env: &TestEnv, binary: &PathBuf, texts: &Texts, workers: usize) -> anyhow::Result<Drain> {
    let admin = env.admin_pool().await?;
    let result = drain_in(args, env, &admin, binary, texts, workers).await;
    admin.close().await;
    result
}

async fn drain_in(
    args: &Args,
    env: &TestEnv,
    admin: &sqlx::PgPool,
    binary: &PathBuf,
    texts: &Texts,
    workers: usize,
) -> anyhow::Result<Drain> {
    // Every schema first, so that the workers start as they would on a deployed system.
    leads::migrate(&env.settings).await?;
    let n = args.qualification_backlog;
    let contacts = args.qualification_contacts.min(n).max(1);
    let mut rng = StdRng::seed_from_u64(11 + workers as u64);
    let base = Utc::now() - chrono::Duration::days(1);
    let events: Vec<Prepared> = (0..n)
        .map(|j| {
            let contact = j % contacts;
            let at = base + chrono::Duration::milliseconds(j as i64);
            let event = event(&mut rng, texts, &format!("q-{j:09}"), contact, j < contacts, at);
            prepare(env, &org_name(contact % args.orgs), &event)
        })
        .collect();
    progress(format!(
        "qualification ({workers} worker(s)): publishing {n} interactions of {contacts} contacts with ingest and lead \
         running, qualification not"
    ));
    let started = Instant::now();
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let prepared = async {
        let mut publisher = Publisher::new(env.js.clone(), ACK_WINDOW);
        for p in events {
            publisher.publish(p.subject, &p.event_id, p.payload).await?;
        }
        publisher.drain().await?;
        wait_until(admin, "SELECT count(*) FROM lead.interactions", |c| c >= n as i64, "interactions recorded").await?;
        wait_until(admin, "SELECT count(*) FROM lead.outbox", |c| c == 0, "the lead outbox published").await
    }
    .await;
    let stopped = node.stop().await;
    prepared?;
    stopped?;
    let prepared_in = started.elapsed();
    let interactions: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.interactions").fetch_one(admin).await?;
    let leads: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.leads").fetch_one(admin).await?;
    let mut stream = env.js.get_stream(env.subjects.stream_name(StreamKind::Events("lead"))).await?;
    let state = stream.info().await?.state.clone();
    progress(format!(
        "qualification ({workers} worker(s)): backlog of {interactions} interactions ({} lead events messages, {} MiB) \
         ready in {:.1} s; starting the worker(s)",
        state.messages,
        state.bytes / (1024 * 1024),
        prepared_in.as_secs_f64()
    ));

    let postmaster = postmaster_pid(admin).await;
    let cpu = machine_cpu_seconds();
    let servers_cpu = ServerCpu::read(postmaster);
    let bench_cpu = process_cpu_seconds(std::process::id());
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..workers {
        children.push(Child::spawn(env, binary, "qualification")?);
    }
    let outcome = async {
        let ready = async {
            for child in &mut children {
                child.ready().await?;
            }
            anyhow::Ok(started.elapsed())
        };
        // A worker that dies before it is ready ends the wait at once.
        let (ready_after, done) = tokio::try_join!(
            ready,
            super::report::wait_counted(
                &stream,
                DURABLE,
                admin,
                "SELECT count(*) FROM qualification.scored_interactions",
                interactions,
                started,
                Duration::from_secs(1800),
            )
        )?;
        let worker_cpu: f64 = children.iter().map(|c| process_cpu_seconds(c.pid)).sum();
        let machine_cpu = machine_cpu_seconds() - cpu;
        let servers_cpu = ServerCpu::read(postmaster).since(servers_cpu);
        let bench_cpu = process_cpu_seconds(std::process::id()) - bench_cpu;
        let mut scorings = 0;
        for child in &children {
            scorings += child.scorings().await.context("cannot read a worker's metrics")?;
        }
        let cpu = (worker_cpu, machine_cpu, servers_cpu, bench_cpu);
        anyhow::Ok((ready_after, done.duration_since(started), cpu, scorings))
    }
    .await;
    for child in children {
        child.stop().await?;
    }
    let (ready_after, elapsed, (worker_cpu, machine_cpu, servers_cpu, bench_cpu), scorings) = outcome?;
    let versions: i64 = sqlx::query_scalar("SELECT coalesce(sum(version), 0)::bigint FROM qualification.scores")
        .fetch_one(admin)
        .await?;
    let published = env
        .js
        .get_stream(env.subjects.stream_name(StreamKind::Events("qualification")))
        .await?
        .info()
        .await?
        .state
        .messages;
    let drained = Drain {
        workers,
        interactions,
        leads,
        stream_messages: state.messages,
        stream_bytes: state.bytes,
        prepared_in,
        ready_after,
        elapsed,
        scorings,
        versions,
        published,
        worker_cpu,
        machine_cpu,
        servers_cpu,
        bench_cpu,
    };
    progress(format!(
        "qualification ({workers} worker(s)): {interactions} interactions in {:.2} s = {:.0}/s, {scorings} scorings = \
         {:.0}/s; worker CPU {:.1} s",
        elapsed.as_secs_f64(),
        drained.interaction_rate(),
        drained.scoring_rate(),
        worker_cpu
    ));
    Ok(drained)
}

/// Polls `sql` (a count) every 100 ms until `done` holds, for at most 30 minutes.
async fn wait_until(
    admin: &sqlx::PgPool,
    sql: &'static str,
    done: impl Fn(i64) -> bool,
    what: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let count: i64 = sqlx::query_scalar(sql).fetch_one(admin).await?;
        if done(count) {
            return Ok(());
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            progress(format!("  waiting for {what}: {count} after {:.0} s", started.elapsed().as_secs_f64()));
            last_print = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("{what}: still {count} after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn drain_report(report: &mut Report, args: &Args, drains: &[Drain], texts: &Texts) {
    let Some(first) = drains.first() else { return };
    report.line("### Scorings per second, one worker process and two\n");
    report.line(format!(
        "{} chat messages (70% inbound; texts of `qualification_model::synthetic`'s conversations in English, \
         Spanish, Portuguese, Hinglish and Indonesian, {} B on average) from {} contacts in {} organisations, \
         published through the ingest and lead services (in the bench process) with no qualification running, until \
         the lead service had published every lead event; then the ingest and lead services stopped, and {} `leads \
         run --services qualification` process(es) of the release binary (production consumer settings: batch {}, {} \
         batches in flight, pools of {} connections) started on the backlog, timed from the first spawn until \
         `qualification.scored_interactions` held every interaction (counted whenever the `qualification` consumer \
         had acknowledged everything; polled every 20 ms). A fresh database and stream for each worker count. \
         Scorings: the workers' own `leads_qualification_scorings_total` (a lead scored once per consumer batch \
         however many of its messages the batch holds); score versions: the sum of `qualification.scores.version` \
         (a score that did not change writes none). CPU of the workers: utime + stime from /proc/<pid>/stat at the \
         end; of Postgres (the postmaster and its children, exited backends included: the whole cluster, so other \
         databases' work too, which wants a quiet machine) and nats-server: the same fields read before the first \
         spawn and at the end; the machine's: every process (/proc/stat).\n",
        thousands(first.interactions as f64),
        texts.average_bytes(),
        thousands(args.qualification_contacts as f64),
        args.orgs,
        args.qualification_workers.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "),
        platform::Settings::default().consumer.batch_size,
        platform::Settings::default().consumer.concurrency,
        platform::Settings::default().database_max_connections,
    ));
    let header: Vec<String> = drains.iter().map(|d| format!("{} worker(s)", d.workers)).collect();
    report.line(format!("| measure | {} |", header.join(" | ")));
    report.line(format!("| --- |{}", " ---: |".repeat(drains.len())));
    let row = |report: &mut Report, label: &str, value: &dyn Fn(&Drain) -> String| {
        let cells: Vec<String> = drains.iter().map(value).collect();
        report.line(format!("| {label} | {} |", cells.join(" | ")));
    };
    row(report, "leads / lead-event messages in the stream", &|d: &Drain| {
        format!(
            "{} / {} ({} MiB)",
            thousands(d.leads as f64),
            thousands(d.stream_messages as f64),
            d.stream_bytes >> 20
        )
    });
    row(report, "backlog prepared in (ingest + lead)", &|d: &Drain| format!("{:.1} s", d.prepared_in.as_secs_f64()));
    row(report, "worker(s) ready after", &|d: &Drain| ms(d.ready_after));
    row(report, "**backlog drained in**", &|d: &Drain| format!("**{:.2} s**", d.elapsed.as_secs_f64()));
    row(report, "**interactions applied / s**", &|d: &Drain| format!("**{}**", thousands(d.interaction_rate())));
    row(report, "**scorings / s**", &|d: &Drain| format!("**{}**", thousands(d.scoring_rate())));
    row(report, "scorings / score versions written", &|d: &Drain| {
        format!("{} / {}", thousands(d.scorings as f64), thousands(d.versions as f64))
    });
    row(report, "score versions / s", &|d: &Drain| thousands(rate(d.versions as u64, d.elapsed)));
    row(report, "messages published (scores batched by organisation)", &|d: &Drain| thousands(d.published as f64));
    row(report, "worker CPU (all workers) / per scoring / of the drain's wall time", &|d: &Drain| {
        format!(
            "{:.1} s / {} / {:.0}%",
            d.worker_cpu,
            micros(d.worker_cpu / d.scorings.max(1) as f64),
            100.0 * d.worker_cpu / d.elapsed.as_secs_f64()
        )
    });
    row(report, "machine CPU per scoring (workers, Postgres, NATS)", &|d: &Drain| {
        micros(d.machine_cpu / d.scorings.max(1) as f64)
    });
    let parts: Vec<Option<RawParts>> = drains.iter().map(|d| raw_parts(report, d)).collect();
    if parts.iter().all(Option::is_some) {
        let cells: Vec<String> = drains
            .iter()
            .zip(&parts)
            .filter_map(|(d, p)| Some((d, p.as_ref()?)))
            .map(|(d, p)| {
                let attributed = d.worker_cpu + d.servers_cpu.postgres + d.servers_cpu.nats;
                format!(
                    "**{:.3}** ({:.3} of the workers', Postgres's and nats-server's)",
                    p.cpu / d.per_scoring(d.machine_cpu),
                    p.cpu / d.per_scoring(attributed)
                )
            })
            .collect();
        report.line(format!(
            "| **raw parts' CPU per scoring / machine CPU per scoring** (the fraction of the ceiling reached) | {} |",
            cells.join(" | ")
        ));
    }
    if let (Some(one), Some(two)) = (drains.iter().find(|d| d.workers == 1), drains.iter().find(|d| d.workers == 2)) {
        report.line(format!(
            "\nTwo workers / one: **{:.2}** in scorings/s, {:.2} in interactions/s.",
            two.scoring_rate() / one.scoring_rate(),
            two.interaction_rate() / one.interaction_rate()
        ));
    }
    report.line("");
    let one = drains.iter().find(|d| d.workers == 1).unwrap_or(first);
    let per_scoring = one.worker_cpu / one.scorings.max(1) as f64;
    raw_costs(report, one, per_scoring);
    scaling_model(report, drains);
    ceiling_target(report, drains, &parts);
    let rate_per_worker = one.scoring_rate() / one.workers as f64;
    report.target(
        "Qualification scorings per worker process",
        ">= 5,000 scorings/s",
        format!(
            "{} scorings/s ({} interactions/s; {} in the worker per scoring)",
            thousands(rate_per_worker),
            thousands(one.interaction_rate() / one.workers as f64),
            micros(per_scoring)
        ),
        rate_per_worker >= 5_000.0,
    );
}

/// One scoring's work as the raw parts (section 1) would do it.
struct RawParts {
    /// Rows written, counted like the raw insert's.
    rows: f64,
    /// Lead event messages consumed.
    messages: f64,
    /// Messages published.
    published: f64,
    /// What those cost at the raw section's machine CPU per row and per message, in seconds.
    cpu: f64,
}

/// The raw parts of one scoring of drain `d`; none without the raw section's figures.
fn raw_parts(report: &Report, d: &Drain) -> Option<RawParts> {
    let (pg, consume, publish) = (report.raw_pg_cpu?, report.raw_consume_cpu?, report.raw_publish_cpu?);
    let scorings = d.scorings.max(1) as f64;
    // What a scoring writes, as rows like the raw insert's: its share of scored_interactions,
    // the lead's state row, its features row, its score row, and its share of the outbox rows;
    // its share of the lead event messages consumed and of the messages published.
    let rows = (d.interactions as f64 + d.published as f64) / scorings + 3.0;
    let messages = d.stream_messages as f64 / scorings;
    let published = d.published as f64 / scorings;
    let cpu = rows * pg + messages * consume + published * publish;
    Some(RawParts { rows, messages, published, cpu })
}

/// One worker's CPU per scoring beside what the raw parts cost in this run, and what those
/// parts alone would allow on this machine.
fn raw_costs(report: &mut Report, d: &Drain, worker_per_scoring: f64) {
    let (Some(pg), Some(consume), Some(publish), Some(raw)) =
        (report.raw_pg_cpu, report.raw_consume_cpu, report.raw_publish_cpu, raw_parts(report, d))
    else {
        report.line("(Run the raw section too for the raw parts' costs beside these.)\n");
        return;
    };
    let RawParts { rows, messages, published, cpu: parts } = raw;
    let machine_per_scoring = d.per_scoring(d.machine_cpu);
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    report.line("#### One worker's CPU per scoring beside the raw parts (same run)\n");
    report.line("| | CPU per unit | worker CPU per scoring / it |\n| --- | ---: | ---: |");
    report.line(format!(
        "| one worker process, per scoring ({} drain) | **{}** | 1 |",
        if d.workers == 1 { "1-worker" } else { "first" },
        micros(worker_per_scoring)
    ));
    report.line(format!(
        "| the machine during that drain, per scoring | {} | {:.2} |",
        micros(machine_per_scoring),
        worker_per_scoring / machine_per_scoring
    ));
    report.line(format!(
        "| raw Postgres UNNEST insert, per row (section 1) | {} | {:.1} |",
        micros(pg),
        worker_per_scoring / pg
    ));
    report.line(format!(
        "| raw JetStream pull consume acknowledging each, per message | {} | {:.1} |",
        micros(consume),
        worker_per_scoring / consume
    ));
    report.line(format!(
        "| raw JetStream publish, per message | {} | {:.1} |",
        micros(publish),
        worker_per_scoring / publish
    ));
    report.line(format!(
        "| the raw parts of one scoring: {rows:.2} rows, {messages:.3} messages consumed, {published:.2} published | {} | {:.1} |",
        micros(parts),
        worker_per_scoring / parts
    ));
    report.line(format!(
        "\nOn {cores} cores, the raw parts alone would allow {} scorings/s (cores / their CPU per scoring; the rows \
         are counted as the raw insert's narrow rows, while a lead's features row carries a few hundred bytes, so this \
         ceiling is generous); the whole machine spent {} per scoring in the 1-worker drain, {} scorings/s at full \
         use of the cores; a worker alone, with the cores to itself, {} scorings/s.\n",
        thousands(cores / parts),
        micros(machine_per_scoring),
        thousands(cores / machine_per_scoring),
        thousands(cores / worker_per_scoring),
    ));
}

/// The target on how close the machine's CPU per scoring comes to its raw parts' (`parts`,
/// one per drain), every drain counted.
fn ceiling_target(report: &mut Report, drains: &[Drain], parts: &[Option<RawParts>]) {
    const WHAT: &str = "Qualification: machine CPU per scoring toward its raw parts (raw parts' CPU / machine's)";
    const AIM: &str = ">= 0.5 in every drain";
    let fractions: Option<Vec<(usize, f64)>> = drains
        .iter()
        .zip(parts)
        .map(|(d, p)| Some((d.workers, p.as_ref()?.cpu / d.per_scoring(d.machine_cpu))))
        .collect();
    match fractions {
        Some(fractions) if !fractions.is_empty() => {
            let measured: Vec<String> =
                fractions.iter().map(|(workers, f)| format!("{f:.3} with {workers} worker(s)")).collect();
            let met = fractions.iter().all(|(_, f)| *f >= 0.5);
            report.target(WHAT, AIM, measured.join(", "), met);
        }
        _ => report.targets.push(Target {
            what: WHAT.into(),
            target: AIM.into(),
            measured: "not measured (run the raw section too)".into(),
            met: None,
        }),
    }
}

/// Where a scoring's CPU went, by process, in each drain; then what a machine with more cores
/// would do at those costs: a model from this run's figures, not a measurement.
fn scaling_model(report: &mut Report, drains: &[Drain]) {
    // Two workers on two cores include the contention between workers that more cores would
    // bring; with no 2-worker drain, the drain with the most workers stands in.
    let Some(loaded) = drains.iter().find(|d| d.workers == 2).or_else(|| drains.iter().max_by_key(|d| d.workers))
    else {
        return;
    };
    report.line("#### Where a scoring's CPU goes, by process, and a model of more cores\n");
    let header: Vec<String> = drains.iter().map(|d| format!("{} worker(s)", d.workers)).collect();
    report.line(format!("| CPU per scoring | {} |", header.join(" | ")));
    report.line(format!("| --- |{}", " ---: |".repeat(drains.len())));
    let row = |report: &mut Report, label: &str, value: &dyn Fn(&Drain) -> f64| {
        let cells: Vec<String> = drains.iter().map(|d| micros(d.per_scoring(value(d)))).collect();
        report.line(format!("| {label} | {} |", cells.join(" | ")));
    };
    row(report, "**w**: the worker processes", &|d: &Drain| d.worker_cpu);
    row(report, "Postgres (the postmaster and its children)", &|d: &Drain| d.servers_cpu.postgres);
    row(report, "nats-server", &|d: &Drain| d.servers_cpu.nats);
    row(report, "**d** = Postgres + nats-server", &|d: &Drain| d.servers_cpu.postgres + d.servers_cpu.nats);
    row(report, "this bench process (polling the consumer; outside the model)", &|d: &Drain| d.bench_cpu);
    row(report, "the rest: kernel work outside these processes, anything else running (outside the model)", &|d| {
        d.unattributed_cpu()
    });
    row(report, "the machine (/proc/stat)", &|d: &Drain| d.machine_cpu);
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let busy: Vec<String> =
        drains.iter().map(|d| format!("{:.0}%", 100.0 * d.machine_cpu / d.elapsed.as_secs_f64() / cores)).collect();
    report.line(format!("| the machine's cores busy during the drain | {} |", busy.join(" | ")));
    report.line("");

    let w = loaded.per_scoring(loaded.worker_cpu);
    let postgres = loaded.per_scoring(loaded.servers_cpu.postgres);
    let nats = loaded.per_scoring(loaded.servers_cpu.nats);
    let d = postgres + nats;
    if !(w.is_finite() && d.is_finite()) {
        report.line("(Postgres or nats-server not seen in /proc: no model.)\n");
        return;
    }
    if let Some(one) = drains.iter().find(|d| d.workers == 1).filter(|_| loaded.workers > 1) {
        let one_d = one.per_scoring(one.servers_cpu.postgres + one.servers_cpu.nats);
        report.line(format!(
            "Contention factor, measured: a scoring's worker CPU with {} workers / with 1 = **{:.2}** ({} / {}); its \
             Postgres + nats-server CPU, the same ratio: {:.2}.\n",
            loaded.workers,
            w / one.per_scoring(one.worker_cpu),
            micros(w),
            micros(one.per_scoring(one.worker_cpu)),
            d / one_d,
        ));
    }
    report.line(format!(
        "**A model, not a measurement.** On a machine of C cores shared by W = C/2 worker processes, Postgres and \
         nats-server: scorings/s = min(C / (w_eff + d), 1 / n), where w_eff = {} (the workers' CPU per scoring \
         measured with {} workers, contention included), d = {} (Postgres {} + nats-server {}) from the same drain, \
         and n = nats-server's {} of it. Assumed: the cores are kept busy with these three's work only (the bench \
         process and the rest above left out; on a quiet machine the rest is mostly interrupt and softirq time, the \
         loopback traffic, which grows with the load, so leaving it out flatters the model by up to its share); \
         Postgres scales with the cores, its CPU per scoring staying as measured (no lock contention between workers \
         on the same leads, no WAL or I/O limit); a worker's CPU per scoring stays w_eff with C/2 workers \
         (contention among more than {} workers is not measured); nats-server's work for the one stream and its one \
         durable consumer stays on one core at most (1 / n), a pessimistic bound. The workers take {:.0}% of w_eff \
         + d.\n",
        micros(w),
        loaded.workers,
        micros(d),
        micros(postgres),
        micros(nats),
        micros(nats),
        loaded.workers,
        100.0 * w / (w + d),
    ));
    report.line(
        "| cores C | workers W = C/2 | cores: C / (w_eff + d) | nats-server on one core: 1 / n | **modelled \
         scorings/s** (the lower) | per core |\n| ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    // Too little nats-server CPU to measure (10 ms ticks) leaves the cores as the only bound.
    let broker_bound = if nats > 0.0 { 1.0 / nats } else { f64::INFINITY };
    let scorings_per_s = |value: f64| if value.is_finite() { thousands(value) } else { "no bound measured".into() };
    for c in [2.0_f64, 4.0, 8.0, 16.0] {
        let cores_bound = c / (w + d);
        let modelled = cores_bound.min(broker_bound);
        report.line(format!(
            "| {c} | {} | {} | {} | **{}** | {} |",
            c / 2.0,
            thousands(cores_bound),
            scorings_per_s(broker_bound),
            thousands(modelled),
            thousands(modelled / c),
        ));
    }
    report.line(format!(
        "\nMeasured beside it, on this machine ({cores} cores) with {} worker(s): {} scorings/s with {:.0}% of the \
         cores busy.\n",
        loaded.workers,
        thousands(loaded.scoring_rate()),
        100.0 * loaded.machine_cpu / loaded.elapsed.as_secs_f64() / cores,
    ));
}

// ---------------------------------------------------------------------------------------
// Latency under a paced load

async fn latency(
    report: &mut Report,
    args: &Args,
    env: &TestEnv,
    binary: &PathBuf,
    texts: &Texts,
) -> anyhow::Result<()> {
    let admin = env.admin_pool().await?;
    let mut child = Child::spawn(env, binary, "ingest,lead,qualification")?;
    let result = async {
        child.ready().await?;
        latency_in(report, args, env, &admin, &child, texts).await
    }
    .await;
    let stopped = child.stop().await;
    admin.close().await;
    result?;
    stopped
}

async fn latency_in(
    report: &mut Report,
    args: &Args,
    env: &TestEnv,
    admin: &sqlx::PgPool,
    child: &Child,
    texts: &Texts,
) -> anyhow::Result<()> {
    let lead_addr = child.addr(ServiceName::Lead).context("the process did not print the lead service's address")?;
    let client = pb::lead_service_client::LeadServiceClient::connect(format!("http://{lead_addr}")).await?;
    let contacts = args.qualification_contacts.max(1);
    let mut rng = StdRng::seed_from_u64(99);

    // Warm-up: one message per contact, so that the paced run's traffic rescores existing
    // leads, each probe aside.
    progress(format!("qualification latency: warming up with one message from each of {contacts} contacts"));
    let mut publisher = Publisher::new(env.js.clone(), ACK_WINDOW);
    for contact in 0..contacts {
        let e = event(&mut rng, texts, &format!("warm-{contact:09}"), contact, true, Utc::now());
        let p = prepare(env, &org_name(contact % args.orgs), &e);
        publisher.publish(p.subject, &p.event_id, p.payload).await?;
    }
    publisher.drain().await?;
    wait_until(
        admin,
        "SELECT count(*) FROM qualification.scored_interactions",
        |c| c >= contacts as i64,
        "the warm-up scored",
    )
    .await?;

    let tick = Duration::from_millis(10);
    let per_tick = (args.qualification_rate / 100).max(1);
    let ticks = args.qualification_secs * 100;
    progress(format!(
        "qualification latency: {} interactions/s for {} s, one probe per 10 ms",
        per_tick * 100,
        args.qualification_secs
    ));
    // Pending probes by phone: when published, and the time their message carries.
    let pending: Arc<Mutex<Probes>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let publishing = Arc::new(AtomicBool::new(true));
    // The poller: every 10 ms, ListLeads of the probes' organisation, scored leads only, whose
    // last interaction is no older than the oldest pending probe's, oldest first, every page.
    let poller = {
        let (pending, latencies, publishing) = (pending.clone(), latencies.clone(), publishing.clone());
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut drained_since: Option<Instant> = None;
            let mut polls = 0u64;
            loop {
                let oldest = pending.lock().await.values().map(|(_, at)| *at).min();
                if let Some(oldest) = oldest {
                    let from = oldest - chrono::Duration::seconds(1);
                    let mut token = String::new();
                    for _ in 0..20 {
                        let page = client
                            .list_leads(pb::ListLeadsRequest {
                                org_id: PROBE_ORG.into(),
                                filter: Some(pb::LeadFilter {
                                    min_score: Some(0),
                                    last_interaction: Some(pb::TimeRange {
                                        from: Some(prost_types::Timestamp {
                                            seconds: from.timestamp(),
                                            nanos: from.timestamp_subsec_nanos() as i32,
                                        }),
                                        to: None,
                                    }),
                                    ..Default::default()
                                }),
                                sort: pb::LeadSortField::LastInteraction as i32,
                                direction: pb::SortDirection::Asc as i32,
                                page_size: 500,
                                page_token: token.clone(),
                                skip_total: true,
                                with_watch_cursor: false,
                            })
                            .await?
                            .into_inner();
                        polls += 1;
                        let seen = Instant::now();
                        let mut pending = pending.lock().await;
                        let mut latencies = latencies.lock().await;
                        for lead in &page.leads {
                            let phone = lead.contact.as_ref().map(|c| c.phone.as_str()).unwrap_or_default();
                            if lead.score.is_some()
                                && let Some((sent, _)) = pending.remove(phone)
                            {
                                latencies.push(seen.duration_since(sent));
                            }
                        }
                        if page.next_page_token.is_empty() || pending.is_empty() {
                            break;
                        }
                        token = page.next_page_token;
                    }
                }
                if !publishing.load(Ordering::Relaxed) {
                    let since = *drained_since.get_or_insert_with(Instant::now);
                    if pending.lock().await.is_empty() || since.elapsed() > Duration::from_secs(60) {
                        return anyhow::Ok((pending.lock().await.len(), polls));
                    }
                }
                tokio::time::sleep(tick).await;
            }
        })
    };
    let mut publisher = Publisher::new(env.js.clone(), ACK_WINDOW);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut sent, mut late_ticks) = (0u64, 0u64);
    let cpu = machine_cpu_seconds();
    let child_cpu = process_cpu_seconds(child.pid);
    let started = Instant::now();
    for t in 0..ticks {
        interval.tick().await;
        if started.elapsed() > tick * (t as u32 + 2) {
            late_ticks += 1;
        }
        // The probe: a new contact in its own organisation, so a new lead to be scored.
        let contact = 1_000_000 + t;
        let at = Utc::now();
        let probe = event(&mut rng, texts, &format!("probe-{t:06}"), contact, true, at);
        let probe = prepare(env, PROBE_ORG, &probe);
        pending.lock().await.insert(leads_tests::phone(contact as u32), (Instant::now(), at));
        publisher.publish(probe.subject, &probe.event_id, probe.payload).await?;
        sent += 1;
        for k in 1..per_tick {
            let index = t * per_tick + k;
            let contact = index % contacts;
            let e = event(&mut rng, texts, &format!("lat-{index:09}"), contact, false, Utc::now());
            let p = prepare(env, &org_name(contact % args.orgs), &e);
            publisher.publish(p.subject, &p.event_id, p.payload).await?;
            sent += 1;
        }
    }
    publisher.drain().await?;
    let publish_elapsed = started.elapsed();
    let machine_cpu = machine_cpu_seconds() - cpu;
    let child_cpu = process_cpu_seconds(child.pid) - child_cpu;
    publishing.store(false, Ordering::Relaxed);
    let (lost, polls) = poller.await??;
    let samples = latencies.lock().await.clone();
    let achieved = rate(sent, publish_elapsed);
    let seconds = publish_elapsed.as_secs_f64();
    report.line("### Latency: an interaction's publish to its lead's score in ListLeads\n");
    report.line(format!(
        "One `leads run --services ingest,lead,qualification` process (release binary, production settings), warmed \
         up with one message from each of {} contacts (all scored). Then {} interactions/s for {} s ({} \
         interactions, achieved {} /s, {} of {} ticks late by more than one tick): every 10 ms one is a probe, the \
         first message of a new contact in an organisation of its own, the rest messages of the warm contacts \
         (rescoring their leads). Latency is from just before the probe's publish to the ListLeads answer that first \
         shows its lead with a score (the poller, every 10 ms: ListLeads of the probes' organisation with `min_score \
         0`, last interaction since the oldest pending probe's, oldest first, every page; {} calls). The process's \
         CPU while publishing: {:.0}% of a core ({}/interaction); the machine's {:.0}% of its cores.\n",
        thousands(contacts as f64),
        thousands((per_tick * 100) as f64),
        args.qualification_secs,
        thousands(sent as f64),
        thousands(achieved),
        late_ticks,
        ticks,
        thousands(polls as f64),
        100.0 * child_cpu / seconds,
        micros(child_cpu / sent.max(1) as f64),
        100.0 * machine_cpu / seconds / std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
    ));
    let target_name = format!(
        "Qualification: publish -> score in ListLeads p99 at {} interactions/s",
        thousands((per_tick * 100) as f64)
    );
    if samples.is_empty() {
        report.line("No probe's score was seen.\n");
        report.target(target_name, "< 500 ms", "no probe seen", false);
        return Ok(());
    }
    let s = stats(samples);
    report.line(s.probe_table(lost));
    report.target(
        target_name,
        "< 500 ms",
        format!("p99 {} (p50 {})", ms(s.p99), ms(s.p50)),
        s.p99 < Duration::from_millis(500) && lost == 0,
    );
    Ok(())
}
