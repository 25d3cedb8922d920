//! The Agents page: the organisation's agents (presence, load against capacity), each one's
//! skills, working hours and capacity behind its own details, and the leads waiting for an
//! agent. The assignment service decides who may change what (admins an agent, an agent only
//! its own presence); the page offers only what the signed-in person may do.

use crate::{
    AppState,
    backends::authorized,
    error::ConsoleError,
    pages::{Chrome, Page, agents_of, html, see_other},
    query,
    session::Session,
    views::When,
};
use askama::Template;
use axum::{
    Form,
    extract::{Path, RawQuery, State},
    http::HeaderMap,
};
use leads_proto::v1 as pb;
use serde::Deserialize;

/// One agent as the Agents page shows it: its load against its capacity, and its presence as
/// it counts for automatic assignment.
struct AgentLine {
    id: String,
    name: String,
    /// The name, or the id of an agent without one.
    label: String,
    active: bool,
    open_leads: i64,
    capacity: i32,
    /// The agent's own capacity as the field shows it; empty when the organisation's default
    /// applies.
    own_capacity: String,
    presence: &'static str,
    last_assigned: When,
    last_seen: When,
    /// Comma-separated, as the field shows them.
    skills: String,
    time_zone: String,
    /// `mon,tue,...`, empty when the agent is always working.
    days: String,
    start: String,
    end: String,
    /// The working hours in words: `always`, or `mon,tue 09:00-17:00 UTC+02:00`.
    hours: String,
    /// Whether the signed-in person may set this agent's presence: the desk's runners any
    /// agent's, an agent its own.
    may_set_presence: bool,
    /// Its details shown open: the agent was just changed on this page.
    open: bool,
}

struct WaitingLine {
    lead_id: String,
    score: String,
    since: When,
    handing_to: String,
    waiting_for: String,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    chrome: Chrome,
    agents: Vec<AgentLine>,
    /// (form value, button text) of each presence, the switch's order.
    presences: &'static [(pb::Presence, &'static str, &'static str)],
    /// `None` for an agent, who does not see the queue.
    waiting: Option<Vec<WaitingLine>>,
    waiting_total: i64,
}

const PRESENCES: [(pb::Presence, &str, &str); 3] = [
    (pb::Presence::Available, "available", "Available"),
    (pb::Presence::Away, "away", "Away"),
    (pb::Presence::Offline, "offline", "Offline"),
];

fn presence_name(value: i32) -> &'static str {
    PRESENCES.iter().find(|(p, _, _)| *p as i32 == value).map_or("offline", |(_, name, _)| name)
}

/// The working hours in words; a time zone reads as set (`Europe/Berlin`), an offset from UTC
/// after `UTC` (`UTC+02:00`).
fn hours_in_words(hours: Option<&pb::WorkingHours>, time_zone: &str) -> String {
    let zone = if time_zone.is_empty() || time_zone.starts_with(['+', '-']) {
        format!("UTC{time_zone}")
    } else {
        time_zone.to_owned()
    };
    match hours {
        Some(h) if !h.days.is_empty() => format!("{} {}-{} {zone}", h.days.join(","), h.start, h.end),
        _ => "always".into(),
    }
}

fn line(agent: pb::Agent, session: &Session, open: &str) -> AgentLine {
    let own = session.holder.agent_id.as_deref();
    let hours = agent.working_hours.as_ref();
    AgentLine {
        may_set_presence: session.runs_the_desk() || own == Some(agent.agent_id.as_str()),
        presence: presence_name(agent.presence),
        own_capacity: agent.capacity.map(|c| c.to_string()).unwrap_or_default(),
        capacity: agent.effective_capacity,
        last_assigned: When::of(agent.last_assigned_at.as_ref()),
        last_seen: When::of(agent.last_seen_at.as_ref()),
        skills: agent.skills.join(", "),
        hours: hours_in_words(hours, &agent.time_zone),
        days: hours.map(|h| h.days.join(",")).unwrap_or_default(),
        start: hours.map(|h| h.start.clone()).unwrap_or_default(),
        end: hours.map(|h| h.end.clone()).unwrap_or_default(),
        time_zone: agent.time_zone,
        open_leads: agent.open_leads,
        active: agent.active,
        label: if agent.name.is_empty() { agent.agent_id.clone() } else { agent.name.clone() },
        name: agent.name,
        open: agent.agent_id == open,
        id: agent.agent_id,
    }
}

async fn waiting_leads(state: &AppState, session: &Session) -> Result<(Vec<WaitingLine>, i64), ConsoleError> {
    let request = pb::ListWaitingLeadsRequest { org_id: session.org_id.clone(), page_size: 50 };
    let answer =
        state.backends.assignment.clone().list_waiting_leads(authorized(&session.token, request)).await?.into_inner();
    let lines = answer
        .leads
        .into_iter()
        .map(|l| WaitingLine {
            score: l.score.map(|s| s.to_string()).unwrap_or_default(),
            since: When::of(l.waiting_since.as_ref()),
            handing_to: l.handing_to,
            waiting_for: l.waiting_for,
            lead_id: l.lead_id,
        })
        .collect();
    Ok((lines, answer.total))
}

/// `?open=<agent id>` shows that agent's details open, where a change made in them returns.
pub async fn agents(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Page {
    let session = Session::from_headers(&headers)?;
    let open = query::field(raw.as_deref(), "open");
    let agents = agents_of(&state, &session, false).await?;
    let lines = agents.into_iter().map(|a| line(a, &session, &open)).collect();
    let (waiting, waiting_total) = if session.runs_the_desk() {
        let (lines, total) = waiting_leads(&state, &session).await?;
        (Some(lines), total)
    } else {
        (None, 0)
    };
    html(&AgentsPage {
        chrome: Chrome::of(&session, "agents"),
        agents: lines,
        presences: &PRESENCES,
        waiting,
        waiting_total,
    })
}

/// Back to the agent's row after a change, its details open when the change was made there.
fn back_to(agent_id: &str, details_open: bool) -> axum::response::Response {
    let id = query::encode(agent_id);
    if details_open {
        see_other(&format!("/agents?open={id}#agent-{id}"))
    } else {
        see_other(&format!("/agents#agent-{id}"))
    }
}

#[derive(Deserialize)]
pub struct PresenceForm {
    presence: String,
}

/// Sets an agent's presence (the assignment service lets an agent set only its own), which
/// also counts as its heartbeat.
pub async fn set_agent_presence(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<PresenceForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let presence = PRESENCES
        .iter()
        .find(|(_, name, _)| *name == form.presence)
        .map(|(p, _, _)| *p)
        .ok_or_else(|| ConsoleError::BadRequest("presence: choose available, away or offline".into()))?;
    let request =
        pb::SetPresenceRequest { org_id: session.org_id.clone(), agent_id: id.clone(), presence: presence as i32 };
    state.backends.assignment.clone().set_presence(authorized(&session.token, request)).await?;
    Ok(back_to(&id, false))
}

#[derive(Deserialize)]
pub struct CapacityForm {
    #[serde(default)]
    capacity: String,
}

/// Sets an agent's capacity (admins only, as the assignment service decides); empty returns
/// to the organisation's default.
pub async fn set_agent_capacity(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CapacityForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let capacity = match form.capacity.trim() {
        "" => 0,
        text => text
            .parse()
            .map_err(|_| ConsoleError::BadRequest("capacity: give a whole number, or leave it empty".into()))?,
    };
    let request = pb::UpsertAgentRequest {
        org_id: session.org_id.clone(),
        agent_id: id.clone(),
        capacity: Some(capacity),
        ..Default::default()
    };
    state.backends.assignment.clone().upsert_agent(authorized(&session.token, request)).await?;
    Ok(back_to(&id, true))
}

#[derive(Deserialize)]
pub struct RoutingForm {
    #[serde(default)]
    skills: String,
    #[serde(default)]
    time_zone: String,
    #[serde(default)]
    days: String,
    #[serde(default)]
    start: String,
    #[serde(default)]
    end: String,
}

/// Replaces an agent's skills, time zone and working hours (admins only, as the assignment
/// service decides, which also checks each); empty days mean always working.
pub async fn set_agent_routing(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<RoutingForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let list = |text: &str| -> Vec<String> {
        text.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
    };
    let request = pb::UpsertAgentRequest {
        org_id: session.org_id.clone(),
        agent_id: id.clone(),
        skills: Some(pb::Skills { names: list(&form.skills) }),
        time_zone: Some(form.time_zone.trim().to_owned()),
        working_hours: Some(pb::WorkingHours {
            days: list(&form.days),
            start: form.start.trim().to_owned(),
            end: form.end.trim().to_owned(),
        }),
        ..Default::default()
    };
    state.backends.assignment.clone().upsert_agent(authorized(&session.token, request)).await?;
    Ok(back_to(&id, true))
}

#[derive(Deserialize)]
pub struct AgentForm {
    active: String,
    #[serde(default)]
    name: String,
}

pub async fn set_agent_active(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<AgentForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let request = pb::UpsertAgentRequest {
        org_id: session.org_id.clone(),
        agent_id: id.clone(),
        name: form.name,
        active: Some(form.active == "true"),
        ..Default::default()
    };
    state.backends.assignment.clone().upsert_agent(authorized(&session.token, request)).await?;
    Ok(back_to(&id, true))
}

#[derive(Deserialize)]
pub struct NewAgentForm {
    agent_id: String,
    #[serde(default)]
    name: String,
}

/// Adds an agent (admins only, as the assignment service decides): the agents people of role
/// agent act as, and whom leads are assigned to.
pub async fn add_agent(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<NewAgentForm>) -> Page {
    let session = Session::from_headers(&headers)?;
    let agent_id = form.agent_id.trim().to_owned();
    if agent_id.is_empty() {
        return Err(ConsoleError::BadRequest("agent_id: give the agent an id".into()));
    }
    let request = pb::UpsertAgentRequest {
        org_id: session.org_id.clone(),
        agent_id,
        name: form.name.trim().to_owned(),
        active: Some(true),
        ..Default::default()
    };
    state.backends.assignment.clone().upsert_agent(authorized(&session.token, request)).await?;
    Ok(see_other("/agents"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_hours_read_as_days_times_and_offset_or_always() {
        let hours =
            pb::WorkingHours { days: vec!["mon".into(), "tue".into()], start: "09:00".into(), end: "17:00".into() };
        assert_eq!(hours_in_words(Some(&hours), "+02:00"), "mon,tue 09:00-17:00 UTC+02:00");
        assert_eq!(hours_in_words(Some(&hours), ""), "mon,tue 09:00-17:00 UTC");
        assert_eq!(hours_in_words(Some(&hours), "Europe/Berlin"), "mon,tue 09:00-17:00 Europe/Berlin");
        assert_eq!(hours_in_words(Some(&pb::WorkingHours::default()), "+02:00"), "always");
        assert_eq!(hours_in_words(None, ""), "always");
    }
}
