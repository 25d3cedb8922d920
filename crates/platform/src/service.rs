//! What every service is built from and what it hands back while it runs.

use crate::{
    Settings,
    consumer::{Batch, ConsumerSpec, Disposition},
    nats::{StreamKind, Subjects},
    outbox::OutboxSignal,
};
use async_nats::jetstream;
use std::{borrow::Cow, future::Future, net::SocketAddr, time::Duration};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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
    /// Connects to NATS. It declares no stream: each service declares its own as it starts
    /// (`ServiceBase::start`), whatever the order the services of a process start in.
    pub async fn connect(settings: Settings, client_name: &str) -> anyhow::Result<Self> {
        let nats = crate::nats::connect_with(&settings, client_name).await?;
        let js = jetstream::new(nats.clone());
        let subjects = Subjects::new(settings.subject_prefix.clone());
        Ok(Self { settings, nats, js, subjects })
    }
}

/// What a task of a service is called in the logs and in the supervisor's errors.
pub type TaskName = Cow<'static, str>;

/// The tasks of a service, each named; they end when the service's token fires.
pub type Tasks = JoinSet<(TaskName, anyhow::Result<()>)>;

/// A running service: where its gRPC is served and the tasks that end after cancellation.
pub struct Running {
    pub name: crate::ServiceName,
    pub grpc_addr: SocketAddr,
    pub tasks: Tasks,
    /// Fires when the process stops; a task that ends before it is a failure.
    pub token: CancellationToken,
    pub health: crate::grpc::Health,
    /// The outbox relay, stopped only once every other task has ended, so that it publishes
    /// what their last transactions committed.
    relay: (CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>),
    /// How long stopping may take once the token has fired.
    shutdown_deadline: Duration,
}

impl Running {
    /// Waits for every task, then drains the outbox. A task that ends while the service should
    /// be running (a consumer that cannot declare its durable, a gRPC server that stopped) is a
    /// failure of the whole process: health answers NOT_SERVING, the token fires so that the
    /// rest stops, and the error is returned (the process exits non-zero for a supervisor to
    /// restart it). Stopping takes at most `shutdown_deadline` from the token's firing.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match deadline {
                Some(at) => match tokio::time::timeout_at(at, self.tasks.join_next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::error!(service = %self.name, left = self.tasks.len(), "shutdown deadline passed");
                        self.tasks.abort_all();
                        first_error
                            .get_or_insert_with(|| anyhow::anyhow!("the {} service did not stop in time", self.name));
                        break;
                    }
                },
                None => tokio::select! {
                    next = self.tasks.join_next() => next,
                    () = self.token.cancelled() => {
                        deadline = Some(tokio::time::Instant::now() + self.shutdown_deadline);
                        continue;
                    }
                },
            };
            let Some(ended) = next else { break };
            let (task, result) = match ended {
                Ok(ended) => ended,
                Err(join) => (TaskName::Borrowed("a task"), Err(anyhow::anyhow!(join))),
            };
            let early = !self.token.is_cancelled();
            match result {
                Ok(()) if !early => continue,
                Ok(()) => {
                    tracing::error!(service = %self.name, %task, "service task ended while the service runs");
                    first_error.get_or_insert_with(|| anyhow::anyhow!("the {} service's {task} ended", self.name));
                }
                Err(error) => {
                    tracing::error!(service = %self.name, %task, error = %error, "service task failed");
                    first_error.get_or_insert(error.context(format!("the {} service's {task}", self.name)));
                }
            }
            if early {
                self.health.set(false).await;
                deadline = Some(tokio::time::Instant::now() + self.shutdown_deadline);
                self.token.cancel();
            }
        }
        let (relay_token, relay) = self.relay;
        relay_token.cancel();
        let left =
            deadline.map_or(self.shutdown_deadline, |at| at.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(left, relay).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                first_error.get_or_insert(error);
            }
            Ok(Err(join)) => {
                first_error.get_or_insert(anyhow::anyhow!(join));
            }
            Err(_) => {
                tracing::error!(service = %self.name, "the outbox was not drained before the shutdown deadline");
                first_error.get_or_insert_with(|| anyhow::anyhow!("the {} outbox was not drained in time", self.name));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The parts every service starts with: its own streams (declared and brought up to date), its
/// pool (bootstrapped and migrated) and its outbox relay. Consumers are added to `tasks`;
/// `serve` adds the gRPC server and hands back `Running`.
pub struct ServiceBase {
    pub name: crate::ServiceName,
    pub pool: sqlx::PgPool,
    pub outbox: OutboxSignal,
    pub tasks: Tasks,
    relay: (CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>),
    /// One per consumer: fires once it has looked for its stream, found or not.
    looked: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl ServiceBase {
    pub async fn start(
        infra: &Infra,
        name: crate::ServiceName,
        migrator: &sqlx::migrate::Migrator,
        token: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Self> {
        // First, and without waiting for anyone: the readers of these streams wait for them, and
        // a service that reads another's and is read by it (lead and qualification) would
        // otherwise wait forever.
        crate::nats::ensure_owned_streams(&infra.js, &infra.subjects, name, infra.settings.stream_replicas).await?;
        let pool = crate::db::connect_and_migrate(&infra.settings, name, migrator).await?;
        let outbox = OutboxSignal::default();
        let dead_letters = crate::deadletter::DeadLetters {
            pool: pool.clone(),
            subjects: infra.subjects.clone(),
            service: name.as_str(),
            outbox: outbox.clone(),
        };
        let max_payload = infra.nats.server_info().max_payload;
        // Its own token: it stops after everything else, once it has published what their
        // last transactions committed.
        let relay_token = CancellationToken::new();
        let relay = tokio::spawn(crate::outbox::relay(
            pool.clone(),
            infra.js.clone(),
            max_payload,
            dead_letters,
            outbox.clone(),
            relay_token.clone(),
        ));
        let mut base = Self {
            name,
            pool: pool.clone(),
            outbox,
            tasks: JoinSet::new(),
            relay: (relay_token, relay),
            looked: Vec::new(),
        };
        let sampler = crate::outbox::sample_backlog(pool.clone(), name.as_str(), SAMPLE_EVERY, token.clone());
        base.spawn("outbox sampler", async move {
            sampler.await;
            Ok(())
        });
        base.spawn("vacuum", crate::db::vacuum_when_autovacuum_is_off(pool.clone(), name, token.clone()));
        let days = infra.settings.retention_days;
        base.spawn("retention", crate::db::prune_until(pool, name, &[("dead_letters", "at")], days, token.clone()));
        Ok(base)
    }

    /// Runs `task` until the service's token fires; ending before that stops the process.
    pub fn spawn(
        &mut self,
        name: impl Into<TaskName>,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let name = name.into();
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// A durable consumer of `stream`, the whole of it and with the process's consumer
    /// settings unless told otherwise; `ConsumerBuilder::spawn` runs it.
    pub fn consumer(&mut self, stream: StreamKind, durable: impl Into<String>) -> ConsumerBuilder<'_> {
        ConsumerBuilder {
            base: self,
            stream,
            durable: durable.into(),
            filter_subject: None,
            batch_size: None,
            retry: None,
        }
    }

    /// Serves `routes` (with health and reflection) on the service's configured address.
    pub async fn serve(
        mut self,
        infra: &Infra,
        grpc_names: &[&str],
        routes: tonic::service::Routes,
        token: CancellationToken,
    ) -> anyhow::Result<Running> {
        // A service is started once each consumer has found its stream or begun waiting for
        // it: one look each, never the wait.
        for looked in self.looked.drain(..) {
            let _ = looked.await;
        }
        let serving = crate::grpc::serve(
            &infra.settings,
            &infra.settings.grpc_addr(self.name),
            self.name.as_str(),
            grpc_names,
            routes,
            token.clone(),
        )
        .await?;
        let task = serving.task;
        self.spawn("gRPC server", async move { task.await? });
        self.spawn(
            "reachability",
            watch_reachability(self.pool.clone(), infra.nats.clone(), serving.health.clone(), token.clone()),
        );
        tracing::info!(service = %self.name, grpc = %serving.addr, "service started");
        Ok(Running {
            name: self.name,
            grpc_addr: serving.addr,
            tasks: self.tasks,
            token,
            health: serving.health,
            relay: self.relay,
            shutdown_deadline: Duration::from_secs(infra.settings.shutdown_deadline_secs),
        })
    }
}

/// A durable consumer of a service, before it runs (`ServiceBase::consumer`).
#[must_use = "a consumer runs only once spawned"]
pub struct ConsumerBuilder<'a> {
    base: &'a mut ServiceBase,
    stream: StreamKind,
    durable: String,
    filter_subject: Option<String>,
    batch_size: Option<usize>,
    retry: Option<Retry>,
}

/// How a consumer retries a message its handler failed on: `max_deliver` deliveries in all,
/// the pause before each growing from `base` to `max` (`ConsumerSettings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub max_deliver: i64,
    pub base: Duration,
    pub max: Duration,
}

impl ConsumerBuilder<'_> {
    /// Only the messages of the stream that match `subject` (one subject, wildcards allowed:
    /// NATS 2.9 has no multi-filter consumers).
    pub fn filter(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = Some(subject.into());
        self
    }

    /// Batches of up to `batch_size` messages instead of the process's consumer setting (a
    /// larger batch for a stream of many small events, say).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = Some(batch_size);
        self
    }

    /// A retry policy of its own instead of the process's consumer settings.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Runs the consumer loop until `token` fires, handing each batch to `handler` with a clone
    /// of `ctx`, as a task named after its durable.
    pub fn spawn<C, H, Fut>(self, infra: &Infra, token: &CancellationToken, ctx: C, handler: H)
    where
        C: Clone + Send + Sync + 'static,
        H: Fn(C, Batch) -> Fut + Copy + Send + Sync + 'static,
        Fut: Future<Output = Vec<Disposition>> + Send + 'static,
    {
        let Self { base, stream, durable, filter_subject, batch_size, retry } = self;
        let mut settings = infra.settings.consumer.clone();
        if let Some(batch_size) = batch_size {
            settings.batch_size = batch_size;
        }
        if let Some(Retry { max_deliver, base, max }) = retry {
            settings.max_deliver = max_deliver;
            settings.retry_base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
            settings.retry_max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        }
        let service = base.name.as_str();
        let spec = ConsumerSpec {
            stream: infra.subjects.stream_name(stream),
            filter_subject: filter_subject.unwrap_or_else(|| infra.subjects.stream_subjects(stream).concat()),
            durable,
            service,
        };
        let dead_letters = crate::deadletter::DeadLetters {
            pool: base.pool.clone(),
            subjects: infra.subjects.clone(),
            service,
            outbox: base.outbox.clone(),
        };
        let name = format!("consumer {}", spec.durable);
        let (nats, js, subjects, token) = (infra.nats.clone(), infra.js.clone(), infra.subjects.clone(), token.clone());
        let (looked_tx, looked) = tokio::sync::oneshot::channel();
        base.looked.push(looked);
        base.spawn(name, async move {
            // Another service's stream exists once that service has started: the consumer waits
            // for it here, not the service's start, so the services of a process start in any
            // order and the API serves meanwhile.
            let found = js.get_stream(&spec.stream).await.is_ok();
            let _ = looked_tx.send(());
            if !found && crate::nats::wait_for_stream(&js, &subjects, stream, &token).await?.is_none() {
                return Ok(());
            }
            crate::consumer::run(nats, js, spec, settings, Some(dead_letters), token, move |batch| {
                handler(ctx.clone(), batch)
            })
            .await
        });
    }
}

/// Health follows what the service needs: NOT_SERVING while Postgres or NATS does not
/// answer, SERVING again when both do.
async fn watch_reachability(
    pool: sqlx::PgPool,
    nats: async_nats::Client,
    health: crate::grpc::Health,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let mut serving = true;
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep(REACHABILITY_EVERY) => {}
        }
        let postgres = tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&pool))
            .await
            .is_ok_and(|r| r.is_ok());
        let nats_up = matches!(nats.connection_state(), async_nats::connection::State::Connected);
        let now = postgres && nats_up;
        if now != serving && !token.is_cancelled() {
            tracing::warn!(postgres, nats = nats_up, serving = now, "reachability changed");
            health.set(now).await;
            serving = now;
        }
    }
}

/// How often a service checks that Postgres and NATS answer.
const REACHABILITY_EVERY: Duration = Duration::from_secs(2);
