//! `Range: bytes=...` as nginx's range filter reads it (`ngx_http_range_parse`), and the
//! `multipart/byteranges` body it sends for several ranges.
//!
//! nginx's rules, kept here because they are the contract (and differ from RFC 9110 in
//! places):
//! - a header that does not start with `bytes=` is ignored (200);
//! - a `bytes=` set that does not parse (`bytes=a-b`, `bytes=1-2x`, a tab) is 416, not
//!   ignored; so is `bytes=5-2` (RFC 9110 would ignore both);
//! - ranges are kept in the order asked, overlapping or not; but if together they would be
//!   longer than the file, the whole file is sent (200) instead, which bounds the answer to
//!   one file's length whatever the client asks;
//! - an empty file, or a range set that comes out empty at offset 0, is sent whole (200).

use super::body::Segment;
use bytes::Bytes;
use once_cell::sync::Lazy;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// `start..end` of the file (`end` exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Ranges {
    /// No usable `Range`: 200 with the whole file.
    Whole,
    /// 206: one range (`Content-Range`) or several (`multipart/byteranges`).
    Partial(Vec<ByteRange>),
    /// 416 with `Content-Range: bytes */<size>`.
    Unsatisfiable,
}

/// The `Range` header `value` for a file of `size` bytes.
pub fn parse(value: &[u8], size: u64) -> Ranges {
    if value.len() < 7 || !value[..6].eq_ignore_ascii_case(b"bytes=") {
        return Ranges::Whole;
    }
    let Ok(length) = i64::try_from(size) else {
        return Ranges::Whole;
    };
    match parse_set(&value[6..], length) {
        Ok(ranges) => ranges,
        Err(Unsatisfiable) => Ranges::Unsatisfiable,
    }
}

struct Unsatisfiable;

/// nginx's parser, step for step (its C string ends in NUL; here the end reads as 0).
fn parse_set(set: &[u8], length: i64) -> Result<Ranges, Unsatisfiable> {
    let mut at = 0;
    let peek = |at: usize| set.get(at).copied().unwrap_or(0);
    let skip_spaces = |at: &mut usize| {
        while peek(*at) == b' ' {
            *at += 1;
        }
    };
    let number = |at: &mut usize| -> Result<i64, Unsatisfiable> {
        let mut value: i64 = 0;
        while peek(*at).is_ascii_digit() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(peek(*at) - b'0')))
                .ok_or(Unsatisfiable)?;
            *at += 1;
        }
        Ok(value)
    };
    let mut ranges = Vec::new();
    let mut total: i64 = 0;
    loop {
        skip_spaces(&mut at);
        let (start, end);
        if peek(at) == b'-' {
            at += 1;
            if !peek(at).is_ascii_digit() {
                return Err(Unsatisfiable);
            }
            let suffix = number(&mut at)?;
            end_of_spec(set, &mut at)?;
            start = if suffix < length { length - suffix } else { 0 };
            end = length;
        } else {
            if !peek(at).is_ascii_digit() {
                return Err(Unsatisfiable);
            }
            start = number(&mut at)?;
            skip_spaces(&mut at);
            if peek(at) != b'-' {
                return Err(Unsatisfiable);
            }
            at += 1;
            skip_spaces(&mut at);
            if matches!(peek(at), b',' | 0) {
                end = length;
            } else {
                if !peek(at).is_ascii_digit() {
                    return Err(Unsatisfiable);
                }
                let last = number(&mut at)?;
                end_of_spec(set, &mut at)?;
                end = if last >= length { length } else { last + 1 };
            }
        }
        if start < end {
            ranges.push(ByteRange {
                start: start.unsigned_abs(),
                end: end.unsigned_abs(),
            });
            total = total.checked_add(end - start).ok_or(Unsatisfiable)?;
        } else if start == 0 {
            return Ok(Ranges::Whole);
        }
        let separator = peek(at);
        at += 1;
        if separator != b',' {
            break;
        }
    }
    if ranges.is_empty() {
        return Err(Unsatisfiable);
    }
    if total > length {
        return Ok(Ranges::Whole);
    }
    Ok(Ranges::Partial(ranges))
}

/// After a range's last number: spaces, then `,` or the end.
fn end_of_spec(set: &[u8], at: &mut usize) -> Result<(), Unsatisfiable> {
    while set.get(*at) == Some(&b' ') {
        *at += 1;
    }
    match set.get(*at) {
        None | Some(b',') => Ok(()),
        Some(_) => Err(Unsatisfiable),
    }
}

/// `Content-Range` of one range.
pub fn content_range(range: ByteRange, size: u64) -> String {
    format!("bytes {}-{}/{size}", range.start, range.end - 1)
}

/// A `multipart/byteranges` body, laid out as nginx lays it out: each part is
/// `CRLF --boundary CRLF Content-Type CRLF Content-Range CRLF CRLF data`, and the body ends
/// with `CRLF --boundary-- CRLF`.
pub struct Multipart {
    /// The response's `Content-Type`.
    pub content_type: String,
    pub segments: Vec<Segment>,
    /// The response's `Content-Length`.
    pub length: u64,
}

pub fn multipart(ranges: &[ByteRange], size: u64, part_type: &str, boundary: &str) -> Multipart {
    let mut segments = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut length = 0;
    for &range in ranges {
        let head = format!(
            "\r\n--{boundary}\r\nContent-Type: {part_type}\r\nContent-Range: {}\r\n\r\n",
            content_range(range, size)
        );
        length += head.len() as u64 + (range.end - range.start);
        segments.push(Segment::Bytes(Bytes::from(head)));
        segments.push(Segment::File {
            start: range.start,
            len: range.end - range.start,
        });
    }
    let closing = format!("\r\n--{boundary}--\r\n");
    length += closing.len() as u64;
    segments.push(Segment::Bytes(Bytes::from(closing)));
    Multipart {
        content_type: format!("multipart/byteranges; boundary={boundary}"),
        segments,
        length,
    }
}

/// Twenty digits, as nginx's (`%0muA` of a counter); this counter starts at a random number,
/// so a file cannot be made to contain the boundary of the answers it will be sent in.
pub fn next_boundary() -> String {
    static NEXT: Lazy<AtomicU64> =
        Lazy::new(|| AtomicU64::new(std::collections::hash_map::RandomState::new().hash_one(0u8)));
    format!("{:020}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(pairs: &[(u64, u64)]) -> Ranges {
        Ranges::Partial(
            pairs
                .iter()
                .map(|&(start, end)| ByteRange { start, end })
                .collect(),
        )
    }

    #[test]
    fn ranges_as_nginx_reads_them() {
        for (value, size, expected) in [
            ("bytes=0-0", 10, partial(&[(0, 1)])),
            ("bytes=0-9", 10, partial(&[(0, 10)])),
            ("bytes=2-", 10, partial(&[(2, 10)])),
            ("bytes=-3", 10, partial(&[(7, 10)])),
            ("bytes=-30", 10, partial(&[(0, 10)])),
            ("bytes=5-100", 10, partial(&[(5, 10)])),
            ("bytes=9-9", 10, partial(&[(9, 10)])),
            ("BYTES=1-2", 10, partial(&[(1, 3)])),
            ("bytes= 1 - 2 , 4 - 5 ", 10, partial(&[(1, 3), (4, 6)])),
            ("bytes=0-1,3-4", 10, partial(&[(0, 2), (3, 5)])),
            // Out of order stays out of order; overlaps are kept while the total fits.
            ("bytes=5-6,0-1", 10, partial(&[(5, 7), (0, 2)])),
            ("bytes=0-2,1-3", 10, partial(&[(0, 3), (1, 4)])),
            // Unsatisfiable members are dropped when another one is satisfiable.
            ("bytes=20-30,0-1", 10, partial(&[(0, 2)])),
            ("bytes=-0,2-3", 10, partial(&[(2, 4)])),
            // Longer in total than the file: the whole file instead.
            ("bytes=0-5,3-8", 10, Ranges::Whole),
            ("bytes=0-,0-", 10, Ranges::Whole),
            // Not a bytes range: ignored.
            ("items=0-1", 10, Ranges::Whole),
            ("bytes 0-1", 10, Ranges::Whole),
            ("bytes=", 10, Ranges::Whole),
            ("", 10, Ranges::Whole),
            // An empty file is sent whole, whatever the range.
            ("bytes=0-5", 0, Ranges::Whole),
            ("bytes=0-", 0, Ranges::Whole),
            ("bytes=-0", 0, Ranges::Whole),
            ("bytes=-5", 0, Ranges::Whole),
            ("bytes=0-0", 0, Ranges::Whole),
            ("bytes=1-", 0, Ranges::Unsatisfiable),
            // Beyond the end, or empty.
            ("bytes=10-", 10, Ranges::Unsatisfiable),
            ("bytes=10-20", 10, Ranges::Unsatisfiable),
            ("bytes=-0", 10, Ranges::Unsatisfiable),
            ("bytes=5-2", 10, Ranges::Unsatisfiable),
            // Malformed sets are 416 in nginx.
            ("bytes=a-b", 10, Ranges::Unsatisfiable),
            ("bytes=1-2x", 10, Ranges::Unsatisfiable),
            ("bytes=1-2,", 10, Ranges::Unsatisfiable),
            ("bytes=,1-2", 10, Ranges::Unsatisfiable),
            ("bytes=--1", 10, Ranges::Unsatisfiable),
            ("bytes=1", 10, Ranges::Unsatisfiable),
            ("bytes=\t1-2", 10, Ranges::Unsatisfiable),
            ("bytes=99999999999999999999-", 10, Ranges::Unsatisfiable),
            ("bytes=0-99999999999999999999", 10, Ranges::Unsatisfiable),
        ] {
            assert_eq!(parse(value.as_bytes(), size), expected, "{value} of {size}");
        }
    }

    #[test]
    fn the_multipart_layout_is_nginx_s() {
        let ranges = [
            ByteRange { start: 0, end: 2 },
            ByteRange { start: 3, end: 5 },
        ];
        let body = multipart(&ranges, 10, "text/plain", "00000000000000000001");
        assert_eq!(
            body.content_type,
            "multipart/byteranges; boundary=00000000000000000001"
        );
        let mut text = Vec::new();
        let file = b"0123456789";
        for segment in &body.segments {
            match segment {
                Segment::Bytes(bytes) => text.extend_from_slice(bytes),
                Segment::File { start, len } => {
                    text.extend_from_slice(&file[*start as usize..(start + len) as usize])
                }
            }
        }
        assert_eq!(
            String::from_utf8(text.clone()).unwrap(),
            "\r\n--00000000000000000001\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\
             \r\n--00000000000000000001\r\nContent-Type: text/plain\r\nContent-Range: bytes 3-4/10\r\n\r\n34\
             \r\n--00000000000000000001--\r\n"
        );
        assert_eq!(body.length, text.len() as u64);
    }

    #[test]
    fn boundaries_are_twenty_digits_and_differ() {
        let (a, b) = (next_boundary(), next_boundary());
        assert_eq!(a.len(), 20);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(a, b);
    }
}
