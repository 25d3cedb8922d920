//! The service's decisions without Postgres: how a batch of lead events changes each lead's
//! state and features, which leads it rescores, what they learn from, and how a score is
//! explained. `handler` reads and writes the rows; everything it decides comes from here. It is
//! also where the service's times and events become the model's (`qualification_model`).

use chrono::{DateTime, Utc};
use contracts::{
    Envelope, interaction,
    lead::{InteractionSummary, LeadChange, LeadEvent, ScoreSource, Status},
};
use qualification_model::{
    Direction, Explanation, LeadFeatures, Message, MessageKind, Model, Prior, SparseVector, Timestamp,
};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, sync::Arc};
use uuid::Uuid;

/// The version scores of the built-in prior carry.
pub const PRIOR_VERSION: &str = "prior-v1";

/// How many of a lead's latest messages are kept for the language-model scorer (`llm`).
pub const RECENT_MESSAGES: usize = 8;
/// How many characters of each kept message.
pub const RECENT_CHARS: usize = 500;

/// What the service keeps of a lead's state, from the lead's newest event.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LeadState {
    pub lead_version: i64,
    pub active: bool,
    pub manual_score: Option<i32>,
}

/// What the service keeps of a lead's conversation. It changes only with the lead's
/// interactions, so it is stored apart from the state, which follows every lead event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    pub features: LeadFeatures,
    /// The latest messages with text, oldest first; stored only while a language model scores.
    pub recent: Vec<RecentMessage>,
}

/// One of a lead's latest messages, its text cut to `RECENT_CHARS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentMessage {
    pub direction: Direction,
    /// Stored as RFC 3339 text, as a chrono time would be.
    pub at: Timestamp,
    pub text: String,
}

/// Keeps `message` among the latest `RECENT_MESSAGES` with text, in time order.
fn remember(recent: &mut Vec<RecentMessage>, message: &Message<'_>) {
    let Some(text) = message.text.map(str::trim).filter(|t| !t.is_empty()) else { return };
    let text = match text.char_indices().nth(RECENT_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    };
    recent.push(RecentMessage { direction: message.direction, at: message.at, text });
    recent.sort_by_key(|m| m.at);
    let excess = recent.len().saturating_sub(RECENT_MESSAGES);
    recent.drain(..excess);
}

/// What a batch did to one lead.
#[derive(Debug, Clone, Default)]
pub struct Folded<'a> {
    pub state: LeadState,
    /// The state is newer than the stored one.
    pub state_changed: bool,
    /// New interactions were observed, or the lead was handed back to the engine: score it.
    pub rescore: bool,
    /// A score set by hand was cleared: publish the engine's score even when unchanged.
    pub handed_back: bool,
    /// The lead reached an outcome in this batch: Converted (true) or Lost (false).
    pub outcome: Option<(bool, DateTime<Utc>)>,
    /// The interactions seen for the first time, in time order, until `observe` takes them.
    pub interactions: Vec<Message<'a>>,
    /// The conversation after the batch, once `observe` has read it.
    pub conversation: Option<Conversation>,
    /// `observe` took new interactions: the conversation has to be written.
    pub observed: bool,
}

impl Folded<'_> {
    /// Scoring or recording an outcome needs the lead's conversation.
    pub fn needs_conversation(&self) -> bool {
        self.rescore || self.outcome.is_some()
    }

    /// Takes the new interactions into the lead's stored conversation, in time order.
    pub fn observe(&mut self, mut conversation: Conversation) {
        for message in self.interactions.drain(..) {
            conversation.features.observe(&message);
            remember(&mut conversation.recent, &message);
            self.observed = true;
        }
        self.conversation = Some(conversation);
    }
}

/// A lead's key in a batch: organisation and lead id, sorted so that rows lock in one order.
pub type LeadKey = (String, Uuid);

/// Folds a batch of lead events into the leads' stored states. `fresh` says whether an
/// interaction (by event id) is seen for the first time: a redelivered one is not counted
/// again. The new interactions wait in time order, whatever order they arrived in, for
/// `Folded::observe` and the lead's conversation.
pub fn fold<'a>(
    events: &'a [Envelope<LeadEvent>],
    stored: &BTreeMap<LeadKey, LeadState>,
    fresh: impl Fn(&str, &str) -> bool,
) -> BTreeMap<LeadKey, Folded<'a>> {
    let mut out: BTreeMap<LeadKey, Folded<'a>> = BTreeMap::new();
    for envelope in events {
        let lead = &envelope.data.lead;
        let key = (envelope.org_id.clone(), lead.id);
        let folded = out.entry(key.clone()).or_insert_with(|| Folded {
            state: stored.get(&key).copied().unwrap_or(LeadState { active: true, ..LeadState::default() }),
            ..Folded::default()
        });
        if envelope.version > folded.state.lead_version {
            let was_manual = folded.state.manual_score.is_some();
            folded.state_changed = true;
            folded.state.lead_version = envelope.version;
            folded.state.active = lead.active;
            folded.state.manual_score =
                (lead.score_source == Some(ScoreSource::Manual)).then_some(lead.score).flatten();
            if was_manual && folded.state.manual_score.is_none() {
                folded.handed_back = true;
                folded.rescore = true;
            }
            folded.outcome = match lead.status {
                Status::Converted => Some((true, envelope.occurred_at)),
                Status::Lost => Some((false, envelope.occurred_at)),
                _ => None,
            };
        }
        if let LeadChange::Created { interaction } | LeadChange::InteractionRecorded { interaction } =
            &envelope.data.change
            && fresh(&envelope.org_id, &interaction.event_id)
        {
            folded.interactions.push(message(interaction, &envelope.data));
            folded.rescore = true;
        }
    }
    for folded in out.values_mut() {
        folded.interactions.sort_by_key(|m| m.at);
    }
    out
}

/// A time as the model sees it: to the nanosecond, held within the years 0 to 9999.
pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp::new(at.timestamp(), at.timestamp_subsec_nanos())
        .unwrap_or_else(|| Timestamp::from_unix_seconds(at.timestamp()))
}

/// A model time as the service's.
pub fn date_time(at: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(at.unix_seconds(), at.subsec_nanos()).unwrap_or_default()
}

/// An interaction as the model sees it.
pub fn message<'a>(interaction: &'a InteractionSummary, event: &'a LeadEvent) -> Message<'a> {
    Message {
        direction: match interaction.direction {
            interaction::Direction::Inbound => Direction::Inbound,
            interaction::Direction::Outbound => Direction::Outbound,
        },
        at: timestamp(interaction.occurred_at),
        text: interaction.text.as_deref(),
        kind: match interaction.kind {
            interaction::Kind::ChatMessage => MessageKind::ChatMessage,
            interaction::Kind::BroadcastReply => MessageKind::BroadcastReply,
            interaction::Kind::Integration => MessageKind::Integration,
        },
        campaign_id: interaction.campaign_id.as_deref(),
        source: Some(event.lead.source_kind.as_str()),
        channel: Some(event.lead.channel.as_str()),
    }
}

/// A lead's stored features: the model's binary form, or the JSON form earlier versions wrote
/// (it starts with `{`), which still reads.
pub fn stored_features(bytes: &[u8]) -> Result<LeadFeatures, String> {
    if bytes.first() == Some(&b'{') {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))
    } else {
        LeadFeatures::from_bytes(bytes).map_err(|e| e.to_string())
    }
}

/// The scorer of one organisation: its learned model when that beats the prior, else the prior.
#[derive(Debug, Clone)]
pub enum Scorer {
    Prior,
    Learned(Arc<Model>),
}

impl Scorer {
    pub fn version(&self) -> String {
        match self {
            Scorer::Prior => PRIOR_VERSION.to_owned(),
            Scorer::Learned(model) => model_version(model.version),
        }
    }

    pub fn explain(&self, features: &LeadFeatures, now: DateTime<Utc>) -> Explanation {
        let vector = features.vector(timestamp(now));
        match self {
            Scorer::Prior => Prior::new().explain(&vector),
            Scorer::Learned(model) => model.explain(&vector),
        }
    }
}

/// The version a learned model's scores carry.
pub fn model_version(version: u32) -> String {
    format!("org-v{version}")
}

/// The reasons a score carries: each factor with its signed contribution in points.
pub fn reasons(explanation: &Explanation) -> Vec<String> {
    explanation.factors.iter().map(ToString::to_string).collect()
}

/// A stored reason as a person reads it. Scores of models trained before models kept their
/// words carry hashed ids (`text:#123456 +3`); those read as `text features +3`.
pub fn readable(reason: &str) -> String {
    match reason.strip_prefix("text:#").and_then(|rest| rest.split_once(' ')) {
        Some((id, points)) if id.bytes().all(|b| b.is_ascii_digit()) => format!("text features {points}"),
        _ => reason.to_owned(),
    }
}

/// The training set of an organisation: each outcome's features as they were when decided.
pub fn examples(outcomes: &[(LeadFeatures, bool, DateTime<Utc>)]) -> Vec<(SparseVector, bool)> {
    outcomes.iter().map(|(features, converted, at)| (features.vector(timestamp(*at)), *converted)).collect()
}

/// One lead's new score.
pub struct Scoring {
    pub org_id: String,
    pub lead_id: Uuid,
    pub score: i32,
    pub reasons: Vec<String>,
    pub model_version: String,
    /// Published even when equal to the stored score (a requalification, a hand-back).
    pub force: bool,
    /// A score set by hand wins: the engine's is kept here but not published.
    pub manual: bool,
    /// When the lead's time-dependent features will have moved enough to score it again
    /// (`LeadFeatures::refresh_at`); none for a score that does not follow them.
    pub refresh_at: Option<DateTime<Utc>>,
}

impl Scoring {
    pub fn new(
        org_id: &str,
        lead_id: Uuid,
        state: &LeadState,
        conversation: &Conversation,
        scorer: &Scorer,
        now: DateTime<Utc>,
        force: bool,
    ) -> Self {
        let explanation = scorer.explain(&conversation.features, now);
        Self {
            org_id: org_id.to_owned(),
            lead_id,
            score: i32::from(explanation.score),
            reasons: reasons(&explanation),
            model_version: scorer.version(),
            force,
            manual: state.manual_score.is_some(),
            refresh_at: conversation.features.refresh_at(timestamp(now)).map(date_time),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::{
        interaction::Direction::{Inbound, Outbound},
        lead::{LeadView, SourceKind},
    };

    fn view(id: Uuid, status: Status, score: Option<i32>, source: Option<ScoreSource>) -> LeadView {
        let now = Utc::now();
        LeadView {
            id,
            org_id: "acme".into(),
            contact_id: Uuid::nil(),
            phone: None,
            external_id: None,
            name: None,
            email: None,
            status,
            active: !status.is_final(),
            source_kind: SourceKind::ChatMessage,
            channel: "whatsapp".into(),
            campaign_id: None,
            broadcast_message_id: None,
            integration_name: None,
            integration_reference: None,
            score,
            score_source: source,
            agent_id: None,
            interaction_count: 1,
            last_message_preview: None,
            first_touch_at: now,
            last_interaction_at: now,
            created_at: now,
            updated_at: now,
            version: 1,
            score_reasons: Vec::new(),
            attributes: Default::default(),
            conversation_id: None,
        }
    }

    fn recorded(
        id: Uuid,
        version: i64,
        event_id: &str,
        minute: i64,
        direction: interaction::Direction,
        text: &str,
    ) -> Envelope<LeadEvent> {
        let at = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().with_timezone(&Utc)
            + chrono::Duration::minutes(minute);
        let interaction = InteractionSummary {
            event_id: event_id.into(),
            kind: interaction::Kind::ChatMessage,
            direction,
            occurred_at: at,
            text: Some(text.into()),
            broadcast_message_id: None,
            campaign_id: None,
            agent_id: None,
        };
        let lead = view(id, Status::New, None, None);
        Envelope::new(
            "acme",
            "interaction_recorded",
            id,
            version,
            LeadEvent { change: LeadChange::InteractionRecorded { interaction }, lead },
        )
    }

    fn changed(
        id: Uuid,
        version: i64,
        status: Status,
        score: Option<i32>,
        source: Option<ScoreSource>,
    ) -> Envelope<LeadEvent> {
        let change = LeadChange::StatusChanged {
            from: "new".into(),
            to: status.as_str().into(),
            actor: "op".into(),
            reason: None,
            rule: None,
        };
        Envelope::new(
            "acme",
            "status_changed",
            id,
            version,
            LeadEvent { change, lead: view(id, status, score, source) },
        )
    }

    #[test]
    fn a_burst_is_observed_in_time_order_once_and_rescored_once() {
        let id = Uuid::now_v7();
        let events = vec![
            recorded(id, 3, "e3", 3, Inbound, "price?"),
            recorded(id, 2, "e2", 2, Outbound, "hello"),
            recorded(id, 1, "e1", 1, Inbound, "hi"),
        ];
        let mut folded = fold(&events, &BTreeMap::new(), |_, event| event != "e2");
        let lead = folded.get_mut(&("acme".to_owned(), id)).unwrap();
        assert!(lead.rescore && lead.needs_conversation());
        lead.observe(Conversation::default());
        assert!(lead.observed);
        let features = &lead.conversation.as_ref().unwrap().features;
        assert_eq!((features.inbound, features.outbound), (2, 0), "e2 was seen before");
        assert_eq!(lead.state.lead_version, 3);
        assert_eq!(folded.len(), 1, "one lead, one scoring");
    }

    #[test]
    fn the_latest_messages_are_kept_in_time_order_bounded_and_cut() {
        let id = Uuid::now_v7();
        let long = "é".repeat(RECENT_CHARS + 50);
        let mut events: Vec<_> =
            (0..10).map(|n| recorded(id, n + 1, &format!("e{n}"), n, Inbound, &format!("m{n}"))).collect();
        events.push(recorded(id, 11, "late", -5, Outbound, "too old to keep"));
        events.push(recorded(id, 12, "long", 20, Outbound, &long));
        events.push(recorded(id, 13, "blank", 21, Inbound, "  "));
        let mut folded = fold(&events, &BTreeMap::new(), |_, _| true);
        let lead = folded.get_mut(&("acme".to_owned(), id)).unwrap();
        lead.observe(Conversation::default());
        let recent = &lead.conversation.as_ref().unwrap().recent;
        let texts: Vec<&str> = recent.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts[..7], ["m3", "m4", "m5", "m6", "m7", "m8", "m9"]);
        assert_eq!(recent.len(), RECENT_MESSAGES);
        assert_eq!((recent[7].direction, recent[7].text.chars().count()), (Direction::Outbound, RECENT_CHARS));
    }

    #[test]
    fn a_stale_state_event_does_not_undo_a_newer_one() {
        let id = Uuid::now_v7();
        let events = vec![changed(id, 5, Status::Lost, None, None), changed(id, 4, Status::Qualified, None, None)];
        let folded = fold(&events, &BTreeMap::new(), |_, _| true);
        let lead = &folded[&("acme".to_owned(), id)];
        assert!(!lead.state.active);
        assert_eq!(lead.outcome.map(|o| o.0), Some(false), "lost is a negative");
        assert!(!lead.rescore, "no interaction, no scoring");
        assert!(lead.state_changed && lead.needs_conversation(), "an outcome keeps the features it was decided with");
    }

    #[test]
    fn a_manual_score_is_kept_and_clearing_it_hands_the_lead_back() {
        let id = Uuid::now_v7();
        let key = ("acme".to_owned(), id);
        let set = [changed(id, 2, Status::Qualifying, Some(77), Some(ScoreSource::Manual))];
        let manual = fold(&set, &BTreeMap::new(), |_, _| true);
        assert_eq!(manual[&key].state.manual_score, Some(77));
        assert!(!manual[&key].handed_back && !manual[&key].needs_conversation());
        let stored: BTreeMap<LeadKey, LeadState> = manual.into_iter().map(|(k, f)| (k, f.state)).collect();
        let cleared = [changed(id, 3, Status::Qualifying, None, None)];
        let back = fold(&cleared, &stored, |_, _| true);
        assert_eq!(back[&key].state.manual_score, None);
        assert!(back[&key].handed_back && back[&key].rescore && back[&key].needs_conversation());
        let both = [set[0].clone(), cleared[0].clone()];
        let in_one_batch = fold(&both, &BTreeMap::new(), |_, _| true);
        assert!(in_one_batch[&key].handed_back && in_one_batch[&key].needs_conversation());
    }

    #[test]
    fn archived_is_no_label_and_converted_is_a_positive() {
        let id = Uuid::now_v7();
        let archived = [changed(id, 2, Status::Archived, None, None)];
        let archived = fold(&archived, &BTreeMap::new(), |_, _| true);
        assert_eq!(archived[&("acme".to_owned(), id)].outcome, None);
        let converted = [changed(id, 2, Status::Converted, None, None)];
        let converted = fold(&converted, &BTreeMap::new(), |_, _| true);
        assert_eq!(converted[&("acme".to_owned(), id)].outcome.map(|o| o.0), Some(true));
    }

    #[test]
    fn stored_features_read_in_the_binary_and_the_json_form() {
        let id = Uuid::now_v7();
        let events = [recorded(id, 1, "e1", 1, Inbound, "quiero comprar"), recorded(id, 2, "e2", 2, Outbound, "ok")];
        let mut folded = fold(&events, &BTreeMap::new(), |_, _| true);
        let lead = folded.get_mut(&("acme".to_owned(), id)).unwrap();
        lead.observe(Conversation::default());
        let features = &lead.conversation.as_ref().unwrap().features;
        assert_eq!(stored_features(&features.to_bytes()).as_ref(), Ok(features));
        assert_eq!(stored_features(&serde_json::to_vec(features).unwrap()).as_ref(), Ok(features));
        assert_eq!(stored_features(b"{}"), Ok(LeadFeatures::new()));
        assert_eq!(stored_features(b""), Ok(LeadFeatures::new()));
        assert!(stored_features(&[7, 1, 2]).is_err());
        let json = serde_json::to_value(features).unwrap();
        assert_eq!(json["first_inbound"], "2026-11-24T10:01:00Z", "times stay RFC 3339 text");
    }

    #[test]
    fn reasons_name_each_factor_with_its_points() {
        let mut features = LeadFeatures::new();
        let now = Utc::now();
        features.observe(&Message::chat(Direction::Inbound, timestamp(now), "quiero comprar hoy, ¿cuánto cuesta?"));
        let explanation = Scorer::Prior.explain(&features, now);
        let reasons = reasons(&explanation);
        assert!(explanation.score >= 60, "{explanation}");
        assert!(reasons.iter().any(|r| r.starts_with("intent") && r.contains('+')), "{reasons:?}");
        assert_eq!(Scorer::Prior.version(), PRIOR_VERSION);
    }

    #[test]
    fn hashed_reasons_of_earlier_models_read_as_text_features() {
        assert_eq!(readable("text:#123456 +3"), "text features +3");
        assert_eq!(readable("text:#9 -1"), "text features -1");
        assert_eq!(readable(r#"text: "warranty" +7"#), r#"text: "warranty" +7"#);
        assert_eq!(readable("intent signals +16"), "intent signals +16");
    }

    #[test]
    fn a_score_says_when_its_time_dependent_features_are_due_again() {
        let now = Utc::now();
        let mut conversation = Conversation::default();
        let scoring = |conversation: &Conversation| {
            Scoring::new("acme", Uuid::nil(), &LeadState::default(), conversation, &Scorer::Prior, now, false)
        };
        assert_eq!(scoring(&conversation).refresh_at, None, "nothing observed, nothing to refresh");
        conversation.features.observe(&Message::chat(
            Direction::Inbound,
            timestamp(now - chrono::Duration::hours(23)),
            "hello",
        ));
        let due = scoring(&conversation).refresh_at.expect("due again");
        assert!(due > now && due <= now + chrono::Duration::hours(1), "a day old within the hour: {due}");
    }
}
