//! The pages: each decodes what the browser sent, calls the services with the person's token,
//! and renders the answer. A request made by htmx gets the part of the page it replaces; any
//! other gets the whole page, so that everything works without JavaScript too.

use crate::{
    AppState,
    backends::{anonymous, authorized},
    error::ConsoleError,
    query::{self, ListView, PAGE_SIZES},
    session::{self, Session},
    views::{self, LeadRow, TimelineEntry, When},
};
use askama::Template;
use axum::{
    Form,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use contracts::lead::Status;
use leads_proto::v1 as pb;
use serde::Deserialize;

pub(crate) type Page = Result<Response, ConsoleError>;

/// What every page's frame shows of the signed-in person.
pub struct Chrome {
    pub signed_in: bool,
    pub user: String,
    pub role: String,
    pub org_id: String,
    pub other_orgs: Vec<String>,
    pub csrf: String,
    pub section: &'static str,
    pub runs_the_desk: bool,
    pub is_admin: bool,
}

impl Chrome {
    pub(crate) fn of(session: &Session, section: &'static str) -> Self {
        Self {
            signed_in: true,
            user: session.holder.sub.clone(),
            role: match &session.holder.agent_id {
                Some(agent) => format!("{} {agent}", session.holder.role),
                None => session.holder.role.clone(),
            },
            org_id: session.org_id.clone(),
            other_orgs: session.other_orgs.clone(),
            csrf: session.csrf_token(),
            section,
            runs_the_desk: session.runs_the_desk(),
            is_admin: session.is_admin(),
        }
    }

    fn signed_out(csrf: String) -> Self {
        Self {
            signed_in: false,
            user: String::new(),
            role: String::new(),
            org_id: String::new(),
            other_orgs: Vec::new(),
            csrf,
            section: "",
            runs_the_desk: false,
            is_admin: false,
        }
    }
}

fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

pub(crate) fn html(template: &impl Template) -> Page {
    Ok(Html(template.render()?).into_response())
}

/// `to` when it is a path of ours, else the Leads page: where a page sends the person back to
/// is never another site.
fn own_path(to: &str) -> &str {
    if to.starts_with('/') && !to.starts_with("//") && !to.starts_with("/\\") { to } else { "/leads" }
}

/// After a change made without JavaScript: back to where the person was (a path of ours).
pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(own_path(to)).into_response()
}

pub async fn home(headers: HeaderMap) -> Response {
    match Session::from_headers(&headers) {
        Ok(_) => Redirect::to("/leads").into_response(),
        Err(_) => Redirect::to("/sign-in").into_response(),
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    chrome: Chrome,
    csrf: String,
    org_id: String,
    email: String,
    error: String,
}

/// The sign-in page, with a pre-session cookie whose hash is the form's CSRF token.
fn sign_in_form(headers: &HeaderMap, secure: bool, org_id: String, email: String, error: String) -> Page {
    let (csrf, cookie) = pre_session(headers, secure);
    let page = SignInPage { chrome: Chrome::signed_out(csrf.clone()), csrf, org_id, email, error: error.clone() };
    let status = if error.is_empty() { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
    Ok(with_cookie((status, Html(page.render()?)).into_response(), cookie))
}

pub async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap) -> Page {
    sign_in_form(&headers, state.settings.secure_cookies, String::new(), String::new(), String::new())
}

#[derive(Deserialize)]
pub struct SignInForm {
    org_id: String,
    email: String,
    password: String,
}

pub async fn sign_in(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<SignInForm>) -> Page {
    let request = pb::SignInRequest {
        org_id: form.org_id.trim().to_owned(),
        email: form.email.trim().to_owned(),
        password: form.password,
    };
    match state.backends.people.clone().sign_in(anonymous(request)).await {
        Ok(answer) => Ok(signed_in(&headers, state.settings.secure_cookies, &answer.into_inner())),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
            ) =>
        {
            let message = status.message().to_owned();
            sign_in_form(&headers, state.settings.secure_cookies, form.org_id, form.email, message)
        }
        Err(status) => Err(status.into()),
    }
}

#[derive(Template)]
#[template(path = "set_password.html")]
struct SetPasswordPage {
    chrome: Chrome,
    csrf: String,
    code: String,
    error: String,
}

/// The CSRF token of a form shown before sign-in (bound to the session cookie when there is
/// one, else to a pre-session cookie), and the pre-session cookie to set when there is neither.
fn pre_session(headers: &HeaderMap, secure: bool) -> (String, Option<String>) {
    let (bound_to, cookie) = match session::cookie(headers, session::SESSION_COOKIE)
        .or_else(|| session::cookie(headers, session::PRE_SESSION_COOKIE))
    {
        Some(value) => (value, None),
        None => {
            let (cookie, value) = session::pre_session_cookie(secure);
            (value, Some(cookie))
        }
    };
    (session::csrf_token_for(&bound_to), cookie)
}

/// `response` setting `cookie`, when there is one.
fn with_cookie(mut response: Response, cookie: Option<String>) -> Response {
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// To `to`, setting `cookie`.
fn redirect_setting(to: &str, cookie: String) -> Response {
    with_cookie(Redirect::to(to).into_response(), Some(cookie))
}

/// The page of a one-time setup link: the person chooses a password.
pub async fn set_password_page(State(state): State<AppState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Page {
    let code = query::field(query.as_deref(), "code");
    let (csrf, cookie) = pre_session(&headers, state.settings.secure_cookies);
    let page = SetPasswordPage { chrome: Chrome::signed_out(csrf.clone()), csrf, code, error: String::new() };
    Ok(with_cookie(Html(page.render()?).into_response(), cookie))
}

#[derive(Deserialize)]
pub struct SetPasswordForm {
    code: String,
    password: String,
    confirm: String,
}

pub async fn set_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SetPasswordForm>,
) -> Page {
    let (csrf, cookie) = pre_session(&headers, state.settings.secure_cookies);
    let refuse = |error: String| -> Page {
        let page = SetPasswordPage {
            chrome: Chrome::signed_out(csrf.clone()),
            csrf: csrf.clone(),
            code: form.code.clone(),
            error,
        };
        Ok(with_cookie((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response(), cookie.clone()))
    };
    if form.password != form.confirm {
        return refuse("The two passwords differ.".into());
    }
    let request = pb::SetPasswordRequest { setup_code: form.code.trim().to_owned(), password: form.password.clone() };
    match state.backends.people.clone().set_password(anonymous(request)).await {
        Ok(answer) => {
            let set = answer.into_inner();
            sign_in_form(&headers, state.settings.secure_cookies, set.org_id, set.email, String::new())
        }
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::Unauthenticated
                    | tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition
            ) =>
        {
            refuse(status.message().to_owned())
        }
        Err(status) => Err(status.into()),
    }
}

#[derive(Template)]
#[template(path = "sign_in_code.html")]
struct CodePage {
    chrome: Chrome,
    csrf: String,
    code: String,
}

/// The page of a one-click sign-in link: one button, so that the code is used by a request
/// the person makes on this site (a link previewer that fetches the URL uses nothing up).
pub async fn code_page(State(state): State<AppState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Page {
    let code = query::field(query.as_deref(), "code");
    let (csrf, cookie) = pre_session(&headers, state.settings.secure_cookies);
    let page = CodePage { chrome: Chrome::signed_out(csrf.clone()), csrf, code };
    Ok(with_cookie(Html(page.render()?).into_response(), cookie))
}

#[derive(Deserialize)]
pub struct CodeForm {
    code: String,
}

/// The session cookie after signing in with `answer`.
fn session_cookie_of(headers: &HeaderMap, secure: bool, answer: &pb::SignInResponse) -> String {
    let org_id = answer.person.as_ref().map(|p| p.org_id.as_str()).unwrap_or_default();
    session::signed_in_cookie(headers, org_id, &answer.token, secure)
}

/// Signed in with `answer`: to the Leads page.
fn signed_in(headers: &HeaderMap, secure: bool, answer: &pb::SignInResponse) -> Response {
    redirect_setting("/leads", session_cookie_of(headers, secure, answer))
}

pub async fn sign_in_with_code(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<CodeForm>) -> Page {
    let request = pb::SignInWithCodeRequest { code: form.code.trim().to_owned() };
    match state.backends.people.clone().sign_in_with_code(anonymous(request)).await {
        Ok(answer) => Ok(signed_in(&headers, state.settings.secure_cookies, &answer.into_inner())),
        Err(status) if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::InvalidArgument) => {
            let message = format!("{} Ask for a new link.", status.message());
            sign_in_form(&headers, state.settings.secure_cookies, String::new(), String::new(), message)
        }
        Err(status) => Err(status.into()),
    }
}

/// Remembers which sign-in this browser started at its provider; SameSite=Lax, since the
/// provider sends the browser back from another site.
const OIDC_COOKIE: &str = "leads_oidc";

#[derive(Deserialize)]
pub struct OidcForm {
    org_id: String,
}

/// Sends the browser to the organisation's OpenID Connect provider. A POST with the page's
/// CSRF token, so that no other site can start a sign-in in this browser (and have it come
/// back signed in to an organisation of the other site's choosing).
pub async fn begin_oidc(State(state): State<AppState>, Form(form): Form<OidcForm>) -> Page {
    let org_id = form.org_id.trim().to_owned();
    let answer = state
        .backends
        .people
        .clone()
        .begin_oidc_sign_in(anonymous(pb::BeginOidcSignInRequest { org_id }))
        .await?
        .into_inner();
    let secure = if state.settings.secure_cookies { "; Secure" } else { "" };
    let cookie =
        format!("{OIDC_COOKIE}={}; Path=/sign-in/oidc; HttpOnly; SameSite=Lax; Max-Age=600{secure}", answer.state);
    Ok(redirect_setting(&answer.authorization_url, cookie))
}

#[derive(Template)]
#[template(path = "continue.html")]
struct ContinuePage;

/// Where the provider sends the browser back: the state must be the one this browser was
/// given. The session cookie (SameSite=Strict) is set on a page that then moves on to the
/// Leads page from this site, since a browser withholds it on a redirect begun elsewhere.
pub async fn complete_oidc(State(state): State<AppState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Page {
    let pairs = query::pairs(query.as_deref().unwrap_or(""));
    let field = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    let (returned, code) = (field("state"), field("code"));
    if let Some(error) = pairs.iter().find(|(k, _)| k == "error").map(|(_, v)| v.clone()) {
        return Err(ConsoleError::BadRequest(format!("The provider did not sign you in: {error}.")));
    }
    let expected = session::cookie(&headers, OIDC_COOKIE).unwrap_or_default();
    if returned.is_empty() || expected != returned {
        return Err(ConsoleError::Forbidden("This sign-in was not started in this browser".into()));
    }
    let request = pb::CompleteOidcSignInRequest { state: returned, code };
    let answer = state.backends.people.clone().complete_oidc_sign_in(anonymous(request)).await?.into_inner();
    let cookie = session_cookie_of(&headers, state.settings.secure_cookies, &answer);
    let response = with_cookie(Html(ContinuePage.render()?).into_response(), Some(cookie));
    Ok(with_cookie(response, Some(format!("{OIDC_COOKIE}=; Path=/sign-in/oidc; HttpOnly; SameSite=Lax; Max-Age=0"))))
}

pub async fn sign_out() -> Response {
    redirect_setting("/sign-in", session::clear_cookie())
}

#[derive(Deserialize)]
pub struct SwitchForm {
    org_id: String,
}

pub async fn switch_organisation(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SwitchForm>,
) -> Page {
    Session::from_headers(&headers)?;
    let cookie = session::switched_cookie(&headers, &form.org_id, state.settings.secure_cookies)
        .ok_or_else(|| ConsoleError::BadRequest("org_id: sign in to that organisation first".into()))?;
    Ok(redirect_setting("/leads", cookie))
}

/// An agent as a dropdown shows it: id, and name with its open leads.
pub struct AgentChoice {
    pub id: String,
    pub label: String,
}

pub(crate) async fn agents_of(
    state: &AppState,
    session: &Session,
    active_only: bool,
) -> Result<Vec<pb::Agent>, ConsoleError> {
    let request = pb::ListAgentsRequest { org_id: session.org_id.clone(), active_only };
    Ok(state.backends.assignment.clone().list_agents(authorized(&session.token, request)).await?.into_inner().agents)
}

fn agent_label(agent: &pb::Agent) -> String {
    let name = if agent.name.is_empty() { agent.agent_id.as_str() } else { agent.name.as_str() };
    format!("{name} ({} open)", agent.open_leads)
}

#[derive(Template)]
#[template(path = "leads.html")]
struct LeadsPage {
    chrome: Chrome,
    view: ListView,
    view_query: String,
    view_query_with_page: String,
    rows: Vec<LeadRow>,
    total: i64,
    total_text: String,
    bulk_all_text: String,
    statuses: Vec<(&'static str, &'static str)>,
    sources: Vec<(&'static str, &'static str)>,
    agents: Vec<(String, String)>,
    active_agents: Vec<(String, String)>,
    page_sizes: [i32; 4],
    sort_score: String,
    sort_last: String,
    sort_created: String,
    arrow: &'static str,
    first_page: String,
    next_page: String,
    drawer: Option<String>,
    /// Where the page's live updates start: just before its rows were read.
    watch_cursor: String,
}

async fn leads_page(state: &AppState, session: &Session, query: &str, drawer: Option<String>) -> Page {
    let view = ListView::parse(query)?;
    let request = pb::ListLeadsRequest { with_watch_cursor: true, ..view.to_request(&session.org_id) };
    let mut lead = state.backends.lead.clone();
    let (page, agents) =
        tokio::join!(lead.list_leads(authorized(&session.token, request)), agents_of(state, session, false));
    let page = page?.into_inner();
    // The page still serves when the assignment service does not: only the agent filter lacks.
    // An agent lists its own leads and the unassigned ones: the filter offers only its own.
    let agents: Vec<pb::Agent> = agents
        .unwrap_or_default()
        .into_iter()
        .filter(|a| session.holder.agent_id.as_ref().is_none_or(|own| *own == a.agent_id))
        .collect();
    let rows: Vec<LeadRow> = page.leads.iter().map(LeadRow::of).collect();
    let total = page.total_count.max(0);
    let bulk_limit = i64::try_from(state.settings.bulk_limit).unwrap_or(i64::MAX);
    let template = LeadsPage {
        chrome: Chrome::of(session, "leads"),
        view_query: view.query_string(false),
        view_query_with_page: view.query_string(true),
        total,
        total_text: match (total, page.total_is_estimate) {
            (n, true) => format!("about {n} leads"),
            (1, false) => "1 lead".into(),
            (n, false) => format!("{n} leads"),
        },
        bulk_all_text: if total > bulk_limit { format!("{bulk_limit} of the {total}") } else { total.to_string() },
        statuses: views::statuses(),
        sources: views::sources(),
        agents: agents.iter().map(|a| (a.agent_id.clone(), agent_label(a))).collect(),
        active_agents: agents.iter().filter(|a| a.active).map(|a| (a.agent_id.clone(), agent_label(a))).collect(),
        page_sizes: PAGE_SIZES,
        sort_score: view.url_sorted_by("score"),
        sort_last: view.url_sorted_by("last_interaction"),
        sort_created: view.url_sorted_by("created"),
        arrow: if view.dir == "asc" { "▲" } else { "▼" },
        first_page: view.url_of_page(""),
        next_page: if page.next_page_token.is_empty() {
            String::new()
        } else {
            view.url_of_page(&page.next_page_token)
        },
        watch_cursor: query::encode(&page.watch_cursor),
        rows,
        view,
        drawer,
    };
    html(&template)
}

pub async fn leads(State(state): State<AppState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Page {
    let session = Session::from_headers(&headers)?;
    leads_page(&state, &session, query.as_deref().unwrap_or(""), None).await
}

#[derive(Template)]
#[template(path = "drawer.html")]
struct Drawer {
    lead: LeadRow,
    csrf: String,
    back_query: String,
    statuses: Vec<(&'static str, &'static str)>,
    agents: Vec<AgentChoice>,
    default_due: String,
    request_id: String,
    follow_ups: Vec<(When, String, String)>,
    timeline: Vec<TimelineEntry>,
    past_leads: Vec<String>,
    broadcast_unavailable: bool,
    history_next: String,
}

fn lead_id(id: &str) -> Result<String, ConsoleError> {
    let id = id.trim();
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(ConsoleError::NotFound);
    }
    Ok(id.to_owned())
}

/// The drawer of one lead: its facts, the actions it allows, and its history.
async fn drawer(
    state: &AppState,
    session: &Session,
    id: &str,
    history_page: &str,
    back_query: &str,
) -> Result<String, ConsoleError> {
    let org_id = session.org_id.clone();
    let token = session.token.as_str();
    let lead = state
        .backends
        .lead
        .clone()
        .get_lead(authorized(token, pb::GetLeadRequest { org_id: org_id.clone(), lead_id: id.to_owned() }))
        .await?
        .into_inner();
    let history_request = pb::GetLeadHistoryRequest {
        org_id: org_id.clone(),
        lead_id: id.to_owned(),
        page_size: 50,
        page_token: history_page.to_owned(),
    };
    let follow_ups_request =
        pb::ListFollowUpsRequest { org_id: org_id.clone(), lead_id: id.to_owned(), ..Default::default() };
    let (mut leads, mut follow_up) = (state.backends.lead.clone(), state.backends.follow_up.clone());
    let (history, agents, follow_ups) = tokio::join!(
        leads.get_lead_history(authorized(token, history_request)),
        agents_of(state, session, true),
        follow_up.list_follow_ups(authorized(token, follow_ups_request)),
    );
    let history = history?.into_inner();
    let tomorrow = chrono::Utc::now().date_naive() + chrono::Days::new(1);
    let template = Drawer {
        csrf: session.csrf_token(),
        back_query: back_query.to_owned(),
        statuses: views::statuses(),
        agents: agents
            .unwrap_or_default()
            .iter()
            .map(|a| AgentChoice { id: a.agent_id.clone(), label: agent_label(a) })
            .collect(),
        default_due: format!("{}T09:00", tomorrow.format("%Y-%m-%d")),
        request_id: session::random_token(),
        follow_ups: follow_ups
            .map(|f| f.into_inner().follow_ups)
            .unwrap_or_default()
            .iter()
            .map(|f| {
                let state =
                    pb::FollowUpState::try_from(f.state).map(|s| s.as_str_name().to_lowercase()).unwrap_or_default();
                (When::of(f.due_at.as_ref()), state, f.note.clone())
            })
            .collect(),
        timeline: history.entries.iter().map(TimelineEntry::of).collect(),
        past_leads: history.past_lead_ids,
        broadcast_unavailable: history.broadcast_history_unavailable,
        history_next: query::encode(&history.next_page_token),
        lead: LeadRow::of(&lead),
    };
    Ok(template.render()?)
}

pub async fn lead(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let id = lead_id(&id)?;
    // The history page shown, and the list the drawer was opened from (closing returns there).
    let (history, back) = (query::field(query.as_deref(), "history"), query::field(query.as_deref(), "back"));
    let fragment = is_htmx(&headers);
    match drawer(&state, &session, &id, &history, &back).await {
        Ok(body) if fragment => Ok(Html(body).into_response()),
        // Reached directly (a reload, a shared link): the list the drawer was opened from, with
        // the drawer open.
        Ok(body) => leads_page(&state, &session, &back, Some(body)).await,
        Err(error) if fragment => Ok(error.for_fragment()),
        Err(error) => Err(error),
    }
}

#[derive(Template)]
#[template(path = "row.html")]
struct RowFragment {
    lead: LeadRow,
}

pub async fn lead_row(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Page {
    let session = Session::from_headers(&headers)?;
    let id = lead_id(&id)?;
    let lead = state
        .backends
        .lead
        .clone()
        .get_lead(authorized(&session.token, pb::GetLeadRequest { org_id: session.org_id.clone(), lead_id: id }))
        .await?
        .into_inner();
    html(&RowFragment { lead: LeadRow::of(&lead) })
}

/// The answer to a change made from the drawer: the drawer again (htmx), or the lead's page.
async fn after_change(
    state: &AppState,
    headers: &HeaderMap,
    session: &Session,
    id: &str,
    back: &str,
    result: Result<(), ConsoleError>,
) -> Page {
    let fragment = is_htmx(headers);
    match result {
        Err(error) if fragment => Ok(error.for_fragment()),
        Err(error) => Err(error),
        Ok(()) if fragment => {
            let body = drawer(state, session, id, "", back).await?;
            let mut response = Html(body).into_response();
            // The list's row shows the change too (console.js fetches it).
            response.headers_mut().insert("hx-trigger", HeaderValue::from_static("lead-changed"));
            Ok(response)
        }
        Ok(()) => Ok(see_other(&format!("/leads/{id}?back={}", query::encode(back)))),
    }
}

fn optional_text(value: &str) -> String {
    value.trim().to_owned()
}

#[derive(Deserialize)]
pub struct StatusForm {
    status: String,
    #[serde(default)]
    manual_score: String,
    #[serde(default)]
    clear_manual_score: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    back: String,
}

pub async fn change_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<StatusForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let id = lead_id(&id)?;
    let result =
        async {
            let status: Status =
                form.status.parse().map_err(|_| ConsoleError::BadRequest("status: choose a status".into()))?;
            let manual_score =
                match form.manual_score.trim() {
                    "" => None,
                    text => Some(text.parse::<i32>().ok().filter(|s| (0..=100).contains(s)).ok_or_else(|| {
                        ConsoleError::BadRequest("manual_score: a whole number from 0 to 100".into())
                    })?),
                };
            let request = pb::ChangeStatusRequest {
                org_id: session.org_id.clone(),
                lead_id: id.clone(),
                status: status.to_proto() as i32,
                manual_score,
                reason: optional_text(&form.reason),
                expected_version: form.version.trim().parse().ok(),
                clear_manual_score: !form.clear_manual_score.is_empty(),
                ..Default::default()
            };
            state.backends.lead.clone().change_status(authorized(&session.token, request)).await?;
            Ok(())
        }
        .await;
    after_change(&state, &headers, &session, &id, &form.back, result).await
}

#[derive(Deserialize)]
pub struct AssignForm {
    #[serde(default)]
    agent_id: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    back: String,
}

pub async fn assign(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<AssignForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let id = lead_id(&id)?;
    let agent_id = form.agent_id.trim().to_owned();
    let request = pb::AssignLeadRequest {
        org_id: session.org_id.clone(),
        lead_id: id.clone(),
        unassign: agent_id.is_empty(),
        agent_id,
        reason: optional_text(&form.reason),
        expected_version: form.version.trim().parse().ok(),
        ..Default::default()
    };
    let result = state
        .backends
        .assignment
        .clone()
        .assign_lead(authorized(&session.token, request))
        .await
        .map(|_| ())
        .map_err(Into::into);
    after_change(&state, &headers, &session, &id, &form.back, result).await
}

#[derive(Deserialize)]
pub struct FollowUpForm {
    due_local: String,
    #[serde(default)]
    tz_offset_minutes: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    back: String,
}

/// A `datetime-local` value in the person's time zone (minutes east of UTC, as the page's
/// script reads it; UTC without the script) as a timestamp.
fn due_at(local: &str, offset_minutes: &str) -> Result<prost_types::Timestamp, ConsoleError> {
    let naive = chrono::NaiveDateTime::parse_from_str(local.trim(), "%Y-%m-%dT%H:%M")
        .map_err(|_| ConsoleError::BadRequest("due: a date and time, such as 2026-12-24T09:30".into()))?;
    let offset: i64 = offset_minutes.trim().parse().unwrap_or(0);
    if offset.abs() > 18 * 60 {
        return Err(ConsoleError::BadRequest("due: the time zone is not one that exists".into()));
    }
    let utc = naive.and_utc() - chrono::Duration::minutes(offset);
    Ok(prost_types::Timestamp { seconds: utc.timestamp(), nanos: 0 })
}

pub async fn create_follow_up(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<FollowUpForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let id = lead_id(&id)?;
    let result = async {
        let request = pb::CreateFollowUpRequest {
            org_id: session.org_id.clone(),
            lead_id: id.clone(),
            due_at: Some(due_at(&form.due_local, &form.tz_offset_minutes)?),
            note: optional_text(&form.note),
            request_id: form.request_id.trim().chars().take(128).collect(),
            ..Default::default()
        };
        state.backends.follow_up.clone().create_follow_up(authorized(&session.token, request)).await?;
        Ok(())
    }
    .await;
    after_change(&state, &headers, &session, &id, &form.back, result).await
}

#[derive(Template)]
#[template(path = "bulk_results.html")]
struct BulkResults {
    results: Vec<(String, String, String)>,
    changed: usize,
    back: String,
}

#[derive(Template)]
#[template(path = "bulk_page.html")]
struct BulkPage {
    chrome: Chrome,
    results: String,
}

/// Every active lead of a view, up to `limit`, for "select all matching".
async fn all_matching(
    state: &AppState,
    session: &Session,
    view_query: &str,
    limit: usize,
) -> Result<Vec<String>, ConsoleError> {
    let mut view = ListView::parse(view_query)?;
    view.active = "active".into();
    view.size = 200;
    view.page = String::new();
    let mut ids = Vec::new();
    loop {
        let mut request = view.to_request(&session.org_id);
        request.skip_total = true;
        let page = state.backends.lead.clone().list_leads(authorized(&session.token, request)).await?.into_inner();
        ids.extend(page.leads.into_iter().map(|l| l.id));
        if ids.len() >= limit || page.next_page_token.is_empty() {
            ids.truncate(limit);
            return Ok(ids);
        }
        view.page = page.next_page_token;
    }
}

fn outcome_name(outcome: i32) -> String {
    match pb::BulkOutcome::try_from(outcome) {
        Ok(pb::BulkOutcome::Changed) => "changed",
        Ok(pb::BulkOutcome::Inactive) => "refused: inactive",
        Ok(pb::BulkOutcome::NotFound) => "not found",
        Ok(pb::BulkOutcome::Unchanged) => "unchanged",
        Ok(pb::BulkOutcome::VersionMismatch) => "refused: changed meanwhile",
        _ => "unknown",
    }
    .to_owned()
}

pub async fn bulk(State(state): State<AppState>, headers: HeaderMap, body: String) -> Page {
    let session = Session::from_headers(&headers)?;
    let mut lead_ids = Vec::new();
    let (mut status, mut agent_id, mut reason, mut back, mut all) =
        (String::new(), String::new(), String::new(), String::new(), None);
    for (key, value) in query::pairs(&body) {
        match key.as_str() {
            "lead_ids" => lead_ids.push(value),
            "status" => status = value,
            "agent_id" => agent_id = value,
            "reason" => reason = value,
            "back" => back = value,
            "all_matching" => all = Some(value),
            _ => {}
        }
    }
    let fragment = is_htmx(&headers);
    let result = async {
        if let Some(view_query) = all {
            lead_ids = all_matching(&state, &session, &view_query, state.settings.bulk_limit).await?;
        }
        if lead_ids.is_empty() {
            return Err(ConsoleError::BadRequest("Select at least one lead.".into()));
        }
        if status.is_empty() && agent_id.is_empty() {
            return Err(ConsoleError::BadRequest("Choose a status or an agent to apply.".into()));
        }
        let mut results: Vec<(String, String, String)> = Vec::new();
        let mut changed = 0;
        if !status.is_empty() {
            let status: Status =
                status.parse().map_err(|_| ConsoleError::BadRequest("status: choose a status".into()))?;
            let request = pb::BulkChangeStatusRequest {
                org_id: session.org_id.clone(),
                lead_ids: lead_ids.clone(),
                status: status.to_proto() as i32,
                reason: optional_text(&reason),
                ..Default::default()
            };
            let answer =
                state.backends.lead.clone().bulk_change_status(authorized(&session.token, request)).await?.into_inner();
            changed += answer.results.iter().filter(|r| r.outcome == pb::BulkOutcome::Changed as i32).count();
            results.extend(
                answer
                    .results
                    .into_iter()
                    .map(|r| (r.lead_id, format!("status {}", outcome_name(r.outcome)), r.detail)),
            );
        }
        if !agent_id.is_empty() {
            let request = pb::BulkAssignRequest {
                org_id: session.org_id.clone(),
                lead_ids: lead_ids.clone(),
                agent_id: agent_id.trim().to_owned(),
                reason: optional_text(&reason),
                ..Default::default()
            };
            let answer =
                state.backends.assignment.clone().bulk_assign(authorized(&session.token, request)).await?.into_inner();
            changed += answer.results.iter().filter(|r| r.outcome == pb::BulkOutcome::Changed as i32).count();
            results.extend(
                answer.results.into_iter().map(|r| (r.lead_id, format!("agent {}", outcome_name(r.outcome)), r.detail)),
            );
        }
        Ok(BulkResults { results, changed, back: own_path(&back).to_owned() }.render()?)
    }
    .await;
    match result {
        Ok(body) if fragment => Ok(Html(body).into_response()),
        Ok(body) => html(&BulkPage { chrome: Chrome::of(&session, "leads"), results: body }),
        Err(error) if fragment => Ok(error.for_fragment()),
        Err(error) => Err(error),
    }
}

#[derive(Template)]
#[template(path = "campaigns.html")]
struct CampaignsPage {
    chrome: Chrome,
    campaigns: Vec<pb::CampaignStats>,
    next_page: String,
}

pub async fn campaigns(State(state): State<AppState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Page {
    let session = Session::from_headers(&headers)?;
    let page_token = query::field(query.as_deref(), "page");
    let request = pb::ListCampaignsRequest { org_id: session.org_id.clone(), page_size: 50, page_token };
    let answer =
        state.backends.broadcast.clone().list_campaigns(authorized(&session.token, request)).await?.into_inner();
    html(&CampaignsPage {
        chrome: Chrome::of(&session, "campaigns"),
        campaigns: answer.campaigns,
        next_page: if answer.next_page_token.is_empty() {
            String::new()
        } else {
            format!("/campaigns?page={}", query::encode(&answer.next_page_token))
        },
    })
}

#[derive(Template)]
#[template(path = "qualification.html")]
struct QualificationPage {
    chrome: Chrome,
    model: pb::ModelInfo,
    trained_at: When,
}

pub async fn qualification(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let session = Session::from_headers(&headers)?;
    let request = pb::GetModelRequest { org_id: session.org_id.clone() };
    let model = state.backends.qualification.clone().get_model(authorized(&session.token, request)).await?.into_inner();
    let trained_at = When::of(model.trained_at.as_ref());
    html(&QualificationPage { chrome: Chrome::of(&session, "qualification"), model, trained_at })
}

pub async fn train(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let session = Session::from_headers(&headers)?;
    let request = pb::TrainModelRequest { org_id: session.org_id.clone() };
    state.backends.qualification.clone().train_model(authorized(&session.token, request)).await?;
    Ok(see_other("/qualification"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_time_is_read_in_the_persons_time_zone() {
        let utc = due_at("2026-12-24T09:30", "0").unwrap();
        let paris = due_at("2026-12-24T09:30", "60").unwrap();
        assert_eq!(utc.seconds - paris.seconds, 3600, "09:30 in Paris is an hour before 09:30 UTC");
        assert!(due_at("24/12/2026", "0").is_err());
        assert!(due_at("2026-12-24T09:30", "5000").is_err());
    }

    #[test]
    fn only_paths_of_the_console_are_returned_to() {
        assert_eq!(see_other("https://evil.example/").headers()["location"], "/leads");
        assert_eq!(see_other("//evil.example/").headers()["location"], "/leads");
        assert_eq!(see_other("/\\evil.example/").headers()["location"], "/leads");
        assert_eq!(see_other("/leads?q=a").headers()["location"], "/leads?q=a");
    }
}
