use contracts::lead::Status;
use uuid::Uuid;

pub use contracts::lead::LEAD_VERSION_METADATA as LEAD_VERSION_KEY;

#[derive(Debug, thiserror::Error)]
pub enum LeadError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("lead {0} not found")]
    NotFound(String),
    /// What the caller's role may not do, said in words.
    #[error("{0}")]
    Forbidden(String),
    #[error("lead {id} is inactive: its status is {}", status.display_name())]
    Inactive { id: Uuid, status: Status },
    /// Said so that a person reads what to do (the console shows the message as it is).
    #[error(
        "Someone changed this lead meanwhile: reload to see it (lead {id} is at version {actual}, not the expected {expected})"
    )]
    VersionMismatch { id: Uuid, expected: i64, actual: i64 },
    /// Said so that a person reads what to do, like a lead's.
    #[error(
        "Someone changed these settings meanwhile: reload to see them (they are at version {actual}, not the expected {expected})"
    )]
    SettingsVersionMismatch { expected: i64, actual: i64 },
    #[error("a concurrent writer got there first")]
    Conflict,
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A stored value this version cannot read, such as an unknown status.
    #[error("unreadable stored value: {0}")]
    Unreadable(String),
    #[error(
        "{limit} exports are already running, the limit (database.export_max_connections): try again when one ends"
    )]
    ExportLimit { limit: u32 },
}

impl LeadError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        LeadError::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

impl From<contracts::UnknownValue> for LeadError {
    fn from(error: contracts::UnknownValue) -> Self {
        LeadError::Unreadable(error.to_string())
    }
}

impl From<sqlx::Error> for LeadError {
    fn from(error: sqlx::Error) -> Self {
        match platform::error::sqlstate(&error).as_deref() {
            Some("40001" | "40P01") => LeadError::Conflict,
            _ => LeadError::Database(error),
        }
    }
}

impl platform::error::ServiceError for LeadError {
    fn code(&self) -> tonic::Code {
        match self {
            LeadError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            LeadError::NotFound(_) => tonic::Code::NotFound,
            LeadError::Forbidden(_) => tonic::Code::PermissionDenied,
            LeadError::Inactive { .. } => tonic::Code::FailedPrecondition,
            LeadError::VersionMismatch { .. } | LeadError::SettingsVersionMismatch { .. } | LeadError::Conflict => {
                tonic::Code::Aborted
            }
            LeadError::Database(error) => platform::error::sql_code(error),
            LeadError::Unreadable(_) => tonic::Code::Internal,
            LeadError::ExportLimit { .. } => tonic::Code::ResourceExhausted,
        }
    }

    /// A conflict with a concurrent writer is worth another try; a version mismatch, though
    /// also `Aborted`, is the caller's to settle.
    fn is_transient(&self) -> bool {
        match self {
            LeadError::Conflict => true,
            LeadError::Database(error) => platform::error::is_transient(error),
            _ => false,
        }
    }
}

impl From<LeadError> for tonic::Status {
    fn from(error: LeadError) -> Self {
        match error {
            // A limit the caller waits out, not an outage: it is told which limit.
            LeadError::ExportLimit { .. } => tonic::Status::resource_exhausted(error.to_string()),
            LeadError::VersionMismatch { actual, .. } => {
                let mut status = platform::error::to_status("lead", &error);
                status.metadata_mut().insert(LEAD_VERSION_KEY, actual.into());
                status
            }
            _ => platform::error::to_status("lead", &error),
        }
    }
}

impl From<contracts::Refusal> for LeadError {
    fn from(refusal: contracts::Refusal) -> Self {
        LeadError::InvalidArgument { field: refusal.field, reason: refusal.reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_version_is_aborted_with_the_current_version_in_words_and_metadata() {
        let id = Uuid::nil();
        let status = tonic::Status::from(LeadError::VersionMismatch { id, expected: 3, actual: 5 });
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert!(status.message().starts_with("Someone changed this lead meanwhile: reload to see it"));
        assert!(status.message().contains(&format!("lead {id} is at version 5, not the expected 3")));
        let version = status.metadata().get(LEAD_VERSION_KEY).and_then(|v| v.to_str().ok());
        assert_eq!(version, Some("5"));
    }
}
