//! Reads: one lead, a page of leads with its total, a lead's timeline.

use crate::{
    error::LeadError,
    model::{LEAD_VIEW_COLUMNS, LeadView},
    query::LeadQuery,
};
use sqlx::PgPool;
use uuid::Uuid;

pub async fn get_lead(pool: &PgPool, org_id: &str, lead_id: Uuid) -> Result<LeadView, LeadError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LEAD_VIEW_COLUMNS} FROM leads l JOIN contacts c ON c.id = l.contact_id \
         WHERE l.org_id = $1 AND l.id = $2"
    )))
    .bind(org_id)
    .bind(lead_id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| LeadError::NotFound(lead_id.to_string()))
}

pub struct Page {
    pub leads: Vec<LeadView>,
    pub next_page_token: String,
    pub total_count: Option<i64>,
}

/// The page and its total come from one snapshot, so they agree with each other.
pub async fn list_leads(pool: &PgPool, query: &LeadQuery, with_total: bool) -> Result<Page, LeadError> {
    let mut tx = pool.begin().await?;
    if with_total {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    }
    let mut sql = query.page_sql()?;
    let mut leads: Vec<LeadView> = sql.build_query_as().fetch_all(&mut *tx).await?;
    let has_more = leads.len() as i64 > query.page_size;
    leads.truncate(query.page_size as usize);
    let next_page_token = match (has_more, leads.last()) {
        (true, Some(last)) => query.token_of(last),
        _ => String::new(),
    };
    let total_count = if with_total { Some(count(&mut tx, query).await?) } else { None };
    tx.commit().await?;
    Ok(Page { leads, next_page_token, total_count })
}

/// The number of leads matching the filters: from the maintained counts when every filter is
/// one of their dimensions, else by counting rows.
pub async fn count(conn: &mut sqlx::PgConnection, query: &LeadQuery) -> Result<i64, LeadError> {
    let mut counted = sqlx::QueryBuilder::new("SELECT coalesce(sum(k.n), 0)::bigint FROM lead_counts k");
    if query.push_count_filters(&mut counted) {
        return Ok(counted.build_query_scalar().fetch_one(conn).await?);
    }
    let from = if query.needs_contacts() {
        "SELECT count(*) FROM leads l JOIN contacts c ON c.id = l.contact_id"
    } else {
        "SELECT count(*) FROM leads l"
    };
    let mut sql = sqlx::QueryBuilder::new(from);
    query.push_filters(&mut sql)?;
    Ok(sql.build_query_scalar().fetch_one(conn).await?)
}
