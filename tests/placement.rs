//! Both hash modes against their references, through a real herald edge: `modulo` against
//! CPython 2's hash vectors, `ketama` against a real nginx doing `hash $host consistent`
//! over the same server list. The backends are nginx servers that answer with their port.

mod common;

use common::*;

struct Backends {
    ports: Vec<u16>,
    nginx_edge_port: u16,
    _nginx: Nginx,
}

/// `weights[i]` is backend i's weight; nginx also runs a `hash $host consistent` edge.
fn start_backends(root: &std::path::Path, weights: &[usize]) -> Backends {
    let ports: Vec<u16> = weights.iter().map(|_| free_port()).collect();
    let nginx_edge_port = free_port();
    let mut http = String::new();
    for port in &ports {
        http.push_str(&format!(
            "  server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"{port}\"; }} }}\n"
        ));
    }
    http.push_str("  upstream ring {\n    hash $host consistent;\n");
    for (port, weight) in ports.iter().zip(weights) {
        http.push_str(&format!("    server 127.0.0.1:{port} weight={weight};\n"));
    }
    http.push_str(&format!(
        "  }}\n  server {{ listen 127.0.0.1:{nginx_edge_port}; location / {{ proxy_pass http://ring; proxy_set_header Host $host; }} }}\n"
    ));
    let mut all = ports.clone();
    all.push(nginx_edge_port);
    let nginx = Nginx::start(root, &http, &all);
    Backends {
        ports,
        nginx_edge_port,
        _nginx: nginx,
    }
}

fn start_edge(
    root: &std::path::Path,
    hash: &str,
    backends: &Backends,
    weights: &[usize],
) -> (u16, Herald) {
    let port = free_port();
    let list: Vec<String> = backends
        .ports
        .iter()
        .zip(weights)
        .map(|(p, w)| format!("'127.0.0.1:{p} {w}'"))
        .collect();
    let yaml = format!(
        "edge:\n  listen: ['127.0.0.1:{port}']\n  hash: {hash}\n  backends: [{}]\n",
        list.join(", ")
    );
    let herald = Herald::start(
        root,
        &format!("edge-{hash}-{}", weights.len()),
        &yaml,
        &[port],
    );
    (port, herald)
}

fn chosen_port(edge_port: u16, site: &str) -> u16 {
    let resp = get(edge_port, site, "/");
    assert_eq!(resp.status, 200, "{site}: {}", resp.text());
    resp.text()
        .parse()
        .unwrap_or_else(|_| panic!("{site}: unexpected answer {}", resp.text()))
}

#[test]
fn modulo_places_sites_like_the_talks_lua_balancer() {
    let dir = tempfile::tempdir().unwrap();
    for (count, expected) in [(3, [1, 2]), (4, [1, 0])] {
        let weights = vec![1; count];
        let backends = start_backends(dir.path(), &weights);
        let (edge_port, _edge) = start_edge(dir.path(), "modulo", &backends, &weights);
        for (site, index) in ["www.obeythetestinggoat.com", "example.com"]
            .iter()
            .zip(expected)
        {
            assert_eq!(
                chosen_port(edge_port, site),
                backends.ports[index],
                "{site} over {count} backends should be index {index}"
            );
            // The Host's case, port and trailing dot do not change the placement.
            assert_eq!(
                chosen_port(edge_port, &format!("{}.:80", site.to_uppercase())),
                backends.ports[index]
            );
        }
    }
}

#[test]
fn ketama_places_sites_exactly_like_nginx_hash_host_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let weights = [1, 2, 1, 1];
    let backends = start_backends(dir.path(), &weights);
    let (edge_port, _edge) = start_edge(dir.path(), "ketama", &backends, &weights);
    let mut per_backend = vec![0; weights.len()];
    for i in 0..300 {
        let site = format!("user{i}.pythonanywhere.example");
        let herald = chosen_port(edge_port, &site);
        let nginx = chosen_port(backends.nginx_edge_port, &site);
        assert_eq!(
            herald, nginx,
            "{site}: herald chose {herald}, nginx {nginx}"
        );
        per_backend[backends.ports.iter().position(|p| *p == herald).unwrap()] += 1;
    }
    assert!(
        per_backend.iter().all(|n| *n > 0),
        "every backend gets sites: {per_backend:?}"
    );
    assert!(
        per_backend[1] > per_backend[0],
        "weight 2 gets more sites: {per_backend:?}"
    );
}

#[test]
fn two_edge_processes_with_the_same_list_place_ten_thousand_sites_identically() {
    let dir = tempfile::tempdir().unwrap();
    let weights = [1, 1, 2];
    let backends = start_backends(dir.path(), &weights);
    let (first, _first) = start_edge(dir.path(), "ketama", &backends, &weights);
    let second_dir = tempfile::tempdir().unwrap();
    let (second, _second) = start_edge(second_dir.path(), "ketama", &backends, &weights);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in (t..10_000).step_by(8) {
                    let site = format!("s{i}.example.net");
                    assert_eq!(
                        chosen_port(first, &site),
                        chosen_port(second, &site),
                        "{site}"
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn the_placement_command_predicts_the_running_edge_and_what_a_new_list_moves() {
    let dir = tempfile::tempdir().unwrap();
    let weights = [1, 1, 1, 1];
    let backends = start_backends(dir.path(), &weights);
    let (edge_port, edge) = start_edge(dir.path(), "ketama", &backends, &weights[..3]);
    let sites: Vec<String> = (0..400).map(|i| format!("app{i}.example.com")).collect();
    let sites_file = dir.path().join("sites");
    std::fs::write(&sites_file, format!("# every site\n{}\n", sites.join("\n"))).unwrap();
    let new_list = dir.path().join("new-backends");
    let lines: Vec<String> = backends
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    std::fs::write(&new_list, lines.join("\n")).unwrap();
    let conf = edge.config.to_str().unwrap();
    let out = run_herald(&[
        "placement",
        "-c",
        conf,
        "--sites",
        sites_file.to_str().unwrap(),
        "--backends",
        new_list.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    let mut predicted = std::collections::HashMap::new();
    let mut moved = 0;
    for line in report.lines().filter(|l| !l.starts_with('#')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            [site, backend] => {
                predicted.insert(site.to_owned(), backend.to_owned());
            }
            [site, from, "->", to] => {
                assert_eq!(predicted[site], from);
                assert_eq!(to, lines[3], "{site} moves to the new backend");
                moved += 1;
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    assert_eq!(predicted.len(), sites.len());
    for site in &sites {
        let port = chosen_port(edge_port, site);
        assert_eq!(predicted[site], format!("127.0.0.1:{port}"), "{site}");
    }
    assert!(
        (60..=140).contains(&moved),
        "{moved} of 400 moved; ideal 100\n{report}"
    );
    assert!(
        report.contains(&format!("# moved {moved} of 400 sites")),
        "{report}"
    );
    assert!(
        report.contains("the least any placement could move is 25.0%"),
        "{report}"
    );
}
