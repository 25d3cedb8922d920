//! The report's first section: the machine, Postgres and NATS the numbers were measured on.

use super::report::{Report, loadavg, mib};
use chrono::Utc;

pub async fn machine(report: &mut Report) -> anyhow::Result<()> {
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
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
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
    let dirty = git(&["status", "--porcelain", "--", "../services", "../migrations"]).map_or(0, |s| s.lines().count());
    if dirty == 0 {
        format!("commit {head}")
    } else {
        format!("commit {head} plus {dirty} uncommitted file(s) under services/ and migrations/ at run time")
    }
}
