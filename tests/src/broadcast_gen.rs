//! Broadcast traffic at volume, the same for the crash test and the bench: messages with a
//! plausible mix of delivery statuses, repeats of both (some with later timestamps), shuffled
//! so that about half of the statuses precede their message. A fixed seed gives the same
//! events, so a run can be compared with another.

use anyhow::bail;
use async_nats::{HeaderMap, Subject, jetstream};
use bytes::Bytes;
use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use std::collections::VecDeque;

pub const SENT: u8 = 1;
pub const DELIVERED: u8 = 2;
pub const READ: u8 = 4;
pub const FAILED: u8 = 8;
pub const STATUS_BITS: [u8; 4] = [SENT, DELIVERED, READ, FAILED];

/// Campaigns the messages are spread over.
pub const CAMPAIGNS: u32 = 25;

/// The error codes failures carry, with the class the service files each under.
pub const ERROR_CODES: [(i64, &str); 5] = [
    (131_026, "undeliverable"),
    (131_049, "frequency_cap"),
    (131_050, "opted_out"),
    (131_047, "window_closed"),
    (1, "other"),
];

/// One event to publish: the message itself (`status == 0`) or one of its statuses.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub message: u32,
    pub status: u8,
    /// 0 for the first copy; a distinct number for each intentional repeat.
    pub copy: u32,
    /// Seconds a repeat's timestamp lies after the first copy's: the first one must win.
    pub late: u16,
}

/// Everything published, and what the service must make of it.
pub struct Generated {
    /// Per message, the bits of its distinct statuses.
    pub masks: Vec<u8>,
    pub events: Vec<Event>,
    /// Status events, repeats included.
    pub status_events: u64,
    pub distinct: u64,
    pub duplicates: u64,
    /// Messages published twice.
    pub repeated_messages: u64,
}

impl Generated {
    pub fn messages(&self) -> u32 {
        self.masks.len() as u32
    }
}

/// `messages` messages and `statuses` status events: each message's distinct statuses once,
/// the rest repeats of random ones.
pub fn generate(messages: u32, statuses: u64, seed: u64) -> anyhow::Result<Generated> {
    anyhow::ensure!(messages > 0, "at least one message");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut masks = Vec::with_capacity(messages as usize);
    for _ in 0..messages {
        let mask = if rng.random_bool(0.12) {
            // Failed on the way: some were sent first, some failed outright.
            if rng.random_bool(0.8) { SENT | FAILED } else { FAILED }
        } else {
            let mut mask = if rng.random_bool(0.98) { SENT } else { 0 };
            if mask == 0 || rng.random_bool(0.97) {
                mask |= DELIVERED;
                if rng.random_bool(0.85) {
                    mask |= READ;
                }
            }
            if rng.random_bool(0.03) {
                mask |= FAILED;
            }
            mask
        };
        masks.push(mask);
    }
    let distinct: u64 = masks.iter().map(|m| u64::from(m.count_ones())).sum();
    if distinct > statuses {
        bail!(
            "{statuses} status events cannot cover the {distinct} distinct statuses of {messages} messages \
             (use at least {distinct})"
        );
    }
    let duplicates = statuses - distinct;
    let mut events = Vec::with_capacity(messages as usize * 101 / 100 + statuses as usize);
    let mut repeated_messages = 0;
    for (message, mask) in (0..messages).zip(&masks) {
        events.push(Event { message, status: 0, copy: 0, late: 0 });
        if rng.random_bool(0.01) {
            events.push(Event { message, status: 0, copy: 1, late: 0 });
            repeated_messages += 1;
        }
        for bit in STATUS_BITS {
            if mask & bit != 0 {
                events.push(Event { message, status: bit, copy: 0, late: 0 });
            }
        }
    }
    for copy in 1..=duplicates {
        let message = rng.random_range(0..messages);
        let mask = masks[message as usize];
        let bits: Vec<u8> = STATUS_BITS.into_iter().filter(|bit| mask & bit != 0).collect();
        let status = bits[rng.random_range(0..bits.len())];
        // Half are exact repeats, half carry a later timestamp, which must not replace the first.
        let late = if rng.random_bool(0.5) { 0 } else { rng.random_range(1..=120) };
        events.push(Event { message, status, copy: u32::try_from(copy).unwrap_or(u32::MAX), late });
    }
    events.shuffle(&mut rng);
    Ok(Generated { masks, events, status_events: statuses, distinct, duplicates, repeated_messages })
}

pub fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).single().unwrap_or_default()
}

pub fn message_id(message: u32) -> String {
    format!("wamid.{message:08}")
}

pub fn status_name(bit: u8) -> &'static str {
    match bit {
        SENT => "sent",
        DELIVERED => "delivered",
        READ => "read",
        _ => "failed",
    }
}

/// The error code and class of a message's failure.
pub fn error_of(message: u32) -> (i64, &'static str) {
    ERROR_CODES[message as usize % ERROR_CODES.len()]
}

pub fn sent_at(message: u32) -> DateTime<Utc> {
    base_time() + Span::seconds(i64::from(message))
}

/// The first (and so the kept) timestamp of a status.
pub fn status_at(message: u32, bit: u8) -> DateTime<Utc> {
    let after = match bit {
        SENT => 1,
        DELIVERED => 3,
        READ => 60 + i64::from(message % 600),
        _ => 5,
    };
    sent_at(message) + Span::seconds(after)
}

impl Event {
    /// The timestamp this copy of a status carries.
    pub fn status_at(self) -> DateTime<Utc> {
        status_at(self.message, self.status) + Span::seconds(i64::from(self.late))
    }

    /// Its Nats-Msg-Id: every copy has its own, so that JetStream's deduplication does not
    /// hide the repeats from the service.
    pub fn msg_id(self, org: &str) -> String {
        let id = message_id(self.message);
        match self.status {
            0 => format!("{org}/{id}/message/{}", self.copy),
            bit => format!("{org}/{id}/{}/{}", status_name(bit), self.copy),
        }
    }

    /// The contract's JSON of the event; a message goes to contact `message % contacts`.
    pub fn json(self, contacts: u32) -> String {
        let id = message_id(self.message);
        if self.status == 0 {
            let campaign = self.message % CAMPAIGNS;
            let phone = crate::phone(self.message % contacts);
            return format!(
                "{{\"message_id\":\"{id}\",\"occurred_at\":\"{}\",\
                 \"campaign\":{{\"id\":\"cmp-{campaign}\",\"name\":\"Campaign {campaign}\"}},\
                 \"template\":{{\"name\":\"bf_offer\",\"language\":\"en_US\",\"category\":\"MARKETING\"}},\
                 \"contact\":{{\"phone\":\"{phone}\"}}}}",
                sent_at(self.message).to_rfc3339()
            );
        }
        let mut body = format!(
            "{{\"message_id\":\"{id}\",\"status\":\"{}\",\"timestamp\":\"{}\"",
            status_name(self.status),
            self.status_at().to_rfc3339()
        );
        if self.status == FAILED {
            let (code, _) = error_of(self.message);
            body.push_str(&format!(",\"error\":{{\"code\":{code},\"title\":\"error {code}\"}}"));
        }
        body.push('}');
        body
    }
}

/// The headers an event is published with.
pub fn headers(msg_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    headers.insert("Content-Type", "application/json");
    headers
}

/// Publishes every event, awaiting the oldest ack before another publish once `window` are
/// outstanding; calls `published` with each event's index after its publish. Returns the
/// payload bytes. Fails if JetStream drops an event as a duplicate: every copy has its own
/// Msg-Id, so a dropped one would be missing from what the service must hold.
pub async fn publish_windowed(
    js: &jetstream::Context,
    events: impl Iterator<Item = (Subject, HeaderMap, Bytes)>,
    window: usize,
    mut published: impl FnMut(usize),
) -> anyhow::Result<u64> {
    let mut pending: VecDeque<jetstream::context::PublishAckFuture> = VecDeque::with_capacity(window);
    let mut bytes = 0u64;
    for (i, (subject, headers, payload)) in events.enumerate() {
        bytes += payload.len() as u64;
        if pending.len() >= window
            && let Some(ack) = pending.pop_front()
        {
            let ack = ack.await?;
            anyhow::ensure!(!ack.duplicate, "JetStream dropped an event as a duplicate: {ack:?}");
        }
        pending.push_back(js.publish_with_headers(subject, headers, payload).await?);
        published(i);
    }
    for ack in pending {
        let ack = ack.await?;
        anyhow::ensure!(!ack.duplicate, "JetStream dropped an event as a duplicate: {ack:?}");
    }
    Ok(bytes)
}
