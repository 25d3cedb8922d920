#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error(
        "Someone changed these settings meanwhile: reload to see them (they are at version {actual}, not the expected {expected})"
    )]
    StaleSettings { expected: i64, actual: i64 },
    #[error(
        "Someone changed this endpoint meanwhile: reload to see it (it is at version {actual}, not the expected {expected})"
    )]
    StaleEndpoint { expected: i64, actual: i64 },
    #[error("{0}")]
    PermissionDenied(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl NotificationError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        NotificationError::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

impl platform::error::ServiceError for NotificationError {
    fn code(&self) -> tonic::Code {
        match self {
            NotificationError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            NotificationError::NotFound(_) => tonic::Code::NotFound,
            NotificationError::StaleSettings { .. } | NotificationError::StaleEndpoint { .. } => tonic::Code::Aborted,
            NotificationError::PermissionDenied(_) => tonic::Code::PermissionDenied,
            NotificationError::Internal(_) => tonic::Code::Internal,
            NotificationError::Database(error) => platform::error::sql_code(error),
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, NotificationError::Database(error) if platform::error::is_transient(error))
    }
}

impl From<NotificationError> for tonic::Status {
    fn from(error: NotificationError) -> Self {
        platform::error::to_status("notifications", &error)
    }
}

impl From<contracts::Refusal> for NotificationError {
    fn from(refusal: contracts::Refusal) -> Self {
        NotificationError::InvalidArgument { field: refusal.field, reason: refusal.reason }
    }
}

impl From<platform::org_settings::StaleSettings> for NotificationError {
    fn from(stale: platform::org_settings::StaleSettings) -> Self {
        NotificationError::StaleSettings { expected: stale.expected, actual: stale.actual }
    }
}
