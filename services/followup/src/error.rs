use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum FollowUpError {
    #[error("invalid argument {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("follow-up {0} not found")]
    NotFound(String),
    #[error("follow-up {id} is already {state}")]
    Closed { id: Uuid, state: String },
    /// What the lead service answered when it refused or failed.
    #[error("lead service: {0}")]
    Lead(#[from] platform::grpc::UpstreamError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl FollowUpError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        FollowUpError::InvalidArgument { field, reason: reason.into() }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        FollowUpError::Internal(detail.into())
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, FollowUpError::Database(error) if platform::db::is_retryable(error))
    }
}

impl From<tonic::Status> for FollowUpError {
    fn from(status: tonic::Status) -> Self {
        FollowUpError::Lead(platform::grpc::UpstreamError::from_status("lead", status))
    }
}

impl From<FollowUpError> for tonic::Status {
    fn from(error: FollowUpError) -> Self {
        match error {
            FollowUpError::InvalidArgument { field, reason } => {
                tonic::Status::invalid_argument(format!("{field}: {reason}"))
            }
            FollowUpError::NotFound(_) => tonic::Status::not_found(error.to_string()),
            FollowUpError::Closed { .. } => tonic::Status::failed_precondition(error.to_string()),
            FollowUpError::Lead(upstream) => upstream.into_status(),
            FollowUpError::Internal(detail) => {
                tracing::error!(%detail, "follow-up internal error");
                tonic::Status::internal("internal error")
            }
            FollowUpError::Database(inner) => {
                tracing::error!(error = %inner, "follow-up database error");
                tonic::Status::unavailable("the follow-up store is unavailable, retry later")
            }
        }
    }
}
