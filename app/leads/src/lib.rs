//! Runs any set of the platform's services in one process, sharing one NATS connection.
//! The `leads` binary is a thin shell around this; the test harness uses it in-process.

pub mod ctl;

use platform::{
    ServiceName, Settings,
    service::{Infra, Running},
};
use std::collections::BTreeSet;
use tokio_util::sync::CancellationToken;

/// Parses `all` or a comma-separated list of service names.
/// What one process runs: services, and the console (which owns no data and only calls them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Components {
    pub services: BTreeSet<ServiceName>,
    pub console: bool,
}

/// `all` (every service and the console), or a comma-separated list of services and
/// `console`.
pub fn parse_components(list: &str) -> Result<Components, String> {
    if list.trim() == "all" {
        return Ok(Components { services: ServiceName::ALL.into_iter().collect(), console: true });
    }
    let mut components = Components { services: BTreeSet::new(), console: false };
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "console" {
            components.console = true;
        } else {
            components.services.insert(name.parse()?);
        }
    }
    if components.services.is_empty() && !components.console {
        return Err("name at least one service (or console), or all".into());
    }
    Ok(components)
}

/// Serves the console, calling the services where `settings.endpoints` says (a `System` of
/// the same process has pointed them at the ports it bound).
pub async fn start_console(settings: &Settings, token: CancellationToken) -> anyhow::Result<console::RunningConsole> {
    let endpoints = &settings.endpoints;
    let console = console::ConsoleSettings {
        listen: format!("{}:{}", settings.grpc.host, settings.console.port),
        endpoints: console::Endpoints {
            lead: endpoints.lead.clone(),
            assignment: endpoints.assignment.clone(),
            follow_up: endpoints.followup.clone(),
            broadcast: endpoints.broadcast.clone(),
            qualification: endpoints.qualification.clone(),
            people: endpoints.people.clone(),
            notifications: endpoints.notifications.clone(),
        },
        secure_cookies: settings.console.secure_cookies,
        bulk_limit: contracts::values::limits::MAX_BULK_LEADS,
    };
    console::start(console, settings, token).await
}

/// The services of one process, running until their token is cancelled.
pub struct System {
    pub infra: Infra,
    pub running: Vec<Running>,
    /// Follows the people directory's ended sessions for the verifiers of this process's
    /// servers (`platform::sessions`); none while authentication is off.
    sessions: Option<tokio::task::JoinHandle<()>>,
}

impl System {
    /// Starts `services` in a fixed order; a failure to start any of them is an error.
    pub async fn start(
        settings: Settings,
        services: &BTreeSet<ServiceName>,
        token: CancellationToken,
    ) -> anyhow::Result<Self> {
        // Only through the admin connection, which a service that does not bootstrap never uses.
        if services.iter().any(|s| platform::db::bootstraps(&settings, *s)) {
            platform::db::ensure_database(&settings).await?;
        }
        let mut infra = Infra::connect(settings, "leads").await?;
        // Before any server answers, so that none accepts a token whose session has ended.
        let sessions = if infra.settings.auth.enabled() {
            let max_lifetime = std::time::Duration::from_secs(infra.settings.auth.max_token_lifetime_secs);
            let follow =
                platform::sessions::follow(infra.js.clone(), infra.subjects.clone(), max_lifetime, token.clone());
            Some(follow.await.map_err(|e| e.context("cannot follow the people directory's ended sessions"))?)
        } else {
            None
        };
        let mut running = Vec::new();
        // Every port is bound before any service starts, so that services calling each other
        // in this process (lead and broadcast call each other) reach the address actually bound
        // (port 0 in tests) rather than the configured one.
        let scheme = if infra.settings.grpc.tls_cert_file.is_some() { "https" } else { "http" };
        for &service in services {
            let addr = platform::grpc::reserve(&infra.settings.grpc.host, infra.settings.grpc.port(service))?;
            infra.settings.grpc.set_port(service, addr.port());
            infra.settings.endpoints.set(service, format!("{scheme}://{addr}"));
        }
        for &service in services {
            let started = start_service(&infra, service, token.clone()).await;
            match started {
                Ok(started) => {
                    running.push(started);
                }
                Err(error) => {
                    token.cancel();
                    return Err(error.context(format!("cannot start the {service} service")));
                }
            }
        }
        Ok(Self { infra, running, sessions })
    }

    pub fn grpc_addr(&self, service: ServiceName) -> Option<std::net::SocketAddr> {
        self.running.iter().find(|r| r.name == service).map(|r| r.grpc_addr)
    }

    /// Waits until every service has stopped; returns the first failure. The services are
    /// watched together: one whose task fails stops them all (they share the token).
    pub async fn wait(self) -> anyhow::Result<()> {
        let results = futures::future::join_all(self.running.into_iter().map(Running::wait)).await;
        // It stops with the services' token; after them, so that none serves without it.
        if let Some(sessions) = self.sessions {
            let _ = sessions.await;
        }
        let _ = self.infra.nats.flush().await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>().map(|_| ())
    }
}

pub async fn start_service(infra: &Infra, service: ServiceName, token: CancellationToken) -> anyhow::Result<Running> {
    match service {
        ServiceName::Ingest => ingest::start(infra, token).await,
        ServiceName::Lead => lead::start(infra, token).await,
        ServiceName::Qualification => qualification::start(infra, token).await,
        ServiceName::Assignment => assignment::start(infra, token).await,
        ServiceName::FollowUp => followup::start(infra, token).await,
        ServiceName::Broadcast => broadcast::start(infra, token).await,
        ServiceName::People => people::start(infra, token).await,
        ServiceName::Notifications => notifications::start(infra, token).await,
    }
}

/// Bootstraps and migrates every service's schema, then exits.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    platform::db::ensure_database(settings).await?;
    for service in ServiceName::ALL {
        let migrator = match service {
            ServiceName::Ingest => &ingest::MIGRATOR,
            ServiceName::Lead => &lead::MIGRATOR,
            ServiceName::Qualification => &qualification::MIGRATOR,
            ServiceName::Assignment => &assignment::MIGRATOR,
            ServiceName::FollowUp => &followup::MIGRATOR,
            ServiceName::Broadcast => &broadcast::MIGRATOR,
            ServiceName::People => &people::MIGRATOR,
            ServiceName::Notifications => &notifications::MIGRATOR,
        };
        platform::db::bootstrap_and_migrate(settings, service, migrator).await?;
    }
    Ok(())
}
