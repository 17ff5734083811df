//! WebSockets (RFC 6455 over HTTP/1.1). Pingora relays an upgraded connection itself; what
//! Herald needs to know is which requests are handshakes, because an open WebSocket is idle for
//! long stretches and gets `websocket_idle_timeout` instead of the timeouts of an ordinary
//! request, and which ends of a proxied connection are just that timeout.

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

/// Whether `request` is a WebSocket opening handshake: `GET`, HTTP/1.1, `Upgrade: websocket`
/// and `upgrade` among the `Connection` options (RFC 6455 section 4.1; the key and version
/// are the app's to check). The `Upgrade` test is Pingora's own, so every request this accepts
/// is forwarded by Pingora as an upgrade.
pub fn is_websocket_upgrade(request: &RequestHeader) -> bool {
    // Most requests have no Upgrade field: this is all they cost.
    let Some(upgrade) = request.headers.get(http::header::UPGRADE) else {
        return false;
    };
    upgrade.as_bytes().eq_ignore_ascii_case(b"websocket")
        && request.method == http::Method::GET
        && request.version == http::Version::HTTP_11
        && request
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|value| has_token(value.as_bytes(), b"upgrade"))
}

/// Whether `error` ended an upgraded connection by its idle timeout: the normal end of a
/// WebSocket nobody uses, not worth Pingora's error log line (the access log has it: status
/// 101, `rt` its lifetime).
pub fn closed_for_idleness(session: &Session, error: &Error) -> bool {
    session.was_upgraded() && matches!(error.etype(), ReadTimedout)
}

/// Whether the comma-separated list `value` holds `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, version: http::Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build(method, b"/ws", None).unwrap();
        request.set_version(version);
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    const HANDSHAKE: [(&str, &str); 4] = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];

    #[test]
    fn a_browser_handshake_is_one() {
        assert!(is_websocket_upgrade(&request(
            "GET",
            http::Version::HTTP_11,
            &HANDSHAKE
        )));
        // Firefox sends `Connection: keep-alive, Upgrade`; case does not matter.
        assert!(is_websocket_upgrade(&request(
            "GET",
            http::Version::HTTP_11,
            &[
                ("upgrade", "WebSocket"),
                ("connection", "keep-alive, upgrade")
            ]
        )));
        // The options may also come in separate Connection fields.
        assert!(is_websocket_upgrade(&request(
            "GET",
            http::Version::HTTP_11,
            &[
                ("Upgrade", "websocket"),
                ("Connection", "keep-alive"),
                ("Connection", " Upgrade ")
            ]
        )));
    }

    #[test]
    fn anything_else_is_an_ordinary_request() {
        let v11 = http::Version::HTTP_11;
        for (method, version, headers) in [
            ("GET", v11, &[][..]),
            ("GET", v11, &[("Connection", "Upgrade")][..]),
            ("GET", v11, &[("Upgrade", "websocket")][..]),
            (
                "GET",
                v11,
                &[("Upgrade", "h2c"), ("Connection", "Upgrade")][..],
            ),
            (
                "GET",
                v11,
                &[("Upgrade", "websocket, h2c"), ("Connection", "Upgrade")][..],
            ),
            (
                "GET",
                v11,
                &[("Upgrade", "websocket"), ("Connection", "Upgraded")][..],
            ),
            (
                "GET",
                v11,
                &[("Upgrade", "websocket"), ("Connection", "close")][..],
            ),
            ("POST", v11, &HANDSHAKE[..]),
            ("GET", http::Version::HTTP_10, &HANDSHAKE[..]),
            ("GET", http::Version::HTTP_2, &HANDSHAKE[..]),
        ] {
            assert!(
                !is_websocket_upgrade(&request(method, version, headers)),
                "{method} {version:?} {headers:?}"
            );
        }
    }
}
