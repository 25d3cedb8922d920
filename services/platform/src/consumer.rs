//! The one JetStream consumer loop. It owns ack/nak/term and caps concurrency; handlers see
//! plain deliveries and say what became of each. A message is acknowledged only after the
//! handler returns, which handlers do only after their transaction commits.

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

/// What the loop does with a message once the handler is done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Handled (applied, or refused and recorded): never deliver again.
    Ack,
    /// A passing failure: deliver again after a pause.
    Retry,
    /// Can never succeed and could not be recorded: stop delivering it.
    Term,
}

#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: String,
    pub durable: String,
    pub filter_subject: String,
    /// The service that runs it, for its metrics' `service` label.
    pub service: &'static str,
}

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
        max_deliver: settings.max_deliver,
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
        && current.max_deliver == settings.max_deliver
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
    updated.max_deliver = settings.max_deliver;
    match stream.create_consumer(updated).await {
        Ok(consumer) => {
            tracing::info!(
                consumer = %spec.durable,
                max_ack_pending = settings.max_ack_pending,
                from_max_ack_pending = current.max_ack_pending,
                ack_wait_secs = settings.ack_wait_secs,
                max_deliver = settings.max_deliver,
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
/// once, until `token` is cancelled.
pub async fn sample_pending(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    spec: ConsumerSpec,
    every: Duration,
    token: CancellationToken,
) {
    let (service, durable) = (spec.service, spec.durable);
    loop {
        match consumer.get_info().await {
            Ok(info) => {
                metrics::gauge!(names::CONSUMER_PENDING, "service" => service, "consumer" => durable.clone())
                    .set(info.num_pending as f64);
                metrics::gauge!(names::CONSUMER_ACK_PENDING, "service" => service, "consumer" => durable.clone())
                    .set(info.num_ack_pending as f64);
            }
            Err(error) => tracing::debug!(consumer = %durable, %error, "cannot sample the consumer's backlog"),
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Runs until `token` is cancelled, then finishes and acknowledges the batches in flight.
pub async fn run<H, Fut>(
    client: async_nats::Client,
    js: jetstream::Context,
    spec: ConsumerSpec,
    settings: ConsumerSettings,
    token: CancellationToken,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Vec<Delivery>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Disposition>> + Send + 'static,
{
    let consumer = declare(&js, &spec, &settings).await?;
    let sampler =
        tokio::spawn(sample_pending(consumer.clone(), spec.clone(), crate::service::SAMPLE_EVERY, token.clone()));
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
                tokio::select! {
                    _ = token.cancelled() => break 'outer,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue 'outer,
                }
            }
        };
        let mut messages = Box::pin(messages);
        loop {
            let permit = tokio::select! {
                _ = token.cancelled() => break 'outer,
                permit = permits.clone().acquire_owned() => permit?,
            };
            let batch = tokio::select! {
                _ = token.cancelled() => break 'outer,
                batch = next_batch(&mut messages, &settings, &spec.durable) => batch,
            };
            let Some(batch) = batch else { continue 'outer };
            let handler = handler.clone();
            let span = tracing::info_span!("consume", consumer = %spec.durable, messages = batch.len());
            // A batch continues the trace of its first message; the others are linked by
            // their own traceparent headers, kept in the stream.
            crate::telemetry::set_parent_from_nats(&span, batch[0].headers.as_ref());
            let client = client.clone();
            let labels = (spec.service, spec.durable.clone());
            in_flight.spawn(
                async move {
                    let _permit = permit;
                    handle_batch(client, batch, handler, labels).await;
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

/// The smallest prefetch in bytes: room for the largest message NATS accepts by default.
const MIN_PREFETCH_BYTES: usize = 8 * 1024 * 1024;

/// How long a batch waits for more messages after its first: under load batches fill up
/// (fewer, larger transactions); when idle a message waits at most this long.
const LINGER: Duration = Duration::from_millis(10);

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
    let first = loop {
        match messages.next().await? {
            Ok(message) => break message,
            Err(error) => tracing::warn!(consumer = %durable, %error, "pull error"),
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

async fn handle_batch<H, Fut>(
    client: async_nats::Client,
    batch: Vec<jetstream::Message>,
    handler: H,
    (service, durable): (&'static str, String),
) where
    H: Fn(Vec<Delivery>) -> Fut,
    Fut: Future<Output = Vec<Disposition>>,
{
    // The handler gets the messages' parts moved, not copied: at tens of thousands of
    // messages a second the copies of subjects and header maps showed in the profile. Only
    // the reply subject is kept, to acknowledge with.
    let mut replies = Vec::with_capacity(batch.len());
    let mut deliveries = Vec::with_capacity(batch.len());
    let mut redelivered = 0u64;
    for message in batch {
        let (stream_sequence, delivered) =
            message.info().map(|info| (info.stream_sequence, info.delivered)).unwrap_or((0, 1));
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
    let dispositions = handler(deliveries).await;
    metrics::histogram!(names::CONSUMER_HANDLE_DURATION, "service" => service, "consumer" => durable.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(names::CONSUMER_HANDLED, "service" => service, "consumer" => durable.clone())
        .increment(replies.len() as u64);
    if redelivered > 0 {
        metrics::counter!(names::CONSUMER_REDELIVERED, "service" => service, "consumer" => durable)
            .increment(redelivered);
    }
    for (index, reply) in replies.into_iter().enumerate() {
        let kind = match dispositions.get(index).copied().unwrap_or(Disposition::Retry) {
            Disposition::Ack => AckKind::Ack,
            Disposition::Retry => AckKind::Nak(Some(Duration::from_millis(500))),
            Disposition::Term => AckKind::Term,
        };
        // Messages pulled from a consumer always carry their ack subject as the reply.
        let Some(reply) = reply else { continue };
        if let Err(error) = client.publish(reply.clone(), kind.into()).await {
            tracing::warn!(%error, %reply, "ack failed; the message will be redelivered");
        }
    }
}

/// Decodes each delivery as an internal event envelope and hands the readable ones to
/// `apply` as one batch: all acknowledged when it succeeds, all delivered again when it
/// fails. An unreadable event was written by one of our own services, so it is a bug rather
/// than bad input: it is parked (terminated) and logged instead of retried forever.
pub async fn apply_envelopes<T, E, F, Fut>(batch: Vec<Delivery>, apply: F) -> Vec<Disposition>
where
    T: serde::de::DeserializeOwned,
    E: std::fmt::Display,
    F: FnOnce(Vec<contracts::Envelope<T>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    apply_decoded(
        batch,
        |delivery, items| {
            items.push(contracts::Envelope::<T>::from_json(&delivery.payload)?);
            Ok::<_, serde_json::Error>(())
        },
        apply,
    )
    .await
}

/// Like `apply_envelopes`, for events that carry several items: `decode` appends a
/// delivery's items to the batch's (all of them, or none when it fails).
pub async fn apply_decoded<T, D, DE, E, F, Fut>(batch: Vec<Delivery>, decode: D, apply: F) -> Vec<Disposition>
where
    D: Fn(&Delivery, &mut Vec<T>) -> Result<(), DE>,
    DE: std::fmt::Display,
    E: std::fmt::Display,
    F: FnOnce(Vec<T>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut dispositions = vec![Disposition::Ack; batch.len()];
    let mut items = Vec::with_capacity(batch.len());
    let mut positions = Vec::with_capacity(batch.len());
    for (index, delivery) in batch.iter().enumerate() {
        match decode(delivery, &mut items) {
            Ok(()) => positions.push(index),
            Err(error) => {
                tracing::error!(%error, subject = %delivery.subject, "unreadable internal event, parked");
                dispositions[index] = Disposition::Term;
            }
        }
    }
    if items.is_empty() {
        return dispositions;
    }
    if let Err(error) = apply(items).await {
        tracing::warn!(%error, "event batch failed, will be redelivered");
        for index in positions {
            dispositions[index] = Disposition::Retry;
        }
    }
    dispositions
}
