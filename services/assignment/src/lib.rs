//! The assignment service: the organisation's agents, and assignments of leads to them.
//! The lead service decides (under the lead's lock) whether a lead can be assigned, since
//! only it knows whether the lead is active; this service checks the agent, asks, and keeps
//! the assignment history and each agent's open leads from the lead service's events. With
//! an organisation's policy on, new leads find an agent by themselves (`auto`).

pub mod auto;
pub mod error;
mod grpc;
pub mod handler;
pub mod routing;
pub mod settings;

use contracts::Envelope;
use contracts::lead::{ASSIGNMENTS_APPLIED, BATCH_KINDS, LeadEvent};
use leads_proto::v1::{assignment_service_server as server, lead_service_client::LeadServiceClient};
use platform::{
    ServiceName,
    consumer::{self, Batch, Disposition},
    grpc::TracedChannel,
    nats::StreamKind,
    service::{Infra, Running, ServiceBase},
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/assignment");

/// The durable consumer of every lead event that keeps the waiting queue.
pub const QUEUE_DURABLE: &str = "assignment-queue";

#[derive(Clone)]
pub struct AssignmentContext {
    pub pool: PgPool,
    pub lead: LeadServiceClient<TracedChannel>,
    pub settings: platform::settings::AssignmentServiceSettings,
    /// Wakes this process's dispatcher: a lead may wait, an agent may have room.
    pub wake: Arc<tokio::sync::Notify>,
}

impl AssignmentContext {
    /// How long a call to the lead service made for automatic assignment may take: half the
    /// reservation timeout, so that a reservation is never settled while its call may still
    /// assign.
    pub fn call_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.settings.reservation_timeout_secs) / 2
    }

    /// How long an agent's presence lasts without a heartbeat.
    pub fn presence_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.settings.presence_grace_secs)
    }
}

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let mut base = ServiceBase::start(infra, ServiceName::Assignment, &MIGRATOR, &token).await?;
    let lead = platform::visibility::lead_client(&infra.settings, ServiceName::Assignment)?;
    let ctx = AssignmentContext {
        pool: base.pool.clone(),
        lead,
        settings: infra.settings.assignment.clone(),
        wake: Arc::new(tokio::sync::Notify::new()),
    };
    // Only the lead events that move an assignment or a lead's activity.
    for kind in ["assigned", ASSIGNMENTS_APPLIED, "status_changed"] {
        base.consumer(StreamKind::Events("lead"), format!("assignment-{}", kind.replace('_', "-")))
            .filter(infra.subjects.events_of_kind("lead", kind))
            .spawn(infra, &token, ctx.clone(), consume_lead_events);
    }
    base.consumer(StreamKind::Events("lead"), QUEUE_DURABLE).filter(infra.subjects.events_of("lead")).spawn(
        infra,
        &token,
        ctx.clone(),
        consume_for_queue,
    );
    let pool = base.pool.clone();
    base.spawn(
        "load folding",
        platform::shutdown::every(Duration::from_secs(1), token.clone(), "agent load fold", move || {
            let pool = pool.clone();
            async move { auto::fold_load_deltas(&pool).await }
        }),
    );
    base.spawn("automatic assignment", auto::dispatch_until(ctx.clone(), token.clone()));
    let routes = tonic::service::Routes::new(server::AssignmentServiceServer::new(grpc::AssignmentApi { ctx }));
    base.serve(infra, &["leads.v1.AssignmentService"], routes, token).await
}

async fn consume_lead_events(ctx: AssignmentContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    consumer::apply_batched_envelopes(&batch, &BATCH_KINDS, |events: Arc<[Envelope<LeadEvent>]>| async move {
        handler::apply_lead_events(ctx, &events).await
    })
    .await
}

async fn consume_for_queue(ctx: AssignmentContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    consumer::apply_batched_envelopes(&batch, &BATCH_KINDS, |events: Arc<[Envelope<LeadEvent>]>| async move {
        auto::apply_queue_events(ctx, &events).await
    })
    .await
}
