//! Settings in three layers: the defaults, then an optional TOML file, then `LEADS_*`
//! environment variables; validated once at start-up so that a bad value stops the process
//! with a clear message. Credentials are `SecretString`s: Debug prints them redacted.

mod layered;

// Re-exported so that the crates reading settings need no dependency of their own.
pub use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

/// The seven services of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceName {
    Ingest,
    Lead,
    Qualification,
    Assignment,
    FollowUp,
    Broadcast,
    People,
    Notifications,
}

impl ServiceName {
    pub const ALL: [ServiceName; 8] = [
        ServiceName::Ingest,
        ServiceName::Lead,
        ServiceName::Qualification,
        ServiceName::Assignment,
        ServiceName::FollowUp,
        ServiceName::Broadcast,
        ServiceName::People,
        ServiceName::Notifications,
    ];

    /// The name used on the command line, in settings and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Ingest => "ingest",
            ServiceName::Lead => "lead",
            ServiceName::Qualification => "qualification",
            ServiceName::Assignment => "assignment",
            ServiceName::FollowUp => "followup",
            ServiceName::Broadcast => "broadcast",
            ServiceName::People => "people",
            ServiceName::Notifications => "notifications",
        }
    }

    /// The Postgres schema the service owns; no other service touches it.
    pub fn schema(self) -> &'static str {
        self.as_str()
    }

    /// The Postgres role the service connects as; it can use its own schema only.
    pub fn role(self) -> String {
        format!("leads_{}", self.as_str())
    }

    /// Postgres extensions the service's migrations rely on, created at bootstrap.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            // Trigram indexes for the Leads page's search over names, emails and phones.
            ServiceName::Lead => &["pg_trgm"],
            _ => &[],
        }
    }

    fn default_port(self) -> u16 {
        match self {
            ServiceName::Ingest => 50051,
            ServiceName::Lead => 50052,
            ServiceName::Qualification => 50053,
            ServiceName::Assignment => 50054,
            ServiceName::FollowUp => 50055,
            ServiceName::Broadcast => 50056,
            ServiceName::People => 50057,
            ServiceName::Notifications => 50058,
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "ingest" => Ok(ServiceName::Ingest),
            "lead" => Ok(ServiceName::Lead),
            "qualification" => Ok(ServiceName::Qualification),
            "assignment" => Ok(ServiceName::Assignment),
            "followup" | "follow-up" => Ok(ServiceName::FollowUp),
            "broadcast" | "broadcast-tracking" => Ok(ServiceName::Broadcast),
            "people" => Ok(ServiceName::People),
            "notifications" => Ok(ServiceName::Notifications),
            other => Err(format!(
                "unknown service {other:?}; expected one of ingest, lead, qualification, assignment, followup, broadcast, \
                 people, notifications"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {field}: {reason}")]
pub struct SettingsError {
    pub field: String,
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError { field: field.to_owned(), reason: reason.into() }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Admin connection, used to create each service's role and schema (bootstrap).
    pub database_url: SecretString,
    /// Password of the per-service roles, when the server asks for one.
    pub role_password: Option<SecretString>,
    pub database_max_connections: u32,
    pub nats_url: String,
    /// Prepended to every subject and (sanitised) stream name, so that environments and
    /// tests sharing one NATS server do not see each other. Empty or ending in `.`.
    pub subject_prefix: String,
    /// OTLP/gRPC endpoint for traces; none means traces are not exported.
    pub otlp_endpoint: Option<String>,
    /// Where `/metrics` is served in Prometheus format; none disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// Copies of each stream the services declare (1 for one NATS server, 3 for a cluster of
    /// three). An existing stream with another count is updated at start-up.
    pub stream_replicas: usize,
    pub grpc: GrpcSettings,
    /// Where other services are reached over gRPC.
    pub endpoints: Endpoints,
    pub consumer: ConsumerSettings,
    /// The lead service's own work in the background.
    pub lead: LeadServiceSettings,
    /// Automatic assignment: presence, sweeps, reservations.
    pub assignment: AssignmentServiceSettings,
    pub qualification: QualificationSettings,
    /// The people directory: setup codes, sessions, sign-in lockout.
    pub people: PeopleSettings,
    /// Follow-up reminders and webhook deliveries.
    pub notifications: NotificationServiceSettings,
    pub console: ConsoleSettings,
    /// Seconds a SIGTERM may take: consumers finish what they hold, then the outboxes drain.
    pub shutdown_deadline_secs: u64,
    /// Days dedupe keys, kept rejections and dead letters are kept. At least 8: the streams
    /// keep messages 7 days, and a message replayed from them must still be a duplicate.
    pub retention_days: u32,
    /// Who may call the gRPC APIs and how services prove who they are to each other.
    pub auth: AuthSettings,
    /// Credentials and TLS of the NATS connection.
    pub nats_auth: NatsAuthSettings,
    /// Per-service database roles, passwords and statement timeouts.
    pub database: DatabaseSettings,
}

/// What the lead service does on its own schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeadServiceSettings {
    /// Seconds between sweeps that archive idle leads, for organisations whose status rules
    /// say so (`archive_after_days`).
    pub idle_sweep_interval_secs: u64,
    /// A ListLeads total that the maintained counts cannot answer (a search, a score range) is
    /// counted exactly up to this many leads; above, it is the planner's estimate, marked so
    /// (`total_is_estimate`).
    pub exact_total_up_to: i64,
    /// Milliseconds a ListLeads total may spend counting rows; a count that would take longer
    /// (a search matching many leads among millions) gives way to the planner's estimate,
    /// marked so, and the page is not held back.
    pub exact_total_budget_ms: u64,
    /// A ListLeads total the planner prices above this many of its cost units to count is not
    /// counted: the planner's estimate answers at once, marked so. About what the budget buys
    /// (counts priced 7,600 and 13,800 took 7 and 57 ms among a million leads on two cores).
    pub exact_total_max_cost: f64,
}

impl Default for LeadServiceSettings {
    fn default() -> Self {
        Self {
            idle_sweep_interval_secs: 300,
            exact_total_up_to: 10_000,
            exact_total_budget_ms: 20,
            exact_total_max_cost: 10_000.0,
        }
    }
}

/// How the assignment service hands out leads by itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssignmentServiceSettings {
    /// Seconds after its last heartbeat (SetPresence) that an agent counts as offline.
    pub presence_grace_secs: u64,
    /// Seconds between sweeps that hand out waiting leads (besides the events that do).
    pub sweep_interval_secs: u64,
    /// Seconds after which a lead being handed out by a process that never finished (it died)
    /// is settled from the lead service's answer. The call itself may take half of it.
    pub reservation_timeout_secs: u64,
}

impl Default for AssignmentServiceSettings {
    fn default() -> Self {
        Self { presence_grace_secs: 90, sweep_interval_secs: 5, reservation_timeout_secs: 60 }
    }
}

/// How the qualification service learns each organisation's model.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QualificationSettings {
    /// Converted and lost leads an organisation needs, of each, before a model is trained.
    pub min_labels_per_class: usize,
    /// Seconds between looks for organisations whose outcomes grew enough to retrain.
    pub retrain_interval_secs: u64,
    /// Share of new outcomes (since the current model's training) that starts a retraining.
    pub retrain_growth: f64,
    /// Full URL of an OpenAI-compatible chat-completions endpoint that scores leads from their
    /// recent messages; none (the default) keeps the built-in scorer and stores no text.
    pub llm_url: Option<String>,
    /// The model named in each request (required with `llm_url`).
    pub llm_model: String,
    /// Sent as `Authorization: Bearer`; or read from `llm_api_key_file`.
    pub llm_api_key: Option<SecretString>,
    pub llm_api_key_file: Option<std::path::PathBuf>,
    /// How long one scoring waits for the endpoint before falling back to the built-in scorer.
    pub llm_timeout_ms: u64,
    /// Requests per second each process sends at most; beyond, leads get the built-in score.
    pub llm_max_per_second: u32,
    /// Leads each process rescores per second at most, when an organisation's new model
    /// rescores its active leads and when their time-dependent features are refreshed.
    pub rescore_per_second: u32,
    /// Seconds between looks for active leads whose time-dependent features (recency, active in
    /// the last day or week) moved enough since their score to be scored again.
    pub refresh_interval_secs: u64,
}

impl Default for QualificationSettings {
    fn default() -> Self {
        Self {
            min_labels_per_class: 30,
            retrain_interval_secs: 60,
            retrain_growth: 0.1,
            llm_url: None,
            llm_model: String::new(),
            llm_api_key: None,
            llm_api_key_file: None,
            llm_timeout_ms: 3000,
            llm_max_per_second: 10,
            rescore_per_second: 200,
            refresh_interval_secs: 3600,
        }
    }
}

/// How the notifications service tells people and delivers webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationServiceSettings {
    /// Networks (CIDR, comma-separated: `10.20.0.0/16,127.0.0.1/32`) webhooks may be delivered
    /// to although they are private, loopback or link-local; none by default (docs/security.md,
    /// "Outbound requests").
    pub webhook_allowed_networks: String,
    /// Seconds one delivery attempt may take, connecting and reading the answer included.
    pub webhook_timeout_secs: u64,
    /// Seconds before each retry of a failed delivery (comma-separated), each spread by up to a
    /// fifth either way; after the last the message is given up. The Standard Webhooks
    /// specification's example by default: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    pub webhook_retry_schedule_secs: String,
    /// Hours an endpoint may fail every attempt before it is disabled.
    pub webhook_disable_after_failing_hours: u64,
    /// Deliveries in flight at once to one endpoint; a slow endpoint delays only itself.
    pub webhook_concurrency_per_endpoint: usize,
    /// Milliseconds between looks for reminders and overdue follow-ups to tell, and for
    /// deliveries to make, besides the signals that wake them.
    pub tick_ms: u64,
}

impl Default for NotificationServiceSettings {
    fn default() -> Self {
        Self {
            webhook_allowed_networks: String::new(),
            webhook_timeout_secs: 15,
            webhook_retry_schedule_secs: "5,300,1800,7200,18000,36000,36000".into(),
            webhook_disable_after_failing_hours: 120,
            webhook_concurrency_per_endpoint: 8,
            tick_ms: 500,
        }
    }
}

impl NotificationServiceSettings {
    /// The seconds before each retry.
    pub fn retry_schedule(&self) -> Result<Vec<u64>, SettingsError> {
        let field = "notifications.webhook_retry_schedule_secs";
        let schedule: Vec<u64> = self
            .webhook_retry_schedule_secs
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse::<u64>().map_err(|_| invalid(field, format!("{s:?} is not a number of seconds"))))
            .collect::<Result<_, _>>()?;
        if schedule.len() > 20 || schedule.iter().any(|&s| s == 0 || s > 7 * 24 * 3600) {
            return Err(invalid(field, "at most 20 retries, each between 1 second and 7 days"));
        }
        Ok(schedule)
    }
}

/// How the people directory lets people in (docs/security.md, "People").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeopleSettings {
    /// Seconds a setup code (from AddPerson or ResetPassword) may be used to set a password.
    pub setup_code_ttl_secs: u64,
    /// Lifetime of the token SignIn gives, cut to `auth.max_token_lifetime_secs`.
    pub session_ttl_secs: u64,
    /// Failed sign-ins to one account within 15 minutes that lock it.
    pub max_failed_sign_ins: u32,
    /// Seconds a locked account refuses every sign-in, the right password too.
    pub lockout_secs: u64,
    /// Seconds a one-time sign-in code (CreateSignInCode, a one-click sign-in link) may be used.
    pub sign_in_code_ttl_secs: u64,
    /// Networks (`10.20.0.0/16`, `fd00::/8`, or one address) that OpenID Connect providers may
    /// be reached in although they are not public: loopback, private and the like are refused
    /// otherwise, and plain `http://` is taken only to an address inside one
    /// (docs/security.md, "Outbound requests").
    pub oidc_allowed_networks: Vec<String>,
}

impl Default for PeopleSettings {
    fn default() -> Self {
        Self {
            setup_code_ttl_secs: 72 * 3600,
            session_ttl_secs: 8 * 3600,
            max_failed_sign_ins: 5,
            lockout_secs: 900,
            sign_in_code_ttl_secs: 600,
            oidc_allowed_networks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSettings {
    pub host: String,
    pub ingest_port: u16,
    pub lead_port: u16,
    pub qualification_port: u16,
    pub assignment_port: u16,
    pub followup_port: u16,
    pub broadcast_port: u16,
    pub people_port: u16,
    pub notifications_port: u16,
    /// Serve server reflection (v1 and v1alpha) without a token.
    pub reflection: bool,
    /// Seconds a call may take before it is answered DEADLINE_EXCEEDED (a stream's first
    /// message counts, not the whole stream).
    pub request_timeout_secs: u64,
    /// Calls served at once per connection; more wait.
    pub concurrency_per_connection: usize,
    /// `grpc.health.v1.Health/Watch` streams a server holds open at once: a watch lasts as
    /// long as its caller wants and needs no token, so more are refused RESOURCE_EXHAUSTED.
    pub health_watch_limit: usize,
    /// `LeadService/WatchLeads` streams a lead process holds open at once: each holds a
    /// JetStream consumer and a task for as long as its caller stays, so more are refused
    /// RESOURCE_EXHAUSTED.
    pub watch_limit: usize,
    /// PEM certificate chain and key: every port serves gRPC over TLS (plaintext when unset).
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// PEM CA certificates: callers must present a client certificate signed by one (mTLS).
    pub tls_client_ca_file: Option<std::path::PathBuf>,
    /// PEM CA certificates trusted when this process calls another service at an `https://`
    /// endpoint; it presents `tls_cert_file`/`tls_key_file` as its client certificate.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl GrpcSettings {
    pub fn port(&self, service: ServiceName) -> u16 {
        match service {
            ServiceName::Ingest => self.ingest_port,
            ServiceName::Lead => self.lead_port,
            ServiceName::Qualification => self.qualification_port,
            ServiceName::Assignment => self.assignment_port,
            ServiceName::FollowUp => self.followup_port,
            ServiceName::Broadcast => self.broadcast_port,
            ServiceName::People => self.people_port,
            ServiceName::Notifications => self.notifications_port,
        }
    }

    pub fn set_port(&mut self, service: ServiceName, port: u16) {
        let slot = match service {
            ServiceName::Ingest => &mut self.ingest_port,
            ServiceName::Lead => &mut self.lead_port,
            ServiceName::Qualification => &mut self.qualification_port,
            ServiceName::Assignment => &mut self.assignment_port,
            ServiceName::FollowUp => &mut self.followup_port,
            ServiceName::Broadcast => &mut self.broadcast_port,
            ServiceName::People => &mut self.people_port,
            ServiceName::Notifications => &mut self.notifications_port,
        };
        *slot = port;
    }
}

impl Default for GrpcSettings {
    fn default() -> Self {
        let port = ServiceName::default_port;
        Self {
            host: "127.0.0.1".into(),
            ingest_port: port(ServiceName::Ingest),
            lead_port: port(ServiceName::Lead),
            qualification_port: port(ServiceName::Qualification),
            assignment_port: port(ServiceName::Assignment),
            followup_port: port(ServiceName::FollowUp),
            broadcast_port: port(ServiceName::Broadcast),
            people_port: port(ServiceName::People),
            notifications_port: port(ServiceName::Notifications),
            reflection: true,
            request_timeout_secs: 60,
            concurrency_per_connection: 256,
            health_watch_limit: 64,
            watch_limit: 256,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_ca_file: None,
        }
    }
}

/// The Leads page in a browser (`leads run --services console`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Its HTTP port, on `grpc.host`; 0 picks a free one.
    pub port: u16,
    /// Marks the session cookie `Secure`: set when people reach the console over TLS (a proxy
    /// in front of it terminating TLS counts).
    pub secure_cookies: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self { port: 8080, secure_cookies: false }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoints {
    pub lead: String,
    pub broadcast: String,
    /// The console's calls; of the services, only follow-up calls one (assignment).
    pub assignment: String,
    pub followup: String,
    pub qualification: String,
    pub people: String,
    pub notifications: String,
}

impl Endpoints {
    /// Where `service` is reached, for those a caller may need.
    pub fn of(&self, service: ServiceName) -> Option<&str> {
        Some(match service {
            ServiceName::Lead => &self.lead,
            ServiceName::Broadcast => &self.broadcast,
            ServiceName::Assignment => &self.assignment,
            ServiceName::FollowUp => &self.followup,
            ServiceName::Qualification => &self.qualification,
            ServiceName::People => &self.people,
            ServiceName::Notifications => &self.notifications,
            ServiceName::Ingest => return None,
        })
    }

    /// Points callers at `url` for `service` (a process that binds its own ports does).
    pub fn set(&mut self, service: ServiceName, url: String) {
        match service {
            ServiceName::Lead => self.lead = url,
            ServiceName::Broadcast => self.broadcast = url,
            ServiceName::Assignment => self.assignment = url,
            ServiceName::FollowUp => self.followup = url,
            ServiceName::Qualification => self.qualification = url,
            ServiceName::People => self.people = url,
            ServiceName::Notifications => self.notifications = url,
            ServiceName::Ingest => {}
        }
    }
}

impl Default for Endpoints {
    fn default() -> Self {
        let local = |service: ServiceName| format!("http://127.0.0.1:{}", service.default_port());
        Self {
            lead: local(ServiceName::Lead),
            broadcast: local(ServiceName::Broadcast),
            assignment: local(ServiceName::Assignment),
            followup: local(ServiceName::FollowUp),
            qualification: local(ServiceName::Qualification),
            people: local(ServiceName::People),
            notifications: local(ServiceName::Notifications),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Messages handled in one transaction; a batch also closes at this many KiB of payload
    /// (`batch_bytes`), which for messages of batched events is about as many events.
    pub batch_size: usize,
    /// Messages handled in one transaction by the broadcast-tracking service's consumer of
    /// messages and statuses: a broadcast yields millions of small events, which drain much
    /// faster in larger transactions (BENCHMARKS.md has the figures). A batch still closes
    /// 30 ms after its first message when traffic is light.
    pub broadcast_batch_size: usize,
    /// Batches in flight at once per consumer.
    pub concurrency: usize,
    /// Seconds before an unacknowledged message is delivered again.
    pub ack_wait_secs: u64,
    /// Deliveries a failing message gets; after the last it is kept in the service's
    /// `dead_letters` with its error and announced on `deadletter.*`. Deliveries held while
    /// Postgres is unreachable are not spent. The consumer loop enforces it, not the durable
    /// (`consumer::declare`).
    pub max_deliver: i64,
    /// The pause before a failed message is delivered again: this many milliseconds after
    /// its first delivery, doubling with each delivery up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Messages a durable consumer hands out unacknowledged, across every process that shares
    /// it. Each process prefetches `batch_size * concurrency`, so the default leaves room for
    /// ten processes at the default batch size; a process past the cap gets nothing.
    pub max_ack_pending: i64,
}

impl ConsumerSettings {
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }

    /// Payload bytes after which a batch closes even when it has fewer than `batch_size`
    /// messages: a KiB per event, so that a message carrying a hundred batched events
    /// (`outbox::batched`) counts for about a hundred.
    pub fn batch_bytes(&self) -> usize {
        self.batch_size * 1024
    }

    /// How long a message that failed on its `delivered`-th delivery waits for the next.
    pub fn retry_delay(&self, delivered: i64) -> Duration {
        let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        let delay = self.retry_base_ms.saturating_mul(1u64 << doublings).min(self.retry_max_ms);
        Duration::from_millis(delay)
    }
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            broadcast_batch_size: 5000,
            concurrency: 4,
            ack_wait_secs: 30,
            max_deliver: 20,
            retry_base_ms: 500,
            retry_max_ms: 30_000,
            max_ack_pending: 20_000,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: SecretString::from("postgres://postgres@127.0.0.1:5432/leads"),
            role_password: None,
            database_max_connections: 10,
            nats_url: "nats://127.0.0.1:4222".into(),
            subject_prefix: String::new(),
            otlp_endpoint: None,
            metrics_addr: None,
            stream_replicas: 1,
            grpc: GrpcSettings::default(),
            endpoints: Endpoints::default(),
            consumer: ConsumerSettings::default(),
            lead: LeadServiceSettings::default(),
            assignment: AssignmentServiceSettings::default(),
            qualification: QualificationSettings::default(),
            people: PeopleSettings::default(),
            notifications: NotificationServiceSettings::default(),
            console: ConsoleSettings::default(),
            shutdown_deadline_secs: 30,
            retention_days: 30,
            auth: AuthSettings::default(),
            nats_auth: NatsAuthSettings::default(),
            database: DatabaseSettings::default(),
        }
    }
}

impl Settings {
    /// The defaults, then the file (when given), then the process environment; validated.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let settings = Self::layered(file, |key| std::env::var(key).ok())?;
        settings.validate()?;
        Ok(settings)
    }

    /// The defaults, then the file (when given), then the variables `lookup` finds, not yet
    /// validated; `lookup` is injectable so that tests need not touch the process environment.
    /// A variable that does not parse is a `SettingsError` naming it.
    pub fn layered(file: Option<&Path>, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let from_file = match file {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        let changes = layered::changes(&Self::leaves()?, &lookup)?;
        let mut merged = from_file.clone();
        for change in &changes {
            layered::apply(&mut merged, change);
        }
        let mut settings = match Settings::deserialize(toml::Value::Table(merged)) {
            Ok(settings) => settings,
            // The file alone deserialized: one of the variables holds what its setting cannot.
            Err(error) => return Err(culprit(&from_file, &changes).unwrap_or_else(|| anyhow::anyhow!("{error}"))),
        };
        settings.read_password_files(&changes)?;
        Ok(settings)
    }

    /// Every environment variable the settings read, services named.
    pub fn variables() -> Vec<String> {
        let leaves = Self::leaves().expect("every setting has a type a variable can give");
        layered::variables(&leaves).into_iter().map(|variable| variable.name).collect()
    }

    fn leaves() -> anyhow::Result<Vec<layered::Leaf>> {
        layered::leaves::<Settings>().map_err(|e| anyhow::anyhow!("settings: {e}"))
    }

    fn read_password_files(&mut self, changes: &[layered::Change]) -> Result<(), SettingsError> {
        for (service, path) in &self.database.password_files {
            let key = ["database", "password_files", service.as_str()];
            let field = match changes.iter().find(|change| change.path == key) {
                Some(change) => change.variable.clone(),
                None => key.join("."),
            };
            self.database.passwords.insert(service.clone(), read_secret(&field, path)?);
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        self.validate_security()?;
        let database_url = self.database_url.expose_secret();
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(invalid("database_url", "must start with postgres:// or postgresql://"));
        }
        if !self.nats_url.starts_with("nats://") && !self.nats_url.starts_with("tls://") {
            return Err(invalid("nats_url", "must start with nats:// or tls://"));
        }
        let prefix = &self.subject_prefix;
        if !prefix.is_empty() {
            let body = prefix.strip_suffix('.').ok_or_else(|| invalid("subject_prefix", "must end with '.'"))?;
            if body.is_empty()
                || !body.split('.').all(|token| {
                    !token.is_empty() && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                })
            {
                return Err(invalid("subject_prefix", "tokens may hold only letters, digits, '_' and '-'"));
            }
        }
        if self.database_max_connections == 0 {
            return Err(invalid("database_max_connections", "must be at least 1"));
        }
        if self.consumer.batch_size == 0 || self.consumer.batch_size > 5000 {
            return Err(invalid("consumer.batch_size", "must be between 1 and 5000"));
        }
        if self.consumer.broadcast_batch_size == 0 || self.consumer.broadcast_batch_size > 20_000 {
            return Err(invalid("consumer.broadcast_batch_size", "must be between 1 and 20000"));
        }
        if self.consumer.concurrency == 0 || self.consumer.concurrency > 64 {
            return Err(invalid("consumer.concurrency", "must be between 1 and 64"));
        }
        if self.consumer.ack_wait_secs == 0 {
            return Err(invalid("consumer.ack_wait_secs", "must be at least 1"));
        }
        if self.consumer.max_deliver == 0 || self.consumer.max_deliver < -1 {
            return Err(invalid("consumer.max_deliver", "must be at least 1, or -1 for no limit"));
        }
        if self.consumer.retry_base_ms == 0 || self.consumer.retry_max_ms < self.consumer.retry_base_ms {
            return Err(invalid("consumer.retry_base_ms", "must be at least 1 and at most consumer.retry_max_ms"));
        }
        if self.consumer.max_ack_pending < 1 || self.consumer.max_ack_pending > 1_000_000 {
            return Err(invalid("consumer.max_ack_pending", "must be between 1 and 1000000"));
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(invalid("stream_replicas", "must be between 1 and 5"));
        }
        if self.grpc.tls_cert_file.is_some() != self.grpc.tls_key_file.is_some() {
            return Err(invalid("grpc.tls_cert_file", "must be set together with grpc.tls_key_file"));
        }
        if self.grpc.tls_client_ca_file.is_some() && self.grpc.tls_cert_file.is_none() {
            return Err(invalid("grpc.tls_client_ca_file", "needs grpc.tls_cert_file and grpc.tls_key_file"));
        }
        if self.retention_days < 8 {
            return Err(invalid("retention_days", "must be at least 8: the streams keep messages 7 days"));
        }
        if self.shutdown_deadline_secs == 0 {
            return Err(invalid("shutdown_deadline_secs", "must be at least 1"));
        }
        if self.lead.idle_sweep_interval_secs == 0 {
            return Err(invalid("lead.idle_sweep_interval_secs", "must be at least 1"));
        }
        if !(1..=100_000_000).contains(&self.lead.exact_total_up_to) {
            return Err(invalid("lead.exact_total_up_to", "must be between 1 and 100000000"));
        }
        if !(1..=60_000).contains(&self.lead.exact_total_budget_ms) {
            return Err(invalid("lead.exact_total_budget_ms", "must be between 1 and 60000"));
        }
        if !(self.lead.exact_total_max_cost.is_finite() && self.lead.exact_total_max_cost > 0.0) {
            return Err(invalid("lead.exact_total_max_cost", "must be a number above 0"));
        }
        let a = &self.assignment;
        if a.presence_grace_secs == 0 {
            return Err(invalid("assignment.presence_grace_secs", "must be at least 1"));
        }
        if a.sweep_interval_secs == 0 {
            return Err(invalid("assignment.sweep_interval_secs", "must be at least 1"));
        }
        if a.reservation_timeout_secs < 2 {
            return Err(invalid("assignment.reservation_timeout_secs", "must be at least 2"));
        }
        let q = &self.qualification;
        if q.min_labels_per_class < 5 || q.min_labels_per_class > 100_000 {
            return Err(invalid("qualification.min_labels_per_class", "must be between 5 and 100000"));
        }
        if q.retrain_interval_secs == 0 {
            return Err(invalid("qualification.retrain_interval_secs", "must be at least 1"));
        }
        if !(q.retrain_growth > 0.0 && q.retrain_growth <= 10.0) {
            return Err(invalid("qualification.retrain_growth", "must be above 0 and at most 10"));
        }
        if let Some(url) = &q.llm_url {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(invalid("qualification.llm_url", "must start with http:// or https://"));
            }
            if q.llm_model.trim().is_empty() {
                return Err(invalid("qualification.llm_model", "is required with qualification.llm_url"));
            }
        }
        if q.llm_api_key.is_some() && q.llm_api_key_file.is_some() {
            return Err(invalid("qualification.llm_api_key_file", "give the key or its file, not both"));
        }
        if q.llm_timeout_ms == 0 || q.llm_timeout_ms > 60_000 {
            return Err(invalid("qualification.llm_timeout_ms", "must be between 1 and 60000"));
        }
        if q.llm_max_per_second == 0 || q.llm_max_per_second > 10_000 {
            return Err(invalid("qualification.llm_max_per_second", "must be between 1 and 10000"));
        }
        if q.rescore_per_second == 0 || q.rescore_per_second > 100_000 {
            return Err(invalid("qualification.rescore_per_second", "must be between 1 and 100000"));
        }
        if q.refresh_interval_secs == 0 {
            return Err(invalid("qualification.refresh_interval_secs", "must be at least 1"));
        }
        let n = &self.notifications;
        n.retry_schedule()?;
        if n.webhook_timeout_secs == 0 || n.webhook_timeout_secs > 120 {
            return Err(invalid("notifications.webhook_timeout_secs", "must be between 1 and 120"));
        }
        if n.webhook_disable_after_failing_hours == 0 {
            return Err(invalid("notifications.webhook_disable_after_failing_hours", "must be at least 1"));
        }
        if n.webhook_concurrency_per_endpoint == 0 || n.webhook_concurrency_per_endpoint > 64 {
            return Err(invalid("notifications.webhook_concurrency_per_endpoint", "must be between 1 and 64"));
        }
        if n.tick_ms < 10 || n.tick_ms > 60_000 {
            return Err(invalid("notifications.tick_ms", "must be between 10 and 60000"));
        }
        let p = &self.people;
        if !(60..=30 * 24 * 3600).contains(&p.setup_code_ttl_secs) {
            return Err(invalid("people.setup_code_ttl_secs", "must be between 60 and 2592000"));
        }
        if !(60..=30 * 24 * 3600).contains(&p.session_ttl_secs) {
            return Err(invalid("people.session_ttl_secs", "must be between 60 and 2592000"));
        }
        if !(1..=100).contains(&p.max_failed_sign_ins) {
            return Err(invalid("people.max_failed_sign_ins", "must be between 1 and 100"));
        }
        if !(1..=7 * 24 * 3600).contains(&p.lockout_secs) {
            return Err(invalid("people.lockout_secs", "must be between 1 and 604800"));
        }
        if !(60..=24 * 3600).contains(&p.sign_in_code_ttl_secs) {
            return Err(invalid("people.sign_in_code_ttl_secs", "must be between 60 and 86400"));
        }
        if let Err(error) = crate::egress::EgressPolicy::allowing(&p.oidc_allowed_networks) {
            return Err(invalid("people.oidc_allowed_networks", error.to_string()));
        }
        Ok(())
    }

    pub fn grpc_addr(&self, service: ServiceName) -> String {
        format!("{}:{}", self.grpc.host, self.grpc.port(service))
    }
}

/// The settings table of a file, whose own errors (with their line) are reported first.
fn read_file(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read settings file {}: {e}", path.display()))?;
    toml::from_str::<Settings>(&text).map_err(|e| anyhow::anyhow!("settings file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("settings file {}: {e}", path.display()))
}

/// The first variable that, applied alone to the file's settings, makes them fail.
fn culprit(from_file: &toml::Table, changes: &[layered::Change]) -> Option<anyhow::Error> {
    changes.iter().find_map(|change| {
        let mut table = from_file.clone();
        layered::apply(&mut table, change);
        let error = Settings::deserialize(toml::Value::Table(table)).err()?;
        Some(invalid(&change.variable, error.message()).into())
    })
}

/// Who may call the gRPC APIs, and how services prove who they are to each other
/// (docs/security.md). With no key at all, authentication is off and every service says so
/// loudly at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Keys that verify bearer tokens, one file each, whose name declares the algorithm: a
    /// `*.key` or `*.secret` file is an HS256 secret (its bytes, at least 32), a `*.pem` file an
    /// RS256 or EdDSA public key in PEM; a file whose contents do not match its name is
    /// refused. A token's `kid` header picks the file of that stem (`keys/2026-11.pem` is kid
    /// `2026-11`); without one, each key of the token's algorithm is tried. Several, so that
    /// keys can rotate.
    pub key_files: Vec<PathBuf>,
    /// The key that signs the service tokens of calls between services and `leads token`: an
    /// HS256 secret (`*.key`, `*.secret`; it then verifies too) or an RS256 or EdDSA private
    /// key in PEM (`*.pem`; its public key goes in `key_files`).
    pub signing_key_file: Option<PathBuf>,
    /// A ready-made service token sent on calls between services instead of signing one.
    pub service_token_file: Option<PathBuf>,
    /// Lifetime of a service token signed by this process; renewed at half of it.
    pub service_token_ttl_secs: u64,
    /// When set, tokens must carry this `iss`; the tokens this process signs carry it.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`; the tokens this process signs carry it.
    pub audience: Option<String>,
    /// The longest a token may live, `exp - iat`: a token that would live longer, or that
    /// lacks either claim, is refused, so that a leaked token cannot outlive a day.
    pub max_token_lifetime_secs: u64,
    /// Serves every RPC to anyone who reaches the port, without a token: only for a
    /// machine of one's own. Without keys and without this switch a service refuses to start.
    pub disabled: bool,
}

/// A day: a person's working token, and the longest any token lives by default.
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            key_files: Vec::new(),
            signing_key_file: None,
            service_token_file: None,
            service_token_ttl_secs: 3600,
            issuer: None,
            audience: None,
            max_token_lifetime_secs: DEFAULT_MAX_TOKEN_LIFETIME_SECS,
            disabled: false,
        }
    }
}

impl AuthSettings {
    /// True when tokens are checked: some key verifies them.
    pub fn enabled(&self) -> bool {
        !self.key_files.is_empty() || self.signing_key_file.is_some()
    }
}

/// Credentials and TLS of the NATS connection; each secret may come from a file instead.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsAuthSettings {
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
    pub token: Option<SecretString>,
    pub token_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// CA certificates (PEM) that the server's certificate must chain to; turns TLS on.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for servers that verify clients.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Refuse to connect without TLS.
    pub require_tls: bool,
}

/// How services reach Postgres as their own roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Whether a starting service creates its role and schema and applies its migrations
    /// through the admin `database_url` (the default, for one-command local runs). Off, a
    /// service never uses the admin role: it connects as `leads_<service>` (to the host and
    /// database of `database_url`, or its own URL) and refuses to start until `leads migrate`
    /// has applied its migrations.
    pub migrate_on_start: bool,
    /// Per-service connection URLs (`lead = "postgres://leads_lead@db/leads"`); a service with
    /// one never bootstraps. `LEADS_<SERVICE>_DATABASE_URL`.
    pub service_urls: BTreeMap<String, SecretString>,
    /// Per-service role passwords; `LEADS_<SERVICE>_DB_PASSWORD`. `role_password`, when set,
    /// is every role's password otherwise.
    pub passwords: BTreeMap<String, SecretString>,
    /// Files holding per-service role passwords (`LEADS_<SERVICE>_DB_PASSWORD_FILE`), read at
    /// load into `passwords`, where they win over a password given directly.
    pub password_files: BTreeMap<String, PathBuf>,
    /// Milliseconds a statement of a service's pool may run (0: the server's default);
    /// `LEADS_STATEMENT_TIMEOUT_MS`, or per service `LEADS_<SERVICE>_STATEMENT_TIMEOUT_MS`.
    pub statement_timeout_ms: u64,
    pub service_statement_timeout_ms: BTreeMap<String, u64>,
    /// Connections of the lead service's pool for ExportLeads, apart from its main pool, and
    /// so the exports it runs at once: more are refused RESOURCE_EXHAUSTED, and however many
    /// run, the Leads page keeps its connections.
    pub export_max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            migrate_on_start: true,
            service_urls: Default::default(),
            passwords: Default::default(),
            password_files: Default::default(),
            statement_timeout_ms: 120_000,
            service_statement_timeout_ms: Default::default(),
            export_max_connections: 2,
        }
    }
}

impl DatabaseSettings {
    pub fn statement_timeout_ms(&self, service: ServiceName) -> u64 {
        self.service_statement_timeout_ms.get(service.as_str()).copied().unwrap_or(self.statement_timeout_ms)
    }
}

fn read_secret(field: &str, path: &Path) -> Result<SecretString, SettingsError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
    Ok(text.trim_end_matches(['\n', '\r']).into())
}

impl Settings {
    fn validate_security(&self) -> Result<(), SettingsError> {
        let auth = &self.auth;
        if auth.max_token_lifetime_secs < 60 || auth.max_token_lifetime_secs > 30 * 24 * 3600 {
            return Err(invalid("auth.max_token_lifetime_secs", "must be between 60 and 2592000"));
        }
        if auth.service_token_ttl_secs < 60 || auth.service_token_ttl_secs > 7 * 24 * 3600 {
            return Err(invalid("auth.service_token_ttl_secs", "must be between 60 and 604800"));
        }
        if auth.service_token_ttl_secs > auth.max_token_lifetime_secs {
            return Err(invalid("auth.service_token_ttl_secs", "must be at most auth.max_token_lifetime_secs"));
        }
        for (field, value) in [("auth.issuer", &auth.issuer), ("auth.audience", &auth.audience)] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty() || v.trim() != v) {
                return Err(invalid(field, "must not be empty or start or end with spaces"));
            }
        }
        if self.grpc.request_timeout_secs == 0 || self.grpc.request_timeout_secs > 3600 {
            return Err(invalid("grpc.request_timeout_secs", "must be between 1 and 3600"));
        }
        if self.grpc.concurrency_per_connection == 0 || self.grpc.concurrency_per_connection > 100_000 {
            return Err(invalid("grpc.concurrency_per_connection", "must be between 1 and 100000"));
        }
        if self.grpc.health_watch_limit == 0 || self.grpc.health_watch_limit > 10_000 {
            return Err(invalid("grpc.health_watch_limit", "must be between 1 and 10000"));
        }
        if self.grpc.watch_limit == 0 || self.grpc.watch_limit > 10_000 {
            return Err(invalid("grpc.watch_limit", "must be between 1 and 10000"));
        }
        if self.database.export_max_connections == 0 || self.database.export_max_connections > 64 {
            return Err(invalid("database.export_max_connections", "must be between 1 and 64"));
        }
        let n = &self.nats_auth;
        if n.password.is_some() && n.password_file.is_some() {
            return Err(invalid("nats_auth.password_file", "give the password or its file, not both"));
        }
        if n.token.is_some() && n.token_file.is_some() {
            return Err(invalid("nats_auth.token_file", "give the token or its file, not both"));
        }
        if (n.password.is_some() || n.password_file.is_some()) && n.user.is_none() {
            return Err(invalid("nats_auth.user", "is required with a password"));
        }
        if n.client_cert_file.is_some() != n.client_key_file.is_some() {
            return Err(invalid("nats_auth.client_key_file", "client certificate and key go together"));
        }
        let database = &self.database;
        for name in database
            .service_urls
            .keys()
            .chain(database.passwords.keys())
            .chain(database.password_files.keys())
            .chain(database.service_statement_timeout_ms.keys())
        {
            name.parse::<ServiceName>().map_err(|e| invalid("database", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
