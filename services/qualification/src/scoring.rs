//! The scoring model: transparent rules over a lead's interactions, each contributing points
//! with a reason an operator can read. Pure, so that it is tested without any I/O.

pub const MODEL_VERSION: &str = "rules-v1";

/// What the model looks at, accumulated from a lead's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    pub source_kind: String,
    pub has_name: bool,
    pub has_email: bool,
    pub inbound_count: i32,
    pub outbound_count: i32,
    pub pricing_hits: i32,
    pub intent_hits: i32,
    pub urgency_hits: i32,
    pub negative_hits: i32,
}

/// Signals found in one message's text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextSignals {
    pub pricing: bool,
    pub intent: bool,
    pub urgency: bool,
    pub negative: bool,
}

const PRICING: &[&str] = &["price", "pricing", "how much", "cost", "quote", "plan", "discount", "offer"];
const INTENT: &[&str] =
    &["buy", "purchase", "order", "interested", "sign up", "signup", "subscribe", "demo", "trial", "book"];
const URGENCY: &[&str] = &["today", "asap", "urgent", "right now", "immediately", "this week"];
const NEGATIVE: &[&str] = &["stop", "unsubscribe", "not interested", "no thanks", "remove me", "spam"];

pub fn signals(text: &str) -> TextSignals {
    let text = text.to_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| text.contains(w));
    TextSignals { pricing: any(PRICING), intent: any(INTENT), urgency: any(URGENCY), negative: any(NEGATIVE) }
}

/// A score from 0 to 100 and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Score {
    pub score: i32,
    pub reasons: Vec<String>,
}

pub fn score(f: &Features) -> Score {
    let mut points = 10;
    let mut reasons = vec!["base (+10)".to_owned()];
    let mut add = |delta: i32, reason: &str| {
        points += delta;
        reasons.push(format!("{reason} ({delta:+})"));
    };
    let engagement = (f.inbound_count.saturating_sub(1) * 5).min(20);
    if engagement > 0 {
        add(engagement, &format!("{} messages from the contact", f.inbound_count));
    }
    if f.pricing_hits > 0 {
        add(15, "asked about pricing");
    }
    if f.intent_hits > 0 {
        add(20, "showed purchase intent");
    }
    if f.urgency_hits > 0 {
        add(10, "is in a hurry");
    }
    match f.source_kind.as_str() {
        "broadcast_reply" => add(10, "replied to a broadcast"),
        "integration" => add(5, "came through an integration"),
        _ => {}
    }
    if f.has_email {
        add(5, "left an email address");
    }
    if f.has_name {
        add(5, "gave a name");
    }
    if f.outbound_count > 0 && f.inbound_count > 1 {
        add(5, "is in a conversation with an agent");
    }
    if f.negative_hits > 0 {
        add(-40, "asked to stop or declined");
    }
    Score { score: points.clamp(0, 100), reasons }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_found_case_insensitively() {
        let s = signals("Hi! How MUCH is the premium plan? I'd like to buy it today");
        assert_eq!(s, TextSignals { pricing: true, intent: true, urgency: true, negative: false });
        assert!(signals("please STOP sending these").negative);
        assert_eq!(signals("hello"), TextSignals::default());
    }

    #[test]
    fn a_keen_buyer_outscores_a_greeting_and_a_refusal_sinks() {
        let greeting = score(&Features { source_kind: "chat_message".into(), inbound_count: 1, ..Default::default() });
        assert_eq!(greeting.score, 10);
        let keen = score(&Features {
            source_kind: "broadcast_reply".into(),
            has_name: true,
            has_email: true,
            inbound_count: 4,
            outbound_count: 1,
            pricing_hits: 1,
            intent_hits: 2,
            urgency_hits: 1,
            ..Default::default()
        });
        assert_eq!(keen.score, 10 + 15 + 15 + 20 + 10 + 10 + 5 + 5 + 5);
        assert!(keen.reasons.iter().any(|r| r == "asked about pricing (+15)"));
        let refusal = score(&Features { negative_hits: 1, inbound_count: 1, ..Default::default() });
        assert_eq!(refusal.score, 0, "clamped at zero");
        let many = score(&Features { inbound_count: 50, ..Default::default() });
        assert_eq!(many.score, 30, "engagement is capped");
    }
}
