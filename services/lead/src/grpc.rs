use crate::{
    LeadContext,
    commands::{self, BulkChange, BulkLeads, BulkOutcome, ChangeStatus},
    error::LeadError,
    export,
    gated::{self, OpenFollowUp},
    history,
    query::LeadQuery,
    read, settings,
};
use contracts::lead::Status;
use contracts::time::{from_timestamp, timestamp};
use contracts::values::{MAX_AGENT_ID_CHARS, bounded, bounded_each, limits};
use leads_proto::v1::{self as pb, lead_service_server::LeadService};
use platform::auth::Caller;
use std::pin::Pin;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status as GrpcStatus};
use uuid::Uuid;

pub struct LeadApi {
    pub ctx: LeadContext,
}

fn lead_id(value: &str) -> Result<Uuid, LeadError> {
    bounded("lead_id", value, limits::MAX_ID_CHARS)?;
    if value.is_empty() {
        return Err(LeadError::invalid("lead_id", "is required"));
    }
    value.parse().map_err(|_| LeadError::NotFound(value.to_owned()))
}

/// Who is recorded: the token's subject, with the request's `actor` as a display name.
fn actor(caller: &Caller, display: &str) -> Result<String, LeadError> {
    bounded("actor", display, limits::MAX_ACTOR_CHARS)?;
    Ok(caller.actor(display))
}

/// On the internal RPCs, the actor the calling service recorded (its caller's subject and
/// display name), taken as it is from one of the platform's own services; any other caller
/// (a service token limited to some organisations) is recorded as its own subject.
fn service_actor(caller: &Caller, value: &str) -> Result<String, LeadError> {
    bounded("actor", value, limits::MAX_RECORDED_ACTOR_CHARS)?;
    Ok(if caller.is_platform_service() {
        non_empty(value).unwrap_or_else(|| "unknown".into())
    } else {
        bounded("actor", value, limits::MAX_ACTOR_CHARS)?;
        caller.actor(value)
    })
}

/// The agent a call is confined to: the calling agent's own, or, on the internal RPCs, the
/// agent a platform service acts for.
fn confined_to(caller: &Caller, on_behalf_of_agent: &str) -> Result<Option<String>, LeadError> {
    bounded("on_behalf_of_agent", on_behalf_of_agent, MAX_AGENT_ID_CHARS)?;
    Ok(caller.agent_scope().map(str::to_owned).or_else(|| non_empty(on_behalf_of_agent)))
}

/// NOT_FOUND for a lead the caller may not see (another agent's, for an agent).
fn visible(caller: &Caller, lead: &contracts::lead::LeadView) -> Result<(), LeadError> {
    if caller.sees_lead_of(lead.agent_id.as_deref()) { Ok(()) } else { Err(LeadError::NotFound(lead.id.to_string())) }
}

fn reason(value: &str) -> Result<Option<String>, LeadError> {
    bounded("reason", value, limits::MAX_REASON_CHARS)?;
    Ok(non_empty(value))
}

fn lead_ids(values: &[String]) -> Result<(), LeadError> {
    Ok(bounded_each("lead_ids", values, limits::MAX_ID_CHARS)?)
}

/// The string fields of a ListLeads query (its search is bounded where it is parsed).
fn bounded_query(request: &pb::ListLeadsRequest) -> Result<(), LeadError> {
    bounded("page_token", &request.page_token, limits::MAX_PAGE_TOKEN_CHARS)?;
    if let Some(filter) = &request.filter {
        bounded_each("filter.agent_ids", &filter.agent_ids, MAX_AGENT_ID_CHARS)?;
        bounded("filter.campaign_id", &filter.campaign_id, limits::MAX_REFERENCE_CHARS)?;
        bounded("filter.integration_name", &filter.integration_name, limits::MAX_REFERENCE_CHARS)?;
        bounded("filter.contact_id", &filter.contact_id, limits::MAX_ID_CHARS)?;
    }
    Ok(())
}

fn outcome_to_proto(outcome: &BulkOutcome) -> pb::BulkOutcome {
    match outcome {
        BulkOutcome::Changed => pb::BulkOutcome::Changed,
        BulkOutcome::Unchanged => pb::BulkOutcome::Unchanged,
        BulkOutcome::Inactive(_) => pb::BulkOutcome::Inactive,
        BulkOutcome::NotFound => pb::BulkOutcome::NotFound,
        BulkOutcome::VersionMismatch { .. } => pb::BulkOutcome::VersionMismatch,
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.trim().is_empty()).then(|| value.trim().to_owned())
}

type ExportStream = Pin<Box<dyn futures::Stream<Item = Result<pb::ExportChunk, GrpcStatus>> + Send>>;
type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<pb::LeadWatchEvent, GrpcStatus>> + Send>>;

#[tonic::async_trait]
impl LeadService for LeadApi {
    async fn get_lead(&self, request: Request<pb::GetLeadRequest>) -> Result<Response<pb::Lead>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        crate::validate_org(&request.org_id)?;
        let lead = read::get_lead(&self.ctx.pool, &request.org_id, lead_id(&request.lead_id)?).await?;
        visible(&caller, &lead)?;
        let mut answer = [lead.to_proto()];
        settings::link_conversations(&self.ctx.pool, &request.org_id, &mut answer).await?;
        let [answer] = answer;
        Ok(Response::new(answer))
    }

    async fn list_leads(
        &self,
        request: Request<pb::ListLeadsRequest>,
    ) -> Result<Response<pb::ListLeadsResponse>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        bounded_query(&request)?;
        let query = LeadQuery::parse_for(&request, caller.agent_scope())?;
        let watch_cursor = if request.with_watch_cursor {
            self.ctx.watches.position().await.unwrap_or_else(|error| {
                tracing::debug!(%error, "no watch cursor for this page");
                String::new()
            })
        } else {
            String::new()
        };
        let page = read::list_leads(&self.ctx.pool, &query, (!request.skip_total).then_some(self.ctx.totals)).await?;
        let mut leads: Vec<pb::Lead> = page.leads.iter().map(contracts::lead::LeadView::to_proto).collect();
        settings::link_conversations(&self.ctx.pool, &request.org_id, &mut leads).await?;
        Ok(Response::new(pb::ListLeadsResponse {
            leads,
            next_page_token: page.next_page_token,
            total_count: page.total.map_or(-1, |total| total.count),
            total_is_estimate: page.total.is_some_and(|total| total.estimated),
            watch_cursor,
        }))
    }

    async fn change_status(&self, request: Request<pb::ChangeStatusRequest>) -> Result<Response<pb::Lead>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        crate::validate_org(&request.org_id)?;
        let (reason, actor) = (reason(&request.reason)?, actor(&caller, &request.actor)?);
        // Unspecified keeps the current status (a score change alone); change_status refuses a
        // request that changes nothing.
        let status = if request.status == pb::LeadStatus::Unspecified as i32 {
            None
        } else {
            Some(Status::from_proto(request.status).ok_or_else(|| LeadError::invalid("status", "is not a status"))?)
        };
        let lead = commands::change_status(
            &self.ctx,
            ChangeStatus {
                org_id: request.org_id,
                lead_id: lead_id(&request.lead_id)?,
                status,
                manual_score: request.manual_score,
                clear_manual_score: request.clear_manual_score,
                reason,
                actor,
                expected_version: request.expected_version,
                visible_to: caller.agent_scope().map(str::to_owned),
            },
        )
        .await?;
        Ok(Response::new(lead.to_proto()))
    }

    async fn bulk_change_status(
        &self,
        request: Request<pb::BulkChangeStatusRequest>,
    ) -> Result<Response<pb::BulkChangeStatusResponse>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        crate::validate_org(&request.org_id)?;
        lead_ids(&request.lead_ids)?;
        let leads = BulkLeads::parse(&request.lead_ids, &request.expected_versions)?;
        let (reason, actor) = (reason(&request.reason)?, actor(&caller, &request.actor)?);
        let status = Status::from_proto(request.status).ok_or_else(|| LeadError::invalid("status", "is required"))?;
        let outcomes = commands::bulk_change_status(
            &self.ctx,
            &request.org_id,
            &leads,
            status,
            reason.as_deref(),
            &actor,
            caller.agent_scope(),
        )
        .await?;
        let unchanged = format!("already {}", status.display_name());
        let results = request
            .lead_ids
            .iter()
            .zip(outcomes)
            .map(|(id, BulkChange { outcome, lead_version })| pb::BulkResult {
                lead_id: id.clone(),
                outcome: outcome_to_proto(&outcome) as i32,
                detail: outcome.detail(&unchanged, lead_version),
                lead_version,
            })
            .collect();
        Ok(Response::new(pb::BulkChangeStatusResponse { results }))
    }

    type ExportLeadsStream = ExportStream;

    async fn export_leads(
        &self,
        request: Request<pb::ExportLeadsRequest>,
    ) -> Result<Response<Self::ExportLeadsStream>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let list = request.query.ok_or_else(|| LeadError::invalid("query", "is required"))?;
        caller.check_org(&list.org_id)?;
        bounded_query(&list)?;
        let query = LeadQuery::parse_for(&list, caller.agent_scope())?;
        match pb::ExportScope::try_from(request.scope) {
            Ok(pb::ExportScope::Unspecified | pb::ExportScope::CurrentPage) => {
                let chunk = export::current_page(&self.ctx.exports, &query).await?;
                let stream = futures::stream::iter([Ok(chunk)]);
                Ok(Response::new(Box::pin(stream)))
            }
            Ok(pb::ExportScope::All) if caller.agent_scope().is_some() => {
                Err(LeadError::Forbidden("an agent exports the page it sees, not every lead".into()).into())
            }
            Ok(pb::ExportScope::All) => {
                let receiver = export::all(&self.ctx.exports, query)?;
                let stream = futures::StreamExt::map(ReceiverStream::new(receiver), |r| r.map_err(GrpcStatus::from));
                Ok(Response::new(Box::pin(stream)))
            }
            Err(_) => Err(LeadError::invalid("scope", "is not an export scope").into()),
        }
    }

    type WatchLeadsStream = WatchStream;

    async fn watch_leads(
        &self,
        request: Request<pb::WatchLeadsRequest>,
    ) -> Result<Response<Self::WatchLeadsStream>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        crate::validate_org(&request.org_id)?;
        bounded("cursor", &request.cursor, limits::MAX_PAGE_TOKEN_CHARS).map_err(LeadError::from)?;
        let agent = caller.agent_scope().map(str::to_owned);
        let feed = self.ctx.watches.open(&request.org_id, &request.cursor, agent).await?;
        // A watch outlives the call's check of the token: each change is sent only while the
        // token is still valid and its session has not ended (a person deactivated meanwhile).
        let ended = platform::sessions::ended_sessions(self.ctx.subjects.prefix());
        let checked =
            futures::stream::unfold((ReceiverStream::new(feed), caller, false), move |(mut feed, caller, over)| {
                let ended = ended.clone();
                async move {
                    if over {
                        return None;
                    }
                    let change = futures::StreamExt::next(&mut feed).await?;
                    match caller.still_valid(&ended) {
                        Ok(()) => Some((change, (feed, caller, false))),
                        Err(status) => Some((Err(status), (feed, caller, true))),
                    }
                }
            });
        Ok(Response::new(Box::pin(checked)))
    }

    async fn get_lead_history(
        &self,
        request: Request<pb::GetLeadHistoryRequest>,
    ) -> Result<Response<pb::GetLeadHistoryResponse>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        crate::validate_org(&request.org_id)?;
        bounded("page_token", &request.page_token, limits::MAX_PAGE_TOKEN_CHARS).map_err(LeadError::from)?;
        if caller.agent_scope().is_some() {
            visible(&caller, &read::get_lead(&self.ctx.pool, &request.org_id, lead_id(&request.lead_id)?).await?)?;
        }
        let history = history::lead_history(
            &self.ctx,
            &request.org_id,
            lead_id(&request.lead_id)?,
            request.page_size,
            &request.page_token,
            caller.agent_scope(),
        )
        .await?;
        Ok(Response::new(pb::GetLeadHistoryResponse {
            entries: history.entries,
            next_page_token: history.next_page_token,
            past_lead_ids: history.past_lead_ids,
            broadcast_history_unavailable: history.broadcast_history_unavailable,
        }))
    }

    async fn assign_leads(
        &self,
        request: Request<pb::AssignLeadsRequest>,
    ) -> Result<Response<pb::AssignLeadsResponse>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        crate::validate_org(&request.org_id)?;
        lead_ids(&request.lead_ids)?;
        let leads = BulkLeads::parse(&request.lead_ids, &request.expected_versions)?;
        bounded("agent_id", &request.agent_id, MAX_AGENT_ID_CHARS).map_err(LeadError::from)?;
        let (reason, actor) = (reason(&request.reason)?, service_actor(&caller, &request.actor)?);
        let agent = non_empty(&request.agent_id);
        let visible_to = confined_to(&caller, &request.on_behalf_of_agent)?;
        let outcomes = gated::assign_leads(
            &self.ctx,
            &request.org_id,
            &leads,
            agent.as_deref(),
            &actor,
            reason.as_deref(),
            visible_to.as_deref(),
        )
        .await?;
        let results = request
            .lead_ids
            .iter()
            .zip(outcomes)
            .map(|(id, result)| pb::LeadAssignment {
                lead_id: id.clone(),
                outcome: outcome_to_proto(&result.outcome) as i32,
                detail: result.outcome.detail("already assigned so", result.lead_version),
                agent_id: result.agent_id.unwrap_or_default(),
                previous_agent_id: result.previous_agent_id.unwrap_or_default(),
                lead_version: result.lead_version,
                at: result.at.map(timestamp),
            })
            .collect();
        Ok(Response::new(pb::AssignLeadsResponse { results }))
    }

    async fn open_follow_up(
        &self,
        request: Request<pb::OpenFollowUpRequest>,
    ) -> Result<Response<pb::Lead>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        crate::validate_org(&request.org_id)?;
        bounded("follow_up_id", &request.follow_up_id, limits::MAX_ID_CHARS).map_err(LeadError::from)?;
        bounded("agent_id", &request.agent_id, MAX_AGENT_ID_CHARS).map_err(LeadError::from)?;
        contracts::values::validate_note(&request.note).map_err(LeadError::from)?;
        let actor = service_actor(&caller, &request.actor)?;
        let visible_to = confined_to(&caller, &request.on_behalf_of_agent)?;
        let follow_up_id =
            request.follow_up_id.parse().map_err(|_| LeadError::invalid("follow_up_id", "must be a UUID"))?;
        let due_at = request
            .due_at
            .as_ref()
            .ok_or_else(|| LeadError::invalid("due_at", "is required"))
            .and_then(|t| from_timestamp(t).ok_or_else(|| LeadError::invalid("due_at", "is not a valid time")))?;
        let lead = gated::open_follow_up(
            &self.ctx,
            OpenFollowUp {
                org_id: request.org_id,
                lead_id: lead_id(&request.lead_id)?,
                follow_up_id,
                due_at,
                note: non_empty(&request.note),
                agent_id: non_empty(&request.agent_id),
                actor,
                visible_to,
            },
        )
        .await?;
        Ok(Response::new(lead.to_proto()))
    }

    async fn get_lead_settings(
        &self,
        request: Request<pb::GetLeadSettingsRequest>,
    ) -> Result<Response<pb::LeadSettings>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        crate::validate_org(&request.org_id)?;
        Ok(Response::new(settings::get(&self.ctx.pool, &request.org_id).await?))
    }

    async fn update_lead_settings(
        &self,
        request: Request<pb::UpdateLeadSettingsRequest>,
    ) -> Result<Response<pb::LeadSettings>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        crate::validate_org(&request.org_id)?;
        let parsed = settings::parse(&request)?;
        let actor = actor(&caller, "")?;
        let answer =
            settings::update(&self.ctx.pool, &request.org_id, parsed, request.expected_version, &actor).await?;
        Ok(Response::new(answer))
    }
}
