//! Signing keys of a test's own, so that its services verify tokens (authentication on) and
//! the test mints the tokens of whoever it plays.

use platform::auth::{Role, Signer};
use std::{path::PathBuf, time::Duration};

/// An HS256 key in a temporary directory, removed when dropped.
pub struct Keys {
    dir: PathBuf,
    pub key: PathBuf,
}

impl Keys {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("leads-keys-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let key = dir.join("local.key");
        let secret: String = (0..48).map(|_| char::from(b'a' + rand::random::<u8>() % 26)).collect();
        std::fs::write(&key, secret).expect("the key file");
        Self { dir, key }
    }

    /// A token for `sub` living an hour; an agent's acts as the agent of that name.
    pub fn token(&self, sub: &str, role: Role, orgs: &[&str]) -> String {
        let orgs = orgs.iter().map(|&org| org.to_owned()).collect();
        let agent_id = (role == Role::Agent).then(|| sub.to_owned());
        Signer::load(&self.key)
            .and_then(|signer| signer.mint_for(sub, role, orgs, agent_id, Duration::from_secs(3600)))
            .expect("a token")
    }

    /// A token of the right shape signed with another key.
    pub fn forged() -> String {
        Keys::new().token("mallory", Role::Service, &["*"])
    }

    /// `env`'s services verify tokens with this key and sign their own with it.
    pub fn secure(&self, env: &mut crate::TestEnv) {
        env.settings.auth.signing_key_file = Some(self.key.clone());
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// `message` as a request carrying `token` as its bearer, when there is one.
pub fn with<T>(token: Option<&str>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("a header value"));
    }
    request
}
