//! Where on-demand certificates live, shared by every edge: the ACME account, each name's
//! certificate and key, the HTTP-01 answers (so the ACME server may validate against any edge)
//! and a lock per name (so one edge orders it). Redis for many edges, a directory for one.
//!
//! Each edge keeps what it read in memory and serves from there: storage down means no new
//! certificates for a while, never a lost one.

mod directory;
mod redis_store;

use crate::config::AcmeStorage;
use async_trait::async_trait;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use directory::DirectoryStorage;
pub use redis_store::RedisStorage;

/// How long an HTTP-01 answer is kept: the ACME server validates within this (Pebble and
/// Let's Encrypt: seconds), and the order ends in less.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// How long one edge may hold a name's lock: longer than an order takes (bounded by the
/// order's own deadlines), short enough that a crashed edge does not block it for long.
pub const LOCK_TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct StorageError(pub String);

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// A certificate as stored: its chain and key (PEM), and its notAfter, which is its version
/// (a renewal always ends later).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredCertificate {
    pub chain: String,
    pub key: String,
    pub not_after: i64,
}

#[async_trait]
pub trait Storage: Send + Sync {
    /// The ACME account's credentials (JSON), if an account was made.
    async fn account(&self) -> StorageResult<Option<String>>;
    async fn set_account(&self, credentials: &str) -> StorageResult<()>;
    async fn forget_account(&self) -> StorageResult<()>;

    /// Every stored certificate's name and version (its notAfter).
    async fn versions(&self) -> StorageResult<HashMap<String, i64>>;
    /// Changes whenever a certificate is stored: a cheap "anything new?" for each sync.
    async fn generation(&self) -> StorageResult<u64>;
    async fn certificate(&self, name: &str) -> StorageResult<Option<StoredCertificate>>;
    async fn store_certificate(&self, name: &str, cert: &StoredCertificate) -> StorageResult<()>;

    async fn challenge(&self, token: &str) -> StorageResult<Option<String>>;
    async fn set_challenge(&self, token: &str, key_authorization: &str) -> StorageResult<()>;
    async fn forget_challenge(&self, token: &str) -> StorageResult<()>;

    /// Takes the name's lock for `LOCK_TTL` unless another edge holds it: its token, to give it
    /// back with.
    async fn lock(&self, name: &str) -> StorageResult<Option<String>>;
    async fn unlock(&self, name: &str, token: &str) -> StorageResult<()>;
}

pub fn open(config: &AcmeStorage) -> Result<Arc<dyn Storage>, String> {
    Ok(match config {
        AcmeStorage::Redis(url) => Arc::new(RedisStorage::new(url)?),
        AcmeStorage::Directory(dir) => Arc::new(DirectoryStorage::new(dir)?),
    })
}

/// A random token: a lock's owner.
pub fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An HTTP-01 token as RFC 8555 makes them (base64url); anything else is never looked up, so
/// a request path cannot name a key or a file of its choosing.
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `herald -t`: whether the storage answers now (a warning if not: edges start without it).
/// A directory is only looked at, not created.
pub fn check_now(config: &AcmeStorage) -> Result<(), String> {
    let storage: Arc<dyn Storage> = match config {
        AcmeStorage::Redis(url) => Arc::new(RedisStorage::new(url)?),
        AcmeStorage::Directory(dir) if dir.is_dir() => Arc::new(DirectoryStorage::at(dir)),
        AcmeStorage::Directory(dir) => {
            return Err(format!(
                "{} does not exist yet; it is made at start",
                dir.display()
            ))
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), storage.generation())
            .await
            .map_err(|_| "no answer within 3 s".to_owned())?
            .map(|_| ())
            .map_err(|e| e.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_base64url_only() {
        assert!(is_valid_token(
            "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
        ));
        for bad in ["", "../x", "a/b", "a.b", "a b", &"a".repeat(129)] {
            assert!(!is_valid_token(bad), "{bad:?}");
        }
    }
}
