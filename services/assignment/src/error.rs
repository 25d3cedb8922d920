#[derive(Debug, thiserror::Error)]
pub enum AssignmentError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
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
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AssignmentError::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

impl From<tonic::Status> for AssignmentError {
    fn from(status: tonic::Status) -> Self {
        AssignmentError::Lead(platform::grpc::UpstreamError::from_status("lead", status))
    }
}

impl platform::error::ServiceError for AssignmentError {
    fn code(&self) -> tonic::Code {
        match self {
            AssignmentError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            AssignmentError::AgentNotFound(_) | AssignmentError::LeadNotFound(_) => tonic::Code::NotFound,
            AssignmentError::FailedPrecondition(_) | AssignmentError::LeadInactive { .. } => {
                tonic::Code::FailedPrecondition
            }
            AssignmentError::Protocol(_) => tonic::Code::Internal,
            AssignmentError::Lead(upstream) => upstream.code(),
            AssignmentError::Database(error) => platform::error::sql_code(error),
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, AssignmentError::Database(error) if platform::error::is_transient(error))
    }
}

impl From<AssignmentError> for tonic::Status {
    fn from(error: AssignmentError) -> Self {
        platform::error::to_status("assignment", &error)
    }
}

impl From<contracts::Refusal> for AssignmentError {
    fn from(refusal: contracts::Refusal) -> Self {
        AssignmentError::InvalidArgument { field: refusal.field, reason: refusal.reason }
    }
}
