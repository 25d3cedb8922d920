//! Seeds the leads section's organisations with `COPY ... FROM STDIN`: rows generated here,
//! streamed on two connections at once, the secondary indexes dropped before and built again
//! after (as a bulk import would), so that ten million leads seed in minutes. The service's
//! triggers stay on: the contacts' search words, the leads' copy of them and the maintained
//! counts are the database's own, as in production.
//!
//! The spread is an organisation's after a few years of use: 80% of the leads are closed
//! (converted, lost or archived), five agents hold most of the assigned leads and the other
//! 195 a few each, 12% are unassigned.

use super::{
    events::{FIRST_NAMES, LAST_NAMES},
    report::progress,
};
use anyhow::Context as _;
use chrono::{DateTime, Duration as Span, Utc};
use std::{fmt::Write as _, time::Instant};
use uuid::Uuid;

/// Rows per `COPY` statement (and transaction).
const COPY_CHUNK: u64 = 200_000;
/// Agents holding most of the assigned leads, and the rest.
pub const BUSY_AGENTS: u64 = 5;
pub const AGENTS: u64 = 200;
/// A busy agent (about 11% of the organisation's leads) and one of the many with few (0.2%).
pub const BUSY_AGENT: &str = "agent-000";
pub const QUIET_AGENT: &str = "agent-150";

/// The seeded id of contact or lead `i` of the organisation numbered `org`: ordered by `i`,
/// so the primary keys grow at their right edge while seeding.
pub fn seeded_id(kind: SeededKind, org: u64, i: u64) -> Uuid {
    Uuid::from_u64_pair(0x5eed_0000_0000_0000 | (kind as u64) << 40 | org << 32, i)
}

#[derive(Clone, Copy)]
pub enum SeededKind {
    Contact = 1,
    Lead = 2,
}

/// splitmix64: a lead's attributes as a function of its number, the same in every run.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform draw in [0, 1) from lane `lane` of lead `i`'s randomness.
fn draw(i: u64, lane: u64) -> f64 {
    (mix(i.wrapping_mul(16).wrapping_add(lane)) >> 11) as f64 / (1u64 << 53) as f64
}

fn status(r: f64) -> &'static str {
    match r {
        r if r < 0.07 => "new",
        r if r < 0.12 => "contacted",
        r if r < 0.15 => "qualifying",
        r if r < 0.18 => "qualified",
        r if r < 0.20 => "follow_up",
        r if r < 0.35 => "converted",
        r if r < 0.80 => "lost",
        _ => "archived",
    }
}

fn agent(i: u64) -> Option<String> {
    let r = draw(i, 5);
    if r < 0.12 {
        return None;
    }
    let pick = mix(i ^ 0xa6e7);
    let agent = if draw(i, 6) < 0.6 { pick % BUSY_AGENTS } else { BUSY_AGENTS + pick % (AGENTS - BUSY_AGENTS) };
    Some(format!("agent-{agent:03}"))
}

/// The name's words of contact `i` (one first name in 40, one last name in 40).
pub fn name_of(i: u64) -> (&'static str, &'static str) {
    let h = mix(i ^ 0x4e41_4d45);
    (FIRST_NAMES[(h % 40) as usize], LAST_NAMES[((h >> 10) % 40) as usize])
}

/// The phone of contact `i`: `+1415` and the number, at least seven digits.
pub fn phone_of(i: u64) -> String {
    format!("+1415{i:07}")
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

fn contact_rows(org_index: u64, org: &str, from: u64, to: u64, now: DateTime<Utc>, out: &mut String) {
    let profile_at = timestamp(now - Span::days(800));
    for i in from..=to {
        let (first, last) = name_of(i);
        let external = if i % 3 == 0 { format!("crm-{i}") } else { "\\N".into() };
        let _ = writeln!(
            out,
            "{}\t{org}\t{}\t{external}\t{first} {last}\t{}.{}{i}@example.com\t{profile_at}\t{profile_at}",
            seeded_id(SeededKind::Contact, org_index, i),
            phone_of(i),
            first.to_lowercase(),
            last.to_lowercase(),
        );
    }
}

fn lead_rows(org_index: u64, org: &str, from: u64, to: u64, now: DateTime<Utc>, out: &mut String) {
    for i in from..=to {
        let created = now - Span::seconds((draw(i, 0) * 730.0 * 86_400.0) as i64);
        let last_interaction = (created + Span::seconds((draw(i, 1) * 30.0 * 86_400.0) as i64)).min(now);
        let source = draw(i, 2);
        let (kind, campaign, message, integration, reference) = if source < 0.6 {
            ("chat_message", "\\N".to_owned(), "\\N".to_owned(), "\\N", "\\N".to_owned())
        } else if source < 0.9 {
            ("broadcast_reply", format!("cmp-{}", i % 20), format!("wamid.{i}"), "\\N", "\\N".to_owned())
        } else {
            (
                "integration",
                "\\N".into(),
                "\\N".into(),
                ["shopify", "hubspot", "zapier"][(i % 3) as usize],
                format!("ref-{i}"),
            )
        };
        let scored = draw(i, 3);
        let (score, score_source, score_version) = if scored < 0.8 {
            let score = ((draw(i, 4) * 101.0) as u32).min(100).to_string();
            (score, if scored < 0.7 { "ai" } else { "manual" }, 1)
        } else {
            ("\\N".into(), "\\N", 0)
        };
        let agent = agent(i).unwrap_or_else(|| "\\N".into());
        let _ = writeln!(
            out,
            "{}\t{org}\t{}\t{}\t{kind}\twhatsapp\t{campaign}\t{message}\t{integration}\t{reference}\t{score}\t\
             {score_source}\t{score_version}\t{agent}\t{}\tHi, how much is the premium plan? We are a team of twelve \
             and need it before the end of the month.\t{}\t{}\t{}\t{}\t1",
            seeded_id(SeededKind::Lead, org_index, i),
            seeded_id(SeededKind::Contact, org_index, i),
            status(draw(i, 7)),
            1 + (draw(i, 8) * 40.0) as u32,
            timestamp(created),
            timestamp(last_interaction),
            timestamp(created),
            timestamp(created),
        );
    }
}

const CONTACT_COLUMNS: &str = "id, org_id, phone, external_id, name, email, profile_at, created_at";
const LEAD_COLUMNS: &str = "id, org_id, contact_id, status, source_kind, channel, campaign_id, broadcast_message_id, \
    integration_name, integration_reference, score, score_source, score_version, agent_id, interaction_count, \
    last_message_preview, first_touch_at, last_interaction_at, created_at, updated_at, version";

/// What seeding took, for the report.
pub struct Seeded {
    pub copied: std::time::Duration,
    pub indexed: std::time::Duration,
    pub indexes: usize,
}

/// Seeds `orgs` (name and lead count), numbered in order, one contact per lead.
pub async fn seed(admin: &sqlx::PgPool, orgs: &[(String, u64)]) -> anyhow::Result<Seeded> {
    let indexes = drop_secondary_indexes(admin).await?;
    let started = Instant::now();
    let now = Utc::now();
    for (table, columns, rows) in [
        ("contacts", CONTACT_COLUMNS, contact_rows as fn(u64, &str, u64, u64, DateTime<Utc>, &mut String)),
        ("leads", LEAD_COLUMNS, lead_rows),
    ] {
        for (org_index, (org, count)) in orgs.iter().enumerate() {
            let halves = [(1, count / 2), (count / 2 + 1, *count)];
            let streams = halves.map(|(from, to)| {
                copy_range(admin, table, columns, rows, org_index as u64, org, from, to, now, started)
            });
            let [a, b] = streams;
            tokio::try_join!(a, b).with_context(|| format!("copying {table} of {org}"))?;
        }
    }
    let copied = started.elapsed();
    let started = Instant::now();
    build_indexes(admin, &indexes).await?;
    Ok(Seeded { copied, indexed: started.elapsed(), indexes: indexes.len() })
}

#[allow(clippy::too_many_arguments)]
async fn copy_range(
    admin: &sqlx::PgPool,
    table: &str,
    columns: &str,
    rows: fn(u64, &str, u64, u64, DateTime<Utc>, &mut String),
    org_index: u64,
    org: &str,
    from: u64,
    to: u64,
    now: DateTime<Utc>,
    started: Instant,
) -> anyhow::Result<()> {
    let mut conn = admin.acquire().await?;
    let mut chunk_from = from;
    let mut text = String::new();
    while chunk_from <= to {
        let chunk_to = (chunk_from + COPY_CHUNK - 1).min(to);
        text.clear();
        rows(org_index, org, chunk_from, chunk_to, now, &mut text);
        let mut copy = conn.copy_in_raw(&format!("COPY lead.{table} ({columns}) FROM STDIN")).await?;
        copy.send(text.as_bytes()).await?;
        copy.finish().await?;
        progress(format!("leads: copied {table} of {org} {chunk_to}/{to} ({:.0} s)", started.elapsed().as_secs_f64()));
        chunk_from = chunk_to + 1;
    }
    Ok(())
}

/// Drops the indexes of contacts and leads that back no constraint, and answers their
/// definitions to build again.
async fn drop_secondary_indexes(admin: &sqlx::PgPool) -> anyhow::Result<Vec<(String, String)>> {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.relname::text, pg_get_indexdef(i.oid) FROM pg_index x \
         JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = 'lead' AND t.relname IN ('contacts', 'leads') \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) ORDER BY 1",
    )
    .fetch_all(admin)
    .await?;
    for (name, _) in &indexes {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP INDEX lead.{name}"))).execute(admin).await?;
    }
    Ok(indexes)
}

/// Builds the dropped indexes again on two connections (one per core), each taking the next
/// index left, with a generous sort memory.
async fn build_indexes(admin: &sqlx::PgPool, indexes: &[(String, String)]) -> anyhow::Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let builder = || async {
        let mut conn = admin.acquire().await?;
        sqlx::raw_sql("SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 0")
            .execute(&mut *conn)
            .await?;
        while let Some((name, definition)) = indexes.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            let started = Instant::now();
            sqlx::raw_sql(sqlx::AssertSqlSafe(definition.clone())).execute(&mut *conn).await?;
            progress(format!("leads: built index {name} ({:.0} s)", started.elapsed().as_secs_f64()));
        }
        anyhow::Ok(())
    };
    tokio::try_join!(builder(), builder())?;
    Ok(())
}
