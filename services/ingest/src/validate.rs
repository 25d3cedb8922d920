//! The contract's rules for an InteractionEvent. Each refusal names the field at fault.

use crate::event::RawEvent;
use contracts::values::{no_nul, normalize_phone};
use contracts::{
    Refusal,
    interaction::{
        BroadcastInfo, ContactInfo, Direction, IntegrationInfo, Interaction, Kind, MAX_ATTRIBUTES, MAX_EVENT_ID_CHARS,
        MAX_TEXT_CHARS,
    },
};

const MAX_SHORT_CHARS: usize = 256;
const MAX_EMAIL_CHARS: usize = 320;

pub fn validate(raw: RawEvent) -> Result<Interaction, Refusal> {
    let event_id = required(raw.event_id, "event_id")?;
    no_nul(&event_id, "event_id")?;
    let chars = event_id.chars().count();
    if chars > MAX_EVENT_ID_CHARS {
        return Err(Refusal::new("event_id", format!("must be at most {MAX_EVENT_ID_CHARS} characters, got {chars}")));
    }
    let occurred_at =
        raw.occurred_at.ok_or_else(|| Refusal::new("occurred_at", "is required"))?.resolve("occurred_at")?;
    let kind_text = required(raw.kind, "kind")?;
    let kind = Kind::try_from(kind_text.as_str()).map_err(|_| {
        let kinds = Kind::ALL.map(Kind::as_str).join(", ");
        Refusal::new("kind", format!("must be one of {kinds}; got {:?}", shown(&kind_text)))
    })?;
    let direction = match raw.direction.as_deref().map(str::trim) {
        None | Some("") => Direction::Inbound,
        Some(text) => Direction::try_from(text)
            .map_err(|_| Refusal::new("direction", format!("must be inbound or outbound; got {:?}", shown(text))))?,
    };
    let channel = match raw.channel.map(|c| c.trim().to_ascii_lowercase()) {
        None => "whatsapp".to_owned(),
        Some(c) if c.is_empty() => "whatsapp".to_owned(),
        Some(c) => bounded(c, "channel", 64)?,
    };
    let contact = raw.contact.ok_or_else(|| Refusal::new("contact", "is required"))?;
    let phone = contact.phone.filter(|p| !p.trim().is_empty()).map(|p| normalize_phone(&p)).transpose()?;
    let external_id =
        non_empty(contact.external_id).map(|e| bounded(e, "contact.external_id", MAX_SHORT_CHARS)).transpose()?;
    if phone.is_none() && external_id.is_none() {
        return Err(Refusal::new("contact", "needs at least one of phone or external_id"));
    }
    let name = non_empty(contact.name).map(|n| bounded(n, "contact.name", MAX_SHORT_CHARS)).transpose()?;
    let email = non_empty(contact.email).map(|e| validate_email(&e)).transpose()?;
    let text = raw.text.filter(|t| !t.is_empty());
    if let Some(text) = &text {
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(Refusal::new("text", format!("must be at most {MAX_TEXT_CHARS} characters, got {chars}")));
        }
        no_nul(text, "text")?;
    }
    let broadcast = match raw.broadcast {
        Some((Some(message_id), campaign_id)) if !message_id.trim().is_empty() => Some(BroadcastInfo {
            message_id: bounded(message_id, "broadcast.message_id", MAX_SHORT_CHARS)?,
            campaign_id: non_empty(campaign_id)
                .map(|c| bounded(c, "broadcast.campaign_id", MAX_SHORT_CHARS))
                .transpose()?,
        }),
        _ => None,
    };
    if kind == Kind::BroadcastReply && broadcast.is_none() {
        return Err(Refusal::new("broadcast.message_id", "is required when kind is broadcast_reply"));
    }
    let integration = match raw.integration {
        Some((Some(name), reference)) if !name.trim().is_empty() => Some(IntegrationInfo {
            name: bounded(name, "integration.name", MAX_SHORT_CHARS)?,
            reference: non_empty(reference)
                .map(|r| bounded(r, "integration.reference", MAX_SHORT_CHARS))
                .transpose()?,
        }),
        _ => None,
    };
    if kind == Kind::Integration && integration.is_none() {
        return Err(Refusal::new("integration.name", "is required when kind is integration"));
    }
    if raw.attributes.len() > MAX_ATTRIBUTES {
        return Err(Refusal::new(
            "attributes",
            format!("must have at most {MAX_ATTRIBUTES} keys, got {}", raw.attributes.len()),
        ));
    }
    for (key, value) in &raw.attributes {
        if key.is_empty() || key.chars().count() > MAX_SHORT_CHARS {
            return Err(Refusal::new("attributes", "keys must be 1 to 256 characters"));
        }
        if value.chars().count() > MAX_TEXT_CHARS {
            return Err(Refusal::new(format!("attributes.{key}"), "must be at most 4096 characters"));
        }
        no_nul(key, "attributes")?;
        no_nul(value, &format!("attributes.{key}"))?;
    }
    Ok(Interaction {
        event_id,
        occurred_at,
        kind,
        direction,
        channel,
        contact: ContactInfo { phone, external_id, name, email },
        agent_id: non_empty(raw.agent_id).map(|a| bounded(a, "agent_id", MAX_SHORT_CHARS)).transpose()?,
        text,
        conversation_id: non_empty(raw.conversation_id)
            .map(|c| bounded(c, "conversation_id", MAX_SHORT_CHARS))
            .transpose()?,
        broadcast,
        integration,
        attributes: raw.attributes,
    })
}

/// At most 64 characters of a refused value, for its refusal's reason (which is stored and
/// logged): a huge value is not copied into either.
fn shown(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", &value[..end]),
        None => value.to_owned(),
    }
}

fn validate_email(input: &str) -> Result<String, Refusal> {
    let email = input.trim().to_owned();
    let valid = email.chars().count() <= MAX_EMAIL_CHARS
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.contains('@'));
    if valid {
        Ok(email)
    } else {
        Err(Refusal::new(
            "contact.email",
            format!("{:?} is not an email address", contracts::values::mask_email(&email)),
        ))
    }
}

fn required(value: Option<String>, field: &str) -> Result<String, Refusal> {
    non_empty(value).ok_or_else(|| Refusal::new(field, "is required"))
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn bounded(value: String, field: &str, max: usize) -> Result<String, Refusal> {
    if value.chars().count() > max {
        return Err(Refusal::new(field, format!("must be at most {max} characters")));
    }
    no_nul(&value, field)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::from_json;

    fn check(json: &str) -> Result<Interaction, Refusal> {
        from_json(json.as_bytes()).and_then(validate)
    }

    const CONTRACT_EXAMPLE: &str = r#"{
      "event_id": "evt-01HF", "occurred_at": "2026-11-24T10:00:00Z", "kind": "chat_message",
      "direction": "inbound", "channel": "whatsapp",
      "contact": {"phone": "+1 (415) 555-0100", "external_id": "crm-123", "name": "Ada Lovelace", "email": "ada@example.com"},
      "agent_id": "agent-7", "text": "Hi, how much is the premium plan?", "conversation_id": "conv-991",
      "broadcast": {"message_id": "wamid.HBgL", "campaign_id": "cmp-42"},
      "integration": {"name": "shopify", "reference": "order-1001"},
      "attributes": {"utm_source": "instagram"}
    }"#;

    #[test]
    fn the_contract_example_is_accepted_and_normalised() {
        let event = check(CONTRACT_EXAMPLE).expect("valid");
        assert_eq!(event.contact.phone.as_deref(), Some("+14155550100"));
        assert_eq!(event.kind, Kind::ChatMessage);
        assert_eq!(event.attributes["utm_source"], "instagram");
    }

    #[test]
    fn defaults_apply() {
        let event = check(r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00+02:00","kind":"chat_message","contact":{"external_id":"x"}}"#)
            .expect("valid");
        assert_eq!(event.direction, Direction::Inbound);
        assert_eq!(event.channel, "whatsapp");
        assert_eq!(event.occurred_at.to_rfc3339(), "2026-11-24T08:00:00+00:00");
    }

    #[test]
    fn each_refusal_names_its_field() {
        let cases = [
            (r"not json", "payload"),
            (r"[1]", "payload"),
            (
                r#"{"occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message","contact":{"phone":"+14155550100"}}"#,
                "event_id",
            ),
            (r#"{"event_id":"e","kind":"chat_message","contact":{"phone":"+14155550100"}}"#, "occurred_at"),
            (
                r#"{"event_id":"e","occurred_at":"yesterday","kind":"chat_message","contact":{"phone":"+14155550100"}}"#,
                "occurred_at",
            ),
            (
                r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"fax","contact":{"phone":"+14155550100"}}"#,
                "kind",
            ),
            (
                r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message","contact":{"name":"x"}}"#,
                "contact",
            ),
            (r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message"}"#, "contact"),
            (
                r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message","contact":{"phone":"12"}}"#,
                "contact.phone",
            ),
            (
                r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message","contact":{"phone":"+999123"}}"#,
                "contact.phone",
            ),
            (
                r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message","contact":{"phone":5}}"#,
                "contact.phone",
            ),
            (
                r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"broadcast_reply","contact":{"phone":"+14155550100"}}"#,
                "broadcast.message_id",
            ),
            (
                r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"integration","contact":{"phone":"+14155550100"}}"#,
                "integration.name",
            ),
            (
                r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message","direction":"sideways","contact":{"phone":"+14155550100"}}"#,
                "direction",
            ),
            (
                r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message","contact":{"phone":"+14155550100"},"attributes":{"a":{"b":"c"}}}"#,
                "attributes.a",
            ),
            (
                r#"{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message","contact":{"phone":"+14155550100","email":"nope"}}"#,
                "contact.email",
            ),
        ];
        for (json, field) in cases {
            let refusal = check(json).expect_err(json);
            assert_eq!(refusal.field, field, "{json}: {refusal}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let long_id = "x".repeat(129);
        let json = format!(
            r#"{{"event_id":"{long_id}","occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message","contact":{{"external_id":"x"}}}}"#
        );
        assert_eq!(check(&json).expect_err("too long").field, "event_id");
        let text = "y".repeat(4097);
        let json = format!(
            r#"{{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message","text":"{text}","contact":{{"external_id":"x"}}}}"#
        );
        assert_eq!(check(&json).expect_err("too long").field, "text");
        let attributes: Vec<String> = (0..51).map(|i| format!(r#""k{i}":"v""#)).collect();
        let json = format!(
            r#"{{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"chat_message","contact":{{"external_id":"x"}},"attributes":{{{}}}}}"#,
            attributes.join(",")
        );
        assert_eq!(check(&json).expect_err("too many").field, "attributes");
        for (json, field) in [
            (r#""text": "a\u0000b""#, "text"),
            (r#""event_id": "e\u0000""#, "event_id"),
            (r#""contact": {"phone": "+14155550100", "name": "Ada\u0000"}"#, "contact.name"),
            (r#""attributes": {"plan": "pro\u0000"}"#, "attributes.plan"),
        ] {
            let base = r#"{"event_id": "e1", "occurred_at": "2026-11-24T10:00:00Z", "kind": "chat_message",
                "contact": {"phone": "+14155550100"}, "text": "hi"}"#;
            let mut event: serde_json::Value = serde_json::from_str(base).expect("base");
            let part: serde_json::Value = serde_json::from_str(&format!("{{{json}}}")).expect("part");
            for (key, value) in part.as_object().into_iter().flatten() {
                event[key] = value.clone();
            }
            let refusal = check(&event.to_string()).expect_err("a NUL is refused");
            assert_eq!(refusal.field, field, "{json}");
        }
    }

    #[test]
    fn a_refused_value_is_shown_in_part_only() {
        let refusal = check(&format!(
            r#"{{"event_id":"e","occurred_at":"2026-11-24T10:00:00Z","kind":"{}","contact":{{"external_id":"x"}}}}"#,
            "k".repeat(10_000)
        ))
        .expect_err("unknown kind");
        assert_eq!(refusal.field, "kind");
        assert!(refusal.reason.len() < 200, "{}", refusal.reason);
        assert_eq!(super::shown("short"), "short");
    }
}
