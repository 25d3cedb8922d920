//! The promises between services. Everything that crosses a service boundary lives here or in
//! `leads-proto`: the envelope every internal event travels in, the payload of each
//! `events.<service>.<org>.<kind>` subject, the value types and limits more than one service
//! checks, and the conversions between proto timestamps and chrono. A service crate depends on
//! this crate, `leads-proto` and `platform`, never on another service crate, so a service's
//! internals can change without recompiling (or breaking) the others.
//!
//! Wire formats here are read by consumers of streams that outlive a deployment: a field may
//! be added (optional, or with a serde default), never renamed or removed.

#![warn(missing_docs)]

#[macro_use]
mod named;

pub mod envelope;
pub mod followup;
pub mod interaction;
pub mod lead;
pub mod notifications;
pub mod people;
pub mod qualification;
pub mod time;
pub mod values;

pub use envelope::Envelope;
pub use named::UnknownValue;
pub use values::Refusal;
