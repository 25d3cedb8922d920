//! The people directory: the people of each organisation, who sign in with a password, a
//! one-time sign-in code (`codes`) or the organisation's OpenID Connect provider (`oidc`). A
//! person is (org_id, email), so each organisation's accounts are its own. Admins add people
//! (who set their password with a one-time setup code), change their role, deactivate them
//! and reset their password; every sign-in gives a short-lived token signed with the
//! process's `auth.signing_key_file`. What ends a person's sessions is published as
//! `events.people.<org>.sessions_ended`, which every process follows (`platform::sessions`).
//! No consumers: the service reads no stream.

mod codes;
mod directory;
pub mod error;
mod grpc;
mod oidc;
pub mod password;

use leads_proto::v1::people_service_server as server;
use platform::{
    ServiceName,
    auth::Signer,
    egress::EgressPolicy,
    nats::Subjects,
    outbox::OutboxSignal,
    service::{Infra, Running, ServiceBase},
    settings::PeopleSettings,
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/people");

/// How often failure counts that no longer count, and codes and sign-ins past their time, are
/// deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct PeopleContext {
    pub pool: PgPool,
    pub subjects: Subjects,
    pub outbox: OutboxSignal,
    pub settings: PeopleSettings,
    /// `people.session_ttl_secs`, cut to `auth.max_token_lifetime_secs`.
    pub session_ttl: Duration,
    /// Signs the tokens of `SignIn`; none without `auth.signing_key_file`.
    pub signer: Option<Arc<Signer>>,
    pub hasher: password::Hasher,
    pub oidc: Arc<oidc::Oidc>,
}

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let settings = &infra.settings;
    let mut base = ServiceBase::start(infra, ServiceName::People, &MIGRATOR, &token).await?;
    let signer = match &settings.auth.signing_key_file {
        Some(path) => Some(Arc::new(Signer::with_settings(path, &settings.auth)?)),
        None => {
            if settings.auth.enabled() {
                tracing::warn!("no auth.signing_key_file: SignIn answers FAILED_PRECONDITION");
            }
            None
        }
    };
    let ctx = PeopleContext {
        pool: base.pool.clone(),
        subjects: infra.subjects.clone(),
        outbox: base.outbox.clone(),
        settings: settings.people.clone(),
        session_ttl: Duration::from_secs(settings.people.session_ttl_secs.min(settings.auth.max_token_lifetime_secs)),
        signer,
        hasher: password::Hasher::new().await?,
        oidc: Arc::new(oidc::Oidc::new(EgressPolicy::allowing(&settings.people.oidc_allowed_networks)?)?),
    };
    base.spawn("sign-in pruner", prune(ctx.clone(), token.clone()));
    let routes = tonic::service::Routes::new(server::PeopleServiceServer::new(grpc::PeopleApi { ctx }));
    base.serve(infra, &["leads.v1.PeopleService"], routes, token).await
}

async fn prune(ctx: PeopleContext, token: CancellationToken) -> anyhow::Result<()> {
    loop {
        for (what, pruned) in [
            ("sign-in failure counts", directory::prune_failures(&ctx).await),
            ("sign-in codes", codes::prune(&ctx).await),
            ("openid connect sign-ins", oidc::prune(&ctx).await),
        ] {
            match pruned {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, what, "stale rows pruned"),
                Err(error) => tracing::warn!(%error, what, "cannot prune stale rows, retrying later"),
            }
        }
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
