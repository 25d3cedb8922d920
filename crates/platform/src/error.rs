//! One table from every service's errors to what callers see. Each service keeps its own
//! `thiserror` enum and says, per variant, which gRPC code it is (`ServiceError::code`); this
//! module turns that into a `tonic::Status`, logging the detail of internal and unavailable
//! errors once and never sending it. Database errors are classed here by SQLSTATE, and
//! transient ones are retried by one policy (`retry_transient`), which the consumer loop applies
//! to every handler's transaction (`consumer::apply_decoded`).

use std::time::Duration;
use tonic::Code;

/// An error a service answers with.
pub trait ServiceError: std::error::Error {
    /// What the error is to a caller. `Internal` and `Unavailable` carry no detail out.
    fn code(&self) -> Code;

    /// Whether running the whole transaction again may succeed. By default what its code says:
    /// an aborted transaction (serialization failure, deadlock) or an unavailable dependency.
    /// An enum that wraps `sqlx::Error` answers with `is_transient` for it, which also counts
    /// a unique violation raced by a concurrent writer.
    fn is_transient(&self) -> bool {
        matches!(self.code(), Code::Aborted | Code::Unavailable)
    }
}

/// The status a caller sees for `error` of `service`: the error's own text for codes about
/// the request (invalid argument, not found, failed precondition, aborted...), a fixed text
/// for `Internal` and `Unavailable`, whose detail is logged here.
pub fn to_status(service: &str, error: &(impl ServiceError + ?Sized)) -> tonic::Status {
    let code = error.code();
    match code {
        Code::Internal | Code::Unknown | Code::DataLoss => {
            tracing::error!(%service, %error, "internal error");
            tonic::Status::new(code, "internal error")
        }
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
            tracing::error!(%service, %error, "service unavailable");
            tonic::Status::new(code, format!("the {service} service is unavailable, retry later"))
        }
        _ => tonic::Status::new(code, error.to_string()),
    }
}

/// A Postgres error's code for callers, by SQLSTATE class: a serialization failure or
/// deadlock is `Aborted` (retrying may succeed); a lost connection, an exhausted pool, a
/// server shutting down or a statement timeout is `Unavailable`; everything else (a
/// constraint violated, a type mismatch, a missing table) is a fault of ours: `Internal`.
pub fn sql_code(error: &sqlx::Error) -> Code {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            Code::Unavailable
        }
        sqlx::Error::WorkerCrashed => Code::Unavailable,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("40001" | "40P01") => Code::Aborted,
            Some(state)
                if state.starts_with("08")
                    || state.starts_with("53")
                    || matches!(state, "57P01" | "57P02" | "57P03" | "57014" | "55P03") =>
            {
                Code::Unavailable
            }
            _ => Code::Internal,
        },
        _ => Code::Internal,
    }
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(std::borrow::Cow::into_owned),
        _ => None,
    }
}

/// Whether running the whole transaction again may succeed: a serialization failure,
/// deadlock or unavailable server (`sql_code`), or a unique violation raced by a concurrent
/// writer (the next try reads the winner's row).
pub fn is_transient(error: &sqlx::Error) -> bool {
    matches!(sql_code(error), Code::Aborted | Code::Unavailable) || sqlstate(error).as_deref() == Some("23505")
}

/// The retry policy for transient database errors: exponential backoff with jitter from 5 ms,
/// at most 200 ms between tries, 8 tries in all (about a second), then the error stands and
/// the consumer's redelivery (or the caller) takes over.
pub fn backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(200))
        .with_max_times(7)
        .with_jitter()
}

/// Runs `attempt` (a whole transaction) again, by `backoff`, while it fails with a transient
/// error (`ServiceError::is_transient`); then hands back its result. The one place transient
/// failures are retried: the consumer loop's handlers (`consumer::apply_decoded`) and the gRPC
/// calls that apply a batch the same way go through it.
pub async fn retry_transient<T, E, F, Fut>(attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: ServiceError,
{
    use backon::Retryable;
    attempt
        .retry(backoff())
        .when(E::is_transient)
        .notify(|error, after| tracing::debug!(%error, ?after, "retrying a transaction"))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Sample {
        #[error("lead 7 not found")]
        NotFound,
        #[error("connection to 10.0.0.9 refused")]
        Down,
        #[error("constraint leads_pkey violated")]
        Broken,
    }

    impl ServiceError for Sample {
        fn code(&self) -> Code {
            match self {
                Sample::NotFound => Code::NotFound,
                Sample::Down => Code::Unavailable,
                Sample::Broken => Code::Internal,
            }
        }
    }

    #[test]
    fn callers_see_request_errors_but_never_internal_detail() {
        let status = to_status("lead", &Sample::NotFound);
        assert_eq!((status.code(), status.message()), (Code::NotFound, "lead 7 not found"));
        let status = to_status("lead", &Sample::Down);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.0.0.9"), "{}", status.message());
        let status = to_status("lead", &Sample::Broken);
        assert_eq!((status.code(), status.message()), (Code::Internal, "internal error"));
    }

    #[test]
    fn sql_errors_outside_the_database_are_classed() {
        assert_eq!(sql_code(&sqlx::Error::PoolTimedOut), Code::Unavailable);
        assert_eq!(sql_code(&sqlx::Error::RowNotFound), Code::Internal);
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn aborted_and_unavailable_errors_are_transient_by_default() {
        assert!(Sample::Down.is_transient());
        assert!(!Sample::NotFound.is_transient());
        assert!(!Sample::Broken.is_transient());
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_others_are_not() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let result = retry_transient(|| async {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < 3 { Err(Sample::Down) } else { Ok(n) }
        })
        .await;
        assert_eq!(result.ok(), Some(3));
        tries.store(0, std::sync::atomic::Ordering::SeqCst);
        let result: Result<u32, Sample> = retry_transient(|| async {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(Sample::Broken)
        })
        .await;
        assert!(matches!(result, Err(Sample::Broken)));
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
