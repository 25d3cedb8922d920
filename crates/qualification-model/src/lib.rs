//! # Lead qualification model
//!
//! Scores a lead (a contact's open conversation with a business over WhatsApp-style chat and broadcasts)
//! from 0 to 100, with reasons, from its interactions. Pure Rust, no I/O, no unsafe code; dependencies:
//! `serde` and `unicode-segmentation`. Times are [`Timestamp`]s; the service converts its own.
//!
//! ## Pipeline
//!
//! ```text
//! Message ──observe──▶ LeadFeatures (bounded, stored per lead) ──vector(now)──▶ SparseVector
//!                                                                  │
//!                                 Prior::explain (zero data) ◀─────┤
//!                                 Model::explain (learned)   ◀─────┘──▶ Explanation { score, probability, factors }
//! ```
//!
//! * [`text`] — Unicode word tokenisation, lowercasing, Latin accent folding (`não` = `nao`), negation
//!   scopes (`not`, `no`, `nunca`, `nao`, `nahi`, `tidak`, …: the next 1–3 words of the clause), stable
//!   FNV-1a hashing of word unigrams/bigrams (`NEG_` when negated) and character 3-grams into 2^18 slots.
//! * [`lexicon`] — intent, pricing, urgency, question, positive, objection and refusal signals in English,
//!   Spanish, Portuguese, Hinglish (Latin script) and Indonesian, matched on whole tokens and phrases with
//!   negation applied ("not interested" is a refusal, never intent; "bus stop" is nothing; "stop" alone is
//!   an opt-out).
//! * [`features`] — [`LeadFeatures`]: counts, times, reply speeds, recency, gaps, broadcast engagement,
//!   source/channel, signal counts and bounded hashed n-gram counts; [`LeadFeatures::vector`] gives the
//!   [`SparseVector`] (dense features at documented indices 0..32, hashed ones from 64 on);
//!   [`LeadFeatures::refresh_at`] says when the time-dependent ones have moved enough to score again;
//!   [`Vocabulary`] names hashed indices by the words behind them (`text: "warranty"`), [`feature_name`]
//!   by their index, for debugging.
//! * [`prior`] — [`Prior`]: documented fixed weights over the dense features, usable with no training data.
//! * [`learn`] — [`train`]: per-organisation L2 logistic regression (L-BFGS), stratified hold-out, AUC,
//!   cross-validated λ and Platt calibration, compared with the prior on the same hold-out; [`Model`] is
//!   serialisable and explains its scores, keeping the words of its [`NAMED_FEATURES`] strongest text
//!   features ([`Model::name_features`]) and never showing a hashed id.
//! * [`explain`] — [`Explanation`] and [`Factor`], shared by both scorers.
//! * [`stored`] — the compact binary form [`LeadFeatures`] are stored in, one value per lead; serde
//!   gives the JSON form kept with an outcome.
//! * [`time`] — [`Timestamp`], an instant in UTC whose serde form is RFC 3339.
//! * `synthetic` (cargo feature `synthetic`) — deterministic generator of labelled multilingual
//!   organisations, for tests, examples and benchmarks; [`rng`] — the tiny seeded PRNG it and the
//!   trainer use.
//!
//! ## Use
//!
//! ```
//! use qualification_model::{Direction, LeadFeatures, Message, Prior, Timestamp};
//!
//! let now = Timestamp::now();
//! let mut lead = LeadFeatures::new();
//! lead.observe(&Message::chat(Direction::Outbound, now.plus_seconds(-600), "New offers this week!"));
//! lead.observe(&Message::chat(Direction::Inbound, now.plus_seconds(-480), "quiero comprar, ¿cuánto cuesta?"));
//! let stored = lead.to_bytes(); // store per lead
//! let explanation = Prior::new().explain(&lead.vector(now));
//! assert!(explanation.score > 60);
//! println!("{explanation}"); // e.g. "83: intent signals +22, pricing questions +12, …"
//! # assert_eq!(LeadFeatures::from_bytes(&stored).unwrap(), lead);
//! ```
//!
//! With enough history (at least 30 converted and 30 lost leads by default), train a model per organisation
//! and use it only when it beats the prior on the hold-out set:
//!
//! ```
//! # #[cfg(feature = "synthetic")] {
//! use qualification_model::{TrainConfig, TrainOutcome, train};
//! use qualification_model::synthetic::{SyntheticConfig, generate};
//!
//! let org = generate(&SyntheticConfig { leads: 300, ..SyntheticConfig::default() });
//! match train(&org.examples(), &TrainConfig::default()) {
//!     TrainOutcome::Trained(model) if model.beats_prior() => { /* store the model (serde) */ }
//!     TrainOutcome::Trained(_) => { /* keep the prior */ }
//!     TrainOutcome::Refused(r) => eprintln!("not trained: {}", r.reason),
//! }
//! # }
//! ```
//!
//! ## Compatibility
//!
//! Hash function, feature indices and transforms are part of the stored format: changing them invalidates
//! stored [`Model`]s (retrain) but not stored [`LeadFeatures`] (they hold counts, not vectors), except for
//! the hashed n-gram slots.

pub mod explain;
pub mod features;
pub mod learn;
pub mod lexicon;
pub mod prior;
pub mod rng;
pub mod stored;
#[cfg(feature = "synthetic")]
pub mod synthetic;
pub mod text;
pub mod time;

pub use explain::{Explanation, Factor};
pub use features::{
    DENSE_NAMES, Direction, LeadFeatures, Message, MessageKind, SparseVector, Vocabulary, feature_name,
};
pub use learn::{Model, NAMED_FEATURES, Refusal, TrainConfig, TrainOutcome, auc, train};
pub use lexicon::{Signal, Signals};
pub use prior::Prior;
pub use stored::StoredError;
pub use time::Timestamp;
