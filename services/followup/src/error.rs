use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum FollowUpError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("follow-up {0} not found")]
    NotFound(String),
    #[error("follow-up {id} is already {state}")]
    Closed { id: Uuid, state: String },
    /// Said so that a person reads what to do, like a lead's.
    #[error(
        "Someone changed this follow-up meanwhile: reload to see it (follow-up {id} is at version {actual}, not the expected {expected})"
    )]
    VersionMismatch { id: Uuid, expected: i64, actual: i64 },
    /// The agent the request names is not one of the organisation's.
    #[error("agent_id: unknown agent {0}")]
    UnknownAgent(String),
    /// The agent the request names has been deactivated.
    #[error("agent {0} is inactive")]
    InactiveAgent(String),
    /// The agent the lead is assigned to, whom a follow-up naming none goes to, is not one of
    /// the organisation's.
    #[error("the lead's agent {0} is unknown: assign the lead to an active agent first")]
    UnknownLeadAgent(String),
    /// The agent the lead is assigned to, whom a follow-up naming none goes to, has been
    /// deactivated.
    #[error("agent {0} is inactive: assign the lead to an active agent first")]
    InactiveLeadAgent(String),
    /// What the lead service answered when it refused or failed.
    #[error("lead service: {0}")]
    Lead(#[from] platform::grpc::UpstreamError),
    /// What the assignment service answered when it failed.
    #[error("assignment service: {0}")]
    Assignment(platform::grpc::UpstreamError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl FollowUpError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FollowUpError::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        FollowUpError::Internal(detail.into())
    }
}

impl From<tonic::Status> for FollowUpError {
    fn from(status: tonic::Status) -> Self {
        FollowUpError::Lead(platform::grpc::UpstreamError::from_status("lead", status))
    }
}

impl platform::error::ServiceError for FollowUpError {
    fn code(&self) -> tonic::Code {
        match self {
            FollowUpError::InvalidArgument { .. } | FollowUpError::UnknownAgent(_) => tonic::Code::InvalidArgument,
            FollowUpError::NotFound(_) => tonic::Code::NotFound,
            FollowUpError::VersionMismatch { .. } => tonic::Code::Aborted,
            FollowUpError::Closed { .. }
            | FollowUpError::InactiveAgent(_)
            | FollowUpError::UnknownLeadAgent(_)
            | FollowUpError::InactiveLeadAgent(_) => tonic::Code::FailedPrecondition,
            FollowUpError::Lead(upstream) | FollowUpError::Assignment(upstream) => upstream.code(),
            FollowUpError::Internal(_) => tonic::Code::Internal,
            FollowUpError::Database(error) => platform::error::sql_code(error),
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, FollowUpError::Database(error) if platform::error::is_transient(error))
    }
}

impl From<FollowUpError> for tonic::Status {
    fn from(error: FollowUpError) -> Self {
        platform::error::to_status("follow-up", &error)
    }
}

impl From<contracts::Refusal> for FollowUpError {
    fn from(refusal: contracts::Refusal) -> Self {
        FollowUpError::InvalidArgument { field: refusal.field, reason: refusal.reason }
    }
}
