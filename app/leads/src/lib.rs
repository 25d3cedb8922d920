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
pub fn parse_services(list: &str) -> Result<BTreeSet<ServiceName>, String> {
    if list.trim() == "all" {
        return Ok(ServiceName::ALL.into_iter().collect());
    }
    let services =
        list.split(',').filter(|s| !s.trim().is_empty()).map(str::parse).collect::<Result<BTreeSet<_>, _>>()?;
    if services.is_empty() {
        return Err("name at least one service, or all".into());
    }
    Ok(services)
}

/// The services of one process, running until their token is cancelled.
pub struct System {
    pub infra: Infra,
    pub running: Vec<Running>,
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
        let mut running = Vec::new();
        // Services that others call start first, so that callers in this process reach the
        // address actually bound (port 0 in tests) rather than the configured one.
        let mut ordered: Vec<ServiceName> = services.iter().copied().collect();
        ordered.sort_by_key(|s| match s {
            ServiceName::Broadcast => 0,
            ServiceName::Lead => 1,
            _ => 2,
        });
        for service in ordered {
            let started = start_service(&infra, service, token.clone()).await;
            match started {
                Ok(started) => {
                    let scheme = if infra.settings.grpc.tls_cert_file.is_some() { "https" } else { "http" };
                    let url = format!("{scheme}://{}", started.grpc_addr);
                    match service {
                        ServiceName::Broadcast => infra.settings.endpoints.broadcast = url,
                        ServiceName::Lead => infra.settings.endpoints.lead = url,
                        _ => {}
                    }
                    running.push(started);
                }
                Err(error) => {
                    token.cancel();
                    return Err(error.context(format!("cannot start the {service} service")));
                }
            }
        }
        Ok(Self { infra, running })
    }

    pub fn grpc_addr(&self, service: ServiceName) -> Option<std::net::SocketAddr> {
        self.running.iter().find(|r| r.name == service).map(|r| r.grpc_addr)
    }

    /// Waits until every service has stopped; returns the first failure. The services are
    /// watched together: one whose task fails stops them all (they share the token).
    pub async fn wait(self) -> anyhow::Result<()> {
        let results = futures::future::join_all(self.running.into_iter().map(Running::wait)).await;
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
        };
        platform::db::bootstrap_and_migrate(settings, service, migrator).await?;
    }
    Ok(())
}
