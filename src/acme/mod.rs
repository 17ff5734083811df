//! Certificates for custom domains on demand (`edge.tls.acme`), as Caddy's on-demand TLS: a
//! handshake (or a plain-HTTP request) for a site name with no certificate asks the operator's
//! `ask` endpoint, and an approved name is ordered from the ACME server (HTTP-01) while the
//! handshake waits up to `wait`. Every edge answers HTTP-01 from the shared storage, serves
//! what any edge stored (`sync`), and renews what it serves when a third of its lifetime is
//! left; a lock per name in storage makes one edge order it.
//!
//! The path of a name: `wait_for` / `trigger` -> `request` (pending) -> `ask` -> the queue
//! -> `work` (pacing) -> `order` (lock, issue, store) -> `install` -> served by
//! `certificate`, which the SNI resolver consults after the operator's own exact names.

pub mod client_hello;
mod decisions;
mod http;
mod issuer;
mod on_demand;
mod pacing;
pub mod roots;
pub mod storage;

use crate::config::AcmeConfig;
use crate::metrics;
use crate::tls::certs::{self, PairPaths};
use arc_swap::ArcSwap;
use decisions::{Decisions, Why};
use issuer::{IssueError, Issuer};
use log::{error, info, warn};
pub use on_demand::{OnDemand, CHALLENGE_PATH};
use pacing::Pacing;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::sign::CertifiedKey;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use storage::{Storage, StoredCertificate};
use tokio::sync::{mpsc, watch, Semaphore};

/// Names asked about, queued or being ordered at once, at most (beyond, a handshake gets the
/// default certificate and its name is asked about later).
const PENDING_CAP: usize = 10_000;
/// `ask` requests in flight at once.
const ASKS_AT_ONCE: usize = 16;
/// How often an edge that lost a name's lock to another looks for the other's certificate.
const ELSEWHERE_POLL: Duration = Duration::from_millis(500);
/// The most a renewal is brought forward, spreading renewals of certificates issued together.
const MAX_JITTER: i64 = 8 * 3600;

/// A certificate served from ACME storage.
struct Held {
    certified: Arc<CertifiedKey>,
    not_before: i64,
    not_after: i64,
}

impl Held {
    /// When this edge renews it: a third of its lifetime before it ends, brought forward by
    /// up to a tenth of its lifetime (at most 8 hours), the same for a name on every edge.
    fn renew_at(&self, name: &str) -> i64 {
        let lifetime = (self.not_after - self.not_before).max(1);
        let spread = (lifetime / 10).clamp(1, MAX_JITTER);
        let jitter = (fnv1a(name.as_bytes()) % spread as u64) as i64;
        self.not_after - lifetime / 3 - jitter
    }
}

/// A stored certificate, checked: a usable pair that carries `name`.
fn held_from(name: &str, stored: &StoredCertificate) -> Result<Held, String> {
    let origin = PathBuf::from(format!("acme:{name}"));
    let paths = PairPaths {
        cert: origin.join("chain"),
        key: origin.join("key"),
    };
    let pair = certs::pair_from_pem(stored.chain.as_bytes(), stored.key.as_bytes(), &paths)
        .map_err(|e| e.to_string())?;
    if !pair.names.iter().any(|n| n == name) {
        return Err(format!(
            "the certificate for {name} does not carry that name"
        ));
    }
    Ok(Held {
        certified: pair.certified,
        not_before: pair.not_before,
        not_after: pair.not_after,
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub struct Acme {
    config: AcmeConfig,
    storage: Arc<dyn Storage>,
    issuer: Issuer,
    ask: http::Ask,
    decisions: Decisions,
    served: ArcSwap<HashMap<String, Arc<Held>>>,
    /// Bumped whenever a name is served or settled: what waiting handshakes watch.
    changes: watch::Sender<u64>,
    /// Names asked about, queued or being ordered.
    pending: Mutex<HashSet<String>>,
    queue: mpsc::Sender<String>,
    queue_receiver: Mutex<Option<mpsc::Receiver<String>>>,
    asks: Semaphore,
    /// Whether storage was read once since the start.
    synced: AtomicBool,
    /// Whether the last call to storage failed (logged once per outage, counted each time).
    storage_down: AtomicBool,
}

impl Acme {
    pub fn new(config: &AcmeConfig) -> Result<Arc<Self>, String> {
        let storage = storage::open(&config.storage)?;
        let http = http::AcmeHttp::new(config.ca_roots.as_deref())?;
        let (queue, queue_receiver) = mpsc::channel(config.queue);
        Ok(Arc::new(Acme {
            issuer: Issuer::new(
                http,
                config.directory.clone(),
                config.contact.clone(),
                storage.clone(),
            ),
            storage,
            ask: http::Ask::new(config.ask.clone()),
            decisions: Decisions::default(),
            served: ArcSwap::default(),
            changes: watch::Sender::new(0),
            pending: Mutex::new(HashSet::new()),
            queue,
            queue_receiver: Mutex::new(Some(queue_receiver)),
            asks: Semaphore::new(ASKS_AT_ONCE),
            synced: AtomicBool::new(false),
            storage_down: AtomicBool::new(false),
            config: config.clone(),
        }))
    }

    /// The certificate this edge serves for `name` from ACME storage, if any.
    pub fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.served
            .load()
            .get(name)
            .map(|held| held.certified.clone())
    }

    fn is_served(&self, name: &str) -> bool {
        self.served.load().contains_key(name)
    }

    fn is_pending(&self, name: &str) -> bool {
        self.pending.lock().expect("never poisoned").contains(name)
    }

    /// A handshake for `name` (its SNI): if the name may get a certificate, it is asked about
    /// and ordered, and the handshake waits for it, at most `wait`.
    pub async fn wait_for(self: &Arc<Self>, name: &str) {
        let deadline = tokio::time::Instant::now() + self.config.wait;
        let mut changes = self.changes.subscribe();
        // Right after the start, what storage holds is not read yet.
        while !self.synced.load(Ordering::Acquire) {
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .map_or(true, |changed| changed.is_err())
            {
                return;
            }
        }
        if !self.trigger(name) && !self.is_pending(name) {
            return;
        }
        while !self.is_served(name) && self.is_pending(name) {
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .map_or(true, |changed| changed.is_err())
            {
                return;
            }
        }
    }

    /// A request for `name`, a valid site name (a handshake's, checked by `OnDemand`, or a
    /// plain-HTTP request's, checked by the front door): starts asking about it unless it is
    /// served, pending or held back. Whether it started.
    pub fn trigger(self: &Arc<Self>, name: &str) -> bool {
        if self.is_served(name) || self.decisions.holds_back(name, Instant::now()) {
            return false;
        }
        self.request(name)
    }

    /// Asks about `name` and queues it if approved (a new name, or a renewal).
    fn request(self: &Arc<Self>, name: &str) -> bool {
        {
            let mut pending = self.pending.lock().expect("never poisoned");
            if pending.len() >= PENDING_CAP || !pending.insert(name.to_owned()) {
                return false;
            }
        }
        let acme = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move { acme.ask_then_queue(name).await });
        true
    }

    async fn ask_then_queue(self: Arc<Self>, name: String) {
        let answer = {
            let _turn = self.asks.acquire().await.expect("never closed");
            self.ask.ask(&name).await
        };
        metrics::acme_ask(answer.label());
        match answer {
            http::Answer::Allowed => match self.queue.try_send(name.clone()) {
                Ok(()) => metrics::acme_queued(1),
                Err(_) => {
                    warn!(
                        "acme: {} orders queued already; {name} is asked about again later",
                        self.config.queue
                    );
                    self.decisions
                        .hold_back(&name, Why::AskFailed, Instant::now());
                    self.settle(&name);
                }
            },
            http::Answer::Denied => {
                // Debug only: a flood of made-up SNI names must not flood the log too (the
                // answers are counted in herald_acme_ask_total).
                log::debug!("acme: ask denied {name}");
                self.decisions.hold_back(&name, Why::Denied, Instant::now());
                self.settle(&name);
            }
            http::Answer::Error => {
                self.decisions
                    .hold_back(&name, Why::AskFailed, Instant::now());
                self.settle(&name);
            }
        }
    }

    /// `name` is no longer pending: its waiters look again.
    fn settle(&self, name: &str) {
        self.pending.lock().expect("never poisoned").remove(name);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The answer to an HTTP-01 validation request for `token`, from storage.
    pub async fn challenge(&self, token: &str) -> Option<String> {
        if !storage::is_valid_token(token) {
            return None;
        }
        match self.storage.challenge(token).await {
            Ok(answer) => answer,
            Err(e) => {
                self.storage_failed(&e);
                None
            }
        }
    }

    /// Serves `stored` for `name` from now on, if it is a usable pair for that name.
    fn install(&self, name: &str, stored: &StoredCertificate) -> Result<(), String> {
        let held = Arc::new(held_from(name, stored)?);
        self.install_all(vec![(name.to_owned(), held)]);
        Ok(())
    }

    /// Serves these from now on: one copy of the map for all of them (an edge's first sync
    /// may read thousands).
    fn install_all(&self, new: Vec<(String, Arc<Held>)>) {
        if new.is_empty() {
            return;
        }
        self.served.rcu(|served| {
            let mut served = HashMap::clone(served);
            served.extend(new.iter().cloned());
            served
        });
        for (name, _) in &new {
            self.decisions.forget(name);
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        self.publish();
    }

    fn storage_failed(&self, e: &storage::StorageError) {
        metrics::acme_storage_error();
        if !self.storage_down.swap(true, Ordering::AcqRel) {
            warn!("acme: {e}; serving the certificates held, ordering nothing until it answers");
        } else {
            log::debug!("acme: {e}");
        }
    }

    fn storage_answered(&self) {
        if self.storage_down.swap(false, Ordering::AcqRel) {
            info!("acme: storage answers again");
        }
    }

    fn publish(&self) {
        let served = self.served.load();
        let soonest = served.iter().map(|(name, held)| held.renew_at(name)).min();
        metrics::acme_certificates(served.len(), soonest);
    }

    /// The queue's worker: one order at a time, paced.
    async fn work(self: Arc<Self>, mut queue: mpsc::Receiver<String>) {
        let mut pacing = Pacing::new(self.config.max_orders_per_hour);
        while let Some(name) = queue.recv().await {
            loop {
                if let Some(until) = self.issuer.http().retry_after() {
                    pacing.pause_until(instant_of(until));
                }
                let now = Instant::now();
                let turn = pacing.next_turn(now);
                if turn <= now {
                    break;
                }
                tokio::time::sleep_until(turn.into()).await;
            }
            metrics::acme_queued(-1);
            if !self.clone().order(&name, &mut pacing).await {
                self.settle(&name);
            }
        }
    }

    /// Orders `name` under its lock. True when another edge holds the lock and a task of its
    /// own waits for that edge's certificate (and settles the name).
    async fn order(self: Arc<Self>, name: &str, pacing: &mut Pacing) -> bool {
        let token = match self.storage.lock(name).await {
            Ok(Some(token)) => token,
            Ok(None) => {
                tokio::spawn(self.clone().await_other_edge(name.to_owned()));
                return true;
            }
            Err(e) => {
                self.storage_failed(&e);
                self.decisions
                    .hold_back(name, Why::AskFailed, Instant::now());
                return false;
            }
        };
        // Another edge may have stored it (or renewed it) since this one looked.
        match self.storage.certificate(name).await {
            Ok(Some(stored)) if !self.due(name, &stored) => {
                if let Err(e) = self.install(name, &stored) {
                    warn!("acme: {e}");
                }
                self.unlock(name, &token).await;
                return false;
            }
            Ok(_) => {}
            Err(e) => {
                self.storage_failed(&e);
                self.decisions
                    .hold_back(name, Why::AskFailed, Instant::now());
                self.unlock(name, &token).await;
                return false;
            }
        }
        pacing.started(Instant::now());
        info!("acme: ordering a certificate for {name}");
        let result = self.issuer.issue(name).await;
        match result {
            Ok(issued) => {
                let stored = StoredCertificate {
                    not_after: 0,
                    chain: issued.chain,
                    key: issued.key,
                };
                match self.keep(name, stored).await {
                    Ok(()) => {
                        metrics::acme_order("issued");
                        info!("acme: {name}: certificate issued");
                    }
                    Err(e) => {
                        metrics::acme_order("failed");
                        error!("acme: {name}: {e}");
                        self.decisions
                            .hold_back(name, Why::OrderFailed, Instant::now());
                    }
                }
            }
            Err(e) => {
                metrics::acme_order("failed");
                warn!("acme: {name}: order failed: {e}");
                match &e {
                    IssueError::RateLimited(until, _) => pacing.pause_until(instant_of(*until)),
                    IssueError::Storage(e) => self.storage_failed(e),
                    IssueError::Failed(_) => {}
                }
                self.decisions
                    .hold_back(name, Why::OrderFailed, Instant::now());
            }
        }
        self.unlock(name, &token).await;
        false
    }

    /// A new certificate: checked, served here, stored for every edge.
    async fn keep(&self, name: &str, mut stored: StoredCertificate) -> Result<(), String> {
        let held = held_from(name, &stored)
            .map_err(|e| format!("the ACME server's certificate is unusable: {e}"))?;
        stored.not_after = held.not_after;
        self.install(name, &stored)?;
        if let Err(e) = self.storage.store_certificate(name, &stored).await {
            // Served here from memory; the other edges order their own once their back-off
            // for the name ends, or get this edge's renewal.
            self.storage_failed(&e);
            warn!("acme: {name}: issued and served here, but not stored for the other edges");
        }
        Ok(())
    }

    async fn unlock(&self, name: &str, token: &str) {
        if let Err(e) = self.storage.unlock(name, token).await {
            // The lock expires by itself (storage::LOCK_TTL).
            self.storage_failed(&e);
        }
    }

    /// Another edge is ordering `name`: its certificate is taken from storage when it comes
    /// (or the lock's lifetime passes).
    async fn await_other_edge(self: Arc<Self>, name: String) {
        let deadline = Instant::now() + storage::LOCK_TTL;
        while Instant::now() < deadline {
            match self.storage.certificate(&name).await {
                Ok(Some(stored)) if !self.due(&name, &stored) => {
                    if let Err(e) = self.install(&name, &stored) {
                        warn!("acme: {e}");
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => self.storage_failed(&e),
            }
            tokio::time::sleep(ELSEWHERE_POLL).await;
        }
        self.settle(&name);
    }

    /// Whether a stored certificate is due for renewal (or unreadable).
    fn due(&self, name: &str, stored: &StoredCertificate) -> bool {
        let held = self.served.load().get(name).cloned();
        match held {
            // What this edge serves is the same certificate or an older one.
            Some(held) if held.not_after >= stored.not_after => unix_now() >= held.renew_at(name),
            _ => held_from(name, stored).map_or(true, |held| unix_now() >= held.renew_at(name)),
        }
    }

    /// Reads what storage holds when it changed, and starts renewals that are due.
    async fn sync(self: &Arc<Self>, seen: &mut Option<u64>) {
        match self.storage.generation().await {
            Ok(generation) if Some(generation) != *seen => {
                self.storage_answered();
                match self.storage.versions().await {
                    Ok(versions) => {
                        self.load_changed(versions).await;
                        *seen = Some(generation);
                    }
                    Err(e) => self.storage_failed(&e),
                }
            }
            Ok(_) => self.storage_answered(),
            Err(e) => self.storage_failed(&e),
        }
        if !self.synced.swap(true, Ordering::AcqRel) {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        let now = unix_now();
        let due: Vec<String> = self
            .served
            .load()
            .iter()
            .filter(|(name, held)| now >= held.renew_at(name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            if !self.decisions.holds_back(&name, Instant::now()) && self.request(&name) {
                info!("acme: {name}: renewing");
            }
        }
    }

    async fn load_changed(&self, versions: HashMap<String, i64>) {
        let served = self.served.load_full();
        let mut new = Vec::new();
        for (name, version) in versions {
            let held = served.get(&name).map(|held| held.not_after);
            if held.is_some_and(|held| held >= version) {
                continue;
            }
            match self.storage.certificate(&name).await {
                Ok(Some(stored)) => match held_from(&name, &stored) {
                    Ok(held) => new.push((name, Arc::new(held))),
                    Err(e) => warn!("acme: stored for {name}: {e}"),
                },
                Ok(None) => {}
                Err(e) => self.storage_failed(&e),
            }
        }
        self.install_all(new);
    }
}

/// A wall-clock time as an `Instant` (now, if it has passed).
fn instant_of(time: SystemTime) -> Instant {
    let ahead = time
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + ahead
}

/// The edge's background service: the order worker and the storage sync.
pub struct AcmeService(pub Arc<Acme>);

#[async_trait::async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let acme = self.0.clone();
        let queue = acme
            .queue_receiver
            .lock()
            .expect("never poisoned")
            .take()
            .expect("started once");
        let worker = tokio::spawn(acme.clone().work(queue));
        info!(
            "acme: on-demand certificates from {}, storage {:?}",
            acme.config.directory, acme.config.storage
        );
        let mut seen = None;
        let mut tick = tokio::time::interval(acme.config.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => acme.sync(&mut seen).await,
                _ = shutdown.changed() => break,
            }
        }
        worker.abort();
    }
}
