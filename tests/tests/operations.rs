//! What operators rely on: the Prometheus metrics the dashboard and alerts read, reflection
//! that lists what each port serves, `leads health`, and consumers and streams brought to
//! the configured settings at start-up.

use leads_tests::{TestEnv, chat_event, eventually, pb, phone};
use platform::ServiceName;
use std::time::Duration;
use tonic_reflection::pb::v1alpha::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// The value of the first series of `name` whose labels include every one of `labels`.
fn sample(rendered: &str, name: &str, labels: &[&str]) -> Option<f64> {
    rendered.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let matches_name = series == name || series.strip_prefix(name)?.starts_with('{');
        (matches_name && labels.iter().all(|label| series.contains(label))).then(|| value.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_cover_calls_consumers_outboxes_and_refusals() -> anyhow::Result<()> {
    // nextest runs each test in a process of its own, so the global recorder is this test's.
    let metrics = platform::telemetry::install_metrics_recorder()?;
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    for n in 0..5 {
        env.publish_interaction("acme", &chat_event(&format!("evt-m{n}"), &phone(n), "how much is premium?")).await?;
    }
    // A refused event: no contact at all.
    env.publish_interaction(
        "acme",
        &serde_json::json!({"event_id": "evt-bad", "occurred_at": "2026-11-24T10:00:00Z", "kind": "chat_message"}),
    )
    .await?;
    let leads = node.lead().await?;
    eventually(DEADLINE, "five leads", || {
        let mut leads = leads.clone();
        async move {
            let page =
                leads.list_leads(pb::ListLeadsRequest { org_id: "acme".into(), ..Default::default() }).await.ok()?;
            (page.into_inner().total_count == 5).then_some(())
        }
    })
    .await;
    let bad = leads.clone().list_leads(pb::ListLeadsRequest { org_id: String::new(), ..Default::default() }).await;
    assert_eq!(bad.expect_err("an organisation is required").code(), tonic::Code::InvalidArgument);

    let rendered = eventually(DEADLINE, "the refusal to be counted", || {
        let rendered = metrics.render();
        async move { sample(&rendered, "leads_events_refused_total", &["service=\"ingest\""]).map(|_| rendered) }
    })
    .await;
    for present in [
        "leads_grpc_request_duration_seconds_bucket",
        "leads_consumer_handled_total",
        "leads_consumer_handle_duration_seconds_bucket",
        "leads_outbox_backlog",
        "leads_outbox_oldest_age_seconds",
        "leads_consumer_pending",
        "leads_db_pool_in_use",
        "leads_service_ready",
    ] {
        assert!(rendered.contains(present), "{present} missing from:\n{rendered}");
    }
    assert!(rendered.contains("# HELP leads_grpc_requests_total"), "no HELP text:\n{rendered}");
    let list = "method=\"leads.v1.LeadService/ListLeads\"";
    let ok = sample(&rendered, "leads_grpc_requests_total", &["service=\"lead\"", list, "code=\"OK\""]);
    assert!(ok.is_some_and(|n| n >= 1.0), "ListLeads OK not counted:\n{rendered}");
    let invalid = sample(&rendered, "leads_grpc_requests_total", &[list, "code=\"INVALID_ARGUMENT\""]);
    assert_eq!(invalid, Some(1.0), "the refused call is counted with its code:\n{rendered}");
    let handled = sample(&rendered, "leads_consumer_handled_total", &["service=\"ingest\""]);
    assert!(handled.is_some_and(|n| n >= 6.0), "ingest handled every event:\n{rendered}");
    let lead_handled = sample(&rendered, "leads_consumer_handled_total", &["service=\"lead\""]);
    assert!(lead_handled.is_some_and(|n| n >= 1.0), "lead handled accepted events:\n{rendered}");
    let refused = sample(&rendered, "leads_events_refused_total", &["service=\"ingest\"", "reason=\""]);
    assert_eq!(refused, Some(1.0));
    let ready = sample(&rendered, "leads_service_ready", &["service=\"lead\""]);
    assert_eq!(ready, Some(1.0));
    assert!(sample(&rendered, "leads_outbox_backlog", &["service=\"ingest\""]).is_some());

    node.stop().await?;
    let stopped = metrics.render();
    assert_eq!(sample(&stopped, "leads_service_ready", &["service=\"lead\""]), Some(0.0), "draining shows 0");
    env.cleanup().await
}

/// The services a reflection v1alpha ListServices at `addr` names.
async fn listed_services(addr: std::net::SocketAddr) -> anyhow::Result<Vec<String>> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(futures::stream::iter([request])).await?.into_inner();
    let response = responses.message().await?.ok_or_else(|| anyhow::anyhow!("no reflection answer"))?;
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => anyhow::bail!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_only_what_each_port_serves() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Lead, ServiceName::Ingest]).await?;
    for (service, served) in
        [(ServiceName::Lead, "leads.v1.LeadService"), (ServiceName::Ingest, "leads.v1.IngestService")]
    {
        let mut expected = vec![served.to_owned(), "grpc.health.v1.Health".to_owned()];
        expected.extend(platform::grpc::REFLECTION_SERVICES.map(str::to_owned));
        expected.sort();
        assert_eq!(listed_services(node.addr(service)).await?, expected, "{service}");
    }
    // v1 answers too.
    let channel = node.channel(ServiceName::Lead).await?;
    let mut v1 = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = v1.server_reflection_info(futures::stream::iter([request])).await?.into_inner();
    assert!(responses.message().await?.is_some());
    node.stop().await?;
    env.cleanup().await
}

fn closed_port() -> anyhow::Result<u16> {
    // Bound and released at once: nothing listens there afterwards.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn run_health(args: &[&str]) -> anyhow::Result<std::process::Output> {
    let output = tokio::process::Command::new(leads_tests::leads_binary())
        .arg("health")
        .args(args)
        // No Postgres, NATS or telemetry: settings that point nowhere change nothing.
        .env("LEADS_DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .env("LEADS_NATS_URL", "nats://127.0.0.1:9")
        .output();
    Ok(tokio::time::timeout(Duration::from_secs(20), output).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_command_exits_zero_only_for_a_serving_server() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Lead]).await?;
    let addr = node.addr(ServiceName::Lead).to_string();

    let serving = run_health(&["--addr", &addr]).await?;
    assert!(serving.status.success(), "{serving:?}");
    assert!(String::from_utf8_lossy(&serving.stdout).contains("SERVING"), "{serving:?}");
    let named = run_health(&["--addr", &addr, "--service", "leads.v1.LeadService"]).await?;
    assert!(named.status.success(), "{named:?}");
    let unknown = run_health(&["--addr", &addr, "--service", "leads.v1.NoSuchService"]).await?;
    assert!(!unknown.status.success(), "{unknown:?}");

    let closed = format!("127.0.0.1:{}", closed_port()?);
    let started = std::time::Instant::now();
    let refused = run_health(&["--addr", &closed]).await?;
    assert!(!refused.status.success(), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Without --addr: every service at its configured port, one line each; only lead serves.
    let mut all = tokio::process::Command::new(leads_tests::leads_binary());
    all.arg("health").env("LEADS_GRPC_HOST", "127.0.0.1");
    for service in ServiceName::ALL {
        let port = if service == ServiceName::Lead { node.addr(service).port() } else { closed_port()? };
        all.env(format!("LEADS_GRPC_{}_PORT", service.as_str().to_uppercase()), port.to_string());
    }
    let all = tokio::time::timeout(Duration::from_secs(20), all.output()).await??;
    assert!(!all.status.success(), "{all:?}");
    let stdout = String::from_utf8_lossy(&all.stdout);
    assert_eq!(stdout.lines().count(), ServiceName::ALL.len(), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("lead ") && l.ends_with(" SERVING")), "{stdout}");

    // The library function answers the same.
    assert!(leads::ctl::health(&env.settings, Some(&addr), "").await);
    assert!(!leads::ctl::health(&env.settings, Some(&closed), "").await);
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn an_existing_consumer_and_stream_take_the_configured_settings() -> anyhow::Result<()> {
    use async_nats::jetstream::stream;
    use platform::nats::StreamKind;
    let env = TestEnv::new().await?;
    let spec = platform::consumer::ConsumerSpec {
        stream: env.subjects.stream_name(StreamKind::Interactions),
        durable: "ops-test".into(),
        filter_subject: env.subjects.stream_subjects(StreamKind::Interactions).concat(),
        service: "ingest",
    };
    // A durable as an earlier version left it: with a delivery limit of its own.
    env.js
        .get_stream(&spec.stream)
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(spec.durable.clone()),
            filter_subject: spec.filter_subject.clone(),
            max_deliver: 20,
            ..Default::default()
        })
        .await?;
    let mut settings = env.settings.consumer.clone();
    settings.max_ack_pending = 1000;
    let mut consumer = platform::consumer::declare(&env.js, &spec, &settings).await?;
    assert_eq!(consumer.info().await?.config.max_deliver, -1, "the limit lifted");
    assert_eq!(consumer.info().await?.config.max_ack_pending, 1000);
    settings.max_ack_pending = 25_000;
    settings.ack_wait_secs = 17;
    settings.max_deliver = 7;
    platform::consumer::declare(&env.js, &spec, &settings).await?;
    let config = consumer.info().await?.config.clone();
    assert_eq!((config.max_ack_pending, config.ack_wait), (25_000, Duration::from_secs(17)));
    // The delivery budget is the loop's: NATS would abandon a message whose deliveries were
    // spent without a handler seeing it.
    assert_eq!(config.max_deliver, -1);

    // A stream declared with another duplicate window is brought back to the platform's.
    let name = env.subjects.stream_name(StreamKind::DeadLetter);
    let mut changed = platform::nats::stream_config(&env.subjects, StreamKind::DeadLetter, 1);
    changed.duplicate_window = Duration::from_secs(30);
    env.js.update_stream(&changed).await?;
    platform::nats::ensure_all_streams_replicated(&env.js, &env.subjects, 1).await?;
    let info: stream::Info = env.js.get_stream(&name).await?.info().await?.clone();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    assert_eq!(info.config.num_replicas, 1);
    env.cleanup().await
}
