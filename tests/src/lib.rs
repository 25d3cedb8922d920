//! The test harness: every service of the platform in-process (or as real child processes)
//! against the real Postgres and NATS. Each `TestEnv` has its own database and its own
//! subject/stream prefix, so tests run in parallel without seeing each other.

use async_nats::{HeaderMap, jetstream};
use leads_proto::v1::{
    assignment_service_client::AssignmentServiceClient,
    broadcast_tracking_service_client::BroadcastTrackingServiceClient, follow_up_service_client::FollowUpServiceClient,
    ingest_service_client::IngestServiceClient, lead_service_client::LeadServiceClient,
    notification_service_client::NotificationServiceClient,
};
use platform::{
    ServiceName, Settings,
    nats::Subjects,
    settings::{ExposeSecret, SecretString},
};
use std::{
    collections::BTreeSet,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use leads_proto::v1 as pb;

pub mod broadcast_gen;
pub mod browserless;
pub mod console;
pub mod desk;
pub mod keys;
pub mod raw_pg;
pub mod receiver;

/// The admin connection tests create their databases with.
pub fn admin_url() -> String {
    std::env::var("LEADS_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("LEADS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A pool on `url` that connects the way the services do (`platform::db::connect_options`).
pub async fn connect_pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
    Ok(sqlx::PgPool::connect_with(platform::db::connect_options(url)?).await?)
}

fn with_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap_or((url, ""));
    format!("{base}/{database}")
}

static TRACING: std::sync::Once = std::sync::Once::new();

fn init_tracing() {
    TRACING.call_once(|| {
        let _ = tracing_subscriber_init();
    });
}

fn tracing_subscriber_init() -> anyhow::Result<()> {
    if std::env::var("RUST_LOG").is_ok() {
        std::mem::forget(platform::telemetry::init("leads-tests", None)?);
    }
    Ok(())
}

/// One isolated environment: a fresh database and a fresh subject prefix.
#[derive(Clone)]
pub struct TestEnv {
    pub settings: Settings,
    pub database: String,
    pub subjects: Subjects,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
}

impl TestEnv {
    pub async fn new() -> anyhow::Result<Self> {
        Self::on(&admin_url(), &nats_url()).await
    }

    /// An environment on other servers: a private Postgres (its admin URL) and NATS.
    pub async fn on(admin_url: &str, nats_url: &str) -> anyhow::Result<Self> {
        init_tracing();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("lt_{}", &id[..16]);
        let mut admin = connect_pool(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&admin).await?;
        admin.close().await;
        admin = connect_pool(&with_database(admin_url, &database)).await?;
        admin.close().await;
        let mut settings = Settings {
            database_url: SecretString::from(with_database(admin_url, &database)),
            nats_url: nats_url.to_owned(),
            subject_prefix: format!("t{}.", &id[..12]),
            // Two environments run at once (a test per core), seven services each, under the
            // machine's 100 connections.
            database_max_connections: 5,
            ..Settings::default()
        };
        settings.grpc.host = "127.0.0.1".into();
        for service in ServiceName::ALL {
            settings.grpc.set_port(service, 0);
        }
        // Nothing listens here: a node without the broadcast service must not reach another
        // environment's (the in-process System rewrites it when broadcast runs alongside).
        settings.endpoints.broadcast = "http://127.0.0.1:9".into();
        settings.endpoints.lead = "http://127.0.0.1:9".into();
        settings.consumer.ack_wait_secs = 5;
        settings.consumer.batch_size = 200;
        // Tests of behaviour call without tokens; tests/tests/security.rs sets keys.
        settings.auth.disabled = true;
        // The tests' OpenID Connect provider listens on loopback, which is refused otherwise.
        settings.people.oidc_allowed_networks = vec!["127.0.0.0/8".into()];
        settings.validate()?;
        let nats = platform::nats::connect(&settings.nats_url, "leads-tests").await?;
        let js = jetstream::new(nats.clone());
        let subjects = Subjects::new(settings.subject_prefix.clone());
        platform::nats::ensure_all_streams(&js, &subjects).await?;
        Ok(Self { settings, database, subjects, nats, js })
    }

    /// Starts services in-process against this environment.
    pub async fn start(&self, services: &[ServiceName]) -> anyhow::Result<Node> {
        Node::start(self, services).await
    }

    /// Starts every service in-process.
    pub async fn start_all(&self) -> anyhow::Result<Node> {
        Node::start(self, &ServiceName::ALL).await
    }

    /// A pool connected as the admin role to this environment's database.
    pub async fn admin_pool(&self) -> anyhow::Result<sqlx::PgPool> {
        connect_pool(self.settings.database_url.expose_secret()).await
    }

    pub async fn publish(&self, subject: String, payload: Vec<u8>, headers: Option<HeaderMap>) -> anyhow::Result<()> {
        let ack = match headers {
            Some(headers) => self.js.publish_with_headers(subject, headers, payload.into()).await?,
            None => self.js.publish(subject, payload.into()).await?,
        };
        ack.await?;
        Ok(())
    }

    /// Publishes an InteractionEvent as JSON on `interactions.<org>`, with the contract's
    /// `<org>:<event_id>` as Msg-Id.
    pub async fn publish_interaction(&self, org_id: &str, event: &serde_json::Value) -> anyhow::Result<()> {
        let mut headers = HeaderMap::new();
        if let Some(id) = leads::ctl::msg_id(org_id, "interactions", event) {
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        self.publish(self.subjects.interactions(org_id), serde_json::to_vec(event)?, Some(headers)).await
    }

    /// Environment variables that point a `leads` child process at this environment.
    pub fn process_env(&self) -> Vec<(String, String)> {
        vec![
            ("LEADS_DATABASE_URL".into(), self.settings.database_url.expose_secret().to_owned()),
            ("LEADS_NATS_URL".into(), self.settings.nats_url.clone()),
            ("LEADS_SUBJECT_PREFIX".into(), self.settings.subject_prefix.clone()),
            ("LEADS_CONSUMER_ACK_WAIT_SECS".into(), self.settings.consumer.ack_wait_secs.to_string()),
            ("LEADS_AUTH_DISABLED".into(), self.settings.auth.disabled.to_string()),
            ("RUST_LOG".into(), "warn".into()),
        ]
    }

    /// Drops the database and the streams. Call at the end of a passing test.
    pub async fn cleanup(self) -> anyhow::Result<()> {
        for kind in platform::nats::all_streams() {
            let _ = self.js.delete_stream(self.subjects.stream_name(kind)).await;
        }
        let admin = connect_pool(&with_database(self.settings.database_url.expose_secret(), "postgres")).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database)))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(())
    }
}

/// Services running in this process until `stop`.
pub struct Node {
    pub token: CancellationToken,
    /// The services' supervision (`System::wait`), running from the start as in `leads run`.
    waiter: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    addrs: Vec<(ServiceName, SocketAddr)>,
}

impl Node {
    async fn start(env: &TestEnv, services: &[ServiceName]) -> anyhow::Result<Self> {
        let token = CancellationToken::new();
        let set: BTreeSet<ServiceName> = services.iter().copied().collect();
        let system = leads::System::start(env.settings.clone(), &set, token.clone()).await?;
        let addrs = system.running.iter().map(|r| (r.name, r.grpc_addr)).collect();
        Ok(Self { token, waiter: Some(tokio::spawn(system.wait())), addrs })
    }

    pub fn addr(&self, service: ServiceName) -> SocketAddr {
        self.addrs.iter().find(|(s, _)| *s == service).map(|(_, a)| *a).expect("service is not running in this node")
    }

    pub async fn channel(&self, service: ServiceName) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.addr(service)))?.connect().await?)
    }

    pub async fn lead(&self) -> anyhow::Result<LeadServiceClient<Channel>> {
        Ok(LeadServiceClient::new(self.channel(ServiceName::Lead).await?))
    }

    pub async fn ingest(&self) -> anyhow::Result<IngestServiceClient<Channel>> {
        Ok(IngestServiceClient::new(self.channel(ServiceName::Ingest).await?))
    }

    pub async fn broadcast(&self) -> anyhow::Result<BroadcastTrackingServiceClient<Channel>> {
        Ok(BroadcastTrackingServiceClient::new(self.channel(ServiceName::Broadcast).await?))
    }

    pub async fn assignment(&self) -> anyhow::Result<AssignmentServiceClient<Channel>> {
        Ok(AssignmentServiceClient::new(self.channel(ServiceName::Assignment).await?))
    }

    pub async fn follow_up(&self) -> anyhow::Result<FollowUpServiceClient<Channel>> {
        Ok(FollowUpServiceClient::new(self.channel(ServiceName::FollowUp).await?))
    }

    pub async fn notifications(&self) -> anyhow::Result<NotificationServiceClient<Channel>> {
        Ok(NotificationServiceClient::new(self.channel(ServiceName::Notifications).await?))
    }

    /// Cancels and waits for every service to finish its in-flight work.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.token.cancel();
        match self.waiter.take() {
            Some(waiter) => waiter.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Polls `check` until it returns `Some`, failing with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_ok(deadline, what, || {
        let attempt = check();
        async move { attempt.await.ok_or("not yet") }
    })
    .await
}

/// Polls `check` until it returns `Ok`; after `deadline` fails with `what` and the last
/// `Err`, so that a failure says what was still wrong.
pub async fn eventually_ok<T, E, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(started.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}; last: {last:?}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The `leads` binary, built on first use when the build has not produced it yet.
pub fn leads_binary() -> PathBuf {
    if let Ok(path) = std::env::var("LEADS_BIN") {
        return PathBuf::from(path);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| workspace.join("target"), PathBuf::from);
    let path = target.join("debug").join("leads");
    if path.exists() {
        // `make test` builds the whole workspace first; building `-p leads` alone here would
        // resolve features differently and rebuild half the dependency tree.
        return path;
    }
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "leads", "--bin", "leads"])
            .current_dir(&workspace)
            .stdout(Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "cannot build the leads binary");
    });
    path
}

/// A `leads run` child process.
pub struct Process {
    child: tokio::process::Child,
    /// Becomes true once the process has printed `ready` on stderr: every service serves and
    /// SIGTERM is handled.
    ready: tokio::sync::watch::Receiver<bool>,
}

impl Process {
    pub fn spawn(env: &TestEnv, services: &str, extra_env: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut command = tokio::process::Command::new(leads_binary());
        command.args(["run", "--services", services]).stdout(Stdio::null()).stderr(Stdio::piped());
        for (key, value) in env.process_env() {
            command.env(key, value);
        }
        for service in ServiceName::ALL {
            command.env(format!("LEADS_GRPC_{}_PORT", service.as_str().to_uppercase()), "0");
        }
        command.env("LEADS_CONSOLE_PORT", "0");
        for (key, value) in extra_env {
            command.env(key, value);
        }
        command.kill_on_drop(true);
        let mut child = command.spawn()?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        // Reads stderr to its end, passing it on (a panic stays visible in the test's output),
        // so the child never blocks on a full pipe.
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "ready" {
                    ready_tx.send_replace(true);
                } else {
                    eprintln!("{line}");
                }
            }
        });
        Ok(Self { child, ready })
    }

    /// Waits until every service of the process serves.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(120), self.ready.wait_for(|ready| *ready))
            .await
            .map_err(|_| anyhow::anyhow!("the process did not become ready within 120 s"))?
            .map_err(|_| anyhow::anyhow!("the process exited before it was ready"))?;
        Ok(())
    }

    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Waits until the process is ready, sends SIGTERM and waits for it to exit.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.ready().await?;
        let pid = self.child.id().ok_or_else(|| anyhow::anyhow!("process already exited"))?;
        let status = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??)
    }

    /// Waits for the process to end on its own.
    pub async fn exited(mut self, deadline: Duration) -> anyhow::Result<std::process::ExitStatus> {
        tokio::time::timeout(deadline, self.child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("the process did not exit within {deadline:?}"))?
            .map_err(Into::into)
    }
}

pub mod private;

/// A valid inbound chat message from a contact with this phone.
pub fn chat_event(event_id: &str, phone: &str, text: &str) -> serde_json::Value {
    serde_json::json!({
        "event_id": event_id,
        "occurred_at": chrono::Utc::now().to_rfc3339(),
        "kind": "chat_message",
        "direction": "inbound",
        "channel": "whatsapp",
        "contact": { "phone": phone, "name": "Ada Lovelace" },
        "text": text,
    })
}

/// A distinct valid US phone number for index `n`.
pub fn phone(n: u32) -> String {
    format!("+1415{:07}", 2_000_000 + n)
}

/// How far the interaction pipeline has got, for a test that waits for it to finish to say
/// where it stopped: events applied by the lead service, accepted by ingest, waiting in
/// ingest's outbox, and kept as dead letters by either.
pub async fn pipeline_progress(admin: &sqlx::PgPool, total: i64) -> Result<(), String> {
    let (applied, accepted, unpublished, dead): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM lead.interactions), (SELECT count(*) FROM ingest.accepted_events), \
                (SELECT count(*) FROM ingest.outbox), \
                (SELECT count(*) FROM ingest.dead_letters) + (SELECT count(*) FROM lead.dead_letters)",
    )
    .fetch_one(admin)
    .await
    .map_err(|error| error.to_string())?;
    if applied >= total {
        Ok(())
    } else {
        Err(format!(
            "{applied} of {total} applied; {accepted} accepted by ingest, {unpublished} in its outbox, {dead} dead letters"
        ))
    }
}

/// Lists every lead of an organisation through gRPC.
pub async fn all_leads(client: &mut LeadServiceClient<Channel>, org_id: &str) -> anyhow::Result<Vec<pb::Lead>> {
    let mut leads = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_leads(pb::ListLeadsRequest {
                org_id: org_id.into(),
                page_size: 500,
                page_token: token.clone(),
                skip_total: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        leads.extend(page.leads);
        if page.next_page_token.is_empty() {
            return Ok(leads);
        }
        token = page.next_page_token;
    }
}
