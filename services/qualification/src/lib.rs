//! The qualification service. Scoring arrives with its own issue; until then its gRPC
//! surface answers UNIMPLEMENTED, while the service already runs, migrates its schema and
//! reports health like every other, so operators can deploy and scale it separately.

use leads_proto::v1::{self as pb, qualification_service_server as server};
use platform::{
    ServiceName,
    service::{Infra, Running, ServiceBase},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/qualification");

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let base = ServiceBase::start(infra, ServiceName::Qualification, &MIGRATOR, &token).await?;
    let routes = tonic::service::Routes::new(server::QualificationServiceServer::new(QualificationApi));
    base.serve(infra, &["leads.v1.QualificationService"], routes, token).await
}

struct QualificationApi;

#[tonic::async_trait]
impl server::QualificationService for QualificationApi {
    async fn get_qualification(
        &self,
        _: Request<pb::GetQualificationRequest>,
    ) -> Result<Response<pb::Qualification>, Status> {
        Err(Status::unimplemented("GetQualification is not available yet"))
    }

    async fn requalify(&self, _: Request<pb::RequalifyRequest>) -> Result<Response<pb::Qualification>, Status> {
        Err(Status::unimplemented("Requalify is not available yet"))
    }
}
