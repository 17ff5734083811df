//! What an upstream is told about the client: `X-Forwarded-*` and `X-Real-IP`, and a request
//! target in origin form.

use pingora::http::RequestHeader;
use pingora::prelude::*;
use std::net::IpAddr;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_REAL_IP: &str = "x-real-ip";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const FORWARDED: &str = "forwarded";

/// Replaces whatever the client claimed with what this hop saw.
pub fn replace_forwarding_headers(
    req: &mut RequestHeader,
    client: Option<IpAddr>,
    proto: &'static str,
) -> Result<()> {
    for name in [X_FORWARDED_FOR, X_REAL_IP, FORWARDED] {
        // Most requests carry none of these; a lookup is much cheaper than a removal.
        if req.headers.contains_key(name) {
            req.remove_header(name);
        }
    }
    if let Some(ip) = client {
        let ip = http::HeaderValue::from_str(&ip.to_canonical().to_string())
            .expect("an IP address is a valid header value");
        req.insert_header(X_FORWARDED_FOR, ip.clone())?;
        req.insert_header(X_REAL_IP, ip)?;
    }
    req.insert_header(X_FORWARDED_PROTO, proto)
}

/// Whether a trusted hop (the edge) already said who the client is.
pub fn has_forwarding_headers(req: &RequestHeader) -> bool {
    req.headers.contains_key(X_FORWARDED_FOR)
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
pub fn scheme(session: &pingora::proxy::Session) -> &'static str {
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
pub fn client_ip(session: &pingora::proxy::Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| addr.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_claims_are_replaced() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Forwarded-For", "6.6.6.6").unwrap();
        req.insert_header("X-Real-IP", "6.6.6.6").unwrap();
        req.insert_header("Forwarded", "for=6.6.6.6").unwrap();
        replace_forwarding_headers(&mut req, Some("::ffff:192.0.2.7".parse().unwrap()), "http")
            .unwrap();
        assert_eq!(req.headers.get("x-forwarded-for").unwrap(), "192.0.2.7");
        assert_eq!(req.headers.get("x-real-ip").unwrap(), "192.0.2.7");
        assert_eq!(req.headers.get("x-forwarded-proto").unwrap(), "http");
        assert!(req.headers.get("forwarded").is_none());
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
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
