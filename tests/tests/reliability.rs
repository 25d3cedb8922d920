//! Nothing stuck, nothing dropped: outages of Postgres and NATS (private servers the tests
//! start and stop), an event too large for NATS, a message that fails on every delivery, a
//! consumer that cannot work, and a rolling restart of three processes under traffic.

use leads_tests::{
    Process, TestEnv, chat_event, eventually, eventually_ok,
    pb::{self},
    phone,
    private::{PrivateNats, PrivatePostgres},
};
use platform::{ServiceName, settings::ExposeSecret};
use std::time::Duration;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const ORG: &str = "acme";

/// Publishes `total` chat events over `contacts` contacts, each retried until JetStream has
/// it (the server may be down for a while), with the contract's Msg-Id so a retry is one.
async fn publish_steadily(env: &TestEnv, from: u32, total: u32, contacts: u32) -> anyhow::Result<()> {
    for n in from..from + total {
        let event = chat_event(&format!("e-{n}"), &phone(n % contacts), &format!("message {n}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match env.publish_interaction(ORG, &event).await {
                Ok(()) => break,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "publish failed, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}

/// Every published event is on exactly one lead, once.
async fn assert_exactly_once(admin: &sqlx::PgPool, total: i64) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(180);
    // A failure says how far each hop got.
    eventually_ok(deadline, "every event applied", || leads_tests::pipeline_progress(admin, total)).await;
    let counted: i64 = sqlx::query_scalar("SELECT coalesce(sum(interaction_count), 0)::bigint FROM lead.leads")
        .fetch_one(admin)
        .await?;
    assert_eq!(counted, total, "every event counted once on its lead");
    let accepted: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest.accepted_events").fetch_one(admin).await?;
    assert_eq!(accepted, total, "every event accepted once");
    for service in ["ingest", "lead"] {
        let dead: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {service}.dead_letters")))
            .fetch_one(admin)
            .await?;
        assert_eq!(dead, 0, "{service}: nothing given up on");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_longer_than_the_redelivery_budget_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let postgres = PrivatePostgres::start().await?;
    let mut env = TestEnv::on(&postgres.url("postgres"), &leads_tests::nats_url()).await?;
    // Three deliveries 50-200 ms apart: an outage of seconds would exhaust them many times
    // over if deliveries were spent while Postgres is away.
    env.settings.consumer.max_deliver = 3;
    env.settings.consumer.retry_base_ms = 50;
    env.settings.consumer.retry_max_ms = 200;
    env.settings.consumer.ack_wait_secs = 3;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let admin = env.admin_pool().await?;
    const TOTAL: u32 = 3_000;
    let publisher = {
        let env = env.clone();
        tokio::spawn(async move { publish_steadily(&env, 0, TOTAL, 200).await })
    };
    eventually(Duration::from_secs(60), "a part applied", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.interactions").fetch_one(&admin).await.ok()?;
        (n >= i64::from(TOTAL / 5)).then_some(())
    })
    .await;
    admin.close().await;
    postgres.down().await?;
    // Longer than every delivery allowed, pauses included, many times over.
    tokio::time::sleep(Duration::from_secs(8)).await;
    postgres.up().await?;
    publisher.await??;
    let admin = env.admin_pool().await?;
    assert_exactly_once(&admin, i64::from(TOTAL)).await?;
    admin.close().await;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_ingest_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let mut nats = PrivateNats::start().await?;
    let env = TestEnv::on(&leads_tests::admin_url(), &nats.url()).await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let admin = env.admin_pool().await?;
    const TOTAL: u32 = 2_000;
    publish_steadily(&env, 0, TOTAL / 2, 150).await?;
    eventually(Duration::from_secs(60), "a part applied", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.interactions").fetch_one(&admin).await.ok()?;
        (n >= i64::from(TOTAL / 4)).then_some(())
    })
    .await;
    nats.down().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.up().await?;
    publish_steadily(&env, TOTAL / 2, TOTAL / 2, 150).await?;
    assert_exactly_once(&admin, i64::from(TOTAL)).await?;
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_nats_and_a_huge_refused_payload_hold_up_no_one() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let admin = env.admin_pool().await?;
    let mut leads = node.lead().await?;
    env.publish_interaction(ORG, &chat_event("first", &phone(1), "hello")).await?;
    let first = eventually(Duration::from_secs(30), "a first lead", || {
        let mut leads = leads.clone();
        async move { leads_tests::all_leads(&mut leads, ORG).await.ok()?.into_iter().next() }
    })
    .await;
    // A 2 MiB reason: refused at the edge, naming the field, or its event (larger than NATS
    // takes) set aside; either way it holds up nothing behind it.
    let huge = leads
        .change_status(pb::ChangeStatusRequest {
            org_id: ORG.into(),
            lead_id: first.id.clone(),
            status: pb::LeadStatus::Qualifying as i32,
            reason: "r".repeat(2 * 1024 * 1024),
            actor: "op".into(),
            ..Default::default()
        })
        .await;
    match huge {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains("reason"), "{}", status.message());
        }
        Ok(_) => {
            eventually(Duration::from_secs(30), "the oversized event set aside", || async {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.dead_letters WHERE source = 'outbox'")
                    .fetch_one(&admin)
                    .await
                    .ok()?;
                (n == 1).then_some(())
            })
            .await;
        }
    }
    // Any event too large for NATS, however it got into an outbox, is set aside with its reason.
    let oversized = vec![b'x'; 2 * 1024 * 1024];
    sqlx::query("INSERT INTO lead.outbox (org_id, subject, msg_id, payload) VALUES ($1, $2, $3, $4)")
        .bind(ORG)
        .bind(env.subjects.event("lead", ORG, "status_changed"))
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&oversized)
        .execute(&admin)
        .await?;
    // A 900 KiB event: refused (too large for the contract) and kept whole in the rejections;
    // its dead letter carries an excerpt.
    let big = serde_json::json!({
        "event_id": "big", "occurred_at": "2026-11-24T10:00:00Z", "kind": "chat_message",
        "contact": { "phone": phone(2) }, "text": "y".repeat(900 * 1024),
    });
    env.publish(env.subjects.interactions(ORG), serde_json::to_vec(&big)?, None).await?;
    // Normal traffic after both reaches the lead service and the qualification service.
    env.publish_interaction(ORG, &chat_event("after", &phone(3), "how much is it? I want to buy")).await?;
    let scored = eventually(Duration::from_secs(30), "the later contact's lead scored", || {
        let mut leads = leads.clone();
        async move {
            let all = leads_tests::all_leads(&mut leads, ORG).await.ok()?;
            all.into_iter().find(|l| l.contact.as_ref().is_some_and(|c| c.phone == phone(3)) && l.score.is_some())
        }
    })
    .await;
    assert!(scored.score.is_some());
    let (reason, kept): (String, i64) =
        eventually(Duration::from_secs(30), "the oversized event set aside", || async {
            sqlx::query_as(
                "SELECT error, octet_length(payload)::bigint FROM lead.dead_letters \
             WHERE source = 'outbox' AND octet_length(payload) = $1",
            )
            .bind(oversized.len() as i32)
            .fetch_optional(&admin)
            .await
            .ok()
            .flatten()
        })
        .await;
    assert!(reason.contains("max_payload"), "{reason}");
    assert_eq!(kept, oversized.len() as i64, "kept whole");
    let rejected: i64 = sqlx::query_scalar("SELECT octet_length(payload)::bigint FROM ingest.rejections LIMIT 1")
        .fetch_one(&admin)
        .await?;
    assert!(rejected > 900 * 1024, "the refused payload is kept whole: {rejected}");
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.outbox").fetch_one(&admin).await?;
    assert_eq!(outbox, 0, "the lead outbox is not stuck");
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_failing_on_every_delivery_is_kept_with_its_error_and_its_batch_mates_go_through()
-> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.consumer.max_deliver = 20;
    env.settings.consumer.retry_base_ms = 10;
    env.settings.consumer.retry_max_ms = 100;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let admin = env.admin_pool().await?;
    let leads = node.lead().await?;
    env.publish_interaction(ORG, &chat_event("p-1", &phone(1), "hello")).await?;
    let lead = eventually(Duration::from_secs(30), "a lead", || {
        let mut leads = leads.clone();
        async move { leads_tests::all_leads(&mut leads, ORG).await.ok()?.into_iter().next() }
    })
    .await;
    // A score for an organisation id Postgres cannot store (a NUL in it): it fails on every
    // delivery. A good score published right behind it must not wait for it.
    let poison = serde_json::json!({
        "id": uuid::Uuid::now_v7(), "org_id": "ac\u{0}me", "kind": "scored",
        "aggregate_id": lead.id, "version": 1, "occurred_at": "2026-11-24T10:00:00Z",
        "data": { "lead_id": lead.id, "score": 50, "reasons": [], "model_version": "test", "scored_at": "2026-11-24T10:00:00Z" }
    });
    let good = serde_json::json!({
        "id": uuid::Uuid::now_v7(), "org_id": ORG, "kind": "scored",
        "aggregate_id": lead.id, "version": 7, "occurred_at": "2026-11-24T10:00:00Z",
        "data": { "lead_id": lead.id, "score": 64, "reasons": ["test"], "model_version": "test", "scored_at": "2026-11-24T10:00:00Z" }
    });
    let subject = env.subjects.event("qualification", ORG, "scored");
    env.publish(subject.clone(), serde_json::to_vec(&poison)?, None).await?;
    env.publish(subject.clone(), serde_json::to_vec(&good)?, None).await?;
    eventually(Duration::from_secs(30), "the good score applied", || {
        let mut leads = leads.clone();
        let id = lead.id.clone();
        async move {
            let lead = leads.get_lead(pb::GetLeadRequest { org_id: ORG.into(), lead_id: id }).await.ok()?.into_inner();
            (lead.score == Some(64)).then_some(())
        }
    })
    .await;
    let (error, subject): (String, String) = eventually(Duration::from_secs(60), "the poison kept", || async {
        sqlx::query_as(
            "SELECT error, subject FROM lead.dead_letters WHERE source = 'delivery' AND error NOT LIKE 'unreadable%'",
        )
        .fetch_optional(&admin)
        .await
        .ok()
        .flatten()
    })
    .await;
    assert!(subject.ends_with(".scored"), "{subject}");
    assert!(!error.is_empty());
    // Announced on deadletter.<service>.<consumer>, with the error and the payload's excerpt.
    let dead_letters = env.js.get_stream(env.subjects.stream_name(platform::nats::StreamKind::DeadLetter)).await?;
    let announcement = eventually(Duration::from_secs(30), "the dead letter announced", || {
        let dead_letters = dead_letters.clone();
        let subject = env.subjects.deadletter("lead.lead-scores");
        async move { dead_letters.get_last_raw_message_by_subject(&subject).await.ok() }
    })
    .await;
    let announced: serde_json::Value = serde_json::from_slice(&announcement.payload)?;
    assert_eq!(announced["error"].as_str(), Some(error.as_str()));
    assert!(announced["payload_excerpt"].as_str().is_some_and(|p| p.contains("\\u0000")), "{announced}");
    // An event that does not read at all can never succeed: it is kept at once, whole.
    env.publish(subject, b"{\"id\": not json".to_vec(), None).await?;
    let (unreadable, payload): (String, Vec<u8>) =
        eventually(Duration::from_secs(30), "the unreadable event kept", || async {
            sqlx::query_as("SELECT error, payload FROM lead.dead_letters WHERE error LIKE 'unreadable%'")
                .fetch_optional(&admin)
                .await
                .ok()
                .flatten()
        })
        .await;
    assert!(unreadable.contains("expected"), "the reader's error: {unreadable}");
    assert_eq!(payload, b"{\"id\": not json", "kept whole");
    node.stop().await?;
    env.cleanup().await
}

/// The consumer loop on the interactions stream of `env`, alone (no service), with `handler`.
fn run_loop<H, Fut>(
    env: &TestEnv,
    durable: &str,
    settings: platform::settings::ConsumerSettings,
    dead_letters: Option<platform::deadletter::DeadLetters>,
    token: tokio_util::sync::CancellationToken,
    handler: H,
) -> tokio::task::JoinHandle<anyhow::Result<()>>
where
    H: Fn(platform::consumer::Batch) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<platform::consumer::Disposition>> + Send + 'static,
{
    let spec = loop_spec(env, durable);
    tokio::spawn(platform::consumer::run(
        env.nats.clone(),
        env.js.clone(),
        spec,
        settings,
        dead_letters,
        token,
        handler,
    ))
}

fn loop_spec(env: &TestEnv, durable: &str) -> platform::consumer::ConsumerSpec {
    use platform::nats::StreamKind;
    platform::consumer::ConsumerSpec {
        stream: env.subjects.stream_name(StreamKind::Interactions),
        durable: durable.into(),
        filter_subject: env.subjects.stream_subjects(StreamKind::Interactions).concat(),
        service: "ingest",
    }
}

/// The lead service's dead letters (its schema migrated by starting it), for a loop run alone.
async fn lead_dead_letters(env: &TestEnv) -> anyhow::Result<(leads_tests::Node, platform::deadletter::DeadLetters)> {
    let node = env.start(&[ServiceName::Lead]).await?;
    let options =
        platform::db::connect_options(env.settings.database_url.expose_secret())?.options([("search_path", "lead")]);
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_with(options).await?;
    let dead_letters = platform::deadletter::DeadLetters {
        pool,
        subjects: env.subjects.clone(),
        service: "lead",
        outbox: platform::outbox::OutboxSignal::default(),
    };
    Ok((node, dead_letters))
}

/// The durable's state once nothing is pending or unacknowledged.
async fn settled(
    consumer: &async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>,
) -> async_nats::jetstream::consumer::Info {
    eventually_ok(Duration::from_secs(30), "every message answered", || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.map_err(|e| e.to_string())?.clone();
            if info.num_ack_pending == 0 && info.num_pending == 0 { Ok(info) } else { Err(format!("{info:?}")) }
        }
    })
    .await
}

/// How a process that takes a message and ends without handling it gives it back.
#[derive(Clone, Copy, PartialEq)]
enum HandBack {
    /// Killed: its ack wait runs out.
    AfterAckWait,
    /// At once (a negative acknowledgement), to spend many deliveries quickly.
    AtOnce,
}

/// Takes the one message waiting on `consumer` `times` times without handling it, as that many
/// processes that ended holding it would.
async fn spend_deliveries(
    consumer: &async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>,
    times: i64,
    hand_back: HandBack,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    for delivery in 1..=times {
        let mut pulled = consumer.batch().max_messages(1).expires(Duration::from_secs(10)).messages().await?;
        let message = pulled
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("delivery {delivery} never came"))?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(message.info().map_err(|e| anyhow::anyhow!("{e}"))?.delivered, delivery);
        if hand_back == HandBack::AtOnce {
            message.ack_with(async_nats::jetstream::AckKind::Nak(None)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok(())
}

/// Records what each batch brings (text, delivery) and acknowledges it all.
fn recording(
    seen_tx: tokio::sync::mpsc::UnboundedSender<(String, i64)>,
) -> impl Fn(
    platform::consumer::Batch,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<platform::consumer::Disposition>> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |batch| {
        let seen_tx = seen_tx.clone();
        Box::pin(async move {
            for delivery in batch.iter() {
                let _ = seen_tx.send((String::from_utf8_lossy(&delivery.payload).into_owned(), delivery.delivered));
            }
            vec![platform::consumer::Disposition::Ack; batch.len()]
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_allowed_deliveries_all_went_unhandled_is_still_handled() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut settings = env.settings.consumer.clone();
    settings.max_deliver = 2;
    settings.ack_wait_secs = 1;
    let consumer = platform::consumer::declare(&env.js, &loop_spec(&env, "unhandled"), &settings).await?;
    env.publish_interaction(ORG, &chat_event("u-1", &phone(1), "hello")).await?;
    // Two processes take the message and die before handling it (their prefetch is lost):
    // every delivery the settings allow is spent without a handler seeing it.
    spend_deliveries(&consumer, 2, HandBack::AfterAckWait).await?;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let token = tokio_util::sync::CancellationToken::new();
    let running = run_loop(&env, "unhandled", settings, None, token.clone(), recording(seen_tx));
    let (_, delivered) = tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .map_err(|_| anyhow::anyhow!("the message was abandoned: no handler ever saw it"))?
        .ok_or_else(|| anyhow::anyhow!("the loop ended"))?;
    assert_eq!(delivered, 3);
    let info = settled(&consumer).await;
    assert_eq!(info.config.max_deliver, -1, "the durable sets no limit of its own");
    token.cancel();
    running.await??;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_never_answered_is_kept_unhandled_after_its_ceiling() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let (node, dead_letters) = lead_dead_letters(&env).await?;
    let mut settings = env.settings.consumer.clone();
    settings.max_deliver = 2;
    let consumer = platform::consumer::declare(&env.js, &loop_spec(&env, "ceiling"), &settings).await?;
    env.publish_interaction(ORG, &chat_event("c-1", &phone(1), "stops every process")).await?;
    // Fifty processes each take it and end without an answer (here: handed back at once).
    spend_deliveries(&consumer, 50, HandBack::AtOnce).await?;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let token = tokio_util::sync::CancellationToken::new();
    let running = run_loop(&env, "ceiling", settings, Some(dead_letters.clone()), token.clone(), recording(seen_tx));
    let error: String = eventually(Duration::from_secs(30), "the message kept", || async {
        sqlx::query_scalar("SELECT error FROM dead_letters WHERE consumer = 'ceiling'")
            .fetch_optional(&dead_letters.pool)
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(error.contains("51 times without an answer"), "{error}");
    settled(&consumer).await;
    assert!(seen.try_recv().is_err(), "no handler saw it again");
    token.cancel();
    running.await??;
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_its_budget_waits_for_its_batch_mates_to_be_acknowledged() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut settings = env.settings.consumer.clone();
    settings.max_deliver = 2;
    settings.ack_wait_secs = 60;
    let consumer = platform::consumer::declare(&env.js, &loop_spec(&env, "apart"), &settings).await?;
    env.publish_interaction(ORG, &chat_event("a-1", &phone(1), "stops its process")).await?;
    spend_deliveries(&consumer, 2, HandBack::AtOnce).await?;
    env.publish_interaction(ORG, &chat_event("a-2", &phone(2), "fine")).await?;
    // Both wait when the loop starts, so they come in one batch. The one past its budget would
    // stop the process (here: it hangs until the test ends); its batch-mate must not wait for it.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let token = tokio_util::sync::CancellationToken::new();
    let hang = token.clone();
    let running = run_loop(&env, "apart", settings, None, token.clone(), move |batch: platform::consumer::Batch| {
        let (seen_tx, hang) = (seen_tx.clone(), hang.clone());
        async move {
            let texts: Vec<String> = batch.iter().map(|d| String::from_utf8_lossy(&d.payload).into_owned()).collect();
            let stops = texts.iter().any(|text| text.contains("stops its process"));
            let _ = seen_tx.send((texts.len(), stops));
            if stops {
                hang.cancelled().await;
                return vec![platform::consumer::Disposition::Retry("stopped".into()); batch.len()];
            }
            vec![platform::consumer::Disposition::Ack; batch.len()]
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await?;
    assert_eq!(first, Some((1, false)), "the batch-mate first, without it");
    let second = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await?;
    assert_eq!(second, Some((1, true)), "then the message past its budget, alone");
    eventually_ok(Duration::from_secs(30), "the batch-mate acknowledged", || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.map_err(|e| e.to_string())?.clone();
            if info.num_ack_pending == 1 && info.num_pending == 0 { Ok(()) } else { Err(format!("{info:?}")) }
        }
    })
    .await;
    token.cancel();
    running.await??;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_slower_than_the_ack_wait_is_not_delivered_again_meanwhile() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut settings = env.settings.consumer.clone();
    settings.ack_wait_secs = 3;
    let consumer = platform::consumer::declare(&env.js, &loop_spec(&env, "slow"), &settings).await?;
    env.publish_interaction(ORG, &chat_event("s-1", &phone(1), "slow")).await?;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let token = tokio_util::sync::CancellationToken::new();
    let running = run_loop(&env, "slow", settings, None, token.clone(), move |batch: platform::consumer::Batch| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(batch.iter().map(|d| d.delivered).collect::<Vec<_>>());
            // More than two ack waits: a lock wait, a loaded machine.
            tokio::time::sleep(Duration::from_secs(7)).await;
            vec![platform::consumer::Disposition::Ack; batch.len()]
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await?;
    assert_eq!(first, Some(vec![1]));
    let info = settled(&consumer).await;
    assert_eq!(info.delivered.consumer_sequence, 1, "no copy handed out while it was handled");
    assert!(seen.try_recv().is_err(), "handled once");
    token.cancel();
    running.await??;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_for_an_unreachable_dependency_spends_no_delivery() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut settings = env.settings.consumer.clone();
    settings.ack_wait_secs = 1;
    let consumer = platform::consumer::declare(&env.js, &loop_spec(&env, "held"), &settings).await?;
    env.publish_interaction(ORG, &chat_event("h-1", &phone(1), "held")).await?;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let token = tokio_util::sync::CancellationToken::new();
    // Postgres "comes back" four ack waits after the first try.
    let back_at = std::sync::Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    let running = run_loop(&env, "held", settings, None, token.clone(), move |batch: platform::consumer::Batch| {
        let (seen_tx, back_at) = (seen_tx.clone(), back_at.clone());
        async move {
            let back = *back_at.get_or_init(|| tokio::time::Instant::now() + Duration::from_secs(4));
            let _ = seen_tx.send(batch.iter().map(|d| d.delivered).collect::<Vec<_>>());
            if tokio::time::Instant::now() < back {
                return vec![platform::consumer::Disposition::Unavailable("postgres is down".into()); batch.len()];
            }
            vec![platform::consumer::Disposition::Ack; batch.len()]
        }
    });
    let info = settled(&consumer).await;
    assert_eq!(info.delivered.consumer_sequence, 1, "held, not delivered again");
    let mut tries = 0;
    while let Ok(delivered) = seen.try_recv() {
        assert_eq!(delivered, vec![1], "every try on the first delivery");
        tries += 1;
    }
    assert!(tries >= 3, "tried again while held: {tries} tries");
    token.cancel();
    running.await??;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_fails_only_its_message_which_is_kept() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let (node, dead_letters) = lead_dead_letters(&env).await?;
    let mut settings = env.settings.consumer.clone();
    settings.max_deliver = 2;
    settings.retry_base_ms = 10;
    settings.retry_max_ms = 50;
    // Longer than the test: a message comes back only when the loop hands it back.
    settings.ack_wait_secs = 120;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    // Both are waiting when the loop starts, so they come in one batch: the panic fails the
    // batch, the fine message goes through alone at once and the poison one is delivered again.
    env.publish_interaction(ORG, &chat_event("p-1", &phone(1), "poison")).await?;
    env.publish_interaction(ORG, &chat_event("p-2", &phone(2), "fine")).await?;
    let token = tokio_util::sync::CancellationToken::new();
    let record = recording(seen_tx);
    let running = run_loop(&env, "panics", settings, Some(dead_letters.clone()), token.clone(), move |batch| {
        let texts: Vec<String> = batch.iter().map(|d| String::from_utf8_lossy(&d.payload).into_owned()).collect();
        assert!(!texts.iter().any(|text| text.contains("poison")), "a poison message");
        record(batch)
    });
    let (fine, delivered) = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await?.unwrap_or_default();
    assert!(fine.contains("fine") && delivered == 1, "{fine} on delivery {delivered}");
    let error: String = eventually(Duration::from_secs(30), "the poison kept", || async {
        sqlx::query_scalar("SELECT error FROM dead_letters WHERE consumer = 'panics'")
            .fetch_optional(&dead_letters.pool)
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(error.contains("panicked: a poison message"), "{error}");
    env.publish_interaction(ORG, &chat_event("p-3", &phone(3), "fine again")).await?;
    let (after, _) = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await?.unwrap_or_default();
    assert!(after.contains("fine again"), "the loop goes on after a panic: {after}");
    let consumer = env
        .js
        .get_stream(loop_spec(&env, "panics").stream)
        .await?
        .get_consumer("panics")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    settled(&consumer).await;
    token.cancel();
    running.await??;
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_cannot_work_makes_health_not_serving_and_the_process_fail() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Qualification]).await?;
    let channel = node.channel(ServiceName::Qualification).await?;
    let check = |channel: tonic::transport::Channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest { service: "leads.v1.QualificationService".into() })
            .await
            .map(|r| r.into_inner().status())
    };
    assert_eq!(check(channel.clone()).await?, ServingStatus::Serving);
    // Its stream deleted behind its back: the consumer cannot declare its durable again.
    env.js.delete_stream(env.subjects.stream_name(platform::nats::StreamKind::Events("lead"))).await?;
    eventually(Duration::from_secs(30), "health no longer SERVING", || {
        let channel = channel.clone();
        async move { (check(channel).await.ok() != Some(ServingStatus::Serving)).then_some(()) }
    })
    .await;
    let stopped = node.stop().await;
    let error = stopped.expect_err("the service failed");
    assert!(format!("{error:#}").contains("consumer"), "{error:#}");
    // The binary exits non-zero, for its supervisor to restart it. The stream is declared
    // again first, as its owner (lead) does at its start: qualification only waits for it.
    platform::nats::ensure_stream(&env.js, &env.subjects, platform::nats::StreamKind::Events("lead")).await?;
    let mut process = Process::spawn(&env, "qualification", &[])?;
    process.ready().await?;
    env.js.delete_stream(env.subjects.stream_name(platform::nats::StreamKind::Events("lead"))).await?;
    let status = process.exited(Duration::from_secs(60)).await?;
    assert!(!status.success(), "{status}");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_processes_under_traffic_loses_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let admin = env.admin_pool().await?;
    let mut processes = Vec::new();
    for _ in 0..3 {
        processes.push(Process::spawn(&env, "ingest,lead,qualification", &[])?);
    }
    for process in &mut processes {
        process.ready().await?;
    }
    const TOTAL: u32 = 6_000;
    let publisher = {
        let env = env.clone();
        tokio::spawn(async move { publish_steadily(&env, 0, TOTAL, 500).await })
    };
    for _ in 0..3 {
        let oldest = processes.remove(0);
        let status = oldest.terminate().await?;
        assert!(status.success(), "a SIGTERM stops cleanly: {status}");
        let mut fresh = Process::spawn(&env, "ingest,lead,qualification", &[])?;
        fresh.ready().await?;
        processes.push(fresh);
    }
    publisher.await??;
    assert_exactly_once(&admin, i64::from(TOTAL)).await?;
    // Qualification saw each interaction once, whichever process handled it.
    eventually(Duration::from_secs(120), "every interaction scored once", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM qualification.scored_interactions")
            .fetch_one(&admin)
            .await
            .ok()?;
        (n == i64::from(TOTAL)).then_some(())
    })
    .await;
    for process in processes {
        process.terminate().await?;
    }
    env.cleanup().await
}

#[tokio::test]
async fn dedupe_keys_and_rejections_past_retention_are_pruned_and_newer_ones_kept() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest]).await?;
    let admin = env.admin_pool().await?;
    env.publish_interaction(ORG, &chat_event("recent", &phone(1), "hello")).await?;
    eventually(Duration::from_secs(30), "the event accepted", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest.accepted_events").fetch_one(&admin).await.ok()?;
        (n == 1).then_some(())
    })
    .await;
    sqlx::query("INSERT INTO ingest.accepted_events (org_id, event_id, received_at) VALUES ($1, 'old', now() - interval '40 days')")
        .bind(ORG)
        .execute(&admin)
        .await?;
    let pool = platform::db::connect_options(env.settings.database_url.expose_secret())?;
    let pool = sqlx::PgPool::connect_with(pool.options([("search_path", "ingest")])).await?;
    let deleted = platform::db::prune(&pool, "accepted_events", "received_at", env.settings.retention_days).await?;
    assert_eq!(deleted, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT event_id FROM ingest.accepted_events").fetch_all(&admin).await?;
    assert_eq!(left, ["recent"]);
    pool.close().await;
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_page_of_rejections_is_bounded_by_its_bytes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest]).await?;
    let admin = env.admin_pool().await?;
    for n in 0..8 {
        let big = serde_json::json!({ "event_id": format!("big-{n}"), "text": "z".repeat(900 * 1024) });
        env.publish(env.subjects.interactions(ORG), serde_json::to_vec(&big)?, None).await?;
    }
    eventually(Duration::from_secs(30), "every big event refused", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest.rejections").fetch_one(&admin).await.ok()?;
        (n == 8).then_some(())
    })
    .await;
    let mut ingest = node.ingest().await?;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = ingest
            .list_rejections(pb::ListRejectionsRequest {
                org_id: ORG.into(),
                page_size: 100,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        let bytes: usize = page.rejections.iter().map(|r| r.payload.len()).sum();
        assert!(bytes <= 3 * 1024 * 1024, "a page of {bytes} bytes");
        pages += 1;
        seen.extend(page.rejections.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages >= 2, "8 payloads of 900 KiB take more than one page");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 8, "every rejection once across the pages");
    node.stop().await?;
    env.cleanup().await
}
