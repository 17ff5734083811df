//! Storage in Redis, shared by every edge. Keys, under `herald:acme:`:
//! `account` (credentials JSON), `cert:NAME` (a `StoredCertificate` as JSON), `versions` (a
//! hash: NAME -> notAfter), `generation` (incremented with every certificate stored),
//! `challenge:TOKEN` (expiring), `lock:NAME` (expiring, holding its owner's token).
//!
//! Private keys are in Redis: it must listen where only the edges reach it, with a password or
//! an ACL user (`redis://user:password@host/db`) where the network is shared.

use super::{StorageError, StorageResult, StoredCertificate, CHALLENGE_TTL, LOCK_TTL};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::Mutex;

const PREFIX: &str = "herald:acme:";
/// Every call is bounded: a handshake may be waiting on one, and Redis being down must cost
/// a second, not a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Deletes a lock only if this edge still holds it (another may have taken it since it
/// expired).
const UNLOCK: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

pub struct RedisStorage {
    client: redis::Client,
    /// One multiplexed connection, made again after an error.
    connection: Mutex<Option<MultiplexedConnection>>,
}

fn key(parts: &[&str]) -> String {
    let mut key = String::from(PREFIX);
    key.push_str(&parts.join(":"));
    key
}

impl RedisStorage {
    pub fn new(url: &str) -> Result<Self, String> {
        Ok(RedisStorage {
            client: redis::Client::open(url).map_err(|e| format!("{url:?}: {e}"))?,
            connection: Mutex::new(None),
        })
    }

    async fn connection(&self) -> StorageResult<MultiplexedConnection> {
        let mut held = self.connection.lock().await;
        if let Some(connection) = held.as_ref() {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| StorageError(format!("redis: cannot connect: {e}")))?;
        *held = Some(connection.clone());
        Ok(connection)
    }

    /// Runs one call on the connection; a failed call drops the connection, so the next one
    /// connects again (Redis restarted, or the network came back).
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> StorageResult<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection().await?;
        match tokio::time::timeout(CALL_TIMEOUT, f(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                    *self.connection.lock().await = None;
                }
                Err(StorageError(format!("redis: {what}: {e}")))
            }
            Err(_) => {
                *self.connection.lock().await = None;
                Err(StorageError(format!(
                    "redis: {what}: no answer within {CALL_TIMEOUT:?}"
                )))
            }
        }
    }

    async fn get(&self, key: String) -> StorageResult<Option<String>> {
        self.call("GET", |mut c| async move {
            redis::cmd("GET").arg(&key).query_async(&mut c).await
        })
        .await
    }

    async fn set(&self, key: String, value: &str) -> StorageResult<()> {
        self.call("SET", |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn del(&self, key: String) -> StorageResult<()> {
        self.call("DEL", |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async(&mut c).await
        })
        .await
    }
}

#[async_trait]
impl super::Storage for RedisStorage {
    async fn account(&self) -> StorageResult<Option<String>> {
        self.get(key(&["account"])).await
    }

    async fn set_account(&self, credentials: &str) -> StorageResult<()> {
        self.set(key(&["account"]), credentials).await
    }

    async fn forget_account(&self) -> StorageResult<()> {
        self.del(key(&["account"])).await
    }

    async fn versions(&self) -> StorageResult<HashMap<String, i64>> {
        self.call("HGETALL", |mut c| async move {
            redis::cmd("HGETALL")
                .arg(key(&["versions"]))
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn generation(&self) -> StorageResult<u64> {
        let value = self.get(key(&["generation"])).await?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    async fn certificate(&self, name: &str) -> StorageResult<Option<StoredCertificate>> {
        let Some(json) = self.get(key(&["cert", name])).await? else {
            return Ok(None);
        };
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| StorageError(format!("redis: cert:{name} is not readable: {e}")))
    }

    async fn store_certificate(&self, name: &str, cert: &StoredCertificate) -> StorageResult<()> {
        let json = serde_json::to_string(cert).expect("plain strings serialize");
        let not_after = cert.not_after;
        self.call("storing a certificate", |mut c| async move {
            // All three at once: no edge sees the new version without the certificate.
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(key(&["cert", name]))
                .arg(&json)
                .ignore()
                .cmd("HSET")
                .arg(key(&["versions"]))
                .arg(name)
                .arg(not_after)
                .ignore()
                .cmd("INCR")
                .arg(key(&["generation"]))
                .ignore()
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn challenge(&self, token: &str) -> StorageResult<Option<String>> {
        self.get(key(&["challenge", token])).await
    }

    async fn set_challenge(&self, token: &str, key_authorization: &str) -> StorageResult<()> {
        self.call("PSETEX", |mut c| async move {
            redis::cmd("PSETEX")
                .arg(key(&["challenge", token]))
                .arg(CHALLENGE_TTL.as_millis() as u64)
                .arg(key_authorization)
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn forget_challenge(&self, token: &str) -> StorageResult<()> {
        self.del(key(&["challenge", token])).await
    }

    async fn lock(&self, name: &str) -> StorageResult<Option<String>> {
        let token = super::random_token();
        let taken: Option<String> = self
            .call("SET NX", |mut c| {
                let token = token.clone();
                async move {
                    redis::cmd("SET")
                        .arg(key(&["lock", name]))
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(LOCK_TTL.as_millis() as u64)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(taken.map(|_| token))
    }

    async fn unlock(&self, name: &str, token: &str) -> StorageResult<()> {
        self.call("unlock", |mut c| async move {
            redis::Script::new(UNLOCK)
                .key(key(&["lock", name]))
                .arg(token)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }
}
