//! BroadcastMessage and DeliveryStatus of the contract in their validated form, the status
//! ranks that order a message's progress, and the classes delivery errors fall into.

use chrono::{DateTime, Utc};

pub use contracts::Refusal;

/// Larger payloads are refused before parsing.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// A batch (`broadcasts.<org_id>.statuses.batch`, `.messages.batch`) may be larger: NATS's
/// default largest message.
pub const MAX_BATCH_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Most statuses or messages one batch may carry.
pub const MAX_BATCH_ITEMS: usize = 1_000;
/// Ids, names and titles longer than this are refused.
pub const MAX_SHORT_CHARS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignInfo {
    pub id: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateInfo {
    pub name: String,
    /// Empty when the publisher gave none: still part of the template's key.
    pub language: String,
    pub category: Option<String>,
}

/// One broadcast message sent to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastMessage {
    pub message_id: String,
    pub sent_at: DateTime<Utc>,
    pub campaign: Option<CampaignInfo>,
    pub template: Option<TemplateInfo>,
    /// E.164.
    pub phone: Option<String>,
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusKind {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl StatusKind {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "sent" => StatusKind::Sent,
            "delivered" => StatusKind::Delivered,
            "read" => StatusKind::Read,
            "failed" => StatusKind::Failed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::Sent => "sent",
            StatusKind::Delivered => "delivered",
            StatusKind::Read => "read",
            StatusKind::Failed => "failed",
        }
    }

    /// How far the message got: sent < delivered < read. Failed is not a step forward: it
    /// is kept beside the progress as a flag.
    pub fn rank(self) -> i16 {
        match self {
            StatusKind::Failed => 0,
            StatusKind::Sent => 1,
            StatusKind::Delivered => 2,
            StatusKind::Read => 3,
        }
    }
}

/// The state a message's rank stands for; `failed` when it failed before any progress.
pub fn state_name(rank: i16, failed: bool) -> &'static str {
    match rank {
        3 => "read",
        2 => "delivered",
        1 => "sent",
        _ if failed => "failed",
        _ => "pending",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    pub code: Option<i64>,
    pub title: Option<String>,
}

/// Why a message failed, in the terms a campaign owner acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The number cannot receive the message (not on the platform, unreachable).
    Undeliverable,
    /// The platform's cap on marketing messages per user was reached.
    FrequencyCap,
    /// The user stopped marketing messages from this business.
    OptedOut,
    /// The customer service (re-engagement) window had closed.
    WindowClosed,
    Other,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 5] = [
        ErrorClass::Undeliverable,
        ErrorClass::FrequencyCap,
        ErrorClass::OptedOut,
        ErrorClass::WindowClosed,
        ErrorClass::Other,
    ];

    /// WhatsApp Cloud API error codes; anything unknown is `other`.
    pub fn classify(code: Option<i64>) -> Self {
        match code {
            Some(131026) => ErrorClass::Undeliverable,
            Some(131049) => ErrorClass::FrequencyCap,
            Some(131050) => ErrorClass::OptedOut,
            Some(131047) => ErrorClass::WindowClosed,
            _ => ErrorClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Undeliverable => "undeliverable",
            ErrorClass::FrequencyCap => "frequency_cap",
            ErrorClass::OptedOut => "opted_out",
            ErrorClass::WindowClosed => "window_closed",
            ErrorClass::Other => "other",
        }
    }
}

/// One delivery status of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryStatus {
    pub message_id: String,
    pub status: StatusKind,
    pub at: DateTime<Utc>,
    /// Only on `failed`.
    pub error: Option<DeliveryError>,
}

impl DeliveryStatus {
    /// The class of a failure; `None` for every other status.
    pub fn error_class(&self) -> Option<ErrorClass> {
        (self.status == StatusKind::Failed).then(|| ErrorClass::classify(self.error.as_ref().and_then(|e| e.code)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_fall_into_their_classes() {
        assert_eq!(ErrorClass::classify(Some(131026)), ErrorClass::Undeliverable);
        assert_eq!(ErrorClass::classify(Some(131049)), ErrorClass::FrequencyCap);
        assert_eq!(ErrorClass::classify(Some(131050)), ErrorClass::OptedOut);
        assert_eq!(ErrorClass::classify(Some(131047)), ErrorClass::WindowClosed);
        assert_eq!(ErrorClass::classify(Some(1)), ErrorClass::Other);
        assert_eq!(ErrorClass::classify(None), ErrorClass::Other);
    }

    #[test]
    fn ranks_order_progress_and_name_states() {
        assert!(StatusKind::Sent.rank() < StatusKind::Delivered.rank());
        assert!(StatusKind::Delivered.rank() < StatusKind::Read.rank());
        assert_eq!(state_name(3, true), "read");
        assert_eq!(state_name(0, true), "failed");
        assert_eq!(state_name(0, false), "pending");
    }
}
