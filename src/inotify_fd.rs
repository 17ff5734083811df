//! An inotify instance as tokio sees it, for the watchers of both roles (app sockets on a
//! backend, certificates on an edge).

use inotify::Inotify;
use tokio::io::unix::AsyncFd;

/// `inotify`, registered with the runtime so its events can be awaited.
pub fn register(inotify: Inotify) -> std::io::Result<AsyncFd<Inotify>> {
    // SAFETY: `Inotify` owns its descriptor (closed only when it drops) and always returns
    // that same descriptor from `as_raw_fd`, which is all `register` requires.
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register(inotify) };
    registered.map_err(|e| e.into_parts().1)
}
