use clap::{Parser, Subcommand};
use std::path::PathBuf;

mod people;

/// The lead platform: ingest, lead, qualification, assignment, follow-up and broadcast-tracking.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Settings file (TOML); `LEADS_*` environment variables override it.
    #[arg(long, global = true, env = "LEADS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs services until SIGTERM or SIGINT. Once every service serves, prints each one's
    /// gRPC address (and the console's URL) and then `ready` on stderr, one line each (stdout
    /// carries the JSON logs).
    Run {
        /// `all` (every service and the console), or a comma-separated list of
        /// ingest, lead, qualification, assignment, followup, broadcast, people and console
        #[arg(long, default_value = "all", env = "LEADS_SERVICES")]
        services: String,
    },
    /// Creates each service's role and schema and applies its migrations.
    Migrate,
    /// Publishes a JSON event from a file (or `-` for stdin) to JetStream.
    Publish {
        /// interactions (InteractionEvent), messages (BroadcastMessage), statuses (DeliveryStatus)
        /// messages.batch ({"messages": [BroadcastMessage, ...]}) or statuses.batch
        /// ({"statuses": [DeliveryStatus, ...]})
        #[arg(long, default_value = "interactions")]
        subject: String,
        #[arg(long)]
        org: String,
        file: PathBuf,
    },
    /// Lists a page of an organisation's leads through LeadService (at `endpoints.lead`), then
    /// the next page's token when there is one.
    Leads {
        #[command(flatten)]
        filter: Filter,
        #[arg(long, default_value_t = 20)]
        page_size: i32,
        /// The `next_page_token` printed by the previous page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Writes every lead matching the filters to a CSV file through LeadService/ExportLeads,
    /// with the rows so far on stderr.
    Export {
        #[command(flatten)]
        filter: Filter,
        #[arg(long)]
        out: PathBuf,
    },
    /// Asks grpc.health.v1.Health/Check; exits 0 when SERVING. Without --addr, checks every
    /// service at its configured port (LEADS_GRPC_HOST, LEADS_GRPC_<SERVICE>_PORT), one line
    /// each. Times out after 2 s.
    Health {
        /// host:port of one gRPC server
        #[arg(long)]
        addr: Option<String>,
        /// The service to ask about (e.g. leads.v1.LeadService); the server as a whole by default.
        #[arg(long, default_value = "")]
        service: String,
        #[command(flatten)]
        token: TokenSource,
    },
    /// Prints a bearer token signed with the local key (auth.signing_key_file, or --key), for
    /// `LEADS_TOKEN` or a `--token-file`, and grpcurl (`-expand-headers -H 'authorization:
    /// Bearer ${LEADS_TOKEN}'`). It carries auth.issuer and auth.audience when they are set.
    Token {
        /// An organisation the token may touch; repeat for several (`*`: every one, role
        /// service only).
        #[arg(long = "org", required = true)]
        orgs: Vec<String>,
        /// admin, operator, agent, service or integration
        #[arg(long, default_value = "operator")]
        role: String,
        /// The agent an `agent` token acts as (required for that role): which leads it sees.
        #[arg(long)]
        agent_id: Option<String>,
        /// Who the token speaks for, recorded as the actor of what it changes; $USER by default.
        #[arg(long)]
        sub: Option<String>,
        /// Lifetime: 24h, 30m, 7d, or seconds; at most auth.max_token_lifetime_secs (24h by
        /// default).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// The signing key file (HS256 secret, or RS256/EdDSA private key PEM).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Adds a person, or prints a one-click sign-in link, through PeopleService (at
    /// `endpoints.people`) with a short token signed with auth.signing_key_file.
    #[command(subcommand)]
    People(people::PeopleCommand),
}

#[derive(clap::Args)]
struct Filter {
    #[arg(long)]
    org: String,
    /// A status (NEW, CONTACTED, QUALIFYING, QUALIFIED, FOLLOW_UP, CONVERTED, LOST,
    /// ARCHIVED); repeat for any of several.
    #[arg(long = "status")]
    statuses: Vec<String>,
    /// An agent id; repeat for any of several.
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// Matches contact name, phone or email.
    #[arg(long)]
    search: Option<String>,
    #[command(flatten)]
    token: TokenSource,
}

/// Where a command's bearer token (`leads token`) comes from: never an argument, which `ps`
/// and shell histories would show.
#[derive(clap::Args)]
struct TokenSource {
    /// A file holding the bearer token; without it, the token is read from `LEADS_TOKEN`.
    #[arg(long, env = "LEADS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

impl TokenSource {
    fn token(&self) -> anyhow::Result<Option<String>> {
        leads::ctl::bearer_token(self.token_file.as_deref(), |name| std::env::var(name).ok())
    }
}

impl Filter {
    fn query(self, page_size: i32, page_token: Option<String>) -> anyhow::Result<leads::ctl::LeadQuery> {
        Ok(leads::ctl::LeadQuery {
            token: self.token.token()?,
            org_id: self.org,
            statuses: self.statuses,
            agents: self.agents,
            search: self.search,
            page_size,
            page_token,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = platform::Settings::load(cli.config.as_deref())?;
    let command = cli.command.unwrap_or(Command::Run { services: "all".into() });
    let _telemetry = match &command {
        Command::Run { services } => {
            let components = leads::parse_components(services).map_err(anyhow::Error::msg)?;
            let services: Vec<_> = components.services.into_iter().collect();
            let name = if services.is_empty() {
                "leads-console".to_owned()
            } else {
                platform::telemetry::process_service_name(&services)
            };
            Some(platform::telemetry::init(&name, settings.otlp_endpoint.as_deref())?)
        }
        Command::Migrate => Some(platform::telemetry::init("leads", settings.otlp_endpoint.as_deref())?),
        Command::Publish { .. }
        | Command::Leads { .. }
        | Command::Export { .. }
        | Command::Health { .. }
        | Command::Token { .. }
        | Command::People(_) => None,
    };
    match command {
        Command::Migrate => leads::migrate(&settings).await,
        Command::Publish { subject, org, file } => leads::ctl::publish(&settings, &subject, &org, &file).await,
        Command::Leads { filter, page_size, page_token } => {
            leads::ctl::list_leads(&settings, &filter.query(page_size, page_token)?).await
        }
        Command::Export { filter, out } => {
            leads::ctl::export_leads(&settings, &filter.query(0, None)?, &out).await.map(|_| ())
        }
        Command::Token { orgs, role, agent_id, sub, ttl, key } => {
            let key = key.or_else(|| settings.auth.signing_key_file.clone()).ok_or_else(|| {
                anyhow::anyhow!("no signing key: pass --key or set LEADS_AUTH_SIGNING_KEY_FILE (auth.signing_key_file)")
            })?;
            let role: platform::auth::Role = role.parse().map_err(anyhow::Error::msg)?;
            let sub = sub.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| role.as_str().to_owned());
            let ttl = leads::ctl::parse_ttl(&ttl)?;
            let token = leads::ctl::mint_token(&key, &settings.auth, &sub, role, orgs, agent_id, ttl)?;
            println!("{token}");
            Ok(())
        }
        Command::People(command) => people::run(&settings, command).await,
        Command::Health { addr, service, token } => {
            let token = token.token()?;
            if leads::ctl::health_as(&settings, addr.as_deref(), &service, token.as_deref()).await {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Run { services } => {
            // Before migrations and connections: a SIGTERM during start-up is handled, not the
            // default kill; the services finish starting and then stop cleanly.
            let token = platform::shutdown::on_signal()?;
            let components = leads::parse_components(&services).map_err(anyhow::Error::msg)?;
            if let Some(addr) = settings.metrics_addr {
                platform::telemetry::install_metrics(addr)?;
            }
            let system = if components.services.is_empty() {
                None
            } else {
                Some(leads::System::start(settings.clone(), &components.services, token.clone()).await?)
            };
            // The console calls the services where this process bound them, when it runs them.
            let console = if components.console {
                let settings = system.as_ref().map_or(&settings, |system| &system.infra.settings);
                Some(leads::start_console(settings, token.clone()).await?)
            } else {
                None
            };
            for running in system.iter().flat_map(|system| &system.running) {
                tracing::info!(service = %running.name, grpc = %running.grpc_addr, "serving");
                eprintln!("{} {}", running.name, running.grpc_addr);
            }
            if let Some(console) = &console {
                eprintln!("console http://{}", console.addr);
            }
            if !token.is_cancelled() {
                eprintln!("ready");
            }
            let console = async move {
                match console {
                    Some(console) => console.task.await?,
                    None => Ok(()),
                }
            };
            let system = async move {
                match system {
                    Some(system) => system.wait().await,
                    None => Ok(()),
                }
            };
            let (system, console) = tokio::join!(system, console);
            system.and(console)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_command_takes_a_token_as_an_argument() {
        for command in [
            &["leads", "leads", "--org", "acme", "--token", "abc.def.ghi"][..],
            &["leads", "export", "--org", "acme", "--out", "x.csv", "--token", "abc.def.ghi"],
            &["leads", "health", "--token", "abc.def.ghi"],
        ] {
            assert!(Cli::try_parse_from(command).is_err(), "{command:?}");
        }
        let with_file = Cli::try_parse_from(["leads", "leads", "--org", "acme", "--token-file", "/run/token"]);
        assert!(with_file.is_ok());
    }
}
