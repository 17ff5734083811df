//! Any bytes as a Host: `parse_site` never panics, and every name it accepts is a DNS name (or,
//! with IP hosts allowed, a canonical IP literal), is a plain file name, and parses again to
//! itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

#[path = "../../src/site_name.rs"]
#[allow(dead_code)]
mod site_name;

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

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let allow_ip = flags & 1 == 1;
    let Ok(name) = site_name::parse_site(raw, allow_ip) else {
        return;
    };
    assert!(
        !name.is_empty() && name != "." && name != "..",
        "{raw:?} gave {name:?}"
    );
    assert!(!name.contains(['/', '\\', '\0']), "{raw:?} gave {name:?}");
    let ip = name.parse::<IpAddr>().ok();
    if allow_ip {
        let canonical_ip = ip.is_some_and(|ip| ip.to_string() == name);
        assert!(is_dns_name(&name) || canonical_ip, "{raw:?} gave {name:?}");
    } else {
        assert!(is_dns_name(&name), "{raw:?} gave {name:?}");
    }
    // Normalised already: parsing it again changes nothing (an IPv6 literal needs its brackets).
    let again = match ip {
        Some(IpAddr::V6(_)) => format!("[{name}]"),
        _ => name.clone(),
    };
    assert_eq!(site_name::parse_site(again.as_bytes(), allow_ip), Ok(name));
});
