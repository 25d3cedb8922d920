//! The ingest service: consumes InteractionEvents from `interactions.<org_id>` (JSON or
//! protobuf) and from `IngestService.Ingest`, validates them against the contract, keeps
//! each `(org, event_id)` once, and forwards accepted events to the lead service.

pub mod decode;
pub mod event;
mod grpc;
pub mod handler;
pub mod validate;

use crate::handler::{Candidate, Outcome};
use contracts::{Refusal, interaction::MAX_PAYLOAD_BYTES};
use platform::{
    ServiceName,
    consumer::{Batch, Delivery, Disposition},
    nats::{Encoding, StreamKind},
    service::{Infra, Running, ServiceBase},
};
use tokio_util::sync::CancellationToken;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/ingest");

pub const DURABLE: &str = "ingest";

/// What the consumer and the RPCs share.
#[derive(Clone)]
pub struct IngestContext {
    pub pool: sqlx::PgPool,
    pub subjects: platform::nats::Subjects,
    pub outbox: platform::outbox::OutboxSignal,
}

/// Starts the consumer, the outbox relay and the gRPC server; they run until `token` fires.
pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let mut base = ServiceBase::start(infra, ServiceName::Ingest, &MIGRATOR, &token).await?;
    let ctx = IngestContext { pool: base.pool.clone(), subjects: infra.subjects.clone(), outbox: base.outbox.clone() };
    base.consumer(StreamKind::Interactions, DURABLE).spawn(infra, &token, ctx.clone(), consume);
    let retention = platform::db::prune_until(
        base.pool.clone(),
        ServiceName::Ingest,
        &[("accepted_events", "received_at"), ("rejections", "received_at")],
        infra.settings.retention_days,
        token.clone(),
    );
    base.spawn("retention of keys and rejections", retention);
    let routes = tonic::service::Routes::new(
        leads_proto::v1::ingest_service_server::IngestServiceServer::new(grpc::IngestApi { ctx: ctx.clone() })
            .max_decoding_message_size(16 * 1024 * 1024),
    );
    base.serve(infra, &["leads.v1.IngestService"], routes, token).await
}

async fn consume(ctx: IngestContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    let candidates: Vec<Candidate> = batch.iter().map(|d| candidate_from_delivery(ctx, d)).collect();
    match platform::error::retry_transient(|| handler::handle(ctx, &candidates)).await {
        Ok(outcomes) => outcomes
            .iter()
            .map(|outcome| {
                if let Outcome::Rejected(refusal) = outcome {
                    tracing::info!(field = %refusal.field, reason = %contracts::values::redact(&refusal.reason), "event refused");
                }
                Disposition::Ack
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "ingest batch failed, will be redelivered");
            vec![Disposition::failed(&error); batch.len()]
        }
    }
}

/// Decodes and validates one message; anything wrong becomes a refusal, never a panic.
pub fn candidate_from_delivery(ctx: &IngestContext, delivery: &Delivery) -> Candidate {
    let source_key = format!("js:{}:{}", ctx.subjects.prefix(), delivery.stream_sequence);
    let subject = ctx.subjects.strip(&delivery.subject).unwrap_or(&delivery.subject);
    let refused = |org_id: String, event_id: Option<String>, refusal: Refusal| Candidate::Refused {
        org_id,
        event_id,
        subject: subject.to_owned(),
        refusal,
        payload: delivery.payload.to_vec(),
        source_key: source_key.clone(),
    };
    let org_id = match subject.strip_prefix("interactions.") {
        Some(org) if contracts::values::validate_org_id(org).is_ok() => org.to_owned(),
        _ => {
            return refused(
                String::new(),
                None,
                Refusal::new("subject", format!("{subject:?} is not interactions.<org_id> with a valid org_id")),
            );
        }
    };
    if delivery.payload.len() > MAX_PAYLOAD_BYTES {
        let refusal = Refusal::new(
            "payload",
            format!("is {} bytes, more than the {MAX_PAYLOAD_BYTES} allowed", delivery.payload.len()),
        );
        return refused(org_id, None, refusal);
    }
    let raw = match Encoding::from_headers(delivery.headers.as_ref()) {
        Ok(Encoding::Json) => decode::from_json(&delivery.payload),
        Ok(Encoding::Protobuf) => decode::from_protobuf(&delivery.payload),
        Err(reason) => Err(Refusal::new("Content-Type", reason)),
    };
    let event_id_hint = raw.as_ref().ok().and_then(|r| r.event_id.clone());
    match raw.and_then(validate::validate) {
        Ok(interaction) => Candidate::Valid { org_id, interaction: Box::new(interaction) },
        Err(refusal) => refused(org_id, event_id_hint, refusal),
    }
}
