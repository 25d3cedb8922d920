//! The qualification service: scores every active lead 0-100 from its conversation, whenever
//! the lead service reports a new interaction, with the built-in multilingual prior or, once
//! an organisation has enough outcomes, a model learned from them (`training`). Each score
//! carries its factors, readable by a person. Operators run as many qualification processes
//! as they like (`leads run --services qualification`): they share one durable consumer. A
//! score set by hand on the lead wins over the engine until it is handed back. Optionally a
//! language model behind an OpenAI-compatible endpoint scores in the engine's place (`llm`),
//! the engine's score standing in whenever it does not answer.

pub mod engine;
pub mod error;
mod grpc;
pub mod handler;
pub mod llm;
pub mod model;
pub mod training;

use crate::handler::QualificationContext;
use contracts::Envelope;
use contracts::lead::LeadEvent;
use platform::{
    ServiceName,
    consumer::{self, Batch, Delivery, Disposition},
    nats::StreamKind,
    service::{Infra, Running, ServiceBase},
};
use tokio_util::sync::CancellationToken;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/qualification");

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let mut base = ServiceBase::start(infra, ServiceName::Qualification, &MIGRATOR, &token).await?;
    let ctx = QualificationContext {
        pool: base.pool.clone(),
        subjects: infra.subjects.clone(),
        outbox: base.outbox.clone(),
        models: training::Models::default(),
        settings: infra.settings.qualification.clone(),
        llm: llm::LlmScorer::from_settings(&infra.settings.qualification)?.map(std::sync::Arc::new),
    };
    base.spawn("retrainer", training::retrain_until(ctx.clone(), token.clone()));
    base.spawn_consumer(infra, StreamKind::Events("lead"), "qualification", &token, ctx.clone(), consume);
    let routes = tonic::service::Routes::new(
        leads_proto::v1::qualification_service_server::QualificationServiceServer::new(grpc::QualificationApi { ctx }),
    );
    base.serve(infra, &["leads.v1.QualificationService"], routes, token).await
}

async fn consume(ctx: QualificationContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    let read = |d: &Delivery, out: &mut Vec<_>| contracts::lead::read_lead_events(&d.subject, &d.payload, out);
    consumer::apply_decoded(&batch, read, |events: Vec<Envelope<LeadEvent>>| async move {
        handler::apply_lead_events(ctx, &events).await
    })
    .await
}
