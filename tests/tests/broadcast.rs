//! Broadcast tracking: messages and delivery statuses in any order, repeated or refused,
//! end in one state; campaigns are counted; a lead's broadcasts are found through its contact.

use async_nats::HeaderMap;
use chrono::{DateTime, Duration as Span, Utc};
use leads_tests::{TestEnv, broadcast_gen::base_time, chat_event, eventually, pb, phone};
use platform::{ServiceName, nats::StreamKind};
use prost::Message;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use serde_json::json;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);
const ORG: &str = "acme";

/// One event as published: subject, payload, headers.
#[derive(Debug, Clone)]
struct Published {
    subject: String,
    payload: Vec<u8>,
    headers: Option<HeaderMap>,
}

async fn publish_all(env: &TestEnv, events: &[Published]) -> anyhow::Result<()> {
    for event in events {
        env.publish(event.subject.clone(), event.payload.clone(), event.headers.clone()).await?;
    }
    Ok(())
}

fn message(env: &TestEnv, id: &str, campaign: &str, to: &str, at: DateTime<Utc>) -> Published {
    named_message(env, id, campaign, &format!("Campaign {campaign}"), to, at)
}

fn named_message(env: &TestEnv, id: &str, campaign: &str, name: &str, to: &str, at: DateTime<Utc>) -> Published {
    let body = json!({
        "message_id": id,
        "occurred_at": at.to_rfc3339(),
        "campaign": { "id": campaign, "name": name },
        "template": { "name": "bf_offer", "language": "en_US", "category": "MARKETING" },
        "contact": { "phone": to },
    });
    Published { subject: env.subjects.broadcast_messages(ORG), payload: body.to_string().into_bytes(), headers: None }
}

fn status(env: &TestEnv, id: &str, status: &str, at: DateTime<Utc>) -> Published {
    let body = json!({ "message_id": id, "status": status, "timestamp": at.to_rfc3339() });
    Published { subject: env.subjects.broadcast_statuses(ORG), payload: body.to_string().into_bytes(), headers: None }
}

fn failed(env: &TestEnv, id: &str, code: i64, at: DateTime<Utc>) -> Published {
    let body = json!({
        "message_id": id, "status": "failed", "timestamp": at.to_rfc3339(),
        "error": { "code": code, "title": format!("error {code}") },
    });
    Published { subject: env.subjects.broadcast_statuses(ORG), payload: body.to_string().into_bytes(), headers: None }
}

fn protobuf_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/protobuf");
    headers
}

/// Whether a durable consumer has been handed, and has acknowledged, everything.
async fn drained(env: &TestEnv, kind: StreamKind, durable: &str) -> bool {
    let Ok(stream) = env.js.get_stream(env.subjects.stream_name(kind)).await else { return false };
    match stream.consumer_info(durable).await {
        Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0,
        Err(_) => false,
    }
}

async fn wait_drained(env: &TestEnv, kind: StreamKind, durable: &str) {
    eventually(DEADLINE, &format!("{durable} to consume everything"), || async {
        drained(env, kind, durable).await.then_some(())
    })
    .await;
}

/// The state kept for an organisation, as rows of text, arrival-dependent columns left out.
async fn dump(env: &TestEnv) -> anyhow::Result<Vec<String>> {
    let pool = env.admin_pool().await?;
    let mut rows = Vec::new();
    for (table, sql) in [
        ("campaigns", "SELECT row(org_id, campaign_id, name, name_at)::text FROM broadcast.campaigns ORDER BY 1"),
        (
            "templates",
            "SELECT row(org_id, name, language, category, category_at)::text FROM broadcast.templates ORDER BY 1",
        ),
        (
            "messages",
            "SELECT row(org_id, message_id, phone, external_id, campaign_id, template_name, template_language, \
             sent_at)::text FROM broadcast.messages ORDER BY 1",
        ),
        (
            "statuses",
            "SELECT row(org_id, message_id, status, at, error_code, error_title, error_class)::text \
             FROM broadcast.statuses ORDER BY 1",
        ),
        ("states", "SELECT row(org_id, message_id, rank, failed)::text FROM broadcast.message_states ORDER BY 1"),
    ] {
        let table_rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&pool).await?;
        rows.extend(table_rows.into_iter().map(|row| format!("{table} {row}")));
    }
    pool.close().await;
    Ok(rows)
}

async fn stats(
    client: &mut pb::broadcast_tracking_service_client::BroadcastTrackingServiceClient<tonic::transport::Channel>,
    campaign: &str,
) -> anyhow::Result<pb::CampaignStats> {
    Ok(client
        .get_campaign_stats(pb::GetCampaignStatsRequest { org_id: ORG.into(), campaign_id: campaign.into() })
        .await?
        .into_inner())
}

/// A campaign's worth of traffic: messages, and for each a random subset of statuses with
/// times that follow the message's progress, some failures among them.
fn scenario(env: &TestEnv, rng: &mut impl Rng) -> Vec<Published> {
    let codes = [131026, 131049, 131050, 131047, 130472];
    let mut events = Vec::new();
    for n in 0..40u32 {
        let id = format!("wamid.{n}");
        let campaign = if n % 3 == 0 { "cmp-a" } else { "cmp-b" };
        let at = base_time() + Span::seconds(i64::from(n));
        // The campaign is renamed part way: the newest name must win whatever the order.
        let name = if n >= 30 { format!("{campaign} (renamed)") } else { format!("Campaign {campaign}") };
        events.push(named_message(env, &id, campaign, &name, &phone(n % 12), at));
        let progress = rng.random_range(0..=3);
        for (step, name) in ["sent", "delivered", "read"].iter().enumerate().take(progress) {
            // Sometimes a step's status never arrives (read without delivered).
            if step + 1 < progress && rng.random_bool(0.2) {
                continue;
            }
            events.push(status(env, &id, name, at + Span::seconds(10 * (step as i64 + 1))));
        }
        // A status repeated with a later time: its first time must win whatever the order.
        if progress > 0 && rng.random_bool(0.15) {
            events.push(status(env, &id, "sent", at + Span::seconds(90)));
        }
        if rng.random_bool(0.25) {
            events.push(failed(env, &id, codes[rng.random_range(0..codes.len())], at + Span::seconds(45)));
        }
    }
    // Statuses of a message that never arrives: kept, counted nowhere.
    events.push(status(env, "wamid.ghost", "delivered", base_time()));
    events
}

#[tokio::test]
async fn a_shuffled_replay_with_duplicates_ends_in_the_same_state_as_the_ordered_one() -> anyhow::Result<()> {
    let seed: u64 = rand::random();
    println!("scenario seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ordered_env = TestEnv::new().await?;
    let mut shuffled_env = TestEnv::new().await?;
    // Small batches, several at once: the shuffled events meet in many transactions.
    shuffled_env.settings.consumer.batch_size = 7;
    let ordered = scenario(&ordered_env, &mut rng.clone());
    let mut shuffled = scenario(&shuffled_env, &mut rng);
    let repeats: Vec<Published> = shuffled.iter().filter(|_| rng.random_bool(0.2)).cloned().collect();
    shuffled.extend(repeats);
    shuffled.shuffle(&mut rng);
    assert!(shuffled.len() > ordered.len(), "some events are repeated");

    // Published before the services start, so that each consumer finds its whole replay
    // waiting; the shuffled one takes it in small batches, several in flight at once.
    publish_all(&ordered_env, &ordered).await?;
    publish_all(&shuffled_env, &shuffled).await?;
    let ordered_node = ordered_env.start(&[ServiceName::Broadcast]).await?;
    let shuffled_node = shuffled_env.start(&[ServiceName::Broadcast]).await?;
    wait_drained(&ordered_env, StreamKind::Broadcasts, broadcast::DURABLE).await;
    wait_drained(&shuffled_env, StreamKind::Broadcasts, broadcast::DURABLE).await;

    let expected = dump(&ordered_env).await?;
    let actual = dump(&shuffled_env).await?;
    assert!(expected.iter().filter(|r| r.starts_with("messages ")).count() == 40, "every message is kept");
    assert_eq!(actual, expected, "the same rows whatever the order (seed {seed})");
    let mut ordered_client = ordered_node.broadcast().await?;
    let mut shuffled_client = shuffled_node.broadcast().await?;
    for campaign in ["cmp-a", "cmp-b"] {
        let a = stats(&mut ordered_client, campaign).await?;
        let b = stats(&mut shuffled_client, campaign).await?;
        assert_eq!(a, b, "{campaign} (seed {seed})");
        assert!(a.sent >= a.delivered && a.delivered >= a.read, "{a:?}");
        assert_eq!(a.name, format!("{campaign} (renamed)"), "the newest name");
    }
    let both =
        stats(&mut ordered_client, "cmp-a").await?.messages + stats(&mut ordered_client, "cmp-b").await?.messages;
    assert_eq!(both, 40);
    // The status whose message never came is kept, as an orphan.
    let pool = shuffled_env.admin_pool().await?;
    let orphans: Vec<String> =
        sqlx::query_scalar("SELECT message_id FROM broadcast.orphan_statuses").fetch_all(&pool).await?;
    assert_eq!(orphans, ["wamid.ghost"]);
    pool.close().await;

    ordered_node.stop().await?;
    shuffled_node.stop().await?;
    ordered_env.cleanup().await?;
    shuffled_env.cleanup().await
}

#[tokio::test]
async fn a_read_status_without_delivered_and_before_its_message_counts_as_delivered() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Broadcast]).await?;
    let pool = env.admin_pool().await?;
    let at = base_time();
    publish_all(&env, &[status(&env, "wamid.r", "read", at + Span::seconds(30))]).await?;
    // Kept before its message, as an orphan for now.
    eventually(DEADLINE, "the early status to be kept", || {
        let pool = pool.clone();
        async move {
            let count: i64 =
                sqlx::query_scalar("SELECT count(*) FROM broadcast.orphan_statuses").fetch_one(&pool).await.ok()?;
            (count == 1).then_some(())
        }
    })
    .await;
    publish_all(
        &env,
        &[message(&env, "wamid.r", "cmp-r", &phone(1), at), status(&env, "wamid.r", "sent", at + Span::seconds(5))],
    )
    .await?;
    let mut client = node.broadcast().await?;
    let stats = eventually(DEADLINE, "the message and its statuses to be joined", || {
        let mut client = client.clone();
        async move {
            let stats = stats(&mut client, "cmp-r").await.ok()?;
            (stats.messages == 1 && stats.sent == 1).then_some(stats)
        }
    })
    .await;
    assert_eq!((stats.messages, stats.sent, stats.delivered, stats.read, stats.failed), (1, 1, 1, 1, 0));
    assert_eq!(stats.delivery_rate, 1.0);
    assert_eq!(stats.read_rate, 1.0);
    assert_eq!(stats.name, "Campaign cmp-r");
    // A late sent status does not move the state back.
    let state: (i16, bool) =
        sqlx::query_as("SELECT rank, failed FROM broadcast.message_states WHERE message_id = 'wamid.r'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(state, (3, false));
    let orphans: i64 = sqlx::query_scalar("SELECT count(*) FROM broadcast.orphan_statuses").fetch_one(&pool).await?;
    assert_eq!(orphans, 0);
    let err = client
        .get_campaign_stats(pb::GetCampaignStatsRequest { org_id: ORG.into(), campaign_id: "cmp-none".into() })
        .await
        .expect_err("unknown campaign");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .get_campaign_stats(pb::GetCampaignStatsRequest { org_id: ORG.into(), campaign_id: String::new() })
        .await
        .expect_err("no campaign");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("campaign_id"), "{}", err.message());
    pool.close().await;
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn each_failure_is_classified_and_stays_visible() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Broadcast]).await?;
    let at = base_time();
    let cases = [
        (131026, "undeliverable"),
        (131049, "frequency_cap"),
        (131050, "opted_out"),
        (131047, "window_closed"),
        (130472, "other"),
    ];
    let mut events = Vec::new();
    for (n, (code, _)) in cases.iter().enumerate() {
        let id = format!("wamid.f{n}");
        // Half as protobuf: both encodings of the contract.
        if n % 2 == 0 {
            let message = pb::BroadcastMessage {
                message_id: id.clone(),
                occurred_at: Some(prost_types::Timestamp { seconds: at.timestamp() + n as i64, nanos: 0 }),
                campaign: Some(pb::Campaign { id: "cmp-f".into(), name: "Failures".into() }),
                template: Some(pb::Template { name: "t".into(), language: "en".into(), category: "MARKETING".into() }),
                contact: Some(pb::Contact { phone: phone(n as u32), ..Default::default() }),
            };
            let failure = pb::DeliveryStatus {
                message_id: id.clone(),
                status: "failed".into(),
                timestamp: Some(prost_types::Timestamp { seconds: at.timestamp() + 60, nanos: 0 }),
                error: Some(pb::DeliveryError { code: *code, title: format!("error {code}") }),
            };
            events.push(Published {
                subject: env.subjects.broadcast_messages(ORG),
                payload: message.encode_to_vec(),
                headers: Some(protobuf_headers()),
            });
            events.push(Published {
                subject: env.subjects.broadcast_statuses(ORG),
                payload: failure.encode_to_vec(),
                headers: Some(protobuf_headers()),
            });
        } else {
            events.push(message(&env, &id, "cmp-f", &phone(n as u32), at + Span::seconds(n as i64)));
            events.push(failed(&env, &id, *code, at + Span::seconds(60)));
        }
    }
    // One failed after it was sent: failed and sent both.
    events.push(status(&env, "wamid.f0", "sent", at + Span::seconds(20)));
    publish_all(&env, &events).await?;
    wait_drained(&env, StreamKind::Broadcasts, broadcast::DURABLE).await;
    let mut client = node.broadcast().await?;
    let stats = stats(&mut client, "cmp-f").await?;
    assert_eq!((stats.messages, stats.sent, stats.failed), (5, 1, 5));
    assert_eq!(stats.failure_rate, 1.0);
    for (_, class) in cases {
        assert_eq!(stats.failed_by_class.get(class), Some(&1), "{class}: {:?}", stats.failed_by_class);
    }
    let pool = env.admin_pool().await?;
    let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT message_id, error_code, error_title, error_class FROM broadcast.statuses \
         WHERE status = 'failed' ORDER BY message_id",
    )
    .fetch_all(&pool)
    .await?;
    for (n, (code, class)) in cases.iter().enumerate() {
        assert_eq!(rows[n], (format!("wamid.f{n}"), *code, format!("error {code}"), (*class).to_owned()));
    }
    pool.close().await;
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn campaign_stats_match_a_hand_count() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Broadcast]).await?;
    let at = base_time();
    let s = |n: i64| at + Span::seconds(n);
    // m0: read; m1: delivered; m2: sent; m3: read without delivered; m4: delivered then
    // failed (131049); m5: failed only (131026); m6, m7: no status yet. Another campaign's
    // message m8 is read and must not count.
    let mut events = Vec::new();
    for n in 0..8u32 {
        events.push(message(&env, &format!("m{n}"), "cmp-h", &phone(100 + n), s(i64::from(n))));
    }
    events.push(message(&env, "m8", "cmp-other", &phone(100), s(9)));
    for (id, name, t) in [
        ("m0", "sent", 10),
        ("m0", "delivered", 11),
        ("m0", "read", 12),
        ("m1", "sent", 10),
        ("m1", "delivered", 11),
        ("m2", "sent", 10),
        ("m3", "sent", 10),
        ("m3", "read", 12),
        ("m4", "sent", 10),
        ("m4", "delivered", 11),
        ("m8", "read", 12),
        // Repeats of a status with a later time change nothing.
        ("m0", "read", 50),
    ] {
        events.push(status(&env, id, name, s(t)));
    }
    events.push(failed(&env, "m4", 131049, s(13)));
    events.push(failed(&env, "m5", 131026, s(13)));
    publish_all(&env, &events).await?;
    wait_drained(&env, StreamKind::Broadcasts, broadcast::DURABLE).await;
    // Replies: m0's contact had no lead (a reply opens one); m1's contact already had one
    // (the reply is recorded on it). The repeated reply counts once.
    env.publish_interaction(ORG, &chat_event("chat-1", &phone(101), "hello")).await?;
    let leads = node.lead().await?;
    eventually(DEADLINE, "the chat lead", || {
        let mut leads = leads.clone();
        async move { (leads_tests::all_leads(&mut leads, ORG).await.ok()?.len() == 1).then_some(()) }
    })
    .await;
    for (event_id, n, message_id) in [("reply-0", 100, "m0"), ("reply-1", 101, "m1"), ("reply-0", 100, "m0")] {
        let mut reply = chat_event(event_id, &phone(n), "interested!");
        reply["kind"] = json!("broadcast_reply");
        reply["broadcast"] = json!({ "message_id": message_id, "campaign_id": "cmp-h" });
        env.publish_interaction(ORG, &reply).await?;
    }
    let client = node.broadcast().await?;
    let stats = eventually(DEADLINE, "both replies to be counted", || {
        let mut client = client.clone();
        async move {
            let stats = stats(&mut client, "cmp-h").await.ok()?;
            (stats.replied == 2).then_some(stats)
        }
    })
    .await;
    assert_eq!(stats.campaign_id, "cmp-h");
    assert_eq!(stats.name, "Campaign cmp-h");
    assert_eq!(stats.messages, 8);
    assert_eq!(stats.sent, 5, "m0-m4: every message that got at least as far as sent");
    assert_eq!(stats.delivered, 4, "m0, m1, m3 (read), m4");
    assert_eq!(stats.read, 2, "m0, m3");
    assert_eq!(stats.failed, 2, "m4, m5");
    assert_eq!(stats.failed_by_class.get("frequency_cap"), Some(&1));
    assert_eq!(stats.failed_by_class.get("undeliverable"), Some(&1));
    assert_eq!(stats.failed_by_class.get("opted_out"), Some(&0));
    assert_eq!(stats.replied, 2);
    assert_eq!(stats.leads_created, 1, "only m0's reply opened a lead");
    assert_eq!(stats.delivery_rate, 4.0 / 8.0);
    assert_eq!(stats.read_rate, 2.0 / 8.0);
    assert_eq!(stats.failure_rate, 2.0 / 8.0);
    assert_eq!(stats.reply_rate, 2.0 / 8.0);
    let pool = env.admin_pool().await?;
    let m0_read: DateTime<Utc> =
        sqlx::query_scalar("SELECT at FROM broadcast.statuses WHERE message_id = 'm0' AND status = 'read'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(m0_read, s(12), "a repeated status keeps its first time");
    pool.close().await;
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_bad_event_is_refused_with_its_reason_and_does_not_block_the_stream() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Broadcast]).await?;
    let at = base_time().to_rfc3339();
    let statuses = env.subjects.broadcast_statuses(ORG);
    let bad = [
        (statuses.clone(), "{not json".to_owned(), "payload"),
        (
            env.subjects.broadcast_messages(ORG),
            json!({ "occurred_at": at, "contact": { "phone": phone(1) } }).to_string(),
            "message_id",
        ),
        (statuses.clone(), json!({ "message_id": "b1", "status": "bounced", "timestamp": at }).to_string(), "status"),
        (
            statuses.clone(),
            json!({ "message_id": "b1", "status": "read", "timestamp": at, "error": { "code": 1, "title": "x" } })
                .to_string(),
            "error",
        ),
        (
            statuses.clone(),
            json!({ "message_id": "b1", "status": "sent", "timestamp": "yesterday" }).to_string(),
            "timestamp",
        ),
        (
            format!("{}broadcasts.{ORG}.receipts", env.subjects.prefix()),
            json!({ "message_id": "b1", "status": "sent", "timestamp": at }).to_string(),
            "subject",
        ),
    ];
    for (subject, payload, _) in &bad {
        env.publish(subject.clone(), payload.clone().into_bytes(), None).await?;
    }
    let good_at = base_time();
    publish_all(
        &env,
        &[message(&env, "good", "cmp-g", &phone(2), good_at), status(&env, "good", "delivered", good_at)],
    )
    .await?;
    let client = node.broadcast().await?;
    let stats = eventually(DEADLINE, "the good events after the bad ones", || {
        let mut client = client.clone();
        async move { stats(&mut client, "cmp-g").await.ok().filter(|s| s.delivered == 1) }
    })
    .await;
    assert_eq!(stats.messages, 1);
    wait_drained(&env, StreamKind::Broadcasts, broadcast::DURABLE).await;
    let pool = env.admin_pool().await?;
    let refused: Vec<(String, String, String)> =
        sqlx::query_as("SELECT field, reason, subject FROM broadcast.rejections ORDER BY source_key")
            .fetch_all(&pool)
            .await?;
    let fields: Vec<&str> = refused.iter().map(|r| r.0.as_str()).collect();
    let mut expected: Vec<&str> = bad.iter().map(|b| b.2).collect();
    let mut sorted_fields = fields.clone();
    sorted_fields.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted_fields, expected, "{refused:?}");
    for (field, reason, subject) in &refused {
        assert!(!reason.is_empty(), "{field} has a reason");
        assert!(subject.starts_with("broadcasts."), "kept without the prefix: {subject}");
    }
    let payload: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM broadcast.rejections WHERE field = 'payload'").fetch_one(&pool).await?;
    assert_eq!(payload, b"{not json");
    // Nothing of the refused events was applied.
    let b1: i64 =
        sqlx::query_scalar("SELECT count(*) FROM broadcast.statuses WHERE message_id = 'b1'").fetch_one(&pool).await?;
    assert_eq!(b1, 0);
    pool.close().await;
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_leads_broadcast_history_lists_its_contacts_messages_with_their_timelines() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Broadcast]).await?;
    let at = base_time();
    let s = |n: i64| at + Span::seconds(n);
    let ada = phone(7);
    publish_all(
        &env,
        &[
            message(&env, "h1", "cmp-1", &ada, s(0)),
            message(&env, "h2", "cmp-2", &ada, s(100)),
            message(&env, "h3", "cmp-3", &ada, s(200)),
            message(&env, "other", "cmp-1", &phone(8), s(150)),
            status(&env, "h1", "sent", s(1)),
            status(&env, "h1", "delivered", s(2)),
            status(&env, "h1", "read", s(3)),
            failed(&env, "h2", 131050, s(101)),
        ],
    )
    .await?;
    // The contact writes in (with the number in another format): the lead service opens a lead.
    env.publish_interaction(ORG, &chat_event("chat-ada", "+1 415 200 0007", "hi")).await?;
    let leads = node.lead().await?;
    let lead = eventually(DEADLINE, "the lead", || {
        let mut leads = leads.clone();
        async move { leads_tests::all_leads(&mut leads, ORG).await.ok()?.into_iter().next() }
    })
    .await;
    let mut client = node.broadcast().await?;
    let request = |target: pb::get_broadcast_history_request::Target, page_size: i32, page_token: String| {
        pb::GetBroadcastHistoryRequest {
            org_id: ORG.into(),
            target: Some(target),
            page_size,
            page_token,
            older_than: None,
        }
    };
    let by_lead = pb::get_broadcast_history_request::Target::LeadId(lead.id.clone());
    let history = eventually(DEADLINE, "the lead's broadcast history", || {
        let mut client = client.clone();
        let request = request(by_lead.clone(), 0, String::new());
        async move {
            let history = client.get_broadcast_history(request).await.ok()?.into_inner();
            (history.messages.len() == 3).then_some(history)
        }
    })
    .await;
    let ids: Vec<&str> = history.messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["h3", "h2", "h1"], "newest first");
    assert!(history.next_page_token.is_empty());
    let h1 = &history.messages[2];
    assert_eq!(h1.state, "read");
    assert_eq!(h1.campaign, Some(pb::Campaign { id: "cmp-1".into(), name: "Campaign cmp-1".into() }));
    assert_eq!(h1.template.as_ref().map(|t| t.category.as_str()), Some("MARKETING"));
    let timeline: Vec<&str> = h1.timeline.iter().map(|e| e.status.as_str()).collect();
    assert_eq!(timeline, ["read", "delivered", "sent"], "newest first");
    let h2 = &history.messages[1];
    assert!(h2.failed);
    assert_eq!(h2.state, "failed");
    assert_eq!(h2.error_class, "opted_out");
    assert_eq!(h2.error.as_ref().map(|e| e.code), Some(131050));
    assert_eq!(history.messages[0].state, "pending");

    // Pages of one, by contact, chained by their tokens.
    let by_contact = pb::get_broadcast_history_request::Target::ContactId(lead.contact_id.clone());
    let mut token = String::new();
    let mut paged = Vec::new();
    loop {
        let page = client.get_broadcast_history(request(by_contact.clone(), 1, token.clone())).await?.into_inner();
        assert!(page.messages.len() <= 1);
        paged.extend(page.messages.into_iter().map(|m| m.message_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, ["h3", "h2", "h1"]);

    // Errors name the field, or say what was not found.
    let check = |result: Result<tonic::Response<pb::GetBroadcastHistoryResponse>, tonic::Status>,
                 code: tonic::Code,
                 field: &str| {
        let err = result.expect_err(field);
        assert_eq!(err.code(), code, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    };
    let mut bad_org = request(by_lead.clone(), 0, String::new());
    bad_org.org_id = "no.dots".into();
    check(client.get_broadcast_history(bad_org).await, tonic::Code::InvalidArgument, "org_id");
    let no_target = pb::GetBroadcastHistoryRequest { org_id: ORG.into(), ..Default::default() };
    check(client.get_broadcast_history(no_target).await, tonic::Code::InvalidArgument, "lead_id");
    let bad_lead = pb::get_broadcast_history_request::Target::LeadId("nope".into());
    check(
        client.get_broadcast_history(request(bad_lead, 0, String::new())).await,
        tonic::Code::InvalidArgument,
        "lead_id",
    );
    check(
        client.get_broadcast_history(request(by_lead.clone(), 501, String::new())).await,
        tonic::Code::InvalidArgument,
        "page_size",
    );
    check(
        client.get_broadcast_history(request(by_lead.clone(), 0, "garbage".into())).await,
        tonic::Code::InvalidArgument,
        "page_token",
    );
    let unknown = pb::get_broadcast_history_request::Target::LeadId(uuid::Uuid::now_v7().to_string());
    check(client.get_broadcast_history(request(unknown, 0, String::new())).await, tonic::Code::NotFound, "lead");
    let unknown = pb::get_broadcast_history_request::Target::ContactId(uuid::Uuid::now_v7().to_string());
    check(client.get_broadcast_history(request(unknown, 0, String::new())).await, tonic::Code::NotFound, "contact");
    // Nothing crosses organisations.
    let mut other_org = request(by_lead, 0, String::new());
    other_org.org_id = "globex".into();
    check(client.get_broadcast_history(other_org).await, tonic::Code::NotFound, "lead");
    node.stop().await?;
    env.cleanup().await
}

/// `broadcasts.<org_id>.statuses.batch` and `.messages.batch`, the contract's extension for
/// high-volume publishers: each item of a batch is applied or refused on its own, in JSON and
/// protobuf, and a batch published twice changes nothing the second time.
#[tokio::test]
async fn batches_of_statuses_and_messages_are_applied_item_by_item_and_bad_items_refused_alone() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Broadcast]).await?;
    let at = base_time();
    let batches = env.subjects.broadcast_status_batches(ORG);
    let json_batch = json!({ "statuses": [
        { "message_id": "m1", "status": "read", "timestamp": (at + Span::seconds(60)).to_rfc3339() },
        { "message_id": "m1", "status": "bounced", "timestamp": at.to_rfc3339() },
        { "message_id": "m1", "status": "sent", "timestamp": (at + Span::seconds(1)).to_rfc3339() },
        42,
        { "message_id": "m1", "status": "delivered", "timestamp": (at + Span::seconds(3)).to_rfc3339() },
    ]})
    .to_string()
    .into_bytes();
    let proto_batch = pb::DeliveryStatusBatch {
        statuses: vec![
            pb::DeliveryStatus {
                message_id: "m2".into(),
                status: "failed".into(),
                timestamp: Some(prost_types::Timestamp { seconds: at.timestamp() + 5, nanos: 0 }),
                error: Some(pb::DeliveryError { code: 131_049, title: "frequency cap".into() }),
            },
            pb::DeliveryStatus { message_id: "m2".into(), status: "sent".into(), timestamp: None, error: None },
        ],
    }
    .encode_to_vec();
    let whole_refusals = [
        json!({ "statuses": [] }).to_string(),
        json!({ "statuses": { "message_id": "m1" } }).to_string(),
        json!({ "status": "sent" }).to_string(),
    ];
    // The JSON batch twice, as a publisher retrying without a Nats-Msg-Id would send it.
    env.publish(batches.clone(), json_batch.clone(), None).await?;
    env.publish(batches.clone(), proto_batch, Some(protobuf_headers())).await?;
    for payload in &whole_refusals {
        env.publish(batches.clone(), payload.clone().into_bytes(), None).await?;
    }
    env.publish(batches.clone(), json_batch, None).await?;
    let items = [message(&env, "m1", "cmp-b", &phone(1), at), message(&env, "m2", "cmp-b", &phone(2), at)]
        .map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload));
    let [m1, m2] = items;
    let no_contact = json!({ "message_id": "m3", "occurred_at": at.to_rfc3339() });
    let messages = json!({ "messages": [m1?, no_contact, m2?] }).to_string().into_bytes();
    env.publish(env.subjects.broadcast_message_batches(ORG), messages, None).await?;
    wait_drained(&env, StreamKind::Broadcasts, broadcast::DURABLE).await;

    let pool = env.admin_pool().await?;
    let stored: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT message_id, status, error_class FROM broadcast.statuses ORDER BY message_id, status")
            .fetch_all(&pool)
            .await?;
    let expected = [
        ("m1", "delivered", None),
        ("m1", "read", None),
        ("m1", "sent", None),
        ("m2", "failed", Some("frequency_cap")),
    ]
    .map(|(m, s, c)| (m.to_owned(), s.to_owned(), c.map(str::to_owned)));
    assert_eq!(stored, expected, "each good item once, the bad ones not at all");
    let mut refused: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT field, message_id, subject FROM broadcast.rejections").fetch_all(&pool).await?;
    refused.sort();
    let fields: Vec<&str> = refused.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        fields,
        [
            "messages[1].contact",
            "statuses",
            "statuses",
            "statuses",
            "statuses[1].status",
            "statuses[1].status",
            "statuses[1].timestamp",
            "statuses[3]",
            "statuses[3]",
        ],
        "each bad item named by its place, once per published batch: {refused:?}"
    );
    for (field, message_id, subject) in &refused {
        let kind = if field.starts_with("messages") { "messages" } else { "statuses" };
        assert_eq!(subject, &format!("broadcasts.{ORG}.{kind}.batch"), "{field}");
        if field == "messages[1].contact" {
            assert_eq!(message_id.as_deref(), Some("m3"), "the refused message is named");
        }
    }
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM broadcast.messages").fetch_one(&pool).await?;
    assert_eq!(messages, 2, "the good messages of the batch, not the bad one");
    let item: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM broadcast.rejections WHERE field = 'statuses[1].status' LIMIT 1")
            .fetch_one(&pool)
            .await?;
    let item: serde_json::Value = serde_json::from_slice(&item)?;
    assert_eq!(item["status"], "bounced", "the refused item is kept alone: {item}");

    let mut client = node.broadcast().await?;
    let stats = stats(&mut client, "cmp-b").await?;
    assert_eq!((stats.messages, stats.sent, stats.delivered, stats.read, stats.failed), (2, 1, 1, 1, 1));
    assert_eq!(stats.failed_by_class.get("frequency_cap"), Some(&1));
    pool.close().await;
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn campaigns_are_listed_most_recently_sent_first_with_their_figures_and_paged() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Broadcast]).await?;
    let at = base_time();
    let s = |n: i64| at + Span::seconds(n);
    // cmp-old: o1 read, o2 failed (131026, undeliverable); cmp-new, sent later: n1 delivered
    // and replied to, n2 no status yet. Another organisation's campaign was sent last of all.
    let mut events = vec![
        message(&env, "o1", "cmp-old", &phone(200), s(0)),
        message(&env, "o2", "cmp-old", &phone(201), s(5)),
        message(&env, "n1", "cmp-new", &phone(202), s(10)),
        message(&env, "n2", "cmp-new", &phone(203), s(20)),
        status(&env, "o1", "read", s(30)),
        status(&env, "n1", "sent", s(31)),
        status(&env, "n1", "delivered", s(32)),
        failed(&env, "o2", 131026, s(33)),
    ];
    let theirs = json!({
        "message_id": "x1", "occurred_at": s(40).to_rfc3339(),
        "campaign": { "id": "cmp-x", "name": "Theirs" }, "contact": { "phone": phone(204) },
    });
    events.push(Published {
        subject: env.subjects.broadcast_messages("globex"),
        payload: theirs.to_string().into_bytes(),
        headers: None,
    });
    publish_all(&env, &events).await?;
    wait_drained(&env, StreamKind::Broadcasts, broadcast::DURABLE).await;
    let mut reply = chat_event("reply-n1", &phone(202), "yes please");
    reply["kind"] = json!("broadcast_reply");
    reply["broadcast"] = json!({ "message_id": "n1", "campaign_id": "cmp-new" });
    env.publish_interaction(ORG, &reply).await?;

    let client = node.broadcast().await?;
    let list = |org: &str, page_size: i32, page_token: String| {
        let mut client = client.clone();
        let request = pb::ListCampaignsRequest { org_id: org.into(), page_size, page_token };
        async move { client.list_campaigns(request).await.map(tonic::Response::into_inner) }
    };
    let page = eventually(DEADLINE, "the reply to be counted", || async {
        let page = list(ORG, 0, String::new()).await.ok()?;
        page.campaigns.iter().any(|c| c.replied == 1).then_some(page)
    })
    .await;
    let ids: Vec<&str> = page.campaigns.iter().map(|c| c.campaign_id.as_str()).collect();
    assert_eq!(ids, ["cmp-new", "cmp-old"], "the most recently sent first, another organisation's not at all");
    assert!(page.next_page_token.is_empty(), "one page holds both");
    let time = |at: DateTime<Utc>| Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 });
    let (new, old) = (&page.campaigns[0], &page.campaigns[1]);
    assert_eq!(
        (new.name.as_str(), new.messages, new.sent, new.delivered, new.read, new.failed),
        ("Campaign cmp-new", 2, 1, 1, 0, 0)
    );
    assert_eq!((new.replied, new.leads_created, new.reply_rate), (1, 1, 0.5));
    assert_eq!((new.first_sent_at, new.last_sent_at), (time(s(10)), time(s(20))));
    assert_eq!((old.messages, old.sent, old.delivered, old.read, old.failed, old.replied), (2, 1, 1, 1, 1, 0));
    assert_eq!(old.failed_by_class.get("undeliverable"), Some(&1));
    assert_eq!((old.first_sent_at, old.last_sent_at), (time(s(0)), time(s(5))));
    let mut stats_client = client.clone();
    for listed in &page.campaigns {
        assert_eq!(listed, &stats(&mut stats_client, &listed.campaign_id).await?, "the figures GetCampaignStats gives");
    }

    // A page at a time: each campaign once, in the same order, and no token after the last.
    let first = list(ORG, 1, String::new()).await?;
    assert_eq!(first.campaigns, page.campaigns[..1]);
    assert!(!first.next_page_token.is_empty());
    let second = list(ORG, 1, first.next_page_token).await?;
    assert_eq!(second.campaigns, page.campaigns[1..]);
    assert!(second.next_page_token.is_empty(), "the last page");

    let globex = list("globex", 0, String::new()).await?;
    assert_eq!(globex.campaigns.iter().map(|c| c.campaign_id.as_str()).collect::<Vec<_>>(), ["cmp-x"]);
    for (page_size, page_token, field) in [(201, String::new(), "page_size"), (0, "zz".to_owned(), "page_token")] {
        let refused = list(ORG, page_size, page_token).await.expect_err(field);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(field), "{}", refused.message());
    }
    node.stop().await?;
    env.cleanup().await
}
