//! The one JetStream consumer loop. It owns ack/nak/term and caps concurrency; handlers see
//! plain deliveries and say what became of each. A message is acknowledged only after the
//! handler returns, which handlers do only after their transaction commits. Handlers of
//! internal events apply a batch through `apply_decoded` (or `apply_envelopes`), which retries
//! the transaction's transient failures by the one policy (`error::retry_transient`) before a
//! failure becomes a disposition; ingest's and broadcast's handlers, which split a batch into
//! transactions of their own, call that policy around each. Services start consumers with
//! `service::ServiceBase::consumer`.

use crate::settings::ConsumerSettings;
use crate::telemetry::names;
use async_nats::jetstream::{
    self, AckKind,
    consumer::{FromConsumer, pull},
};
use bytes::Bytes;
use futures::StreamExt;
use std::{future::Future, sync::Arc, time::Duration};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// One message as a handler sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    pub headers: Option<async_nats::HeaderMap>,
    /// Position in the stream: a stable identity for the message itself.
    pub stream_sequence: u64,
    /// How many times it has been delivered, 1 the first time.
    pub delivered: i64,
}

/// The messages of one batch, shared so that the loop can hand them to the handler again
/// (held through an outage, or one at a time to find the one that fails).
pub type Batch = Arc<Vec<Delivery>>;

/// What the loop does with a message once the handler is done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Handled (applied, or refused and recorded): never deliver again.
    Ack,
    /// Failed for this reason: delivered again after a pause that grows with each delivery,
    /// alone; after the last delivery allowed it is kept in the service's dead letters.
    Retry(Arc<str>),
    /// A dependency (Postgres) is unreachable: the batch is held, in progress, and handled
    /// again once it answers, without spending a delivery.
    Unavailable(Arc<str>),
    /// Can never succeed (an internal event that does not read): kept in the service's dead
    /// letters with this reason at once, without further deliveries.
    Term(Arc<str>),
}

impl Disposition {
    /// The disposition of every message of a batch whose handling failed with `error`.
    pub fn failed(error: &(impl crate::error::ServiceError + ?Sized)) -> Self {
        let reason: Arc<str> = error.to_string().into();
        if error.code() == tonic::Code::Unavailable {
            Disposition::Unavailable(reason)
        } else {
            Disposition::Retry(reason)
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: String,
    pub durable: String,
    pub filter_subject: String,
    /// The service that runs it, for its metrics' `service` label.
    pub service: &'static str,
}

/// The durable's own delivery limit: none. NATS stops delivering a message after its
/// `max_deliver`-th delivery whether or not a handler ever saw it, so a message prefetched by a
/// process that was killed, dropped while its consumer was held, or whose dead letter could not
/// be written would be abandoned without a trace. The loop enforces `consumer.max_deliver`
/// itself instead: a message that failed in a handler on its last allowed delivery is kept in
/// `dead_letters`, and one that could not be kept is delivered again.
const UNLIMITED_DELIVERIES: i64 = -1;

pub async fn declare(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    settings: &ConsumerSettings,
) -> anyhow::Result<jetstream::consumer::Consumer<pull::Config>> {
    let stream =
        js.get_stream(&spec.stream).await.map_err(|e| anyhow::anyhow!("stream {} is missing: {e}", spec.stream))?;
    let config = pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subject: spec.filter_subject.clone(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait(),
        max_deliver: UNLIMITED_DELIVERIES,
        max_ack_pending: settings.max_ack_pending,
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(&spec.durable, config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot declare consumer {}: {e}", spec.durable))?;
    // An existing durable keeps the configuration it was created with: the settings this
    // process was started with are applied to it (the fields NATS lets a consumer change).
    let current = consumer.cached_info().config.clone();
    if current.max_ack_pending == settings.max_ack_pending
        && current.ack_wait == settings.ack_wait()
        && current.max_deliver == UNLIMITED_DELIVERIES
    {
        return Ok(consumer);
    }
    let mut updated = match pull::Config::try_from_consumer_config(current.clone()) {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(consumer = %spec.durable, %error, "cannot read the consumer's configuration; left as it is");
            return Ok(consumer);
        }
    };
    updated.max_ack_pending = settings.max_ack_pending;
    updated.ack_wait = settings.ack_wait();
    updated.max_deliver = UNLIMITED_DELIVERIES;
    match stream.create_consumer(updated).await {
        Ok(consumer) => {
            tracing::info!(
                consumer = %spec.durable,
                max_ack_pending = settings.max_ack_pending,
                from_max_ack_pending = current.max_ack_pending,
                ack_wait_secs = settings.ack_wait_secs,
                from_max_deliver = current.max_deliver,
                "consumer updated"
            );
            Ok(consumer)
        }
        Err(error) => {
            tracing::warn!(consumer = %spec.durable, %error, "cannot update the consumer; left as it is");
            Ok(consumer)
        }
    }
}

/// Samples the consumer's backlog into `leads_consumer_pending` (and the messages delivered
/// but not acknowledged into `leads_consumer_ack_pending`) every `every`, the first time at
/// once, until `token` is cancelled. A durable found with a delivery limit again (a process of
/// an earlier version started meanwhile, during a rollout or a rollback) is declared again with
/// this process's settings.
pub async fn sample_pending(
    js: jetstream::Context,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    spec: ConsumerSpec,
    settings: ConsumerSettings,
    every: Duration,
    token: CancellationToken,
) {
    let (service, durable) = (spec.service, spec.durable.clone());
    loop {
        match consumer.get_info().await {
            Ok(info) => {
                if info.config.max_deliver != UNLIMITED_DELIVERIES
                    && let Err(error) = declare(&js, &spec, &settings).await
                {
                    tracing::warn!(consumer = %durable, %error, "cannot lift the durable's delivery limit");
                }
                metrics::gauge!(names::CONSUMER_PENDING, "service" => service, "consumer" => durable.clone())
                    .set(info.num_pending as f64);
                metrics::gauge!(names::CONSUMER_ACK_PENDING, "service" => service, "consumer" => durable.clone())
                    .set(info.num_ack_pending as f64);
            }
            Err(error) => tracing::debug!(consumer = %durable, %error, "cannot sample the consumer's backlog"),
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Runs until `token` is cancelled, then finishes and acknowledges the batches in flight.
pub async fn run<H, Fut>(
    client: async_nats::Client,
    js: jetstream::Context,
    spec: ConsumerSpec,
    settings: ConsumerSettings,
    dead_letters: Option<crate::deadletter::DeadLetters>,
    token: CancellationToken,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Batch) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Disposition>> + Send + 'static,
{
    let mut consumer = declare(&js, &spec, &settings).await?;
    // Raised while a batch is held for an unreachable dependency: the loop stops pulling, so
    // prefetched messages are not delivered (and their deliveries spent) again and again.
    let (held_tx, mut held) = tokio::sync::watch::channel(0usize);
    let held_tx = Arc::new(held_tx);
    let sampler = tokio::spawn(sample_pending(
        js.clone(),
        consumer.clone(),
        spec.clone(),
        settings.clone(),
        crate::service::SAMPLE_EVERY,
        token.clone(),
    ));
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let mut in_flight = JoinSet::new();
    tracing::info!(consumer = %spec.durable, stream = %spec.stream, "consumer started");
    // The pull asks for every batch in flight at once (the client asks again when half of it is
    // left): with only one batch prefetched, each batch after the first waited for a refill
    // round trip while the handlers sat idle. Its bytes are bounded too, at least as many as
    // the largest message NATS accepts, so that prefetched batched events stay a few MiB.
    let prefetch = (settings.batch_size * settings.concurrency).max(100);
    let prefetch_bytes = (2 * settings.batch_bytes() * settings.concurrency).max(MIN_PREFETCH_BYTES);
    'outer: while !token.is_cancelled() {
        if *held.borrow() > 0 {
            tokio::select! {
                () = token.cancelled() => break 'outer,
                _ = held.wait_for(|held| *held == 0) => {}
            }
        }
        let messages = match consumer
            .stream()
            .max_messages_per_batch(prefetch)
            .max_bytes_per_batch(prefetch_bytes)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(consumer = %spec.durable, %error, "cannot pull, retrying");
                consumer = recover(&js, &spec, &settings, consumer).await?;
                tokio::select! {
                    () = token.cancelled() => break 'outer,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue 'outer,
                }
            }
        };
        let mut messages = Box::pin(messages);
        loop {
            let permit = tokio::select! {
                () = token.cancelled() => break 'outer,
                permit = permits.clone().acquire_owned() => permit?,
            };
            if *held.borrow() > 0 {
                drop(permit);
                continue 'outer;
            }
            let batch = tokio::select! {
                () = token.cancelled() => break 'outer,
                batch = next_batch(&mut messages, &settings, &spec.durable) => batch,
            };
            let Some(batch) = batch else {
                consumer = recover(&js, &spec, &settings, consumer).await?;
                continue 'outer;
            };
            let handler = handler.clone();
            let span = tracing::info_span!("consume", consumer = %spec.durable, messages = batch.len());
            // A batch continues the trace of its first message and links each other one (its
            // traceparent header, kept in the stream), so every event can be followed.
            crate::telemetry::set_parent_from_nats(&span, batch[0].headers.as_ref());
            for message in batch.iter().skip(1).take(MAX_LINKS) {
                crate::telemetry::link_from_nats(&span, message.headers.as_ref());
            }
            let context = BatchContext {
                client: client.clone(),
                service: spec.service,
                durable: spec.durable.clone(),
                settings: settings.clone(),
                dead_letters: dead_letters.clone(),
                held: held_tx.clone(),
                token: token.clone(),
            };
            in_flight.spawn(
                async move {
                    let _permit = permit;
                    handle_batch(context, batch, handler).await;
                }
                .instrument(span),
            );
            while let Some(done) = in_flight.try_join_next() {
                if let Err(error) = done {
                    tracing::error!(%error, "batch task failed");
                }
            }
        }
    }
    while let Some(done) = in_flight.join_next().await {
        if let Err(error) = done {
            tracing::error!(%error, "batch task failed");
        }
    }
    // Acks are plain publishes: make sure they have left before the process exits.
    let _ = client.flush().await;
    sampler.abort();
    tracing::info!(consumer = %spec.durable, "consumer stopped");
    Ok(())
}

/// After a failed pull: the durable as it is now, declared again when it was deleted. When it
/// cannot be (its stream is gone), the consumer cannot work and its task ends with the error,
/// which stops the process for a supervisor to restart (and the start declares the stream).
async fn recover(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    settings: &ConsumerSettings,
    mut consumer: jetstream::consumer::Consumer<pull::Config>,
) -> anyhow::Result<jetstream::consumer::Consumer<pull::Config>> {
    match consumer.info().await {
        Ok(_) => Ok(consumer),
        Err(error) => {
            use async_nats::jetstream::context::ConsumerInfoErrorKind as Kind;
            // Only an answer that the durable or its stream is gone calls for declaring it
            // again; without NATS nothing can be checked, and the pull is tried as it was.
            if !matches!(error.kind(), Kind::NotFound | Kind::StreamNotFound | Kind::JetStream(_)) {
                return Ok(consumer);
            }
            tracing::warn!(consumer = %spec.durable, %error, "the durable is gone, declaring it again");
            declare(js, spec, settings).await
        }
    }
}

/// Span links a batch span keeps at most (one per message after its first).
const MAX_LINKS: usize = 512;

/// The smallest prefetch in bytes: room for the largest message NATS accepts by default.
const MIN_PREFETCH_BYTES: usize = 8 * 1024 * 1024;

/// How long a batch waits for more messages after its first: under load batches fill up
/// (fewer, larger transactions); when idle a message waits at most this long. At 10 ms a
/// steady stream of a few thousand events a second still came as small batches, each paying
/// its statements and commit.
const LINGER: Duration = Duration::from_millis(30);

/// How long a pull may bring nothing before the loop makes a new one: twice its expiry.
const REPULL_AFTER: Duration = Duration::from_secs(60);

/// The next batch from the pull: it closes at `batch_size` messages, at `batch_bytes` of
/// payload (a message carrying a hundred batched events counts for about a hundred), or
/// `LINGER` after its first message. `None` when the pull has ended.
async fn next_batch<S, E>(
    messages: &mut S,
    settings: &ConsumerSettings,
    durable: &str,
) -> Option<Vec<jetstream::Message>>
where
    S: futures::Stream<Item = Result<jetstream::Message, E>> + Unpin,
    E: std::fmt::Display,
{
    // An error ends this pull; the loop checks its durable and pulls again. So does a pull that
    // has brought nothing for `REPULL_AFTER`: idle, a new pull costs one request, and a pull
    // that stalled without an error cannot hold its consumer for longer than that.
    let first = match tokio::time::timeout(REPULL_AFTER, messages.next()).await {
        Ok(next) => match next? {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(consumer = %durable, %error, "pull error");
                return None;
            }
        },
        Err(_) => {
            tracing::debug!(consumer = %durable, "nothing pulled for a while, pulling anew");
            return None;
        }
    };
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut bytes = first.payload.len();
    let mut batch = vec![first];
    while batch.len() < settings.batch_size && bytes < settings.batch_bytes() {
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Ok(Some(Ok(message))) => {
                bytes += message.payload.len();
                batch.push(message);
            }
            Ok(Some(Err(error))) => tracing::warn!(consumer = %durable, %error, "pull error"),
            // The pull ended (the next call says so) or the batch waited long enough.
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

/// What a batch task needs besides its messages.
struct BatchContext {
    client: async_nats::Client,
    service: &'static str,
    durable: String,
    settings: ConsumerSettings,
    dead_letters: Option<crate::deadletter::DeadLetters>,
    held: Arc<tokio::sync::watch::Sender<usize>>,
    token: CancellationToken,
}

async fn handle_batch<H, Fut>(context: BatchContext, batch: Vec<jetstream::Message>, handler: H)
where
    H: Fn(Batch) -> Fut,
    Fut: Future<Output = Vec<Disposition>>,
{
    let (service, durable) = (context.service, context.durable.clone());
    // The handler gets the messages' parts moved, not copied: at tens of thousands of
    // messages a second the copies of subjects and header maps showed in the profile. Only
    // the reply subject is kept, to acknowledge with.
    let mut replies = Vec::with_capacity(batch.len());
    let mut deliveries = Vec::with_capacity(batch.len());
    let mut redelivered = 0u64;
    for message in batch {
        let (stream_sequence, delivered) = message.info().map_or((0, 1), |info| (info.stream_sequence, info.delivered));
        if delivered > 1 {
            redelivered += 1;
        }
        let message = message.message;
        replies.push(message.reply);
        deliveries.push(Delivery {
            subject: message.subject.to_string(),
            payload: message.payload,
            headers: message.headers,
            stream_sequence,
            delivered,
        });
    }
    let started = std::time::Instant::now();
    // Until every message is answered, the batch is reported in progress: on a loaded machine
    // a batch (with its one-at-a-time pass and its dead letters) can outlast the ack wait, and
    // NATS would hand copies of it to another process meanwhile.
    in_progress(&context, &replies, answer(&context, deliveries, &replies, &handler)).await;
    metrics::histogram!(names::CONSUMER_HANDLE_DURATION, "service" => service, "consumer" => durable.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(names::CONSUMER_HANDLED, "service" => service, "consumer" => durable.clone())
        .increment(replies.len() as u64);
    if redelivered > 0 {
        metrics::counter!(names::CONSUMER_REDELIVERED, "service" => service, "consumer" => durable.clone())
            .increment(redelivered);
    }
}

/// Answers each message of a batch: handled together, then, for the messages that failed, one
/// at a time, so that one failing message does not drag its batch-mates along.
///
/// The durable sets no delivery limit (`UNLIMITED_DELIVERIES`), so a message that stops its
/// process every time (an abort, memory exhausted) would come back forever with its
/// batch-mates. A message delivered more often than its budget is therefore set apart: the
/// rest of the batch is handled and acknowledged first, then each such message alone, and one
/// delivered `unanswered_ceiling` times is kept in the dead letters without being handled.
async fn answer<H, Fut>(
    context: &BatchContext,
    deliveries: Vec<Delivery>,
    replies: &[Option<async_nats::Subject>],
    handler: &H,
) where
    H: Fn(Batch) -> Fut,
    Fut: Future<Output = Vec<Disposition>>,
{
    let isolate_after = isolation_threshold(context.settings.max_deliver);
    let (apart, usual): (Vec<_>, Vec<_>) =
        deliveries.into_iter().zip(replies.iter().cloned()).partition(|(d, _)| d.delivered > isolate_after);
    if !usual.is_empty() {
        let (batch, usual_replies): (Vec<_>, Vec<_>) = usual.into_iter().unzip();
        let batch: Batch = Arc::new(batch);
        let dispositions = handle_alone_on_failure(context, batch.clone(), handler).await;
        acknowledge(context, &batch, &usual_replies, dispositions).await;
    }
    let ceiling = unanswered_ceiling(context.settings.max_deliver);
    for (delivery, reply) in apart {
        let alone: Batch = Arc::new(vec![delivery]);
        let reply = [reply];
        let dispositions = if alone[0].delivered >= ceiling {
            tracing::error!(consumer = %context.durable, delivered = alone[0].delivered, stream_sequence = alone[0].stream_sequence, "a message was never answered");
            let reason =
                format!("delivered {} times without an answer (does it stop its process?)", alone[0].delivered);
            vec![Disposition::Term(reason.into())]
        } else {
            handle_held(context, &alone, handler).await
        };
        acknowledge(context, &alone, &reply, dispositions).await;
    }
}

/// Deliveries after which a message is handled apart from its batch-mates: its budget, or the
/// default budget when failures have no limit.
fn isolation_threshold(max_deliver: i64) -> i64 {
    if max_deliver > 0 { max_deliver } else { crate::settings::ConsumerSettings::default().max_deliver }
}

/// Deliveries after which a message that never got an answer (no handler finished with it) is
/// kept in the dead letters unhandled: well past the budget, because a message can also be
/// delivered again through no fault of its own (a killed process's prefetch, a slow machine).
fn unanswered_ceiling(max_deliver: i64) -> i64 {
    isolation_threshold(max_deliver).saturating_mul(4).max(50)
}

/// Turns each message's disposition into its acknowledgement (keeping the dead letters that
/// fall due) and sends them.
async fn acknowledge(
    context: &BatchContext,
    batch: &Batch,
    replies: &[Option<async_nats::Subject>],
    dispositions: Vec<Disposition>,
) {
    let settings = &context.settings;
    let budget = settings.max_deliver;
    for (index, delivery) in batch.iter().enumerate() {
        let disposition = dispositions.get(index).cloned().unwrap_or_else(|| Disposition::Retry("no answer".into()));
        let kind = match disposition {
            Disposition::Ack => AckKind::Ack,
            Disposition::Retry(reason) if budget > 0 && delivery.delivered >= budget => {
                keep_dead_letter(context, delivery, &reason).await
            }
            Disposition::Retry(_) => AckKind::Nak(Some(settings.retry_delay(delivery.delivered))),
            // Held until shutdown: delivered again soon, by whichever process is still up.
            Disposition::Unavailable(_) => AckKind::Nak(Some(settings.retry_delay(1))),
            Disposition::Term(reason) => keep_dead_letter(context, delivery, &reason).await,
        };
        // Messages pulled from a consumer always carry their ack subject as the reply.
        let Some(reply) = replies.get(index).cloned().flatten() else { continue };
        if let Err(error) = context.client.publish(reply.clone(), kind.into()).await {
            tracing::warn!(%error, %reply, "ack failed; the message will be redelivered");
        }
    }
}

/// The batch handled together; then each message that failed, alone, so that only the messages
/// that fail alone are delivered again.
async fn handle_alone_on_failure<H, Fut>(context: &BatchContext, batch: Batch, handler: &H) -> Vec<Disposition>
where
    H: Fn(Batch) -> Fut,
    Fut: Future<Output = Vec<Disposition>>,
{
    let mut dispositions = handle_held(context, &batch, handler).await;
    dispositions.resize(batch.len(), Disposition::Retry("no answer".into()));
    if batch.len() > 1 && dispositions.iter().any(|d| matches!(d, Disposition::Retry(_))) {
        for index in 0..batch.len() {
            if matches!(dispositions[index], Disposition::Retry(_)) {
                let alone: Batch = Arc::new(vec![batch[index].clone()]);
                let answer = handle_held(context, &alone, handler).await;
                dispositions[index] = answer.into_iter().next().unwrap_or(Disposition::Retry("no answer".into()));
            }
        }
    }
    dispositions
}

/// Keeps a message that will not be handled in the service's dead letters, then acknowledges
/// it. One that cannot be kept (Postgres down) is delivered again rather than lost: the durable
/// sets no delivery limit of its own. Without dead letters (a loop run alone) it is logged and
/// terminated.
async fn keep_dead_letter(context: &BatchContext, delivery: &Delivery, reason: &str) -> AckKind {
    let Some(dead_letters) = &context.dead_letters else {
        tracing::error!(consumer = %context.durable, %reason, "a message not handled, and no dead letters to keep it in");
        return AckKind::Term;
    };
    match dead_letters
        .keep_delivery(&context.durable, &delivery.subject, delivery.stream_sequence, &delivery.payload, reason)
        .await
    {
        Ok(()) => AckKind::Ack,
        Err(error) => {
            tracing::warn!(%error, consumer = %context.durable, "cannot keep a dead letter");
            AckKind::Nak(Some(context.settings.retry_delay(delivery.delivered)))
        }
    }
}

/// Hands `batch` to the handler; while it answers that a dependency is unreachable, stops the
/// loop's pulling and tries again with a growing pause, until the dependency answers or the
/// process stops. The messages stay reported in progress meanwhile (`in_progress`, which
/// wraps every batch), so no delivery is spent. A handler that panics fails its batch like an error, so the batch is retried
/// message by message and the message that panics ends in the dead letters.
async fn handle_held<H, Fut>(context: &BatchContext, batch: &Batch, handler: &H) -> Vec<Disposition>
where
    H: Fn(Batch) -> Fut,
    Fut: Future<Output = Vec<Disposition>>,
{
    use futures::FutureExt;
    let mut pause = Duration::from_millis(250);
    let longest = (context.settings.ack_wait() / 3).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let mut holding: Option<Holding<'_>> = None;
    let dispositions = loop {
        // The handler is called inside the guarded future, so that a panic while it builds its
        // future is caught too.
        let handled = std::panic::AssertUnwindSafe(async { handler(batch.clone()).await }).catch_unwind().await;
        let dispositions = handled.unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(consumer = %context.durable, messages = batch.len(), %reason, "handler panicked");
            vec![Disposition::Retry(format!("the handler panicked: {reason}").into()); batch.len()]
        });
        let unavailable = dispositions.iter().find_map(|d| match d {
            Disposition::Unavailable(reason) => Some(reason.clone()),
            _ => None,
        });
        let Some(reason) = unavailable else { break dispositions };
        if context.token.is_cancelled() {
            break dispositions;
        }
        if holding.is_none() {
            holding = Some(Holding::start(&context.held));
            tracing::warn!(consumer = %context.durable, messages = batch.len(), %reason, "a dependency is unavailable; holding the batch");
        }
        tokio::select! {
            () = context.token.cancelled() => {}
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(longest);
    };
    if holding.take().is_some() {
        tracing::info!(consumer = %context.durable, "the held batch went through");
    }
    dispositions
}

/// Runs `work`, reporting `replies` in progress every third of the ack wait while it runs. The
/// reports run beside the work, never in its way: a report that waits (NATS unreachable) does
/// not stop a transaction that is open. They go on for as long as the consumer holds batches
/// for an unreachable dependency, and otherwise for `MAX_PROGRESS_REPORTS`.
async fn in_progress<T>(
    context: &BatchContext,
    replies: &[Option<async_nats::Subject>],
    work: impl Future<Output = T>,
) -> T {
    let every = (context.settings.ack_wait() / 3).max(Duration::from_millis(250));
    let reporting = async {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut reports = 0;
        while reports < MAX_PROGRESS_REPORTS {
            ticks.tick().await;
            report_progress(context, replies).await;
            if *context.held.borrow() == 0 {
                reports += 1;
            }
        }
        // A handler that hangs does not keep its messages from every other process for good:
        // without reports, their ack wait runs out and NATS delivers them again.
        tracing::warn!(consumer = %context.durable, messages = replies.len(), "a batch is still not answered; no longer reported in progress");
        std::future::pending::<()>().await;
    };
    tokio::select! {
        done = work => done,
        () = reporting => unreachable!("reporting never ends"),
    }
}

/// Progress reports a batch gets while it is handled and nothing is held: ten ack waits' worth.
const MAX_PROGRESS_REPORTS: u32 = 30;

/// Tells NATS that the messages are still being worked on: their ack wait starts again.
async fn report_progress(context: &BatchContext, replies: &[Option<async_nats::Subject>]) {
    for reply in replies.iter().flatten() {
        let _ = context.client.publish(reply.clone(), AckKind::Progress.into()).await;
    }
}

/// A batch counted as held while this lives: dropped, also by a panic or an aborted task, it
/// lets the loop pull again, so a failing batch can never stop its consumer for good.
struct Holding<'a>(&'a tokio::sync::watch::Sender<usize>);

impl<'a> Holding<'a> {
    fn start(held: &'a tokio::sync::watch::Sender<usize>) -> Self {
        held.send_modify(|held| *held += 1);
        Self(held)
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|held| *held = held.saturating_sub(1));
    }
}

/// Decodes each delivery as an internal event envelope and hands the readable ones to
/// `apply` as one batch: all acknowledged when it succeeds, all delivered again when it
/// fails. An unreadable event was written by one of our own services, so it is a bug rather
/// than bad input: it is kept in the dead letters with its error instead of retried.
pub async fn apply_envelopes<T, E, F, Fut>(batch: &[Delivery], apply: F) -> Vec<Disposition>
where
    T: serde::de::DeserializeOwned,
    E: crate::error::ServiceError,
    F: Fn(Arc<[contracts::Envelope<T>]>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    apply_batched_envelopes(batch, &[], apply).await
}

/// `apply_envelopes` for a stream on which the messages of `batch_kinds` (the last token of
/// their subject) each carry an array of envelopes (`Envelope::read_into`): the batch is
/// every envelope of every readable delivery.
pub async fn apply_batched_envelopes<T, E, F, Fut>(
    batch: &[Delivery],
    batch_kinds: &[&str],
    apply: F,
) -> Vec<Disposition>
where
    T: serde::de::DeserializeOwned,
    E: crate::error::ServiceError,
    F: Fn(Arc<[contracts::Envelope<T>]>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let read = |delivery: &Delivery, items: &mut Vec<_>| {
        contracts::Envelope::read_into(&delivery.subject, &delivery.payload, batch_kinds, items)
    };
    apply_decoded(batch, read, apply).await
}

/// Like `apply_envelopes`, for events that carry several items: `decode` appends a
/// delivery's items to the batch's (all of them, or none when it fails).
///
/// `apply` is one whole transaction, called again by the one retry policy
/// (`error::retry_transient`) while it fails with a transient error: a conflict with a
/// concurrent batch is settled here in milliseconds, not by a redelivery. An error that
/// remains becomes the disposition of every message that was read (`Disposition::failed`).
pub async fn apply_decoded<T, D, DE, E, F, Fut>(batch: &[Delivery], decode: D, apply: F) -> Vec<Disposition>
where
    D: Fn(&Delivery, &mut Vec<T>) -> Result<(), DE>,
    DE: std::fmt::Display,
    E: crate::error::ServiceError,
    F: Fn(Arc<[T]>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut dispositions = vec![Disposition::Ack; batch.len()];
    let mut items = Vec::with_capacity(batch.len());
    let mut positions = Vec::with_capacity(batch.len());
    for (index, delivery) in batch.iter().enumerate() {
        match decode(delivery, &mut items) {
            Ok(()) => positions.push(index),
            Err(error) => {
                tracing::error!(%error, subject = %delivery.subject, "unreadable internal event");
                dispositions[index] = Disposition::Term(format!("unreadable: {error}").into());
            }
        }
    }
    if items.is_empty() {
        return dispositions;
    }
    let items: Arc<[T]> = items.into();
    if let Err(error) = crate::error::retry_transient(|| apply(items.clone())).await {
        tracing::warn!(%error, "event batch failed, will be redelivered");
        let failed = Disposition::failed(&error);
        for index in positions {
            dispositions[index] = failed.clone();
        }
    }
    dispositions
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, thiserror::Error)]
    enum Failure {
        #[error("could not serialize access")]
        Conflict,
        #[error("database unreachable")]
        Down,
        #[error("constraint violated")]
        Broken,
    }

    impl crate::error::ServiceError for Failure {
        fn code(&self) -> tonic::Code {
            match self {
                Failure::Conflict => tonic::Code::Aborted,
                Failure::Down => tonic::Code::Unavailable,
                Failure::Broken => tonic::Code::Internal,
            }
        }
    }

    fn deliveries(payloads: &[&str]) -> Vec<Delivery> {
        payloads
            .iter()
            .zip(1..)
            .map(|(payload, sequence)| Delivery {
                subject: "events.test.acme.noted".into(),
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                headers: None,
                stream_sequence: sequence,
                delivered: 1,
            })
            .collect()
    }

    fn read_number(delivery: &Delivery, out: &mut Vec<u32>) -> Result<(), std::num::ParseIntError> {
        out.push(std::str::from_utf8(&delivery.payload).unwrap_or_default().parse()?);
        Ok(())
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_with_the_same_items_and_the_batch_acknowledged() {
        let tries = AtomicU32::new(0);
        let batch = deliveries(&["1", "two", "3"]);
        let dispositions = apply_decoded(&batch, read_number, |items: Arc<[u32]>| {
            let tries = &tries;
            async move {
                assert_eq!(&*items, [1, 3]);
                if tries.fetch_add(1, Ordering::SeqCst) < 2 { Err(Failure::Conflict) } else { Ok(()) }
            }
        })
        .await;
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        assert_eq!(dispositions[0], Disposition::Ack);
        assert!(matches!(&dispositions[1], Disposition::Term(reason) if reason.starts_with("unreadable")));
        assert_eq!(dispositions[2], Disposition::Ack);
    }

    #[tokio::test]
    async fn a_lasting_failure_becomes_the_disposition_of_the_messages_read() {
        let tries = AtomicU32::new(0);
        let batch = deliveries(&["1", "2"]);
        let broken = apply_decoded(&batch, read_number, |_: Arc<[u32]>| {
            tries.fetch_add(1, Ordering::SeqCst);
            async { Err(Failure::Broken) }
        })
        .await;
        assert_eq!(tries.load(Ordering::SeqCst), 1, "a failure that is not transient is not retried");
        assert_eq!(broken, vec![Disposition::Retry("constraint violated".into()); 2]);
        tries.store(0, Ordering::SeqCst);
        let down = apply_decoded(&batch, read_number, |_: Arc<[u32]>| {
            tries.fetch_add(1, Ordering::SeqCst);
            async { Err(Failure::Down) }
        })
        .await;
        assert_eq!(tries.load(Ordering::SeqCst), 8, "every try of the policy");
        assert_eq!(down, vec![Disposition::Unavailable("database unreachable".into()); 2]);
    }
}
