//! Security against real services: every RPC confined to the token's organisations, no
//! call without a valid token, internal RPCs for services only, the recorded actor taken from
//! the token, every free-text field bounded, exports safe to open in a spreadsheet.

use leads_proto::v1::{
    assignment_service_client::AssignmentServiceClient,
    broadcast_tracking_service_client::BroadcastTrackingServiceClient, follow_up_service_client::FollowUpServiceClient,
    ingest_service_client::IngestServiceClient, lead_service_client::LeadServiceClient,
    qualification_service_client::QualificationServiceClient,
};
use leads_tests::{Node, TestEnv, chat_event, eventually, pb, phone, private::PrivateNats};
use platform::{
    ServiceName,
    auth::{Role, Signer},
};
use std::{path::PathBuf, time::Duration};
use tonic::{Code, Request, Status, transport::Channel};

const ORG: &str = "acme";
const OTHER: &str = "globex";
const HOUR: Duration = Duration::from_secs(3600);

/// A signing key of its own for one test, in a temporary directory.
struct Keys {
    dir: PathBuf,
    key: PathBuf,
}

impl Keys {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("leads-security-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("local.key");
        let secret: String = (0..48).map(|_| char::from(b'a' + rand::random::<u8>() % 26)).collect();
        std::fs::write(&key, secret).unwrap();
        Self { dir, key }
    }

    fn token(&self, sub: &str, role: Role, orgs: &[&str]) -> String {
        let orgs = orgs.iter().map(|o| o.to_string()).collect();
        Signer::load(&self.key).unwrap().mint(sub, role, orgs, HOUR).unwrap()
    }

    /// A token of the right shape signed with another key.
    fn forged(&self) -> String {
        let other = Keys::new();
        let token = other.token("mallory", Role::Service, &["*"]);
        std::fs::remove_dir_all(&other.dir).ok();
        token
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// An environment whose services verify tokens with `keys` and sign their own with it.
async fn secured_env(keys: &Keys) -> anyhow::Result<TestEnv> {
    let mut env = TestEnv::new().await?;
    env.settings.auth.signing_key_file = Some(keys.key.clone());
    env.settings.validate()?;
    Ok(env)
}

fn with<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

struct Clients {
    lead: LeadServiceClient<Channel>,
    ingest: IngestServiceClient<Channel>,
    broadcast: BroadcastTrackingServiceClient<Channel>,
    assignment: AssignmentServiceClient<Channel>,
    follow_up: FollowUpServiceClient<Channel>,
    qualification: QualificationServiceClient<Channel>,
}

impl Clients {
    async fn of(node: &Node) -> anyhow::Result<Self> {
        Ok(Self {
            lead: node.lead().await?,
            ingest: node.ingest().await?,
            broadcast: node.broadcast().await?,
            assignment: node.assignment().await?,
            follow_up: node.follow_up().await?,
            qualification: QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?),
        })
    }

    /// Calls every RPC of every service about `org` with `token`; the code each answered.
    async fn every_rpc(&self, token: Option<&str>, org: &str) -> Vec<(&'static str, Code)> {
        fn code<T>(result: Result<tonic::Response<T>, Status>) -> Code {
            result.map_or_else(|status| status.code(), |_| Code::Ok)
        }
        let (mut lead, mut ingest, mut broadcast) = (self.lead.clone(), self.ingest.clone(), self.broadcast.clone());
        let (mut assignment, mut follow_up) = (self.assignment.clone(), self.follow_up.clone());
        let mut qualification = self.qualification.clone();
        let org_id = org.to_owned();
        let lead_id = uuid::Uuid::now_v7().to_string();
        let list = pb::ListLeadsRequest { org_id: org_id.clone(), ..Default::default() };
        let due_at = Some(prost_types::Timestamp { seconds: 1_900_000_000, nanos: 0 });
        vec![
            (
                "LeadService/GetLead",
                code(
                    lead.get_lead(with(token, pb::GetLeadRequest { org_id: org_id.clone(), lead_id: lead_id.clone() }))
                        .await,
                ),
            ),
            ("LeadService/ListLeads", code(lead.list_leads(with(token, list.clone())).await)),
            (
                "LeadService/ChangeStatus",
                code(
                    lead.change_status(with(
                        token,
                        pb::ChangeStatusRequest {
                            org_id: org_id.clone(),
                            lead_id: lead_id.clone(),
                            status: pb::LeadStatus::Qualified as i32,
                            ..Default::default()
                        },
                    ))
                    .await,
                ),
            ),
            (
                "LeadService/BulkChangeStatus",
                code(
                    lead.bulk_change_status(with(
                        token,
                        pb::BulkChangeStatusRequest {
                            org_id: org_id.clone(),
                            lead_ids: vec![lead_id.clone()],
                            status: pb::LeadStatus::Lost as i32,
                            ..Default::default()
                        },
                    ))
                    .await,
                ),
            ),
            (
                "LeadService/ExportLeads",
                code(
                    lead.export_leads(with(
                        token,
                        pb::ExportLeadsRequest { query: Some(list.clone()), scope: pb::ExportScope::All as i32 },
                    ))
                    .await,
                ),
            ),
            (
                "LeadService/GetLeadHistory",
                code(
                    lead.get_lead_history(with(
                        token,
                        pb::GetLeadHistoryRequest {
                            org_id: org_id.clone(),
                            lead_id: lead_id.clone(),
                            ..Default::default()
                        },
                    ))
                    .await,
                ),
            ),
            (
                "LeadService/AssignLeads",
                code(
                    lead.assign_leads(with(
                        token,
                        pb::AssignLeadsRequest {
                            org_id: org_id.clone(),
                            lead_ids: vec![lead_id.clone()],
                            agent_id: "ann".into(),
                            ..Default::default()
                        },
                    ))
                    .await,
                ),
            ),
            (
                "LeadService/OpenFollowUp",
                code(
                    lead.open_follow_up(with(
                        token,
                        pb::OpenFollowUpRequest {
                            org_id: org_id.clone(),
                            lead_id: lead_id.clone(),
                            follow_up_id: uuid::Uuid::now_v7().to_string(),
                            due_at,
                            ..Default::default()
                        },
                    ))
                    .await,
                ),
            ),
            (
                "IngestService/Ingest",
                code(
                    ingest
                        .ingest(with(
                            token,
                            pb::IngestRequest {
                                org_id: org_id.clone(),
                                events: vec![pb::InteractionEvent { event_id: "e".into(), ..Default::default() }],
                            },
                        ))
                        .await,
                ),
            ),
            (
                "IngestService/ListRejections",
                code(
                    ingest
                        .list_rejections(with(
                            token,
                            pb::ListRejectionsRequest { org_id: org_id.clone(), ..Default::default() },
                        ))
                        .await,
                ),
            ),
            (
                "BroadcastTrackingService/GetBroadcastHistory",
                code(
                    broadcast
                        .get_broadcast_history(with(
                            token,
                            pb::GetBroadcastHistoryRequest {
                                org_id: org_id.clone(),
                                target: Some(pb::get_broadcast_history_request::Target::LeadId(lead_id.clone())),
                                ..Default::default()
                            },
                        ))
                        .await,
                ),
            ),
            (
                "BroadcastTrackingService/GetCampaignStats",
                code(
                    broadcast
                        .get_campaign_stats(with(
                            token,
                            pb::GetCampaignStatsRequest { org_id: org_id.clone(), campaign_id: "c".into() },
                        ))
                        .await,
                ),
            ),
            (
                "AssignmentService/UpsertAgent",
                code(
                    assignment
                        .upsert_agent(with(
                            token,
                            pb::UpsertAgentRequest {
                                org_id: org_id.clone(),
                                agent_id: "ann".into(),
                                name: "Ann".into(),
                                active: Some(true),
                                ..Default::default()
                            },
                        ))
                        .await,
                ),
            ),
            (
                "AssignmentService/ListAgents",
                code(
                    assignment
                        .list_agents(with(
                            token,
                            pb::ListAgentsRequest { org_id: org_id.clone(), ..Default::default() },
                        ))
                        .await,
                ),
            ),
            (
                "AssignmentService/AssignLead",
                code(
                    assignment
                        .assign_lead(with(
                            token,
                            pb::AssignLeadRequest {
                                org_id: org_id.clone(),
                                lead_id: lead_id.clone(),
                                agent_id: "ann".into(),
                                ..Default::default()
                            },
                        ))
                        .await,
                ),
            ),
            (
                "AssignmentService/BulkAssign",
                code(
                    assignment
                        .bulk_assign(with(
                            token,
                            pb::BulkAssignRequest {
                                org_id: org_id.clone(),
                                lead_ids: vec![lead_id.clone()],
                                agent_id: "ann".into(),
                                ..Default::default()
                            },
                        ))
                        .await,
                ),
            ),
            (
                "AssignmentService/GetAssignmentHistory",
                code(
                    assignment
                        .get_assignment_history(with(
                            token,
                            pb::GetAssignmentHistoryRequest { org_id: org_id.clone(), lead_id: lead_id.clone() },
                        ))
                        .await,
                ),
            ),
            (
                "FollowUpService/CreateFollowUp",
                code(
                    follow_up
                        .create_follow_up(with(
                            token,
                            pb::CreateFollowUpRequest {
                                org_id: org_id.clone(),
                                lead_id: lead_id.clone(),
                                due_at,
                                ..Default::default()
                            },
                        ))
                        .await,
                ),
            ),
            (
                "FollowUpService/ListFollowUps",
                code(
                    follow_up
                        .list_follow_ups(with(
                            token,
                            pb::ListFollowUpsRequest { org_id: org_id.clone(), ..Default::default() },
                        ))
                        .await,
                ),
            ),
            (
                "FollowUpService/CompleteFollowUp",
                code(
                    follow_up
                        .complete_follow_up(with(
                            token,
                            pb::FollowUpActionRequest {
                                org_id: org_id.clone(),
                                follow_up_id: lead_id.clone(),
                                ..Default::default()
                            },
                        ))
                        .await,
                ),
            ),
            (
                "FollowUpService/CancelFollowUp",
                code(
                    follow_up
                        .cancel_follow_up(with(
                            token,
                            pb::FollowUpActionRequest {
                                org_id: org_id.clone(),
                                follow_up_id: lead_id.clone(),
                                ..Default::default()
                            },
                        ))
                        .await,
                ),
            ),
            (
                "QualificationService/GetQualification",
                code(
                    qualification
                        .get_qualification(with(
                            token,
                            pb::GetQualificationRequest { org_id: org_id.clone(), lead_id: lead_id.clone() },
                        ))
                        .await,
                ),
            ),
            (
                "QualificationService/Requalify",
                code(
                    qualification
                        .requalify(with(
                            token,
                            pb::RequalifyRequest { org_id: org_id.clone(), lead_id: lead_id.clone() },
                        ))
                        .await,
                ),
            ),
            (
                "QualificationService/GetModel",
                code(qualification.get_model(with(token, pb::GetModelRequest { org_id: org_id.clone() })).await),
            ),
            (
                "QualificationService/TrainModel",
                code(qualification.train_model(with(token, pb::TrainModelRequest { org_id: org_id.clone() })).await),
            ),
        ]
    }
}

#[tokio::test]
async fn every_rpc_is_confined_to_the_token_and_refused_without_one() -> anyhow::Result<()> {
    let keys = Keys::new();
    let env = secured_env(&keys).await?;
    let node = env.start_all().await?;
    let clients = Clients::of(&node).await?;

    for role in [Role::Operator, Role::Agent] {
        let token = keys.token("alice", role, &[ORG]);
        let answers = clients.every_rpc(Some(&token), OTHER).await;
        assert_eq!(answers.len(), 25, "every RPC of the six services");
        for (rpc, code) in answers {
            assert_eq!(code, Code::PermissionDenied, "{rpc} for another organisation with a {role:?} token");
        }
    }
    let forged = keys.forged();
    let expired = Signer::load(&keys.key)?.sign(&platform::auth::Claims {
        sub: "alice".into(),
        orgs: vec![ORG.into()],
        role: Role::Operator,
        exp: 1_000_000,
        iat: None,
    })?;
    for (what, token) in [
        ("no token", None),
        ("a forged token", Some(forged.as_str())),
        ("an expired token", Some(&expired)),
        ("garbage", Some("a.b.c")),
    ] {
        for (rpc, code) in clients.every_rpc(token, ORG).await {
            assert_eq!(code, Code::Unauthenticated, "{rpc} with {what}");
        }
    }
    // Internal RPCs answer services only, even in the caller's own organisation.
    for role in [Role::Operator, Role::Agent] {
        let token = keys.token("alice", role, &[ORG]);
        for (rpc, code) in clients.every_rpc(Some(&token), ORG).await {
            if rpc == "LeadService/AssignLeads" || rpc == "LeadService/OpenFollowUp" {
                assert_eq!(code, Code::PermissionDenied, "{rpc} with a {role:?} token");
            } else {
                assert_ne!(code, Code::PermissionDenied, "{rpc} in its own organisation");
                assert_ne!(code, Code::Unauthenticated, "{rpc} with a valid token");
            }
        }
    }
    let service = keys.token("billing", Role::Service, &["*"]);
    for (rpc, code) in clients.every_rpc(Some(&service), OTHER).await {
        assert!(
            !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
            "{rpc} with a service token: {code:?}"
        );
    }
    // Health needs no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(node.channel(ServiceName::Lead).await?);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?;
    // Only a service may hold every organisation.
    assert!(Signer::load(&keys.key)?.mint("alice", Role::Operator, vec!["*".into()], HOUR).is_err());

    node.stop().await?;
    env.cleanup().await
}

/// One lead of `ORG`, made through the real ingest path.
async fn one_lead(
    env: &TestEnv,
    lead: &LeadServiceClient<Channel>,
    token: &str,
    name: &str,
) -> anyhow::Result<pb::Lead> {
    let mut event = chat_event("e-1", &phone(1), "Hi, how much is the premium plan?");
    event["contact"]["name"] = serde_json::Value::String(name.into());
    event["contact"]["email"] = serde_json::Value::String("=cmd@example.com".into());
    env.publish_interaction(ORG, &event).await?;
    Ok(eventually(Duration::from_secs(30), "the lead", || {
        let mut lead = lead.clone();
        async move {
            let page = lead
                .list_leads(with(Some(token), pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() }))
                .await
                .ok()?
                .into_inner();
            page.leads.into_iter().next()
        }
    })
    .await)
}

#[tokio::test]
async fn the_actor_is_the_token_subject_and_free_text_is_bounded() -> anyhow::Result<()> {
    let keys = Keys::new();
    let env = secured_env(&keys).await?;
    let node = env.start_all().await?;
    let clients = Clients::of(&node).await?;
    let alice = keys.token("alice", Role::Operator, &[ORG]);
    let token = Some(alice.as_str());
    let (mut lead, mut assignment, mut follow_up) =
        (clients.lead.clone(), clients.assignment.clone(), clients.follow_up.clone());
    let found = one_lead(&env, &lead, &alice, "=HYPERLINK(\"http://evil\",\"Ada\")").await?;

    // Whatever the request says, the subject is recorded; the request's actor only adds a name.
    lead.change_status(with(
        token,
        pb::ChangeStatusRequest {
            org_id: ORG.into(),
            lead_id: found.id.clone(),
            status: pb::LeadStatus::Qualifying as i32,
            actor: "bob".into(),
            reason: "asked for prices".into(),
            ..Default::default()
        },
    ))
    .await?;
    assignment
        .upsert_agent(with(
            token,
            pb::UpsertAgentRequest {
                org_id: ORG.into(),
                agent_id: "ann".into(),
                name: "Ann".into(),
                active: Some(true),
                ..Default::default()
            },
        ))
        .await?;
    let assigned = assignment
        .assign_lead(with(
            token,
            pb::AssignLeadRequest {
                org_id: ORG.into(),
                lead_id: found.id.clone(),
                agent_id: "ann".into(),
                actor: "Alice Smith".into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    assert_eq!(assigned.actor, "alice (Alice Smith)");
    let due_at = Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 86_400, nanos: 0 });
    let created = follow_up
        .create_follow_up(with(
            token,
            pb::CreateFollowUpRequest {
                org_id: ORG.into(),
                lead_id: found.id.clone(),
                due_at,
                actor: "root".into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    assert_eq!(created.created_by, "alice (root)");
    let cancelled = follow_up
        .cancel_follow_up(with(
            token,
            pb::FollowUpActionRequest { org_id: ORG.into(), follow_up_id: created.id.clone(), actor: String::new() },
        ))
        .await?
        .into_inner();
    assert_eq!(cancelled.closed_by, "alice");
    let history = lead
        .get_lead_history(with(
            token,
            pb::GetLeadHistoryRequest { org_id: ORG.into(), lead_id: found.id.clone(), ..Default::default() },
        ))
        .await?
        .into_inner();
    let actors: Vec<&str> = history
        .entries
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "status_changed" | "assignment" | "follow_up"))
        .map(|e| e.actor.as_str())
        .collect();
    assert!(actors.contains(&"alice (bob)"), "{actors:?}");
    assert!(actors.contains(&"alice (Alice Smith)"), "{actors:?}");
    assert!(actors.iter().all(|a| a.starts_with("alice")), "{actors:?}");

    // Every free-text field that had no limit is refused past its limit, naming itself.
    let long = |n: usize| "x".repeat(n);
    let id = found.id.clone();
    let refusals: Vec<(&str, Result<(), Status>)> = vec![
        (
            "reason",
            lead.change_status(with(
                token,
                pb::ChangeStatusRequest {
                    org_id: ORG.into(),
                    lead_id: id.clone(),
                    status: pb::LeadStatus::Qualified as i32,
                    reason: long(2001),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
        ),
        (
            "actor",
            lead.change_status(with(
                token,
                pb::ChangeStatusRequest {
                    org_id: ORG.into(),
                    lead_id: id.clone(),
                    status: pb::LeadStatus::Qualified as i32,
                    actor: long(201),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
        ),
        (
            "reason",
            lead.bulk_change_status(with(
                token,
                pb::BulkChangeStatusRequest {
                    org_id: ORG.into(),
                    lead_ids: vec![id.clone()],
                    status: pb::LeadStatus::Qualified as i32,
                    reason: long(2001),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
        ),
        (
            "actor",
            lead.bulk_change_status(with(
                token,
                pb::BulkChangeStatusRequest {
                    org_id: ORG.into(),
                    lead_ids: vec![id.clone()],
                    status: pb::LeadStatus::Qualified as i32,
                    actor: long(201),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
        ),
        (
            "lead_ids[1]",
            lead.bulk_change_status(with(
                token,
                pb::BulkChangeStatusRequest {
                    org_id: ORG.into(),
                    lead_ids: vec![id.clone(), long(65)],
                    status: pb::LeadStatus::Qualified as i32,
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
        ),
        (
            "lead_id",
            lead.get_lead(with(token, pb::GetLeadRequest { org_id: ORG.into(), lead_id: long(65) })).await.map(|_| ()),
        ),
        (
            "filter.campaign_id",
            lead.list_leads(with(
                token,
                pb::ListLeadsRequest {
                    org_id: ORG.into(),
                    filter: Some(pb::LeadFilter { campaign_id: long(257), ..Default::default() }),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
        ),
        (
            "filter.integration_name",
            lead.list_leads(with(
                token,
                pb::ListLeadsRequest {
                    org_id: ORG.into(),
                    filter: Some(pb::LeadFilter { integration_name: long(257), ..Default::default() }),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
        ),
        (
            "filter.agent_ids[0]",
            lead.list_leads(with(
                token,
                pb::ListLeadsRequest {
                    org_id: ORG.into(),
                    filter: Some(pb::LeadFilter { agent_ids: vec![long(129)], ..Default::default() }),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
        ),
        (
            "page_token",
            lead.get_lead_history(with(
                token,
                pb::GetLeadHistoryRequest {
                    org_id: ORG.into(),
                    lead_id: id.clone(),
                    page_token: long(1025),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
        ),
        (
            "reason",
            assignment
                .assign_lead(with(
                    token,
                    pb::AssignLeadRequest {
                        org_id: ORG.into(),
                        lead_id: id.clone(),
                        agent_id: "ann".into(),
                        reason: long(2001),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "actor",
            assignment
                .assign_lead(with(
                    token,
                    pb::AssignLeadRequest {
                        org_id: ORG.into(),
                        lead_id: id.clone(),
                        agent_id: "ann".into(),
                        actor: long(201),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "agent_id",
            assignment
                .assign_lead(with(
                    token,
                    pb::AssignLeadRequest {
                        org_id: ORG.into(),
                        lead_id: id.clone(),
                        agent_id: long(129),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "reason",
            assignment
                .bulk_assign(with(
                    token,
                    pb::BulkAssignRequest {
                        org_id: ORG.into(),
                        lead_ids: vec![id.clone()],
                        agent_id: "ann".into(),
                        reason: long(2001),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "actor",
            assignment
                .bulk_assign(with(
                    token,
                    pb::BulkAssignRequest {
                        org_id: ORG.into(),
                        lead_ids: vec![id.clone()],
                        agent_id: "ann".into(),
                        actor: long(201),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "lead_ids[0]",
            assignment
                .bulk_assign(with(
                    token,
                    pb::BulkAssignRequest {
                        org_id: ORG.into(),
                        lead_ids: vec![long(65)],
                        agent_id: "ann".into(),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "lead_id",
            assignment
                .get_assignment_history(with(
                    token,
                    pb::GetAssignmentHistoryRequest { org_id: ORG.into(), lead_id: long(65) },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "actor",
            follow_up
                .create_follow_up(with(
                    token,
                    pb::CreateFollowUpRequest {
                        org_id: ORG.into(),
                        lead_id: id.clone(),
                        due_at,
                        actor: long(201),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "request_id",
            follow_up
                .create_follow_up(with(
                    token,
                    pb::CreateFollowUpRequest {
                        org_id: ORG.into(),
                        lead_id: id.clone(),
                        due_at,
                        request_id: long(257),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "actor",
            follow_up
                .complete_follow_up(with(
                    token,
                    pb::FollowUpActionRequest {
                        org_id: ORG.into(),
                        follow_up_id: created.id.clone(),
                        actor: long(201),
                    },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "follow_up_id",
            follow_up
                .cancel_follow_up(with(
                    token,
                    pb::FollowUpActionRequest { org_id: ORG.into(), follow_up_id: long(65), actor: String::new() },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "lead_id",
            follow_up
                .list_follow_ups(with(
                    token,
                    pb::ListFollowUpsRequest { org_id: ORG.into(), lead_id: long(65), ..Default::default() },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "campaign_id",
            clients
                .broadcast
                .clone()
                .get_campaign_stats(with(
                    token,
                    pb::GetCampaignStatsRequest { org_id: ORG.into(), campaign_id: long(257) },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "page_token",
            clients
                .broadcast
                .clone()
                .get_broadcast_history(with(
                    token,
                    pb::GetBroadcastHistoryRequest {
                        org_id: ORG.into(),
                        target: Some(pb::get_broadcast_history_request::Target::LeadId(id.clone())),
                        page_token: long(1025),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "page_token",
            clients
                .ingest
                .clone()
                .list_rejections(with(
                    token,
                    pb::ListRejectionsRequest { org_id: ORG.into(), page_token: long(1025), ..Default::default() },
                ))
                .await
                .map(|_| ()),
        ),
        (
            "lead_id",
            clients
                .qualification
                .clone()
                .get_qualification(with(token, pb::GetQualificationRequest { org_id: ORG.into(), lead_id: long(65) }))
                .await
                .map(|_| ()),
        ),
    ];
    for (field, result) in refusals {
        let status = result.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
    // At the limit they pass.
    lead.change_status(with(
        token,
        pb::ChangeStatusRequest {
            org_id: ORG.into(),
            lead_id: id.clone(),
            status: pb::LeadStatus::Qualified as i32,
            reason: long(2000),
            actor: long(200),
            ..Default::default()
        },
    ))
    .await?;

    // The export opens in a spreadsheet as text.
    let mut stream = lead
        .export_leads(with(
            token,
            pb::ExportLeadsRequest {
                query: Some(pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() }),
                scope: pb::ExportScope::All as i32,
            },
        ))
        .await?
        .into_inner();
    let mut csv = Vec::new();
    while let Some(chunk) = stream.message().await? {
        csv.extend(chunk.csv);
    }
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let headers = reader.headers()?.clone();
    let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>()?;
    let cell = |name: &str| rows[0].get(headers.iter().position(|h| h == name).unwrap()).unwrap().to_owned();
    assert_eq!(cell("contact_name"), "'=HYPERLINK(\"http://evil\",\"Ada\")");
    assert_eq!(cell("email"), "'=cmd@example.com");
    assert_eq!(cell("phone"), phone(1), "a plain number is left as it is");

    node.stop().await?;
    env.cleanup().await
}

/// A private nats-server on a free port, configured from deploy/nats/nats-server.conf with its
/// publisher template made into publishers of `orgs`; every password is `pw-<user>`.
/// A private nats-server running the shipped configuration, with a publisher user for each
/// of `orgs` made from its template.
struct ShippedNats {
    /// Kept for as long as the test runs: dropped, it stops the server.
    _server: PrivateNats,
    url: String,
}

impl ShippedNats {
    async fn start(orgs: &[&str]) -> anyhow::Result<Self> {
        let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/nats-server.conf");
        let conf = std::fs::read_to_string(shipped)?;
        let begin = conf.find("# BEGIN publisher template").expect("template start");
        let end = conf.find("# END publisher template").expect("template end");
        let template = &conf[conf[begin..].find('\n').unwrap() + begin + 1..end];
        let publishers: String = orgs
            .iter()
            .map(|org| {
                let var = format!("PUBLISHER_{}_PASSWORD", org.to_uppercase().replace('-', "_"));
                template.replace("PUBLISHER_ORG_PASSWORD", &var).replace("ORG", org)
            })
            .collect();
        let mut env: Vec<(String, String)> = ServiceName::ALL
            .map(|s| s.as_str())
            .into_iter()
            .chain(["admin"])
            .map(|service| (format!("LEADS_NATS_{}_PASSWORD", service.to_uppercase()), format!("pw-leads-{service}")))
            .collect();
        env.extend(orgs.iter().map(|org| {
            (format!("PUBLISHER_{}_PASSWORD", org.to_uppercase().replace('-', "_")), format!("pw-publisher-{org}"))
        }));
        let server = PrivateNats::with_config(
            |dir| {
                format!("{}{publishers}{}", &conf[..begin], &conf[end..])
                    .replace("/data/jetstream", dir.join("js").to_str().unwrap())
            },
            env,
        )
        .await?;
        let url = server.url();
        Ok(Self { _server: server, url })
    }

    fn auth(user: &str) -> platform::settings::NatsAuthSettings {
        platform::settings::NatsAuthSettings {
            user: Some(user.into()),
            password: Some(format!("pw-{user}")),
            ..Default::default()
        }
    }

    /// A client of `user` whose server errors (permission violations) are collected.
    async fn client(
        &self,
        user: &str,
    ) -> anyhow::Result<(async_nats::Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
        let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = errors.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = seen.clone();
            let options = platform::nats::connect_options(&Self::auth(user)).await?.event_callback(move |event| {
                let seen = seen.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        seen.lock().unwrap().push(error.to_string());
                    }
                }
            });
            match options.connect(&self.url).await {
                Ok(client) => return Ok((client, errors)),
                Err(error) if std::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "nats-server not up yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

#[tokio::test]
async fn a_publisher_publishes_its_own_organisation_only() -> anyhow::Result<()> {
    let nats = ShippedNats::start(&["acme", "globex"]).await?;
    // The operators' user declares the streams, as the services do at start-up.
    let (admin, _) = nats.client("leads-admin").await?;
    let subjects = platform::nats::Subjects::default();
    platform::nats::ensure_all_streams(&async_nats::jetstream::new(admin.clone()), &subjects).await?;

    let (acme, errors) = nats.client("publisher-acme").await?;
    let js = async_nats::jetstream::new(acme.clone());
    let event = serde_json::to_vec(&chat_event("e-1", &phone(1), "hello"))?;
    let ack = js.publish(subjects.interactions("acme"), event.clone().into()).await?.await?;
    assert_eq!(ack.stream, "INTERACTIONS");
    js.publish(subjects.broadcast_statuses("acme"), b"{}".to_vec().into()).await?.await?;

    for subject in [subjects.interactions("globex"), subjects.broadcast_messages("globex"), "events.lead.acme.x".into()]
    {
        let refused = tokio::time::timeout(Duration::from_secs(2), async {
            js.publish(subject.clone(), event.clone().into()).await?.await.map(|_| ()).map_err(anyhow::Error::from)
        })
        .await;
        assert!(!matches!(refused, Ok(Ok(()))), "{subject} was accepted");
        let violation = eventually(Duration::from_secs(5), "the permission violation", || {
            let errors = errors.clone();
            let subject = subject.clone();
            async move {
                errors
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|e| e.contains("Permissions Violation") && e.contains(&subject))
                    .cloned()
            }
        })
        .await;
        assert!(violation.contains("Publish"), "{violation}");
    }
    // The interactions stream holds acme's event only.
    let mut stream = async_nats::jetstream::new(admin.clone()).get_stream("INTERACTIONS").await?;
    assert_eq!(stream.info().await?.state.messages, 1);

    // A service's user publishes its own events, not another service's nor the contract's.
    let (ingest, errors) = nats.client("leads-ingest").await?;
    let js = async_nats::jetstream::new(ingest);
    js.publish("events.ingest.acme.interactions_accepted", b"{}".to_vec().into()).await?.await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        js.publish("interactions.acme", event.clone().into()).await?.await.map_err(anyhow::Error::from)
    })
    .await;
    eventually(Duration::from_secs(5), "the ingest user's violation", || {
        let errors = errors.clone();
        async move { errors.lock().unwrap().iter().any(|e| e.contains("Permissions Violation")).then_some(()) }
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn a_service_runs_with_only_its_own_role_and_a_verifier_for_its_password() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let mut settings = env.settings.clone();
    settings.database.passwords.insert("ingest".into(), password.clone());
    leads::migrate(&settings).await?;

    // Postgres was given the verifier, never the password: ours for the salt it holds.
    let admin = env.admin_pool().await?;
    let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'leads_ingest'")
        .fetch_one(&admin)
        .await?;
    let salt = stored.split(['$', ':']).nth(2).expect("a SCRAM verifier");
    let salt = base64_decode(salt);
    assert_eq!(stored, platform::db::scram_verifier_with(&password, &salt, 4096));

    // The admin URL leads nowhere: the service uses its own role's URL only.
    let role_url = env.settings.database_url.replacen("postgres@", &format!("leads_ingest:{password}@"), 1);
    assert_ne!(role_url, env.settings.database_url);
    let mut process = leads_tests::Process::spawn(
        &env,
        "ingest",
        &[("LEADS_DATABASE_URL", "postgres://nobody@127.0.0.1:9/none".into()), ("LEADS_INGEST_DATABASE_URL", role_url)],
    )?;
    process.ready().await?;
    env.publish_interaction(ORG, &chat_event("e-role", &phone(7), "hello")).await?;
    eventually(Duration::from_secs(30), "the event accepted by ingest", || {
        let admin = admin.clone();
        async move {
            let count: i64 =
                sqlx::query_scalar("SELECT count(*) FROM ingest.accepted_events").fetch_one(&admin).await.ok()?;
            (count == 1).then_some(())
        }
    })
    .await;
    let status = process.terminate().await?;
    assert!(status.success(), "{status:?}");
    sqlx::query("ALTER ROLE leads_ingest PASSWORD NULL").execute(&admin).await?;
    admin.close().await;
    env.cleanup().await
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|b| *b != b'=') {
        bits = (bits << 6) | ALPHABET.iter().position(|a| *a == byte).expect("base64") as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}
