//! The service's errors and how callers see them: the field at fault, what was not found,
//! or that the store is unavailable. SQL errors are logged here and never sent to callers.

#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl BroadcastError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        BroadcastError::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        BroadcastError::NotFound { what, id: id.into() }
    }
}

impl platform::error::ServiceError for BroadcastError {
    fn code(&self) -> tonic::Code {
        match self {
            BroadcastError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            BroadcastError::NotFound { .. } => tonic::Code::NotFound,
            BroadcastError::Database(error) => platform::error::sql_code(error),
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, BroadcastError::Database(error) if platform::error::is_transient(error))
    }
}

impl From<BroadcastError> for tonic::Status {
    fn from(error: BroadcastError) -> Self {
        platform::error::to_status("broadcast", &error)
    }
}

impl From<contracts::Refusal> for BroadcastError {
    fn from(refusal: contracts::Refusal) -> Self {
        BroadcastError::InvalidArgument { field: refusal.field, reason: refusal.reason }
    }
}
