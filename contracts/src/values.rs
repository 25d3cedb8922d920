//! Value types and limits that more than one service checks, each refusal naming its field.

use chrono::{DateTime, Utc};

/// Why an input was refused: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Refusal {
    pub field: String,
    pub reason: String,
}

impl Refusal {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// A follow-up's note, on `CreateFollowUp` and `OpenFollowUp` alike.
pub const MAX_NOTE_CHARS: usize = 2000;
pub const MAX_AGENT_ID_CHARS: usize = 128;

/// `org_id` matches `[A-Za-z0-9_-]{1,64}`.
pub fn validate_org_id(org_id: &str) -> Result<(), Refusal> {
    if org_id.is_empty() || org_id.len() > 64 {
        return Err(Refusal::new("org_id", "must be 1 to 64 characters"));
    }
    if !org_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(Refusal::new("org_id", "may hold only letters, digits, '_' and '-'"));
    }
    Ok(())
}

/// An agent id: at most `MAX_AGENT_ID_CHARS` characters, no control characters.
pub fn validate_agent_id(agent_id: &str) -> Result<(), Refusal> {
    if agent_id.chars().count() > MAX_AGENT_ID_CHARS {
        return Err(Refusal::new("agent_id", format!("must be at most {MAX_AGENT_ID_CHARS} characters")));
    }
    if agent_id.chars().any(char::is_control) {
        return Err(Refusal::new("agent_id", "must not contain control characters"));
    }
    Ok(())
}

/// A follow-up's note: at most `MAX_NOTE_CHARS` characters.
pub fn validate_note(note: &str) -> Result<(), Refusal> {
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(Refusal::new("note", format!("must be at most {MAX_NOTE_CHARS} characters")));
    }
    no_nul(note, "note")
}

/// A time as received: text to be read as RFC 3339, or already a timestamp (protobuf).
#[derive(Debug, Clone)]
pub enum RawTime {
    Text(String),
    Parsed(DateTime<Utc>),
}

impl RawTime {
    /// The time in UTC, or a refusal naming `field`.
    pub fn resolve(self, field: &str) -> Result<DateTime<Utc>, Refusal> {
        match self {
            RawTime::Parsed(at) => Ok(at),
            RawTime::Text(text) => DateTime::parse_from_rfc3339(text.trim())
                .map(|at| at.with_timezone(&Utc))
                .map_err(|e| Refusal::new(field, format!("must be an RFC 3339 timestamp: {e}"))),
        }
    }
}

/// E.164 through libphonenumber's metadata: the number must carry its country code.
///
/// Results are remembered: the metadata's regular expressions cost microseconds a number
/// (each one looked up by its pattern text), a fifth of the broadcast-tracking service's CPU
/// under load, and the same numbers keep coming back (every message of a conversation, every
/// broadcast to a list).
pub fn normalize_phone(input: &str) -> Result<String, Refusal> {
    let trimmed = input.trim();
    // E.164 has at most 15 digits; this leaves room for spaces, dashes and brackets, and
    // keeps what the memo holds small whatever a publisher sends.
    if trimmed.chars().count() > MAX_PHONE_CHARS {
        return Err(Refusal::new("contact.phone", format!("must be at most {MAX_PHONE_CHARS} characters")));
    }
    if let Some(known) = remembered_phones().get(trimmed) {
        return known;
    }
    let result = parse_phone(trimmed);
    remembered_phones().insert(trimmed, &result);
    result
}

fn parse_phone(trimmed: &str) -> Result<String, Refusal> {
    let candidate = if trimmed.starts_with('+') {
        trimmed.to_owned()
    } else if let Some(rest) = trimmed.strip_prefix("00") {
        format!("+{rest}")
    } else {
        return Err(Refusal::new(
            "contact.phone",
            format!("{trimmed:?} must be in international form with a country code, like +14155550100"),
        ));
    };
    let number = phonenumber::parse(None, &candidate)
        .map_err(|e| Refusal::new("contact.phone", format!("{trimmed:?} is not a phone number: {e}")))?;
    if !phonenumber::is_viable(&candidate) || !number.is_valid() {
        return Err(Refusal::new("contact.phone", format!("{trimmed:?} is not a valid phone number")));
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

const MAX_PHONE_CHARS: usize = 64;

/// How many normalised numbers a process keeps: a few megabytes.
const REMEMBERED_PHONES: usize = 100_000;

fn remembered_phones() -> std::sync::MutexGuard<'static, PhoneMemo> {
    static MEMO: std::sync::LazyLock<std::sync::Mutex<PhoneMemo>> =
        std::sync::LazyLock::new(|| std::sync::Mutex::new(PhoneMemo::new(REMEMBERED_PHONES)));
    // The memo holds no invariant a panicking holder could break.
    MEMO.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A bounded memo in two generations: when the recent one is full it becomes the older one
/// and the previous older one is dropped; a number found in the older one moves back. What
/// is in use stays, what is not falls out, without per-entry bookkeeping.
struct PhoneMemo {
    capacity: usize,
    recent: std::collections::HashMap<String, Result<String, Refusal>>,
    older: std::collections::HashMap<String, Result<String, Refusal>>,
}

impl PhoneMemo {
    fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(2), recent: Default::default(), older: Default::default() }
    }

    fn get(&mut self, input: &str) -> Option<Result<String, Refusal>> {
        if let Some(known) = self.recent.get(input) {
            return Some(known.clone());
        }
        let (input, known) = self.older.remove_entry(input)?;
        self.insert(&input, &known);
        Some(known)
    }

    fn insert(&mut self, input: &str, result: &Result<String, Refusal>) {
        if self.recent.len() >= self.capacity / 2 {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(input.to_owned(), result.clone());
    }
}

/// Postgres text cannot hold NUL: refused here with its field, an event that carried one would
/// otherwise fail its whole transaction, and every good event batched with it, on each
/// redelivery.
pub fn no_nul(value: &str, field: &str) -> Result<(), Refusal> {
    if value.contains('\0') { Err(Refusal::new(field, "must not contain the NUL character (\\u0000)")) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_phones_stay_bounded_and_keep_what_is_in_use() {
        let mut memo = PhoneMemo::new(4);
        let valid = Ok("+14155550100".to_owned());
        memo.insert("+1 415 555 0100", &valid);
        for n in 0..10 {
            memo.insert(&format!("other-{n}"), &Err(Refusal::new("contact.phone", "no")));
            // Used all along, so never dropped.
            assert_eq!(memo.get("+1 415 555 0100"), Some(valid.clone()));
            let entries = memo.recent.len() + memo.older.len();
            assert!(entries <= 4, "{entries} entries");
        }
        assert_eq!(memo.get("other-0"), None, "long unused");
        assert!(memo.get("other-9").is_some(), "just added");
    }

    #[test]
    fn a_remembered_phone_normalises_as_the_first_time() {
        for input in ["+1 (415) 555-0100", "0044 20 7946 0958", "+1555", "415 555 0100"] {
            let first = normalize_phone(input);
            assert_eq!(normalize_phone(input), first, "{input}");
            assert_eq!(parse_phone(input.trim()), first, "{input}");
        }
        assert_eq!(normalize_phone(" +1 (415) 555-0100 ").as_deref(), Ok("+14155550100"));
        let long = format!("+1{}", "5".repeat(100));
        let refusal = normalize_phone(&long).expect_err("too long");
        assert!(refusal.reason.contains("at most 64 characters"), "{}", refusal.reason);
    }

    #[test]
    fn org_and_agent_ids_and_notes_are_bounded() {
        assert!(validate_org_id("acme_1-x").is_ok());
        assert_eq!(validate_org_id("").unwrap_err().field, "org_id");
        assert_eq!(validate_org_id("a.b").unwrap_err().field, "org_id");
        assert_eq!(validate_org_id(&"a".repeat(65)).unwrap_err().field, "org_id");
        assert!(validate_agent_id("ann").is_ok());
        assert_eq!(validate_agent_id("a\nb").unwrap_err().field, "agent_id");
        assert_eq!(validate_agent_id(&"a".repeat(MAX_AGENT_ID_CHARS + 1)).unwrap_err().field, "agent_id");
        assert!(validate_note(&"n".repeat(MAX_NOTE_CHARS)).is_ok());
        assert_eq!(validate_note(&"n".repeat(MAX_NOTE_CHARS + 1)).unwrap_err().field, "note");
        assert_eq!(validate_note("a\0b").unwrap_err().field, "note");
    }

    #[test]
    fn raw_times_resolve_or_name_their_field() {
        let at = RawTime::Text(" 2026-11-24T10:00:00+02:00 ".into()).resolve("occurred_at").unwrap();
        assert_eq!(at.to_rfc3339(), "2026-11-24T08:00:00+00:00");
        assert_eq!(RawTime::Text("yesterday".into()).resolve("timestamp").unwrap_err().field, "timestamp");
    }
}
