//! Security against real services: the role matrix cell by cell, every RPC confined to the
//! token's organisations, no call without a valid token, an agent confined to its own leads,
//! the recorded actor taken from the token, every free-text field bounded, exports safe to
//! open in a spreadsheet, no service without keys unless told.

use leads_proto::v1::{
    assignment_service_client::AssignmentServiceClient,
    broadcast_tracking_service_client::BroadcastTrackingServiceClient, follow_up_service_client::FollowUpServiceClient,
    ingest_service_client::IngestServiceClient, lead_service_client::LeadServiceClient,
    notification_service_client::NotificationServiceClient, qualification_service_client::QualificationServiceClient,
};
use leads_tests::{
    Node, TestEnv, chat_event, eventually,
    keys::{Keys, with},
    pb, phone,
};
use platform::{
    ServiceName,
    auth::{Role, Signer},
    settings::ExposeSecret,
};
use std::time::Duration;
use tonic::{Code, Request, Status, transport::Channel};

const ORG: &str = "acme";
const OTHER: &str = "globex";
const HOUR: Duration = Duration::from_secs(3600);

/// An environment whose services verify tokens with `keys` and sign their own with it.
async fn secured_env(keys: &Keys) -> anyhow::Result<TestEnv> {
    let mut env = TestEnv::new().await?;
    keys.secure(&mut env);
    env.settings.validate()?;
    Ok(env)
}

#[derive(Clone)]
struct Clients {
    lead: LeadServiceClient<Channel>,
    ingest: IngestServiceClient<Channel>,
    broadcast: BroadcastTrackingServiceClient<Channel>,
    assignment: AssignmentServiceClient<Channel>,
    follow_up: FollowUpServiceClient<Channel>,
    qualification: QualificationServiceClient<Channel>,
    notifications: NotificationServiceClient<Channel>,
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
            notifications: node.notifications().await?,
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
        let Self {
            mut lead,
            mut ingest,
            mut broadcast,
            mut assignment,
            mut follow_up,
            mut qualification,
            mut notifications,
        } = self.clone();
        match rpc {
            Rpc::GetLead(r) => answered(lead.get_lead(caller.request(r)).await),
            Rpc::ListLeads(r) => answered(lead.list_leads(caller.request(r)).await),
            Rpc::ChangeStatus(r) => answered(lead.change_status(caller.request(r)).await),
            Rpc::BulkChangeStatus(r) => answered(lead.bulk_change_status(caller.request(r)).await),
            Rpc::ExportLeads(r) => answered(lead.export_leads(caller.request(r)).await),
            Rpc::GetLeadHistory(r) => answered(lead.get_lead_history(caller.request(r)).await),
            // A stream is answered once its headers arrive (a watch with no change to send would
            // otherwise hold the matrix up); a refusal comes as its status instead.
            Rpc::WatchLeads(r) => answered(lead.watch_leads(caller.request(r)).await),
            Rpc::AssignLeads(r) => answered(lead.assign_leads(caller.request(r)).await),
            Rpc::OpenFollowUp(r) => answered(lead.open_follow_up(caller.request(r)).await),
            Rpc::GetLeadSettings(r) => answered(lead.get_lead_settings(caller.request(r)).await),
            Rpc::UpdateLeadSettings(r) => answered(lead.update_lead_settings(caller.request(r)).await),
            Rpc::Ingest(r) => answered(ingest.ingest(caller.request(r)).await),
            Rpc::ListRejections(r) => answered(ingest.list_rejections(caller.request(r)).await),
            Rpc::GetBroadcastHistory(r) => answered(broadcast.get_broadcast_history(caller.request(r)).await),
            Rpc::GetCampaignStats(r) => answered(broadcast.get_campaign_stats(caller.request(r)).await),
            Rpc::ListCampaigns(r) => answered(broadcast.list_campaigns(caller.request(r)).await),
            Rpc::UpsertAgent(r) => answered(assignment.upsert_agent(caller.request(r)).await),
            Rpc::ListAgents(r) => answered(assignment.list_agents(caller.request(r)).await),
            Rpc::GetAgent(r) => answered(assignment.get_agent(caller.request(r)).await),
            Rpc::AssignLead(r) => answered(assignment.assign_lead(caller.request(r)).await),
            Rpc::BulkAssign(r) => answered(assignment.bulk_assign(caller.request(r)).await),
            Rpc::GetAssignmentHistory(r) => answered(assignment.get_assignment_history(caller.request(r)).await),
            Rpc::GetAssignmentSettings(r) => answered(assignment.get_assignment_settings(caller.request(r)).await),
            Rpc::UpdateAssignmentSettings(r) => {
                answered(assignment.update_assignment_settings(caller.request(r)).await)
            }
            Rpc::SetPresence(r) => answered(assignment.set_presence(caller.request(r)).await),
            Rpc::ListWaitingLeads(r) => answered(assignment.list_waiting_leads(caller.request(r)).await),
            Rpc::CreateFollowUp(r) => answered(follow_up.create_follow_up(caller.request(r)).await),
            Rpc::ListFollowUps(r) => answered(follow_up.list_follow_ups(caller.request(r)).await),
            Rpc::CompleteFollowUp(r) => answered(follow_up.complete_follow_up(caller.request(r)).await),
            Rpc::CancelFollowUp(r) => answered(follow_up.cancel_follow_up(caller.request(r)).await),
            Rpc::UpdateFollowUp(r) => answered(follow_up.update_follow_up(caller.request(r)).await),
            Rpc::GetQualification(r) => answered(qualification.get_qualification(caller.request(r)).await),
            Rpc::Requalify(r) => answered(qualification.requalify(caller.request(r)).await),
            Rpc::GetModel(r) => answered(qualification.get_model(caller.request(r)).await),
            Rpc::TrainModel(r) => answered(qualification.train_model(caller.request(r)).await),
            Rpc::ListNotifications(r) => answered(notifications.list_notifications(caller.request(r)).await),
            Rpc::MarkNotificationsRead(r) => answered(notifications.mark_notifications_read(caller.request(r)).await),
            Rpc::GetNotificationSettings(r) => {
                answered(notifications.get_notification_settings(caller.request(r)).await)
            }
            Rpc::UpdateNotificationSettings(r) => {
                answered(notifications.update_notification_settings(caller.request(r)).await)
            }
            Rpc::CreateWebhookEndpoint(r) => answered(notifications.create_webhook_endpoint(caller.request(r)).await),
            Rpc::ListWebhookEndpoints(r) => answered(notifications.list_webhook_endpoints(caller.request(r)).await),
            Rpc::UpdateWebhookEndpoint(r) => answered(notifications.update_webhook_endpoint(caller.request(r)).await),
            Rpc::DeleteWebhookEndpoint(r) => answered(notifications.delete_webhook_endpoint(caller.request(r)).await),
            Rpc::RotateWebhookSecret(r) => answered(notifications.rotate_webhook_secret(caller.request(r)).await),
            Rpc::ListWebhookAttempts(r) => answered(notifications.list_webhook_attempts(caller.request(r)).await),
            Rpc::ReplayWebhooks(r) => answered(notifications.replay_webhooks(caller.request(r)).await),
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
    WatchLeads(pb::WatchLeadsRequest),
    AssignLeads(pb::AssignLeadsRequest),
    OpenFollowUp(pb::OpenFollowUpRequest),
    GetLeadSettings(pb::GetLeadSettingsRequest),
    UpdateLeadSettings(pb::UpdateLeadSettingsRequest),
    Ingest(pb::IngestRequest),
    ListRejections(pb::ListRejectionsRequest),
    GetBroadcastHistory(pb::GetBroadcastHistoryRequest),
    GetCampaignStats(pb::GetCampaignStatsRequest),
    ListCampaigns(pb::ListCampaignsRequest),
    UpsertAgent(pb::UpsertAgentRequest),
    ListAgents(pb::ListAgentsRequest),
    GetAgent(pb::GetAgentRequest),
    AssignLead(pb::AssignLeadRequest),
    BulkAssign(pb::BulkAssignRequest),
    GetAssignmentHistory(pb::GetAssignmentHistoryRequest),
    GetAssignmentSettings(pb::GetAssignmentSettingsRequest),
    UpdateAssignmentSettings(pb::UpdateAssignmentSettingsRequest),
    SetPresence(pb::SetPresenceRequest),
    ListWaitingLeads(pb::ListWaitingLeadsRequest),
    CreateFollowUp(pb::CreateFollowUpRequest),
    ListFollowUps(pb::ListFollowUpsRequest),
    CompleteFollowUp(pb::FollowUpActionRequest),
    CancelFollowUp(pb::FollowUpActionRequest),
    UpdateFollowUp(pb::UpdateFollowUpRequest),
    GetQualification(pb::GetQualificationRequest),
    Requalify(pb::RequalifyRequest),
    GetModel(pb::GetModelRequest),
    TrainModel(pb::TrainModelRequest),
    ListNotifications(pb::ListNotificationsRequest),
    MarkNotificationsRead(pb::MarkNotificationsReadRequest),
    GetNotificationSettings(pb::GetNotificationSettingsRequest),
    UpdateNotificationSettings(pb::UpdateNotificationSettingsRequest),
    CreateWebhookEndpoint(pb::CreateWebhookEndpointRequest),
    ListWebhookEndpoints(pb::ListWebhookEndpointsRequest),
    UpdateWebhookEndpoint(pb::UpdateWebhookEndpointRequest),
    DeleteWebhookEndpoint(pb::DeleteWebhookEndpointRequest),
    RotateWebhookSecret(pb::RotateWebhookSecretRequest),
    ListWebhookAttempts(pb::ListWebhookAttemptsRequest),
    ReplayWebhooks(pb::ReplayWebhooksRequest),
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
            Rpc::WatchLeads(_) => "LeadService/WatchLeads",
            Rpc::AssignLeads(_) => "LeadService/AssignLeads",
            Rpc::OpenFollowUp(_) => "LeadService/OpenFollowUp",
            Rpc::GetLeadSettings(_) => "LeadService/GetLeadSettings",
            Rpc::UpdateLeadSettings(_) => "LeadService/UpdateLeadSettings",
            Rpc::Ingest(_) => "IngestService/Ingest",
            Rpc::ListRejections(_) => "IngestService/ListRejections",
            Rpc::GetBroadcastHistory(_) => "BroadcastTrackingService/GetBroadcastHistory",
            Rpc::GetCampaignStats(_) => "BroadcastTrackingService/GetCampaignStats",
            Rpc::ListCampaigns(_) => "BroadcastTrackingService/ListCampaigns",
            Rpc::UpsertAgent(_) => "AssignmentService/UpsertAgent",
            Rpc::ListAgents(_) => "AssignmentService/ListAgents",
            Rpc::GetAgent(_) => "AssignmentService/GetAgent",
            Rpc::AssignLead(_) => "AssignmentService/AssignLead",
            Rpc::BulkAssign(_) => "AssignmentService/BulkAssign",
            Rpc::GetAssignmentHistory(_) => "AssignmentService/GetAssignmentHistory",
            Rpc::GetAssignmentSettings(_) => "AssignmentService/GetAssignmentSettings",
            Rpc::UpdateAssignmentSettings(_) => "AssignmentService/UpdateAssignmentSettings",
            Rpc::SetPresence(_) => "AssignmentService/SetPresence",
            Rpc::ListWaitingLeads(_) => "AssignmentService/ListWaitingLeads",
            Rpc::CreateFollowUp(_) => "FollowUpService/CreateFollowUp",
            Rpc::ListFollowUps(_) => "FollowUpService/ListFollowUps",
            Rpc::CompleteFollowUp(_) => "FollowUpService/CompleteFollowUp",
            Rpc::CancelFollowUp(_) => "FollowUpService/CancelFollowUp",
            Rpc::UpdateFollowUp(_) => "FollowUpService/UpdateFollowUp",
            Rpc::GetQualification(_) => "QualificationService/GetQualification",
            Rpc::Requalify(_) => "QualificationService/Requalify",
            Rpc::GetModel(_) => "QualificationService/GetModel",
            Rpc::TrainModel(_) => "QualificationService/TrainModel",
            Rpc::ListNotifications(_) => "NotificationService/ListNotifications",
            Rpc::MarkNotificationsRead(_) => "NotificationService/MarkNotificationsRead",
            Rpc::GetNotificationSettings(_) => "NotificationService/GetNotificationSettings",
            Rpc::UpdateNotificationSettings(_) => "NotificationService/UpdateNotificationSettings",
            Rpc::CreateWebhookEndpoint(_) => "NotificationService/CreateWebhookEndpoint",
            Rpc::ListWebhookEndpoints(_) => "NotificationService/ListWebhookEndpoints",
            Rpc::UpdateWebhookEndpoint(_) => "NotificationService/UpdateWebhookEndpoint",
            Rpc::DeleteWebhookEndpoint(_) => "NotificationService/DeleteWebhookEndpoint",
            Rpc::RotateWebhookSecret(_) => "NotificationService/RotateWebhookSecret",
            Rpc::ListWebhookAttempts(_) => "NotificationService/ListWebhookAttempts",
            Rpc::ReplayWebhooks(_) => "NotificationService/ReplayWebhooks",
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

/// One request to each RPC, about `at`'s organisation and lead.
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
        Rpc::WatchLeads(pb::WatchLeadsRequest { org_id: org_id.clone(), cursor: String::new() }),
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
        Rpc::GetLeadSettings(pb::GetLeadSettingsRequest { org_id: org_id.clone() }),
        Rpc::UpdateLeadSettings(pb::UpdateLeadSettingsRequest { org_id: org_id.clone(), ..Default::default() }),
        Rpc::Ingest(pb::IngestRequest {
            org_id: org_id.clone(),
            events: vec![pb::InteractionEvent { event_id: "e".into(), ..Default::default() }],
        }),
        Rpc::ListRejections(pb::ListRejectionsRequest { org_id: org_id.clone(), ..Default::default() }),
        Rpc::GetBroadcastHistory(at.broadcast_history()),
        Rpc::GetCampaignStats(pb::GetCampaignStatsRequest { org_id: org_id.clone(), campaign_id: "c".into() }),
        Rpc::ListCampaigns(pb::ListCampaignsRequest { org_id: org_id.clone(), ..Default::default() }),
        Rpc::UpsertAgent(at.upsert_agent()),
        Rpc::ListAgents(pb::ListAgentsRequest { org_id: org_id.clone(), ..Default::default() }),
        Rpc::GetAgent(pb::GetAgentRequest { org_id: org_id.clone(), agent_id: "ann".into() }),
        Rpc::AssignLead(at.assign_lead()),
        Rpc::BulkAssign(at.bulk_assign()),
        Rpc::GetAssignmentHistory(pb::GetAssignmentHistoryRequest { org_id: org_id.clone(), lead_id: lead_id.clone() }),
        Rpc::GetAssignmentSettings(pb::GetAssignmentSettingsRequest { org_id: org_id.clone() }),
        Rpc::UpdateAssignmentSettings(pb::UpdateAssignmentSettingsRequest {
            org_id: org_id.clone(),
            ..Default::default()
        }),
        // The matrix's agent token is alice's own.
        Rpc::SetPresence(pb::SetPresenceRequest {
            org_id: org_id.clone(),
            agent_id: "alice".into(),
            presence: pb::Presence::Available as i32,
        }),
        Rpc::ListWaitingLeads(pb::ListWaitingLeadsRequest { org_id: org_id.clone(), page_size: 10 }),
        Rpc::CreateFollowUp(at.create_follow_up()),
        Rpc::ListFollowUps(pb::ListFollowUpsRequest { org_id: org_id.clone(), ..Default::default() }),
        Rpc::CompleteFollowUp(at.follow_up_action()),
        Rpc::CancelFollowUp(at.follow_up_action()),
        Rpc::UpdateFollowUp(pb::UpdateFollowUpRequest {
            org_id: org_id.clone(),
            follow_up_id: at.follow_up_id.clone(),
            note: Some("call back".into()),
            ..Default::default()
        }),
        Rpc::GetQualification(pb::GetQualificationRequest { org_id: org_id.clone(), lead_id: lead_id.clone() }),
        Rpc::Requalify(pb::RequalifyRequest { org_id: org_id.clone(), lead_id: lead_id.clone() }),
        Rpc::GetModel(pb::GetModelRequest { org_id: org_id.clone() }),
        Rpc::ListNotifications(pb::ListNotificationsRequest {
            org_id: org_id.clone(),
            agent_id: "alice".into(),
            ..Default::default()
        }),
        Rpc::MarkNotificationsRead(pb::MarkNotificationsReadRequest {
            org_id: org_id.clone(),
            agent_id: "alice".into(),
            ids: vec!["ntf_x".into()],
            ..Default::default()
        }),
        Rpc::GetNotificationSettings(pb::GetNotificationSettingsRequest { org_id: org_id.clone() }),
        Rpc::UpdateNotificationSettings(pb::UpdateNotificationSettingsRequest {
            org_id: org_id.clone(),
            ..Default::default()
        }),
        Rpc::CreateWebhookEndpoint(pb::CreateWebhookEndpointRequest { org_id: org_id.clone(), ..Default::default() }),
        Rpc::ListWebhookEndpoints(pb::ListWebhookEndpointsRequest { org_id: org_id.clone() }),
        Rpc::UpdateWebhookEndpoint(pb::UpdateWebhookEndpointRequest {
            org_id: org_id.clone(),
            endpoint_id: lead_id.clone(),
            ..Default::default()
        }),
        Rpc::DeleteWebhookEndpoint(pb::DeleteWebhookEndpointRequest {
            org_id: org_id.clone(),
            endpoint_id: lead_id.clone(),
        }),
        Rpc::RotateWebhookSecret(pb::RotateWebhookSecretRequest {
            org_id: org_id.clone(),
            endpoint_id: lead_id.clone(),
        }),
        Rpc::ListWebhookAttempts(pb::ListWebhookAttemptsRequest {
            org_id: org_id.clone(),
            endpoint_id: lead_id.clone(),
            ..Default::default()
        }),
        Rpc::ReplayWebhooks(pb::ReplayWebhooksRequest {
            org_id: org_id.clone(),
            endpoint_id: lead_id.clone(),
            message_id: "ntf_x".into(),
            ..Default::default()
        }),
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

/// Whether each role passes each RPC's wall, in the order admin, operator, agent, service,
/// integration: the role matrix of docs/security.md, cell by cell. A cell that does not pass
/// answers PERMISSION_DENIED; one that passes answers anything else (the request itself may be
/// refused further on: a lead that does not exist, say).
const MATRIX: &[(&str, [bool; 5])] = &[
    ("LeadService/GetLead", [Y, Y, Y, Y, N]),
    ("LeadService/ListLeads", [Y, Y, Y, Y, N]),
    ("LeadService/ChangeStatus", [Y, Y, Y, Y, N]),
    ("LeadService/BulkChangeStatus", [Y, Y, Y, Y, N]),
    // The request exports every lead: an agent exports only the page it sees.
    ("LeadService/ExportLeads", [Y, Y, N, Y, N]),
    ("LeadService/GetLeadHistory", [Y, Y, Y, Y, N]),
    ("LeadService/WatchLeads", [Y, Y, Y, Y, N]),
    ("LeadService/AssignLeads", [N, N, N, Y, N]),
    ("LeadService/OpenFollowUp", [N, N, N, Y, N]),
    ("LeadService/GetLeadSettings", [Y, Y, N, Y, N]),
    ("LeadService/UpdateLeadSettings", [Y, N, N, Y, N]),
    ("IngestService/Ingest", [N, N, N, Y, Y]),
    ("IngestService/ListRejections", [Y, Y, N, Y, Y]),
    ("BroadcastTrackingService/GetBroadcastHistory", [Y, Y, Y, Y, N]),
    ("BroadcastTrackingService/GetCampaignStats", [Y, Y, Y, Y, N]),
    ("BroadcastTrackingService/ListCampaigns", [Y, Y, Y, Y, N]),
    ("AssignmentService/UpsertAgent", [Y, N, N, Y, N]),
    ("AssignmentService/ListAgents", [Y, Y, Y, Y, N]),
    ("AssignmentService/GetAgent", [Y, Y, Y, Y, N]),
    ("AssignmentService/AssignLead", [Y, Y, Y, Y, N]),
    ("AssignmentService/BulkAssign", [Y, Y, N, Y, N]),
    ("AssignmentService/GetAssignmentHistory", [Y, Y, Y, Y, N]),
    ("AssignmentService/GetAssignmentSettings", [Y, Y, N, Y, N]),
    ("AssignmentService/UpdateAssignmentSettings", [Y, N, N, Y, N]),
    // An agent sets its own presence only.
    ("AssignmentService/SetPresence", [Y, Y, Y, Y, Y]),
    ("AssignmentService/ListWaitingLeads", [Y, Y, N, Y, N]),
    ("FollowUpService/CreateFollowUp", [Y, Y, Y, Y, N]),
    ("FollowUpService/ListFollowUps", [Y, Y, Y, Y, N]),
    ("FollowUpService/CompleteFollowUp", [Y, Y, Y, Y, N]),
    ("FollowUpService/CancelFollowUp", [Y, Y, Y, Y, N]),
    ("FollowUpService/UpdateFollowUp", [Y, Y, Y, Y, N]),
    ("QualificationService/GetQualification", [Y, Y, Y, Y, N]),
    ("QualificationService/Requalify", [Y, Y, N, Y, N]),
    ("QualificationService/GetModel", [Y, Y, Y, Y, N]),
    ("QualificationService/TrainModel", [Y, N, N, Y, N]),
    // An agent reads and marks its own notifications only.
    ("NotificationService/ListNotifications", [Y, Y, Y, Y, N]),
    ("NotificationService/MarkNotificationsRead", [Y, Y, Y, Y, N]),
    ("NotificationService/GetNotificationSettings", [Y, Y, N, Y, N]),
    ("NotificationService/UpdateNotificationSettings", [Y, N, N, Y, N]),
    ("NotificationService/CreateWebhookEndpoint", [Y, N, N, Y, N]),
    ("NotificationService/ListWebhookEndpoints", [Y, N, N, Y, N]),
    ("NotificationService/UpdateWebhookEndpoint", [Y, N, N, Y, N]),
    ("NotificationService/DeleteWebhookEndpoint", [Y, N, N, Y, N]),
    ("NotificationService/RotateWebhookSecret", [Y, N, N, Y, N]),
    ("NotificationService/ListWebhookAttempts", [Y, N, N, Y, N]),
    ("NotificationService/ReplayWebhooks", [Y, N, N, Y, N]),
];
const Y: bool = true;
const N: bool = false;
const MATRIX_ROLES: [Role; 5] = [Role::Admin, Role::Operator, Role::Agent, Role::Service, Role::Integration];

#[tokio::test]
async fn every_rpc_answers_each_role_as_the_matrix_says_and_no_one_without_a_token() -> anyhow::Result<()> {
    let keys = Keys::new();
    let env = secured_env(&keys).await?;
    let node = env.start_all().await?;
    let clients = Clients::of(&node).await?;

    for (column, role) in MATRIX_ROLES.into_iter().enumerate() {
        let token = keys.token("alice", role, &[ORG]);
        let answers = clients.every_rpc(Some(&token), ORG).await;
        assert_eq!(answers.len(), MATRIX.len(), "every RPC of the seven services has a row");
        for (rpc, code) in answers {
            let (_, row) = MATRIX.iter().find(|(name, _)| *name == rpc).expect("a row for every RPC");
            assert_ne!(code, Code::Unauthenticated, "{rpc} with a valid {role:?} token");
            if row[column] {
                assert_ne!(code, Code::PermissionDenied, "{rpc} must let a {role:?} token through");
            } else {
                assert_eq!(code, Code::PermissionDenied, "{rpc} must refuse a {role:?} token");
            }
        }
        // Another organisation is refused to every role that is not a platform service.
        if role != Role::Service {
            for (rpc, code) in clients.every_rpc(Some(&token), OTHER).await {
                assert_eq!(code, Code::PermissionDenied, "{rpc} for another organisation with a {role:?} token");
            }
        }
    }
    let forged = Keys::forged();
    let expired = Signer::load(&keys.key)?.sign(&platform::auth::Claims {
        sub: "alice".into(),
        orgs: vec![ORG.into()],
        role: Role::Operator,
        exp: 1_000_000,
        iat: None,
        agent_id: None,
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
    // Only a service may hold every organisation, and an agent token names its agent.
    let signer = Signer::load(&keys.key)?;
    assert!(signer.mint("alice", Role::Operator, vec!["*".into()], HOUR).is_err());
    assert!(signer.mint("alice", Role::Agent, vec![ORG.into()], HOUR).is_err());

    node.stop().await?;
    env.cleanup().await
}

/// Lists `ORG`'s leads as `token`: their ids, and the total the page gives.
async fn listed(lead: &LeadServiceClient<Channel>, token: &str, filter: pb::LeadFilter) -> Result<Vec<String>, Status> {
    let request = pb::ListLeadsRequest { org_id: ORG.into(), filter: Some(filter), ..Default::default() };
    let page = lead.clone().list_leads(with(Some(token), request)).await?.into_inner();
    assert_eq!(page.total_count, page.leads.len() as i64, "the total counts what the agent may see");
    let mut ids: Vec<String> = page.leads.into_iter().map(|l| l.id).collect();
    ids.sort();
    Ok(ids)
}

#[tokio::test]
async fn an_agent_sees_and_changes_only_its_own_leads_and_the_unassigned_ones() -> anyhow::Result<()> {
    let keys = Keys::new();
    let env = secured_env(&keys).await?;
    let node = env.start_all().await?;
    let clients = Clients::of(&node).await?;
    let admin = keys.token("root", Role::Admin, &[ORG]);
    let operator = keys.token("olga", Role::Operator, &[ORG]);
    let ann = keys.token("ann", Role::Agent, &[ORG]);

    for n in 1..=3 {
        env.publish_interaction(ORG, &chat_event(&format!("e-{n}"), &phone(n), "hello")).await?;
    }
    let ids = eventually(Duration::from_secs(30), "three leads", || async {
        let ids = listed(&clients.lead, &operator, pb::LeadFilter::default()).await.ok()?;
        (ids.len() == 3).then_some(ids)
    })
    .await;
    let (ann_lead, bob_lead, open_lead) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let mut assignment = clients.assignment.clone();
    for agent in ["ann", "bob"] {
        let request = pb::UpsertAgentRequest {
            org_id: ORG.into(),
            agent_id: agent.into(),
            name: agent.into(),
            active: Some(true),
            ..Default::default()
        };
        assignment.upsert_agent(with(Some(&admin), request)).await?;
    }
    for (lead_id, agent) in [(&ann_lead, "ann"), (&bob_lead, "bob")] {
        let request = pb::AssignLeadRequest {
            org_id: ORG.into(),
            lead_id: lead_id.clone(),
            agent_id: agent.into(),
            ..Default::default()
        };
        assignment.assign_lead(with(Some(&operator), request)).await?;
    }

    // Listing: its own and the unassigned ones, counted so; asking for bob's is refused.
    let mut own = vec![ann_lead.clone(), open_lead.clone()];
    own.sort();
    assert_eq!(listed(&clients.lead, &ann, pb::LeadFilter::default()).await?, own);
    let only_unassigned = pb::LeadFilter { unassigned: true, ..Default::default() };
    assert_eq!(listed(&clients.lead, &ann, only_unassigned).await?, vec![open_lead.clone()]);
    let bobs = pb::LeadFilter { agent_ids: vec!["bob".into()], ..Default::default() };
    assert_eq!(listed(&clients.lead, &ann, bobs).await.unwrap_err().code(), Code::PermissionDenied);

    // Reading and acting on bob's lead: as if it did not exist, in every service.
    let at = Caller {
        token: Some(ann.clone()),
        org_id: ORG.into(),
        lead_id: bob_lead.clone(),
        follow_up_id: String::new(),
        due_at: Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 86_400, nanos: 0 }),
    };
    for rpc in [
        Rpc::GetLead(pb::GetLeadRequest { org_id: ORG.into(), lead_id: bob_lead.clone() }),
        Rpc::GetLeadHistory(at.get_lead_history()),
        Rpc::ChangeStatus(at.change_status()),
        Rpc::AssignLead(pb::AssignLeadRequest { agent_id: "ann".into(), ..at.assign_lead() }),
        Rpc::CreateFollowUp(at.create_follow_up()),
        Rpc::GetAssignmentHistory(pb::GetAssignmentHistoryRequest { org_id: ORG.into(), lead_id: bob_lead.clone() }),
        Rpc::GetQualification(pb::GetQualificationRequest { org_id: ORG.into(), lead_id: bob_lead.clone() }),
        Rpc::GetBroadcastHistory(at.broadcast_history()),
    ] {
        let name = rpc.name();
        let status = clients.send(&at, rpc).await.expect_err(name);
        assert_eq!(status.code(), Code::NotFound, "{name} on another agent's lead: {status:?}");
    }
    let bulk = pb::BulkChangeStatusRequest {
        org_id: ORG.into(),
        lead_ids: vec![ann_lead.clone(), bob_lead.clone(), open_lead.clone()],
        status: pb::LeadStatus::Qualifying as i32,
        ..Default::default()
    };
    let results = clients.lead.clone().bulk_change_status(with(Some(&ann), bulk)).await?.into_inner().results;
    let outcomes: Vec<(String, i32)> = results.into_iter().map(|r| (r.lead_id, r.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (ann_lead.clone(), pb::BulkOutcome::Changed as i32),
            (bob_lead.clone(), pb::BulkOutcome::NotFound as i32),
            (open_lead.clone(), pb::BulkOutcome::Changed as i32),
        ]
    );
    let bob_now = clients
        .lead
        .clone()
        .get_lead(with(Some(&operator), pb::GetLeadRequest { org_id: ORG.into(), lead_id: bob_lead.clone() }))
        .await?
        .into_inner();
    assert_eq!(bob_now.status, pb::LeadStatus::New as i32, "bob's lead was left as it was");

    // An unassigned lead it may claim, and then it is its own; follow-ups are its own.
    let claim = pb::AssignLeadRequest {
        org_id: ORG.into(),
        lead_id: open_lead.clone(),
        agent_id: "ann".into(),
        ..Default::default()
    };
    assert_eq!(assignment.assign_lead(with(Some(&ann), claim)).await?.into_inner().agent_id, "ann");
    let mut follow_up = clients.follow_up.clone();
    let created = follow_up
        .create_follow_up(with(
            Some(&ann),
            pb::CreateFollowUpRequest { lead_id: open_lead.clone(), ..at.create_follow_up() },
        ))
        .await?
        .into_inner();
    let listed_follow_ups = follow_up
        .list_follow_ups(with(Some(&ann), pb::ListFollowUpsRequest { org_id: ORG.into(), ..Default::default() }))
        .await?
        .into_inner()
        .follow_ups;
    assert_eq!(listed_follow_ups.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), [created.id.as_str()]);
    let others = pb::ListFollowUpsRequest { org_id: ORG.into(), agent_id: "bob".into(), ..Default::default() };
    assert_eq!(follow_up.list_follow_ups(with(Some(&ann), others)).await.unwrap_err().code(), Code::PermissionDenied);

    // The page it exports holds what it sees and nothing else.
    let page = pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() };
    let export = pb::ExportLeadsRequest { query: Some(page), scope: pb::ExportScope::CurrentPage as i32 };
    let mut stream = clients.lead.clone().export_leads(with(Some(&ann), export)).await?.into_inner();
    let mut csv = Vec::new();
    while let Some(chunk) = stream.message().await? {
        csv.extend(chunk.csv);
    }
    let text = String::from_utf8(csv)?;
    assert!(text.contains(&ann_lead) && text.contains(&open_lead) && !text.contains(&bob_lead), "{text}");

    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_service_token_limited_to_some_organisations_records_itself_as_the_actor() -> anyhow::Result<()> {
    let keys = Keys::new();
    let env = secured_env(&keys).await?;
    let node = env.start_all().await?;
    let clients = Clients::of(&node).await?;
    let operator = keys.token("olga", Role::Operator, &[ORG]);
    let found = one_lead(&env, &clients.lead, &operator, "Ada").await?;
    let crm = keys.token("crm-sync", Role::Service, &[ORG]);
    let request = pb::AssignLeadsRequest {
        org_id: ORG.into(),
        lead_ids: vec![found.id.clone()],
        agent_id: "ann".into(),
        actor: "the-ceo".into(),
        ..Default::default()
    };
    clients.lead.clone().assign_leads(with(Some(&crm), request)).await?;
    let history = clients
        .lead
        .clone()
        .get_lead_history(with(
            Some(&operator),
            pb::GetLeadHistoryRequest { org_id: ORG.into(), lead_id: found.id, ..Default::default() },
        ))
        .await?
        .into_inner();
    let assigned = history.entries.iter().find(|e| e.kind == "assignment").expect("the assignment");
    assert_eq!(assigned.actor, "crm-sync (the-ceo)", "the token's subject, the request's name only beside it");

    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_service_without_keys_refuses_to_start_unless_told_it_may_run_open() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut command = tokio::process::Command::new(leads_tests::leads_binary());
    command.args(["run", "--services", "lead"]).envs(env.process_env()).env("LEADS_AUTH_DISABLED", "false");
    command.env("LEADS_GRPC_LEAD_PORT", "0").stdout(std::process::Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started without keys: {stderr}");
    assert!(
        stderr.contains("no key to verify tokens with") && stderr.contains("LEADS_AUTH_DISABLED=true"),
        "the reason is given: {stderr}"
    );
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
    let alice = keys.token("alice", Role::Admin, &[ORG]);
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

#[tokio::test]
async fn an_agents_timeline_holds_no_other_agents_lead_of_the_same_contact() -> anyhow::Result<()> {
    let keys = Keys::new();
    let env = secured_env(&keys).await?;
    let node = env.start_all().await?;
    let clients = Clients::of(&node).await?;
    let admin = keys.token("root", Role::Admin, &[ORG]);
    let ann = keys.token("ann", Role::Agent, &[ORG]);
    let mut lead = clients.lead.clone();
    let list = |token: String| {
        let lead = clients.lead.clone();
        async move {
            let request = pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() };
            lead.clone().list_leads(with(Some(&token), request)).await.ok().map(|page| page.into_inner().leads)
        }
    };
    // The contact's first lead, unassigned and closed; then a second, bob's.
    env.publish_interaction(ORG, &chat_event("e-1", &phone(1), "first question")).await?;
    let first = eventually(Duration::from_secs(30), "the first lead", || async {
        list(admin.clone()).await?.into_iter().next()
    })
    .await;
    let close = pb::ChangeStatusRequest {
        org_id: ORG.into(),
        lead_id: first.id.clone(),
        status: pb::LeadStatus::Lost as i32,
        ..Default::default()
    };
    lead.change_status(with(Some(&admin), close)).await?;
    env.publish_interaction(ORG, &chat_event("e-2", &phone(1), "bob's secret deal")).await?;
    let second = eventually(Duration::from_secs(30), "the second lead", || async {
        list(admin.clone()).await?.into_iter().find(|l| l.id != first.id)
    })
    .await;
    let mut assignment = clients.assignment.clone();
    let bob = pb::UpsertAgentRequest {
        org_id: ORG.into(),
        agent_id: "bob".into(),
        name: "Bob".into(),
        active: Some(true),
        ..Default::default()
    };
    assignment.upsert_agent(with(Some(&admin), bob)).await?;
    let to_bob = pb::AssignLeadRequest {
        org_id: ORG.into(),
        lead_id: second.id.clone(),
        agent_id: "bob".into(),
        ..Default::default()
    };
    assignment.assign_lead(with(Some(&admin), to_bob)).await?;

    // Ann may read the first lead's timeline: it shows nothing of bob's lead.
    let request = pb::GetLeadHistoryRequest { org_id: ORG.into(), lead_id: first.id.clone(), ..Default::default() };
    let history = lead.get_lead_history(with(Some(&ann), request)).await?.into_inner();
    assert!(!history.entries.is_empty());
    for entry in &history.entries {
        assert_ne!(entry.lead_id, second.id, "{entry:?}");
        assert!(!entry.summary.contains("secret deal"), "{entry:?}");
    }

    node.stop().await?;
    env.cleanup().await
}
