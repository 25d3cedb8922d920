//! The assignment service. Agents and assignments arrive with their own issue; until then
//! its gRPC surface answers UNIMPLEMENTED, while the service runs, migrates its schema and
//! reports health like every other.

use leads_proto::v1::{self as pb, assignment_service_server as server};
use platform::{
    ServiceName,
    service::{Infra, Running, ServiceBase},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/assignment");

pub async fn start(infra: &Infra, token: CancellationToken) -> anyhow::Result<Running> {
    let base = ServiceBase::start(infra, ServiceName::Assignment, &MIGRATOR, &token).await?;
    let routes = tonic::service::Routes::new(server::AssignmentServiceServer::new(AssignmentApi));
    base.serve(infra, &["leads.v1.AssignmentService"], routes, token).await
}

struct AssignmentApi;

fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!("{method} is not available yet"))
}

#[tonic::async_trait]
impl server::AssignmentService for AssignmentApi {
    async fn upsert_agent(&self, _: Request<pb::UpsertAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        Err(not_yet("UpsertAgent"))
    }

    async fn list_agents(&self, _: Request<pb::ListAgentsRequest>) -> Result<Response<pb::ListAgentsResponse>, Status> {
        Err(not_yet("ListAgents"))
    }

    async fn assign_lead(&self, _: Request<pb::AssignLeadRequest>) -> Result<Response<pb::Assignment>, Status> {
        Err(not_yet("AssignLead"))
    }

    async fn bulk_assign(&self, _: Request<pb::BulkAssignRequest>) -> Result<Response<pb::BulkAssignResponse>, Status> {
        Err(not_yet("BulkAssign"))
    }

    async fn get_assignment_history(
        &self,
        _: Request<pb::GetAssignmentHistoryRequest>,
    ) -> Result<Response<pb::GetAssignmentHistoryResponse>, Status> {
        Err(not_yet("GetAssignmentHistory"))
    }
}
