//! HTTP basic authentication for password-protected sites (`password:` in a site's settings).
//! bcrypt costs tens of milliseconds of CPU per check, by design, so:
//! - credentials that passed are remembered per site and user, as an HMAC of the password
//!   under a key made at start (never the password itself), checked in constant time, and
//!   only while the user's hash is unchanged; a returning visitor costs a hash, not a bcrypt;
//! - a client with `MAX_FAILURES` wrong passwords in a minute gets 429 before any bcrypt;
//! - at most `parallel_checks` bcrypt checks run at once, off the async runtime, and a flood
//!   beyond `MAX_WAITING` waiting checks is refused (429) rather than queued without end.

use crate::backend::site_settings::Password;
use crate::per_client::client_key;
use base64::Engine;
use dashmap::DashMap;
use ring::hmac;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Wrong passwords one client may send per `WINDOW`.
const MAX_FAILURES: usize = 10;
const WINDOW: Duration = Duration::from_secs(60);
/// Checks waiting for a bcrypt slot before further ones are refused.
const MAX_WAITING: usize = 256;
/// Remembered credentials are checked with bcrypt again after this long.
const REMEMBER_FOR: Duration = Duration::from_secs(3600);
/// More remembered credentials than this and they are all forgotten (a flood of made-up
/// users cannot get here: only credentials that passed are remembered).
const MAX_REMEMBERED: usize = 100_000;
/// Past this many clients, windows that have ended are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// What to answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// 401 with `WWW-Authenticate`: no credentials, or wrong ones.
    Denied,
    /// 429: too many wrong passwords from this client, or too many checks at once.
    TooMany(Duration),
}

struct Remembered {
    hash: String,
    tag: hmac::Tag,
    at: Instant,
}

struct Failures {
    began: Instant,
    count: usize,
}

pub struct BasicAuth {
    key: hmac::Key,
    remembered: DashMap<(String, String), Remembered>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    checks: Semaphore,
    waiting: AtomicUsize,
}

impl BasicAuth {
    pub fn new(parallel_checks: usize) -> BasicAuth {
        let rng = ring::rand::SystemRandom::new();
        BasicAuth {
            key: hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the system's random source"),
            remembered: DashMap::new(),
            failures: Mutex::new(HashMap::new()),
            checks: Semaphore::new(parallel_checks.max(1)),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Checks the request's `Authorization` header against the site's users.
    pub async fn check(
        &self,
        site: &str,
        password: &Password,
        authorization: Option<&[u8]>,
        client: Option<IpAddr>,
    ) -> Verdict {
        let Some((user, secret)) = authorization.and_then(credentials) else {
            return Verdict::Denied;
        };
        if let Some(wait) = client.and_then(|client| self.blocked_for(client, Instant::now())) {
            return Verdict::TooMany(wait);
        }
        let Some(hash) = password.users.get(&user) else {
            // An unknown user costs a bcrypt check all the same: answering at once would
            // tell a guesser which user names exist.
            if let Err(wait) = self.bcrypt(secret, stand_in(password)).await {
                return Verdict::TooMany(wait);
            }
            self.failed(client);
            return Verdict::Denied;
        };
        let key = (site.to_owned(), user);
        let tag_input = tag_input(site, &key.1, &secret);
        if let Some(known) = self.remembered.get(&key) {
            if known.hash == *hash
                && known.at.elapsed() < REMEMBER_FOR
                && hmac::verify(&self.key, &tag_input, known.tag.as_ref()).is_ok()
            {
                return Verdict::Allowed;
            }
        }
        let ok = match self.bcrypt(secret, hash.clone()).await {
            Ok(ok) => ok,
            Err(wait) => return Verdict::TooMany(wait),
        };
        if !ok {
            self.failed(client);
            return Verdict::Denied;
        }
        if self.remembered.len() >= MAX_REMEMBERED {
            self.remembered.clear();
        }
        self.remembered.insert(
            key,
            Remembered {
                hash: hash.clone(),
                tag: hmac::sign(&self.key, &tag_input),
                at: Instant::now(),
            },
        );
        Verdict::Allowed
    }

    /// bcrypt's verdict, computed off the runtime within the limits on checks at once.
    async fn bcrypt(&self, secret: String, hash: String) -> Result<bool, Duration> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Duration::from_secs(1));
        }
        let permit = self.checks.acquire().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let _permit = permit.expect("the semaphore is never closed");
        let verified =
            tokio::task::spawn_blocking(move || bcrypt::verify(secret, &hash).unwrap_or(false))
                .await;
        Ok(verified.unwrap_or(false))
    }

    fn blocked_for(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().expect("never poisoned");
        let window = failures.get(&client_key(client))?;
        let elapsed = now.duration_since(window.began);
        (elapsed < WINDOW && window.count >= MAX_FAILURES).then(|| WINDOW - elapsed)
    }

    fn failed(&self, client: Option<IpAddr>) {
        let Some(client) = client else { return };
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("never poisoned");
        if failures.len() > PRUNE_ABOVE {
            failures.retain(|_, window| now.duration_since(window.began) < WINDOW);
        }
        let window = failures.entry(client_key(client)).or_insert(Failures {
            began: now,
            count: 0,
        });
        if now.duration_since(window.began) >= WINDOW {
            window.began = now;
            window.count = 0;
        }
        window.count += 1;
    }
}

/// A well-formed bcrypt hash no password matches, at the highest cost among the site's users'
/// hashes, so checking it takes as long as checking theirs.
fn stand_in(password: &Password) -> String {
    use std::str::FromStr;
    let cost = password
        .users
        .values()
        .filter_map(|hash| bcrypt::HashParts::from_str(hash).ok())
        .map(|parts| parts.get_cost())
        .max()
        .unwrap_or(bcrypt::DEFAULT_COST);
    // 22 characters of salt and 31 of hash, in bcrypt's alphabet.
    format!("$2b${cost:02}${}", ".".repeat(53))
}

/// What a remembered credential's HMAC covers: the site, the user and the password, each
/// length-prefixed so no two triples read alike.
fn tag_input(site: &str, user: &str, secret: &str) -> Vec<u8> {
    let mut input = Vec::with_capacity(site.len() + user.len() + secret.len() + 24);
    for part in [site, user, secret] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part.as_bytes());
    }
    input
}

/// `Basic base64(user:password)` (RFC 7617); the scheme's name in any case.
fn credentials(header: &[u8]) -> Option<(String, String)> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, secret) = decoded.split_once(':')?;
    Some((user.to_owned(), secret.to_owned()))
}

/// The `WWW-Authenticate` value for `realm` (checked to need no escaping).
pub fn challenge(realm: &str) -> String {
    format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, secret: &str) -> Vec<u8> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        format!("Basic {encoded}").into_bytes()
    }

    fn site_password() -> Password {
        // Cost 4, the lowest, to keep the test quick.
        let hash = bcrypt::hash("correct horse", 4).unwrap();
        Password {
            realm: "staging".into(),
            users: [("ann".to_owned(), hash)].into(),
        }
    }

    #[test]
    fn an_unknown_user_is_checked_against_a_hash_of_the_sites_cost_that_nothing_matches() {
        let mut password = site_password();
        password
            .users
            .insert("bob".into(), bcrypt::hash("x", 6).unwrap());
        let stand_in = stand_in(&password);
        let parts: bcrypt::HashParts = stand_in.parse().expect("well formed");
        assert_eq!(parts.get_cost(), 6, "the costliest of the site's hashes");
        for guess in ["", "correct horse", "x", "........"] {
            assert_eq!(
                bcrypt::verify(guess, &stand_in).ok(),
                Some(false),
                "{guess:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_right_password_passes_and_is_remembered_without_the_password() {
        let auth = BasicAuth::new(2);
        let password = site_password();
        let client = Some("192.0.2.1".parse().unwrap());
        let right = basic("ann", "correct horse");
        assert_eq!(
            auth.check("a.example", &password, Some(&right), client)
                .await,
            Verdict::Allowed
        );
        assert_eq!(auth.remembered.len(), 1);
        assert_eq!(
            auth.check("a.example", &password, Some(&right), client)
                .await,
            Verdict::Allowed
        );
        // Remembered per site: the same user elsewhere is checked on its own.
        let wrong = basic("ann", "correct horsE");
        assert_eq!(
            auth.check("a.example", &password, Some(&wrong), client)
                .await,
            Verdict::Denied
        );
        assert_eq!(
            auth.check("a.example", &password, None, client).await,
            Verdict::Denied
        );
        assert_eq!(
            auth.check("a.example", &password, Some(b"Bearer x"), client)
                .await,
            Verdict::Denied
        );
        assert_eq!(
            auth.check(
                "a.example",
                &password,
                Some(&basic("bob", "correct horse")),
                client
            )
            .await,
            Verdict::Denied
        );
        // A changed hash (a new password) is not satisfied by the remembered one.
        let changed = Password {
            realm: "staging".into(),
            users: [("ann".to_owned(), bcrypt::hash("new one", 4).unwrap())].into(),
        };
        assert_eq!(
            auth.check("a.example", &changed, Some(&right), client)
                .await,
            Verdict::Denied
        );
    }

    #[tokio::test]
    async fn a_client_guessing_passwords_is_stopped_and_others_are_not() {
        let auth = BasicAuth::new(2);
        let password = site_password();
        let guesser = Some("192.0.2.9".parse().unwrap());
        for i in 0..MAX_FAILURES {
            let guess = basic("ann", &format!("guess {i}"));
            assert_eq!(
                auth.check("a.example", &password, Some(&guess), guesser)
                    .await,
                Verdict::Denied
            );
        }
        let right = basic("ann", "correct horse");
        assert!(matches!(
            auth.check("a.example", &password, Some(&right), guesser)
                .await,
            Verdict::TooMany(_)
        ));
        let other = Some("192.0.2.10".parse().unwrap());
        assert_eq!(
            auth.check("a.example", &password, Some(&right), other)
                .await,
            Verdict::Allowed
        );
    }

    #[test]
    fn credentials_are_read_as_rfc_7617_says() {
        assert_eq!(
            credentials(b"basic YW5uOmE6Yg=="),
            Some(("ann".into(), "a:b".into())),
            "the password may hold colons"
        );
        assert_eq!(credentials(b"Basic !!!"), None);
        assert_eq!(credentials(b"Basic"), None);
        assert_ne!(tag_input("ab", "c", "d"), tag_input("a", "bc", "d"));
    }
}
