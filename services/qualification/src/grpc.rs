use crate::{
    QualificationContext, engine,
    error::QualificationError,
    handler,
    training::{self, ModelInfo},
};
use chrono::{DateTime, Utc};
use contracts::time::timestamp;
use leads_proto::v1::{self as pb, qualification_service_server::QualificationService};
use platform::auth::Caller;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct QualificationApi {
    /// Its lead client is asked whose lead it is before an agent reads its score.
    pub ctx: QualificationContext,
}

fn parse(org_id: &str, lead_id: &str) -> Result<Uuid, QualificationError> {
    contracts::values::validate_org_id(org_id)?;
    if lead_id.is_empty() {
        return Err(QualificationError::invalid("lead_id", "is required"));
    }
    contracts::values::bounded("lead_id", lead_id, contracts::values::limits::MAX_ID_CHARS)?;
    lead_id.parse().map_err(|_| QualificationError::NotFound(lead_id.to_owned()))
}

type QualificationRow = (i32, sqlx::types::Json<Vec<String>>, String, DateTime<Utc>, Option<i32>);

async fn read(
    ctx: &QualificationContext,
    org_id: &str,
    lead_id: Uuid,
) -> Result<pb::Qualification, QualificationError> {
    let row: Option<QualificationRow> = sqlx::query_as(
        "SELECT s.score, s.reasons, s.model_version, s.scored_at, l.manual_score \
         FROM scores s JOIN lead_state l ON l.org_id = s.org_id AND l.lead_id = s.lead_id \
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
            reasons: reasons.0.iter().map(|reason| engine::readable(reason)).collect(),
            model_version,
            scored_at: Some(timestamp(scored_at)),
        },
    })
}

fn model_info(org_id: String, info: ModelInfo) -> pb::ModelInfo {
    pb::ModelInfo {
        org_id,
        version: info.version,
        in_use: info.in_use,
        training_size: info.training_size,
        positives: info.positives,
        negatives: info.negatives,
        holdout_auc: info.holdout_auc,
        prior_holdout_auc: info.prior_holdout_auc,
        trained_at: info.trained_at.map(timestamp),
        scoring_model: info.scoring_model,
        labelled_positives: info.labelled_positives,
        labelled_negatives: info.labelled_negatives,
    }
}

#[tonic::async_trait]
impl QualificationService for QualificationApi {
    async fn get_qualification(
        &self,
        request: Request<pb::GetQualificationRequest>,
    ) -> Result<Response<pb::Qualification>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        let lead_id = parse(&request.org_id, &request.lead_id)?;
        platform::visibility::check_lead(&self.ctx.lead, &caller, &request.org_id, &request.lead_id).await?;
        Ok(Response::new(read(&self.ctx, &request.org_id, lead_id).await?))
    }

    async fn requalify(&self, request: Request<pb::RequalifyRequest>) -> Result<Response<pb::Qualification>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        let lead_id = parse(&request.org_id, &request.lead_id)?;
        handler::requalify(&self.ctx, &request.org_id, lead_id).await?;
        tracing::info!(lead_id = %lead_id, "lead requalified");
        Ok(Response::new(read(&self.ctx, &request.org_id, lead_id).await?))
    }

    async fn get_model(&self, request: Request<pb::GetModelRequest>) -> Result<Response<pb::ModelInfo>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        contracts::values::validate_org_id(&request.org_id).map_err(QualificationError::from)?;
        let info = training::model_info(&self.ctx.pool, &request.org_id).await?;
        Ok(Response::new(model_info(request.org_id, info)))
    }

    async fn train_model(&self, request: Request<pb::TrainModelRequest>) -> Result<Response<pb::ModelInfo>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        contracts::values::validate_org_id(&request.org_id).map_err(QualificationError::from)?;
        let Some(info) = training::train_org(&self.ctx, &request.org_id).await? else {
            return Err(Status::aborted("the organisation's model is being trained by another process, retry"));
        };
        Ok(Response::new(model_info(request.org_id, info)))
    }
}
