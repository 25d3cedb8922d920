//! `make bench`: the platform's benchmarks, in one run, against the real Postgres and NATS.
//!
//! Sections (choose with `--only raw,qualification`):
//! - raw: what the infrastructure does on its own on this machine, measured in the same run:
//!   JetStream async publish with `Nats-Msg-Id`, and Postgres UNNEST batch inserts of rows
//!   shaped like interactions, on one connection and on four.
//! - ingest: InteractionEvents published to JetStream and carried through the ingest and lead
//!   services (in-process) until every interaction is committed; then per-event latency under
//!   a fixed publish rate.
//! - leads: the Leads page at scale (a seeded organisation of `--leads` leads): ListLeads,
//!   the total count, GetLeadHistory and ExportLeads.
//! - broadcast: delivery statuses from NATS to committed, sustained and as a backlog.
//! - desk: AssignLead, BulkAssign, ChangeStatus and CreateFollowUp beside raw baselines of the
//!   same rows and commits, paced at 200/s with each cross-service hop, and follow-ups coming due.
//! - qualification: a backlog of lead events drained by one and by two `leads run --services
//!   qualification` processes (scorings/s, CPU per scoring beside the raw parts), then the
//!   latency from publish to a lead's score in ListLeads under a paced load.
//! - assignment: automatic assignment (policy balanced, 200 available agents) of new leads
//!   arriving through ingest at full speed: assignments/s beside raw Postgres transactions of the
//!   same rows and commits, created -> assigned latency, loads never over capacity.
//! - notifications (not in the default run): follow-ups falling due within a minute, told by
//!   two `followup,notifications` processes as signed webhooks to a receiver on loopback: lag
//!   from due to received, every one received with one id, beside raw signed POSTs.
//!
//! The report (markdown) goes to stdout, and to `--out` when given; progress goes to stderr.
//! Every section runs in its own `TestEnv` and drops it afterwards, also after a failure.

use anyhow::{Context as _, bail};
use chrono::Utc;
use clap::{Parser, ValueEnum};
use leads_tests::TestEnv;
use platform::Settings;
use report::{Report, loadavg, progress, target_rows};
use std::{path::PathBuf, time::Instant};

mod assignment;
mod broadcast;
mod desk;
mod events;
mod ingest;
mod ingest_ceiling;
mod leads_page;
mod leads_seed;
mod machine;
mod notifications;
mod qualification;
mod raw;
mod report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Raw,
    Ingest,
    Leads,
    Broadcast,
    Desk,
    Qualification,
    Assignment,
    Notifications,
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
    #[arg(long, value_delimiter = ',', default_value = "raw,ingest,leads,broadcast,desk,qualification,assignment")]
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
    /// Leads created through ingest in the desk section (assignment and follow-ups).
    #[arg(long, default_value_t = 10_000)]
    desk_leads: u32,
    /// AssignLead, ChangeStatus and CreateFollowUp calls each in the desk section's closed-loop
    /// runs (BulkAssign a tenth as many).
    #[arg(long, default_value_t = 2_000)]
    desk_requests: usize,
    /// Interactions in the qualification section's backlog.
    #[arg(long, default_value_t = 100_000)]
    qualification_backlog: u64,
    /// Distinct contacts (so leads) the qualification backlog comes from, over `--orgs`
    /// organisations.
    #[arg(long, default_value_t = 10_000)]
    qualification_contacts: u64,
    /// The qualification backlog is drained once per value, by this many worker processes.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    qualification_workers: Vec<usize>,
    /// Publish rate (interactions/s) of the qualification latency run.
    #[arg(long, default_value_t = 1000)]
    qualification_rate: u64,
    /// Duration of the qualification latency run, in seconds.
    #[arg(long, default_value_t = 20)]
    qualification_secs: u64,
    /// New leads handed out by automatic assignment in the assignment section (the full
    /// figure is 100,000; the default keeps `make bench` within 25 minutes).
    #[arg(long, default_value_t = 5_000)]
    assign_leads: u64,
    /// Follow-ups falling due within one minute in the notifications section.
    #[arg(long, default_value_t = 100_000)]
    due_follow_ups: u64,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Leave the leads section's seeded database in place (its name is printed), for
    /// looking at query plans afterwards.
    #[arg(long)]
    keep_leads_database: bool,
}

/// An environment with the production consumer and pool settings, not the test harness's
/// small batches.
async fn production_env() -> anyhow::Result<TestEnv> {
    let mut env = TestEnv::new().await?;
    // An operator's consumer tuning (LEADS_CONSUMER_*), to measure it; nothing else of the
    // environment reaches the services under test.
    env.settings.consumer =
        Settings::layered(None, |key| key.starts_with("LEADS_CONSUMER_").then(|| std::env::var(key).ok()).flatten())?
            .consumer;
    env.settings.database_max_connections = Settings::default().database_max_connections;
    Ok(env)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut report = Report::default();
    report.line("# Lead platform benchmarks\n");
    report.line(format!(
        "Command: `make bench BENCH_ARGS=\"{}\"` (the release `bench` binary with these arguments)\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    ));
    machine::machine(&mut report).await?;
    let mut failures = Vec::new();
    for section in [
        Section::Raw,
        Section::Ingest,
        Section::Leads,
        Section::Broadcast,
        Section::Desk,
        Section::Qualification,
        Section::Assignment,
        Section::Notifications,
    ] {
        if !args.only.contains(&section) {
            continue;
        }
        let started = Instant::now();
        let result = match section {
            Section::Raw => raw::raw(&mut report, &args).await,
            Section::Ingest => ingest::ingest(&mut report, &args).await,
            Section::Leads => leads_page::leads(&mut report, &args).await,
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
                desk::run_with_targets(&options).await.map(|(section, targets)| {
                    report.line(section);
                    report.targets.extend(targets);
                })
            }
            Section::Qualification => qualification::qualification(&mut report, &args).await,
            Section::Assignment => assignment::assignment(&mut report, &args).await,
            Section::Notifications => notifications::notifications(&mut report, &args).await,
        };
        progress(format!("{section:?} section took {:.0} s", started.elapsed().as_secs_f64()));
        if let Err(error) = result {
            progress(format!("{section:?} section FAILED: {error:#}"));
            report.line(format!("**The {section:?} section failed: {error:#}**\n"));
            failures.push(section);
        }
    }
    report.line("## Targets\n");
    let targets = std::mem::take(&mut report.targets);
    report.line(target_rows(&targets, ""));
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
