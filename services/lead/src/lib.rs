//! The lead service: the one authority on a lead's status. It turns accepted interactions
//! into leads (at most one active per contact), serves the Leads page over gRPC, and
//! publishes every change as `events.lead.<org>.<kind>` through its outbox, which WatchLeads
//! streams back to consoles as it happens.

pub mod apply;
pub mod batch;
pub mod commands;
pub mod error;
pub mod export;
pub mod gated;
mod grpc;
pub mod history;
pub mod lifecycle;
pub mod model;
pub mod query;
pub mod read;
pub mod rules;
pub mod scores;
pub mod settings;
pub mod watch;

use crate::{batch::AcceptedInteraction, error::LeadError};
use contracts::Envelope;
use contracts::interaction::Interaction;
use leads_proto::v1::broadcast_tracking_service_client::BroadcastTrackingServiceClient;
use platform::grpc::TracedChannel;
use platform::{
    ServiceName,
    consumer::{self, Batch, Delivery, Disposition},
    nats::{StreamKind, Subjects},
    outbox::OutboxSignal,
    service::{Infra, Running, ServiceBase},
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/lead");

#[derive(Clone)]
pub struct LeadContext {
    pub pool: PgPool,
    pub subjects: Subjects,
    pub outbox: OutboxSignal,
    /// Where the timeline's broadcast entries come from; `None` when the endpoint is invalid.
    pub broadcast: Option<BroadcastTrackingServiceClient<TracedChannel>>,
    /// ExportLeads' own pool, so that exports never take the Leads page's connections.
    pub exports: export::Exports,
    /// WatchLeads' consumers of this service's own events, bounded per process.
    pub watches: watch::Watches,
    /// How a ListLeads total is counted: exactly up to a limit and within a time budget.
    pub totals: read::Totals,
}

pub fn validate_org(org_id: &str) -> Result<(), LeadError> {
    contracts::values::validate_org_id(org_id).map_err(LeadError::from)
}

/// The durable consumer of the interactions ingest accepted.
pub const INTERACTIONS_DURABLE: &str = "lead-interactions";
/// The durable consumer of the scores qualification publishes.
pub const SCORES_DURABLE: &str = "lead-scores";
/// The durable consumer of the follow-up service's events.
pub const FOLLOW_UPS_DURABLE: &str = "lead-follow-ups";

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let mut base = ServiceBase::start(infra, ServiceName::Lead, &MIGRATOR, &token).await?;
    let ctx = LeadContext {
        pool: base.pool.clone(),
        subjects: infra.subjects.clone(),
        outbox: base.outbox.clone(),
        broadcast: broadcast_client(&infra.settings),
        exports: export::Exports::connect(&infra.settings)?,
        watches: watch::Watches::new(
            infra.js.clone(),
            infra.subjects.clone(),
            infra.settings.grpc.watch_limit,
            token.clone(),
        ),
        totals: read::Totals {
            exact_up_to: infra.settings.lead.exact_total_up_to,
            budget: std::time::Duration::from_millis(infra.settings.lead.exact_total_budget_ms),
            max_count_cost: infra.settings.lead.exact_total_max_cost,
        },
    };
    let pool = base.pool.clone();
    base.spawn(
        "count folding",
        platform::shutdown::every(Duration::from_secs(1), token.clone(), "lead count fold", move || {
            let pool = pool.clone();
            async move { read::fold_count_deltas(&pool).await }
        }),
    );
    let idle_sweep = std::time::Duration::from_secs(infra.settings.lead.idle_sweep_interval_secs);
    base.spawn("idle lead sweep", rules::archive_idle_until(ctx.clone(), idle_sweep, token.clone()));
    base.consumer(StreamKind::Events("ingest"), INTERACTIONS_DURABLE).spawn(
        infra,
        &token,
        ctx.clone(),
        consume_interactions,
    );
    base.consumer(StreamKind::Events("qualification"), SCORES_DURABLE).spawn(
        infra,
        &token,
        ctx.clone(),
        consume_scores,
    );
    base.consumer(StreamKind::Events("followup"), FOLLOW_UPS_DURABLE).spawn(
        infra,
        &token,
        ctx.clone(),
        consume_follow_up_states,
    );
    let routes =
        tonic::service::Routes::new(leads_proto::v1::lead_service_server::LeadServiceServer::new(grpc::LeadApi {
            ctx: ctx.clone(),
        }));
    base.serve(infra, &["leads.v1.LeadService"], routes, token).await
}

fn broadcast_client(settings: &platform::Settings) -> Option<BroadcastTrackingServiceClient<TracedChannel>> {
    let endpoint = settings.endpoints.broadcast.as_str();
    match platform::grpc::service_channel(settings, platform::ServiceName::Lead, endpoint) {
        Ok(channel) => Some(BroadcastTrackingServiceClient::new(channel)),
        Err(error) => {
            tracing::error!(%error, endpoint, "invalid broadcast endpoint, timelines will lack broadcasts");
            None
        }
    }
}

async fn consume_scores(ctx: LeadContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    let read = |d: &Delivery, out: &mut Vec<_>| contracts::qualification::read_scored(&d.subject, &d.payload, out);
    consumer::apply_decoded(&batch, read, |scores: Arc<[Envelope<contracts::qualification::Scored>]>| async move {
        scores::apply_scores(ctx, &scores).await
    })
    .await
}

async fn consume_interactions(ctx: LeadContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    consumer::apply_decoded(&batch, decode_accepted, |accepted: Arc<[AcceptedInteraction]>| async move {
        batch::apply_batch(ctx, &accepted).await
    })
    .await
}

/// Reads `interactions_accepted` (several interactions) and, from what an earlier version
/// of ingest left in the stream, `interaction_accepted` (one).
fn decode_accepted(delivery: &Delivery, out: &mut Vec<AcceptedInteraction>) -> Result<(), serde_json::Error> {
    let kind = delivery.subject.rsplit('.').next().unwrap_or_default();
    if kind == contracts::interaction::INTERACTION_ACCEPTED {
        let envelope = Envelope::<Interaction>::from_json(&delivery.payload)?;
        out.push(AcceptedInteraction { org_id: envelope.org_id, interaction: envelope.data });
    } else {
        let envelope = Envelope::<Vec<Interaction>>::from_json(&delivery.payload)?;
        let org_id = envelope.org_id;
        out.extend(
            envelope.data.into_iter().map(|interaction| AcceptedInteraction { org_id: org_id.clone(), interaction }),
        );
    }
    Ok(())
}

async fn consume_follow_up_states(ctx: LeadContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    consumer::apply_envelopes(&batch, |events: Arc<[Envelope<contracts::followup::FollowUpEvent>]>| async move {
        gated::record_follow_up_states(ctx, &events).await
    })
    .await
}
