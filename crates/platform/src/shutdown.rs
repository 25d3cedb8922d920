//! Turns SIGTERM and SIGINT into a cancellation token that every service watches, and runs
//! the services' periodic jobs until it fires.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT.
///
/// The handlers are installed before this returns, not in the task it spawns: a SIGTERM that
/// arrives while the services are still starting must stop them cleanly rather than kill the
/// process with the default action.
pub fn on_signal() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("sigterm received, shutting down"),
            _ = interrupt.recv() => tracing::info!("sigint received, shutting down"),
        }
        trigger.cancel();
    });
    Ok(token)
}

/// Runs `job` every `period`, the first time at once, until `token` fires; a failed run is
/// logged with `what` it was and tried again at the next tick. A run that overruns its period delays
/// the next one rather than bunching them.
pub async fn every<F, Fut, T, E>(
    period: std::time::Duration,
    token: CancellationToken,
    what: &'static str,
    mut job: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(error) = job().await {
            tracing::warn!(job = what, %error, "periodic job failed, retrying at the next tick");
        }
    }
}
