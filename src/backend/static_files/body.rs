//! Sending a response body made of file ranges and literal bytes (multipart headers), in
//! bounded memory: each chunk is read (large ones off the async runtime) and written, and the write
//! awaited, before the next is read, so a request holds at most one chunk (plus what
//! Pingora holds while writing it) however large the file and however slow the client.

use bytes::{Bytes, BytesMut};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The most read and written at once. A file no larger than this is one read and one write.
pub const CHUNK: usize = 128 * 1024;

#[derive(Debug)]
pub enum Segment {
    Bytes(Bytes),
    /// `len` bytes of the file from `start`.
    File {
        start: u64,
        len: u64,
    },
}

/// Writes `segments` as the whole response body (the header has been sent). Literal bytes
/// travel with the next chunk of the file, so a multipart part costs no write of its own.
pub async fn send(session: &mut Session, file: File, segments: &[Segment]) -> Result<()> {
    let file = Arc::new(file);
    let mut pending = BytesMut::new();
    let mut ended = false;
    for (index, segment) in segments.iter().enumerate() {
        let last_segment = index + 1 == segments.len();
        match segment {
            Segment::Bytes(bytes) => pending.extend_from_slice(bytes),
            Segment::File { start, len } => {
                let end = start + len;
                let mut offset = *start;
                while offset < end {
                    let want = usize::try_from(end - offset).map_or(CHUNK, |left| left.min(CHUNK));
                    let chunk = read_chunk(&file, offset, want, pending.split()).await?;
                    offset += want as u64;
                    ended = last_segment && offset == end;
                    session.write_response_body(Some(chunk), ended).await?;
                }
            }
        }
    }
    if !ended {
        let rest = (!pending.is_empty()).then(|| pending.freeze());
        session.write_response_body(rest, true).await?;
    }
    Ok(())
}

/// Reads up to this size are made on the request's thread, as nginx makes them (without
/// `aio`): a stylesheet or an icon comes from the page cache in microseconds, less than the
/// hop to the blocking pool and back. Larger chunks go to the pool, where a read from a slow
/// disk holds no other request.
const INLINE_READ: usize = 64 * 1024;

/// `prefix` followed by `len` bytes of `file` at `offset`. A file that became shorter since
/// its length was sent is an error: the answer cannot be completed (nginx closes the
/// connection too).
async fn read_chunk(file: &Arc<File>, offset: u64, len: usize, prefix: BytesMut) -> Result<Bytes> {
    let read = move |file: &File| {
        let mut buffer = vec![0; prefix.len() + len];
        buffer[..prefix.len()].copy_from_slice(&prefix);
        file.read_exact_at(&mut buffer[prefix.len()..], offset)
            .map(|()| Bytes::from(buffer))
    };
    let read = if len <= INLINE_READ {
        read(file)
    } else {
        let file = Arc::clone(file);
        tokio::task::spawn_blocking(move || read(&file))
            .await
            .or_err(InternalError, "reading a static file")?
    };
    read.map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "a static file became shorter while being sent".to_owned()
        } else {
            format!("reading a static file: {e}")
        };
        Error::explain(InternalError, why)
    })
}
