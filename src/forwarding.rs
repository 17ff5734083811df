//! What an upstream is told about the client: `X-Forwarded-*`, `X-Real-IP` and one `Forwarded`
//! element (RFC 7239) with everything the edge saw of the browser's connection, and a request
//! target in origin form.

use crate::text;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::net::{IpAddr, SocketAddr};

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_REAL_IP: &str = "x-real-ip";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const FORWARDED: &str = "forwarded";

/// What a hop saw of the browser's connection: who connected (address and port), to which of
/// its addresses and ports, and whether over TLS. The backend builds an app's CGI environ from
/// it (`REMOTE_ADDR`, `REMOTE_PORT`, `SERVER_ADDR`, `SERVER_PORT`, `HTTPS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    pub client_ip: Option<IpAddr>,
    pub client_port: Option<u16>,
    pub server_ip: Option<IpAddr>,
    pub server_port: Option<u16>,
    pub https: bool,
    /// The browser's HTTP version, as nginx's `$server_protocol` writes it (`HTTP/2.0`).
    pub version: Option<&'static str>,
}

/// nginx's `$server_protocol` for a request's version.
pub fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

const PROTOCOL_NAMES: [&str; 5] = ["HTTP/0.9", "HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/3.0"];

impl Origin {
    /// The connection this hop accepted, as its sockets say.
    pub fn of_connection(session: &Session) -> Origin {
        let client = session.client_addr().and_then(|a| a.as_inet());
        let server = session.server_addr().and_then(|a| a.as_inet());
        Origin {
            client_ip: client.map(|a| a.ip().to_canonical()),
            client_port: client.map(SocketAddr::port),
            server_ip: server.map(|a| a.ip().to_canonical()),
            server_port: server.map(SocketAddr::port),
            https: scheme(session) == "https",
            version: Some(protocol_name(session.req_header().version)),
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// One `Forwarded` element: `for="192.0.2.7:51234";by="203.0.113.1:443";proto=https`,
    /// and the browser's HTTP version in an extension parameter, `version="HTTP/2.0"`.
    #[cfg(test)]
    pub fn forwarded_element(&self) -> String {
        let mut element = String::with_capacity(96);
        self.push_forwarded_element(&mut element);
        element
    }

    fn push_forwarded_element(&self, element: &mut String) {
        if let Some(ip) = self.client_ip {
            element.push_str("for=\"");
            push_node(element, ip, self.client_port);
            element.push_str("\";");
        }
        if let Some(ip) = self.server_ip {
            element.push_str("by=\"");
            push_node(element, ip, self.server_port);
            element.push_str("\";");
        }
        element.push_str("proto=");
        element.push_str(self.scheme());
        if let Some(version) = self.version {
            element.push_str(";version=\"");
            element.push_str(version);
            element.push('"');
        }
    }

    /// The last element of a `Forwarded` header (the one the nearest hop added), if it names
    /// at least the client. Obfuscated or `unknown` nodes count as absent.
    pub fn from_forwarded(value: &[u8]) -> Option<Origin> {
        let text = std::str::from_utf8(value).ok()?;
        let element = text.rsplit(',').next()?;
        let mut origin = Origin::default();
        for pair in element.split(';') {
            let Some((key, value)) = pair.trim().split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            if key.eq_ignore_ascii_case("for") {
                (origin.client_ip, origin.client_port) = parse_node(value);
            } else if key.eq_ignore_ascii_case("by") {
                (origin.server_ip, origin.server_port) = parse_node(value);
            } else if key.eq_ignore_ascii_case("proto") {
                origin.https = value.eq_ignore_ascii_case("https");
            } else if key.eq_ignore_ascii_case("version") {
                origin.version = PROTOCOL_NAMES.into_iter().find(|name| *name == value);
            }
        }
        origin.client_ip.is_some().then_some(origin)
    }

    /// What a proxy that sends only `X-Forwarded-For` (or `X-Real-IP`) and `X-Forwarded-Proto`
    /// (an nginx edge, a cloud load balancer) said about the client; the rest is this hop's own
    /// connection. The address is the last one of `X-Forwarded-For`: the one that proxy added
    /// (those before it are whatever the client claimed).
    fn from_x_forwarded(req: &RequestHeader, own: Origin) -> Option<Origin> {
        let header = |name: &str| {
            req.headers
                .get_all(name)
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let client_ip = header(X_FORWARDED_FOR)
            .and_then(|list| list.rsplit(',').next())
            .or_else(|| header(X_REAL_IP))
            .and_then(|ip| ip.trim().parse::<IpAddr>().ok())?;
        Some(Origin {
            client_ip: Some(client_ip.to_canonical()),
            client_port: None,
            https: header(X_FORWARDED_PROTO).is_some_and(|p| p.eq_ignore_ascii_case("https")),
            ..own
        })
    }

    /// What a request tells this hop about its browser: a trusted hop's `Forwarded` element
    /// (or its `X-Forwarded-*`), otherwise this hop's own connection.
    pub fn of_request(session: &Session, trusted: bool) -> Origin {
        let own = Origin::of_connection(session);
        if !trusted {
            return own;
        }
        let req = session.req_header();
        req.headers
            .get(FORWARDED)
            .and_then(|v| Origin::from_forwarded(v.as_bytes()))
            .or_else(|| Origin::from_x_forwarded(req, own))
            .unwrap_or(own)
    }
}

/// RFC 7239's node: `192.0.2.7:51234`, `[2001:db8::1]:443`, or without the port.
fn push_node(out: &mut String, ip: IpAddr, port: Option<u16>) {
    let v6 = ip.is_ipv6();
    if v6 {
        out.push('[');
    }
    text::push_ip(out, ip);
    if v6 {
        out.push(']');
    }
    if let Some(port) = port {
        out.push(':');
        text::push_decimal(out, u64::from(port));
    }
}

fn parse_node(text: &str) -> (Option<IpAddr>, Option<u16>) {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return (Some(addr.ip().to_canonical()), Some(addr.port()));
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    (
        bare.parse::<IpAddr>().ok().map(|ip| ip.to_canonical()),
        None,
    )
}

/// Whether a header field speaks for the client or for the hops before this one:
/// `X-Forwarded-*` (For, Host, Port, Proto, Prefix, Ssl, Scheme, ... as Django, Werkzeug's
/// ProxyFix and Rack read them), `Forwarded`, `X-Real-IP`, and the scheme fields `Front-End-Https`
/// and `X-Url-Scheme`. `_` counts as `-`: uWSGI's `http-socket` gives `X_Forwarded_Host` and
/// `X-Forwarded-Host` the same `HTTP_X_FORWARDED_HOST`.
fn is_forwarding_field(name: &str) -> bool {
    // Header names are lowercase already (`http::HeaderName`).
    let same = |name: &[u8], field: &[u8]| {
        name.len() == field.len()
            && name
                .iter()
                .zip(field)
                .all(|(n, f)| n == f || (*n == b'_' && *f == b'-'))
    };
    let name = name.as_bytes();
    const PREFIX: &[u8] = b"x-forwarded-";
    (name.len() > PREFIX.len() && same(&name[..PREFIX.len()], PREFIX))
        || [
            &b"forwarded"[..],
            b"x-real-ip",
            b"front-end-https",
            b"x-url-scheme",
        ]
        .iter()
        .any(|field| same(name, field))
}

/// Replaces whatever the client (or an untrusted hop) claimed with what this hop saw.
pub fn replace_forwarding_headers(req: &mut RequestHeader, origin: &Origin) -> Result<()> {
    // The fields set below replace the client's (an insert drops every earlier value); the
    // other claims go. Most requests carry none, and cost one pass over the names.
    let set_below = |name: &str| {
        name == X_FORWARDED_PROTO
            || name == FORWARDED
            || (origin.client_ip.is_some() && (name == X_FORWARDED_FOR || name == X_REAL_IP))
    };
    let dropped = |name: &http::HeaderName| {
        let name = name.as_str();
        is_forwarding_field(name) && !set_below(name)
    };
    if req.headers.keys().any(dropped) {
        let claimed: Vec<http::HeaderName> =
            req.headers.keys().filter(|n| dropped(n)).cloned().collect();
        for name in claimed {
            req.remove_header(&name);
        }
    }
    // Every value in one buffer: the client's address, then the `Forwarded` element.
    let mut values = String::with_capacity(128);
    if let Some(ip) = origin.client_ip {
        text::push_ip(&mut values, ip);
    }
    let ip_end = values.len();
    origin.push_forwarded_element(&mut values);
    let values = Bytes::from(values);
    let value = |bytes: Bytes| {
        http::HeaderValue::from_maybe_shared(bytes).expect("addresses and tokens are valid values")
    };
    if origin.client_ip.is_some() {
        let ip = value(values.slice(..ip_end));
        req.insert_header(X_FORWARDED_FOR, ip.clone())?;
        req.insert_header(X_REAL_IP, ip)?;
    }
    req.insert_header(
        X_FORWARDED_PROTO,
        http::HeaderValue::from_static(origin.scheme()),
    )?;
    req.insert_header(FORWARDED, value(values.slice(ip_end..)))
}

/// Drops `Expect` (a hop answers `100-continue` itself: `FrontDoor::send_continue_if_expected`).
pub fn strip_expect(req: &mut RequestHeader) {
    if req.headers.contains_key(http::header::EXPECT) {
        req.remove_header(&http::header::EXPECT);
    }
}

/// Whether a trusted hop (the edge) already said who the client is.
pub fn has_forwarding_headers(req: &RequestHeader) -> bool {
    req.headers.contains_key(X_FORWARDED_FOR) || req.headers.contains_key(FORWARDED)
}

/// An absolute-form target (`GET http://site/path`) becomes `GET /path` with `Host: site`,
/// which is what app servers expect; the authority already decided the site.
pub fn to_origin_form(req: &mut RequestHeader) -> Result<()> {
    let Some(authority) = crate::host::target_authority(req).map(<[u8]>::to_vec) else {
        return Ok(());
    };
    let target = req
        .uri
        .path_and_query()
        .map_or_else(|| http::uri::PathAndQuery::from_static("/"), Clone::clone);
    req.set_uri(http::Uri::from(target));
    req.insert_header(http::header::HOST, authority)
}

/// `https` for a request that came over TLS (HTTP/1.1 or HTTP/2), otherwise `http`.
pub fn scheme(session: &Session) -> &'static str {
    let tls = session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some());
    if tls {
        "https"
    } else {
        "http"
    }
}

/// The client's IP as the listening socket saw it.
pub fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| addr.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            client_ip: Some("192.0.2.7".parse().unwrap()),
            client_port: Some(51234),
            server_ip: Some("2001:db8::1".parse().unwrap()),
            server_port: Some(443),
            https: true,
            version: Some("HTTP/2.0"),
        }
    }

    #[test]
    fn client_claims_are_replaced() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Forwarded-For", "6.6.6.6").unwrap();
        req.insert_header("X-Real-IP", "6.6.6.6").unwrap();
        req.insert_header("Forwarded", "for=6.6.6.6").unwrap();
        replace_forwarding_headers(&mut req, &origin()).unwrap();
        assert_eq!(req.headers.get("x-forwarded-for").unwrap(), "192.0.2.7");
        assert_eq!(req.headers.get("x-real-ip").unwrap(), "192.0.2.7");
        assert_eq!(req.headers.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(
            req.headers.get("forwarded").unwrap(),
            "for=\"192.0.2.7:51234\";by=\"[2001:db8::1]:443\";proto=https;version=\"HTTP/2.0\""
        );
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(req.headers.get_all("forwarded").iter().count(), 1);
    }

    #[test]
    fn without_a_client_address_the_claimed_one_goes_too() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("X-Forwarded-For", "6.6.6.6").unwrap();
        req.append_header("X-Forwarded-For", "7.7.7.7").unwrap();
        req.insert_header("X-Real-IP", "6.6.6.6").unwrap();
        req.append_header("X-FORWARDED-PROTO", "https").unwrap();
        req.append_header("x-forwarded-proto", "https").unwrap();
        let unknown = Origin {
            client_ip: None,
            client_port: None,
            ..origin()
        };
        replace_forwarding_headers(&mut req, &unknown).unwrap();
        assert!(!req.headers.contains_key("x-forwarded-for"));
        assert!(!req.headers.contains_key("x-real-ip"));
        let proto: Vec<_> = req.headers.get_all("x-forwarded-proto").iter().collect();
        assert_eq!(proto, ["https"]);
        assert_eq!(
            req.headers.get("forwarded").unwrap(),
            "by=\"[2001:db8::1]:443\";proto=https;version=\"HTTP/2.0\""
        );
        // The wire form holds each field once (the case-preserving names follow the values).
        let mut wire = bytes::BytesMut::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire.to_vec()).unwrap();
        assert_eq!(wire.matches("proto:").count(), 1, "{wire}");
        assert!(
            !wire.to_ascii_lowercase().contains("x-forwarded-for"),
            "{wire}"
        );
    }

    #[test]
    fn every_forwarding_field_of_the_client_goes() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let forged = [
            "X-Forwarded-Host",
            "X-Forwarded-Port",
            "X-Forwarded-Prefix",
            "X-Forwarded-Ssl",
            "X-Forwarded-Scheme",
            "X-Forwarded-Server",
            "X_Forwarded_Host",
            "x_forwarded_for",
            "X-Real_IP",
            "Front-End-Https",
            "X-Url-Scheme",
        ];
        for name in forged {
            req.append_header(name, "evil.example").unwrap();
        }
        req.insert_header("X-Forwarded-Host-Name-That-Is-Long", "x")
            .unwrap();
        req.insert_header("X-Forwardedness", "kept").unwrap();
        req.insert_header("Accept", "kept").unwrap();
        replace_forwarding_headers(&mut req, &origin()).unwrap();
        let left: Vec<&str> = req.headers.keys().map(|n| n.as_str()).collect();
        for name in forged {
            assert!(
                !left.contains(&name.to_ascii_lowercase().as_str()),
                "{name} left: {left:?}"
            );
        }
        assert!(left.contains(&"x-forwardedness") && left.contains(&"accept"));
        assert!(!left.contains(&"x-forwarded-host-name-that-is-long"));
    }

    #[test]
    fn a_proxy_without_forwarded_is_read_from_its_last_x_forwarded_for() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Forwarded-For", "6.6.6.6, 198.51.100.9")
            .unwrap();
        req.insert_header("X-Real-IP", "6.6.6.6").unwrap();
        req.insert_header("X-Forwarded-Proto", "https").unwrap();
        let own = origin();
        let seen = Origin::from_x_forwarded(&req, own).unwrap();
        assert_eq!(seen.client_ip, Some("198.51.100.9".parse().unwrap()));
        assert_eq!((seen.client_port, seen.https), (None, true));
        assert_eq!(seen.server_port, own.server_port);
    }

    #[test]
    fn forwarded_round_trips_and_takes_the_nearest_hop() {
        let o = origin();
        assert_eq!(
            Origin::from_forwarded(o.forwarded_element().as_bytes()),
            Some(o)
        );
        let two = format!("for=6.6.6.6;proto=http, {}", o.forwarded_element());
        assert_eq!(Origin::from_forwarded(two.as_bytes()), Some(o));
        let plain = Origin::from_forwarded(b"for=198.51.100.1").unwrap();
        assert_eq!(plain.client_ip, Some("198.51.100.1".parse().unwrap()));
        assert_eq!((plain.client_port, plain.https), (None, false));
        assert_eq!(plain.version, None);
        let odd = Origin::from_forwarded(b"for=198.51.100.1;version=\"HTTP/9\"").unwrap();
        assert_eq!(odd.version, None, "only versions Herald knows");
        assert_eq!(Origin::from_forwarded(b"for=unknown;proto=https"), None);
        assert_eq!(Origin::from_forwarded(b"for=_hidden"), None);
        assert_eq!(Origin::from_forwarded(b"\xff"), None);
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let mut req = RequestHeader::build("GET", b"http://a.example:8080/p?q=1", None).unwrap();
        to_origin_form(&mut req).unwrap();
        assert_eq!(req.uri.to_string(), "/p?q=1");
        assert_eq!(req.raw_path(), b"/p?q=1");
        assert_eq!(req.headers.get("host").unwrap(), "a.example:8080");
    }
}
