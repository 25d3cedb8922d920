//! NATS and JetStream: subject names under the configured prefix, and the streams the
//! platform declares idempotently at start-up so that publishers never have to.

use async_nats::jetstream::{self, stream};
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

pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    Ok(client)
}

/// Declares a stream when it is missing. Never reconfigures an existing one: operators own
/// retention once it exists.
pub async fn ensure_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    kind: StreamKind,
) -> anyhow::Result<stream::Stream> {
    let max_age = match kind {
        StreamKind::Interactions | StreamKind::Broadcasts | StreamKind::Events(_) => Duration::from_secs(7 * 24 * 3600),
        StreamKind::DeadLetter => Duration::from_secs(30 * 24 * 3600),
    };
    let config = stream::Config {
        name: subjects.stream_name(kind),
        subjects: subjects.stream_subjects(kind),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot declare stream {}: {e}", subjects.stream_name(kind)))?;
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

/// Declares every stream of the platform.
pub async fn ensure_all_streams(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<()> {
    for kind in all_streams() {
        ensure_stream(js, subjects, kind).await?;
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
}
