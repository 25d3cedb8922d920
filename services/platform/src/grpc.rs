//! Serves a service's gRPC routes beside `grpc.health.v1.Health` and server reflection, on a
//! listener bound before returning so that port 0 works, until the token is cancelled.

use std::net::SocketAddr;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;

pub struct Serving {
    pub addr: SocketAddr,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// `service_names` are the fully qualified names health reports as SERVING.
pub async fn serve(
    listen: &str,
    service_names: &[&str],
    routes: Routes,
    token: CancellationToken,
) -> anyhow::Result<Serving> {
    let listener = TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in service_names {
        reporter.set_service_status(*name, ServingStatus::Serving).await;
    }
    reporter.set_service_status("", ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(leads_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let routes = routes.add_service(health).add_service(reflection);
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
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .trace_fn(crate::telemetry::grpc_request_span)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                token.cancelled().await;
                for name in ["", "leads"] {
                    reporter.set_service_status(name, ServingStatus::NotServing).await;
                }
            })
            .await?;
        Ok(())
    });
    Ok(Serving { addr, task })
}

/// A channel to another service that carries the caller's trace context in its metadata.
pub type TracedChannel = tonic::service::interceptor::InterceptedService<
    tonic::transport::Channel,
    fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
>;

/// Connects lazily, so a service starts even when the one it calls is not up yet.
pub fn traced_channel(endpoint: &str) -> anyhow::Result<TracedChannel> {
    let channel = tonic::transport::Channel::from_shared(endpoint.to_owned())?
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect_lazy();
    let inject: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = crate::telemetry::inject_grpc;
    Ok(tonic::service::interceptor::InterceptedService::new(channel, inject))
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
