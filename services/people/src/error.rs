#[derive(Debug, thiserror::Error)]
pub enum PeopleError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("no person with this email in the organisation")]
    NotFound,
    #[error("a person with this email is already in the organisation")]
    AlreadyExists,
    /// The one answer to an unknown email, a wrong password, a deactivated account and an
    /// account without a password yet: which of them it was is not told.
    #[error("wrong email or password")]
    WrongCredentials,
    /// Too many failed sign-ins: every sign-in is refused, the right password too, until then.
    #[error("too many failed sign-ins: the account is locked for {retry_after_secs} more seconds")]
    Locked { retry_after_secs: i64 },
    #[error("the setup code is not valid: it was used already or never issued")]
    UnknownSetupCode,
    #[error("the setup code has expired: ask an admin to reset the password")]
    ExpiredSetupCode,
    #[error("the sign-in code is not valid: it was used already or never issued")]
    UnknownSignInCode,
    #[error("the sign-in code has expired: ask for a new sign-in link")]
    ExpiredSignInCode,
    #[error("the person is deactivated")]
    Deactivated,
    #[error("the organisation has no OpenID Connect provider")]
    NoOidcProvider,
    #[error("the sign-in state is not valid: it was used already or never issued")]
    UnknownOidcState,
    #[error("the sign-in took too long: start again")]
    ExpiredOidcState,
    /// What the provider answered, or its ID token, does not sign anyone in.
    #[error("the OpenID Connect sign-in is refused: {0}")]
    OidcRefused(String),
    /// The ID token is good, but its email is no active person's of the organisation: signing
    /// in creates no account.
    #[error("no active person of the organisation has this email: ask an admin to add you")]
    NoOidcAccount,
    /// The provider's discovery document does not allow a sign-in as configured.
    #[error("the OpenID Connect provider cannot be used: {0}")]
    OidcConfiguration(String),
    /// The provider did not answer, or answered with a server error.
    #[error("the OpenID Connect provider is unavailable: {0}")]
    OidcUnavailable(String),
    /// What an admin may not do to their own account, lest the organisation lose its admin.
    #[error("{0}")]
    OwnAccount(&'static str),
    #[error("sign-in is not available: no auth.signing_key_file to sign tokens with")]
    NoSigningKey,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl PeopleError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        PeopleError::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        PeopleError::Internal(detail.into())
    }
}

impl platform::error::ServiceError for PeopleError {
    fn code(&self) -> tonic::Code {
        match self {
            PeopleError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            PeopleError::NotFound => tonic::Code::NotFound,
            PeopleError::AlreadyExists => tonic::Code::AlreadyExists,
            PeopleError::WrongCredentials
            | PeopleError::UnknownSetupCode
            | PeopleError::ExpiredSetupCode
            | PeopleError::UnknownSignInCode
            | PeopleError::ExpiredSignInCode
            | PeopleError::UnknownOidcState
            | PeopleError::ExpiredOidcState
            | PeopleError::OidcRefused(_)
            | PeopleError::NoOidcAccount => tonic::Code::Unauthenticated,
            PeopleError::Locked { .. } => tonic::Code::ResourceExhausted,
            PeopleError::Deactivated
            | PeopleError::OwnAccount(_)
            | PeopleError::NoSigningKey
            | PeopleError::NoOidcProvider
            | PeopleError::OidcConfiguration(_) => tonic::Code::FailedPrecondition,
            PeopleError::OidcUnavailable(_) => tonic::Code::Unavailable,
            PeopleError::Internal(_) => tonic::Code::Internal,
            PeopleError::Database(error) => platform::error::sql_code(error),
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, PeopleError::Database(error) if platform::error::is_transient(error))
    }
}

impl From<PeopleError> for tonic::Status {
    fn from(error: PeopleError) -> Self {
        match error {
            // The common table answers RESOURCE_EXHAUSTED with a fixed text and logs it as an
            // outage; a lockout is neither, and its caller needs to know when to try again.
            PeopleError::Locked { .. } => tonic::Status::resource_exhausted(error.to_string()),
            // Not an outage of this service: the caller (and whoever configured the provider)
            // needs to know it is the provider.
            PeopleError::OidcUnavailable(_) => {
                tracing::warn!(%error, "openid connect provider unavailable");
                tonic::Status::unavailable(error.to_string())
            }
            error => platform::error::to_status("people", &error),
        }
    }
}

impl From<contracts::Refusal> for PeopleError {
    fn from(refusal: contracts::Refusal) -> Self {
        PeopleError::InvalidArgument { field: refusal.field, reason: refusal.reason }
    }
}
