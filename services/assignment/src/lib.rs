//! The assignment service: the organisation's agents, and assignments of leads to them.
//! The lead service decides (under the lead's lock) whether a lead can be assigned, since
//! only it knows whether the lead is active; this service checks the agent, asks, and keeps
//! the assignment history and each agent's open leads from the lead service's events.

pub mod error;
mod grpc;
pub mod handler;

use contracts::Envelope;
use contracts::lead::LeadEvent;
use leads_proto::v1::{assignment_service_server as server, lead_service_client::LeadServiceClient};
use platform::{
    ServiceName,
    consumer::{self, Batch, Disposition},
    grpc::TracedChannel,
    nats::StreamKind,
    service::{Infra, Running, ServiceBase},
};
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/assignment");

#[derive(Clone)]
pub struct AssignmentContext {
    pub pool: PgPool,
    pub lead: LeadServiceClient<TracedChannel>,
}

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let mut base = ServiceBase::start(infra, ServiceName::Assignment, &MIGRATOR, &token).await?;
    let lead = platform::visibility::lead_client(&infra.settings, ServiceName::Assignment)?;
    let ctx = AssignmentContext { pool: base.pool.clone(), lead };
    // Only the lead events that move an assignment or a lead's activity.
    for kind in ["assigned", "status_changed"] {
        base.consumer(StreamKind::Events("lead"), format!("assignment-{}", kind.replace('_', "-")))
            .filter(infra.subjects.events_of_kind("lead", kind))
            .spawn(infra, &token, ctx.clone(), consume_lead_events);
    }
    let routes = tonic::service::Routes::new(server::AssignmentServiceServer::new(grpc::AssignmentApi { ctx }));
    base.serve(infra, &["leads.v1.AssignmentService"], routes, token).await
}

async fn consume_lead_events(ctx: AssignmentContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    consumer::apply_envelopes(&batch, |events: Arc<[Envelope<LeadEvent>]>| async move {
        handler::apply_lead_events(ctx, &events).await
    })
    .await
}
