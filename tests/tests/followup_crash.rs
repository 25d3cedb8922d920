//! The follow-up service killed with SIGKILL while follow-ups are opened, come due and
//! their leads are converted. Afterwards every follow-up the lead service accepted is kept
//! exactly once, in the state its lead implies, and every state it went through is on the
//! lead's timeline once.

use futures::StreamExt;
use leads_tests::{Process, desk::Desk, eventually, eventually_ok, pb};
use platform::ServiceName;
use std::time::Duration;
use tonic::Code;

const ORG: &str = "acme";
const LEADS: u32 = 200;
const FOLLOW_UPS: usize = 1_200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Created {
    Accepted,
    Refused,
}

async fn kept(admin: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM followup.follow_ups").fetch_one(admin).await.unwrap_or(0)
}

/// Each invariant with how many follow-ups break it; all zero when the system is right.
async fn violations(admin: &sqlx::PgPool) -> anyhow::Result<Vec<(&'static str, i64)>> {
    let checks = [
        (
            "accepted by the lead but not kept",
            "SELECT count(*) FROM lead.follow_up_entries e WHERE e.state = 'pending' \
             AND NOT EXISTS (SELECT 1 FROM followup.follow_ups f WHERE f.id = e.follow_up_id)",
        ),
        (
            "kept but never accepted by the lead",
            "SELECT count(*) FROM followup.follow_ups f WHERE NOT EXISTS \
             (SELECT 1 FROM lead.follow_up_entries e WHERE e.follow_up_id = f.id AND e.state = 'pending')",
        ),
        (
            "open on an inactive lead",
            "SELECT count(*) FROM followup.follow_ups f JOIN lead.leads l ON l.id = f.lead_id \
             WHERE NOT l.active AND f.state <> 'cancelled'",
        ),
        (
            "cancelled on an active lead",
            "SELECT count(*) FROM followup.follow_ups f JOIN lead.leads l ON l.id = f.lead_id \
             WHERE l.active AND f.state = 'cancelled'",
        ),
        (
            "past due but not due",
            "SELECT count(*) FROM followup.follow_ups f JOIN lead.leads l ON l.id = f.lead_id \
             WHERE l.active AND f.due_at < now() - interval '1 second' AND f.state <> 'due'",
        ),
        (
            "state missing from the lead's timeline",
            "SELECT count(*) FROM followup.follow_ups f WHERE f.state <> 'pending' AND NOT EXISTS \
             (SELECT 1 FROM lead.follow_up_entries e WHERE e.follow_up_id = f.id AND e.state = f.state)",
        ),
    ];
    let mut found = Vec::new();
    for (what, sql) in checks {
        found.push((what, sqlx::query_scalar::<_, i64>(sql).fetch_one(admin).await?));
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_follow_ups_open_come_due_and_close_keeps_each_once() -> anyhow::Result<()> {
    let desk = Desk::start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let (env, lead_client) = (&desk.env, &desk.leads);
    let leads = desk.ingest_leads(ORG, LEADS, "call me", Duration::from_secs(60)).await?;
    let lead_endpoint = format!("http://{}", desk.node.addr(ServiceName::Lead));
    // A fixed port, so that callers reach each restarted process at the same address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let spawn = || {
        Process::spawn(
            env,
            "followup",
            &[("LEADS_LEAD_ENDPOINT", lead_endpoint.clone()), ("LEADS_GRPC_FOLLOWUP_PORT", port.to_string())],
        )
    };
    let follow_up_client = leads_proto::v1::follow_up_service_client::FollowUpServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))?.connect_lazy(),
    );
    let mut process = spawn()?;
    let admin = env.admin_pool().await?;

    // Half the follow-ups are created through the process being killed (which may die
    // between the lead's commit and its own), half as if by a follow-up service that died
    // right after the lead accepted them. Every tenth lead is converted along the way.
    let work = {
        let client = lead_client.clone();
        let leads = leads.clone();
        tokio::spawn(async move {
            let opens = futures::stream::iter(0..FOLLOW_UPS)
                .map(|i| {
                    let mut client = client.clone();
                    let follow_ups = follow_up_client.clone();
                    let lead = leads[i % leads.len()].clone();
                    let victim = leads[(i / 100) * 10 % leads.len()].clone();
                    async move {
                        if i % 100 == 99 {
                            let convert = pb::ChangeStatusRequest {
                                org_id: ORG.into(),
                                lead_id: victim.id.clone(),
                                status: pb::LeadStatus::Converted as i32,
                                actor: "closer".into(),
                                ..Default::default()
                            };
                            client.change_status(convert).await?;
                        }
                        let due = chrono::Utc::now() + chrono::Duration::milliseconds((i % 4) as i64 * 700 - 500);
                        let due = Some(prost_types::Timestamp { seconds: due.timestamp(), nanos: 0 });
                        if i % 2 == 1 {
                            // As a careful caller does: the same request_id until a definite
                            // answer, however often the process dies under the call.
                            let create = pb::CreateFollowUpRequest {
                                org_id: ORG.into(),
                                lead_id: lead.id.clone(),
                                due_at: due,
                                note: format!("call {i}"),
                                actor: "ann".into(),
                                request_id: format!("req-{i}"),
                                ..Default::default()
                            };
                            let created = eventually_ok(Duration::from_secs(120), "an answer", || {
                                let mut follow_ups = follow_ups.clone();
                                let mut request = tonic::Request::new(create.clone());
                                request.set_timeout(Duration::from_secs(10));
                                async move {
                                    match follow_ups.create_follow_up(request).await {
                                        Ok(_) => Ok(Created::Accepted),
                                        Err(status) if status.code() == Code::FailedPrecondition => {
                                            Ok(Created::Refused)
                                        }
                                        Err(status) => Err(status),
                                    }
                                }
                            })
                            .await;
                            return Ok(created);
                        }
                        let open = pb::OpenFollowUpRequest {
                            org_id: ORG.into(),
                            lead_id: lead.id.clone(),
                            follow_up_id: uuid::Uuid::now_v7().to_string(),
                            due_at: due,
                            note: format!("call {i}"),
                            agent_id: String::new(),
                            actor: "ann".into(),
                            ..Default::default()
                        };
                        let mut open = tonic::Request::new(open);
                        open.set_timeout(Duration::from_secs(10));
                        match client.open_follow_up(open).await {
                            Ok(_) => anyhow::Ok(Created::Accepted),
                            Err(status) if status.code() == Code::FailedPrecondition => Ok(Created::Refused),
                            Err(status) => Err(status.into()),
                        }
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await;
            opens.into_iter().collect::<anyhow::Result<Vec<Created>>>()
        })
    };
    // Each kill waits for the restarted process to have kept some follow-ups of its own, or
    // for the work to be over (the later kills then land while it catches up).
    let mut kept_at_kill = 0;
    for kill in 1..=4i64 {
        let target = kept_at_kill + FOLLOW_UPS as i64 / 8;
        let work = &work;
        eventually(Duration::from_secs(120), "progress before the next kill", || {
            let admin = admin.clone();
            async move { Some(kept(&admin).await).filter(|n| *n >= target || work.is_finished()) }
        })
        .await;
        process.kill().await?;
        kept_at_kill = kept(&admin).await;
        eprintln!("kill {kill}: {kept_at_kill} follow-ups kept");
        process = spawn()?;
    }
    let outcomes = work.await??;
    let count = |wanted: Created| outcomes.iter().filter(|c| **c == wanted).count() as i64;
    let accepted = count(Created::Accepted);
    eprintln!("accepted {accepted}, refused {}", count(Created::Refused));
    assert!(accepted > FOLLOW_UPS as i64 / 2, "most follow-ups were on active leads: {accepted}");

    eventually_ok(Duration::from_secs(120), "every follow-up kept once in its right state", || {
        let admin = admin.clone();
        async move {
            let found = violations(&admin).await.map_err(|e| vec![(e.to_string(), -1)])?;
            let broken: Vec<(String, i64)> =
                found.into_iter().filter(|(_, n)| *n != 0).map(|(what, n)| (what.to_owned(), n)).collect();
            if broken.is_empty() { Ok(()) } else { Err(broken) }
        }
    })
    .await;
    assert_eq!(kept(&admin).await, accepted, "each accepted follow-up kept once");
    let status = process.terminate().await?;
    assert!(status.success(), "SIGTERM ends the process cleanly: {status}");
    admin.close().await;
    desk.stop().await
}
