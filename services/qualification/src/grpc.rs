use crate::{
    handler::{self, QualificationContext, QualificationError},
    scoring::MODEL_VERSION,
};
use chrono::{DateTime, Utc};
use leads_proto::v1::{self as pb, qualification_service_server::QualificationService};
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct QualificationApi {
    pub ctx: QualificationContext,
}

fn parse(org_id: &str, lead_id: &str) -> Result<Uuid, QualificationError> {
    contracts::values::validate_org_id(org_id)
        .map_err(|r| QualificationError::InvalidArgument { field: "org_id".into(), reason: r.reason })?;
    if lead_id.is_empty() {
        return Err(QualificationError::InvalidArgument { field: "lead_id".into(), reason: "is required".into() });
    }
    lead_id.parse().map_err(|_| QualificationError::NotFound(lead_id.to_owned()))
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

type QualificationRow = (i32, sqlx::types::Json<Vec<String>>, String, DateTime<Utc>, Option<i32>);

async fn read(
    ctx: &QualificationContext,
    org_id: &str,
    lead_id: Uuid,
) -> Result<pb::Qualification, QualificationError> {
    let row: Option<QualificationRow> = sqlx::query_as(
        "SELECT s.score, s.reasons, s.model_version, s.scored_at, f.manual_score \
         FROM scores s JOIN lead_features f ON f.org_id = s.org_id AND f.lead_id = s.lead_id \
         WHERE s.org_id = $1 AND s.lead_id = $2",
    )
    .bind(org_id)
    .bind(lead_id)
    .fetch_optional(&ctx.pool)
    .await?;
    let (score, reasons, model_version, scored_at, manual) =
        row.ok_or_else(|| QualificationError::NotFound(lead_id.to_string()))?;
    Ok(match manual {
        Some(manual) => pb::Qualification {
            lead_id: lead_id.to_string(),
            score: manual,
            source: pb::ScoreSource::Manual as i32,
            reasons: vec![format!("set by hand; the model ({model_version}) says {score}")],
            model_version: String::new(),
            scored_at: Some(timestamp(scored_at)),
        },
        None => pb::Qualification {
            lead_id: lead_id.to_string(),
            score,
            source: pb::ScoreSource::Ai as i32,
            reasons: reasons.0,
            model_version,
            scored_at: Some(timestamp(scored_at)),
        },
    })
}

#[tonic::async_trait]
impl QualificationService for QualificationApi {
    async fn get_qualification(
        &self,
        request: Request<pb::GetQualificationRequest>,
    ) -> Result<Response<pb::Qualification>, Status> {
        let request = request.into_inner();
        let lead_id = parse(&request.org_id, &request.lead_id)?;
        Ok(Response::new(read(&self.ctx, &request.org_id, lead_id).await?))
    }

    async fn requalify(&self, request: Request<pb::RequalifyRequest>) -> Result<Response<pb::Qualification>, Status> {
        let request = request.into_inner();
        let lead_id = parse(&request.org_id, &request.lead_id)?;
        let mut tx = self.ctx.pool.begin().await.map_err(QualificationError::from)?;
        let message = handler::rescore(&self.ctx, &mut tx, &request.org_id, lead_id, true).await?;
        platform::outbox::enqueue(&mut tx, message.as_slice()).await.map_err(QualificationError::from)?;
        tx.commit().await.map_err(QualificationError::from)?;
        self.ctx.outbox.notify();
        tracing::info!(lead_id = %lead_id, model = MODEL_VERSION, "lead requalified");
        Ok(Response::new(read(&self.ctx, &request.org_id, lead_id).await?))
    }
}
