//! Postgres: each service owns one schema and one role that can use nothing else. An admin
//! connection bootstraps both (idempotently); the service then connects as its role with
//! the schema as its search path, so its migrations table lands in its own schema.
//!
//! A role's password is set from its SCRAM-SHA-256 verifier, computed here, so that no
//! statement (nor the server's statement log) ever holds it in clear. A service given its own
//! URL (`LEADS_<SERVICE>_DATABASE_URL`), or run with `database.migrate_on_start = false`, never
//! uses the admin connection: `leads migrate` bootstraps and migrates, the service only checks
//! that its migrations are applied. Each pool has the service's `statement_timeout`, and no JIT.

use crate::{ServiceName, Settings, error::sqlstate};
use secrecy::ExposeSecret;
use sqlx::{
    AssertSqlSafe, Connection, PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions, PgSslMode},
};
use std::{str::FromStr, time::Duration};

/// Connection options from a URL. On loopback, where TLS protects nothing, a URL that names
/// no `sslmode` (with no `PGSSLMODE` either) connects in plaintext rather than sqlx's
/// "prefer": sqlx 0.9 leaves Nagle's algorithm on, so over TLS every statement larger than
/// one TLS record would wait for the server's delayed ACK, which makes batch inserts an
/// order of magnitude slower.
pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url)?;
    let sslmode_named = url.contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    let host = options.get_host();
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]") || host.starts_with('/');
    Ok(if loopback && !sslmode_named { options.ssl_mode(PgSslMode::Disable) } else { options })
}

/// Creates the service's role and schema when missing. Needs the admin `database_url`.
pub async fn bootstrap(settings: &Settings, service: ServiceName) -> anyhow::Result<()> {
    let options = connect_options(settings.database_url.expose_secret())?;
    let mut admin = PgConnection::connect_with(&options).await?;
    let role = service.role();
    let schema = service.schema();
    // Roles are cluster-wide: two databases bootstrapping at once may race on CREATE ROLE,
    // which then fails with either of these two conditions.
    let create_role = format!(
        "DO $$ BEGIN CREATE ROLE {role} LOGIN; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    );
    sqlx::raw_sql(AssertSqlSafe(create_role)).execute(&mut admin).await?;
    if let Some(password) = role_password(settings, service) {
        // The verifier holds only base64, digits, '$' and ':': nothing to escape.
        let alter = format!("ALTER ROLE {role} PASSWORD '{}'", scram_verifier(password));
        sqlx::raw_sql(AssertSqlSafe(alter)).execute(&mut admin).await?;
    }
    let mut tx = admin.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('leads-bootstrap'))").execute(&mut *tx).await?;
    // Identifiers come from `ServiceName`, never from input.
    let schema_ddl = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role}; \
         REVOKE ALL ON SCHEMA {schema} FROM PUBLIC; \
         REVOKE CREATE ON SCHEMA public FROM PUBLIC"
    );
    sqlx::raw_sql(AssertSqlSafe(schema_ddl)).execute(&mut *tx).await?;
    // Extensions need the admin; each lives in the one schema that uses it.
    for extension in service.extensions() {
        let ddl = format!("CREATE EXTENSION IF NOT EXISTS {extension} WITH SCHEMA {schema}");
        sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    admin.close().await?;
    Ok(())
}

/// The password of the service's role: its own (`LEADS_<SERVICE>_DB_PASSWORD[_FILE]`), or the
/// one `role_password` gives every role.
pub fn role_password(settings: &Settings, service: ServiceName) -> Option<&str> {
    settings
        .database
        .passwords
        .get(service.as_str())
        .or(settings.role_password.as_ref())
        .map(secrecy::ExposeSecret::expose_secret)
}

/// The SCRAM-SHA-256 verifier Postgres stores for `password` (RFC 5802, 7677), with a random
/// salt and Postgres's 4,096 iterations.
pub fn scram_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).expect("the system's random source");
    scram_verifier_with(password, &salt, 4096)
}

/// The verifier for a given salt and iteration count (the password is used as its UTF-8
/// bytes: SASLprep leaves ASCII as it is).
pub fn scram_verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
    use base64::Engine;
    use ring::{digest, hmac, pbkdf2};
    let mut salted = [0u8; 32];
    let rounds = std::num::NonZeroU32::new(iterations.max(1)).expect("at least one");
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, password.as_bytes(), &mut salted);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key.as_ref()),
        b64.encode(server_key.as_ref())
    )
}

/// Whether a starting service bootstraps and migrates its schema through the admin URL.
pub fn bootstraps(settings: &Settings, service: ServiceName) -> bool {
    settings.database.migrate_on_start && !settings.database.service_urls.contains_key(service.as_str())
}

/// Options to connect as the service's own role, confined to its schema: its own URL when it
/// has one, otherwise the admin URL's server and database with the role's name and password.
pub fn service_options(settings: &Settings, service: ServiceName) -> anyhow::Result<PgConnectOptions> {
    let mut options = match settings.database.service_urls.get(service.as_str()) {
        Some(url) => {
            connect_options(url.expose_secret()).map_err(|e| anyhow::anyhow!("the {service} database URL: {e}"))?
        }
        None => connect_options(settings.database_url.expose_secret())?.username(&service.role()),
    };
    options = options.application_name(&format!("leads-{service}"));
    let timeout = settings.database.statement_timeout_ms(service).to_string();
    // No JIT: a service's statements are short, and compiling a plan the planner prices high
    // (12 ms for a count among a million leads, more with inlining above ten million) is time
    // that no statement timeout interrupts, spent again on every execution.
    options =
        options.options([("search_path", service.schema()), ("statement_timeout", timeout.as_str()), ("jit", "off")]);
    // A password in the service's own URL wins.
    if !settings.database.service_urls.get(service.as_str()).is_some_and(|url| url_has_password(url.expose_secret()))
        && let Some(password) = role_password(settings, service)
    {
        options = options.password(password);
    }
    Ok(options)
}

fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split_once('@').is_some_and(|(credentials, _)| credentials.contains(':'))
}

/// Creates the role and schema and applies the migrations, as `leads migrate` does for every
/// service; migrations run without the statement timeout.
pub async fn bootstrap_and_migrate(
    settings: &Settings,
    service: ServiceName,
    migrator: &Migrator,
) -> anyhow::Result<()> {
    bootstrap(settings, service).await?;
    let options = service_options(settings, service)?.options([("statement_timeout", "0")]);
    let mut connection = PgConnection::connect_with(&options).await?;
    migrator.run(&mut connection).await?;
    connection.close().await?;
    Ok(())
}

/// Refuses to start a service whose schema lacks migrations this build has: without the
/// admin connection it cannot apply them itself.
async fn check_migrated(pool: &PgPool, service: ServiceName, migrator: &Migrator) -> anyhow::Result<()> {
    let wanted = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Result<Option<i64>, sqlx::Error> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await;
    match applied {
        Ok(Some(version)) if version >= wanted => Ok(()),
        Ok(_) => anyhow::bail!("the {service} schema lacks migrations up to {wanted}: run `leads migrate`"),
        Err(error) if sqlstate(&error).as_deref() == Some("42P01") => {
            anyhow::bail!("the {service} schema is not migrated: run `leads migrate`")
        }
        Err(error) => Err(error.into()),
    }
}

/// Connects as the service's role; bootstraps and applies its migrations first when it
/// may (`bootstraps`), otherwise checks that they are applied.
pub async fn connect_and_migrate(
    settings: &Settings,
    service: ServiceName,
    migrator: &Migrator,
) -> anyhow::Result<PgPool> {
    let bootstrapping = bootstraps(settings, service);
    if bootstrapping {
        bootstrap_and_migrate(settings, service, migrator).await?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        // Well inside a consumer's ack wait: while Postgres is down a batch must learn so, and
        // be held in progress, before JetStream gives its messages to someone else.
        .acquire_timeout((settings.consumer.ack_wait() / 3).clamp(Duration::from_secs(1), Duration::from_secs(10)))
        .connect_with(service_options(settings, service)?)
        .await?;
    if !bootstrapping {
        check_migrated(&pool, service, migrator).await?;
    }
    tracing::info!(service = %service, "database ready");
    Ok(pool)
}

/// Creates the configured database when it does not exist yet, through the server's
/// `postgres` database, so that a first `leads run` needs no manual step.
pub async fn ensure_database(settings: &Settings) -> anyhow::Result<()> {
    let options = connect_options(settings.database_url.expose_secret())?;
    match PgConnection::connect_with(&options).await {
        Ok(connection) => {
            connection.close().await?;
            Ok(())
        }
        Err(error) if sqlstate(&error).as_deref() == Some("3D000") => {
            let name = options.get_database().unwrap_or("leads").to_owned();
            anyhow::ensure!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "database name {name:?} may hold only letters, digits and '_'"
            );
            let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
            let created = sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await;
            match created {
                // 42P04: created meanwhile by another process.
                Err(error) if sqlstate(&error).as_deref() != Some("42P04") => return Err(error.into()),
                _ => tracing::info!(database = %name, "database created"),
            }
            admin.close().await?;
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// How often a service looks for tables due a vacuum when the server's autovacuum is off.
const VACUUM_PERIOD: Duration = Duration::from_secs(5);
/// The shortest time between two ANALYZEs of a table (one that grows fast is analysed sooner).
const ANALYZE_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// Keeps the service's tables vacuumed and analysed when the server's autovacuum is off, as
/// it is on some development and CI machines: outbox tables churn on every event, and stale
/// statistics turn millisecond queries into scans. Does nothing where autovacuum is on.
pub async fn vacuum_when_autovacuum_is_off(
    pool: PgPool,
    service: ServiceName,
    token: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let setting: String = sqlx::query_scalar("SELECT current_setting('autovacuum')").fetch_one(&pool).await?;
    if setting == "on" {
        // Nothing to do; the task still lives as long as the service (one that ends early is
        // taken for a failure).
        token.cancelled().await;
        return Ok(());
    }
    tracing::warn!(service = %service, "autovacuum is off on this server: the service vacuums its own tables");
    // Each service takes its own slot of the period: services started together (the
    // all-in-one binary) would otherwise vacuum all at once, a burst their calls queue behind,
    // as autovacuum spreads its workers' starts over its naptime.
    let slot = ServiceName::ALL.iter().position(|s| *s == service).unwrap_or(0) as u32;
    let first = tokio::time::Instant::now() + VACUUM_PERIOD * slot / ServiceName::ALL.len() as u32;
    let mut tick = tokio::time::interval_at(first, VACUUM_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(error) = vacuum_due_tables(&pool, service).await {
            tracing::warn!(service = %service, %error, "vacuum failed, retrying later");
        }
    }
}

async fn vacuum_due_tables(pool: &PgPool, service: ServiceName) -> Result<(), sqlx::Error> {
    // The thresholds of autovacuum's defaults, with a larger base so small tables are left be.
    // Inserts count too (as autovacuum counts them since Postgres 13): a table that is only
    // ever inserted into has no dead rows, but without a vacuum its pages never become
    // all-visible and index-only scans of it read the table after all.
    // A table is analysed at most once every `ANALYZE_AT_MOST_EVERY` (autovacuum looks at a
    // database once a minute), unless it has more than doubled since Postgres last counted its
    // rows (`reltuples`, which a VACUUM counts as well as an ANALYZE): on a busy desk, `leads`
    // passed its threshold at every look, and its ANALYZE took a core for 50-120 ms every 5 s,
    // the calls queued behind it.
    let due: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT relname, needs_vacuum, needs_analyze FROM ( \
           SELECT s.relname, \
                  s.n_dead_tup > 1000 + 0.2 * s.n_live_tup OR s.n_ins_since_vacuum > 1000 + 0.2 * s.n_live_tup \
                    AS needs_vacuum, \
                  s.n_mod_since_analyze > 1000 + 0.1 * s.n_live_tup \
                    AND (s.last_analyze IS NULL OR s.last_analyze < now() - make_interval(secs => $2) \
                         OR s.n_live_tup > 2 * greatest(c.reltuples, 0) + 1000) AS needs_analyze \
           FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.schemaname = $1 \
         ) t WHERE needs_vacuum OR needs_analyze",
    )
    .bind(service.schema())
    .bind(ANALYZE_AT_MOST_EVERY.as_secs_f64())
    .fetch_all(pool)
    .await?;
    if due.is_empty() {
        return Ok(());
    }
    // Paced as autovacuum paces itself (its default cost delay, 2 ms since Postgres 12): a
    // VACUUM or ANALYZE run flat out takes a core for 50-150 ms, and the services' calls
    // queued behind it on a small machine for as long.
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql("SET vacuum_cost_delay = '2ms'").execute(&mut *conn).await?;
    let mut outcome = Ok(());
    for (table, needs_vacuum, needs_analyze) in due {
        let escaped = table.replace('"', "\"\"");
        let command = match (needs_vacuum, needs_analyze) {
            (true, true) => "VACUUM (ANALYZE)",
            (true, false) => "VACUUM",
            (false, _) => "ANALYZE",
        };
        let sql = format!("{command} \"{}\".\"{escaped}\"", service.schema());
        outcome = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await.map(drop);
        if outcome.is_err() {
            break;
        }
        tracing::debug!(service = %service, table = %table, command, "maintained");
    }
    sqlx::raw_sql("RESET vacuum_cost_delay").execute(&mut *conn).await?;
    outcome
}

/// How often old rows are pruned, and how many go in one statement.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const PRUNE_CHUNK: i64 = 10_000;

/// Deletes, every hour until `token` fires, the rows of each `(table, time column)` older
/// than `retention_days` (`retention_days` setting): dedupe keys, kept rejections and dead
/// letters. A deduplication key must outlive every replay of its message: the streams keep
/// messages 7 days, so a retention of at least 8 days (30 by default) keeps a replay from
/// the stream a duplicate, and a republish older than the retention is taken as new.
pub async fn prune_until(
    pool: PgPool,
    service: ServiceName,
    tables: &'static [(&'static str, &'static str)],
    retention_days: u32,
    token: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    loop {
        for (table, column) in tables {
            match prune(&pool, table, column, retention_days).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(service = %service, table, deleted, "pruned rows past retention"),
                Err(error) => tracing::warn!(service = %service, table, %error, "cannot prune, retrying later"),
            }
        }
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// Deletes `table`'s rows whose `column` is older than `days`, a chunk at a time; answers how
/// many went. Table and column names come from the services' code, never from input.
pub async fn prune(pool: &PgPool, table: &str, column: &str, days: u32) -> Result<u64, sqlx::Error> {
    let statement = format!(
        "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} \
         WHERE {column} < now() - make_interval(days => $1) LIMIT $2)"
    );
    let mut deleted = 0;
    loop {
        let n = sqlx::query(AssertSqlSafe(statement.clone()))
            .bind(i32::try_from(days).unwrap_or(i32::MAX))
            .bind(PRUNE_CHUNK)
            .execute(pool)
            .await?
            .rows_affected();
        deleted += n;
        if n < PRUNE_CHUNK as u64 {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_verifiers_follow_rfc_7677() {
        // RFC 7677's example: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 rounds;
        // the keys as Postgres computes them for that salt.
        use base64::Engine;
        let salt = base64::engine::general_purpose::STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let verifier = scram_verifier_with("pencil", &salt, 4096);
        assert_eq!(
            verifier,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        let random = scram_verifier("pencil");
        assert!(random.starts_with("SCRAM-SHA-256$4096:") && !random.contains("pencil"));
        assert!(url_has_password("postgres://leads_lead:secret@db/leads"));
        assert!(!url_has_password("postgres://leads_lead@db/leads"));
    }
}
