//! How a `contracts::lead::LeadView` is read from this service's tables, and how a lead takes
//! the conversation and attributes of its interactions.

use chrono::{DateTime, Utc};
use contracts::lead::LeadView;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Columns of `LeadView`, for `SELECT ... FROM leads l JOIN contacts c ON c.id = l.contact_id`.
pub const LEAD_VIEW_COLUMNS: &str = "l.id, l.org_id, l.contact_id, c.phone, c.external_id, c.name, c.email, \
     l.status, l.active, l.source_kind, l.channel, l.campaign_id, l.broadcast_message_id, \
     l.integration_name, l.integration_reference, l.score, l.score_source, l.agent_id, \
     l.interaction_count, l.last_message_preview, l.first_touch_at, l.last_interaction_at, \
     l.created_at, l.updated_at, l.version, coalesce(l.score_reasons, '[]') AS score_reasons, l.attributes, \
     l.conversation_id";

/// The most attribute keys a lead keeps: those set most recently. An interaction carries at
/// most 50; a lead that gathers more from many keeps its row, and every event carrying it, small.
pub const MAX_LEAD_ATTRIBUTES: usize = 100;

/// Where an interaction stands among a lead's: its time, then its event id for interactions
/// of the same instant, so that "the latest" is the same whatever order they were applied in.
pub type Position = (DateTime<Utc>, String);

/// The positions of the interactions that set a lead's conversation and each of its
/// attributes (`leads.detail_positions`). With them an interaction applied late, older than
/// ones applied before it, changes only what it is the latest for, and a lead ends the same
/// whatever order its interactions arrive in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DetailPositions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<Position>,
    #[serde(default)]
    pub attributes: BTreeMap<String, Position>,
}

impl DetailPositions {
    /// Gives `lead` what the interaction at `position` carries where it is the latest to carry
    /// it: its conversation, and each of its attributes.
    pub fn take(
        &mut self,
        lead: &mut LeadView,
        position: &Position,
        conversation_id: Option<&str>,
        attributes: &BTreeMap<String, String>,
    ) {
        if let Some(conversation_id) = conversation_id
            && self.conversation_id.as_ref().is_none_or(|set| set <= position)
        {
            lead.conversation_id = Some(conversation_id.to_owned());
            self.conversation_id = Some(position.clone());
        }
        for (key, value) in attributes {
            if self.attributes.get(key).is_none_or(|set| set <= position) {
                lead.attributes.insert(key.clone(), value.clone());
                self.attributes.insert(key.clone(), position.clone());
            }
        }
        // Beyond the cap the keys set longest ago go. A key of a late, older interaction that
        // lands among them goes at once, so the lead keeps the newest keys in any order.
        while self.attributes.len() > MAX_LEAD_ATTRIBUTES {
            let oldest = self.attributes.iter().min_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0))).map(|(key, _)| key.clone());
            let Some(oldest) = oldest else { break };
            self.attributes.remove(&oldest);
            lead.attributes.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::lead::{SourceKind, Status};
    use uuid::Uuid;

    fn lead() -> LeadView {
        let now = Utc::now();
        LeadView {
            id: Uuid::now_v7(),
            org_id: "acme".into(),
            contact_id: Uuid::now_v7(),
            phone: None,
            external_id: None,
            name: None,
            email: None,
            status: Status::New,
            active: true,
            source_kind: SourceKind::Integration,
            channel: "web".into(),
            campaign_id: None,
            broadcast_message_id: None,
            integration_name: None,
            integration_reference: None,
            score: None,
            score_source: None,
            agent_id: None,
            interaction_count: 1,
            last_message_preview: None,
            first_touch_at: now,
            last_interaction_at: now,
            created_at: now,
            updated_at: now,
            version: 1,
            score_reasons: Vec::new(),
            attributes: BTreeMap::new(),
            conversation_id: None,
        }
    }

    struct Given {
        minute: i64,
        event_id: &'static str,
        conversation_id: Option<&'static str>,
        attributes: &'static [(&'static str, &'static str)],
    }

    fn applied(interactions: &[&Given]) -> (BTreeMap<String, String>, Option<String>) {
        let base = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().with_timezone(&Utc);
        let mut lead = lead();
        let mut positions = DetailPositions::default();
        for given in interactions {
            let position = (base + chrono::Duration::minutes(given.minute), given.event_id.to_owned());
            let attributes = given.attributes.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            positions.take(&mut lead, &position, given.conversation_id, &attributes);
        }
        (lead.attributes, lead.conversation_id)
    }

    #[test]
    fn the_latest_interaction_wins_each_key_and_the_conversation_in_any_order() {
        let first = Given { minute: 0, event_id: "e1", conversation_id: Some("c-1"), attributes: &[("a", "1")] };
        let second = Given { minute: 1, event_id: "e2", conversation_id: None, attributes: &[("a", "2"), ("b", "2")] };
        let third = Given { minute: 2, event_id: "e3", conversation_id: Some("c-3"), attributes: &[("c", "3")] };
        // The same instant: the event id decides.
        let tie = Given { minute: 2, event_id: "e0", conversation_id: Some("c-0"), attributes: &[("c", "0")] };
        let expected = (
            BTreeMap::from([("a".into(), "2".into()), ("b".into(), "2".into()), ("c".into(), "3".into())]),
            Some("c-3".to_owned()),
        );
        let all = [&first, &second, &third, &tie];
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]] {
            let interactions: Vec<&Given> = order.iter().map(|i| all[*i]).collect();
            assert_eq!(applied(&interactions), expected, "order {order:?}");
        }
    }

    #[test]
    fn beyond_the_cap_the_keys_set_longest_ago_go_in_any_order() {
        let keys: Vec<&'static str> =
            (0..=MAX_LEAD_ATTRIBUTES).map(|i| &*Box::leak(format!("k{i:03}").into_boxed_str())).collect();
        let given: Vec<Given> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| Given {
                minute: i as i64,
                event_id: "e",
                conversation_id: None,
                attributes: Box::leak(Box::new([(*key, "v")])),
            })
            .collect();
        let forward: Vec<&Given> = given.iter().collect();
        let backward: Vec<&Given> = given.iter().rev().collect();
        let (kept, _) = applied(&forward);
        assert_eq!(kept.len(), MAX_LEAD_ATTRIBUTES);
        assert!(!kept.contains_key("k000"), "the oldest key goes");
        assert_eq!(applied(&backward).0, kept);
    }
}
