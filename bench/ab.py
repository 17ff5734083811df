#!/usr/bin/env python3
"""A/B of Herald builds or settings on the warm path, as bench/analysis.md reports them: each
variant runs as an edge and a backend (two processes, `threads: 1`) in front of the same uWSGI
app, one variant after the other, alternating the order every round; wrk asks one site through
the edge; the CPU microseconds per request of each process are the measure (medians over the
rounds), with req/s beside them.

    bench/ab.py A=target/release/herald B=/tmp/herald-new
    bench/ab.py plain=target/release/herald ws-off=target/release/herald:work_stealing=false
    bench/ab.py --tls A=... B=...        # the edge over TLS, kept-alive connections
    bench/ab.py --tls --close A=... B=...  # a full TLS handshake per request

A variant is NAME=BINARY, optionally followed by `:key=value,key=value` lines added to its
`server:` section. Build first (`cargo build --release`); copy a binary aside before
rebuilding to compare two builds.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

from bench import (APP, Proc, cpu_seconds, free_port, get, make_tls_pair, tcp_up, tree_pids, unix_up, vassal_template,
                   vassal_text, wait_for, wrk)

SITE = "w0.bench"


def variant(text):
    name, _, rest = text.partition("=")
    binary, _, settings = rest.partition(":")
    if not name or not os.access(binary, os.X_OK):
        raise argparse.ArgumentTypeError("%r: expected NAME=BINARY[:key=value,...] with an executable BINARY" % text)
    extra = "".join("  %s: %s\n" % tuple(kv.split("=", 1)) for kv in settings.split(",") if kv)
    return name, os.path.abspath(binary), extra


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", type=variant)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tls", action="store_true", help="wrk to the edge over TLS (ECDSA P-256)")
    parser.add_argument("--close", action="store_true", help="a new connection per request")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="herald-ab.")
    procs = []
    try:
        sites, vassals, sockets, logs = (os.path.join(root, d) for d in ("sites", "vassals", "sockets", "logs"))
        for d in (sites, vassals, sockets, logs):
            os.makedirs(d)
        text = vassal_text(vassal_template(sockets), app=APP)
        for d in (sites, vassals):
            with open(os.path.join(d, SITE + ".ini"), "w") as f:
                f.write(text)
        emperor = Proc("emperor", ["uwsgi", "--emperor", vassals, "--die-on-term"], os.path.join(logs, "emperor.log"), cwd=root)
        procs.append(emperor)
        wait_for("the app", lambda: unix_up(os.path.join(sockets, SITE + ".sock")))
        crt, key = make_tls_pair(root)
        certs = os.path.join(root, "certs")
        os.makedirs(certs)
        results = {name: [] for name, _, _ in args.variants}
        for r in range(args.rounds):
            order = args.variants if r % 2 == 0 else args.variants[::-1]
            for name, binary, extra in order:
                edge_port, tls_port, backend_port = free_port(), free_port(), free_port()
                # A variant's own `threads` replaces the default one.
                threads = "" if "  threads:" in extra else "  threads: 1\n"
                server = lambda role: "server:\n%s  pid_file: %s/%s-%s.pid\n  upgrade_sock: %s/%s-%s.sock\n%s" % (
                    threads, root, name, role, root, name, role, extra)
                configs = {
                    "backend": server("backend") + "backend:\n  listen: ['127.0.0.1:%d']\n  sites_dir: %s\n  vassals_dir: %s\n"
                    "  socket_path: %s/{host}.sock\n  idle_timeout: 0\n  max_starts_per_client: 0\n  trusted_proxies: [127.0.0.1/32]\n" % (
                        backend_port, sites, vassals, sockets),
                    "edge": server("edge") + "edge:\n  listen: ['127.0.0.1:%d']\n  backends: ['127.0.0.1:%d']\n"
                    "  tls:\n    listen: ['127.0.0.1:%d']\n    certs_dir: %s\n    default_cert: %s\n    default_key: %s\n" % (
                        edge_port, backend_port, tls_port, certs, crt, key),
                }
                running = {}
                for role, yaml in configs.items():
                    path = os.path.join(root, "%s-%s.yaml" % (name, role))
                    with open(path, "w") as f:
                        f.write(yaml)
                    running[role] = Proc("%s-%s" % (name, role), [binary, "-c", path], os.path.join(logs, "%s-%s.log" % (name, role)),
                                         env=dict(os.environ, RUST_LOG="warn"))
                    procs.append(running[role])
                for port in (edge_port, tls_port, backend_port):
                    wait_for("herald on %d" % port, lambda: tcp_up(port))
                assert get(edge_port, SITE)[0] == 200
                pids = {role: tree_pids(p.p.pid) for role, p in running.items()}
                before = {role: cpu_seconds(p) for role, p in pids.items()}
                res = wrk(tls_port if args.tls else edge_port, args.duration, host=SITE, connections=args.connections,
                          close=args.close, scheme="https" if args.tls else "http")
                used = {role: cpu_seconds(p) - before[role] for role, p in pids.items()}
                for p in running.values():
                    p.stop()
                    procs.remove(p)
                per_request = {role: used[role] / max(res["requests"], 1) * 1e6 for role in used}
                results[name].append((res["rps"], per_request["edge"], per_request["backend"], res["errors"]))
                print("round %d %-10s %8.0f req/s  edge %6.1f us  backend %6.1f us  errors %d" % (
                    r + 1, name, res["rps"], per_request["edge"], per_request["backend"], res["errors"]), flush=True)
        print("\nmedians over %d rounds of %d s (CPU microseconds per request, both processes' threads):" % (
            args.rounds, args.duration))
        first = None
        for name, rows in results.items():
            rps, edge, backend = (statistics.median(col) for col in list(zip(*rows))[:3])
            errors = sum(row[3] for row in rows)
            line = "%-10s %8.0f req/s  edge %6.1f us  backend %6.1f us  errors %d" % (name, rps, edge, backend, errors)
            if first:
                line += "  (edge %+.1f%%, backend %+.1f%%)" % ((edge / first[1] - 1) * 100, (backend / first[2] - 1) * 100)
            else:
                first = (rps, edge, backend)
            print(line)
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
