//! The follow-up service. A follow-up is created from an active lead (the lead service
//! decides that, under the lead's lock, and fills in its contact), comes due on its own,
//! and is completed or cancelled by people; the system cancels the open follow-ups of a
//! lead that becomes inactive. It may be rescheduled, snoozed or have its note edited while
//! open; one whose agent was not named follows its lead's reassignments. Every change is
//! published as `events.followup.<org>.<kind>`: the state it moved to, or `rescheduled`,
//! `edited`, `reassigned`. A follow-up goes only to an agent the assignment service knows as
//! active, asked before the lead service records anything.

pub mod error;
mod grpc;
pub mod handler;

use contracts::Envelope;
use contracts::lead::{ASSIGNMENTS_APPLIED, BATCH_KINDS, LeadEvent};
use leads_proto::v1::{
    assignment_service_client::AssignmentServiceClient, follow_up_service_server as server,
    lead_service_client::LeadServiceClient,
};
use platform::{
    ServiceName,
    consumer::{self, Batch, Disposition},
    grpc::TracedChannel,
    nats::{StreamKind, Subjects},
    outbox::OutboxSignal,
    service::{Infra, Running, ServiceBase},
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/followup");

/// How often the scheduler looks for follow-ups that have come due.
pub const DUE_TICK: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct FollowUpContext {
    pub pool: PgPool,
    pub subjects: Subjects,
    pub outbox: OutboxSignal,
    pub lead: LeadServiceClient<TracedChannel>,
    /// Asked whether the agent a follow-up goes to is known and active.
    pub assignment: AssignmentServiceClient<TracedChannel>,
}

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let mut base = ServiceBase::start(infra, ServiceName::FollowUp, &MIGRATOR, &token).await?;
    let ctx = FollowUpContext {
        pool: base.pool.clone(),
        subjects: infra.subjects.clone(),
        outbox: base.outbox.clone(),
        lead: platform::visibility::lead_client(&infra.settings, ServiceName::FollowUp)?,
        assignment: assignment_client(infra)?,
    };
    for kind in ["follow_up_opened", "status_changed", "assigned", ASSIGNMENTS_APPLIED] {
        base.consumer(StreamKind::Events("lead"), format!("followup-{}", kind.replace('_', "-")))
            .filter(infra.subjects.events_of_kind("lead", kind))
            .spawn(infra, &token, ctx.clone(), consume_lead_events);
    }
    base.spawn("due scheduler", handler::schedule_due(ctx.clone(), DUE_TICK, token.clone()));
    let routes = tonic::service::Routes::new(server::FollowUpServiceServer::new(grpc::FollowUpApi { ctx }));
    base.serve(infra, &["leads.v1.FollowUpService"], routes, token).await
}

/// A client of the assignment service at `endpoints.assignment`, calling as this service.
fn assignment_client(infra: &Infra) -> anyhow::Result<AssignmentServiceClient<TracedChannel>> {
    let endpoint = &infra.settings.endpoints.assignment;
    let channel = platform::grpc::service_channel(&infra.settings, ServiceName::FollowUp, endpoint)
        .map_err(|e| anyhow::anyhow!("invalid assignment endpoint {endpoint}: {e}"))?;
    Ok(AssignmentServiceClient::new(channel))
}

async fn consume_lead_events(ctx: FollowUpContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    consumer::apply_batched_envelopes(&batch, &BATCH_KINDS, |events: Arc<[Envelope<LeadEvent>]>| async move {
        handler::apply_lead_events(ctx, &events).await
    })
    .await
}
