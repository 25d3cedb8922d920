//! Small operator commands, so that a newcomer can publish an event and call the API with
//! nothing but this binary.

use leads_proto::v1::{self as pb, lead_service_client::LeadServiceClient};
use platform::{Settings, nats::Subjects};
use std::path::Path;

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
    let client = platform::nats::connect(&settings.nats_url, "leads-ctl").await?;
    let js = async_nats::jetstream::new(client);
    platform::nats::ensure_all_streams(&js, &subjects).await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let id = serde_json::from_slice::<serde_json::Value>(&payload)
        .ok()
        .and_then(|v| v.get("event_id").or_else(|| v.get("message_id")).and_then(|id| id.as_str()).map(str::to_owned));
    if let Some(id) = &id {
        headers.insert("Nats-Msg-Id", id.as_str());
    }
    let ack = js.publish_with_headers(subject.clone(), headers, payload.into()).await?.await?;
    println!("published to {subject} (stream {}, sequence {})", ack.stream, ack.sequence);
    Ok(())
}

/// Prints the organisation's leads, newest interaction first, as JSON lines.
pub async fn list_leads(settings: &Settings, org_id: &str, page_size: i32) -> anyhow::Result<()> {
    let endpoint = settings.endpoints.lead.clone();
    let mut client = LeadServiceClient::connect(endpoint).await?;
    let page = client
        .list_leads(pb::ListLeadsRequest { org_id: org_id.into(), page_size, ..Default::default() })
        .await?
        .into_inner();
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
                "score": lead.score,
                "interactions": lead.interaction_count,
                "last_message": lead.last_message_preview,
            })
        );
    }
    Ok(())
}
