use crate::{
    AssignmentContext, auto,
    error::AssignmentError,
    handler::{self, AgentRow, Assign, AssignmentRow, Presence, UpsertAgent},
    routing::{self, WorkingHours},
    settings,
};
use contracts::time::timestamp;
use contracts::values::{MAX_AGENT_ID_CHARS, bounded, bounded_each, limits};
use leads_proto::v1::{self as pb, assignment_service_server::AssignmentService};
use platform::auth::{Caller, Role};
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct AssignmentApi {
    pub ctx: AssignmentContext,
}

fn org(org_id: &str) -> Result<(), AssignmentError> {
    contracts::values::validate_org_id(org_id).map_err(|r| AssignmentError::invalid("org_id", r.reason))
}

fn lead_id(value: &str) -> Result<Uuid, AssignmentError> {
    bounded("lead_id", value, limits::MAX_ID_CHARS)?;
    if value.is_empty() {
        return Err(AssignmentError::invalid("lead_id", "is required"));
    }
    value.parse().map_err(|_| AssignmentError::LeadNotFound(value.to_owned()))
}

fn trimmed(value: &str) -> Option<String> {
    (!value.trim().is_empty()).then(|| value.trim().to_owned())
}

/// Who is recorded: the token's subject, with the request's `actor` as a display name.
fn actor(caller: &Caller, display: &str) -> Result<String, AssignmentError> {
    bounded("actor", display, limits::MAX_ACTOR_CHARS)?;
    Ok(caller.actor(display))
}

fn reason(value: &str) -> Result<Option<String>, AssignmentError> {
    bounded("reason", value, limits::MAX_REASON_CHARS)?;
    Ok(trimmed(value))
}

fn agent_id(value: &str) -> Result<Option<String>, AssignmentError> {
    bounded("agent_id", value, MAX_AGENT_ID_CHARS)?;
    Ok(trimmed(value))
}

fn agent_to_proto(ctx: &AssignmentContext, agent: AgentRow) -> pb::Agent {
    let presence =
        Presence::effective(&agent.presence, agent.presence_seen_at, ctx.presence_grace(), chrono::Utc::now());
    pb::Agent {
        capacity: agent.capacity,
        effective_capacity: agent.effective_capacity,
        presence: presence.to_proto().into(),
        last_seen_at: agent.presence_seen_at.map(timestamp),
        last_assigned_at: agent.last_assigned_at.map(timestamp),
        time_zone: agent.zone().format(),
        working_hours: agent.working_hours().map(WorkingHours::to_proto),
        skills: agent.skills,
        org_id: agent.org_id,
        agent_id: agent.agent_id,
        name: agent.name,
        email: agent.email.unwrap_or_default(),
        active: agent.active,
        open_leads: agent.open_leads,
        updated_at: Some(timestamp(agent.updated_at)),
    }
}

fn assignment_to_proto(row: AssignmentRow) -> pb::Assignment {
    pb::Assignment {
        lead_id: row.lead_id.to_string(),
        agent_id: row.agent_id.unwrap_or_default(),
        previous_agent_id: row.previous_agent_id.unwrap_or_default(),
        actor: row.actor,
        at: Some(timestamp(row.at)),
        reason: row.reason.unwrap_or_default(),
        lead_version: row.lead_version,
    }
}

#[tonic::async_trait]
impl AssignmentService for AssignmentApi {
    async fn upsert_agent(&self, request: Request<pb::UpsertAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        agent_id(&request.agent_id)?;
        bounded("name", &request.name, limits::MAX_NAME_CHARS).map_err(AssignmentError::from)?;
        bounded("email", &request.email, limits::MAX_EMAIL_CHARS).map_err(AssignmentError::from)?;
        let skills = request.skills.as_ref().map(|s| routing::parse_skills(&s.names)).transpose()?;
        if let Some(zone) = &request.time_zone {
            bounded("time_zone", zone, limits::MAX_NAME_CHARS).map_err(AssignmentError::from)?;
        }
        let time_zone = request.time_zone.as_deref().map(routing::parse_time_zone).transpose()?;
        let working_hours = request.working_hours.as_ref().map(WorkingHours::parse).transpose()?;
        let agent = handler::upsert_agent(
            &self.ctx,
            UpsertAgent {
                org_id: request.org_id,
                agent_id: request.agent_id.trim().to_owned(),
                name: request.name.trim().to_owned(),
                email: trimmed(&request.email),
                active: request.active,
                capacity: request.capacity,
                skills,
                time_zone,
                working_hours,
            },
        )
        .await?;
        Ok(Response::new(agent_to_proto(&self.ctx, agent)))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        let agents = handler::list_agents(&self.ctx, &request.org_id, request.active_only).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.into_iter().map(|a| agent_to_proto(&self.ctx, a)).collect(),
        }))
    }

    async fn get_agent(&self, request: Request<pb::GetAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        let agent_id = agent_id(&request.agent_id)?.unwrap_or_default();
        handler::validate_agent_id(&agent_id)?;
        let agent = handler::get_agent(&self.ctx, &request.org_id, &agent_id)
            .await?
            .ok_or(AssignmentError::AgentNotFound(agent_id))?;
        Ok(Response::new(agent_to_proto(&self.ctx, agent)))
    }

    async fn assign_lead(&self, request: Request<pb::AssignLeadRequest>) -> Result<Response<pb::Assignment>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        let id = lead_id(&request.lead_id)?;
        let agent_id = match (request.unassign, agent_id(&request.agent_id)?) {
            (false, None) => return Err(AssignmentError::invalid("agent_id", "is required (or set unassign)").into()),
            (true, Some(_)) => {
                return Err(AssignmentError::invalid("agent_id", "must be empty when unassign is set").into());
            }
            (_, agent) => agent,
        };
        let actor = actor(&caller, &request.actor)?;
        let reason = reason(&request.reason)?;
        let results = handler::assign(
            &self.ctx,
            Assign {
                org_id: request.org_id,
                lead_ids: vec![id.to_string()],
                agent_id,
                actor: actor.clone(),
                reason: reason.clone(),
                on_behalf_of_agent: caller.agent_scope().map(str::to_owned),
                expected_versions: request.expected_version.map(|v| (id.to_string(), v)).into_iter().collect(),
            },
        )
        .await?;
        let result = results.into_iter().next().ok_or_else(|| AssignmentError::Protocol("no result".into()))?;
        match pb::BulkOutcome::try_from(result.outcome) {
            Ok(pb::BulkOutcome::Changed | pb::BulkOutcome::Unchanged) => Ok(Response::new(pb::Assignment {
                lead_id: result.lead_id,
                agent_id: result.agent_id,
                previous_agent_id: result.previous_agent_id,
                actor,
                at: result.at,
                reason: reason.unwrap_or_default(),
                lead_version: result.lead_version,
            })),
            Ok(pb::BulkOutcome::NotFound) => Err(AssignmentError::LeadNotFound(id.to_string()).into()),
            Ok(pb::BulkOutcome::Inactive) => {
                Err(AssignmentError::LeadInactive { lead_id: id.to_string(), detail: result.detail }.into())
            }
            Ok(pb::BulkOutcome::VersionMismatch) => Err(AssignmentError::VersionMismatch {
                lead_id: id.to_string(),
                expected: request.expected_version.unwrap_or_default(),
                actual: result.lead_version,
            }
            .into()),
            _ => Err(AssignmentError::Protocol(format!("outcome {}", result.outcome)).into()),
        }
    }

    async fn bulk_assign(
        &self,
        request: Request<pb::BulkAssignRequest>,
    ) -> Result<Response<pb::BulkAssignResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        bounded_each("lead_ids", &request.lead_ids, limits::MAX_ID_CHARS).map_err(AssignmentError::from)?;
        let agent_id = match (request.unassign, agent_id(&request.agent_id)?) {
            (false, None) => return Err(AssignmentError::invalid("agent_id", "is required (or set unassign)").into()),
            (true, Some(_)) => {
                return Err(AssignmentError::invalid("agent_id", "must be empty when unassign is set").into());
            }
            (_, agent) => agent,
        };
        let (actor, reason) = (actor(&caller, &request.actor)?, reason(&request.reason)?);
        let results = handler::assign(
            &self.ctx,
            Assign {
                org_id: request.org_id,
                lead_ids: request.lead_ids,
                agent_id,
                actor,
                reason,
                on_behalf_of_agent: caller.agent_scope().map(str::to_owned),
                expected_versions: request.expected_versions,
            },
        )
        .await?;
        let results = results
            .into_iter()
            .map(|r| pb::BulkResult {
                lead_id: r.lead_id,
                outcome: r.outcome,
                detail: r.detail,
                lead_version: r.lead_version,
            })
            .collect();
        Ok(Response::new(pb::BulkAssignResponse { results }))
    }

    async fn get_assignment_settings(
        &self,
        request: Request<pb::GetAssignmentSettingsRequest>,
    ) -> Result<Response<pb::AssignmentSettings>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        Ok(Response::new(settings::get(&self.ctx.pool, &request.org_id).await?))
    }

    async fn update_assignment_settings(
        &self,
        request: Request<pb::UpdateAssignmentSettingsRequest>,
    ) -> Result<Response<pb::AssignmentSettings>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        let parsed = settings::parse(&request)?;
        let actor = actor(&caller, "")?;
        let answer =
            settings::update(&self.ctx.pool, &request.org_id, parsed, request.expected_version, &actor).await?;
        self.ctx.wake.notify_one();
        Ok(Response::new(answer))
    }

    async fn set_presence(&self, request: Request<pb::SetPresenceRequest>) -> Result<Response<pb::Agent>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        let agent_id = agent_id(&request.agent_id)?.unwrap_or_default();
        handler::validate_agent_id(&agent_id)?;
        if caller.role() == Some(Role::Agent) && caller.agent_scope() != Some(agent_id.as_str()) {
            return Err(AssignmentError::Forbidden("an agent sets its own presence only".into()).into());
        }
        let presence = Presence::from_proto(request.presence)?;
        let agent = auto::set_presence(&self.ctx, &request.org_id, &agent_id, presence).await?;
        Ok(Response::new(agent_to_proto(&self.ctx, agent)))
    }

    async fn list_waiting_leads(
        &self,
        request: Request<pb::ListWaitingLeadsRequest>,
    ) -> Result<Response<pb::ListWaitingLeadsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        let (rows, total) = auto::list_waiting(&self.ctx, &request.org_id, request.page_size).await?;
        let leads = rows
            .into_iter()
            .map(|row| pb::WaitingLead {
                lead_id: row.lead_id.to_string(),
                score: row.score,
                lead_created_at: Some(timestamp(row.lead_created_at)),
                waiting_since: Some(timestamp(row.queued_at)),
                handing_to: row.reserved_for.unwrap_or_default(),
                waiting_for: row.needs_skill.as_deref().map(routing::needs_skill_words).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListWaitingLeadsResponse { leads, total }))
    }

    async fn get_assignment_history(
        &self,
        request: Request<pb::GetAssignmentHistoryRequest>,
    ) -> Result<Response<pb::GetAssignmentHistoryResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        org(&request.org_id)?;
        let id = lead_id(&request.lead_id)?;
        platform::visibility::check_lead(&self.ctx.lead, &caller, &request.org_id, &request.lead_id).await?;
        let rows = handler::history(&self.ctx, &request.org_id, id).await?;
        Ok(Response::new(pb::GetAssignmentHistoryResponse {
            assignments: rows.into_iter().map(assignment_to_proto).collect(),
        }))
    }
}
