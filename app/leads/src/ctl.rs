//! Small operator commands, so that a newcomer can publish an event and call the API with
//! nothing but this binary.

use leads_proto::v1::{self as pb, lead_service_client::LeadServiceClient};
use platform::{ServiceName, Settings, nats::Subjects};
use std::path::Path;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// Publishes a JSON payload read from `file` (or stdin for `-`) to JetStream.
pub async fn publish(settings: &Settings, subject_kind: &str, org_id: &str, file: &Path) -> anyhow::Result<()> {
    let payload = if file == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        text.into_bytes()
    } else {
        std::fs::read(file)?
    };
    let subjects = Subjects::new(settings.subject_prefix.clone());
    let subject = match subject_kind {
        "interactions" => subjects.interactions(org_id),
        "messages" => subjects.broadcast_messages(org_id),
        "statuses" => subjects.broadcast_statuses(org_id),
        "messages.batch" => subjects.broadcast_message_batches(org_id),
        "statuses.batch" => subjects.broadcast_status_batches(org_id),
        other => anyhow::bail!(
            "unknown subject kind {other:?}: use interactions, messages, statuses, messages.batch or statuses.batch"
        ),
    };
    let client = platform::nats::connect_with(settings, "leads-ctl").await?;
    let js = async_nats::jetstream::new(client);
    platform::nats::ensure_all_streams(&js, &subjects).await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let id = serde_json::from_slice::<serde_json::Value>(&payload).ok().and_then(|v| msg_id(org_id, subject_kind, &v));
    if let Some(id) = &id {
        headers.insert("Nats-Msg-Id", id.as_str());
    }
    let ack = js.publish_with_headers(subject.clone(), headers, payload.into()).await?.await?;
    println!("published to {subject} (stream {}, sequence {})", ack.stream, ack.sequence);
    Ok(())
}

/// The contract's `Nats-Msg-Id` for a published event: unique across organisations, which
/// share one stream and its duplicate window, and for a status across its statuses.
/// Batches carry none (their items are kept once each by their own keys).
pub fn msg_id(org_id: &str, subject_kind: &str, event: &serde_json::Value) -> Option<String> {
    let field = |name: &str| event.get(name).and_then(|v| v.as_str());
    match subject_kind {
        "interactions" => field("event_id").map(|id| format!("{org_id}:{id}")),
        "messages" => field("message_id").map(|id| format!("{org_id}:{id}")),
        "statuses" => Some(format!("{org_id}:{}:{}", field("message_id")?, field("status")?)),
        _ => None,
    }
}

/// Filters and paging of `leads leads` and `leads export`.
#[derive(Debug, Clone, Default)]
pub struct LeadQuery {
    pub org_id: String,
    /// Status names as the proto spells them (`NEW`, `QUALIFIED`, ...), any case.
    pub statuses: Vec<String>,
    pub agents: Vec<String>,
    pub search: Option<String>,
    pub page_size: i32,
    pub page_token: Option<String>,
    /// A bearer token (`leads token`) sent as `authorization: Bearer ...`.
    pub token: Option<String>,
}

/// `message` with the bearer token, when there is one, in its metadata.
pub fn authorized<T>(message: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
        let value =
            format!("Bearer {token}").parse().map_err(|_| anyhow::anyhow!("the token is not a header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// The variable a bearer token is read from when no `--token-file` is given. A token is
/// never taken as an argument: arguments show in `ps` and shell histories.
pub const TOKEN_VARIABLE: &str = "LEADS_TOKEN";

/// The bearer token of a command: the contents of `token_file` when given, otherwise
/// `LEADS_TOKEN` (as `lookup` finds it); none when neither holds one.
pub fn bearer_token(
    token_file: Option<&Path>,
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<String>> {
    let token = match token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
            let token = text.trim().to_owned();
            anyhow::ensure!(!token.is_empty(), "the token file {} is empty", path.display());
            Some(token)
        }
        None => lookup(TOKEN_VARIABLE).map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
    };
    Ok(token)
}

/// Signs a token with the key file `key` (an HS256 secret, or an RS256 or EdDSA private key):
/// what `leads token` prints. It carries the settings' issuer and audience, and a `ttl` beyond
/// their maximum lifetime is refused.
pub fn mint_token(
    key: &Path,
    auth: &platform::settings::AuthSettings,
    sub: &str,
    role: platform::auth::Role,
    orgs: Vec<String>,
    agent_id: Option<String>,
    ttl: std::time::Duration,
) -> anyhow::Result<String> {
    platform::auth::Signer::with_settings(key, auth)?.mint_for(sub, role, orgs, agent_id, ttl)
}

/// `24h`, `30m`, `7d`, `90s` or a number of seconds.
pub fn parse_ttl(text: &str) -> anyhow::Result<std::time::Duration> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let number: u64 = number.parse().map_err(|_| anyhow::anyhow!("{text:?} is not a duration like 24h, 30m or 7d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("{text:?} is not a duration like 24h, 30m or 7d"),
    };
    anyhow::ensure!(number > 0, "the lifetime must be positive");
    Ok(std::time::Duration::from_secs(number.saturating_mul(seconds)))
}

impl LeadQuery {
    fn request(&self) -> anyhow::Result<pb::ListLeadsRequest> {
        let statuses = self
            .statuses
            .iter()
            .map(|name| {
                let upper = name.trim().to_ascii_uppercase().replace('-', "_");
                pb::LeadStatus::from_str_name(&upper)
                    .filter(|s| *s != pb::LeadStatus::Unspecified)
                    .map(|s| s as i32)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown status {name:?}: use NEW, CONTACTED, QUALIFYING, QUALIFIED, FOLLOW_UP, CONVERTED, LOST or ARCHIVED"
                        )
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(pb::ListLeadsRequest {
            org_id: self.org_id.clone(),
            filter: Some(pb::LeadFilter {
                statuses,
                agent_ids: self.agents.clone(),
                search: self.search.clone().unwrap_or_default(),
                ..Default::default()
            }),
            page_size: self.page_size,
            page_token: self.page_token.clone().unwrap_or_default(),
            ..Default::default()
        })
    }
}

/// Prints one page of the organisation's leads, newest interaction first, as JSON lines,
/// then the token of the next page when there is one.
pub async fn list_leads(settings: &Settings, query: &LeadQuery) -> anyhow::Result<()> {
    let request = query.request()?;
    let endpoint = settings.endpoints.lead.clone();
    let mut client = LeadServiceClient::connect(endpoint).await?;
    let page = client.list_leads(authorized(request, query.token.as_deref())?).await?.into_inner();
    println!("{} leads match", page.total_count);
    for lead in page.leads {
        let contact = lead.contact.clone().unwrap_or_default();
        println!(
            "{}",
            serde_json::json!({
                "id": lead.id,
                "status": lead.status().as_str_name(),
                "active": lead.active,
                "phone": contact.phone,
                "name": contact.name,
                "agent": lead.agent_id,
                "score": lead.score,
                "interactions": lead.interaction_count,
                "last_message": lead.last_message_preview,
            })
        );
    }
    if !page.next_page_token.is_empty() {
        println!("next_page_token: {}", page.next_page_token);
    }
    Ok(())
}

/// Writes every lead matching `query` (all pages) as CSV to `out` through ExportLeads,
/// showing the rows received so far on stderr; returns the row count.
pub async fn export_leads(settings: &Settings, query: &LeadQuery, out: &Path) -> anyhow::Result<i64> {
    use std::io::Write;
    let mut request = query.request()?;
    request.page_token.clear();
    let endpoint = settings.endpoints.lead.clone();
    let mut client = LeadServiceClient::connect(endpoint).await?;
    let export = pb::ExportLeadsRequest { query: Some(request), scope: pb::ExportScope::All as i32 };
    let mut stream = client.export_leads(authorized(export, query.token.as_deref())?).await?.into_inner();
    // Written beside the target and renamed at the end, so that a failed export leaves no
    // truncated file under the name asked for.
    let partial = out.with_extension("csv.partial");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&partial)?);
    let mut rows = 0i64;
    let mut last_shown = std::time::Instant::now();
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = async {
        while let Some(chunk) = stream.message().await? {
            file.write_all(&chunk.csv)?;
            rows += chunk.rows;
            if last_shown.elapsed() >= std::time::Duration::from_millis(250) {
                last_shown = std::time::Instant::now();
                if interactive {
                    eprint!("\rexporting: {rows} rows");
                } else {
                    eprintln!("exporting: {rows} rows");
                }
            }
        }
        file.flush()?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        let _ = std::fs::remove_file(&partial);
        if interactive {
            eprintln!();
        }
        return Err(error);
    }
    drop(file);
    std::fs::rename(&partial, out)?;
    if interactive {
        eprint!("\r");
    }
    eprintln!("exported {rows} rows to {}", out.display());
    Ok(rows)
}

/// How long `health` waits for an answer.
pub const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Asks `grpc.health.v1.Health/Check` at `addr` (`host:port`, or a URL: `https://` speaks
/// TLS with the client settings of `grpc.tls_*`, as the services call each other) about
/// `service` ("" for the server as a whole), sending `token` when given (health needs none, a
/// proxy in front may); `Ok` carries the status the server reported, an error means no answer
/// within `HEALTH_TIMEOUT`.
pub async fn check_health_as(
    settings: &Settings,
    addr: &str,
    service: &str,
    token: Option<&str>,
) -> anyhow::Result<ServingStatus> {
    let url = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let call = async {
        let channel = platform::grpc::channel_without_credentials(settings, &url)?;
        let response = HealthClient::new(channel)
            .check(authorized(HealthCheckRequest { service: service.to_owned() }, token)?)
            .await
            .map_err(|status| anyhow::anyhow!("{}: {}", platform::grpc::code_name(status.code()), status.message()))?;
        anyhow::Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
    };
    tokio::time::timeout(HEALTH_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {HEALTH_TIMEOUT:?}"))?
}

/// `leads health`: checks `addr` (with `service`), or with no address every service at its
/// configured port, printing one line each. True when every one is SERVING.
pub async fn health(settings: &Settings, addr: Option<&str>, service: &str) -> bool {
    health_as(settings, addr, service, None).await
}

/// `health` sending a bearer token.
pub async fn health_as(settings: &Settings, addr: Option<&str>, service: &str, token: Option<&str>) -> bool {
    let targets: Vec<(String, String)> = match addr {
        Some(addr) => vec![(addr.to_owned(), addr.to_owned())],
        None => ServiceName::ALL
            .into_iter()
            .map(|name| {
                let host = match settings.grpc.host.as_str() {
                    "0.0.0.0" | "" => "127.0.0.1",
                    "::" | "[::]" => "[::1]",
                    host => host,
                };
                (name.as_str().to_owned(), format!("{host}:{}", settings.grpc.port(name)))
            })
            .collect(),
    };
    let checks = targets.iter().map(|(_, target)| check_health_as(settings, target, service, token));
    let results = futures::future::join_all(checks).await;
    let mut all_serving = true;
    for ((label, target), result) in targets.iter().zip(results) {
        let line = match result {
            Ok(status) => {
                all_serving &= status == ServingStatus::Serving;
                status.as_str_name().to_owned()
            }
            Err(error) => {
                all_serving = false;
                format!("UNREACHABLE ({error:#})")
            }
        };
        if label == target {
            println!("{target} {line}");
        } else {
            println!("{label} {target} {line}");
        }
    }
    all_serving
}

#[cfg(test)]
mod tests {
    use super::msg_id;
    use serde_json::json;

    #[test]
    fn message_ids_are_scoped_by_organisation_and_by_status() {
        let event = json!({"event_id": "evt-1"});
        assert_eq!(msg_id("acme", "interactions", &event).as_deref(), Some("acme:evt-1"));
        assert_ne!(msg_id("acme", "interactions", &event), msg_id("globex", "interactions", &event));
        let sent = json!({"message_id": "wamid.1", "status": "sent"});
        let read = json!({"message_id": "wamid.1", "status": "read"});
        assert_eq!(msg_id("acme", "statuses", &sent).as_deref(), Some("acme:wamid.1:sent"));
        assert_ne!(msg_id("acme", "statuses", &sent), msg_id("acme", "statuses", &read));
        assert_eq!(msg_id("acme", "messages", &sent).as_deref(), Some("acme:wamid.1"));
        assert_eq!(msg_id("acme", "statuses.batch", &sent), None);
    }

    #[test]
    fn a_bearer_token_comes_from_its_file_or_the_environment() {
        use super::bearer_token;
        let env = |name: &str| (name == "LEADS_TOKEN").then(|| " from.the.env\n".to_owned());
        let file = std::env::temp_dir().join(format!("leads-ctl-token-{}", std::process::id()));
        std::fs::write(&file, "from.the.file\n").unwrap();
        assert_eq!(bearer_token(Some(&file), env).unwrap().as_deref(), Some("from.the.file"));
        assert_eq!(bearer_token(None, env).unwrap().as_deref(), Some("from.the.env"));
        assert_eq!(bearer_token(None, |_| None).unwrap(), None);
        std::fs::write(&file, "\n").unwrap();
        assert!(bearer_token(Some(&file), env).unwrap_err().to_string().contains("is empty"));
        std::fs::remove_file(&file).unwrap();
        assert!(bearer_token(Some(&file), env).unwrap_err().to_string().contains("cannot read"));
    }
}
