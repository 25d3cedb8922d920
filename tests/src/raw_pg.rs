//! Raw Postgres baselines: statements sent straight to the database on a fixed number of
//! connections, to compare the services with what Postgres alone does on the same machine.

use crate::TestEnv;
use platform::settings::ExposeSecret;
use std::{
    future::Future,
    time::{Duration, Instant},
};

/// A pool of exactly `connections` connections to the environment's database, as the
/// services connect (within `schema`, when given, as its search path), for a raw baseline.
pub async fn pool(env: &TestEnv, connections: usize, schema: Option<&str>) -> anyhow::Result<sqlx::PgPool> {
    let mut options = platform::db::connect_options(env.settings.database_url.expose_secret())?;
    if let Some(schema) = schema {
        options = options.options([("search_path", schema)]);
    }
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections as u32)
        .min_connections(connections as u32)
        .connect_with(options)
        .await?)
}

/// Runs `work(connection, pool)` for each of `connections` connections at once, each in its
/// own task so that they keep every connection busy, and returns the time until the last one
/// finished.
pub async fn on_each_connection<F, Fut>(
    pool: &sqlx::PgPool,
    connections: usize,
    mut work: F,
) -> anyhow::Result<Duration>
where
    F: FnMut(usize, sqlx::PgPool) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..connections {
        tasks.spawn(work(connection, pool.clone()));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

/// Rows in `table`.
pub async fn count(admin: &sqlx::PgPool, table: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(admin).await?)
}
