//! The notifications service: it tells people and connected systems what they must know.
//! Agents are told of a lead assigned to them and of their follow-ups (a reminder before due,
//! due, overdue after), an organisation's admins of overdue follow-ups and of webhook
//! endpoints the platform had to disable. Each notification is kept per recipient with
//! read/unread (`ListNotifications`), published once on `notifications.<org>.…` in the
//! NOTIFICATIONS stream (CONTRACT.md section 3), and delivered with the lead lifecycle's own
//! events to the organisation's webhook endpoints, signed as the Standard Webhooks
//! specification says, with every attempt in a delivery log. It owns no lead or follow-up:
//! it keeps what it needs from the lead and follow-up services' events.

mod delivery;
pub mod error;
mod followups;
mod grpc;
mod lifecycle;
mod record;
mod settings;
pub mod webhooks;

use contracts::Envelope;
use contracts::followup::FollowUpEvent;
use contracts::lead::{ASSIGNMENTS_APPLIED, BATCH_KINDS, INTERACTIONS_APPLIED, LeadEvent, SCORES_APPLIED};
use leads_proto::v1::notification_service_server as server;
use platform::{
    ServiceName,
    consumer::{self, Batch, Disposition},
    egress::{EgressPolicy, GuardedClient},
    nats::{StreamKind, Subjects},
    outbox::OutboxSignal,
    service::{Infra, Running, ServiceBase},
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use delivery::DeliveryPolicy;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/notifications");

/// The lead events that tell something: to an agent (`assigned`) or to webhooks.
const LEAD_KINDS: [&str; 6] =
    ["assigned", ASSIGNMENTS_APPLIED, "status_changed", "score_changed", SCORES_APPLIED, INTERACTIONS_APPLIED];

#[derive(Clone)]
pub struct NotificationContext {
    pub pool: PgPool,
    pub subjects: Subjects,
    pub outbox: OutboxSignal,
    pub egress: GuardedClient,
    pub delivery: Arc<DeliveryPolicy>,
    /// Woken when a change may have brought an alert closer.
    pub alerts_waiting: Arc<Notify>,
    /// Woken when deliveries were queued.
    pub deliveries_waiting: Arc<Notify>,
}

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let settings = &infra.settings.notifications;
    let allowed: Vec<&str> =
        settings.webhook_allowed_networks.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let policy = EgressPolicy::allowing(&allowed)
        .map_err(|e| anyhow::anyhow!("invalid setting notifications.webhook_allowed_networks: {e}"))?;
    let delivery = DeliveryPolicy {
        retry_schedule: settings.retry_schedule()?,
        timeout: Duration::from_secs(settings.webhook_timeout_secs),
        disable_after_failing: chrono::Duration::hours(settings.webhook_disable_after_failing_hours as i64),
        concurrency_per_endpoint: settings.webhook_concurrency_per_endpoint,
        tick: Duration::from_millis(settings.tick_ms),
    };
    let mut base = ServiceBase::start(infra, ServiceName::Notifications, &MIGRATOR, &token).await?;
    let ctx = NotificationContext {
        pool: base.pool.clone(),
        subjects: infra.subjects.clone(),
        outbox: base.outbox.clone(),
        egress: GuardedClient::new(policy)?,
        delivery: Arc::new(delivery),
        alerts_waiting: Arc::default(),
        deliveries_waiting: Arc::default(),
    };
    for kind in LEAD_KINDS {
        base.consumer(StreamKind::Events("lead"), format!("notifications-{}", kind.replace('_', "-")))
            .filter(infra.subjects.events_of_kind("lead", kind))
            .spawn(infra, &token, ctx.clone(), consume_lifecycle);
    }
    base.consumer(StreamKind::Events("lead"), "notifications-follow-up-opened")
        .filter(infra.subjects.events_of_kind("lead", "follow_up_opened"))
        .spawn(infra, &token, ctx.clone(), consume_opened);
    base.consumer(StreamKind::Events("followup"), "notifications-followup")
        .filter(infra.subjects.events_of("followup"))
        .spawn(infra, &token, ctx.clone(), consume_follow_ups);
    let tick = Duration::from_millis(settings.tick_ms);
    base.spawn("follow-up alerts", followups::run_alerts(ctx.clone(), tick, token.clone()));
    base.spawn("webhook deliveries", delivery::run(ctx.clone(), token.clone()));
    // Messages (with their deliveries), the delivery log and closed follow-ups' tombstones go
    // after the retention, like every service's dedupe keys.
    let retention = platform::db::prune_until(
        base.pool.clone(),
        ServiceName::Notifications,
        &[("delivery_attempts", "attempted_at"), ("messages", "created_at"), ("follow_ups", "closed_at")],
        infra.settings.retention_days,
        token.clone(),
    );
    base.spawn("retention of messages", retention);
    let routes = tonic::service::Routes::new(server::NotificationServiceServer::new(grpc::NotificationApi { ctx }));
    base.serve(infra, &["leads.v1.NotificationService"], routes, token).await
}

async fn consume_lifecycle(ctx: NotificationContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    consumer::apply_batched_envelopes(&batch, &BATCH_KINDS, |events: Arc<[Envelope<LeadEvent>]>| async move {
        lifecycle::apply_lead_events(ctx, &events).await
    })
    .await
}

async fn consume_opened(ctx: NotificationContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    consumer::apply_envelopes(&batch, |events: Arc<[Envelope<LeadEvent>]>| async move {
        followups::apply_opened(ctx, &events).await
    })
    .await
}

async fn consume_follow_ups(ctx: NotificationContext, batch: Batch) -> Vec<Disposition> {
    let ctx = &ctx;
    consumer::apply_envelopes(&batch, |events: Arc<[Envelope<FollowUpEvent>]>| async move {
        followups::apply_follow_up_events(ctx, &events).await
    })
    .await
}
