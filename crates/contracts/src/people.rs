//! What the people directory publishes: `events.people.<org>.sessions_ended`, which every
//! process follows (`platform::sessions`) so that its gRPC servers refuse the tokens of a
//! person whose sessions ended.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The service whose stream (`EVENTS_PEOPLE`) carries these events.
pub const SOURCE: &str = "people";

/// The kind of a `SessionsEnded` event, the last token of its subject.
pub const SESSIONS_ENDED: &str = "sessions_ended";

/// The payload of `events.people.<org>.sessions_ended`: every token of `sub` in `org_id`
/// issued at or before `ended_at` is refused from now on. The envelope's aggregate is the
/// person (`person_id`) and its version the person's, which only grows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsEnded {
    /// The organisation, as in the subject and the envelope.
    pub org_id: String,
    /// The tokens' subject: the person's email, lowercased.
    pub sub: String,
    /// Seconds since the Unix epoch: tokens whose `iat` is at or before this are refused.
    pub ended_at: u64,
    /// Why: `deactivated`, `password_reset` or `role_changed`; for people reading the stream.
    #[serde(default)]
    pub reason: String,
}

/// The stable aggregate id of the person `email` of `org_id` (a UUIDv5 of both), so that the
/// events of one person share it whichever process wrote them.
pub fn person_id(org_id: &str, email: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("person\u{1f}{org_id}\u{1f}{email}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;

    #[test]
    fn an_event_reads_back_as_written_and_tolerates_a_missing_reason() {
        let data = SessionsEnded {
            org_id: "acme".into(),
            sub: "ann@acme.test".into(),
            ended_at: 1_900_000_000,
            reason: "deactivated".into(),
        };
        let envelope = Envelope::new("acme", SESSIONS_ENDED, person_id("acme", "ann@acme.test"), 3, data.clone());
        let read = Envelope::<SessionsEnded>::from_json(&envelope.to_json()).expect("reads");
        assert_eq!(read.data, data);
        assert_eq!(read.version, 3);
        let bare: SessionsEnded =
            serde_json::from_str(r#"{"org_id":"acme","sub":"ann@acme.test","ended_at":5}"#).expect("reads");
        assert_eq!(bare.reason, "");
        assert_ne!(person_id("acme", "ann@acme.test"), person_id("globex", "ann@acme.test"));
        assert_eq!(person_id("acme", "ann@acme.test"), person_id("acme", "ann@acme.test"));
    }
}
