use contracts::lead::LEAD_VERSION_METADATA as LEAD_VERSION_KEY;

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
    /// The lead service left the lead as it is: it is not at the version the caller expected.
    /// Said as the lead service says it, for a person to read.
    #[error(
        "Someone changed this lead meanwhile: reload to see it (lead {lead_id} is at version {actual}, not the expected {expected})"
    )]
    VersionMismatch { lead_id: String, expected: i64, actual: i64 },
    /// The organisation's assignment settings moved on since the caller read them.
    #[error(
        "Someone changed the assignment settings meanwhile: reload to see them (they are at version {actual}, not the expected {expected})"
    )]
    SettingsVersionMismatch { expected: i64, actual: i64 },
    #[error("{0}")]
    Forbidden(String),
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
            AssignmentError::VersionMismatch { .. } | AssignmentError::SettingsVersionMismatch { .. } => {
                tonic::Code::Aborted
            }
            AssignmentError::Forbidden(_) => tonic::Code::PermissionDenied,
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
        // A version answered in words is answered in metadata too, whether this service found
        // it stale or the lead service did.
        let version = match &error {
            AssignmentError::VersionMismatch { actual, .. } => Some((*actual).into()),
            AssignmentError::Lead(platform::grpc::UpstreamError::ForCaller(status)) => {
                status.metadata().get(LEAD_VERSION_KEY).cloned()
            }
            _ => None,
        };
        let mut status = platform::error::to_status("assignment", &error);
        if let Some(version) = version {
            status.metadata_mut().insert(LEAD_VERSION_KEY, version);
        }
        status
    }
}

impl From<contracts::Refusal> for AssignmentError {
    fn from(refusal: contracts::Refusal) -> Self {
        AssignmentError::InvalidArgument { field: refusal.field, reason: refusal.reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version_of(status: &tonic::Status) -> Option<&str> {
        status.metadata().get(LEAD_VERSION_KEY).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn a_stale_version_is_aborted_with_the_current_version_in_words_and_metadata() {
        let error = AssignmentError::VersionMismatch { lead_id: "l-1".into(), expected: 3, actual: 5 };
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert!(status.message().starts_with("Someone changed this lead meanwhile: reload to see it"));
        assert!(status.message().contains("lead l-1 is at version 5, not the expected 3"));
        assert_eq!(version_of(&status), Some("5"));
    }

    #[test]
    fn the_lead_services_version_is_passed_on() {
        let mut upstream = tonic::Status::aborted("lead l-1 is at version 9");
        upstream.metadata_mut().insert(LEAD_VERSION_KEY, 9.into());
        let status = tonic::Status::from(AssignmentError::from(upstream));
        assert_eq!((status.code(), version_of(&status)), (tonic::Code::Aborted, Some("9")));
        let status = tonic::Status::from(AssignmentError::from(tonic::Status::aborted("a conflict")));
        assert_eq!((status.code(), version_of(&status)), (tonic::Code::Aborted, None));
    }
}
