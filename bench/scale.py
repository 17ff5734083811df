#!/usr/bin/env python3
"""Herald at scale against the talk's nginx + Lua setup at scale (issue 14): N sites over 3
backends and N certificates at the edge, for N = 1,000, 5,000 and 25,000, on this one machine.

Each topology is an edge and 3 backends, each backend with a uWSGI emperor of its own:
- Herald: 4 processes (one edge with `edge.tls.certs_dir`, `hash: modulo`; three backends with
  `max_running_apps` and `emperor_stats`), as 4 machines would run them.
- nginx: an nginx + Lua edge (the talk's CPython 2 hash over the 3 backends; certificates loaded
  per handshake with `ssl_certificate .../$ssl_server_name.crt`), three nginx backends with their
  502 fallback to an initializer each (bench/initializer.py), and, for handshakes only, a second
  edge that loads certificates with `ssl_certificate_by_lua` into a per-worker cache.

Both topologies see the same sites, certificates and traffic, alternately in the same run, several
rounds; the medians and the ratios Herald / nginx go to BENCHMARKS.md between the markers
`<!-- scale:begin -->` and `<!-- scale:end -->` (bench.py's report keeps that block).
Run it with `bench/run --scale` (`--quick`: 1,000 sites, one short round, to check the harness).
"""
import argparse
import bisect
import concurrent.futures
import http.client
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import bench  # beside this file: the processes, measurements and configuration pieces
from bench import (HERALD, LUA_EDGE_LOCATION, LUA_HASH, REPO, Proc, cpu_seconds, free_port, get, herald_server_yaml,
                   median, nginx_backend_server, nginx_main_conf, rss_mib, tcp_up, tree_pids, unix_answers, unix_up,
                   vassal_template, vassal_text, wait_for, wrk)

BACKENDS = 3
TOPOLOGIES = ("herald", "nginx")
SIZES = (1000, 5000, 25000)
HANDSHAKE_CLIENTS = 4  # processes; on 2 cores, more did not add handshakes (tried 2, 4, 6)
TAIL_CONCURRENCY = 64  # cold requests in flight at most; a tail that falls behind is counted, not queued
MAKE_CERTS = os.path.join(REPO, "tests", "make_certs.py")


def site(rank):
    """The site of popularity rank 1, 2, ...: make_certs.py's names (`s-0.example`, ...)."""
    return "s-%d.example" % (rank - 1)


def py2hash(name):
    """CPython 2's 64-bit string hash, as LUA_HASH and Herald's `hash: modulo` compute it."""
    mask = (1 << 64) - 1
    data = name.encode()
    x = (data[0] << 7) & mask
    for c in data:
        x = ((x * 1000003) & mask) ^ c
    x ^= len(data)
    if x >= 1 << 63:
        x -= 1 << 64
    return -2 if x == -1 else x


def backend_of(name):
    """The index of the site's backend in both edges' lists (floor modulo, as both do)."""
    return py2hash(name) % BACKENDS


def zipf_cdf(count, s):
    """Cumulative probabilities of ranks 1..count under Zipf with exponent s."""
    total, cdf = 0.0, []
    for k in range(1, count + 1):
        total += k ** -s
        cdf.append(total)
    return [c / total for c in cdf]


def draw(cdf, rng):
    return min(bisect.bisect_left(cdf, rng.random()), len(cdf) - 1)


def wake(stats):
    """A connection to an emperor's stats socket makes it scan its directory now."""
    s = socket.socket(socket.AF_UNIX)
    try:
        s.settimeout(5)
        s.connect(stats)
        while s.recv(65536):
            pass
    except OSError:
        pass  # its next scan (--emperor-freq 1) does it
    finally:
        s.close()


def client_context():
    """No verification: the check is done against the files (served_der), and a verifying client
    would spend its CPU on it, which this 2-core machine shares with the server measured."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def served_der(port, name, timeout=5):
    """The certificate the server on `port` presents for SNI `name` (DER)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with client_context().wrap_socket(s, server_hostname=name) as t:
            return t.getpeercert(binary_form=True)


def handshake_worker(port, names, cdf, seed, seconds, out):
    """Full handshakes (no resumption) for Zipf-chosen names, until `seconds` have passed; each
    connection closes once its handshake is done."""
    ctx, rng = client_context(), random.Random(seed)
    ok, failed, examples = 0, 0, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        name = names[draw(cdf, rng)]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                with ctx.wrap_socket(s, server_hostname=name):
                    ok += 1
        except OSError as e:
            failed += 1
            if len(examples) < 3:
                examples.append("%s: %s" % (name, e))
    out.put((ok, failed, examples))


def handshakes(port, names, cdf, seconds, seed):
    fork = multiprocessing.get_context("fork")  # the names and table are inherited, not pickled
    out = fork.Queue()
    workers = [fork.Process(target=handshake_worker, args=(port, names, cdf, seed * 100 + i, seconds, out), daemon=True)
               for i in range(HANDSHAKE_CLIENTS)]
    began = time.monotonic()
    for w in workers:
        w.start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    elapsed = time.monotonic() - began
    for w in workers:
        w.join(timeout=10)
    ok = sum(r[0] for r in results)
    return {"handshakes": ok, "failed": sum(r[1] for r in results), "rate": ok / elapsed,
            "examples": [e for r in results for e in r[2]][:3]}


class Tail:
    """The cold tail: `rate` requests a second through the edge, each for a site drawn from Zipf
    over the ranks past the hot set, each on a connection of its own (so a cold start holds no
    wrk connection). Most of these sites have no app running: this is where starts, and under
    max_running_apps evictions, happen."""

    def __init__(self, port, names, cdf, rate, seconds, seed):
        rng = random.Random(seed)
        self.port, self.rate = port, rate
        self.sites = [names[draw(cdf, rng)] for _ in range(int(rate * seconds))]
        self.lock = threading.Lock()
        self.results, self.skipped, self.threads = [], 0, []
        self.pacer = threading.Thread(target=self.pace)

    def start(self):
        self.pacer.start()

    def pace(self):
        began = time.monotonic()
        for i, name in enumerate(self.sites):
            time.sleep(max(0.0, began + i / self.rate - time.monotonic()))
            self.threads = [t for t in self.threads if t.is_alive()]
            if len(self.threads) >= TAIL_CONCURRENCY:
                self.skipped += 1
                continue
            t = threading.Thread(target=self.one, args=(name,), daemon=True)
            t.start()
            self.threads.append(t)

    def one(self, name):
        t = time.monotonic()
        try:
            status = get(self.port, name, timeout=60)[0]
        except Exception as e:  # counted as an error
            status = "%s: %s" % (type(e).__name__, e)
        with self.lock:
            self.results.append((status, (time.monotonic() - t) * 1000))

    def stop(self):
        self.pacer.join()
        end = time.monotonic() + 70
        for t in self.threads:
            t.join(timeout=max(0.0, end - time.monotonic()))
        ms = sorted(ms for status, ms in self.results if status == 200)
        return {"tail_sent": len(self.results), "tail_ok": len(ms), "tail_errors": len(self.results) - len(ms),
                "tail_skipped": self.skipped, "tail_p50_ms": median(ms),
                "tail_p90_ms": ms[int(len(ms) * 0.9)] if ms else float("nan"),
                "tail_error_examples": sorted({str(s) for s, _ in self.results if s != 200})[:3]}


def until(proc, ok, timeout=300):
    """Milliseconds from the process's start to ok() first being true (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ok():
                return (time.monotonic() - proc.began) * 1000
        except (OSError, http.client.HTTPException):
            pass  # not listening yet
        if time.monotonic() > deadline or proc.p.poll() is not None:
            sys.exit("scale: %s is not serving (see %s)" % (proc.name, proc.log))
        time.sleep(0.01)


def metrics(port):
    """Herald's /metrics as {name{labels}: value}."""
    _, body = get(port, "metrics", "/metrics", timeout=10)
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def metric_sum(values, name):
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


class ScaleBench:
    def __init__(self, root, args):
        self.root, self.args = root, args
        self.logs = os.path.join(root, "logs")
        self.pool = os.path.join(root, "certs-pool")  # every pair, made once
        self.certs = os.path.join(root, "certs")  # the first N of them, for the N measured
        self.tmp = os.path.join(root, "herald-tmp")
        for d in (self.logs, self.pool, self.certs, self.tmp):
            os.makedirs(d)
        # Each topology its own catalogue, sockets and emperors, so neither meets the apps the
        # other started or stopped; the two catalogues differ only in their socket directory.
        self.dirs = {}
        for t in TOPOLOGIES:
            d = {"sites": os.path.join(root, t, "sites"), "sockets": os.path.join(root, t, "sockets"),
                 "vassals": [os.path.join(root, t, "vassals%d" % i) for i in range(BACKENDS)],
                 "stats": [os.path.join(root, t, "stats%d.sock" % i) for i in range(BACKENDS)]}
            for p in [d["sites"], d["sockets"]] + d["vassals"]:
                os.makedirs(p)
            d["vassal"] = vassal_text(vassal_template(d["sockets"]))
            self.dirs[t] = d
        self.procs = []
        self.sites_written = 0
        # The hot set: the most popular sites, their apps running from the start.
        self.hot = [site(k) for k in range(1, args.hot + 1)]
        self.hot_at = [[s for s in self.hot if backend_of(s) == i] for i in range(BACKENDS)]
        # The cap: each backend's share of the hot set plus a few apps for the tail.
        self.cap = max(len(h) for h in self.hot_at) + args.headroom
        self.names = [site(k) for k in range(1, max(args.sizes) + 1)]
        self.all_cdf = {n: zipf_cdf(n, args.zipf) for n in args.sizes}
        self.tail_cdf = {n: zipf_cdf(n - args.hot, args.zipf) for n in args.sizes}
        self.wrk_script = os.path.join(root, "zipf-hot.lua")
        self.write_wrk_script()

    # ---- processes ---------------------------------------------------------------------
    def spawn(self, name, args, **kw):
        proc = Proc(name, args, os.path.join(self.logs, name + ".log"), **kw)
        proc.began = time.monotonic()
        self.procs.append(proc)
        return proc

    def stop(self, procs):
        for proc in reversed(procs):
            proc.stop()
            self.procs.remove(proc)

    def stop_all(self):
        self.stop(list(self.procs))

    # ---- setup -------------------------------------------------------------------------
    def make_certificates(self):
        """Every pair at once (tests/make_certs.py: P-256, for DNS name s-K.example), renamed
        <site>.crt / <site>.key, the names nginx's `$ssl_server_name.crt` looks for."""
        ca_key, ca_crt = os.path.join(self.root, "ca.key"), os.path.join(self.root, "ca.crt")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", ca_key, "-out", ca_crt, "-subj", "/CN=herald scale bench CA", "-days", "30"],
                       check=True, capture_output=True)
        began = time.time()
        subprocess.run([sys.executable, MAKE_CERTS, ca_crt, ca_key, self.pool, str(max(self.args.sizes)), "s"], check=True)
        for name in os.listdir(self.pool):
            stem, ext = name.rsplit(".", 1)  # s-K.crt
            os.rename(os.path.join(self.pool, name), os.path.join(self.pool, "%s.example.%s" % (stem, ext)))
        print("%d certificate pairs made in %.1f s" % (max(self.args.sizes), time.time() - began), flush=True)

    def catalogue(self, n):
        """Sites and certificates up to N (the sizes are measured in increasing order, so each
        adds to the last): a vassal file per site in each topology's catalogue, and a hard link
        to each pair in the one certificate directory both edges read."""
        assert n >= self.sites_written
        for k in range(self.sites_written + 1, n + 1):
            name = site(k)
            for t in TOPOLOGIES:
                with open(os.path.join(self.dirs[t]["sites"], name + ".ini"), "w") as f:
                    f.write(self.dirs[t]["vassal"])
            for ext in ("crt", "key"):
                os.link(os.path.join(self.pool, "%s.%s" % (name, ext)), os.path.join(self.certs, "%s.%s" % (name, ext)))
        self.sites_written = n

    def start_emperors(self):
        for t in TOPOLOGIES:
            d = self.dirs[t]
            for i in range(BACKENDS):
                self.spawn("emperor-%s%d" % (t, i), ["uwsgi", "--emperor", d["vassals"][i], "--emperor-freq", "1",
                                                     "--emperor-stats", d["stats"][i], "--die-on-term"], cwd=self.root)

    def reset_apps(self, topology):
        """Back to the hot set's apps running, each on its backend's emperor, and nothing else:
        every turn begins the same whatever the last one started or evicted."""
        d = self.dirs[topology]
        stopped, started = [], []
        for i in range(BACKENDS):
            want = set(self.hot_at[i])
            have = {f[:-4] for f in os.listdir(d["vassals"][i]) if f.endswith(".ini")}
            for name in have - want:
                os.remove(os.path.join(d["vassals"][i], name + ".ini"))
                stopped.append(name)
            for name in want - have:
                tmp = os.path.join(d["vassals"][i], "." + name + ".tmp")
                shutil.copy(os.path.join(d["sites"], name + ".ini"), tmp)
                os.rename(tmp, os.path.join(d["vassals"][i], name + ".ini"))
                started.append(name)
            wake(d["stats"][i])
        sock = lambda name: os.path.join(d["sockets"], name + ".sock")
        wait_for("the stopped apps of %s to exit" % topology, lambda: not any(unix_up(sock(s)) for s in stopped), 120)
        wait_for("the hot apps of %s" % topology, lambda: all(unix_answers(sock(s), s, "uwsgi") for s in started)
                 and all(unix_up(sock(s)) for s in self.hot), 600)
        return len(stopped), len(started)

    def write_wrk_script(self):
        """wrk: each request for a hot site drawn from Zipf over the hot set (each wrk thread
        its own seed)."""
        cdf = zipf_cdf(self.args.hot, self.args.zipf)
        with open(self.wrk_script, "w") as f:
            f.write("local hosts = {%s}\n" % ", ".join('"%s"' % s for s in self.hot))
            f.write("local cdf = {%s}\n" % ", ".join("%.17g" % c for c in cdf))
            f.write("local threads = 0\n"
                    "function setup(thread)\n  threads = threads + 1\n  thread:set(\"seed\", threads)\nend\n"
                    "function init(args)\n  math.randomseed(1000 + seed)\nend\n"
                    "function request()\n  local u = math.random()\n  local lo, hi = 1, #cdf\n"
                    "  while lo < hi do\n    local mid = math.floor((lo + hi) / 2)\n"
                    "    if cdf[mid] < u then lo = mid + 1 else hi = mid end\n  end\n"
                    "  return wrk.format(\"GET\", \"/hello\", {[\"Host\"] = hosts[lo]})\nend\n")

    # ---- the two topologies ------------------------------------------------------------
    def start_herald(self, n, tag):
        d, ports = self.dirs["herald"], {}
        ports["edge"], ports["tls"], ports["edge_metrics"] = free_port(), free_port(), free_port()
        ports["backends"] = [free_port() for _ in range(BACKENDS)]
        ports["metrics"] = [free_port() for _ in range(BACKENDS)]
        procs = {"backends": []}
        env = dict(os.environ, RUST_LOG="warn")
        for i in range(BACKENDS):
            name = "herald-backend%d-%s" % (i, tag)
            # Production defaults but for the bench's paths, the cap, and no per-client start
            # limit: every request comes from the one edge, which is trusted to say who the
            # client is, as conf/backend.yaml trusts its edges.
            yaml = herald_server_yaml(self.root, name) + (
                "metrics:\n  listen: 127.0.0.1:%d\nbackend:\n  listen: ['127.0.0.1:%d']\n  sites_dir: %s\n  vassals_dir: %s\n"
                "  socket_path: %s/{host}.sock\n  max_running_apps: %d\n  max_starts_per_client: 0\n  trusted_proxies: [127.0.0.1/32]\n  emperor_stats: %s\n"
                "  buffering:\n    client_body_temp_path: %s\n    proxy_temp_path: %s\n  access_log:\n    path: %s/%s-access.log\n") % (
                    ports["metrics"][i], ports["backends"][i], d["sites"], d["vassals"][i], d["sockets"], self.cap, d["stats"][i],
                    self.tmp, self.tmp, self.logs, name)
            procs["backends"].append(self.spawn(name, [HERALD, "-c", self.config(name + ".yaml", yaml)], env=env))
        name = "herald-edge-" + tag
        yaml = herald_server_yaml(self.root, name) + (
            "metrics:\n  listen: 127.0.0.1:%d\nedge:\n  listen: ['127.0.0.1:%d']\n  tls:\n    listen: ['127.0.0.1:%d']\n"
            "    certs_dir: %s\n  hash: modulo\n  backends: [%s]\n  access_log:\n    path: %s/%s-access.log\n") % (
                ports["edge_metrics"], ports["edge"], ports["tls"], self.certs,
                ", ".join("'127.0.0.1:%d'" % p for p in ports["backends"]), self.logs, name)
        procs["edge"] = self.spawn(name, [HERALD, "-c", self.config(name + ".yaml", yaml)], env=env)
        return procs, ports

    def start_nginx(self, n, tag):
        d, ports = self.dirs["nginx"], {}
        ports["edge"], ports["tls"], ports["tls_lua"] = free_port(), free_port(), free_port()
        ports["backends"] = [free_port() for _ in range(BACKENDS)]
        ports["initializers"] = [free_port() for _ in range(BACKENDS)]
        procs = {"backends": [], "initializers": []}
        for i in range(BACKENDS):
            procs["initializers"].append(self.spawn("initializer%d-%s" % (i, tag), [
                sys.executable, os.path.join(REPO, "bench", "initializer.py"), str(ports["initializers"][i]),
                d["sites"], d["vassals"][i], d["sockets"]]))
            name = "backend%d-%s" % (i, tag)
            conf = nginx_main_conf(self.root, name) + nginx_backend_server(
                ports["backends"][i], "", "      include /etc/nginx/uwsgi_params;\n      uwsgi_pass unix:%s/$host.sock;\n"
                "      uwsgi_read_timeout 300s;\n" % d["sockets"], ports["initializers"][i]) + "}\n"
            procs["backends"].append(self.spawn("nginx-" + name, ["nginx", "-p", self.root, "-c", self.config("nginx-%s.conf" % name, conf)]))
        # The edge: the talk's balancer over the three backends (the same list order as
        # Herald's), TLS with each site's pair read from files at each handshake.
        upstreams = "".join("  upstream b%d { server 127.0.0.1:%d; keepalive 64; }\n" % (i, p) for i, p in enumerate(ports["backends"]))
        name = "edge-" + tag
        conf = nginx_main_conf(self.root, name) + (
            "  init_by_lua_block { %s backends = { %s } }\n%s"
            "  server {\n    listen 127.0.0.1:%d;\n    listen 127.0.0.1:%d ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n"
            "    ssl_certificate %s/$ssl_server_name.crt;\n    ssl_certificate_key %s/$ssl_server_name.key;\n"
            "    location / {\n%s    }\n  }\n}\n") % (
                LUA_HASH, ", ".join('"b%d"' % i for i in range(BACKENDS)), upstreams, ports["edge"], ports["tls"],
                self.certs, self.certs, LUA_EDGE_LOCATION)
        procs["edge"] = self.spawn("nginx-" + name, ["nginx", "-p", self.root, "-c", self.config("nginx-%s.conf" % name, conf)])
        # The other way nginx serves many certificates: ssl_certificate_by_lua reads a pair on its
        # first handshake and keeps it in a per-worker LRU cache (room for every site). Nginx
        # needs a pair in the server to start; the handshake replaces it.
        name = "edge-lua-" + tag
        first = os.path.join(self.certs, site(1))
        conf = nginx_main_conf(self.root, name) + (
            "  init_by_lua_block { certs = require(\"resty.lrucache\").new(@N@); certs_dir = \"@CERTS@\" }\n"
            "  server {\n    listen 127.0.0.1:@PORT@ ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n"
            "    ssl_certificate @FIRST@.crt;\n    ssl_certificate_key @FIRST@.key;\n"
            "    ssl_certificate_by_lua_block {\n"
            "      local ssl = require \"ngx.ssl\"\n"
            "      local name = ssl.server_name()\n"
            "      -- a DNS name only: it becomes a path\n"
            "      if not name or not name:match(\"^[%w.-]+$\") or name:find(\"..\", 1, true) then return ngx.exit(ngx.ERROR) end\n"
            "      local pair = certs:get(name)\n"
            "      if not pair then\n"
            "        local function read(path)\n"
            "          local f = io.open(path, \"rb\")\n          if not f then return nil end\n"
            "          local data = f:read(\"*a\")\n          f:close()\n          return data\n        end\n"
            "        local crt, key = read(certs_dir .. \"/\" .. name .. \".crt\"), read(certs_dir .. \"/\" .. name .. \".key\")\n"
            "        if not crt or not key then return ngx.exit(ngx.ERROR) end\n"
            "        local chain, pkey = ssl.parse_pem_cert(crt), ssl.parse_pem_priv_key(key)\n"
            "        if not chain or not pkey then return ngx.exit(ngx.ERROR) end\n"
            "        pair = { chain, pkey }\n        certs:set(name, pair)\n      end\n"
            "      ssl.clear_certs()\n"
            "      if not ssl.set_cert(pair[1]) or not ssl.set_priv_key(pair[2]) then return ngx.exit(ngx.ERROR) end\n"
            "    }\n    location / { return 200 \"ok\\n\"; }\n  }\n}\n").replace("@N@", str(n)).replace(
                "@CERTS@", self.certs).replace("@PORT@", str(ports["tls_lua"])).replace("@FIRST@", first)
        procs["edge_lua"] = self.spawn("nginx-" + name, ["nginx", "-p", self.root, "-c", self.config("nginx-%s.conf" % name, conf)])
        return procs, ports

    def config(self, name, text):
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    # ---- one turn: one topology, one N, one round ----------------------------------------
    def tiers(self, procs):
        """Each tier's processes now: the edge, the three backends together (nginx: masters and
        workers), and for nginx the Lua-certificate edge and the initializers."""
        out = {"edge": tree_pids(procs["edge"].p.pid),
               "backends": [pid for p in procs["backends"] for pid in tree_pids(p.p.pid)]}
        if "edge_lua" in procs:
            out["edge_lua"] = tree_pids(procs["edge_lua"].p.pid)
            out["initializers"] = [pid for p in procs["initializers"] for pid in tree_pids(p.p.pid)]
        return out

    def wait_serving(self, topology, procs, ports, n):
        """From each process's start, polled side by side: the edge to a handshake with the last
        site's own certificate; each backend to an app's answer for one of its hot sites."""
        last = site(n)
        with open(os.path.join(self.certs, last + ".crt")) as f:
            expected = ssl.PEM_cert_to_DER_cert(f.read())
        waits = {"start_edge_ms": (procs["edge"], lambda: served_der(ports["tls"], last) == expected)}
        if topology == "nginx":
            waits["start_edge_lua_ms"] = (procs["edge_lua"], lambda: served_der(ports["tls_lua"], last) == expected)
        for i, proc in enumerate(procs["backends"]):
            waits["start_backend%d_ms" % i] = (proc, lambda i=i: get(ports["backends"][i], self.hot_at[i][0], timeout=10)[0] == 200)
        with concurrent.futures.ThreadPoolExecutor(len(waits)) as pool:
            futures = {key: pool.submit(until, proc, ok) for key, (proc, ok) in waits.items()}
            out = {key: f.result() for key, f in futures.items()}
        out["start_backends_ms"] = max(out["start_backend%d_ms" % i] for i in range(BACKENDS))
        wait_for("the %s edge" % topology, lambda: tcp_up(ports["edge"]))
        return out

    def check(self, topology, procs, ports, n, rng):
        """What the numbers rely on: every edge serves each site's own certificate; every hot site
        is answered by its app, already running on the backend the edge picks (no start: both
        edges place sites as backend_of() does); Herald loaded all N pairs."""
        for name in [site(n), site(1)] + [site(rng.randint(1, n)) for _ in range(8)]:
            with open(os.path.join(self.certs, name + ".crt")) as f:
                expected = ssl.PEM_cert_to_DER_cert(f.read())
            for port in [ports["tls"]] + ([ports["tls_lua"]] if topology == "nginx" else []):
                assert served_der(port, name) == expected, (topology, port, name)
        for name in self.hot:
            status = get(ports["edge"], name)[0]
            assert status == 200, (topology, name, status)
        if topology == "herald":
            loaded = metrics(ports["edge_metrics"])["herald_tls_certificates_loaded"]
            assert loaded == n, "the Herald edge loaded %d of %d pairs" % (loaded, n)
            starts = sum(metric_sum(metrics(p), "herald_app_starts_total") for p in ports["metrics"])
            assert starts == 0, "hot sites were started: the edge's placement is not backend_of()'s"
        else:
            assert self.initializer_lines(procs, "") == 0, "hot sites reached nginx's initializers"

    def initializer_lines(self, procs, prefix):
        """Lines of this turn's initializer logs starting with `prefix` ("start ": apps enabled)."""
        count = 0
        for proc in procs["initializers"]:
            with open(proc.log) as f:
                count += sum(1 for line in f if line.startswith(prefix) and line.strip())
        return count

    def apps_enabled(self, topology):
        return sum(len([f for f in os.listdir(v) if f.endswith(".ini")]) for v in self.dirs[topology]["vassals"])

    def turn(self, topology, n, rnd, long_idle=0):
        """One topology started for one N, measured, stopped. `long_idle`: seconds of a longer
        idle window measured as well (from the same start), for work done less often than
        the ordinary window is long."""
        a = self.args
        tag = "n%d-r%d" % (n, rnd)
        stopped, started = self.reset_apps(topology)
        procs, ports = (self.start_herald if topology == "herald" else self.start_nginx)(n, tag)
        try:
            res = self.wait_serving(topology, procs, ports, n)
            res["reset_stopped"], res["reset_started"] = stopped, started
            self.check(topology, procs, ports, n, random.Random(rnd))
            tiers = self.tiers(procs)

            # Idle: nothing sent for a while, after the start has settled.
            time.sleep(2)
            before = {k: cpu_seconds(p) for k, p in tiers.items()}
            time.sleep(a.idle)
            for k, pids in tiers.items():
                res["idle_cpu_%s_pct" % k] = (cpu_seconds(pids) - before[k]) / a.idle * 100
                res["rss_%s_start_mib" % k] = rss_mib(pids)
            if long_idle > a.idle:
                time.sleep(long_idle - a.idle)
                for k, pids in tiers.items():
                    res["long_idle_cpu_%s_pct" % k] = (cpu_seconds(pids) - before[k]) / long_idle * 100

            # Requests: wrk on the hot sites, the paced cold tail beside it, plain HTTP.
            seed = n * 100 + rnd  # the same for both topologies of a round
            tail = Tail(ports["edge"], self.names[a.hot:n], self.tail_cdf[n], a.tail_rate, a.duration, seed)
            peak = {k: 0.0 for k in tiers}
            done = threading.Event()

            def sample():
                while not done.is_set():
                    for k, pids in tiers.items():
                        peak[k] = max(peak[k], rss_mib(pids))
                    done.wait(0.5)
            sampler = threading.Thread(target=sample)
            before = {k: cpu_seconds(p) for k, p in tiers.items()}
            sampler.start()
            tail.start()
            load = wrk(ports["edge"], a.duration, script=self.wrk_script)
            res.update(tail.stop())
            done.set()
            sampler.join()
            requests = load["requests"] + res["tail_sent"]
            for k, pids in tiers.items():
                res["cpu_%s_per_10k" % k] = (cpu_seconds(pids) - before[k]) / max(requests, 1) * 10_000
                res["rss_%s_peak_mib" % k] = peak[k]
            res.update(load)
            res["apps_enabled"] = self.apps_enabled(topology)
            if topology == "herald":
                m = [metrics(p) for p in ports["metrics"]]
                res["starts"] = sum(metric_sum(x, "herald_app_starts_total") for x in m)
                res["starts_ok"] = sum(x.get('herald_app_starts_total{result="ok"}', 0) for x in m)
                res["evictions"] = sum(metric_sum(x, "herald_app_evictions_total") for x in m)
                res["herald_apps_enabled"] = sum(metric_sum(x, "herald_apps_enabled") for x in m)
                res["herald_apps_running"] = sum(metric_sum(x, "herald_apps_running") for x in m)
            else:
                res["starts"] = res["starts_ok"] = self.initializer_lines(procs, "start ")
                res["evictions"] = 0  # the talk's initializer stops nothing

            # TLS handshakes, Zipf over all N names (a certificate needs no app).
            names = self.names[:n]
            kinds = [("edge", ports["tls"])] + ([("edge_lua", ports["tls_lua"])] if topology == "nginx" else [])
            for k, port in kinds:
                before = cpu_seconds(tiers[k])
                hs = handshakes(port, names, self.all_cdf[n], a.duration, seed)
                res["hs_%s_rate" % k] = hs["rate"]
                res["hs_%s_failed" % k] = hs["failed"]
                res["hs_%s_error_examples" % k] = hs["examples"]
                res["hs_%s_cpu_ms_per_1k" % k] = (cpu_seconds(tiers[k]) - before) / max(hs["handshakes"], 1) * 1e6
            for k, pids in tiers.items():
                res["rss_%s_after_mib" % k] = rss_mib(pids)
        finally:
            # (stop() goes from the last: the edges first)
            self.stop(procs.get("initializers", []) + procs["backends"] + [procs[k] for k in ("edge", "edge_lua") if k in procs])
            # Access logs are not measured; they would fill the disk over a full run.
            for name in os.listdir(self.logs):
                if name.endswith("-access.log"):
                    os.remove(os.path.join(self.logs, name))
        return res

    def run(self):
        a = self.args
        self.make_certificates()
        self.start_emperors()
        self.catalogue(min(a.sizes))
        began = time.time()
        for t in TOPOLOGIES:
            self.reset_apps(t)
        print("%d hot apps per topology running after %.0f s (per backend: %s; max_running_apps %d)" % (
            a.hot, time.time() - began, [len(h) for h in self.hot_at], self.cap), flush=True)
        rounds = {n: [] for n in a.sizes}
        for n in sorted(a.sizes):
            self.catalogue(n)
            for r in range(a.rounds):
                order = TOPOLOGIES if r % 2 == 0 else TOPOLOGIES[::-1]
                this = {}
                for t in order:
                    res = self.turn(t, n, r + 1, a.long_idle if (n, r) == (max(a.sizes), 0) else 0)
                    this[t] = res
                    print("N %5d round %d %-6s start %6.0f ms, RSS edge %5.1f -> %5.1f MiB, backends %5.1f -> %5.1f MiB,"
                          " idle CPU %.2f%% + %.2f%%, %6.0f req/s (errors %d), tail %d/%d ok p50 %.0f ms, starts %d, evictions %d,"
                          " %5.0f handshakes/s%s" % (
                              n, r + 1, t, res["start_edge_ms"], res["rss_edge_start_mib"], res["rss_edge_after_mib"],
                              res["rss_backends_start_mib"], res["rss_backends_after_mib"], res["idle_cpu_edge_pct"],
                              res["idle_cpu_backends_pct"], res["rps"], res["errors"], res["tail_ok"], res["tail_sent"],
                              res["tail_p50_ms"], res["starts"], res["evictions"], res["hs_edge_rate"],
                              " (Lua: %.0f)" % res["hs_edge_lua_rate"] if t == "nginx" else ""), flush=True)
                rounds[n].append(this)
        return {"rounds": {str(n): r for n, r in rounds.items()}, "hot": a.hot, "max_running_apps": self.cap,
                "hot_per_backend": [len(h) for h in self.hot_at]}


# ---- the report ------------------------------------------------------------------------
def summarize(raw):
    """Medians over the rounds: {n: {topology: {measure: value}}}."""
    med = {}
    for n, rounds in raw["rounds"].items():
        med[int(n)] = {}
        for t in TOPOLOGIES:
            # Some measures are taken in one round only (the long idle window): their median
            # is over the rounds that have them.
            keys = {k for r in rounds for k, v in r[t].items() if v is None or isinstance(v, (int, float))}
            med[int(n)][t] = {k: median([r[t][k] for r in rounds if k in r[t]]) for k in keys}
    return med


def fmt(v, digits=0):
    return "-" if v is None or v != v else ("%%.%df" % digits) % v


def ratio(h, n):
    return "-" if not n or n != n or h != h else "%.2f" % (h / n)


# (label, measure, digits): the rows of each N's table, Herald beside nginx.
ROWS = [
    ("edge RSS after start, MiB", "rss_edge_start_mib", 1),
    ("edge RSS after the traffic, MiB", "rss_edge_after_mib", 1),
    ("backends' RSS after start, MiB (3 together)", "rss_backends_start_mib", 1),
    ("backends' RSS after the traffic, MiB", "rss_backends_after_mib", 1),
    ("edge idle CPU, % of a core", "idle_cpu_edge_pct", 2),
    ("backends' idle CPU, % of a core (3 together)", "idle_cpu_backends_pct", 2),
    ("edge: start to a handshake for the last site, ms", "start_edge_ms", 0),
    ("backends: start to an app's answer, ms (slowest of 3)", "start_backends_ms", 0),
    ("requests/s through the edge (hot Zipf + cold tail)", "rps", 0),
    ("p99 ms (wrk, hot sites)", "p99_ms", 2),
    ("CPU s / 10k requests, edge", "cpu_edge_per_10k", 3),
    ("CPU s / 10k requests, backends", "cpu_backends_per_10k", 3),
    ("TLS handshakes/s, Zipf over all N names", "hs_edge_rate", 0),
    ("edge CPU ms / 1,000 handshakes", "hs_edge_cpu_ms_per_1k", 0),
    ("cold tail: answered 200 of sent", None, 0),
    ("cold tail: p50 ms", "tail_p50_ms", 0),
    ("app starts (Herald: herald_app_starts_total; nginx: initializer)", "starts", 0),
    ("evictions (herald_app_evictions_total)", "evictions", 0),
    ("apps enabled at the end of the requests (vassal files)", "apps_enabled", 0),
]

# (label, measure, digits, unit, per): how each cost grows with N, per site.
GROWTH = [
    ("edge RSS after start, MiB", "rss_edge_start_mib", 1, "KiB per site", lambda d: d * 1024),
    ("edge RSS after the traffic, MiB", "rss_edge_after_mib", 1, "KiB per site", lambda d: d * 1024),
    ("backends' RSS after start, MiB", "rss_backends_start_mib", 1, "KiB per site", lambda d: d * 1024),
    ("backends' RSS after the traffic, MiB", "rss_backends_after_mib", 1, "KiB per site", lambda d: d * 1024),
    ("edge idle CPU, % of a core", "idle_cpu_edge_pct", 2, "% of a core per 1,000 sites", lambda d: d * 1000),
    ("backends' idle CPU, % of a core", "idle_cpu_backends_pct", 2, "% of a core per 1,000 sites", lambda d: d * 1000),
    ("edge start to serving, ms", "start_edge_ms", 0, "ms per 1,000 sites", lambda d: d * 1000),
    ("backends' start to serving, ms", "start_backends_ms", 0, "ms per 1,000 sites", lambda d: d * 1000),
    ("edge CPU ms / 1,000 handshakes", "hs_edge_cpu_ms_per_1k", 0, "ms per 1,000 handshakes per 1,000 sites", lambda d: d * 1000),
]


def errors_seen(m):
    seen = ["%s %s" % (what, fmt(m[k])) for what, k in (
        ("wrk errors", "errors"), ("tail errors", "tail_errors"), ("tail requests not sent (too many in flight)", "tail_skipped"),
        ("failed handshakes", "hs_edge_failed"), ("failed handshakes (Lua)", "hs_edge_lua_failed")) if m.get(k)]
    return ", ".join(seen) or "none"


def versions():
    v = bench.versions()
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    v["commit"] = head + (" with uncommitted changes in src/" if dirty else "")
    return v


def report(raw, med, args):
    v = raw["versions"]
    sizes = sorted(med)
    hot, cap = raw["hot"], raw["max_running_apps"]
    share = lambda n: sum(k ** -args.zipf for k in range(1, hot + 1)) / sum(k ** -args.zipf for k in range(1, n + 1))
    span = lambda f: f(sizes[0]) if len(sizes) == 1 else "%s (N = {:,}) to %s (N = {:,})".format(sizes[0], sizes[-1]) % (f(sizes[0]), f(sizes[-1]))
    lines = [bench.SCALE_BEGIN, "## At scale: %s sites (`bench/run --scale%s`)" % (
                 " to ".join("{:,}".format(n) for n in sorted({sizes[0], sizes[-1]})), " --quick" if args.quick else ""), "",
             "Produced by `bench/scale.py` on %s (%d round%s per size, both topologies alternately in each, medians;"
             " %d s idle, %d s of requests and %d s of handshakes per measurement; wall time %.0f min). Machine: %s, %s cores,"
             " Linux %s; load average %.2f before and %.2f after the run. %s (commit %s); %s; uWSGI %s; %s; Python's ssl on %s." % (
                 raw["date"], args.rounds, "s" if args.rounds > 1 else "", args.idle, args.duration, args.duration,
                 raw["wall_s"] / 60, v["cpu"], v["cores"], v["kernel"], raw["load"][0], raw["load"][1], v["herald"], v["commit"],
                 v["nginx"], v["uwsgi"], v["wrk"], ssl.OPENSSL_VERSION), "",
             "**What runs.** Each topology is an edge and 3 backends on this one machine (loopback), each backend with a uWSGI",
             "emperor of its own (`--emperor-freq 1`), every site the demo app (`demo/app.py`, the demo's vassal template: the",
             "uwsgi protocol, one process). Herald: 4 processes (`threads: 1` each, as in the main benchmark), as 4 machines",
             "would run them: the edge (`hash: modulo`, `edge.tls.certs_dir` with the N pairs) and 3 backends, each with",
             "`max_running_apps: %d` (its share of the %d hot sites is %s; the rest is room for the tail), `max_starts_per_client: 0`," % (
                 cap, hot, "/".join(str(x) for x in raw["hot_per_backend"])),
             "`emperor_stats`, and otherwise the defaults (`idle_timeout: 15m`, `max_starts: 8`). nginx: the talk's setup as",
             "`bench/bench.py` builds it, with 3 backends: the nginx + Lua edge (CPython 2's hash modulo 3, the same placement",
             "as Herald's), TLS with `ssl_certificate .../$ssl_server_name.crt` (read from the files at each handshake), and",
             "3 nginx backends (`uwsgi_pass`, 502 -> an initializer of their own, `bench/initializer.py`). nginx has no cap on",
             "running apps and the initializer stops none, idle or not; a second nginx edge loads the pairs with",
             "`ssl_certificate_by_lua` into a per-worker LRU cache with room for all N (the other way to serve many",
             "certificates from nginx; it is measured for handshakes only, and its RSS is its own row). All N pairs are",
             "P-256 certificates made by `tests/make_certs.py`, one per site, `<site>.crt` + `<site>.key` in one directory",
             "both edges read.", "",
             "**Traffic.** Sites are ranked by popularity, Zipf with exponent %.1f. The %d most popular are the hot set:"
             " their apps run" % (args.zipf, hot),
             "from the start (in each topology's own emperors), and wrk (2 threads, 32 connections, plain HTTP through the edge)",
             "asks them, each request's Host drawn from the Zipf over the hot set. The rest is the cold tail: %.0f requests a" % args.tail_rate,
             "second (a connection each) for sites drawn from the Zipf over ranks %d to N, most of which have no app running." % (hot + 1),
             "A pure Zipf over all N would send %s of the requests to the tail, thousands of cold starts" % span(
                 lambda n: "%.0f%%" % (100 * (1 - share(n)))),
             "a second, which would measure uWSGI spawning Python rather than either proxy: the tail is paced instead, the",
             "same sites in the same order for both topologies of a round. Requests/s counts both streams. Before each turn",
             "the apps are put back to the hot set (tail apps stopped, evicted hot apps started again). TLS handshakes: %d" % HANDSHAKE_CLIENTS,
             "Python clients, full handshakes (no resumption), each name drawn from the Zipf over all N sites, the connection",
             "closed after the handshake. Idle CPU: %d s with nothing sent, 2 s after the start. Start to serving: from the" % args.idle,
             "process's start to a handshake with the last site's certificate (the edge), to an app's answer (backends).", "",
             "**Noise.** The machine is shared (other test suites run on it at times) and has 2 cores for both proxies, their",
             "apps and the clients: compare Herald and nginx within a table (measured side by side, medians), and rates",
             "with caution. The handshake clients need about as much CPU as the server, so handshakes/s is a client-bound",
             "number; the edge's CPU per handshake is the server's own cost.", ""]
    for n in sizes:
        h, g = med[n]["herald"], med[n]["nginx"]
        lines += ["### {:,} sites, {:,} certificates".format(n, n), "",
                  "| measure | Herald | nginx | Herald / nginx |", "|---|---|---|---|"]
        for label, key, digits in ROWS:
            if key is None:
                lines.append("| %s | %s of %s | %s of %s | - |" % (label, fmt(h["tail_ok"]), fmt(h["tail_sent"]), fmt(g["tail_ok"]), fmt(g["tail_sent"])))
                continue
            lines.append("| %s | %s | %s | %s |" % (label, fmt(h[key], digits), fmt(g[key], digits), ratio(h[key], g[key])))
        lines += ["| nginx `ssl_certificate_by_lua` (cached): TLS handshakes/s | %s | %s | %s |" % (
                      fmt(h["hs_edge_rate"]), fmt(g["hs_edge_lua_rate"]), ratio(h["hs_edge_rate"], g["hs_edge_lua_rate"])),
                  "| nginx `ssl_certificate_by_lua`: edge CPU ms / 1,000 handshakes | %s | %s | %s |" % (
                      fmt(h["hs_edge_cpu_ms_per_1k"]), fmt(g["hs_edge_lua_cpu_ms_per_1k"]),
                      ratio(h["hs_edge_cpu_ms_per_1k"], g["hs_edge_lua_cpu_ms_per_1k"])),
                  "| nginx `ssl_certificate_by_lua`: its edge's RSS after start / after the handshakes, MiB | - | %s / %s | - |" % (
                      fmt(g["rss_edge_lua_start_mib"], 1), fmt(g["rss_edge_lua_after_mib"], 1)),
                  "| nginx initializers (3 Python processes): RSS after the traffic, MiB; idle CPU, %% of a core | - | %s; %s | - |" % (
                      fmt(g["rss_initializers_after_mib"], 1), fmt(g["idle_cpu_initializers_pct"], 2)), ""]
        errors = "; ".join("%s: %s" % (t, errors_seen(med[n][t])) for t in TOPOLOGIES)
        lines += ["Errors (medians): %s. Herald's gauges at the end of the requests: herald_apps_enabled %s, herald_apps_running %s"
                  " (the emperor's count at the last idle sweep). Hot apps started again before a turn (evicted in the last one):"
                  " Herald %s, nginx %s." % (errors, fmt(h["herald_apps_enabled"]), fmt(h["herald_apps_running"]),
                                             fmt(h["reset_started"]), fmt(g["reset_started"])), ""]
    faster = {n: "`ssl_certificate_by_lua`" if med[n]["nginx"]["hs_edge_lua_rate"] > med[n]["nginx"]["hs_edge_rate"]
              else "`$ssl_server_name`" for n in sizes}
    lines += ["nginx's faster way to serve the N certificates (handshakes/s): %s." % ", ".join(
        "{:,}: {}".format(n, faster[n]) for n in sizes), ""]
    longest = [(t, r[t]) for r in raw["rounds"][str(sizes[-1])] for t in TOPOLOGIES if "long_idle_cpu_edge_pct" in r[t]]
    if longest:
        lines += ["Idle CPU over a longer window, %d s (once per topology, N = {:,}; it covers work done once a minute or so): %s." .format(
            sizes[-1]) % (args.long_idle, "; ".join("%s edge %.2f%%, backends %.2f%% of a core" % (
                t, m["long_idle_cpu_edge_pct"], m["long_idle_cpu_backends_pct"]) for t, m in longest)), ""]
    lines += ["### How each cost grows with N", ""]
    if len(sizes) < 2:
        lines += ["One size only (a quick run): nothing to compare.", ""]
    else:
        lo, hi = sizes[0], sizes[-1]
        head = " | ".join("{:,}".format(n) for n in sizes)
        lines += ["Per site: (value at {:,} - value at {:,}) / {:,}. A cost that does not depend on N shows as noise around 0.".format(hi, lo, hi - lo), "",
                  "| cost | proxy | %s | growth |" % head, "|---|---|%s---|" % ("---|" * len(sizes))]
        for label, key, digits, unit, per in GROWTH:
            for t in TOPOLOGIES:
                values = [med[n][t][key] for n in sizes]
                lines.append("| %s | %s | %s | %s %s |" % (label, t, " | ".join(fmt(x, digits) for x in values),
                                                           fmt(per((values[-1] - values[0]) / (hi - lo)), 3), unit))
        for label, key in (("requests/s", "rps"), ("TLS handshakes/s", "hs_edge_rate")):
            for t in TOPOLOGIES:
                values = [med[n][t][key] for n in sizes]
                lines.append("| %s | %s | %s | %+.0f%% from {:,} to {:,} |".format(lo, hi) % (
                    label, t, " | ".join(fmt(x) for x in values), (values[-1] / values[0] - 1) * 100))
        values = [med[n]["nginx"]["rss_edge_lua_after_mib"] for n in sizes]
        lines.append("| edge RSS after the handshakes, MiB, `ssl_certificate_by_lua` | nginx | %s | %s KiB per site |" % (
            " | ".join(fmt(x, 1) for x in values), fmt((values[-1] - values[0]) * 1024 / (hi - lo), 3)))
        lines.append("")
    lines += ["<details><summary>Raw numbers (every round)</summary>", "", "```json", json.dumps(raw, indent=1), "```", "", "</details>",
              bench.SCALE_END]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", action="store_true", help=argparse.SUPPRESS)  # bench/run passes it on
    parser.add_argument("--sizes", default=",".join(str(n) for n in SIZES), help="numbers of sites, e.g. 1000,5000,25000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of requests, and of handshakes, per measurement")
    parser.add_argument("--idle", type=int, default=12, help="seconds of the idle CPU window")
    parser.add_argument("--long-idle", type=int, default=65,
                        help="seconds of one longer idle window per topology, at the largest N (0: none)")
    parser.add_argument("--hot", type=int, default=200, help="hot sites, their apps running")
    parser.add_argument("--headroom", type=int, default=5, help="max_running_apps above a backend's share of the hot set")
    parser.add_argument("--tail-rate", type=float, default=2.0, help="cold tail requests per second")
    parser.add_argument("--zipf", type=float, default=1.0, help="the Zipf exponent of site popularity")
    parser.add_argument("--quick", action="store_true", help="1,000 sites, 30 hot, one short round: checks the harness")
    parser.add_argument("--output", default=os.path.join(REPO, "BENCHMARKS.md"), help="the report whose scale block is replaced")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (configs, logs)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.rounds, args.duration, args.idle, args.hot, args.long_idle = "1000", 1, 5, 5, 30, 0
    args.sizes = sorted({int(n) for n in args.sizes.split(",")})
    if args.hot >= args.sizes[0]:
        parser.error("--hot must be below the smallest size")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        parser.error("--output %s: no such directory (checked now rather than after the run)" % args.output)
    # A SIGTERM (a timeout, Ctrl-C's cousin) still stops every process started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("scale: terminated"))
    root = tempfile.mkdtemp(prefix="herald-scale.")
    began, load = time.time(), os.getloadavg()[0]
    run = ScaleBench(root, args)
    try:
        raw = run.run()
    finally:
        run.stop_all()
    raw.update({"date": time.strftime("%Y-%m-%d"), "wall_s": time.time() - began, "load": [load, os.getloadavg()[0]],
                "versions": versions(), "args": {k: v for k, v in vars(args).items() if k not in ("output", "keep", "scale")}})
    bench.save_raw(raw, "herald-scale")
    med = summarize(raw)
    block = report(raw, med, args)
    previous = open(args.output).read() if os.path.exists(args.output) else ""
    with open(args.output, "w") as f:
        f.write(bench.with_block(previous, block) if previous else block + "\n")
    print(block.split("<details>")[0])
    if args.keep:
        print("files and logs kept in", root)
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
