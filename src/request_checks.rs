//! Hostile-input checks on a request header, made before anything else is done with the request
//! (no site is looked up, no upstream connected, no app started).
//!
//! Pingora has already parsed the header with httparse and refused what httparse refuses
//! (obs-fold, space before a colon, control bytes, conflicting Content-Lengths). What it lets
//! through and Herald refuses here, from the header bytes as received:
//!
//! - framing a hop could read differently: Content-Length together with Transfer-Encoding
//!   (Pingora drops the Content-Length), a repeated Content-Length (forwarded verbatim, even
//!   when its copies agree, like `5, 5`), a repeated Transfer-Encoding, a coding other than a
//!   single `chunked` (501, as nginx answers), and lines that end in a bare LF;
//! - `Connection` naming a header whose removal changes the request's meaning (framing, Host,
//!   forwarding headers), which Pingora refuses only after it has connected upstream;
//! - a method nginx would refuse, or a target that is not origin-form, absolute-form or `*`;
//! - sizes past `large_client_header_buffers` (414 for the request line, 431 for the rest).
//!
//! Pure functions over bytes (no HTTP types, no allocation), so that `fuzz/` can build them alone.

/// nginx's `large_client_header_buffers NUMBER SIZE`: the request line and each header field
/// must fit in SIZE, and the whole header in NUMBER × SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    pub buffers: usize,
    pub buffer_size: usize,
}

impl HeaderLimits {
    /// nginx's default, `4 8k`.
    pub const NGINX_DEFAULT: HeaderLimits = HeaderLimits {
        buffers: 4,
        buffer_size: 8 << 10,
    };

    pub fn total(&self) -> usize {
        self.buffers.saturating_mul(self.buffer_size)
    }
}

/// Why a request is refused, and with which status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400: malformed or ambiguous.
    BadRequest(&'static str),
    /// 414: the request line is longer than one header buffer.
    UriTooLong,
    /// 431: a header field, or the whole header, is too large.
    HeaderTooLarge(&'static str),
    /// 501: a transfer coding other than `chunked`.
    UnsupportedCoding,
}

impl Rejection {
    pub fn status(self) -> u16 {
        match self {
            Rejection::BadRequest(_) => 400,
            Rejection::UriTooLong => 414,
            Rejection::HeaderTooLarge(_) => 431,
            Rejection::UnsupportedCoding => 501,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Rejection::BadRequest(reason) | Rejection::HeaderTooLarge(reason) => reason,
            Rejection::UriTooLong => "request line longer than large_client_header_buffers' size",
            Rejection::UnsupportedCoding => "Transfer-Encoding other than chunked",
        }
    }
}

/// Pingora refuses this many `Connection` tokens, or more (after connecting upstream).
const MAX_CONNECTION_TOKENS: usize = 10;
/// The most digits a Content-Length may have: 19 nines still fit in a u64.
const MAX_LENGTH_DIGITS: usize = 19;

/// Checks an HTTP/1.x request header exactly as it arrived: from the request line to the empty
/// line that ends it, both included.
pub fn check_h1_head(raw: &[u8], limits: &HeaderLimits) -> Result<(), Rejection> {
    if raw.len() > limits.total() {
        return Err(Rejection::HeaderTooLarge(
            "header larger than large_client_header_buffers",
        ));
    }
    let mut lines = Lines { rest: raw };
    // RFC 9112 section 2.2: empty lines before the request line are ignored (httparse does).
    let request_line = loop {
        match lines.next() {
            Some(Ok([])) => continue,
            Some(Ok(line)) => break line,
            Some(Err(rejection)) => return Err(rejection),
            None => return Err(Rejection::BadRequest("no request line")),
        }
    };
    check_request_line(request_line, limits)?;
    let mut framing = Framing::default();
    for line in lines.by_ref() {
        let line = line?;
        if line.is_empty() {
            return framing.verdict();
        }
        if line.len() > limits.buffer_size {
            return Err(Rejection::HeaderTooLarge(
                "header field longer than large_client_header_buffers' size",
            ));
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return Err(Rejection::BadRequest("header line without a colon"));
        };
        framing.field(&line[..colon], trim_whitespace(&line[colon + 1..]))?;
    }
    Err(Rejection::BadRequest(
        "header without its ending empty line",
    ))
}

/// Checks the sizes of a header that did not arrive as HTTP/1 text (HTTP/2): the target
/// against one buffer, and each field (`name: value` plus its line end) and the sum against
/// the limits, as if it had.
pub fn check_field_sizes<'a>(
    target_len: usize,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    limits: &HeaderLimits,
) -> Result<(), Rejection> {
    if target_len > limits.buffer_size {
        return Err(Rejection::UriTooLong);
    }
    let mut total = target_len;
    for (name, value) in fields {
        let line = name.len() + 2 + value.len();
        if line > limits.buffer_size {
            return Err(Rejection::HeaderTooLarge(
                "header field longer than large_client_header_buffers' size",
            ));
        }
        total += line + 2;
        if total > limits.total() {
            return Err(Rejection::HeaderTooLarge(
                "header larger than large_client_header_buffers",
            ));
        }
    }
    Ok(())
}

/// A Content-Length value as Herald accepts it: 1 to 19 ASCII digits, nothing else (no sign,
/// no list, no spaces inside).
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > MAX_LENGTH_DIGITS {
        return None;
    }
    value.iter().try_fold(0u64, |length, &b| {
        b.is_ascii_digit()
            .then(|| length * 10 + u64::from(b - b'0'))
    })
}

/// The lines of a header, without their CRLF; a line ending in a bare LF is an error.
struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<&'a [u8], Rejection>;

    fn next(&mut self) -> Option<Self::Item> {
        let end = memchr::memchr(b'\n', self.rest)?;
        let (line, rest) = (&self.rest[..end], &self.rest[end + 1..]);
        self.rest = rest;
        Some(match line.strip_suffix(b"\r") {
            Some(line) => Ok(line),
            // RFC 9112 section 2.2 lets a recipient accept a bare LF, and httparse does. Herald
            // re-serialises the header upstream, so its own hops agree; it refuses anyway, because
            // no real client sends one and a proxy in front of Herald may have split the lines
            // differently (a classic way to hide a header from one hop).
            None => Err(Rejection::BadRequest("line ending in a bare LF")),
        })
    }
}

fn check_request_line(line: &[u8], limits: &HeaderLimits) -> Result<(), Rejection> {
    if line.len() > limits.buffer_size {
        return Err(Rejection::UriTooLong);
    }
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    // nginx's rule: a method is made of capital letters, '_' and '-'.
    if method.is_empty()
        || !method
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
    {
        return Err(Rejection::BadRequest("invalid method"));
    }
    let origin_form = target.first() == Some(&b'/');
    let absolute_form =
        starts_with_ignore_case(target, b"http://") || starts_with_ignore_case(target, b"https://");
    let asterisk_form = target == b"*" && method == b"OPTIONS";
    // Anything else (`%20/`, what Pingora makes of `GET  / HTTP/1.1`; `example.com:80`, the
    // authority-form of CONNECT) names no resource Herald can route.
    if origin_form || absolute_form || asterisk_form {
        Ok(())
    } else {
        Err(Rejection::BadRequest("invalid request target"))
    }
}

/// What the header fields say about the body, gathered field by field.
#[derive(Default)]
struct Framing {
    content_length: bool,
    /// `Some(true)` for a single `chunked`.
    transfer_encoding: Option<bool>,
    connection_tokens: usize,
}

impl Framing {
    fn field(&mut self, name: &[u8], value: &[u8]) -> Result<(), Rejection> {
        if name.eq_ignore_ascii_case(b"content-length") {
            if self.content_length {
                return Err(Rejection::BadRequest("more than one Content-Length"));
            }
            if parse_content_length(value).is_none() {
                return Err(Rejection::BadRequest("invalid Content-Length"));
            }
            self.content_length = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if self.transfer_encoding.is_some() {
                return Err(Rejection::BadRequest("more than one Transfer-Encoding"));
            }
            self.transfer_encoding = Some(value.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.connection(value)?;
        }
        Ok(())
    }

    /// The headers a `Connection` field names are removed before the request goes upstream
    /// (they are hop-by-hop). Pingora refuses the same nominations, but only once it has
    /// connected upstream, which on a backend may have started the site's app.
    fn connection(&mut self, value: &[u8]) -> Result<(), Rejection> {
        for token in value.split(|&b| b == b',').map(trim_whitespace) {
            if token.is_empty() {
                continue;
            }
            self.connection_tokens += 1;
            if self.connection_tokens >= MAX_CONNECTION_TOKENS {
                return Err(Rejection::BadRequest("too many Connection options"));
            }
            if !token.iter().all(|&b| is_tchar(b)) {
                return Err(Rejection::BadRequest("invalid Connection option"));
            }
            const PROTECTED: [&[u8]; 6] = [
                b"host",
                b"content-length",
                b"transfer-encoding",
                b"x-forwarded-for",
                b"x-forwarded-host",
                b"x-forwarded-proto",
            ];
            if PROTECTED
                .iter()
                .any(|name| token.eq_ignore_ascii_case(name))
            {
                return Err(Rejection::BadRequest(
                    "Connection names a header that must not be removed",
                ));
            }
        }
        Ok(())
    }

    fn verdict(&self) -> Result<(), Rejection> {
        match (self.transfer_encoding, self.content_length) {
            (None, _) => Ok(()),
            (Some(_), true) => Err(Rejection::BadRequest(
                "both Content-Length and Transfer-Encoding",
            )),
            (Some(false), false) => Err(Rejection::UnsupportedCoding),
            (Some(true), false) => Ok(()),
        }
    }
}

fn trim_whitespace(bytes: &[u8]) -> &[u8] {
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

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeaderLimits = HeaderLimits::NGINX_DEFAULT;

    fn check(head: &str) -> Result<(), Rejection> {
        check_h1_head(head.as_bytes(), &LIMITS)
    }

    fn status(head: &str) -> u16 {
        check(head).err().map_or(200, Rejection::status)
    }

    #[test]
    fn ordinary_requests_pass() {
        for head in [
            "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "\r\nGET /x?y=1 HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "POST /form HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  0005 \r\n\r\n",
            "GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "PROPFIND /dav HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Secret\r\n\r\n",
            "GET /chat HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Note: Transfer-Encoding: chunked\r\n\r\n",
            // A chunked body is framed unambiguously; the backend reads it whole (411 only
            // with request buffering off, decided by the front door).
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding:\tChunked \r\n\r\n",
        ] {
            assert_eq!(check(head), Ok(()), "{head:?}");
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for (head, expected) in [
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: \r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", 501),
        ] {
            assert_eq!(status(head), expected, "{head:?}");
        }
    }

    #[test]
    fn bare_line_feeds_are_refused_wherever_they_are() {
        for head in [
            "GET / HTTP/1.1\nHost: a\n\n",
            "GET / HTTP/1.1\r\nHost: a\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\n",
            "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(
                check(head),
                Err(Rejection::BadRequest("line ending in a bare LF")),
                "{head:?}"
            );
        }
    }

    #[test]
    fn connection_must_not_name_what_gives_the_request_its_meaning() {
        for value in [
            "host",
            "Content-Length",
            "close, X-Forwarded-For",
            "transfer-encoding",
            "x-forwarded-proto",
            "\"x-forwarded-host\"",
            "a, b, c, d, e, f, g, h, i, j",
            "a b",
        ] {
            let head = format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: {value}\r\n\r\n");
            assert_eq!(status(&head), 400, "{value}");
        }
        // Nine options are fine (Pingora's own limit is ten), across several fields too.
        let head =
            "GET / HTTP/1.1\r\nConnection: a, b, c, d\r\nConnection: e, f, , g, h, i\r\n\r\n";
        assert_eq!(check(head), Ok(()));
    }

    #[test]
    fn methods_and_targets_nginx_would_not_take_are_refused() {
        for head in [
            "get / HTTP/1.1\r\n\r\n",
            "G3T / HTTP/1.1\r\n\r\n",
            "GET %20/ HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "GET a.example:80 HTTP/1.1\r\n\r\n",
            "GET ftp://a/ HTTP/1.1\r\n\r\n",
            " / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(head), 400, "{head:?}");
        }
    }

    #[test]
    fn sizes_follow_large_client_header_buffers() {
        let limits = HeaderLimits {
            buffers: 4,
            buffer_size: 100,
        };
        let with = |line: &str, fields: &[String]| {
            let mut head = format!("{line}\r\n");
            for field in fields {
                head.push_str(field);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            check_h1_head(head.as_bytes(), &limits)
                .err()
                .map(Rejection::status)
        };
        let field = |len: usize| format!("X: {}", "v".repeat(len - 3));
        let line = |len: usize| format!("GET /{} HTTP/1.1", "p".repeat(len - 14));
        assert_eq!(with(&line(100), &[field(100)]), None);
        assert_eq!(with(&line(101), &[]), Some(414));
        assert_eq!(with(&line(20), &[field(101)]), Some(431));
        // 400 bytes in all fit; one more does not.
        let three = [field(90), field(90), field(90)];
        let used = line(20).len() + 2 + 3 * 92 + 2;
        let mut fields = three.to_vec();
        fields.push(field(400 - used - 2));
        assert_eq!(with(&line(20), &fields), None);
        fields[3] = field(400 - used - 1);
        assert_eq!(with(&line(20), &fields), Some(431));
    }

    #[test]
    fn incomplete_or_empty_input_is_refused_without_panicking() {
        for raw in [
            &b""[..],
            b"\r\n",
            b"GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/1.1\r\nHost\r\n\r\n",
        ] {
            assert!(check_h1_head(raw, &LIMITS).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn field_sizes_of_parsed_headers() {
        let limits = HeaderLimits {
            buffers: 2,
            buffer_size: 20,
        };
        let fields = |pairs: &'static [(&'static str, &'static str)]| {
            pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        };
        assert_eq!(
            check_field_sizes(5, fields(&[("host", "a.example")]), &limits),
            Ok(())
        );
        assert_eq!(
            check_field_sizes(21, fields(&[]), &limits),
            Err(Rejection::UriTooLong)
        );
        assert_eq!(
            check_field_sizes(1, fields(&[("x", "0123456789abcdefgh")]), &limits)
                .map_err(Rejection::status),
            Err(431)
        );
        assert_eq!(
            check_field_sizes(
                11,
                fields(&[("x", "12345"), ("y", "12345"), ("z", "12345")]),
                &limits
            )
            .map_err(Rejection::status),
            Err(431)
        );
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"0005"), Some(5));
        assert_eq!(
            parse_content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"5, 5",
            b"+5",
            b"-5",
            b" 5",
            b"0x5",
            b"5.0",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }
}
