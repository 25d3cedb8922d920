//! Notifications and webhooks: a lead assigned to an agent and a follow-up's reminder, due and
//! overdue reach the agent (on NATS, in its list, with read/unread) and the admins when
//! escalated; webhooks are signed as the Standard Webhooks specification says, retried with
//! the same id until the receiver answers, disabled on 410, never sent where the platform may
//! not reach; each due follow-up is told once with two processes and a kill -9 among them.

use futures::StreamExt;
use leads_proto::v1::notification_service_client::NotificationServiceClient;
use leads_tests::receiver::{Answer, Receiver};
use leads_tests::{Node, Process, TestEnv, all_leads, chat_event, eventually, pb, phone};
use platform::ServiceName;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tonic::{Code, transport::Channel};

const DEADLINE: Duration = Duration::from_secs(30);
const ORG: &str = "acme";

const SERVICES: [ServiceName; 5] = [
    ServiceName::Ingest,
    ServiceName::Lead,
    ServiceName::Assignment,
    ServiceName::FollowUp,
    ServiceName::Notifications,
];

struct Platform {
    env: TestEnv,
    node: Node,
    notifications: NotificationServiceClient<Channel>,
}

impl Platform {
    /// The desk's services with notifications, webhooks allowed to loopback (the receiver) and
    /// retried after a second.
    async fn start(services: &[ServiceName]) -> anyhow::Result<Self> {
        let mut env = TestEnv::new().await?;
        env.settings.notifications.webhook_allowed_networks = "127.0.0.1/32".into();
        env.settings.notifications.webhook_retry_schedule_secs = "1,1,1".into();
        env.settings.notifications.tick_ms = 100;
        let node = env.start(services).await?;
        let notifications = match services.contains(&ServiceName::Notifications) {
            true => node.notifications().await?,
            false => NotificationServiceClient::new(Channel::from_static("http://127.0.0.1:9").connect_lazy()),
        };
        Ok(Self { env, node, notifications })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.node.stop().await?;
        self.env.cleanup().await
    }

    async fn agent(&self, agent_id: &str) -> anyhow::Result<()> {
        let request = pb::UpsertAgentRequest {
            org_id: ORG.into(),
            agent_id: agent_id.into(),
            name: agent_id.into(),
            active: Some(true),
            ..Default::default()
        };
        self.node.assignment().await?.upsert_agent(request).await?;
        Ok(())
    }

    /// `count` leads, one per contact.
    async fn leads(&self, count: u32) -> anyhow::Result<Vec<pb::Lead>> {
        for n in 0..count {
            self.env.publish_interaction(ORG, &chat_event(&format!("e-{n}"), &phone(n), "call me")).await?;
        }
        let client = self.node.lead().await?;
        Ok(eventually(DEADLINE, "the leads", || {
            let mut client = client.clone();
            async move { all_leads(&mut client, ORG).await.ok().filter(|l| l.len() >= count as usize) }
        })
        .await)
    }

    async fn assign(&self, lead_id: &str, agent_id: &str) -> anyhow::Result<()> {
        let request = pb::AssignLeadRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            agent_id: agent_id.into(),
            actor: "olga".into(),
            ..Default::default()
        };
        self.node.assignment().await?.assign_lead(request).await?;
        Ok(())
    }

    async fn follow_up(&self, lead_id: &str, due_in_seconds: i64, note: &str) -> anyhow::Result<pb::FollowUp> {
        let at = chrono::Utc::now() + chrono::Duration::seconds(due_in_seconds);
        let request = pb::CreateFollowUpRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            due_at: Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 }),
            note: note.into(),
            actor: "ann".into(),
            ..Default::default()
        };
        Ok(self.node.follow_up().await?.create_follow_up(request).await?.into_inner())
    }

    async fn list(&self, agent_id: &str, admins: bool) -> anyhow::Result<pb::ListNotificationsResponse> {
        let request = pb::ListNotificationsRequest {
            org_id: ORG.into(),
            agent_id: agent_id.into(),
            admins,
            ..Default::default()
        };
        Ok(self.notifications.clone().list_notifications(request).await?.into_inner())
    }

    /// Waits until the agent's (or the admins') list holds a notification of `kind` matching `also`.
    async fn told(
        &self,
        agent_id: &str,
        admins: bool,
        kind: &str,
        also: impl Fn(&pb::Notification) -> bool,
    ) -> pb::Notification {
        eventually(DEADLINE, &format!("a {kind} notification"), || async {
            self.list(agent_id, admins).await.ok()?.notifications.into_iter().find(|n| n.r#type == kind && also(n))
        })
        .await
    }

    async fn endpoint(&self, url: &str, event_types: &[&str]) -> Result<pb::WebhookEndpoint, tonic::Status> {
        let request = pb::CreateWebhookEndpointRequest {
            org_id: ORG.into(),
            url: url.into(),
            description: "crm".into(),
            event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
        };
        Ok(self.notifications.clone().create_webhook_endpoint(request).await?.into_inner())
    }

    async fn attempts(&self, endpoint_id: &str) -> anyhow::Result<Vec<pb::WebhookAttempt>> {
        let request = pb::ListWebhookAttemptsRequest {
            org_id: ORG.into(),
            endpoint_id: endpoint_id.into(),
            page_size: 200,
            ..Default::default()
        };
        Ok(self.notifications.clone().list_webhook_attempts(request).await?.into_inner().attempts)
    }

    async fn endpoints(&self) -> anyhow::Result<Vec<pb::WebhookEndpoint>> {
        let request = pb::ListWebhookEndpointsRequest { org_id: ORG.into() };
        Ok(self.notifications.clone().list_webhook_endpoints(request).await?.into_inner().endpoints)
    }
}

fn data(notification: &pb::Notification) -> serde_json::Value {
    serde_json::from_str(&notification.data_json).unwrap_or_default()
}

/// Whether a received request is signed with `secret` as the specification says.
fn verifies(secret: &str, received: &leads_tests::receiver::Received) -> bool {
    let Ok(timestamp) = received.timestamp.parse::<i64>() else { return false };
    let expected = notifications::webhooks::sign(secret, &received.id, timestamp, &received.body);
    expected.is_some_and(|expected| received.signature.split(' ').any(|s| s == expected))
}

#[tokio::test]
async fn a_lead_assigned_to_an_agent_is_told_to_it_on_its_subject_and_in_its_list() -> anyhow::Result<()> {
    let platform = Platform::start(&SERVICES).await?;
    let leads = platform.leads(2).await?;
    for agent in ["ann", "ann.smith"] {
        platform.agent(agent).await?;
    }
    let subjects = &platform.env.subjects;
    let mut plain = platform.env.nats.subscribe(format!("{}notifications.{ORG}.agents.ann", subjects.prefix())).await?;
    // An agent id that is not one subject token travels under its base64url key.
    let mut encoded =
        platform.env.nats.subscribe(format!("{}notifications.{ORG}.agents.~YW5uLnNtaXRo", subjects.prefix())).await?;

    platform.assign(&leads[0].id, "ann").await?;
    platform.assign(&leads[1].id, "ann.smith").await?;

    let message = tokio::time::timeout(DEADLINE, plain.next()).await?.expect("ann's notification");
    let told: serde_json::Value = serde_json::from_slice(&message.payload)?;
    assert_eq!(told["type"], "lead.assigned");
    assert_eq!(told["org_id"], ORG);
    assert!(told["id"].as_str().is_some_and(|id| id.starts_with("ntf_")), "{told}");
    assert_eq!(told["data"]["agent_id"], "ann");
    assert_eq!(told["data"]["lead_id"], leads[0].id.as_str());
    assert_eq!(told["data"]["contact"]["name"], "Ada Lovelace");
    assert!(told["data"]["contact"]["phone"].as_str().is_some_and(|p| p.starts_with('+')), "{told}");
    let other = tokio::time::timeout(DEADLINE, encoded.next()).await?.expect("ann.smith's notification");
    let other: serde_json::Value = serde_json::from_slice(&other.payload)?;
    assert_eq!(other["data"]["agent_id"], "ann.smith");
    // The stream keeps them, with the message id as the dedupe id.
    let stream = platform.env.js.get_stream(subjects.stream_name(platform::nats::StreamKind::Notifications)).await?;
    let kept = stream.get_last_raw_message_by_subject(&message.subject).await?;
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&kept.payload)?["id"], told["id"]);

    // Ann's list holds her notification only, unread, until she reads it.
    let list = platform.list("ann", false).await?;
    assert_eq!(list.notifications.len(), 1, "{list:?}");
    assert_eq!((list.notifications[0].id.as_str(), list.unread), (told["id"].as_str().unwrap_or_default(), 1));
    assert!(list.notifications[0].summary.contains("Ada Lovelace"), "{list:?}");
    let marked = platform
        .notifications
        .clone()
        .mark_notifications_read(pb::MarkNotificationsReadRequest {
            org_id: ORG.into(),
            agent_id: "ann".into(),
            ids: vec![list.notifications[0].id.clone()],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!((marked.marked, marked.unread), (1, 0));
    let list = platform.list("ann", false).await?;
    assert!(list.notifications[0].read && list.unread == 0, "{list:?}");
    assert_eq!(platform.list("ann.smith", false).await?.unread, 1);

    // Reading needs a recipient; marking needs something to mark.
    let refused = platform.list("", false).await.expect_err("no recipient");
    assert!(refused.to_string().contains("agent_id"), "{refused}");
    let refused = platform
        .notifications
        .clone()
        .mark_notifications_read(pb::MarkNotificationsReadRequest {
            org_id: ORG.into(),
            agent_id: "ann".into(),
            ..Default::default()
        })
        .await
        .expect_err("nothing to mark");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("ids"), "{refused:?}");
    platform.stop().await
}

/// A bulk assignment's events travel as one message: each of its leads is still told to the
/// agent, once.
#[tokio::test]
async fn every_lead_of_a_bulk_assignment_is_told_to_its_agent_once() -> anyhow::Result<()> {
    let platform = Platform::start(&SERVICES).await?;
    let leads = platform.leads(3).await?;
    platform.agent("ann").await?;
    let request = pb::BulkAssignRequest {
        org_id: ORG.into(),
        lead_ids: leads.iter().map(|l| l.id.clone()).collect(),
        agent_id: "ann".into(),
        actor: "olga".into(),
        ..Default::default()
    };
    let results = platform.node.assignment().await?.bulk_assign(request).await?.into_inner().results;
    assert!(results.iter().all(|r| r.outcome == pb::BulkOutcome::Changed as i32), "{results:?}");
    let mut expected: Vec<&str> = leads.iter().map(|l| l.id.as_str()).collect();
    expected.sort_unstable();
    let told = eventually(DEADLINE, "ann told of her three leads", || async {
        let list = platform.list("ann", false).await.ok()?;
        (list.notifications.len() >= expected.len()).then_some(list.notifications)
    })
    .await;
    let mut told: Vec<(&str, &str)> = told.iter().map(|n| (n.r#type.as_str(), n.lead_id.as_str())).collect();
    told.sort_unstable();
    assert_eq!(told, expected.iter().map(|id| ("lead.assigned", *id)).collect::<Vec<_>>());
    platform.stop().await
}

#[tokio::test]
async fn a_follow_up_is_reminded_due_and_overdue_and_overdue_reaches_the_admins() -> anyhow::Result<()> {
    let platform = Platform::start(&SERVICES).await?;
    let leads = platform.leads(2).await?;
    platform.agent("ann").await?;
    for lead in &leads {
        platform.assign(&lead.id, "ann").await?;
    }
    let settings = platform
        .notifications
        .clone()
        .update_notification_settings(pb::UpdateNotificationSettingsRequest {
            org_id: ORG.into(),
            remind_before_minutes: Some(10),
            overdue_after_minutes: Some(1),
            expected_version: Some(0),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!((settings.version, settings.remind_before_minutes, settings.escalate_overdue), (1, 10, true));
    assert!(settings.changes[0].changes.contains(&"remind_before_minutes: 15 -> 10".to_owned()), "{settings:?}");

    // Due in 3 s: reminded now (within ten minutes of due), told due in 3 s.
    let soon = platform.follow_up(&leads[0].id, 3, "send the price list").await?;
    // Due 55 s ago (a minute back is allowed): told due at once, overdue 5 s from now.
    let late = platform.follow_up(&leads[1].id, -55, "call back").await?;

    let reminder =
        platform.told("ann", false, "followup.reminder", |n| data(n)["follow_up_id"] == soon.id.as_str()).await;
    assert_eq!(data(&reminder)["note"], "send the price list");
    assert_eq!(data(&reminder)["contact"]["name"], "Ada Lovelace");
    assert_eq!(reminder.lead_id, leads[0].id);
    let due = platform.told("ann", false, "followup.due", |n| data(n)["follow_up_id"] == soon.id.as_str()).await;
    assert!(due.summary.contains("send the price list"), "{due:?}");
    let overdue =
        platform.told("ann", false, "followup.overdue", |n| data(n)["follow_up_id"] == late.id.as_str()).await;
    assert_eq!(data(&overdue)["agent_id"], "ann");
    let escalated = platform.told("", true, "followup.overdue", |n| data(n)["follow_up_id"] == late.id.as_str()).await;
    assert!(escalated.summary.contains("for ann"), "{escalated:?}");
    // The late one was never reminded: it was due before anyone could be.
    let list = platform.list("ann", false).await?;
    let kinds_of = |id: &str| {
        let mut kinds: Vec<String> =
            list.notifications.iter().filter(|n| data(n)["follow_up_id"] == id).map(|n| n.r#type.clone()).collect();
        kinds.sort();
        kinds
    };
    assert_eq!(kinds_of(&late.id), ["followup.due", "followup.overdue"]);

    // A stale settings update is refused with the version it is at.
    let stale = platform
        .notifications
        .clone()
        .update_notification_settings(pb::UpdateNotificationSettingsRequest {
            org_id: ORG.into(),
            overdue_after_minutes: Some(0),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .expect_err("zero minutes");
    assert!(stale.message().contains("overdue_after_minutes"), "{stale:?}");
    platform.stop().await
}

#[tokio::test]
async fn a_receiver_that_fails_then_answers_gets_each_message_with_one_id_signed() -> anyhow::Result<()> {
    let platform = Platform::start(&SERVICES).await?;
    // Fails every message twice (500, then 503 asking for a second), answers the third time.
    let receiver = Receiver::start(|received| match received.attempt {
        1 => Answer::status(500).with_body("not now"),
        2 => Answer::status(503).with_header("retry-after", "1"),
        _ => Answer::status(204),
    })
    .await?;
    let endpoint = platform.endpoint(&receiver.url(), &["lead.assigned", "lead.status_changed"]).await?;
    assert!(endpoint.secret.starts_with("whsec_"), "{endpoint:?}");
    let leads = platform.leads(3).await?;
    platform.agent("ann").await?;
    for lead in &leads {
        platform.assign(&lead.id, "ann").await?;
    }

    let received = eventually(DEADLINE, "three messages answered", || async {
        let received = receiver.received();
        let answered: BTreeSet<&str> = received.iter().filter(|r| r.attempt == 3).map(|r| r.id.as_str()).collect();
        (answered.len() == 3).then_some(received.clone())
    })
    .await;
    let mut by_id: BTreeMap<&str, Vec<&leads_tests::receiver::Received>> = BTreeMap::new();
    for request in &received {
        by_id.entry(request.id.as_str()).or_default().push(request);
    }
    assert_eq!(by_id.len(), 3, "one id per message: {:?}", by_id.keys());
    let mut assigned_leads = BTreeSet::new();
    for (id, requests) in &by_id {
        assert_eq!(requests.len(), 3, "{id} was sent until it was answered, then no more");
        assert!(requests.iter().all(|r| r.body == requests[0].body), "the same body each time");
        assert!(requests.iter().all(|r| verifies(&endpoint.secret, r)), "each attempt is signed");
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body)?;
        assert_eq!((body["id"].as_str(), body["type"].as_str()), (Some(*id), Some("lead.assigned")));
        assigned_leads.insert(body["data"]["lead_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(assigned_leads, leads.iter().map(|l| l.id.clone()).collect());

    // The log has every attempt: two failures, then the answer, for each message.
    let attempts = eventually(DEADLINE, "the log of nine attempts", || async {
        platform.attempts(&endpoint.id).await.ok().filter(|a| a.len() == 9)
    })
    .await;
    for attempt in &attempts {
        match attempt.attempt {
            1 => assert_eq!((attempt.status_code, attempt.response_excerpt.as_str()), (500, "not now")),
            2 => assert_eq!(attempt.status_code, 503),
            _ => assert!(attempt.succeeded && attempt.status_code == 204 && attempt.next_attempt_at.is_none()),
        }
        assert!(!attempt.succeeded || attempt.attempt == 3, "{attempt:?}");
    }

    // Replaying one message sends it again, with its own id.
    let replayed_id = by_id.keys().next().map(|id| (*id).to_owned()).unwrap_or_default();
    let replay = platform
        .notifications
        .clone()
        .replay_webhooks(pb::ReplayWebhooksRequest {
            org_id: ORG.into(),
            endpoint_id: endpoint.id.clone(),
            message_id: replayed_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(replay.queued, 1);
    eventually(DEADLINE, "the replayed message", || async {
        (receiver.received().iter().filter(|r| r.id == replayed_id).count() == 4).then_some(())
    })
    .await;

    // A rotated secret signs beside the previous one for a day.
    let rotated = platform
        .notifications
        .clone()
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest { org_id: ORG.into(), endpoint_id: endpoint.id.clone() })
        .await?
        .into_inner();
    assert_ne!(rotated.secret, endpoint.secret);
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    platform
        .notifications
        .clone()
        .replay_webhooks(pb::ReplayWebhooksRequest {
            org_id: ORG.into(),
            endpoint_id: endpoint.id.clone(),
            since: Some(prost_types::Timestamp { seconds: since.timestamp(), nanos: 0 }),
            ..Default::default()
        })
        .await?;
    let after_rotation = eventually(DEADLINE, "a message signed after the rotation", || async {
        receiver.received().into_iter().find(|r| r.signature.contains(' '))
    })
    .await;
    assert!(verifies(&rotated.secret, &after_rotation) && verifies(&endpoint.secret, &after_rotation));
    platform.stop().await
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_the_admins_are_told() -> anyhow::Result<()> {
    let platform = Platform::start(&SERVICES).await?;
    let gone = Receiver::start(|_| Answer::status(410)).await?;
    let healthy = Receiver::accepting().await?;
    let endpoint = platform.endpoint(&gone.url(), &["lead.assigned"]).await?;
    let other = platform.endpoint(&healthy.url(), &["lead.assigned"]).await?;
    let leads = platform.leads(1).await?;
    platform.agent("ann").await?;
    platform.assign(&leads[0].id, "ann").await?;

    let disabled = eventually(DEADLINE, "the endpoint disabled", || async {
        platform.endpoints().await.ok()?.into_iter().find(|e| e.id == endpoint.id && !e.enabled)
    })
    .await;
    assert!(disabled.disabled_reason.contains("410"), "{disabled:?}");
    let told = platform.told("", true, "webhook.endpoint_disabled", |_| true).await;
    assert_eq!(data(&told)["endpoint_id"], endpoint.id.as_str());
    assert_eq!(data(&told)["last_error"], "HTTP 410");
    // The other endpoint got the message; the gone one was asked once and never again.
    eventually(DEADLINE, "the healthy endpoint's delivery", || async {
        (!healthy.received().is_empty()).then_some(())
    })
    .await;
    platform.assign(&leads[0].id, "").await.ok();
    platform.agent("bob").await?;
    platform.assign(&leads[0].id, "bob").await?;
    eventually(DEADLINE, "the second assignment delivered", || async { (healthy.received().len() >= 2).then_some(()) })
        .await;
    assert_eq!(gone.received().len(), 1);
    assert!(platform.endpoints().await?.iter().any(|e| e.id == other.id && e.enabled));
    platform.stop().await
}

#[tokio::test]
async fn webhooks_never_go_where_the_platform_may_not_reach() -> anyhow::Result<()> {
    // No network allowed: loopback is as forbidden as the rest.
    let mut env = TestEnv::new().await?;
    env.settings.notifications.webhook_retry_schedule_secs = "1".into();
    let node = env.start(&SERVICES).await?;
    let mut client = node.notifications().await?;
    let create =
        |url: &str| pb::CreateWebhookEndpointRequest { org_id: ORG.into(), url: url.into(), ..Default::default() };
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:8080/hooks",
        "http://[::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://[::ffff:a9fe:a9fe]/hooks",
        "http://10.0.0.1/hooks",
        "http://192.168.1.10/hooks",
        "http://100.64.0.1/hooks",
        "http://0.0.0.0/hooks",
        "http://[fd00::1]/hooks",
        "ftp://example.com/hooks",
        "http://user:secret@example.com/hooks",
    ] {
        let refused = client.create_webhook_endpoint(create(url)).await.expect_err(url);
        assert_eq!(refused.code(), Code::InvalidArgument, "{url}: {refused:?}");
        assert!(refused.message().starts_with("url:"), "{url}: {refused:?}");
    }
    // A name is checked each time it resolves: localhost is loopback, so nothing is sent.
    let receiver = Receiver::accepting().await?;
    let by_name = format!("http://localhost:{}/hooks", receiver.addr.port());
    let endpoint = client.create_webhook_endpoint(create(&by_name)).await?.into_inner();
    let leads = {
        env.publish_interaction(ORG, &chat_event("e-0", &phone(0), "hello")).await?;
        let lead = node.lead().await?;
        eventually(DEADLINE, "the lead", || {
            let mut lead = lead.clone();
            async move { all_leads(&mut lead, ORG).await.ok().filter(|l| !l.is_empty()) }
        })
        .await
    };
    let mut assignment = node.assignment().await?;
    assignment
        .upsert_agent(pb::UpsertAgentRequest {
            org_id: ORG.into(),
            agent_id: "ann".into(),
            name: "Ann".into(),
            active: Some(true),
            ..Default::default()
        })
        .await?;
    assignment
        .assign_lead(pb::AssignLeadRequest {
            org_id: ORG.into(),
            lead_id: leads[0].id.clone(),
            agent_id: "ann".into(),
            ..Default::default()
        })
        .await?;
    let attempt = eventually(DEADLINE, "the refused attempt in the log", || {
        let mut client = client.clone();
        let endpoint_id = endpoint.id.clone();
        async move {
            let request = pb::ListWebhookAttemptsRequest { org_id: ORG.into(), endpoint_id, ..Default::default() };
            client.list_webhook_attempts(request).await.ok()?.into_inner().attempts.into_iter().next()
        }
    })
    .await;
    assert!(!attempt.succeeded && attempt.status_code == 0, "{attempt:?}");
    assert!(attempt.error.contains("loopback"), "{attempt:?}");
    assert!(receiver.received().is_empty(), "nothing reached the receiver");
    node.stop().await?;
    env.cleanup().await?;

    // Allowed to reach the receiver, a redirect elsewhere is not followed.
    let platform = Platform::start(&SERVICES).await?;
    let redirecting =
        Receiver::start(|_| Answer::status(302).with_header("location", "http://169.254.169.254/latest/meta-data"))
            .await?;
    let endpoint = platform.endpoint(&redirecting.url(), &[]).await?;
    let leads = platform.leads(1).await?;
    platform.agent("ann").await?;
    platform.assign(&leads[0].id, "ann").await?;
    let attempt = eventually(DEADLINE, "the redirected attempt", || async {
        platform.attempts(&endpoint.id).await.ok()?.into_iter().next()
    })
    .await;
    assert!(!attempt.succeeded && attempt.status_code == 302, "{attempt:?}");
    assert!(attempt.error.contains("redirects are not followed"), "{attempt:?}");
    platform.stop().await
}

#[tokio::test]
async fn each_due_follow_up_is_told_once_with_two_processes_and_a_kill_among_them() -> anyhow::Result<()> {
    // The desk in this process; notifications in two child processes, one killed as the
    // follow-ups come due and replaced once they have.
    let platform = Platform::start(&SERVICES[..4]).await?;
    let receiver = Receiver::accepting().await?;
    let extra = [
        ("LEADS_NOTIFICATIONS_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.1/32".to_owned()),
        ("LEADS_NOTIFICATIONS_TICK_MS", "100".to_owned()),
    ];
    let mut first = Process::spawn(&platform.env, "notifications", &extra)?;
    let mut second = Process::spawn(&platform.env, "notifications", &extra)?;
    first.ready().await?;
    second.ready().await?;
    let webhook = {
        let mut env = platform.env.clone();
        env.settings.notifications.webhook_allowed_networks = "127.0.0.1/32".into();
        let node = env.start(&[ServiceName::Notifications]).await?;
        let endpoint = node
            .notifications()
            .await?
            .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                org_id: ORG.into(),
                url: receiver.url(),
                event_types: vec!["followup.due".into()],
                ..Default::default()
            })
            .await?
            .into_inner();
        node.stop().await?;
        endpoint
    };
    let leads = platform.leads(10).await?;
    platform.agent("ann").await?;
    for lead in &leads {
        platform.assign(&lead.id, "ann").await?;
    }
    let mut follow_ups = Vec::new();
    for (n, lead) in leads.iter().enumerate() {
        for k in 0..4 {
            follow_ups.push(platform.follow_up(&lead.id, 3 + (n as i64 % 3) + k, &format!("call {n}.{k}")).await?.id);
        }
    }
    // Killed as the first are told; a fresh one starts once every follow-up has come due.
    eventually(DEADLINE, "the first due follow-up delivered", || async {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;
    first.kill().await?;
    let follow_up_client = platform.node.follow_up().await?;
    eventually(DEADLINE, "every follow-up due", || {
        let mut client = follow_up_client.clone();
        async move {
            let request = pb::ListFollowUpsRequest {
                org_id: ORG.into(),
                states: vec![pb::FollowUpState::Due as i32],
                page_size: 100,
                ..Default::default()
            };
            (client.list_follow_ups(request).await.ok()?.into_inner().follow_ups.len() == 40).then_some(())
        }
    })
    .await;
    let mut third = Process::spawn(&platform.env, "notifications", &extra)?;
    third.ready().await?;

    let received = eventually(Duration::from_secs(60), "every due follow-up delivered", || async {
        let received = receiver.received();
        let ids: BTreeSet<String> = received.iter().map(|r| r.id.clone()).collect();
        (ids.len() >= follow_ups.len()).then_some(received)
    })
    .await;
    let mut ids_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for request in &received {
        let body: serde_json::Value = serde_json::from_slice(&request.body)?;
        assert_eq!(body["type"], "followup.due");
        ids_of
            .entry(body["data"]["follow_up_id"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .insert(request.id.clone());
    }
    assert_eq!(ids_of.keys().cloned().collect::<BTreeSet<_>>(), follow_ups.iter().cloned().collect());
    assert!(ids_of.values().all(|ids| ids.len() == 1), "each follow-up told with one id: {ids_of:?}");
    let admin = platform.env.admin_pool().await?;
    let (records,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM notifications.messages WHERE event_type = 'followup.due'")
            .fetch_one(&admin)
            .await?;
    assert_eq!(records, follow_ups.len() as i64, "one notification record per due follow-up");
    assert!(!webhook.id.is_empty());
    second.terminate().await?;
    third.terminate().await?;
    platform.stop().await
}

#[tokio::test]
async fn a_slow_receiver_delays_only_itself_and_never_has_more_than_its_concurrency() -> anyhow::Result<()> {
    let platform = Platform::start(&SERVICES).await?;
    let slow = Receiver::start(|_| Answer::status(200).after(Duration::from_millis(1500))).await?;
    let fast = Receiver::accepting().await?;
    platform.endpoint(&slow.url(), &["lead.assigned"]).await?;
    platform.endpoint(&fast.url(), &["lead.assigned"]).await?;
    let leads = platform.leads(20).await?;
    platform.agent("ann").await?;
    for lead in &leads {
        platform.assign(&lead.id, "ann").await?;
    }
    eventually(DEADLINE, "the fast receiver's twenty", || async { (fast.received().len() == 20).then_some(()) }).await;
    // Eight at a time, a second and a half each: the slow one cannot have answered all yet.
    assert!(slow.received().len() < 20, "the fast receiver waited for the slow one");
    eventually(DEADLINE, "the slow receiver's twenty", || async { (slow.received().len() == 20).then_some(()) }).await;
    let concurrency = platform.env.settings.notifications.webhook_concurrency_per_endpoint;
    assert!(slow.most_at_once() <= concurrency, "{} at once, more than {concurrency}", slow.most_at_once());
    assert!(slow.most_at_once() > 1, "deliveries to one endpoint overlap");
    platform.stop().await
}

#[tokio::test]
async fn an_attempt_is_cut_at_its_timeout_and_an_endpoint_failing_for_days_is_disabled() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.notifications.webhook_allowed_networks = "127.0.0.1/32".into();
    env.settings.notifications.webhook_retry_schedule_secs = "1,1,1,1,1".into();
    env.settings.notifications.webhook_timeout_secs = 1;
    let node = env.start(&SERVICES).await?;
    let notifications = node.notifications().await?;
    let platform = Platform { env, node, notifications };
    // Answers 500 after three seconds: never within the attempt's second.
    let hanging = Receiver::start(|_| Answer::status(500).after(Duration::from_secs(3))).await?;
    let endpoint = platform.endpoint(&hanging.url(), &["lead.assigned"]).await?;
    let leads = platform.leads(1).await?;
    platform.agent("ann").await?;
    platform.assign(&leads[0].id, "ann").await?;
    let cut = eventually(DEADLINE, "an attempt cut at its timeout", || async {
        platform.attempts(&endpoint.id).await.ok()?.into_iter().next()
    })
    .await;
    assert!(!cut.succeeded && cut.status_code == 0, "{cut:?}");
    assert!(cut.error.contains("no complete answer within the time allowed"), "{cut:?}");
    assert!(cut.duration_ms < 2500, "the attempt waited past its timeout: {cut:?}");
    assert!(cut.next_attempt_at.is_some(), "a cut attempt is tried again: {cut:?}");
    let failing = eventually(DEADLINE, "the endpoint marked failing", || async {
        platform.endpoints().await.ok()?.into_iter().find(|e| e.failing_since.is_some())
    })
    .await;
    assert!(failing.enabled);

    // Failing since six days, past the 120 hours allowed: the next failure disables it.
    let admin = platform.env.admin_pool().await?;
    sqlx::query(
        "UPDATE notifications.webhook_endpoints SET failing_since = now() - interval '6 days' WHERE id = $1::uuid",
    )
    .bind(&endpoint.id)
    .execute(&admin)
    .await?;
    let disabled = eventually(DEADLINE, "the endpoint disabled", || async {
        platform.endpoints().await.ok()?.into_iter().find(|e| e.id == endpoint.id && !e.enabled)
    })
    .await;
    assert!(disabled.disabled_reason.starts_with("every attempt failed since"), "{disabled:?}");
    let told = platform.told("", true, "webhook.endpoint_disabled", |_| true).await;
    assert_eq!(data(&told)["reason"], disabled.disabled_reason.as_str());
    assert!(data(&told)["last_error"].as_str().is_some_and(|e| e.contains("time allowed")), "{told:?}");

    // Enabled again by an admin, it is tried again at once.
    let attempts_before = platform.attempts(&endpoint.id).await?.len();
    platform
        .notifications
        .clone()
        .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
            org_id: ORG.into(),
            endpoint_id: endpoint.id.clone(),
            enabled: Some(true),
            ..Default::default()
        })
        .await?;
    eventually(DEADLINE, "an attempt after enabling", || async {
        (platform.attempts(&endpoint.id).await.ok()?.len() > attempts_before).then_some(())
    })
    .await;
    let enabled = platform.endpoints().await?.into_iter().find(|e| e.id == endpoint.id).expect("the endpoint");
    assert!(enabled.disabled_reason.is_empty(), "{enabled:?}");
    platform.stop().await
}

#[tokio::test]
async fn messages_past_the_retention_go_with_their_deliveries_and_log() -> anyhow::Result<()> {
    let platform = Platform::start(&[ServiceName::Notifications]).await?;
    let receiver = Receiver::accepting().await?;
    let endpoint = platform.endpoint(&receiver.url(), &[]).await?;
    let admin = platform.env.admin_pool().await?;
    // One transaction: the running process's first prune may come at any moment, and must not
    // find a message without its delivery.
    let mut seeding = admin.begin().await?;
    for (id, days) in [("ntf_old", 40), ("ntf_recent", 2)] {
        sqlx::query(
            "INSERT INTO notifications.messages (id, org_id, event_type, occurred_at, dedupe_key, for_admins, body, created_at) \
             VALUES ($1, $2, 'followup.overdue', now(), $1, true, '{}', now() - make_interval(days => $3))",
        )
        .bind(id)
        .bind(ORG)
        .bind(days)
        .execute(&mut *seeding)
        .await?;
        sqlx::query(
            "INSERT INTO notifications.deliveries (org_id, endpoint_id, message_id, state) VALUES ($1, $2::uuid, $3, 'failed')",
        )
        .bind(ORG)
        .bind(&endpoint.id)
        .bind(id)
        .execute(&mut *seeding)
        .await?;
    }
    seeding.commit().await?;
    // A process starting prunes first, then every hour.
    let Platform { env, node, .. } = platform;
    node.stop().await?;
    let node = env.start(&[ServiceName::Notifications]).await?;
    let left = eventually(DEADLINE, "the old message pruned", || async {
        let ids: Vec<String> = sqlx::query_scalar("SELECT message_id FROM notifications.deliveries ORDER BY 1")
            .fetch_all(&admin)
            .await
            .ok()?;
        (ids.len() == 1).then_some(ids)
    })
    .await;
    assert_eq!(left, ["ntf_recent"]);
    let messages: Vec<String> =
        sqlx::query_scalar("SELECT id FROM notifications.messages ORDER BY 1").fetch_all(&admin).await?;
    assert_eq!(messages, ["ntf_recent"]);
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_follow_up_moved_to_another_agent_reminds_the_new_one_too() -> anyhow::Result<()> {
    let platform = Platform::start(&SERVICES).await?;
    let leads = platform.leads(1).await?;
    for agent in ["ann", "bob"] {
        platform.agent(agent).await?;
    }
    platform.assign(&leads[0].id, "ann").await?;
    platform
        .notifications
        .clone()
        .update_notification_settings(pb::UpdateNotificationSettingsRequest {
            org_id: ORG.into(),
            remind_before_minutes: Some(30),
            ..Default::default()
        })
        .await?;
    // No agent named: it goes to the lead's, and follows the lead.
    let follow_up = platform.follow_up(&leads[0].id, 600, "send the contract").await?;
    assert_eq!(follow_up.agent_id, "ann");
    let first =
        platform.told("ann", false, "followup.reminder", |n| data(n)["follow_up_id"] == follow_up.id.as_str()).await;
    assert_eq!(data(&first)["agent_id"], "ann");

    platform.assign(&leads[0].id, "bob").await?;
    let moved =
        platform.told("bob", false, "followup.reminder", |n| data(n)["follow_up_id"] == follow_up.id.as_str()).await;
    assert_eq!(data(&moved)["agent_id"], "bob");
    assert_ne!(moved.id, first.id);
    // Ann was reminded once, however often the follow-up's alerts were set again.
    let reminders =
        platform.list("ann", false).await?.notifications.into_iter().filter(|n| n.r#type == "followup.reminder");
    assert_eq!(reminders.count(), 1);
    platform.stop().await
}
