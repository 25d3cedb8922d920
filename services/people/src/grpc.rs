use crate::{
    PeopleContext, codes,
    directory::{self, Actor, Changes, NewPerson, PersonRow, Session, WithCode},
    error::PeopleError,
    oidc::{self, ProviderRow, ProviderSettings},
};
use contracts::time::timestamp;
use contracts::values::{MAX_AGENT_ID_CHARS, bounded, limits};
use leads_proto::v1::{self as pb, people_service_server::PeopleService};
use platform::{
    auth::{Caller, Role},
    egress::EgressPolicy,
};
use tonic::{Request, Response, Status};

pub struct PeopleApi {
    pub ctx: PeopleContext,
}

fn org(org_id: &str) -> Result<(), PeopleError> {
    contracts::values::validate_org_id(org_id).map_err(|r| PeopleError::invalid("org_id", r.reason))
}

fn email(value: &str) -> Result<String, PeopleError> {
    bounded("email", value, limits::MAX_EMAIL_CHARS)?;
    directory::normalize_email(value)
}

fn name(value: &str) -> Result<String, PeopleError> {
    bounded("name", value, limits::MAX_NAME_CHARS)?;
    if value.chars().any(char::is_control) {
        return Err(PeopleError::invalid("name", "must not hold control characters"));
    }
    Ok(value.trim().to_owned())
}

/// Empty: no agent.
fn agent_id(value: &str) -> Result<Option<String>, PeopleError> {
    bounded("agent_id", value, MAX_AGENT_ID_CHARS)?;
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    contracts::values::validate_agent_id(value)?;
    Ok(Some(value.to_owned()))
}

fn role(value: i32) -> Result<Role, PeopleError> {
    match pb::PersonRole::try_from(value) {
        Ok(pb::PersonRole::Admin) => Ok(Role::Admin),
        Ok(pb::PersonRole::Operator) => Ok(Role::Operator),
        Ok(pb::PersonRole::Agent) => Ok(Role::Agent),
        Ok(pb::PersonRole::Unspecified) | Err(_) => {
            Err(PeopleError::invalid("role", "must be PERSON_ROLE_ADMIN, PERSON_ROLE_OPERATOR or PERSON_ROLE_AGENT"))
        }
    }
}

fn role_to_proto(role: &str) -> pb::PersonRole {
    match role {
        "admin" => pb::PersonRole::Admin,
        "operator" => pb::PersonRole::Operator,
        "agent" => pb::PersonRole::Agent,
        _ => pb::PersonRole::Unspecified,
    }
}

fn to_proto(row: PersonRow) -> pb::Person {
    pb::Person {
        org_id: row.org_id,
        email: row.email,
        name: row.name,
        role: role_to_proto(&row.role) as i32,
        agent_id: row.agent_id.unwrap_or_default(),
        active: row.active,
        has_password: row.has_password,
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
        last_sign_in_at: row.last_sign_in_at.map(timestamp),
        locked_until: row.locked_until.map(timestamp),
    }
}

/// The longest issuer, redirect URI, client id and secret taken: far beyond any real one.
const MAX_URL_CHARS: usize = 2048;
const MAX_CLIENT_ID_CHARS: usize = 512;
const MAX_CLIENT_SECRET_CHARS: usize = 2048;
const MAX_CLAIM_CHARS: usize = 64;
/// An authorization code is the provider's to shape; none is near this long.
const MAX_AUTHORIZATION_CODE_CHARS: usize = 4096;

fn url(field: &str, value: &str, check: impl Fn(&str) -> Result<(), String>) -> Result<String, PeopleError> {
    bounded(field, value, MAX_URL_CHARS)?;
    let value = value.trim();
    if value.is_empty() {
        return Err(PeopleError::invalid(field, "is required"));
    }
    check(value).map_err(|reason| PeopleError::invalid(field, reason))?;
    Ok(value.to_owned())
}

fn provider_settings(
    request: pb::SetOidcProviderRequest,
    policy: &EgressPolicy,
) -> Result<ProviderSettings, PeopleError> {
    let issuer = url("issuer", &request.issuer, |issuer| oidc::check_provider_url(issuer, policy))?;
    let redirect_uri = url("redirect_uri", &request.redirect_uri, oidc::check_redirect_uri)?;
    bounded("client_id", &request.client_id, MAX_CLIENT_ID_CHARS)?;
    let client_id = request.client_id.trim();
    if client_id.is_empty() || client_id.chars().any(char::is_control) {
        return Err(PeopleError::invalid("client_id", "is required, without control characters"));
    }
    bounded("client_secret", &request.client_secret, MAX_CLIENT_SECRET_CHARS)?;
    if request.client_secret.chars().any(char::is_control) {
        return Err(PeopleError::invalid("client_secret", "must not hold control characters"));
    }
    bounded("email_claim", &request.email_claim, MAX_CLAIM_CHARS)?;
    let email_claim = match request.email_claim.trim() {
        "" => oidc::DEFAULT_EMAIL_CLAIM,
        claim if claim.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')) => claim,
        _ => return Err(PeopleError::invalid("email_claim", "must be a claim name (letters, digits, _ - . : /)")),
    };
    Ok(ProviderSettings {
        org_id: request.org_id,
        issuer,
        client_id: client_id.to_owned(),
        client_secret: Some(request.client_secret).filter(|secret| !secret.is_empty()),
        redirect_uri,
        email_claim: email_claim.to_owned(),
    })
}

fn provider_to_proto(row: ProviderRow) -> pb::OidcProvider {
    pb::OidcProvider {
        org_id: row.org_id,
        issuer: row.issuer,
        client_id: row.client_id,
        has_client_secret: row.has_client_secret,
        redirect_uri: row.redirect_uri,
        email_claim: row.email_claim,
        updated_at: Some(timestamp(row.updated_at)),
    }
}

impl From<Session> for pb::SignInResponse {
    fn from(session: Session) -> Self {
        pb::SignInResponse {
            token: session.token,
            expires_at: Some(timestamp(session.expires_at)),
            person: Some(to_proto(session.person)),
        }
    }
}

/// The caller of an admin RPC about `org_id`, once the token is found to grant it.
fn admin<T>(request: &Request<T>, org_id: &str) -> Result<Actor, Status> {
    let caller = Caller::of(request)?;
    caller.check_org(org_id)?;
    org(org_id)?;
    let own_email = match &caller {
        Caller::Token(claims) => Some(claims.sub.clone()),
        _ => None,
    };
    Ok(Actor { recorded: caller.actor(""), own_email })
}

impl From<WithCode> for pb::AddPersonResponse {
    fn from(added: WithCode) -> Self {
        pb::AddPersonResponse {
            person: Some(to_proto(added.person)),
            setup_code: added.setup_code,
            setup_code_expires_at: Some(timestamp(added.expires_at)),
        }
    }
}

#[tonic::async_trait]
impl PeopleService for PeopleApi {
    async fn add_person(
        &self,
        request: Request<pb::AddPersonRequest>,
    ) -> Result<Response<pb::AddPersonResponse>, Status> {
        let actor = admin(&request, &request.get_ref().org_id)?;
        let request = request.into_inner();
        let person = NewPerson {
            email: email(&request.email)?,
            name: name(&request.name)?,
            role: role(request.role)?,
            agent_id: agent_id(&request.agent_id)?,
            org_id: request.org_id,
        };
        let added = directory::add(&self.ctx, &actor, person).await?;
        Ok(Response::new(added.into()))
    }

    async fn list_people(
        &self,
        request: Request<pb::ListPeopleRequest>,
    ) -> Result<Response<pb::ListPeopleResponse>, Status> {
        admin(&request, &request.get_ref().org_id)?;
        let people = directory::list(&self.ctx, &request.get_ref().org_id).await?;
        Ok(Response::new(pb::ListPeopleResponse { people: people.into_iter().map(to_proto).collect() }))
    }

    async fn update_person(&self, request: Request<pb::UpdatePersonRequest>) -> Result<Response<pb::Person>, Status> {
        let actor = admin(&request, &request.get_ref().org_id)?;
        let request = request.into_inner();
        let email = email(&request.email)?;
        let changes = Changes {
            name: request.name.as_deref().map(name).transpose()?,
            role: request.role.map(role).transpose()?,
            agent_id: request.agent_id.as_deref().map(agent_id).transpose()?,
        };
        let row = directory::update(&self.ctx, &actor, &request.org_id, &email, changes).await?;
        Ok(Response::new(to_proto(row)))
    }

    async fn deactivate_person(
        &self,
        request: Request<pb::DeactivatePersonRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let actor = admin(&request, &request.get_ref().org_id)?;
        let email = email(&request.get_ref().email)?;
        let row = directory::deactivate(&self.ctx, &actor, &request.get_ref().org_id, &email).await?;
        Ok(Response::new(to_proto(row)))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let actor = admin(&request, &request.get_ref().org_id)?;
        let email = email(&request.get_ref().email)?;
        let reset = directory::reset_password(&self.ctx, &actor, &request.get_ref().org_id, &email).await?;
        Ok(Response::new(pb::ResetPasswordResponse {
            person: Some(to_proto(reset.person)),
            setup_code: reset.setup_code,
            setup_code_expires_at: Some(timestamp(reset.expires_at)),
        }))
    }

    /// Called without a token: the code is the credential.
    async fn set_password(
        &self,
        request: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        let request = request.into_inner();
        let (org_id, email) = directory::set_password(&self.ctx, &request.setup_code, request.password).await?;
        Ok(Response::new(pb::SetPasswordResponse { org_id, email }))
    }

    /// Called without a token: the password is the credential.
    async fn sign_in(&self, request: Request<pb::SignInRequest>) -> Result<Response<pb::SignInResponse>, Status> {
        let request = request.into_inner();
        org(&request.org_id)?;
        let email = email(&request.email)?;
        let session = directory::sign_in(&self.ctx, &request.org_id, &email, request.password).await?;
        Ok(Response::new(session.into()))
    }

    /// For admins and the platform's services (the auth layer's roles): the code is handed to
    /// the person, as a one-click link.
    async fn create_sign_in_code(
        &self,
        request: Request<pb::CreateSignInCodeRequest>,
    ) -> Result<Response<pb::CreateSignInCodeResponse>, Status> {
        // A code signs its person in, an admin too: only an admin of the organisation or one
        // of the platform's own services may make one, never a service token limited to some
        // organisations (an integration's, say).
        let caller = Caller::of(&request)?;
        if caller.is_service() && !caller.is_platform_service() {
            return Err(Status::permission_denied(
                "CreateSignInCode is for the organisation's admins and the platform's services",
            ));
        }
        let actor = admin(&request, &request.get_ref().org_id)?;
        let email = email(&request.get_ref().email)?;
        let (code, expires_at) = codes::create(&self.ctx, &actor, &request.get_ref().org_id, &email).await?;
        Ok(Response::new(pb::CreateSignInCodeResponse { code, expires_at: Some(timestamp(expires_at)) }))
    }

    /// Called without a token: the code is the credential.
    async fn sign_in_with_code(
        &self,
        request: Request<pb::SignInWithCodeRequest>,
    ) -> Result<Response<pb::SignInResponse>, Status> {
        let session = codes::sign_in(&self.ctx, &request.get_ref().code).await?;
        Ok(Response::new(session.into()))
    }

    async fn set_oidc_provider(
        &self,
        request: Request<pb::SetOidcProviderRequest>,
    ) -> Result<Response<pb::OidcProvider>, Status> {
        let actor = admin(&request, &request.get_ref().org_id)?;
        let settings = provider_settings(request.into_inner(), self.ctx.oidc.policy())?;
        let row = oidc::set_provider(&self.ctx, &actor, settings).await?;
        Ok(Response::new(provider_to_proto(row)))
    }

    /// Called without a token: it only says where to sign in.
    async fn begin_oidc_sign_in(
        &self,
        request: Request<pb::BeginOidcSignInRequest>,
    ) -> Result<Response<pb::BeginOidcSignInResponse>, Status> {
        org(&request.get_ref().org_id)?;
        let (authorization_url, state) = oidc::begin(&self.ctx, &request.get_ref().org_id).await?;
        Ok(Response::new(pb::BeginOidcSignInResponse { authorization_url, state }))
    }

    /// Called without a token: the state and the provider's code are the credential.
    async fn complete_oidc_sign_in(
        &self,
        request: Request<pb::CompleteOidcSignInRequest>,
    ) -> Result<Response<pb::SignInResponse>, Status> {
        let request = request.into_inner();
        bounded("code", &request.code, MAX_AUTHORIZATION_CODE_CHARS).map_err(PeopleError::from)?;
        if request.code.trim().is_empty() {
            return Err(PeopleError::invalid("code", "is required").into());
        }
        let session = oidc::complete(&self.ctx, &request.state, request.code.trim()).await?;
        Ok(Response::new(session.into()))
    }
}
