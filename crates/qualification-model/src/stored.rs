//! The compact binary form a lead's [`LeadFeatures`] is stored in: a format byte, then every
//! field as LEB128 varints (signed ones zigzag-encoded), sorted lists delta-encoded. A lead's
//! features are read and written with every interaction it has, and this form is about a third
//! of the JSON's size: a lead of ten messages fits in a few hundred bytes, inline in its row
//! below Postgres's TOAST threshold, and the database stores it without parsing it. The JSON form (serde) is not read here: whoever stored it reads it with
//! its own JSON parser.

use super::features::{Direction, GramCount, LeadFeatures};
use super::lexicon::Signals;
use super::time::Timestamp;
use std::fmt;

/// The first byte of the current binary form.
const FORMAT: u8 = 1;

/// Why stored features could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredError {
    Truncated,
    UnknownFormat(u8),
    Invalid(&'static str),
}

impl fmt::Display for StoredError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredError::Truncated => f.write_str("stored features end early"),
            StoredError::UnknownFormat(format) => write!(f, "stored features have an unknown format {format}"),
            StoredError::Invalid(what) => write!(f, "stored features carry an invalid {what}"),
        }
    }
}

impl std::error::Error for StoredError {}

impl LeadFeatures {
    /// The stored form (see the module's documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(256 + 8 * (self.words.len() + self.chars.len() + self.timeline.len())));
        w.0.push(FORMAT);
        w.uint(self.inbound.into());
        w.uint(self.outbound.into());
        for time in [self.first_inbound, self.last_inbound, self.first_outbound, self.last_outbound] {
            w.time(time);
        }
        w.uint(self.inbound_chars);
        w.signals(&self.signals);
        w.signals(&self.last_signals);
        w.uint(self.broadcast_replies.into());
        w.uint(self.broadcasts_received.into());
        w.uint(self.campaigns.len() as u64);
        for campaign in &self.campaigns {
            w.text(campaign);
        }
        for label in [&self.source, &self.channel] {
            match label {
                Some(label) => {
                    w.uint(1);
                    w.text(label);
                }
                None => w.uint(0),
            }
        }
        // Each entry is its gap from the one before (sorted by time, so small and positive;
        // signed all the same, so that any order reads back as it was) and its direction.
        w.uint(self.timeline.len() as u64);
        let mut previous = 0i64;
        for &(at, direction) in &self.timeline {
            w.int(at.wrapping_sub(previous));
            w.uint(u64::from(direction == Direction::Outbound));
            previous = at;
        }
        w.int(self.evicted_gap);
        w.grams(&self.words);
        w.grams(&self.chars);
        w.uint(self.texts.into());
        w.0
    }

    /// Reads what [`LeadFeatures::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoredError> {
        match bytes.first() {
            None => Ok(Self::default()),
            Some(&FORMAT) => Reader(&bytes[1..]).features(),
            Some(&other) => Err(StoredError::UnknownFormat(other)),
        }
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn uint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn int(&mut self, value: i64) {
        self.uint(((value << 1) ^ (value >> 63)) as u64);
    }

    fn time(&mut self, time: Option<Timestamp>) {
        match time {
            Some(time) => {
                self.uint(u64::from(time.subsec_nanos()) + 1);
                self.int(time.unix_seconds());
            }
            None => self.uint(0),
        }
    }

    fn text(&mut self, text: &str) {
        self.uint(text.len() as u64);
        self.0.extend_from_slice(text.as_bytes());
    }

    fn signals(&mut self, s: &Signals) {
        for count in [s.intent, s.pricing, s.urgency, s.question, s.positive, s.objection, s.refusal] {
            self.uint(count.into());
        }
    }

    /// Sorted by slot, slots unique: each slot is its distance from the one before (the
    /// reader refuses any other order, which the counts' binary searches rely on).
    fn grams(&mut self, grams: &[GramCount]) {
        self.uint(grams.len() as u64);
        let mut previous = 0;
        for gram in grams {
            self.uint(u64::from(gram.0.wrapping_sub(previous)));
            self.uint(gram.1.into());
            self.uint(gram.2.into());
            previous = gram.0;
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn uint(&mut self) -> Result<u64, StoredError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first().ok_or(StoredError::Truncated)?;
            self.0 = rest;
            // The tenth byte holds the 64th bit alone.
            if shift == 63 && byte > 1 {
                return Err(StoredError::Invalid("varint"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(StoredError::Invalid("varint"))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, StoredError> {
        u32::try_from(self.uint()?).map_err(|_| StoredError::Invalid(what))
    }

    fn int(&mut self) -> Result<i64, StoredError> {
        let raw = self.uint()?;
        Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }

    /// A count of entries that cannot be more than the bytes left, so a corrupt count
    /// cannot make the reader allocate more than the value's size.
    fn count(&mut self) -> Result<usize, StoredError> {
        let count = self.uint()?;
        usize::try_from(count).ok().filter(|c| *c <= self.0.len()).ok_or(StoredError::Truncated)
    }

    fn time(&mut self) -> Result<Option<Timestamp>, StoredError> {
        match self.uint()? {
            0 => Ok(None),
            nanos => {
                let nanos = u32::try_from(nanos - 1).map_err(|_| StoredError::Invalid("time"))?;
                Timestamp::new(self.int()?, nanos).map(Some).ok_or(StoredError::Invalid("time"))
            }
        }
    }

    fn text(&mut self) -> Result<String, StoredError> {
        let len = self.count()?;
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(text.to_vec()).map_err(|_| StoredError::Invalid("text"))
    }

    fn signals(&mut self) -> Result<Signals, StoredError> {
        Ok(Signals {
            intent: self.u32("signal")?,
            pricing: self.u32("signal")?,
            urgency: self.u32("signal")?,
            question: self.u32("signal")?,
            positive: self.u32("signal")?,
            objection: self.u32("signal")?,
            refusal: self.u32("signal")?,
        })
    }

    fn grams(&mut self) -> Result<Vec<GramCount>, StoredError> {
        let count = self.count()?;
        let mut grams = Vec::with_capacity(count);
        let mut previous = None;
        for _ in 0..count {
            let distance = self.u32("gram slot")?;
            let slot = match previous {
                None => Some(distance),
                Some(previous) if distance > 0 => u32::checked_add(previous, distance),
                Some(_) => None,
            }
            .ok_or(StoredError::Invalid("gram slot order"))?;
            grams.push(GramCount(slot, self.u32("gram count")?, self.u32("gram tick")?));
            previous = Some(slot);
        }
        Ok(grams)
    }

    fn features(mut self) -> Result<LeadFeatures, StoredError> {
        let mut f = LeadFeatures {
            inbound: self.u32("inbound")?,
            outbound: self.u32("outbound")?,
            first_inbound: self.time()?,
            last_inbound: self.time()?,
            first_outbound: self.time()?,
            last_outbound: self.time()?,
            inbound_chars: self.uint()?,
            signals: self.signals()?,
            last_signals: self.signals()?,
            broadcast_replies: self.u32("broadcast replies")?,
            broadcasts_received: self.u32("broadcasts received")?,
            ..LeadFeatures::default()
        };
        for _ in 0..self.count()? {
            f.campaigns.push(self.text()?);
        }
        for label in [&mut f.source, &mut f.channel] {
            *label = match self.uint()? {
                0 => None,
                _ => Some(self.text()?),
            };
        }
        let entries = self.count()?;
        let mut at = 0i64;
        for _ in 0..entries {
            at = at.wrapping_add(self.int()?);
            let direction = match self.uint()? {
                0 => Direction::Inbound,
                1 => Direction::Outbound,
                _ => return Err(StoredError::Invalid("direction")),
            };
            f.timeline.push((at, direction));
        }
        f.evicted_gap = self.int()?;
        f.words = self.grams()?;
        f.chars = self.grams()?;
        f.texts = self.u32("texts")?;
        if !self.0.is_empty() {
            return Err(StoredError::Invalid("trailing bytes"));
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{Message, MessageKind};

    fn busy_lead() -> LeadFeatures {
        let mut f = LeadFeatures::new();
        let texts = ["hola quiero comprar", "kitne ka hai bhai?", "berapa harganya kak", "not interested, thanks"];
        for i in 0..300i64 {
            let text = format!("{} {i}", texts[(i % 4) as usize]);
            let campaign = format!("camp-{}", i % 11);
            f.observe(&Message {
                direction: if i % 3 == 0 { Direction::Outbound } else { Direction::Inbound },
                at: Timestamp::new(1_700_000_000 + i * 97 - (i % 5) * 7, (i as u32 % 1000) * 1_000_000).unwrap(),
                text: Some(&text),
                kind: if i % 10 == 0 { MessageKind::BroadcastReply } else { MessageKind::ChatMessage },
                campaign_id: (i % 10 == 0).then_some(campaign.as_str()),
                source: Some("facebook_ads"),
                channel: Some("whatsapp"),
            });
        }
        f
    }

    #[test]
    fn every_field_reads_back_and_the_form_is_smaller_than_json() {
        for features in [LeadFeatures::new(), busy_lead()] {
            let bytes = features.to_bytes();
            assert_eq!(LeadFeatures::from_bytes(&bytes).unwrap(), features);
            let json = serde_json::to_vec(&features).unwrap();
            assert!(bytes.len() * 2 < json.len(), "{} bytes against {} of JSON", bytes.len(), json.len());
        }
    }

    #[test]
    fn a_timeline_reads_back_in_whatever_order_it_was_kept() {
        let mut features = LeadFeatures::new();
        features.timeline =
            vec![(1_700_000_900, Direction::Inbound), (-5, Direction::Outbound), (i64::MAX, Direction::Inbound)];
        assert_eq!(LeadFeatures::from_bytes(&features.to_bytes()).unwrap(), features);
    }

    #[test]
    fn the_json_form_reads_back() {
        let features = busy_lead();
        let json = serde_json::to_vec(&features).unwrap();
        assert_eq!(serde_json::from_slice::<LeadFeatures>(&json).unwrap(), features);
        assert_eq!(serde_json::from_slice::<LeadFeatures>(b"{}").unwrap(), LeadFeatures::new());
    }

    #[test]
    fn a_cut_or_corrupt_value_is_an_error_not_a_panic() {
        let bytes = busy_lead().to_bytes();
        for len in 1..bytes.len() {
            assert!(LeadFeatures::from_bytes(&bytes[..len]).is_err(), "cut at {len}");
        }
        assert!(matches!(LeadFeatures::from_bytes(&[7, 1, 2]), Err(StoredError::UnknownFormat(7))));
        let mut too_wide = vec![FORMAT];
        too_wide.extend([0xff; 9]);
        too_wide.push(0x02);
        assert!(matches!(LeadFeatures::from_bytes(&too_wide), Err(StoredError::Invalid("varint"))));
        let mut unsorted = LeadFeatures::new();
        unsorted.words = vec![GramCount(9, 1, 1), GramCount(4, 1, 1)];
        assert!(matches!(LeadFeatures::from_bytes(&unsorted.to_bytes()), Err(StoredError::Invalid("gram slot order"))));
        let mut huge_count = vec![FORMAT];
        huge_count.extend([0xff; 9]);
        huge_count.push(0x01);
        assert!(LeadFeatures::from_bytes(&huge_count).is_err());
    }
}
