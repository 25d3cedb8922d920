//! Ingest and lead creation: every interaction becomes the right lead, exactly once.

use async_nats::HeaderMap;
use futures::StreamExt;
use leads_tests::{Node, TestEnv, all_leads, chat_event, eventually, pb, phone};
use platform::ServiceName;
use prost::Message;
use serde_json::json;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);
const ORG: &str = "acme";

async fn start(env: &TestEnv) -> anyhow::Result<Node> {
    env.start(&[ServiceName::Ingest, ServiceName::Lead]).await
}

/// Waits until the organisation's leads satisfy `done`, and returns them.
async fn leads_when(node: &Node, what: &str, done: impl Fn(&[pb::Lead]) -> bool) -> anyhow::Result<Vec<pb::Lead>> {
    let client = node.lead().await?;
    Ok(eventually(DEADLINE, what, || {
        let mut client = client.clone();
        let leads = async move { all_leads(&mut client, ORG).await.ok() };
        async { leads.await.filter(|l| done(l)) }
    })
    .await)
}

async fn history(node: &Node, lead_id: &str) -> anyhow::Result<pb::GetLeadHistoryResponse> {
    Ok(node
        .lead()
        .await?
        .get_lead_history(pb::GetLeadHistoryRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

fn interactions(leads: &[pb::Lead]) -> i64 {
    leads.iter().map(|l| l.interaction_count).sum()
}

#[tokio::test]
async fn the_same_event_id_again_changes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = start(&env).await?;
    let first = chat_event("evt-dup", &phone(1), "hello");
    env.publish_interaction(ORG, &first).await?;
    // Redelivered by a publisher without Msg-Id (so JetStream's window cannot catch it) ...
    env.publish(env.subjects.interactions(ORG), serde_json::to_vec(&first)?, None).await?;
    // ... and sent again through gRPC.
    let mut ingest = node.ingest().await?;
    let event = pb::InteractionEvent {
        event_id: "evt-dup".into(),
        occurred_at: Some(prost_types::Timestamp { seconds: 1_790_000_000, nanos: 0 }),
        kind: "chat_message".into(),
        contact: Some(pb::Contact { phone: phone(1), ..Default::default() }),
        ..Default::default()
    };
    let marker = chat_event("evt-marker", &phone(2), "after the duplicates");
    env.publish_interaction(ORG, &marker).await?;
    let leads = leads_when(&node, "both contacts' leads", |l| interactions(l) >= 2).await?;
    let answer = ingest.ingest(pb::IngestRequest { org_id: ORG.into(), events: vec![event] }).await?.into_inner();
    assert_eq!(answer.results[0].outcome(), pb::IngestOutcome::Duplicate);
    assert_eq!(leads.len(), 2);
    assert_eq!(interactions(&leads), 2);
    // A week later is no different: the key is kept, not a window.
    let admin = env.admin_pool().await?;
    sqlx::query("UPDATE ingest.accepted_events SET received_at = now() - interval '8 days'").execute(&admin).await?;
    env.publish(env.subjects.interactions(ORG), serde_json::to_vec(&first)?, None).await?;
    env.publish_interaction(ORG, &chat_event("evt-marker-2", &phone(2), "later")).await?;
    let leads = leads_when(&node, "the second marker", |l| interactions(l) >= 3).await?;
    assert_eq!(interactions(&leads), 3);
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn outbound_never_creates_a_lead_and_moves_new_to_contacted() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = start(&env).await?;
    let mut outbound = chat_event("out-1", &phone(10), "we have an offer");
    outbound["direction"] = json!("outbound");
    env.publish_interaction(ORG, &outbound).await?;
    env.publish_interaction(ORG, &chat_event("in-1", &phone(11), "hi")).await?;
    let leads = leads_when(&node, "the inbound contact's lead", |l| !l.is_empty()).await?;
    assert_eq!(leads.len(), 1, "the outbound message created no lead");
    assert_eq!(leads[0].contact.clone().unwrap_or_default().phone, phone(11));

    let mut reply = chat_event("out-2", &phone(11), "thanks for writing");
    reply["direction"] = json!("outbound");
    reply["agent_id"] = json!("agent-7");
    env.publish_interaction(ORG, &reply).await?;
    let leads = leads_when(&node, "the lead to be contacted", |l| {
        l.first().is_some_and(|l| l.status() == pb::LeadStatus::Contacted)
    })
    .await?;
    let timeline = history(&node, &leads[0].id).await?;
    let change = timeline.entries.iter().find(|e| e.kind == "status_changed").expect("a status change");
    assert_eq!(change.actor, "system");
    assert!(change.summary.contains("new -> contacted"), "{}", change.summary);
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_new_lead_follows_a_converted_one() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = start(&env).await?;
    env.publish_interaction(ORG, &chat_event("a-1", &phone(20), "first")).await?;
    let leads = leads_when(&node, "the first lead", |l| l.len() == 1).await?;
    let first = leads[0].clone();
    let mut client = node.lead().await?;
    client
        .change_status(pb::ChangeStatusRequest {
            org_id: ORG.into(),
            lead_id: first.id.clone(),
            status: pb::LeadStatus::Converted as i32,
            actor: "op-1".into(),
            ..Default::default()
        })
        .await?;
    env.publish_interaction(ORG, &chat_event("a-2", &phone(20), "back again")).await?;
    let leads = leads_when(&node, "a second lead", |l| l.len() == 2).await?;
    let second = leads.iter().find(|l| l.id != first.id).expect("a new lead");
    assert_eq!(second.status(), pb::LeadStatus::New);
    assert_eq!(second.contact_id, first.contact_id);
    let old = leads.iter().find(|l| l.id == first.id).expect("the old lead");
    assert!(!old.active);
    assert_eq!(old.interaction_count, 1, "the interaction went to the new lead");
    let timeline = history(&node, &second.id).await?;
    assert_eq!(timeline.past_lead_ids, vec![first.id.clone()]);
    let first_timeline = history(&node, &first.id).await?;
    assert!(
        first_timeline.past_lead_ids.is_empty(),
        "a newer lead is not a past one: {:?}",
        first_timeline.past_lead_ids
    );
    assert!(timeline.entries.iter().any(|e| e.lead_id == first.id), "past lead's entries are in the timeline");
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn sources_are_recorded_and_contacts_are_linked() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = start(&env).await?;
    let mut reply = chat_event("r-1", &phone(30), "I want the offer");
    reply["kind"] = json!("broadcast_reply");
    reply["broadcast"] = json!({ "message_id": "wamid.1", "campaign_id": "cmp-42" });
    env.publish_interaction(ORG, &reply).await?;
    let integration = json!({
        "event_id": "i-1", "occurred_at": "2026-11-24T10:00:00Z", "kind": "integration",
        "contact": { "external_id": "crm-9", "email": "grace@example.com" },
        "integration": { "name": "shopify", "reference": "order-1001" }
    });
    env.publish_interaction(ORG, &integration).await?;
    let leads = leads_when(&node, "two leads", |l| l.len() == 2).await?;
    let by_reply = leads.iter().find(|l| l.contact.clone().unwrap_or_default().phone == phone(30)).expect("reply lead");
    let source = by_reply.source.clone().unwrap_or_default();
    assert_eq!(source.kind(), pb::SourceKind::BroadcastReply);
    assert_eq!((source.campaign_id.as_str(), source.broadcast_message_id.as_str()), ("cmp-42", "wamid.1"));
    let by_integration = leads.iter().find(|l| l.id != by_reply.id).expect("integration lead");
    let source = by_integration.source.clone().unwrap_or_default();
    assert_eq!(source.kind(), pb::SourceKind::Integration);
    assert_eq!((source.integration_name.as_str(), source.integration_reference.as_str()), ("shopify", "order-1001"));

    // Phone and external id arrive together: the contact found by external id gains the
    // phone, and a later event naming only the phone lands on the same lead.
    let both = json!({
        "event_id": "i-2", "occurred_at": "2026-11-24T11:00:00Z", "kind": "chat_message",
        "contact": { "external_id": "crm-9", "phone": phone(31), "name": "Grace Hopper" }, "text": "hi"
    });
    env.publish_interaction(ORG, &both).await?;
    leads_when(&node, "the linking event", |l| l.iter().any(|l| l.id == by_integration.id && l.interaction_count == 2))
        .await?;
    let older_name = json!({
        "event_id": "i-3", "occurred_at": "2026-11-24T09:00:00Z", "kind": "chat_message",
        "contact": { "phone": phone(31), "name": "G. H." }, "text": "an old message, delivered late"
    });
    env.publish_interaction(ORG, &older_name).await?;
    let leads = leads_when(&node, "three interactions on the integration lead", |l| {
        l.iter().any(|l| l.id == by_integration.id && l.interaction_count == 3)
    })
    .await?;
    assert_eq!(leads.len(), 2);
    let linked = leads.iter().find(|l| l.id == by_integration.id).expect("linked lead");
    let contact = linked.contact.clone().unwrap_or_default();
    assert_eq!(contact.phone, phone(31));
    assert_eq!(contact.external_id, "crm-9");
    assert_eq!(contact.name, "Grace Hopper", "an older event does not overwrite a newer name");
    assert_eq!(contact.email, "grace@example.com");
    assert_eq!(linked.last_message_preview, "hi", "the preview is the newest message");
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn bad_input_is_refused_with_its_reason_kept_and_dead_lettered() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = start(&env).await?;
    let dead = env
        .js
        .get_stream(env.subjects.stream_name(platform::nats::StreamKind::DeadLetter))
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await?;
    let valid = chat_event("ok-1", &phone(40), "fine");
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json", b"{oops".to_vec(), "payload"),
        (
            "no event id",
            serde_json::to_vec(
                &json!({"occurred_at": "2026-11-24T10:00:00Z", "kind": "chat_message", "contact": {"phone": phone(40)}}),
            )?,
            "event_id",
        ),
        (
            "bad phone",
            serde_json::to_vec(
                &json!({"event_id": "b-1", "occurred_at": "2026-11-24T10:00:00Z", "kind": "chat_message", "contact": {"phone": "555"}}),
            )?,
            "contact.phone",
        ),
        (
            "reply without message",
            serde_json::to_vec(
                &json!({"event_id": "b-2", "occurred_at": "2026-11-24T10:00:00Z", "kind": "broadcast_reply", "contact": {"phone": phone(40)}}),
            )?,
            "broadcast.message_id",
        ),
        ("oversized", vec![b' '; 300 * 1024], "payload"),
    ];
    let mut long_text = valid.clone();
    long_text["event_id"] = json!("b-3");
    long_text["text"] = json!("x".repeat(4097));
    cases.push(("long text", serde_json::to_vec(&long_text)?, "text"));
    for (_, payload, _) in &cases {
        env.publish(env.subjects.interactions(ORG), payload.clone(), None).await?;
    }
    // A malformed subject is refused the same way.
    env.publish(format!("{}interactions.bad.org", env.subjects.prefix()), serde_json::to_vec(&valid)?, None).await?;
    env.publish_interaction(ORG, &valid).await?;
    let leads = leads_when(&node, "the valid event after the bad ones", |l| l.len() == 1).await?;
    assert_eq!(interactions(&leads), 1, "refused events changed nothing");

    let mut ingest = node.ingest().await?;
    let expected = cases.len();
    let rejections = eventually(DEADLINE, "every refusal to be kept", || {
        let mut ingest = ingest.clone();
        async move {
            let page = ingest
                .list_rejections(pb::ListRejectionsRequest { org_id: ORG.into(), ..Default::default() })
                .await
                .ok()?
                .into_inner();
            (page.rejections.len() == expected).then_some(page.rejections)
        }
    })
    .await;
    for (name, payload, field) in &cases {
        let kept = rejections.iter().find(|r| &r.payload == payload).unwrap_or_else(|| panic!("{name} not kept"));
        assert_eq!(kept.field, *field, "{name}: {}", kept.reason);
    }
    let mut letters = dead.fetch().max_messages(cases.len() + 1).expires(Duration::from_secs(5)).messages().await?;
    let mut seen = Vec::new();
    while let Some(Ok(message)) = letters.next().await {
        let letter: serde_json::Value = serde_json::from_slice(&message.payload)?;
        seen.push((message.subject.to_string(), letter["field"].as_str().unwrap_or_default().to_owned()));
        if seen.len() == cases.len() + 1 {
            break;
        }
    }
    let expected_subject = format!("{}deadletter.interactions.{ORG}", env.subjects.prefix());
    assert_eq!(seen.iter().filter(|(s, _)| *s == expected_subject).count(), cases.len());
    assert!(seen.iter().any(|(s, f)| s.ends_with("deadletter.malformed") && f == "subject"));

    // The gRPC path answers per event and refuses a bad organisation outright.
    let answer = ingest
        .ingest(pb::IngestRequest {
            org_id: ORG.into(),
            events: vec![
                pb::InteractionEvent {
                    event_id: "g-1".into(),
                    occurred_at: Some(prost_types::Timestamp { seconds: 1_790_000_000, nanos: 0 }),
                    kind: "integration".into(),
                    contact: Some(pb::Contact { external_id: "x-1".into(), ..Default::default() }),
                    ..Default::default()
                },
                pb::InteractionEvent {
                    event_id: "g-2".into(),
                    occurred_at: Some(prost_types::Timestamp { seconds: 1_790_000_000, nanos: 0 }),
                    kind: "chat_message".into(),
                    contact: Some(pb::Contact { external_id: "x-2".into(), ..Default::default() }),
                    ..Default::default()
                },
            ],
        })
        .await?
        .into_inner();
    assert_eq!(answer.results[0].outcome(), pb::IngestOutcome::Rejected);
    assert_eq!(answer.results[0].field, "integration.name");
    assert_eq!(answer.results[1].outcome(), pb::IngestOutcome::Accepted);
    let error = ingest.ingest(pb::IngestRequest { org_id: "no/org".into(), events: vec![] }).await.expect_err("org");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("org_id"), "{}", error.message());
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn protobuf_events_are_accepted() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = start(&env).await?;
    let event = pb::InteractionEvent {
        event_id: "pb-1".into(),
        occurred_at: Some(prost_types::Timestamp { seconds: 1_790_000_000, nanos: 0 }),
        kind: "chat_message".into(),
        contact: Some(pb::Contact { phone: phone(50), name: "Proto".into(), ..Default::default() }),
        text: "sent as protobuf".into(),
        ..Default::default()
    };
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/protobuf");
    env.publish(env.subjects.interactions(ORG), event.encode_to_vec(), Some(headers)).await?;
    let leads = leads_when(&node, "the protobuf lead", |l| l.len() == 1).await?;
    assert_eq!(leads[0].last_message_preview, "sent as protobuf");
    assert_eq!(leads[0].contact.clone().unwrap_or_default().name, "Proto");
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn concurrent_first_messages_on_two_consumers_make_one_lead() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Two processes' worth of consumers share the durable consumers and split the work.
    let first = start(&env).await?;
    let second = start(&env).await?;
    let contacts = 40u32;
    let publishes = (0..contacts)
        .flat_map(|c| (0..3).map(move |n| chat_event(&format!("c{c}-{n}"), &phone(100 + c), &format!("message {n}"))));
    futures::future::try_join_all(publishes.map(|event| {
        let env = &env;
        async move { env.publish_interaction(ORG, &event).await }
    }))
    .await?;
    let leads = leads_when(&first, "every message applied", |l| interactions(l) >= i64::from(contacts) * 3).await?;
    assert_eq!(leads.len(), contacts as usize, "one lead per contact");
    assert!(leads.iter().all(|l| l.interaction_count == 3));
    // The database itself refuses a second active lead for a contact.
    let admin = env.admin_pool().await?;
    let error = sqlx::query(
        "INSERT INTO lead.leads (id, org_id, contact_id, status, source_kind, channel, first_touch_at, last_interaction_at) \
         SELECT gen_random_uuid(), org_id, contact_id, 'new', 'chat_message', 'whatsapp', now(), now() \
         FROM lead.leads LIMIT 1",
    )
    .execute(&admin)
    .await
    .expect_err("a second active lead");
    assert_eq!(platform::error::sqlstate(&error).as_deref(), Some("23505"));
    first.stop().await?;
    second.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_large_batch_of_long_messages_arrives_whole() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = start(&env).await?;
    // 150 events of 4,096 three-byte characters each: 1.8 MB of text, forwarded to the lead
    // service in messages that must each stay under NATS's payload limit.
    let text = "€".repeat(contracts::interaction::MAX_TEXT_CHARS);
    let events: Vec<pb::InteractionEvent> = (0..150u32)
        .map(|n| pb::InteractionEvent {
            event_id: format!("long-{n}"),
            occurred_at: Some(prost_types::Timestamp { seconds: 1_790_000_000 + i64::from(n), nanos: 0 }),
            kind: "chat_message".into(),
            contact: Some(pb::Contact { phone: phone(300 + n), ..Default::default() }),
            text: text.clone(),
            ..Default::default()
        })
        .collect();
    let answer = node.ingest().await?.ingest(pb::IngestRequest { org_id: ORG.into(), events }).await?.into_inner();
    assert!(answer.results.iter().all(|r| r.outcome() == pb::IngestOutcome::Accepted));
    let leads = leads_when(&node, "a lead per long message", |l| l.len() == 150).await?;
    assert_eq!(interactions(&leads), 150);
    assert!(leads.iter().all(|l| l.last_message_preview == "€".repeat(140)));
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn an_interaction_forwarded_alone_by_an_earlier_version_is_applied() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = start(&env).await?;
    // What an ingest service before batched forwarding left in the stream: one interaction
    // per `interaction_accepted` event.
    let interaction: contracts::interaction::Interaction = serde_json::from_value(json!({
        "event_id": "legacy-1",
        "occurred_at": "2026-11-01T10:00:00Z",
        "kind": "chat_message",
        "direction": "inbound",
        "channel": "whatsapp",
        "contact": { "phone": phone(400), "external_id": null, "name": "Grace Hopper", "email": null },
        "agent_id": null,
        "text": "forwarded alone",
        "conversation_id": null,
        "broadcast": null,
        "integration": null,
        "attributes": {},
    }))?;
    let kind = contracts::interaction::INTERACTION_ACCEPTED;
    let envelope = contracts::Envelope::new(ORG, kind, uuid::Uuid::now_v7(), 1, interaction);
    env.publish(env.subjects.event("ingest", ORG, kind), envelope.to_json(), None).await?;
    let leads = leads_when(&node, "the forwarded lead", |l| l.len() == 1).await?;
    assert_eq!(leads[0].last_message_preview, "forwarded alone");
    assert_eq!(leads[0].contact.clone().unwrap_or_default().name, "Grace Hopper");
    node.stop().await?;
    env.cleanup().await
}
