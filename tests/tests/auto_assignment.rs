//! Assignment that runs itself: with an organisation's policy on, new leads go to available
//! agents with room, by round robin or balanced load, each saying why in the lead's history;
//! never over an agent's capacity, whatever the number of assignment processes; never to an
//! agent who is offline, whose heartbeat lapsed, or who was deactivated.

use leads_tests::{Node, TestEnv, chat_event, eventually, pb, phone};
use platform::ServiceName;
use std::{collections::HashMap, time::Duration};
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(30);
const ORG: &str = "acme";

type Assignments = leads_proto::v1::assignment_service_client::AssignmentServiceClient<Channel>;
type Leads = leads_proto::v1::lead_service_client::LeadServiceClient<Channel>;

struct Desk {
    env: TestEnv,
    node: Node,
    /// A second assignment process on the same database and streams, when asked for.
    second: Option<Node>,
    assignments: Assignments,
    leads: Leads,
    admin: sqlx::PgPool,
    /// Leads published so far, so that each has its own contact.
    published: u32,
}

impl Desk {
    async fn start(configure: impl FnOnce(&mut TestEnv)) -> anyhow::Result<Self> {
        let mut env = TestEnv::new().await?;
        env.settings.assignment.sweep_interval_secs = 1;
        configure(&mut env);
        let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Assignment]).await?;
        let assignments = node.assignment().await?;
        let leads = node.lead().await?;
        let admin = env.admin_pool().await?;
        Ok(Self { env, node, second: None, assignments, leads, admin, published: 0 })
    }

    /// Starts another assignment process beside the first, calling the same lead service.
    async fn second_process(&mut self) -> anyhow::Result<()> {
        let mut env = self.env.clone();
        env.settings.endpoints.lead = format!("http://{}", self.node.addr(ServiceName::Lead));
        self.second = Some(env.start(&[ServiceName::Assignment]).await?);
        Ok(())
    }

    async fn stop(self) -> anyhow::Result<()> {
        if let Some(second) = self.second {
            second.stop().await?;
        }
        self.node.stop().await?;
        self.admin.close().await;
        self.env.cleanup().await
    }

    async fn policy(
        &self,
        policy: pb::AssignmentPolicy,
        default_capacity: i32,
    ) -> anyhow::Result<pb::AssignmentSettings> {
        let request = pb::UpdateAssignmentSettingsRequest {
            org_id: ORG.into(),
            policy: policy as i32,
            default_capacity,
            expected_version: None,
        };
        Ok(self.assignments.clone().update_assignment_settings(request).await?.into_inner())
    }

    async fn agent(&self, agent_id: &str, capacity: Option<i32>, active: Option<bool>) -> anyhow::Result<pb::Agent> {
        let request = pb::UpsertAgentRequest {
            org_id: ORG.into(),
            agent_id: agent_id.into(),
            name: format!("Agent {agent_id}"),
            active,
            capacity,
            ..Default::default()
        };
        Ok(self.assignments.clone().upsert_agent(request).await?.into_inner())
    }

    async fn presence(&self, agent_id: &str, presence: pb::Presence) -> anyhow::Result<pb::Agent> {
        let request =
            pb::SetPresenceRequest { org_id: ORG.into(), agent_id: agent_id.into(), presence: presence as i32 };
        Ok(self.assignments.clone().set_presence(request).await?.into_inner())
    }

    /// An active agent, available now.
    async fn available(&self, agent_id: &str, capacity: Option<i32>) -> anyhow::Result<()> {
        self.agent(agent_id, capacity, None).await?;
        self.presence(agent_id, pb::Presence::Available).await?;
        Ok(())
    }

    /// `count` new leads, each from a new contact.
    async fn publish(&mut self, count: u32) -> anyhow::Result<()> {
        for _ in 0..count {
            let n = self.published;
            self.published += 1;
            self.env.publish_interaction(ORG, &chat_event(&format!("e-{n}"), &phone(n), "hello")).await?;
        }
        Ok(())
    }

    /// Active leads held by each agent, as the lead service has them.
    async fn held(&self) -> anyhow::Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT agent_id, count(*) FROM lead.leads WHERE org_id = $1 AND active AND agent_id IS NOT NULL \
             GROUP BY agent_id",
        )
        .bind(ORG)
        .fetch_all(&self.admin)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn lead_count(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM lead.leads WHERE org_id = $1")
            .bind(ORG)
            .fetch_one(&self.admin)
            .await?)
    }

    async fn waiting(&self) -> anyhow::Result<pb::ListWaitingLeadsResponse> {
        let request = pb::ListWaitingLeadsRequest { org_id: ORG.into(), page_size: 500 };
        Ok(self.assignments.clone().list_waiting_leads(request).await?.into_inner())
    }

    /// Waits until every lead published exists and the agents hold `held` of them in all,
    /// with `waiting` waiting; answers what each agent holds.
    async fn settles(&self, held: i64, waiting: i64) -> HashMap<String, i64> {
        let total = i64::from(self.published);
        eventually(DEADLINE, &format!("{held} leads held and {waiting} waiting"), || async move {
            let leads = self.lead_count().await.ok()?;
            let by_agent = self.held().await.ok()?;
            let queue = self.waiting().await.ok()?;
            let in_flight = queue.leads.iter().any(|l| !l.handing_to.is_empty());
            (leads == total && by_agent.values().sum::<i64>() == held && queue.total == waiting && !in_flight)
                .then_some(by_agent)
        })
        .await
    }

    async fn convert(&self, lead_id: &str) -> anyhow::Result<()> {
        let request = pb::ChangeStatusRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            status: pb::LeadStatus::Converted as i32,
            ..Default::default()
        };
        self.leads.clone().change_status(request).await?;
        Ok(())
    }

    /// The ids of the active leads `agent_id` holds.
    async fn leads_of(&self, agent_id: &str) -> anyhow::Result<Vec<String>> {
        let ids: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT id FROM lead.leads WHERE org_id = $1 AND active AND agent_id = $2 ORDER BY id")
                .bind(ORG)
                .bind(agent_id)
                .fetch_all(&self.admin)
                .await?;
        Ok(ids.into_iter().map(|id| id.to_string()).collect())
    }

    /// The agents given leads automatically, in the order they were given them.
    async fn automatic_order(&self) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT to_agent FROM lead.assignment_changes WHERE org_id = $1 AND actor = 'system' ORDER BY at, id",
        )
        .bind(ORG)
        .fetch_all(&self.admin)
        .await?)
    }
}

fn get(held: &HashMap<String, i64>, agent: &str) -> i64 {
    held.get(agent).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_start_off_and_each_change_is_checked_versioned_and_recorded() -> anyhow::Result<()> {
    let desk = Desk::start(|_| {}).await?;
    let mut client = desk.assignments.clone();
    let initial = client.get_assignment_settings(pb::GetAssignmentSettingsRequest { org_id: ORG.into() }).await?;
    let initial = initial.into_inner();
    assert_eq!((initial.policy, initial.default_capacity, initial.version), (pb::AssignmentPolicy::Off as i32, 10, 0));

    let refused = desk.policy(pb::AssignmentPolicy::Balanced, 0).await.expect_err("no room at all");
    assert!(refused.to_string().contains("default_capacity"), "{refused}");
    let refused = desk.policy(pb::AssignmentPolicy::Unspecified, 5).await.expect_err("no policy");
    assert!(refused.to_string().contains("policy"), "{refused}");

    let changed = desk.policy(pb::AssignmentPolicy::Balanced, 5).await?;
    assert_eq!(changed.version, 1);
    assert_eq!(changed.changes[0].changes, vec!["policy: off -> balanced", "default_capacity: 10 -> 5"]);
    let stale = client
        .update_assignment_settings(pb::UpdateAssignmentSettingsRequest {
            org_id: ORG.into(),
            policy: pb::AssignmentPolicy::RoundRobin as i32,
            default_capacity: 5,
            expected_version: Some(0),
        })
        .await
        .expect_err("changed meanwhile");
    assert_eq!(stale.code(), tonic::Code::Aborted);
    assert!(stale.message().contains("version 1"), "{}", stale.message());

    let bad_capacity = desk.agent("ann", Some(-1), None).await.expect_err("negative capacity");
    assert!(bad_capacity.to_string().contains("capacity"), "{bad_capacity}");
    let ann = desk.agent("ann", Some(3), None).await?;
    assert_eq!((ann.capacity, ann.effective_capacity), (Some(3), 3));
    let ann = desk.agent("ann", Some(0), None).await?;
    assert_eq!((ann.capacity, ann.effective_capacity), (None, 5), "0 returns to the organisation's default");
    assert_eq!(ann.presence, pb::Presence::Offline as i32, "a new agent is offline until it says otherwise");
    let ann = desk.presence("ann", pb::Presence::Away).await?;
    assert_eq!(ann.presence, pb::Presence::Away as i32);
    assert!(ann.last_seen_at.is_some());
    let unknown = desk.presence("nobody", pb::Presence::Available).await.expect_err("no such agent");
    assert!(unknown.to_string().contains("not found"), "{unknown}");
    desk.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_spreads_new_leads_evenly_and_says_why() -> anyhow::Result<()> {
    let mut desk = Desk::start(|_| {}).await?;
    desk.policy(pb::AssignmentPolicy::Balanced, 10).await?;
    for agent in ["ann", "bob", "cy"] {
        desk.available(agent, None).await?;
    }
    desk.publish(10).await?;
    let held = desk.settles(10, 0).await;
    let counts: Vec<i64> = ["ann", "bob", "cy"].iter().map(|a| get(&held, a)).collect();
    let (least, most) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
    assert!(most - least <= 1, "equal agents differ by at most one: {held:?}");

    let lead = desk.leads_of("ann").await?.remove(0);
    let history = desk
        .leads
        .clone()
        .get_lead_history(pb::GetLeadHistoryRequest { org_id: ORG.into(), lead_id: lead.clone(), ..Default::default() })
        .await?
        .into_inner();
    let entry = history.entries.iter().find(|e| e.kind == "assignment").expect("the assignment is on the timeline");
    assert_eq!(entry.actor, "system");
    assert!(entry.summary.starts_with("assigned to ann (balanced: "), "{}", entry.summary);
    assert!(entry.summary.contains(" of 10 open"), "{}", entry.summary);
    let request = pb::ListAgentsRequest { org_id: ORG.into(), active_only: true };
    for agent in desk.assignments.clone().list_agents(request).await?.into_inner().agents {
        assert_eq!(agent.open_leads, get(&held, &agent.agent_id), "{}'s load is shown", agent.agent_id);
        assert_eq!(agent.effective_capacity, 10);
        assert_eq!(agent.presence, pb::Presence::Available as i32);
        assert!(agent.last_assigned_at.is_some());
    }
    desk.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_serves_the_agent_assigned_longest_ago() -> anyhow::Result<()> {
    let mut desk = Desk::start(|_| {}).await?;
    desk.policy(pb::AssignmentPolicy::RoundRobin, 10).await?;
    for agent in ["ann", "bob", "cy"] {
        desk.available(agent, None).await?;
    }
    desk.publish(7).await?;
    desk.settles(7, 0).await;
    assert_eq!(desk.automatic_order().await?, ["ann", "bob", "cy", "ann", "bob", "cy", "ann"]);
    let lead = desk.leads_of("bob").await?.remove(0);
    let request = pb::GetAssignmentHistoryRequest { org_id: ORG.into(), lead_id: lead };
    let history = desk.assignments.clone().get_assignment_history(request).await?.into_inner().assignments;
    assert_eq!(history[0].actor, "system");
    assert!(history[0].reason.starts_with("round_robin: longest since last lead"), "{}", history[0].reason);
    desk.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_policy_off_leads_neither_wait_nor_get_an_agent() -> anyhow::Result<()> {
    let mut desk = Desk::start(|_| {}).await?;
    desk.available("ann", None).await?;
    desk.publish(3).await?;
    let before = i64::from(desk.published);
    eventually(DEADLINE, "the leads, seen by the assignment service", || async {
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM assignment.lead_agents WHERE org_id = $1")
            .bind(ORG)
            .fetch_one(&desk.admin)
            .await
            .ok()?;
        (seen == before).then_some(())
    })
    .await;
    assert_eq!(desk.waiting().await?.total, 0, "nothing waits with the policy off");
    // Turned on afterwards: the leads from before stay as they were, the next one is assigned.
    desk.policy(pb::AssignmentPolicy::Balanced, 10).await?;
    desk.publish(1).await?;
    let held = desk.settles(1, 0).await;
    assert_eq!(get(&held, "ann"), 1, "only the lead that came with the policy on: {held:?}");
    desk.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_never_exceed_any_capacity_during_a_burst() -> anyhow::Result<()> {
    let mut desk = Desk::start(|_| {}).await?;
    desk.second_process().await?;
    desk.policy(pb::AssignmentPolicy::Balanced, 10).await?;
    let capacities: [(&str, i64); 3] = [("ann", 2), ("bob", 3), ("cy", 4)];
    for (agent, capacity) in capacities {
        desk.available(agent, Some(i32::try_from(capacity)?)).await?;
    }
    let over = |held: &HashMap<String, i64>| {
        capacities.iter().find(|(agent, capacity)| get(held, agent) > *capacity).map(|(agent, _)| agent.to_string())
    };
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (admin, stop) = (desk.admin.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut samples = 0u32;
            while !stop.is_cancelled() {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT agent_id, count(*) FROM lead.leads WHERE org_id = $1 AND active AND agent_id IS NOT NULL \
                     GROUP BY agent_id",
                )
                .bind(ORG)
                .fetch_all(&admin)
                .await
                .unwrap_or_default();
                let held: HashMap<String, i64> = rows.into_iter().collect();
                for (agent, capacity) in capacities {
                    assert!(get(&held, agent) <= capacity, "{agent} over its capacity {capacity}: {held:?}");
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    };
    desk.publish(25).await?;
    let held = desk.settles(9, 16).await;
    assert_eq!(over(&held), None);
    assert_eq!((get(&held, "ann"), get(&held, "bob"), get(&held, "cy")), (2, 3, 4), "every slot filled");

    // Room freed is filled again from the queue, still never over.
    for lead in desk.leads_of("cy").await?.into_iter().take(3) {
        desk.convert(&lead).await?;
    }
    let held = desk.settles(9, 13).await;
    assert_eq!((get(&held, "ann"), get(&held, "bob"), get(&held, "cy")), (2, 3, 4));
    sampling.cancel();
    let samples = sampler.await?;
    assert!(samples > 5, "sampled while the leads were handed out ({samples})");
    desk.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_and_deactivated_agents_get_nothing_and_one_coming_back_gets_its_share() -> anyhow::Result<()> {
    let mut desk = Desk::start(|_| {}).await?;
    desk.policy(pb::AssignmentPolicy::Balanced, 10).await?;
    desk.available("ann", Some(2)).await?;
    desk.available("bob", Some(2)).await?;
    desk.agent("cy", Some(2), None).await?;
    desk.presence("cy", pb::Presence::Offline).await?;
    desk.available("dee", Some(5)).await?;
    desk.agent("dee", None, Some(false)).await?;
    desk.publish(6).await?;
    let held = desk.settles(4, 2).await;
    assert_eq!((get(&held, "ann"), get(&held, "bob")), (2, 2));
    assert_eq!(get(&held, "cy"), 0, "offline, though it has room");
    assert_eq!(get(&held, "dee"), 0, "deactivated, though available with room");

    // Cy comes back while ann gets room too: the two waiting leads are shared, not both cy's.
    // Holding the organisation's dispatch lock makes both changes land together.
    let mut hold = desk.admin.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('assignment dispatch ' || $1, 0))")
        .bind(ORG)
        .execute(&mut *hold)
        .await?;
    desk.presence("cy", pb::Presence::Available).await?;
    desk.agent("ann", Some(10), None).await?;
    hold.commit().await?;
    let held = desk.settles(6, 0).await;
    assert_eq!((get(&held, "ann"), get(&held, "bob"), get(&held, "cy"), get(&held, "dee")), (3, 2, 1, 0));
    desk.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_heartbeat_lapsed_counts_as_offline_until_it_beats_again() -> anyhow::Result<()> {
    let mut desk = Desk::start(|env| env.settings.assignment.presence_grace_secs = 2).await?;
    desk.policy(pb::AssignmentPolicy::RoundRobin, 10).await?;
    desk.available("ann", None).await?;
    let list = || async {
        let request = pb::ListAgentsRequest { org_id: ORG.into(), active_only: true };
        desk.assignments.clone().list_agents(request).await.ok().map(|a| a.into_inner().agents)
    };
    eventually(DEADLINE, "ann's presence to lapse", || async {
        list().await?.iter().find(|a| a.agent_id == "ann" && a.presence == pb::Presence::Offline as i32).map(|_| ())
    })
    .await;
    desk.publish(2).await?;
    let held = desk.settles(0, 2).await;
    assert!(held.is_empty(), "{held:?}");
    desk.presence("ann", pb::Presence::Available).await?;
    let held = desk.settles(2, 0).await;
    assert_eq!(get(&held, "ann"), 2);
    desk.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_assignment_process_loses_no_waiting_lead_and_leaks_no_slot() -> anyhow::Result<()> {
    let mut desk = Desk::start(|env| env.settings.assignment.reservation_timeout_secs = 4).await?;
    desk.policy(pb::AssignmentPolicy::Balanced, 10).await?;
    let lead_endpoint = format!("http://{}", desk.node.addr(ServiceName::Lead));
    let mut child = leads_tests::Process::spawn(
        &desk.env,
        "assignment",
        &[
            ("LEADS_LEAD_ENDPOINT", lead_endpoint),
            ("LEADS_ASSIGNMENT_RESERVATION_TIMEOUT_SECS", "4".into()),
            ("LEADS_ASSIGNMENT_SWEEP_INTERVAL_SECS", "1".into()),
        ],
    )?;
    child.ready().await?;
    for agent in ["ann", "bob", "cy"] {
        desk.available(agent, None).await?;
    }
    desk.publish(15).await?;
    eventually(DEADLINE, "some leads handed out", || async {
        (desk.held().await.ok()?.values().sum::<i64>() >= 5).then_some(())
    })
    .await;
    child.kill().await?;
    desk.publish(15).await?;

    let held = desk.settles(30, 0).await;
    assert_eq!(held.values().sum::<i64>(), 30, "every lead assigned: {held:?}");
    for (agent, count) in &held {
        assert!(*count <= 10, "{agent} over its capacity: {held:?}");
    }
    let reserved: i64 =
        sqlx::query_scalar("SELECT count(*) FROM assignment.waiting_leads").fetch_one(&desk.admin).await?;
    assert_eq!(reserved, 0, "no reservation left behind");
    let request = pb::ListAgentsRequest { org_id: ORG.into(), active_only: true };
    let agents = eventually(DEADLINE, "the agents' loads to equal the lead service's", || async {
        let agents = desk.assignments.clone().list_agents(request.clone()).await.ok()?.into_inner().agents;
        agents.iter().all(|a| a.open_leads == get(&held, &a.agent_id)).then_some(agents)
    })
    .await;
    assert_eq!(agents.len(), 3);

    // A hand-over a process began and never finished, as a SIGKILL between reserving the slot
    // and the lead service's answer leaves it: settled from the lead service after the timeout,
    // the lead waits again and goes to whoever has room.
    desk.publish(1).await?;
    desk.settles(30, 1).await;
    sqlx::query("UPDATE assignment.waiting_leads SET reserved_for = 'ann', reserved_at = now() WHERE org_id = $1")
        .bind(ORG)
        .execute(&desk.admin)
        .await?;
    let freed = desk.leads_of("bob").await?.remove(0);
    desk.convert(&freed).await?;
    let held = desk.settles(30, 0).await;
    assert_eq!(
        (get(&held, "ann"), get(&held, "bob"), get(&held, "cy")),
        (10, 10, 10),
        "the abandoned lead went to bob"
    );
    desk.stop().await
}

/// The console on every service with tokens verified, and people who sign in with a password.
mod console {
    use super::ORG;
    use leads_proto::v1::people_service_client::PeopleServiceClient;
    use leads_tests::{Node, TestEnv, browserless::Browserless, pb};
    use platform::{
        ServiceName,
        auth::{Role, Signer},
    };
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    const PASSWORD: &str = "correct horse battery staple";

    pub struct Console {
        env: TestEnv,
        pub node: Node,
        addr: std::net::SocketAddr,
        token: CancellationToken,
        key_dir: std::path::PathBuf,
    }

    impl Console {
        pub async fn start() -> anyhow::Result<Self> {
            let key_dir = std::env::temp_dir().join(format!("leads-auto-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&key_dir)?;
            let key = key_dir.join("local.key");
            std::fs::write(&key, "s".repeat(24) + &uuid::Uuid::new_v4().simple().to_string())?;
            let mut env = TestEnv::new().await?;
            env.settings.auth.signing_key_file = Some(key);
            let node = env.start_all().await?;
            let mut settings = env.settings.clone();
            for service in ServiceName::ALL {
                settings.endpoints.set(service, format!("http://{}", node.addr(service)));
            }
            settings.console.port = 0;
            let token = CancellationToken::new();
            let console = leads::start_console(&settings, token.clone()).await?;
            Ok(Self { env, node, addr: console.addr, token, key_dir })
        }

        pub fn admin_token(&self) -> anyhow::Result<String> {
            let key = self.env.settings.auth.signing_key_file.as_ref().expect("a key");
            let signer = Signer::with_settings(key, &self.env.settings.auth)?;
            signer.mint("root@acme.test", Role::Admin, vec![ORG.into()], Duration::from_secs(600))
        }

        pub async fn person(&self, email: &str, role: pb::PersonRole, agent_id: &str) -> anyhow::Result<()> {
            let mut people = PeopleServiceClient::new(self.node.channel(ServiceName::People).await?);
            let mut request = tonic::Request::new(pb::AddPersonRequest {
                org_id: ORG.into(),
                email: email.into(),
                name: email.into(),
                role: role as i32,
                agent_id: agent_id.into(),
            });
            request.metadata_mut().insert("authorization", format!("Bearer {}", self.admin_token()?).parse()?);
            let added = people.add_person(request).await?.into_inner();
            let password = pb::SetPasswordRequest { setup_code: added.setup_code, password: PASSWORD.into() };
            people.set_password(password).await?;
            Ok(())
        }

        pub async fn signed_in(&self, email: &str) -> anyhow::Result<Browserless> {
            let mut browser = Browserless::new(self.addr);
            let csrf = browser.get("/sign-in").await?.csrf();
            let fields = [("_csrf", csrf.as_str()), ("org_id", ORG), ("email", email), ("password", PASSWORD)];
            let answer = browser.post("/sign-in", &fields).await?;
            anyhow::ensure!(answer.status == 303, "sign-in: {}", answer.body);
            Ok(browser)
        }

        pub async fn stop(self) -> anyhow::Result<()> {
            self.token.cancel();
            self.node.stop().await?;
            std::fs::remove_dir_all(&self.key_dir).ok();
            self.env.cleanup().await
        }
    }
}

#[tokio::test]
async fn in_the_console_an_admin_sets_the_policy_and_an_agent_its_own_presence() -> anyhow::Result<()> {
    let console = console::Console::start().await?;
    console.person("ada@acme.test", pb::PersonRole::Admin, "").await?;
    console.person("olga@acme.test", pb::PersonRole::Operator, "").await?;
    console.person("ann@acme.test", pb::PersonRole::Agent, "ann").await?;
    let mut admin = console.signed_in("ada@acme.test").await?;
    let csrf = admin.get("/agents").await?.csrf();
    for agent in ["ann", "bob"] {
        let added = admin.post("/agents", &[("_csrf", &csrf), ("agent_id", agent), ("name", "")]).await?;
        assert_eq!(added.status, 303, "{}", added.body);
    }
    let capacity = admin.post("/agents/bob/capacity", &[("_csrf", &csrf), ("capacity", "4")]).await?;
    assert_eq!(capacity.status, 303, "{}", capacity.body);

    let page = admin.get("/settings").await?;
    assert!(page.body.contains("Automatic assignment") && page.body.contains("Save assignment"), "{}", page.body);
    let fields = [("_csrf", csrf.as_str()), ("version", "0"), ("policy", "balanced"), ("default_capacity", "6")];
    let saved = admin.post("/settings/assignment", &fields).await?;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let stale = admin.post("/settings/assignment", &fields).await?;
    assert_eq!(stale.status, 409, "a second admin's stale form is refused: {}", stale.body);
    let after = admin.get("/settings").await?;
    assert!(after.body.contains("policy: off -&#62; balanced"), "the change is listed: {}", after.body);

    let agents = admin.get("/agents").await?;
    assert!(agents.body.contains("0 of 6") && agents.body.contains("0 of 4"), "load against capacity: {}", agents.body);
    assert!(agents.body.contains("Waiting for an agent (0)"), "the queue: {}", agents.body);

    let mut operator = console.signed_in("olga@acme.test").await?;
    let read = operator.get("/settings").await?;
    assert!(!read.body.contains("Save assignment"), "an operator reads the policy only");
    let csrf = read.csrf();
    let denied = operator
        .post(
            "/settings/assignment",
            &[("_csrf", &csrf), ("version", "1"), ("policy", "off"), ("default_capacity", "6")],
        )
        .await?;
    assert_eq!(denied.status, 403, "{}", denied.body);

    let mut ann = console.signed_in("ann@acme.test").await?;
    let own = ann.get("/agents").await?;
    assert!(own.body.contains("Set ann available") && !own.body.contains("Set bob available"), "{}", own.body);
    assert!(!own.body.contains("Waiting for an agent"), "an agent does not see the queue");
    let csrf = own.csrf();
    let set = ann.post("/agents/ann/presence", &[("_csrf", &csrf), ("presence", "available")]).await?;
    assert_eq!(set.status, 303, "{}", set.body);
    let others = ann.post("/agents/bob/presence", &[("_csrf", &csrf), ("presence", "available")]).await?;
    assert_eq!(others.status, 403, "an agent sets its own presence only: {}", others.body);
    let after = ann.get("/agents").await?;
    assert!(
        after.body.contains("presence-available\">available") && after.body.contains("Set ann away"),
        "{}",
        after.body
    );
    console.stop().await
}
