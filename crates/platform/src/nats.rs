//! NATS and JetStream: subject names under the configured prefix, and the streams the
//! platform declares idempotently, each by the service that owns it (`OWNERS`), so that
//! publishers never have to.

use crate::ServiceName;
use async_nats::jetstream::{self, stream};
use secrecy::ExposeSecret;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Subject and stream names under one prefix. The external subjects of the contract
/// (`interactions.<org>`, `broadcasts.<org>.messages|statuses`) are used verbatim when the
/// prefix is empty, as it is in production.
#[derive(Debug, Clone, Default)]
pub struct Subjects {
    prefix: String,
}

/// One JetStream stream the platform owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `interactions.>`: events from chat systems and integrations.
    Interactions,
    /// `broadcasts.>`: broadcast messages and their delivery statuses.
    Broadcasts,
    /// `deadletter.>`: refused events, republished with their reason.
    DeadLetter,
    /// `events.<service>.>`: one service's own events, published through its outbox. One
    /// stream per publishing service, so a consumer's filter never skips other services'
    /// messages.
    Events(&'static str),
    /// `notifications.>`: what the platform tells agents, admins and the chat systems that
    /// forward it (CONTRACT.md section 3).
    Notifications,
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn interactions(&self, org_id: &str) -> String {
        format!("{}interactions.{org_id}", self.prefix)
    }

    pub fn broadcast_messages(&self, org_id: &str) -> String {
        format!("{}broadcasts.{org_id}.messages", self.prefix)
    }

    pub fn broadcast_statuses(&self, org_id: &str) -> String {
        format!("{}broadcasts.{org_id}.statuses", self.prefix)
    }

    /// Up to 1,000 messages in one NATS message: an extension of the contract.
    pub fn broadcast_message_batches(&self, org_id: &str) -> String {
        format!("{}broadcasts.{org_id}.messages.batch", self.prefix)
    }

    /// Up to 1,000 statuses in one NATS message: an extension of the contract.
    pub fn broadcast_status_batches(&self, org_id: &str) -> String {
        format!("{}broadcasts.{org_id}.statuses.batch", self.prefix)
    }

    pub fn deadletter(&self, original_subject_without_prefix: &str) -> String {
        format!("{}deadletter.{original_subject_without_prefix}", self.prefix)
    }

    /// `events.<service>.<org>.<kind>`: an internal event of one service.
    pub fn event(&self, service: &str, org_id: &str, kind: &str) -> String {
        format!("{}events.{service}.{org_id}.{kind}", self.prefix)
    }

    /// Every internal event of one kind from one service, whatever the organisation.
    pub fn events_of_kind(&self, service: &str, kind: &str) -> String {
        format!("{}events.{service}.*.{kind}", self.prefix)
    }

    /// Every internal event of one service, for a consumer's filter.
    pub fn events_of(&self, service: &str) -> String {
        format!("{}events.{service}.>", self.prefix)
    }

    /// `notifications.<org>.agents.<agent_key>`: what one agent must know.
    pub fn agent_notifications(&self, org_id: &str, agent_id: &str) -> String {
        format!("{}notifications.{org_id}.agents.{}", self.prefix, contracts::notifications::agent_key(agent_id))
    }

    /// `notifications.<org>.admins`: what an organisation's admins must know.
    pub fn admin_notifications(&self, org_id: &str) -> String {
        format!("{}notifications.{org_id}.admins", self.prefix)
    }

    /// Strips the prefix from a received subject; `None` when it is not ours.
    pub fn strip<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(self.prefix.as_str())
    }

    /// The stream's name: subject prefix upper-cased, with characters a stream name may not
    /// hold replaced.
    pub fn stream_name(&self, kind: StreamKind) -> String {
        let base = match kind {
            StreamKind::Interactions => "INTERACTIONS",
            StreamKind::Broadcasts => "BROADCASTS",
            StreamKind::DeadLetter => "DEADLETTER",
            StreamKind::Notifications => "NOTIFICATIONS",
            StreamKind::Events(service) => return format!("{}EVENTS_{}", self.stream_prefix(), service.to_uppercase()),
        };
        format!("{}{base}", self.stream_prefix())
    }

    fn stream_prefix(&self) -> String {
        self.prefix
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_uppercase() } else { '_' })
            .collect()
    }

    pub fn stream_subjects(&self, kind: StreamKind) -> Vec<String> {
        let token = match kind {
            StreamKind::Interactions => "interactions",
            StreamKind::Broadcasts => "broadcasts",
            StreamKind::DeadLetter => "deadletter",
            StreamKind::Notifications => "notifications",
            StreamKind::Events(service) => return vec![self.events_of(service)],
        };
        vec![format!("{}{token}.>", self.prefix)]
    }
}

/// How long the publishers' input streams (`INTERACTIONS`, `BROADCASTS`) remember a
/// `Nats-Msg-Id`: the shortest window nats-server accepts. Every organisation publishes into
/// the same stream and nats-server 2.9 cannot key the window per publisher, so a longer one
/// would let one organisation's publisher drop another's events by sending their ids first;
/// repeats are dropped by the services' database keys instead.
pub const INPUT_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);

/// How long the streams only the services publish into (`events.*`, `deadletter.>`) remember
/// a `Nats-Msg-Id`: long enough to absorb the outbox relay's republishes after a crash.
pub const SERVICE_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The inbox prefix of a connection as `user`: `_INBOX.<user>`, the name's `.`, `*`, `>` and
/// whitespace replaced by `_` so that it stays one subject token. Replies (JetStream acks,
/// pulled messages, request answers) arrive under it, so the server can let each user
/// subscribe to its own replies only (`deploy/nats/nats-server.conf`).
pub fn inbox_prefix(user: &str) -> String {
    let token: String =
        user.chars().map(|c| if matches!(c, '.' | '*' | '>') || c.is_whitespace() { '_' } else { c }).collect();
    format!("_INBOX.{token}")
}

/// Connects with the credentials and TLS of `settings.nats_auth` (user and password, token,
/// nkey seed or creds file; CA and client certificate). With none, as `connect`.
pub async fn connect_with(settings: &crate::Settings, name: &str) -> anyhow::Result<async_nats::Client> {
    let options = connect_options(&settings.nats_auth).await?;
    let client = options
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(&settings.nats_url)
        .await?;
    Ok(client)
}

/// The connect options of `auth`; a file that cannot be read is an error naming it. A
/// connection with a user receives its replies under that user's own inbox prefix
/// (`inbox_prefix`).
pub async fn connect_options(auth: &crate::settings::NatsAuthSettings) -> anyhow::Result<async_nats::ConnectOptions> {
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|e| anyhow::anyhow!("nats_auth.{field}: cannot read {}: {e}", path.display()))
    };
    let mut options = async_nats::ConnectOptions::new();
    if let Some(path) = &auth.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| anyhow::anyhow!("nats_auth.creds_file: {}: {e}", path.display()))?;
    }
    if let Some(path) = &auth.nkey_seed_file {
        options = options.nkey(read("nkey_seed_file", path)?);
    }
    let token = match (&auth.token, &auth.token_file) {
        (Some(token), _) => Some(token.expose_secret().to_owned()),
        (None, Some(path)) => Some(read("token_file", path)?),
        (None, None) => None,
    };
    if let Some(token) = token {
        options = options.token(token);
    }
    if let Some(user) = &auth.user {
        let password = match (&auth.password, &auth.password_file) {
            (Some(password), _) => password.expose_secret().to_owned(),
            (None, Some(path)) => read("password_file", path)?,
            (None, None) => String::new(),
        };
        options = options.user_and_password(user.clone(), password).custom_inbox_prefix(inbox_prefix(user));
    }
    if let Some(path) = &auth.ca_file {
        options = options.add_root_certificates(path.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&auth.client_cert_file, &auth.client_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
    }
    if auth.require_tls {
        options = options.require_tls(true);
    }
    Ok(options)
}

pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    Ok(client)
}

/// The configuration the platform declares for one stream, with `replicas` copies.
pub fn stream_config(subjects: &Subjects, kind: StreamKind, replicas: usize) -> stream::Config {
    let max_age = match kind {
        // Ended sessions are kept as long as any token may live (30 days at most), so that a
        // process starting anew still refuses every token whose session ended.
        StreamKind::Events("people") => Duration::from_secs(31 * 24 * 3600),
        StreamKind::Interactions | StreamKind::Broadcasts | StreamKind::Events(_) | StreamKind::Notifications => {
            Duration::from_secs(7 * 24 * 3600)
        }
        StreamKind::DeadLetter => Duration::from_secs(30 * 24 * 3600),
    };
    let duplicate_window = match kind {
        StreamKind::Interactions | StreamKind::Broadcasts => INPUT_DUPLICATE_WINDOW,
        StreamKind::DeadLetter | StreamKind::Events(_) | StreamKind::Notifications => SERVICE_DUPLICATE_WINDOW,
    };
    stream::Config {
        name: subjects.stream_name(kind),
        subjects: subjects.stream_subjects(kind),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age,
        duplicate_window,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Declares a stream when it is missing, with one replica. Never reconfigures an existing
/// one: the operators' tools and tests call this, and a stream's settings are its owner's
/// (`ensure_owned_streams`).
pub async fn ensure_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    kind: StreamKind,
) -> anyhow::Result<stream::Stream> {
    let config = stream_config(subjects, kind, 1);
    let stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot declare stream {}: {e}", subjects.stream_name(kind)))?;
    Ok(stream)
}

/// Declares a stream with `replicas` copies; an existing one whose subjects, replicas or
/// duplicate window differ is updated (where NATS allows: more replicas than servers is
/// refused, and the stream is left as it is with a warning). Its retention (`max_age`) is
/// the operators' once the stream exists.
pub async fn ensure_stream_replicated(
    js: &jetstream::Context,
    subjects: &Subjects,
    kind: StreamKind,
    replicas: usize,
) -> anyhow::Result<stream::Stream> {
    let name = subjects.stream_name(kind);
    let wanted = stream_config(subjects, kind, replicas);
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot declare stream {name} with {replicas} replicas: {e}"))?;
    let current = stream.cached_info().config.clone();
    // A server reports 1 for a stream declared with 0 (its default).
    let current_replicas = current.num_replicas.max(1);
    if current_replicas == wanted.num_replicas
        && current.subjects == wanted.subjects
        && current.duplicate_window == wanted.duplicate_window
    {
        return Ok(stream);
    }
    let update = stream::Config {
        subjects: wanted.subjects.clone(),
        num_replicas: wanted.num_replicas,
        duplicate_window: wanted.duplicate_window,
        ..current
    };
    match js.update_stream(update).await {
        Ok(info) => {
            tracing::info!(
                stream = %name,
                replicas = info.config.num_replicas,
                from = current_replicas,
                duplicate_window_ms = info.config.duplicate_window.as_millis(),
                "stream updated"
            );
            stream = js.get_stream(&name).await.map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
        }
        Err(error) => {
            tracing::warn!(stream = %name, replicas, current = current_replicas, %error, "cannot update stream; left as it is");
        }
    }
    Ok(stream)
}

/// Which service declares and updates each stream of the platform: the one that publishes into
/// it, or for the publishers' input streams the one that consumes them. `DEADLETTER` is lead's
/// because every service writes dead letters and lead runs in every deployment. A service's
/// NATS user may create and update its own streams only (`deploy/nats/nats-server.conf`); the
/// streams of others it reads or writes it waits for (`wait_for_stream`). Each stream has
/// exactly one row.
pub const OWNERS: [(StreamKind, ServiceName); 9] = [
    (StreamKind::Interactions, ServiceName::Ingest),
    (StreamKind::Events("ingest"), ServiceName::Ingest),
    (StreamKind::Broadcasts, ServiceName::Broadcast),
    (StreamKind::Events("lead"), ServiceName::Lead),
    (StreamKind::DeadLetter, ServiceName::Lead),
    (StreamKind::Events("qualification"), ServiceName::Qualification),
    (StreamKind::Events("followup"), ServiceName::FollowUp),
    (StreamKind::Events("people"), ServiceName::People),
    (StreamKind::Notifications, ServiceName::Notifications),
];

/// The service that declares `kind`; `None` for a stream outside the platform (a benchmark's).
pub fn owner(kind: StreamKind) -> Option<ServiceName> {
    OWNERS.iter().find(|(owned, _)| *owned == kind).map(|(_, owner)| *owner)
}

/// The streams `service` declares and keeps up to date at its start.
pub fn owned_by(service: ServiceName) -> impl Iterator<Item = StreamKind> {
    OWNERS.into_iter().filter(move |(_, owner)| *owner == service).map(|(kind, _)| kind)
}

/// Every stream of the platform.
pub fn all_streams() -> Vec<StreamKind> {
    OWNERS.map(|(kind, _)| kind).to_vec()
}

/// Declares every stream of the platform that is missing (one replica), changing none: for
/// the operators' admin user and tests, which may create any stream. No service does.
pub async fn ensure_all_streams(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<()> {
    for kind in all_streams() {
        ensure_stream(js, subjects, kind).await?;
    }
    Ok(())
}

/// Declares every stream of the platform with `replicas` copies, updating existing ones
/// (`ensure_stream_replicated`): what the admin user may do for every owner at once, say
/// before the first start of a deployment. A service declares its own only
/// (`ensure_owned_streams`).
pub async fn ensure_all_streams_replicated(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> anyhow::Result<()> {
    for kind in all_streams() {
        ensure_stream_replicated(js, subjects, kind, replicas).await?;
    }
    Ok(())
}

/// Declares, and brings up to date, the streams `service` owns (`OWNERS`): what each service
/// does first at its start, so that its readers, waiting for them, can begin.
pub async fn ensure_owned_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    service: ServiceName,
    replicas: usize,
) -> anyhow::Result<()> {
    for kind in owned_by(service) {
        ensure_stream_replicated(js, subjects, kind, replicas).await?;
    }
    Ok(())
}

/// Pauses between two looks for a stream that is missing: the first, and the longest.
const STREAM_WAIT_FIRST: Duration = Duration::from_millis(100);
const STREAM_WAIT_MAX: Duration = Duration::from_secs(5);
/// How long a stream may be missing before the wait is logged as a warning: its owner has had
/// time to start, so it is probably not deployed, or runs with another subject prefix.
const STREAM_WAIT_PATIENCE: Duration = Duration::from_secs(60);

/// Waits until `kind`'s stream exists, declared by its owner, looking with a growing pause;
/// `None` when `token` fires first. A reader never creates another service's stream (its user
/// may not), and a missing one holds nothing to read yet, so the wait has no end of its own:
/// a lead service deployed without follow-up consumes follow-up events once follow-up first
/// starts, and serves meanwhile. Logged once at info when it starts, and once at warn when it
/// has lasted `STREAM_WAIT_PATIENCE`.
pub async fn wait_for_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    kind: StreamKind,
    token: &CancellationToken,
) -> anyhow::Result<Option<stream::Stream>> {
    let name = subjects.stream_name(kind);
    let owner = owner(kind).map_or("none", ServiceName::as_str);
    let started = tokio::time::Instant::now();
    let mut pause = STREAM_WAIT_FIRST;
    let mut warned = false;
    loop {
        let missing = match js.get_stream(&name).await {
            Ok(stream) => {
                if pause > STREAM_WAIT_FIRST {
                    tracing::info!(stream = %name, owner, waited_ms = started.elapsed().as_millis(), "stream found");
                }
                return Ok(Some(stream));
            }
            Err(error) => error,
        };
        let not_found = matches!(
            missing.kind(),
            jetstream::context::GetStreamErrorKind::JetStream(e) if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
        );
        if pause == STREAM_WAIT_FIRST {
            tracing::info!(stream = %name, owner, error = %missing, "waiting for stream {name} of service {owner}");
        } else if !warned && started.elapsed() >= STREAM_WAIT_PATIENCE {
            warned = true;
            tracing::warn!(
                stream = %name,
                owner,
                not_found,
                error = %missing,
                "stream still missing; is its owner running, with the same subject prefix?"
            );
        }
        tokio::select! {
            () = token.cancelled() => return Ok(None),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(STREAM_WAIT_MAX);
    }
}

/// Parses `Content-Type` into the payload's encoding; JSON is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    pub fn from_headers(headers: Option<&async_nats::HeaderMap>) -> Result<Self, String> {
        // Built once: a lookup by `&str` parses and allocates the name on every message, which
        // showed in the profile of the broadcast consumer at tens of thousands a second.
        const CONTENT_TYPE: async_nats::header::HeaderName =
            async_nats::header::HeaderName::from_static("Content-Type");
        let Some(value) = headers.and_then(|h| h.get(CONTENT_TYPE)) else {
            return Ok(Encoding::Json);
        };
        if value.as_str() == "application/json" {
            return Ok(Encoding::Json);
        }
        let value = value.as_str().trim().to_ascii_lowercase();
        let media = value.split(';').next().unwrap_or_default().trim();
        match media {
            "" | "application/json" => Ok(Encoding::Json),
            "application/protobuf" | "application/x-protobuf" => Ok(Encoding::Protobuf),
            other => {
                Err(format!("Content-Type {other:?} is not supported; use application/json or application/protobuf"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_picks_the_encoding() {
        let with = |value: &str| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Content-Type", value);
            Encoding::from_headers(Some(&headers))
        };
        assert_eq!(Encoding::from_headers(None), Ok(Encoding::Json));
        assert_eq!(Encoding::from_headers(Some(&async_nats::HeaderMap::new())), Ok(Encoding::Json));
        assert_eq!(with("application/json"), Ok(Encoding::Json));
        assert_eq!(with(" Application/JSON; charset=utf-8"), Ok(Encoding::Json));
        assert_eq!(with("application/x-protobuf"), Ok(Encoding::Protobuf));
        assert_eq!(with("APPLICATION/PROTOBUF"), Ok(Encoding::Protobuf));
        assert!(with("text/csv").is_err_and(|reason| reason.contains("text/csv")));
    }

    #[test]
    fn prefix_applies_to_subjects_and_stream_names() {
        let plain = Subjects::default();
        assert_eq!(plain.interactions("acme"), "interactions.acme");
        assert_eq!(plain.stream_name(StreamKind::Events("lead")), "EVENTS_LEAD");
        assert_eq!(plain.stream_subjects(StreamKind::Events("lead")), ["events.lead.>"]);
        let scoped = Subjects::new("t-9.x.");
        assert_eq!(scoped.broadcast_statuses("acme"), "t-9.x.broadcasts.acme.statuses");
        assert_eq!(scoped.stream_name(StreamKind::Interactions), "T-9_X_INTERACTIONS");
        assert_eq!(scoped.strip("t-9.x.interactions.acme"), Some("interactions.acme"));
        assert_eq!(scoped.strip("interactions.acme"), None);
    }

    #[test]
    fn only_the_publishers_input_streams_forget_msg_ids_at_once() {
        let subjects = Subjects::default();
        let window = |kind| stream_config(&subjects, kind, 1).duplicate_window;
        assert_eq!(window(StreamKind::Interactions), Duration::from_millis(100));
        assert_eq!(window(StreamKind::Broadcasts), Duration::from_millis(100));
        assert_eq!(window(StreamKind::DeadLetter), Duration::from_secs(120));
        for kind in all_streams() {
            if let StreamKind::Events(source) = kind {
                assert_eq!(window(kind), Duration::from_secs(120), "{source}");
            }
        }
    }

    #[test]
    fn each_stream_has_one_owner_and_each_service_owns_its_own_events() {
        let streams = all_streams();
        for (i, kind) in streams.iter().enumerate() {
            assert!(!streams[..i].contains(kind), "{kind:?} has two owners");
            if let StreamKind::Events(source) = kind {
                assert_eq!(owner(*kind).map(ServiceName::as_str), Some(*source));
            }
        }
        assert_eq!(owner(StreamKind::DeadLetter), Some(ServiceName::Lead));
        assert_eq!(owner(StreamKind::Events("benchraw")), None);
        assert!(owned_by(ServiceName::Assignment).next().is_none());
    }

    /// The subjects each `leads-<service>` user of the shipped configuration may publish to.
    fn shipped_grants() -> Vec<(String, Vec<String>)> {
        let conf = include_str!("../../../deploy/nats/nats-server.conf");
        conf.split("user: \"leads-")
            .skip(1)
            .map(|block| {
                let service = block[..block.find('"').unwrap()].to_owned();
                let allow = block
                    .lines()
                    .map(str::trim)
                    .take_while(|line| !line.starts_with("subscribe"))
                    .filter_map(|line| line.trim_end_matches(',').strip_prefix('"')?.strip_suffix('"'))
                    .map(str::to_owned)
                    .collect();
                (service, allow)
            })
            .collect()
    }

    #[test]
    fn the_shipped_configuration_lets_each_service_create_and_update_its_own_streams_only() {
        let subjects = Subjects::default();
        let grants = shipped_grants();
        let services: Vec<&str> =
            grants.iter().map(|(service, _)| service.as_str()).filter(|s| *s != "admin").collect();
        assert_eq!(services, ServiceName::ALL.map(ServiceName::as_str), "one user per service");
        for (service, allow) in grants.iter().filter(|(service, _)| service != "admin") {
            let name: ServiceName = service.parse().unwrap();
            let mut own: Vec<String> = owned_by(name).map(|kind| subjects.stream_name(kind)).collect();
            own.sort();
            let streams_of = |action: &str| {
                let mut streams: Vec<String> = allow
                    .iter()
                    .filter_map(|s| s.strip_prefix(&format!("$JS.API.STREAM.{action}.")))
                    .map(str::to_owned)
                    .collect();
                streams.sort();
                streams
            };
            assert_eq!(streams_of("CREATE"), own, "{service} creates");
            assert_eq!(streams_of("UPDATE"), own, "{service} updates");
            for never in ["DELETE", "PURGE"] {
                assert!(streams_of(never).is_empty(), "{service} may {never}");
                assert!(!allow.iter().any(|s| s.contains(never) && s.contains("STREAM")), "{service}: {never}");
            }
            assert!(!allow.iter().any(|s| s.contains('>') && s.starts_with("$JS.API.STREAM")), "{service}: {allow:?}");
            // It looks up every stream it declares, writes dead letters to, follows or pulls from.
            let info = streams_of("INFO");
            let pulled = allow.iter().filter_map(|s| s.strip_prefix("$JS.API.CONSUMER.MSG.NEXT.")?.split('.').next());
            for stream in own.iter().map(String::as_str).chain(["DEADLETTER", "EVENTS_PEOPLE"]).chain(pulled) {
                assert!(info.iter().any(|s| s == stream), "{service} cannot look up {stream}");
            }
        }
    }

    #[test]
    fn each_user_gets_an_inbox_prefix_of_one_token() {
        assert_eq!(inbox_prefix("leads-ingest"), "_INBOX.leads-ingest");
        assert_eq!(inbox_prefix("publisher-acme"), "_INBOX.publisher-acme");
        assert_eq!(inbox_prefix("a.b *>c\td"), "_INBOX.a_b___c_d");
    }
}
