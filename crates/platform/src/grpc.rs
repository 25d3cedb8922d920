//! Serves a service's gRPC routes beside `grpc.health.v1.Health` and server reflection (v1
//! and v1alpha, listing only what the port serves), on a listener bound before returning so
//! that port 0 works, until the token is cancelled. Every call is measured
//! (`leads_grpc_request_duration_seconds`, `leads_grpc_requests_total`) and, but health and
//! reflection, authenticated (`crate::auth`); each has `grpc.request_timeout_secs` and each
//! connection `grpc.concurrency_per_connection` calls at once. Health's `Watch` streams, which
//! need no token and last as long as their callers like, are `grpc.health_watch_limit` at
//! most per server.

use std::net::SocketAddr;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;

pub struct Serving {
    pub addr: SocketAddr,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// Sets what health answers, for the names served and for the whole server ("").
    pub health: Health,
}

/// What `grpc.health.v1.Health` answers for one server.
#[derive(Clone)]
pub struct Health {
    reporter: tonic_health::server::HealthReporter,
    names: Vec<String>,
}

impl Health {
    /// SERVING or NOT_SERVING for every name this server serves and for the server itself.
    pub async fn set(&self, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in self.names.iter().map(String::as_str).chain([""]) {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// The fully qualified names of the reflection services, as ListServices shows them.
pub const REFLECTION_SERVICES: [&str; 2] =
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// `service_names` are the fully qualified names health reports as SERVING and reflection
/// lists; `service` labels the metrics. `settings` give the keys that verify tokens, whether
/// reflection is served and the limits of calls.
/// Listeners bound before their servers start, by the address they were asked for: a
/// process running several services binds every port first (port 0 in tests), so that each
/// service knows the others' addresses whatever order they start in.
static RESERVED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, std::net::TcpListener>>> =
    std::sync::LazyLock::new(Default::default);

/// Binds `host:port` now for a server that `serve` starts later on `host:<the port bound>`,
/// which is answered.
pub fn reserve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let listen = format!("{host}:{port}");
    let listener =
        std::net::TcpListener::bind(&listen).map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let key = format!("{host}:{}", addr.port());
    RESERVED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, listener);
    Ok(addr)
}

async fn listen_on(listen: &str) -> anyhow::Result<TcpListener> {
    let reserved = RESERVED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(listen);
    match reserved {
        Some(listener) => Ok(TcpListener::from_std(listener)?),
        None => TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}")),
    }
}

pub async fn serve(
    settings: &crate::Settings,
    listen: &str,
    service: &'static str,
    service_names: &[&str],
    routes: Routes,
    token: CancellationToken,
) -> anyhow::Result<Serving> {
    let listener = listen_on(listen).await?;
    let addr = listener.local_addr()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in service_names {
        reporter.set_service_status(*name, ServingStatus::Serving).await;
    }
    reporter.set_service_status("", ServingStatus::Serving).await;
    let answers = Health { reporter, names: service_names.iter().map(|n| (*n).to_owned()).collect() };
    let draining = answers.clone();
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(leads_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for name in service_names.iter().copied().chain(REFLECTION_SERVICES) {
            builder = builder.with_service_name(name);
        }
        builder
    };
    let mut routes = routes.add_service(health);
    if settings.grpc.reflection {
        routes = routes.add_service(reflection().build_v1()?).add_service(reflection().build_v1alpha()?);
    }
    let ended = crate::sessions::ended_sessions(&settings.subject_prefix);
    let verifier = crate::auth::Verifier::from_settings(&settings.auth)?
        .map(|v| std::sync::Arc::new(v.with_ended_sessions(ended)));
    crate::auth::refuse_or_warn_when_open(service, &settings.auth, &verifier)?;
    let auth = crate::auth::AuthLayer::new(verifier, settings.grpc.reflection);
    let timeout = std::time::Duration::from_secs(settings.grpc.request_timeout_secs);
    let per_connection = settings.grpc.concurrency_per_connection;
    let watch_limit = HealthWatchLimit::new(settings.grpc.health_watch_limit);
    let ready = metrics::gauge!(crate::telemetry::names::SERVICE_READY, "service" => service);
    ready.set(1.0);
    // Without TCP_NODELAY a response written in more than one segment waits for the client's
    // delayed ACK: about 40 ms on every call.
    let incoming = futures::StreamExt::map(TcpListenerStream::new(listener), |stream| {
        if let Ok(stream) = &stream
            && let Err(error) = stream.set_nodelay(true)
        {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
        stream
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = server_tls(&settings.grpc)? {
        builder = builder.tls_config(tls).map_err(|e| anyhow::anyhow!("grpc.tls_cert_file: {e}"))?;
    }
    let task = tokio::spawn(async move {
        builder
            .timeout(timeout)
            .concurrency_limit_per_connection(per_connection)
            .trace_fn(crate::telemetry::grpc_request_span)
            .layer(MetricsLayer { service })
            .layer(watch_limit)
            .layer(auth)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                token.cancelled().await;
                // Draining: load balancers and probes stop sending new calls here.
                ready.set(0.0);
                draining.set(false).await;
            })
            .await?;
        Ok(())
    });
    Ok(Serving { addr, task, health: answers })
}

/// A tower layer that measures every call: its duration until the response's end and its
/// status code, from the `grpc-status` header (an error answered at once) or trailer
/// (anything streamed or successful); none at all counts as OK.
#[derive(Debug, Clone, Copy)]
pub struct MetricsLayer {
    pub service: &'static str,
}

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, service: self.service }
    }
}

#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    service: &'static str,
}

/// What the platform's tower layers (metrics, auth, the health watch limit) see of a call.
pub(crate) type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
pub(crate) type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;
/// The answer those layers hand back, whatever the inner service's error `E`.
pub(crate) type ResponseFuture<E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, E>> + Send>>;

impl<S> tonic::codegen::Service<HttpRequest> for MetricsService<S>
where
    S: tonic::codegen::Service<HttpRequest, Response = HttpResponse> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let started = std::time::Instant::now();
        let method = method_label(request.uri().path().trim_start_matches('/'));
        let service = self.service;
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut call = CallMetrics { service, method, started, code: None };
            match future.await {
                Ok(response) => {
                    call.code = grpc_status(response.headers());
                    let (parts, body) = response.into_parts();
                    Ok(HttpResponse::from_parts(parts, tonic::body::Body::new(MeasuredBody { body, call: Some(call) })))
                }
                Err(error) => {
                    call.code = Some(tonic::Code::Unknown);
                    call.record();
                    Err(error)
                }
            }
        })
    }
}

/// The path of the one call a server keeps open for as long as its caller wants, unasked.
const HEALTH_WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";

/// A tower layer that holds a server's `Health/Watch` streams to a number at once: each
/// holds a permit until its response body is dropped (the stream ended or its caller went
/// away), and a watch beyond the limit is answered RESOURCE_EXHAUSTED at once.
#[derive(Debug, Clone)]
pub struct HealthWatchLimit {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    limit: usize,
}

impl HealthWatchLimit {
    pub fn new(limit: usize) -> Self {
        Self { permits: std::sync::Arc::new(tokio::sync::Semaphore::new(limit)), limit }
    }
}

impl<S> tower_layer::Layer<S> for HealthWatchLimit {
    type Service = HealthWatchLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HealthWatchLimitService { inner, limit: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct HealthWatchLimitService<S> {
    inner: S,
    limit: HealthWatchLimit,
}

impl<S> tonic::codegen::Service<HttpRequest> for HealthWatchLimitService<S>
where
    S: tonic::codegen::Service<HttpRequest, Response = HttpResponse> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        if request.uri().path() != HEALTH_WATCH_PATH {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.limit.permits.clone().try_acquire_owned() else {
            tracing::warn!(limit = self.limit.limit, "health watch refused: the server holds its limit of watches");
            let status = tonic::Status::resource_exhausted(format!(
                "this server holds its limit of {} health watches (grpc.health_watch_limit): use Check, or watch later",
                self.limit.limit
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let (parts, body) = response.into_parts();
            Ok(HttpResponse::from_parts(parts, tonic::body::Body::new(PermitBody { body, _permit: permit })))
        })
    }
}

/// A response body that holds a permit for as long as it lives.
struct PermitBody {
    body: tonic::body::Body,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl http_body::Body for PermitBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn grpc_status(headers: &tonic::codegen::http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}

/// The canonical name of a status code, as Prometheus labels show it (`INVALID_ARGUMENT`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Every method the platform's servers answer (`package.Service/Method`): those of `leads.v1`,
/// health and reflection, read from their descriptors once.
static KNOWN_METHODS: std::sync::LazyLock<std::collections::HashSet<String>> = std::sync::LazyLock::new(|| {
    use prost::Message;
    let mut known = std::collections::HashSet::new();
    for encoded in [leads_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else { continue };
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    known.insert(format!("{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
    }
    for service in REFLECTION_SERVICES {
        known.insert(format!("{service}/ServerReflectionInfo"));
    }
    known
});

/// Every method the platform's servers answer, `package.Service/Method`.
pub fn known_methods() -> &'static std::collections::HashSet<String> {
    &KNOWN_METHODS
}

/// What a call's method is labelled in the metrics: its path when it is a method the platform
/// serves, `unknown` otherwise, so that calls to made-up paths (which anyone can send, before
/// authentication) add no series.
fn method_label(path: &str) -> std::borrow::Cow<'static, str> {
    match KNOWN_METHODS.get(path) {
        Some(known) => std::borrow::Cow::Owned(known.clone()),
        None => std::borrow::Cow::Borrowed("unknown"),
    }
}

struct CallMetrics {
    service: &'static str,
    method: std::borrow::Cow<'static, str>,
    started: std::time::Instant,
    code: Option<tonic::Code>,
}

impl CallMetrics {
    fn record(self) {
        use crate::telemetry::names;
        let code = code_name(self.code.unwrap_or(tonic::Code::Ok));
        metrics::histogram!(names::GRPC_REQUEST_DURATION, "service" => self.service, "method" => self.method.clone())
            .record(self.started.elapsed().as_secs_f64());
        metrics::counter!(names::GRPC_REQUESTS, "service" => self.service, "method" => self.method, "code" => code)
            .increment(1);
    }
}

/// A response body that records its call once it ends (or is dropped, when the client goes
/// away first), reading the status from the trailers when the headers had none.
struct MeasuredBody {
    body: tonic::body::Body,
    call: Option<CallMetrics>,
}

impl http_body::Body for MeasuredBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = self.call.as_mut()
                    && call.code.is_none()
                {
                    call.code = grpc_status(trailers);
                }
            }
            std::task::Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.as_mut() {
                    call.code.get_or_insert(tonic::Code::Internal);
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.record();
                }
            }
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for MeasuredBody {
    fn drop(&mut self) {
        if let Some(mut call) = self.call.take() {
            // The body ended without its end being polled: finished when it says so,
            // otherwise the client went away.
            if call.code.is_none() && !http_body::Body::is_end_stream(&self.body) {
                call.code = Some(tonic::Code::Cancelled);
            }
            call.record();
        }
    }
}

/// A channel to another service that carries the caller's trace context in its metadata and,
/// when authentication is configured, the calling service's token.
pub type TracedChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, CallerInterceptor>;

/// Adds the trace context and the service token (when there is one) to every call.
#[derive(Clone, Default)]
pub struct CallerInterceptor {
    credentials: Option<std::sync::Arc<crate::auth::ServiceCredentials>>,
}

impl tonic::service::Interceptor for CallerInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = crate::telemetry::inject_grpc(request)?;
        if let Some(credentials) = &self.credentials {
            let token = credentials.token().map_err(|error| {
                tracing::error!(%error, "cannot make a service token");
                tonic::Status::unauthenticated("no service token")
            })?;
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::unauthenticated("the service token is not a header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// Connects lazily, so a service starts even when the one it calls is not up yet. Sends no
/// token: see `service_channel`.
pub fn traced_channel(endpoint: &str) -> anyhow::Result<TracedChannel> {
    channel_with(endpoint, None, None)
}

/// A channel from `service` to another service, carrying a service token signed with
/// `auth.signing_key_file` (subject `leads-<service>`) or read from `auth.service_token_file`.
pub fn service_channel(
    settings: &crate::Settings,
    service: crate::ServiceName,
    endpoint: &str,
) -> anyhow::Result<TracedChannel> {
    let credentials = crate::auth::ServiceCredentials::from_settings(&settings.auth, &format!("leads-{service}"))?;
    let tls = if endpoint.starts_with("https://") { Some(client_tls(&settings.grpc)?) } else { None };
    channel_with(endpoint, credentials, tls)
}

fn read(setting: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{setting}: cannot read {}: {e}", path.display()))
}

/// The server's TLS from `grpc.tls_*` files: its certificate and key, and the CA its callers'
/// certificates must be signed by when `tls_client_ca_file` is set. `None`: plaintext.
fn server_tls(grpc: &crate::settings::GrpcSettings) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&grpc.tls_cert_file, &grpc.tls_key_file) else { return Ok(None) };
    let identity = Identity::from_pem(read("grpc.tls_cert_file", cert)?, read("grpc.tls_key_file", key)?);
    let mut tls = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &grpc.tls_client_ca_file {
        tls = tls.client_ca_root(Certificate::from_pem(read("grpc.tls_client_ca_file", ca)?));
    }
    Ok(Some(tls))
}

/// What a service trusts and presents when it calls another over TLS.
fn client_tls(grpc: &crate::settings::GrpcSettings) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &grpc.tls_ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read("grpc.tls_ca_file", ca)?));
    }
    if let (Some(cert), Some(key)) = (&grpc.tls_cert_file, &grpc.tls_key_file) {
        tls = tls.identity(Identity::from_pem(read("grpc.tls_cert_file", cert)?, read("grpc.tls_key_file", key)?));
    }
    Ok(tls)
}

/// A channel to `endpoint` that carries no credentials of its own: its caller puts a
/// person's token on each request (the console does, so that every rule applies to the person).
pub fn channel_without_credentials(settings: &crate::Settings, endpoint: &str) -> anyhow::Result<TracedChannel> {
    let tls = if endpoint.starts_with("https://") { Some(client_tls(&settings.grpc)?) } else { None };
    channel_with(endpoint, None, tls)
}

fn channel_with(
    endpoint: &str,
    credentials: Option<std::sync::Arc<crate::auth::ServiceCredentials>>,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<TracedChannel> {
    let mut channel =
        tonic::transport::Channel::from_shared(endpoint.to_owned())?.connect_timeout(std::time::Duration::from_secs(2));
    if let Some(tls) = tls {
        channel = channel.tls_config(tls)?;
    }
    let channel = channel.connect_lazy();
    Ok(tonic::service::interceptor::InterceptedService::new(channel, CallerInterceptor { credentials }))
}

/// An error another of the platform's services answered. One about the request (bad
/// argument, missing or closed entity, lost race) is passed on to the caller as it came;
/// any other means that service could not be reached or failed, and is logged, not shown.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{}", .0.message())]
    ForCaller(tonic::Status),
    #[error("{service} service unavailable: {detail}")]
    Unavailable { service: &'static str, detail: String },
}

impl UpstreamError {
    pub fn from_status(service: &'static str, status: tonic::Status) -> Self {
        use tonic::Code;
        match status.code() {
            Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => {
                UpstreamError::ForCaller(status)
            }
            code => UpstreamError::Unavailable { service, detail: format!("{code:?}: {}", status.message()) },
        }
    }
}

impl crate::error::ServiceError for UpstreamError {
    fn code(&self) -> tonic::Code {
        match self {
            UpstreamError::ForCaller(status) => status.code(),
            UpstreamError::Unavailable { .. } => tonic::Code::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    #[tokio::test]
    async fn health_watches_beyond_the_limit_are_refused_until_one_ends() -> anyhow::Result<()> {
        let mut settings = crate::Settings::default();
        settings.grpc.health_watch_limit = 2;
        settings.grpc.reflection = false;
        settings.auth.disabled = true;
        let token = CancellationToken::new();
        let routes = Routes::default();
        let serving = serve(&settings, "127.0.0.1:0", "test", &["test.v1.Test"], routes, token.clone()).await?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", serving.addr))?.connect().await?;
        let health = HealthClient::new(channel);
        let watch = || {
            let mut health = health.clone();
            async move { health.watch(HealthCheckRequest { service: String::new() }).await }
        };
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = watch().await?.into_inner();
            assert!(stream.message().await?.is_some(), "a watch answers with the current status");
            held.push(stream);
        }
        let refused = watch().await.expect_err("a third watch is over the limit");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("grpc.health_watch_limit"), "{}", refused.message());
        health.clone().check(HealthCheckRequest { service: String::new() }).await?;

        drop(held.pop());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match watch().await {
                Ok(_) => break,
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    assert!(tokio::time::Instant::now() < deadline, "the ended watch's place is never freed");
                    tokio::task::yield_now().await;
                }
                Err(status) => return Err(status.into()),
            }
        }
        drop(held);
        token.cancel();
        serving.task.await??;
        Ok(())
    }

    /// A thousand calls without a token to made-up paths add no series to the metrics: the
    /// method label of every one is `unknown`.
    #[tokio::test]
    async fn tokenless_calls_to_random_paths_add_no_series() -> anyhow::Result<()> {
        let Ok(metrics) = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() else {
            // Another test of this process holds the recorder (`cargo test`, not nextest).
            return Ok(());
        };
        let dir = std::env::temp_dir().join(format!("leads-metrics-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("local.key");
        std::fs::write(&key, "k".repeat(40))?;
        let mut settings = crate::Settings::default();
        settings.auth.signing_key_file = Some(key);
        let token = CancellationToken::new();
        let serving =
            serve(&settings, "127.0.0.1:0", "test", &["test.v1.Test"], Routes::default(), token.clone()).await?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", serving.addr))?.connect().await?;
        let series = || {
            let text = metrics.render();
            text.lines()
                .filter(|l| l.starts_with(crate::telemetry::names::GRPC_REQUESTS) && !l.starts_with('#'))
                .count()
        };
        let call = |path: String| {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            async move {
                grpc.ready().await?;
                let path = tonic::codegen::http::uri::PathAndQuery::try_from(path)?;
                let codec = tonic_prost::ProstCodec::<(), ()>::default();
                let answer = grpc.unary(tonic::Request::new(()), path, codec).await;
                anyhow::Ok(answer.expect_err("no token").code())
            }
        };
        assert_eq!(call("/leads.v1.LeadService/ListLeads".into()).await?, tonic::Code::Unauthenticated);
        assert_eq!(call("/leads.v1.LeadService/Probe-first".into()).await?, tonic::Code::Unauthenticated);
        let before = series();
        assert!(before >= 2, "the calls were counted: {}", metrics.render());
        for n in 0..1000 {
            let path = format!("/leads.v1.{}/{}", uuid::Uuid::new_v4().simple(), n);
            assert_eq!(call(path).await?, tonic::Code::Unauthenticated);
        }
        assert_eq!(series(), before, "{}", metrics.render());
        token.cancel();
        serving.task.await??;
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }

    #[test]
    fn a_served_method_is_its_own_label_and_any_other_path_is_unknown() {
        for served in [
            "leads.v1.LeadService/ListLeads",
            "leads.v1.IngestService/Ingest",
            "grpc.health.v1.Health/Check",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(method_label(served), served);
        }
        let labels: std::collections::HashSet<_> = (0..1000)
            .map(|n| method_label(&format!("leads.v1.LeadService/Probe{n}")))
            .chain(["", "x", "leads.v1.Nothing/ListLeads", "leads.v1.LeadService/"].map(method_label))
            .collect();
        assert_eq!(labels, std::collections::HashSet::from([std::borrow::Cow::Borrowed("unknown")]));
    }
}
