//! Whether a request may be answered with a precompressed `.gz` file, as nginx's
//! `gzip_static on` decides (`ngx_http_gzip_ok` with nginx's defaults):
//! - `Accept-Encoding` names `gzip` with a q-value above 0 (`*` and `x-gzip` do not count,
//!   and an invalid q-value refuses, as in nginx);
//! - the request is HTTP/1.1 or later (`gzip_http_version 1.1`);
//! - it carries no `Via` (`gzip_proxied off`: a proxy on the way might not honour `Vary`).

use http::header::{ACCEPT_ENCODING, VIA};
use http::Version;
use pingora::http::RequestHeader;

pub fn accepted(request: &RequestHeader) -> bool {
    request.version >= Version::HTTP_11
        && !request.headers.contains_key(VIA)
        && request
            .headers
            .get_all(ACCEPT_ENCODING)
            .iter()
            .find_map(|line| gzip_quality(line.as_bytes()))
            .is_some_and(|accepted| accepted)
}

/// Whether gzip is accepted, when this `Accept-Encoding` line names it.
fn gzip_quality(line: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(line).ok()?;
    text.split(',').find_map(|element| {
        let mut parts = element.split(';');
        let coding = parts.next().unwrap_or("").trim_matches([' ', '\t']);
        if !coding.eq_ignore_ascii_case("gzip") {
            return None;
        }
        for parameter in parts {
            let parameter = parameter.trim_matches([' ', '\t']);
            if let Some(q) = parameter
                .strip_prefix("q=")
                .or_else(|| parameter.strip_prefix("Q="))
            {
                return Some(q_above_zero(q));
            }
        }
        Some(true)
    })
}

/// RFC 9110's qvalue (`0`, `0.5`, `1.000`, at most three decimals) above zero; anything
/// else is not.
fn q_above_zero(q: &str) -> bool {
    let (whole, fraction) = q.split_once('.').unwrap_or((q, ""));
    let digits = fraction.len() <= 3 && fraction.bytes().all(|b| b.is_ascii_digit());
    match whole {
        "0" => digits && fraction.bytes().any(|b| b != b'0'),
        "1" => digits && fraction.bytes().all(|b| b == b'0'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request.set_version(version);
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    fn accepts(value: &str) -> bool {
        accepted(&request(Version::HTTP_11, &[("accept-encoding", value)]))
    }

    #[test]
    fn gzip_is_taken_when_named_with_a_positive_q() {
        for value in [
            "gzip",
            "GZIP",
            "gzip, deflate, br",
            "br;q=1.0, gzip;q=0.8",
            "deflate,gzip",
            "gzip;q=1",
            "gzip;q=1.000",
            "gzip ; q=0.001",
            "gzip;Q=0.5",
            "identity, gzip;level=1",
        ] {
            assert!(accepts(value), "{value}");
        }
        for value in [
            "",
            "br, deflate",
            "*",
            "x-gzip",
            "gzipx",
            "gzip;q=0",
            "gzip;q=0.000",
            "gzip;q=0.0001",
            "gzip;q=1.5",
            "gzip;q=2",
            "gzip;q=",
            "gzip;q=abc",
        ] {
            assert!(!accepts(value), "{value}");
        }
    }

    #[test]
    fn old_http_and_proxied_requests_get_no_gzip_as_with_nginx_defaults() {
        let headers = [("accept-encoding", "gzip")];
        assert!(accepted(&request(Version::HTTP_2, &headers)));
        assert!(!accepted(&request(Version::HTTP_10, &headers)));
        assert!(!accepted(&request(
            Version::HTTP_11,
            &[("accept-encoding", "gzip"), ("via", "1.1 proxy")]
        )));
    }
}
