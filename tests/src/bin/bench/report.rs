//! The report and what its lines are made of: percentiles, formatted durations, rates and
//! counts, progress on stderr, the machine's load and this process's memory.

use chrono::Utc;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

/// Percentiles by nearest rank over the sorted samples.
pub fn stats(mut samples: Vec<Duration>) -> Stats {
    assert!(!samples.is_empty(), "no samples");
    samples.sort();
    let n = samples.len();
    let rank = |p: f64| samples[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
    let total: Duration = samples.iter().sum();
    Stats {
        n,
        p50: rank(50.0),
        p90: rank(90.0),
        p95: rank(95.0),
        p99: rank(99.0),
        max: samples[n - 1],
        mean: total / n as u32,
    }
}

impl Stats {
    /// The markdown table of probe latencies: percentiles (p50 and p99 in bold) and the
    /// probes `lost`, never seen.
    pub fn probe_table(&self, lost: usize) -> String {
        format!(
            "| probes | p50 | p90 | p99 | max | mean | not seen within 60 s |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | {} | **{}** | {} | **{}** | {} | {} | {lost} |\n",
            self.n,
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            ms(self.mean)
        )
    }
}

pub fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1000.0;
    if m >= 100.0 { format!("{m:.0} ms") } else { format!("{m:.2} ms") }
}

pub fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

pub fn thousands(value: f64) -> String {
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

pub fn progress(message: impl AsRef<str>) {
    eprintln!("[bench {}] {}", Utc::now().format("%H:%M:%S"), message.as_ref());
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".into(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// A value in kB from /proc/self/status (VmRSS, VmHWM).
pub fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Busy CPU time of the whole machine since boot, every process together (from /proc/stat),
/// in seconds; NaN where there is no /proc/stat.
pub fn machine_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return f64::NAN };
    let Some(total) = stat.lines().next() else { return f64::NAN };
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    let busy: f64 = total
        .split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(field, _)| *field != 3 && *field != 4)
        .filter_map(|(_, ticks)| ticks.parse::<f64>().ok())
        .sum();
    busy / TICKS_PER_SECOND
}

/// CPU time (user + system) of one process since it started, in seconds, from
/// /proc/<pid>/stat; NaN once it has gone.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    // The command name (field 2) is in parentheses and may hold spaces; utime and stime are
    // fields 14 and 15, the 12th and 13th after it.
    let Some((_, rest)) = stat.rsplit_once(')') else { return f64::NAN };
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || fields.next().and_then(|ticks| ticks.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (next() + next()) / TICKS_PER_SECOND
}

/// CPU spent over a run: this process's (the in-process services and their client, or a raw
/// baseline's driver) and the rest of the machine's (Postgres and nats-server), in seconds.
#[derive(Clone, Copy)]
pub struct CpuSpent {
    pub process: f64,
    pub rest: f64,
}

impl CpuSpent {
    pub fn start() -> (f64, f64) {
        (process_cpu_seconds(std::process::id()), machine_cpu_seconds())
    }

    pub fn since((process, machine): (f64, f64)) -> Self {
        let process = process_cpu_seconds(std::process::id()) - process;
        Self { process, rest: machine_cpu_seconds() - machine - process }
    }

    /// Each side's CPU a row, and how much of one core it kept busy over `elapsed`.
    pub fn describe(self, rows: u64, elapsed: Duration) -> String {
        let per_row = |cpu: f64| micros(cpu / rows.max(1) as f64);
        let cores = |cpu: f64| cpu / elapsed.as_secs_f64();
        format!(
            "this process {} a row ({:.2} of a core), the rest of the machine {} a row ({:.2} of a core)",
            per_row(self.process),
            cores(self.process),
            per_row(self.rest),
            cores(self.rest)
        )
    }
}

/// USER_HZ: 100 on every Linux architecture this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Seconds as microseconds, one decimal.
pub fn micros(seconds: f64) -> String {
    format!("{:.1} µs", seconds * 1e6)
}

pub fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// Samples VmRSS every 5 ms on a plain thread until dropped; keeps the peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start() -> Self {
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

    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// One line of the final comparison against the targets.
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// The table of targets: a header and a row each, `suffix` added to every target's name.
pub fn target_rows(targets: &[Target], suffix: &str) -> String {
    let mut table = String::from("| target | goal | measured | |\n| --- | --- | --- | --- |");
    for t in targets {
        let verdict = match t.met {
            Some(true) => "PASS",
            Some(false) => "**MISS**",
            None => "",
        };
        table.push_str(&format!("\n| {}{suffix} | {} | {} | {verdict} |", t.what, t.target, t.measured));
    }
    table
}

#[derive(Default)]
pub struct Report {
    pub body: String,
    pub targets: Vec<Target>,
    pub raw_nats_per_s: Option<f64>,
    pub raw_pg_1_per_s: Option<f64>,
    pub raw_pg_4_per_s: Option<f64>,
    /// The raw section's machine CPU (every process, /proc/stat) per message or row, seconds:
    /// JetStream publish, pull consume acknowledging each, and the Postgres insert on the
    /// connection count that spent the least.
    pub raw_publish_cpu: Option<f64>,
    pub raw_consume_cpu: Option<f64>,
    pub raw_pg_cpu: Option<f64>,
}

impl Report {
    pub fn line(&mut self, text: impl AsRef<str>) {
        self.body.push_str(text.as_ref());
        self.body.push('\n');
    }

    pub fn target(
        &mut self,
        what: impl Into<String>,
        target: impl Into<String>,
        measured: impl Into<String>,
        met: bool,
    ) {
        self.targets.push(Target {
            what: what.into(),
            target: target.into(),
            measured: measured.into(),
            met: Some(met),
        });
    }
}

/// Waits until `count_sql` counts `target` rows. The count runs only when the consumer
/// `durable` of `stream` has acknowledged everything it was given (it acks after each commit;
/// its state is a cheap NATS request, polled every 20 ms): counting rows all along cost
/// Postgres a scan of the growing table each time, taken from the services. Prints progress
/// every 5 s; answers when the count was reached.
pub async fn wait_counted(
    stream: &async_nats::jetstream::stream::Stream,
    durable: &str,
    admin: &sqlx::PgPool,
    count_sql: &'static str,
    target: i64,
    started: std::time::Instant,
    timeout: Duration,
) -> anyhow::Result<std::time::Instant> {
    let mut last_print = std::time::Instant::now();
    let mut counted = 0;
    loop {
        // A failed request (the durable not declared yet) is only a missed poll.
        let position = stream.consumer_info(durable).await.ok().map(|info| {
            (
                info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0,
                info.ack_floor.stream_sequence,
            )
        });
        let now = std::time::Instant::now();
        let (caught_up, acked) = position.unwrap_or((false, 0));
        if caught_up {
            counted = sqlx::query_scalar(count_sql).fetch_one(admin).await?;
            if counted >= target {
                return Ok(now);
            }
        }
        if now.duration_since(last_print) > Duration::from_secs(5) {
            progress(format!(
                "  {durable} at stream sequence {acked} ({counted}/{target} counted when last caught up) after {:.0} s \
                 (load {})",
                started.elapsed().as_secs_f64(),
                loadavg()
            ));
            last_print = now;
        }
        if started.elapsed() > timeout {
            anyhow::bail!("{counted} of {target} counted when {durable} was last caught up, after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
