use crate::{
    FollowUpContext,
    error::FollowUpError,
    handler::{self, CreateFollowUp, FollowUpRow, ListFilter, State, UpdateFollowUp},
};
use contracts::time::{from_timestamp, timestamp};
use contracts::values::{MAX_AGENT_ID_CHARS, bounded, limits};
use leads_proto::v1::{self as pb, follow_up_service_server::FollowUpService};
use platform::auth::Caller;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct FollowUpApi {
    pub ctx: FollowUpContext,
}

fn org(org_id: &str) -> Result<(), FollowUpError> {
    contracts::values::validate_org_id(org_id).map_err(|r| FollowUpError::invalid("org_id", r.reason))
}

fn required_id(field: &'static str, value: &str, not_found: fn(&str) -> FollowUpError) -> Result<Uuid, FollowUpError> {
    bounded(field, value, limits::MAX_ID_CHARS)?;
    if value.is_empty() {
        return Err(FollowUpError::invalid(field, "is required"));
    }
    value.parse().map_err(|_| not_found(value))
}

fn trimmed(value: &str) -> Option<String> {
    (!value.trim().is_empty()).then(|| value.trim().to_owned())
}

/// Who is recorded: the token's subject, with the request's `actor` as a display name.
fn actor(caller: &Caller, display: &str) -> Result<String, FollowUpError> {
    bounded("actor", display, limits::MAX_ACTOR_CHARS)?;
    Ok(caller.actor(display))
}

fn agent_id(value: &str) -> Result<Option<String>, FollowUpError> {
    bounded("agent_id", value, MAX_AGENT_ID_CHARS)?;
    Ok(trimmed(value))
}

fn to_proto(row: FollowUpRow) -> pb::FollowUp {
    pb::FollowUp {
        id: row.id.to_string(),
        org_id: row.org_id.clone(),
        lead_id: row.lead_id.to_string(),
        contact: Some(pb::Contact {
            phone: row.phone.clone().unwrap_or_default(),
            external_id: row.external_id.clone().unwrap_or_default(),
            name: row.contact_name.clone().unwrap_or_default(),
            email: row.email.clone().unwrap_or_default(),
        }),
        contact_id: row.contact_id.to_string(),
        due_at: Some(timestamp(row.due_at)),
        note: row.note.clone().unwrap_or_default(),
        agent_id: row.agent_id.clone().unwrap_or_default(),
        state: row.state().to_proto() as i32,
        created_at: Some(timestamp(row.created_at)),
        created_by: row.created_by,
        updated_at: Some(timestamp(row.updated_at)),
        closed_by: row.closed_by.unwrap_or_default(),
        closed_at: row.closed_at.map(timestamp),
        version: row.version,
        agent_set_by_hand: row.agent_set_by_hand,
    }
}

impl FollowUpApi {
    async fn close(
        &self,
        request: Request<pb::FollowUpActionRequest>,
        to: State,
    ) -> Result<Response<pb::FollowUp>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        let id = required_id("follow_up_id", &request.follow_up_id, |v| FollowUpError::NotFound(v.into()))?;
        let actor = actor(&caller, &request.actor)?;
        if caller.agent_scope().is_some() {
            let follow_up = handler::get(&self.ctx, &request.org_id, id).await?;
            platform::visibility::check_lead(&self.ctx.lead, &caller, &request.org_id, &follow_up.lead_id.to_string())
                .await?;
        }
        let row = handler::close(&self.ctx, &request.org_id, id, to, &actor).await?;
        Ok(Response::new(to_proto(row)))
    }
}

#[tonic::async_trait]
impl FollowUpService for FollowUpApi {
    async fn create_follow_up(
        &self,
        request: Request<pb::CreateFollowUpRequest>,
    ) -> Result<Response<pb::FollowUp>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        bounded("request_id", &request.request_id, limits::MAX_REFERENCE_CHARS).map_err(FollowUpError::from)?;
        contracts::values::validate_note(&request.note).map_err(FollowUpError::from)?;
        let (agent_id, actor) = (agent_id(&request.agent_id)?, actor(&caller, &request.actor)?);
        let lead_id = required_id("lead_id", &request.lead_id, |v| {
            FollowUpError::from(Status::not_found(format!("lead {v} not found")))
        })?;
        let due_at =
            request.due_at.as_ref().ok_or_else(|| FollowUpError::invalid("due_at", "is required")).and_then(|t| {
                from_timestamp(t).ok_or_else(|| FollowUpError::invalid("due_at", "is not a valid time"))
            })?;
        let row = handler::create(
            &self.ctx,
            CreateFollowUp {
                org_id: request.org_id,
                lead_id,
                due_at,
                note: trimmed(&request.note),
                agent_id,
                actor,
                request_id: trimmed(&request.request_id),
                on_behalf_of_agent: caller.agent_scope().map(str::to_owned),
            },
        )
        .await?;
        Ok(Response::new(to_proto(row)))
    }

    async fn list_follow_ups(
        &self,
        request: Request<pb::ListFollowUpsRequest>,
    ) -> Result<Response<pb::ListFollowUpsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        bounded("lead_id", &request.lead_id, limits::MAX_ID_CHARS).map_err(FollowUpError::from)?;
        bounded("page_token", &request.page_token, limits::MAX_PAGE_TOKEN_CHARS).map_err(FollowUpError::from)?;
        let lead_id = match trimmed(&request.lead_id) {
            None => None,
            Some(id) => Some(id.parse().map_err(|_| FollowUpError::invalid("lead_id", "must be a lead id"))?),
        };
        let states = request
            .states
            .iter()
            .map(|s| {
                State::from_proto(*s).ok_or_else(|| FollowUpError::invalid("states", format!("{s} is not a state")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let due_before = match &request.due_before {
            None => None,
            Some(t) => {
                Some(from_timestamp(t).ok_or_else(|| FollowUpError::invalid("due_before", "is not a valid time"))?)
            }
        };
        let mut filter = ListFilter { lead_id, agent_id: agent_id(&request.agent_id)?, states, due_before };
        // An agent sees the follow-ups of a lead it may see, or else its own.
        if let Some(own) = caller.agent_scope() {
            match (&filter.lead_id, &filter.agent_id) {
                (Some(lead), _) => {
                    platform::visibility::check_lead(&self.ctx.lead, &caller, &request.org_id, &lead.to_string())
                        .await?;
                }
                (None, Some(agent)) if agent != own => {
                    return Err(Status::permission_denied("an agent lists its own follow-ups"));
                }
                (None, _) => filter.agent_id = Some(own.to_owned()),
            }
        }
        let page = handler::list(&self.ctx, &request.org_id, &filter, request.page_size, &request.page_token).await?;
        Ok(Response::new(pb::ListFollowUpsResponse {
            follow_ups: page.follow_ups.into_iter().map(to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn complete_follow_up(
        &self,
        request: Request<pb::FollowUpActionRequest>,
    ) -> Result<Response<pb::FollowUp>, Status> {
        self.close(request, State::Completed).await
    }

    async fn cancel_follow_up(
        &self,
        request: Request<pb::FollowUpActionRequest>,
    ) -> Result<Response<pb::FollowUp>, Status> {
        self.close(request, State::Cancelled).await
    }

    async fn update_follow_up(
        &self,
        request: Request<pb::UpdateFollowUpRequest>,
    ) -> Result<Response<pb::FollowUp>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        let id = required_id("follow_up_id", &request.follow_up_id, |v| FollowUpError::NotFound(v.into()))?;
        let actor = actor(&caller, &request.actor)?;
        if let Some(note) = &request.note {
            contracts::values::validate_note(note).map_err(FollowUpError::from)?;
        }
        let change = UpdateFollowUp {
            due_at: request
                .due_at
                .as_ref()
                .map(|t| from_timestamp(t).ok_or_else(|| FollowUpError::invalid("due_at", "is not a valid time")))
                .transpose()?,
            note: request.note.as_deref().map(trimmed),
            snooze_minutes: request.snooze_minutes,
            expected_version: request.expected_version,
            actor,
        };
        if caller.agent_scope().is_some() {
            let follow_up = handler::get(&self.ctx, &request.org_id, id).await?;
            platform::visibility::check_lead(&self.ctx.lead, &caller, &request.org_id, &follow_up.lead_id.to_string())
                .await?;
        }
        let row = handler::update(&self.ctx, &request.org_id, id, &change).await?;
        Ok(Response::new(to_proto(row)))
    }
}
