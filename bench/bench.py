#!/usr/bin/env python3
"""Herald (edge + backend) against nginx + Lua (edge) and nginx (backend, 502 -> initializer),
the setup of the PythonAnywhere talk, on one machine, sharing one uWSGI emperor and its apps.

Both topologies run alternately in the same run, several rounds; the medians and the ratio
Herald / nginx are printed and written to BENCHMARKS.md with a chart (bench/results.svg).
Run it with bench/run, which installs what is missing and builds Herald first.
"""
import argparse
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERALD = os.path.join(REPO, "target", "release", "herald")
APP = os.path.join(REPO, "demo", "app.py")
WARM_SITES = 200
COLD_SITES = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")

LUA_HASH = r"""
local ffi = require "ffi"
local bit = require "bit"
-- The CPython 2 string hash on 64 bits, as the balancer of the talk computes it.
function py2hash(s)
    local n = #s
    if n == 0 then return ffi.new("int64_t", 0) end
    local x = ffi.new("int64_t", s:byte(1)) * 128
    for i = 1, n do
        x = bit.bxor(x * 1000003LL, ffi.new("int64_t", s:byte(i)))
    end
    x = bit.bxor(x, ffi.new("int64_t", n))
    if x == -1LL then x = -2LL end
    return x
end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A process in its own session, stopped with its whole group."""

    def __init__(self, name, args, log, **kw):
        self.name = name
        self.log = log
        self.p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, **kw)

    def stop(self):
        for sig in (2, 9):
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.p.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                pass


def wait_for(what, check, timeout=60):
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            sys.exit("bench: timed out waiting for %s" % what)
        time.sleep(0.01)


def tcp_up(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def unix_up(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def unix_answers(path, host):
    """Whether the app on the unix socket answers a request with 200 (a request sent before the
    app is ready waits in the socket's queue, as a proxied one would)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    try:
        s.connect(path)
        s.sendall(("GET /hello HTTP/1.0\r\nHost: %s\r\n\r\n" % host).encode())
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer.split(b" ", 2)[1:2] == [b"200"]
    except OSError:
        return False
    finally:
        s.close()


def tree_pids(pid):
    """pid and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            with open("/proc/%d/task/%d/children" % (p, p)) as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return pids


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def rss_mib(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def get(port, host, path="/hello", timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def wrk(port, duration, host=None, script=None, connections=32, close=False):
    args = ["wrk", "-t2", "-c%d" % connections, "-d%ds" % duration, "--latency"]
    if host:
        args += ["-H", "Host: %s" % host]
    if close:
        args += ["-H", "Connection: close"]
    if script:
        args += ["-s", script]
    out = subprocess.run(args + ["http://127.0.0.1:%d/hello" % port], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {}
    for pct in ("50", "99"):
        m = re.search(r"\s%s(?:\.000)?%%\s+([\d.]+)(us|ms|s)\b" % pct, out)
        value, unit = float(m.group(1)), m.group(2)
        lat[pct] = value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return {"rps": rps, "requests": total, "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
            "p50_ms": lat["50"], "p99_ms": lat["99"]}


class Bench:
    def __init__(self, root, args):
        self.root = root
        self.args = args
        self.procs = []
        self.sites = os.path.join(root, "sites")
        self.vassals = os.path.join(root, "vassals")
        self.sockets = os.path.join(root, "sockets")
        for d in (self.sites, self.vassals, self.sockets, os.path.join(root, "logs")):
            os.makedirs(d)
        with open(os.path.join(REPO, "demo", "vassal.ini.template")) as f:
            self.template = f.read().replace("@SOCKET_DIR@", self.sockets).replace("@APP@", APP)

    def spawn(self, name, args, **kw):
        proc = Proc(name, args, os.path.join(self.root, "logs", name + ".log"), **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self):
        for proc in reversed(self.procs):
            proc.stop()

    def site(self, name, enabled):
        with open(os.path.join(self.sites, name + ".ini"), "w") as f:
            f.write(self.template)
        if enabled:
            shutil.copy(os.path.join(self.sites, name + ".ini"), os.path.join(self.vassals, name + ".ini"))

    # ---- setup -------------------------------------------------------------------------
    def start_apps(self):
        self.warm = ["w%d.bench" % i for i in range(WARM_SITES)]
        for name in self.warm:
            self.site(name, True)
        for kind in ("h", "n", "e", "s", "x", "a"):
            for i in range(COLD_SITES):
                self.site("c%s%d.bench" % (kind, i), False)
        for i in range(20):
            self.site("m%d.bench" % i, False)
        self.site("burst-h.bench", False)
        self.site("burst-n.bench", False)
        # The floor: the same app straight on TCP, no proxy.
        self.floor_port = free_port()
        with open(os.path.join(self.vassals, "floor.ini"), "w") as f:
            f.write(self.template.replace("http-socket = %s/%%n.sock" % self.sockets, "http-socket = 127.0.0.1:%d" % self.floor_port))
        self.stats = os.path.join(self.root, "emperor-stats.sock")
        self.emperor = self.spawn("emperor", ["uwsgi", "--emperor", self.vassals, "--emperor-freq", "1",
                                              "--emperor-stats", self.stats, "--die-on-term"], cwd=self.root)
        wait_for("the warm apps", lambda: all(unix_up(os.path.join(self.sockets, s + ".sock")) for s in self.warm), 300)
        wait_for("the floor app", lambda: tcp_up(self.floor_port))

    def start_herald(self):
        self.h_edge, self.h_backend, self.h_metrics = free_port(), free_port(), free_port()
        self.h_backend_nostats = free_port()
        logs = os.path.join(self.root, "logs")
        # One thread per service: on this 2-core machine, measured faster than 2 (fewer
        # cross-thread wake-ups next to wrk, nginx and the apps).
        common = "server:\n  threads: 1\n  pid_file: %s/%%s.pid\n  upgrade_sock: %s/%%s.sock\n  grace_period_seconds: 1\n" % (self.root, self.root)
        backend = ("backend:\n  listen: ['127.0.0.1:%%d']\n  sites_dir: %s\n  vassals_dir: %s\n  socket_path: %s/{host}.sock\n"
                   "  idle_timeout: 0\n  access_log:\n    path: %s/herald-%%s.log\n%%s") % (self.sites, self.vassals, self.sockets, logs)
        configs = {
            "herald-edge": (common % ("edge", "edge")) + "edge:\n  listen: ['127.0.0.1:%d']\n  backends: ['127.0.0.1:%d']\n  access_log:\n    path: %s/herald-edge-access.log\n" % (self.h_edge, self.h_backend, logs),
            "herald-backend": (common % ("backend", "backend")) + "metrics:\n  listen: 127.0.0.1:%d\n" % self.h_metrics
            + backend % (self.h_backend, "backend-access", "  emperor_stats: %s\n" % self.stats),
            "herald-backend-nostats": (common % ("nostats", "nostats")) + backend % (self.h_backend_nostats, "nostats-access", ""),
        }
        self.herald = {}
        for name, yaml in configs.items():
            path = os.path.join(self.root, name + ".yaml")
            with open(path, "w") as f:
                f.write(yaml)
            self.herald[name] = self.spawn(name, [HERALD, "-c", path], env=dict(os.environ, RUST_LOG="warn"))
        for port in (self.h_edge, self.h_backend, self.h_backend_nostats):
            wait_for("herald on %d" % port, lambda: tcp_up(port))

    def start_nginx(self):
        self.n_edge, self.n_backend, self.init_port = free_port(), free_port(), free_port()
        logs = os.path.join(self.root, "logs")
        self.init = self.spawn("initializer", [sys.executable, os.path.join(REPO, "bench", "initializer.py"),
                                               str(self.init_port), self.sites, self.vassals, self.sockets])
        wait_for("the initializer", lambda: tcp_up(self.init_port))
        # Workers as this user: nginx's default (nobody) could not open the apps' sockets, and
        # every request would take the 502 path to the initializer.
        import pwd
        user = pwd.getpwuid(os.getuid()).pw_name
        common = ("user " + user + ";\nworker_processes auto;\ndaemon off;\nerror_log %s/nginx-%%s-error.log warn;\npid %s/nginx-%%s.pid;\n"
                  "load_module /usr/lib/nginx/modules/ndk_http_module.so;\nload_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n"
                  "events { worker_connections 4096; }\nhttp {\n  access_log %s/nginx-%%s-access.log combined;\n"
                  "  client_body_temp_path %s/tmp-%%s;\n  proxy_temp_path %s/ptmp-%%s;\n") % (logs, self.root, logs, self.root, self.root)
        edge = common.replace("%s", "edge")
        edge += ("  init_by_lua_block { %s backends = { \"b0\" } }\n"
                 "  upstream b0 { server 127.0.0.1:%d; keepalive 64; }\n"
                 "  server {\n    listen 127.0.0.1:%d;\n    location / {\n"
                 "      set_by_lua_block $backend {\n        local ffi = require \"ffi\"\n        local h = py2hash(ngx.var.host)\n"
                 "        local n = ffi.new(\"int64_t\", #backends)\n        local i = h %% n\n        if i < 0 then i = i + n end\n"
                 "        return backends[tonumber(i) + 1]\n      }\n"
                 "      proxy_pass http://$backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n"
                 "      proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $remote_addr;\n"
                 "      proxy_set_header X-Real-IP $remote_addr;\n      proxy_set_header X-Forwarded-Proto $scheme;\n"
                 "      proxy_read_timeout 300s;\n    }\n  }\n}\n") % (LUA_HASH, self.n_backend, self.n_edge)
        backend = common.replace("%s", "backend")
        backend += ("  server {\n    listen 127.0.0.1:%d;\n    keepalive_timeout 75s;\n    location / {\n"
                    "      proxy_pass http://unix:%s/$host.sock:;\n      proxy_set_header Host $host;\n"
                    "      proxy_read_timeout 300s;\n      error_page 502 = @start;\n    }\n"
                    "    location @start {\n      proxy_pass http://127.0.0.1:%d;\n      proxy_set_header Host $host;\n"
                    "      proxy_read_timeout 300s;\n    }\n  }\n}\n") % (self.n_backend, self.sockets, self.init_port)
        self.nginx = {}
        for name, conf in (("nginx-edge", edge), ("nginx-backend", backend)):
            path = os.path.join(self.root, name + ".conf")
            with open(path, "w") as f:
                f.write(conf)
            self.nginx[name] = self.spawn(name, ["nginx", "-p", self.root, "-c", path])
        for port in (self.n_edge, self.n_backend):
            wait_for("nginx on %d" % port, lambda: tcp_up(port))

    # ---- measurements ------------------------------------------------------------------
    def tier_pids(self, topology):
        """The processes of the edge and of the backend serving the load (nginx: master and
        workers; not Herald's second backend, kept for cold starts)."""
        procs = {"edge": self.herald["herald-edge"], "backend": self.herald["herald-backend"]} if topology == "herald" \
            else {"edge": self.nginx["nginx-edge"], "backend": self.nginx["nginx-backend"]}
        return {tier: tree_pids(proc.p.pid) for tier, proc in procs.items()}

    def proxy_pids(self, topology):
        return [pid for pids in self.tier_pids(topology).values() for pid in pids]

    def load(self, topology, scenario, duration):
        port = {"herald": self.h_edge, "nginx": self.n_edge, "floor": self.floor_port}[topology]
        tiers = self.tier_pids(topology) if topology != "floor" else {}
        pids = [pid for tier in tiers.values() for pid in tier]
        cpu_before = {tier: cpu_seconds(tier_pids) for tier, tier_pids in tiers.items()}
        peak = {"all": 0.0, "edge": 0.0, "backend": 0.0}

        def sample():
            end = time.time() + duration
            while time.time() < end:
                rss = {tier: rss_mib(tier_pids) for tier, tier_pids in tiers.items()}
                for tier, value in rss.items():
                    peak[tier] = max(peak[tier], value)
                peak["all"] = max(peak["all"], sum(rss.values()))
                time.sleep(0.5)
        sampler = threading.Thread(target=sample)
        sampler.start()
        # The app alone closes every connection (http-socket): measure it a request per
        # connection rather than count wrk's reconnections as errors.
        close = topology == "floor"
        if scenario == "one":
            result = wrk(port, duration, host="w0.bench", close=close)
        else:
            result = wrk(port, duration, script=self.rotation, close=close)
        sampler.join()
        per_10k = lambda seconds: seconds / max(result["requests"], 1) * 10_000
        cpu = {tier: cpu_seconds(tier_pids) - cpu_before[tier] for tier, tier_pids in tiers.items()}
        result["cpu_per_10k"] = per_10k(sum(cpu.values())) if pids else None
        for tier in ("edge", "backend"):
            result["cpu_%s_per_10k" % tier] = per_10k(cpu[tier]) if pids else None
            result["rss_%s_mib" % tier] = peak[tier] if pids else None
        result["rss_load_mib"] = peak["all"] if pids else None
        return result

    def cold_starts(self):
        """Time to first byte for cold sites, and the emperor's own time for comparison."""
        out = {"herald": [], "herald_no_stats": [], "nginx": [], "emperor_woken": [], "emperor_scan": [],
               "emperor_socket": []}
        for i in range(COLD_SITES):
            # The emperor alone first: the vassal written as Herald writes it, then the app's first
            # answer to a request sent straight to its socket (what a proxy waits for too: uWSGI
            # accepts on the socket before the app is imported). Its own scan is measured before
            # anything else of this round, since any vassal event (another start) wakes it too.
            for key, kind, wake, until in (("emperor_scan", "x", False, "answer"), ("emperor_woken", "e", True, "answer"),
                                           ("emperor_socket", "a", True, "socket")):
                name = "c%s%d.bench" % (kind, i)
                sock = os.path.join(self.sockets, name + ".sock")
                time.sleep(1.5)  # let the emperor settle after the previous start
                t = time.time()
                tmp = os.path.join(self.vassals, "." + name + ".tmp")
                shutil.copy(os.path.join(self.sites, name + ".ini"), tmp)
                os.rename(tmp, os.path.join(self.vassals, name + ".ini"))
                if wake:
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(self.stats)
                    while s.recv(65536):
                        pass
                    s.close()
                if until == "socket":
                    while not unix_up(sock):
                        time.sleep(0.001)
                else:
                    while not unix_answers(sock, name):
                        time.sleep(0.001)
                out[key].append((time.time() - t) * 1000)
            for key, kind, port in (("herald", "h", self.h_edge), ("herald_no_stats", "s", self.h_backend_nostats), ("nginx", "n", self.n_edge)):
                time.sleep(1.5)
                t = time.time()
                status, _ = get(port, "c%s%d.bench" % (kind, i))
                assert status == 200, (key, status)
                out[key].append((time.time() - t) * 1000)
        return out

    def burst(self, topology):
        port = self.h_edge if topology == "herald" else self.n_edge
        site = "burst-%s.bench" % topology[0]
        starts_before = self.herald_starts() if topology == "herald" else None
        results = []

        def one():
            try:
                results.append(get(port, site)[0])
            except Exception as e:  # counted as an error
                results.append(str(e))
        threads = [threading.Thread(target=one) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        errors = sum(1 for r in results if r != 200)
        if topology == "herald":
            starts = self.herald_starts() - starts_before
        else:
            with open(os.path.join(self.root, "logs", "initializer.log")) as f:
                starts = sum(1 for line in f if line.startswith("start %s" % site))
        return {"errors": errors, "starts": starts}

    def many_cold(self):
        """20 different cold sites at once through Herald: all answered, starts within max_starts."""
        results, peak, done = [], [0.0], threading.Event()

        def sample():
            while not done.is_set():
                _, body = get(self.h_metrics, "metrics", "/metrics")
                for line in body.decode().splitlines():
                    if line.startswith("herald_app_starts_in_progress "):
                        peak[0] = max(peak[0], float(line.split()[1]))
                time.sleep(0.002)
        sampler = threading.Thread(target=sample)
        sampler.start()
        began = time.time()

        def one(i):
            results.append(get(self.h_edge, "m%d.bench" % i)[0])
        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - began
        done.set()
        sampler.join()
        return {"answered_200": sum(1 for r in results if r == 200), "peak_starts_in_progress": peak[0],
                "max_starts": 8, "all_up_after_ms": elapsed * 1000}

    def herald_starts(self):
        _, body = get(self.h_metrics, "metrics", "/metrics")
        return sum(float(line.split()[-1]) for line in body.decode().splitlines()
                   if line.startswith("herald_app_starts_total{"))

    def run(self):
        self.rotation = os.path.join(self.root, "rotate.lua")
        with open(self.rotation, "w") as f:
            f.write("local i = 0\nrequest = function()\n  i = i %% %d + 1\n"
                    "  return wrk.format(\"GET\", \"/hello\", {[\"Host\"] = \"w\" .. (i - 1) .. \".bench\"})\nend\n" % WARM_SITES)
        self.start_apps()
        self.start_herald()
        self.start_nginx()
        # Touch every site through both, so no run pays for a first connection.
        for s in self.warm:
            assert get(self.h_edge, s)[0] == 200 and get(self.n_edge, s)[0] == 200, s
        idle = {"%s/%s" % (topology, tier): rss_mib(pids) for topology in ("herald", "nginx")
                for tier, pids in self.tier_pids(topology).items()}
        rounds = []
        for r in range(self.args.rounds):
            order = ["herald", "nginx"] if r % 2 == 0 else ["nginx", "herald"]
            this = {}
            for scenario in ("one", "many"):
                for topology in order + ["floor"]:
                    res = self.load(topology, scenario, self.args.duration)
                    this["%s/%s" % (topology, scenario)] = res
                    print("round %d %-6s %-4s %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d" % (
                        r + 1, topology, scenario, res["rps"], res["p50_ms"], res["p99_ms"], res["errors"]), flush=True)
            rounds.append(this)
        cold = self.cold_starts()
        bursts = {t: self.burst(t) for t in ("herald", "nginx")}
        many = self.many_cold()
        return {"rounds": rounds, "idle_rss_mib": idle, "cold_ms": cold, "burst": bursts, "many_cold": many}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def summarize(raw):
    keys = raw["rounds"][0].keys()
    med = {k: {m: median([r[k][m] for r in raw["rounds"]]) for m in ("rps", "p50_ms", "p99_ms", "cpu_per_10k", "cpu_edge_per_10k", "cpu_backend_per_10k",
                                                                        "rss_load_mib", "rss_edge_mib", "rss_backend_mib", "errors")} for k in keys}
    return med


def svg_chart(med, path):
    groups = [("one site", "one"), ("200 sites", "many")]
    bars = [("herald", "#2b7bb9"), ("nginx", "#d95f02"), ("floor", "#999999")]
    width, height, top = 640, 300, 40
    rps_max = max(med["%s/%s" % (b, s)]["rps"] for _, s in groups for b, _c in bars)
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (width, height),
             '<text x="10" y="20" font-size="14">Requests per second (median; higher is better) and p99 latency</text>']
    x = 40
    for label, s in groups:
        for b, color in bars:
            v = med["%s/%s" % (b, s)]
            h = (height - top - 60) * v["rps"] / rps_max
            y = height - 40 - h
            parts.append('<rect x="%d" y="%.1f" width="50" height="%.1f" fill="%s"/>' % (x, y, h, color))
            parts.append('<text x="%d" y="%.1f">%.0f</text>' % (x, y - 4, v["rps"]))
            parts.append('<text x="%d" y="%d">%s</text>' % (x, height - 25, b))
            parts.append('<text x="%d" y="%d">p99 %.1f ms</text>' % (x - 4, height - 10, v["p99_ms"]))
            x += 70
        parts.append('<text x="%d" y="%d" font-weight="bold">%s</text>' % (x - 190, top, label))
        x += 60
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def versions():
    def first_line(args):
        try:
            r = subprocess.run(args, capture_output=True, text=True)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "herald": first_line([HERALD, "--version"]),
            "nginx": first_line(["nginx", "-v"]), "uwsgi": first_line(["uwsgi", "--version"]), "wrk": first_line(["wrk", "-v"])}


def report(raw, med, args):
    ratio = lambda k, m: med["herald/%s" % k][m] / med["nginx/%s" % k][m]
    cold = {k: median(v) for k, v in raw["cold_ms"].items()}
    v = versions()
    lines = ["# Benchmarks", "",
             "Herald (edge + backend, two processes) against the talk's setup (nginx + Lua edge, nginx backend",
             "with a 502 fallback to an initializer service), over one uWSGI emperor and the same apps, on one",
             "machine, alternately in the same run. Produced by `bench/run` (%d rounds of %d s per measurement)." % (args.rounds, args.duration), "",
             "Machine: %s, %s cores, Linux %s. %s; %s; uWSGI %s; %s." % (v["cpu"], v["cores"], v["kernel"], v["herald"], v["nginx"], v["uwsgi"], v["wrk"]), "",
             "## Warm requests (medians)", "",
             "| scenario | proxy | req/s | p50 ms | p99 ms | CPU s / 10k req (edge + backend) | RSS under load MiB (edge + backend) | errors |",
             "|---|---|---|---|---|---|---|---|"]
    known = lambda x: x == x  # not NaN
    for label, s in (("one site", "one"), ("200 sites", "many")):
        for b in ("herald", "nginx", "floor"):
            m = med["%s/%s" % (b, s)]
            lines.append("| %s | %s | %.0f | %.2f | %.2f | %s | %s | %s |" % (
                label, b if b != "floor" else "none (the app on TCP)", m["rps"], m["p50_ms"], m["p99_ms"],
                "%.3f (%.3f + %.3f)" % (m["cpu_per_10k"], m["cpu_edge_per_10k"], m["cpu_backend_per_10k"]) if known(m["cpu_per_10k"]) else "-",
                "%.0f (%.0f + %.0f)" % (m["rss_load_mib"], m["rss_edge_mib"], m["rss_backend_mib"]) if known(m["rss_load_mib"]) else "-",
                "%d" % m["errors"] if b != "floor" else "-"))
    lines += ["", "The floor is the same app on a TCP `http-socket`, one request per connection (uWSGI closes each",
              "connection without saying so, which wrk counts as read errors; they are not failures).", "",
              "Ratios Herald / nginx (targets: throughput >= 1.2, p99 <= 0.8, CPU per request <= 1, edge memory under load <= 1):", "",
              "| scenario | throughput | p99 | CPU per request | edge memory under load | both tiers' memory under load |", "|---|---|---|---|---|---|"]
    for label, s in (("one site", "one"), ("200 sites", "many")):
        lines.append("| %s | %.2f | %.2f | %.2f | %.2f | %.2f |" % (label, ratio(s, "rps"), ratio(s, "p99_ms"), ratio(s, "cpu_per_10k"),
                                                        ratio(s, "rss_edge_mib"), ratio(s, "rss_load_mib")))
    idle = raw["idle_rss_mib"]
    lines += ["", "Idle RSS, edge + backend: Herald %.0f + %.0f MiB, nginx %.0f + %.0f MiB (nginx: master and workers)." % (
        idle["herald/edge"], idle["herald/backend"], idle["nginx/edge"], idle["nginx/backend"]), "",
              "![throughput and p99](bench/results.svg)", "",
              "## Cold starts (median of %d sites, milliseconds to first byte)" % COLD_SITES, "",
              "| path | ms |", "|---|---|",
              "| emperor alone, woken through its stats socket: the app's first answer (the baseline) | %.1f |" % cold["emperor_woken"],
              "| emperor alone, woken: its socket accepts (before the app is imported) | %.1f |" % cold["emperor_socket"],
              "| emperor alone, waiting for its scan (--emperor-freq 1; other events can wake it sooner): first answer | %.1f |" % cold["emperor_scan"],
              "| Herald edge + backend, `emperor_stats` set | %.1f |" % cold["herald"],
              "| Herald backend, no `emperor_stats` | %.1f |" % cold["herald_no_stats"],
              "| nginx + Lua edge, nginx backend, 502 -> initializer | %.1f |" % cold["nginx"], "",
              "Herald's own share of a cold start: %.1f ms (Herald with stats, through edge and backend, minus the woken emperor's"
              " first answer; target <= 10 ms)." % (cold["herald"] - cold["emperor_woken"]), "",
              "Burst of 100 concurrent requests on one cold site: Herald %d errors, %d start(s); nginx %d errors, %d start(s)." % (
                  raw["burst"]["herald"]["errors"], raw["burst"]["herald"]["starts"], raw["burst"]["nginx"]["errors"], raw["burst"]["nginx"]["starts"]), "",
              "20 different cold sites at once through Herald: %d of 20 answered 200, at most %.0f starts in progress (max_starts %d), all up after %.0f ms." % (
                  raw["many_cold"]["answered_200"], raw["many_cold"]["peak_starts_in_progress"], raw["many_cold"]["max_starts"], raw["many_cold"]["all_up_after_ms"]), "",
              open(os.path.join(REPO, "bench", "analysis.md")).read(),
              "## Raw numbers", "", "```json", json.dumps(raw, indent=1), "```", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per load measurement")
    parser.add_argument("--quick", action="store_true", help="one round of 3 s, to check the harness")
    parser.add_argument("--output", default=os.path.join(REPO, "BENCHMARKS.md"))
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (configs, logs)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 3
    root = tempfile.mkdtemp(prefix="herald-bench.")
    bench = Bench(root, args)
    try:
        raw = bench.run()
    finally:
        bench.stop_all()
    med = summarize(raw)
    svg_chart(med, os.path.join(REPO, "bench", "results.svg"))
    text = report(raw, med, args)
    with open(args.output, "w") as f:
        f.write(text)
    print(text.split("## Raw numbers")[0])
    if args.keep:
        print("files and logs kept in", root)
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
