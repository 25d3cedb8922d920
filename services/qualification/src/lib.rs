//! The qualification service: scores every active lead 0-100 from its conversation, whenever
//! the lead service reports a new interaction, with the built-in multilingual prior or, once
//! an organisation has enough outcomes, a model learned from them (`training`). Each score
//! carries its factors, readable by a person. Operators run as many qualification processes
//! as they like (`leads run --services qualification`): they share one durable consumer. A
//! score set by hand on the lead wins over the engine until it is handed back. Optionally a
//! language model behind an OpenAI-compatible endpoint scores in the engine's place (`llm`),
//! the engine's score standing in whenever it does not answer.
//!
//! The scoring model itself, pure and without I/O, is the `qualification_model` crate; this
//! crate holds storage, consumers and RPCs. Its modules depend on one another in one direction:
//! `engine` (decisions, `Scoring`) <- `llm` <- `handler`, `training`, `rescoring` <- `grpc`, all
//! of them sharing the service context below. A new model rescores an organisation's active
//! leads in the background, and leads whose recency moved enough are scored again on a
//! schedule (`rescoring`).

pub mod engine;
pub mod error;
mod grpc;
pub mod handler;
pub mod llm;
pub mod rescoring;
pub mod training;

use contracts::Envelope;
use contracts::lead::LeadEvent;
use platform::{
    ServiceName,
    consumer::{self, Batch, Disposition},
    nats::StreamKind,
    service::{Infra, Running, ServiceBase},
};
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the service's consumers, RPCs and retrainer share.
#[derive(Clone)]
pub struct QualificationContext {
    pub pool: PgPool,
    pub subjects: platform::nats::Subjects,
    pub outbox: platform::outbox::OutboxSignal,
    pub models: training::Models,
    pub settings: platform::settings::QualificationSettings,
    /// Scores in place of the built-in scorer where it answers (`qualification.llm_url`).
    pub llm: Option<Arc<llm::LlmScorer>>,
    /// The lead service, the one authority on a lead's status and its conversation's text.
    pub lead: platform::visibility::LeadClient,
    /// How fast this process rescores leads without a new message (`rescoring`).
    pub pace: Arc<rescoring::Pace>,
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/qualification");

/// The durable consumer of the lead service's events, shared by every qualification process.
pub const DURABLE: &str = "qualification";

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let mut base = ServiceBase::start(infra, ServiceName::Qualification, &MIGRATOR, &token).await?;
    let ctx = QualificationContext {
        pool: base.pool.clone(),
        subjects: infra.subjects.clone(),
        outbox: base.outbox.clone(),
        models: training::Models::default(),
        settings: infra.settings.qualification.clone(),
        llm: llm::LlmScorer::from_settings(&infra.settings.qualification)?.map(std::sync::Arc::new),
        lead: platform::visibility::lead_client(&infra.settings, ServiceName::Qualification)?,
        pace: Arc::new(rescoring::Pace::new(infra.settings.qualification.rescore_per_second)),
    };
    base.spawn("retrainer", training::retrain_until(ctx.clone(), token.clone()));
    base.spawn("rescorer", rescoring::rescore_until(ctx.clone(), token.clone()));
    base.spawn("refresher", rescoring::refresh_until(ctx.clone(), token.clone()));
    base.consumer(StreamKind::Events("lead"), DURABLE).spawn(infra, &token, ctx.clone(), consume);
    let routes = tonic::service::Routes::new(
        leads_proto::v1::qualification_service_server::QualificationServiceServer::new(grpc::QualificationApi { ctx }),
    );
    base.serve(infra, &["leads.v1.QualificationService"], routes, token).await
}

async fn consume(ctx: QualificationContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    let asked = handler::Asked::new();
    let asked = &asked;
    consumer::apply_batched_envelopes(
        &batch,
        &contracts::lead::BATCH_KINDS,
        |events: Arc<[Envelope<LeadEvent>]>| async move { handler::apply_lead_events(ctx, &events, asked).await },
    )
    .await
}
