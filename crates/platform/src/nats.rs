//! NATS and JetStream: subject names under the configured prefix, and the streams the
//! platform declares idempotently at start-up so that publishers never have to.

use async_nats::jetstream::{self, stream};
use secrecy::ExposeSecret;
use std::time::Duration;

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
        StreamKind::Interactions | StreamKind::Broadcasts | StreamKind::Events(_) => Duration::from_secs(7 * 24 * 3600),
        StreamKind::DeadLetter => Duration::from_secs(30 * 24 * 3600),
    };
    let duplicate_window = match kind {
        StreamKind::Interactions | StreamKind::Broadcasts => INPUT_DUPLICATE_WINDOW,
        StreamKind::DeadLetter | StreamKind::Events(_) => SERVICE_DUPLICATE_WINDOW,
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
/// one: publishers and tools call this, and only the services own a stream's settings
/// (`ensure_stream_replicated`).
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

/// The services that publish events of their own.
pub const EVENT_SOURCES: [&str; 4] = ["ingest", "lead", "qualification", "followup"];

/// Every stream of the platform.
pub fn all_streams() -> Vec<StreamKind> {
    let mut kinds = vec![StreamKind::Interactions, StreamKind::Broadcasts, StreamKind::DeadLetter];
    kinds.extend(EVENT_SOURCES.map(StreamKind::Events));
    kinds
}

/// Declares every stream of the platform that is missing (one replica), changing none.
pub async fn ensure_all_streams(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<()> {
    for kind in all_streams() {
        ensure_stream(js, subjects, kind).await?;
    }
    Ok(())
}

/// Declares every stream of the platform with `replicas` copies, updating existing ones
/// (`ensure_stream_replicated`): what a service does at start-up.
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
        for source in EVENT_SOURCES {
            assert_eq!(window(StreamKind::Events(source)), Duration::from_secs(120), "{source}");
        }
    }

    #[test]
    fn each_user_gets_an_inbox_prefix_of_one_token() {
        assert_eq!(inbox_prefix("leads-ingest"), "_INBOX.leads-ingest");
        assert_eq!(inbox_prefix("publisher-acme"), "_INBOX.publisher-acme");
        assert_eq!(inbox_prefix("a.b *>c\td"), "_INBOX.a_b___c_d");
    }
}
