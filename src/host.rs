//! The site a request is for: its Host (or absolute-URI authority), checked and normalised
//! by `site_name`.

use pingora::http::authority::raw_target_authority;
use pingora::http::RequestHeader;

pub use crate::site_name::{parse_site, HostError};

/// The site named by a request: the target's authority if there is one (HTTP/1.1
/// absolute-form, RFC 9112 section 3.2.2, or HTTP/2 `:authority`), otherwise the single Host
/// header. (Pingora already refuses an HTTP/1.1 request whose Host differs from its
/// absolute-form authority.)
pub fn site_of_request(req: &RequestHeader, allow_ip: bool) -> Result<String, HostError> {
    if let Some(authority) = target_authority(req) {
        return parse_site(authority, allow_ip);
    }
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let host = hosts.next().ok_or(HostError::Missing)?;
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    parse_site(host.as_bytes(), allow_ip)
}

pub fn target_authority(req: &RequestHeader) -> Option<&[u8]> {
    req.uri
        .authority()
        .map(|authority| authority.as_str().as_bytes())
        .or_else(|| raw_target_authority(req.raw_path()).authority())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_uri_authority_wins_over_host() {
        let req = RequestHeader::build("GET", b"http://Real.Example:8080/path", None).unwrap();
        assert_eq!(site_of_request(&req, false).unwrap(), "real.example");
        let mut req = RequestHeader::build("GET", b"/path", None).unwrap();
        req.set_uri("http://h2.example/path".parse().unwrap());
        req.insert_header("Host", "other.example").unwrap();
        assert_eq!(site_of_request(&req, false).unwrap(), "h2.example");
    }

    #[test]
    fn http2_requests_name_their_site_by_authority() {
        // What Pingora makes of an HTTP/2 request: an absolute URI from :scheme and
        // :authority, no Host header.
        let mut req = RequestHeader::build("GET", b"/p", None).unwrap();
        req.set_version(http::Version::HTTP_2);
        req.set_uri("https://Alpha.Example:8443/p?q=1".parse().unwrap());
        assert!(req.headers.get(http::header::HOST).is_none());
        assert_eq!(site_of_request(&req, false).unwrap(), "alpha.example");
    }

    #[test]
    fn host_header_must_be_single() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(site_of_request(&req, false), Err(HostError::Missing));
        req.append_header("Host", "a.example").unwrap();
        assert_eq!(site_of_request(&req, false).unwrap(), "a.example");
        req.append_header("Host", "b.example").unwrap();
        assert_eq!(site_of_request(&req, false), Err(HostError::Repeated));
    }
}
