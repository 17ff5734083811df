//! Backend lists: `edge.backends` in the YAML and the `edge.backends_file` that config
//! management writes, one backend per line. Both the configuration check and the running edge
//! (which re-reads the file) parse them here.

use super::{BackendAddr, HashMode};
use std::collections::HashSet;
use std::net::SocketAddr;

/// Parses `(where, entry)` pairs; returns the backends and every problem as `(where, what)`.
pub fn parse_backend_list<'a>(
    entries: impl IntoIterator<Item = (String, &'a str)>,
    hash: HashMode,
) -> (Vec<BackendAddr>, Vec<(String, String)>) {
    let mut seen = HashSet::new();
    let mut backends = Vec::new();
    let mut problems = Vec::new();
    for (place, text) in entries {
        match parse_backend_entry(text) {
            Ok(backend) if !seen.insert(backend.addr) => {
                problems.push((place, format!("duplicate backend {}", backend.addr)))
            }
            Ok(backend) if hash == HashMode::Modulo && backend.weight != 1 => problems.push((
                place,
                "weights need `hash: ketama`; modulo placement indexes the list as written"
                    .to_owned(),
            )),
            Ok(backend) => backends.push(backend),
            Err(message) => problems.push((place, message)),
        }
    }
    (backends, problems)
}

/// The backends file: `ip:port` or `ip:port weight` per line; blank lines and `#` comments
/// are ignored. Problems are `line N: what`. A file with no backend is a problem too, so
/// that a truncated file never empties the list.
pub fn parse_backends_file(text: &str, hash: HashMode) -> Result<Vec<BackendAddr>, Vec<String>> {
    let entries = text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.split('#').next().unwrap_or_default().trim();
        (!line.is_empty()).then(|| (format!("line {}", i + 1), line))
    });
    let (backends, problems) = parse_backend_list(entries, hash);
    let mut problems: Vec<String> = problems
        .into_iter()
        .map(|(place, what)| format!("{place}: {what}"))
        .collect();
    if backends.is_empty() && problems.is_empty() {
        problems.push("no backends in the file".to_owned());
    }
    if problems.is_empty() {
        Ok(backends)
    } else {
        Err(problems)
    }
}

/// `ip:port` or `ip:port weight`.
pub fn parse_backend_entry(text: &str) -> Result<BackendAddr, String> {
    let mut words = text.split_whitespace();
    let addr_text = words.next().unwrap_or_default();
    let addr: SocketAddr = addr_text.parse().map_err(|_| {
        format!("invalid address {addr_text:?}: expected ip:port, like 10.0.0.11:80")
    })?;
    let weight = match words.next() {
        None => 1,
        Some(w) => w
            .parse::<usize>()
            .ok()
            .filter(|w| (1..=1000).contains(w))
            .ok_or_else(|| {
                format!("invalid weight {w:?}: expected a whole number from 1 to 1000")
            })?,
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected {extra:?} after the weight"));
    }
    Ok(BackendAddr { addr, weight })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_entries() {
        assert_eq!(parse_backend_entry("10.0.0.1:80").unwrap().weight, 1);
        assert_eq!(parse_backend_entry(" 10.0.0.1:80   7 ").unwrap().weight, 7);
        assert_eq!(
            parse_backend_entry("[::1]:80").unwrap().addr,
            "[::1]:80".parse().unwrap()
        );
        for bad in [
            "",
            "10.0.0.1",
            "host:80",
            "10.0.0.1:80 0",
            "10.0.0.1:80 x",
            "10.0.0.1:80 1 2",
        ] {
            assert!(parse_backend_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backends_file_with_comments_and_weights() {
        let text =
            "# the backend pool\n10.0.0.1:80\n\n10.0.0.2:80 3   # bigger box\n  [::1]:8080\n";
        let list = parse_backends_file(text, HashMode::Ketama).unwrap();
        let addrs: Vec<String> = list
            .iter()
            .map(|b| format!("{} {}", b.addr, b.weight))
            .collect();
        assert_eq!(addrs, ["10.0.0.1:80 1", "10.0.0.2:80 3", "[::1]:8080 1"]);
    }

    #[test]
    fn bad_backends_files_say_which_line() {
        let problems =
            parse_backends_file("10.0.0.1:80\n10.0.0.x:80\n10.0.0.1:80\n", HashMode::Ketama)
                .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("line 2: invalid address"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("line 3: duplicate backend"),
            "{problems:?}"
        );
        assert_eq!(
            parse_backends_file("# nothing\n\n", HashMode::Ketama).unwrap_err(),
            ["no backends in the file"]
        );
        assert!(
            parse_backends_file("10.0.0.1:80 2\n", HashMode::Modulo).unwrap_err()[0]
                .contains("weights need")
        );
    }
}
