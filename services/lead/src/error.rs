use crate::model::Status;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum LeadError {
    #[error("invalid argument {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("lead {0} not found")]
    NotFound(String),
    #[error("lead {id} is inactive: its status is {}", status.display_name())]
    Inactive { id: Uuid, status: Status },
    #[error("lead {id} is at version {actual}, not the expected {expected}")]
    VersionMismatch { id: Uuid, expected: i64, actual: i64 },
    #[error("a concurrent writer got there first")]
    Conflict,
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl LeadError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        LeadError::InvalidArgument { field, reason: reason.into() }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            LeadError::Conflict => true,
            LeadError::Database(error) => platform::db::is_retryable(error),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for LeadError {
    fn from(error: sqlx::Error) -> Self {
        match platform::db::sqlstate(&error).as_deref() {
            Some("40001" | "40P01") => LeadError::Conflict,
            _ => LeadError::Database(error),
        }
    }
}

impl From<LeadError> for tonic::Status {
    fn from(error: LeadError) -> Self {
        match &error {
            LeadError::InvalidArgument { field, reason } => {
                tonic::Status::invalid_argument(format!("{field}: {reason}"))
            }
            LeadError::NotFound(_) => tonic::Status::not_found(error.to_string()),
            LeadError::Inactive { .. } => tonic::Status::failed_precondition(error.to_string()),
            LeadError::VersionMismatch { .. } => tonic::Status::aborted(error.to_string()),
            LeadError::Conflict => tonic::Status::aborted("the lead changed concurrently, retry"),
            LeadError::Database(inner) => {
                tracing::error!(error = %inner, "lead database error");
                tonic::Status::unavailable("the lead store is unavailable, retry later")
            }
        }
    }
}
