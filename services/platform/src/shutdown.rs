//! Turns SIGTERM and SIGINT into a cancellation token that every service watches.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for sigterm");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = terminate => tracing::info!("sigterm received, shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("sigint received, shutting down"),
        }
        trigger.cancel();
    });
    token
}
