//! A site name from the bytes of a Host header (or of an absolute URI's authority): checked
//! and normalised. Only DNS names made of `[a-z0-9-]` labels pass, which alone keeps `/`, `..`,
//! `%` and NUL out of the file and socket paths built from a site name.
//!
//! Pure (no HTTP types), so that `fuzz/` can build it on its own.

use std::net::{Ipv4Addr, Ipv6Addr};

const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Why a request names no acceptable site; every variant is answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Missing,
    Repeated,
    Empty,
    BadPort,
    BadCharacter,
    BadLabel,
    TooLong,
    IpLiteral,
}

impl HostError {
    pub fn reason(self) -> &'static str {
        match self {
            HostError::Missing => "no Host header",
            HostError::Repeated => "more than one Host header",
            HostError::Empty => "empty host name",
            HostError::BadPort => "invalid port",
            HostError::BadCharacter => "character not allowed in a host name",
            HostError::BadLabel => {
                "invalid label (1-63 of a-z, 0-9, -, not starting or ending with -)"
            }
            HostError::TooLong => "host name longer than 253 characters",
            HostError::IpLiteral => "IP address instead of a site name",
        }
    }
}

/// Lowercases, drops the port and one trailing dot, and accepts only DNS names (or IP
/// literals when `allow_ip`).
pub fn parse_site(raw: &[u8], allow_ip: bool) -> Result<String, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if raw[0] == b'[' {
        return parse_ipv6_literal(raw, allow_ip);
    }
    let (name, port) = match raw.iter().position(|&b| b == b':') {
        Some(colon) => (&raw[..colon], Some(&raw[colon + 1..])),
        None => (raw, None),
    };
    if let Some(port) = port {
        check_port(port)?;
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong);
    }
    if let Some(bad) = name.iter().find(|b| !is_name_byte(**b)) {
        return Err(if *bad == b'.' {
            HostError::BadLabel
        } else {
            HostError::BadCharacter
        });
    }
    let name = name.to_ascii_lowercase();
    for label in name.split(|&b| b == b'.') {
        if label.is_empty()
            || label.len() > MAX_LABEL_LEN
            || label[0] == b'-'
            || label[label.len() - 1] == b'-'
        {
            return Err(HostError::BadLabel);
        }
    }
    // Checked above: only ASCII letters, digits, '-' and '.'.
    let name = String::from_utf8(name).map_err(|_| HostError::BadCharacter)?;
    // No top-level domain is all digits (RFC 3696 section 2), so such a name is an IPv4
    // address in one of its many spellings (127.0.0.1, 127.1, 2130706433).
    let last_label = name.rsplit('.').next().unwrap_or_default();
    if last_label.bytes().all(|b| b.is_ascii_digit()) {
        return match (allow_ip, name.parse::<Ipv4Addr>()) {
            (true, Ok(ip)) => Ok(ip.to_string()),
            _ => Err(HostError::IpLiteral),
        };
    }
    Ok(name)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.'
}

fn check_port(port: &[u8]) -> Result<(), HostError> {
    let valid = !port.is_empty()
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(port)
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .is_some();
    if valid {
        Ok(())
    } else {
        Err(HostError::BadPort)
    }
}

fn parse_ipv6_literal(raw: &[u8], allow_ip: bool) -> Result<String, HostError> {
    let close = raw
        .iter()
        .position(|&b| b == b']')
        .ok_or(HostError::BadCharacter)?;
    match &raw[close + 1..] {
        [] => {}
        [b':', port @ ..] => check_port(port)?,
        _ => return Err(HostError::BadCharacter),
    }
    let ip: Ipv6Addr = std::str::from_utf8(&raw[1..close])
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(HostError::BadCharacter)?;
    if allow_ip {
        Ok(ip.to_string())
    } else {
        Err(HostError::IpLiteral)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn site(raw: &str) -> Result<String, HostError> {
        parse_site(raw.as_bytes(), false)
    }

    #[test]
    fn normalises_case_port_and_trailing_dot() {
        assert_eq!(site("Example.COM").unwrap(), "example.com");
        assert_eq!(site("example.com:8080").unwrap(), "example.com");
        assert_eq!(site("www.example.com.").unwrap(), "www.example.com");
        assert_eq!(site("www.example.com.:80").unwrap(), "www.example.com");
        assert_eq!(site("a-b.c1.io").unwrap(), "a-b.c1.io");
        assert_eq!(site("localhost").unwrap(), "localhost");
        assert_eq!(
            site("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn rejects_names_that_could_escape_a_directory_or_are_not_dns() {
        let nasty = [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "%2e%2e",
            "a%00b",
            "a\0b",
            "a b",
            " example.com",
            "example.com ",
            "a..b",
            ".example.com",
            "example..",
            "-a.com",
            "a-.com",
            "a_b.com",
            "ex@mple.com",
            "user@example.com",
            "example.com:",
            "example.com:99999",
            "example.com:8o",
            "example.com:80:80",
            "é.com",
            "a\tb",
            "a\r\nb",
            "example.com/",
            "*.example.com",
            "[::1",
            "[zz]",
        ];
        for raw in nasty {
            assert!(site(raw).is_err(), "{raw:?} was accepted");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert_eq!(site(&long_label), Err(HostError::BadLabel));
        let long_name = vec!["a".repeat(63); 5].join(".");
        assert_eq!(site(&long_name), Err(HostError::TooLong));
        let longest = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "a".repeat(61));
        assert_eq!(site(&longest).unwrap().len(), 253);
    }

    #[test]
    fn ip_literals_only_when_allowed() {
        for raw in [
            "127.0.0.1",
            "127.1",
            "2130706433",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert_eq!(site(raw), Err(HostError::IpLiteral), "{raw}");
        }
        assert_eq!(parse_site(b"127.0.0.1:80", true).unwrap(), "127.0.0.1");
        assert_eq!(parse_site(b"[::1]:80", true).unwrap(), "::1");
        assert_eq!(parse_site(b"[0:0::1]", true).unwrap(), "::1");
        assert_eq!(parse_site(b"127.1", true), Err(HostError::IpLiteral));
    }

    /// What a DNS name is, written apart from the parser: labels of 1-63 of [a-z0-9-], not
    /// starting or ending with '-', 253 characters at most, lowercase.
    fn is_dns_name(name: &str) -> bool {
        name.len() <= 253
            && name.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }

    /// A valid DNS name in random case, with or without a trailing dot and a port.
    fn dns_names() -> impl Strategy<Value = (String, String)> {
        let label = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?";
        (
            proptest::collection::vec(proptest::string::string_regex(label).unwrap(), 1..5),
            "[a-zA-Z][a-zA-Z0-9]{0,10}",
            any::<bool>(),
            proptest::option::of(any::<u16>()),
        )
            .prop_filter_map("at most 253 characters", |(labels, tld, dot, port)| {
                let name = format!("{}.{tld}", labels.join("."));
                let mut raw = name.clone();
                if dot {
                    raw.push('.');
                }
                if let Some(port) = port {
                    raw.push_str(&format!(":{port}"));
                }
                (name.len() <= 253).then(|| (raw, name.to_ascii_lowercase()))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn any_bytes_give_a_dns_name_or_an_error(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(name) = parse_site(&raw, false) {
                prop_assert!(is_dns_name(&name), "{:?} gave {:?}", raw, name);
            }
        }

        #[test]
        fn host_like_text_gives_a_dns_name_or_an_error(raw in "[a-zA-Z0-9.:\\-\\[\\]_/%@ ]{0,80}") {
            if let Ok(name) = parse_site(raw.as_bytes(), false) {
                prop_assert!(is_dns_name(&name), "{:?} gave {:?}", raw, name);
            }
        }

        #[test]
        fn with_ip_hosts_a_name_is_dns_or_a_canonical_ip(raw in "[0-9a-fA-F.:\\[\\]]{0,50}|[a-z0-9.:-]{0,40}") {
            if let Ok(name) = parse_site(raw.as_bytes(), true) {
                let canonical_ip = name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.to_string() == name);
                prop_assert!(is_dns_name(&name) || canonical_ip, "{:?} gave {:?}", raw, name);
                prop_assert!(!name.contains('/'));
            }
        }

        #[test]
        fn every_dns_name_is_accepted_as_itself((raw, name) in dns_names()) {
            prop_assert_eq!(parse_site(raw.as_bytes(), false), Ok(name));
        }
    }
}
