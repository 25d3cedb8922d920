//! The broadcast-tracking service. Until its issue lands, its gRPC surface answers
//! UNIMPLEMENTED while the service runs, migrates its schema and reports health.

use leads_proto::v1::{self as pb, broadcast_tracking_service_server as server};
use platform::{
    ServiceName,
    service::{Infra, Running, ServiceBase},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/broadcast");

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let base = ServiceBase::start(infra, ServiceName::Broadcast, &MIGRATOR, &token).await?;
    let routes = tonic::service::Routes::new(server::BroadcastTrackingServiceServer::new(BroadcastApi));
    base.serve(infra, &["leads.v1.BroadcastTrackingService"], routes, token).await
}

struct BroadcastApi;

#[tonic::async_trait]
impl server::BroadcastTrackingService for BroadcastApi {
    async fn get_broadcast_history(
        &self,
        _: Request<pb::GetBroadcastHistoryRequest>,
    ) -> Result<Response<pb::GetBroadcastHistoryResponse>, Status> {
        Err(Status::unimplemented("GetBroadcastHistory is not available yet"))
    }

    async fn get_campaign_stats(
        &self,
        _: Request<pb::GetCampaignStatsRequest>,
    ) -> Result<Response<pb::CampaignStats>, Status> {
        Err(Status::unimplemented("GetCampaignStats is not available yet"))
    }
}
