//! The lead as every lead event carries it, and what happened to it: the payload of
//! `events.lead.<org>.<kind>`. Only the lead service writes these; the others keep
//! projections of them.

use crate::interaction::{Direction, Kind};
use crate::{Envelope, time::timestamp};
use chrono::{DateTime, Utc};
use leads_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The trailing gRPC metadata key that carries a lead's current version on every `ABORTED`
/// answer about a stale version (from the lead service, and passed on by the services that call
/// it), so that a client reads it without parsing the message.
pub const LEAD_VERSION_METADATA: &str = "x-lead-version";

/// Where a lead stands; JSON and Postgres carry the snake_case name (`follow_up`), gRPC the
/// proto enum (`FOLLOW_UP`). The first five are active, the last three final. New to Contacted
/// happens by itself (the business's first outbound message); other moves are a person's, or
/// those of the status rules an organisation turned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Opened by the contact; the business has not written since.
    New,
    /// The business has written to the contact.
    Contacted,
    /// Being qualified.
    Qualifying,
    /// Judged worth pursuing.
    Qualified,
    /// Waiting on a follow-up.
    FollowUp,
    /// Final: the lead became a customer.
    Converted,
    /// Final: the lead will not convert.
    Lost,
    /// Final: set aside.
    Archived,
}

impl Status {
    /// Every status, active ones first in the order a lead usually moves through them.
    pub const ALL: [Status; 8] = [
        Status::New,
        Status::Contacted,
        Status::Qualifying,
        Status::Qualified,
        Status::FollowUp,
        Status::Converted,
        Status::Lost,
        Status::Archived,
    ];

    /// The snake_case name, as in JSON and Postgres.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Contacted => "contacted",
            Status::Qualifying => "qualifying",
            Status::Qualified => "qualified",
            Status::FollowUp => "follow_up",
            Status::Converted => "converted",
            Status::Lost => "lost",
            Status::Archived => "archived",
        }
    }

    /// Converted, Lost and Archived are final: the lead is inactive.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Converted | Status::Lost | Status::Archived)
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::LeadStatus {
        match self {
            Status::New => pb::LeadStatus::New,
            Status::Contacted => pb::LeadStatus::Contacted,
            Status::Qualifying => pb::LeadStatus::Qualifying,
            Status::Qualified => pb::LeadStatus::Qualified,
            Status::FollowUp => pb::LeadStatus::FollowUp,
            Status::Converted => pb::LeadStatus::Converted,
            Status::Lost => pb::LeadStatus::Lost,
            Status::Archived => pb::LeadStatus::Archived,
        }
    }

    /// `None` for `Unspecified` and for a number the proto enum does not have.
    pub fn from_proto(value: i32) -> Option<Self> {
        Some(match pb::LeadStatus::try_from(value).ok()? {
            pb::LeadStatus::Unspecified => return None,
            pb::LeadStatus::New => Status::New,
            pb::LeadStatus::Contacted => Status::Contacted,
            pb::LeadStatus::Qualifying => Status::Qualifying,
            pb::LeadStatus::Qualified => Status::Qualified,
            pb::LeadStatus::FollowUp => Status::FollowUp,
            pb::LeadStatus::Converted => Status::Converted,
            pb::LeadStatus::Lost => Status::Lost,
            pb::LeadStatus::Archived => Status::Archived,
        })
    }

    /// The name callers see, as in the proto enum.
    pub fn display_name(self) -> &'static str {
        self.to_proto().as_str_name()
    }
}

// A status name this version does not know is an error wherever it is read, never a
// silent `New`.
read_by_name!(Status, "lead status");

/// What opened a lead: the kind of the interaction that did; JSON `chat_message`,
/// `broadcast_reply`, `integration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A chat message.
    ChatMessage,
    /// A reply to a broadcast: the lead records the campaign and the message replied to.
    BroadcastReply,
    /// An integration's event: the lead records its name and reference.
    Integration,
}

impl SourceKind {
    /// Every source kind.
    pub const ALL: [SourceKind; 3] = [SourceKind::ChatMessage, SourceKind::BroadcastReply, SourceKind::Integration];

    /// The snake_case name, as in JSON and Postgres.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::ChatMessage => "chat_message",
            SourceKind::BroadcastReply => "broadcast_reply",
            SourceKind::Integration => "integration",
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::SourceKind {
        match self {
            SourceKind::ChatMessage => pb::SourceKind::ChatMessage,
            SourceKind::BroadcastReply => pb::SourceKind::BroadcastReply,
            SourceKind::Integration => pb::SourceKind::Integration,
        }
    }

    /// `None` for `Unspecified` and for a number the proto enum does not have.
    pub fn from_proto(value: i32) -> Option<Self> {
        Some(match pb::SourceKind::try_from(value).ok()? {
            pb::SourceKind::Unspecified => return None,
            pb::SourceKind::ChatMessage => SourceKind::ChatMessage,
            pb::SourceKind::BroadcastReply => SourceKind::BroadcastReply,
            pb::SourceKind::Integration => SourceKind::Integration,
        })
    }
}

impl From<Kind> for SourceKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::ChatMessage => SourceKind::ChatMessage,
            Kind::BroadcastReply => SourceKind::BroadcastReply,
            Kind::Integration => SourceKind::Integration,
        }
    }
}

read_by_name!(SourceKind, "lead source kind");

/// Who set a lead's score: the qualification engine, or an operator by hand (which the
/// engine's scores never override).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreSource {
    /// The qualification engine (JSON `ai`).
    Ai,
    /// An operator, through `ChangeStatus` (JSON `manual`).
    Manual,
}

impl ScoreSource {
    /// Both sources.
    pub const ALL: [ScoreSource; 2] = [ScoreSource::Ai, ScoreSource::Manual];

    /// The snake_case name, as in JSON and Postgres.
    pub fn as_str(self) -> &'static str {
        match self {
            ScoreSource::Ai => "ai",
            ScoreSource::Manual => "manual",
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::ScoreSource {
        match self {
            ScoreSource::Ai => pb::ScoreSource::Ai,
            ScoreSource::Manual => pb::ScoreSource::Manual,
        }
    }

    /// `None` for `Unspecified` and for a number the proto enum does not have.
    pub fn from_proto(value: i32) -> Option<Self> {
        Some(match pb::ScoreSource::try_from(value).ok()? {
            pb::ScoreSource::Unspecified => return None,
            pb::ScoreSource::Ai => ScoreSource::Ai,
            pb::ScoreSource::Manual => ScoreSource::Manual,
        })
    }
}

read_by_name!(ScoreSource, "score source");

// The score source column is nullable, which `sqlx(try_from = "String")` cannot read (it
// asks for a string); decoding the column itself puts it through the same `TryFrom`.
#[cfg(feature = "sqlx")]
impl<DB: sqlx::Database> sqlx::Type<DB> for ScoreSource
where
    String: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <String as sqlx::Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <String as sqlx::Type<DB>>::compatible(ty)
    }
}

#[cfg(feature = "sqlx")]
impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for ScoreSource
where
    &'r str: sqlx::Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(ScoreSource::try_from(<&str as sqlx::Decode<'r, DB>>::decode(value)?)?)
    }
}

/// A lead with its contact, as read for callers and as carried in every lead event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct LeadView {
    /// The lead's id, a UUIDv7; also the aggregate of its events.
    pub id: Uuid,
    /// The organisation it belongs to.
    pub org_id: String,
    /// The contact it is with; a contact has at most one active lead, any number of past ones.
    pub contact_id: Uuid,
    /// The contact's phone in E.164; absent when the contact is known by external id only.
    pub phone: Option<String>,
    /// The contact's id in the publisher's system; absent when known by phone only.
    pub external_id: Option<String>,
    /// The contact's name, from the newest interaction that gave one.
    pub name: Option<String>,
    /// The contact's email, from the newest interaction that gave one.
    pub email: Option<String>,
    /// Read with `TryFrom<String>`: a status this version does not know fails the read.
    #[cfg_attr(feature = "sqlx", sqlx(try_from = "String"))]
    pub status: Status,
    /// False once the status is final (`Status::is_final`).
    pub active: bool,
    /// The kind of the interaction that opened the lead.
    #[cfg_attr(feature = "sqlx", sqlx(try_from = "String"))]
    pub source_kind: SourceKind,
    /// The channel of the interaction that opened the lead (`whatsapp`).
    pub channel: String,
    /// The campaign of the broadcast a `broadcast_reply` lead answered, when it was given.
    pub campaign_id: Option<String>,
    /// The broadcast message a `broadcast_reply` lead answered; absent for other sources.
    pub broadcast_message_id: Option<String>,
    /// The integration that opened an `integration` lead; absent for other sources.
    pub integration_name: Option<String>,
    /// What in the integration the lead is about, when it was given.
    pub integration_reference: Option<String>,
    /// 0-100; absent until the lead is scored, and after a score set by hand is handed back
    /// until the engine's next one.
    pub score: Option<i32>,
    /// Who set `score`, absent exactly when it is. Read through `ScoreSource`'s own decoding,
    /// which fails on an unknown name.
    pub score_source: Option<ScoreSource>,
    /// The agent the lead is assigned to; absent while unassigned.
    pub agent_id: Option<String>,
    /// Interactions on the lead, inbound and outbound.
    pub interaction_count: i64,
    /// The first 140 characters of the newest interaction's text (kept when a newer one has
    /// none); absent until one has text.
    pub last_message_preview: Option<String>,
    /// When the contact first wrote: the earliest inbound interaction on the lead.
    pub first_touch_at: DateTime<Utc>,
    /// When the newest interaction on the lead happened.
    pub last_interaction_at: DateTime<Utc>,
    /// When the lead service opened the lead.
    pub created_at: DateTime<Utc>,
    /// When the lead last changed.
    pub updated_at: DateTime<Utc>,
    /// Starts at 1 and grows with every change; the version of the event that carries it.
    pub version: i64,
    /// The reasons of the current AI score, most important first; empty for a score set by
    /// hand, one handed back, or none yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "sqlx", sqlx(json))]
    pub score_reasons: Vec<String>,
    /// The attributes of the lead's interactions merged: each key's value from the latest
    /// interaction (by `occurred_at`, then `event_id`) that gave it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "sqlx", sqlx(json))]
    pub attributes: BTreeMap<String, String>,
    /// The chat system's conversation of the lead's latest interaction that named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

impl LeadView {
    /// The gRPC form, where an absent text is `""` and an absent score source `Unspecified`.
    pub fn to_proto(&self) -> pb::Lead {
        pb::Lead {
            id: self.id.to_string(),
            org_id: self.org_id.clone(),
            contact_id: self.contact_id.to_string(),
            contact: Some(pb::Contact {
                phone: self.phone.clone().unwrap_or_default(),
                external_id: self.external_id.clone().unwrap_or_default(),
                name: self.name.clone().unwrap_or_default(),
                email: self.email.clone().unwrap_or_default(),
            }),
            status: self.status.to_proto() as i32,
            active: self.active,
            source: Some(pb::LeadSource {
                kind: self.source_kind.to_proto() as i32,
                campaign_id: self.campaign_id.clone().unwrap_or_default(),
                broadcast_message_id: self.broadcast_message_id.clone().unwrap_or_default(),
                integration_name: self.integration_name.clone().unwrap_or_default(),
                integration_reference: self.integration_reference.clone().unwrap_or_default(),
                channel: self.channel.clone(),
            }),
            score: self.score,
            score_source: self.score_source.map_or(pb::ScoreSource::Unspecified, ScoreSource::to_proto) as i32,
            agent_id: self.agent_id.clone().unwrap_or_default(),
            interaction_count: self.interaction_count,
            last_message_preview: self.last_message_preview.clone().unwrap_or_default(),
            first_touch_at: Some(timestamp(self.first_touch_at)),
            last_interaction_at: Some(timestamp(self.last_interaction_at)),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
            version: self.version,
            score_reasons: self.score_reasons.clone(),
            attributes: self.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            conversation_id: self.conversation_id.clone().unwrap_or_default(),
            // The organisation's link template is the lead service's setting, filled in there.
            conversation_url: String::new(),
        }
    }
}

/// What happened to the lead; carried beside the lead's state in every lead event.
///
/// JSON is tagged with the snake_case variant name (`{"type": "status_changed", "from":
/// "new", ...}`); the envelope's kind is `kind()`, the same name but `lead_created` for
/// `created`. An `actor` is who did it as the lead service recorded it: the caller's token
/// subject with its display name (`alice (Alice Smith)`), `system` for what the platform did by
/// itself, `qualification (<model version>)` for the engine's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LeadChange {
    /// The contact's inbound interaction opened the lead.
    Created {
        /// The interaction that opened it.
        interaction: InteractionSummary,
    },
    /// An interaction was added to the lead.
    InteractionRecorded {
        /// The interaction added.
        interaction: InteractionSummary,
    },
    /// The status moved.
    StatusChanged {
        /// The status before, as `Status::as_str` names it.
        from: String,
        /// The status after, as `Status::as_str` names it.
        to: String,
        /// Who moved it.
        actor: String,
        /// Why, as the operator wrote it (at most `MAX_REASON_CHARS`); absent when not given.
        reason: Option<String>,
        /// The organisation's status rule that made the change (`ai_score_qualified`, ...), with
        /// actor `system`; absent for a change a person or the built-in lifecycle made.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
    /// The score was set or cleared.
    ScoreChanged {
        /// 0-100; absent when a score set by hand was handed back to the qualification engine.
        score: Option<i32>,
        /// Who the score is from.
        source: ScoreSource,
        /// Who set it.
        actor: String,
    },
    /// The lead's agent changed.
    Assigned {
        /// The agent before; absent when the lead was unassigned.
        from: Option<String>,
        /// The agent after; absent when the change unassigned the lead.
        to: Option<String>,
        /// Who assigned it.
        actor: String,
        /// Why, as the operator wrote it (at most `MAX_REASON_CHARS`); absent when not given.
        reason: Option<String>,
    },
    /// A follow-up was opened on the lead.
    FollowUpOpened {
        /// The follow-up.
        follow_up: FollowUpOpened,
    },
}

/// A follow-up recorded on an active lead; the follow-up service keeps it from here on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowUpOpened {
    /// Chosen by the follow-up service; the aggregate of its `events.followup` events.
    pub follow_up_id: Uuid,
    /// When the agent is to act.
    pub due_at: DateTime<Utc>,
    /// What to do, at most `values::MAX_NOTE_CHARS` characters; absent when none was given.
    pub note: Option<String>,
    /// The agent who is to act: the one requested, else the lead's; absent when neither.
    pub agent_id: Option<String>,
    /// Who opened it.
    pub actor: String,
}

impl LeadChange {
    /// The envelope's kind, and the last token of the subject of an event that travels alone
    /// (`lead_created` and `interaction_recorded` always travel in an `INTERACTIONS_APPLIED`
    /// batch, the engine's scores in a `SCORES_APPLIED` one).
    pub fn kind(&self) -> &'static str {
        match self {
            LeadChange::Created { .. } => "lead_created",
            LeadChange::InteractionRecorded { .. } => "interaction_recorded",
            LeadChange::StatusChanged { .. } => "status_changed",
            LeadChange::ScoreChanged { .. } => "score_changed",
            LeadChange::Assigned { .. } => "assigned",
            LeadChange::FollowUpOpened { .. } => "follow_up_opened",
        }
    }
}

/// The interaction that caused a lead event, for projections (scoring, reply counts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InteractionSummary {
    /// The interaction's `event_id`, unique within the organisation.
    pub event_id: String,
    /// Its kind.
    pub kind: Kind,
    /// Who wrote.
    pub direction: Direction,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Its whole text (at most `interaction::MAX_TEXT_CHARS`); absent when it had none.
    pub text: Option<String>,
    /// The broadcast message it replies to; absent when it names none.
    pub broadcast_message_id: Option<String>,
    /// That broadcast's campaign, when the publisher gave it.
    pub campaign_id: Option<String>,
    /// The business's agent who wrote it, when the publisher named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// The kind of the message that carries the `lead_created` and `interaction_recorded`
/// events of one organisation applied in one transaction (`platform::outbox::batched`);
/// every other change travels alone, on the subject of its own kind.
pub const INTERACTIONS_APPLIED: &str = "interactions_applied";

/// The kind of the message that carries the `score_changed` events of one organisation that
/// one batch of the qualification service's scores applied (`platform::outbox::batched`). A
/// score set by hand travels alone, as `score_changed`.
pub const SCORES_APPLIED: &str = "scores_applied";

/// The kind of the message that carries the `assigned` events of one assignment of several
/// leads (`platform::outbox::batched`): a bulk assignment, or an automatic assignment's pass.
/// An assignment of one lead travels alone, as `assigned`.
pub const ASSIGNMENTS_APPLIED: &str = "assignments_applied";

/// The kinds of `events.lead.>` whose messages carry a batch of lead events.
pub const BATCH_KINDS: [&str; 3] = [INTERACTIONS_APPLIED, SCORES_APPLIED, ASSIGNMENTS_APPLIED];

/// Reads a message of `events.lead.>`: one event, or a batch of one of `BATCH_KINDS`.
pub fn read_lead_events(
    subject: &str,
    payload: &[u8],
    out: &mut Vec<Envelope<LeadEvent>>,
) -> Result<(), serde_json::Error> {
    Envelope::read_into(subject, payload, &BATCH_KINDS, out)
}

/// The payload of `events.lead.<org>.<kind>`: the change and the lead after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadEvent {
    /// What happened.
    pub change: LeadChange,
    /// The whole lead after the change, at the envelope's version.
    pub lead: LeadView,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_name_and_an_unknown_one_is_an_error() {
        for status in Status::ALL {
            assert_eq!(Status::try_from(status.as_str()), Ok(status));
            assert_eq!(serde_json::to_string(&status).unwrap(), format!("\"{}\"", status.as_str()));
            assert_eq!(Status::from_proto(status.to_proto() as i32), Some(status));
        }
        assert_eq!(Status::try_from("won"), Err(crate::UnknownValue { what: "lead status", value: "won".into() }));
        assert!(serde_json::from_str::<Status>("\"won\"").is_err());
    }

    #[test]
    fn source_kinds_and_score_sources_read_back_from_the_names_serde_writes() {
        for kind in SourceKind::ALL {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{}\"", kind.as_str()));
            assert_eq!(SourceKind::try_from(kind.as_str().to_owned()), Ok(kind));
            assert_eq!(SourceKind::from_proto(kind.to_proto() as i32), Some(kind));
        }
        for kind in Kind::ALL {
            assert_eq!(SourceKind::from(kind).as_str(), kind.as_str());
        }
        for source in ScoreSource::ALL {
            assert_eq!(serde_json::to_string(&source).unwrap(), format!("\"{}\"", source.as_str()));
            assert_eq!(source.as_str().parse(), Ok(source));
            assert_eq!(ScoreSource::from_proto(source.to_proto() as i32), Some(source));
        }
        assert_eq!(
            "oracle".parse::<ScoreSource>(),
            Err(crate::UnknownValue { what: "score source", value: "oracle".into() })
        );
        assert_eq!(SourceKind::from_proto(pb::SourceKind::Unspecified as i32), None);
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    fn scored(score: i32) -> Envelope<LeadEvent> {
        let now = Utc::now();
        let lead = LeadView {
            id: Uuid::now_v7(),
            org_id: "acme".into(),
            contact_id: Uuid::now_v7(),
            phone: None,
            external_id: None,
            name: None,
            email: None,
            status: Status::Qualifying,
            active: true,
            source_kind: SourceKind::ChatMessage,
            channel: "whatsapp".into(),
            campaign_id: None,
            broadcast_message_id: None,
            integration_name: None,
            integration_reference: None,
            score: Some(score),
            score_source: Some(ScoreSource::Ai),
            agent_id: None,
            interaction_count: 3,
            last_message_preview: None,
            first_touch_at: now,
            last_interaction_at: now,
            created_at: now,
            updated_at: now,
            version: 4,
            score_reasons: Vec::new(),
            attributes: Default::default(),
            conversation_id: None,
        };
        let change =
            LeadChange::ScoreChanged { score: Some(score), source: ScoreSource::Ai, actor: "qualification".into() };
        Envelope::new("acme", change.kind(), lead.id, lead.version, LeadEvent { change, lead })
    }

    #[test]
    fn an_event_naming_a_value_this_version_does_not_know_does_not_read_and_the_error_names_it() {
        let mut created = scored(40);
        let interaction = InteractionSummary {
            event_id: "e1".into(),
            kind: Kind::BroadcastReply,
            direction: Direction::Inbound,
            occurred_at: Utc::now(),
            text: Some("yes please".into()),
            broadcast_message_id: Some("m1".into()),
            campaign_id: None,
            agent_id: None,
        };
        created.data.change = LeadChange::Created { interaction };
        created.kind = created.data.change.kind().into();
        let cases = [
            (&created, "/data/change/interaction/kind", "voice_call"),
            (&created, "/data/change/interaction/direction", "sideways"),
            (&created, "/data/lead/source_kind", "web_form"),
            (&created, "/data/lead/score_source", "oracle"),
            (&scored(40), "/data/change/source", "oracle"),
        ];
        for (event, field, unknown) in cases {
            let mut json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
            let mut out = Vec::new();
            let subject = format!("events.lead.acme.{}", event.kind);
            let payload = serde_json::to_vec(&json).unwrap();
            read_lead_events(&subject, &payload, &mut out).expect("the event as written reads");
            *json.pointer_mut(field).expect(field) = unknown.into();
            let payload = serde_json::to_vec(&json).unwrap();
            let error = read_lead_events(&subject, &payload, &mut out).expect_err(field);
            assert!(error.to_string().contains(unknown), "{field}: {error}");
        }
    }

    #[test]
    fn a_batch_of_applied_scores_reads_as_its_events_and_a_lone_one_as_itself() {
        let (one, two) = (scored(40), scored(80));
        let batch = Envelope::new("acme", SCORES_APPLIED, Uuid::now_v7(), 1, vec![one.clone(), two.clone()]);
        let mut out = Vec::new();
        read_lead_events("events.lead.acme.scores_applied", &batch.to_json(), &mut out).unwrap();
        read_lead_events("events.lead.acme.score_changed", &one.to_json(), &mut out).unwrap();
        assert_eq!(out, [one.clone(), two, one]);
        assert!(read_lead_events("events.lead.acme.score_changed", &batch.to_json(), &mut out).is_err());
    }
}
