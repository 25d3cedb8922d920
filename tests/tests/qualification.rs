//! Qualification: every active lead is scored from its conversation in any of the supported
//! languages, with readable factors; a score set by hand wins until it is handed back; an
//! organisation's own outcomes train a model that replaces the prior when it ranks better;
//! several worker processes share the work and a killed one loses and doubles nothing.

use leads_proto::v1::{
    lead_service_client::LeadServiceClient, qualification_service_client::QualificationServiceClient,
};
use leads_tests::{Process, TestEnv, chat_event, eventually, pb, phone};
use platform::ServiceName;
use qualification_model::{
    Direction, MessageKind, Timestamp,
    synthetic::{SyntheticConfig, generate},
};
use std::{collections::HashMap, time::Duration};
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(60);
const ORG: &str = "acme";

type Leads = LeadServiceClient<Channel>;
type Qualification = QualificationServiceClient<Channel>;

async fn lead_of(leads: &Leads, phone: &str) -> Option<pb::Lead> {
    let mut leads = leads.clone();
    let all = leads_tests::all_leads(&mut leads, ORG).await.ok()?;
    all.into_iter().find(|l| l.active && l.contact.as_ref().is_some_and(|c| c.phone == phone))
}

async fn scored_lead(leads: &Leads, phone: &str, what: &str, check: impl Fn(&pb::Lead) -> bool) -> pb::Lead {
    eventually(DEADLINE, what, || async { lead_of(leads, phone).await.filter(|l| l.score.is_some() && check(l)) }).await
}

async fn change(leads: &Leads, lead_id: &str, request: pb::ChangeStatusRequest) -> anyhow::Result<pb::Lead> {
    let request =
        pb::ChangeStatusRequest { org_id: ORG.into(), lead_id: lead_id.into(), actor: "op".into(), ..request };
    Ok(leads.clone().change_status(request).await?.into_inner())
}

#[tokio::test]
async fn scores_follow_the_conversation_in_every_language_and_a_manual_score_wins_until_handed_back()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let leads = node.lead().await?;
    let mut qualification: Qualification =
        QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);
    let keen = [
        "I want to buy the premium plan today, how much is it?",
        "Hola, quiero comprar el plan hoy, ¿cuánto cuesta?",
        "Olá, quero comprar hoje, quanto custa?",
        "Mujhe lena hai, kitne ka hai? Aaj chahiye",
        "Saya mau beli hari ini, berapa harganya?",
    ];
    let cold = ["Not interested, stop messaging me", "No me interesa, gracias", "Não tenho interesse"];
    for (n, text) in keen.iter().enumerate() {
        env.publish_interaction(ORG, &chat_event(&format!("k-{n}"), &phone(n as u32), text)).await?;
    }
    for (n, text) in cold.iter().enumerate() {
        env.publish_interaction(ORG, &chat_event(&format!("c-{n}"), &phone(10 + n as u32), text)).await?;
    }
    env.publish_interaction(ORG, &chat_event("g-0", &phone(20), "hello")).await?;
    let greeting = scored_lead(&leads, &phone(20), "the greeting scored", |_| true).await;
    let greeting_score = greeting.score.unwrap_or_default();
    for (n, text) in keen.iter().enumerate() {
        let lead = scored_lead(&leads, &phone(n as u32), "a keen lead scored", |_| true).await;
        assert_eq!(lead.score_source(), pb::ScoreSource::Ai);
        assert!(
            lead.score.unwrap_or_default() > greeting_score + 10,
            "{text:?} {:?} vs hello {greeting_score}",
            lead.score
        );
        let why = qualification
            .get_qualification(pb::GetQualificationRequest { org_id: ORG.into(), lead_id: lead.id.clone() })
            .await?
            .into_inner();
        assert_eq!(why.model_version, "prior-v1");
        assert!(why.reasons.iter().any(|r| r.starts_with("intent") && r.contains('+')), "{text:?}: {:?}", why.reasons);
    }
    for (n, text) in cold.iter().enumerate() {
        let lead = scored_lead(&leads, &phone(10 + n as u32), "a cold lead scored", |_| true).await;
        assert!(
            lead.score.unwrap_or_default() + 10 < greeting_score,
            "{text:?} {:?} vs hello {greeting_score}",
            lead.score
        );
    }

    // An operator's score stays, whatever the engine says next.
    change(
        &leads,
        &greeting.id,
        pb::ChangeStatusRequest {
            status: pb::LeadStatus::Qualifying as i32,
            manual_score: Some(77),
            ..Default::default()
        },
    )
    .await?;
    env.publish_interaction(ORG, &chat_event("g-1", &phone(20), "I'd like to order two, what is the price?")).await?;
    let manual = eventually(DEADLINE, "the engine to see the manual score and the new message", || {
        let mut qualification = qualification.clone();
        let leads = leads.clone();
        let id = greeting.id.clone();
        async move {
            let q = qualification
                .get_qualification(pb::GetQualificationRequest { org_id: ORG.into(), lead_id: id })
                .await
                .ok()?
                .into_inner();
            let lead = lead_of(&leads, &phone(20)).await?;
            (q.source() == pb::ScoreSource::Manual && lead.interaction_count == 2).then_some(q)
        }
    })
    .await;
    assert_eq!(manual.score, 77);
    let requalified = qualification
        .requalify(pb::RequalifyRequest { org_id: ORG.into(), lead_id: greeting.id.clone() })
        .await?
        .into_inner();
    assert_eq!((requalified.source(), requalified.score), (pb::ScoreSource::Manual, 77));
    let lead = lead_of(&leads, &phone(20)).await.expect("lead");
    assert_eq!((lead.score, lead.score_source()), (Some(77), pb::ScoreSource::Manual));

    // Handed back: the engine's score of the whole conversation applies, and the history says so.
    change(
        &leads,
        &greeting.id,
        pb::ChangeStatusRequest {
            status: pb::LeadStatus::Qualifying as i32,
            clear_manual_score: true,
            ..Default::default()
        },
    )
    .await?;
    let back =
        scored_lead(&leads, &phone(20), "the engine's score back", |l| l.score_source() == pb::ScoreSource::Ai).await;
    assert!(back.score.unwrap_or_default() > greeting_score, "the order question counts: {:?}", back.score);
    let history = leads
        .clone()
        .get_lead_history(pb::GetLeadHistoryRequest {
            org_id: ORG.into(),
            lead_id: greeting.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let scores: Vec<&str> = history.entries.iter().filter(|e| e.kind == "score").map(|e| e.summary.as_str()).collect();
    assert!(scores.contains(&"manual score cleared, back to ai"), "{scores:?}");
    assert!(scores.contains(&"manual score 77"), "{scores:?}");
    let statuses = history.entries.iter().filter(|e| e.kind == "status_changed").count();
    assert_eq!(statuses, 1, "new -> qualifying only; score acts change no status");

    // An inactive lead is never scored again.
    let cold_lead = lead_of(&leads, &phone(10)).await.expect("lead");
    change(
        &leads,
        &cold_lead.id,
        pb::ChangeStatusRequest { status: pb::LeadStatus::Lost as i32, ..Default::default() },
    )
    .await?;
    let refused = eventually(DEADLINE, "requalify refused for the lost lead", || {
        let mut qualification = qualification.clone();
        let id = cold_lead.id.clone();
        async move {
            let result = qualification.requalify(pb::RequalifyRequest { org_id: ORG.into(), lead_id: id }).await;
            result.err().filter(|e| e.code() == tonic::Code::FailedPrecondition)
        }
    })
    .await;
    assert!(refused.message().contains("inactive"), "{}", refused.message());
    let unknown = qualification
        .requalify(pb::RequalifyRequest { org_id: ORG.into(), lead_id: uuid::Uuid::now_v7().to_string() })
        .await
        .expect_err("unknown lead");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_burst_on_one_lead_coalesces_into_few_scorings_and_the_last_reflects_all_of_it() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let admin = env.admin_pool().await?;
    let leads = node.lead().await?;
    let mut qualification: Qualification =
        QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);
    const BURST: i64 = 80;
    for n in 0..BURST {
        let text = if n == BURST - 1 { "ok, how much? I want to buy today".to_owned() } else { format!("message {n}") };
        env.publish_interaction(ORG, &chat_event(&format!("b-{n}"), &phone(1), &text)).await?;
    }
    eventually(DEADLINE, "every message observed by the engine", || async {
        let inbound = inbound_messages(&admin).await?;
        (inbound.values().collect::<Vec<_>>() == [&BURST]).then_some(())
    })
    .await;
    let lead = scored_lead(&leads, &phone(1), "the burst's score on the lead", |_| true).await;
    let (score, version): (i32, i64) =
        sqlx::query_as("SELECT score, version FROM qualification.scores").fetch_one(&admin).await?;
    assert!(version <= BURST / 4, "{BURST} messages made {version} scorings");
    let now = qualification
        .requalify(pb::RequalifyRequest { org_id: ORG.into(), lead_id: lead.id.clone() })
        .await?
        .into_inner();
    assert_eq!(now.score, score, "scoring again from everything changes nothing");
    let lead = scored_lead(&leads, &phone(1), "the lead's score", |l| l.score == Some(score)).await;
    assert_eq!(lead.interaction_count, BURST);
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn requalify_asks_the_lead_service_and_refuses_a_lead_it_has_closed() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let admin = env.admin_pool().await?;
    let leads = node.lead().await?;
    let qualification: Qualification = QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);
    for n in 0..2 {
        env.publish_interaction(ORG, &chat_event(&format!("q-{n}"), &phone(n), "how much is it?")).await?;
    }
    let (open, closed) = (
        scored_lead(&leads, &phone(0), "a lead scored", |_| true).await,
        scored_lead(&leads, &phone(1), "a lead scored", |_| true).await,
    );
    let requalify = |lead_id: &str| {
        let mut qualification = qualification.clone();
        let request = pb::RequalifyRequest { org_id: ORG.into(), lead_id: lead_id.to_owned() };
        async move { qualification.requalify(request).await }
    };
    requalify(&open.id).await?;

    // Closed by the lead service and asked at once, whether or not the engine has seen it yet.
    change(
        &leads,
        &closed.id,
        pb::ChangeStatusRequest { status: pb::LeadStatus::Converted as i32, ..Default::default() },
    )
    .await?;
    let refused = requalify(&closed.id).await.expect_err("a converted lead is not requalified");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("inactive") && refused.message().contains("CONVERTED"), "{}", refused.message());

    // The engine's projection behind the lead service (its consumer not caught up): the lead
    // service's word stands.
    eventually(DEADLINE, "the engine to see the lead closed", || async {
        let active: bool = sqlx::query_scalar("SELECT active FROM qualification.lead_state WHERE lead_id = $1")
            .bind(uuid::Uuid::parse_str(&closed.id).ok()?)
            .fetch_one(&admin)
            .await
            .ok()?;
        (!active).then_some(())
    })
    .await;
    sqlx::query("UPDATE qualification.lead_state SET active = true WHERE lead_id = $1")
        .bind(uuid::Uuid::parse_str(&closed.id)?)
        .execute(&admin)
        .await?;
    let refused = requalify(&closed.id).await.expect_err("the lead service says it is converted");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("CONVERTED"), "{}", refused.message());
    let versions: i64 = sqlx::query_scalar("SELECT version FROM qualification.scores WHERE lead_id = $1")
        .bind(uuid::Uuid::parse_str(&closed.id)?)
        .fetch_one(&admin)
        .await?;
    assert_eq!(versions, 1, "no score written for the closed lead");
    node.stop().await?;
    env.cleanup().await
}

/// Publishes a synthetic organisation's conversations as the contract's events; answers the
/// phone of each lead that writes at least once, with its outcome.
async fn publish_conversations(env: &TestEnv, leads: usize, seed: u64) -> anyhow::Result<(HashMap<String, bool>, i64)> {
    let org = generate(&SyntheticConfig { seed, leads, now: Timestamp::now() });
    let mut outcomes = HashMap::new();
    let mut pending = Vec::new();
    for (n, lead) in org.leads.iter().enumerate() {
        let phone = phone(n as u32);
        let mut wrote = false;
        for (m, message) in lead.messages.iter().enumerate() {
            let inbound = message.direction == Direction::Inbound;
            wrote |= inbound;
            let mut event = serde_json::json!({
                "event_id": format!("s-{n}-{m}"),
                "occurred_at": message.at.to_string(),
                "kind": "chat_message",
                "direction": if inbound { "inbound" } else { "outbound" },
                "channel": message.channel.clone().unwrap_or_else(|| "whatsapp".into()),
                "contact": { "phone": phone },
                "text": message.text,
            });
            if message.kind == MessageKind::BroadcastReply {
                event["kind"] = "broadcast_reply".into();
                event["broadcast"] =
                    serde_json::json!({ "message_id": format!("wamid.{n}"), "campaign_id": message.campaign_id });
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{ORG}:s-{n}-{m}").as_str());
            pending.push(
                env.js
                    .publish_with_headers(env.subjects.interactions(ORG), headers, serde_json::to_vec(&event)?.into())
                    .await?,
            );
        }
        if wrote {
            outcomes.insert(phone, lead.converted);
        }
    }
    let published = pending.len() as i64;
    for ack in pending {
        ack.await?;
    }
    Ok((outcomes, published))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organisations_outcomes_train_a_model_that_ranks_better_than_the_prior() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    // Only TrainModel trains here, so the figures below are of one known model.
    env.settings.qualification.retrain_interval_secs = 3600;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let leads = node.lead().await?;
    let mut qualification: Qualification =
        QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);
    let untrained = qualification.get_model(pb::GetModelRequest { org_id: ORG.into() }).await?.into_inner();
    assert_eq!((untrained.version, untrained.scoring_model.as_str()), (0, "prior-v1"));
    let refused =
        qualification.train_model(pb::TrainModelRequest { org_id: ORG.into() }).await.expect_err("no outcomes");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    let (outcomes, published) = publish_conversations(&env, 600, 7).await?;
    // Every message applied and seen by the engine before any lead closes: a message applied
    // after its lead's outcome would open a new lead instead.
    let admin = env.admin_pool().await?;
    eventually(Duration::from_secs(180), "every message applied and scored", || async {
        let (applied, on_leads): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(lead_id) FROM lead.interactions").fetch_one(&admin).await.ok()?;
        let scored: i64 = sqlx::query_scalar("SELECT count(*) FROM qualification.scored_interactions")
            .fetch_one(&admin)
            .await
            .ok()?;
        (applied == published && scored == on_leads).then_some(())
    })
    .await;
    let all = eventually(Duration::from_secs(180), "a scored lead for every contact who wrote", || {
        let mut leads = leads.clone();
        let expected = outcomes.len();
        async move {
            let all = leads_tests::all_leads(&mut leads, ORG).await.ok()?;
            (all.len() == expected && all.iter().all(|l| l.score.is_some())).then_some(all)
        }
    })
    .await;
    for converted in [true, false] {
        let ids: Vec<String> = all
            .iter()
            .filter(|l| l.contact.as_ref().is_some_and(|c| outcomes[&c.phone] == converted))
            .map(|l| l.id.clone())
            .collect();
        let status = if converted { pb::LeadStatus::Converted } else { pb::LeadStatus::Lost };
        leads
            .clone()
            .bulk_change_status(pb::BulkChangeStatusRequest {
                org_id: ORG.into(),
                lead_ids: ids,
                status: status as i32,
                actor: "op".into(),
                ..Default::default()
            })
            .await?;
    }
    let positives = outcomes.values().filter(|c| **c).count() as i64;
    let negatives = outcomes.len() as i64 - positives;
    eventually(DEADLINE, "every outcome labelled", || {
        let mut qualification = qualification.clone();
        async move {
            let info = qualification.get_model(pb::GetModelRequest { org_id: ORG.into() }).await.ok()?.into_inner();
            (info.labelled_positives == positives && info.labelled_negatives == negatives).then_some(())
        }
    })
    .await;
    let trained = qualification.train_model(pb::TrainModelRequest { org_id: ORG.into() }).await?.into_inner();
    assert_eq!(trained.version, 1);
    assert_eq!(trained.training_size, positives + negatives);
    // The hold-out is a quarter of 600 leads, split in the order of their random ids: its AUC
    // varies by about 0.03 between runs (0.85 to 0.95 over ten), the prior's by as much (0.67
    // to 0.78), so the bar is set where a model that learned nothing cannot pass either check.
    assert!(trained.holdout_auc >= 0.80, "held-out AUC {}", trained.holdout_auc);
    assert!(
        trained.prior_holdout_auc + 0.05 <= trained.holdout_auc,
        "prior {} against model {}",
        trained.prior_holdout_auc,
        trained.holdout_auc
    );
    assert!(trained.in_use);
    assert_eq!(trained.scoring_model, "org-v1");
    let reported = qualification.get_model(pb::GetModelRequest { org_id: ORG.into() }).await?.into_inner();
    assert_eq!(reported, trained);

    // Its reasons read as words of the organisation's own conversations, never as hashed ids.
    let org = generate(&SyntheticConfig { seed: 7, leads: 600, now: Timestamp::now() });
    let words: std::collections::BTreeSet<String> = org
        .leads
        .iter()
        .flat_map(|l| &l.messages)
        .filter(|m| m.direction == Direction::Inbound)
        .flat_map(|m| qualification_model::text::tokenize(&m.text).tokens)
        .map(|token| token.text)
        .collect();
    let naming: Vec<&str> = org
        .leads
        .iter()
        .flat_map(|l| &l.messages)
        .filter(|m| m.direction == Direction::Inbound && m.text.contains(org.product))
        .map(|m| m.text.as_str())
        .take(3)
        .collect();
    let mut worded = Vec::new();
    for (n, text) in naming.iter().enumerate() {
        env.publish_interaction(ORG, &chat_event(&format!("words-{n}"), &phone(9_100 + n as u32), text)).await?;
        let lead = scored_lead(&leads, &phone(9_100 + n as u32), "a lead naming the product scored", |_| true).await;
        let why = eventually(DEADLINE, "the lead scored by the model", || {
            let mut qualification = qualification.clone();
            let id = lead.id.clone();
            async move {
                let request = pb::GetQualificationRequest { org_id: ORG.into(), lead_id: id };
                let q = qualification.get_qualification(request).await.ok()?.into_inner();
                (q.model_version == "org-v1").then_some(q)
            }
        })
        .await;
        assert!(why.reasons.iter().all(|r| !r.contains('#')), "{:?}", why.reasons);
        worded.extend(why.reasons.into_iter().filter(|r| r.starts_with("text: ")));
    }
    let quoted = |reason: &str| reason.split('"').nth(1).map(str::to_owned);
    assert!(
        worded.iter().filter_map(|r| quoted(r)).any(|q| q.split(' ').all(|w| words.contains(w))),
        "a reason names a word of the training texts: {worded:?}"
    );

    // New leads are scored by the learned model, with its own factors.
    env.publish_interaction(ORG, &chat_event("after-1", &phone(9_000), "quiero comprar, cuánto cuesta?")).await?;
    let lead = scored_lead(&leads, &phone(9_000), "a new lead scored by the model", |_| true).await;
    let why = qualification
        .get_qualification(pb::GetQualificationRequest { org_id: ORG.into(), lead_id: lead.id })
        .await?
        .into_inner();
    eventually(DEADLINE, "the model's version on new scores", || {
        let mut qualification = qualification.clone();
        let id = why.lead_id.clone();
        async move {
            let q = qualification.requalify(pb::RequalifyRequest { org_id: ORG.into(), lead_id: id }).await.ok()?;
            let q = q.into_inner();
            (q.model_version == "org-v1" && !q.reasons.is_empty()).then_some(())
        }
    })
    .await;
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_split_a_backlog_and_a_killed_one_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let admin = env.admin_pool().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    const TOTAL: u32 = 3_000;
    const CONTACTS: u32 = 300;
    let mut pending = Vec::new();
    for n in 0..TOTAL {
        let event = chat_event(&format!("w-{n}"), &phone(n % CONTACTS), &format!("message {n}, how much?"));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{ORG}:w-{n}").as_str());
        pending.push(
            env.js
                .publish_with_headers(env.subjects.interactions(ORG), headers, serde_json::to_vec(&event)?.into())
                .await?,
        );
    }
    for ack in pending {
        ack.await?;
    }
    eventually(Duration::from_secs(120), "the backlog of lead events", || async {
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.interactions").fetch_one(&admin).await.ok()?;
        (applied == i64::from(TOTAL)).then_some(())
    })
    .await;
    let scored = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM qualification.scored_interactions")
            .fetch_one(&admin)
            .await
            .unwrap_or(0)
    };
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Process::spawn(&env, "qualification", &[("LEADS_CONSUMER_BATCH_SIZE", "50".into())])?);
    }
    for worker in &mut workers {
        worker.ready().await?;
    }
    eventually(Duration::from_secs(120), "a part of the backlog scored", || async {
        (scored().await >= i64::from(TOTAL / 5)).then_some(())
    })
    .await;
    workers.remove(0).kill().await?;
    eventually(Duration::from_secs(180), "the whole backlog scored", || async {
        (scored().await == i64::from(TOTAL)).then_some(())
    })
    .await;
    // Each lead's engine saw each of its interactions exactly once.
    let applied: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT lead_id, count(*) FROM lead.interactions GROUP BY lead_id").fetch_all(&admin).await?;
    let observed: HashMap<uuid::Uuid, i64> =
        eventually(Duration::from_secs(60), "every lead's state written", || async {
            let observed = inbound_messages(&admin).await?;
            (observed.values().sum::<i64>() == i64::from(TOTAL)).then_some(observed)
        })
        .await;
    assert_eq!(applied.len(), CONTACTS as usize);
    for (lead_id, count) in applied {
        assert_eq!(observed.get(&lead_id), Some(&count), "lead {lead_id}");
    }
    let unscored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM qualification.lead_state s \
         WHERE NOT EXISTS (SELECT 1 FROM qualification.scores c WHERE c.org_id = s.org_id AND c.lead_id = s.lead_id)",
    )
    .fetch_one(&admin)
    .await?;
    assert_eq!(unscored, 0, "every lead scored");
    for worker in workers {
        worker.terminate().await?;
    }
    node.stop().await?;
    env.cleanup().await
}

/// The inbound messages the engine has observed, by lead, from the stored features.
async fn inbound_messages(admin: &sqlx::PgPool) -> Option<HashMap<uuid::Uuid, i64>> {
    let rows: Vec<(uuid::Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT lead_id, features FROM qualification.lead_features").fetch_all(admin).await.ok()?;
    rows.into_iter()
        .map(|(lead_id, stored)| {
            let features = qualification_model::LeadFeatures::from_bytes(&stored).expect("stored features read back");
            Some((lead_id, i64::from(features.inbound)))
        })
        .collect()
}

/// A schema an earlier version migrated, with a lead's features stored there as JSON in
/// `lead_state`, is migrated: the features move into `lead_features` and read back whole, and a
/// lead that never had any gets no row.
#[tokio::test]
async fn features_stored_as_json_by_an_earlier_version_survive_the_migration() -> anyhow::Result<()> {
    use qualification_model::{LeadFeatures, Message, Timestamp};
    let env = TestEnv::new().await?;
    let admin = env.admin_pool().await?;
    let mut conn = admin.acquire().await?;
    sqlx::query("CREATE SCHEMA qualification_before").execute(&mut *conn).await?;
    sqlx::query("SET search_path TO qualification_before").execute(&mut *conn).await?;
    let earlier = [
        include_str!("../../migrations/qualification/0001_init.sql"),
        include_str!("../../migrations/qualification/0002_scoring.sql"),
        include_str!("../../migrations/qualification/0003_learning.sql"),
        include_str!("../../migrations/qualification/0004_recent_messages.sql"),
        include_str!("../../migrations/qualification/0005_dead_letters.sql"),
    ];
    for migration in earlier {
        sqlx::raw_sql(migration).execute(&mut *conn).await?;
    }
    let mut features = LeadFeatures::new();
    let start = Timestamp::now().plus_seconds(-3 * 3_600);
    for (minute, direction, text) in [
        (0, Direction::Outbound, "Olá! Temos uma oferta"),
        (4, Direction::Inbound, "quanto custa? quero comprar hoje"),
        (9, Direction::Outbound, "custa 20 reais"),
        (70, Direction::Inbound, "não quero mais, obrigado"),
    ] {
        features.observe(&Message::chat(direction, start.plus_seconds(minute * 60), text));
    }
    let (observed, untouched) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    sqlx::query("INSERT INTO lead_state (org_id, lead_id, lead_version, features) VALUES ($1, $2, 5, $3)")
        .bind(ORG)
        .bind(observed)
        .bind(sqlx::types::Json(&features))
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO lead_state (org_id, lead_id, lead_version) VALUES ($1, $2, 2)")
        .bind(ORG)
        .bind(untouched)
        .execute(&mut *conn)
        .await?;

    sqlx::raw_sql(include_str!("../../migrations/qualification/0006_conversations_apart.sql"))
        .execute(&mut *conn)
        .await?;
    let moved: Vec<(uuid::Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT lead_id, features FROM lead_features").fetch_all(&mut *conn).await?;
    assert_eq!(moved.len(), 1, "only the lead with features has a row");
    assert_eq!(moved[0].0, observed);
    assert_eq!(qualification::engine::stored_features(&moved[0].1).map_err(anyhow::Error::msg)?, features);
    let states: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT lead_id, lead_version FROM lead_state ORDER BY lead_version")
            .fetch_all(&mut *conn)
            .await?;
    assert_eq!(states, [(untouched, 2), (observed, 5)]);
    drop(conn);
    admin.close().await;
    env.cleanup().await
}
