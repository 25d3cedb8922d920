use crate::{
    IngestContext, decode,
    handler::{self, Candidate, IngestError, Outcome},
    validate,
};
use leads_proto::v1::{self as pb, ingest_service_server::IngestService};
use platform::auth::Caller;
use prost::Message;
use tonic::{Request, Response, Status};

/// The largest batch one `Ingest` call takes.
const MAX_BATCH: usize = 1000;
/// Payload bytes a `ListRejections` page carries at most (a larger first rejection goes
/// alone), under the 4 MiB a gRPC client takes by default.
const MAX_PAGE_BYTES: i64 = 3 * 1024 * 1024;

pub struct IngestApi {
    pub ctx: IngestContext,
}

fn invalid(field: &str, reason: impl Into<String>) -> IngestError {
    IngestError::InvalidArgument { field: field.to_owned(), reason: reason.into() }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn ingest(&self, request: Request<pb::IngestRequest>) -> Result<Response<pb::IngestResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        contracts::values::validate_org_id(&request.org_id).map_err(|r| invalid("org_id", r.reason))?;
        if request.events.is_empty() {
            return Err(invalid("events", "must hold at least one event").into());
        }
        if request.events.len() > MAX_BATCH {
            return Err(invalid("events", format!("must hold at most {MAX_BATCH} events")).into());
        }
        let candidates: Vec<Candidate> = request
            .events
            .into_iter()
            .map(|event| {
                let payload = event.encode_to_vec();
                let event_id = (!event.event_id.is_empty()).then(|| event.event_id.clone());
                match decode::from_proto(event).and_then(validate::validate) {
                    Ok(interaction) => {
                        Candidate::Valid { org_id: request.org_id.clone(), interaction: Box::new(interaction) }
                    }
                    Err(refusal) => Candidate::Refused {
                        org_id: request.org_id.clone(),
                        event_id,
                        subject: format!("grpc:IngestService.Ingest:{}", request.org_id),
                        refusal,
                        payload,
                        source_key: format!("grpc:{}", uuid::Uuid::now_v7()),
                    },
                }
            })
            .collect();
        let outcomes = platform::error::retry_transient(|| handler::handle(&self.ctx, &candidates)).await?;
        let results = candidates
            .iter()
            .zip(outcomes)
            .map(|(candidate, outcome)| {
                let event_id = match candidate {
                    Candidate::Valid { interaction, .. } => interaction.event_id.clone(),
                    Candidate::Refused { event_id, .. } => event_id.clone().unwrap_or_default(),
                };
                let (outcome, field, reason) = match outcome {
                    Outcome::Accepted => (pb::IngestOutcome::Accepted, String::new(), String::new()),
                    Outcome::Duplicate => (pb::IngestOutcome::Duplicate, String::new(), String::new()),
                    Outcome::Rejected(refusal) => {
                        (pb::IngestOutcome::Rejected, refusal.field.clone(), refusal.to_string())
                    }
                };
                pb::IngestResult { event_id, outcome: outcome as i32, reason, field }
            })
            .collect();
        Ok(Response::new(pb::IngestResponse { results }))
    }

    async fn list_rejections(
        &self,
        request: Request<pb::ListRejectionsRequest>,
    ) -> Result<Response<pb::ListRejectionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        caller.check_org(&request.org_id)?;
        contracts::values::validate_org_id(&request.org_id).map_err(|r| invalid("org_id", r.reason))?;
        contracts::values::bounded("page_token", &request.page_token, contracts::values::limits::MAX_PAGE_TOKEN_CHARS)
            .map_err(|r| invalid(&r.field, r.reason))?;
        let page_size = match request.page_size {
            0 => 100,
            n if (1..=1000).contains(&n) => i64::from(n),
            _ => return Err(invalid("page_size", "must be between 1 and 1000").into()),
        };
        let after: Option<(chrono::DateTime<chrono::Utc>, uuid::Uuid)> = if request.page_token.is_empty() {
            None
        } else {
            let cursor = platform::token::decode(&request.page_token)
                .ok_or_else(|| invalid("page_token", "is not a token this service issued"))?;
            let (at, id) =
                cursor.split_once('|').ok_or_else(|| invalid("page_token", "is not a token this service issued"))?;
            let at = chrono::DateTime::parse_from_rfc3339(at)
                .map_err(|_| invalid("page_token", "is not a token this service issued"))?;
            let id = id.parse().map_err(|_| invalid("page_token", "is not a token this service issued"))?;
            Some((at.into(), id))
        };
        type Row = (uuid::Uuid, Option<String>, String, String, String, Vec<u8>, chrono::DateTime<chrono::Utc>, i64);
        // A page holds at most `page_size` rejections and `MAX_PAGE_BYTES` of their payloads
        // (always at least one): a thousand refused events of 256 KiB would be a quarter of
        // a gigabyte. Only the rows sent are read whole.
        let rows: Vec<Row> = sqlx::query_as(
            "WITH page AS ( \
               SELECT id, event_id, subject, field, reason, received_at, octet_length(payload) AS size \
               FROM rejections WHERE org_id = $1 AND ($2::timestamptz IS NULL OR (received_at, id) < ($2, $3)) \
               ORDER BY received_at DESC, id DESC LIMIT $4), \
             sized AS (SELECT *, sum(size) OVER (ORDER BY received_at DESC, id DESC) - size AS before, \
                              count(*) OVER () AS in_page FROM page) \
             SELECT s.id, s.event_id, s.subject, s.field, s.reason, r.payload, s.received_at, s.in_page \
             FROM sized s JOIN rejections r ON r.id = s.id \
             WHERE s.before + s.size <= $5 OR s.before = 0 ORDER BY s.received_at DESC, s.id DESC",
        )
        .bind(&request.org_id)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(page_size + 1)
        .bind(MAX_PAGE_BYTES)
        .fetch_all(&self.ctx.pool)
        .await
        .map_err(IngestError::from)?;
        let in_page = rows.first().map_or(0, |r| r.7);
        let has_more = in_page > page_size || (rows.len() as i64) < in_page;
        let rows = &rows[..rows.len().min(page_size as usize)];
        let next_page_token = match (has_more, rows.last()) {
            (true, Some(last)) => platform::token::encode(&format!("{}|{}", last.6.to_rfc3339(), last.0)),
            _ => String::new(),
        };
        let rejections = rows
            .iter()
            .map(|(id, event_id, subject, field, reason, payload, at, _)| pb::Rejection {
                id: id.to_string(),
                event_id: event_id.clone().unwrap_or_default(),
                subject: subject.clone(),
                field: field.clone(),
                reason: reason.clone(),
                payload: payload.clone(),
                received_at: at.to_rfc3339(),
            })
            .collect();
        Ok(Response::new(pb::ListRejectionsResponse { rejections, next_page_token }))
    }
}
