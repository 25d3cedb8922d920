//! Section 1: what the infrastructure does on its own on this machine, measured in the same
//! run: JetStream publish and pull consume, and Postgres UNNEST batch inserts of rows shaped
//! like interactions.

use super::{
    Args,
    events::{ACK_WINDOW, Generator, Prepared, Publisher, TEXTS, org_name, prepare},
    report::{Report, loadavg, machine_cpu_seconds, micros, progress, rate, thousands},
};
use anyhow::bail;
use async_nats::jetstream::{self, stream};
use chrono::{DateTime, Utc};
use leads_tests::{TestEnv, raw_pg};
use platform::nats::StreamKind;
use std::time::{Duration, Instant};

pub async fn raw(report: &mut Report, args: &Args) -> anyhow::Result<()> {
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
    let cpu = machine_cpu_seconds();
    let started = Instant::now();
    for p in payloads {
        publisher.publish(p.subject, &p.event_id, p.payload).await?;
    }
    publisher.drain().await?;
    let nats_elapsed = started.elapsed();
    let nats_cpu = (machine_cpu_seconds() - cpu) / args.raw_messages as f64;
    report.raw_publish_cpu = Some(nats_cpu);
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
        let cpu = machine_cpu_seconds();
        let elapsed = raw_consume(env, &stream_name, policy, args.raw_messages).await?;
        let cpu = (machine_cpu_seconds() - cpu) / args.raw_messages as f64;
        if policy == jetstream::consumer::AckPolicy::Explicit {
            report.raw_consume_cpu = Some(cpu);
        }
        consumed.push((label, elapsed, cpu));
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
        let pool = raw_pg::pool(env, connections, None).await?;
        let per_conn = args.raw_rows / connections as u64;
        let mut batches: Vec<Vec<RawBatch>> =
            (0..connections).map(|c| raw_batches(c as u64 * per_conn, per_conn, args.raw_batch)).collect();
        progress(format!("raw: inserting {} rows on {connections} connection(s)", per_conn * connections as u64));
        let cpu = machine_cpu_seconds();
        let elapsed = raw_pg::on_each_connection(&pool, connections, |connection, pool| {
            let work = std::mem::take(&mut batches[connection]);
            let sql = format!(
                "INSERT INTO {table} SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], \
                 $4::timestamptz[], $5::text[], $6::text[], $7::text[])"
            );
            async move {
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
            }
        })
        .await?;
        let cpu = machine_cpu_seconds() - cpu;
        pool.close().await;
        let inserted = raw_pg::count(&admin, &table).await?;
        pg_rows.push((connections, inserted, elapsed, cpu / inserted.max(1) as f64));
    }
    admin.close().await;
    report.raw_pg_1_per_s = Some(rate(pg_rows[0].1 as u64, pg_rows[0].2));
    report.raw_pg_4_per_s = Some(rate(pg_rows[1].1 as u64, pg_rows[1].2));
    report.raw_pg_cpu = pg_rows.iter().map(|r| r.3).filter(|cpu| cpu.is_finite()).reduce(f64::min);

    report.line(
        "| baseline | volume | time | throughput | machine CPU per msg/row |\n| --- | ---: | ---: | ---: | ---: |",
    );
    report.line(format!(
        "| JetStream async publish, Nats-Msg-Id, {ACK_WINDOW} acks in flight, {avg_bytes} B JSON | {} msgs | {:.2} s | **{} msgs/s** | {} |",
        thousands(args.raw_messages as f64),
        nats_elapsed.as_secs_f64(),
        thousands(nats_rate),
        micros(nats_cpu)
    ));
    for (label, elapsed, cpu) in &consumed {
        report.line(format!(
            "| JetStream pull consume, batches of {RAW_CONSUME_BATCH}, ack {label} | {} msgs | {:.2} s | **{} msgs/s** | {} |",
            thousands(args.raw_messages as f64),
            elapsed.as_secs_f64(),
            thousands(rate(args.raw_messages, *elapsed)),
            micros(*cpu)
        ));
    }
    for (connections, inserted, elapsed, cpu) in &pg_rows {
        report.line(format!(
            "| Postgres UNNEST insert, {} rows/batch, 1 tx per batch, PK, {connections} connection(s) | {} rows | {:.2} s | **{} rows/s** | {} |",
            args.raw_batch,
            thousands(*inserted as f64),
            elapsed.as_secs_f64(),
            thousands(rate(*inserted as u64, *elapsed)),
            micros(*cpu)
        ));
    }
    report.line(
        "\nMachine CPU: busy time of every process together (/proc/stat) over each baseline, per message or row.",
    );
    report.line("");
    Ok(())
}

const RAW_CONSUME_BATCH: usize = 500;

/// Pulls `count` messages from `stream` through a new durable consumer, acknowledging under
/// `policy` (each message, or the last of each batch), and returns how long it took.
pub async fn raw_consume(
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
