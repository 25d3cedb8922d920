//! The per-lead feature accumulator and its sparse vector.
//!
//! [`LeadFeatures`] is updated one [`Message`] at a time with [`LeadFeatures::observe`], is stored
//! next to the lead in the binary form of [`super::stored`] (as JSON with an outcome; it stays
//! bounded either way: at most [`TIMELINE_CAP`] recent events,
//! [`WORD_GRAM_CAP`] + [`CHAR_GRAM_CAP`] hashed n-gram counts, [`CAMPAIGN_CAP`] campaign ids; no raw text),
//! and is turned into a [`SparseVector`] at scoring time with [`LeadFeatures::vector`].
//!
//! # Vector layout
//!
//! Dense features sit at fixed indices `0..DENSE_LEN` (names in [`DENSE_NAMES`]); `DENSE_LEN..HASH_OFFSET`
//! is reserved; hashed features sit at `HASH_OFFSET + slot` with `slot < 2^18`.
//!
//! Transforms: `ln1p(n)` is `ln(1 + n)`; `logtime(s)` is `ln(1 + s/60) / ln(1 + 43200)` (0 for zero seconds,
//! 1.0 at 30 days).
//!
//! | index | name | value |
//! |------:|------|-------|
//! | 0 | `inbound_count` | `ln1p(inbound messages)` |
//! | 1 | `outbound_count` | `ln1p(outbound messages)` |
//! | 2 | `inbound_share` | inbound / all messages |
//! | 3 | `inbound_chars` | `ln(1 + chars) / ln(1001)` |
//! | 4 | `avg_inbound_chars` | `ln(1 + chars per inbound message) / ln(101)` |
//! | 5 | `intent_signals` | `ln1p(count)` |
//! | 6 | `pricing_signals` | `ln1p(count)` |
//! | 7 | `urgency_signals` | `ln1p(count)` |
//! | 8 | `question_signals` | `ln1p(inbound messages that ask a question)` |
//! | 9 | `positive_signals` | `ln1p(count)` |
//! | 10 | `objection_signals` | `ln1p(count)` |
//! | 11 | `refusal_signals` | `ln1p(count)` |
//! | 12 | `last_message_intent` | 1 if the latest inbound message shows intent |
//! | 13 | `last_message_refusal` | 1 if the latest inbound message is a refusal |
//! | 14 | `last_message_question` | 1 if the latest inbound message asks a question |
//! | 15 | `contact_replies` | `ln1p(contact messages that answer a business message)` (recent window) |
//! | 16 | `contact_reply_time` | `logtime(median contact reply delay)` |
//! | 17 | `replied_within_5m` | 1 if the median contact reply delay ≤ 5 minutes |
//! | 18 | `replied_within_1h` | 1 if the median contact reply delay ≤ 1 hour |
//! | 19 | `business_reply_time` | `logtime(median business reply delay)` |
//! | 20 | `business_replied_within_5m` | 1 if that median ≤ 5 minutes |
//! | 21 | `recency` | `logtime(now − last inbound)` (or since the last event when there is no inbound) |
//! | 22 | `active_24h` | 1 if the last inbound message is less than 24 h old |
//! | 23 | `active_7d` | 1 if it is less than 7 days old |
//! | 24 | `no_inbound` | 1 if the contact never wrote |
//! | 25 | `largest_gap` | `logtime(largest silence between two events)` |
//! | 26 | `conversation_span` | `logtime(last event − first event)` |
//! | 27 | `broadcast_replies` | `ln1p(inbound replies to campaigns)` |
//! | 28 | `campaigns_replied` | `ln1p(distinct campaigns replied to, at most 8)` |
//! | 29 | `broadcasts_received` | `ln1p(outbound campaign messages)` |
//! | 30 | `contact_initiated` | 1 if the first event was inbound |
//! | 31 | `unanswered_outbound` | `ln1p(business messages after the last inbound one)` |
//!
//! Hashed features (index `HASH_OFFSET + slot`): inbound word unigrams and bigrams (`NEG_` when negated)
//! and character 3-grams, weighted `1 + ln(count)` (char grams × 0.5) and L2-normalised together to 1;
//! plus `src:<source>`, `chan:<channel>` and `camp:<campaign id>` one-hot values.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::lexicon::{Signals, scan};
use super::text::{Gram, HASH_SPACE, for_each_ngram, hash_parts, tokenize};
use super::time::Timestamp;

/// A sparse feature vector: `(index, value)` pairs sorted by index, indices unique.
pub type SparseVector = Vec<(u32, f32)>;

/// Names of the dense features, by index.
pub const DENSE_NAMES: [&str; 32] = [
    "inbound_count",
    "outbound_count",
    "inbound_share",
    "inbound_chars",
    "avg_inbound_chars",
    "intent_signals",
    "pricing_signals",
    "urgency_signals",
    "question_signals",
    "positive_signals",
    "objection_signals",
    "refusal_signals",
    "last_message_intent",
    "last_message_refusal",
    "last_message_question",
    "contact_replies",
    "contact_reply_time",
    "replied_within_5m",
    "replied_within_1h",
    "business_reply_time",
    "business_replied_within_5m",
    "recency",
    "active_24h",
    "active_7d",
    "no_inbound",
    "largest_gap",
    "conversation_span",
    "broadcast_replies",
    "campaigns_replied",
    "broadcasts_received",
    "contact_initiated",
    "unanswered_outbound",
];

/// Human-readable labels of the dense features (same order as [`DENSE_NAMES`]), used in explanations.
pub const DENSE_LABELS: [&str; 32] = [
    "messages from the contact",
    "messages from the business",
    "share of messages from the contact",
    "text written by the contact",
    "message length",
    "intent signals",
    "pricing questions",
    "urgency",
    "questions asked",
    "positive replies",
    "objections",
    "refusal",
    "latest message shows intent",
    "latest message is a refusal",
    "latest message is a question",
    "replies to the business",
    "contact reply time",
    "replied within 5 minutes",
    "replied within 1 hour",
    "business reply time",
    "business answered within 5 minutes",
    "time since the contact's last message",
    "active in the last 24 hours",
    "active in the last 7 days",
    "contact never wrote",
    "longest silence",
    "conversation duration",
    "replied to broadcasts",
    "campaigns replied to",
    "broadcasts received",
    "contact started the conversation",
    "unanswered business messages",
];

/// Number of dense features.
pub const DENSE_LEN: u32 = DENSE_NAMES.len() as u32;
/// First hashed index.
pub const HASH_OFFSET: u32 = 64;
/// Total dimension of the vectors.
pub const DIMENSION: u32 = HASH_OFFSET + HASH_SPACE;

/// Index of a dense feature by name (`None` if unknown).
pub fn dense_index(name: &str) -> Option<u32> {
    DENSE_NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// Recent events kept for reply speeds and gaps.
pub const TIMELINE_CAP: usize = 64;
/// Word unigram/bigram counts kept.
pub const WORD_GRAM_CAP: usize = 160;
/// Character 3-gram counts kept.
pub const CHAR_GRAM_CAP: usize = 96;
/// Campaign ids kept.
pub const CAMPAIGN_CAP: usize = 8;
/// Longest source/channel/campaign string kept (characters).
const LABEL_CAP: usize = 48;

const CHAR_GRAM_WEIGHT: f32 = 0.5;

/// Who sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the contact to the business.
    #[serde(alias = "in")]
    Inbound,
    /// From the business to the contact.
    #[serde(alias = "out")]
    Outbound,
}

/// What kind of event a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A one-to-one chat message.
    #[default]
    ChatMessage,
    /// A campaign message sent by the business.
    Broadcast,
    /// The contact's reply to a campaign.
    BroadcastReply,
    /// An event from an integration (form, CRM, ads).
    Integration,
    /// Anything else.
    Other,
}

/// One interaction, as seen by the model.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub direction: Direction,
    pub at: Timestamp,
    pub text: Option<&'a str>,
    pub kind: MessageKind,
    pub campaign_id: Option<&'a str>,
    pub source: Option<&'a str>,
    pub channel: Option<&'a str>,
}

impl<'a> Message<'a> {
    /// A chat message with text and nothing else.
    pub fn chat(direction: Direction, at: Timestamp, text: &'a str) -> Self {
        Self {
            direction,
            at,
            text: Some(text),
            kind: MessageKind::ChatMessage,
            campaign_id: None,
            source: None,
            channel: None,
        }
    }
}

/// A stored hashed n-gram count: `(slot, count, last message number)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GramCount(pub u32, pub u32, pub u32);

/// Accumulated, bounded, serialisable features of one lead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeadFeatures {
    pub inbound: u32,
    pub outbound: u32,
    pub first_inbound: Option<Timestamp>,
    pub last_inbound: Option<Timestamp>,
    pub first_outbound: Option<Timestamp>,
    pub last_outbound: Option<Timestamp>,
    /// Characters of inbound text.
    pub inbound_chars: u64,
    /// Lexicon signal counts over inbound messages (negation applied; `question` counts messages).
    pub signals: Signals,
    /// Signals of the latest inbound message (by time).
    pub last_signals: Signals,
    pub broadcast_replies: u32,
    pub broadcasts_received: u32,
    /// Campaigns replied to, most recent last, at most [`CAMPAIGN_CAP`].
    pub campaigns: Vec<String>,
    /// First source seen.
    pub source: Option<String>,
    /// Latest channel seen.
    pub channel: Option<String>,
    /// Recent events `(unix seconds, direction)`, sorted by time, at most [`TIMELINE_CAP`].
    pub timeline: Vec<(i64, Direction)>,
    /// Largest gap between events that left the timeline, in seconds.
    pub evicted_gap: i64,
    /// Word unigram/bigram counts, sorted by slot (negated forms have their own slots).
    pub words: Vec<GramCount>,
    /// Character 3-gram counts, sorted by slot.
    pub chars: Vec<GramCount>,
    /// Number of inbound texts observed (the clock of the n-gram counts).
    pub texts: u32,
}

fn clip_label(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.chars().take(LABEL_CAP).collect())
}

fn bump_gram(store: &mut Vec<GramCount>, slot: u32, tick: u32) {
    match store.binary_search_by_key(&slot, |g| g.0) {
        Ok(i) => {
            store[i].1 = store[i].1.saturating_add(1);
            store[i].2 = tick;
        }
        Err(i) => store.insert(i, GramCount(slot, 1, tick)),
    }
}

/// Drop the smallest counts (oldest first among equals) until `store` holds `cap` entries.
fn shrink(store: &mut Vec<GramCount>, cap: usize) {
    if store.len() <= cap {
        return;
    }
    let excess = store.len() - cap;
    let mut order: Vec<usize> = (0..store.len()).collect();
    let key = |i: &usize| (store[*i].1, store[*i].2, store[*i].0);
    order.select_nth_unstable_by_key(excess - 1, key);
    let mut kill = vec![false; store.len()];
    for &i in &order[..excess] {
        kill[i] = true;
    }
    let mut idx = 0;
    store.retain(|_| {
        let keep = !kill[idx];
        idx += 1;
        keep
    });
}

fn ln1p(n: u32) -> f32 {
    (n as f32).ln_1p()
}

fn logtime(secs: i64) -> f32 {
    let s = secs.max(0) as f64;
    ((s / 60.0).ln_1p() / 43_200f64.ln_1p()) as f32
}

/// How far `recency` has to move before a lead is worth scoring again ([`LeadFeatures::refresh_at`]):
/// about 0.1 logit under the prior's weight, two points at most.
pub const RECENCY_STEP: f64 = 0.05;

fn logtime64(secs: i64) -> f64 {
    (secs.max(0) as f64 / 60.0).ln_1p() / 43_200f64.ln_1p()
}

/// The seconds at which `logtime` reaches `value` (rounded up, at most about 3,000 years).
fn seconds_at_logtime(value: f64) -> i64 {
    let seconds = 60.0 * (value * 43_200f64.ln_1p()).exp_m1();
    seconds.ceil().clamp(0.0, 1e11) as i64
}

fn median(v: &mut [i64]) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2 })
}

impl LeadFeatures {
    /// A new, empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take one message into account. Messages may arrive somewhat out of order: times are kept sorted,
    /// first/last are min/max, and the "latest message" signals follow message time, not arrival.
    pub fn observe(&mut self, m: &Message<'_>) {
        let ts = m.at.unix_seconds();
        // Timeline.
        let pos = self.timeline.partition_point(|e| e.0 <= ts);
        self.timeline.insert(pos, (ts, m.direction));
        if self.timeline.len() > TIMELINE_CAP {
            let gap = self.timeline[1].0 - self.timeline[0].0;
            self.evicted_gap = self.evicted_gap.max(gap);
            self.timeline.remove(0);
        }
        if let Some(s) = m.source.and_then(clip_label)
            && self.source.is_none()
        {
            self.source = Some(s);
        }
        if let Some(c) = m.channel.and_then(clip_label) {
            self.channel = Some(c);
        }
        let is_campaign =
            m.campaign_id.is_some() || matches!(m.kind, MessageKind::Broadcast | MessageKind::BroadcastReply);
        match m.direction {
            Direction::Outbound => {
                self.outbound = self.outbound.saturating_add(1);
                self.first_outbound = Some(self.first_outbound.map_or(m.at, |t| t.min(m.at)));
                self.last_outbound = Some(self.last_outbound.map_or(m.at, |t| t.max(m.at)));
                if is_campaign {
                    self.broadcasts_received = self.broadcasts_received.saturating_add(1);
                }
            }
            Direction::Inbound => {
                self.inbound = self.inbound.saturating_add(1);
                self.first_inbound = Some(self.first_inbound.map_or(m.at, |t| t.min(m.at)));
                let latest = self.last_inbound.is_none_or(|t| m.at >= t);
                self.last_inbound = Some(self.last_inbound.map_or(m.at, |t| t.max(m.at)));
                if is_campaign {
                    self.broadcast_replies = self.broadcast_replies.saturating_add(1);
                    if let Some(c) = m.campaign_id.and_then(clip_label) {
                        self.campaigns.retain(|x| *x != c);
                        self.campaigns.push(c);
                        if self.campaigns.len() > CAMPAIGN_CAP {
                            self.campaigns.remove(0);
                        }
                    }
                }
                let mut sig = Signals::default();
                if let Some(text) = m.text.filter(|t| !t.trim().is_empty()) {
                    self.inbound_chars = self.inbound_chars.saturating_add(text.chars().count() as u64);
                    let tok = tokenize(text);
                    sig = scan(&tok);
                    self.signals.add(&sig);
                    self.texts = self.texts.saturating_add(1);
                    let tick = self.texts;
                    let (words, chars) = (&mut self.words, &mut self.chars);
                    for_each_ngram(&tok.tokens, false, |slot, kind, _| match kind {
                        Gram::Word | Gram::Bigram => bump_gram(words, slot, tick),
                        Gram::Char => bump_gram(chars, slot, tick),
                    });
                    shrink(&mut self.words, WORD_GRAM_CAP);
                    shrink(&mut self.chars, CHAR_GRAM_CAP);
                }
                if latest {
                    self.last_signals = sig;
                }
            }
        }
    }

    /// Median seconds from a business message to the contact's next message, and how many such replies are
    /// in the recent timeline.
    pub fn contact_reply_secs(&self) -> (Option<i64>, u32) {
        let mut d: Vec<i64> = self
            .timeline
            .windows(2)
            .filter(|w| w[0].1 == Direction::Outbound && w[1].1 == Direction::Inbound)
            .map(|w| w[1].0 - w[0].0)
            .collect();
        let n = d.len() as u32;
        (median(&mut d), n)
    }

    /// Median seconds from the first unanswered contact message to the business's answer.
    pub fn business_reply_secs(&self) -> Option<i64> {
        let mut d = Vec::new();
        let mut waiting_since: Option<i64> = None;
        for &(t, dir) in &self.timeline {
            match dir {
                Direction::Inbound => {
                    waiting_since.get_or_insert(t);
                }
                Direction::Outbound => {
                    if let Some(s) = waiting_since.take() {
                        d.push(t - s);
                    }
                }
            }
        }
        median(&mut d)
    }

    /// Largest silence between two consecutive events, in seconds.
    pub fn largest_gap_secs(&self) -> i64 {
        self.timeline.windows(2).map(|w| w[1].0 - w[0].0).fold(self.evicted_gap, i64::max)
    }

    /// Whether a hashed text feature (a vector index) is among the n-grams kept for this lead.
    pub fn mentions(&self, index: u32) -> bool {
        let Some(slot) = index.checked_sub(HASH_OFFSET) else { return false };
        let kept = |grams: &[GramCount]| grams.binary_search_by_key(&slot, |g| g.0).is_ok();
        kept(&self.words) || kept(&self.chars)
    }

    /// When the features that depend on the time of scoring (`recency`, `active_24h`, `active_7d`)
    /// will have moved enough since `scored_at` to be worth a new score: when a flag flips or
    /// `recency` has grown by [`RECENCY_STEP`], whichever comes first. Recency grows as a
    /// logarithm, so refreshes thin out as a lead stays silent (its age grows about 1.7 times
    /// between two). `None` for a lead without any event: nothing of it depends on time.
    pub fn refresh_at(&self, scored_at: Timestamp) -> Option<Timestamp> {
        let anchor = match self.last_inbound {
            Some(last) => last.unix_seconds(),
            None => self.timeline.last()?.0,
        };
        let now = scored_at.unix_seconds();
        let age = now.saturating_sub(anchor).max(0);
        let mut next = anchor.saturating_add(seconds_at_logtime(logtime64(age) + RECENCY_STEP));
        if self.last_inbound.is_some() {
            for flip in [86_400, 7 * 86_400] {
                if age < flip {
                    next = next.min(anchor.saturating_add(flip));
                }
            }
        }
        Some(Timestamp::from_unix_seconds(next.max(now.saturating_add(1))))
    }

    /// The dense features at `now`, indexed as [`DENSE_NAMES`].
    pub fn dense(&self, now: Timestamp) -> [f32; DENSE_NAMES.len()] {
        let mut x = [0f32; DENSE_NAMES.len()];
        let total = self.inbound + self.outbound;
        x[0] = ln1p(self.inbound);
        x[1] = ln1p(self.outbound);
        if total > 0 {
            x[2] = self.inbound as f32 / total as f32;
        }
        x[3] = ((self.inbound_chars as f64).ln_1p() / 1000f64.ln_1p()) as f32;
        if self.inbound > 0 {
            x[4] = ((self.inbound_chars as f64 / f64::from(self.inbound)).ln_1p() / 100f64.ln_1p()) as f32;
        }
        let s = &self.signals;
        x[5] = ln1p(s.intent);
        x[6] = ln1p(s.pricing);
        x[7] = ln1p(s.urgency);
        x[8] = ln1p(s.question);
        x[9] = ln1p(s.positive);
        x[10] = ln1p(s.objection);
        x[11] = ln1p(s.refusal);
        let l = &self.last_signals;
        x[12] = f32::from(u8::from(l.intent > 0 && l.refusal == 0));
        x[13] = f32::from(u8::from(l.refusal > 0));
        x[14] = f32::from(u8::from(l.question > 0));
        let (contact, replies) = self.contact_reply_secs();
        x[15] = ln1p(replies);
        if let Some(c) = contact {
            x[16] = logtime(c);
            x[17] = f32::from(u8::from(c <= 300));
            x[18] = f32::from(u8::from(c <= 3600));
        }
        if let Some(b) = self.business_reply_secs() {
            x[19] = logtime(b);
            x[20] = f32::from(u8::from(b <= 300));
        }
        let now_ts = now.unix_seconds();
        match self.last_inbound {
            Some(li) => {
                let age = now_ts - li.unix_seconds();
                x[21] = logtime(age);
                x[22] = f32::from(u8::from(age < 86_400));
                x[23] = f32::from(u8::from(age < 7 * 86_400));
            }
            None => {
                if let Some(&(t, _)) = self.timeline.last() {
                    x[21] = logtime(now_ts - t);
                }
                x[24] = 1.0;
            }
        }
        x[25] = logtime(self.largest_gap_secs());
        let first = [self.first_inbound, self.first_outbound].into_iter().flatten().min();
        let last = [self.last_inbound, self.last_outbound].into_iter().flatten().max();
        if let (Some(f), Some(l)) = (first, last) {
            x[26] = logtime(l.seconds_since(f));
        }
        x[27] = ln1p(self.broadcast_replies);
        x[28] = ln1p(self.campaigns.len() as u32);
        x[29] = ln1p(self.broadcasts_received);
        x[30] = f32::from(u8::from(match (self.first_inbound, self.first_outbound) {
            (Some(i), Some(o)) => i < o,
            (Some(_), None) => true,
            _ => false,
        }));
        if let Some(li) = self.last_inbound {
            let after = self.timeline.iter().filter(|e| e.1 == Direction::Outbound && e.0 > li.unix_seconds()).count();
            x[31] = ln1p(after as u32);
        } else {
            x[31] = ln1p(self.outbound);
        }
        x
    }

    /// The full sparse vector at `now` (sorted by index, no duplicates, no zeros).
    pub fn vector(&self, now: Timestamp) -> SparseVector {
        let dense = self.dense(now);
        let mut v: SparseVector = Vec::with_capacity(DENSE_NAMES.len() + self.words.len() + self.chars.len() + 10);
        v.extend(dense.iter().enumerate().filter(|(_, x)| **x != 0.0).map(|(i, x)| (i as u32, *x)));
        let start = v.len();
        let weight = |c: u32| 1.0 + (c as f32).ln();
        v.extend(self.words.iter().map(|g| (HASH_OFFSET + g.0, weight(g.1))));
        v.extend(self.chars.iter().map(|g| (HASH_OFFSET + g.0, CHAR_GRAM_WEIGHT * weight(g.1))));
        let norm = v[start..].iter().map(|p| p.1 * p.1).sum::<f32>().sqrt();
        if norm > 0.0 {
            for p in &mut v[start..] {
                p.1 /= norm;
            }
        }
        for (prefix, label) in categorical(self) {
            v.push((HASH_OFFSET + hash_parts(&[prefix, label]), 1.0));
        }
        v[start..].sort_unstable_by_key(|p| p.0);
        merge_duplicates(&mut v);
        v
    }
}

fn categorical(f: &LeadFeatures) -> impl Iterator<Item = (&'static str, &str)> {
    f.source
        .as_deref()
        .map(|s| ("src:", s))
        .into_iter()
        .chain(f.channel.as_deref().map(|c| ("chan:", c)))
        .chain(f.campaigns.iter().map(|c| ("camp:", c.as_str())))
}

/// Sum values of equal indices in a vector sorted by index.
fn merge_duplicates(v: &mut SparseVector) {
    let mut out = 0;
    for i in 0..v.len() {
        if out > 0 && v[out - 1].0 == v[i].0 {
            v[out - 1].1 += v[i].1;
        } else {
            v[out] = v[i];
            out += 1;
        }
    }
    v.truncate(out);
}

/// A readable name for a vector index: the dense name, `reserved:#i`, or `text:#slot` for hashed ones.
pub fn feature_name(index: u32) -> String {
    if let Some(n) = DENSE_NAMES.get(index as usize) {
        (*n).to_owned()
    } else if index < HASH_OFFSET {
        format!("reserved:#{index}")
    } else {
        format!("text:#{}", index - HASH_OFFSET)
    }
}

/// Longest readable name kept for a hashed feature (characters of the words quoted in it).
const NAME_CAP: usize = 40;
/// Candidate names kept per hashed index (several texts may hash to one slot).
const CANDIDATES_PER_INDEX: usize = 4;

/// Readable names of hashed features, from what hashes there in an organisation's texts and
/// labels: `text: "warranty"`, `text: "how much"`, `text: not "buy"` (a negated word),
/// `text: "warranty"` also for a character 3-gram (named by the word it came from, so that the
/// word's n-grams explain a score together),
/// `source: facebook_ads`, `channel: whatsapp`, `campaign: spring-sale`. Where several texts
/// hash to one index, the most frequent names it. Bounded: only the wanted indices
/// ([`Vocabulary::for_features`]) or at most `cap` of them, each with a few short candidates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vocabulary {
    /// Candidate names of each index, with how often each was seen, in first-seen order.
    candidates: BTreeMap<u32, Vec<(String, u32)>>,
    /// When set, only these indices are named.
    wanted: Option<BTreeSet<u32>>,
    cap: usize,
}

impl Vocabulary {
    /// An empty vocabulary that names at most `cap` indices, whichever come first.
    pub fn new(cap: usize) -> Self {
        Self { candidates: BTreeMap::new(), wanted: None, cap }
    }

    /// An empty vocabulary that names only `indices` (a model's strongest hashed features).
    pub fn for_features(indices: impl IntoIterator<Item = u32>) -> Self {
        let wanted: BTreeSet<u32> = indices.into_iter().collect();
        Self { candidates: BTreeMap::new(), cap: wanted.len(), wanted: Some(wanted) }
    }

    /// Number of indices named.
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// No index named.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The wanted indices still without a name (none for a vocabulary of any indices).
    pub fn unnamed(&self) -> Vec<u32> {
        self.wanted.iter().flatten().copied().filter(|i| !self.candidates.contains_key(i)).collect()
    }

    fn wants(&self, index: u32) -> bool {
        match &self.wanted {
            Some(wanted) => wanted.contains(&index),
            None => self.candidates.contains_key(&index) || self.candidates.len() < self.cap,
        }
    }

    fn put(&mut self, index: u32, name: impl FnOnce() -> String) {
        if !self.wants(index) {
            return;
        }
        let name = name();
        let candidates = self.candidates.entry(index).or_default();
        if let Some(candidate) = candidates.iter_mut().find(|c| c.0 == name) {
            candidate.1 = candidate.1.saturating_add(1);
        } else if candidates.len() < CANDIDATES_PER_INDEX {
            candidates.push((name, 1));
        }
    }

    /// Records the names of the features of one message (inbound text n-grams and categorical labels).
    pub fn observe(&mut self, m: &Message<'_>) {
        if m.direction == Direction::Inbound
            && let Some(text) = m.text
        {
            self.observe_text(text);
        }
        for (prefix, label) in [("src:", m.source), ("chan:", m.channel)] {
            if let Some(l) = label.and_then(clip_label) {
                self.put(HASH_OFFSET + hash_parts(&[prefix, &l]), || categorical_name(prefix, &l));
            }
        }
        if m.direction == Direction::Inbound
            && let Some(c) = m.campaign_id.and_then(clip_label)
        {
            self.put(HASH_OFFSET + hash_parts(&["camp:", &c]), || categorical_name("camp:", &c));
        }
    }

    /// Records the names of the n-grams of a text the contact wrote.
    pub fn observe_text(&mut self, text: &str) {
        let tok = tokenize(text);
        let mut pending: Vec<(u32, String)> = Vec::new();
        // A character 3-gram is named by its word, which `for_each_ngram` emits just before it.
        let mut word = String::new();
        for_each_ngram(&tok.tokens, true, |slot, kind, label| {
            if kind == Gram::Word {
                word.clear();
                word.push_str(label.strip_prefix("NEG_").unwrap_or(label));
            }
            if self.wants(HASH_OFFSET + slot) {
                pending.push((HASH_OFFSET + slot, text_name(kind, label, &word)));
            }
        });
        for (index, name) in pending {
            self.put(index, || name);
        }
    }

    /// Records the names of a lead's categorical features (source, channel, campaigns), which its
    /// stored features keep without any text.
    pub fn observe_labels(&mut self, features: &LeadFeatures) {
        for (prefix, label) in categorical(features) {
            self.put(HASH_OFFSET + hash_parts(&[prefix, label]), || categorical_name(prefix, label));
        }
    }

    /// The name of an index: its most frequent candidate (the first seen among equals).
    pub fn get(&self, index: u32) -> Option<&str> {
        let candidates = self.candidates.get(&index)?;
        let mut best: Option<&(String, u32)> = None;
        for candidate in candidates {
            if best.is_none_or(|b| candidate.1 > b.1) {
                best = Some(candidate);
            }
        }
        best.map(|b| b.0.as_str())
    }

    /// The name, or [`feature_name`] when none was recorded.
    pub fn name(&self, index: u32) -> String {
        self.get(index).map_or_else(|| feature_name(index), str::to_owned)
    }
}

/// Words cut to [`NAME_CAP`] characters.
fn clip_name(words: &str) -> String {
    match words.char_indices().nth(NAME_CAP) {
        Some((end, _)) => format!("{}…", &words[..end]),
        None => words.to_owned(),
    }
}

/// The readable name of a hashed text n-gram (`label` as `for_each_ngram` gives it; `word` the
/// word a character 3-gram belongs to).
fn text_name(kind: Gram, label: &str, word: &str) -> String {
    match kind {
        // Named by its word, so that it and the word's other n-grams read as one reason.
        Gram::Char => format!("text: \"{}\"", clip_name(word)),
        Gram::Word | Gram::Bigram => match label.strip_prefix("NEG_") {
            // "not want" already says it is negated.
            Some(words) if words.split(' ').next().is_some_and(super::text::is_negator) => {
                format!("text: \"{}\"", clip_name(words))
            }
            Some(words) => format!("text: not \"{}\"", clip_name(words)),
            None => format!("text: \"{}\"", clip_name(label)),
        },
    }
}

fn categorical_name(prefix: &str, label: &str) -> String {
    let what = match prefix {
        "src:" => "source",
        "chan:" => "channel",
        _ => "campaign",
    };
    format!("{what}: {}", clip_name(label))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_unix_seconds(1_700_000_000 + secs)
    }

    fn val(v: &SparseVector, name: &str) -> f32 {
        let i = dense_index(name).unwrap();
        v.iter().find(|p| p.0 == i).map_or(0.0, |p| p.1)
    }

    #[test]
    fn counts_times_and_reply_speed() {
        let mut f = LeadFeatures::new();
        f.observe(&Message::chat(Direction::Outbound, t(0), "Hello! New offer for you"));
        f.observe(&Message::chat(Direction::Inbound, t(120), "How much is it?"));
        f.observe(&Message::chat(Direction::Outbound, t(180), "It is 20 dollars"));
        f.observe(&Message::chat(Direction::Inbound, t(300), "ok I want to buy today"));
        assert_eq!((f.inbound, f.outbound), (2, 2));
        assert_eq!(f.contact_reply_secs(), (Some(120), 2));
        assert_eq!(f.business_reply_secs(), Some(60));
        assert_eq!(f.signals.pricing, 1);
        assert_eq!(f.signals.intent, 1);
        assert_eq!(f.signals.question, 1);
        assert_eq!(f.last_signals.intent, 1);
        let v = f.vector(t(400));
        assert_eq!(val(&v, "replied_within_5m"), 1.0);
        assert_eq!(val(&v, "active_24h"), 1.0);
        assert_eq!(val(&v, "last_message_intent"), 1.0);
        assert_eq!(val(&v, "contact_initiated"), 0.0);
        assert!(v.windows(2).all(|w| w[0].0 < w[1].0), "sorted and unique");
        assert!(v.iter().all(|p| p.0 < DIMENSION && p.1.is_finite()));
        let text_norm: f32 = v.iter().filter(|p| p.0 >= HASH_OFFSET).map(|p| p.1 * p.1).sum();
        assert!((text_norm - 1.0).abs() < 1e-4);
    }

    #[test]
    fn order_tolerant() {
        let msgs = [
            Message::chat(Direction::Outbound, t(0), "hi"),
            Message::chat(Direction::Inbound, t(60), "price?"),
            Message::chat(Direction::Outbound, t(100), "10"),
            Message::chat(Direction::Inbound, t(4000), "not interested"),
        ];
        let mut a = LeadFeatures::new();
        for m in &msgs {
            a.observe(m);
        }
        let mut b = LeadFeatures::new();
        for i in [1, 0, 3, 2] {
            b.observe(&msgs[i]);
        }
        assert_eq!(a.vector(t(5000)), b.vector(t(5000)));
        assert_eq!(b.last_signals.refusal, 1);
    }

    #[test]
    fn bounded_after_ten_thousand_messages() {
        let mut f = LeadFeatures::new();
        let texts = ["hola quiero comprar", "kitne ka hai bhai", "berapa harganya kak", "word{} and more{} stuff"];
        for i in 0..10_000i64 {
            let text = texts[(i % 4) as usize].replace("{}", &i.to_string());
            let dir = if i % 3 == 0 { Direction::Outbound } else { Direction::Inbound };
            let campaign = format!("camp-{}", i % 50);
            let m = Message {
                direction: dir,
                at: t(i * 37 - (i % 7) * 5),
                text: Some(&text),
                kind: if i % 10 == 0 { MessageKind::BroadcastReply } else { MessageKind::ChatMessage },
                campaign_id: (i % 10 == 0).then_some(campaign.as_str()),
                source: Some("facebook_ads"),
                channel: Some("whatsapp"),
            };
            f.observe(&m);
        }
        assert!(f.timeline.len() <= TIMELINE_CAP);
        assert!(f.words.len() <= WORD_GRAM_CAP);
        assert!(f.chars.len() <= CHAR_GRAM_CAP);
        assert!(f.campaigns.len() <= CAMPAIGN_CAP);
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.len() < 12_000, "stored JSON is {} bytes", json.len());
        let back: LeadFeatures = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
        let v = f.vector(t(400_000));
        assert!(v.len() <= DENSE_NAMES.len() + WORD_GRAM_CAP + CHAR_GRAM_CAP + 2 + CAMPAIGN_CAP);
    }

    #[test]
    fn vocabulary_names_hashed_features() {
        let mut voc = Vocabulary::new(1000);
        let m =
            Message { source: Some("facebook_ads"), ..Message::chat(Direction::Inbound, t(0), "I do not want this") };
        voc.observe(&m);
        let mut f = LeadFeatures::new();
        f.observe(&m);
        let names: Vec<String> = f.vector(t(1)).iter().filter(|p| p.0 >= HASH_OFFSET).map(|p| voc.name(p.0)).collect();
        for expected in [r#"text: not "want""#, r#"text: "not want""#, r#"text: not "want this""#, r#"text: "do""#] {
            assert!(names.contains(&expected.to_owned()), "{expected} in {names:?}");
        }
        assert!(names.contains(&"source: facebook_ads".to_owned()), "{names:?}");
        assert!(names.iter().all(|n| !n.contains('#')), "{names:?}");
        assert_eq!(feature_name(5), "intent_signals");
        assert!(feature_name(HASH_OFFSET + 7).starts_with("text:#"));
    }

    #[test]
    fn a_vocabulary_for_some_features_names_only_those_by_their_most_frequent_text() {
        let mut f = LeadFeatures::new();
        f.observe(&Message::chat(Direction::Inbound, t(0), "warranty please"));
        let slots: Vec<u32> = f.words.iter().map(|g| HASH_OFFSET + g.0).collect();
        let warranty = slots
            .iter()
            .copied()
            .find(|&i| {
                let mut one = Vocabulary::for_features([i]);
                one.observe_text("warranty");
                one.get(i) == Some(r#"text: "warranty""#)
            })
            .expect("the word's slot");
        let mut voc = Vocabulary::for_features([warranty, 7]);
        assert_eq!(voc.unnamed(), [7, warranty].into_iter().collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>());
        voc.observe_text("WARRANTY? the warranty, a Warranty");
        voc.observe_text("nothing else here");
        assert_eq!(voc.get(warranty), Some(r#"text: "warranty""#));
        assert_eq!(voc.len(), 1, "only the wanted slots are named");
        assert_eq!(voc.unnamed(), [7]);
        let mut labels = Vocabulary::for_features([HASH_OFFSET + hash_parts(&["camp:", "spring"])]);
        let mut campaign = LeadFeatures::new();
        campaign.observe(&Message {
            campaign_id: Some("spring"),
            kind: MessageKind::BroadcastReply,
            ..Message::chat(Direction::Inbound, t(0), "yes")
        });
        labels.observe_labels(&campaign);
        assert!(labels.unnamed().is_empty());
        assert_eq!(labels.get(HASH_OFFSET + hash_parts(&["camp:", "spring"])), Some("campaign: spring"));
    }

    #[test]
    fn the_next_refresh_is_when_recency_has_moved_a_step_or_a_flag_flips() {
        let mut f = LeadFeatures::new();
        assert_eq!(f.refresh_at(t(0)), None, "no event, nothing depends on time");
        f.observe(&Message::chat(Direction::Inbound, t(0), "hello"));
        let recency = |v: &SparseVector| val(v, "recency");
        for scored in [60, 3_600, 20 * 86_400, 400 * 86_400] {
            let next = f.refresh_at(t(scored)).expect("a refresh");
            let step = recency(&f.vector(next)) - recency(&f.vector(t(scored)));
            assert!(next > t(scored));
            assert!((RECENCY_STEP as f32 - 1e-3..RECENCY_STEP as f32 + 1e-3).contains(&step), "{scored}: {step}");
        }
        // A day old in eight hours: the active-in-24-hours flag flips before recency moves a step.
        let next = f.refresh_at(t(16 * 3_600)).expect("a refresh");
        assert_eq!(next, t(86_400));
        assert_eq!(val(&f.vector(t(86_399)), "active_24h"), 1.0);
        assert_eq!(val(&f.vector(next), "active_24h"), 0.0);
        let mut silent = LeadFeatures::new();
        silent.observe(&Message::chat(Direction::Outbound, t(0), "offer"));
        assert!(silent.refresh_at(t(60)).is_some_and(|next| next > t(60)), "recency runs from the last event");
    }
}
