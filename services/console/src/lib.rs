//! The Leads page in a browser. The console owns no lead data and holds no key: every page is
//! made from the services' gRPC answers to calls carrying the signed-in person's own token, so
//! every rule (organisations, roles, an agent's leads, inactive leads) is enforced where it
//! already is. Pages are rendered on the server (askama, escaped by default) and work without
//! JavaScript; htmx swaps parts of them in place, and a small script of our own follows the
//! live changes (Server-Sent Events from `LeadService.WatchLeads`).

mod agents_page;
mod backends;
mod error;
mod export;
mod live;
mod notifications_page;
mod pages;
mod query;
mod security;
mod session;
mod settings_page;
mod views;
mod webhooks_page;

use axum::{
    Router,
    routing::{get, post},
};
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

pub use backends::Backends;
pub use session::{SESSION_COOKIE, session_cookie_value};

/// What the console is built from.
#[derive(Clone)]
pub struct ConsoleSettings {
    /// Where it listens (`host:port`; port 0 picks one).
    pub listen: String,
    /// The services it calls, each `http://` or `https://`.
    pub endpoints: Endpoints,
    /// Marks the session cookie `Secure`: the console is reached over TLS (directly or behind
    /// a proxy that terminates it).
    pub secure_cookies: bool,
    /// The most rows "select all matching" selects: the services' bulk limit.
    pub bulk_limit: usize,
}

/// The services the console calls.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub lead: String,
    pub assignment: String,
    pub follow_up: String,
    pub broadcast: String,
    pub qualification: String,
    pub people: String,
    pub notifications: String,
}

/// A running console: where it listens and the task that serves until the token fires.
pub struct RunningConsole {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub backends: Backends,
    pub settings: std::sync::Arc<ConsoleSettings>,
    pub stopping: CancellationToken,
}

/// Every route of the console.
fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::home))
        .route("/sign-in", get(pages::sign_in_page).post(pages::sign_in))
        .route("/sign-out", post(pages::sign_out))
        .route("/set-password", get(pages::set_password_page).post(pages::set_password))
        .route("/sign-in/code", get(pages::code_page).post(pages::sign_in_with_code))
        .route("/sign-in/oidc", post(pages::begin_oidc))
        .route("/sign-in/oidc/callback", get(pages::complete_oidc))
        .route("/switch", post(pages::switch_organisation))
        .route("/leads", get(pages::leads))
        .route("/leads/export", get(export::export))
        .route("/leads/bulk", post(pages::bulk))
        .route("/leads/live", get(live::events))
        .route("/leads/{id}", get(pages::lead))
        .route("/leads/{id}/row", get(pages::lead_row))
        .route("/leads/{id}/status", post(pages::change_status))
        .route("/leads/{id}/assign", post(pages::assign))
        .route("/leads/{id}/follow-ups", post(pages::create_follow_up))
        .route("/campaigns", get(pages::campaigns))
        .route("/agents", get(agents_page::agents).post(agents_page::add_agent))
        .route("/agents/{id}", post(agents_page::set_agent_active))
        .route("/agents/{id}/presence", post(agents_page::set_agent_presence))
        .route("/agents/{id}/capacity", post(agents_page::set_agent_capacity))
        .route("/agents/{id}/routing", post(agents_page::set_agent_routing))
        .route("/qualification", get(pages::qualification))
        .route("/qualification/train", post(pages::train))
        .route("/settings", get(settings_page::settings).post(settings_page::update_settings))
        .route("/settings/assignment", post(settings_page::update_assignment_settings))
        .route("/settings/skill-routes", post(settings_page::update_skill_routes))
        .route("/settings/notifications", post(notifications_page::update_notification_settings))
        .route("/notifications", get(notifications_page::notifications))
        .route("/notifications/bell", get(notifications_page::bell))
        .route("/notifications/list", get(notifications_page::notification_list))
        .route("/notifications/read", post(notifications_page::mark_read))
        .route("/webhooks", get(webhooks_page::webhooks).post(webhooks_page::create))
        .route("/webhooks/{id}", get(webhooks_page::webhook))
        .route("/webhooks/{id}/enabled", post(webhooks_page::set_enabled))
        .route("/webhooks/{id}/rotate", post(webhooks_page::rotate))
        .route("/webhooks/{id}/delete", get(webhooks_page::confirm_delete).post(webhooks_page::delete))
        .route("/webhooks/{id}/replay", post(webhooks_page::replay))
        .route("/assets/{name}", get(security::asset))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn(security::csrf))
        .layer(axum::middleware::from_fn(security::headers))
        .with_state(state)
}

/// Serves the console until `token` fires.
pub async fn start(
    settings: ConsoleSettings,
    grpc: &platform::Settings,
    token: CancellationToken,
) -> anyhow::Result<RunningConsole> {
    let backends = Backends::connect(grpc, &settings.endpoints)?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("console: cannot listen on {}: {e}", settings.listen))?;
    let addr = listener.local_addr()?;
    let state = AppState { backends, settings: std::sync::Arc::new(settings), stopping: token.clone() };
    let app = router(state);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await?;
        Ok(())
    });
    tracing::info!(console = %addr, "console started");
    Ok(RunningConsole { addr, task })
}
