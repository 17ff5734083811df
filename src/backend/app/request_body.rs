//! A request body read whole before the app is connected (nginx's `proxy_request_buffering
//! on`): a slow upload never holds the app's worker, and the app gets `CONTENT_LENGTH` however
//! the client framed the body (chunked, or HTTP/2 without `content-length`).

use super::spool::{RequestBody, StorageError, TempDir};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;

pub enum BodyOutcome {
    /// No body at all (a GET, or `Content-Length: 0`).
    Empty,
    Complete(Arc<RequestBody>),
    /// More than `client_max_body_size`: nothing reaches the app.
    TooLarge,
    Storage(StorageError),
}

/// Reads the whole body: in memory up to `memory_limit`, then into a temp file in `dir`.
/// Errors are the client's (it left, sent a malformed chunk, or paused longer than
/// `client_body_timeout`: 408).
pub async fn read_whole(
    session: &mut Session,
    max_body: Option<u64>,
    memory_limit: usize,
    dir: &TempDir,
) -> Result<BodyOutcome> {
    let downstream = session.as_downstream_mut();
    if downstream.is_body_empty() {
        return Ok(BodyOutcome::Empty);
    }
    let mut body = RequestBody::new();
    while let Some(chunk) = downstream
        .read_request_body()
        .await
        .map_err(|e| e.into_down())?
    {
        if max_body.is_some_and(|max| body.len() + chunk.len() as u64 > max) {
            return Ok(BodyOutcome::TooLarge);
        }
        if let Err(e) = body.push(chunk, memory_limit, dir) {
            return Ok(BodyOutcome::Storage(e));
        }
    }
    if body.in_file() {
        crate::metrics::buffered_to_file("request");
        crate::metrics::buffered_to_file_bytes("request", body.len());
    }
    Ok(if body.len() == 0 {
        BodyOutcome::Empty
    } else {
        BodyOutcome::Complete(Arc::new(body))
    })
}
