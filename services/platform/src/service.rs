//! What every service is built from and what it hands back while it runs.

use crate::{Settings, nats::Subjects, outbox::OutboxSignal};
use async_nats::jetstream;
use std::net::SocketAddr;
use tokio::task::JoinSet;

/// How often gauges read from Postgres or NATS (outbox backlog, pool, consumer pending) are
/// sampled.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections shared by the services of one process.
#[derive(Clone)]
pub struct Infra {
    pub settings: Settings,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
}

impl Infra {
    /// Connects to NATS and declares the platform's streams.
    pub async fn connect(settings: Settings, client_name: &str) -> anyhow::Result<Self> {
        let nats = crate::nats::connect_with(&settings, client_name).await?;
        let js = jetstream::new(nats.clone());
        let subjects = Subjects::new(settings.subject_prefix.clone());
        crate::nats::ensure_all_streams_replicated(&js, &subjects, settings.stream_replicas).await?;
        Ok(Self { settings, nats, js, subjects })
    }
}

/// A running service: where its gRPC is served and the tasks that end after cancellation.
pub struct Running {
    pub name: crate::ServiceName,
    pub grpc_addr: SocketAddr,
    pub tasks: JoinSet<anyhow::Result<()>>,
}

impl Running {
    /// Waits for every task; the first failure is returned after all have ended.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(result) = self.tasks.join_next().await {
            let error = match result {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error,
                Err(join) => anyhow::anyhow!(join),
            };
            tracing::error!(service = %self.name, error = %error, "service task failed");
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The parts every service starts with: its pool (bootstrapped and migrated) and its outbox
/// relay. Consumers are added to `tasks`; `serve` adds the gRPC server and hands back `Running`.
pub struct ServiceBase {
    pub name: crate::ServiceName,
    pub pool: sqlx::PgPool,
    pub outbox: OutboxSignal,
    pub tasks: JoinSet<anyhow::Result<()>>,
}

impl ServiceBase {
    pub async fn start(
        infra: &Infra,
        name: crate::ServiceName,
        migrator: &sqlx::migrate::Migrator,
        token: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Self> {
        let pool = crate::db::connect_and_migrate(&infra.settings, name, migrator).await?;
        let outbox = OutboxSignal::default();
        let mut tasks = JoinSet::new();
        tasks.spawn(crate::outbox::relay(pool.clone(), infra.js.clone(), outbox.clone(), token.clone(), name.as_str()));
        let sampler = crate::outbox::sample_backlog(pool.clone(), name.as_str(), SAMPLE_EVERY, token.clone());
        tasks.spawn(async move {
            sampler.await;
            Ok(())
        });
        tasks.spawn(crate::db::vacuum_when_autovacuum_is_off(pool.clone(), name, token.clone()));
        Ok(Self { name, pool, outbox, tasks })
    }

    /// Runs a durable consumer of the whole of `stream` until `token` fires, handing each
    /// batch to `handler` with a clone of `ctx`.
    pub fn spawn_consumer<C, H, Fut>(
        &mut self,
        infra: &Infra,
        stream: crate::nats::StreamKind,
        durable: &str,
        token: &tokio_util::sync::CancellationToken,
        ctx: C,
        handler: H,
    ) where
        C: Clone + Send + Sync + 'static,
        H: Fn(C, Vec<crate::consumer::Delivery>) -> Fut + Copy + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<crate::consumer::Disposition>> + Send + 'static,
    {
        let settings = infra.settings.consumer.clone();
        self.spawn_consumer_with(infra, stream, durable, settings, token, ctx, handler);
    }

    /// Like `spawn_consumer`, with consumer settings of its own (a larger batch for a stream
    /// of many small events, say).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_consumer_with<C, H, Fut>(
        &mut self,
        infra: &Infra,
        stream: crate::nats::StreamKind,
        durable: &str,
        settings: crate::settings::ConsumerSettings,
        token: &tokio_util::sync::CancellationToken,
        ctx: C,
        handler: H,
    ) where
        C: Clone + Send + Sync + 'static,
        H: Fn(C, Vec<crate::consumer::Delivery>) -> Fut + Copy + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<crate::consumer::Disposition>> + Send + 'static,
    {
        let filter = infra.subjects.stream_subjects(stream).concat();
        self.spawn_run(infra, stream, &filter, durable, settings, token, ctx, handler);
    }

    /// Like `spawn_consumer`, for the messages of `stream` that match `filter_subject` only
    /// (one subject, wildcards allowed: NATS 2.9 has no multi-filter consumers).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_filtered_consumer<C, H, Fut>(
        &mut self,
        infra: &Infra,
        stream: crate::nats::StreamKind,
        filter_subject: &str,
        durable: &str,
        token: &tokio_util::sync::CancellationToken,
        ctx: C,
        handler: H,
    ) where
        C: Clone + Send + Sync + 'static,
        H: Fn(C, Vec<crate::consumer::Delivery>) -> Fut + Copy + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<crate::consumer::Disposition>> + Send + 'static,
    {
        let settings = infra.settings.consumer.clone();
        self.spawn_run(infra, stream, filter_subject, durable, settings, token, ctx, handler);
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_run<C, H, Fut>(
        &mut self,
        infra: &Infra,
        stream: crate::nats::StreamKind,
        filter_subject: &str,
        durable: &str,
        settings: crate::settings::ConsumerSettings,
        token: &tokio_util::sync::CancellationToken,
        ctx: C,
        handler: H,
    ) where
        C: Clone + Send + Sync + 'static,
        H: Fn(C, Vec<crate::consumer::Delivery>) -> Fut + Copy + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<crate::consumer::Disposition>> + Send + 'static,
    {
        let spec = crate::consumer::ConsumerSpec {
            stream: infra.subjects.stream_name(stream),
            durable: durable.to_owned(),
            filter_subject: filter_subject.to_owned(),
            service: self.name.as_str(),
        };
        self.tasks.spawn(crate::consumer::run(
            infra.nats.clone(),
            infra.js.clone(),
            spec,
            settings,
            token.clone(),
            move |batch| handler(ctx.clone(), batch),
        ));
    }

    /// Serves `routes` (with health and reflection) on the service's configured address.
    pub async fn serve(
        mut self,
        infra: &Infra,
        grpc_names: &[&str],
        routes: tonic::service::Routes,
        token: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Running> {
        let serving = crate::grpc::serve(
            &infra.settings,
            &infra.settings.grpc_addr(self.name),
            self.name.as_str(),
            grpc_names,
            routes,
            token,
        )
        .await?;
        let task = serving.task;
        self.tasks.spawn(async move { task.await? });
        tracing::info!(service = %self.name, grpc = %serving.addr, "service started");
        Ok(Running { name: self.name, grpc_addr: serving.addr, tasks: self.tasks })
    }
}
