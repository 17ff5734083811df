//! Reads an app's answer as fast as the app writes it, into a `Fifo` (memory, then a temp
//! file), and hands it on as fast as the client takes it: the app's connection is closed, and
//! its worker free, as soon as it has written its answer, however slow the client. An answer
//! that says `X-Accel-Buffering: no` (nginx's convention for Server-Sent Events and other
//! streams) is passed on as it comes, with no temp file.

use super::exchange::{AppFailure, Exchange};
use super::spool::{Fifo, CHUNK};
use bytes::{Bytes, BytesMut};
use std::io;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::mpsc;

/// What an answer that streams may hold in memory while the client is slow.
pub const STREAMING_MEMORY: usize = 16 << 10;
/// A response header longer than this is not looked into (Pingora refuses it anyway).
const MAX_HEAD_SCAN: usize = 64 << 10;

/// Runs until the answer is handed on, the client side goes away, or something fails;
/// `read` is what was read of it already.
pub async fn pump(
    app: OwnedReadHalf,
    read: Vec<Bytes>,
    to_client: mpsc::Sender<io::Result<Bytes>>,
    mut fifo: Fifo,
    exchange: Arc<Exchange>,
) {
    relay(app, read, to_client, &mut fifo, &exchange).await;
    if fifo.spilled > 0 {
        crate::metrics::buffered_to_file_bytes("answer", fifo.spilled);
    }
}

async fn relay(
    mut app: OwnedReadHalf,
    read: Vec<Bytes>,
    to_client: mpsc::Sender<io::Result<Bytes>>,
    fifo: &mut Fifo,
    exchange: &Exchange,
) {
    let mut head = HeadScan::default();
    let mut app_done = false;
    let mut failed: Option<io::Error> = None;
    for chunk in read {
        take_chunk(chunk, &mut head, fifo, exchange, &mut failed);
    }
    loop {
        let has_data = !fifo.is_empty();
        if !has_data {
            if let Some(e) = failed.take() {
                let _ = to_client.send(Err(e)).await;
                return;
            }
            if app_done {
                return; // dropping the sender is the end of the answer
            }
        }
        let room = if app_done || failed.is_some() {
            0
        } else {
            fifo.room()
        };
        tokio::select! {
            permit = to_client.reserve(), if has_data => {
                let Ok(permit) = permit else { return };
                match fifo.pop() {
                    Ok(Some(chunk)) => permit.send(Ok(chunk)),
                    Ok(None) => {}
                    Err(e) => {
                        permit.send(Err(e));
                        return;
                    }
                }
            }
            read = read_some(&mut app, room), if room > 0 => match read {
                Ok(chunk) if chunk.is_empty() => app_done = true,
                Ok(chunk) => take_chunk(chunk, &mut head, fifo, exchange, &mut failed),
                Err(e) => failed = Some(e),
            },
            _ = to_client.closed(), if !has_data => return,
        }
    }
}

/// A chunk of the answer into the fifo (the header looked into for `X-Accel-Buffering`).
fn take_chunk(
    chunk: Bytes,
    head: &mut HeadScan,
    fifo: &mut Fifo,
    exchange: &Exchange,
    failed: &mut Option<io::Error>,
) {
    if failed.is_some() {
        return;
    }
    if head.scan(&chunk) == Some(Buffering::Off) {
        fifo.stream_only(STREAMING_MEMORY);
    }
    let spilled = fifo.spilled;
    if let Err(e) = fifo.push(chunk) {
        let message = format!("cannot buffer the app's answer: {e}");
        exchange.fail(AppFailure::Storage(e));
        *failed = Some(io::Error::other(message));
    } else if spilled == 0 && fifo.spilled > 0 {
        crate::metrics::buffered_to_file("answer");
    }
}

async fn read_some(app: &mut OwnedReadHalf, room: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(room.min(CHUNK));
    app.read_buf(&mut buf).await?;
    Ok(buf.freeze())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buffering {
    On,
    Off,
}

/// Looks for `X-Accel-Buffering: no` in the answer's header, across reads.
#[derive(Default)]
struct HeadScan {
    seen: Vec<u8>,
    done: bool,
}

impl HeadScan {
    /// The answer's choice, once its header is complete (then never again).
    fn scan(&mut self, chunk: &[u8]) -> Option<Buffering> {
        if self.done {
            return None;
        }
        let start = self.seen.len().saturating_sub(3);
        self.seen.extend_from_slice(chunk);
        let end = find(&self.seen[start..], b"\r\n\r\n").map(|i| start + i);
        if end.is_none() && self.seen.len() < MAX_HEAD_SCAN {
            return None;
        }
        self.done = true;
        let head = std::mem::take(&mut self.seen);
        let head = &head[..end.unwrap_or(head.len())];
        let off = head.split(|&b| b == b'\n').skip(1).any(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return false;
            };
            line[..colon].eq_ignore_ascii_case(b"x-accel-buffering")
                && line[colon + 1..].trim_ascii().eq_ignore_ascii_case(b"no")
        });
        Some(if off { Buffering::Off } else { Buffering::On })
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // A scan for the first byte, then a comparison there: a header has few `\r`, and comparing
    // a window at every byte cost ~1,500 instructions per request (bench/instructions.py).
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = haystack.get(from..)?.iter().position(|&b| b == first) {
        let at = from + i;
        if haystack[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_gives_the_first_whole_match() {
        assert_eq!(find(b"a\r\nb\r\n\r\nc", b"\r\n\r\n"), Some(4));
        assert_eq!(find(b"\r\n\r\n", b"\r\n\r\n"), Some(0));
        assert_eq!(find(b"\r\n\r", b"\r\n\r\n"), None);
        assert_eq!(find(b"", b"\r\n\r\n"), None);
        assert_eq!(find(b"xx\r\r\n\r\n", b"\r\n\r\n"), Some(3));
        assert_eq!(find(b"abc", b""), None);
    }

    #[test]
    fn x_accel_buffering_no_is_found_across_reads() {
        let mut scan = HeadScan::default();
        assert_eq!(
            scan.scan(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r"),
            None
        );
        assert_eq!(scan.scan(b"\nx-accel-buffering:  No \r\n"), None);
        assert_eq!(scan.scan(b"\r\ndata: 1\n\n"), Some(Buffering::Off));
        assert_eq!(
            scan.scan(b"X-Accel-Buffering: yes\r\n\r\n"),
            None,
            "once only"
        );

        let mut scan = HeadScan::default();
        assert_eq!(
            scan.scan(b"HTTP/1.1 200 OK\r\nX-Accel-Buffering: yes\r\n\r\nX-Accel-Buffering: no"),
            Some(Buffering::On),
            "only the header counts"
        );
    }
}
