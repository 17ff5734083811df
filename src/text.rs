//! Numbers and addresses written as text on the warm path. `core::fmt` pays for padding,
//! width and dynamic dispatch on every number; writing the digits directly cost a third of
//! the instructions of the forwarding headers and the uwsgi environ (bench/instructions.py).

use std::fmt::Write;
use std::net::IpAddr;

/// `n` in decimal.
pub fn push_decimal(out: &mut String, n: u64) {
    push_digits(out, n, 1);
}

/// `n` in decimal, with leading zeros up to `width` digits (at most 20).
fn push_digits(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = start.min(digits.len().saturating_sub(width));
    // One by one: checking the slice as UTF-8 and a `memcpy` call cost more than a few digits.
    out.reserve(digits.len() - start);
    for &digit in &digits[start..] {
        out.push(char::from(digit));
    }
}

/// An IPv4 address's octet, in decimal.
fn push_octet(out: &mut String, octet: u8) {
    if octet >= 100 {
        out.push(char::from(b'0' + octet / 100));
    }
    if octet >= 10 {
        out.push(char::from(b'0' + octet / 10 % 10));
    }
    out.push(char::from(b'0' + octet % 10));
}

/// An address as `Display` writes it (`192.0.2.7`, `2001:db8::1`).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.reserve("255.255.255.255".len());
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_octet(out, octet);
            }
        }
        // IPv6's compressed form (the longest run of zero groups as `::`) is left to std.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// An address and port as `Display` writes them (`192.0.2.7:8080`, `[2001:db8::1]:443`).
pub fn socket_addr(addr: std::net::SocketAddr) -> String {
    let mut out = String::with_capacity(24);
    if addr.is_ipv6() {
        // With its brackets (and any scope id) as std writes it.
        let _ = write!(out, "{addr}");
        return out;
    }
    push_ip(&mut out, addr.ip());
    out.push(':');
    push_decimal(&mut out, u64::from(addr.port()));
    out
}

/// A duration in seconds with `decimals` digits after the point (1 to 9), rounded to the
/// nearest, as `{:.3}` writes `as_secs_f64()`: `0.004`, `12.500`.
pub fn push_seconds(out: &mut String, duration: std::time::Duration, decimals: u32) {
    let decimals = decimals.clamp(1, 9);
    let unit = 10u128.pow(9 - decimals);
    let scaled = (duration.as_nanos() + unit / 2) / unit;
    let per_second = 10u128.pow(decimals);
    push_decimal(out, u64::try_from(scaled / per_second).unwrap_or(u64::MAX));
    out.push('.');
    push_digits(out, (scaled % per_second) as u64, decimals as usize);
}

/// `n` as 16 lowercase hexadecimal digits (`{:016x}`).
pub fn push_hex16(out: &mut String, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 16];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    out.push_str(std::str::from_utf8(&text).expect("ASCII digits"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses_read_as_display_writes_them() {
        for n in [0, 7, 9, 10, 99, 100, 65535, 1 << 32, u64::MAX] {
            let mut out = String::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
            out.clear();
            push_hex16(&mut out, n);
            assert_eq!(out, format!("{n:016x}"));
        }
        for (nanos, decimals) in [
            (0, 3),
            (4_000_000, 3),
            (12_500_000_000, 3),
            (1_999_600_000, 3),
            (123_456_789, 6),
            (5, 6),
            (61_000_000_001, 3),
        ] {
            let duration = std::time::Duration::from_nanos(nanos);
            let mut out = String::new();
            push_seconds(&mut out, duration, decimals);
            let expected = format!("{:.*}", decimals as usize, duration.as_secs_f64());
            assert_eq!(out, expected, "{nanos} ns");
        }
        for ip in [
            "0.0.0.0",
            "192.0.2.7",
            "255.255.255.255",
            "10.0.100.9",
            "1.20.199.250",
            "2001:db8::1",
            "::1",
            "::ffff:192.0.2.7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::from("x");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}"));
            let addr = std::net::SocketAddr::new(ip, 8080);
            assert_eq!(socket_addr(addr), addr.to_string());
        }
    }
}
