//! ExportLeads as CSV. ALL reads one repeatable-read snapshot, so every lead matching the
//! filters when the export starts appears exactly once however leads change meanwhile, and
//! streams it in chunks through a small channel so memory stays flat whatever the size.

use crate::{error::LeadError, model::LeadView, query::LeadQuery, read};
use futures::TryStreamExt;
use leads_proto::v1 as pb;
use sqlx::PgPool;
use tokio::sync::mpsc;

const ROWS_PER_CHUNK: usize = 2000;

pub const HEADER: [&str; 14] = [
    "lead_id",
    "contact_name",
    "phone",
    "email",
    "status",
    "score",
    "score_source",
    "agent_id",
    "source",
    "campaign_id",
    "integration",
    "interactions",
    "created_at",
    "last_interaction_at",
];

fn write_row(writer: &mut csv::Writer<Vec<u8>>, lead: &LeadView) -> Result<(), csv::Error> {
    writer.write_record([
        lead.id.to_string().as_str(),
        lead.name.as_deref().unwrap_or(""),
        lead.phone.as_deref().unwrap_or(""),
        lead.email.as_deref().unwrap_or(""),
        lead.status().display_name(),
        &lead.score.map(|s| s.to_string()).unwrap_or_default(),
        lead.score_source.as_deref().unwrap_or(""),
        lead.agent_id.as_deref().unwrap_or(""),
        &lead.source_kind,
        lead.campaign_id.as_deref().unwrap_or(""),
        lead.integration_name.as_deref().unwrap_or(""),
        &lead.interaction_count.to_string(),
        &lead.created_at.to_rfc3339(),
        &lead.last_interaction_at.to_rfc3339(),
    ])
}

fn chunk(writer: csv::Writer<Vec<u8>>, rows: i64) -> Result<pb::ExportChunk, LeadError> {
    let csv = writer.into_inner().map_err(|e| LeadError::invalid("export", format!("cannot write CSV: {e}")))?;
    Ok(pb::ExportChunk { csv, rows })
}

fn new_writer(with_header: bool) -> Result<csv::Writer<Vec<u8>>, LeadError> {
    let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::with_capacity(256 * 1024));
    if with_header {
        writer.write_record(HEADER).map_err(|e| LeadError::invalid("export", e.to_string()))?;
    }
    Ok(writer)
}

pub type ChunkReceiver = mpsc::Receiver<Result<pb::ExportChunk, LeadError>>;

/// The rows ListLeads would return for the same request, as one chunk.
pub async fn current_page(pool: &PgPool, query: &LeadQuery) -> Result<pb::ExportChunk, LeadError> {
    let page = read::list_leads(pool, query, false).await?;
    let mut writer = new_writer(true)?;
    for lead in &page.leads {
        write_row(&mut writer, lead).map_err(|e| LeadError::invalid("export", e.to_string()))?;
    }
    chunk(writer, page.leads.len() as i64)
}

/// Every matching lead in the snapshot taken when the export starts.
pub fn all(pool: PgPool, query: LeadQuery) -> ChunkReceiver {
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Err(error) = stream_all(&pool, &query, &sender).await {
            let _ = sender.send(Err(error)).await;
        }
    });
    receiver
}

async fn stream_all(
    pool: &PgPool,
    query: &LeadQuery,
    sender: &mpsc::Sender<Result<pb::ExportChunk, LeadError>>,
) -> Result<(), LeadError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let mut sql = sqlx::QueryBuilder::new(format!(
        "SELECT {} FROM leads l JOIN contacts c ON c.id = l.contact_id",
        crate::model::LEAD_VIEW_COLUMNS
    ));
    query.push_filters(&mut sql)?;
    query.push_order(&mut sql);
    let mut rows = sql.build_query_as::<LeadView>().persistent(!query.has_search()).fetch(&mut *tx);
    let mut writer = new_writer(true)?;
    let mut in_chunk = 0usize;
    while let Some(lead) = rows.try_next().await? {
        write_row(&mut writer, &lead).map_err(|e| LeadError::invalid("export", e.to_string()))?;
        in_chunk += 1;
        if in_chunk == ROWS_PER_CHUNK {
            let full = std::mem::replace(&mut writer, new_writer(false)?);
            if sender.send(chunk(full, in_chunk as i64)).await.is_err() {
                return Ok(()); // the caller went away
            }
            in_chunk = 0;
        }
    }
    let _ = sender.send(chunk(writer, in_chunk as i64)).await;
    Ok(())
}
