//! The built-in scorer: fixed, documented weights over the dense features, for organisations with no
//! training data (and as the baseline a learned model has to beat).
//!
//! `probability = σ(bias + Σ weight × feature)` with `bias = -1.4`, score = `round(100 × probability)`.
//! Feature values are the ones documented in [`crate::features`] (mostly `ln(1 + count)`, flags,
//! and `logtime` in 0..1 for 0..30 days). Weights, in logit units per unit of feature value:
//!
//! | feature | weight | why |
//! |---------|-------:|-----|
//! | `intent_signals` | +1.5 | wants to buy / order / book, in any of the five languages |
//! | `pricing_signals` | +0.8 | asks about price |
//! | `urgency_signals` | +0.6 | wants it today / now |
//! | `question_signals` | +0.3 | asks questions |
//! | `positive_signals` | +0.4 | agrees, thanks |
//! | `objection_signals` | −0.7 | too expensive, later, negated intent |
//! | `refusal_signals` | −2.5 | not interested, opt-out, wrong number |
//! | `last_message_intent` | +0.5 | intent is the latest word |
//! | `last_message_refusal` | −1.5 | a refusal is the latest word |
//! | `last_message_question` | +0.2 | waiting for an answer |
//! | `inbound_count` | +0.35 | engaged contact |
//! | `outbound_count` | −0.1 | business talking alone |
//! | `inbound_chars` | +0.2 | wrote a lot |
//! | `avg_inbound_chars` | +0.3 | substantive messages |
//! | `contact_replies` | +0.2 | answers the business |
//! | `contact_reply_time` | −0.4 | slow replies |
//! | `replied_within_5m` | +0.5 | fast replies |
//! | `replied_within_1h` | +0.3 | same-hour replies |
//! | `recency` | −1.5 | silence since the last contact message (−1.5 at 30 days) |
//! | `active_24h` | +0.3 | wrote in the last day |
//! | `active_7d` | +0.2 | wrote in the last week |
//! | `no_inbound` | −0.8 | never wrote |
//! | `largest_gap` | −0.2 | long silences |
//! | `broadcast_replies` | +0.3 | answers campaigns |
//! | `contact_initiated` | +0.2 | came to the business |
//! | `unanswered_outbound` | −0.5 | ignores the business |
//!
//! With these, a lead that only said "hi" a minute ago scores about 38; clear intent with price questions
//! and fast replies scores above 90; a bare "not interested" scores about 5. Text hashes are ignored by the
//! prior.

use super::explain::{Explanation, explain_indexed, sigmoid};
use super::features::{DENSE_LABELS, DENSE_LEN, SparseVector, dense_index};

/// The prior's bias (logit of an empty lead).
pub const PRIOR_BIAS: f64 = -1.4;

/// The prior's weights by dense feature name (see the module table).
pub const PRIOR_WEIGHTS: &[(&str, f64)] = &[
    ("intent_signals", 1.5),
    ("pricing_signals", 0.8),
    ("urgency_signals", 0.6),
    ("question_signals", 0.3),
    ("positive_signals", 0.4),
    ("objection_signals", -0.7),
    ("refusal_signals", -2.5),
    ("last_message_intent", 0.5),
    ("last_message_refusal", -1.5),
    ("last_message_question", 0.2),
    ("inbound_count", 0.35),
    ("outbound_count", -0.1),
    ("inbound_chars", 0.2),
    ("avg_inbound_chars", 0.3),
    ("contact_replies", 0.2),
    ("contact_reply_time", -0.4),
    ("replied_within_5m", 0.5),
    ("replied_within_1h", 0.3),
    ("recency", -1.5),
    ("active_24h", 0.3),
    ("active_7d", 0.2),
    ("no_inbound", -0.8),
    ("largest_gap", -0.2),
    ("broadcast_replies", 0.3),
    ("contact_initiated", 0.2),
    ("unanswered_outbound", -0.5),
];

/// The zero-data scorer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prior {
    bias: f64,
    weights: [f64; DENSE_LEN as usize],
}

impl Default for Prior {
    fn default() -> Self {
        let mut weights = [0.0; DENSE_LEN as usize];
        for (name, w) in PRIOR_WEIGHTS {
            let i = dense_index(name).expect("prior weight names a dense feature");
            weights[i as usize] = *w;
        }
        Self { bias: PRIOR_BIAS, weights }
    }
}

impl Prior {
    /// The built-in prior (same as `Prior::default()`).
    pub fn new() -> Self {
        Self::default()
    }

    fn contributions<'a>(&'a self, x: &'a SparseVector) -> impl Iterator<Item = (usize, f64)> + 'a {
        x.iter().take_while(|p| p.0 < DENSE_LEN).map(|p| (p.0 as usize, self.weights[p.0 as usize] * f64::from(p.1)))
    }

    /// The logit.
    pub fn logit(&self, x: &SparseVector) -> f64 {
        self.bias + self.contributions(x).map(|c| c.1).sum::<f64>()
    }

    /// The probability of conversion.
    pub fn probability(&self, x: &SparseVector) -> f64 {
        sigmoid(self.logit(x))
    }

    /// Score and reasons.
    pub fn explain(&self, x: &SparseVector) -> Explanation {
        let contributions: Vec<(u32, f64)> = self.contributions(x).map(|(i, c)| (i as u32, c)).collect();
        explain_indexed(self.bias, &contributions, 8, |i| DENSE_LABELS[i as usize].to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{Direction, LeadFeatures, Message};
    use crate::time::Timestamp;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_unix_seconds(1_700_000_000 + secs)
    }

    fn score(msgs: &[(Direction, i64, &str)], now: i64) -> Explanation {
        let mut f = LeadFeatures::new();
        for &(d, at, text) in msgs {
            f.observe(&Message::chat(d, t(at), text));
        }
        Prior::new().explain(&f.vector(t(now)))
    }

    use Direction::{Inbound as In, Outbound as Out};

    #[test]
    fn hi_is_middle_low() {
        let e = score(&[(In, 0, "hi")], 60);
        assert!((30..=45).contains(&e.score), "{e}");
    }

    #[test]
    fn clear_intent_is_high() {
        let e = score(
            &[
                (Out, 0, "Hello! Our new collection is here."),
                (In, 90, "Hi, I want to buy the premium package. How much does it cost?"),
                (Out, 150, "It's 49 USD"),
                (In, 200, "Great, can you deliver today?"),
            ],
            600,
        );
        assert!(e.score > 70, "{e}");
        assert!(e.factors.iter().any(|f| f.name == "intent signals" && f.contribution > 0.0), "{e}");
    }

    #[test]
    fn refusal_is_low() {
        let e = score(&[(Out, 0, "Hello! New offers this week"), (In, 60, "not interested")], 120);
        assert!(e.score < 20, "{e}");
        assert_eq!(e.factors[0].name, "refusal", "{e}");
        for text in ["no me interesa", "não tenho interesse", "nahi chahiye", "tidak tertarik", "STOP"] {
            let e = score(&[(Out, 0, "Promo!"), (In, 60, text)], 120);
            assert!(e.score < 20, "{text}: {e}");
        }
    }

    #[test]
    fn ordering_intent_neutral_refusal() {
        let langs = [
            ("I want to buy, how much?", "ok", "not interested"),
            ("quiero comprar, ¿cuánto cuesta?", "ok", "no me interesa"),
            ("quero comprar, quanto custa?", "ok", "não quero"),
            ("mujhe lena hai, kitne ka hai?", "ok", "nahi chahiye"),
            ("mau beli, berapa harganya?", "ok", "tidak tertarik"),
        ];
        for (intent, neutral, refusal) in langs {
            let s = |text| score(&[(Out, 0, "Hello"), (In, 60, text)], 120).score;
            assert!(s(intent) > s(neutral) && s(neutral) > s(refusal), "{intent} / {neutral} / {refusal}");
        }
        // Old bugs: these are neutral, not intent or refusal.
        let neutral = score(&[(Out, 0, "Hello"), (In, 60, "ok")], 120).score;
        for text in ["I found you on facebook", "thanks for the explanation", "I'm at the bus stop"] {
            let s = score(&[(Out, 0, "Hello"), (In, 60, text)], 120).score;
            assert!(s.abs_diff(neutral) <= 8, "{text}: {s} vs {neutral}");
        }
    }

    #[test]
    fn stale_leads_decay() {
        let fresh = score(&[(In, 0, "I want to buy")], 60).score;
        let stale = score(&[(In, 0, "I want to buy")], 60 * 86_400).score;
        assert!(fresh > stale + 10, "{fresh} vs {stale}");
    }
}
