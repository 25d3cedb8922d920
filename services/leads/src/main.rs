use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
    /// gRPC address and then `ready` on stderr, one line each (stdout carries the JSON logs).
    Run {
        /// `all`, or a comma-separated list: ingest,lead,qualification,assignment,followup,broadcast
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
    /// Lists an organisation's leads through LeadService (at `endpoints.lead`).
    Leads {
        #[arg(long)]
        org: String,
        #[arg(long, default_value_t = 20)]
        page_size: i32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = platform::Settings::load(cli.config.as_deref())?;
    let _telemetry = match &cli.command {
        Some(Command::Publish { .. } | Command::Leads { .. }) => None,
        _ => Some(platform::telemetry::init("leads", settings.otlp_endpoint.as_deref())?),
    };
    match cli.command.unwrap_or(Command::Run { services: "all".into() }) {
        Command::Migrate => leads::migrate(&settings).await,
        Command::Publish { subject, org, file } => leads::ctl::publish(&settings, &subject, &org, &file).await,
        Command::Leads { org, page_size } => leads::ctl::list_leads(&settings, &org, page_size).await,
        Command::Run { services } => {
            // Before migrations and connections: a SIGTERM during start-up is handled, not the
            // default kill; the services finish starting and then stop cleanly.
            let token = platform::shutdown::on_signal()?;
            let services = leads::parse_services(&services).map_err(anyhow::Error::msg)?;
            if let Some(addr) = settings.metrics_addr {
                platform::telemetry::install_metrics(addr)?;
            }
            let system = leads::System::start(settings, &services, token.clone()).await?;
            for running in &system.running {
                tracing::info!(service = %running.name, grpc = %running.grpc_addr, "serving");
                eprintln!("{} {}", running.name, running.grpc_addr);
            }
            if !token.is_cancelled() {
                eprintln!("ready");
            }
            system.wait().await
        }
    }
}
