//! The broadcast-tracking service: consumes BroadcastMessages and DeliveryStatuses from
//! `broadcasts.<org_id>.messages|statuses` (JSON or protobuf), keeps each message and each
//! distinct (message, status) once with the message's current state whatever the arrival
//! order, follows the lead service's events to link contacts to leads and count replies,
//! and serves a contact's broadcast history and a campaign's stats over gRPC.

pub mod decode;
pub mod error;
pub mod event;
mod grpc;
pub mod handler;
pub mod projection;
pub mod read;

use crate::{
    event::{MAX_BATCH_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES, Refusal},
    handler::Candidate,
};
use contracts::Envelope;
use contracts::lead::LeadEvent;
use platform::{
    ServiceName,
    consumer::{self, Batch, Delivery, Disposition},
    nats::{Encoding, StreamKind, Subjects},
    service::{Infra, Running, ServiceBase},
};
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/broadcast");

/// The durable consumer of broadcast messages and statuses.
pub const DURABLE: &str = "broadcast-tracking";
/// The durable consumer of the lead service's events.
pub const LEADS_DURABLE: &str = "broadcast-leads";

#[derive(Clone)]
pub struct BroadcastContext {
    pub pool: PgPool,
    pub subjects: Subjects,
    /// Most candidates one transaction applies (`consumer.broadcast_batch_size`).
    pub items_per_transaction: usize,
}

/// Starts both consumers and the gRPC server; they run until `token` fires.
pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let mut base = ServiceBase::start(infra, ServiceName::Broadcast, &MIGRATOR, &token).await?;
    let ctx = BroadcastContext {
        pool: base.pool.clone(),
        subjects: infra.subjects.clone(),
        items_per_transaction: infra.settings.consumer.broadcast_batch_size,
    };
    // Many small events: larger transactions than the other consumers (BENCHMARKS.md).
    base.consumer(StreamKind::Broadcasts, DURABLE).batch_size(infra.settings.consumer.broadcast_batch_size).spawn(
        infra,
        &token,
        ctx.clone(),
        consume_broadcasts,
    );
    let retention = platform::db::prune_until(
        base.pool.clone(),
        ServiceName::Broadcast,
        &[("rejections", "received_at")],
        infra.settings.retention_days,
        token.clone(),
    );
    base.spawn("retention of rejections", retention);
    base.consumer(StreamKind::Events("lead"), LEADS_DURABLE).spawn(infra, &token, ctx.clone(), consume_lead_events);
    let routes = tonic::service::Routes::new(
        leads_proto::v1::broadcast_tracking_service_server::BroadcastTrackingServiceServer::new(grpc::BroadcastApi {
            ctx,
            lead: platform::visibility::lead_client(&infra.settings, ServiceName::Broadcast)?,
        }),
    );
    base.serve(infra, &["leads.v1.BroadcastTrackingService"], routes, token).await
}

async fn consume_broadcasts(ctx: BroadcastContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    let limit = ctx.items_per_transaction.max(1);
    // Batched messages carry up to a thousand candidates each, so candidates are decoded as
    // they are applied, in transactions of about `limit`: memory stays bounded whatever the
    // messages hold, and concurrent transactions that meet on a repeated status wait for each
    // other's commit, which a larger transaction makes longer. Every message is acknowledged
    // once all have committed; a redelivery re-applies what had, which changes nothing.
    let mut candidates = Vec::with_capacity(limit.min(batch.len() * 4));
    for (position, delivery) in batch.iter().enumerate() {
        let first = candidates.len();
        candidates_from_delivery(&ctx.subjects, delivery, &mut candidates);
        log_refusals(&candidates[first..]);
        let last = position + 1 == batch.len();
        if candidates.len() >= limit || (last && !candidates.is_empty()) {
            if let Err(error) = platform::error::retry_transient(|| handler::apply_batch(ctx, &candidates)).await {
                tracing::warn!(%error, "broadcast batch failed, will be redelivered");
                return vec![Disposition::failed(&error); batch.len()];
            }
            candidates.clear();
        }
    }
    vec![Disposition::Ack; batch.len()]
}

/// One line per NATS message, however many of its items were refused.
fn log_refusals(candidates: &[Candidate]) {
    let mut refused = candidates.iter().filter_map(|candidate| match candidate {
        Candidate::Refused { refusal, subject, .. } => Some((refusal, subject)),
        _ => None,
    });
    if let Some((refusal, subject)) = refused.next() {
        let count = 1 + refused.count();
        let reason = contracts::values::redact(&refusal.reason);
        tracing::info!(%subject, field = %refusal.field, %reason, count, "broadcast event refused");
    }
}

/// Which payload a subject carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Messages,
    Statuses,
    MessageBatch,
    StatusBatch,
}

/// Decodes and validates one message into the candidates it carries (a batch carries many);
/// anything wrong becomes a refusal, never a panic.
pub fn candidates_from_delivery(subjects: &Subjects, delivery: &Delivery, out: &mut Vec<Candidate>) {
    let subject = subjects.strip(&delivery.subject).unwrap_or(&delivery.subject);
    let source_key = || format!("js:{}:{}", subjects.prefix(), delivery.stream_sequence);
    let refused = |org_id: &str, message_id: Option<String>, refusal: Refusal| Candidate::Refused {
        org_id: org_id.to_owned(),
        message_id,
        subject: subject.to_owned(),
        refusal,
        payload: delivery.payload.to_vec(),
        source_key: source_key(),
    };
    let parsed = subject.strip_prefix("broadcasts.").and_then(|rest| rest.split_once('.')).and_then(|(org, kind)| {
        let channel = match kind {
            "messages" => Channel::Messages,
            "statuses" => Channel::Statuses,
            "messages.batch" => Channel::MessageBatch,
            "statuses.batch" => Channel::StatusBatch,
            _ => return None,
        };
        contracts::values::validate_org_id(org).is_ok().then_some((org, channel))
    });
    let Some((org_id, channel)) = parsed else {
        let refusal = Refusal::new(
            "subject",
            format!(
                "{subject:?} is not broadcasts.<org_id>.messages or broadcasts.<org_id>.statuses, or one \
                 of them followed by .batch"
            ),
        );
        return out.push(refused("", None, refusal));
    };
    let limit = match channel {
        Channel::MessageBatch | Channel::StatusBatch => MAX_BATCH_PAYLOAD_BYTES,
        Channel::Messages | Channel::Statuses => MAX_PAYLOAD_BYTES,
    };
    if delivery.payload.len() > limit {
        let refusal =
            Refusal::new("payload", format!("is {} bytes, more than the {limit} allowed", delivery.payload.len()));
        return out.push(refused(org_id, None, refusal));
    }
    let encoding = match Encoding::from_headers(delivery.headers.as_ref()) {
        Ok(encoding) => encoding,
        Err(reason) => return out.push(refused(org_id, None, Refusal::new("Content-Type", reason))),
    };
    match channel {
        Channel::Messages => {
            let raw = match encoding {
                Encoding::Json => decode::message_from_json(&delivery.payload),
                Encoding::Protobuf => decode::message_from_protobuf(&delivery.payload),
            };
            let hint = raw.as_ref().ok().and_then(|r| r.message_id.clone());
            out.push(match raw.and_then(decode::validate_message) {
                Ok(message) => Candidate::Message { org_id: org_id.to_owned(), message },
                Err(refusal) => refused(org_id, hint, refusal),
            });
        }
        Channel::Statuses => {
            let raw = match encoding {
                Encoding::Json => decode::status_from_json(&delivery.payload),
                Encoding::Protobuf => decode::status_from_protobuf(&delivery.payload),
            };
            let hint = raw.as_ref().ok().and_then(|r| r.message_id.clone());
            out.push(match raw.and_then(decode::validate_status) {
                Ok(status) => Candidate::Status { org_id: org_id.to_owned(), status },
                Err(refusal) => refused(org_id, hint, refusal),
            });
        }
        Channel::MessageBatch => {
            let items = match encoding {
                Encoding::Json => decode::message_batch_from_json(&delivery.payload),
                Encoding::Protobuf => decode::message_batch_from_protobuf(&delivery.payload),
            };
            match items {
                Ok(items) => push_items(out, items, org_id, subject, &source_key(), |org_id, message| {
                    Candidate::Message { org_id, message }
                }),
                Err(refusal) => out.push(refused(org_id, None, refusal)),
            }
        }
        Channel::StatusBatch => {
            let items = match encoding {
                Encoding::Json => decode::status_batch_from_json(&delivery.payload),
                Encoding::Protobuf => decode::status_batch_from_protobuf(&delivery.payload),
            };
            match items {
                Ok(items) => push_items(out, items, org_id, subject, &source_key(), |org_id, status| {
                    Candidate::Status { org_id, status }
                }),
                Err(refusal) => out.push(refused(org_id, None, refusal)),
            }
        }
    }
}

/// A batch's items as candidates: each good one as `accepted` makes it, each bad one refused
/// under the stream message's key and its index, so a redelivered batch keeps it once.
fn push_items<T>(
    out: &mut Vec<Candidate>,
    items: decode::BatchItems<T>,
    org_id: &str,
    subject: &str,
    source_key: &str,
    accepted: impl Fn(String, T) -> Candidate,
) {
    out.reserve(items.len());
    for (index, item) in items.into_iter().enumerate() {
        out.push(match item {
            Ok(item) => accepted(org_id.to_owned(), item),
            Err(item) => Candidate::Refused {
                org_id: org_id.to_owned(),
                message_id: item.message_id,
                subject: subject.to_owned(),
                refusal: item.refusal,
                payload: item.payload,
                source_key: format!("{source_key}/{index}"),
            },
        });
    }
}

async fn consume_lead_events(ctx: BroadcastContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    consumer::apply_batched_envelopes(
        &batch,
        &contracts::lead::BATCH_KINDS,
        |events: Arc<[Envelope<LeadEvent>]>| async move { projection::apply_batch(ctx, &events).await },
    )
    .await
}
