//! Section 2: InteractionEvents published to JetStream and carried through the ingest and lead
//! services (in-process) until every interaction is committed; then per-event latency under a
//! fixed publish rate; then the throughput run beside its raw parts' ceiling (`ingest_ceiling`).

use super::{
    Args,
    events::{ACK_WINDOW, Generator, Prepared, Publisher, org_name, prepare},
    ingest_ceiling::{self, Counters},
    production_env,
    report::{Report, loadavg, machine_cpu_seconds, ms, progress, rate, stats, thousands},
};
use async_nats::jetstream;
use chrono::Utc;
use leads_tests::TestEnv;
use platform::{ServiceName, nats::StreamKind};
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::Mutex;

pub async fn ingest(report: &mut Report, args: &Args) -> anyhow::Result<()> {
    let env = production_env().await?;
    let node = match env.start(&[ServiceName::Ingest, ServiceName::Lead]).await {
        Ok(node) => node,
        Err(error) => {
            env.cleanup().await?;
            return Err(error);
        }
    };
    let result = ingest_in(report, args, &env).await;
    let stopped = node.stop().await;
    // The raw parts are measured with the services stopped, in the run's own streams and
    // database.
    let result = match result {
        Ok(run) => ingest_ceiling::ceiling(report, &env, &run).await,
        Err(error) => Err(error),
    };
    env.cleanup().await?;
    result?;
    stopped
}

/// Waits until the lead service has committed `target` interactions.
async fn wait_for_interactions(
    env: &TestEnv,
    admin: &sqlx::PgPool,
    target: i64,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let stream_name = env.subjects.stream_name(StreamKind::Events("ingest"));
    let stream = env.js.get_stream(&stream_name).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let count = "SELECT count(*) FROM lead.interactions";
    super::report::wait_counted(&stream, lead::INTERACTIONS_DURABLE, admin, count, target, started, timeout).await
}

async fn consumer_acked(js: &jetstream::Context, stream: &str, durable: &str) -> anyhow::Result<u64> {
    let stream = js.get_stream(stream).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = stream.consumer_info(durable).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(info.ack_floor.stream_sequence)
}

async fn ingest_in(report: &mut Report, args: &Args, env: &TestEnv) -> anyhow::Result<ingest_ceiling::Run> {
    report.line("## 2. Ingest end to end\n");
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

    let before = Counters::read(env, &admin).await?;
    let cpu = machine_cpu_seconds();
    let started = Instant::now();
    let mut publisher = Publisher::new(env.js.clone(), ACK_WINDOW);
    for p in events {
        publisher.publish(p.subject, &p.event_id, p.payload).await?;
    }
    publisher.drain().await?;
    let published = started.elapsed();
    progress(format!("ingest: published in {:.2} s; waiting for the lead service", published.as_secs_f64()));
    let done = wait_for_interactions(env, &admin, n as i64, started, Duration::from_secs(1800)).await?;
    let cpu_per_event = (machine_cpu_seconds() - cpu) / n as f64;
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

    progress("ingest: counting the run's messages and rows");
    let used = ingest_ceiling::settle(env, &admin, &before, n).await?;
    let run = ingest_ceiling::Run {
        events: n,
        rate: throughput,
        cpu_per_event,
        used,
        batch_size: env.settings.consumer.batch_size,
    };

    // Latency at a fixed rate.
    latency(report, args, env, &admin).await?;
    admin.close().await;
    Ok(run)
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
    report.line(s.probe_table(lost));
    report.target(
        format!("Ingest latency p99 at {} events/s", thousands((per_tick * 100) as f64)),
        "< 250 ms",
        format!("p99 {} (p50 {})", ms(s.p99), ms(s.p50)),
        s.p99 < Duration::from_millis(250) && lost == 0,
    );
    Ok(())
}
