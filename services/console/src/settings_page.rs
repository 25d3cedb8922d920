//! The organisation's settings, on one page: each service keeps the settings of its own domain
//! (the lead service its status rules and conversation link, the assignment service its
//! automatic assignment policy and skill routes), and this page shows and changes them through
//! those services, which decide who may (admins) and record every change. A field a service
//! refuses is shown again as it was sent, the service's words beside it.

use crate::{
    AppState,
    backends::authorized,
    error::ConsoleError,
    pages::{Chrome, Page, html, see_other},
    query,
    session::Session,
    views::{self, When},
};
use askama::Template;
use axum::{
    Form,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse},
};
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
pub(crate) struct SettingsPage {
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
    routes: RoutesSection,
    /// Kept by the notifications service.
    pub(crate) notifications: crate::notifications_page::NotificationsSection,
}

/// A field a service (or the console) refused, and why: shown beside that field. The
/// services name the field first in an invalid argument's message (`default_capacity: must
/// be ...`), as the console's own refusals do.
struct Refusal {
    field: String,
    message: String,
}

impl Refusal {
    /// The refusal of one of `fields` (or of a part of one, `skill_routes.match`) that `error`
    /// carries; `None` for any other error, which answers as errors do.
    fn of(error: &ConsoleError, fields: &[&str]) -> Option<Self> {
        let message = match error {
            ConsoleError::Grpc(status) if status.code() == tonic::Code::InvalidArgument => status.message(),
            ConsoleError::BadRequest(message) => message.as_str(),
            _ => return None,
        };
        let (field, _) = message.split_once(": ")?;
        let named =
            fields.iter().any(|f| field == *f || field.strip_prefix(f).is_some_and(|part| part.starts_with('.')));
        named.then(|| Self { field: field.to_owned(), message: message.to_owned() })
    }

    /// Why, after the field's name.
    fn reason(&self) -> &str {
        self.message.split_once(": ").map_or(self.message.as_str(), |(_, reason)| reason)
    }
}

/// The automatic assignment policy, kept by the assignment service.
struct AssignmentSection {
    version: i64,
    policy: String,
    default_capacity: String,
    /// Empty when untouched leads stay with their agent.
    reassign_untouched_after_minutes: String,
    release_offline_after_grace: bool,
    changes: Vec<ChangeLine>,
    policies: &'static [(pb::AssignmentPolicy, &'static str, &'static str)],
    /// What the service refused of the form just sent.
    refusal: Option<Refusal>,
}

impl AssignmentSection {
    /// The refusal's message when it names `field`, else empty.
    fn error_of(&self, field: &str) -> &str {
        self.refusal.as_ref().filter(|r| r.field == field).map_or("", |r| r.message.as_str())
    }
}

/// The fields of the assignment form a refusal may name.
const ASSIGNMENT_FIELDS: [&str; 3] = ["policy", "default_capacity", "reassign_untouched_after_minutes"];

/// One skill route as its form shows it; blank rows let an admin add routes.
struct RouteRow {
    matches: String,
    skill: String,
    /// `match` or `skill` when the service refused that field of this route, else empty.
    refused: &'static str,
}

/// The organisation's skill routes, kept by the assignment service with its policy.
struct RoutesSection {
    version: i64,
    rows: Vec<RouteRow>,
    /// The service's words when it refused the routes just sent.
    error: String,
}

impl RoutesSection {
    /// Whether the refusal is shown beside the route it names, rather than under them all.
    fn error_on_a_route(&self) -> bool {
        self.rows.iter().any(|r| !r.refused.is_empty())
    }
}

/// Empty rows under the routes, to add that many at a time.
const BLANK_ROUTE_ROWS: usize = 3;

/// (form value, label) of each policy, the form's order.
const POLICIES: [(pb::AssignmentPolicy, &str, &str); 3] = [
    (pb::AssignmentPolicy::Off, "off", "Off: leads wait for a person to assign them"),
    (pb::AssignmentPolicy::RoundRobin, "round_robin", "Round robin: the available agent served longest ago"),
    (pb::AssignmentPolicy::Balanced, "balanced", "Balanced: the available agent with the lowest load for its capacity"),
];

async fn assignment_settings(state: &AppState, session: &Session) -> Result<pb::AssignmentSettings, ConsoleError> {
    let request = pb::GetAssignmentSettingsRequest { org_id: session.org_id.clone() };
    Ok(state
        .backends
        .assignment
        .clone()
        .get_assignment_settings(authorized(&session.token, request))
        .await?
        .into_inner())
}

fn assignment_section(settings: &pb::AssignmentSettings) -> AssignmentSection {
    AssignmentSection {
        version: settings.version,
        policy: POLICIES
            .iter()
            .find(|(p, _, _)| *p as i32 == settings.policy)
            .map_or("off", |(_, name, _)| name)
            .to_owned(),
        default_capacity: settings.default_capacity.to_string(),
        reassign_untouched_after_minutes: number(
            Some(settings.reassign_untouched_after_minutes).filter(|minutes| *minutes > 0),
        ),
        release_offline_after_grace: settings.release_offline_after_grace,
        policies: &POLICIES,
        changes: change_lines(&settings.changes),
        refusal: None,
    }
}

fn routes_section(settings: &pb::AssignmentSettings) -> RoutesSection {
    let rows = settings
        .skill_routes
        .iter()
        .map(|r| RouteRow { matches: r.r#match.clone(), skill: r.skill.clone(), refused: "" })
        .collect();
    RoutesSection { version: settings.version, rows, error: String::new() }
}

fn number(value: Option<i32>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

pub async fn settings(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let session = Session::from_headers(&headers)?;
    let mut page = settings_page(&state, &session).await?;
    offer_new_routes(&mut page);
    html(&page)
}

/// Blank rows under an admin's routes, to add new ones.
pub(crate) fn offer_new_routes(page: &mut SettingsPage) {
    if page.chrome.is_admin {
        page.routes.rows.extend((0..BLANK_ROUTE_ROWS).map(|_| RouteRow {
            matches: String::new(),
            skill: String::new(),
            refused: "",
        }));
    }
}

/// The page once more with what was sent and refused, the refusal beside its field.
pub(crate) fn refused(page: &SettingsPage) -> Page {
    Ok((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response())
}

pub(crate) async fn settings_page(state: &AppState, session: &Session) -> Result<SettingsPage, ConsoleError> {
    let request = pb::GetLeadSettingsRequest { org_id: session.org_id.clone() };
    let mut lead = state.backends.lead.clone();
    let (settings, assignment) =
        tokio::join!(lead.get_lead_settings(authorized(&session.token, request)), assignment_settings(state, session));
    let settings = settings?.into_inner();
    let assignment = assignment?;
    let notifications = crate::notifications_page::notifications_section(state, session).await;
    let rules = settings.status_rules.unwrap_or_default();
    let after_follow_ups =
        Status::from_proto(rules.after_follow_ups).map(|s| s.as_str().to_owned()).unwrap_or_default();
    let after_choices = Status::ALL
        .into_iter()
        .filter(|s| !s.is_final() && *s != Status::FollowUp)
        .map(|s| (s.as_str().to_owned(), views::status_label(s).to_owned()))
        .collect();
    let changes = change_lines(&settings.changes);
    Ok(SettingsPage {
        chrome: Chrome::of(session, "settings"),
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
        routes: routes_section(&assignment),
        notifications,
        assignment: assignment_section(&assignment),
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
    #[serde(default)]
    policy: String,
    #[serde(default)]
    default_capacity: String,
    #[serde(default)]
    reassign_untouched_after_minutes: String,
    /// A checkbox: present when ticked.
    release_offline_after_grace: Option<String>,
}

async fn save_assignment(state: &AppState, session: &Session, form: &AssignmentForm) -> Result<(), ConsoleError> {
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
        // Routes are kept as they are: they have a form of their own.
        skill_routes: None,
    };
    state.backends.assignment.clone().update_assignment_settings(authorized(&session.token, request)).await?;
    Ok(())
}

pub async fn update_assignment_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<AssignmentForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let error = match save_assignment(&state, &session, &form).await {
        Ok(()) => return Ok(see_other("/settings")),
        Err(error) => error,
    };
    let Some(refusal) = Refusal::of(&error, &ASSIGNMENT_FIELDS) else { return Err(error) };
    let mut page = settings_page(&state, &session).await?;
    let section = &mut page.assignment;
    // What the person sent, on the version it was sent against: saving it again must not
    // overwrite a change made meanwhile.
    section.version = form.version;
    section.policy = form.policy;
    section.default_capacity = form.default_capacity;
    section.reassign_untouched_after_minutes = form.reassign_untouched_after_minutes;
    section.release_offline_after_grace = form.release_offline_after_grace.is_some();
    section.refusal = Some(refusal);
    offer_new_routes(&mut page);
    refused(&page)
}

/// The routes a form sent, in order: each row's `route_match` and `route_skill`, a row with
/// both empty left out.
fn sent_routes(pairs: &[(String, String)]) -> Result<Vec<RouteRow>, ConsoleError> {
    let values =
        |name: &str| pairs.iter().filter(|(key, _)| key == name).map(|(_, v)| v.trim().to_owned()).collect::<Vec<_>>();
    let (matches, skills) = (values("route_match"), values("route_skill"));
    if matches.len() != skills.len() {
        return Err(ConsoleError::BadRequest("skill_routes: each route needs a channel or source and a skill".into()));
    }
    Ok(matches
        .into_iter()
        .zip(skills)
        .filter(|(m, s)| !m.is_empty() || !s.is_empty())
        .map(|(matches, skill)| RouteRow { matches, skill, refused: "" })
        .collect())
}

/// Marks the route the service refused, found by what its message quotes: the service checks
/// routes in order and stops at the first it refuses.
fn mark_refused(rows: &mut [RouteRow], refusal: &Refusal) {
    let reason = refusal.reason();
    let quotes = |value: &str| reason.starts_with(&format!("{value:?}"));
    let found = match refusal.field.as_str() {
        "skill_routes.skill" => rows.iter().position(|r| quotes(&r.skill)).map(|i| (i, "skill")),
        // A match given twice is refused where it comes again; one without a value quoted is
        // the first that is empty or holds a space.
        "skill_routes.match" => (0..rows.len())
            .find(|&i| {
                let here = &rows[i].matches;
                if quotes(here) {
                    rows[..i].iter().any(|earlier| earlier.matches == *here)
                } else {
                    here.is_empty() || here.contains(char::is_whitespace)
                }
            })
            .map(|i| (i, "match")),
        _ => None,
    };
    if let Some((i, field)) = found {
        rows[i].refused = field;
    }
}

/// Replaces the organisation's skill routes (admins only, as the assignment service decides,
/// which also checks each), keeping its policy as it is at the version the page showed.
pub async fn update_skill_routes(State(state): State<AppState>, headers: HeaderMap, body: String) -> Page {
    let session = Session::from_headers(&headers)?;
    let pairs = query::pairs(&body);
    let version: i64 = pairs
        .iter()
        .find(|(key, _)| key == "version")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| ConsoleError::BadRequest("version: reload the page and try again".into()))?;
    let mut rows = sent_routes(&pairs)?;
    let current = assignment_settings(&state, &session).await?;
    // The policy goes back as it is; were it changed since the page was read, expected_version
    // refuses the whole change.
    let request = pb::UpdateAssignmentSettingsRequest {
        org_id: session.org_id.clone(),
        policy: current.policy,
        default_capacity: current.default_capacity,
        expected_version: Some(version),
        reassign_untouched_after_minutes: None,
        release_offline_after_grace: None,
        skill_routes: Some(pb::SkillRoutes {
            routes: rows
                .iter()
                .map(|r| pb::SkillRoute { r#match: r.matches.clone(), skill: r.skill.clone() })
                .collect(),
        }),
    };
    let error =
        match state.backends.assignment.clone().update_assignment_settings(authorized(&session.token, request)).await {
            Ok(_) => return Ok(see_other("/settings#skill-routes-title")),
            Err(status) => ConsoleError::from(status),
        };
    let Some(refusal) = Refusal::of(&error, &["skill_routes"]) else { return Err(error) };
    mark_refused(&mut rows, &refusal);
    let mut page = settings_page(&state, &session).await?;
    page.routes = RoutesSection { version, rows, error: refusal.message };
    offer_new_routes(&mut page);
    refused(&page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(routes: &[(&str, &str)]) -> Vec<RouteRow> {
        routes.iter().map(|(m, s)| RouteRow { matches: (*m).into(), skill: (*s).into(), refused: "" }).collect()
    }

    fn refused_at(routes: &[(&str, &str)], message: &str) -> Vec<&'static str> {
        let mut rows = rows(routes);
        let refusal = Refusal::of(&ConsoleError::BadRequest(message.into()), &["skill_routes"]).expect("a refusal");
        mark_refused(&mut rows, &refusal);
        rows.iter().map(|r| r.refused).collect()
    }

    #[test]
    fn a_refused_route_is_found_by_what_the_service_says() {
        let routes = [("whatsapp", "whatsapp"), ("sms", "Bad Skill"), ("whatsapp", "x")];
        assert_eq!(refused_at(&routes, r#"skill_routes.skill: "Bad Skill" must be 1-32 of a-z"#), ["", "skill", ""]);
        assert_eq!(refused_at(&routes, r#"skill_routes.match: "whatsapp" is given twice"#), ["", "", "match"]);
        let unnamed = [("whatsapp", "a"), ("", "b")];
        assert_eq!(refused_at(&unnamed, "skill_routes.match: must be a channel or source"), ["", "match"]);
        assert_eq!(refused_at(&unnamed, "skill_routes: at most 50"), ["", ""]);
    }

    #[test]
    fn a_refusal_names_a_field_of_the_form_or_is_none() {
        let named =
            |message: &str| Refusal::of(&ConsoleError::BadRequest(message.into()), &ASSIGNMENT_FIELDS).map(|r| r.field);
        assert_eq!(named("default_capacity: must be between 1 and 1000").as_deref(), Some("default_capacity"));
        assert_eq!(named("default_capacity_x: no"), None);
        assert_eq!(named("Something else went wrong"), None);
        let conflict = ConsoleError::Grpc(tonic::Status::aborted("policy: changed meanwhile"));
        assert!(Refusal::of(&conflict, &ASSIGNMENT_FIELDS).is_none(), "a conflict is not a field's refusal");
    }

    #[test]
    fn blank_rows_are_left_out_of_the_routes_sent() {
        let body =
            "version=3&route_match=whatsapp&route_skill=wa&route_match=&route_skill=&route_match=sms&route_skill=";
        let sent = sent_routes(&query::pairs(body)).expect("routes");
        let sent: Vec<_> = sent.iter().map(|r| (r.matches.as_str(), r.skill.as_str())).collect();
        assert_eq!(sent, [("whatsapp", "wa"), ("sms", "")]);
    }
}
