//! One order, start to end, through instant-acme: the account (made once, kept in storage for
//! every edge), the order for one name, its HTTP-01 answer put in storage (so the ACME server
//! may fetch it from any edge), finalisation with a new P-256 key, and the chain.

use super::http::AcmeHttp;
use super::storage::{Storage, StorageError};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use log::{info, warn};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;

/// Polling an order: a steady 500 ms (the ACME server validates within seconds), for at most
/// 90 s; the HTTP client bounds each request on its own.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(500))
    .backoff(1.0)
    .timeout(Duration::from_secs(90));

/// A certificate just issued: its chain and key (PEM).
pub struct Issued {
    pub chain: String,
    pub key: String,
}

#[derive(Debug)]
pub enum IssueError {
    /// The ACME server limits this account or name: no order before the time given.
    RateLimited(SystemTime, String),
    Storage(StorageError),
    Failed(String),
}

impl std::fmt::Display for IssueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssueError::RateLimited(_, why) => write!(f, "rate limited: {why}"),
            IssueError::Storage(e) => write!(f, "storage: {e}"),
            IssueError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<StorageError> for IssueError {
    fn from(e: StorageError) -> Self {
        IssueError::Storage(e)
    }
}

/// When the server gave no Retry-After with its rate-limit error.
const RATE_LIMIT_PAUSE: Duration = Duration::from_secs(3600);

pub struct Issuer {
    http: AcmeHttp,
    directory: String,
    contact: Vec<String>,
    storage: Arc<dyn Storage>,
    account: Mutex<Option<Account>>,
}

impl Issuer {
    pub fn new(
        http: AcmeHttp,
        directory: String,
        contact: Vec<String>,
        storage: Arc<dyn Storage>,
    ) -> Self {
        Issuer {
            http,
            directory,
            contact,
            storage,
            account: Mutex::new(None),
        }
    }

    pub fn http(&self) -> &AcmeHttp {
        &self.http
    }

    fn failed(&self, what: &str, e: instant_acme::Error) -> IssueError {
        if let instant_acme::Error::Api(problem) = &e {
            if problem
                .r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":rateLimited"))
            {
                let until = self
                    .http
                    .retry_after()
                    .unwrap_or_else(|| SystemTime::now() + RATE_LIMIT_PAUSE);
                return IssueError::RateLimited(until, problem.to_string());
            }
        }
        IssueError::Failed(format!("{what}: {e}"))
    }

    /// The account every edge shares: read from storage, or made and stored.
    async fn account(&self) -> Result<Account, IssueError> {
        let mut held = self.account.lock().await;
        if let Some(account) = held.as_ref() {
            return Ok(account.clone());
        }
        let builder = || Account::builder_with_http(Box::new(self.http.clone()));
        if let Some(json) = self.storage.account().await? {
            match serde_json::from_str::<AccountCredentials>(&json) {
                Ok(credentials) => {
                    let account = builder()
                        .from_credentials(credentials)
                        .await
                        .map_err(|e| self.failed("loading the stored account", e))?;
                    *held = Some(account.clone());
                    return Ok(account);
                }
                Err(e) => warn!("acme: the stored account is not readable ({e}); making a new one"),
            }
        }
        let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory.clone(),
                None,
            )
            .await
            .map_err(|e| self.failed("creating the account", e))?;
        let json = serde_json::to_string(&credentials).expect("credentials serialize");
        self.storage.set_account(&json).await?;
        info!("acme: new account {} at {}", account.id(), self.directory);
        *held = Some(account.clone());
        Ok(account)
    }

    /// Orders a certificate for `name`; the caller holds the name's lock.
    pub async fn issue(&self, name: &str) -> Result<Issued, IssueError> {
        match self.try_issue(name).await {
            // The ACME server forgot the account (a test server restarted, or the account was
            // deactivated): a new one, once.
            Err(IssueError::Failed(why)) if why.contains("accountDoesNotExist") => {
                warn!("acme: the ACME server does not know the stored account; making a new one");
                *self.account.lock().await = None;
                self.storage.forget_account().await?;
                self.try_issue(name).await
            }
            other => other,
        }
    }

    async fn try_issue(&self, name: &str) -> Result<Issued, IssueError> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| self.failed("new order", e))?;
        let mut tokens = Vec::new();
        let answered = self.answer_challenges(&mut order, &mut tokens).await;
        let result = match answered {
            Ok(()) => self.finish(&mut order).await,
            Err(e) => Err(e),
        };
        for token in &tokens {
            if let Err(e) = self.storage.forget_challenge(token).await {
                warn!("acme: {e} (the answer expires by itself)");
            }
        }
        result
    }

    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        tokens: &mut Vec<String>,
    ) -> Result<(), IssueError> {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization =
                authorization.map_err(|e| self.failed("reading an authorization", e))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                // Validated recently for this account: nothing to answer.
                AuthorizationStatus::Valid => continue,
                status => return Err(IssueError::Failed(format!("authorization is {status:?}"))),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| IssueError::Failed("the ACME server offers no http-01".into()))?;
            let token = challenge.token.clone();
            let key_authorization = challenge.key_authorization().as_str().to_owned();
            self.storage
                .set_challenge(&token, &key_authorization)
                .await?;
            tokens.push(token);
            challenge
                .set_ready()
                .await
                .map_err(|e| self.failed("challenge ready", e))?;
        }
        Ok(())
    }

    async fn finish(&self, order: &mut instant_acme::Order) -> Result<Issued, IssueError> {
        let status = order
            .poll_ready(&POLL)
            .await
            .map_err(|e| self.failed("waiting for validation", e))?;
        if status != OrderStatus::Ready {
            let detail = order
                .state()
                .error
                .as_ref()
                .map(|problem| problem.to_string())
                .unwrap_or_else(|| format!("order is {status:?}"));
            return Err(IssueError::Failed(format!("validation failed: {detail}")));
        }
        let key = order
            .finalize()
            .await
            .map_err(|e| self.failed("finalizing", e))?;
        let chain = order
            .poll_certificate(&POLL)
            .await
            .map_err(|e| self.failed("downloading the certificate", e))?;
        Ok(Issued { chain, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::storage::DirectoryStorage;

    fn issuer() -> (tempfile::TempDir, Issuer) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(DirectoryStorage::new(&dir.path().join("acme")).unwrap());
        let http = AcmeHttp::new(None).unwrap();
        let issuer = Issuer::new(http, "https://127.0.0.1:1/dir".into(), vec![], storage);
        (dir, issuer)
    }

    fn problem(kind: &str) -> instant_acme::Error {
        let json = format!(r#"{{"type": "urn:ietf:params:acme:error:{kind}", "detail": "d"}}"#);
        instant_acme::Error::Api(serde_json::from_str(&json).unwrap())
    }

    #[test]
    fn a_rate_limit_pauses_orders_and_other_errors_fail_the_order() {
        let (_dir, issuer) = issuer();
        let before = SystemTime::now();
        match issuer.failed("new order", problem("rateLimited")) {
            IssueError::RateLimited(until, _) => {
                let pause = until.duration_since(before).unwrap();
                assert!(
                    pause >= RATE_LIMIT_PAUSE && pause < RATE_LIMIT_PAUSE * 2,
                    "{pause:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        match issuer.failed("new order", problem("badCSR")) {
            IssueError::Failed(why) => assert!(why.starts_with("new order: "), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
