//! The lead lifecycle told: a lead assigned to an agent is told to that agent (and to webhooks),
//! and the lifecycle's other events (created, status changed, scored, unassigned) go to the
//! webhook endpoints that subscribe to them; nothing is recorded for an organisation none of
//! whose endpoints wants them.

use crate::{
    NotificationContext,
    error::NotificationError,
    record::{self, Recipient, Tell},
};
use contracts::{
    Envelope,
    lead::{LeadChange, LeadEvent},
    notifications::{LEAD_ASSIGNED, LEAD_CREATED, LEAD_SCORED, LEAD_STATUS_CHANGED},
};
use serde_json::json;

pub async fn apply_lead_events(
    ctx: &NotificationContext,
    events: &[Envelope<LeadEvent>],
) -> Result<(), NotificationError> {
    let mut orgs: Vec<&str> = events.iter().map(|e| e.org_id.as_str()).collect();
    orgs.sort_unstable();
    orgs.dedup();
    let mut tx = ctx.pool.begin().await?;
    let subscriptions = record::subscriptions(&mut tx, &orgs).await?;
    let tells: Vec<Tell> = events
        .iter()
        .filter_map(told_of)
        .filter(|tell| {
            tell.recipient != Recipient::Webhooks || record::wanted(&subscriptions, &tell.org_id, tell.event_type)
        })
        .collect();
    if tells.is_empty() {
        return Ok(());
    }
    let told = record::tell(ctx, &mut tx, tells).await?;
    record::commit(ctx, tx, told).await?;
    Ok(())
}

/// What one lead event tells, if anything.
fn told_of(event: &Envelope<LeadEvent>) -> Option<Tell> {
    let lead = &event.data.lead;
    let who = lead.name.as_deref().or(lead.phone.as_deref()).or(lead.external_id.as_deref()).unwrap_or("a contact");
    let contact = record::contact(lead.name.as_deref(), lead.phone.as_deref());
    let (event_type, recipient, summary, data) = match &event.data.change {
        LeadChange::Created { .. } => (
            LEAD_CREATED,
            Recipient::Webhooks,
            format!("New lead: {who}"),
            json!({ "lead_id": lead.id, "contact": contact, "lead": lead }),
        ),
        LeadChange::StatusChanged { from, to, actor, reason, rule } => (
            LEAD_STATUS_CHANGED,
            Recipient::Webhooks,
            format!("{who}: {from} -> {to}"),
            json!({ "lead_id": lead.id, "from": from, "to": to, "actor": actor, "reason": reason, "rule": rule,
                    "contact": contact, "lead": lead }),
        ),
        LeadChange::ScoreChanged { score, source, actor } => (
            LEAD_SCORED,
            Recipient::Webhooks,
            format!("{who} scored {}", score.map_or("-".to_owned(), |s| s.to_string())),
            json!({ "lead_id": lead.id, "score": score, "source": source, "actor": actor, "contact": contact, "lead": lead }),
        ),
        LeadChange::Assigned { from, to, actor, reason } => (
            LEAD_ASSIGNED,
            match to {
                Some(agent) => Recipient::Agent(agent.clone()),
                None => Recipient::Webhooks,
            },
            match to {
                Some(_) => format!("Lead assigned to you: {who}"),
                None => format!("{who} unassigned"),
            },
            json!({ "agent_id": to, "previous_agent_id": from, "lead_id": lead.id, "actor": actor, "reason": reason,
                    "contact": contact, "lead": lead }),
        ),
        LeadChange::InteractionRecorded { .. } | LeadChange::FollowUpOpened { .. } => return None,
    };
    Some(Tell {
        org_id: event.org_id.clone(),
        event_type,
        occurred_at: event.occurred_at,
        dedupe_key: format!("lead:{}", event.id),
        recipient,
        lead_id: Some(lead.id),
        summary,
        data,
    })
}
