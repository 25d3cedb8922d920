//! Follow-ups: created only from active leads with the contact filled in, for a known and
//! active agent only, due on their own, completed or cancelled once, cancelled by the system
//! when their lead closes, and shown on the lead's timeline.

use futures::StreamExt;
use leads_tests::{TestEnv, chat_event, desk, eventually, keys::with, pb, phone};
use platform::ServiceName;
use std::{ops::Deref, time::Duration};
use tonic::{Code, transport::Channel};

const DEADLINE: Duration = Duration::from_secs(30);
const ORG: &str = "acme";

type FollowUps = leads_proto::v1::follow_up_service_client::FollowUpServiceClient<Channel>;

struct Desk {
    base: desk::Desk,
    follow_ups: FollowUps,
}

const DESK_SERVICES: [ServiceName; 4] =
    [ServiceName::Ingest, ServiceName::Lead, ServiceName::Assignment, ServiceName::FollowUp];

impl Deref for Desk {
    type Target = desk::Desk;

    fn deref(&self) -> &desk::Desk {
        &self.base
    }
}

fn in_seconds(seconds: i64) -> Option<prost_types::Timestamp> {
    let at = chrono::Utc::now() + chrono::Duration::seconds(seconds);
    Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 })
}

fn state(follow_up: &pb::FollowUp) -> pb::FollowUpState {
    pb::FollowUpState::try_from(follow_up.state).unwrap_or(pb::FollowUpState::Unspecified)
}

impl Desk {
    async fn start() -> anyhow::Result<Self> {
        let base = desk::Desk::start(&DESK_SERVICES).await?;
        let follow_ups = base.node.follow_up().await?;
        Ok(Self { base, follow_ups })
    }

    /// Adds the agent, or sets whether it is active.
    async fn agent(&self, agent_id: &str, active: bool) -> anyhow::Result<()> {
        let request = pb::UpsertAgentRequest {
            org_id: ORG.into(),
            agent_id: agent_id.into(),
            name: agent_id.into(),
            active: Some(active),
            ..Default::default()
        };
        self.node.assignment().await?.upsert_agent(request).await?;
        Ok(())
    }

    async fn assign(&self, lead_id: &str, agent_id: &str) -> anyhow::Result<()> {
        let request = pb::AssignLeadRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            agent_id: agent_id.into(),
            actor: "olga".into(),
            ..Default::default()
        };
        self.node.assignment().await?.assign_lead(request).await?;
        Ok(())
    }

    async fn create_for(&self, lead_id: &str, agent_id: &str, note: &str) -> Result<pb::FollowUp, tonic::Status> {
        let request = pb::CreateFollowUpRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            due_at: in_seconds(3600),
            note: note.into(),
            agent_id: agent_id.into(),
            actor: "ann".into(),
            ..Default::default()
        };
        Ok(self.follow_ups.clone().create_follow_up(request).await?.into_inner())
    }

    /// The notes of the follow-ups the lead's timeline shows.
    async fn timeline_follow_ups(&self, lead_id: &str) -> anyhow::Result<Vec<String>> {
        let entries = self.timeline(lead_id).await?;
        Ok(entries.into_iter().filter(|e| e.kind == "follow_up").map(|e| e.summary).collect())
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.base.stop().await
    }

    /// `count` leads, one per contact, in the order of their phones.
    async fn leads(&self, count: u32) -> anyhow::Result<Vec<pb::Lead>> {
        let mut leads = self.ingest_leads(ORG, count, "call me back", DEADLINE).await?;
        leads.sort_by(|a, b| a.contact.as_ref().map(|c| &c.phone).cmp(&b.contact.as_ref().map(|c| &c.phone)));
        Ok(leads)
    }

    async fn create(&self, lead_id: &str, due_in_seconds: i64, note: &str) -> Result<pb::FollowUp, tonic::Status> {
        let request = pb::CreateFollowUpRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            due_at: in_seconds(due_in_seconds),
            note: note.into(),
            actor: "ann".into(),
            ..Default::default()
        };
        Ok(self.follow_ups.clone().create_follow_up(request).await?.into_inner())
    }

    async fn list(&self, request: pb::ListFollowUpsRequest) -> anyhow::Result<pb::ListFollowUpsResponse> {
        Ok(self.follow_ups.clone().list_follow_ups(request).await?.into_inner())
    }

    async fn of_lead(&self, lead_id: &str) -> anyhow::Result<Vec<pb::FollowUp>> {
        let request = pb::ListFollowUpsRequest { org_id: ORG.into(), lead_id: lead_id.into(), ..Default::default() };
        Ok(self.list(request).await?.follow_ups)
    }

    async fn change_status(&self, lead_id: &str, status: pb::LeadStatus) -> anyhow::Result<pb::Lead> {
        let request = pb::ChangeStatusRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            status: status as i32,
            actor: "closer".into(),
            ..Default::default()
        };
        Ok(self.leads.clone().change_status(request).await?.into_inner())
    }

    async fn timeline(&self, lead_id: &str) -> anyhow::Result<Vec<pb::HistoryEntry>> {
        let request = pb::GetLeadHistoryRequest { org_id: ORG.into(), lead_id: lead_id.into(), ..Default::default() };
        Ok(self.leads.clone().get_lead_history(request).await?.into_inner().entries)
    }

    async fn update(&self, request: pb::UpdateFollowUpRequest) -> Result<pb::FollowUp, tonic::Status> {
        Ok(self.follow_ups.clone().update_follow_up(request).await?.into_inner())
    }

    async fn follow_up(&self, lead_id: &str, id: &str) -> anyhow::Result<pb::FollowUp> {
        let found = self.of_lead(lead_id).await?.into_iter().find(|f| f.id == id);
        found.ok_or_else(|| anyhow::anyhow!("follow-up {id} not listed"))
    }

    /// The ids of the leads ListLeads answers with an overdue follow-up, sorted, and its total.
    async fn overdue_leads(&self) -> anyhow::Result<(Vec<String>, i64)> {
        let request = pb::ListLeadsRequest {
            org_id: ORG.into(),
            filter: Some(pb::LeadFilter { has_overdue_follow_up: true, ..Default::default() }),
            ..Default::default()
        };
        let page = self.leads.clone().list_leads(request).await?.into_inner();
        let mut ids: Vec<String> = page.leads.into_iter().map(|l| l.id).collect();
        ids.sort();
        Ok((ids, page.total_count))
    }

    async fn action(&self, id: &str, complete: bool) -> Result<pb::FollowUp, tonic::Status> {
        let request = pb::FollowUpActionRequest { org_id: ORG.into(), follow_up_id: id.into(), actor: "ann".into() };
        let mut client = self.follow_ups.clone();
        let answer =
            if complete { client.complete_follow_up(request).await } else { client.cancel_follow_up(request).await };
        Ok(answer?.into_inner())
    }
}

#[tokio::test]
async fn a_follow_up_carries_the_contact_comes_due_and_is_completed_once() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    let lead = desk.leads(1).await?.remove(0);
    let mut due_events = desk.env.nats.subscribe(desk.env.subjects.event("followup", ORG, "due")).await?;

    let created = desk.create(&lead.id, 1, "send the price list").await?;
    assert_eq!(state(&created), pb::FollowUpState::Pending);
    assert_eq!(created.lead_id, lead.id);
    assert_eq!(created.contact_id, lead.contact_id);
    let contact = created.contact.clone().unwrap_or_default();
    assert_eq!((contact.phone.as_str(), contact.name.as_str()), (phone(0).as_str(), "Ada Lovelace"));
    assert_eq!((created.note.as_str(), created.created_by.as_str()), ("send the price list", "ann"));

    let due = eventually(DEADLINE, "the follow-up to come due", || async {
        desk.of_lead(&lead.id).await.ok()?.into_iter().find(|f| state(f) == pb::FollowUpState::Due)
    })
    .await;
    assert_eq!(due.id, created.id);
    let announced = tokio::time::timeout(DEADLINE, due_events.next()).await?.expect("a due event");
    let envelope: serde_json::Value = serde_json::from_slice(&announced.payload)?;
    assert_eq!(envelope["aggregate_id"], created.id.as_str());
    assert_eq!(envelope["data"]["lead_id"], lead.id.as_str());

    let completed = desk.action(&created.id, true).await?;
    assert_eq!(state(&completed), pb::FollowUpState::Completed);
    assert_eq!(completed.closed_by, "ann");
    let again = desk.action(&created.id, true).await.expect_err("completed twice");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("already completed"), "{again:?}");
    let cancel = desk.action(&created.id, false).await.expect_err("cancelled after completion");
    assert_eq!(cancel.code(), Code::FailedPrecondition);

    let entries = eventually(DEADLINE, "the follow-up on the lead's timeline", || async {
        let entries = desk.timeline(&lead.id).await.ok()?;
        let follow_ups: Vec<String> =
            entries.into_iter().filter(|e| e.kind == "follow_up").map(|e| e.summary).collect();
        (follow_ups.len() == 3).then_some(follow_ups)
    })
    .await;
    assert!(entries[0].starts_with("follow-up completed"), "{entries:?}");
    assert!(entries[1].starts_with("follow-up due"), "{entries:?}");
    assert!(entries[2].starts_with("follow-up scheduled for"), "{entries:?}");
    desk.stop().await
}

#[tokio::test]
async fn follow_ups_are_refused_on_inactive_unknown_and_malformed_requests() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    let lead = desk.leads(1).await?.remove(0);
    desk.change_status(&lead.id, pb::LeadStatus::Lost).await?;
    let inactive = desk.create(&lead.id, 60, "too late").await.expect_err("lost lead");
    assert_eq!(inactive.code(), Code::FailedPrecondition);
    assert!(inactive.message().contains("inactive") && inactive.message().contains("LOST"), "{inactive:?}");

    let unknown = desk.create(&uuid::Uuid::now_v7().to_string(), 60, "who").await.expect_err("unknown lead");
    assert_eq!(unknown.code(), Code::NotFound);
    let cases = [
        ("due_at", pb::CreateFollowUpRequest { org_id: ORG.into(), lead_id: lead.id.clone(), ..Default::default() }),
        ("lead_id", pb::CreateFollowUpRequest { org_id: ORG.into(), due_at: in_seconds(60), ..Default::default() }),
        (
            "note",
            pb::CreateFollowUpRequest {
                org_id: ORG.into(),
                lead_id: lead.id.clone(),
                due_at: in_seconds(60),
                note: "x".repeat(2001),
                ..Default::default()
            },
        ),
        (
            "org_id",
            pb::CreateFollowUpRequest { org_id: "no spaces".into(), lead_id: lead.id.clone(), ..Default::default() },
        ),
    ];
    for (field, request) in cases {
        let status = desk.follow_ups.clone().create_follow_up(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    assert!(desk.of_lead(&lead.id).await?.is_empty(), "refused requests leave nothing behind");
    let unknown_follow_up = desk.action(&uuid::Uuid::now_v7().to_string(), true).await.expect_err("unknown");
    assert_eq!(unknown_follow_up.code(), Code::NotFound);
    desk.stop().await
}

#[tokio::test]
async fn closing_a_lead_cancels_its_open_follow_ups() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    let leads = desk.leads(2).await?;
    let (closing, staying) = (&leads[0], &leads[1]);
    let done = desk.create(&closing.id, 3600, "first call").await?;
    desk.action(&done.id, true).await?;
    let open = desk.create(&closing.id, 3600, "second call").await?;
    let other = desk.create(&staying.id, 3600, "untouched").await?;
    desk.change_status(&closing.id, pb::LeadStatus::Converted).await?;

    let cancelled = eventually(DEADLINE, "the open follow-up cancelled", || async {
        let all = desk.of_lead(&closing.id).await.ok()?;
        all.into_iter().find(|f| f.id == open.id && state(f) == pb::FollowUpState::Cancelled)
    })
    .await;
    assert_eq!(cancelled.closed_by, "system");
    let closed = desk.of_lead(&closing.id).await?;
    let completed = closed.iter().find(|f| f.id == done.id).expect("completed follow-up");
    assert_eq!(state(completed), pb::FollowUpState::Completed, "a completed follow-up stays completed");
    let untouched = desk.of_lead(&staying.id).await?;
    assert_eq!((untouched[0].id.as_str(), state(&untouched[0])), (other.id.as_str(), pb::FollowUpState::Pending));
    desk.stop().await
}

/// A follow-up service that stops after the lead service accepted the follow-up but before
/// keeping it: the lead's event brings the follow-up all the same, once.
#[tokio::test]
async fn a_follow_up_accepted_by_the_lead_arrives_from_its_event() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    let lead = desk.leads(1).await?.remove(0);
    let follow_up_id = uuid::Uuid::now_v7().to_string();
    let request = pb::OpenFollowUpRequest {
        org_id: ORG.into(),
        lead_id: lead.id.clone(),
        follow_up_id: follow_up_id.clone(),
        due_at: in_seconds(3600),
        note: "from the event".into(),
        agent_id: "ann".into(),
        actor: "ann".into(),
        ..Default::default()
    };
    let first = desk.leads.clone().open_follow_up(request.clone()).await?.into_inner();
    // A retry of the same follow-up changes nothing.
    let retried = desk.leads.clone().open_follow_up(request).await?.into_inner();
    assert_eq!(first.version, retried.version);
    let arrived = eventually(DEADLINE, "the follow-up from the lead's event", || async {
        desk.of_lead(&lead.id).await.ok().filter(|all| !all.is_empty())
    })
    .await;
    assert_eq!(arrived.len(), 1);
    assert_eq!((arrived[0].id.as_str(), arrived[0].note.as_str()), (follow_up_id.as_str(), "from the event"));
    assert_eq!(arrived[0].contact.as_ref().map(|c| c.phone.clone()), Some(phone(0)));
    desk.stop().await
}

#[tokio::test]
async fn follow_ups_list_by_agent_and_state_in_due_order_pages() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    desk.agent("ann", true).await?;
    desk.agent("bob", true).await?;
    let leads = desk.leads(3).await?;
    let mut created = Vec::new();
    for (n, lead) in leads.iter().enumerate() {
        for k in 0..3 {
            let request = pb::CreateFollowUpRequest {
                org_id: ORG.into(),
                lead_id: lead.id.clone(),
                due_at: in_seconds(3600 + (k * 3 + n as i64) * 60),
                note: format!("call {k}"),
                agent_id: if n == 0 { "ann".into() } else { "bob".into() },
                actor: "ann".into(),
                request_id: String::new(),
            };
            created.push(desk.follow_ups.clone().create_follow_up(request).await?.into_inner());
        }
    }
    desk.action(&created[0].id, false).await?;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = desk
            .list(pb::ListFollowUpsRequest {
                org_id: ORG.into(),
                page_size: 2,
                page_token: token.clone(),
                states: vec![pb::FollowUpState::Pending as i32],
                ..Default::default()
            })
            .await?;
        assert!(page.follow_ups.len() <= 2);
        seen.extend(page.follow_ups);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 8, "every pending follow-up once");
    let due: Vec<i64> = seen.iter().map(|f| f.due_at.as_ref().map_or(0, |t| t.seconds)).collect();
    assert!(due.windows(2).all(|w| w[0] <= w[1]), "earliest first: {due:?}");
    let anns = desk
        .list(pb::ListFollowUpsRequest { org_id: ORG.into(), agent_id: "ann".into(), ..Default::default() })
        .await?;
    assert_eq!(anns.follow_ups.len(), 3);
    assert!(anns.follow_ups.iter().all(|f| f.lead_id == leads[0].id));
    let bad = desk
        .follow_ups
        .clone()
        .list_follow_ups(pb::ListFollowUpsRequest { org_id: ORG.into(), page_token: "zz".into(), ..Default::default() })
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), Code::InvalidArgument);
    desk.stop().await
}

#[tokio::test]
async fn a_repeated_request_id_answers_the_first_follow_up() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    let lead = desk.leads(1).await?.remove(0);
    let request = pb::CreateFollowUpRequest {
        org_id: ORG.into(),
        lead_id: lead.id.clone(),
        due_at: in_seconds(3600),
        note: "once".into(),
        actor: "ann".into(),
        request_id: "req-1".into(),
        ..Default::default()
    };
    let first = desk.follow_ups.clone().create_follow_up(request.clone()).await?.into_inner();
    let again = desk.follow_ups.clone().create_follow_up(request.clone()).await?.into_inner();
    assert_eq!(first.id, again.id);
    let other = pb::CreateFollowUpRequest { request_id: "req-2".into(), ..request };
    let second = desk.follow_ups.clone().create_follow_up(other).await?.into_inner();
    assert_ne!(first.id, second.id);
    assert_eq!(desk.of_lead(&lead.id).await?.len(), 2);
    let timeline = desk.timeline(&lead.id).await?;
    assert_eq!(timeline.iter().filter(|e| e.kind == "follow_up").count(), 2, "the lead recorded each once");
    desk.stop().await
}

#[tokio::test]
async fn a_follow_up_goes_only_to_a_known_active_agent() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    desk.agent("ann", true).await?;
    desk.agent("bob", true).await?;
    desk.agent("bob", false).await?;
    desk.agent("carol", true).await?;
    let leads = desk.leads(3).await?;
    let (named, held, unassigned) = (&leads[0], &leads[1], &leads[2]);

    let for_ann = desk.create_for(&named.id, "ann", "ann calls").await?;
    assert_eq!(for_ann.agent_id, "ann");
    let unknown = desk.create_for(&named.id, "zed", "nobody calls").await.expect_err("an unknown agent");
    assert_eq!(unknown.code(), Code::InvalidArgument, "{unknown:?}");
    assert!(
        unknown.message().starts_with("agent_id") && unknown.message().contains("unknown agent zed"),
        "{unknown:?}"
    );
    let inactive = desk.create_for(&named.id, "bob", "bob calls").await.expect_err("a deactivated agent");
    assert_eq!(inactive.code(), Code::FailedPrecondition, "{inactive:?}");
    assert!(inactive.message().contains("agent bob is inactive"), "{inactive:?}");

    // Naming no agent, the follow-up goes to the lead's, which must be active too.
    desk.assign(&held.id, "carol").await?;
    let for_carol = desk.create(&held.id, 3600, "carol calls").await?;
    assert_eq!(for_carol.agent_id, "carol");
    desk.agent("carol", false).await?;
    let held_inactive = desk.create(&held.id, 3600, "carol gone").await.expect_err("the lead's agent is deactivated");
    assert_eq!(held_inactive.code(), Code::FailedPrecondition, "{held_inactive:?}");
    assert!(held_inactive.message().contains("agent carol is inactive"), "{held_inactive:?}");
    let nobody = desk.create(&unassigned.id, 3600, "anyone calls").await?;
    assert_eq!(nobody.agent_id, "", "a lead without an agent gives its follow-up none");

    // The refusals left nothing behind, here or on the leads' timelines.
    let kept = |follow_ups: Vec<pb::FollowUp>| follow_ups.into_iter().map(|f| f.note).collect::<Vec<_>>();
    assert_eq!(kept(desk.of_lead(&named.id).await?), ["ann calls"]);
    assert_eq!(kept(desk.of_lead(&held.id).await?), ["carol calls"]);
    assert_eq!(desk.timeline_follow_ups(&named.id).await?.len(), 1);
    assert_eq!(desk.timeline_follow_ups(&held.id).await?.len(), 1);
    desk.stop().await
}

#[tokio::test]
async fn no_follow_up_is_made_for_an_agent_while_the_assignment_service_does_not_answer() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    // Nothing listens here.
    env.settings.endpoints.assignment = "http://127.0.0.1:9".into();
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::FollowUp]).await?;
    let (leads, follow_ups) = (node.lead().await?, node.follow_up().await?);
    let desk = Desk { base: desk::Desk { node, env, leads }, follow_ups };
    let leads = desk.leads(2).await?;
    let (held, unassigned) = (&leads[0], &leads[1]);
    let assign = pb::AssignLeadsRequest {
        org_id: ORG.into(),
        lead_ids: vec![held.id.clone()],
        agent_id: "ann".into(),
        actor: "olga".into(),
        ..Default::default()
    };
    desk.leads.clone().assign_leads(assign).await?;

    let named = desk.create_for(&unassigned.id, "ann", "ann calls").await.expect_err("no one to ask about ann");
    assert_eq!(named.code(), Code::Unavailable, "{named:?}");
    let of_lead = desk.create(&held.id, 3600, "the lead's agent calls").await.expect_err("no one to ask");
    assert_eq!(of_lead.code(), Code::Unavailable, "{of_lead:?}");
    // Without an agent there is nothing to ask.
    let nobody = desk.create(&unassigned.id, 3600, "anyone calls").await?;
    assert_eq!(nobody.agent_id, "");

    assert!(desk.of_lead(&held.id).await?.is_empty(), "nothing kept for the refused follow-up");
    assert!(desk.timeline_follow_ups(&held.id).await?.is_empty(), "nothing recorded on the lead");
    assert_eq!(desk.of_lead(&unassigned.id).await?.len(), 1);
    assert_eq!(desk.timeline_follow_ups(&unassigned.id).await?.len(), 1);
    desk.stop().await
}

/// What a person sees when the drawer's follow-up form is refused: the service's own words.
#[tokio::test]
async fn the_drawer_shows_why_a_follow_up_was_refused() -> anyhow::Result<()> {
    const PASSWORD: &str = "correct horse battery staple";
    let key_dir = std::env::temp_dir().join(format!("leads-follow-up-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&key_dir)?;
    let key = key_dir.join("local.key");
    std::fs::write(&key, "s".repeat(24) + &uuid::Uuid::new_v4().simple().to_string())?;
    let mut env = TestEnv::new().await?;
    env.settings.auth.signing_key_file = Some(key.clone());
    let services = [DESK_SERVICES.as_slice(), &[ServiceName::People]].concat();
    let node = env.start(&services).await?;
    let mut settings = env.settings.clone();
    for &service in &services {
        settings.endpoints.set(service, format!("http://{}", node.addr(service)));
    }
    settings.console.port = 0;
    let console_token = tokio_util::sync::CancellationToken::new();
    let console = leads::start_console(&settings, console_token.clone()).await?;

    // The services now verify tokens: everything the test does itself, it does as an admin.
    let admin = platform::auth::Signer::with_settings(&key, &env.settings.auth)?.mint(
        "root@acme.test",
        platform::auth::Role::Admin,
        vec![ORG.into()],
        Duration::from_secs(600),
    )?;
    let admin = Some(admin.as_str());
    let mut people =
        leads_proto::v1::people_service_client::PeopleServiceClient::new(node.channel(ServiceName::People).await?);
    let add = pb::AddPersonRequest {
        org_id: ORG.into(),
        email: "olga@acme.test".into(),
        name: "Olga".into(),
        role: pb::PersonRole::Operator as i32,
        agent_id: String::new(),
    };
    let added = people.add_person(with(admin, add)).await?.into_inner();
    people.set_password(pb::SetPasswordRequest { setup_code: added.setup_code, password: PASSWORD.into() }).await?;

    env.publish_interaction(ORG, &chat_event("e-0", &phone(0), "call me back")).await?;
    let lead_client = node.lead().await?;
    let lead = eventually(DEADLINE, "the lead", || {
        let mut leads = lead_client.clone();
        async move {
            let request = pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() };
            leads.list_leads(with(admin, request)).await.ok()?.into_inner().leads.into_iter().next()
        }
    })
    .await;
    let mut agents = node.assignment().await?;
    let carol = |active| pb::UpsertAgentRequest {
        org_id: ORG.into(),
        agent_id: "carol".into(),
        name: "Carol".into(),
        active: Some(active),
        ..Default::default()
    };
    agents.upsert_agent(with(admin, carol(true))).await?;
    let assign = pb::AssignLeadRequest {
        org_id: ORG.into(),
        lead_id: lead.id.clone(),
        agent_id: "carol".into(),
        ..Default::default()
    };
    agents.assign_lead(with(admin, assign)).await?;
    agents.upsert_agent(with(admin, carol(false))).await?;

    let mut browser = leads_tests::browserless::Browserless::new(console.addr);
    let csrf = browser.get("/sign-in").await?.csrf();
    let signed_in = browser
        .post("/sign-in", &[("_csrf", &csrf), ("org_id", ORG), ("email", "olga@acme.test"), ("password", PASSWORD)])
        .await?;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let drawer = browser.get(&format!("/leads/{}", lead.id)).await?;
    assert!(drawer.body.contains("id=\"follow-up\""), "the drawer offers the form: {}", drawer.body);
    let due = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%dT09:00").to_string();
    let refused = browser
        .post(
            &format!("/leads/{}/follow-ups", lead.id),
            &[("_csrf", &drawer.csrf()), ("due_local", &due), ("tz_offset_minutes", "0"), ("note", "call carol")],
        )
        .await?;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("agent carol is inactive"), "{}", refused.body);
    let listed = pb::ListFollowUpsRequest { org_id: ORG.into(), lead_id: lead.id.clone(), ..Default::default() };
    let kept = node.follow_up().await?.list_follow_ups(with(admin, listed)).await?.into_inner().follow_ups;
    assert!(kept.is_empty(), "the refused form left nothing behind: {kept:?}");

    console_token.cancel();
    node.stop().await?;
    std::fs::remove_dir_all(&key_dir).ok();
    env.cleanup().await
}

#[tokio::test]
async fn a_due_time_more_than_a_minute_past_is_refused_naming_due_at() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    let lead = desk.leads(1).await?.remove(0);
    let refused = desk.create(&lead.id, -120, "yesterday's call").await.expect_err("a due time in the past");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("due_at"), "{}", refused.message());
    assert!(desk.of_lead(&lead.id).await?.is_empty(), "nothing kept");
    assert!(desk.timeline_follow_ups(&lead.id).await?.is_empty(), "nothing recorded on the lead");

    // A few seconds late is the request's own travel time, not a follow-up overdue from birth.
    let just_now = desk.create(&lead.id, -5, "call now").await?;
    let moved_back = pb::UpdateFollowUpRequest {
        org_id: ORG.into(),
        follow_up_id: just_now.id.clone(),
        due_at: in_seconds(-3600),
        ..Default::default()
    };
    let refused = desk.update(moved_back).await.expect_err("rescheduled into the past");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("due_at"), "{}", refused.message());
    desk.stop().await
}

#[tokio::test]
async fn rescheduling_snoozing_and_editing_a_follow_up_refuse_a_stale_version() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    let lead = desk.leads(1).await?.remove(0);
    let mut rescheduled_events =
        desk.env.nats.subscribe(desk.env.subjects.event("followup", ORG, "rescheduled")).await?;
    let created = desk.create(&lead.id, 1, "send the price list").await?;
    let due = eventually(DEADLINE, "the follow-up to come due", || async {
        desk.of_lead(&lead.id).await.ok()?.into_iter().find(|f| state(f) == pb::FollowUpState::Due)
    })
    .await;
    assert!(due.version > created.version);

    let edit = |version: i64| pb::UpdateFollowUpRequest {
        org_id: ORG.into(),
        follow_up_id: created.id.clone(),
        note: Some("send the new price list".into()),
        expected_version: Some(version),
        actor: "ann".into(),
        ..Default::default()
    };
    let edited = desk.update(edit(due.version)).await?;
    assert_eq!((edited.note.as_str(), edited.version), ("send the new price list", due.version + 1));
    assert_eq!(state(&edited), pb::FollowUpState::Due, "a new note leaves it due");

    let stale = [
        ("note", edit(due.version)),
        ("due_at", pb::UpdateFollowUpRequest { note: None, due_at: in_seconds(7200), ..edit(due.version) }),
        ("snooze_minutes", pb::UpdateFollowUpRequest { note: None, snooze_minutes: Some(30), ..edit(due.version) }),
    ];
    for (what, request) in stale {
        let refused = desk.update(request).await.expect_err(what);
        assert_eq!(refused.code(), Code::Aborted, "{what}: {refused:?}");
        assert!(refused.message().contains(&format!("at version {}", edited.version)), "{what}: {refused:?}");
    }
    let unchanged = desk.follow_up(&lead.id, &created.id).await?;
    assert_eq!(
        (unchanged.version, unchanged.note.as_str(), unchanged.due_at, state(&unchanged)),
        (edited.version, edited.note.as_str(), edited.due_at, pb::FollowUpState::Due),
        "stale requests change nothing"
    );

    // Snoozed, the due follow-up is pending again, due that many minutes from now.
    let snooze = pb::UpdateFollowUpRequest { note: None, snooze_minutes: Some(30), ..edit(edited.version) };
    let snoozed = desk.update(snooze).await?;
    assert_eq!(state(&snoozed), pb::FollowUpState::Pending);
    let due_in = snoozed.due_at.as_ref().map_or(0, |t| t.seconds) - chrono::Utc::now().timestamp();
    assert!((29 * 60..=30 * 60).contains(&due_in), "due in {due_in} s");
    let announced = tokio::time::timeout(DEADLINE, rescheduled_events.next()).await?.expect("a rescheduled event");
    let envelope: serde_json::Value = serde_json::from_slice(&announced.payload)?;
    assert_eq!(
        (envelope["aggregate_id"].as_str(), envelope["data"]["state"].as_str()),
        (Some(created.id.as_str()), Some("pending"))
    );

    // Rescheduled to a time, without a version: the latest one wins.
    let at = in_seconds(3 * 3600);
    let moved =
        desk.update(pb::UpdateFollowUpRequest { note: None, due_at: at, expected_version: None, ..edit(0) }).await?;
    assert_eq!((moved.due_at, moved.version), (at, snoozed.version + 1));
    // The lead's timeline shows each new due time; a new note alone is not a step of its own.
    let timeline = eventually(DEADLINE, "both reschedules on the lead's timeline", || async {
        let entries = desk.timeline_follow_ups(&lead.id).await.ok()?;
        (entries.iter().filter(|e| e.starts_with("follow-up rescheduled to")).count() == 2).then_some(entries)
    })
    .await;
    let shown = chrono::DateTime::from_timestamp(at.map_or(0, |t| t.seconds), 0).unwrap_or_default();
    assert!(
        timeline[0].starts_with(&format!("follow-up rescheduled to {} UTC", shown.format("%Y-%m-%d %H:%M"))),
        "{timeline:?}"
    );
    assert_eq!(timeline.len(), 4, "scheduled, due, rescheduled twice: {timeline:?}");

    let bad_snooze = pb::UpdateFollowUpRequest { note: None, snooze_minutes: Some(0), ..edit(moved.version) };
    let refused = desk.update(bad_snooze).await.expect_err("a snooze of no time");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().starts_with("snooze_minutes"), "{refused:?}");
    let nothing = pb::UpdateFollowUpRequest { note: None, ..edit(moved.version) };
    let refused = desk.update(nothing).await.expect_err("a change of nothing");
    assert_eq!(refused.code(), Code::InvalidArgument);

    desk.action(&created.id, true).await?;
    let closed = desk.update(edit(moved.version + 1)).await.expect_err("a completed follow-up");
    assert_eq!(closed.code(), Code::FailedPrecondition, "{closed:?}");
    desk.stop().await
}

#[tokio::test]
async fn a_follow_up_follows_its_leads_reassignment_unless_its_agent_was_named() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    for agent in ["ann", "bob", "carol"] {
        desk.agent(agent, true).await?;
    }
    let mut leads = desk.leads(2).await?;
    let (lead, other) = (leads.remove(0), leads.remove(0));
    desk.assign(&lead.id, "ann").await?;
    let following = desk.create(&lead.id, 3600, "the lead's agent calls").await?;
    let named = desk.create_for(&lead.id, "carol", "carol calls").await?;
    let done = desk.create(&lead.id, 3600, "already called").await?;
    desk.action(&done.id, true).await?;
    assert_eq!((following.agent_id.as_str(), following.agent_set_by_hand), ("ann", false));
    assert_eq!((named.agent_id.as_str(), named.agent_set_by_hand), ("carol", true));

    desk.assign(&lead.id, "bob").await?;
    let moved = eventually(DEADLINE, "the follow-up to go to bob", || async {
        desk.follow_up(&lead.id, &following.id).await.ok().filter(|f| f.agent_id == "bob")
    })
    .await;
    assert!(moved.version > following.version);
    assert_eq!(desk.follow_up(&lead.id, &named.id).await?.agent_id, "carol", "a named agent stays");
    assert_eq!(desk.follow_up(&lead.id, &done.id).await?.agent_id, "ann", "a completed follow-up stays");
    // Ann no longer sees the follow-up of the lead moved away from her.
    let anns = pb::ListFollowUpsRequest { org_id: ORG.into(), agent_id: "ann".into(), ..Default::default() };
    let anns: Vec<String> = desk.list(anns).await?.follow_ups.into_iter().map(|f| f.id).collect();
    assert_eq!(anns, [done.id.as_str()]);

    // Two leads unassigned at once: their events travel as one message.
    desk.assign(&other.id, "bob").await?;
    let others = desk.create(&other.id, 3600, "the other lead's agent calls").await?;
    let unassign = pb::AssignLeadsRequest {
        org_id: ORG.into(),
        lead_ids: vec![lead.id.clone(), other.id.clone()],
        actor: "olga".into(),
        ..Default::default()
    };
    desk.leads.clone().assign_leads(unassign).await?;
    for (lead_id, follow_up) in [(&lead.id, &following), (&other.id, &others)] {
        eventually(DEADLINE, "the follow-up to have no agent", || async {
            desk.follow_up(lead_id, &follow_up.id).await.ok().filter(|f| f.agent_id.is_empty())
        })
        .await;
    }
    assert_eq!(desk.follow_up(&lead.id, &named.id).await?.agent_id, "carol");
    desk.stop().await
}

#[tokio::test]
async fn the_overdue_filter_lists_exactly_the_leads_with_a_due_unclosed_follow_up() -> anyhow::Result<()> {
    let desk = Desk::start().await?;
    let leads = desk.leads(5).await?;
    let (overdue, completed, pending, rescheduled) = (&leads[0], &leads[1], &leads[2], &leads[3]);
    let due_soon = [
        desk.create(&overdue.id, 1, "overdue").await?,
        desk.create(&completed.id, 1, "done in time").await?,
        desk.create(&rescheduled.id, 1, "moved").await?,
    ];
    desk.create(&pending.id, 3600, "later").await?;
    let mut expected: Vec<String> = [overdue, completed, rescheduled].iter().map(|l| l.id.clone()).collect();
    expected.sort();
    eventually(DEADLINE, "three leads with an overdue follow-up", || async {
        desk.overdue_leads().await.ok().filter(|(ids, _)| *ids == expected)
    })
    .await;

    desk.action(&due_soon[1].id, true).await?;
    let reschedule = pb::UpdateFollowUpRequest {
        org_id: ORG.into(),
        follow_up_id: due_soon[2].id.clone(),
        due_at: in_seconds(3600),
        ..Default::default()
    };
    desk.update(reschedule).await?;
    let (ids, total) = eventually(DEADLINE, "only the overdue lead", || async {
        desk.overdue_leads().await.ok().filter(|(ids, _)| ids.len() == 1)
    })
    .await;
    assert_eq!((ids, total), (vec![overdue.id.clone()], 1));
    desk.stop().await
}
