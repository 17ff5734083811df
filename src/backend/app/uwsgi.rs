//! The request as uWSGI's `socket` expects it from nginx's `uwsgi_pass`: one packet (modifier1
//! 0, the WSGI request) holding the CGI environ that Debian's `uwsgi_params` builds, then the
//! body. uWSGI answers with an HTTP/1.x status line and headers, which Pingora parses as from
//! any upstream.
//!
//! The environ: `QUERY_STRING`, `REQUEST_METHOD`, `CONTENT_TYPE`, `CONTENT_LENGTH`,
//! `REQUEST_URI`, `PATH_INFO` (nginx's decoded `$document_uri`), `DOCUMENT_ROOT`,
//! `SERVER_PROTOCOL`, `REQUEST_SCHEME`, `HTTPS` (only when on), `REMOTE_ADDR`, `REMOTE_PORT`,
//! `SERVER_ADDR`, `SERVER_PORT`, `SERVER_NAME` and `HTTP_HOST` (the site), then `HTTP_*` for
//! every other header field, as nginx passes them (fields whose names hold anything but
//! letters, digits and `-` are left out, as nginx's `ignore_invalid_headers` does, so that
//! `X_Forwarded_For` cannot pose as `X-Forwarded-For`; repeated fields are joined with `, `,
//! cookies with `; `, as nginx does since 1.23).

use super::uri::{self, PathError};
use crate::forwarding::Origin;
use crate::text;
use bytes::{BufMut, Bytes, BytesMut};
use pingora::http::RequestHeader;

/// The most a uwsgi packet can carry: its size is 16 bits.
pub const MAX_PACKET: usize = u16::MAX as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvironError {
    /// What nginx answers 400 for (a path it cannot normalize).
    BadPath(PathError),
    /// The header does not fit in one uwsgi packet (64k).
    TooLarge,
}

/// What the environ is built from, besides the request header as it goes upstream.
pub struct Environ<'a> {
    pub origin: &'a Origin,
    pub site: &'a str,
    /// `DOCUMENT_ROOT`.
    pub document_root: &'a str,
    /// `CONTENT_LENGTH`: the body's length, once buffered, or the client's Content-Length.
    pub content_length: Option<u64>,
    /// `SERVER_PROTOCOL`: the browser's HTTP version, as nginx's `$server_protocol` says it.
    pub server_protocol: &'static str,
}

impl Environ<'_> {
    /// The uwsgi packet for `request`.
    pub fn packet(&self, request: &RequestHeader) -> Result<Bytes, EnvironError> {
        let target = request.raw_path();
        let path_info = uri::document_uri(target).map_err(EnvironError::BadPath)?;
        let query = target
            .iter()
            .position(|&b| b == b'?')
            .map_or(&b""[..], |q| &target[q + 1..]);
        let mut vars = Vars::new();
        let mut number = String::new();
        let header = |name: http::header::HeaderName| {
            request.headers.get(name).map_or(&b""[..], |v| v.as_bytes())
        };
        vars.add(b"QUERY_STRING", query);
        vars.add(b"REQUEST_METHOD", request.method.as_str().as_bytes());
        vars.add(b"CONTENT_TYPE", header(http::header::CONTENT_TYPE));
        vars.add(b"CONTENT_LENGTH", decimal(&mut number, self.content_length));
        vars.add(b"REQUEST_URI", target);
        vars.add(b"PATH_INFO", &path_info);
        vars.add(b"DOCUMENT_ROOT", self.document_root.as_bytes());
        vars.add(b"SERVER_PROTOCOL", self.server_protocol.as_bytes());
        vars.add(b"REQUEST_SCHEME", self.origin.scheme().as_bytes());
        if self.origin.https {
            vars.add(b"HTTPS", b"on");
        }
        vars.add(b"REMOTE_ADDR", ip_text(&mut number, self.origin.client_ip));
        vars.add(
            b"REMOTE_PORT",
            decimal(&mut number, self.origin.client_port.map(u64::from)),
        );
        vars.add(b"SERVER_ADDR", ip_text(&mut number, self.origin.server_ip));
        vars.add(
            b"SERVER_PORT",
            decimal(&mut number, self.origin.server_port.map(u64::from)),
        );
        vars.add(b"SERVER_NAME", self.site.as_bytes());
        vars.add(b"HTTP_HOST", self.site.as_bytes());
        add_header_vars(&mut vars, request);
        vars.finish()
    }
}

/// `HTTP_*` for each header field but Host, one per name.
fn add_header_vars(vars: &mut Vars, request: &RequestHeader) {
    let mut key = Vec::with_capacity(64);
    let mut joined = Vec::new();
    // The map yields a name's values one after the other, so one pass groups them with no
    // lookup per name.
    let mut fields = request.headers.iter().peekable();
    while let Some((name, first)) = fields.next() {
        let mut more = std::iter::from_fn(|| fields.next_if(|(next, _)| *next == name))
            .map(|(_, value)| value)
            .peekable();
        if name == http::header::HOST || !is_plain_name(name.as_str()) {
            more.for_each(drop);
            continue;
        }
        key.clear();
        key.extend_from_slice(b"HTTP_");
        key.extend(name.as_str().bytes().map(|b| match b {
            b'-' => b'_',
            b => b.to_ascii_uppercase(),
        }));
        if more.peek().is_none() {
            vars.add(&key, first.as_bytes());
            continue;
        }
        let separator: &[u8] = if name == http::header::COOKIE {
            b"; "
        } else {
            b", "
        };
        joined.clear();
        joined.extend_from_slice(first.as_bytes());
        for value in more {
            joined.extend_from_slice(separator);
            joined.extend_from_slice(value.as_bytes());
        }
        vars.add(&key, &joined);
    }
}

/// nginx's `ignore_invalid_headers`: letters, digits and hyphens only (no underscores).
fn is_plain_name(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn decimal(buf: &mut String, n: Option<u64>) -> &[u8] {
    buf.clear();
    if let Some(n) = n {
        text::push_decimal(buf, n);
    }
    buf.as_bytes()
}

fn ip_text(buf: &mut String, ip: Option<std::net::IpAddr>) -> &[u8] {
    buf.clear();
    if let Some(ip) = ip {
        text::push_ip(buf, ip);
    }
    buf.as_bytes()
}

/// A uwsgi packet being built: a 4-byte header (modifier1, 16-bit size, modifier2), then each
/// var as a 16-bit length and the key, a 16-bit length and the value (little-endian).
struct Vars {
    buf: BytesMut,
    too_large: bool,
}

impl Vars {
    fn new() -> Vars {
        let mut buf = BytesMut::with_capacity(2048);
        buf.put_bytes(0, 4);
        Vars {
            buf,
            too_large: false,
        }
    }

    fn add(&mut self, key: &[u8], value: &[u8]) {
        let (Ok(key_len), Ok(value_len)) = (u16::try_from(key.len()), u16::try_from(value.len()))
        else {
            self.too_large = true;
            return;
        };
        self.buf.put_u16_le(key_len);
        self.buf.put_slice(key);
        self.buf.put_u16_le(value_len);
        self.buf.put_slice(value);
    }

    fn finish(mut self) -> Result<Bytes, EnvironError> {
        let size = self.buf.len() - 4;
        if self.too_large || size > MAX_PACKET {
            return Err(EnvironError::TooLarge);
        }
        let size = u16::try_from(size).expect("checked above").to_le_bytes();
        self.buf[0] = 0; // modifier1 0: a WSGI request
        self.buf[1..3].copy_from_slice(&size);
        self.buf[3] = 0;
        Ok(self.buf.freeze())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The vars of a packet, in order; panics on a malformed packet.
    pub fn decode(packet: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        assert_eq!(packet[0], 0, "modifier1");
        assert_eq!(packet[3], 0, "modifier2");
        let size = u16::from_le_bytes([packet[1], packet[2]]) as usize;
        assert_eq!(size, packet.len() - 4, "datasize");
        let mut rest = &packet[4..];
        let take = |rest: &mut &[u8]| {
            let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            let item = rest[2..2 + len].to_vec();
            *rest = &rest[2 + len..];
            item
        };
        let mut vars = Vec::new();
        while !rest.is_empty() {
            let key = take(&mut rest);
            let value = take(&mut rest);
            vars.push((key, value));
        }
        vars
    }

    fn environ_of(request: &RequestHeader, origin: &Origin) -> BTreeMap<String, String> {
        let environ = Environ {
            origin,
            site: "alpha.example",
            document_root: "/srv/alpha.example",
            content_length: Some(11),
            server_protocol: "HTTP/1.1",
        };
        let packet = environ.packet(request).unwrap();
        let vars = decode(&packet);
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k.clone()).unwrap(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        assert_eq!(map.len(), vars.len(), "each key once");
        map
    }

    #[test]
    fn environ_as_nginx_builds_it() {
        let mut req = RequestHeader::build("POST", b"/a/%2e%2e/b%20c?x=1&y=%20", None).unwrap();
        req.insert_header("Host", "Alpha.Example:8080").unwrap();
        req.insert_header("Content-Type", "text/plain").unwrap();
        // Repeated names interleaved: each name's values are still joined in order.
        req.append_header("Cookie", "a=1").unwrap();
        req.append_header("Accept", "text/html").unwrap();
        req.append_header("X_Forwarded_For", "6.6.6.6").unwrap();
        req.append_header("Cookie", "b=2").unwrap();
        req.append_header("X_Forwarded_For", "7.7.7.7").unwrap();
        req.append_header("Accept", "*/*").unwrap();
        req.insert_header("X-Odd", &b"caf\xe9"[..]).unwrap();
        let origin = Origin {
            client_ip: Some("2001:db8::7".parse().unwrap()),
            client_port: Some(50123),
            server_ip: Some("192.0.2.1".parse().unwrap()),
            server_port: Some(443),
            https: true,
            version: Some("HTTP/2.0"),
        };
        let env = environ_of(&req, &origin);
        let expect = [
            ("QUERY_STRING", "x=1&y=%20"),
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_TYPE", "text/plain"),
            ("CONTENT_LENGTH", "11"),
            ("REQUEST_URI", "/a/%2e%2e/b%20c?x=1&y=%20"),
            ("PATH_INFO", "/b c"),
            ("DOCUMENT_ROOT", "/srv/alpha.example"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_SCHEME", "https"),
            ("HTTPS", "on"),
            ("REMOTE_ADDR", "2001:db8::7"),
            ("REMOTE_PORT", "50123"),
            ("SERVER_ADDR", "192.0.2.1"),
            ("SERVER_PORT", "443"),
            ("SERVER_NAME", "alpha.example"),
            ("HTTP_HOST", "alpha.example"),
            ("HTTP_CONTENT_TYPE", "text/plain"),
            ("HTTP_COOKIE", "a=1; b=2"),
            ("HTTP_ACCEPT", "text/html, */*"),
            ("HTTP_X_ODD", "caf\u{fffd}"),
        ];
        for (key, value) in expect {
            assert_eq!(env.get(key).map(String::as_str), Some(value), "{key}");
        }
        assert!(!env.contains_key("HTTP_X_FORWARDED_FOR"), "{env:?}");
        assert_eq!(env.len(), expect.len(), "{env:?}");
    }

    #[test]
    fn plain_http_has_no_https_and_empty_unknowns() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Host", "alpha.example").unwrap();
        let env = environ_of(&req, &Origin::default());
        assert_eq!(env["REQUEST_SCHEME"], "http");
        assert!(!env.contains_key("HTTPS"));
        assert_eq!(env["REMOTE_ADDR"], "");
        assert_eq!(env["REMOTE_PORT"], "");
        assert_eq!(env["QUERY_STRING"], "");
        assert_eq!(env["CONTENT_TYPE"], "");
    }

    #[test]
    fn what_does_not_fit_is_refused() {
        let mut req = RequestHeader::build("GET", b"/../x", None).unwrap();
        let environ = Environ {
            origin: &Origin::default(),
            site: "a.example",
            document_root: "",
            content_length: None,
            server_protocol: "HTTP/1.1",
        };
        assert_eq!(
            environ.packet(&req),
            Err(EnvironError::BadPath(PathError::EscapesRoot))
        );
        req.set_uri(http::Uri::from_static("/"));
        for i in 0..20 {
            req.insert_header(format!("x-big-{i}"), "v".repeat(4000))
                .unwrap();
        }
        assert_eq!(environ.packet(&req), Err(EnvironError::TooLarge));
    }
}
