//! The service's errors and how callers see them: the field at fault, what was not found,
//! or that the store is unavailable. SQL errors are logged here and never sent to callers.

#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    #[error("invalid argument {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl BroadcastError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        BroadcastError::InvalidArgument { field, reason: reason.into() }
    }

    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        BroadcastError::NotFound { what, id: id.into() }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, BroadcastError::Database(error) if platform::db::is_retryable(error))
    }
}

impl From<BroadcastError> for tonic::Status {
    fn from(error: BroadcastError) -> Self {
        match &error {
            BroadcastError::InvalidArgument { field, reason } => {
                tonic::Status::invalid_argument(format!("{field}: {reason}"))
            }
            BroadcastError::NotFound { .. } => tonic::Status::not_found(error.to_string()),
            BroadcastError::Database(inner) => {
                tracing::error!(error = %inner, "broadcast database error");
                tonic::Status::unavailable("the broadcast store is unavailable, retry later")
            }
        }
    }
}
