//! `leads people`: how an operator adds a person and makes a one-click sign-in link, through
//! PeopleService at `endpoints.people`. Each call carries a token this command signs with
//! `auth.signing_key_file` for the one organisation, living five minutes, subject `leads-cli`.

use clap::{Args, Subcommand, ValueEnum};
use leads_proto::v1::{self as pb, people_service_client::PeopleServiceClient};
use platform::{Settings, auth::Role};
use std::{path::PathBuf, time::Duration};

/// The subject of the tokens this command signs: what the people audit records as the actor.
pub const SUBJECT: &str = "leads-cli";
const TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

#[derive(Subcommand)]
pub enum PeopleCommand {
    /// Adds a person (AddPerson) and prints their one-time setup code and the console page
    /// where they choose a password with it.
    Add {
        #[command(flatten)]
        person: Person,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: PersonRole,
        /// The agent whose leads the person works: required for an agent.
        #[arg(long)]
        agent_id: Option<String>,
        /// When the person is already there, say so and succeed without a change.
        #[arg(long)]
        if_absent: bool,
    },
    /// Prints a one-click sign-in link for an active person (CreateSignInCode): it signs them in
    /// once, within people.sign_in_code_ttl_secs (ten minutes by default).
    SignInLink {
        #[command(flatten)]
        person: Person,
    },
}

#[derive(Args)]
pub struct Person {
    #[arg(long)]
    org: String,
    #[arg(long)]
    email: String,
    /// Where people reach the console; http://127.0.0.1:<console.port> by default.
    #[arg(long)]
    console_url: Option<String>,
    /// The signing key file (HS256 secret, or RS256/EdDSA private key PEM); by default
    /// auth.signing_key_file (LEADS_AUTH_SIGNING_KEY_FILE).
    #[arg(long)]
    key: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PersonRole {
    Admin,
    Operator,
    Agent,
}

impl From<PersonRole> for pb::PersonRole {
    fn from(role: PersonRole) -> Self {
        match role {
            PersonRole::Admin => pb::PersonRole::Admin,
            PersonRole::Operator => pb::PersonRole::Operator,
            PersonRole::Agent => pb::PersonRole::Agent,
        }
    }
}

impl Person {
    fn console_url(&self, settings: &Settings) -> String {
        match &self.console_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://127.0.0.1:{}", settings.console.port),
        }
    }

    /// A client of the people service, and the token of a call as `role` over this person's
    /// organisation.
    async fn client(
        &self,
        settings: &Settings,
        role: Role,
    ) -> anyhow::Result<(PeopleServiceClient<tonic::transport::Channel>, String)> {
        let key = self.key.clone().or_else(|| settings.auth.signing_key_file.clone()).ok_or_else(|| {
            anyhow::anyhow!("no signing key: pass --key or set LEADS_AUTH_SIGNING_KEY_FILE (auth.signing_key_file)")
        })?;
        let token =
            leads::ctl::mint_token(&key, &settings.auth, SUBJECT, role, vec![self.org.clone()], None, TOKEN_TTL)?;
        let endpoint = settings.endpoints.people.clone();
        let client = PeopleServiceClient::connect(endpoint.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the people service at {endpoint}: {e}"))?;
        Ok((client, token))
    }
}

/// A refusal as a person reads it: its code and message, without tonic's details.
fn refused(status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("the people service refused: {:?}: {}", status.code(), status.message())
}

/// When a code expires, as the answer says.
fn until(at: Option<String>) -> String {
    at.unwrap_or_else(|| "an unknown time".to_owned())
}

const UTC_SECONDS: &str = "%Y-%m-%d %H:%M:%S UTC";

pub async fn run(settings: &Settings, command: PeopleCommand) -> anyhow::Result<()> {
    match command {
        PeopleCommand::Add { person, name, role, agent_id, if_absent } => {
            // AddPerson is for admins alone: the token speaks as one, the audit names this command.
            let (mut client, token) = person.client(settings, Role::Admin).await?;
            let request = pb::AddPersonRequest {
                org_id: person.org.clone(),
                email: person.email.clone(),
                name,
                role: pb::PersonRole::from(role) as i32,
                agent_id: agent_id.unwrap_or_default(),
            };
            let added = match client.add_person(leads::ctl::authorized(request, Some(&token))?).await {
                Ok(added) => added.into_inner(),
                Err(status) if if_absent && status.code() == tonic::Code::AlreadyExists => {
                    eprintln!("{} is already in {}", person.email, person.org);
                    return Ok(());
                }
                Err(status) => return Err(refused(&status)),
            };
            let email = added.person.as_ref().map_or(person.email.as_str(), |p| p.email.as_str());
            println!("added {email} to {}", person.org);
            println!(
                "setup code, valid until {}: {}",
                until(
                    added
                        .setup_code_expires_at
                        .as_ref()
                        .and_then(contracts::time::from_timestamp)
                        .map(|at| at.format(UTC_SECONDS).to_string())
                ),
                added.setup_code
            );
            println!("choose a password at {}/set-password?code={}", person.console_url(settings), added.setup_code);
            Ok(())
        }
        PeopleCommand::SignInLink { person } => {
            let (mut client, token) = person.client(settings, Role::Admin).await?;
            let request = pb::CreateSignInCodeRequest { org_id: person.org.clone(), email: person.email.clone() };
            let created = client
                .create_sign_in_code(leads::ctl::authorized(request, Some(&token))?)
                .await
                .map_err(|status| refused(&status))?
                .into_inner();
            println!("{}/sign-in/code?code={}", person.console_url(settings), created.code);
            eprintln!(
                "signs {} in once, until {}",
                person.email,
                until(
                    created
                        .expires_at
                        .as_ref()
                        .and_then(contracts::time::from_timestamp)
                        .map(|at| at.format(UTC_SECONDS).to_string())
                )
            );
            Ok(())
        }
    }
}
