//! `LeadService/WatchLeads`: an organisation's lead changes as they happen, for a console that
//! keeps its page of leads current without polling.
//!
//! The source is the service's own events (`events.lead.<org>.<kind>` in `EVENTS_LEAD`, written
//! through the outbox), so a watch sees exactly what the other services see, in the order they
//! see it, and every event already carries the lead after its change: nothing is read from
//! Postgres. Each watch is an ordered, ephemeral JetStream consumer of its own filtered to the
//! organisation, starting after the caller's cursor (or at the stream's end): no durable state,
//! nothing to clean up but the consumer, deleted when the watch ends (and expired by the server
//! 30 s after its last pull, should the deletion not arrive).
//!
//! A cursor is the stream sequence of the last message a client saw, with the index of the last
//! item seen when that message is a batch (`contracts::lead::BATCH_KINDS` carry up to 100
//! events) of which the client did not see the end: resuming from it delivers exactly
//! the events after it, whatever was cut off. Watches per process are bounded
//! (`grpc.watch_limit`); one ends when its caller goes away or the service stops.

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::Ordered, pull::OrderedConfig},
};
use contracts::Envelope;
use contracts::lead::{LeadChange, LeadEvent, LeadView, read_lead_events};
use contracts::time::timestamp;
use futures::StreamExt;
use leads_proto::v1 as pb;
use platform::nats::{StreamKind, Subjects};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// What a watch is told when it cannot go on: from here, watching again from the last cursor
/// is how a client carries on.
const STOPPING: &str = "the lead service is stopping: watch again from the last cursor";
const FEED_LOST: &str = "the watch lost its feed of lead events: watch again from the last cursor";

/// Events a watch holds for a client that reads slower than changes happen; beyond, the
/// consumer waits for the client.
const BUFFER: usize = 64;

/// Kinds of `LeadWatchEvent` that are the watch's own, not a lead's change.
pub const CAUGHT_UP: &str = "caught_up";
pub const LEFT: &str = "left";

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("the changes after this cursor are no longer kept: reload the list, then watch without a cursor")]
    OutOfRange,
    #[error("this lead process holds its limit of {limit} watches (grpc.watch_limit): try again later")]
    Limit { limit: usize },
    #[error("lead events unavailable: {0}")]
    Unavailable(String),
}

impl platform::error::ServiceError for WatchError {
    fn code(&self) -> tonic::Code {
        match self {
            WatchError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            WatchError::OutOfRange => tonic::Code::OutOfRange,
            WatchError::Limit { .. } => tonic::Code::ResourceExhausted,
            WatchError::Unavailable(_) => tonic::Code::Unavailable,
        }
    }
}

impl From<WatchError> for tonic::Status {
    fn from(error: WatchError) -> Self {
        match error {
            // A limit the caller waits out, not an outage: it is told which limit.
            WatchError::Limit { .. } => tonic::Status::resource_exhausted(error.to_string()),
            _ => platform::error::to_status("lead", &error),
        }
    }
}

/// The last event a client saw: the stream sequence of its message and, when the client saw
/// only part of a batched message, the index of the last item it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub sequence: u64,
    pub item: Option<usize>,
}

impl Position {
    /// `<sequence>`, or `<sequence>.<item>` part way through a batch.
    pub fn encode(self) -> String {
        match self.item {
            None => self.sequence.to_string(),
            Some(item) => format!("{}.{item}", self.sequence),
        }
    }

    pub fn parse(cursor: &str) -> Result<Self, WatchError> {
        let bad =
            || WatchError::InvalidArgument { field: "cursor", reason: "is not a cursor this service issued".into() };
        fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
        }
        let (sequence, item) = match cursor.split_once('.') {
            None => (cursor, None),
            Some((sequence, item)) => (sequence, Some(number(item).ok_or_else(bad)?)),
        };
        Ok(Self { sequence: number(sequence).ok_or_else(bad)?, item })
    }

    /// The first stream sequence still to be read.
    fn next_sequence(self) -> u64 {
        match self.item {
            Some(_) => self.sequence,
            None => self.sequence + 1,
        }
    }

    /// How many items of message `sequence` the client has seen already.
    fn seen_of(self, sequence: u64) -> usize {
        match self.item {
            Some(item) if self.sequence == sequence => item + 1,
            _ => 0,
        }
    }
}

/// Whether a watch shows a change: to an agent, the changes of its own and unassigned leads,
/// and the move that takes one of those to another agent as `Left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Shown,
    Left,
    Hidden,
}

/// How the change of `lead` looks to a watch confined to `agent` (`None`: every lead).
pub fn seen_by(agent: Option<&str>, change: &LeadChange, lead: &LeadView) -> Seen {
    let Some(agent) = agent else { return Seen::Shown };
    let sees = |holder: Option<&str>| holder.is_none_or(|holder| holder == agent);
    if sees(lead.agent_id.as_deref()) {
        return Seen::Shown;
    }
    match change {
        LeadChange::Assigned { from, .. } if sees(from.as_deref()) => Seen::Left,
        _ => Seen::Hidden,
    }
}

/// The kind a client sees for a change.
pub fn kind_of(change: &LeadChange) -> &'static str {
    match change {
        LeadChange::Created { .. } => "created",
        LeadChange::InteractionRecorded { .. } => "interaction",
        LeadChange::StatusChanged { .. } => "status_changed",
        LeadChange::ScoreChanged { .. } => "scored",
        LeadChange::Assigned { .. } => "assigned",
        LeadChange::FollowUpOpened { .. } => "follow_up_opened",
    }
}

/// What the watch of `org_id` confined to `agent` sends for the events of the message at
/// `sequence`, of which the client has seen `seen` items already: each with its cursor, the
/// last one sent marking the whole message as seen (what follows it in the message is not for
/// this watch), the others their item.
pub fn events_of(
    org_id: &str,
    agent: Option<&str>,
    sequence: u64,
    seen: usize,
    events: &[Envelope<LeadEvent>],
) -> Vec<pb::LeadWatchEvent> {
    let mut out: Vec<(usize, pb::LeadWatchEvent)> = Vec::new();
    for (item, event) in events.iter().enumerate().skip(seen) {
        // The subject's organisation is the filter's; the envelope's is checked all the same.
        if event.org_id != org_id {
            continue;
        }
        let (change, lead) = (&event.data.change, &event.data.lead);
        let (kind, lead) = match seen_by(agent, change, lead) {
            Seen::Shown => (kind_of(change), Some(lead.to_proto())),
            Seen::Left => (LEFT, None),
            Seen::Hidden => continue,
        };
        out.push((
            item,
            pb::LeadWatchEvent {
                cursor: String::new(),
                kind: kind.to_owned(),
                lead_id: event.data.lead.id.to_string(),
                lead,
                at: Some(timestamp(event.occurred_at)),
            },
        ));
    }
    let last = out.len().saturating_sub(1);
    out.into_iter()
        .enumerate()
        .map(|(n, (item, mut event))| {
            let item = (n != last).then_some(item);
            event.cursor = Position { sequence, item }.encode();
            event
        })
        .collect()
}

fn caught_up(at: Position) -> pb::LeadWatchEvent {
    pb::LeadWatchEvent { cursor: at.encode(), kind: CAUGHT_UP.into(), ..Default::default() }
}

/// The watches of one lead process.
#[derive(Clone)]
pub struct Watches {
    js: jetstream::Context,
    subjects: Subjects,
    permits: Arc<Semaphore>,
    limit: usize,
    /// Fires when the service stops: every watch ends, telling its client to come back.
    token: CancellationToken,
}

/// What one watch sends, in order; the watch ends when the receiver is dropped.
pub type Feed = mpsc::Receiver<Result<pb::LeadWatchEvent, tonic::Status>>;

impl Watches {
    pub fn new(js: jetstream::Context, subjects: Subjects, limit: usize, token: CancellationToken) -> Self {
        Self { js, subjects, permits: Arc::new(Semaphore::new(limit)), limit, token }
    }

    /// A cursor at the last change published so far: a watch opened from it later misses no
    /// change made after this call. The Leads page takes one before it reads a page, so that
    /// its live updates start where the page it shows was read.
    pub async fn position(&self) -> Result<String, WatchError> {
        let name = self.subjects.stream_name(StreamKind::Events("lead"));
        let mut stream =
            self.js.get_stream(&name).await.map_err(|e| WatchError::Unavailable(format!("stream {name}: {e}")))?;
        let info = stream.info().await.map_err(|e| WatchError::Unavailable(format!("stream {name}: {e}")))?;
        Ok(Position { sequence: info.state.last_sequence, item: None }.encode())
    }

    /// Opens a watch of `org_id`'s changes after `cursor` (an empty one: from now on), as seen
    /// by `agent` (`None`: every lead). The consumer exists when this returns, so every change
    /// committed from then on reaches the feed.
    pub async fn open(&self, org_id: &str, cursor: &str, agent: Option<String>) -> Result<Feed, WatchError> {
        let from = if cursor.is_empty() { None } else { Some(Position::parse(cursor)?) };
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| WatchError::Limit { limit: self.limit })?;
        let name = self.subjects.stream_name(StreamKind::Events("lead"));
        let stream =
            self.js.get_stream(&name).await.map_err(|e| WatchError::Unavailable(format!("stream {name}: {e}")))?;
        let state = &stream.cached_info().state;
        // Sequences the stream no longer holds may have held this organisation's changes.
        let at = match from {
            Some(at) if at.next_sequence() < state.first_sequence || at.sequence > state.last_sequence => {
                return Err(WatchError::OutOfRange);
            }
            Some(at) => at,
            None => Position { sequence: state.last_sequence, item: None },
        };
        let filter = self.subjects.event("lead", org_id, ">");
        let (consumer, messages, pending) = follow(&stream, &filter, at).await?;
        let (sender, feed) = mpsc::channel(BUFFER);
        let watch =
            Watch { org_id: org_id.to_owned(), agent, stream, filter, consumer, at, sender, token: self.token.clone() };
        tracing::debug!(org_id, cursor = %at.encode(), pending, "watch opened");
        tokio::spawn(async move {
            let _permit = permit;
            watch.run(messages, pending).await;
        });
        Ok(feed)
    }
}

/// An ordered consumer of `filter` from just after `at`: its name, its messages and how many
/// it has to deliver already.
async fn follow(
    stream: &jetstream::stream::Stream,
    filter: &str,
    at: Position,
) -> Result<(String, Ordered, u64), WatchError> {
    let name = format!("lead-watch-{}", uuid::Uuid::new_v4().simple());
    let config = OrderedConfig {
        name: Some(name.clone()),
        filter_subject: filter.to_owned(),
        deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: at.next_sequence() },
        ..Default::default()
    };
    let unavailable = |e: &dyn std::fmt::Display| WatchError::Unavailable(format!("ordered consumer {name}: {e}"));
    let consumer = stream.create_consumer(config).await.map_err(|e| unavailable(&e))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
    Ok((name, messages, pending))
}

struct Watch {
    org_id: String,
    agent: Option<String>,
    stream: jetstream::stream::Stream,
    filter: String,
    /// The consumer's name, deleted when the watch ends.
    consumer: String,
    /// The last event the client was sent (or, before any, where it started).
    at: Position,
    sender: mpsc::Sender<Result<pb::LeadWatchEvent, tonic::Status>>,
    token: CancellationToken,
}

impl Watch {
    async fn run(mut self, mut messages: Ordered, pending: u64) {
        let mut behind = pending > 0;
        if !behind && !self.send(caught_up(self.at)).await {
            return self.end(messages).await;
        }
        loop {
            let next = tokio::select! {
                () = self.token.cancelled() => {
                    // A client that reads no more is not waited for.
                    let _ = self.sender.try_send(Err(tonic::Status::unavailable(STOPPING)));
                    break;
                }
                () = self.sender.closed() => break,
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(%error, org_id = %self.org_id, "watch consumer failed, the client is told to come back");
                    let _ = self.sender.try_send(Err(tonic::Status::unavailable(FEED_LOST)));
                    break;
                }
                None => {
                    tracing::warn!(org_id = %self.org_id, "watch consumer ended, the client is told to come back");
                    let _ = self.sender.try_send(Err(tonic::Status::unavailable(FEED_LOST)));
                    break;
                }
            };
            let Ok(info) = message.info() else { continue };
            let (sequence, left) = (info.stream_sequence, info.pending);
            if sequence < self.at.next_sequence() {
                // The client library recreates a consumer that broke before delivering anything
                // from the stream's very start: replaced by one from where the watch stands.
                messages = match self.again(messages).await {
                    Some(messages) => messages,
                    None => return,
                };
                continue;
            }
            let mut events = Vec::new();
            if let Err(error) = read_lead_events(&message.subject, &message.payload, &mut events) {
                // A newer kind of event this version cannot read: the client reloads the lead
                // when it next hears of it.
                tracing::warn!(%error, sequence, subject = %message.subject, "lead event skipped by a watch");
            }
            let seen = self.at.seen_of(sequence);
            for event in events_of(&self.org_id, self.agent.as_deref(), sequence, seen, &events) {
                if !self.send(event).await {
                    return self.end(messages).await;
                }
            }
            self.at = Position { sequence, item: None };
            if behind && left == 0 {
                behind = false;
                if !self.send(caught_up(self.at)).await {
                    break;
                }
            }
        }
        self.end(messages).await;
    }

    /// Sends one event, waiting for room; false once the client is gone or the service stops.
    async fn send(&self, event: pb::LeadWatchEvent) -> bool {
        tokio::select! {
            sent = self.sender.send(Ok(event)) => sent.is_ok(),
            () = self.token.cancelled() => {
                // Room only if the client read meanwhile; else its stream just ends.
                let _ = self.sender.try_send(Err(tonic::Status::unavailable(STOPPING)));
                false
            }
        }
    }

    /// A consumer from where the watch stands, in place of `stale`; `None` (the client told)
    /// when none opens.
    async fn again(&mut self, stale: Ordered) -> Option<Ordered> {
        drop(stale);
        self.delete_consumer().await;
        match follow(&self.stream, &self.filter, self.at).await {
            Ok((name, messages, _)) => {
                self.consumer = name;
                Some(messages)
            }
            Err(error) => {
                tracing::warn!(%error, org_id = %self.org_id, "watch consumer not replaced, the client is told to come back");
                let _ = self.sender.try_send(Err(tonic::Status::unavailable(FEED_LOST)));
                None
            }
        }
    }

    async fn end(mut self, messages: Ordered) {
        drop(messages);
        self.delete_consumer().await;
        tracing::debug!(org_id = %self.org_id, cursor = %self.at.encode(), "watch ended");
    }

    /// Deletes the consumer now rather than leave the server to expire it; one the client
    /// library replaced (`<name>_<n>`) expires on its own.
    async fn delete_consumer(&mut self) {
        if let Err(error) = self.stream.delete_consumer(&self.consumer).await {
            tracing::debug!(%error, consumer = %self.consumer, "watch consumer not deleted, the server expires it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use contracts::lead::{ScoreSource, SourceKind, Status};
    use uuid::Uuid;

    fn lead(agent: Option<&str>) -> LeadView {
        let now = Utc::now();
        LeadView {
            id: Uuid::now_v7(),
            org_id: "acme".into(),
            contact_id: Uuid::now_v7(),
            phone: Some("+14155550100".into()),
            external_id: None,
            name: None,
            email: None,
            status: Status::New,
            active: true,
            source_kind: SourceKind::ChatMessage,
            channel: "whatsapp".into(),
            campaign_id: None,
            broadcast_message_id: None,
            integration_name: None,
            integration_reference: None,
            score: None,
            score_source: None,
            agent_id: agent.map(str::to_owned),
            interaction_count: 1,
            last_message_preview: None,
            first_touch_at: now,
            last_interaction_at: now,
            created_at: now,
            updated_at: now,
            version: 2,
            score_reasons: Vec::new(),
            attributes: Default::default(),
            conversation_id: None,
        }
    }

    fn assigned(from: Option<&str>, to: Option<&str>) -> Envelope<LeadEvent> {
        let change = LeadChange::Assigned {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            actor: "olga".into(),
            reason: None,
        };
        let lead = lead(to);
        Envelope::new("acme", change.kind(), lead.id, lead.version, LeadEvent { change, lead })
    }

    fn scored(agent: Option<&str>) -> Envelope<LeadEvent> {
        let change = LeadChange::ScoreChanged { score: Some(70), source: ScoreSource::Ai, actor: "q".into() };
        let lead = lead(agent);
        Envelope::new("acme", change.kind(), lead.id, lead.version, LeadEvent { change, lead })
    }

    #[test]
    fn cursors_read_back_and_anything_else_is_refused_naming_the_field() {
        for at in [Position { sequence: 0, item: None }, Position { sequence: 42, item: Some(7) }] {
            assert_eq!(Position::parse(&at.encode()).ok(), Some(at));
        }
        assert_eq!(Position { sequence: 42, item: Some(7) }.next_sequence(), 42, "the rest of the batch");
        assert_eq!(Position { sequence: 42, item: None }.next_sequence(), 43);
        for bad in ["x", "-1", "1.", ".1", "1.2.3", "+1", "1 ", "99999999999999999999", "1.x"] {
            match Position::parse(bad) {
                Err(WatchError::InvalidArgument { field, .. }) => assert_eq!(field, "cursor", "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_agent_sees_its_own_and_unassigned_leads_and_hears_when_one_leaves_it() {
        let ann = Some("ann");
        let see = |event: &Envelope<LeadEvent>, agent| seen_by(agent, &event.data.change, &event.data.lead);
        assert_eq!(see(&scored(Some("bob")), None), Seen::Shown, "an operator sees every lead");
        assert_eq!(see(&scored(Some("ann")), ann), Seen::Shown);
        assert_eq!(see(&scored(None), ann), Seen::Shown);
        assert_eq!(see(&scored(Some("bob")), ann), Seen::Hidden);
        assert_eq!(see(&assigned(Some("ann"), Some("bob")), ann), Seen::Left);
        assert_eq!(see(&assigned(None, Some("bob")), ann), Seen::Left, "an unassigned lead it could see");
        assert_eq!(see(&assigned(Some("bob"), Some("ann")), ann), Seen::Shown, "one that arrives");
        assert_eq!(see(&assigned(Some("ann"), None), ann), Seen::Shown);
        assert_eq!(see(&assigned(Some("bob"), Some("carl")), ann), Seen::Hidden);
    }

    #[test]
    fn within_a_batch_the_last_event_sent_covers_the_message_and_a_resume_skips_what_was_seen() {
        let batch = [scored(None), scored(Some("bob")), scored(Some("ann")), scored(Some("bob"))];
        let all = events_of("acme", None, 9, 0, &batch);
        let cursors: Vec<&str> = all.iter().map(|e| e.cursor.as_str()).collect();
        assert_eq!(cursors, ["9.0", "9.1", "9.2", "9"]);
        assert!(all.iter().all(|e| e.kind == "scored" && e.lead.is_some()));
        let ann = events_of("acme", Some("ann"), 9, 0, &batch);
        let cursors: Vec<&str> = ann.iter().map(|e| e.cursor.as_str()).collect();
        assert_eq!(cursors, ["9.0", "9"], "bob's last lead is not for ann: her second event ends the message");
        let resumed = events_of("acme", None, 9, Position::parse("9.1").unwrap().seen_of(9), &batch);
        assert_eq!(
            resumed.iter().map(|e| e.lead_id.as_str()).collect::<Vec<_>>(),
            [batch[2].data.lead.id.to_string(), batch[3].data.lead.id.to_string()]
        );
        assert!(events_of("globex", None, 9, 0, &batch).is_empty(), "another organisation's envelope");
        let left = events_of("acme", Some("ann"), 10, 0, &[assigned(Some("ann"), Some("bob"))]);
        assert_eq!((left[0].kind.as_str(), left[0].lead.is_none(), left[0].cursor.as_str()), (LEFT, true, "10"));
    }
}
