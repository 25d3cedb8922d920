//! Scores that stay true without a new message: an organisation's new model rescores each of
//! its active leads once, in the background, and a process killed midway leaves the rest to
//! the next; an unchanged score publishes nothing; a lead whose last message turns a day old
//! is scored again on the refresher's schedule.

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use contracts::{Envelope, qualification::Scored};
use futures::StreamExt;
use leads_proto::v1::{
    lead_service_client::LeadServiceClient, qualification_service_client::QualificationServiceClient,
};
use leads_tests::{Process, TestEnv, eventually, pb, phone};
use platform::{ServiceName, nats::StreamKind};
use qualification_model::synthetic::{SyntheticConfig, generate};
use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};
use tonic::transport::Channel;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);
const ORG: &str = "acme";

const TEXTS: [&str; 6] = [
    "hello",
    "how much is the plan?",
    "I want to buy it today",
    "not interested, thanks",
    "quiero comprar, ¿cuánto cuesta?",
    "tell me more about the warranty please",
];

/// Publishes one inbound message from each of `leads` contacts, written `age` ago (a second
/// apart), so that the leads' recency barely moves while a test runs.
async fn publish_leads(env: &TestEnv, leads: u32, age: chrono::Duration) -> anyhow::Result<()> {
    let start = chrono::Utc::now() - age;
    let mut pending = Vec::new();
    for n in 0..leads {
        let event = serde_json::json!({
            "event_id": format!("r-{n}"),
            "occurred_at": (start + chrono::Duration::seconds(i64::from(n))).to_rfc3339(),
            "kind": "chat_message",
            "direction": "inbound",
            "channel": "whatsapp",
            "contact": { "phone": phone(n) },
            "text": TEXTS[n as usize % TEXTS.len()],
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{ORG}:r-{n}").as_str());
        pending.push(
            env.js
                .publish_with_headers(env.subjects.interactions(ORG), headers, serde_json::to_vec(&event)?.into())
                .await?,
        );
        if pending.len() == 1000 {
            for ack in pending.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in pending {
        ack.await?;
    }
    Ok(())
}

async fn count(admin: &sqlx::PgPool, query: &'static str) -> Option<i64> {
    sqlx::query_scalar(query).fetch_one(admin).await.ok()
}

/// Waits until the engine has scored `leads` leads.
async fn all_scored(admin: &sqlx::PgPool, leads: i64) {
    eventually(DEADLINE, "every lead scored", || async {
        (count(admin, "SELECT count(*) FROM qualification.scores").await? == leads).then_some(())
    })
    .await;
}

/// Archives the leads of the first `archived` contacts (no outcome: Archived is no label) and
/// waits until the engine's projection has them inactive; answers their ids.
async fn archive(
    leads: &mut LeadServiceClient<Channel>,
    admin: &sqlx::PgPool,
    archived: u32,
) -> anyhow::Result<BTreeSet<Uuid>> {
    let phones: BTreeSet<String> = (0..archived).map(phone).collect();
    let ids: Vec<String> = leads_tests::all_leads(leads, ORG)
        .await?
        .into_iter()
        .filter(|l| l.contact.as_ref().is_some_and(|c| phones.contains(&c.phone)))
        .map(|l| l.id)
        .collect();
    assert_eq!(ids.len(), archived as usize);
    leads
        .bulk_change_status(pb::BulkChangeStatusRequest {
            org_id: ORG.into(),
            lead_ids: ids.clone(),
            status: pb::LeadStatus::Archived as i32,
            actor: "op".into(),
            ..Default::default()
        })
        .await?;
    eventually(DEADLINE, "the archived leads inactive in the engine's projection", || async {
        let inactive = count(admin, "SELECT count(*) FROM qualification.lead_state WHERE NOT active").await?;
        (inactive == i64::from(archived)).then_some(())
    })
    .await;
    Ok(ids.iter().map(|id| id.parse()).collect::<Result<_, _>>()?)
}

/// Gives the organisation 600 labelled leads of a synthetic organisation, in one statement (a
/// retrainer sees all of them or none), with ids of their own: enough to train a model that
/// ranks better than the prior.
async fn seed_outcomes(admin: &sqlx::PgPool) -> anyhow::Result<()> {
    let org = generate(&SyntheticConfig::default());
    let at = chrono::DateTime::from_timestamp(org.now.unix_seconds(), 0).unwrap_or_default();
    let ids: Vec<Uuid> = (0..org.leads.len()).map(|n| Uuid::from_u128(0xfeed_0000 + n as u128)).collect();
    let converted: Vec<bool> = org.leads.iter().map(|l| l.converted).collect();
    let features: Vec<serde_json::Value> =
        org.leads.iter().map(|l| serde_json::to_value(l.features())).collect::<Result<_, _>>()?;
    sqlx::query(
        "INSERT INTO qualification.outcomes (org_id, lead_id, converted, decided_at, features) \
         SELECT $1, u.lead_id, u.converted, $4, u.features \
         FROM UNNEST($2::uuid[], $3::bool[], $5::jsonb[]) AS u(lead_id, converted, features)",
    )
    .bind(ORG)
    .bind(&ids)
    .bind(&converted)
    .bind(at)
    .bind(&features)
    .execute(admin)
    .await?;
    Ok(())
}

/// Waits until the organisation's rescoring with `model_version` has finished and everything
/// it committed has been published.
async fn rescoring_finished(admin: &sqlx::PgPool, model_version: &str) {
    eventually(DEADLINE, "the rescoring finished and published", || async {
        let (version, finished): (String, bool) = sqlx::query_as(
            "SELECT model_version, finished_at IS NOT NULL FROM qualification.rescorings WHERE org_id = $1",
        )
        .bind(ORG)
        .fetch_one(admin)
        .await
        .ok()?;
        let unpublished = count(admin, "SELECT count(*) FROM qualification.outbox").await?;
        (version == model_version && finished && unpublished == 0).then_some(())
    })
    .await;
}

/// Every `scored` event the qualification service has published, read from its stream.
async fn scored_events(env: &TestEnv) -> anyhow::Result<Vec<Envelope<Scored>>> {
    let mut stream = env.js.get_stream(env.subjects.stream_name(StreamKind::Events("qualification"))).await?;
    let last = stream.info().await?.state.last_sequence;
    let mut events = Vec::new();
    if last == 0 {
        return Ok(events);
    }
    let consumer =
        stream.create_consumer(OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() }).await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), messages.next()).await? {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        contracts::qualification::read_scored(&message.subject, &message.payload, &mut events)?;
        if message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence >= last {
            break;
        }
    }
    Ok(events)
}

/// How many `scored` events carry `model_version`, by lead.
async fn events_by_lead(env: &TestEnv, model_version: &str) -> anyhow::Result<HashMap<Uuid, usize>> {
    let mut by_lead = HashMap::new();
    for event in scored_events(env).await?.into_iter().filter(|e| e.data.model_version == model_version) {
        *by_lead.entry(event.data.lead_id).or_default() += 1;
    }
    Ok(by_lead)
}

/// The engine's leads, active or not, with the model version of their score.
async fn score_versions(admin: &sqlx::PgPool) -> anyhow::Result<Vec<(Uuid, bool, String)>> {
    Ok(sqlx::query_as(
        "SELECT s.lead_id, s.active, c.model_version FROM qualification.lead_state s \
         JOIN qualification.scores c USING (org_id, lead_id) ORDER BY s.lead_id",
    )
    .fetch_all(admin)
    .await?)
}

/// Every active lead was rescored by `model_version` and published once; no inactive one was.
async fn assert_rescored_once(
    env: &TestEnv,
    admin: &sqlx::PgPool,
    model_version: &str,
    archived: &BTreeSet<Uuid>,
) -> anyhow::Result<()> {
    let events = events_by_lead(env, model_version).await?;
    let leads = score_versions(admin).await?;
    for (lead_id, active, version) in &leads {
        if *active {
            assert_eq!(version, model_version, "lead {lead_id} rescored");
            assert_eq!(events.get(lead_id), Some(&1), "lead {lead_id}: one scored event with {model_version}");
        } else {
            assert!(archived.contains(lead_id));
            assert_eq!(version, "prior-v1", "inactive lead {lead_id} left as it was");
            assert_eq!(events.get(lead_id), None, "inactive lead {lead_id} published nothing");
        }
    }
    assert_eq!(events.len(), leads.len() - archived.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_model_rescores_each_active_lead_once_and_an_unchanged_score_publishes_nothing() -> anyhow::Result<()> {
    const LEADS: u32 = 300;
    const ARCHIVED: u32 = 30;
    let mut env = TestEnv::new().await?;
    // Only TrainModel trains here.
    env.settings.qualification.retrain_interval_secs = 3600;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let admin = env.admin_pool().await?;
    let mut leads = node.lead().await?;
    let mut qualification = QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);
    publish_leads(&env, LEADS, chrono::Duration::days(400)).await?;
    all_scored(&admin, i64::from(LEADS)).await;
    let archived = archive(&mut leads, &admin, ARCHIVED).await?;
    seed_outcomes(&admin).await?;

    let trained = qualification.train_model(pb::TrainModelRequest { org_id: ORG.into() }).await?.into_inner();
    assert!(trained.in_use, "the model ranks better than the prior: {trained:?}");
    rescoring_finished(&admin, "org-v1").await;
    assert_rescored_once(&env, &admin, "org-v1", &archived).await?;
    let rescored: i64 = sqlx::query_scalar("SELECT rescored FROM qualification.rescorings").fetch_one(&admin).await?;
    assert_eq!(rescored, i64::from(LEADS - ARCHIVED));
    // The lead service applied the new scores.
    let scores: HashMap<Uuid, i32> =
        sqlx::query_as::<_, (Uuid, i32)>("SELECT lead_id, score FROM qualification.scores")
            .fetch_all(&admin)
            .await?
            .into_iter()
            .collect();
    eventually(DEADLINE, "the lead service showing the new scores", || {
        let mut leads = leads.clone();
        let scores = &scores;
        async move {
            let all = leads_tests::all_leads(&mut leads, ORG).await.ok()?;
            let applied = |l: &pb::Lead| l.id.parse::<Uuid>().ok().and_then(|id| scores.get(&id).copied()) == l.score;
            (all.len() == LEADS as usize && all.iter().filter(|l| l.active).all(applied)).then_some(())
        }
    })
    .await;

    // The same outcomes train the same model again: every score is checked by it and none
    // changes, so nothing is published.
    let before: Vec<(Uuid, i32, i64)> =
        sqlx::query_as("SELECT lead_id, score, version FROM qualification.scores ORDER BY lead_id")
            .fetch_all(&admin)
            .await?;
    let again = qualification.train_model(pb::TrainModelRequest { org_id: ORG.into() }).await?.into_inner();
    assert_eq!((again.version, again.in_use, again.scoring_model.as_str()), (2, true, "org-v2"));
    rescoring_finished(&admin, "org-v2").await;
    assert_eq!(events_by_lead(&env, "org-v2").await?, HashMap::new(), "unchanged scores publish nothing");
    let after: Vec<(Uuid, i32, i64)> =
        sqlx::query_as("SELECT lead_id, score, version FROM qualification.scores ORDER BY lead_id")
            .fetch_all(&admin)
            .await?;
    assert_eq!(after, before, "the same scores, at the same versions");
    for (lead_id, active, version) in score_versions(&admin).await? {
        let expected = if active { "org-v2" } else { "prior-v1" };
        assert_eq!(version, expected, "lead {lead_id} checked by the model that scores it now");
    }
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescoring_killed_midway_resumes_in_fresh_processes_and_rescores_each_lead_once() -> anyhow::Result<()> {
    const LEADS: u32 = 3_000;
    const ARCHIVED: u32 = 100;
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let admin = env.admin_pool().await?;
    let mut leads = node.lead().await?;
    let lead_endpoint = format!("http://{}", node.addr(ServiceName::Lead));
    let settings = |retrain: &str| {
        vec![
            ("LEADS_LEAD_ENDPOINT", lead_endpoint.clone()),
            ("LEADS_QUALIFICATION_RESCORE_PER_SECOND", "250".to_owned()),
            ("LEADS_QUALIFICATION_RETRAIN_INTERVAL_SECS", retrain.to_owned()),
        ]
    };
    // The first process's retrainer trains the model as soon as the outcomes are there.
    let mut first = Process::spawn(&env, "qualification", &settings("1"))?;
    first.ready().await?;
    publish_leads(&env, LEADS, chrono::Duration::days(400)).await?;
    all_scored(&admin, i64::from(LEADS)).await;
    let archived = archive(&mut leads, &admin, ARCHIVED).await?;
    seed_outcomes(&admin).await?;

    let progress = || async {
        sqlx::query_as::<_, (String, i64, bool)>(
            "SELECT model_version, rescored, finished_at IS NOT NULL FROM qualification.rescorings",
        )
        .fetch_one(&admin)
        .await
        .ok()
    };
    eventually(DEADLINE, "a part of the rescoring done", || async {
        progress().await.filter(|(_, rescored, _)| *rescored >= 600)
    })
    .await;
    first.kill().await?;
    let (version, rescored, finished) = progress().await.expect("a rescoring");
    assert_eq!(version, "org-v1");
    assert!(!finished, "killed midway: {rescored} of {} rescored", LEADS - ARCHIVED);

    let mut fresh = Vec::new();
    for _ in 0..2 {
        fresh.push(Process::spawn(&env, "qualification", &settings("3600"))?);
    }
    for process in &mut fresh {
        process.ready().await?;
    }
    rescoring_finished(&admin, "org-v1").await;
    assert_rescored_once(&env, &admin, "org-v1", &archived).await?;
    for process in fresh {
        process.terminate().await?;
    }
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_lead_whose_last_message_turns_a_day_old_is_scored_again_without_a_new_message() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.qualification.refresh_interval_secs = 1;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let leads = node.lead().await?;
    let mut qualification = QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);
    // A day old in half a minute.
    let written = chrono::Utc::now() - chrono::Duration::hours(24) + chrono::Duration::seconds(30);
    let event = serde_json::json!({
        "event_id": "day-old", "occurred_at": written.to_rfc3339(), "kind": "chat_message",
        "direction": "inbound", "channel": "whatsapp", "contact": { "phone": phone(1) },
        "text": "how much is the plan?",
    });
    env.publish_interaction(ORG, &event).await?;
    let lead = eventually(DEADLINE, "the lead scored", || {
        let mut leads = leads.clone();
        async move {
            let all = leads_tests::all_leads(&mut leads, ORG).await.ok()?;
            all.into_iter().find(|l| l.score.is_some())
        }
    })
    .await;
    let first = qualification
        .get_qualification(pb::GetQualificationRequest { org_id: ORG.into(), lead_id: lead.id.clone() })
        .await?
        .into_inner();
    assert!(first.reasons.iter().any(|r| r.starts_with("active in the last 24 hours +")), "{:?}", first.reasons);

    let refreshed = eventually(DEADLINE, "the lead scored again once its message is a day old", || {
        let mut leads = leads.clone();
        let id = lead.id.clone();
        let before = lead.score;
        async move {
            let now = leads.get_lead(pb::GetLeadRequest { org_id: ORG.into(), lead_id: id }).await.ok()?.into_inner();
            (now.score != before).then_some(now)
        }
    })
    .await;
    assert!(
        refreshed.score < lead.score,
        "a day of silence lowers the score: {:?} -> {:?}",
        lead.score,
        refreshed.score
    );
    let now = qualification
        .get_qualification(pb::GetQualificationRequest { org_id: ORG.into(), lead_id: lead.id.clone() })
        .await?
        .into_inner();
    assert!(!now.reasons.iter().any(|r| r.starts_with("active in the last 24 hours")), "{:?}", now.reasons);
    assert_eq!(refreshed.interaction_count, 1, "no new message");
    node.stop().await?;
    env.cleanup().await
}
