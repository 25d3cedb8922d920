//! Agents and assignments: only active leads are assigned (decided by the lead service under
//! the lead's lock), every assignment is kept once in the history and on the lead's
//! timeline, and agents' open leads follow the leads' statuses.

use leads_tests::{desk, eventually, pb};
use platform::ServiceName;
use std::{ops::Deref, time::Duration};
use tonic::{Code, transport::Channel};

const DEADLINE: Duration = Duration::from_secs(30);
const ORG: &str = "acme";

type Assignments = leads_proto::v1::assignment_service_client::AssignmentServiceClient<Channel>;

struct Desk {
    base: desk::Desk,
    assignments: Assignments,
}

impl Deref for Desk {
    type Target = desk::Desk;

    fn deref(&self) -> &desk::Desk {
        &self.base
    }
}

impl Desk {
    async fn start() -> anyhow::Result<Self> {
        let base = desk::Desk::start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Assignment]).await?;
        let assignments = base.node.assignment().await?;
        Ok(Self { base, assignments })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.base.stop().await
    }

    /// `count` leads through the real ingest path, one per contact.
    async fn leads(&self, count: u32) -> anyhow::Result<Vec<pb::Lead>> {
        self.ingest_leads(ORG, count, "hello", DEADLINE).await
    }

    async fn agent(&self, agent_id: &str, active: Option<bool>) -> Result<pb::Agent, tonic::Status> {
        let request = pb::UpsertAgentRequest {
            org_id: ORG.into(),
            agent_id: agent_id.into(),
            name: format!("Agent {agent_id}"),
            email: format!("{agent_id}@example.com"),
            active,
            capacity: None,
            ..Default::default()
        };
        Ok(self.assignments.clone().upsert_agent(request).await?.into_inner())
    }

    async fn assign(&self, lead_id: &str, agent_id: &str) -> Result<pb::Assignment, tonic::Status> {
        let request = pb::AssignLeadRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            agent_id: agent_id.into(),
            actor: "supervisor".into(),
            reason: "round robin".into(),
            unassign: false,
            ..Default::default()
        };
        Ok(self.assignments.clone().assign_lead(request).await?.into_inner())
    }

    async fn convert(&self, lead_id: &str) -> anyhow::Result<pb::Lead> {
        let request = pb::ChangeStatusRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            status: pb::LeadStatus::Converted as i32,
            actor: "closer".into(),
            ..Default::default()
        };
        Ok(self.leads.clone().change_status(request).await?.into_inner())
    }

    async fn get_lead(&self, lead_id: &str) -> anyhow::Result<pb::Lead> {
        let request = pb::GetLeadRequest { org_id: ORG.into(), lead_id: lead_id.into() };
        Ok(self.leads.clone().get_lead(request).await?.into_inner())
    }

    async fn agent_ids(&self, active_only: bool) -> anyhow::Result<Vec<String>> {
        let mut client = self.assignments.clone();
        let agents = client.list_agents(pb::ListAgentsRequest { org_id: ORG.into(), active_only }).await?;
        Ok(agents.into_inner().agents.into_iter().map(|a| a.agent_id).collect())
    }

    /// The lead's assignments, newest first.
    async fn history(&self, lead_id: &str) -> anyhow::Result<Vec<pb::Assignment>> {
        let request = pb::GetAssignmentHistoryRequest { org_id: ORG.into(), lead_id: lead_id.into() };
        Ok(self.assignments.clone().get_assignment_history(request).await?.into_inner().assignments)
    }

    /// Waits until the agent has `count` open leads.
    async fn wait_open_leads(&self, agent_id: &str, count: i64, what: &str) {
        eventually(DEADLINE, what, || async { self.open_leads(agent_id).await.ok().filter(|n| *n == count) }).await;
    }

    async fn open_leads(&self, agent_id: &str) -> anyhow::Result<i64> {
        let agents = self
            .assignments
            .clone()
            .list_agents(pb::ListAgentsRequest { org_id: ORG.into(), active_only: false })
            .await?
            .into_inner()
            .agents;
        Ok(agents.iter().find(|a| a.agent_id == agent_id).map_or(0, |a| a.open_leads))
    }
}

#[tokio::test]
async fn agents_are_upserted_listed_and_validated() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    let created = desk.agent("ann", None).await?;
    assert!(created.active, "a new agent without `active` is active");
    assert_eq!(created.name, "Agent ann");
    let renamed = desk
        .assignments
        .clone()
        .upsert_agent(pb::UpsertAgentRequest {
            org_id: ORG.into(),
            agent_id: "ann".into(),
            name: "Ann Smith".into(),
            email: String::new(),
            active: None,
            capacity: None,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        (renamed.name.as_str(), renamed.email.as_str(), renamed.active),
        ("Ann Smith", "ann@example.com", true),
        "what the request leaves empty is kept"
    );
    desk.agent("bob", None).await?;
    let retired = desk
        .assignments
        .clone()
        .upsert_agent(pb::UpsertAgentRequest {
            org_id: ORG.into(),
            agent_id: "bob".into(),
            active: Some(false),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!((retired.name.as_str(), retired.active), ("Agent bob", false));
    assert_eq!(desk.agent_ids(false).await?, ["ann", "bob"]);
    assert_eq!(desk.agent_ids(true).await?, ["ann"]);

    for (request, field) in [
        (pb::UpsertAgentRequest { org_id: ORG.into(), ..Default::default() }, "agent_id"),
        (
            pb::UpsertAgentRequest {
                org_id: ORG.into(),
                agent_id: "cy".into(),
                email: "not an email".into(),
                ..Default::default()
            },
            "email",
        ),
        (pb::UpsertAgentRequest { org_id: "bad org!".into(), agent_id: "cy".into(), ..Default::default() }, "org_id"),
        (pb::UpsertAgentRequest { org_id: ORG.into(), agent_id: "x".repeat(129), ..Default::default() }, "agent_id"),
    ] {
        let status = desk.assignments.clone().upsert_agent(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    assert_eq!(desk.agent_ids(false).await?.len(), 2, "refused agents leave nothing behind");
    desk.stop().await
}

#[tokio::test]
async fn assigning_and_reassigning_is_recorded_everywhere() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    desk.agent("ann", None).await?;
    desk.agent("bob", None).await?;
    let leads = desk.leads(1).await?;
    let lead = &leads[0];

    let first = desk.assign(&lead.id, "ann").await?;
    assert_eq!((first.agent_id.as_str(), first.previous_agent_id.as_str()), ("ann", ""));
    let second = desk.assign(&lead.id, "bob").await?;
    assert_eq!((second.agent_id.as_str(), second.previous_agent_id.as_str()), ("bob", "ann"));
    assert!(second.lead_version > first.lead_version);
    // The same agent again changes nothing.
    let same = desk.assign(&lead.id, "bob").await?;
    assert_eq!(same.lead_version, second.lead_version);

    let now = desk.get_lead(&lead.id).await?;
    assert_eq!(now.agent_id, "bob");
    let history = desk.history(&lead.id).await?;
    let moves: Vec<(&str, &str, &str)> =
        history.iter().map(|a| (a.previous_agent_id.as_str(), a.agent_id.as_str(), a.actor.as_str())).collect();
    assert_eq!(moves, [("ann", "bob", "supervisor"), ("", "ann", "supervisor")], "newest first, once each");

    let by_agent = desk
        .leads
        .clone()
        .list_leads(pb::ListLeadsRequest {
            org_id: ORG.into(),
            filter: Some(pb::LeadFilter { agent_ids: vec!["bob".into()], ..Default::default() }),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(by_agent.total_count, 1);
    assert_eq!(by_agent.leads[0].id, lead.id);

    let timeline = desk
        .leads
        .clone()
        .get_lead_history(pb::GetLeadHistoryRequest {
            org_id: ORG.into(),
            lead_id: lead.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .entries;
    let assignments: Vec<&str> =
        timeline.iter().filter(|e| e.kind == "assignment").map(|e| e.summary.as_str()).collect();
    assert_eq!(assignments, ["reassigned from ann to bob (round robin)", "assigned to ann (round robin)"]);

    // The projection reaches the same history from the lead's events, without doubling it.
    desk.wait_open_leads("bob", 1, "bob's open lead").await;
    assert_eq!(desk.open_leads("ann").await?, 0);
    let again = desk.history(&lead.id).await?;
    assert_eq!(again.len(), 2);

    let unassigned = desk
        .assignments
        .clone()
        .assign_lead(pb::AssignLeadRequest {
            org_id: ORG.into(),
            lead_id: lead.id.clone(),
            unassign: true,
            actor: "supervisor".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!((unassigned.agent_id.as_str(), unassigned.previous_agent_id.as_str()), ("", "bob"));
    assert_eq!(desk.get_lead(&lead.id).await?.agent_id, "");
    desk.stop().await
}

#[tokio::test]
async fn only_active_leads_and_active_known_agents_take_assignments() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    desk.agent("ann", None).await?;
    desk.agent("gone", Some(false)).await?;
    let leads = desk.leads(2).await?;
    let (open, closed) = (&leads[0], &leads[1]);
    desk.convert(&closed.id).await?;

    let inactive = desk.assign(&closed.id, "ann").await.expect_err("converted lead");
    assert_eq!(inactive.code(), Code::FailedPrecondition);
    assert!(inactive.message().contains("inactive") && inactive.message().contains("CONVERTED"), "{inactive:?}");
    assert_eq!(desk.get_lead(&closed.id).await?.agent_id, "", "an inactive lead keeps its agent");

    let unknown = desk.assign(&open.id, "nobody").await.expect_err("unknown agent");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains("agent nobody"), "{unknown:?}");
    let retired = desk.assign(&open.id, "gone").await.expect_err("inactive agent");
    assert_eq!(retired.code(), Code::FailedPrecondition);
    let missing = desk.assign(&open.id, "").await.expect_err("no agent");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().starts_with("agent_id"), "{missing:?}");
    let no_lead = desk.assign(&uuid::Uuid::now_v7().to_string(), "ann").await.expect_err("unknown lead");
    assert_eq!(no_lead.code(), Code::NotFound);
    assert_eq!(desk.get_lead(&open.id).await?.agent_id, "", "refused assignments change nothing");
    assert!(desk.history(&open.id).await?.is_empty());
    desk.stop().await
}

#[tokio::test]
async fn bulk_assign_answers_per_lead_and_open_leads_follow_statuses() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    desk.agent("ann", None).await?;
    let leads = desk.leads(4).await?;
    desk.convert(&leads[3].id).await?;
    let unknown = uuid::Uuid::now_v7().to_string();
    let mut ids: Vec<String> = leads.iter().map(|l| l.id.clone()).collect();
    ids.push(unknown.clone());
    ids.push("not-a-uuid".into());
    let results = desk
        .assignments
        .clone()
        .bulk_assign(pb::BulkAssignRequest {
            org_id: ORG.into(),
            lead_ids: ids.clone(),
            agent_id: "ann".into(),
            actor: "supervisor".into(),
            reason: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .results;
    let outcomes: Vec<(String, i32)> = results.iter().map(|r| (r.lead_id.clone(), r.outcome)).collect();
    let changed = pb::BulkOutcome::Changed as i32;
    assert_eq!(
        outcomes,
        [
            (ids[0].clone(), changed),
            (ids[1].clone(), changed),
            (ids[2].clone(), changed),
            (ids[3].clone(), pb::BulkOutcome::Inactive as i32),
            (unknown, pb::BulkOutcome::NotFound as i32),
            ("not-a-uuid".into(), pb::BulkOutcome::NotFound as i32),
        ]
    );
    assert!(results[3].detail.contains("CONVERTED"), "{:?}", results[3]);
    desk.wait_open_leads("ann", 3, "three open leads").await;
    desk.convert(&leads[0].id).await?;
    desk.wait_open_leads("ann", 2, "two open leads after a conversion").await;
    desk.stop().await
}

/// Conversions and assignments racing on the same leads: an assignment is either recorded
/// before the conversion or refused, never applied to a converted lead.
#[tokio::test]
async fn an_assignment_racing_a_conversion_never_lands_on_an_inactive_lead() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    desk.agent("ann", None).await?;
    let leads = desk.leads(30).await?;
    let mut races = Vec::new();
    for lead in &leads {
        let (assign, convert) = (desk.assign(&lead.id, "ann"), desk.convert(&lead.id));
        races.push(async move { tokio::join!(assign, convert) });
    }
    let outcomes = futures::future::join_all(races).await;
    let admin = desk.env.admin_pool().await?;
    let mut refused = 0;
    for (lead, (assigned, converted)) in leads.iter().zip(outcomes) {
        let converted = converted?;
        assert!(!converted.active);
        let lead_id: uuid::Uuid = lead.id.parse()?;
        let conversion_version: i64 = sqlx::query_scalar(
            "SELECT lead_version FROM lead.status_changes WHERE lead_id = $1 AND to_status = 'converted'",
        )
        .bind(lead_id)
        .fetch_one(&admin)
        .await?;
        match assigned {
            Ok(assignment) => assert!(assignment.lead_version < conversion_version, "assigned after conversion"),
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                refused += 1;
                let after: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.assignment_changes WHERE lead_id = $1")
                    .bind(lead_id)
                    .fetch_one(&admin)
                    .await?;
                assert_eq!(after, 0, "a refused assignment leaves no record");
            }
        }
    }
    tracing::info!(refused, "assignments refused because the conversion won");
    desk.stop().await
}

/// Assignments the lead service made without the assignment service recording them (as when
/// that service stops right after the lead's commit) reach the history and the agent's open
/// leads from the lead's events, which left as one message, once however often it is
/// delivered.
#[tokio::test]
async fn assignments_reach_the_history_from_the_lead_events_alone() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    desk.agent("ann", None).await?;
    let leads = desk.leads(2).await?;
    let ids: Vec<String> = leads.iter().map(|l| l.id.clone()).collect();
    let request = pb::AssignLeadsRequest {
        org_id: ORG.into(),
        lead_ids: ids.clone(),
        agent_id: "ann".into(),
        actor: "router".into(),
        reason: "from the lead service".into(),
        ..Default::default()
    };
    let results = desk.leads.clone().assign_leads(request).await?.into_inner().results;
    assert!(results.iter().all(|r| r.outcome == pb::BulkOutcome::Changed as i32), "{results:?}");
    desk.wait_open_leads("ann", 2, "ann's open leads from the events").await;
    for id in &ids {
        let history = eventually(DEADLINE, "the assignment from the event", || async {
            let request = pb::GetAssignmentHistoryRequest { org_id: ORG.into(), lead_id: id.clone() };
            let history = desk.assignments.clone().get_assignment_history(request).await.ok()?.into_inner();
            (!history.assignments.is_empty()).then_some(history.assignments)
        })
        .await;
        assert_eq!(history.len(), 1);
        assert_eq!(
            (history[0].agent_id.as_str(), history[0].actor.as_str(), history[0].reason.as_str()),
            ("ann", "router", "from the lead service")
        );
    }
    let consumer = desk.env.js.get_stream(desk.env.subjects.stream_name(platform::nats::StreamKind::Events("lead")));
    let stream = consumer.await?;
    let subject = |kind: &str| desk.env.subjects.event("lead", ORG, kind);
    let batch = stream.get_last_raw_message_by_subject(&subject("assignments_applied")).await?;
    let batch: serde_json::Value = serde_json::from_slice(&batch.payload)?;
    let mut told: Vec<&str> =
        batch["data"].as_array().into_iter().flatten().filter_map(|e| e["aggregate_id"].as_str()).collect();
    told.sort_unstable();
    let mut assigned: Vec<&str> = ids.iter().map(String::as_str).collect();
    assigned.sort_unstable();
    assert_eq!(told, assigned, "both assignments in one message");
    assert!(stream.get_last_raw_message_by_subject(&subject("assigned")).await.is_err(), "none alone");

    // Redelivering every lead event changes nothing.
    let admin = desk.env.admin_pool().await?;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM assignment.assignments").fetch_one(&admin).await?;
    // Stopped first: nats-server 2.9 may fail to delete a durable that is being pulled.
    desk.base.node.stop().await?;
    stream.delete_consumer("assignment-assignments-applied").await?;
    let node = desk.base.env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Assignment]).await?;
    let replayed = eventually(DEADLINE, "the replay consumed", || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info("assignment-assignments-applied").await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0).then_some(())
        }
    })
    .await;
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM assignment.assignments").fetch_one(&admin).await?;
    assert_eq!((replayed, after), ((), before), "a replay of every event records nothing twice");
    node.stop().await?;
    desk.base.env.cleanup().await
}

#[tokio::test]
async fn assigning_with_a_stale_version_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    desk.agent("ann", None).await?;
    desk.agent("bob", None).await?;
    let leads = desk.leads(3).await?;
    let opened = leads[0].clone();
    let assign = |agent_id: &str, expected_version: i64| pb::AssignLeadRequest {
        org_id: ORG.into(),
        lead_id: opened.id.clone(),
        agent_id: agent_id.into(),
        actor: "supervisor".into(),
        expected_version: Some(expected_version),
        ..Default::default()
    };
    // Two supervisors open the lead at one version; the first gives it to ann.
    let first = desk.assignments.clone().assign_lead(assign("ann", opened.version)).await?.into_inner();
    assert_eq!((first.agent_id.as_str(), first.lead_version), ("ann", opened.version + 1));
    let refused =
        desk.assignments.clone().assign_lead(assign("bob", opened.version)).await.expect_err("a stale version");
    assert_eq!(refused.code(), Code::Aborted);
    assert!(refused.message().starts_with("Someone changed this lead meanwhile: reload to see it"), "{refused:?}");
    let words = format!("is at version {}, not the expected {}", first.lead_version, opened.version);
    assert!(refused.message().contains(&words), "{}", refused.message());
    let version = refused.metadata().get("x-lead-version").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(version, Some(first.lead_version.to_string()), "the current version in the trailing metadata");
    let now = desk.get_lead(&opened.id).await?;
    assert_eq!((now.agent_id.as_str(), now.version), ("ann", first.lead_version), "the stale assignment did not land");
    assert_eq!(desk.history(&opened.id).await?.len(), 1);
    // At the version it now has, the reassignment goes through.
    let second = desk.assignments.clone().assign_lead(assign("bob", first.lead_version)).await?.into_inner();
    assert_eq!((second.agent_id.as_str(), second.previous_agent_id.as_str()), ("bob", "ann"));

    // In bulk, the stale lead is answered with its version and the others move.
    let stale = second.lead_version - 1;
    let request = pb::BulkAssignRequest {
        org_id: ORG.into(),
        lead_ids: leads.iter().map(|l| l.id.clone()).collect(),
        agent_id: "ann".into(),
        actor: "supervisor".into(),
        expected_versions: [
            (leads[0].id.clone(), stale),
            (leads[1].id.clone(), leads[1].version),
            (leads[2].id.clone(), leads[2].version),
        ]
        .into(),
        ..Default::default()
    };
    let results = desk.assignments.clone().bulk_assign(request).await?.into_inner().results;
    let outcomes: Vec<(pb::BulkOutcome, i64)> = results.iter().map(|r| (r.outcome(), r.lead_version)).collect();
    assert_eq!(
        outcomes,
        [
            (pb::BulkOutcome::VersionMismatch, second.lead_version),
            (pb::BulkOutcome::Changed, leads[1].version + 1),
            (pb::BulkOutcome::Changed, leads[2].version + 1),
        ],
        "{results:?}"
    );
    assert_eq!(desk.get_lead(&leads[0].id).await?.agent_id, "bob", "the stale lead stays with bob");
    for lead in &leads[1..] {
        assert_eq!(desk.get_lead(&lead.id).await?.agent_id, "ann");
    }
    desk.stop().await
}

/// Bulk assignments racing over the same leads and agents, each taking leads from several
/// agents at once: every agent's open leads come out as the leads it holds, and the load
/// changes, kept as deltas in each commit, end up folded into the counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_bulk_assignments_leave_every_agents_open_leads_exact() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    let agents = ["ann", "bob", "cid", "dee"];
    for agent in agents {
        desk.agent(agent, None).await?;
    }
    let leads = desk.leads(24).await?;
    let ids: Vec<String> = leads.iter().map(|l| l.id.clone()).collect();
    // Each call takes twelve leads spread over the whole list, most of them held by others.
    let calls = (0..16).map(|call: usize| {
        let mut client = desk.assignments.clone();
        let lead_ids: Vec<String> = (0..12).map(|k| ids[(call * 5 + k * 2) % ids.len()].clone()).collect();
        let agent_id = agents[call % agents.len()].to_owned();
        async move {
            let request = pb::BulkAssignRequest {
                org_id: ORG.into(),
                lead_ids,
                agent_id,
                actor: "supervisor".into(),
                ..Default::default()
            };
            client.bulk_assign(request).await.map(|answer| answer.into_inner().results.len())
        }
    });
    for answered in futures::future::join_all(calls).await {
        assert_eq!(answered?, 12);
    }
    let mut held = std::collections::BTreeMap::new();
    for id in &ids {
        *held.entry(desk.get_lead(id).await?.agent_id).or_insert(0i64) += 1;
    }
    for agent in agents {
        let count = held.get(agent).copied().unwrap_or(0);
        desk.wait_open_leads(agent, count, &format!("{agent} with the {count} leads it holds")).await;
    }
    let admin = desk.env.admin_pool().await?;
    eventually(DEADLINE, "every load delta folded into its agent's counter", || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM assignment.agent_load_deltas").fetch_one(&admin).await.ok()?;
        let counted: Vec<(String, i64)> = sqlx::query_as(
            "SELECT agent_id, held FROM assignment.agent_loads WHERE org_id = $1 AND held <> 0 ORDER BY agent_id",
        )
        .bind(ORG)
        .fetch_all(&admin)
        .await
        .ok()?;
        let expected: Vec<(String, i64)> =
            held.iter().filter(|(agent, _)| !agent.is_empty()).map(|(a, n)| (a.clone(), *n)).collect();
        (pending == 0 && counted == expected).then_some(())
    })
    .await;
    admin.close().await;
    desk.stop().await
}
