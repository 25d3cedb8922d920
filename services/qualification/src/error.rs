//! The service's errors and what callers see of them (`platform::error`).

#[derive(Debug, thiserror::Error)]
pub enum QualificationError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("lead {0} has not been qualified")]
    NotFound(String),
    #[error("lead {0} is inactive: its score no longer changes")]
    Inactive(String),
    /// The lead service, the one authority on a lead's status, says the lead is inactive.
    #[error("lead {lead_id} is inactive: its status is {status}")]
    LeadInactive { lead_id: String, status: String },
    /// What the lead service answered when it refused or failed.
    #[error("lead service: {0}")]
    Lead(#[from] platform::grpc::UpstreamError),
    /// Training refused: too few outcomes of one kind.
    #[error("{0}")]
    NotTrainable(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored model or feature set this version cannot read.
    #[error("unreadable stored value: {0}")]
    Unreadable(String),
}

impl QualificationError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        QualificationError::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

impl From<contracts::Refusal> for QualificationError {
    fn from(refusal: contracts::Refusal) -> Self {
        QualificationError::InvalidArgument { field: refusal.field, reason: refusal.reason }
    }
}

impl From<tonic::Status> for QualificationError {
    fn from(status: tonic::Status) -> Self {
        QualificationError::Lead(platform::grpc::UpstreamError::from_status("lead", status))
    }
}

impl platform::error::ServiceError for QualificationError {
    fn code(&self) -> tonic::Code {
        match self {
            QualificationError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            QualificationError::NotFound(_) => tonic::Code::NotFound,
            QualificationError::Inactive(_)
            | QualificationError::LeadInactive { .. }
            | QualificationError::NotTrainable(_) => tonic::Code::FailedPrecondition,
            QualificationError::Lead(upstream) => upstream.code(),
            QualificationError::Database(error) => platform::error::sql_code(error),
            QualificationError::Unreadable(_) => tonic::Code::Internal,
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, QualificationError::Database(error) if platform::error::is_transient(error))
    }
}

impl From<QualificationError> for tonic::Status {
    fn from(error: QualificationError) -> Self {
        platform::error::to_status("qualification", &error)
    }
}
