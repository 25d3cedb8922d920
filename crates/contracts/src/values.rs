//! Value types and limits that more than one service checks, each refusal naming its field.

use chrono::{DateTime, Utc};

/// Why an input was refused: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Refusal {
    /// The field's path in the input, dotted and indexed as the caller wrote it
    /// (`contact.phone`, `lead_ids[1]`).
    pub field: String,
    /// What is wrong, in lowercase words that follow the field's name (`must be at most 2000
    /// characters`); personal data in it is masked.
    pub reason: String,
}

impl Refusal {
    /// A refusal of `field` because of `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// A follow-up's note, on `CreateFollowUp` and `OpenFollowUp` alike.
pub const MAX_NOTE_CHARS: usize = 2000;
/// An agent id, wherever one is given (agents, assignments, follow-ups, filters).
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
    /// JSON's text: RFC 3339 with an offset (`2026-11-24T10:00:00Z`), spaces around it ignored.
    Text(String),
    /// A protobuf `Timestamp`, already converted.
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
            format!("{:?} must be in international form with a country code, like +14155550100", mask_phone(trimmed)),
        ));
    };
    let number = phonenumber::parse(None, &candidate)
        .map_err(|e| Refusal::new("contact.phone", format!("{:?} is not a phone number: {e}", mask_phone(trimmed))))?;
    if !phonenumber::is_viable(&candidate) || !number.is_valid() {
        return Err(Refusal::new("contact.phone", format!("{:?} is not a valid phone number", mask_phone(trimmed))));
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

/// Personal data kept out of logs and of refusal reasons (which are logged): a phone number
/// shows its last digits only (`+1*******0100`: four of ten or more, two of fewer), an email
/// the first character of its local part and its domain (`a***@example.com`).
pub mod mask {
    /// Every digit but the last few becomes `*`; other characters (`+`, spaces) stay.
    pub fn mask_phone(phone: &str) -> String {
        let digits = phone.chars().filter(char::is_ascii_digit).count();
        let keep = match digits {
            0..=4 => 0,
            5..=9 => 2,
            _ => 4,
        };
        let mut seen = 0;
        phone
            .chars()
            .map(|c| {
                if !c.is_ascii_digit() {
                    return c;
                }
                seen += 1;
                if seen > digits - keep { c } else { '*' }
            })
            .collect()
    }

    /// `a***@example.com`; a value without `@` is masked whole but its first character.
    pub fn mask_email(email: &str) -> String {
        let (local, domain) = email.rsplit_once('@').unwrap_or((email, ""));
        let first: String = local.chars().take(1).collect();
        if domain.is_empty() { format!("{first}***") } else { format!("{first}***@{domain}") }
    }

    /// Masks whatever in free text looks like an email or a phone number (a run of seven or
    /// more digits, with the `+`, spaces, dots, dashes and brackets between them).
    pub fn redact(text: &str) -> String {
        let words: Vec<String> = text
            .split(' ')
            .map(|word| if word.contains('@') && word.contains('.') { mask_email(word) } else { word.to_owned() })
            .collect();
        let text = words.join(" ");
        let mut out = String::with_capacity(text.len());
        let mut run = String::new();
        let flush = |run: &mut String, out: &mut String| {
            if run.chars().filter(char::is_ascii_digit).count() >= 7 {
                out.push_str(&mask_phone(run));
            } else {
                out.push_str(run);
            }
            run.clear();
        };
        for c in text.chars() {
            let digit = c.is_ascii_digit();
            let joins = matches!(c, '+' | ' ' | '.' | '-' | '(' | ')') && (!run.is_empty() || c == '+' || c == '(');
            if digit || joins {
                run.push(c);
            } else {
                flush(&mut run, &mut out);
                out.push(c);
            }
        }
        flush(&mut run, &mut out);
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn phones_and_emails_keep_only_what_identifies_nobody() {
            assert_eq!(mask_phone("+14155550100"), "+*******0100");
            assert_eq!(mask_phone("+1 (415) 555-0100"), "+* (***) ***-0100");
            assert_eq!(mask_phone("+1555"), "+****");
            assert_eq!(mask_phone("+1555123"), "+*****23");
            assert_eq!(mask_email("ada.lovelace@example.com"), "a***@example.com");
            assert_eq!(mask_email("nonsense"), "n***");
            let line = redact("\"+14155550100\" is not a valid phone number; write to ada@example.com, ref 2026");
            assert_eq!(line, "\"+*******0100\" is not a valid phone number; write to a***@example.com, ref 2026");
            assert!(!redact("call +44 20 7946 0958 now").contains("7946"));
        }
    }
}

pub use mask::{mask_email, mask_phone, redact};

/// Limits of the free-text and id fields of the gRPC API: each refused with
/// `INVALID_ARGUMENT` naming its field (`bounded`).
pub mod limits {
    /// Why a status, assignment or follow-up changed.
    pub const MAX_REASON_CHARS: usize = 2000;
    /// The display name a request gives its actor (the token's subject is recorded with it).
    pub const MAX_ACTOR_CHARS: usize = 200;
    /// What a service passes on as the actor it recorded: a subject and a display name.
    pub const MAX_RECORDED_ACTOR_CHARS: usize = 2 * MAX_ACTOR_CHARS + 3;
    /// Lead, contact and follow-up ids (UUIDs are 36).
    pub const MAX_ID_CHARS: usize = 64;
    /// Page tokens the services issue.
    pub const MAX_PAGE_TOKEN_CHARS: usize = 1024;
    /// Campaign ids, integration names, request ids and similar references.
    pub const MAX_REFERENCE_CHARS: usize = 256;
    /// Names of agents.
    pub const MAX_NAME_CHARS: usize = 200;
    /// Emails of agents: the longest an address may be.
    pub const MAX_EMAIL_CHARS: usize = 320;
    /// Leads one bulk change (of status or agent) names.
    pub const MAX_BULK_LEADS: usize = 10_000;
}

pub use limits::{MAX_ACTOR_CHARS, MAX_REASON_CHARS};

/// `value` has at most `max` characters and no NUL, or a refusal naming `field`.
pub fn bounded(field: &str, value: &str, max: usize) -> Result<(), Refusal> {
    // Bytes first: a character is at most four, so a short string needs no count.
    if value.len() > max && value.chars().count() > max {
        return Err(Refusal::new(field, format!("must be at most {max} characters")));
    }
    no_nul(value, field)
}

/// Every element of a repeated field, named `field[i]` when refused.
pub fn bounded_each<'a>(field: &str, values: impl IntoIterator<Item = &'a String>, max: usize) -> Result<(), Refusal> {
    for (i, value) in values.into_iter().enumerate() {
        bounded(&format!("{field}[{i}]"), value, max)?;
    }
    Ok(())
}

#[cfg(test)]
mod bounded_tests {
    use super::*;

    #[test]
    fn bounded_fields_name_themselves() {
        assert!(bounded("reason", &"r".repeat(MAX_REASON_CHARS), MAX_REASON_CHARS).is_ok());
        assert!(bounded("reason", &"é".repeat(MAX_REASON_CHARS), MAX_REASON_CHARS).is_ok());
        let refusal = bounded("reason", &"r".repeat(MAX_REASON_CHARS + 1), MAX_REASON_CHARS).unwrap_err();
        assert_eq!((refusal.field.as_str(), refusal.reason.as_str()), ("reason", "must be at most 2000 characters"));
        assert_eq!(bounded("actor", "a\0b", MAX_ACTOR_CHARS).unwrap_err().field, "actor");
        let ids = vec!["a".to_owned(), "b".repeat(100)];
        assert_eq!(bounded_each("lead_ids", &ids, limits::MAX_ID_CHARS).unwrap_err().field, "lead_ids[1]");
    }
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

#[cfg(test)]
mod validator_tests {
    //! Each validator at its limit and one past it; a refusal always names its field.

    use super::*;

    fn field_of<T: std::fmt::Debug>(result: Result<T, Refusal>) -> String {
        result.expect_err("refused").field
    }

    #[test]
    fn org_ids_hold_1_to_64_letters_digits_underscores_and_dashes() {
        assert!(validate_org_id(&"a".repeat(64)).is_ok());
        assert!(validate_org_id("a").is_ok());
        assert!(validate_org_id("Acme_01-eu").is_ok());
        assert_eq!(field_of(validate_org_id(&"a".repeat(65))), "org_id");
        assert_eq!(field_of(validate_org_id("")), "org_id");
        for refused in ["acme.eu", "acme eu", "acme/eu", "acmé", "acme\0"] {
            assert_eq!(field_of(validate_org_id(refused)), "org_id", "{refused:?}");
        }
    }

    #[test]
    fn agent_ids_hold_at_most_their_limit_of_characters_and_no_control_character() {
        assert!(validate_agent_id(&"a".repeat(MAX_AGENT_ID_CHARS)).is_ok());
        // Characters are counted, not bytes.
        assert!(validate_agent_id(&"é".repeat(MAX_AGENT_ID_CHARS)).is_ok());
        let refusal = validate_agent_id(&"a".repeat(MAX_AGENT_ID_CHARS + 1)).unwrap_err();
        assert_eq!(refusal.field, "agent_id");
        assert!(refusal.reason.contains(&MAX_AGENT_ID_CHARS.to_string()), "{}", refusal.reason);
        assert_eq!(field_of(validate_agent_id(&"é".repeat(MAX_AGENT_ID_CHARS + 1))), "agent_id");
        for refused in ["a\nb", "a\tb", "a\0b", "a\u{7f}b"] {
            assert_eq!(field_of(validate_agent_id(refused)), "agent_id", "{refused:?}");
        }
    }

    #[test]
    fn notes_hold_at_most_their_limit_of_characters_and_no_nul() {
        assert!(validate_note(&"n".repeat(MAX_NOTE_CHARS)).is_ok());
        assert!(validate_note(&"é".repeat(MAX_NOTE_CHARS)).is_ok());
        assert!(validate_note("call back\nafter lunch").is_ok());
        let refusal = validate_note(&"n".repeat(MAX_NOTE_CHARS + 1)).unwrap_err();
        assert_eq!(refusal.field, "note");
        assert!(refusal.reason.contains(&MAX_NOTE_CHARS.to_string()), "{}", refusal.reason);
        assert_eq!(field_of(validate_note(&"é".repeat(MAX_NOTE_CHARS + 1))), "note");
        assert_eq!(field_of(validate_note("call\0back")), "note");
    }

    #[test]
    fn nul_is_refused_in_the_field_it_was_found_in() {
        assert!(no_nul("plain text, accents é and emoji 🙂", "text").is_ok());
        assert!(no_nul("", "text").is_ok());
        for (value, field) in [("\0", "text"), ("a\0b", "contact.name"), ("ends with\0", "external_id")] {
            assert_eq!(field_of(no_nul(value, field)), field);
        }
    }

    #[test]
    fn phones_are_normalised_to_e164_or_refused_as_contact_phone() {
        assert_eq!(normalize_phone("+1 (415) 555-0100").as_deref(), Ok("+14155550100"));
        assert_eq!(normalize_phone("0044 20 7946 0958").as_deref(), Ok("+442079460958"));
        for refused in ["415 555 0100", "+1555", "+", "", "not a number"] {
            assert_eq!(field_of(normalize_phone(refused)), "contact.phone", "{refused:?}");
        }
    }

    #[test]
    fn phones_hold_at_most_their_limit_of_characters_after_trimming() {
        let at_limit = format!("+1{}4155550100", " ".repeat(MAX_PHONE_CHARS - 12));
        assert_eq!(at_limit.chars().count(), MAX_PHONE_CHARS);
        assert_eq!(normalize_phone(&at_limit).as_deref(), Ok("+14155550100"));
        let refusal = normalize_phone(&format!("{at_limit}0")).unwrap_err();
        assert_eq!(refusal.field, "contact.phone");
        assert!(refusal.reason.contains(&format!("at most {MAX_PHONE_CHARS} characters")), "{}", refusal.reason);
        let surrounded = format!("  +1 (415) 555-0100{}", " ".repeat(MAX_PHONE_CHARS));
        assert_eq!(normalize_phone(&surrounded).as_deref(), Ok("+14155550100"), "surrounding spaces do not count");
    }

    #[test]
    fn times_are_rfc_3339_with_an_offset_or_refused_naming_their_field() {
        let utc = RawTime::Text("2026-11-24T08:00:00Z".into()).resolve("occurred_at").unwrap();
        let offset = RawTime::Text("2026-11-24T10:00:00+02:00".into()).resolve("occurred_at").unwrap();
        assert_eq!(utc, offset);
        let fractional = RawTime::Text("2026-11-24T08:00:00.123456Z".into()).resolve("occurred_at").unwrap();
        assert_eq!(fractional.timestamp(), utc.timestamp());
        assert_eq!(RawTime::Parsed(utc).resolve("occurred_at").unwrap(), utc);
        for refused in ["2026-11-24T08:00:00", "2026-11-24", "2026-13-01T00:00:00Z", "1732435200", ""] {
            assert_eq!(field_of(RawTime::Text(refused.into()).resolve("due_at")), "due_at", "{refused:?}");
        }
    }

    #[test]
    fn every_api_limit_passes_at_its_length_and_refuses_one_more_naming_the_field() {
        let limits = [
            ("reason", limits::MAX_REASON_CHARS),
            ("actor", limits::MAX_ACTOR_CHARS),
            ("recorded_actor", limits::MAX_RECORDED_ACTOR_CHARS),
            ("lead_id", limits::MAX_ID_CHARS),
            ("page_token", limits::MAX_PAGE_TOKEN_CHARS),
            ("campaign_id", limits::MAX_REFERENCE_CHARS),
            ("name", limits::MAX_NAME_CHARS),
            ("email", limits::MAX_EMAIL_CHARS),
        ];
        for (field, max) in limits {
            assert!(bounded(field, &"x".repeat(max), max).is_ok(), "{field}");
            assert!(bounded(field, &"é".repeat(max), max).is_ok(), "{field}: characters, not bytes");
            for over in ["x".repeat(max + 1), "é".repeat(max + 1)] {
                let refusal = bounded(field, &over, max).unwrap_err();
                assert_eq!(refusal.field, field);
                assert_eq!(refusal.reason, format!("must be at most {max} characters"));
            }
            assert_eq!(field_of(bounded(field, "a\0b", max)), field);
        }
    }

    #[test]
    fn repeated_fields_name_the_element_refused() {
        let at_limit = vec!["x".repeat(limits::MAX_ID_CHARS); 3];
        assert!(bounded_each("lead_ids", &at_limit, limits::MAX_ID_CHARS).is_ok());
        assert!(bounded_each("lead_ids", &Vec::<String>::new(), limits::MAX_ID_CHARS).is_ok());
        let mut over = at_limit.clone();
        over[2] = "x".repeat(limits::MAX_ID_CHARS + 1);
        assert_eq!(field_of(bounded_each("lead_ids", &over, limits::MAX_ID_CHARS)), "lead_ids[2]");
        over[1] = "a\0".into();
        assert_eq!(field_of(bounded_each("lead_ids", &over, limits::MAX_ID_CHARS)), "lead_ids[1]");
    }
}
