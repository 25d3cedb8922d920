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
    /// Runs services until SIGTERM or SIGINT.
    Run {
        /// `all`, or a comma-separated list: ingest,lead,qualification,assignment,followup,broadcast
        #[arg(long, default_value = "all", env = "LEADS_SERVICES")]
        services: String,
    },
    /// Creates each service's role and schema and applies its migrations.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = platform::Settings::load(cli.config.as_deref())?;
    let _telemetry = platform::telemetry::init("leads", settings.otlp_endpoint.as_deref())?;
    match cli.command.unwrap_or(Command::Run { services: "all".into() }) {
        Command::Migrate => leads::migrate(&settings).await,
        Command::Run { services } => {
            let services = leads::parse_services(&services).map_err(anyhow::Error::msg)?;
            if let Some(addr) = settings.metrics_addr {
                platform::telemetry::install_metrics(addr)?;
            }
            let token = platform::shutdown::on_signal();
            let system = leads::System::start(settings, &services, token).await?;
            for running in &system.running {
                tracing::info!(service = %running.name, grpc = %running.grpc_addr, "serving");
            }
            system.wait().await
        }
    }
}
