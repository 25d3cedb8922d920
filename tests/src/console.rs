//! The console on every service of a fresh environment, with tokens verified, and people of
//! organisation `acme` who sign in with a password, as the directory's own flow makes them.

use crate::{Node, TestEnv, browserless::Browserless, pb};
use leads_proto::v1::people_service_client::PeopleServiceClient;
use platform::{
    ServiceName,
    auth::{Role, Signer},
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The organisation people are added to.
pub const ORG: &str = "acme";
pub const PASSWORD: &str = "correct horse battery staple";

pub struct Console {
    pub env: TestEnv,
    pub node: Node,
    pub addr: std::net::SocketAddr,
    token: CancellationToken,
    key_dir: std::path::PathBuf,
}

impl Console {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// The console on an environment whose settings `configure` changed first (webhooks allowed
    /// to a local receiver, say).
    pub async fn start_with(configure: impl FnOnce(&mut platform::Settings)) -> anyhow::Result<Self> {
        let key_dir = std::env::temp_dir().join(format!("leads-console-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&key_dir)?;
        let key = key_dir.join("local.key");
        std::fs::write(&key, "s".repeat(24) + &uuid::Uuid::new_v4().simple().to_string())?;
        let mut env = TestEnv::new().await?;
        env.settings.auth.signing_key_file = Some(key);
        configure(&mut env.settings);
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

    /// A token of an admin of `acme`, minted with the environment's key.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        let key = self.env.settings.auth.signing_key_file.as_ref().expect("a signing key");
        let signer = Signer::with_settings(key, &self.env.settings.auth)?;
        signer.mint("root@acme.test", Role::Admin, vec![ORG.into()], Duration::from_secs(600))
    }

    /// A person with a password, added by an admin as the directory's own flow does.
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
        people.set_password(pb::SetPasswordRequest { setup_code: added.setup_code, password: PASSWORD.into() }).await?;
        Ok(())
    }

    /// A browser signed in as the person, on the Leads page.
    pub async fn signed_in(&self, email: &str) -> anyhow::Result<Browserless> {
        let mut browser = Browserless::new(self.addr);
        let csrf = browser.get("/sign-in").await?.csrf();
        let fields = [("_csrf", csrf.as_str()), ("org_id", ORG), ("email", email), ("password", PASSWORD)];
        let answer = browser.post("/sign-in", &fields).await?;
        anyhow::ensure!(answer.status == 303 && answer.header("location") == "/leads", "sign-in: {}", answer.body);
        Ok(browser)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.node.stop().await?;
        std::fs::remove_dir_all(&self.key_dir).ok();
        self.env.cleanup().await
    }
}
