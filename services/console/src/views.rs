//! What the templates show, made from the services' answers: plain strings, so that the
//! templates hold no logic beyond loops and conditions (and escape every one of them).

use contracts::lead::{SourceKind, Status};
use leads_proto::v1 as pb;

/// A time as the page shows it: UTC text, and the machine-readable instant the page's script
/// turns into the reader's own time zone.
#[derive(Debug, Clone, Default)]
pub struct When {
    pub iso: String,
    pub text: String,
}

impl When {
    pub fn of(timestamp: Option<&prost_types::Timestamp>) -> Self {
        let Some(at) = timestamp.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0)) else {
            return Self::default();
        };
        Self {
            iso: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            text: at.format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }

    pub fn is_set(&self) -> bool {
        !self.iso.is_empty()
    }
}

/// One lead as a row of the list and the head of its drawer.
#[derive(Debug, Clone)]
pub struct LeadRow {
    pub id: String,
    pub name: String,
    pub phone: String,
    pub email: String,
    pub status: String,
    pub status_label: String,
    pub active: bool,
    /// Why an action is not offered, for an inactive lead.
    pub inactive_reason: String,
    pub score: String,
    /// `AI` or `manual`, beside the score.
    pub score_source: String,
    pub agent: String,
    pub source: String,
    pub campaign: String,
    pub last_message: String,
    pub last_interaction: When,
    pub created: When,
    pub interactions: i64,
    pub version: i64,
    /// The reasons of the current AI score, most important first, joined; empty for a score
    /// set by hand.
    pub reasons: String,
    /// The most important reason alone, under the score in the list.
    pub top_reason: String,
    /// The attributes the lead's interactions carried, by key.
    pub attributes: Vec<(String, String)>,
    /// The chat system's conversation of the lead's latest interaction that named one.
    pub conversation_id: String,
    /// Its link in the chat system, where the organisation set a template.
    pub conversation_url: String,
}

pub fn status_label(status: Status) -> &'static str {
    match status {
        Status::New => "New",
        Status::Contacted => "Contacted",
        Status::Qualifying => "Qualifying",
        Status::Qualified => "Qualified",
        Status::FollowUp => "Follow-up",
        Status::Converted => "Converted",
        Status::Lost => "Lost",
        Status::Archived => "Archived",
    }
}

pub fn source_label(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::ChatMessage => "Chat",
        SourceKind::BroadcastReply => "Broadcast reply",
        SourceKind::Integration => "Integration",
    }
}

impl LeadRow {
    pub fn of(lead: &pb::Lead) -> Self {
        let status = Status::from_proto(lead.status);
        let contact = lead.contact.clone().unwrap_or_default();
        let source = lead.source.clone().unwrap_or_default();
        let kind = SourceKind::from_proto(source.kind);
        let status_label = status.map_or("Unknown", status_label).to_owned();
        Self {
            id: lead.id.clone(),
            name: if contact.name.is_empty() { "(no name)".into() } else { contact.name },
            phone: contact.phone,
            email: contact.email,
            status: status.map_or("unknown", Status::as_str).to_owned(),
            inactive_reason: if lead.active {
                String::new()
            } else {
                format!("This lead is {status_label}: final, so it no longer changes.")
            },
            status_label,
            active: lead.active,
            score: lead.score.map(|s| s.to_string()).unwrap_or_default(),
            score_source: match pb::ScoreSource::try_from(lead.score_source) {
                Ok(pb::ScoreSource::Ai) => "AI".into(),
                Ok(pb::ScoreSource::Manual) => "manual".into(),
                _ => String::new(),
            },
            agent: lead.agent_id.clone(),
            source: kind.map_or("Unknown", source_label).to_owned(),
            campaign: source.campaign_id,
            last_message: lead.last_message_preview.clone(),
            last_interaction: When::of(lead.last_interaction_at.as_ref()),
            created: When::of(lead.created_at.as_ref()),
            interactions: lead.interaction_count,
            version: lead.version,
            reasons: lead.score_reasons.join(" · "),
            top_reason: lead.score_reasons.first().cloned().unwrap_or_default(),
            attributes: {
                let mut attributes: Vec<(String, String)> =
                    lead.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                attributes.sort();
                attributes
            },
            conversation_id: lead.conversation_id.clone(),
            conversation_url: lead.conversation_url.clone(),
        }
    }
}

/// One entry of a lead's timeline.
#[derive(Debug, Clone)]
pub struct TimelineEntry {
    pub at: When,
    pub kind: String,
    pub summary: String,
    pub actor: String,
    /// Extra facts worth showing: campaign, template, delivery steps, a score's reasons.
    pub details: Vec<(String, String)>,
    /// The lead the entry belongs to, when it is one of the contact's past leads.
    pub lead_id: String,
    /// The kind as a CSS class: one word.
    pub kind_class: String,
}

/// A value of an entry's details as words: a delivery step (`{"status": "read", "at": ...}`)
/// as "read 2026-12-06 18:15 UTC", with its error when it failed; other objects as their
/// fields; lists joined.
fn words(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::Null => None,
        Value::String(text) if text.is_empty() => None,
        Value::String(text) => Some(text.clone()),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().filter_map(words).collect();
            (!items.is_empty()).then(|| items.join(" · "))
        }
        Value::Object(map) => {
            let at = map
                .get("at")
                .and_then(Value::as_str)
                .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                .map(|at| at.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M UTC").to_string());
            let mut parts: Vec<String> = Vec::new();
            if let Some(status) = map.get("status").and_then(Value::as_str) {
                parts.push(status.to_owned());
            }
            parts.extend(at);
            for (key, value) in map {
                if matches!(key.as_str(), "status" | "at") {
                    continue;
                }
                if let Some(text) = words(value) {
                    parts.push(format!("{}: {text}", key.replace('_', " ")));
                }
            }
            (!parts.is_empty()).then(|| parts.join(", "))
        }
        other => Some(other.to_string()),
    }
}

impl TimelineEntry {
    pub fn of(entry: &pb::HistoryEntry) -> Self {
        let mut details = Vec::new();
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&entry.details_json) {
            for (key, value) in &map {
                if let Some(text) = words(value) {
                    details.push((key.replace('_', " "), text));
                }
            }
        }
        Self {
            at: When::of(entry.at.as_ref()),
            kind: entry.kind.replace('_', " "),
            kind_class: entry.kind.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect(),
            summary: entry.summary.clone(),
            actor: entry.actor.clone(),
            details,
            lead_id: entry.lead_id.clone(),
        }
    }
}

/// Every status, for the filter and the status forms: (name, label).
pub fn statuses() -> Vec<(&'static str, &'static str)> {
    Status::ALL.iter().map(|s| (s.as_str(), status_label(*s))).collect()
}

/// The statuses a lead may be moved to by hand: all of them (a final one closes it).
pub fn sources() -> Vec<(&'static str, &'static str)> {
    SourceKind::ALL.iter().map(|s| (s.as_str(), source_label(*s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_steps_read_as_words() {
        let steps = serde_json::json!([
            {"status": "sent", "at": "2026-12-06T18:10:00Z", "error_class": null},
            {"status": "failed", "at": "2026-12-06T18:15:30+00:00", "error_class": "opted_out"}
        ]);
        assert_eq!(
            words(&steps).unwrap(),
            "sent, 2026-12-06 18:10 UTC · failed, 2026-12-06 18:15 UTC, error class: opted_out"
        );
        assert_eq!(words(&serde_json::json!([])), None);
        assert_eq!(words(&serde_json::json!({"reasons": ["price", "urgency"]})).unwrap(), "reasons: price · urgency");
    }
}
