//! What an operator's desk works on: services on a fresh environment and leads made for it
//! through the real ingest path, for the assignment and follow-up tests and the bench.

use crate::{Node, TestEnv, all_leads, chat_event, eventually, pb, phone};
use leads_proto::v1::lead_service_client::LeadServiceClient;
use platform::ServiceName;
use std::time::Duration;
use tonic::transport::Channel;

pub struct Desk {
    pub node: Node,
    pub env: TestEnv,
    pub leads: LeadServiceClient<Channel>,
}

impl Desk {
    /// A fresh environment with `services` running in-process (the lead service among them).
    pub async fn start(services: &[ServiceName]) -> anyhow::Result<Self> {
        Self::start_in(TestEnv::new().await?, services).await
    }

    /// `services` running in-process on `env`, a fresh environment whose settings the caller
    /// chose (the bench's production pools rather than the tests' small ones); `env` is
    /// cleaned up should they fail to start.
    pub async fn start_in(env: TestEnv, services: &[ServiceName]) -> anyhow::Result<Self> {
        let node = match env.start(services).await {
            Ok(node) => node,
            Err(error) => {
                env.cleanup().await?;
                return Err(error);
            }
        };
        let leads = node.lead().await?;
        Ok(Self { node, env, leads })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.node.stop().await?;
        self.env.cleanup().await
    }

    /// `count` leads of `org`, one per contact (`phone(n)`), each opened by a chat message
    /// with `text`; waits up to `deadline` for all of them.
    pub async fn ingest_leads(
        &self,
        org: &str,
        count: u32,
        text: &str,
        deadline: Duration,
    ) -> anyhow::Result<Vec<pb::Lead>> {
        for n in 0..count {
            self.env.publish_interaction(org, &chat_event(&format!("e-{n}"), &phone(n), text)).await?;
        }
        let client = self.leads.clone();
        Ok(eventually(deadline, "the leads", || {
            let mut client = client.clone();
            async move { all_leads(&mut client, org).await.ok().filter(|l| l.len() >= count as usize) }
        })
        .await)
    }
}
