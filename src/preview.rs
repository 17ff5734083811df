//! `herald placement`: where each site goes over the configured backends, and what a new
//! backend list would move, before an operator adds or removes a server.

use crate::config::backends::parse_backends_file;
use crate::config::{BackendAddr, Config, EdgeConfig};
use crate::edge::placement::{offline, Placement};
use crate::host;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;

pub fn run(
    conf: &str,
    new_backends: Option<&str>,
    sites_file: Option<&str>,
) -> Result<String, String> {
    let config = Config::load(conf).map_err(|e| e.to_string())?;
    let edge = config
        .edge
        .as_ref()
        .ok_or_else(|| format!("{conf}: no edge section, so no placement to show"))?;
    let sites = match (sites_file, &config.backend) {
        (Some(file), _) => sites_from_file(file)?,
        (None, Some(backend)) => sites_from_dir(&backend.sites_dir)?,
        (None, None) => return Err("give --sites FILE (one site per line): this configuration has no backend role whose sites_dir could be listed".into()),
    };
    let current = offline(edge.hash, &edge.backends);
    let mut out = String::new();
    let mode = format!("{:?}", edge.hash).to_lowercase();
    let _ = writeln!(
        out,
        "# {} sites over {} backends ({mode})",
        sites.len(),
        edge.backends.len()
    );
    let before: Vec<SocketAddr> = sites.iter().map(|s| pick(&current, s)).collect();
    for (site, backend) in sites.iter().zip(&before) {
        let _ = writeln!(out, "{site} {backend}");
    }
    if let Some(file) = new_backends {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let new_list = parse_backends_file(&text, edge.hash)
            .map_err(|problems| format!("{file}: {}", problems.join("; ")))?;
        compare(&mut out, edge, &sites, &before, &new_list);
    }
    Ok(out)
}

fn pick(placement: &Placement, site: &str) -> SocketAddr {
    placement
        .pick(site, &[])
        .expect("a non-empty list always places a site")
}

fn compare(
    out: &mut String,
    edge: &EdgeConfig,
    sites: &[String],
    before: &[SocketAddr],
    new_list: &[BackendAddr],
) {
    let next = offline(edge.hash, new_list);
    let after: Vec<SocketAddr> = sites.iter().map(|s| pick(&next, s)).collect();
    let _ = writeln!(
        out,
        "# with the new list ({} backends), these sites move:",
        new_list.len()
    );
    let mut moved = 0;
    for ((site, old), new) in sites.iter().zip(before).zip(&after) {
        if old != new {
            moved += 1;
            let _ = writeln!(out, "{site} {old} -> {new}");
        }
    }
    let mut counts: BTreeMap<SocketAddr, (usize, usize)> = BTreeMap::new();
    for addr in before {
        counts.entry(*addr).or_default().0 += 1;
    }
    for addr in after.iter() {
        counts.entry(*addr).or_default().1 += 1;
    }
    let _ = writeln!(out, "# sites per backend, now -> with the new list:");
    for (addr, (now, then)) in &counts {
        let _ = writeln!(out, "#   {addr} {now} -> {then}");
    }
    let share = |n: usize| 100.0 * n as f64 / sites.len().max(1) as f64;
    let _ = writeln!(
        out,
        "# moved {moved} of {} sites ({:.1}%); the least any placement could move is {:.1}%",
        sites.len(),
        share(moved),
        100.0 * least_share_moved(&edge.backends, new_list)
    );
}

/// The share of sites that must move when the weights change from `old` to `new`: what the
/// backends that shrink lose (1/(N+1) when one of N+1 equal servers is added).
pub fn least_share_moved(old: &[BackendAddr], new: &[BackendAddr]) -> f64 {
    let shares = |list: &[BackendAddr]| -> BTreeMap<SocketAddr, f64> {
        let total: usize = list.iter().map(|b| b.weight).sum();
        list.iter()
            .map(|b| (b.addr, b.weight as f64 / total.max(1) as f64))
            .collect()
    };
    let (old, new) = (shares(old), shares(new));
    old.iter()
        .map(|(addr, share)| (share - new.get(addr).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}

fn sites_from_file(file: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| (i, line.split('#').next().unwrap_or_default().trim()))
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| {
            host::parse_site(line.as_bytes(), true)
                .map_err(|e| format!("{file}: line {}: {line:?}: {}", i + 1, e.reason()))
        })
        .collect()
}

fn sites_from_dir(dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut sites: Vec<String> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let site = name.strip_suffix(".ini")?;
            (host::parse_site(site.as_bytes(), true).as_deref() == Ok(site))
                .then(|| site.to_owned())
        })
        .collect();
    sites.sort();
    Ok(sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<BackendAddr> {
        entries
            .iter()
            .map(|e| crate::config::backends::parse_backend_entry(e).unwrap())
            .collect()
    }

    #[test]
    fn least_share_moved_by_weight() {
        let three = list(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let four = list(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
        assert!((least_share_moved(&three, &four) - 0.25).abs() < 1e-9);
        assert!((least_share_moved(&four, &three) - 0.25).abs() < 1e-9);
        let heavier = list(&["10.0.0.1:80 2", "10.0.0.2:80", "10.0.0.3:80"]);
        assert!((least_share_moved(&three, &heavier) - (0.5 - 1.0 / 3.0)).abs() < 1e-9);
        assert_eq!(least_share_moved(&three, &three), 0.0);
    }
}
