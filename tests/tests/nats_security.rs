//! NATS under the shipped configuration (deploy/nats/nats-server.conf), on a private
//! nats-server started from it: publishers confined to their own organisation's subjects and
//! their own inbox, Msg-Ids that cannot suppress another organisation's events, each stream
//! changed by its owner only, services that start in any order with their own users, and
//! every service following the people directory's ended sessions.

use async_nats::jetstream::consumer::pull::Ordered;
use leads_proto::v1::lead_service_client::LeadServiceClient;
use leads_tests::{TestEnv, chat_event, eventually, pb, phone, private::PrivateNats};
use platform::{ServiceName, nats::StreamKind};
use std::{path::PathBuf, time::Duration};
use tonic::transport::Channel;

const ORG: &str = "acme";
const OTHER: &str = "globex";

/// A private nats-server on a free port running the shipped configuration
/// (deploy/nats/nats-server.conf), with a publisher user for each of `orgs` made from its
/// template; every password is `pw-<user>`.
struct ShippedNats {
    /// Kept for as long as the test runs: dropped, it stops the server.
    _server: PrivateNats,
    url: String,
}

impl ShippedNats {
    async fn start(orgs: &[&str]) -> anyhow::Result<Self> {
        let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/nats-server.conf");
        let conf = std::fs::read_to_string(shipped)?;
        let begin = conf.find("# BEGIN publisher template").expect("template start");
        let end = conf.find("# END publisher template").expect("template end");
        let template = &conf[conf[begin..].find('\n').unwrap() + begin + 1..end];
        let publishers: String = orgs
            .iter()
            .map(|org| {
                let var = format!("PUBLISHER_{}_PASSWORD", org.to_uppercase().replace('-', "_"));
                template.replace("PUBLISHER_ORG_PASSWORD", &var).replace("ORG", org)
            })
            .collect();
        let mut env: Vec<(String, String)> = ServiceName::ALL
            .map(platform::ServiceName::as_str)
            .into_iter()
            .chain(["admin"])
            .map(|service| (format!("LEADS_NATS_{}_PASSWORD", service.to_uppercase()), format!("pw-leads-{service}")))
            .collect();
        env.extend(orgs.iter().map(|org| {
            (format!("PUBLISHER_{}_PASSWORD", org.to_uppercase().replace('-', "_")), format!("pw-publisher-{org}"))
        }));
        let server = PrivateNats::with_config(
            |dir| {
                format!("{}{publishers}{}", &conf[..begin], &conf[end..])
                    .replace("/data/jetstream", dir.join("js").to_str().unwrap())
            },
            env,
        )
        .await?;
        let url = server.url();
        Ok(Self { _server: server, url })
    }

    fn auth(user: &str) -> platform::settings::NatsAuthSettings {
        platform::settings::NatsAuthSettings {
            user: Some(user.into()),
            password: Some(format!("pw-{user}").into()),
            ..Default::default()
        }
    }

    /// A client of `user` whose server errors (permission violations) are collected.
    async fn client(
        &self,
        user: &str,
    ) -> anyhow::Result<(async_nats::Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
        let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = errors.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = seen.clone();
            let options = platform::nats::connect_options(&Self::auth(user)).await?.event_callback(move |event| {
                let seen = seen.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        seen.lock().unwrap().push(error.to_string());
                    }
                }
            });
            match options.connect(&self.url).await {
                Ok(client) => return Ok((client, errors)),
                Err(error) if std::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "nats-server not up yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

#[tokio::test]
async fn a_publisher_publishes_its_own_organisation_only() -> anyhow::Result<()> {
    let nats = ShippedNats::start(&["acme", "globex"]).await?;
    // The operators' user may declare every stream, as before a deployment's first start.
    let (admin, _) = nats.client("leads-admin").await?;
    let subjects = platform::nats::Subjects::default();
    platform::nats::ensure_all_streams(&async_nats::jetstream::new(admin.clone()), &subjects).await?;

    let (acme, errors) = nats.client("publisher-acme").await?;
    let js = async_nats::jetstream::new(acme.clone());
    let event = serde_json::to_vec(&chat_event("e-1", &phone(1), "hello"))?;
    let ack = js.publish(subjects.interactions("acme"), event.clone().into()).await?.await?;
    assert_eq!(ack.stream, "INTERACTIONS");
    js.publish(subjects.broadcast_statuses("acme"), b"{}".to_vec().into()).await?.await?;

    for subject in [subjects.interactions("globex"), subjects.broadcast_messages("globex"), "events.lead.acme.x".into()]
    {
        let refused = tokio::time::timeout(Duration::from_secs(2), async {
            js.publish(subject.clone(), event.clone().into()).await?.await.map(|_| ()).map_err(anyhow::Error::from)
        })
        .await;
        assert!(!matches!(refused, Ok(Ok(()))), "{subject} was accepted");
        let violation = eventually(Duration::from_secs(5), "the permission violation", || {
            let errors = errors.clone();
            let subject = subject.clone();
            async move {
                errors
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|e| e.contains("Permissions Violation") && e.contains(&subject))
                    .cloned()
            }
        })
        .await;
        assert!(violation.contains("Publish"), "{violation}");
    }
    // The interactions stream holds acme's event only.
    let mut stream = async_nats::jetstream::new(admin.clone()).get_stream("INTERACTIONS").await?;
    assert_eq!(stream.info().await?.state.messages, 1);

    // A service's user publishes its own events, not another service's nor the contract's.
    let (ingest, errors) = nats.client("leads-ingest").await?;
    let js = async_nats::jetstream::new(ingest);
    js.publish("events.ingest.acme.interactions_accepted", b"{}".to_vec().into()).await?.await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        js.publish("interactions.acme", event.clone().into()).await?.await.map_err(anyhow::Error::from)
    })
    .await;
    eventually(Duration::from_secs(5), "the ingest user's violation", || {
        let errors = errors.clone();
        async move { errors.lock().unwrap().iter().any(|e| e.contains("Permissions Violation")).then_some(()) }
    })
    .await;
    Ok(())
}

/// Ingest and lead on the shipped NATS configuration, each in a process of its own that
/// connects as its own NATS user, as deployed.
struct ShippedPlatform {
    nats: ShippedNats,
    /// The services' environment: the shared Postgres, the private nats-server without a
    /// subject prefix, and the operators' NATS user for the test's own look-ups.
    env: TestEnv,
    /// The environment made on the shared servers, whose database the services use; cleaned
    /// up at the end.
    shared: TestEnv,
    processes: Vec<leads_tests::Process>,
    lead: LeadServiceClient<Channel>,
    /// More settings of every service process started from now on.
    extra_env: Vec<(&'static str, String)>,
}

impl ShippedPlatform {
    /// Ingest and lead, started together.
    async fn start(orgs: &[&str]) -> anyhow::Result<Self> {
        let mut platform = Self::new(orgs).await?;
        for service in [ServiceName::Ingest, ServiceName::Lead] {
            let process = platform.spawn(service)?;
            platform.processes.push(process);
        }
        for process in &mut platform.processes {
            process.ready().await?;
        }
        Ok(platform)
    }

    /// The private server, with no stream yet, and no service running.
    async fn new(orgs: &[&str]) -> anyhow::Result<Self> {
        let nats = ShippedNats::start(orgs).await?;
        let shared = TestEnv::new().await?;
        let (admin, _) = nats.client("leads-admin").await?;
        let mut settings = shared.settings.clone();
        settings.nats_url.clone_from(&nats.url);
        settings.subject_prefix = String::new();
        settings.grpc.set_port(ServiceName::Lead, std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
        let env = TestEnv {
            settings,
            database: shared.database.clone(),
            subjects: platform::nats::Subjects::default(),
            js: async_nats::jetstream::new(admin.clone()),
            nats: admin,
        };
        let lead = format!("http://127.0.0.1:{}", env.settings.grpc.port(ServiceName::Lead));
        let lead = LeadServiceClient::new(Channel::from_shared(lead)?.connect_lazy());
        Ok(Self { nats, env, shared, processes: Vec::new(), lead, extra_env: Vec::new() })
    }

    /// `service` in a process of its own, connected as its own NATS user.
    fn spawn(&self, service: ServiceName) -> anyhow::Result<leads_tests::Process> {
        let user = format!("leads-{service}");
        let mut settings = vec![("LEADS_NATS_PASSWORD", format!("pw-{user}")), ("LEADS_NATS_USER", user)];
        if service == ServiceName::Lead {
            settings.push(("LEADS_GRPC_LEAD_PORT", self.env.settings.grpc.port(ServiceName::Lead).to_string()));
        }
        settings.extend(self.extra_env.iter().cloned());
        leads_tests::Process::spawn(&self.env, service.as_str(), &settings)
    }

    /// `org`'s leads once there are `count` of them.
    async fn leads(&self, org: &str, count: usize) -> Vec<pb::Lead> {
        eventually(Duration::from_secs(60), &format!("{count} lead(s) of {org}"), || {
            let mut lead = self.lead.clone();
            async move { leads_tests::all_leads(&mut lead, org).await.ok().filter(|leads| leads.len() == count) }
        })
        .await
    }

    /// Waits until `durable` has acked every message its stream holds.
    async fn drained(&self, stream: StreamKind, durable: &str) {
        let name = self.env.subjects.stream_name(stream);
        eventually(Duration::from_secs(60), &format!("{durable} to ack all of {name}"), || {
            let (js, name) = (self.env.js.clone(), name.clone());
            async move {
                let mut stream = js.get_stream(&name).await.ok()?;
                let last = stream.info().await.ok()?.state.last_sequence;
                let consumer = stream.consumer_info(durable).await.ok()?;
                (consumer.ack_floor.stream_sequence >= last && consumer.num_ack_pending == 0).then_some(())
            }
        })
        .await;
    }

    async fn stop(self) -> anyhow::Result<()> {
        for process in self.processes {
            let status = process.terminate().await?;
            assert!(status.success(), "{status:?}");
        }
        self.shared.cleanup().await
    }
}

/// Publishes `event` as `org`'s publisher does, with the Msg-Id `msg_id`.
async fn publish_as(
    publisher: &async_nats::Client,
    org: &str,
    msg_id: &str,
    event: &serde_json::Value,
) -> anyhow::Result<async_nats::jetstream::publish::PublishAck> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let subject = platform::nats::Subjects::default().interactions(org);
    let js = async_nats::jetstream::new(publisher.clone());
    Ok(js.publish_with_headers(subject, headers, serde_json::to_vec(event)?.into()).await?.await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_reads_no_other_connections_inbox() -> anyhow::Result<()> {
    let platform = ShippedPlatform::start(&[ORG, OTHER]).await?;
    let (acme, errors) = platform.nats.client("publisher-acme").await?;
    let mut spies = Vec::new();
    for subject in ["_INBOX.>", ">", "_INBOX.leads-ingest.>", "_INBOX.leads-lead.>", "_INBOX.publisher-globex.>"] {
        spies.push((subject, acme.subscribe(subject).await?));
        let refusal = format!("Permissions Violation for Subscription to \"{subject}\"");
        eventually(Duration::from_secs(5), &refusal, || {
            let (errors, refusal) = (errors.clone(), refusal.clone());
            async move { errors.lock().unwrap().iter().any(|e| e.contains(&refusal)).then_some(()) }
        })
        .await;
    }

    // Both organisations' events go through ingest's and lead's pulls while acme listens; each
    // publisher's acks reach it under its own prefix.
    let (globex, _) = platform.nats.client("publisher-globex").await?;
    publish_as(&globex, OTHER, "globex:evt-1", &chat_event("evt-1", &phone(1), "a private question")).await?;
    publish_as(&acme, ORG, "acme:evt-1", &chat_event("evt-1", &phone(2), "hello")).await?;
    platform.leads(OTHER, 1).await;
    platform.leads(ORG, 1).await;
    platform.drained(StreamKind::Interactions, "ingest").await;
    platform.drained(StreamKind::Events("ingest"), "lead-interactions").await;

    acme.flush().await?;
    for (subject, mut spy) in spies {
        let received = tokio::time::timeout(Duration::from_millis(200), futures::StreamExt::next(&mut spy)).await;
        assert!(!matches!(received, Ok(Some(_))), "{subject} received {received:?}");
    }
    platform.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_cannot_suppress_another_organisations_event_by_its_msg_id() -> anyhow::Result<()> {
    let platform = ShippedPlatform::start(&[ORG, OTHER]).await?;
    let (acme, _) = platform.nats.client("publisher-acme").await?;
    let (globex, _) = platform.nats.client("publisher-globex").await?;
    let interactions = platform.env.subjects.stream_name(StreamKind::Interactions);
    let window = platform.env.js.get_stream(&interactions).await?.info().await?.config.duplicate_window;
    assert_eq!(window, platform::nats::INPUT_DUPLICATE_WINDOW);

    // acme sends globex's Msg-Id ahead of globex, on its own subject.
    let forged = publish_as(&acme, ORG, "globex:evt-123", &chat_event("evt-123", &phone(1), "forged")).await?;
    let forged_at = std::time::Instant::now();
    assert!(!forged.duplicate);
    let acme_leads = platform.leads(ORG, 1).await;
    // The stream still drops an id it saw less than its window ago: that much is left to an
    // attacker who knows an id in advance (docs/security.md).
    eventually(Duration::from_secs(5), "the forged id to leave the duplicate window", || async move {
        (forged_at.elapsed() > window).then_some(())
    })
    .await;

    let real = chat_event("evt-123", &phone(2), "the real question");
    let first = publish_as(&globex, OTHER, "globex:evt-123", &real).await?;
    assert!(!first.duplicate, "globex's event was dropped as acme's duplicate");
    let first_at = std::time::Instant::now();
    publish_as(&globex, OTHER, "globex:evt-123", &real).await?;
    eventually(Duration::from_secs(5), "the first send to leave the duplicate window", || async move {
        (first_at.elapsed() > window).then_some(())
    })
    .await;
    let resent = publish_as(&globex, OTHER, "globex:evt-123", &real).await?;
    assert!(!resent.duplicate, "a send after the window reaches the stream");

    let globex_leads = platform.leads(OTHER, 1).await;
    platform.drained(StreamKind::Interactions, "ingest").await;
    platform.drained(StreamKind::Events("ingest"), "lead-interactions").await;
    let globex_leads_after = platform.leads(OTHER, 1).await;
    assert_eq!(globex_leads_after[0].id, globex_leads[0].id);
    assert_eq!(globex_leads_after[0].interaction_count, 1, "globex's event applied once");
    assert_eq!(globex_leads_after[0].last_message_preview, "the real question");
    let acme_leads_after = platform.leads(ORG, 1).await;
    assert_eq!(acme_leads_after[0].id, acme_leads[0].id);
    assert_eq!(acme_leads_after[0].interaction_count, 1);
    assert_eq!(acme_leads_after[0].last_message_preview, "forged");
    platform.stop().await
}

/// The server errors a connection was told of.
type Errors = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Waits until the connection was told that publishing on `subject` is refused.
async fn refused(errors: &Errors, subject: &str) {
    let refusal = format!("Permissions Violation for Publish to \"{subject}\"");
    eventually(Duration::from_secs(5), &refusal, || {
        let (errors, refusal) = (errors.clone(), refusal.clone());
        async move { errors.lock().unwrap().iter().any(|e| e.contains(&refusal)).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_service_changes_its_own_streams_and_no_other() -> anyhow::Result<()> {
    let nats = ShippedNats::start(&[]).await?;
    let subjects = platform::nats::Subjects::default();
    // Each owner declares its streams, as it does first at its start.
    for service in [ServiceName::Ingest, ServiceName::Lead] {
        let (client, errors) = nats.client(&format!("leads-{service}")).await?;
        platform::nats::ensure_owned_streams(&async_nats::jetstream::new(client), &subjects, service, 1).await?;
        assert!(errors.lock().unwrap().is_empty(), "{service}: {:?}", errors.lock().unwrap());
    }
    let (admin, _) = nats.client("leads-admin").await?;
    let admin = async_nats::jetstream::new(admin);
    let (lead, errors) = nats.client("leads-lead").await?;
    let mut js = async_nats::jetstream::new(lead);
    // A refused request is never answered: a short wait for the answer keeps the test fast.
    js.set_timeout(Duration::from_secs(1));

    // Lead may not shorten ingest's retention nor lengthen its duplicate window, nor create a
    // stream another service owns before its owner does, nor delete or purge even its own.
    // Each refused request waits out its timeout, so all are sent at once.
    let interactions = subjects.stream_name(StreamKind::Interactions);
    let mut changed = platform::nats::stream_config(&subjects, StreamKind::Interactions, 1);
    changed.max_age = Duration::from_secs(3600);
    changed.duplicate_window = Duration::from_secs(120);
    let scores = platform::nats::stream_config(&subjects, StreamKind::Events("qualification"), 1);
    let own = subjects.stream_name(StreamKind::Events("lead"));
    let own_stream = js.get_stream(&own).await?;
    let (updated, created, deleted, purged) = tokio::join!(
        js.update_stream(&changed),
        js.create_stream(scores.clone()),
        js.delete_stream(&own),
        own_stream.purge().into_future(),
    );
    assert!(updated.is_err(), "lead changed ingest's stream");
    assert!(created.is_err(), "lead created qualification's stream");
    assert!(deleted.is_err(), "lead deleted its stream");
    assert!(purged.is_err(), "lead purged its stream");
    for action in ["UPDATE.INTERACTIONS", "CREATE.EVENTS_QUALIFICATION", "DELETE.EVENTS_LEAD", "PURGE.EVENTS_LEAD"] {
        refused(&errors, &format!("$JS.API.STREAM.{action}")).await;
    }
    let config = admin.get_stream(&interactions).await?.info().await?.config.clone();
    assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600), "retention unchanged");
    assert_eq!(config.duplicate_window, platform::nats::INPUT_DUPLICATE_WINDOW, "window unchanged");
    assert!(admin.get_stream(&scores.name).await.is_err(), "{} exists", scores.name);
    assert!(admin.get_stream(&own).await.is_ok(), "{own} is gone");

    // Its own stream it changes, and its next start brings it back to the platform's settings.
    let mut mine = platform::nats::stream_config(&subjects, StreamKind::Events("lead"), 1);
    mine.duplicate_window = Duration::from_secs(30);
    assert_eq!(js.update_stream(&mine).await?.config.duplicate_window, Duration::from_secs(30));
    platform::nats::ensure_owned_streams(&js, &subjects, ServiceName::Lead, 1).await?;
    let config = admin.get_stream(&own).await?.info().await?.config.clone();
    assert_eq!(config.duplicate_window, platform::nats::SERVICE_DUPLICATE_WINDOW);
    Ok(())
}

/// Reads `messages` until one holds `payload`.
async fn read_until(
    messages: &mut async_nats::jetstream::consumer::pull::Ordered,
    payload: &str,
) -> anyhow::Result<()> {
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(message) = futures::StreamExt::next(messages).await {
            if message?.payload == payload.as_bytes() {
                return Ok(());
            }
        }
        anyhow::bail!("the ordered consumer ended")
    });
    read.await.map_err(|_| anyhow::anyhow!("{payload} not read"))?
}

/// An ordered pull consumer of the people directory's events from an hour ago, named by the
/// process, as `platform::sessions` opens one; and its name.
async fn follow_people(js: &async_nats::jetstream::Context) -> anyhow::Result<(Ordered, String)> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let hour_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)? - Duration::from_secs(3600);
    let start_time =
        async_nats::datetime::from_nanos(i128::try_from(hour_ago.as_nanos())?).map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = format!("sessions-{}", uuid::Uuid::new_v4().simple());
    let config = OrderedConfig {
        name: Some(name.clone()),
        deliver_policy: DeliverPolicy::ByStartTime { start_time },
        ..Default::default()
    };
    let stream = js.get_stream(platform::nats::Subjects::default().stream_name(StreamKind::Events("people"))).await?;
    let consumer = stream.create_consumer(config).await?;
    // What the client asks of its consumer once connected again after a break (a NATS
    // restart): asked here, so the test need not wait out the client's retries.
    consumer.get_info().await?;
    Ok((consumer.messages().await?, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_follows_ended_sessions_with_an_ordered_consumer_of_its_own() -> anyhow::Result<()> {
    let nats = ShippedNats::start(&[]).await?;
    let subjects = platform::nats::Subjects::default();
    let (people, _) = nats.client("leads-people").await?;
    let people = async_nats::jetstream::new(people);
    platform::nats::ensure_owned_streams(&people, &subjects, ServiceName::People, 1).await?;
    let publish = |payload: String| {
        let (people, subject) = (people.clone(), subjects.event("people", ORG, "sessions_ended"));
        async move { people.publish(subject, payload.into()).await?.await.map_err(anyhow::Error::from) }
    };
    let (admin, _) = nats.client("leads-admin").await?;
    let admin = async_nats::jetstream::new(admin);
    let name = subjects.stream_name(StreamKind::Events("people"));

    for service in ServiceName::ALL {
        let user = format!("leads-{service}");
        let (client, errors) = nats.client(&user).await?;
        let js = async_nats::jetstream::new(client);
        let before = format!("{user} before");
        publish(before.clone()).await?;
        let (mut messages, consumer) = follow_people(&js).await?;
        read_until(&mut messages, &before).await?;
        // Its consumer gone, the client deletes it, creates the next one and reads on.
        admin.get_stream(&name).await?.delete_consumer(&consumer).await?;
        let after = format!("{user} after");
        publish(after.clone()).await?;
        read_until(&mut messages, &after).await?;
        assert!(errors.lock().unwrap().is_empty(), "{user}: {:?}", errors.lock().unwrap());
    }
    Ok(())
}

/// Every durable consumer the shipped configuration lets a service pull from, as
/// (stream, durable).
fn shipped_durables() -> anyhow::Result<Vec<(String, String)>> {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/nats-server.conf");
    let conf = std::fs::read_to_string(shipped)?;
    Ok(conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("\"$JS.API.CONSUMER.MSG.NEXT.")?.split_once('"'))
        .filter_map(|(consumer, _)| consumer.split_once('.'))
        .filter(|(_, durable)| *durable != "*")
        .map(|(stream, durable)| (stream.to_owned(), durable.to_owned()))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_with_their_own_users_start_in_any_order() -> anyhow::Result<()> {
    let mut platform = ShippedPlatform::new(&[ORG]).await?;
    // Tokens verified, as deployed: every process follows the people directory's ended
    // sessions, with its own user, from the moment the people service declares its stream.
    let keys = std::env::temp_dir().join(format!("leads-nats-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&keys)?;
    let key = keys.join("local.key");
    std::fs::write(&key, (0..48).map(|_| char::from(b'a' + rand::random::<u8>() % 26)).collect::<String>())?;
    platform.env.settings.auth.disabled = false;
    platform.extra_env.push(("LEADS_AUTH_SIGNING_KEY_FILE", key.to_string_lossy().into_owned()));

    // On a server with no stream yet, readers before the owners of what they read: lead's
    // readers first, then lead, which reads ingest's events and qualification's (which reads
    // lead's), then ingest, then people, whose stream every process follows; every service
    // writes lead's dead letters. Each serves before the next starts.
    let order = [
        ServiceName::Notifications,
        ServiceName::Broadcast,
        ServiceName::Assignment,
        ServiceName::FollowUp,
        ServiceName::Qualification,
        ServiceName::Lead,
        ServiceName::Ingest,
        ServiceName::People,
    ];
    for service in order {
        let mut process = platform.spawn(service)?;
        process.ready().await?;
        platform.processes.push(process);
    }

    // Every stream, declared by its owner with the platform's settings.
    for kind in platform::nats::all_streams() {
        let name = platform.env.subjects.stream_name(kind);
        let config = platform.env.js.get_stream(&name).await?.info().await?.config.clone();
        let wanted = platform::nats::stream_config(&platform.env.subjects, kind, 1);
        assert_eq!((config.subjects, config.duplicate_window), (wanted.subjects, wanted.duplicate_window), "{name}");
    }
    // Every durable attached once its stream appeared, and every process following ended
    // sessions.
    let durables = shipped_durables()?;
    assert!(durables.len() >= 10, "{durables:?}");
    for (stream, durable) in durables {
        eventually(Duration::from_secs(30), &format!("{durable} on {stream}"), || {
            let (js, stream, durable) = (platform.env.js.clone(), stream.clone(), durable.clone());
            async move { js.get_stream(&stream).await.ok()?.consumer_info(&durable).await.ok().map(|_| ()) }
        })
        .await;
    }
    let people = platform.env.subjects.stream_name(StreamKind::Events("people"));
    eventually(Duration::from_secs(30), "a follower of ended sessions in every process", || {
        let (js, people) = (platform.env.js.clone(), people.clone());
        async move {
            let followers = js.get_stream(&people).await.ok()?.info().await.ok()?.state.consumer_count;
            (followers == order.len()).then_some(())
        }
    })
    .await;

    // An event goes through ingest to lead, whose event qualification scores and lead applies.
    let (acme, _) = platform.nats.client("publisher-acme").await?;
    publish_as(&acme, ORG, "acme:evt-1", &chat_event("evt-1", &phone(1), "how much is the premium plan?")).await?;
    let admin = platform.shared.admin_pool().await?;
    eventually(Duration::from_secs(60), "acme's lead scored", || {
        let admin = admin.clone();
        async move {
            let score: Option<i32> = sqlx::query_scalar("SELECT score FROM lead.leads WHERE org_id = $1")
                .bind(ORG)
                .fetch_optional(&admin)
                .await
                .ok()??;
            score.map(|_| ())
        }
    })
    .await;
    admin.close().await;
    std::fs::remove_dir_all(&keys).ok();
    platform.stop().await
}
