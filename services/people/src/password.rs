//! Passwords and one-time codes (setup codes, sign-in codes, OpenID Connect states). A
//! password is kept only as an Argon2id hash (the crate's default parameters, OWASP's: 19 MiB,
//! two passes, one lane); a one-time code only as its SHA-256. Hashing is CPU- and memory-heavy on purpose, so it runs off the async workers and
//! at most one per core at once: a flood of sign-ins waits instead of starving the process.

use crate::error::PeopleError;
use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use base64::Engine;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_CHARS: usize = 256;
/// A one-time code is 43 characters; anything much longer is no code of ours.
const MAX_CODE_CHARS: usize = 128;

/// The rules a new password must meet: 12 to 256 characters, not all whitespace.
pub fn check_password(password: &str) -> Result<(), PeopleError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(PeopleError::invalid("password", format!("must be at least {MIN_PASSWORD_CHARS} characters")));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(PeopleError::invalid("password", format!("must be at most {MAX_PASSWORD_CHARS} characters")));
    }
    if password.trim().is_empty() {
        return Err(PeopleError::invalid("password", "must not be only whitespace"));
    }
    Ok(())
}

/// A new one-time code (32 random bytes from the system's generator, unpadded base64url) and
/// the SHA-256 kept of it.
pub struct OneTimeCode {
    pub code: String,
    pub hash: Vec<u8>,
}

impl OneTimeCode {
    pub fn new() -> Result<Self, PeopleError> {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| PeopleError::internal("the system's random source failed"))?;
        let code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let hash = code_hash(&code);
        Ok(Self { code, hash })
    }
}

/// What a one-time code is looked up by; `None` for text that cannot be a code.
pub fn lookup_hash(code: &str) -> Option<Vec<u8>> {
    let code = code.trim();
    (!code.is_empty() && code.len() <= MAX_CODE_CHARS).then(|| code_hash(code))
}

/// The unpadded base64url SHA-256 of `text`: a PKCE S256 code challenge of its verifier.
pub fn sha256_base64url(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(code_hash(text))
}

fn code_hash(code: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, code.as_bytes()).as_ref().to_vec()
}

/// Hashes and checks passwords, one per core at a time.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// The hash of a password no one knows, checked when an account has none of its own so
    /// that an unknown email takes as long to refuse as a wrong password.
    dummy: Arc<str>,
}

impl Hasher {
    pub async fn new() -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let unknowable = OneTimeCode::new().map_err(|e| anyhow::anyhow!("{e}"))?.code;
        let dummy = tokio::task::spawn_blocking(move || hash_now(&unknowable)).await??;
        Ok(Self { permits: Arc::new(Semaphore::new(cores)), dummy: dummy.into() })
    }

    /// The PHC string of `password` under a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, PeopleError> {
        let _permit = self.permits.acquire().await.map_err(|_| PeopleError::internal("the hasher is closed"))?;
        tokio::task::spawn_blocking(move || hash_now(&password))
            .await
            .map_err(|e| PeopleError::internal(format!("hashing stopped: {e}")))?
            .map_err(|e| PeopleError::internal(format!("hashing failed: {e}")))
    }

    /// Whether `password` matches `hash`. Without a hash the dummy is checked all the same, and
    /// the answer is no.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, PeopleError> {
        let _permit = self.permits.acquire().await.map_err(|_| PeopleError::internal("the hasher is closed"))?;
        let dummy = self.dummy.clone();
        tokio::task::spawn_blocking(move || {
            let matches = verify_now(&password, hash.as_deref().unwrap_or(&dummy));
            matches && hash.is_some()
        })
        .await
        .map_err(|e| PeopleError::internal(format!("checking a password stopped: {e}")))
    }
}

fn hash_now(password: &str) -> anyhow::Result<String> {
    let hash = Argon2::default().hash_password(password.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(hash.to_string())
}

/// A stored hash that does not parse matches nothing.
fn verify_now(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_twelve_to_256_characters_and_not_only_whitespace() {
        assert!(check_password("correct horse").is_ok());
        assert!(check_password("ééééééééééééé").is_ok(), "characters, not bytes");
        assert!(check_password(&"x".repeat(256)).is_ok());
        for (password, says) in
            [("short", "at least 12"), (&"x".repeat(257), "at most 256"), ("  \t\n        ", "whitespace")]
        {
            let error = check_password(password).expect_err(password).to_string();
            assert!(error.starts_with("password: ") && error.contains(says), "{error}");
        }
    }

    #[test]
    fn one_time_codes_are_random_and_kept_only_as_their_hash() {
        let (one, two) = (OneTimeCode::new().unwrap(), OneTimeCode::new().unwrap());
        assert_eq!(one.code.len(), 43);
        assert_ne!(one.code, two.code);
        assert_eq!(lookup_hash(&one.code), Some(one.hash.clone()));
        assert_eq!(lookup_hash(&format!(" {} ", one.code)), Some(one.hash));
        assert_eq!(lookup_hash(""), None);
        assert_eq!(lookup_hash(&"a".repeat(500)), None);
    }

    #[test]
    fn the_pkce_challenge_is_rfc_7636s() {
        // RFC 7636, appendix B.
        let challenge = sha256_base64url("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[tokio::test]
    async fn a_hash_matches_its_password_only_and_no_hash_matches_nothing() {
        let hasher = Hasher::new().await.unwrap();
        let hash = hasher.hash("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(hasher.verify("correct horse battery".into(), Some(hash.clone())).await.unwrap());
        assert!(!hasher.verify("correct horse battery!".into(), Some(hash)).await.unwrap());
        assert!(!hasher.verify("anything at all".into(), None).await.unwrap());
        assert!(!hasher.verify("anything at all".into(), Some("not a hash".into())).await.unwrap());
    }
}
