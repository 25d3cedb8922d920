//! Crash test for broadcast tracking (issue 5): a million delivery statuses for 300,000
//! broadcast messages, repeated and shuffled so that statuses precede their message, while
//! the real `leads run --services broadcast` process is killed with SIGKILL several times.
//! Afterwards every distinct (message, status) is stored once with its first timestamp and
//! error, every message is there once, and every message's current state is the one computed
//! here from what was published.
//!
//! `LEADS_CRASH_STATUSES` sets the number of status events (default 1,000,000); the number of
//! messages is 3/10 of it.

use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use leads_tests::{Process, TestEnv, eventually, phone};
use platform::nats::StreamKind;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::json;
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

const ORGS: [&str; 3] = ["org-a", "org-b", "org-c"];
const DEFAULT_STATUSES: u32 = 1_000_000;
/// Publish acks awaited at most this far behind the publishes.
const ACK_WINDOW: usize = 4_000;
/// Progress, as a fraction of the distinct statuses, at which the process is killed.
const KILLS: [f64; 4] = [0.08, 0.3, 0.55, 0.8];
const ERROR_CODES: [i64; 5] = [131_026, 131_049, 131_050, 131_047, 1];

const SENT: u8 = 1;
const DELIVERED: u8 = 2;
const READ: u8 = 4;
const FAILED: u8 = 8;
const STATUS_BITS: [u8; 4] = [SENT, DELIVERED, READ, FAILED];

/// One event to publish: the message itself (`status == 0`) or one of its statuses.
#[derive(Debug, Clone, Copy)]
struct Event {
    message: u32,
    status: u8,
    /// 0 for the first copy; a distinct number for each intentional repeat.
    copy: u32,
    /// Seconds a repeat's timestamp lies after the first copy's: the first one must win.
    late: u16,
}

/// Everything published, and what the service must make of it.
struct Generated {
    /// Per message, the bits of its distinct statuses.
    masks: Vec<u8>,
    events: Vec<Event>,
    distinct: u64,
    duplicates: u64,
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).single().unwrap_or_default()
}

fn org(message: u32) -> &'static str {
    ORGS[message as usize % ORGS.len()]
}

fn message_id(message: u32) -> String {
    format!("wamid.{message:08}")
}

fn status_name(bit: u8) -> &'static str {
    match bit {
        SENT => "sent",
        DELIVERED => "delivered",
        READ => "read",
        _ => "failed",
    }
}

fn error_code(message: u32) -> i64 {
    ERROR_CODES[message as usize % ERROR_CODES.len()]
}

fn sent_at(message: u32) -> DateTime<Utc> {
    base_time() + Span::seconds(i64::from(message))
}

/// The first (and so the kept) timestamp of a status.
fn status_at(message: u32, bit: u8) -> DateTime<Utc> {
    let after = match bit {
        SENT => 1,
        DELIVERED => 3,
        READ => 60 + i64::from(message % 600),
        _ => 5,
    };
    sent_at(message) + Span::seconds(after)
}

/// The state the service must derive: the furthest of sent < delivered < read, and failed.
fn expected_state(mask: u8) -> (i16, bool) {
    let rank = if mask & READ != 0 {
        3
    } else if mask & DELIVERED != 0 {
        2
    } else if mask & SENT != 0 {
        1
    } else {
        0
    };
    (rank, mask & FAILED != 0)
}

fn generate(statuses: u32, seed: u64) -> Generated {
    let mut rng = StdRng::seed_from_u64(seed);
    let messages = statuses / 10 * 3;
    let mut masks = Vec::with_capacity(messages as usize);
    for _ in 0..messages {
        let mask = if rng.random_bool(0.12) {
            // Failed on the way: some were sent first, some failed outright.
            if rng.random_bool(0.8) { SENT | FAILED } else { FAILED }
        } else {
            let mut mask = if rng.random_bool(0.98) { SENT } else { 0 };
            if mask == 0 || rng.random_bool(0.97) {
                mask |= DELIVERED;
                if rng.random_bool(0.85) {
                    mask |= READ;
                }
            }
            if rng.random_bool(0.03) {
                mask |= FAILED;
            }
            mask
        };
        masks.push(mask);
    }
    let distinct: u64 = masks.iter().map(|m| u64::from(m.count_ones())).sum();
    assert!(distinct <= u64::from(statuses), "{statuses} status events cannot cover {distinct} distinct statuses");
    let duplicates = u64::from(statuses) - distinct;
    let mut events = Vec::with_capacity(messages as usize * 101 / 100 + statuses as usize);
    for (message, mask) in (0..messages).zip(&masks) {
        events.push(Event { message, status: 0, copy: 0, late: 0 });
        // A few messages are published twice as well.
        if rng.random_bool(0.01) {
            events.push(Event { message, status: 0, copy: 1, late: 0 });
        }
        for bit in STATUS_BITS {
            if mask & bit != 0 {
                events.push(Event { message, status: bit, copy: 0, late: 0 });
            }
        }
    }
    for copy in 1..=duplicates {
        let message = rng.random_range(0..messages);
        let mask = masks[message as usize];
        let bits: Vec<u8> = STATUS_BITS.into_iter().filter(|bit| mask & bit != 0).collect();
        let status = bits[rng.random_range(0..bits.len())];
        // Half are exact repeats, half carry a later timestamp, which must not replace the first.
        let late = if rng.random_bool(0.5) { 0 } else { rng.random_range(1..=120) };
        events.push(Event { message, status, copy: u32::try_from(copy).unwrap_or(u32::MAX), late });
    }
    // Any order: about half of the statuses arrive before their message.
    events.shuffle(&mut rng);
    Generated { masks, events, distinct, duplicates }
}

/// Subject, Nats-Msg-Id and JSON payload of one event. Repeats get their own Msg-Id so that
/// JetStream's deduplication does not hide them from the service.
fn encode(env: &TestEnv, event: Event) -> (String, String, Vec<u8>) {
    let org = org(event.message);
    let id = message_id(event.message);
    if event.status == 0 {
        let campaign = event.message % 25;
        let body = json!({
            "message_id": id,
            "occurred_at": sent_at(event.message).to_rfc3339(),
            "campaign": { "id": format!("cmp-{campaign}"), "name": format!("Campaign {campaign}") },
            "template": { "name": "bf_offer", "language": "en_US", "category": "MARKETING" },
            "contact": { "phone": phone(event.message) },
        });
        let msg_id = format!("{org}/{id}/message/{}", event.copy);
        return (env.subjects.broadcast_messages(org), msg_id, body.to_string().into_bytes());
    }
    let status = status_name(event.status);
    let at = status_at(event.message, event.status) + Span::seconds(i64::from(event.late));
    let mut body = json!({ "message_id": id, "status": status, "timestamp": at.to_rfc3339() });
    if event.status == FAILED {
        let code = error_code(event.message);
        body["error"] = json!({ "code": code, "title": format!("error {code}") });
    }
    let msg_id = format!("{org}/{id}/{status}/{}", event.copy);
    (env.subjects.broadcast_statuses(org), msg_id, body.to_string().into_bytes())
}

async fn publish_all(env: &TestEnv, events: &[Event]) -> anyhow::Result<()> {
    let mut pending = VecDeque::with_capacity(ACK_WINDOW);
    for event in events {
        let (subject, msg_id, payload) = encode(env, *event);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        headers.insert("Content-Type", "application/json");
        pending.push_back(env.js.publish_with_headers(subject, headers, payload.into()).await?);
        if pending.len() >= ACK_WINDOW
            && let Some(ack) = pending.pop_front()
        {
            let ack = ack.await?;
            anyhow::ensure!(!ack.duplicate, "JetStream dropped an event as a duplicate: {ack:?}");
        }
    }
    for ack in pending {
        let ack = ack.await?;
        anyhow::ensure!(!ack.duplicate, "JetStream dropped an event as a duplicate: {ack:?}");
    }
    Ok(())
}

/// Deliveries the service has been handed and not yet acknowledged.
async fn unacknowledged(env: &TestEnv) -> anyhow::Result<usize> {
    let stream = env.js.get_stream(env.subjects.stream_name(StreamKind::Broadcasts)).await?;
    Ok(stream.consumer_info(broadcast::DURABLE).await?.num_ack_pending)
}

async fn stored(admin: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM broadcast.statuses").fetch_one(admin).await?)
}

async fn count(admin: &sqlx::PgPool, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(admin).await?)
}

/// Loads what the service must hold into tables of its own, for comparison in SQL.
async fn load_expected(admin: &sqlx::PgPool, masks: &[u8]) -> anyhow::Result<()> {
    for sql in [
        "CREATE SCHEMA expected",
        "CREATE TABLE expected.states (org_id text, message_id text, sent_at timestamptz, rank smallint, \
         failed boolean, PRIMARY KEY (org_id, message_id))",
        "CREATE TABLE expected.statuses (org_id text, message_id text, status text, at timestamptz, \
         error_code bigint, PRIMARY KEY (org_id, message_id, status))",
    ] {
        sqlx::query(sql).execute(admin).await?;
    }
    let messages = u32::try_from(masks.len())?;
    for chunk in (0..messages).collect::<Vec<_>>().chunks(50_000) {
        let (mut orgs, mut ids, mut sent, mut ranks, mut failed) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut s_orgs, mut s_ids, mut s_statuses, mut s_ats, mut s_codes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &message in chunk {
            let mask = masks[message as usize];
            let (rank, fail) = expected_state(mask);
            orgs.push(org(message));
            ids.push(message_id(message));
            sent.push(sent_at(message));
            ranks.push(rank);
            failed.push(fail);
            for bit in STATUS_BITS.into_iter().filter(|bit| mask & bit != 0) {
                s_orgs.push(org(message));
                s_ids.push(message_id(message));
                s_statuses.push(status_name(bit));
                s_ats.push(status_at(message, bit));
                s_codes.push((bit == FAILED).then(|| error_code(message)));
            }
        }
        sqlx::query(
            "INSERT INTO expected.states \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::int2[], $5::bool[])",
        )
        .bind(&orgs)
        .bind(&ids)
        .bind(&sent)
        .bind(&ranks)
        .bind(&failed)
        .execute(admin)
        .await?;
        sqlx::query(
            "INSERT INTO expected.statuses \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[])",
        )
        .bind(&s_orgs)
        .bind(&s_ids)
        .bind(&s_statuses)
        .bind(&s_ats)
        .bind(&s_codes)
        .execute(admin)
        .await?;
    }
    Ok(())
}

/// Rows where the service and the expectation disagree, a few of them shown on failure.
async fn mismatches(admin: &sqlx::PgPool, what: &str, sql: &'static str) -> anyhow::Result<()> {
    let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(admin).await?;
    assert!(rows.is_empty(), "{} {what} differ, e.g. {:?}", rows.len(), &rows[..rows.len().min(10)]);
    Ok(())
}

async fn assert_stored_once(admin: &sqlx::PgPool, generated: &Generated) -> anyhow::Result<()> {
    let messages = i64::try_from(generated.masks.len())?;
    let distinct = i64::try_from(generated.distinct)?;
    assert_eq!(stored(admin).await?, distinct, "every distinct (message, status) stored once");
    assert_eq!(count(admin, "SELECT count(*) FROM broadcast.messages").await?, messages, "every message once");
    assert_eq!(count(admin, "SELECT count(*) FROM broadcast.message_states").await?, messages, "one state each");
    assert_eq!(count(admin, "SELECT count(*) FROM broadcast.rejections").await?, 0, "nothing refused");
    load_expected(admin, &generated.masks).await?;
    mismatches(
        admin,
        "messages",
        "SELECT row(e.org_id, e.message_id, m.org_id, m.message_id)::text FROM expected.states e \
         FULL JOIN broadcast.messages m ON m.org_id = e.org_id AND m.message_id = e.message_id \
         WHERE e.message_id IS NULL OR m.message_id IS NULL \
            OR m.sent_at <> e.sent_at",
    )
    .await?;
    mismatches(
        admin,
        "message states",
        "SELECT row(e.org_id, e.message_id, e.rank, e.failed, s.org_id, s.message_id, s.rank, s.failed)::text \
         FROM expected.states e \
         FULL JOIN broadcast.message_states s ON s.org_id = e.org_id AND s.message_id = e.message_id \
         WHERE e.rank IS DISTINCT FROM s.rank OR e.failed IS DISTINCT FROM s.failed",
    )
    .await?;
    mismatches(
        admin,
        "statuses",
        "SELECT row(e.org_id, e.message_id, e.status, e.at, e.error_code, \
                    s.org_id, s.message_id, s.status, s.at, s.error_code)::text \
         FROM expected.statuses e \
         FULL JOIN broadcast.statuses s \
           ON s.org_id = e.org_id AND s.message_id = e.message_id AND s.status = e.status \
         WHERE e.at IS DISTINCT FROM s.at OR e.error_code IS DISTINCT FROM s.error_code \
            OR (s.status = 'failed') IS DISTINCT FROM (s.error_class IS NOT NULL)",
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_million_statuses_keeps_each_once_and_every_state_right() -> anyhow::Result<()> {
    let statuses: u32 = match std::env::var("LEADS_CRASH_STATUSES") {
        Ok(value) => value.parse()?,
        Err(_) => DEFAULT_STATUSES,
    };
    let started = Instant::now();
    let generated = generate(statuses, 5);
    let messages = generated.masks.len();
    let distinct = i64::try_from(generated.distinct)?;
    eprintln!(
        "{statuses} status events ({} distinct, {} repeats) and {messages} messages in {} events, generated in {:?}",
        generated.distinct,
        generated.duplicates,
        generated.events.len(),
        started.elapsed()
    );

    let env = TestEnv::new().await?;
    let admin = env.admin_pool().await?;
    let mut process = Process::spawn(&env, "broadcast", &[])?;
    eventually(Duration::from_secs(60), "the broadcast schema", || async { stored(&admin).await.ok() }).await;

    let publish_started = Instant::now();
    let publisher = {
        let env = env.clone();
        let events = generated.events.clone();
        tokio::spawn(async move {
            publish_all(&env, &events).await?;
            anyhow::Ok(publish_started.elapsed())
        })
    };
    // Kill the process at growing levels of progress, restarting it each time.
    let mut killed_in_flight = 0;
    for (kill, fraction) in KILLS.into_iter().enumerate() {
        let target = (distinct as f64 * fraction) as i64;
        eventually(Duration::from_secs(600), &format!("{target} statuses before kill {}", kill + 1), || async {
            stored(&admin).await.ok().filter(|n| *n >= target)
        })
        .await;
        let in_flight = unacknowledged(&env).await?;
        process.kill().await?;
        killed_in_flight += in_flight;
        eprintln!(
            "kill {}: {} statuses stored, {in_flight} deliveries unacknowledged, {:?} after publishing started",
            kill + 1,
            stored(&admin).await?,
            publish_started.elapsed()
        );
        process = Process::spawn(&env, "broadcast", &[])?;
    }
    assert!(killed_in_flight > 0, "the kills interrupted deliveries in flight");
    let published_in = publisher.await??;
    let events = generated.events.len() as f64;
    eprintln!("published {events} events in {published_in:?} ({:.0}/s)", events / published_in.as_secs_f64());
    let all = i64::try_from(messages)?;
    eventually(Duration::from_secs(900), "every message and every distinct status stored", || async {
        let statuses = stored(&admin).await.ok()?;
        let messages = count(&admin, "SELECT count(*) FROM broadcast.messages").await.ok()?;
        (statuses >= distinct && messages >= all).then_some(())
    })
    .await;
    let consumed_in = publish_started.elapsed();
    let rate = events / consumed_in.as_secs_f64();
    eprintln!("everything stored {consumed_in:?} after publishing started ({rate:.0} events/s)");
    let status = process.terminate().await?;
    assert!(status.success(), "SIGTERM ends the process cleanly: {status}");

    let checking = Instant::now();
    assert_stored_once(&admin, &generated).await?;
    eprintln!("checked in {:?}; {:?} in all", checking.elapsed(), started.elapsed());
    admin.close().await;
    env.cleanup().await
}
