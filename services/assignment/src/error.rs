#[derive(Debug, thiserror::Error)]
pub enum AssignmentError {
    #[error("invalid argument {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("agent {0} not found")]
    AgentNotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The lead service answered that one lead is inactive or unknown; `detail` is its answer.
    #[error("lead {lead_id}: {detail}")]
    LeadInactive { lead_id: String, detail: String },
    #[error("lead {0} not found")]
    LeadNotFound(String),
    #[error("the lead service answered something this service does not understand: {0}")]
    Protocol(String),
    /// What the lead service answered when it refused or failed.
    #[error("lead service: {0}")]
    Lead(#[from] platform::grpc::UpstreamError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl AssignmentError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        AssignmentError::InvalidArgument { field, reason: reason.into() }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, AssignmentError::Database(error) if platform::db::is_retryable(error))
    }
}

impl From<tonic::Status> for AssignmentError {
    fn from(status: tonic::Status) -> Self {
        AssignmentError::Lead(platform::grpc::UpstreamError::from_status("lead", status))
    }
}

impl From<AssignmentError> for tonic::Status {
    fn from(error: AssignmentError) -> Self {
        match error {
            AssignmentError::InvalidArgument { field, reason } => {
                tonic::Status::invalid_argument(format!("{field}: {reason}"))
            }
            AssignmentError::AgentNotFound(_) => tonic::Status::not_found(error.to_string()),
            AssignmentError::LeadInactive { .. } => tonic::Status::failed_precondition(error.to_string()),
            AssignmentError::LeadNotFound(_) => tonic::Status::not_found(error.to_string()),
            AssignmentError::Protocol(detail) => {
                tracing::error!(%detail, "unexpected answer from the lead service");
                tonic::Status::internal("internal error")
            }
            AssignmentError::FailedPrecondition(message) => tonic::Status::failed_precondition(message),
            AssignmentError::Lead(upstream) => upstream.into_status(),
            AssignmentError::Database(inner) => {
                tracing::error!(error = %inner, "assignment database error");
                tonic::Status::unavailable("the assignment store is unavailable, retry later")
            }
        }
    }
}
