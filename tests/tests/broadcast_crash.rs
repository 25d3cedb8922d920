//! Crash test for broadcast tracking: a million delivery statuses for 300,000
//! broadcast messages, repeated and shuffled so that statuses precede their message, while
//! the real `leads run --services broadcast` process is killed with SIGKILL several times.
//! Afterwards every distinct (message, status) is stored once with its first timestamp and
//! error, every message is there once, and every message's current state is the one computed
//! here from what was published.
//!
//! `LEADS_CRASH_STATUSES` sets the number of status events (default 1,000,000); the number of
//! messages is 3/10 of it.

use async_nats::Subject;
use leads_tests::{
    Process, TestEnv,
    broadcast_gen::{
        DELIVERED, Event, FAILED, Generated, READ, SENT, STATUS_BITS, error_of, generate, headers, message_id,
        publish_windowed, sent_at, status_at, status_name,
    },
    eventually,
};
use platform::nats::StreamKind;
use std::time::{Duration, Instant};

const ORGS: [&str; 3] = ["org-a", "org-b", "org-c"];
const DEFAULT_STATUSES: u32 = 1_000_000;
/// Publish acks awaited at most this far behind the publishes.
const ACK_WINDOW: usize = 4_000;
/// Progress, as a fraction of the distinct statuses, at which the process is killed.
const KILLS: [f64; 4] = [0.08, 0.3, 0.55, 0.8];

fn org(message: u32) -> &'static str {
    ORGS[message as usize % ORGS.len()]
}

fn error_code(message: u32) -> i64 {
    error_of(message).0
}

/// The state the service must derive: the furthest of sent < delivered < read, and failed.
fn expected_state(mask: u8) -> (i16, bool) {
    let rank = if mask & READ != 0 {
        3
    } else if mask & DELIVERED != 0 {
        2
    } else {
        i16::from(mask & SENT != 0)
    };
    (rank, mask & FAILED != 0)
}

/// Subject, headers and JSON payload of one event; each message goes to a contact of its own.
fn encode(env: &TestEnv, messages: u32, event: Event) -> (Subject, async_nats::HeaderMap, bytes::Bytes) {
    let org = org(event.message);
    let subject =
        if event.status == 0 { env.subjects.broadcast_messages(org) } else { env.subjects.broadcast_statuses(org) };
    (subject.into(), headers(&event.msg_id(org)), event.json(messages).into())
}

async fn publish_all(env: &TestEnv, messages: u32, events: &[Event]) -> anyhow::Result<()> {
    let events = events.iter().map(|event| encode(env, messages, *event));
    publish_windowed(&env.js, events, ACK_WINDOW, |_| {}).await?;
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
    let generated = generate(statuses / 10 * 3, u64::from(statuses), 5)?;
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
        let messages = generated.messages();
        tokio::spawn(async move {
            publish_all(&env, messages, &events).await?;
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
