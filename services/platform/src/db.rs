//! Postgres: each service owns one schema and one role that can use nothing else. An admin
//! connection bootstraps both (idempotently); the service then connects as its role with
//! the schema as its search path, so its migrations table lands in its own schema.

use crate::{ServiceName, Settings, error::sqlstate};
use sqlx::{
    AssertSqlSafe, Connection, PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions, PgSslMode},
};
use std::{str::FromStr, time::Duration};

/// Connection options from a URL. On loopback, where TLS protects nothing, a URL that names
/// no `sslmode` (with no `PGSSLMODE` either) connects in plaintext rather than sqlx's
/// "prefer": sqlx 0.9 leaves Nagle's algorithm on, so over TLS every statement larger than
/// one TLS record waited about 40 ms for the server's delayed ACK (a 1,000-row batch insert
/// ran at 22k rows/s instead of 306k).
pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url)?;
    let sslmode_named = url.contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    let host = options.get_host();
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]") || host.starts_with('/');
    Ok(if loopback && !sslmode_named { options.ssl_mode(PgSslMode::Disable) } else { options })
}

/// Creates the service's role and schema when missing. Needs the admin `database_url`.
pub async fn bootstrap(settings: &Settings, service: ServiceName) -> anyhow::Result<()> {
    let options = connect_options(&settings.database_url)?;
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
    if let Some(password) = &settings.role_password {
        let escaped = password.replace('\'', "''");
        let alter = format!("ALTER ROLE {role} PASSWORD '{escaped}'");
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

/// Options to connect as the service's own role, confined to its schema.
pub fn service_options(settings: &Settings, service: ServiceName) -> anyhow::Result<PgConnectOptions> {
    let mut options = connect_options(&settings.database_url)?
        .username(&service.role())
        .application_name(&format!("leads-{service}"))
        .options([("search_path", service.schema())]);
    options = match &settings.role_password {
        Some(password) => options.password(password),
        None => options,
    };
    Ok(options)
}

/// Bootstraps, connects as the service's role and applies its migrations.
pub async fn connect_and_migrate(
    settings: &Settings,
    service: ServiceName,
    migrator: &Migrator,
) -> anyhow::Result<PgPool> {
    bootstrap(settings, service).await?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(service_options(settings, service)?)
        .await?;
    migrator.run(&pool).await?;
    tracing::info!(service = %service, "database ready");
    Ok(pool)
}

/// Creates the configured database when it does not exist yet, through the server's
/// `postgres` database, so that a first `leads run` needs no manual step.
pub async fn ensure_database(settings: &Settings) -> anyhow::Result<()> {
    let options = connect_options(&settings.database_url)?;
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
        return Ok(());
    }
    tracing::warn!(service = %service, "autovacuum is off on this server: the service vacuums its own tables");
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
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
    let due: Vec<(String, bool)> = sqlx::query_as(
        "SELECT relname, n_dead_tup > 1000 + 0.2 * n_live_tup OR n_ins_since_vacuum > 1000 + 0.2 * n_live_tup \
         FROM pg_stat_user_tables \
         WHERE schemaname = $1 \
           AND (n_dead_tup > 1000 + 0.2 * n_live_tup OR n_ins_since_vacuum > 1000 + 0.2 * n_live_tup \
                OR n_mod_since_analyze > 1000 + 0.1 * n_live_tup)",
    )
    .bind(service.schema())
    .fetch_all(pool)
    .await?;
    for (table, needs_vacuum) in due {
        let escaped = table.replace('"', "\"\"");
        let command = if needs_vacuum { "VACUUM (ANALYZE)" } else { "ANALYZE" };
        let sql = format!("{command} \"{}\".\"{escaped}\"", service.schema());
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(pool).await?;
        tracing::debug!(service = %service, table = %table, command, "maintained");
    }
    Ok(())
}
