//! `LeadService/WatchLeads` against real services: a console's page kept current as leads
//! change, resumed after a disconnect without a gap or a repeat, an agent's view confined to
//! its own and unassigned leads, bounded watches that leave no consumer behind, and a stop of
//! the service that ends every watch.

use leads_proto::v1::lead_service_client::LeadServiceClient;
use leads_tests::{TestEnv, chat_event, eventually, keys::Keys, pb, phone};
use platform::{ServiceName, auth::Role, nats::StreamKind};
use std::time::Duration;
use tonic::{Code, Request, Streaming, transport::Channel};

const ORG: &str = "acme";
const OTHER: &str = "globex";
const DEADLINE: Duration = Duration::from_secs(30);

/// One open watch as a console holds it.
struct Watch {
    stream: Streaming<pb::LeadWatchEvent>,
    /// Every event it has received, in order.
    seen: Vec<pb::LeadWatchEvent>,
}

impl Watch {
    async fn open(lead: &LeadServiceClient<Channel>, token: Option<&str>, cursor: &str) -> Result<Self, tonic::Status> {
        let request = pb::WatchLeadsRequest { org_id: ORG.into(), cursor: cursor.into() };
        let stream = lead.clone().watch_leads(with(token, request)).await?.into_inner();
        Ok(Self { stream, seen: Vec::new() })
    }

    /// The next event, failing the test after `DEADLINE`.
    async fn next(&mut self) -> pb::LeadWatchEvent {
        let event = tokio::time::timeout(DEADLINE, self.stream.message())
            .await
            .expect("an event within the deadline")
            .expect("the watch goes on")
            .expect("the watch is not over");
        self.seen.push(event.clone());
        event
    }

    /// Events up to and including the first that `wanted` takes.
    async fn until(&mut self, wanted: impl Fn(&pb::LeadWatchEvent) -> bool) -> Vec<pb::LeadWatchEvent> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await;
            let done = wanted(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }

    /// Waits, if it has not already, for the event whose cursor is `cursor`.
    async fn reached(&mut self, cursor: &str) {
        if self.seen.iter().all(|e| e.cursor != cursor) {
            self.until(|e| e.cursor == cursor).await;
        }
    }

    /// The events before `caught_up`, and its cursor.
    async fn caught_up(&mut self) -> (Vec<pb::LeadWatchEvent>, String) {
        let mut events = self.until(|e| e.kind == "caught_up").await;
        let marker = events.pop().expect("the marker");
        assert!(marker.lead.is_none() && marker.lead_id.is_empty(), "{marker:?}");
        (events, marker.cursor)
    }
}

fn with<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn status_changed_to(lead_id: &str, status: pb::LeadStatus) -> impl Fn(&pb::LeadWatchEvent) -> bool {
    let lead_id = lead_id.to_owned();
    move |e| {
        e.kind == "status_changed" && e.lead_id == lead_id && e.lead.as_ref().is_some_and(|l| l.status == status as i32)
    }
}

async fn change_status(
    lead: &LeadServiceClient<Channel>,
    token: Option<&str>,
    lead_id: &str,
    status: pb::LeadStatus,
) -> anyhow::Result<()> {
    let request = pb::ChangeStatusRequest {
        org_id: ORG.into(),
        lead_id: lead_id.into(),
        status: status as i32,
        ..Default::default()
    };
    lead.clone().change_status(with(token, request)).await?;
    Ok(())
}

/// The ids of `ORG`'s leads once there are `count`, by phone (`phone(n)` for n in 1..=count).
async fn leads_by_phone(lead: &LeadServiceClient<Channel>, token: Option<&str>, count: u32) -> Vec<String> {
    eventually(DEADLINE, &format!("{count} leads"), || {
        let mut lead = lead.clone();
        async move {
            let request = pb::ListLeadsRequest { org_id: ORG.into(), page_size: 100, ..Default::default() };
            let leads = lead.list_leads(with(token, request)).await.ok()?.into_inner().leads;
            (1..=count)
                .map(|n| {
                    let phone = phone(n);
                    leads.iter().find(|l| l.contact.as_ref().is_some_and(|c| c.phone == phone)).map(|l| l.id.clone())
                })
                .collect::<Option<Vec<_>>>()
        }
    })
    .await
}

#[tokio::test]
async fn changes_arrive_as_they_happen_and_a_resumed_watch_gets_exactly_what_it_missed() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_all().await?;
    let lead = node.lead().await?;
    // Connected throughout: what the stream holds, for the resumed watch to be held against.
    let mut witness = Watch::open(&lead, None, "").await?;
    witness.caught_up().await;
    let mut watch = Watch::open(&lead, None, "").await?;
    let (before, _) = watch.caught_up().await;
    assert!(before.is_empty(), "without a cursor, only changes from now on: {before:?}");

    env.publish_interaction(ORG, &chat_event("e-1", &phone(1), "Hi, how much is the premium plan?")).await?;
    let created = watch.until(|e| e.kind == "created").await.pop().expect("created");
    let shown = created.lead.as_ref().expect("the lead after the change");
    assert_eq!(shown.contact.as_ref().map(|c| c.phone.as_str()), Some(phone(1).as_str()));
    assert_eq!((shown.status, shown.id.as_str()), (pb::LeadStatus::New as i32, created.lead_id.as_str()));
    assert!(created.at.is_some() && !created.cursor.is_empty(), "{created:?}");
    let lead_id = created.lead_id.clone();

    change_status(&lead, None, &lead_id, pb::LeadStatus::Qualifying).await?;
    let changed = watch.until(status_changed_to(&lead_id, pb::LeadStatus::Qualifying)).await.pop().expect("changed");
    assert!(changed.lead.as_ref().is_some_and(|l| l.version > shown.version), "{changed:?}");

    // The console goes away; two changes are made meanwhile; it comes back with its cursor.
    let cursor = watch.seen.last().expect("an event").cursor.clone();
    let before_disconnect = watch.seen.clone();
    drop(watch);
    change_status(&lead, None, &lead_id, pb::LeadStatus::Qualified).await?;
    change_status(&lead, None, &lead_id, pb::LeadStatus::Contacted).await?;
    // Committed changes reach the stream through the outbox a moment later.
    witness.until(status_changed_to(&lead_id, pb::LeadStatus::Contacted)).await;
    let mut resumed = Watch::open(&lead, None, &cursor).await?;
    let (missed, position) = resumed.caught_up().await;
    witness.reached(&position).await;
    let after = witness.seen.iter().position(|e| e.cursor == cursor).expect("the witness saw the cursor's event");
    let upto = witness.seen.iter().position(|e| e.cursor == position).expect("and the resumed watch's position");
    assert_eq!(missed, witness.seen[after + 1..=upto], "exactly the events after the cursor, in order");
    let statuses: Vec<i32> =
        missed.iter().filter(|e| e.kind == "status_changed").map(|e| e.lead.as_ref().expect("a lead").status).collect();
    assert_eq!(statuses, [pb::LeadStatus::Qualified as i32, pb::LeadStatus::Contacted as i32]);
    for event in &missed {
        assert!(before_disconnect.iter().all(|seen| seen.cursor != event.cursor), "received twice: {event:?}");
    }

    // From its position on, it is live again.
    change_status(&lead, None, &lead_id, pb::LeadStatus::Lost).await?;
    resumed.until(status_changed_to(&lead_id, pb::LeadStatus::Lost)).await;

    // A stop of the service ends the watch (telling it to come back) and is not held up by it.
    let stopped = tokio::time::timeout(DEADLINE, node.stop()).await;
    assert!(stopped.is_ok_and(|stopped| stopped.is_ok()), "the service stops with a watch open");
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match resumed.stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await?;
    match end {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(end) => assert!(end.is_none()),
    }
    env.cleanup().await
}

#[tokio::test]
async fn a_cursor_the_stream_no_longer_covers_is_out_of_range_and_garbage_is_refused() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let lead = node.lead().await?;
    for n in 1..=3 {
        env.publish_interaction(ORG, &chat_event(&format!("e-{n}"), &phone(n), "hello")).await?;
    }
    let ids = leads_by_phone(&lead, None, 3).await;
    let mut watch = Watch::open(&lead, None, "").await?;
    watch.caught_up().await;
    change_status(&lead, None, &ids[0], pb::LeadStatus::Qualifying).await?;
    let first = watch.until(status_changed_to(&ids[0], pb::LeadStatus::Qualifying)).await.pop().expect("event");

    // The stream's retention removes the oldest events.
    let mut stream = env.js.get_stream(env.subjects.stream_name(StreamKind::Events("lead"))).await?;
    let last = stream.info().await?.state.last_sequence;
    stream.purge().sequence(last).await?;
    let refused = Watch::open(&lead, None, "0").await.err().expect("a cursor before the stream's first event");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("reload"), "{}", refused.message());
    let from_the_future = Watch::open(&lead, None, &(last + 10).to_string()).await.err().expect("refused");
    assert_eq!(from_the_future.code(), Code::OutOfRange, "{from_the_future:?}");
    // The newest event is still kept: its cursor resumes.
    let mut resumed = Watch::open(&lead, None, &first.cursor).await?;
    resumed.caught_up().await;

    for garbage in ["abc", "1.x", "-3", &"9".repeat(1025)] {
        let refused = Watch::open(&lead, None, garbage).await.err().expect("a cursor this service never issued");
        assert_eq!(refused.code(), Code::InvalidArgument, "{garbage}: {refused:?}");
        assert!(refused.message().contains("cursor"), "{}", refused.message());
    }
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn watches_are_bounded_and_one_that_ends_leaves_no_consumer_behind() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.grpc.watch_limit = 2;
    let node = env.start(&[ServiceName::Lead]).await?;
    let lead = node.lead().await?;
    let stream_name = env.subjects.stream_name(StreamKind::Events("lead"));
    let watch_consumers = || {
        let (js, name) = (env.js.clone(), stream_name.clone());
        async move {
            let stream = js.get_stream(&name).await.ok()?;
            let names: Vec<String> = futures::TryStreamExt::try_collect(stream.consumer_names()).await.ok()?;
            Some(names.into_iter().filter(|n| n.starts_with("lead-watch-")).count())
        }
    };

    let mut one = Watch::open(&lead, None, "").await?;
    let mut two = Watch::open(&lead, None, "").await?;
    one.caught_up().await;
    two.caught_up().await;
    assert_eq!(watch_consumers().await, Some(2));
    let refused = Watch::open(&lead, None, "").await.err().expect("a third watch");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("grpc.watch_limit"), "{}", refused.message());

    drop(one);
    let mut three = eventually(DEADLINE, "a watch once another ended", || {
        let lead = lead.clone();
        async move { Watch::open(&lead, None, "").await.ok() }
    })
    .await;
    three.caught_up().await;
    drop((two, three));
    eventually(DEADLINE, "no watch consumer left", || async { (watch_consumers().await == Some(0)).then_some(()) })
        .await;
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn an_agent_watches_its_own_and_unassigned_leads_and_sees_one_leave() -> anyhow::Result<()> {
    let keys = Keys::new();
    let mut env = TestEnv::new().await?;
    env.settings.auth.signing_key_file = Some(keys.key.clone());
    env.settings.validate()?;
    let node = env.start_all().await?;
    let lead = node.lead().await?;
    let (operator, service) = (keys.token("olga", Role::Operator, &[ORG]), keys.token("desk", Role::Service, &["*"]));
    let ann = keys.token("ann", Role::Agent, &[ORG]);
    let operator = Some(operator.as_str());
    for n in 1..=3 {
        env.publish_interaction(ORG, &chat_event(&format!("e-{n}"), &phone(n), "hello")).await?;
    }
    let ids = leads_by_phone(&lead, operator, 3).await;
    let (anns, bobs, open) = (&ids[0], &ids[1], &ids[2]);
    let assign = |lead_id: &str, agent: &str| {
        let request = pb::AssignLeadsRequest {
            org_id: ORG.into(),
            lead_ids: vec![lead_id.into()],
            agent_id: agent.into(),
            ..Default::default()
        };
        let (mut lead, request) = (lead.clone(), with(Some(&service), request));
        async move { lead.assign_leads(request).await.map(|_| ()) }
    };
    // Committed changes reach the stream through the outbox a moment later: these are
    // waited for, so that ann's watch begins after them.
    let mut operators = Watch::open(&lead, operator, "").await?;
    operators.caught_up().await;
    assign(anns, "ann").await?;
    assign(bobs, "bob").await?;
    operators.until(|e| e.kind == "assigned" && e.lead_id == *bobs).await;

    let refused = lead
        .clone()
        .watch_leads(with(Some(&ann), pb::WatchLeadsRequest { org_id: OTHER.into(), cursor: String::new() }))
        .await
        .expect_err("another organisation");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    let mut watch = Watch::open(&lead, Some(&ann), "").await?;
    watch.caught_up().await;
    change_status(&lead, operator, bobs, pb::LeadStatus::Qualifying).await?;
    change_status(&lead, operator, anns, pb::LeadStatus::Qualifying).await?;
    watch.until(status_changed_to(anns, pb::LeadStatus::Qualifying)).await;
    change_status(&lead, operator, open, pb::LeadStatus::Qualifying).await?;
    watch.until(status_changed_to(open, pb::LeadStatus::Qualifying)).await;

    // Ann's lead goes to bob: she hears that it left, and nothing of it after.
    assign(anns, "bob").await?;
    let left = watch.until(|e| e.lead_id == *anns && e.kind != "scored").await.pop().expect("left");
    assert_eq!((left.kind.as_str(), left.lead.is_none(), left.cursor.is_empty()), ("left", true, false), "{left:?}");
    change_status(&lead, operator, anns, pb::LeadStatus::Qualified).await?;
    change_status(&lead, operator, bobs, pb::LeadStatus::Qualified).await?;
    // A change of an unassigned lead, made last, marks the end of what she could have been sent.
    change_status(&lead, operator, open, pb::LeadStatus::Qualified).await?;
    watch.until(status_changed_to(open, pb::LeadStatus::Qualified)).await;
    for event in &watch.seen {
        assert_ne!(event.lead_id, *bobs, "bob's lead: {event:?}");
        if let Some(shown) = &event.lead {
            assert!(shown.agent_id.is_empty() || shown.agent_id == "ann", "{event:?}");
        }
    }
    let after_left = watch.seen.iter().skip_while(|e| e.kind != "left");
    assert!(after_left.skip(1).all(|e| e.lead_id != *anns), "{:?}", watch.seen);
    // Ann's lead before it left, and the unassigned one, were hers to see.
    assert!(watch.seen.iter().any(|e| e.lead_id == *open && e.kind == "status_changed"));

    node.stop().await?;
    env.cleanup().await
}
