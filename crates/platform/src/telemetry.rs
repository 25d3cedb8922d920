//! Structured JSON logs filtered by `RUST_LOG` (each line inside a span carries its
//! `trace_id` and `span_id`), OpenTelemetry spans exported over OTLP when an endpoint is set,
//! W3C trace context carried in NATS headers and gRPC metadata, and the Prometheus metrics.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// Flushes spans when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// The OpenTelemetry `service.name` of a process running `services`: `leads` for all of
/// them, `leads-qualification` for one, `leads-ingest+lead` for a few.
pub fn process_service_name(services: &[crate::ServiceName]) -> String {
    if services.is_empty() || services.len() == crate::ServiceName::ALL.len() {
        return "leads".to_owned();
    }
    let names: Vec<&str> = services.iter().map(|s| s.as_str()).collect();
    format!("leads-{}", names.join("+"))
}

/// Installs the global subscriber. Spans get trace ids even without an exporter (the
/// provider samples every root span), so that trace context still travels between services
/// and log lines name their trace.
pub fn init(service_name: &str, otlp_endpoint: Option<&str>) -> anyhow::Result<TelemetryGuard> {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_owned()).build());
    if let Some(endpoint) = otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("leads");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(json_logs(std::io::stdout))
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// JSON log lines written to `writer`, each naming the trace and span it happens in.
fn json_logs<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer as _;
    let dispatch = DispatchSlot::default();
    let format = WithTraceIds {
        json: format::Format::default().json().flatten_event(true).with_current_span(false),
        dispatch: dispatch.clone(),
    };
    CaptureDispatch(dispatch).and_then(
        tracing_subscriber::fmt::layer().fmt_fields(format::JsonFields::new()).event_format(format).with_writer(writer),
    )
}

/// The subscriber the logs belong to, kept when it is registered: while an event is being
/// dispatched `dispatcher::get_default` answers no subscriber, and the OpenTelemetry context
/// of a span is only reachable through its subscriber.
#[derive(Clone, Default)]
struct DispatchSlot(std::sync::Arc<std::sync::OnceLock<tracing::dispatcher::WeakDispatch>>);

struct CaptureDispatch(DispatchSlot);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CaptureDispatch {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.0.0.set(subscriber.downgrade());
    }
}

/// A JSON log line with `"trace_id"` and `"span_id"` of the current span first, when the
/// event happens inside one. The layer formats span fields as JSON too (`JsonFields`), as
/// `fmt::layer().json()` would.
struct WithTraceIds {
    json: format::Format<format::Json>,
    dispatch: DispatchSlot,
}

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx.lookup_current().and_then(|span| {
            let dispatch = self.dispatch.0.get()?.upgrade()?;
            let context = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let span = context.span();
            let span_context = span.span_context();
            span_context.is_valid().then(|| (span_context.trace_id(), span_context.span_id()))
        });
        let Some((trace_id, span_id)) = ids else {
            return self.json.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.json.format_event(ctx, format::Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                let separator = if rest.starts_with('}') { "" } else { "," };
                write!(writer, "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{separator}{rest}")
            }
            None => writer.write_str(&line),
        }
    }
}

struct HeaderInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(async_nats::HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's context into NATS headers as `traceparent`.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// The current span's `traceparent`, to store beside an outbox row.
pub fn current_traceparent() -> Option<String> {
    let mut headers = async_nats::HeaderMap::new();
    inject_nats(&mut headers);
    headers.get("traceparent").map(|v| v.as_str().to_owned())
}

/// Makes `span` a child of the trace named in NATS headers, when there is one.
pub fn set_parent_from_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(headers) = headers {
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(context);
    }
}

/// Links `span` to the trace a message's `traceparent` carries: a batch continues its first
/// message's trace and links every other one, so each original event can be followed from its
/// publish through the batches that handled it.
pub fn link_from_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    use opentelemetry::trace::TraceContextExt as _;
    if let Some(headers) = headers {
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let linked = context.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
}

struct HttpExtractor<'a>(&'a tonic::codegen::http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(tonic::codegen::http::HeaderName::as_str).collect()
    }
}

/// A span for one gRPC request, child of the caller's trace when metadata carries one.
pub fn grpc_request_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc", path = %request.uri().path());
    let context = TraceContextPropagator::new().extract(&HttpExtractor(request.headers()));
    let _ = span.set_parent(context);
    span
}

/// A client interceptor that sends the current trace context in gRPC metadata.
pub fn inject_grpc(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    if let Some(traceparent) = current_traceparent()
        && let Ok(value) = traceparent.parse()
    {
        request.metadata_mut().insert("traceparent", value);
    }
    Ok(request)
}

/// Metric names, all prefixed `leads_`; every series also carries a `service` label.
pub mod names {
    pub const GRPC_REQUEST_DURATION: &str = "leads_grpc_request_duration_seconds";
    pub const GRPC_REQUESTS: &str = "leads_grpc_requests_total";
    pub const CONSUMER_PENDING: &str = "leads_consumer_pending";
    pub const CONSUMER_ACK_PENDING: &str = "leads_consumer_ack_pending";
    pub const CONSUMER_HANDLED: &str = "leads_consumer_handled_total";
    pub const CONSUMER_REDELIVERED: &str = "leads_consumer_redelivered_total";
    pub const CONSUMER_HANDLE_DURATION: &str = "leads_consumer_handle_duration_seconds";
    pub const OUTBOX_BACKLOG: &str = "leads_outbox_backlog";
    pub const OUTBOX_OLDEST_AGE: &str = "leads_outbox_oldest_age_seconds";
    pub const OUTBOX_PUBLISHED: &str = "leads_outbox_published_total";
    pub const DB_POOL_IN_USE: &str = "leads_db_pool_in_use";
    pub const DB_POOL_SIZE: &str = "leads_db_pool_size";
    pub const SERVICE_READY: &str = "leads_service_ready";
    pub const EVENTS_ACCEPTED: &str = "leads_events_accepted_total";
    pub const EVENTS_REFUSED: &str = "leads_events_refused_total";
    pub const DEADLETTER: &str = "leads_deadletter_total";
    pub const LEAD_INTERACTIONS_APPLIED: &str = "leads_lead_interactions_applied_total";
    pub const LEAD_RULE_MOVES: &str = "leads_lead_rule_moves_total";
    pub const LEAD_ASSIGNMENTS: &str = "leads_lead_assignments_total";
    pub const QUALIFICATION_SCORINGS: &str = "leads_qualification_scorings_total";
    pub const QUALIFICATION_MODELS_TRAINED: &str = "leads_qualification_models_trained_total";
    pub const FOLLOW_UPS_CREATED: &str = "leads_follow_ups_created_total";
    pub const FOLLOW_UPS_CLOSED: &str = "leads_follow_ups_closed_total";
    pub const FOLLOW_UPS_DUE: &str = "leads_follow_ups_due_total";
    pub const BROADCAST_MESSAGES_RECORDED: &str = "leads_broadcast_messages_recorded_total";
    pub const BROADCAST_STATUSES_RECORDED: &str = "leads_broadcast_statuses_recorded_total";
    pub const BROADCAST_LEAD_EVENTS_APPLIED: &str = "leads_broadcast_lead_events_applied_total";
    pub const BROADCAST_REPLIES_SEEN: &str = "leads_broadcast_replies_seen_total";
}

/// The `reason` label of a refused event: the field its refusal names, with item indexes
/// dropped (`statuses[3].status` counts as `statuses[].status`) to keep the label's values few.
pub fn refusal_reason(field: &str) -> String {
    let mut reason = String::with_capacity(field.len());
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_index = true;
                reason.push(c);
            }
            ']' => {
                in_index = false;
                reason.push(c);
            }
            _ if in_index => {}
            _ => reason.push(c),
        }
    }
    if reason.is_empty() { "unknown".to_owned() } else { reason }
}

/// Counts refused events in `leads_events_refused_total`, one per refusal's field.
pub fn count_refused<'a>(service: &'static str, fields: impl IntoIterator<Item = &'a str>) {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for field in fields {
        *counts.entry(refusal_reason(field)).or_default() += 1;
    }
    for (reason, count) in counts {
        metrics::counter!(names::EVENTS_REFUSED, "service" => service, "reason" => reason).increment(count);
    }
}

const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BATCH_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The Prometheus exporter as the platform configures it: histograms as `_bucket` series.
pub fn prometheus_builder() -> anyhow::Result<PrometheusBuilder> {
    Ok(PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(names::GRPC_REQUEST_DURATION.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(names::CONSUMER_HANDLE_DURATION.into()), BATCH_BUCKETS)?)
}

/// Describes every metric (Prometheus `# HELP`). Call after a recorder is installed.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_histogram!(
        GRPC_REQUEST_DURATION,
        Unit::Seconds,
        "Time from a gRPC request's arrival to the end of its response, by service and method."
    );
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC requests answered, by service, method and status code (OK, INVALID_ARGUMENT, ...)."
    );
    describe_gauge!(
        CONSUMER_PENDING,
        "Messages of the stream a durable consumer has not yet been delivered (sampled every 5 s)."
    );
    describe_gauge!(
        CONSUMER_ACK_PENDING,
        "Messages a durable consumer has delivered and not yet had acknowledged (sampled every 5 s)."
    );
    describe_counter!(CONSUMER_HANDLED, "Messages a consumer has handled (acknowledged, retried or terminated).");
    describe_counter!(CONSUMER_REDELIVERED, "Messages a consumer received again after an earlier delivery.");
    describe_histogram!(CONSUMER_HANDLE_DURATION, Unit::Seconds, "Time a consumer's handler took over one batch.");
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Events committed to the service's outbox and not yet published (sampled every 5 s)."
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest unpublished outbox event, 0 when the outbox is empty."
    );
    describe_counter!(OUTBOX_PUBLISHED, "Outbox events published to JetStream.");
    describe_gauge!(DB_POOL_IN_USE, "Database connections of the service's pool in use (sampled every 5 s).");
    describe_gauge!(DB_POOL_SIZE, "Database connections the service's pool holds, idle or in use.");
    describe_gauge!(SERVICE_READY, "1 while the service serves, 0 once it drains for shutdown.");
    describe_counter!(EVENTS_ACCEPTED, "Incoming events accepted.");
    describe_counter!(EVENTS_REFUSED, "Incoming events refused and kept with their reason, by reason.");
    describe_counter!(DEADLETTER, "Refused events republished on the dead-letter stream.");
    describe_counter!(LEAD_INTERACTIONS_APPLIED, "Accepted interactions the lead service applied to leads.");
    describe_counter!(LEAD_RULE_MOVES, "Status changes the organisations' status rules made.");
    describe_counter!(LEAD_ASSIGNMENTS, "Assignment events the lead service applied.");
    describe_counter!(QUALIFICATION_SCORINGS, "Leads the qualification service scored.");
    describe_counter!(QUALIFICATION_MODELS_TRAINED, "Per-organisation models the qualification service trained.");
    describe_counter!(FOLLOW_UPS_CREATED, "Follow-ups created.");
    describe_counter!(FOLLOW_UPS_CLOSED, "Follow-ups closed, by state.");
    describe_counter!(FOLLOW_UPS_DUE, "Follow-ups that came due.");
    describe_counter!(BROADCAST_MESSAGES_RECORDED, "Broadcast messages recorded.");
    describe_counter!(BROADCAST_STATUSES_RECORDED, "Delivery statuses recorded.");
    describe_counter!(BROADCAST_LEAD_EVENTS_APPLIED, "Lead events the broadcast service applied to its projection.");
    describe_counter!(BROADCAST_REPLIES_SEEN, "Replies to broadcasts the broadcast service attributed.");
}

/// Serves Prometheus metrics on `addr` at `/metrics`.
pub fn install_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    prometheus_builder()?.with_http_listener(addr).install()?;
    describe_metrics();
    tracing::info!(%addr, "metrics served at /metrics");
    Ok(())
}

/// Installs the platform's recorder without a listener, for tests: `render()` on the handle
/// is what `/metrics` would serve.
pub fn install_metrics_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = prometheus_builder()?.install_recorder()?;
    describe_metrics();
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_name_the_trace_and_span_they_happen_in() {
        let buffer = Buffer::default();
        let provider = SdkTracerProvider::builder().build();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            .with(json_logs(move || writer.clone()))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = tracing::info_span!("work");
            span.in_scope(|| tracing::info!(n = 1, "inside"));
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
            let child = tracing::info_span!("consume");
            set_parent_from_nats(&child, Some(&headers));
            child.in_scope(|| tracing::info!("continued"));
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["message"], "outside");
        assert!(lines[0].get("trace_id").is_none());
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["n"], 1);
        assert_eq!(lines[1]["trace_id"].as_str().map(str::len), Some(32), "{text}");
        assert_eq!(lines[1]["span_id"].as_str().map(str::len), Some(16), "{text}");
        assert_eq!(lines[2]["trace_id"], "0af7651916cd43dd8448eb211c80319c", "{text}");
        assert_ne!(lines[2]["span_id"], "b7ad6b7169203331", "the span is a child of the caller's");
    }

    #[test]
    fn refusal_reasons_drop_item_indexes() {
        assert_eq!(refusal_reason("statuses[3].status"), "statuses[].status");
        assert_eq!(refusal_reason("contact.phone"), "contact.phone");
        assert_eq!(refusal_reason(""), "unknown");
    }

    #[test]
    fn a_process_is_named_after_its_services() {
        use crate::ServiceName;
        assert_eq!(process_service_name(&ServiceName::ALL), "leads");
        assert_eq!(process_service_name(&[ServiceName::Qualification]), "leads-qualification");
        assert_eq!(process_service_name(&[ServiceName::Ingest, ServiceName::Lead]), "leads-ingest+lead");
    }
}
