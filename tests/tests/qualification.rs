//! Qualification: every active lead is scored from its interactions; a score set by hand wins.

use leads_proto::v1::qualification_service_client::QualificationServiceClient;
use leads_tests::{TestEnv, chat_event, eventually, pb, phone};
use platform::ServiceName;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);
const ORG: &str = "acme";

#[tokio::test]
async fn leads_are_scored_from_their_messages_and_a_manual_score_wins() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let leads = node.lead().await?;
    let mut qualification = QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);
    env.publish_interaction(ORG, &chat_event("q-1", &phone(1), "hello")).await?;
    env.publish_interaction(ORG, &chat_event("q-2", &phone(2), "hi")).await?;
    let get = |id: String| {
        let mut leads = leads.clone();
        async move {
            leads.get_lead(pb::GetLeadRequest { org_id: ORG.into(), lead_id: id }).await.ok().map(|r| r.into_inner())
        }
    };
    let all = eventually(DEADLINE, "two scored leads", || {
        let mut leads = leads.clone();
        async move {
            let all = leads_tests::all_leads(&mut leads, ORG).await.ok()?;
            (all.len() == 2 && all.iter().all(|l| l.score.is_some())).then_some(all)
        }
    })
    .await;
    let keen = all.iter().find(|l| l.contact.as_ref().is_some_and(|c| c.phone == phone(1))).expect("lead").clone();
    let other = all.iter().find(|l| l.id != keen.id).expect("lead").clone();
    assert_eq!(keen.score_source(), pb::ScoreSource::Ai);
    let greeting_score = keen.score.unwrap_or_default();

    env.publish_interaction(ORG, &chat_event("q-3", &phone(1), "How much is the premium plan? I want to buy it today"))
        .await?;
    let rescored = eventually(DEADLINE, "a higher score", || {
        let id = keen.id.clone();
        let get = &get;
        async move { get(id).await.filter(|l| l.score.unwrap_or_default() > greeting_score) }
    })
    .await;
    assert_eq!(rescored.score_source(), pb::ScoreSource::Ai);
    let why = qualification
        .get_qualification(pb::GetQualificationRequest { org_id: ORG.into(), lead_id: keen.id.clone() })
        .await?
        .into_inner();
    assert_eq!(why.score, rescored.score.unwrap_or_default());
    assert_eq!(why.source(), pb::ScoreSource::Ai);
    assert_eq!(why.model_version, "rules-v1");
    for reason in ["asked about pricing", "showed purchase intent", "is in a hurry"] {
        assert!(why.reasons.iter().any(|r| r.starts_with(reason)), "{reason} in {:?}", why.reasons);
    }

    // An operator's score stays, whatever the model says next.
    let mut client = leads.clone();
    client
        .change_status(pb::ChangeStatusRequest {
            org_id: ORG.into(),
            lead_id: other.id.clone(),
            status: pb::LeadStatus::Qualifying as i32,
            manual_score: Some(77),
            actor: "op".into(),
            ..Default::default()
        })
        .await?;
    env.publish_interaction(ORG, &chat_event("q-4", &phone(2), "what is the price? I'd like to order")).await?;
    env.publish_interaction(ORG, &chat_event("q-5", &phone(1), "any discount?")).await?;
    let manual = eventually(DEADLINE, "the qualification to see the manual score", || {
        let mut qualification = qualification.clone();
        let id = other.id.clone();
        async move {
            let q = qualification
                .get_qualification(pb::GetQualificationRequest { org_id: ORG.into(), lead_id: id })
                .await
                .ok()?
                .into_inner();
            (q.source() == pb::ScoreSource::Manual).then_some(q)
        }
    })
    .await;
    assert_eq!(manual.score, 77);
    // q-5 went through the whole pipeline after q-4 was published; wait for it, then check.
    eventually(DEADLINE, "the later message to be applied", || {
        let id = keen.id.clone();
        let get = &get;
        async move { get(id).await.filter(|l| l.interaction_count == 3) }
    })
    .await;
    let requalified = qualification
        .requalify(pb::RequalifyRequest { org_id: ORG.into(), lead_id: other.id.clone() })
        .await?
        .into_inner();
    assert_eq!(requalified.source(), pb::ScoreSource::Manual);
    let lead = get(other.id.clone()).await.expect("lead");
    assert_eq!((lead.score, lead.score_source()), (Some(77), pb::ScoreSource::Manual));
    let history = client
        .get_lead_history(pb::GetLeadHistoryRequest {
            org_id: ORG.into(),
            lead_id: keen.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(history.entries.iter().any(|e| e.kind == "score" && e.summary.starts_with("ai score")));
    let error = qualification
        .get_qualification(pb::GetQualificationRequest {
            org_id: ORG.into(),
            lead_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown lead");
    assert_eq!(error.code(), tonic::Code::NotFound);
    node.stop().await?;
    env.cleanup().await
}
