//! Which leads an agent may see, asked of the lead service, the one authority on a lead's
//! agent: services that show lead data of their own (assignments, follow-ups, broadcasts,
//! scores) check a lead through it before they answer an agent.

use crate::{auth::Caller, grpc::TracedChannel};
use leads_proto::v1::{self as pb, lead_service_client::LeadServiceClient};
use tonic::{Code, Status};

/// A client of the lead service, as the services hold one.
pub type LeadClient = LeadServiceClient<TracedChannel>;

/// NOT_FOUND when `caller` is an agent and the lead is another agent's (or does not exist);
/// nothing is asked for any other caller.
pub async fn check_lead(lead: &LeadClient, caller: &Caller, org_id: &str, lead_id: &str) -> Result<(), Status> {
    let Some(agent) = caller.agent_scope() else { return Ok(()) };
    let request = pb::GetLeadRequest { org_id: org_id.to_owned(), lead_id: lead_id.to_owned() };
    match lead.clone().get_lead(request).await {
        Ok(found) if caller.sees_lead_of(Some(found.get_ref().agent_id.as_str()).filter(|a| !a.is_empty())) => Ok(()),
        Ok(_) => Err(Status::not_found(format!("lead {lead_id} not found"))),
        Err(status) if status.code() == Code::NotFound => Err(Status::not_found(format!("lead {lead_id} not found"))),
        Err(status) => {
            tracing::warn!(code = ?status.code(), agent, "cannot ask the lead service whose lead this is");
            Err(Status::unavailable("the lead service is unavailable, retry later"))
        }
    }
}

/// A client of the lead service at `endpoints.lead`, calling as `service`.
pub fn lead_client(settings: &crate::Settings, service: crate::ServiceName) -> anyhow::Result<LeadClient> {
    let endpoint = &settings.endpoints.lead;
    let channel = crate::grpc::service_channel(settings, service, endpoint)
        .map_err(|e| anyhow::anyhow!("invalid lead endpoint {endpoint}: {e}"))?;
    Ok(LeadServiceClient::new(channel))
}
