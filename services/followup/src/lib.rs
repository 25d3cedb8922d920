//! The follow-up service. Follow-ups arrive with their own issue; until then its gRPC
//! surface answers UNIMPLEMENTED, while the service runs, migrates its schema and reports
//! health like every other.

use leads_proto::v1::{self as pb, follow_up_service_server as server};
use platform::{
    ServiceName,
    service::{Infra, Running, ServiceBase},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/followup");

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let base = ServiceBase::start(infra, ServiceName::FollowUp, &MIGRATOR, &token).await?;
    let routes = tonic::service::Routes::new(server::FollowUpServiceServer::new(FollowUpApi));
    base.serve(infra, &["leads.v1.FollowUpService"], routes, token).await
}

struct FollowUpApi;

fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!("{method} is not available yet"))
}

#[tonic::async_trait]
impl server::FollowUpService for FollowUpApi {
    async fn create_follow_up(&self, _: Request<pb::CreateFollowUpRequest>) -> Result<Response<pb::FollowUp>, Status> {
        Err(not_yet("CreateFollowUp"))
    }

    async fn list_follow_ups(
        &self,
        _: Request<pb::ListFollowUpsRequest>,
    ) -> Result<Response<pb::ListFollowUpsResponse>, Status> {
        Err(not_yet("ListFollowUps"))
    }

    async fn complete_follow_up(
        &self,
        _: Request<pb::FollowUpActionRequest>,
    ) -> Result<Response<pb::FollowUp>, Status> {
        Err(not_yet("CompleteFollowUp"))
    }

    async fn cancel_follow_up(&self, _: Request<pb::FollowUpActionRequest>) -> Result<Response<pb::FollowUp>, Status> {
        Err(not_yet("CancelFollowUp"))
    }
}
