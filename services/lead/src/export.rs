//! ExportLeads as CSV. ALL reads one repeatable-read snapshot, so every lead matching the
//! filters when the export starts appears exactly once however leads change meanwhile, and
//! streams it in chunks through a small channel so memory stays flat whatever the size.
//!
//! Exports run on a small pool of their own (`database.export_max_connections`), one
//! connection each: an export beyond it is refused RESOURCE_EXHAUSTED rather than queued, and
//! however many run, the service's main pool (the Leads page, the consumers) keeps every
//! connection.

use crate::{
    error::LeadError,
    query::{Cursor, LeadQuery, SortField},
    read,
};
use chrono::{DateTime, Utc};
use contracts::lead::{LeadView, ScoreSource, SourceKind, Status};
use futures::TryStreamExt;
use leads_proto::v1 as pb;
use sqlx::{PgPool, Row, postgres::PgRow, types::JsonRawValue};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use uuid::Uuid;

const ROWS_PER_CHUNK: usize = 2000;

pub const HEADER: [&str; 16] = [
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
    "attributes",
    "score_reasons",
];

/// The CSV's columns, in its order, for `FROM leads l JOIN contacts c ON c.id = l.contact_id`.
/// ALL reads only these, by position: decoding the page's full lead row by column name cost
/// the export more than writing its CSV did.
pub const CSV_COLUMNS: &str = "l.id, c.name, c.phone, c.email, l.status, l.score, l.score_source, l.agent_id, \
     l.source_kind, l.campaign_id, l.integration_name, l.interaction_count, l.created_at, l.last_interaction_at, \
     l.attributes, coalesce(l.score_reasons, '[]')";

/// One CSV line's cells, borrowed from a row as `CSV_COLUMNS` selects it or from a lead: an
/// export of millions of rows decodes each on the service's core while Postgres produces the
/// next on the other, so a row costs no allocation it can do without.
struct CsvCells<'a> {
    id: Uuid,
    name: Option<&'a str>,
    phone: Option<&'a str>,
    email: Option<&'a str>,
    status: Status,
    score: Option<i32>,
    score_source: Option<ScoreSource>,
    agent_id: Option<&'a str>,
    source_kind: SourceKind,
    campaign_id: Option<&'a str>,
    integration_name: Option<&'a str>,
    interaction_count: i64,
    created_at: DateTime<Utc>,
    last_interaction_at: DateTime<Utc>,
    /// One JSON object, empty when the lead has none.
    attributes: Cow<'a, str>,
    /// The reasons joined by "; ".
    score_reasons: Cow<'a, str>,
}

impl<'a> CsvCells<'a> {
    fn of_row(row: &'a PgRow) -> Result<Self, sqlx::Error> {
        let named = |index: &str, error: contracts::UnknownValue| sqlx::Error::ColumnDecode {
            index: index.into(),
            source: Box::new(error),
        };
        let json_column =
            |index: usize| -> Result<&'a str, sqlx::Error> { Ok(row.try_get::<&'a JsonRawValue, _>(index)?.get()) };
        let attributes = match json_column(14)? {
            "{}" => Cow::Borrowed(""),
            object => Cow::Owned(attributes_cell(&json_from(object, "attributes")?)),
        };
        let score_reasons = match json_column(15)? {
            "[]" => Cow::Borrowed(""),
            list => Cow::Owned(json_from::<Vec<String>>(list, "score_reasons")?.join("; ")),
        };
        Ok(Self {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            phone: row.try_get(2)?,
            email: row.try_get(3)?,
            status: Status::try_from(row.try_get::<&str, _>(4)?).map_err(|e| named("status", e))?,
            score: row.try_get(5)?,
            score_source: row.try_get(6)?,
            agent_id: row.try_get(7)?,
            source_kind: SourceKind::try_from(row.try_get::<&str, _>(8)?).map_err(|e| named("source_kind", e))?,
            campaign_id: row.try_get(9)?,
            integration_name: row.try_get(10)?,
            interaction_count: row.try_get(11)?,
            created_at: row.try_get(12)?,
            last_interaction_at: row.try_get(13)?,
            attributes,
            score_reasons,
        })
    }

    fn of_lead(lead: &'a LeadView) -> Self {
        Self {
            id: lead.id,
            name: lead.name.as_deref(),
            phone: lead.phone.as_deref(),
            email: lead.email.as_deref(),
            status: lead.status,
            score: lead.score,
            score_source: lead.score_source,
            agent_id: lead.agent_id.as_deref(),
            source_kind: lead.source_kind,
            campaign_id: lead.campaign_id.as_deref(),
            integration_name: lead.integration_name.as_deref(),
            interaction_count: lead.interaction_count,
            created_at: lead.created_at,
            last_interaction_at: lead.last_interaction_at,
            attributes: Cow::Owned(attributes_cell(&lead.attributes)),
            score_reasons: Cow::Owned(lead.score_reasons.join("; ")),
        }
    }
}

fn json_from<'de, T: serde::Deserialize<'de>>(json: &'de str, column: &str) -> Result<T, sqlx::Error> {
    serde_json::from_str(json).map_err(|e| sqlx::Error::ColumnDecode { index: column.into(), source: Box::new(e) })
}

/// The attributes as one JSON object, keys in order, for a reader to parse back; empty when
/// the lead has none.
fn attributes_cell(attributes: &BTreeMap<String, String>) -> String {
    if attributes.is_empty() { String::new() } else { serde_json::to_string(attributes).unwrap_or_default() }
}

/// A cell a spreadsheet opens as text, never as a formula (OWASP, "CSV Injection"): one that
/// starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading single quote. A
/// plain number (`+14155550100`, an E.164 phone) is left as it is: it cannot be a formula.
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    let risky = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let plain_number = || {
        let digits = cell.strip_prefix(['+', '-']).unwrap_or(cell);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    if risky && !plain_number() { Cow::Owned(format!("'{cell}")) } else { Cow::Borrowed(cell) }
}

fn write_row(writer: &mut csv::Writer<Vec<u8>>, row: &CsvCells<'_>) -> Result<(), csv::Error> {
    // Free text that came from outside (names, emails, agent ids, campaigns, integrations,
    // attributes, a language model's reasons) is neutralised; ids, statuses, numbers and
    // times are the service's own.
    fn text(value: Option<&str>) -> Cow<'_, str> {
        neutralise(value.unwrap_or(""))
    }
    let mut id = Uuid::encode_buffer();
    let mut score = NumberCell::default();
    let mut interactions = NumberCell::default();
    writer.write_record([
        row.id.hyphenated().encode_lower(&mut id).as_bytes(),
        text(row.name).as_bytes(),
        text(row.phone).as_bytes(),
        text(row.email).as_bytes(),
        row.status.display_name().as_bytes(),
        row.score.map_or("", |s| score.of(i64::from(s))).as_bytes(),
        row.score_source.map_or("", ScoreSource::as_str).as_bytes(),
        text(row.agent_id).as_bytes(),
        row.source_kind.as_str().as_bytes(),
        text(row.campaign_id).as_bytes(),
        text(row.integration_name).as_bytes(),
        interactions.of(row.interaction_count).as_bytes(),
        row.created_at.to_rfc3339().as_bytes(),
        row.last_interaction_at.to_rfc3339().as_bytes(),
        neutralise(&row.attributes).as_bytes(),
        neutralise(&row.score_reasons).as_bytes(),
    ])
}

/// A number written into a buffer of its own, without an allocation.
#[derive(Default)]
struct NumberCell {
    digits: [u8; 20],
}

impl NumberCell {
    fn of(&mut self, value: i64) -> &str {
        let mut at = self.digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            at -= 1;
            self.digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if value < 0 {
            at -= 1;
            self.digits[at] = b'-';
        }
        std::str::from_utf8(&self.digits[at..]).unwrap_or_default()
    }
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

/// The pool exports run on, and a permit per connection: an export holds one from its start
/// until its last chunk is handed over or its caller goes away.
#[derive(Clone)]
pub struct Exports {
    pool: PgPool,
    permits: Arc<Semaphore>,
    limit: u32,
}

impl Exports {
    /// A pool of `database.export_max_connections` connections as the lead service's role,
    /// opened as exports need them.
    pub fn connect(settings: &platform::Settings) -> anyhow::Result<Self> {
        let limit = settings.database.export_max_connections;
        let options =
            platform::db::service_options(settings, platform::ServiceName::Lead)?.application_name("leads-lead-export");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(limit)
            // A permit guarantees a connection; waiting longer means Postgres is unreachable.
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_lazy_with(options);
        Ok(Self::on(pool, limit))
    }

    /// Exports on `pool`, `limit` at once.
    pub fn on(pool: PgPool, limit: u32) -> Self {
        let permits = usize::try_from(limit).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Self { pool, permits: Arc::new(Semaphore::new(permits)), limit }
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, LeadError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            tracing::warn!(limit = self.limit, "export refused: the export limit is reached");
            LeadError::ExportLimit { limit: self.limit }
        })
    }
}

/// The rows ListLeads would return for the same request, as one chunk.
pub async fn current_page(exports: &Exports, query: &LeadQuery) -> Result<pb::ExportChunk, LeadError> {
    let _permit = exports.permit()?;
    let page = read::list_leads(&exports.pool, query, None).await?;
    let mut writer = new_writer(true)?;
    for lead in &page.leads {
        write_row(&mut writer, &CsvCells::of_lead(lead)).map_err(|e| LeadError::invalid("export", e.to_string()))?;
    }
    chunk(writer, page.leads.len() as i64)
}

/// Every matching lead in the snapshot taken when the export starts; refused at once when
/// the export limit is reached.
pub fn all(exports: &Exports, query: LeadQuery) -> Result<ChunkReceiver, LeadError> {
    let permit = exports.permit()?;
    let pool = exports.pool.clone();
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Err(error) = stream_all(&pool, &query, &sender).await {
            let _ = sender.send(Err(error)).await;
        }
        drop(permit);
    });
    Ok(receiver)
}

/// The export's first chunk comes from the page's own plan (the sort's index, a LIMIT): its
/// rows leave at once. The rest, after the first chunk's last lead, comes from one plan for
/// all of it, whose sort of every matching lead would otherwise hold back the first byte for
/// seconds at millions of leads. Both read the one snapshot, in the same order, so every lead
/// appears exactly once.
async fn stream_all(
    pool: &PgPool,
    query: &LeadQuery,
    sender: &mpsc::Sender<Result<pb::ExportChunk, LeadError>>,
) -> Result<(), LeadError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let select = format!("SELECT {CSV_COLUMNS} FROM leads l JOIN contacts c ON c.id = l.contact_id");
    let mut head = sqlx::QueryBuilder::new(select.as_str());
    query.push_filters(&mut head)?;
    query.push_order(&mut head);
    head.push(" LIMIT ").push_bind(ROWS_PER_CHUNK as i64);
    let first = head.build().persistent(!query.has_search()).fetch_all(&mut *tx).await?;
    let mut writer = new_writer(true)?;
    let mut last = None;
    for row in &first {
        let cells = CsvCells::of_row(row)?;
        write_row(&mut writer, &cells).map_err(|e| LeadError::invalid("export", e.to_string()))?;
        last = Some(cursor_after(query, &cells));
    }
    let after = match last {
        Some(after) if first.len() == ROWS_PER_CHUNK => after,
        _ => {
            let _ = sender.send(chunk(writer, first.len() as i64)).await;
            return Ok(());
        }
    };
    if sender.send(chunk(writer, first.len() as i64)).await.is_err() {
        return Ok(()); // the caller went away
    }
    let mut sql = sqlx::QueryBuilder::new(select);
    query.push_filters(&mut sql)?;
    query.push_cursor(&mut sql, Some(&after));
    query.push_order(&mut sql);
    let mut rows = sql.build().persistent(!query.has_search()).fetch(&mut *tx);
    let mut writer = new_writer(false)?;
    let mut in_chunk = 0usize;
    while let Some(row) = rows.try_next().await? {
        write_row(&mut writer, &CsvCells::of_row(&row)?).map_err(|e| LeadError::invalid("export", e.to_string()))?;
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

/// Where the export goes on after `row`, in the query's order.
fn cursor_after(query: &LeadQuery, row: &CsvCells<'_>) -> Cursor {
    match query.sort {
        SortField::LastInteraction => Cursor::Time(row.last_interaction_at, row.id),
        SortField::Created => Cursor::Time(row.created_at, row.id),
        SortField::Score => Cursor::Score(i64::from(row.score.unwrap_or(-1)), row.id),
    }
}

#[cfg(test)]
mod tests {
    use super::neutralise;

    #[test]
    fn cells_that_a_spreadsheet_would_run_are_quoted() {
        for (cell, expected) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("Ada Lovelace", "Ada Lovelace"),
            ("ada@example.com", "ada@example.com"),
            ("+14155550100", "+14155550100"),
            ("-5", "-5"),
            ("", ""),
        ] {
            assert_eq!(neutralise(cell), expected, "{cell:?}");
        }
    }
}
