//! Reads: one lead, a page of leads with its total, a lead's timeline.

use crate::{
    error::LeadError,
    model::LEAD_VIEW_COLUMNS,
    query::{LeadQuery, Search, WordsOn},
};
use contracts::lead::LeadView;
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
    pub total: Option<Total>,
}

/// How many leads match: exact, or above the exact limit the planner's estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Total {
    pub count: i64,
    pub estimated: bool,
}

/// How a total the maintained counts cannot answer is counted from the rows.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    /// Exact up to this many matching leads; above, the planner's estimate.
    pub exact_up_to: i64,
    /// The longest counting may take before the planner's estimate answers instead.
    pub budget: std::time::Duration,
    /// A count the planner prices above this (in its cost units) is not started: the
    /// planner's estimate answers at once.
    pub max_count_cost: f64,
}

/// The page and its total come from one snapshot, so they agree with each other (`totals`
/// `None`: no total). A total counted from the rows is counted beside the page, on a second
/// connection that imports the page's snapshot, when the pool has one idle: the page then waits
/// for the slower of the two rather than for both.
pub async fn list_leads(pool: &PgPool, query: &LeadQuery, totals: Option<Totals>) -> Result<Page, LeadError> {
    let mut tx = pool.begin().await?;
    if totals.is_some() {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    }
    let counting = match totals {
        Some(totals) => Some(plan_count(&mut tx, query, totals).await?),
        None => None,
    };
    let beside = match counting {
        Some(Counting::FromRows(plan)) => match pool.try_acquire() {
            Some(conn) => {
                let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()").fetch_one(&mut *tx).await?;
                Some((conn, snapshot, plan))
            }
            None => None,
        },
        _ => None,
    };
    let counted_beside = async {
        let Some((conn, snapshot, plan)) = beside else { return Ok::<_, LeadError>(None) };
        // Postgres notices its statement timeout only between steps of a plan (before JIT was
        // turned off, 60 ms late, after compiling one), so the page waits no longer than the
        // budget: past it the count goes on alone until Postgres stops it, and its connection
        // returns to the pool.
        let mut counting = tokio::spawn(count_in_snapshot(conn, snapshot, query.clone(), plan));
        match tokio::time::timeout(plan.totals.budget, &mut counting).await {
            Ok(Ok(counted)) => Ok(Some(counted?)),
            Ok(Err(error)) => {
                tracing::warn!(%error, "the count beside the page stopped, the total is estimated");
                Ok(Some(plan.out_of_time()))
            }
            Err(_) => {
                // Its answer is no longer wanted, but an error it ends in is still said.
                tokio::spawn(async move {
                    if let Ok(Err(error)) = counting.await {
                        tracing::debug!(%error, "a count that gave way to the estimate ended in an error");
                    }
                });
                Ok(Some(plan.out_of_time()))
            }
        }
    };
    let ((leads, next_page_token), counted_beside) = tokio::try_join!(page(&mut tx, query), counted_beside)?;
    let total = match (counting, counted_beside) {
        (_, Some(total)) | (Some(Counting::Done(total)), None) => Some(total),
        (Some(Counting::FromRows(plan)), None) => Some(count_rows(&mut tx, query, plan).await?),
        (None, None) => None,
    };
    tx.commit().await?;
    Ok(Page { leads, next_page_token, total })
}

/// A page of leads and the token of the next, read in `conn`'s transaction.
async fn page(conn: &mut sqlx::PgConnection, query: &LeadQuery) -> Result<(Vec<LeadView>, String), LeadError> {
    let words_on = words_on(conn, query).await?;
    let mut sql = query.page_sql(words_on)?;
    let mut leads: Vec<LeadView> = sql.build_query_as().persistent(!query.has_search()).fetch_all(&mut *conn).await?;
    let has_more = leads.len() as i64 > query.page_size;
    leads.truncate(query.page_size as usize);
    let next_page_token = match (has_more, leads.last()) {
        (true, Some(last)) => query.token_of(last),
        _ => String::new(),
    };
    Ok((leads, next_page_token))
}

/// Where a page matches a search's words. From the matching contacts, each of their leads is
/// read and the matches sorted: about 7 us a contact. Walking the leads in the page's order and
/// checking each lead's copy of the words finds a page after `page / share` leads at about
/// 4 us each, where `share` is the matching contacts' share of the organisation's. Walking
/// wins when `matching^2 > page * contacts * 4 / 7`. Both counts are the planner's estimates
/// (its statistics of the words), which cost a plan but no rows.
async fn words_on(conn: &mut sqlx::PgConnection, query: &LeadQuery) -> Result<WordsOn, LeadError> {
    let Search { words: Some(words), digits: None } = &query.search else { return Ok(WordsOn::Contacts) };
    let contacts =
        estimated_rows(conn, "EXPLAIN SELECT 1 FROM contacts WHERE org_id = $1", &query.org_id, None).await?;
    let matching = estimated_rows(
        conn,
        "EXPLAIN SELECT 1 FROM contacts WHERE org_id = $1 AND search_words @@ $2::tsquery",
        &query.org_id,
        Some(words),
    )
    .await?;
    let page = (query.page_size + 1) as f64;
    Ok(if matching * matching * 7.0 > page * contacts * 4.0 { WordsOn::Leads } else { WordsOn::Contacts })
}

/// The rows the planner expects of a query: `rows=` on the first line of its plan.
async fn estimated_rows(
    conn: &mut sqlx::PgConnection,
    explain: &'static str,
    org_id: &str,
    words: Option<&str>,
) -> Result<f64, LeadError> {
    let mut plan = sqlx::query_scalar::<_, String>(explain).bind(org_id);
    if let Some(words) = words {
        plan = plan.bind(words);
    }
    let first_line: String = plan.persistent(false).fetch_one(conn).await?;
    Ok(rows_of_plan_line(&first_line))
}

/// `rows=` of one line of a text plan; 0 when the line has none (never seen: every node has it).
fn rows_of_plan_line(line: &str) -> f64 {
    line.split_once(" rows=")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|rows| rows.parse().ok())
        .unwrap_or(0.0)
}

/// How a page's total is had: already, or by counting rows.
#[derive(Debug, Clone, Copy)]
enum Counting {
    Done(Total),
    FromRows(RowCount),
}

/// A count of the matching rows to make, up to the exact limit and within the budget.
#[derive(Debug, Clone, Copy)]
struct RowCount {
    totals: Totals,
    /// The planner's estimate of the matches, the answer when the count does not finish.
    estimate: i64,
}

/// The number of leads matching the filters: exact from the maintained counts when every filter
/// is one of their dimensions (from the smallest table that has them); else the rows are to be
/// counted (`count_rows`), exactly up to `totals.exact_up_to` matches and within
/// `totals.budget`, and the planner's estimate answers otherwise (counting every row a broad
/// search matches among millions of leads took over a second). A count the planner expects far
/// above the limit is not started. `conn` is in a transaction.
async fn plan_count(conn: &mut sqlx::PgConnection, query: &LeadQuery, totals: Totals) -> Result<Counting, LeadError> {
    let mut counted = sqlx::QueryBuilder::new(format!(
        "SELECT coalesce(sum(k.n), 0)::bigint FROM {}",
        query.maintained_totals().rows()
    ));
    if query.push_count_filters(&mut counted) {
        let count = counted.build_query_scalar().fetch_one(&mut *conn).await?;
        return Ok(Counting::Done(Total { count, estimated: false }));
    }
    let mut explain = sqlx::QueryBuilder::new(format!("EXPLAIN {}", matching_rows(query)));
    query.push_filters(&mut explain)?;
    let first_line: String = explain.build_query_scalar().persistent(false).fetch_one(&mut *conn).await?;
    let estimate = rows_of_plan_line(&first_line) as i64;
    let plan = RowCount { totals, estimate };
    if estimate > totals.exact_up_to.saturating_mul(PLAINLY_ABOVE) {
        return Ok(Counting::Done(plan.above_the_limit()));
    }
    // A count the planner prices beyond what the budget buys would only give way to the
    // estimate, and Postgres may notice its statement timeout late, after the page has
    // answered: the machine would be busy with a count nobody waits for.
    if count_cost(&first_line, totals.exact_up_to + 1) > totals.max_count_cost {
        return Ok(Counting::Done(plan.out_of_time()));
    }
    Ok(Counting::FromRows(plan))
}

/// What the planner expects counting the matches up to `limit` to cost, from the first line
/// of the matches' plan: its start, and the share of the rest that `limit` rows take.
fn count_cost(plan_line: &str, limit: i64) -> f64 {
    let Some((startup, total)) = costs_of_plan_line(plan_line) else { return 0.0 };
    let rows = rows_of_plan_line(plan_line);
    let share = if rows > limit as f64 { limit as f64 / rows } else { 1.0 };
    startup + (total - startup) * share
}

/// `cost=startup..total` of one line of a text plan.
fn costs_of_plan_line(line: &str) -> Option<(f64, f64)> {
    let (_, rest) = line.split_once("(cost=")?;
    let (startup, rest) = rest.split_once("..")?;
    let total = rest.split(' ').next()?;
    Some((startup.parse().ok()?, total.parse().ok()?))
}

impl RowCount {
    /// The total when the matches are more than the exact limit.
    fn above_the_limit(self) -> Total {
        Total { count: self.estimate.max(self.totals.exact_up_to + 1), estimated: true }
    }

    /// The total when counting outlasted its budget.
    fn out_of_time(self) -> Total {
        Total { count: self.estimate.max(1), estimated: true }
    }

    fn of(self, counted: i64) -> Total {
        if counted <= self.totals.exact_up_to {
            Total { count: counted, estimated: false }
        } else {
            self.above_the_limit()
        }
    }
}

fn matching_rows(query: &LeadQuery) -> &'static str {
    if query.has_search() {
        "SELECT 1 FROM leads l JOIN contacts c ON c.id = l.contact_id"
    } else {
        "SELECT 1 FROM leads l"
    }
}

/// `SELECT count(*)` of the matches, up to one more than the exact limit.
fn capped_count(query: &LeadQuery, plan: RowCount) -> Result<sqlx::QueryBuilder<sqlx::Postgres>, LeadError> {
    let mut capped = sqlx::QueryBuilder::new(format!("SELECT count(*) FROM ({}", matching_rows(query)));
    query.push_filters(&mut capped)?;
    capped.push(" LIMIT ").push_bind(plan.totals.exact_up_to + 1).push(") matching");
    Ok(capped)
}

fn budget_ms(plan: RowCount) -> u128 {
    plan.totals.budget.as_millis().max(1)
}

fn cancelled(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(error) if error.code().as_deref() == Some(QUERY_CANCELED))
}

/// Counts the matching rows in `conn`'s transaction, the page's. A savepoint keeps the
/// transaction, and so the page's snapshot, usable after a cancelled count.
async fn count_rows(conn: &mut sqlx::PgConnection, query: &LeadQuery, plan: RowCount) -> Result<Total, LeadError> {
    let mut capped = capped_count(query, plan)?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SAVEPOINT counting; SET LOCAL statement_timeout = {}",
        budget_ms(plan)
    )))
    .execute(&mut *conn)
    .await?;
    match capped.build_query_scalar().persistent(!query.has_search()).fetch_one(&mut *conn).await {
        Ok(counted) => {
            sqlx::raw_sql("RELEASE SAVEPOINT counting; SET LOCAL statement_timeout = DEFAULT")
                .execute(&mut *conn)
                .await?;
            Ok(plan.of(counted))
        }
        Err(error) if cancelled(&error) => {
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT counting").execute(&mut *conn).await?;
            Ok(plan.out_of_time())
        }
        Err(error) => Err(error.into()),
    }
}

/// Counts the matching rows on a connection of its own, in the snapshot `snapshot` that the
/// page's transaction exported.
async fn count_in_snapshot(
    mut conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    snapshot: String,
    query: LeadQuery,
    plan: RowCount,
) -> Result<Total, LeadError> {
    // Postgres names snapshots in hex digits and dashes; `SET TRANSACTION SNAPSHOT` takes no
    // parameter, so the name is checked before it is written in.
    if snapshot.is_empty() || !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(LeadError::Unreadable(format!("snapshot name {snapshot:?}")));
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'; \
         SET LOCAL statement_timeout = {}",
        budget_ms(plan)
    )))
    .execute(&mut *tx)
    .await?;
    let mut capped = capped_count(&query, plan)?;
    let total = match capped.build_query_scalar().persistent(!query.has_search()).fetch_one(&mut *tx).await {
        Ok(counted) => plan.of(counted),
        Err(error) if cancelled(&error) => plan.out_of_time(),
        Err(error) => return Err(error.into()),
    };
    tx.rollback().await?;
    Ok(total)
}

/// How far above the exact limit the planner must expect a count to be for it not to be
/// started: its estimates of a search's words are seldom off by this much.
const PLAINLY_ABOVE: i64 = 10;

/// Postgres's code for a statement cancelled by its `statement_timeout`.
const QUERY_CANCELED: &str = "57014";

/// Folds the count deltas into the totals, in one statement so that every snapshot sees each
/// change exactly once. Totals are upserted in key order: concurrent folds cannot deadlock.
pub async fn fold_count_deltas(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let folded = sqlx::query(
        "WITH moved AS (DELETE FROM lead_count_deltas RETURNING *) \
         INSERT INTO lead_counts AS c (org_id, status, agent_id, source_kind, score_source, score_bucket, n) \
         SELECT org_id, status, agent_id, source_kind, score_source, score_bucket, sum(n) FROM moved \
         GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6 \
         ON CONFLICT (org_id, status, agent_id, source_kind, score_source, score_bucket) \
         DO UPDATE SET n = c.n + EXCLUDED.n",
    )
    .execute(pool)
    .await?;
    Ok(folded.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::{count_cost, rows_of_plan_line};

    #[test]
    fn the_planner_estimate_is_read_off_the_plan_line() {
        let line = "Bitmap Heap Scan on contacts  (cost=996.62..40422.67 rows=55427 width=4)";
        assert_eq!(rows_of_plan_line(line), 55427.0);
        assert_eq!(rows_of_plan_line("Seq Scan on contacts  (cost=0.00..52463.10 rows=1000100 width=4)"), 1000100.0);
        assert_eq!(rows_of_plan_line("Result"), 0.0);
    }

    #[test]
    fn a_count_is_priced_up_to_its_limit() {
        let line = "Hash Join  (cost=100.00..1100.00 rows=20000 width=4)";
        assert_eq!(count_cost(line, 10_001), 100.0 + 1000.0 * 10_001.0 / 20_000.0);
        assert_eq!(count_cost("Seq Scan on leads l  (cost=0.00..52.10 rows=100 width=4)", 10_001), 52.1);
        assert_eq!(count_cost("Result", 10_001), 0.0);
    }
}
