//! Crash tests: real `leads` processes killed with SIGKILL (and stopped with SIGTERM) while
//! events stream in. Afterwards every event is reflected exactly once.

use leads_tests::{Process, TestEnv, chat_event, eventually, eventually_ok, phone};
use std::time::Duration;

const ORG_COUNT: u32 = 5;

async fn applied(admin: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM lead.interactions").fetch_one(admin).await?)
}

/// Waits for the services' schemas to exist (the first process creates them).
async fn schema_ready(admin: &sqlx::PgPool) {
    eventually(Duration::from_secs(60), "the lead schema", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM lead.interactions").fetch_one(admin).await.ok()
    })
    .await;
}

async fn publish_all(env: &TestEnv, total: u32, contacts: u32) -> anyhow::Result<()> {
    let mut pending = Vec::with_capacity(1000);
    for n in 0..total {
        let org = format!("org-{}", n % ORG_COUNT);
        let event = chat_event(&format!("e-{n}"), &phone(n % contacts), &format!("message {n}"));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{org}:e-{n}").as_str());
        let ack = env
            .js
            .publish_with_headers(env.subjects.interactions(&org), headers, serde_json::to_vec(&event)?.into())
            .await?;
        pending.push(ack);
        if pending.len() == 1000 {
            for ack in pending.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in pending {
        ack.await?;
    }
    Ok(())
}

async fn assert_exactly_once(admin: &sqlx::PgPool, total: u32, contacts: u32) -> anyhow::Result<()> {
    let rows: i64 = applied(admin).await?;
    assert_eq!(rows, i64::from(total), "every event recorded once");
    let counted: i64 = sqlx::query_scalar("SELECT coalesce(sum(interaction_count), 0)::bigint FROM lead.leads")
        .fetch_one(admin)
        .await?;
    assert_eq!(counted, i64::from(total), "every event counted once on its lead");
    let leads: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.leads").fetch_one(admin).await?;
    // Each (org, phone) pair that received events is one contact with one lead.
    let expected: i64 = sqlx::query_scalar("SELECT count(DISTINCT (org_id, contact_id)) FROM lead.interactions")
        .fetch_one(admin)
        .await?;
    assert_eq!(leads, expected, "one lead per contact");
    let counted: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(n), 0)::bigint FROM \
         (SELECT n FROM lead.lead_counts UNION ALL SELECT n FROM lead.lead_count_deltas) k",
    )
    .fetch_one(admin)
    .await?;
    assert_eq!(counted, leads, "the maintained counts agree with the rows");
    assert!(expected <= i64::from(contacts * ORG_COUNT));
    let accepted: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest.accepted_events").fetch_one(admin).await?;
    assert_eq!(accepted, i64::from(total));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_50k_events_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let admin = env.admin_pool().await?;
    let (total, contacts) = (50_000u32, 2_000u32);
    let mut process = Process::spawn(&env, "ingest,lead", &[])?;
    schema_ready(&admin).await;
    let publisher = {
        let env = env.clone();
        tokio::spawn(async move { publish_all(&env, total, contacts).await })
    };
    // Kill the processes at a fifth, two fifths... of the way, restarting them each time.
    for kill in 1..=4 {
        let target = i64::from(total) * kill / 5;
        eventually(Duration::from_secs(120), "progress before the next kill", || {
            let admin = admin.clone();
            async move { applied(&admin).await.ok().filter(|n| *n >= target) }
        })
        .await;
        process.kill().await?;
        eprintln!("kill {kill}: {} events applied", applied(&admin).await?);
        process = Process::spawn(&env, "ingest,lead", &[])?;
    }
    publisher.await??;
    // A failure says how far it got, and whether the count still moved.
    eventually_ok(Duration::from_secs(300), "every event applied", || {
        let admin = admin.clone();
        async move { leads_tests::pipeline_progress(&admin, i64::from(total)).await }
    })
    .await;
    let status = process.terminate().await?;
    assert!(status.success(), "SIGTERM ends the process cleanly: {status}");
    assert_exactly_once(&admin, total, contacts).await?;
    admin.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stream_of_events_loses_none() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let admin = env.admin_pool().await?;
    let (total, contacts) = (5_000u32, 500u32);
    let mut process = Process::spawn(&env, "ingest,lead", &[])?;
    schema_ready(&admin).await;
    let publishing = publish_all(&env, total, contacts);
    let stopping = async {
        for _ in 0..2 {
            let before = applied(&admin).await?;
            eventually(Duration::from_secs(120), "progress", || {
                let admin = admin.clone();
                async move { applied(&admin).await.ok().filter(|n| *n > before + 500 || *n >= i64::from(total)) }
            })
            .await;
            let status = process.terminate().await?;
            assert!(status.success(), "clean exit on SIGTERM: {status}");
            process = Process::spawn(&env, "ingest,lead", &[])?;
        }
        anyhow::Ok(process)
    };
    let ((), process) = tokio::try_join!(publishing, stopping)?;
    eventually(Duration::from_secs(120), "every event applied", || {
        let admin = admin.clone();
        async move { applied(&admin).await.ok().filter(|n| *n >= i64::from(total)) }
    })
    .await;
    process.terminate().await?;
    assert_exactly_once(&admin, total, contacts).await?;
    admin.close().await;
    env.cleanup().await
}
