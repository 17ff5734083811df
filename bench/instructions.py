#!/usr/bin/env python3
"""Instructions and system calls per warm request, per process, for one or more Herald builds:
counts that do not move with the shared machine's speed, so a change of a few percent shows in
one run where bench/ab.py's CPU time needs many rounds.

The topology is bench/ab.py's (an edge and a backend, `threads: 1`, in front of one uWSGI app;
one site; access logs on, as in bench/run); `--nginx` adds the talk's nginx + Lua pair, each
nginx in one process. For each variant and each role, that role runs under valgrind's callgrind, the other
as it is; after a warm-up, `ab -k` sends a fixed number of kept-alive requests through the edge
while callgrind counts (user-space instructions only). Then both run plainly under `strace -c`
for the same requests (system calls: the kernel's side of the work, which callgrind does not see).

    bench/instructions.py A=target/release/herald B=/tmp/herald-new
    bench/instructions.py --nginx cur=target/release/herald   # against the talk's nginx + Lua
    bench/instructions.py --top 25 cur=target/profiling/release/herald   # where the instructions go

`--cpu N` adds what the counts leave out: each stack under wrk (32 connections, N alternating
rounds of 3 s), the CPU microseconds per request each process spends in user space and in the
kernel (medians), to tell the work Herald adds from the socket work both do.

`--top N` prints each role's N functions with the most inclusive instructions (a build with
debug info names them: bench/profile builds one into target/profiling).
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench import (APP, CLK_TCK, LUA_EDGE_LOCATION, LUA_HASH, Proc, cpu_ticks, free_port, get, nginx_backend_server,
                   nginx_main_conf, tcp_up, tree_pids, unix_up, vassal_template, vassal_text, wait_for, wrk)

SITE = "w0.bench"
ROLES = ("edge", "backend")


def variant(text):
    name, _, binary = text.partition("=")
    if not name or not os.access(binary, os.X_OK):
        raise argparse.ArgumentTypeError("%r: expected NAME=BINARY with an executable BINARY" % text)
    return name, os.path.abspath(binary)


def herald_stack(binary):
    """The commands of a Herald edge and backend (as bench/run configures them: one thread each,
    access logs on), given the bench's directories."""
    def stack(root, name, sites, vassals, sockets):
        ports = {"edge": free_port(), "backend": free_port()}
        logs = os.path.join(root, "logs")

        def server(role):
            return "server:\n  threads: 1\n  pid_file: %s/%s-%s.pid\n  upgrade_sock: %s/%s-%s.sock\n" % (
                root, name, role, root, name, role)

        texts = {
            "backend": server("backend") + "backend:\n  listen: ['127.0.0.1:%d']\n  sites_dir: %s\n  vassals_dir: %s\n"
            "  socket_path: %s/{host}.sock\n  idle_timeout: 0\n  max_starts_per_client: 0\n  trusted_proxies: [127.0.0.1/32]\n"
            "  access_log:\n    path: %s/%s-backend-access.log\n" % (ports["backend"], sites, vassals, sockets, logs, name),
            "edge": server("edge") + "edge:\n  listen: ['127.0.0.1:%d']\n  backends: ['127.0.0.1:%d']\n"
            "  access_log:\n    path: %s/%s-edge-access.log\n" % (ports["edge"], ports["backend"], logs, name),
        }
        commands = {}
        for role, text in texts.items():
            path = os.path.join(root, "%s-%s.yaml" % (name, role))
            with open(path, "w") as f:
                f.write(text)
            commands[role] = [binary, "-c", path]
        return commands, ports
    return stack


def nginx_stack(root, name, sites, vassals, sockets):
    """The talk's setup as bench/run runs it (an nginx + Lua edge keeping connections to an nginx
    backend that `uwsgi_pass`es), each nginx in one process (`master_process off`) so that one
    valgrind sees all of its work. The backend's 502 fallback points at a closed port: warm
    requests never take it."""
    ports = {"edge": free_port(), "backend": free_port()}
    one_process = lambda conf: conf.replace("worker_processes auto;", "master_process off;\nworker_processes 1;")
    edge = one_process(nginx_main_conf(root, name + "-edge"))
    edge += ("  init_by_lua_block { %s backends = { \"b0\" } }\n  upstream b0 { server 127.0.0.1:%d; keepalive 64; }\n"
             "  server {\n    listen 127.0.0.1:%d;\n    location / {\n%s    }\n  }\n}\n") % (
                 LUA_HASH, ports["backend"], ports["edge"], LUA_EDGE_LOCATION)
    backend = one_process(nginx_main_conf(root, name + "-backend"))
    backend += nginx_backend_server(ports["backend"], "", "      include /etc/nginx/uwsgi_params;\n"
                                    "      uwsgi_pass unix:%s/$host.sock;\n      uwsgi_read_timeout 300s;\n" % sockets,
                                    free_port()) + "}\n"
    commands = {}
    for role, conf in (("edge", edge), ("backend", backend)):
        path = os.path.join(root, "%s-%s.conf" % (name, role))
        with open(path, "w") as f:
            f.write(conf)
        commands[role] = ["nginx", "-p", root, "-c", path]
    return commands, ports


def ab(port, requests):
    out = subprocess.run(["ab", "-q", "-k", "-n", str(requests), "-c", "1", "-H", "Host: %s" % SITE,
                          "http://127.0.0.1:%d/hello" % port], capture_output=True, text=True, timeout=1800)
    failed = re.search(r"Failed requests:\s+(\d+)", out.stdout)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out.stdout)
    complete = re.search(r"Complete requests:\s+(\d+)", out.stdout)
    if out.returncode or not complete or int(complete.group(1)) != requests or (failed and int(failed.group(1))) or non2xx:
        sys.exit("bench: ab failed:\n%s\n%s" % (out.stdout, out.stderr))


def start(command, role, logs, name, wrap=()):
    return Proc("%s-%s" % (name, role), list(wrap) + command, os.path.join(logs, "%s-%s.log" % (name, role)),
                env=dict(os.environ, RUST_LOG="warn"))


def callgrind_total(path):
    # The header's `summary:` stays 0 when instrumentation starts late; `totals:` at the end counts.
    with open(path) as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
    sys.exit("bench: no totals in %s" % path)


def top_functions(path, n):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    rows = [line for line in out.splitlines() if re.match(r"\s*[\d,]+ \(", line)]
    return rows[:n]


def measure(args, root, name, stack, dirs, logs, procs):
    result = {}
    for traced in ROLES:
        commands, ports = stack(root, name, *dirs)
        out = os.path.join(root, "callgrind-%s-%s.out" % (name, traced))
        running = {}
        for role in ("backend", "edge"):
            wrap = ()
            if role == traced:
                wrap = ("valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + out)
            running[role] = start(commands[role], role, logs, name, wrap)
            procs.append(running[role])
            wait_for("herald %s on %d" % (role, ports[role]), lambda: tcp_up(ports[role]), timeout=120)
        assert get(ports["edge"], SITE)[0] == 200
        ab(ports["edge"], args.warmup)
        subprocess.run(["callgrind_control", "-i", "on", str(running[traced].p.pid)], check=True, capture_output=True)
        ab(ports["edge"], args.requests)
        subprocess.run(["callgrind_control", "-i", "off", str(running[traced].p.pid)], check=True, capture_output=True)
        # callgrind writes its counts as the process exits: give it the time valgrind needs.
        running[traced].p.send_signal(signal.SIGINT)
        running[traced].p.wait(timeout=300)
        for p in running.values():
            p.stop()
            procs.remove(p)
        result[traced] = callgrind_total(out) / args.requests
        if args.keep_profiles:
            os.makedirs(args.keep_profiles, exist_ok=True)
            shutil.copy(out, args.keep_profiles)
        if args.top:
            result[traced + " top"] = top_functions(out, args.top)

    commands, ports = stack(root, name, *dirs)
    running = {role: start(commands[role], role, logs, name) for role in ("backend", "edge")}
    procs.extend(running.values())
    for role in ("backend", "edge"):
        wait_for("herald %s" % role, lambda: tcp_up(ports[role]))
    ab(ports["edge"], args.warmup)
    tracers = {role: subprocess.Popen(["strace", "-f", "-c", "-qq", "-o", os.path.join(root, "strace-%s-%s" % (name, role)),
                                       "-p", str(p.p.pid)]) for role, p in running.items()}
    for role in ROLES:  # strace prints nothing when attached; its attach shows in /proc as TracerPid
        wait_for("strace on %s" % role, lambda: traced_by(running[role].p.pid))
    ab(ports["edge"], args.requests)
    for t in tracers.values():
        t.send_signal(2)
        t.wait(timeout=60)
    for p in running.values():
        p.stop()
        procs.remove(p)
    for role in ROLES:
        result[role + " syscalls"] = syscalls(os.path.join(root, "strace-%s-%s" % (name, role)), args.requests)
    return result


def cpu_split(args, root, stacks, dirs, logs, procs):
    """Each stack's edge and backend under wrk (32 connections, `--cpu` alternating rounds of 3 s):
    CPU microseconds per request in user space and in the kernel, medians. Where the instruction
    counts say how much work each side does in user space, this says how much of the CPU that
    is, beside the kernel's share (the same sockets for both)."""
    running = {}
    for name, stack in stacks:
        commands, ports = stack(root, name, *dirs)
        started = {role: start(commands[role], role, logs, name) for role in ("backend", "edge")}
        procs.extend(started.values())
        for role in ("backend", "edge"):
            wait_for("%s %s" % (name, role), lambda: tcp_up(ports[role]), timeout=120)
        running[name] = (started, ports)
    rows = {name: [] for name in running}
    for r in range(args.cpu):
        for name in (list(running) if r % 2 == 0 else list(running)[::-1]):
            started, ports = running[name]
            pids = {role: tree_pids(p.p.pid) for role, p in started.items()}
            before = {role: cpu_ticks(p) for role, p in pids.items()}
            res = wrk(ports["edge"], 3, host=SITE)
            if res["errors"]:
                sys.exit("bench: %d errors from %s" % (res["errors"], name))
            row = {"rps": res["rps"]}
            for role, p in pids.items():
                after = cpu_ticks(p)
                for i, kind in enumerate(("user", "system")):
                    row["%s %s" % (role, kind)] = (after[i] - before[role][i]) / CLK_TCK / res["requests"] * 1e6
            rows[name].append(row)
    for started, _ in running.values():
        for p in started.values():
            p.stop()
            procs.remove(p)
    return {name: {k: statistics.median(row[k] for row in rs) for k in rs[0]} for name, rs in rows.items()}


def traced_by(pid):
    with open("/proc/%d/status" % pid) as f:
        return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)


def syscalls(path, requests):
    """{name: calls per request} from strace -c's table, leaving out the waits that happen
    whether or not there is work (the access log writer's pause)."""
    calls = {}
    with open(path) as f:
        for line in f:
            cols = line.split()
            if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] not in ("total", "clock_nanosleep"):
                calls[cols[-1]] = int(cols[3])
    return {k: v / requests for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v / requests >= 0.01}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", type=variant)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--nginx", action="store_true", help="measure the talk's nginx + Lua setup first, as the reference")
    parser.add_argument("--cpu", type=int, default=0, metavar="ROUNDS",
                        help="also CPU per request in user space and in the kernel under wrk, medians of ROUNDS")
    parser.add_argument("--keep-profiles", metavar="DIR",
                        help="copy each callgrind output here (for callgrind_annotate, say) before the run's files go")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "ab", "strace") + (("wrk",) if args.cpu else ()):
        if not shutil.which(tool):
            sys.exit("bench: %s is missing (apt-get install valgrind apache2-utils strace wrk)" % tool)
    root = tempfile.mkdtemp(prefix="herald-instr.")
    procs = []
    try:
        dirs = tuple(os.path.join(root, d) for d in ("sites", "vassals", "sockets"))
        logs = os.path.join(root, "logs")
        for d in dirs + (logs,):
            os.makedirs(d)
        text = vassal_text(vassal_template(dirs[2]), app=APP)
        for d in dirs[:2]:
            with open(os.path.join(d, SITE + ".ini"), "w") as f:
                f.write(text)
        procs.append(Proc("emperor", ["uwsgi", "--emperor", dirs[1], "--die-on-term"], os.path.join(logs, "emperor.log"), cwd=root))
        wait_for("the app", lambda: unix_up(os.path.join(dirs[2], SITE + ".sock")))
        stacks = [("nginx", nginx_stack)] if args.nginx else []
        stacks += [(name, herald_stack(binary)) for name, binary in args.variants]
        results = {}
        for name, stack in stacks:
            started = time.time()
            results[name] = measure(args, root, name, stack, dirs, logs, procs)
            print("%s measured in %.0f s" % (name, time.time() - started), file=sys.stderr, flush=True)
        print("instructions per request (callgrind, user space), %d kept-alive requests through the edge:" % args.requests)
        first = None
        for name, r in results.items():
            line = "%-10s edge %9.0f  backend %9.0f" % (name, r["edge"], r["backend"])
            if first and first[0] == "nginx":
                line += "  (%.2fx and %.2fx nginx's)" % (r["edge"] / first[1]["edge"], r["backend"] / first[1]["backend"])
            elif first:
                line += "  (edge %+.1f%%, backend %+.1f%%)" % ((r["edge"] / first[1]["edge"] - 1) * 100,
                                                            (r["backend"] / first[1]["backend"] - 1) * 100)
            else:
                first = (name, r)
            print(line)
        print("\nsystem calls per request (strace -c):")
        for name, r in results.items():
            for role in ROLES:
                calls = r[role + " syscalls"]
                print("%-10s %-8s %5.2f  %s" % (name, role, sum(calls.values()),
                                               ", ".join("%s %.2f" % kv for kv in calls.items())))
        if args.cpu:
            split = cpu_split(args, root, stacks, dirs, logs, procs)
            print("\nCPU microseconds per request under wrk (user + kernel), medians of %d alternating rounds:" % args.cpu)
            for name, r in split.items():
                print("%-10s %7.0f req/s  edge %5.1f + %5.1f  backend %5.1f + %5.1f" % (
                    name, r["rps"], r["edge user"], r["edge system"], r["backend user"], r["backend system"]))
        if args.top:
            for name, r in results.items():
                for role in ROLES:
                    print("\n%s %s: top %d functions by inclusive instructions" % (name, role, args.top))
                    print("\n".join(r[role + " top"]))
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
