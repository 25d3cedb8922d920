//! The organisation's settings, on one page: each service keeps the settings of its own domain
//! (the lead service its status rules and conversation link, the assignment service its
//! automatic assignment policy), and this page shows and changes them through those services,
//! which decide who may (admins) and record every change.

use crate::{
    AppState,
    backends::authorized,
    error::ConsoleError,
    pages::{Chrome, Page, html, see_other},
    session::Session,
    views::{self, When},
};
use askama::Template;
use axum::{Form, extract::State, http::HeaderMap};
use contracts::lead::Status;
use leads_proto::v1 as pb;
use serde::Deserialize;

/// A change recorded, as the page lists it.
struct ChangeLine {
    at: When,
    actor: String,
    what: String,
}

fn change_lines(changes: &[pb::SettingsChange]) -> Vec<ChangeLine> {
    changes
        .iter()
        .map(|c| ChangeLine { at: When::of(c.at.as_ref()), actor: c.actor.clone(), what: c.changes.join("; ") })
        .collect()
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    chrome: Chrome,
    version: i64,
    qualifying_at: String,
    qualified_at: String,
    follow_up_status: bool,
    after_follow_ups: String,
    broadcast_reply_contacted: bool,
    archive_after_days: String,
    conversation_url_template: String,
    /// (value, label) of the statuses a lead may go to when its last follow-up closes.
    after_choices: Vec<(String, String)>,
    changes: Vec<ChangeLine>,
    assignment: AssignmentSection,
}

/// The automatic assignment policy, kept by the assignment service.
struct AssignmentSection {
    version: i64,
    policy: &'static str,
    default_capacity: i32,
    /// Empty when untouched leads stay with their agent.
    reassign_untouched_after_minutes: String,
    release_offline_after_grace: bool,
    changes: Vec<ChangeLine>,
    policies: &'static [(pb::AssignmentPolicy, &'static str, &'static str)],
}

/// (form value, label) of each policy, the form's order.
const POLICIES: [(pb::AssignmentPolicy, &str, &str); 3] = [
    (pb::AssignmentPolicy::Off, "off", "Off: leads wait for a person to assign them"),
    (pb::AssignmentPolicy::RoundRobin, "round_robin", "Round robin: the available agent served longest ago"),
    (pb::AssignmentPolicy::Balanced, "balanced", "Balanced: the available agent with the lowest load for its capacity"),
];

async fn assignment_section(state: &AppState, session: &Session) -> Result<AssignmentSection, ConsoleError> {
    let request = pb::GetAssignmentSettingsRequest { org_id: session.org_id.clone() };
    let settings = state
        .backends
        .assignment
        .clone()
        .get_assignment_settings(authorized(&session.token, request))
        .await?
        .into_inner();
    Ok(AssignmentSection {
        version: settings.version,
        policy: POLICIES.iter().find(|(p, _, _)| *p as i32 == settings.policy).map_or("off", |(_, name, _)| name),
        default_capacity: settings.default_capacity,
        reassign_untouched_after_minutes: number(
            Some(settings.reassign_untouched_after_minutes).filter(|minutes| *minutes > 0),
        ),
        release_offline_after_grace: settings.release_offline_after_grace,
        policies: &POLICIES,
        changes: change_lines(&settings.changes),
    })
}

fn number(value: Option<i32>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

pub async fn settings(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let session = Session::from_headers(&headers)?;
    let request = pb::GetLeadSettingsRequest { org_id: session.org_id.clone() };
    let settings =
        state.backends.lead.clone().get_lead_settings(authorized(&session.token, request)).await?.into_inner();
    let assignment = assignment_section(&state, &session).await?;
    let rules = settings.status_rules.unwrap_or_default();
    let after_follow_ups =
        Status::from_proto(rules.after_follow_ups).map(|s| s.as_str().to_owned()).unwrap_or_default();
    let after_choices = Status::ALL
        .into_iter()
        .filter(|s| !s.is_final() && *s != Status::FollowUp)
        .map(|s| (s.as_str().to_owned(), views::status_label(s).to_owned()))
        .collect();
    let changes = change_lines(&settings.changes);
    html(&SettingsPage {
        chrome: Chrome::of(&session, "settings"),
        version: settings.version,
        qualifying_at: number(rules.qualifying_at),
        qualified_at: number(rules.qualified_at),
        follow_up_status: rules.follow_up_status,
        after_follow_ups,
        broadcast_reply_contacted: rules.broadcast_reply_contacted,
        archive_after_days: number(rules.archive_after_days),
        conversation_url_template: settings.conversation_url_template,
        after_choices,
        changes,
        assignment,
    })
}

#[derive(Deserialize)]
pub struct SettingsForm {
    version: i64,
    #[serde(default)]
    qualifying_at: String,
    #[serde(default)]
    qualified_at: String,
    /// A checkbox: present when ticked.
    follow_up_status: Option<String>,
    #[serde(default)]
    after_follow_ups: String,
    broadcast_reply_contacted: Option<String>,
    #[serde(default)]
    archive_after_days: String,
    #[serde(default)]
    conversation_url_template: String,
}

/// A number field: empty turns the rule off.
fn optional_number(field: &str, value: &str) -> Result<Option<i32>, ConsoleError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| ConsoleError::BadRequest(format!("{field}: give a whole number, or leave it empty")))
}

pub async fn update_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SettingsForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let after_follow_ups = match form.after_follow_ups.as_str() {
        "" => pb::LeadStatus::Unspecified,
        name => Status::try_from(name.to_owned())
            .map_err(|_| ConsoleError::BadRequest("after_follow_ups: choose a status from the list".into()))?
            .to_proto(),
    };
    let rules = pb::StatusRules {
        qualifying_at: optional_number("qualifying_at", &form.qualifying_at)?,
        qualified_at: optional_number("qualified_at", &form.qualified_at)?,
        follow_up_status: form.follow_up_status.is_some(),
        after_follow_ups: after_follow_ups.into(),
        broadcast_reply_contacted: form.broadcast_reply_contacted.is_some(),
        archive_after_days: optional_number("archive_after_days", &form.archive_after_days)?,
    };
    let request = pb::UpdateLeadSettingsRequest {
        org_id: session.org_id.clone(),
        status_rules: Some(rules),
        conversation_url_template: form.conversation_url_template,
        // Two admins editing at once: the second is told, rather than undoing the first.
        expected_version: Some(form.version),
    };
    state.backends.lead.clone().update_lead_settings(authorized(&session.token, request)).await?;
    Ok(see_other("/settings"))
}

#[derive(Deserialize)]
pub struct AssignmentForm {
    version: i64,
    policy: String,
    #[serde(default)]
    default_capacity: String,
    #[serde(default)]
    reassign_untouched_after_minutes: String,
    /// A checkbox: present when ticked.
    release_offline_after_grace: Option<String>,
}

pub async fn update_assignment_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<AssignmentForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let policy = POLICIES
        .iter()
        .find(|(_, name, _)| *name == form.policy)
        .map(|(p, _, _)| *p)
        .ok_or_else(|| ConsoleError::BadRequest("policy: choose a policy from the list".into()))?;
    let default_capacity = form
        .default_capacity
        .trim()
        .parse()
        .map_err(|_| ConsoleError::BadRequest("default_capacity: give a whole number".into()))?;
    let request = pb::UpdateAssignmentSettingsRequest {
        org_id: session.org_id.clone(),
        policy: policy as i32,
        default_capacity,
        expected_version: Some(form.version),
        // Empty: untouched leads stay with their agent.
        reassign_untouched_after_minutes: Some(
            optional_number("reassign_untouched_after_minutes", &form.reassign_untouched_after_minutes)?.unwrap_or(0),
        ),
        release_offline_after_grace: Some(form.release_offline_after_grace.is_some()),
        // Routes are kept as they are: this form does not show them.
        skill_routes: None,
    };
    state.backends.assignment.clone().update_assignment_settings(authorized(&session.token, request)).await?;
    Ok(see_other("/settings"))
}
