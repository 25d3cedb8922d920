//! gRPC over TLS with client certificates (mTLS), certificates from files: callers without a
//! certificate signed by the configured CA, or without TLS, are turned away, and the services
//! call each other over the same mutual TLS.

use leads_proto::v1::{assignment_service_client::AssignmentServiceClient, lead_service_client::LeadServiceClient};
use leads_tests::{TestEnv, chat_event, eventually, pb, phone};
use platform::ServiceName;
use std::{path::Path, time::Duration};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const ORG: &str = "acme";

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("openssl").current_dir(dir).args(args).output()?;
    anyhow::ensure!(status.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&status.stderr));
    Ok(())
}

/// A CA, and two certificates it signs for 127.0.0.1: the services' and an operator's.
fn certificates(dir: &Path) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=leads test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    )?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    )?;
    for name in ["service", "operator"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                &format!("{name}.pem"),
            ],
        )?;
    }
    Ok(())
}

async fn channel(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> anyhow::Result<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{addr}"))?.connect_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_callers_with_a_certificate_of_the_ca_are_served_and_services_call_each_other_over_mtls()
-> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("leads-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    certificates(&dir)?;
    let mut env = TestEnv::new().await?;
    env.settings.grpc.tls_cert_file = Some(dir.join("service.pem"));
    env.settings.grpc.tls_key_file = Some(dir.join("service.key"));
    env.settings.grpc.tls_client_ca_file = Some(dir.join("ca.pem"));
    env.settings.grpc.tls_ca_file = Some(dir.join("ca.pem"));
    env.settings.validate()?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Assignment]).await?;
    let ca = Certificate::from_pem(std::fs::read(dir.join("ca.pem"))?);
    let operator =
        Identity::from_pem(std::fs::read(dir.join("operator.pem"))?, std::fs::read(dir.join("operator.key"))?);
    let trusted = ClientTlsConfig::new().ca_certificate(ca.clone()).identity(operator);

    let mut leads = LeadServiceClient::new(channel(node.addr(ServiceName::Lead), Some(trusted.clone())).await?);
    let page = leads.list_leads(pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() }).await?;
    assert!(page.into_inner().leads.is_empty());

    // Plaintext is not spoken, and TLS without a client certificate is refused.
    let plain = match channel(node.addr(ServiceName::Lead), None).await {
        Ok(channel) => LeadServiceClient::new(channel)
            .list_leads(pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() })
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(plain, "a plaintext call must fail");
    let anonymous = ClientTlsConfig::new().ca_certificate(ca);
    let refused = match channel(node.addr(ServiceName::Lead), Some(anonymous)).await {
        Ok(channel) => LeadServiceClient::new(channel)
            .list_leads(pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() })
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a call without a client certificate must fail");

    // Assignment reaches the lead service over the same mutual TLS.
    env.publish_interaction(ORG, &chat_event("tls-1", &phone(1), "hello")).await?;
    let lead = eventually(Duration::from_secs(30), "a lead", || {
        let mut leads = leads.clone();
        async move { leads_tests::all_leads(&mut leads, ORG).await.ok()?.into_iter().next() }
    })
    .await;
    let mut assignment =
        AssignmentServiceClient::new(channel(node.addr(ServiceName::Assignment), Some(trusted)).await?);
    assignment
        .upsert_agent(pb::UpsertAgentRequest {
            org_id: ORG.into(),
            agent_id: "ann".into(),
            name: "Ann".into(),
            ..Default::default()
        })
        .await?;
    assignment
        .assign_lead(pb::AssignLeadRequest {
            org_id: ORG.into(),
            lead_id: lead.id.clone(),
            agent_id: "ann".into(),
            actor: "op".into(),
            ..Default::default()
        })
        .await?;
    let assigned = leads.get_lead(pb::GetLeadRequest { org_id: ORG.into(), lead_id: lead.id }).await?.into_inner();
    assert_eq!(assigned.agent_id, "ann");
    node.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    env.cleanup().await
}
