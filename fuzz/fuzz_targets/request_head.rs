//! Any bytes as a request header: `check_h1_head` never panics; and whenever httparse (what
//! Pingora parses with) reads a complete header and Herald's checks let it through, the header
//! has the properties the rest of Herald relies on, as httparse sees it: at most one
//! Content-Length, of digits; no Transfer-Encoding; CRLF line ends; a method of capitals; a
//! target in origin, absolute or asterisk form; no protected header named by Connection.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/request_checks.rs"]
#[allow(dead_code)]
mod request_checks;

use request_checks::{check_field_sizes, check_h1_head, parse_content_length, HeaderLimits};

const PROTECTED: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, data)) = data.split_first() else {
        return;
    };
    // Small limits too, so that the size checks are reached with short inputs.
    let limits = HeaderLimits {
        buffers: 1 + usize::from(size >> 5),
        buffer_size: 16 + 64 * usize::from(size & 31),
    };
    let _ = check_h1_head(data, &limits);

    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(len)) = req.parse(data) else {
        return;
    };
    // What Pingora hands Herald: the header bytes, up to the end of the empty line.
    let head = &data[..len];
    let _ = check_field_sizes(
        req.path.map_or(0, str::len),
        req.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
        &limits,
    );
    if check_h1_head(head, &limits).is_err() {
        return;
    }
    let lengths: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| trim(h.value))
        .collect();
    assert!(lengths.len() <= 1, "{lengths:?}");
    if let Some(length) = lengths.first() {
        assert!(parse_content_length(length).is_some(), "{length:?}");
    }
    assert!(
        !req.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding")),
        "Transfer-Encoding let through"
    );
    for (i, b) in head.iter().enumerate() {
        if *b == b'\n' {
            assert!(i > 0 && head[i - 1] == b'\r', "bare LF at {i}");
        }
    }
    let method = req.method.unwrap_or_default();
    assert!(
        !method.is_empty()
            && method
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-'),
        "{method:?}"
    );
    let path = req.path.unwrap_or_default().to_ascii_lowercase();
    assert!(
        path.starts_with('/')
            || path.starts_with("http://")
            || path.starts_with("https://")
            || (path == "*" && method == "OPTIONS"),
        "{path:?}"
    );
    let mut options = 0;
    for field in req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
    {
        for token in field.value.split(|&b| b == b',').map(trim) {
            if token.is_empty() {
                continue;
            }
            options += 1;
            assert!(
                !PROTECTED
                    .iter()
                    .any(|name| token.eq_ignore_ascii_case(name.as_bytes())),
                "{token:?}"
            );
        }
    }
    assert!(options < 10);
});
