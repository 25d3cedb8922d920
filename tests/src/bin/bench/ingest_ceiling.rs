//! The ingest section's ceiling: what one interaction costs on its way through the ingest and
//! lead services, counted in the run itself (JetStream messages published and delivered per
//! stream, rows inserted, updated and deleted per table), then the same parts done raw in the
//! same run with the machine's CPU for each. On one machine the publisher, NATS and Postgres
//! share the cores, so `cores / (CPU per event of the parts)` is as fast as any pipeline made
//! of these parts could go; the service's rate is given as a share of it.

use super::{
    events::{ACK_WINDOW, Publisher},
    report::{Report, loadavg, machine_cpu_seconds, micros, progress, rate, thousands},
};
use anyhow::{Context as _, bail};
use async_nats::jetstream;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use leads_tests::{TestEnv, raw_pg};
use platform::nats::StreamKind;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// The schemas whose rows the ingest section's services write.
const SCHEMAS: [&str; 2] = ["ingest", "lead"];
/// Messages fetched from each of the run's streams as the raw parts' payloads.
const SAMPLES: u64 = 64;
/// At least this many messages in each raw JetStream part, so that the machine's CPU (in
/// 10 ms ticks) is measured over a long enough time.
const MIN_RAW_MESSAGES: u64 = 2_000;
/// Postgres flushes an idle backend's table counters within 10 s (PGSTAT_IDLE_INTERVAL).
const STATS_SETTLE: Duration = Duration::from_secs(11);

/// What the run's streams and tables had done at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Stream name -> (last sequence, deliveries by all its consumers).
    streams: BTreeMap<String, (u64, u64)>,
    /// `schema.table` -> (rows inserted, updated, deleted).
    tables: BTreeMap<String, (i64, i64, i64)>,
}

impl Counters {
    pub async fn read(env: &TestEnv, admin: &sqlx::PgPool) -> anyhow::Result<Self> {
        let prefix = stream_prefix(env);
        let names: Vec<String> =
            env.js.stream_names().try_collect().await.map_err(|e| anyhow::anyhow!("stream names: {e}"))?;
        let mut streams = BTreeMap::new();
        for name in names.into_iter().filter(|name| name.starts_with(&prefix)) {
            let stream = env.js.get_stream(&name).await.map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
            let state = stream.cached_info().state.clone();
            let delivered: u64 = stream
                .consumers()
                .try_fold(0, |sum, consumer| async move { Ok(sum + consumer.delivered.consumer_sequence) })
                .await
                .map_err(|e| anyhow::anyhow!("consumers of {name}: {e}"))?;
            streams.insert(name, (state.last_sequence, delivered));
        }
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT schemaname || '.' || relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables \
             WHERE schemaname = ANY($1)",
        )
        .bind(&SCHEMAS[..])
        .fetch_all(admin)
        .await?;
        let tables = rows.into_iter().map(|(table, i, u, d)| (table, (i, u, d))).collect();
        Ok(Self { streams, tables })
    }
}

/// The streams of this environment: their names begin like its interactions stream's.
fn stream_prefix(env: &TestEnv) -> String {
    let interactions = env.subjects.stream_name(StreamKind::Interactions);
    interactions.strip_suffix("INTERACTIONS").unwrap_or(&interactions).to_owned()
}

/// One stream's part of the run.
#[derive(Debug, Clone)]
struct StreamUse {
    name: String,
    first_sequence: u64,
    published: u64,
    delivered: u64,
}

/// One table's part of the run.
#[derive(Debug, Clone)]
struct TableUse {
    schema: String,
    table: String,
    inserted: i64,
    updated: i64,
    deleted: i64,
}

/// What the throughput run did, counted.
#[derive(Debug, Clone)]
pub struct Used {
    streams: Vec<StreamUse>,
    tables: Vec<TableUse>,
    /// False when the counters were still moving at the deadline: the counts may fall short.
    settled: bool,
}

/// Waits until the run's table counters have reached Postgres's statistics (every event
/// accepted and recorded, nothing moving for `STATS_SETTLE`) and answers what changed since
/// `before`.
pub async fn settle(env: &TestEnv, admin: &sqlx::PgPool, before: &Counters, events: u64) -> anyhow::Result<Used> {
    let started = Instant::now();
    let mut last = Counters::read(env, admin).await?;
    let mut unchanged_since = Instant::now();
    let settled = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Counters::read(env, admin).await?;
        if now != last {
            last = now;
            unchanged_since = Instant::now();
        }
        let inserted =
            |table: &str| last.tables.get(table).map_or(0, |t| t.0) - before.tables.get(table).map_or(0, |t| t.0);
        let counted =
            inserted("ingest.accepted_events") >= events as i64 && inserted("lead.interactions") >= events as i64;
        if counted && unchanged_since.elapsed() >= STATS_SETTLE {
            break true;
        }
        if started.elapsed() > Duration::from_secs(90) {
            progress("ingest ceiling: table counters still moving after 90 s; using them as they are");
            break false;
        }
    };
    let streams = last
        .streams
        .iter()
        .filter_map(|(name, &(sequence, delivered))| {
            let (was_sequence, was_delivered) = before.streams.get(name).copied().unwrap_or_default();
            (sequence > was_sequence).then(|| StreamUse {
                name: name.clone(),
                first_sequence: was_sequence + 1,
                published: sequence - was_sequence,
                delivered: delivered.saturating_sub(was_delivered),
            })
        })
        .collect();
    let tables = last
        .tables
        .iter()
        .filter_map(|(name, &(i, u, d))| {
            let (was_i, was_u, was_d) = before.tables.get(name).copied().unwrap_or_default();
            let (schema, table) = name.split_once('.')?;
            let used = TableUse {
                schema: schema.to_owned(),
                table: table.to_owned(),
                inserted: i - was_i,
                updated: u - was_u,
                deleted: d - was_d,
            };
            (used.inserted + used.updated + used.deleted > 0).then_some(used)
        })
        .collect();
    Ok(Used { streams, tables, settled })
}

/// The throughput run as the ceiling needs it.
pub struct Run {
    pub events: u64,
    pub rate: f64,
    /// The machine's busy CPU (every process) over the run, per event.
    pub cpu_per_event: f64,
    pub used: Used,
    pub batch_size: usize,
}

/// One stream's raw parts: publishing its messages again and consuming them, acknowledging each.
struct StreamParts {
    used: StreamUse,
    payload_bytes: usize,
    raw_messages: u64,
    publish_rate: f64,
    publish_cpu: f64,
    consume: Option<(f64, f64)>,
}

/// The rows written raw on some connections.
struct RowsPart {
    connections: usize,
    elapsed: Duration,
    cpu: f64,
}

/// Measures the raw parts of `run` in `env` (the services stopped) and reports the ceiling.
pub async fn ceiling(report: &mut Report, env: &TestEnv, run: &Run) -> anyhow::Result<()> {
    // Machine CPU counts every process: another one busy meanwhile inflates the parts and the
    // service alike, so the load is printed beside them.
    let load_before = loadavg();
    if !run.used.settled {
        report.line(
            "**The table counters were still moving 90 s after the run: the rows counted below may fall short, \
             and the ceiling be too high.**\n",
        );
    }
    let admin = env.admin_pool().await?;
    let mut streams = Vec::new();
    for (index, used) in run.used.streams.iter().enumerate() {
        streams.push(stream_parts(env, used, index, run.batch_size).await?);
    }
    let mut rows = Vec::new();
    let plan = RowsPlan::load(env, &admin, &run.used).await?;
    for connections in [1usize, 4] {
        rows.push(plan.write(env, &admin, connections, run.events, run.batch_size).await?);
    }
    plan.drop_schemas(&admin).await?;
    admin.close().await;
    write_report(report, run, &streams, &plan, &rows, &load_before);
    Ok(())
}

async fn stream_parts(env: &TestEnv, used: &StreamUse, index: usize, batch_size: usize) -> anyhow::Result<StreamParts> {
    let source = env.js.get_stream(&used.name).await.map_err(|e| anyhow::anyhow!("stream {}: {e}", used.name))?;
    let step = (used.published / SAMPLES).max(1);
    let mut samples: Vec<Bytes> = Vec::new();
    let mut sequence = used.first_sequence;
    while sequence < used.first_sequence + used.published {
        let message =
            source.get_raw_message(sequence).await.map_err(|e| anyhow::anyhow!("{} #{sequence}: {e}", used.name))?;
        samples.push(message.payload);
        sequence += step;
    }
    let payload_bytes = samples.iter().map(Bytes::len).sum::<usize>() / samples.len().max(1);
    // A copy of the stream's configuration (storage, limits, duplicate window) under a name
    // and subjects of its own.
    let name = format!("{}_RAW", used.name);
    let subject = format!("{}benchceiling.{index}", env.subjects.prefix());
    let mut config = source.cached_info().config.clone();
    config.name = name.clone();
    config.subjects = vec![format!("{subject}.>")];
    config.description = None;
    let _ = env.js.delete_stream(&name).await;
    env.js.create_stream(config).await.map_err(|e| anyhow::anyhow!("cannot create {name}: {e}"))?;
    let result = stream_parts_on(env, &name, &subject, &samples, used, batch_size).await;
    let _ = env.js.delete_stream(&name).await;
    let (raw_messages, publish_rate, publish_cpu, consume) = result?;
    Ok(StreamParts { used: used.clone(), payload_bytes, raw_messages, publish_rate, publish_cpu, consume })
}

/// (messages, publish rate, publish CPU per message, consume rate and CPU per message).
async fn stream_parts_on(
    env: &TestEnv,
    stream: &str,
    subject: &str,
    samples: &[Bytes],
    used: &StreamUse,
    batch_size: usize,
) -> anyhow::Result<(u64, f64, f64, Option<(f64, f64)>)> {
    let count = used.published.max(MIN_RAW_MESSAGES);
    progress(format!("ingest ceiling: publishing {count} messages like {}'s", used.name));
    let mut publisher = Publisher::new(env.js.clone(), ACK_WINDOW);
    let cpu = machine_cpu_seconds();
    let started = Instant::now();
    for (i, payload) in (0..count).zip(samples.iter().cycle()) {
        publisher.publish(format!("{subject}.{}", i % 5), &format!("raw-{i}"), payload.clone()).await?;
    }
    publisher.drain().await?;
    let publish_rate = rate(count, started.elapsed());
    let publish_cpu = (machine_cpu_seconds() - cpu) / count as f64;
    if used.delivered == 0 {
        return Ok((count, publish_rate, publish_cpu, None));
    }
    let deliveries = used.delivered.clamp(MIN_RAW_MESSAGES.min(count), count);
    progress(format!("ingest ceiling: consuming {deliveries} of them, acknowledging each"));
    let consumer = env
        .js
        .get_stream(stream)
        .await
        .map_err(|e| anyhow::anyhow!("{stream}: {e}"))?
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("raw consumer: {e}"))?;
    let cpu = machine_cpu_seconds();
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch_size * 4)
        .max_bytes_per_batch(16 * 1024 * 1024)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("raw pull: {e}"))?;
    for received in 0..deliveries {
        let Some(message) = messages.next().await else { bail!("the raw consumer ended after {received}") };
        message.map_err(|e| anyhow::anyhow!("raw pull: {e}"))?.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
    }
    env.nats.flush().await?;
    let consume = (rate(deliveries, started.elapsed()), (machine_cpu_seconds() - cpu) / deliveries as f64);
    Ok((count, publish_rate, publish_cpu, Some(consume)))
}

/// One table's raw rows: the copy's columns and the rows it gets, as record literals.
struct TablePlan {
    used: TableUse,
    /// Columns written on insert (not generated, not filled by a sequence).
    insert_columns: Vec<String>,
    /// Columns an update sets, with their types.
    update_columns: Vec<(String, String)>,
    key: Vec<String>,
    /// Sequence-filled columns: the copy fills them from a sequence of its own.
    sequenced: Vec<String>,
    /// Record literals of the rows inserted, in order; empty for an outbox (`outbox_payloads`).
    rows: Vec<String>,
    /// An outbox's rows are the run's messages of its service's stream.
    outbox: Option<Vec<Bytes>>,
    /// Rows inserted, updated and deleted raw (less than counted where the run left too few
    /// rows to copy, or a table has no key to update by).
    inserts: usize,
    updates: usize,
    deletes: usize,
}

struct RowsPlan {
    tables: Vec<TablePlan>,
    schemas: Vec<String>,
}

impl RowsPlan {
    async fn load(env: &TestEnv, admin: &sqlx::PgPool, used: &Used) -> anyhow::Result<Self> {
        let mut tables = Vec::new();
        for table in &used.tables {
            let qualified = format!("{}.{}", table.schema, table.table);
            let columns: Vec<(String, String, bool, bool)> = sqlx::query_as(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '', \
                   coalesce(pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%', false) \
                 FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            )
            .bind(&qualified)
            .fetch_all(admin)
            .await?;
            let key: Vec<String> = sqlx::query_scalar(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY a.attnum",
            )
            .bind(&qualified)
            .fetch_all(admin)
            .await?;
            let sequenced: Vec<String> = columns.iter().filter(|c| c.3).map(|c| c.0.clone()).collect();
            let insert_columns = columns.iter().filter(|c| !c.2 && !c.3).map(|c| c.0.clone()).collect();
            let update_columns = columns
                .iter()
                .filter(|c| !c.2 && !c.3 && !key.contains(&c.0))
                .map(|c| (c.0.clone(), c.1.clone()))
                .collect();
            let wanted = table.inserted.max(0) as usize;
            let (rows, outbox) = if table.table == "outbox" {
                let stream = env.subjects.stream_name(StreamKind::Events(static_schema(&table.schema)));
                (Vec::new(), Some(outbox_samples(env, &stream, used).await?))
            } else {
                let rows: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {qualified} t LIMIT $1")))
                        .bind(wanted as i64)
                        .fetch_all(admin)
                        .await?;
                (rows, None)
            };
            // Rows whose key a sequence fills may repeat; others only once each.
            let available = match &outbox {
                Some(samples) if !samples.is_empty() => wanted,
                Some(_) => 0,
                None if !rows.is_empty() && !sequenced.is_empty() && key.iter().all(|k| sequenced.contains(k)) => {
                    wanted
                }
                None => rows.len(),
            };
            let inserts = wanted.min(available);
            let key_sequenced = key.iter().any(|k| sequenced.contains(k));
            let updates =
                if key.is_empty() || key_sequenced || inserts == 0 { 0 } else { table.updated.max(0) as usize };
            let deletes = if key.is_empty() { 0 } else { (table.deleted.max(0) as usize).min(inserts) };
            tables.push(TablePlan {
                used: table.clone(),
                insert_columns,
                update_columns,
                key,
                sequenced,
                rows,
                outbox,
                inserts,
                updates,
                deletes,
            });
        }
        let schemas = tables.iter().map(|t| t.used.schema.clone()).collect::<std::collections::BTreeSet<_>>();
        Ok(Self { tables, schemas: schemas.into_iter().collect() })
    }

    fn scratch(schema: &str, connections: usize) -> String {
        format!("bench_ceiling_{schema}_{connections}")
    }

    /// Writes the planned rows into fresh copies of the tables on `connections` connections:
    /// the events in batches of `batch_size`, dealt round-robin over the connections; per
    /// batch and schema one transaction of its inserts and updates, then one of its deletes
    /// (as an outbox relay deletes what it published).
    async fn write(
        &self,
        env: &TestEnv,
        admin: &sqlx::PgPool,
        connections: usize,
        events: u64,
        batch_size: usize,
    ) -> anyhow::Result<RowsPart> {
        for schema in &self.schemas {
            let scratch = Self::scratch(schema, connections);
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {scratch}"))).execute(admin).await?;
        }
        for table in &self.tables {
            let scratch = Self::scratch(&table.used.schema, connections);
            let name = &table.used.table;
            let mut ddl = format!("CREATE TABLE {scratch}.{name} (LIKE {}.{name} INCLUDING ALL);", table.used.schema);
            for column in &table.sequenced {
                ddl.push_str(&format!(
                    "CREATE SEQUENCE {scratch}.{name}_{column}_raw; \
                     ALTER TABLE {scratch}.{name} ALTER COLUMN \"{column}\" SET DEFAULT nextval('{scratch}.{name}_{column}_raw');"
                ));
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(admin).await.with_context(|| format!("copy of {name}"))?;
        }
        let mut pools = BTreeMap::new();
        for schema in &self.schemas {
            pools.insert(
                schema.clone(),
                raw_pg::pool(env, connections, Some(&Self::scratch(schema, connections))).await?,
            );
        }
        let batches = events.div_ceil(batch_size as u64).max(1) as usize;
        progress(format!(
            "ingest ceiling: writing the run's rows raw, {batches} batches on {connections} connection(s)"
        ));
        let cpu = machine_cpu_seconds();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let plan = std::sync::Arc::new(self.statements(connections));
        for connection in 0..connections {
            let plan = plan.clone();
            let pools = pools.clone();
            tasks.spawn(async move { plan.run(&pools, connection, connections, batches).await });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let elapsed = started.elapsed();
        let cpu = machine_cpu_seconds() - cpu;
        for pool in pools.values() {
            pool.close().await;
        }
        Ok(RowsPart { connections, elapsed, cpu })
    }

    async fn drop_schemas(&self, admin: &sqlx::PgPool) -> anyhow::Result<()> {
        for schema in &self.schemas {
            for connections in [1usize, 4] {
                let scratch = Self::scratch(schema, connections);
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {scratch} CASCADE")))
                    .execute(admin)
                    .await?;
            }
        }
        Ok(())
    }

    /// Everything the writing tasks share: statements and rows, per table.
    fn statements(&self, connections: usize) -> Statements {
        let tables = self
            .tables
            .iter()
            .map(|t| {
                let scratch = format!("{}.{}", Self::scratch(&t.used.schema, connections), t.used.table);
                let quoted =
                    |columns: &[String]| columns.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
                let insert = format!(
                    "INSERT INTO {scratch} ({cols}) SELECT {cols} FROM unnest($1::text[]::{scratch}[])",
                    cols = quoted(&t.insert_columns)
                );
                // Times move on and counters count up, as a lead's or contact's do when an
                // interaction is recorded on it, so its indexes are rewritten as the service's are.
                let sets = t
                    .update_columns
                    .iter()
                    .map(|(c, ty)| match ty.as_str() {
                        "timestamp with time zone" => {
                            format!("\"{c}\" = u.\"{c}\" + $2::bigint::float8 * interval '1 millisecond'")
                        }
                        "bigint" => format!("\"{c}\" = u.\"{c}\" + $2::bigint"),
                        _ => format!("\"{c}\" = u.\"{c}\""),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let matches = t.key.iter().map(|k| format!("s.\"{k}\" = u.\"{k}\"")).collect::<Vec<_>>().join(" AND ");
                let update = format!(
                    "UPDATE {scratch} AS s SET {sets} FROM unnest($1::text[]::{scratch}[]) AS u WHERE {matches}"
                );
                let key = quoted(&t.key);
                let delete = format!(
                    "DELETE FROM {scratch} WHERE ({key}) IN \
                     (SELECT {key} FROM {scratch} ORDER BY {key} LIMIT $1 FOR UPDATE SKIP LOCKED)"
                );
                TableStatements {
                    schema: t.used.schema.clone(),
                    insert,
                    update,
                    delete,
                    rows: t.rows.clone(),
                    outbox: t.outbox.clone(),
                    inserts: t.inserts,
                    updates: t.updates,
                    deletes: t.deletes,
                    has_updates: !t.update_columns.is_empty() && !t.key.is_empty(),
                }
            })
            .collect();
        Statements { tables }
    }
}

fn static_schema(schema: &str) -> &'static str {
    match schema {
        "ingest" => "ingest",
        _ => "lead",
    }
}

/// The run's messages of `stream` (its outbox's payloads), evenly spaced.
async fn outbox_samples(env: &TestEnv, stream: &str, used: &Used) -> anyhow::Result<Vec<Bytes>> {
    let Some(run) = used.streams.iter().find(|s| s.name == stream) else { return Ok(Vec::new()) };
    let source = env.js.get_stream(stream).await.map_err(|e| anyhow::anyhow!("stream {stream}: {e}"))?;
    let step = (run.published / SAMPLES).max(1);
    let mut samples = Vec::new();
    let mut sequence = run.first_sequence;
    while sequence < run.first_sequence + run.published {
        let message =
            source.get_raw_message(sequence).await.map_err(|e| anyhow::anyhow!("{stream} #{sequence}: {e}"))?;
        samples.push(message.payload);
        sequence += step;
    }
    Ok(samples)
}

struct TableStatements {
    schema: String,
    insert: String,
    update: String,
    delete: String,
    rows: Vec<String>,
    outbox: Option<Vec<Bytes>>,
    inserts: usize,
    updates: usize,
    deletes: usize,
    has_updates: bool,
}

struct Statements {
    tables: Vec<TableStatements>,
}

/// Batch `batch`'s share of `total` over `batches` batches.
fn share(total: usize, batch: usize, batches: usize) -> std::ops::Range<usize> {
    total * batch / batches..total * (batch + 1) / batches
}

impl Statements {
    /// The batches of `connection`: every `connections`-th one.
    async fn run(
        &self,
        pools: &BTreeMap<String, sqlx::PgPool>,
        connection: usize,
        connections: usize,
        batches: usize,
    ) -> anyhow::Result<()> {
        // Per table: rows this connection inserted (indexes into its rows), the next to
        // update, and updates and deletes owed from batches that had too few rows yet.
        let mut own: Vec<Vec<usize>> = vec![Vec::new(); self.tables.len()];
        let mut cursor = vec![0usize; self.tables.len()];
        let mut owed_updates = vec![0usize; self.tables.len()];
        let mut owed_deletes = vec![0usize; self.tables.len()];
        let mut live = vec![0usize; self.tables.len()];
        for batch in (connection..batches).step_by(connections) {
            for (schema, pool) in pools {
                let mut tx = pool.begin().await?;
                for (t, table) in self.tables.iter().enumerate().filter(|(_, t)| &t.schema == schema) {
                    let inserted = share(table.inserts, batch, batches);
                    if !inserted.is_empty() {
                        live[t] += inserted.len();
                        if let Some(samples) = &table.outbox {
                            let messages: Vec<platform::outbox::OutboxMessage> = inserted
                                .clone()
                                .map(|i| platform::outbox::OutboxMessage {
                                    org_id: super::events::org_name(i as u64 % 5),
                                    subject: format!("events.{schema}.raw"),
                                    msg_id: uuid::Uuid::now_v7().to_string(),
                                    payload: samples[i % samples.len()].to_vec(),
                                })
                                .collect();
                            platform::outbox::enqueue(&mut tx, &messages).await?;
                        } else {
                            let rows: Vec<&str> =
                                inserted.clone().map(|i| table.rows[i % table.rows.len()].as_str()).collect();
                            sqlx::query(sqlx::AssertSqlSafe(table.insert.clone()))
                                .bind(&rows)
                                .execute(&mut *tx)
                                .await?;
                            own[t].extend(inserted.map(|i| i % table.rows.len()));
                        }
                    }
                    if table.has_updates && table.updates > 0 {
                        let wanted = owed_updates[t] + share(table.updates, batch, batches).len();
                        let count = wanted.min(own[t].len());
                        owed_updates[t] = wanted - count;
                        if count > 0 {
                            let rows: Vec<&str> = (0..count)
                                .map(|k| table.rows[own[t][(cursor[t] + k) % own[t].len()]].as_str())
                                .collect();
                            cursor[t] = (cursor[t] + count) % own[t].len();
                            sqlx::query(sqlx::AssertSqlSafe(table.update.clone()))
                                .bind(&rows)
                                .bind(batch as i64 + 1)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                tx.commit().await?;
                let mut tx = pool.begin().await?;
                let mut deleted_any = false;
                for (t, table) in self.tables.iter().enumerate().filter(|(_, t)| &t.schema == schema) {
                    if table.deletes == 0 {
                        continue;
                    }
                    let wanted = owed_deletes[t] + share(table.deletes, batch, batches).len();
                    let count = wanted.min(live[t]);
                    owed_deletes[t] = wanted - count;
                    live[t] -= count;
                    if count > 0 {
                        sqlx::query(sqlx::AssertSqlSafe(table.delete.clone()))
                            .bind(count as i64)
                            .execute(&mut *tx)
                            .await?;
                        deleted_any = true;
                    }
                }
                if deleted_any {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
            }
        }
        Ok(())
    }
}

fn per_event(count: f64, events: u64) -> String {
    format!("{:.3}", count / events.max(1) as f64)
}

fn write_report(
    report: &mut Report,
    run: &Run,
    streams: &[StreamParts],
    plan: &RowsPlan,
    rows: &[RowsPart],
    load_before: &str,
) {
    let events = run.events;
    let n = events as f64;
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    report.line("### The raw parts added up\n");
    report.line(format!(
        "What the {} events of the throughput run cost on their way, counted in the run: messages published on \
         each JetStream stream (its last sequence before and after) and delivered to its consumers (their \
         deliveries), rows inserted, updated and deleted in each table of the ingest and lead schemas \
         (`pg_stat_user_tables`, rows written by triggers included). Then each part again alone, after the services \
         stopped, with the machine's busy CPU (every process, /proc/stat) over it: the same number of messages \
         (at least {}) published with Nats-Msg-Id to a copy of each stream (same configuration) with payloads \
         taken from the run's own messages, and pulled and acknowledged one by one; the same rows (copied from the \
         service's tables as record literals, or for an outbox the run's own messages of that service) written \
         into copies of the tables (`LIKE ... INCLUDING ALL`: keys, indexes, checks, without foreign keys and \
         triggers, whose rows are counted in their own tables) in transactions of {} events' rows per schema, \
         updates by key with the timestamps moved on, deletes oldest first in a transaction of their own, on 1 \
         and on 4 connections (the one that spent less CPU counts). On {cores} cores shared by all, the CPU \
         per event of the parts adds up, and `cores / that sum` is as fast as a pipeline of these parts alone \
         could go. Load average before the raw parts: {load_before}; after: {}.\n",
        thousands(n),
        thousands(MIN_RAW_MESSAGES as f64),
        run.batch_size,
        loadavg(),
    ));
    report.line(
        "| stream | published per event | payload bytes | delivered per event | raw publish | raw consume, ack each | \
         CPU per event |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    let mut nats_cpu = 0.0;
    for s in streams {
        let publish = s.used.published as f64 / n * s.publish_cpu;
        let consume = s.consume.map_or(0.0, |(_, cpu)| s.used.delivered as f64 / n * cpu);
        nats_cpu += publish + consume;
        report.line(format!(
            "| {} | {} | {} | {} | {} msgs/s, {} each ({} msgs) | {} | {} |",
            s.used.name,
            per_event(s.used.published as f64, events),
            thousands(s.payload_bytes as f64),
            per_event(s.used.delivered as f64, events),
            thousands(s.publish_rate),
            micros(s.publish_cpu),
            thousands(s.raw_messages as f64),
            s.consume.map_or_else(
                || "-".to_owned(),
                |(rate, cpu)| format!("{} msgs/s, {} each", thousands(rate), micros(cpu))
            ),
            micros(publish + consume),
        ));
    }
    report.line("");
    report.line("| table | inserted / updated / deleted per event | written raw (of counted) |\n| --- | ---: | ---: |");
    let mut short = false;
    for t in &plan.tables {
        let u = &t.used;
        let complete = t.inserts as i64 == u.inserted && t.updates as i64 == u.updated && t.deleted_all();
        short |= !complete;
        report.line(format!(
            "| {}.{} | {} / {} / {} | {} |",
            u.schema,
            u.table,
            per_event(u.inserted as f64, events),
            per_event(u.updated as f64, events),
            per_event(u.deleted as f64, events),
            if complete {
                "all".to_owned()
            } else {
                format!(
                    "{} / {} / {}",
                    thousands(t.inserts as f64),
                    thousands(t.updates as f64),
                    thousands(t.deletes as f64)
                )
            }
        ));
    }
    report.line("");
    let rows_cpu = rows.iter().map(|r| r.cpu / n).filter(|cpu| cpu.is_finite()).fold(f64::INFINITY, f64::min);
    let total = nats_cpu + rows_cpu;
    let ceiling = cores / total;
    report.line("| part | time | machine CPU per event |\n| --- | ---: | ---: |");
    report.line(format!("| JetStream publishes and deliveries (table above) | | {} |", micros(nats_cpu)));
    for r in rows {
        report.line(format!(
            "| Postgres: the run's rows written raw, {} connection(s) | {:.2} s ({} events/s) | {} |",
            r.connections,
            r.elapsed.as_secs_f64(),
            thousands(rate(events, r.elapsed)),
            micros(r.cpu / n)
        ));
    }
    report.line(format!("| **the raw parts, added up** | | **{}** |", micros(total)));
    report.line(format!(
        "| the throughput run (bench publishing, ingest, lead, NATS, Postgres) | {:.2} s | {} |",
        n / run.rate,
        micros(run.cpu_per_event)
    ));
    report.line("");
    let ratio = run.rate / ceiling;
    report.line("| | raw parts' ceiling | measured | measured / ceiling |\n| --- | ---: | ---: | ---: |");
    report.line(format!(
        "| events/s on {cores} cores | {} | {} | **{ratio:.2}** |\n",
        thousands(ceiling),
        thousands(run.rate)
    ));
    if short {
        report.line(
            "Rows the run left too few of to copy (deleted since), or of a table with no primary key to update by, \
             are not written raw; the table above says how many were.\n",
        );
    }
    report.target(
        "Ingest / its raw parts' ceiling on this machine",
        ">= 0.7",
        format!("{ratio:.2} ({} / {} events/s)", thousands(run.rate), thousands(ceiling)),
        ratio >= 0.7,
    );
}

impl TablePlan {
    fn deleted_all(&self) -> bool {
        self.deletes as i64 == self.used.deleted
    }
}
