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
    nats::StreamKind,
    settings::ExposeSecret,
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
        let orgs = orgs.iter().map(|&org| org.to_owned()).collect();
        Signer::load(&self.key).unwrap().mint(sub, role, orgs, HOUR).unwrap()
    }

    /// A token of the right shape signed with another key.
    fn forged() -> String {
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

#[derive(Clone)]
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
        let lead_id = uuid::Uuid::now_v7().to_string();
        let caller = Caller {
            token: token.map(str::to_owned),
            org_id: org.to_owned(),
            follow_up_id: lead_id.clone(),
            lead_id,
            due_at: Some(prost_types::Timestamp { seconds: 1_900_000_000, nanos: 0 }),
        };
        let mut answers = Vec::new();
        for rpc in a_request_to_every_rpc(&caller) {
            let name = rpc.name();
            let code = self.send(&caller, rpc).await.map_or_else(|status| status.code(), |()| Code::Ok);
            answers.push((name, code));
        }
        answers
    }

    /// Sends `rpc` as `caller`; the response itself is dropped.
    async fn send(&self, caller: &Caller, rpc: Rpc) -> Result<(), Status> {
        fn answered<T>(result: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
            result.map(|_| ())
        }
        let Self { mut lead, mut ingest, mut broadcast, mut assignment, mut follow_up, mut qualification } =
            self.clone();
        match rpc {
            Rpc::GetLead(r) => answered(lead.get_lead(caller.request(r)).await),
            Rpc::ListLeads(r) => answered(lead.list_leads(caller.request(r)).await),
            Rpc::ChangeStatus(r) => answered(lead.change_status(caller.request(r)).await),
            Rpc::BulkChangeStatus(r) => answered(lead.bulk_change_status(caller.request(r)).await),
            Rpc::ExportLeads(r) => answered(lead.export_leads(caller.request(r)).await),
            Rpc::GetLeadHistory(r) => answered(lead.get_lead_history(caller.request(r)).await),
            Rpc::AssignLeads(r) => answered(lead.assign_leads(caller.request(r)).await),
            Rpc::OpenFollowUp(r) => answered(lead.open_follow_up(caller.request(r)).await),
            Rpc::Ingest(r) => answered(ingest.ingest(caller.request(r)).await),
            Rpc::ListRejections(r) => answered(ingest.list_rejections(caller.request(r)).await),
            Rpc::GetBroadcastHistory(r) => answered(broadcast.get_broadcast_history(caller.request(r)).await),
            Rpc::GetCampaignStats(r) => answered(broadcast.get_campaign_stats(caller.request(r)).await),
            Rpc::UpsertAgent(r) => answered(assignment.upsert_agent(caller.request(r)).await),
            Rpc::ListAgents(r) => answered(assignment.list_agents(caller.request(r)).await),
            Rpc::AssignLead(r) => answered(assignment.assign_lead(caller.request(r)).await),
            Rpc::BulkAssign(r) => answered(assignment.bulk_assign(caller.request(r)).await),
            Rpc::GetAssignmentHistory(r) => answered(assignment.get_assignment_history(caller.request(r)).await),
            Rpc::CreateFollowUp(r) => answered(follow_up.create_follow_up(caller.request(r)).await),
            Rpc::ListFollowUps(r) => answered(follow_up.list_follow_ups(caller.request(r)).await),
            Rpc::CompleteFollowUp(r) => answered(follow_up.complete_follow_up(caller.request(r)).await),
            Rpc::CancelFollowUp(r) => answered(follow_up.cancel_follow_up(caller.request(r)).await),
            Rpc::GetQualification(r) => answered(qualification.get_qualification(caller.request(r)).await),
            Rpc::Requalify(r) => answered(qualification.requalify(caller.request(r)).await),
            Rpc::GetModel(r) => answered(qualification.get_model(caller.request(r)).await),
            Rpc::TrainModel(r) => answered(qualification.train_model(caller.request(r)).await),
        }
    }
}

/// A request to one RPC of one of the six services.
enum Rpc {
    GetLead(pb::GetLeadRequest),
    ListLeads(pb::ListLeadsRequest),
    ChangeStatus(pb::ChangeStatusRequest),
    BulkChangeStatus(pb::BulkChangeStatusRequest),
    ExportLeads(pb::ExportLeadsRequest),
    GetLeadHistory(pb::GetLeadHistoryRequest),
    AssignLeads(pb::AssignLeadsRequest),
    OpenFollowUp(pb::OpenFollowUpRequest),
    Ingest(pb::IngestRequest),
    ListRejections(pb::ListRejectionsRequest),
    GetBroadcastHistory(pb::GetBroadcastHistoryRequest),
    GetCampaignStats(pb::GetCampaignStatsRequest),
    UpsertAgent(pb::UpsertAgentRequest),
    ListAgents(pb::ListAgentsRequest),
    AssignLead(pb::AssignLeadRequest),
    BulkAssign(pb::BulkAssignRequest),
    GetAssignmentHistory(pb::GetAssignmentHistoryRequest),
    CreateFollowUp(pb::CreateFollowUpRequest),
    ListFollowUps(pb::ListFollowUpsRequest),
    CompleteFollowUp(pb::FollowUpActionRequest),
    CancelFollowUp(pb::FollowUpActionRequest),
    GetQualification(pb::GetQualificationRequest),
    Requalify(pb::RequalifyRequest),
    GetModel(pb::GetModelRequest),
    TrainModel(pb::TrainModelRequest),
}

impl Rpc {
    fn name(&self) -> &'static str {
        match self {
            Rpc::GetLead(_) => "LeadService/GetLead",
            Rpc::ListLeads(_) => "LeadService/ListLeads",
            Rpc::ChangeStatus(_) => "LeadService/ChangeStatus",
            Rpc::BulkChangeStatus(_) => "LeadService/BulkChangeStatus",
            Rpc::ExportLeads(_) => "LeadService/ExportLeads",
            Rpc::GetLeadHistory(_) => "LeadService/GetLeadHistory",
            Rpc::AssignLeads(_) => "LeadService/AssignLeads",
            Rpc::OpenFollowUp(_) => "LeadService/OpenFollowUp",
            Rpc::Ingest(_) => "IngestService/Ingest",
            Rpc::ListRejections(_) => "IngestService/ListRejections",
            Rpc::GetBroadcastHistory(_) => "BroadcastTrackingService/GetBroadcastHistory",
            Rpc::GetCampaignStats(_) => "BroadcastTrackingService/GetCampaignStats",
            Rpc::UpsertAgent(_) => "AssignmentService/UpsertAgent",
            Rpc::ListAgents(_) => "AssignmentService/ListAgents",
            Rpc::AssignLead(_) => "AssignmentService/AssignLead",
            Rpc::BulkAssign(_) => "AssignmentService/BulkAssign",
            Rpc::GetAssignmentHistory(_) => "AssignmentService/GetAssignmentHistory",
            Rpc::CreateFollowUp(_) => "FollowUpService/CreateFollowUp",
            Rpc::ListFollowUps(_) => "FollowUpService/ListFollowUps",
            Rpc::CompleteFollowUp(_) => "FollowUpService/CompleteFollowUp",
            Rpc::CancelFollowUp(_) => "FollowUpService/CancelFollowUp",
            Rpc::GetQualification(_) => "QualificationService/GetQualification",
            Rpc::Requalify(_) => "QualificationService/Requalify",
            Rpc::GetModel(_) => "QualificationService/GetModel",
            Rpc::TrainModel(_) => "QualificationService/TrainModel",
        }
    }
}

/// Who calls and about what: the token sent (if any), the organisation, a lead and a
/// follow-up; the requests below start from these.
#[derive(Clone)]
struct Caller {
    token: Option<String>,
    org_id: String,
    lead_id: String,
    follow_up_id: String,
    due_at: Option<prost_types::Timestamp>,
}

impl Caller {
    fn request<T>(&self, message: T) -> Request<T> {
        with(self.token.as_deref(), message)
    }

    fn change_status(&self) -> pb::ChangeStatusRequest {
        pb::ChangeStatusRequest {
            org_id: self.org_id.clone(),
            lead_id: self.lead_id.clone(),
            status: pb::LeadStatus::Qualified as i32,
            ..Default::default()
        }
    }

    fn bulk_change_status(&self) -> pb::BulkChangeStatusRequest {
        pb::BulkChangeStatusRequest {
            org_id: self.org_id.clone(),
            lead_ids: vec![self.lead_id.clone()],
            status: pb::LeadStatus::Qualified as i32,
            ..Default::default()
        }
    }

    fn list_leads(&self) -> pb::ListLeadsRequest {
        pb::ListLeadsRequest { org_id: self.org_id.clone(), ..Default::default() }
    }

    fn get_lead_history(&self) -> pb::GetLeadHistoryRequest {
        pb::GetLeadHistoryRequest { org_id: self.org_id.clone(), lead_id: self.lead_id.clone(), ..Default::default() }
    }

    fn upsert_agent(&self) -> pb::UpsertAgentRequest {
        pb::UpsertAgentRequest {
            org_id: self.org_id.clone(),
            agent_id: "ann".into(),
            name: "Ann".into(),
            active: Some(true),
            ..Default::default()
        }
    }

    fn assign_lead(&self) -> pb::AssignLeadRequest {
        pb::AssignLeadRequest {
            org_id: self.org_id.clone(),
            lead_id: self.lead_id.clone(),
            agent_id: "ann".into(),
            ..Default::default()
        }
    }

    fn bulk_assign(&self) -> pb::BulkAssignRequest {
        pb::BulkAssignRequest {
            org_id: self.org_id.clone(),
            lead_ids: vec![self.lead_id.clone()],
            agent_id: "ann".into(),
            ..Default::default()
        }
    }

    fn create_follow_up(&self) -> pb::CreateFollowUpRequest {
        pb::CreateFollowUpRequest {
            org_id: self.org_id.clone(),
            lead_id: self.lead_id.clone(),
            due_at: self.due_at,
            ..Default::default()
        }
    }

    fn follow_up_action(&self) -> pb::FollowUpActionRequest {
        pb::FollowUpActionRequest {
            org_id: self.org_id.clone(),
            follow_up_id: self.follow_up_id.clone(),
            ..Default::default()
        }
    }

    fn broadcast_history(&self) -> pb::GetBroadcastHistoryRequest {
        pb::GetBroadcastHistoryRequest {
            org_id: self.org_id.clone(),
            target: Some(pb::get_broadcast_history_request::Target::LeadId(self.lead_id.clone())),
            ..Default::default()
        }
    }
}

/// One request to each of the 25 RPCs, about `at`'s organisation and lead.
fn a_request_to_every_rpc(at: &Caller) -> Vec<Rpc> {
    let (org_id, lead_id) = (at.org_id.clone(), at.lead_id.clone());
    vec![
        Rpc::GetLead(pb::GetLeadRequest { org_id: org_id.clone(), lead_id: lead_id.clone() }),
        Rpc::ListLeads(at.list_leads()),
        Rpc::ChangeStatus(at.change_status()),
        Rpc::BulkChangeStatus(pb::BulkChangeStatusRequest {
            status: pb::LeadStatus::Lost as i32,
            ..at.bulk_change_status()
        }),
        Rpc::ExportLeads(pb::ExportLeadsRequest { query: Some(at.list_leads()), scope: pb::ExportScope::All as i32 }),
        Rpc::GetLeadHistory(at.get_lead_history()),
        Rpc::AssignLeads(pb::AssignLeadsRequest {
            org_id: org_id.clone(),
            lead_ids: vec![lead_id.clone()],
            agent_id: "ann".into(),
            ..Default::default()
        }),
        Rpc::OpenFollowUp(pb::OpenFollowUpRequest {
            org_id: org_id.clone(),
            lead_id: lead_id.clone(),
            follow_up_id: uuid::Uuid::now_v7().to_string(),
            due_at: at.due_at,
            ..Default::default()
        }),
        Rpc::Ingest(pb::IngestRequest {
            org_id: org_id.clone(),
            events: vec![pb::InteractionEvent { event_id: "e".into(), ..Default::default() }],
        }),
        Rpc::ListRejections(pb::ListRejectionsRequest { org_id: org_id.clone(), ..Default::default() }),
        Rpc::GetBroadcastHistory(at.broadcast_history()),
        Rpc::GetCampaignStats(pb::GetCampaignStatsRequest { org_id: org_id.clone(), campaign_id: "c".into() }),
        Rpc::UpsertAgent(at.upsert_agent()),
        Rpc::ListAgents(pb::ListAgentsRequest { org_id: org_id.clone(), ..Default::default() }),
        Rpc::AssignLead(at.assign_lead()),
        Rpc::BulkAssign(at.bulk_assign()),
        Rpc::GetAssignmentHistory(pb::GetAssignmentHistoryRequest { org_id: org_id.clone(), lead_id: lead_id.clone() }),
        Rpc::CreateFollowUp(at.create_follow_up()),
        Rpc::ListFollowUps(pb::ListFollowUpsRequest { org_id: org_id.clone(), ..Default::default() }),
        Rpc::CompleteFollowUp(at.follow_up_action()),
        Rpc::CancelFollowUp(at.follow_up_action()),
        Rpc::GetQualification(pb::GetQualificationRequest { org_id: org_id.clone(), lead_id: lead_id.clone() }),
        Rpc::Requalify(pb::RequalifyRequest { org_id: org_id.clone(), lead_id }),
        Rpc::GetModel(pb::GetModelRequest { org_id: org_id.clone() }),
        Rpc::TrainModel(pb::TrainModelRequest { org_id }),
    ]
}

/// A bounded field of one RPC.
struct FieldLimit {
    /// The field as the refusal names it.
    field: &'static str,
    /// The most characters the field takes.
    limit: usize,
    /// The RPC's request as `Caller` makes it, with the field set to the given value.
    request: fn(&Caller, String) -> Rpc,
}

/// Every bounded free-text and id field of the API: adding a limit is adding a row.
const FIELD_LIMITS: &[FieldLimit] = &[
    FieldLimit {
        field: "reason",
        limit: 2000,
        request: |at, value| Rpc::ChangeStatus(pb::ChangeStatusRequest { reason: value, ..at.change_status() }),
    },
    FieldLimit {
        field: "actor",
        limit: 200,
        request: |at, value| Rpc::ChangeStatus(pb::ChangeStatusRequest { actor: value, ..at.change_status() }),
    },
    FieldLimit {
        field: "reason",
        limit: 2000,
        request: |at, value| {
            Rpc::BulkChangeStatus(pb::BulkChangeStatusRequest { reason: value, ..at.bulk_change_status() })
        },
    },
    FieldLimit {
        field: "actor",
        limit: 200,
        request: |at, value| {
            Rpc::BulkChangeStatus(pb::BulkChangeStatusRequest { actor: value, ..at.bulk_change_status() })
        },
    },
    FieldLimit {
        field: "lead_ids[1]",
        limit: 64,
        request: |at, value| {
            Rpc::BulkChangeStatus(pb::BulkChangeStatusRequest {
                lead_ids: vec![at.lead_id.clone(), value],
                ..at.bulk_change_status()
            })
        },
    },
    FieldLimit {
        field: "lead_id",
        limit: 64,
        request: |at, value| Rpc::GetLead(pb::GetLeadRequest { org_id: at.org_id.clone(), lead_id: value }),
    },
    FieldLimit {
        field: "filter.campaign_id",
        limit: 256,
        request: |at, value| {
            let filter = pb::LeadFilter { campaign_id: value, ..Default::default() };
            Rpc::ListLeads(pb::ListLeadsRequest { filter: Some(filter), ..at.list_leads() })
        },
    },
    FieldLimit {
        field: "filter.integration_name",
        limit: 256,
        request: |at, value| {
            let filter = pb::LeadFilter { integration_name: value, ..Default::default() };
            Rpc::ListLeads(pb::ListLeadsRequest { filter: Some(filter), ..at.list_leads() })
        },
    },
    FieldLimit {
        field: "filter.agent_ids[0]",
        limit: 128,
        request: |at, value| {
            let filter = pb::LeadFilter { agent_ids: vec![value], ..Default::default() };
            Rpc::ListLeads(pb::ListLeadsRequest { filter: Some(filter), ..at.list_leads() })
        },
    },
    FieldLimit {
        field: "page_token",
        limit: 1024,
        request: |at, value| {
            Rpc::GetLeadHistory(pb::GetLeadHistoryRequest { page_token: value, ..at.get_lead_history() })
        },
    },
    FieldLimit {
        field: "reason",
        limit: 2000,
        request: |at, value| Rpc::AssignLead(pb::AssignLeadRequest { reason: value, ..at.assign_lead() }),
    },
    FieldLimit {
        field: "actor",
        limit: 200,
        request: |at, value| Rpc::AssignLead(pb::AssignLeadRequest { actor: value, ..at.assign_lead() }),
    },
    FieldLimit {
        field: "agent_id",
        limit: 128,
        request: |at, value| Rpc::AssignLead(pb::AssignLeadRequest { agent_id: value, ..at.assign_lead() }),
    },
    FieldLimit {
        field: "reason",
        limit: 2000,
        request: |at, value| Rpc::BulkAssign(pb::BulkAssignRequest { reason: value, ..at.bulk_assign() }),
    },
    FieldLimit {
        field: "actor",
        limit: 200,
        request: |at, value| Rpc::BulkAssign(pb::BulkAssignRequest { actor: value, ..at.bulk_assign() }),
    },
    FieldLimit {
        field: "lead_ids[0]",
        limit: 64,
        request: |at, value| Rpc::BulkAssign(pb::BulkAssignRequest { lead_ids: vec![value], ..at.bulk_assign() }),
    },
    FieldLimit {
        field: "lead_id",
        limit: 64,
        request: |at, value| {
            Rpc::GetAssignmentHistory(pb::GetAssignmentHistoryRequest { org_id: at.org_id.clone(), lead_id: value })
        },
    },
    FieldLimit {
        field: "actor",
        limit: 200,
        request: |at, value| Rpc::CreateFollowUp(pb::CreateFollowUpRequest { actor: value, ..at.create_follow_up() }),
    },
    FieldLimit {
        field: "request_id",
        limit: 256,
        request: |at, value| {
            Rpc::CreateFollowUp(pb::CreateFollowUpRequest { request_id: value, ..at.create_follow_up() })
        },
    },
    FieldLimit {
        field: "actor",
        limit: 200,
        request: |at, value| Rpc::CompleteFollowUp(pb::FollowUpActionRequest { actor: value, ..at.follow_up_action() }),
    },
    FieldLimit {
        field: "follow_up_id",
        limit: 64,
        request: |at, value| {
            Rpc::CancelFollowUp(pb::FollowUpActionRequest { follow_up_id: value, ..at.follow_up_action() })
        },
    },
    FieldLimit {
        field: "lead_id",
        limit: 64,
        request: |at, value| {
            Rpc::ListFollowUps(pb::ListFollowUpsRequest {
                org_id: at.org_id.clone(),
                lead_id: value,
                ..Default::default()
            })
        },
    },
    FieldLimit {
        field: "campaign_id",
        limit: 256,
        request: |at, value| {
            Rpc::GetCampaignStats(pb::GetCampaignStatsRequest { org_id: at.org_id.clone(), campaign_id: value })
        },
    },
    FieldLimit {
        field: "page_token",
        limit: 1024,
        request: |at, value| {
            Rpc::GetBroadcastHistory(pb::GetBroadcastHistoryRequest { page_token: value, ..at.broadcast_history() })
        },
    },
    FieldLimit {
        field: "page_token",
        limit: 1024,
        request: |at, value| {
            Rpc::ListRejections(pb::ListRejectionsRequest {
                org_id: at.org_id.clone(),
                page_token: value,
                ..Default::default()
            })
        },
    },
    FieldLimit {
        field: "lead_id",
        limit: 64,
        request: |at, value| {
            Rpc::GetQualification(pb::GetQualificationRequest { org_id: at.org_id.clone(), lead_id: value })
        },
    },
];

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
    let forged = Keys::forged();
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
    let found = one_lead(&env, &clients.lead, &alice, "=HYPERLINK(\"http://evil\",\"Ada\")").await?;
    let caller = Caller {
        token: Some(alice),
        org_id: ORG.into(),
        lead_id: found.id,
        follow_up_id: String::new(),
        due_at: Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 86_400, nanos: 0 }),
    };

    let follow_up_id = the_token_subject_is_recorded_as_the_actor(&clients, &caller).await?;
    let caller = Caller { follow_up_id, ..caller };
    every_bounded_field_is_refused_past_its_limit_naming_itself(&clients, &caller).await;
    fields_at_their_limit_pass(&clients, &caller).await?;
    the_export_opens_in_a_spreadsheet_as_text(&clients, &caller).await?;

    node.stop().await?;
    env.cleanup().await
}

/// Whatever the request says, the token's subject is recorded; the request's actor only adds
/// a name. Answers the follow-up it created (and cancelled).
async fn the_token_subject_is_recorded_as_the_actor(clients: &Clients, at: &Caller) -> anyhow::Result<String> {
    let (mut lead, mut assignment, mut follow_up) =
        (clients.lead.clone(), clients.assignment.clone(), clients.follow_up.clone());
    lead.change_status(at.request(pb::ChangeStatusRequest {
        status: pb::LeadStatus::Qualifying as i32,
        actor: "bob".into(),
        reason: "asked for prices".into(),
        ..at.change_status()
    }))
    .await?;
    assignment.upsert_agent(at.request(at.upsert_agent())).await?;
    let assigned = assignment
        .assign_lead(at.request(pb::AssignLeadRequest { actor: "Alice Smith".into(), ..at.assign_lead() }))
        .await?
        .into_inner();
    assert_eq!(assigned.actor, "alice (Alice Smith)");
    let created = follow_up
        .create_follow_up(at.request(pb::CreateFollowUpRequest { actor: "root".into(), ..at.create_follow_up() }))
        .await?
        .into_inner();
    assert_eq!(created.created_by, "alice (root)");
    let cancelled = follow_up
        .cancel_follow_up(at.request(pb::FollowUpActionRequest {
            org_id: at.org_id.clone(),
            follow_up_id: created.id.clone(),
            actor: String::new(),
        }))
        .await?
        .into_inner();
    assert_eq!(cancelled.closed_by, "alice");
    let history = lead.get_lead_history(at.request(at.get_lead_history())).await?.into_inner();
    let actors: Vec<&str> = history
        .entries
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "status_changed" | "assignment" | "follow_up"))
        .map(|e| e.actor.as_str())
        .collect();
    assert!(actors.contains(&"alice (bob)"), "{actors:?}");
    assert!(actors.contains(&"alice (Alice Smith)"), "{actors:?}");
    assert!(actors.iter().all(|a| a.starts_with("alice")), "{actors:?}");
    Ok(created.id)
}

/// Each row of `FIELD_LIMITS`, one character over: `INVALID_ARGUMENT`, naming the field.
async fn every_bounded_field_is_refused_past_its_limit_naming_itself(clients: &Clients, at: &Caller) {
    for FieldLimit { field, limit, request } in FIELD_LIMITS {
        let rpc = request(at, "x".repeat(limit + 1));
        let name = rpc.name();
        let Err(status) = clients.send(at, rpc).await else {
            panic!("{name}: {field} of {} characters was accepted", limit + 1);
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{name} {field}: {status:?}");
        assert!(status.message().contains(field), "{name} {field}: {}", status.message());
    }
}

/// A status change whose reason and actor are exactly at their limits is accepted.
async fn fields_at_their_limit_pass(clients: &Clients, at: &Caller) -> anyhow::Result<()> {
    let at_limit = pb::ChangeStatusRequest { reason: "x".repeat(2000), actor: "x".repeat(200), ..at.change_status() };
    clients.lead.clone().change_status(at.request(at_limit)).await?;
    Ok(())
}

/// The export's cells that a spreadsheet would run as formulas are quoted as text.
async fn the_export_opens_in_a_spreadsheet_as_text(clients: &Clients, at: &Caller) -> anyhow::Result<()> {
    let mut stream = clients
        .lead
        .clone()
        .export_leads(
            at.request(pb::ExportLeadsRequest { query: Some(at.list_leads()), scope: pb::ExportScope::All as i32 }),
        )
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
    Ok(())
}

/// A private nats-server on a free port running the shipped configuration
/// (deploy/nats/nats-server.conf), with a publisher user for each of `orgs` made from its
/// template; every password is `pw-<user>`.
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
            .map(platform::ServiceName::as_str)
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
            password: Some(format!("pw-{user}").into()),
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
    settings.database.passwords.insert("ingest".into(), password.clone().into());
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
    let role_url =
        env.settings.database_url.expose_secret().replacen("postgres@", &format!("leads_ingest:{password}@"), 1);
    assert_ne!(role_url, env.settings.database_url.expose_secret());
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

/// Ingest and lead on the shipped NATS configuration, each in a process of its own that
/// connects as its own NATS user, as deployed.
struct ShippedPlatform {
    nats: ShippedNats,
    /// The services' environment: the shared Postgres, the private nats-server without a
    /// subject prefix, and the operators' NATS user for the test's own look-ups.
    env: TestEnv,
    /// The environment made on the shared servers, whose database the services use; cleaned
    /// up at the end.
    shared: TestEnv,
    processes: Vec<leads_tests::Process>,
    lead: LeadServiceClient<Channel>,
}

impl ShippedPlatform {
    async fn start(orgs: &[&str]) -> anyhow::Result<Self> {
        let nats = ShippedNats::start(orgs).await?;
        let shared = TestEnv::new().await?;
        let (admin, _) = nats.client("leads-admin").await?;
        let mut settings = shared.settings.clone();
        settings.nats_url.clone_from(&nats.url);
        settings.subject_prefix = String::new();
        let env = TestEnv {
            settings,
            database: shared.database.clone(),
            subjects: platform::nats::Subjects::default(),
            js: async_nats::jetstream::new(admin.clone()),
            nats: admin,
        };
        let lead_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut processes = Vec::new();
        for service in [ServiceName::Ingest, ServiceName::Lead] {
            let user = format!("leads-{service}");
            let mut settings = vec![("LEADS_NATS_PASSWORD", format!("pw-{user}")), ("LEADS_NATS_USER", user)];
            if service == ServiceName::Lead {
                settings.push(("LEADS_GRPC_LEAD_PORT", lead_port.to_string()));
            }
            processes.push(leads_tests::Process::spawn(&env, service.as_str(), &settings)?);
        }
        for process in &mut processes {
            process.ready().await?;
        }
        let channel = Channel::from_shared(format!("http://127.0.0.1:{lead_port}"))?.connect().await?;
        Ok(Self { nats, env, shared, processes, lead: LeadServiceClient::new(channel) })
    }

    /// `org`'s leads once there are `count` of them.
    async fn leads(&self, org: &str, count: usize) -> Vec<pb::Lead> {
        eventually(Duration::from_secs(60), &format!("{count} lead(s) of {org}"), || {
            let mut lead = self.lead.clone();
            async move { leads_tests::all_leads(&mut lead, org).await.ok().filter(|leads| leads.len() == count) }
        })
        .await
    }

    /// Waits until `durable` has acked every message its stream holds.
    async fn drained(&self, stream: StreamKind, durable: &str) {
        let name = self.env.subjects.stream_name(stream);
        eventually(Duration::from_secs(60), &format!("{durable} to ack all of {name}"), || {
            let (js, name) = (self.env.js.clone(), name.clone());
            async move {
                let mut stream = js.get_stream(&name).await.ok()?;
                let last = stream.info().await.ok()?.state.last_sequence;
                let consumer = stream.consumer_info(durable).await.ok()?;
                (consumer.ack_floor.stream_sequence >= last && consumer.num_ack_pending == 0).then_some(())
            }
        })
        .await;
    }

    async fn stop(self) -> anyhow::Result<()> {
        for process in self.processes {
            let status = process.terminate().await?;
            assert!(status.success(), "{status:?}");
        }
        self.shared.cleanup().await
    }
}

/// Publishes `event` as `org`'s publisher does, with the Msg-Id `msg_id`.
async fn publish_as(
    publisher: &async_nats::Client,
    org: &str,
    msg_id: &str,
    event: &serde_json::Value,
) -> anyhow::Result<async_nats::jetstream::publish::PublishAck> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let subject = platform::nats::Subjects::default().interactions(org);
    let js = async_nats::jetstream::new(publisher.clone());
    Ok(js.publish_with_headers(subject, headers, serde_json::to_vec(event)?.into()).await?.await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_reads_no_other_connections_inbox() -> anyhow::Result<()> {
    let platform = ShippedPlatform::start(&[ORG, OTHER]).await?;
    let (acme, errors) = platform.nats.client("publisher-acme").await?;
    let mut spies = Vec::new();
    for subject in ["_INBOX.>", ">", "_INBOX.leads-ingest.>", "_INBOX.leads-lead.>", "_INBOX.publisher-globex.>"] {
        spies.push((subject, acme.subscribe(subject).await?));
        let refusal = format!("Permissions Violation for Subscription to \"{subject}\"");
        eventually(Duration::from_secs(5), &refusal, || {
            let (errors, refusal) = (errors.clone(), refusal.clone());
            async move { errors.lock().unwrap().iter().any(|e| e.contains(&refusal)).then_some(()) }
        })
        .await;
    }

    // Both organisations' events go through ingest's and lead's pulls while acme listens; each
    // publisher's acks reach it under its own prefix.
    let (globex, _) = platform.nats.client("publisher-globex").await?;
    publish_as(&globex, OTHER, "globex:evt-1", &chat_event("evt-1", &phone(1), "a private question")).await?;
    publish_as(&acme, ORG, "acme:evt-1", &chat_event("evt-1", &phone(2), "hello")).await?;
    platform.leads(OTHER, 1).await;
    platform.leads(ORG, 1).await;
    platform.drained(StreamKind::Interactions, "ingest").await;
    platform.drained(StreamKind::Events("ingest"), "lead-interactions").await;

    acme.flush().await?;
    for (subject, mut spy) in spies {
        let received = tokio::time::timeout(Duration::from_millis(200), futures::StreamExt::next(&mut spy)).await;
        assert!(!matches!(received, Ok(Some(_))), "{subject} received {received:?}");
    }
    platform.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_cannot_suppress_another_organisations_event_by_its_msg_id() -> anyhow::Result<()> {
    let platform = ShippedPlatform::start(&[ORG, OTHER]).await?;
    let (acme, _) = platform.nats.client("publisher-acme").await?;
    let (globex, _) = platform.nats.client("publisher-globex").await?;
    let interactions = platform.env.subjects.stream_name(StreamKind::Interactions);
    let window = platform.env.js.get_stream(&interactions).await?.info().await?.config.duplicate_window;
    assert_eq!(window, platform::nats::INPUT_DUPLICATE_WINDOW);

    // acme sends globex's Msg-Id ahead of globex, on its own subject.
    let forged = publish_as(&acme, ORG, "globex:evt-123", &chat_event("evt-123", &phone(1), "forged")).await?;
    let forged_at = std::time::Instant::now();
    assert!(!forged.duplicate);
    let acme_leads = platform.leads(ORG, 1).await;
    // The stream still drops an id it saw less than its window ago: that much is left to an
    // attacker who knows an id in advance (docs/security.md).
    eventually(Duration::from_secs(5), "the forged id to leave the duplicate window", || async move {
        (forged_at.elapsed() > window).then_some(())
    })
    .await;

    let real = chat_event("evt-123", &phone(2), "the real question");
    let first = publish_as(&globex, OTHER, "globex:evt-123", &real).await?;
    assert!(!first.duplicate, "globex's event was dropped as acme's duplicate");
    let first_at = std::time::Instant::now();
    publish_as(&globex, OTHER, "globex:evt-123", &real).await?;
    eventually(Duration::from_secs(5), "the first send to leave the duplicate window", || async move {
        (first_at.elapsed() > window).then_some(())
    })
    .await;
    let resent = publish_as(&globex, OTHER, "globex:evt-123", &real).await?;
    assert!(!resent.duplicate, "a send after the window reaches the stream");

    let globex_leads = platform.leads(OTHER, 1).await;
    platform.drained(StreamKind::Interactions, "ingest").await;
    platform.drained(StreamKind::Events("ingest"), "lead-interactions").await;
    let globex_leads_after = platform.leads(OTHER, 1).await;
    assert_eq!(globex_leads_after[0].id, globex_leads[0].id);
    assert_eq!(globex_leads_after[0].interaction_count, 1, "globex's event applied once");
    assert_eq!(globex_leads_after[0].last_message_preview, "the real question");
    let acme_leads_after = platform.leads(ORG, 1).await;
    assert_eq!(acme_leads_after[0].id, acme_leads[0].id);
    assert_eq!(acme_leads_after[0].interaction_count, 1);
    assert_eq!(acme_leads_after[0].last_message_preview, "forged");
    platform.stop().await
}
