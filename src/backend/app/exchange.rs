//! One attempt to hand a request to an app, shared by the proxy's hooks and the connection they
//! open: the bytes that replace Pingora's request header (a uwsgi packet, or an HTTP header
//! with the buffered body's length), the buffered body, how the answer is read, and what went
//! wrong on the way (for the error page).

use super::spool::{RequestBody, StorageError, TempDir};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Exchange {
    pub site: String,
    /// The uid the socket's listener must have (`SO_PEERCRED`).
    pub owner: u32,
    /// An HTTP app with nothing to buffer: Pingora's own bytes both ways.
    plain: bool,
    /// Set by `upstream_request_filter`; `None`: Pingora's own header goes to the app.
    head: Mutex<Option<Bytes>>,
    /// The whole body, read before connecting; Pingora then sends none itself.
    pub body: Option<Arc<RequestBody>>,
    pub answer: AnswerMode,
    /// Longest pause while the app does not read what it is sent (`proxy_send_timeout`).
    pub send_timeout: Duration,
    failure: Mutex<Option<AppFailure>>,
    /// The app was told `SERVER_PROTOCOL: HTTP/2.0` and answers with that status line.
    http2_status_line: AtomicBool,
}

/// How the app's answer is read.
#[derive(Debug, Clone)]
pub enum AnswerMode {
    /// As fast as the client takes it (WebSockets, `response_buffering: off`).
    Direct,
    /// As fast as the app writes it: memory, then a temp file (nginx's `proxy_buffering on`).
    Buffered(AnswerBuffers),
}

#[derive(Debug, Clone)]
pub struct AnswerBuffers {
    /// `proxy_buffers`: number × size.
    pub memory: usize,
    /// `proxy_max_temp_file_size`; 0: no temp file.
    pub max_temp_file: u64,
    pub temp_dir: TempDir,
}

/// Why an attempt failed on Herald's side rather than the app's.
#[derive(Debug)]
pub enum AppFailure {
    /// The answer could not be buffered: the temp directory is full or unusable.
    Storage(StorageError),
    /// The app stopped reading the request for `proxy_send_timeout`.
    SendTimeout,
    /// The socket is held by another user than the site's owner (logged with both uids).
    WrongOwner,
}

impl Exchange {
    pub fn new(
        site: &str,
        owner: u32,
        body: Option<Arc<RequestBody>>,
        answer: AnswerMode,
        send_timeout: Duration,
    ) -> Exchange {
        Exchange {
            site: site.to_owned(),
            owner,
            plain: false,
            head: Mutex::new(None),
            body,
            answer,
            send_timeout,
            failure: Mutex::new(None),
            http2_status_line: AtomicBool::new(false),
        }
    }

    pub fn answers_in_http2(&self, yes: bool) {
        self.http2_status_line.store(yes, Ordering::Relaxed);
    }

    pub fn has_http2_status_line(&self) -> bool {
        self.http2_status_line.load(Ordering::Relaxed)
    }

    /// Marks an exchange where Herald adds nothing: no head of its own, no buffered body or
    /// answer (such a connection may even be pooled, with `upstream_keepalive_timeout`).
    pub fn plain(mut self) -> Exchange {
        self.plain = true;
        self
    }

    pub fn is_plain(&self) -> bool {
        self.plain
    }

    pub fn set_head(&self, head: Bytes) {
        *self.head.lock().expect("never poisoned") = Some(head);
    }

    pub fn take_head(&self) -> Option<Bytes> {
        self.head.lock().expect("never poisoned").take()
    }

    pub fn fail(&self, failure: AppFailure) {
        self.failure
            .lock()
            .expect("never poisoned")
            .get_or_insert(failure);
    }

    pub fn take_failure(&self) -> Option<AppFailure> {
        self.failure.lock().expect("never poisoned").take()
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("body", &self.body.as_ref().map(|b| b.len()))
            .field("answer", &self.answer)
            .finish_non_exhaustive()
    }
}
