//! Whether this process is on its way out: handing its sockets to a new process (SIGQUIT) or
//! shutting down (SIGTERM). From then on each answer says `Connection: close`, so a kept-alive
//! client sends its next request on a new connection, to the new process, instead of on one
//! the old process is about to close under it.

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::broadcast;

static DRAINING: AtomicBool = AtomicBool::new(false);

pub fn is_draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

struct PhaseWatch {
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
}

#[async_trait]
impl BackgroundService for PhaseWatch {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Not stopped by the shutdown signal: it must see the phases that come after it.
        let Some(mut phases) = self.phases.lock().expect("never poisoned").take() else {
            return;
        };
        loop {
            match phases.recv().await {
                Ok(
                    ExecutionPhase::GracefulUpgradeTransferringFds
                    | ExecutionPhase::GracefulUpgradeCloseTimeout
                    | ExecutionPhase::GracefulTerminate
                    | ExecutionPhase::ShutdownStarted,
                ) => DRAINING.store(true, Ordering::Relaxed),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Adds the watch to `server`, once per process.
pub fn watch(server: &mut Server) {
    let watch = PhaseWatch {
        phases: Mutex::new(Some(server.watch_execution_phase())),
    };
    server.add_service(background_service("herald draining watch", watch));
}
