use crate::{
    BroadcastContext,
    error::BroadcastError,
    read::{self, CampaignCursor, Cursor, Target},
};
use contracts::values::{bounded, limits};
use leads_proto::v1::{self as pb, broadcast_tracking_service_server::BroadcastTrackingService};
use platform::auth::Caller;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct BroadcastApi {
    pub ctx: BroadcastContext,
    /// Asked whose lead it is before an agent reads its broadcasts.
    pub lead: platform::visibility::LeadClient,
}

fn validate_org(org_id: &str) -> Result<(), BroadcastError> {
    contracts::values::validate_org_id(org_id).map_err(|r| BroadcastError::invalid("org_id", r.reason))
}

fn id(field: &'static str, value: &str) -> Result<Uuid, BroadcastError> {
    bounded(field, value, limits::MAX_ID_CHARS)?;
    if value.is_empty() {
        return Err(BroadcastError::invalid(field, "is required"));
    }
    value.parse().map_err(|_| BroadcastError::invalid(field, format!("{value:?} is not an id")))
}

/// A caller's place in a broadcast history, as the page token's cursor is.
fn place(place: &pb::BroadcastHistoryPlace) -> Result<Cursor, BroadcastError> {
    bounded("older_than.message_id", &place.message_id, crate::event::MAX_SHORT_CHARS)?;
    let sent_at = place.sent_at.as_ref().ok_or_else(|| BroadcastError::invalid("older_than.sent_at", "is required"))?;
    let sent_at = contracts::time::from_timestamp(sent_at)
        .ok_or_else(|| BroadcastError::invalid("older_than.sent_at", "is not a valid time"))?;
    Ok(Cursor { sent_at, message_id: place.message_id.clone() })
}

#[tonic::async_trait]
impl BroadcastTrackingService for BroadcastApi {
    async fn get_broadcast_history(
        &self,
        request: Request<pb::GetBroadcastHistoryRequest>,
    ) -> Result<Response<pb::GetBroadcastHistoryResponse>, Status> {
        use pb::get_broadcast_history_request::Target as Wire;
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        validate_org(&request.org_id)?;
        bounded("page_token", &request.page_token, limits::MAX_PAGE_TOKEN_CHARS).map_err(BroadcastError::from)?;
        let target = match &request.target {
            Some(Wire::LeadId(lead_id)) => {
                let target = Target::Lead(id("lead_id", lead_id)?);
                platform::visibility::check_lead(&self.lead, &caller, &request.org_id, lead_id).await?;
                target
            }
            Some(Wire::ContactId(_)) if caller.agent_scope().is_some() => {
                return Err(Status::permission_denied("an agent reads broadcasts by lead_id, of a lead it may see"));
            }
            Some(Wire::ContactId(contact_id)) => Target::Contact(id("contact_id", contact_id)?),
            None => return Err(BroadcastError::invalid("lead_id", "one of lead_id or contact_id is required").into()),
        };
        let page_size = read::page_size(request.page_size)?;
        let after = if request.page_token.is_empty() { None } else { Some(Cursor::decode(&request.page_token)?) };
        let older_than = request.older_than.as_ref().map(place).transpose()?;
        let page = read::history(&self.ctx.pool, &request.org_id, target, page_size, after, older_than).await?;
        Ok(Response::new(pb::GetBroadcastHistoryResponse {
            messages: page.messages,
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_campaign_stats(
        &self,
        request: Request<pb::GetCampaignStatsRequest>,
    ) -> Result<Response<pb::CampaignStats>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        validate_org(&request.org_id)?;
        bounded("campaign_id", &request.campaign_id, limits::MAX_REFERENCE_CHARS).map_err(BroadcastError::from)?;
        let campaign_id = request.campaign_id.trim();
        if campaign_id.is_empty() {
            return Err(BroadcastError::invalid("campaign_id", "is required").into());
        }
        let stats = read::campaign_stats(&self.ctx.pool, &request.org_id, campaign_id).await?;
        Ok(Response::new(stats))
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        validate_org(&request.org_id)?;
        bounded("page_token", &request.page_token, limits::MAX_PAGE_TOKEN_CHARS).map_err(BroadcastError::from)?;
        let page_size = read::campaign_page_size(request.page_size)?;
        let after =
            if request.page_token.is_empty() { None } else { Some(CampaignCursor::decode(&request.page_token)?) };
        let page = read::list_campaigns(&self.ctx.pool, &request.org_id, page_size, after).await?;
        Ok(Response::new(pb::ListCampaignsResponse {
            campaigns: page.campaigns,
            next_page_token: page.next_page_token,
        }))
    }
}
