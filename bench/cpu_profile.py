#!/usr/bin/env python3
"""Where Herald's CPU goes on a warm request: the benchmark's topology (Herald edge + backend over
the same uWSGI emperor and apps), one site under wrk, with `perf record` on the edge and on the
backend at once. Each sample is put in one bucket by its call stack, and the shares are printed
per process. Run it with bench/profile, which builds Herald with debug info first.

Buckets, first match wins:
- Herald's hooks: a frame of Herald's ProxyHttp hooks, or of what they call (front door, request
  checks, forwarding headers, access log line, metrics), whatever it costs below (allocations,
  syscalls);
- access log writer: the thread that writes the log;
- kernel, sockets: the sample is in the kernel, under socket calls (TCP or unix: send, receive,
  connect, close);
- kernel, scheduling: the rest of the kernel (epoll, futex, wake-ups, context switches, timers);
- allocator: mimalloc;
- Pingora: Pingora's HTTP/1 sessions, connection pool, timeouts, proxy state machine;
- tokio: the runtime (task polling, I/O readiness, timers);
- other: libc, std, anything else.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

PROFILING_BINARY = os.path.join(bench.REPO, "target", "profiling", "release", "herald")

BUCKETS = ["Herald's hooks", "access log writer", "kernel, sockets", "kernel, scheduling", "allocator", "Pingora", "tokio", "other"]
HERALD_HOOK = re.compile(r"herald::(edge|backend)::\w+Proxy as pingora_proxy::proxy_trait::ProxyHttp|herald::(frontdoor|request_checks|forwarding|access_log::combined|access_log::AccessLog|request::|metrics::)")
KERNEL_SOCKET = re.compile(r"\b(tcp_|unix_|sock_|inet_|__sys_(sendto|recvfrom|connect|shutdown)|__x64_sys_(close|sendto|recvfrom|connect|shutdown)|ip_|__dev_queue_xmit|net_rx_action)")


def bucket(comm, frames):
    """frames: (symbol, in_kernel) from the leaf up."""
    if any(HERALD_HOOK.search(symbol) for symbol, _ in frames):
        return "Herald's hooks"
    if comm.startswith("herald-access"):
        return "access log writer"
    leaf, in_kernel = frames[0] if frames else ("", False)
    if in_kernel:
        return "kernel, sockets" if any(KERNEL_SOCKET.search(s) for s, k in frames if k) else "kernel, scheduling"
    if leaf.startswith(("mi_", "_mi_")):
        return "allocator"
    # The innermost frame of a crate decides (libc and std frames are what it called).
    for symbol, _ in frames:
        if "pingora" in symbol:
            return "Pingora"
        if "tokio" in symbol or "mio::" in symbol:
            return "tokio"
    return "other"


def parse_perf_script(text):
    """Yields (comm, frames) for each sample of `perf script` output."""
    comm, frames = None, []
    for line in text.splitlines():
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
            continue
        if comm is None:
            comm = line.split()[0] if not line.startswith((" ", "\t")) else ""
            # The thread name may contain spaces: keep what precedes the pid.
            match = re.match(r"^(.*?)\s+\d+(/\d+)?\s", line)
            if match:
                comm = match.group(1).strip()
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        address, rest = parts
        symbol = re.sub(r"\s+\(\S*\)$", "", rest)  # drop the "(dso)" at the end
        in_kernel = address.startswith("ffffffff") or "[kernel" in rest
        frames.append((symbol, in_kernel))
    if comm is not None:
        yield comm, frames


def shares(data_file, top=0):
    """The samples' total, each bucket's share, and the `top` leaf symbols of each bucket."""
    out = subprocess.run(["perf", "script", "-i", data_file, "-F", "comm,pid,tid,ip,sym,dso"],
                         capture_output=True, text=True).stdout
    counts = collections.Counter()
    leaves = collections.defaultdict(collections.Counter)
    for comm, frames in parse_perf_script(out):
        b = bucket(comm, frames)
        counts[b] += 1
        if frames:
            leaves[b][frames[0][0][:100]] += 1
    total = sum(counts.values())
    tops = {b: leaves[b].most_common(top) for b in BUCKETS}
    return total, {b: counts[b] / total * 100 if total else 0.0 for b in BUCKETS}, tops


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6, help="how long perf records (wrk runs 4 s longer)")
    parser.add_argument("--top", type=int, default=0, help="also list each bucket's N most sampled leaf symbols")
    args = parser.parse_args()
    bench.HERALD = PROFILING_BINARY
    root = tempfile.mkdtemp(prefix="herald-profile.")
    run = bench.Bench(root, argparse.Namespace(rounds=1, duration=args.seconds))
    try:
        run.start_apps()
        run.start_herald()
        for site in run.warm[:5]:
            assert bench.get(run.h_edge, site)[0] == 200
        pids = {tier: run.herald["herald-" + tier].p.pid for tier in ("edge", "backend")}
        load = threading.Thread(target=lambda: bench.wrk(run.h_edge, args.seconds + 4, host="w0.bench"))
        load.start()
        time.sleep(2)
        perfs = {tier: subprocess.Popen(["perf", "record", "-q", "-F", "999", "--call-graph", "dwarf,16384", "-p", str(pid),
                                         "-o", os.path.join(root, tier + ".data"), "--", "sleep", str(args.seconds)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for tier, pid in pids.items()}
        for perf in perfs.values():
            perf.wait()
        load.join()
    finally:
        run.stop_all()
    print("Share of each process's samples (%%), one site under wrk for %d s:\n" % args.seconds)
    results = {tier: shares(os.path.join(root, tier + ".data"), args.top) for tier in ("edge", "backend")}
    print("| bucket | edge | backend |")
    print("|---|---|---|")
    for b in BUCKETS:
        print("| %s | %.1f | %.1f |" % (b, results["edge"][1][b], results["backend"][1][b]))
    print("| (samples) | %d | %d |" % (results["edge"][0], results["backend"][0]))
    for tier in ("edge", "backend") if args.top else ():
        total, _, tops = results[tier]
        print("\n%s: the most sampled leaf symbols of each bucket (%% of the process's samples)" % tier)
        for b in BUCKETS:
            for symbol, n in tops[b]:
                print("  %-20s %5.1f  %s" % (b, n / total * 100, symbol))
    subprocess.run(["rm", "-rf", root])


if __name__ == "__main__":
    main()
