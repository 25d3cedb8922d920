//! The foundation: the whole system comes up healthy, a published chat event becomes a lead,
//! services keep to their own schemas, and shutdown loses nothing.

use leads_tests::{TestEnv, chat_event, eventually, pb, phone};
use platform::ServiceName;
use std::time::Duration;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn every_service_reports_serving() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_all().await?;
    for service in ServiceName::ALL {
        let mut health = HealthClient::new(node.channel(service).await?);
        let overall = health.check(HealthCheckRequest { service: String::new() }).await?.into_inner();
        assert_eq!(overall.status(), ServingStatus::Serving, "{service}");
    }
    let mut health = HealthClient::new(node.channel(ServiceName::Lead).await?);
    let lead = health.check(HealthCheckRequest { service: "leads.v1.LeadService".into() }).await?.into_inner();
    assert_eq!(lead.status(), ServingStatus::Serving);
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_published_chat_event_becomes_a_new_lead() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_all().await?;
    env.publish_interaction("acme", &chat_event("evt-1", "+1 415 555 0100", "how much is premium?")).await?;
    let mut leads = node.lead().await?;
    let page = eventually(DEADLINE, "the lead to appear", || {
        let mut leads = leads.clone();
        async move {
            let page = leads
                .list_leads(pb::ListLeadsRequest { org_id: "acme".into(), ..Default::default() })
                .await
                .ok()?
                .into_inner();
            (page.total_count == 1).then_some(page)
        }
    })
    .await;
    let listed = &page.leads[0];
    assert_eq!(listed.status(), pb::LeadStatus::New);
    assert!(listed.active);
    let contact = listed.contact.clone().unwrap_or_default();
    assert_eq!(contact.phone, "+14155550100");
    assert_eq!(contact.name, "Ada Lovelace");
    assert_eq!(listed.source.clone().unwrap_or_default().kind(), pb::SourceKind::ChatMessage);
    let fetched =
        leads.get_lead(pb::GetLeadRequest { org_id: "acme".into(), lead_id: listed.id.clone() }).await?.into_inner();
    assert_eq!(fetched.id, listed.id);
    assert_eq!(fetched.interaction_count, 1);
    assert_eq!(fetched.last_message_preview, "how much is premium?");
    // Nothing crosses organisations.
    let other = leads.list_leads(pb::ListLeadsRequest { org_id: "globex".into(), ..Default::default() }).await?;
    assert_eq!(other.into_inner().total_count, 0);
    let err = leads
        .get_lead(pb::GetLeadRequest { org_id: "globex".into(), lead_id: listed.id.clone() })
        .await
        .expect_err("another organisation's lead");
    assert_eq!(err.code(), tonic::Code::NotFound);
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_service_role_cannot_read_another_services_schema() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_all().await?;
    let ingest_role = platform::db::service_options(&env.settings, ServiceName::Ingest)?;
    let pool = sqlx::PgPool::connect_with(ingest_role).await?;
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM accepted_events").fetch_one(&pool).await?;
    assert_eq!(own, 0);
    for foreign in ["lead.leads", "lead.contacts", "broadcast.outbox", "qualification.outbox"] {
        let error = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {foreign} LIMIT 1")))
            .fetch_all(&pool)
            .await
            .expect_err("another service's table");
        assert_eq!(platform::error::sqlstate(&error).as_deref(), Some("42501"), "{foreign}: {error}");
    }
    let error = sqlx::query("CREATE TABLE public.sneaky (id int)").execute(&pool).await.expect_err("public schema");
    assert_eq!(platform::error::sqlstate(&error).as_deref(), Some("42501"));
    // Each service keeps its own migrations table in its own schema.
    let admin = env.admin_pool().await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&admin)
    .await?;
    assert_eq!(
        tables,
        ["assignment", "broadcast", "followup", "ingest", "lead", "notifications", "people", "qualification"]
    );
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn graceful_stop_during_a_stream_of_events_loses_none() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let total = 400u32;
    let publisher = {
        let js = env.js.clone();
        let subject = env.subjects.interactions("acme");
        tokio::spawn(async move {
            for n in 0..total {
                let event = chat_event(&format!("evt-{n}"), &phone(n % 50), &format!("message {n}"));
                let ack = js.publish(subject.clone(), serde_json::to_vec(&event).unwrap_or_default().into()).await?;
                ack.await?;
            }
            anyhow::Ok(())
        })
    };
    // Stop while events are still arriving, then start again.
    let leads = node.lead().await?;
    eventually(DEADLINE, "some leads", || {
        let mut leads = leads.clone();
        async move {
            let page = leads
                .list_leads(pb::ListLeadsRequest { org_id: "acme".into(), ..Default::default() })
                .await
                .ok()?
                .into_inner();
            (page.total_count > 0).then_some(())
        }
    })
    .await;
    node.stop().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    publisher.await??;
    let mut leads = node.lead().await?;
    let all = eventually(DEADLINE, "every event to be applied", || {
        let mut leads = leads.clone();
        async move {
            let all = leads_tests::all_leads(&mut leads, "acme").await.ok()?;
            let count: i64 = all.iter().map(|l| l.interaction_count).sum();
            (count >= i64::from(total)).then_some(all)
        }
    })
    .await;
    assert_eq!(all.len(), 50, "one lead per contact");
    let count: i64 = all.iter().map(|l| l.interaction_count).sum();
    assert_eq!(count, i64::from(total), "each event applied exactly once");
    let _ = leads.get_lead(pb::GetLeadRequest { org_id: "acme".into(), lead_id: all[0].id.clone() }).await?;
    node.stop().await?;
    env.cleanup().await
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn serving(port: u16, service: &str) -> Option<()> {
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}")).ok()?.connect().await.ok()?;
    let status = HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await.ok()?;
    (status.into_inner().status() == ServingStatus::Serving).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lead_and_ingest_run_beside_a_separate_qualification_process() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let (lead_port, qualification_port) = (free_port()?, free_port()?);
    let front = leads_tests::Process::spawn(&env, "lead,ingest", &[("LEADS_GRPC_LEAD_PORT", lead_port.to_string())])?;
    let workers = leads_tests::Process::spawn(
        &env,
        "qualification",
        &[("LEADS_GRPC_QUALIFICATION_PORT", qualification_port.to_string())],
    )?;
    eventually(DEADLINE, "the lead process to serve", || serving(lead_port, "leads.v1.LeadService")).await;
    eventually(DEADLINE, "the qualification process to serve", || {
        serving(qualification_port, "leads.v1.QualificationService")
    })
    .await;
    env.publish_interaction("acme", &chat_event("evt-side", &phone(1), "hello")).await?;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{lead_port}"))?.connect().await?;
    let leads = leads_proto::v1::lead_service_client::LeadServiceClient::new(channel);
    eventually(DEADLINE, "the lead from the chat event", || {
        let mut leads = leads.clone();
        async move {
            let page =
                leads.list_leads(pb::ListLeadsRequest { org_id: "acme".into(), ..Default::default() }).await.ok()?;
            (page.into_inner().total_count == 1).then_some(())
        }
    })
    .await;
    assert!(front.terminate().await?.success());
    assert!(workers.terminate().await?.success());
    env.cleanup().await
}
