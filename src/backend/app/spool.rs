//! Where a request's data waits on its way through the backend: in memory up to a limit, then
//! in a temp file that has no name (`O_TMPFILE`, via `tempfile`), so that nothing is left
//! behind however the request ends, even when Herald is killed.
//!
//! Two shapes: `RequestBody`, a whole request body written once and read as often as the
//! request is sent (a retry after a cold start sends it again), and `Fifo`, an app's answer
//! flowing from the app to the client at two different speeds.
//!
//! File I/O is plain blocking reads and writes at an offset, as nginx does them: they land in
//! the page cache, and moving them to a thread pool would cost more than they take.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// How much is read from a file, or from an app, at a time.
pub const CHUNK: usize = 16 << 10;

/// A directory for temp files, and what went wrong with it.
#[derive(Debug, Clone)]
pub struct TempDir {
    path: PathBuf,
}

/// A temp file could not be made or written: the disk is full, or the directory is unusable.
#[derive(Debug)]
pub struct StorageError {
    pub dir: PathBuf,
    pub error: io::Error,
}

impl StorageError {
    /// No space or quota left, rather than a directory Herald cannot write.
    pub fn is_full(&self) -> bool {
        matches!(self.error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "temp file in {:?}: {}", self.dir, self.error)
    }
}

impl TempDir {
    pub fn new(path: PathBuf) -> TempDir {
        TempDir { path }
    }

    /// A new file with no name in this directory, readable by Herald only.
    pub fn file(&self) -> Result<File, StorageError> {
        tempfile::tempfile_in(&self.path).map_err(|error| self.error(error))
    }

    fn error(&self, error: io::Error) -> StorageError {
        StorageError {
            dir: self.path.clone(),
            error,
        }
    }

    /// Whether a temp file can be made here (for `herald -t`).
    pub fn check(&self) -> Result<(), StorageError> {
        let file = self.file()?;
        file.write_all_at(b"herald", 0)
            .map_err(|error| self.error(error))
    }
}

/// A whole request body: in memory up to `memory_limit`, otherwise all of it in a temp file.
#[derive(Debug)]
pub struct RequestBody {
    memory: Vec<Bytes>,
    file: Option<File>,
    len: u64,
}

impl RequestBody {
    pub fn new() -> RequestBody {
        RequestBody {
            memory: Vec::new(),
            file: None,
            len: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body went to a temp file.
    pub fn in_file(&self) -> bool {
        self.file.is_some()
    }

    pub fn push(
        &mut self,
        chunk: Bytes,
        memory_limit: usize,
        dir: &TempDir,
    ) -> Result<(), StorageError> {
        if self.file.is_none() && self.len + chunk.len() as u64 > memory_limit as u64 {
            let file = dir.file()?;
            let mut offset = 0;
            for part in self.memory.drain(..) {
                file.write_all_at(&part, offset).map_err(|e| dir.error(e))?;
                offset += part.len() as u64;
            }
            self.file = Some(file);
        }
        let len = chunk.len() as u64;
        match &self.file {
            Some(file) => file
                .write_all_at(&chunk, self.len)
                .map_err(|e| dir.error(e))?,
            None => self.memory.push(chunk),
        }
        self.len += len;
        Ok(())
    }

    /// The bytes from `offset` on, at most `CHUNK` of them; empty at the end.
    pub fn read_at(&self, offset: u64) -> io::Result<Bytes> {
        if offset >= self.len {
            return Ok(Bytes::new());
        }
        if let Some(file) = &self.file {
            let want = (self.len - offset).min(CHUNK as u64) as usize;
            let mut buf = BytesMut::zeroed(want);
            file.read_exact_at(&mut buf, offset)?;
            return Ok(buf.freeze());
        }
        let mut start = 0u64;
        for part in &self.memory {
            let end = start + part.len() as u64;
            if offset < end {
                return Ok(part.slice((offset - start) as usize..));
            }
            start = end;
        }
        Ok(Bytes::new())
    }
}

/// An app's answer on its way to the client: first in, first out, in memory up to
/// `memory_limit` bytes, then in a temp file up to `file_limit` bytes; past both there is no
/// room, and the app waits (nginx's `proxy_max_temp_file_size`). Every byte in memory is older
/// than every byte in the file, so reading memory first keeps the order.
pub struct Fifo {
    memory: VecDeque<Bytes>,
    memory_len: usize,
    memory_limit: usize,
    file: Option<File>,
    file_limit: u64,
    /// Written and read offsets in the file; both go back to 0 when it is drained.
    file_end: u64,
    file_start: u64,
    dir: Option<TempDir>,
    /// Bytes that ever went to the file.
    pub spilled: u64,
}

impl Fifo {
    /// `dir: None` (or a `file_limit` of 0): memory only.
    pub fn new(memory_limit: usize, file_limit: u64, dir: Option<TempDir>) -> Fifo {
        Fifo {
            memory: VecDeque::new(),
            memory_len: 0,
            memory_limit,
            file: None,
            file_limit: if dir.is_some() { file_limit } else { 0 },
            file_end: 0,
            file_start: 0,
            dir,
            spilled: 0,
        }
    }

    /// From now on, memory up to `memory_limit` only (for an answer that must stream).
    pub fn stream_only(&mut self, memory_limit: usize) {
        self.memory_limit = memory_limit;
        self.file_limit = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.file_start == self.file_end
    }

    fn file_pending(&self) -> bool {
        self.file_start < self.file_end
    }

    /// How many more bytes may be pushed now (0: wait for the reader).
    pub fn room(&self) -> usize {
        if !self.file_pending() && self.memory_len < self.memory_limit {
            return self.memory_limit - self.memory_len;
        }
        let file_room = self.file_limit.saturating_sub(self.file_end);
        if file_room > 0 {
            return file_room.min(CHUNK as u64) as usize;
        }
        // The file is full: memory may still take what fits while nothing waits in the file.
        if self.file_pending() {
            0
        } else {
            self.memory_limit.saturating_sub(self.memory_len)
        }
    }

    /// Adds `chunk` (at most `room()` bytes).
    pub fn push(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        if !self.file_pending() && self.memory_len + chunk.len() <= self.memory_limit {
            self.memory_len += chunk.len();
            self.memory.push_back(chunk);
            return Ok(());
        }
        let dir = self
            .dir
            .as_ref()
            .expect("room() allows the file only with a dir");
        if self.file.is_none() {
            self.file = Some(dir.file()?);
        }
        let file = self.file.as_ref().expect("just made");
        file.write_all_at(&chunk, self.file_end)
            .map_err(|e| dir.error(e))?;
        self.file_end += chunk.len() as u64;
        self.spilled += chunk.len() as u64;
        Ok(())
    }

    /// The oldest bytes, at most `CHUNK`; `None` when empty.
    pub fn pop(&mut self) -> io::Result<Option<Bytes>> {
        if let Some(chunk) = self.memory.pop_front() {
            self.memory_len -= chunk.len();
            return Ok(Some(chunk));
        }
        if !self.file_pending() {
            return Ok(None);
        }
        let file = self.file.as_ref().expect("pending bytes are in the file");
        let want = (self.file_end - self.file_start).min(CHUNK as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        file.read_exact_at(&mut buf, self.file_start)?;
        self.file_start += want as u64;
        if self.file_start == self.file_end {
            // Drained: start over at the beginning, and give the disk space back.
            self.file_start = 0;
            self.file_end = 0;
            file.set_len(0)?;
        }
        Ok(Some(buf.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TempDir::new(tmp.path().to_owned());
        (tmp, dir)
    }

    fn files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn a_small_body_stays_in_memory_and_a_large_one_goes_whole_to_a_nameless_file() {
        let (tmp, dir) = dir();
        let mut small = RequestBody::new();
        small.push(Bytes::from_static(b"hello "), 16, &dir).unwrap();
        small.push(Bytes::from_static(b"world"), 16, &dir).unwrap();
        assert!(!small.in_file());
        assert_eq!(small.read_at(0).unwrap(), "hello ");
        assert_eq!(small.read_at(6).unwrap(), "world");
        assert_eq!(small.read_at(8).unwrap(), "rld");
        assert!(small.read_at(11).unwrap().is_empty());

        let mut large = RequestBody::new();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for part in data.chunks(7000) {
            large
                .push(Bytes::copy_from_slice(part), 16 << 10, &dir)
                .unwrap();
        }
        assert!(large.in_file());
        assert_eq!(files_in(tmp.path()), 0, "the temp file has no name");
        for _ in 0..2 {
            let mut read = Vec::new();
            loop {
                let chunk = large.read_at(read.len() as u64).unwrap();
                if chunk.is_empty() {
                    break;
                }
                assert!(chunk.len() <= CHUNK);
                read.extend_from_slice(&chunk);
            }
            assert_eq!(read, data, "readable again, for a retry");
        }
    }

    #[test]
    fn fifo_keeps_order_across_memory_and_file() {
        let (tmp, dir) = dir();
        let mut fifo = Fifo::new(100, 1000, Some(dir));
        let mut sent = Vec::new();
        let mut received = Vec::new();
        let mut next = 0u8;
        for round in 0..200 {
            // Push what fits in uneven pieces, pop at another pace.
            let n = fifo.room().min(37 + round % 50);
            if n > 0 {
                let chunk: Vec<u8> = (0..n)
                    .map(|_| {
                        next = next.wrapping_add(1);
                        next
                    })
                    .collect();
                sent.extend_from_slice(&chunk);
                fifo.push(Bytes::from(chunk)).unwrap();
            }
            if round % 3 == 0 {
                if let Some(chunk) = fifo.pop().unwrap() {
                    received.extend_from_slice(&chunk);
                }
            }
        }
        assert!(fifo.spilled > 0, "the test must reach the file");
        while let Some(chunk) = fifo.pop().unwrap() {
            received.extend_from_slice(&chunk);
        }
        assert_eq!(received, sent);
        assert!(fifo.is_empty());
        assert_eq!(files_in(tmp.path()), 0);
    }

    #[test]
    fn a_full_fifo_has_no_room_until_read() {
        let (_tmp, dir) = dir();
        let mut fifo = Fifo::new(10, 20, Some(dir));
        fifo.push(Bytes::from(vec![1; 10])).unwrap();
        assert_eq!(fifo.room(), 20);
        fifo.push(Bytes::from(vec![2; 20])).unwrap();
        assert_eq!(fifo.room(), 0);
        assert_eq!(fifo.pop().unwrap().unwrap().len(), 10);
        assert_eq!(fifo.room(), 0, "the file still holds older bytes");
        assert_eq!(fifo.pop().unwrap().unwrap(), vec![2; 20]);
        assert_eq!(fifo.room(), 10);
        let mut streaming = Fifo::new(10, 20, None);
        streaming.push(Bytes::from(vec![1; 10])).unwrap();
        assert_eq!(streaming.room(), 0, "no dir: memory only");
    }

    #[test]
    fn an_unusable_directory_is_named_in_the_error() {
        let dir = TempDir::new(PathBuf::from("/nonexistent/herald-tmp"));
        let error = dir.check().unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/herald-tmp"),
            "{error}"
        );
        assert!(!error.is_full());
        let mut body = RequestBody::new();
        assert!(body.push(Bytes::from(vec![0; 10]), 4, &dir).is_err());
    }
}
