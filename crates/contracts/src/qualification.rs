//! What the qualification service publishes: `scored` events, batched per organisation as
//! `events.qualification.<org>.leads_scored`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The kind of one lead's score, the event inside a `LEADS_SCORED` batch.
pub const SCORED: &str = "scored";

/// The payload of `events.qualification.<org>.scored`; the envelope's aggregate is the lead
/// and its version the score's (it only grows, so the lead service applies the newest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The lead scored, also the envelope's aggregate.
    pub lead_id: Uuid,
    /// 0-100: how likely the lead is to convert.
    pub score: i32,
    /// The factors behind the score, most important first, each readable by a person: a
    /// factor and its signed contribution in points (`intent +9`), or a language model's words.
    pub reasons: Vec<String>,
    /// What scored it: `prior-v1` before the organisation has a trained model, `org-v<n>` for
    /// its trained model `n`, `llm:<model>` for a language model.
    pub model_version: String,
    /// When the score was computed.
    pub scored_at: DateTime<Utc>,
}

/// The kind of the message that carries the `scored` events of one organisation written in
/// one transaction (`platform::outbox::batched`): a scoring batch publishes one message per
/// organisation, not one per lead.
pub const LEADS_SCORED: &str = "leads_scored";

/// Reads a message of `events.qualification.>`: one `scored` event, or a `LEADS_SCORED` batch.
pub fn read_scored(
    subject: &str,
    payload: &[u8],
    out: &mut Vec<crate::Envelope<Scored>>,
) -> Result<(), serde_json::Error> {
    crate::Envelope::read_into(subject, payload, &[LEADS_SCORED], out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;

    fn scored(score: i32) -> Envelope<Scored> {
        let lead_id = Uuid::now_v7();
        let data = Scored {
            lead_id,
            score,
            reasons: vec!["intent +9".into()],
            model_version: "prior-v1".into(),
            scored_at: Utc::now(),
        };
        Envelope::new("acme", SCORED, lead_id, 2, data)
    }

    #[test]
    fn a_lone_score_and_a_batch_of_them_both_read() {
        let (one, two) = (scored(40), scored(80));
        let mut out = Vec::new();
        read_scored("events.qualification.acme.scored", &one.to_json(), &mut out).unwrap();
        let batch = Envelope::new("acme", LEADS_SCORED, Uuid::now_v7(), 1, vec![one.clone(), two.clone()]);
        read_scored("events.qualification.acme.leads_scored", &batch.to_json(), &mut out).unwrap();
        assert_eq!(out, [one.clone(), one, two]);
        assert!(read_scored("events.qualification.acme.scored", &batch.to_json(), &mut out).is_err());
    }
}
