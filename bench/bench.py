#!/usr/bin/env python3
"""Herald (edge + backend) against nginx + Lua (edge) and nginx (backend, 502 -> initializer),
the setup of the PythonAnywhere talk, on one machine, sharing one uWSGI emperor and its apps.
The apps speak the uwsgi protocol (`socket =`, nginx's `uwsgi_pass`) or HTTP (`http-socket =`,
nginx's `proxy_pass`): one set of warm sites each. A scenario puts slow readers of a large
page on a one-worker app and measures a fast client of the same site; another asks for a site's
static files (4 KiB and 10 MiB), which both backends serve from a directory without the app;
and HTTPS at the edge (TLS 1.3, ECDSA P-256): a new connection per request, keep-alive, and
HTTP/2.

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

import wire  # beside this file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERALD = os.path.join(REPO, "target", "release", "herald")
APP = os.path.join(REPO, "demo", "app.py")
GATEWAY_APP = os.path.join(REPO, "tests", "apps", "gateway_app.py")  # /big?n=BYTES
WARM_SITES = 200  # of each protocol: w0..w199 (uwsgi) and hw0..hw199 (http-socket)
COLD_SITES = 10
HTTPS_SCENARIOS = {"https-close": "a new TLS connection per request (HTTP/1.1)",
                   "https-keepalive": "HTTP/1.1 over kept-alive TLS connections",
                   "https-h2": "HTTP/2 (h2load: 8 connections, 4 streams each)"}
STATIC_SITE = "st.bench"  # its /static/ mapped to a directory; its app is never started
STATIC_FILES = {"static-4k": ("/static/4k.bin", 4 << 10), "static-10m": ("/static/10m.bin", 10 << 20)}
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


def vassal_template(sockets):
    """The demo's vassal template with the apps' socket directory and user filled in; @APP@
    is left for vassal_text. The apps run as the bench's own user, as Herald and nginx do here
    (by name: uWSGI takes `gid = 0` for no group)."""
    import grp
    import pwd
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    with open(os.path.join(REPO, "demo", "vassal.ini.template")) as f:
        return (f.read().replace("@SOCKET_DIR@", sockets)
                .replace("@UID@", user).replace("@HERALD_GID@", group).replace("@GID@", group))


def vassal_text(template, socket_line=None, app=APP):
    """A vassal from vassal_template(): the uwsgi protocol on the site's unix socket, or the same
    with its one socket line replaced, e.g. by an http-socket. Fails loudly if the template no
    longer has exactly one socket line, rather than measuring something else."""
    text = template.replace("@APP@", app)
    if socket_line is None:
        return text
    text, found = re.subn(r"(?m)^(?:socket|uwsgi-socket|http-socket|http11-socket)\s*=.*$", socket_line, text)
    assert found == 1, "demo/vassal.ini.template: expected one socket line, found %d" % found
    return text


def herald_server_yaml(root, name):
    """The `server:` section of a Herald process of the bench, its runtime files in `root`. One
    thread per service: on this 2-core machine, measured faster than 2 (fewer cross-thread
    wake-ups next to wrk, nginx and the apps)."""
    return "server:\n  threads: 1\n  pid_file: %s/%s.pid\n  upgrade_sock: %s/%s.sock\n  grace_period_seconds: 1\n" % (
        root, name, root, name)


def nginx_main_conf(root, name):
    """The top of an nginx configuration of the bench, up to inside `http {`: workers as this
    user (nginx's default, nobody, could not open the apps' sockets, and every request would take
    the 502 path to the initializer), the Lua module, logs and temp files in `root`."""
    import pwd
    user = pwd.getpwuid(os.getuid()).pw_name
    logs = os.path.join(root, "logs")
    return ("user " + user + ";\nworker_processes auto;\ndaemon off;\nerror_log %s/nginx-%s-error.log warn;\npid %s/nginx-%s.pid;\n"
            "load_module /usr/lib/nginx/modules/ndk_http_module.so;\nload_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n"
            "events { worker_connections 4096; }\nhttp {\n  access_log %s/nginx-%s-access.log combined;\n"
            "  client_body_temp_path %s/tmp-%s;\n  proxy_temp_path %s/ptmp-%s;\n  uwsgi_temp_path %s/utmp-%s;\n") % (
                logs, name, root, name, logs, name, root, name, root, name, root, name)


# The talk's balancer in an nginx location: the site's backend, by name from the Lua table
# `backends` (filled by init_by_lua_block after LUA_HASH), CPython 2's hash floor-modulo its length...
LUA_PICK_BACKEND = ("      set_by_lua_block $backend {\n        local ffi = require \"ffi\"\n        local h = py2hash(ngx.var.host)\n"
                    "        local n = ffi.new(\"int64_t\", #backends)\n        local i = h % n\n        if i < 0 then i = i + n end\n"
                    "        return backends[tonumber(i) + 1]\n      }\n")
# ... and the rest of the talk's edge location: to that backend, kept alive, with the client's address.
LUA_EDGE_LOCATION = LUA_PICK_BACKEND + (
    "      proxy_pass http://$backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n"
    "      proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $remote_addr;\n"
    "      proxy_set_header X-Real-IP $remote_addr;\n      proxy_set_header X-Forwarded-Proto $scheme;\n"
    "      proxy_read_timeout 300s;\n")


def nginx_backend_server(port, name_line, to_app, init_port):
    """An nginx backend's server block: `to_app` passes the request to the site's app; a site
    that is not running yet fails to connect (502), which goes to the initializer on
    `init_port`."""
    return ("  server {\n    listen 127.0.0.1:%d;\n%s    keepalive_timeout 75s;\n    location / {\n%s"
            "      error_page 502 = @start;\n    }\n"
            "    location @start {\n      proxy_pass http://127.0.0.1:%d;\n      proxy_set_header Host $host;\n"
            "      proxy_read_timeout 300s;\n    }\n  }\n") % (port, name_line, to_app, init_port)


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


def unix_answers(path, host, protocol):
    """Whether the app on the unix socket answers a request with 200 (a request sent before the
    app is ready waits in the socket's queue, as a proxied one would); `protocol` is the one its
    vassal declares ("uwsgi" or "http")."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    try:
        s.connect(path)
        s.sendall(wire.request(protocol, host, "/hello"))
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


def cpu_ticks(pids):
    """(user, kernel) CPU ticks of `pids`, summed; a process already gone counts nothing."""
    user = system = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])
        except OSError:
            pass
    return user, system


def cpu_seconds(pids):
    return sum(cpu_ticks(pids)) / CLK_TCK


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


def wrk(port, duration, host=None, script=None, connections=32, close=False, path="/hello", scheme="http"):
    args = ["wrk", "-t2", "-c%d" % connections, "-d%ds" % duration, "--latency"]
    if host:
        args += ["-H", "Host: %s" % host]
    if close:
        args += ["-H", "Connection: close"]
    if script:
        args += ["-s", script]
    out = subprocess.run(args + ["%s://127.0.0.1:%d%s" % (scheme, port, path)], capture_output=True, text=True).stdout
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


def h2load(port, duration, host, connections=8, streams=4):
    """HTTP/2 over TLS: `connections` clients, each with up to `streams` requests in flight
    (32 in all, as wrk's 32 connections elsewhere: more would overflow the one-process app's
    listen queue, which nginx answers with its 502 path and Herald by waiting), for `duration`
    seconds after a second's warm-up. h2load gives no percentiles: p50 and p99 are left out
    (None), the mean is kept."""
    args = ["h2load", "-t2", "-c%d" % connections, "-m%d" % streams, "-D%d" % duration, "--warm-up-time=1",
            "-H", ":authority: %s" % host, "https://127.0.0.1:%d/hello" % port]
    out = subprocess.run(args, capture_output=True, text=True).stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    assert done, out
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    mean_ms = float(mean.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)]
    non2xx = re.search(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out)
    errors = int(done.group(4)) + int(done.group(5)) + (int(non2xx.group(1)) + int(non2xx.group(2)) if non2xx else 0)
    return {"rps": rps, "requests": int(done.group(3)), "errors": errors, "p50_ms": None, "p99_ms": None,
            "mean_ms": mean_ms}


def make_tls_pair(root):
    """One ECDSA P-256 certificate for `*.bench` (self-signed), and its key: both edges serve
    it as their default, so a client connecting to 127.0.0.1 (no SNI) gets the same
    handshake from either."""
    crt, key = os.path.join(root, "bench.crt"), os.path.join(root, "bench.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "30", "-subj", "/CN=bench", "-keyout", key, "-out", crt,
                    "-addext", "subjectAltName=DNS:*.bench"], check=True, capture_output=True)
    return crt, key


class SlowReaders:
    """`count` clients that each GET `target` (a large page) through `port` and read it at about
    `rate` bytes/s, as a phone on a poor network does, starting over if it ends, until stop() or
    `deadline`. A small receive buffer keeps the page from piling up in the reader's own kernel:
    what is not read yet waits in the proxies (their buffers, their sockets) or, unbuffered, in
    the app, whose only worker it then holds."""

    PIECE = 1024  # bytes per read; the pause after each keeps the pace

    def __init__(self, port, host, target, count, rate, deadline):
        self.port, self.host, self.target, self.rate, self.deadline = port, host, target, rate, deadline
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.answered = set()  # readers whose first answer has begun (status line read)
        self.errors = []
        self.received = 0
        self.began = None
        self.threads = [threading.Thread(target=self.reader, args=(i,), daemon=True) for i in range(count)]

    def start(self):
        self.began = time.time()
        for t in self.threads:
            t.start()

    def stop(self):
        """Every reader closes its connection (the proxies drop their side) and ends."""
        self.stopping.set()
        end = time.time() + 10
        for t in self.threads:
            t.join(timeout=max(0.0, end - time.time()))
        return {"answered": len(self.answered), "errors": len(self.errors), "error_examples": self.errors[:3],
                "kib_per_s_each": self.received / 1024 / max(time.time() - self.began, 0.001) / max(len(self.threads), 1)}

    def running(self):
        return not self.stopping.is_set() and time.time() < self.deadline

    def reader(self, i):
        while self.running():
            try:
                self.read_once(i)
            except (OSError, ValueError) as e:
                if self.running():
                    with self.lock:
                        self.errors.append("%s: %s" % (type(e).__name__, e))
                return  # one error per reader at most: no tight loop on a refusing server

    def read_once(self, i):
        s = socket.socket()
        # Before connect, so the window announced in the handshake is small already.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(1)  # recv wakes up at least every second to see stop()
        try:
            s.connect(("127.0.0.1", self.port))
            s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (self.target, self.host)).encode())
            began, got, head, expected = time.time(), 0, b"", None
            while self.running():
                try:
                    piece = s.recv(self.PIECE)
                except socket.timeout:
                    continue
                if not piece:
                    break
                got += len(piece)
                with self.lock:
                    self.received += len(piece)
                if expected is None:
                    head += piece
                    if b"\r\n\r\n" in head:
                        header = head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
                        status = header.split(" ", 2)[1]
                        if status != "200":
                            raise ValueError("status %s" % status)
                        with self.lock:
                            self.answered.add(i)
                        length = re.search(r"(?im)^content-length:\s*(\d+)", header)
                        expected = len(header) + 4 + int(length.group(1)) if length else -1
                # Pace by the total so far: about `rate` bytes/s whatever each recv returned.
                self.stopping.wait(max(0.0, began + got / self.rate - time.time()))
            else:
                return  # stopped or out of time: not an error
            if expected != -1 and got != expected:
                raise ValueError("connection closed after %d of %s bytes" % (got, expected))
        finally:
            s.close()


class Bench:
    def __init__(self, root, args):
        self.root = root
        self.args = args
        self.procs = []
        self.sites = os.path.join(root, "sites")
        self.vassals = os.path.join(root, "vassals")
        self.sockets = os.path.join(root, "sockets")
        # Herald's request bodies and answers buffered to disk (unnamed files; nginx's have
        # their own directories, made by nginx).
        self.herald_tmp = os.path.join(root, "herald-tmp")
        for d in (self.sites, self.vassals, self.sockets, self.herald_tmp, os.path.join(root, "logs")):
            os.makedirs(d)
        self.template = vassal_template(self.sockets)

    def spawn(self, name, args, **kw):
        proc = Proc(name, args, os.path.join(self.root, "logs", name + ".log"), **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self):
        for proc in reversed(self.procs):
            proc.stop()

    def vassal(self, socket_line=None, app=APP):
        return vassal_text(self.template, socket_line, app)

    def site(self, name, enabled, text=None):
        with open(os.path.join(self.sites, name + ".ini"), "w") as f:
            f.write(text or self.vassal())
        if enabled:
            shutil.copy(os.path.join(self.sites, name + ".ini"), os.path.join(self.vassals, name + ".ini"))

    # ---- setup -------------------------------------------------------------------------
    def start_apps(self):
        # The talk's setup: the template as it is, the uwsgi protocol.
        self.warm = ["w%d.bench" % i for i in range(WARM_SITES)]
        for name in self.warm:
            self.site(name, True)
        # Today's vassals: the same app on an http-socket (Herald reads the vassal; nginx's
        # backend proxies hw*.bench over HTTP).
        self.warm_http = ["hw%d.bench" % i for i in range(WARM_SITES)]
        http = self.vassal("http-socket = %s/%%n.sock" % self.sockets)
        for name in self.warm_http:
            self.site(name, True, http)
        # Slow readers: a one-worker app (the template's processes = 1) with a large page, one
        # site per topology so neither sees what the other left behind.
        self.slow_sites = {"herald": "slow-h.bench", "nginx": "slow-n.bench"}
        for name in self.slow_sites.values():
            self.site(name, True, self.vassal(app=GATEWAY_APP))
        for kind in ("h", "n", "e", "s", "x", "a"):
            for i in range(COLD_SITES):
                self.site("c%s%d.bench" % (kind, i), False)
        for i in range(20):
            self.site("m%d.bench" % i, False)
        self.site("burst-h.bench", False)
        self.site("burst-n.bench", False)
        # Static files: Herald's per-site settings map /static/ to this directory (nginx's
        # backend: `alias`); the site's app is never enabled, and must never be.
        self.static_dir = os.path.join(self.root, "static")
        os.makedirs(self.static_dir)
        for path, size in STATIC_FILES.values():
            with open(os.path.join(self.static_dir, os.path.basename(path)), "wb") as f:
                f.write(os.urandom(size))
        self.site(STATIC_SITE, False)
        with open(os.path.join(self.sites, STATIC_SITE + ".yaml"), "w") as f:
            f.write("static:\n  - url: /static/\n    dir: %s\n" % self.static_dir)
        # The floor: the same app straight on TCP, no proxy.
        self.floor_port = free_port()
        with open(os.path.join(self.vassals, "floor.ini"), "w") as f:
            f.write(self.vassal("http-socket = 127.0.0.1:%d" % self.floor_port))
        self.stats = os.path.join(self.root, "emperor-stats.sock")
        self.emperor = self.spawn("emperor", ["uwsgi", "--emperor", self.vassals, "--emperor-freq", "1",
                                              "--emperor-stats", self.stats, "--die-on-term"], cwd=self.root)
        warm = self.warm + self.warm_http + list(self.slow_sites.values())
        wait_for("the warm apps", lambda: all(unix_up(os.path.join(self.sockets, s + ".sock")) for s in warm), 600)
        wait_for("the floor app", lambda: tcp_up(self.floor_port))

    def start_herald(self):
        self.h_edge, self.h_backend, self.h_metrics = free_port(), free_port(), free_port()
        self.h_backend_nostats, self.h_tls = free_port(), free_port()
        self.tls_pair = make_tls_pair(self.root)
        certs = os.path.join(self.root, "certs")  # empty: every client gets the default pair
        os.makedirs(certs)
        logs = os.path.join(self.root, "logs")
        common = lambda name: herald_server_yaml(self.root, name)
        # Buffering as it comes (nginx's defaults: whole bodies and answers, 8 4k in memory,
        # then a file), only its temp files kept in the bench's directory. The edge is trusted
        # to say who the client is, as conf/backend.yaml trusts its edges.
        backend = ("backend:\n  listen: ['127.0.0.1:%%d']\n  sites_dir: %s\n  vassals_dir: %s\n  socket_path: %s/{host}.sock\n"
                   "  idle_timeout: 0\n  max_starts_per_client: 0\n  trusted_proxies: [127.0.0.1/32]\n  buffering:\n    client_body_temp_path: %s\n    proxy_temp_path: %s\n"
                   "  access_log:\n    path: %s/herald-%%s.log\n%%s") % (
                       self.sites, self.vassals, self.sockets, self.herald_tmp, self.herald_tmp, logs)
        configs = {
            "herald-edge": common("edge") + "edge:\n  listen: ['127.0.0.1:%d']\n  backends: ['127.0.0.1:%d']\n  access_log:\n    path: %s/herald-edge-access.log\n" % (self.h_edge, self.h_backend, logs)
            + "  tls:\n    listen: ['127.0.0.1:%d']\n    certs_dir: %s\n    default_cert: %s\n    default_key: %s\n" % (
                self.h_tls, certs, self.tls_pair[0], self.tls_pair[1]),
            "herald-backend": common("backend") + "metrics:\n  listen: 127.0.0.1:%d\n" % self.h_metrics
            + backend % (self.h_backend, "backend-access", "  emperor_stats: %s\n" % self.stats),
            "herald-backend-nostats": common("nostats") + backend % (self.h_backend_nostats, "nostats-access", ""),
        }
        self.herald = {}
        for name, yaml in configs.items():
            path = os.path.join(self.root, name + ".yaml")
            with open(path, "w") as f:
                f.write(yaml)
            self.herald[name] = self.spawn(name, [HERALD, "-c", path], env=dict(os.environ, RUST_LOG="warn"))
        for port in (self.h_edge, self.h_backend, self.h_backend_nostats, self.h_tls):
            wait_for("herald on %d" % port, lambda: tcp_up(port))

    def start_nginx(self):
        self.n_edge, self.n_backend, self.init_port, self.n_tls = free_port(), free_port(), free_port(), free_port()
        logs = os.path.join(self.root, "logs")
        self.init = self.spawn("initializer", [sys.executable, os.path.join(REPO, "bench", "initializer.py"),
                                               str(self.init_port), self.sites, self.vassals, self.sockets])
        wait_for("the initializer", lambda: tcp_up(self.init_port))
        edge = nginx_main_conf(self.root, "edge")
        edge += ("  init_by_lua_block { %s backends = { \"b0\" } }\n"
                 "  upstream b0 { server 127.0.0.1:%d; keepalive 64; }\n"
                 "  server {\n    listen 127.0.0.1:%d;\n    location / {\n%s    }\n  }\n"
                 # HTTPS: the same location. nginx ends a connection after keepalive_requests
                 # (1,000) requests, which h2load does not survive (it does not reconnect, and
                 # would measure nothing after its first second): raised here, as Herald sets
                 # no such limit.
                 "  server {\n    listen 127.0.0.1:%d ssl http2;\n    keepalive_requests 1000000;\n"
                 "    ssl_certificate %s;\n    ssl_certificate_key %s;\n    ssl_protocols TLSv1.2 TLSv1.3;\n"
                 "    location / {\n%s    }\n  }\n}\n") % (
                     LUA_HASH, self.n_backend, self.n_edge, LUA_EDGE_LOCATION, self.n_tls, self.tls_pair[0], self.tls_pair[1],
                     LUA_EDGE_LOCATION)
        # The backend: a site that is not running yet fails to connect (502), which goes to the
        # initializer. Two servers on one port: the apps on the uwsgi protocol (the default
        # server, with Debian's uwsgi_params, as the talk's setup) and the hw*.bench ones on an
        # http-socket. Buffering is nginx's default (on) for both.
        server = lambda name, to_app: nginx_backend_server(self.n_backend, name, to_app, self.init_port)
        backend = nginx_main_conf(self.root, "backend")
        backend += server("", "      include /etc/nginx/uwsgi_params;\n      uwsgi_pass unix:%s/$host.sock;\n"
                              "      uwsgi_read_timeout 300s;\n" % self.sockets)
        backend += server("    server_name ~^hw\\d+\\.bench$;\n", "      proxy_pass http://unix:%s/$host.sock:;\n"
                          "      proxy_set_header Host $host;\n      proxy_read_timeout 300s;\n" % self.sockets)
        # The static site: nginx's defaults for files (sendfile off, as Debian's nginx.conf
        # is not included here; Herald reads and writes too).
        backend += ("  server {\n    listen 127.0.0.1:%d;\n    server_name %s;\n"
                    "    location /static/ { alias %s/; }\n  }\n") % (self.n_backend, STATIC_SITE, self.static_dir)
        backend += "}\n"
        self.nginx = {}
        for name, conf in (("nginx-edge", edge), ("nginx-backend", backend)):
            path = os.path.join(self.root, name + ".conf")
            with open(path, "w") as f:
                f.write(conf)
            self.nginx[name] = self.spawn(name, ["nginx", "-p", self.root, "-c", path])
        for port in (self.n_edge, self.n_backend, self.n_tls):
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
        """wrk on one warm site, or on the 200 of a protocol in rotation: "one", "many" (uwsgi),
        "one-http", "many-http" (http-socket)."""
        port = {"herald": self.h_edge, "nginx": self.n_edge, "floor": self.floor_port}[topology]
        kind, _, protocol = scenario.partition("-")
        if kind == "https":
            # One site over TLS at the edge (the same backend path as "one"): a full handshake
            # per request (browsers' new visitors), kept-alive connections, or HTTP/2.
            port = self.h_tls if topology == "herald" else self.n_tls
            if protocol == "h2":
                return self.measured(topology, duration, lambda: h2load(port, duration, "w0.bench"))
            return self.measured(topology, duration, lambda: wrk(port, duration, host="w0.bench", scheme="https",
                                                                 close=protocol == "close"))
        if kind == "static":
            # Fewer connections for the large file: 32 x 10 MiB in flight measures memory
            # bandwidth and socket buffers more than the proxies.
            path, size = STATIC_FILES[scenario]
            connections = 32 if size < 1 << 20 else 8
            return self.measured(topology, duration, lambda: wrk(port, duration, host=STATIC_SITE, path=path,
                                                                 connections=connections))
        prefix = "hw" if protocol == "http" else "w"
        # The app alone closes every connection (http-socket): measure it a request per
        # connection rather than count wrk's reconnections as errors.
        close = topology == "floor"
        if kind == "one":
            return self.measured(topology, duration, lambda: wrk(port, duration, host=prefix + "0.bench", close=close))
        return self.measured(topology, duration, lambda: wrk(port, duration, script=self.rotation(prefix), close=close))

    def measured(self, topology, duration, run):
        """run() (wrk for `duration` seconds) and, over it, the CPU seconds per 10,000 of its
        requests and the peak memory of each tier of the topology (none for the floor)."""
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
        result = run()
        sampler.join()
        per_10k = lambda seconds: seconds / max(result["requests"], 1) * 10_000
        cpu = {tier: cpu_seconds(tier_pids) - cpu_before[tier] for tier, tier_pids in tiers.items()}
        result["cpu_per_10k"] = per_10k(sum(cpu.values())) if pids else None
        for tier in ("edge", "backend"):
            result["cpu_%s_per_10k" % tier] = per_10k(cpu[tier]) if pids else None
            result["rss_%s_mib" % tier] = peak[tier] if pids else None
        result["rss_load_mib"] = peak["all"] if pids else None
        return result

    def slow_clients(self, topology, duration):
        """The fast client's view of a one-worker site while slow readers download a large page
        from it. With the answers buffered (Herald's backend; nginx's uwsgi_buffering), the app's
        worker writes each large page at once and is free again; without, the first slow reader
        would hold it for the whole download (8 MiB at 20 KiB/s: about 7 minutes)."""
        a = self.args
        port = self.h_edge if topology == "herald" else self.n_edge
        site = self.slow_sites[topology]
        readers = SlowReaders(port, site, "/big?n=%d" % a.slow_size, a.slow_readers, a.slow_rate,
                              deadline=time.time() + duration + 60)
        readers.start()
        # Measure once every slow reader's page is under way (the one worker makes them one
        # after another), so both topologies are measured in the same state; bounded, and a
        # topology whose worker stays held shows it in slow_answered and in wrk's numbers.
        began = time.time()
        while len(readers.answered) + len(readers.errors) < a.slow_readers and time.time() - began < 30:
            time.sleep(0.01)
        under_way_ms = (time.time() - began) * 1000
        result = self.measured(topology, duration, lambda: wrk(port, duration, host=site))
        slow = readers.stop()
        result.update({"slow_readers": a.slow_readers, "slow_answered": slow["answered"], "slow_errors": slow["errors"],
                       "slow_error_examples": slow["error_examples"], "slow_kib_per_s_each": slow["kib_per_s_each"],
                       "slow_under_way_ms": under_way_ms})
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
                    with open(os.path.join(self.sites, name + ".ini")) as f:
                        protocol = wire.vassal_protocol(f.read())
                    while not unix_answers(sock, name, protocol):
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

    def rotation(self, prefix):
        """A wrk script that sends each request to the next of the 200 sites prefix0..prefix199."""
        path = os.path.join(self.root, "rotate-%s.lua" % prefix)
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write("local i = 0\nrequest = function()\n  i = i %% %d + 1\n"
                        "  return wrk.format(\"GET\", \"/hello\", {[\"Host\"] = \"%s\" .. (i - 1) .. \".bench\"})\nend\n" % (WARM_SITES, prefix))
        return path

    def initializer_answered(self, sites):
        """How many requests for these sites nginx's backend sent to the initializer. A warm site
        must get none: its 502 fallback would hide a wrong uwsgi_pass/proxy_pass (the
        initializer speaks the right protocol) behind a slow path."""
        with open(os.path.join(self.root, "logs", "initializer.log")) as f:
            return sum(1 for line in f if line.startswith("proxy ") and line.split()[1] in sites)

    def run(self):
        self.start_apps()
        self.start_herald()
        self.start_nginx()
        # Touch every site through both, so no run pays for a first connection.
        warm = self.warm + self.warm_http + list(self.slow_sites.values())
        for s in warm:
            assert get(self.h_edge, s)[0] == 200 and get(self.n_edge, s)[0] == 200, s
        assert self.initializer_answered(set(warm)) == 0, "nginx's backend could not reach a warm app itself"
        for path, size in STATIC_FILES.values():
            for port in (self.h_edge, self.n_edge):
                status, body = get(port, STATIC_SITE, path)
                assert status == 200 and len(body) == size, (port, path, status, len(body))
        idle = {"%s/%s" % (topology, tier): rss_mib(pids) for topology in ("herald", "nginx")
                for tier, pids in self.tier_pids(topology).items()}
        rounds = []
        for r in range(self.args.rounds):
            order = ["herald", "nginx"] if r % 2 == 0 else ["nginx", "herald"]
            this = {}
            # The floor is one app on TCP http-socket: measured once per kind, with the uwsgi rows.
            for scenario in ("one", "one-http", "many", "many-http"):
                for topology in order + (["floor"] if "-" not in scenario else []):
                    res = self.load(topology, scenario, self.args.duration)
                    this["%s/%s" % (topology, scenario)] = res
                    print("round %d %-6s %-9s %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d" % (
                        r + 1, topology, scenario, res["rps"], res["p50_ms"], res["p99_ms"], res["errors"]), flush=True)
            for topology in order:
                res = self.slow_clients(topology, self.args.duration)
                this["%s/slow" % topology] = res
                print("round %d %-6s %-9s %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d; slow readers: %d of %d answered,"
                      " %d errors, %.1f KiB/s each" % (
                          r + 1, topology, "slow", res["rps"], res["p50_ms"], res["p99_ms"], res["errors"], res["slow_answered"],
                          res["slow_readers"], res["slow_errors"], res["slow_kib_per_s_each"]), flush=True)
            for scenario in list(STATIC_FILES) + list(HTTPS_SCENARIOS):
                for topology in order:
                    res = self.load(topology, scenario, self.args.duration)
                    this["%s/%s" % (topology, scenario)] = res
                    print("round %d %-6s %-15s %9.0f req/s  p50 %7s ms  p99 %7s ms  errors %d" % (
                        r + 1, topology, scenario, res["rps"], "%.2f" % res["p50_ms"] if res["p50_ms"] is not None else "-",
                        "%.2f" % res["p99_ms"] if res["p99_ms"] is not None else "-", res["errors"]), flush=True)
            rounds.append(this)
        assert not os.path.exists(os.path.join(self.vassals, STATIC_SITE + ".ini")), "a static file started the app"
        fallbacks = self.initializer_answered(set(warm))
        cold = self.cold_starts()
        bursts = {t: self.burst(t) for t in ("herald", "nginx")}
        many = self.many_cold()
        return {"rounds": rounds, "idle_rss_mib": idle, "cold_ms": cold, "burst": bursts, "many_cold": many,
                "nginx_warm_requests_via_initializer": fallbacks}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def summarize(raw):
    """The median over the rounds of every number each measurement has."""
    med = {}
    for k, first in raw["rounds"][0].items():
        numbers = [m for m, v in first.items() if v is None or isinstance(v, (int, float))]
        med[k] = {m: median([r[k][m] for r in raw["rounds"]]) for m in numbers}
    return med


def chart_groups():
    """The chart's groups: (title, [(measurement, name, protocol, colour)])."""
    def warm(s):
        return [("herald/" + s, "herald", "uwsgi", "#2b7bb9"), ("nginx/" + s, "nginx", "uwsgi", "#d95f02"),
                ("herald/%s-http" % s, "herald", "http", "#8fbde0"), ("nginx/%s-http" % s, "nginx", "http", "#f4ad7a"),
                ("floor/" + s, "floor", "tcp http", "#999999")]
    return [("one site", warm("one")), ("%d sites in rotation" % WARM_SITES, warm("many")),
            ("with slow readers", [("herald/slow", "herald", "fast client", "#2b7bb9"),
                                   ("nginx/slow", "nginx", "fast client", "#d95f02")])]


def svg_chart(med, path):
    step, gap, height, top = 66, 40, 320, 40
    groups = chart_groups()
    group_width = lambda title, bars: max(len(bars) * step, 8 * len(title))  # room for the bold title
    width = 40 + sum(group_width(title, bars) + gap for title, bars in groups)
    rps_max = max(med[k]["rps"] for _, bars in groups for k, *_ in bars)
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (width, height),
             '<text x="10" y="20" font-size="14">Requests per second (median; higher is better) and p99 latency</text>']
    x = 40
    for title, bars in groups:
        parts.append('<text x="%d" y="%d" font-weight="bold">%s</text>' % (x, top, title))
        group_end = x + group_width(title, bars)
        for key, name, protocol, color in bars:
            v = med[key]
            h = (height - top - 90) * v["rps"] / rps_max
            y = height - 55 - h
            parts.append('<rect x="%d" y="%.1f" width="50" height="%.1f" fill="%s"/>' % (x, y, h, color))
            parts.append('<text x="%d" y="%.1f">%.0f</text>' % (x, y - 4, v["rps"]))
            parts.append('<text x="%d" y="%d">%s</text>' % (x, height - 40, name))
            parts.append('<text x="%d" y="%d">%s</text>' % (x, height - 26, protocol))
            parts.append('<text x="%d" y="%d" font-size="10">p99 %.1f ms</text>' % (x, height - 10, v["p99_ms"]))
            x += step
        x = group_end + gap
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


def slow_section(raw, med, args):
    """The slow readers' scenario: what it does, and the fast client's numbers beside the slow
    readers' (were they all served, at the pace asked, without errors)."""
    lines = ["## Slow readers (medians)", "",
             "%d clients each ask a one-worker app (`tests/apps/gateway_app.py`, the template's `processes = 1`, the" % args.slow_readers,
             "uwsgi protocol) for a %.0f MiB page (`/big?n=%d`) and read it at about %.0f KiB/s (a 4 KiB receive buffer," % (
                 args.slow_size / 2 ** 20, args.slow_size, args.slow_rate / 1024),
             "1 KiB reads paced by the total), while wrk (2 threads, 32 connections) asks the same site for a small page",
             "for %d s, from the moment every slow reader's answer has begun. Each topology has its own site with the same" % args.duration,
             "vassal (`slow-h.bench`, `slow-n.bench`). Buffered, the app's only worker writes each large page at once into",
             "the proxy (Herald's backend: memory, then an unnamed temp file; nginx: `uwsgi_buffering`, then the edge's",
             "`proxy_buffering`, their temp files) and is free again for the fast client. Unbuffered, the first slow reader",
             "would hold it for the %.0f minutes its page takes, and the fast client would get nothing. (On loopback the" % (
                 args.slow_size / args.slow_rate / 60),
             "kernel's socket buffers between client, edge and backend can hold several MiB of each page: a much smaller",
             "page would not tell buffering from none.)", "",
             "| proxy | fast client req/s | p50 ms | p99 ms | fast client errors | slow readers answered | slow reader errors"
             " | slow readers' pace, KiB/s each | all answers begun after ms | RSS under load MiB (edge + backend) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for b in ("herald", "nginx"):
        m = med["%s/slow" % b]
        lines.append("| %s | %.0f | %.2f | %.2f | %d | %.0f of %d | %d | %.1f | %.0f | %.0f (%.0f + %.0f) |" % (
            b, m["rps"], m["p50_ms"], m["p99_ms"], m["errors"], m["slow_answered"], args.slow_readers, m["slow_errors"],
            m["slow_kib_per_s_each"], m["slow_under_way_ms"], m["rss_load_mib"], m["rss_edge_mib"], m["rss_backend_mib"]))
    examples = sorted({e for r in raw["rounds"] for b in ("herald", "nginx") for e in r["%s/slow" % b]["slow_error_examples"]})
    if examples:
        lines += ["", "Slow reader errors seen: " + "; ".join("`%s`" % e for e in examples[:6]) + "."]
    return lines + [""]


def static_section(med):
    """Static files through both tiers: the 4 KiB and the 10 MiB file, side by side."""
    lines = ["## Static files (medians)", "",
             "`%s` maps `/static/` to a directory: Herald's backend serves it from the site's settings file" % STATIC_SITE,
             "(`static:`), nginx's with `alias`; both edges proxy as for any request (nginx's edge buffers the answer,",
             "Herald's streams it). The site's app is never started (checked). wrk, 2 threads, 32 connections for the",
             "4 KiB file and 8 for the 10 MiB one.", "",
             "| file | proxy | req/s | MiB/s | p50 ms | p99 ms | CPU s / 10k req (edge + backend) | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for scenario, (path, size) in STATIC_FILES.items():
        for b in ("herald", "nginx"):
            m = med["%s/%s" % (b, scenario)]
            lines.append("| %s | %s | %.0f | %.0f | %.2f | %.2f | %.3f (%.3f + %.3f) | %d |" % (
                path, b, m["rps"], m["rps"] * size / 2 ** 20, m["p50_ms"], m["p99_ms"], m["cpu_per_10k"],
                m["cpu_edge_per_10k"], m["cpu_backend_per_10k"], m["errors"]))
    lines += ["", "Ratios Herald / nginx:", "", "| file | throughput | p99 | CPU per request | backend CPU per request |",
              "|---|---|---|---|---|"]
    for scenario, (path, _) in STATIC_FILES.items():
        h, n = med["herald/" + scenario], med["nginx/" + scenario]
        lines.append("| %s | %.2f | %.2f | %.2f | %.2f |" % (path, h["rps"] / n["rps"], h["p99_ms"] / n["p99_ms"],
                                                          h["cpu_per_10k"] / n["cpu_per_10k"],
                                                          h["cpu_backend_per_10k"] / n["cpu_backend_per_10k"]))
    return lines + [""]


def https_section(med):
    """HTTPS at the edge, one warm site (`w0.bench`, the uwsgi protocol behind)."""
    lines = ["## HTTPS at the edge (medians)", "",
             "Both edges terminate TLS with the same self-signed ECDSA P-256 certificate (TLS 1.3 negotiated; Herald: rustls,",
             "nginx: OpenSSL) and pass the request to their backend as in the warm rows (`w0.bench`, the uwsgi protocol).",
             "wrk (2 threads, 32 connections) with `Connection: close` makes a full handshake per request; without it, the",
             "connections are kept alive. h2load (2 threads) runs HTTP/2; it reports no percentiles, so its mean is shown.", "",
             "| scenario | proxy | req/s | p50 ms | p99 ms | mean ms | CPU s / 10k req (edge + backend) | errors |",
             "|---|---|---|---|---|---|---|---|"]
    ms = lambda v: "%.2f" % v if v == v else "-"
    for scenario, label in HTTPS_SCENARIOS.items():
        for b in ("herald", "nginx"):
            m = med["%s/%s" % (b, scenario)]
            lines.append("| %s | %s | %.0f | %s | %s | %s | %.3f (%.3f + %.3f) | %d |" % (
                label, b, m["rps"], ms(m["p50_ms"]), ms(m["p99_ms"]), ms(m.get("mean_ms", float("nan"))),
                m["cpu_per_10k"], m["cpu_edge_per_10k"], m["cpu_backend_per_10k"], m["errors"]))
    lines += ["", "Ratios Herald / nginx:", "", "| scenario | throughput | p99 | CPU per request | edge CPU per request |",
              "|---|---|---|---|---|"]
    for scenario, label in HTTPS_SCENARIOS.items():
        h, n = med["herald/" + scenario], med["nginx/" + scenario]
        ratio = lambda m: "%.2f" % (h[m] / n[m]) if h[m] == h[m] and n[m] == n[m] and n[m] else "-"
        lines.append("| %s | %s | %s | %s | %s |" % (label, ratio("rps"), ratio("p99_ms"), ratio("cpu_per_10k"),
                                                     ratio("cpu_edge_per_10k")))
    return lines + [""]


def report(raw, med, args, chart="bench/results.svg"):
    ratio = lambda k, m: med["herald/%s" % k][m] / med["nginx/%s" % k][m]
    cold = {k: median(v) for k, v in raw["cold_ms"].items()}
    v = versions()
    lines = ["# Benchmarks", "",
             "Herald (edge + backend, two processes) against the talk's setup (nginx + Lua edge, nginx backend",
             "with a 502 fallback to an initializer service), over one uWSGI emperor and the same apps, on one",
             "machine, alternately in the same run: warm requests to apps on the uwsgi protocol and on an http-socket,",
             "a fast client next to slow readers, cold starts. Produced by `bench/run` (%d rounds of %d s per measurement)." % (args.rounds, args.duration), "",
             "Machine: %s, %s cores, Linux %s. %s; %s; uWSGI %s; %s." % (v["cpu"], v["cores"], v["kernel"], v["herald"], v["nginx"], v["uwsgi"], v["wrk"]), "",
             "## Warm requests (medians)", "",
             "Two sets of %d warm sites run the same app (`demo/app.py`, one process each). `w*.bench` use the demo's" % WARM_SITES,
             "vassal template as it is: the uwsgi protocol (`socket =`), which Herald's backend speaks by default and nginx's",
             "backend reaches with `uwsgi_pass` and Debian's `uwsgi_params`, as in the talk. `hw*.bench` say `http-socket =`",
             "instead: Herald's backend reads that in the vassal and speaks HTTP, nginx's backend `proxy_pass`es them. Both",
             "backends buffer as they come (whole request bodies, whole answers: nginx's defaults, which Herald's follow).",
             "wrk, 2 threads and 32 connections, asks one site (`w0`, `hw0`) or the %d of a set in rotation." % WARM_SITES, "",
             "| scenario | proxy | app protocol | req/s | p50 ms | p99 ms | CPU s / 10k req (edge + backend) | RSS under load MiB (edge + backend) | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    known = lambda x: x == x  # not NaN
    cpu = lambda m: "%.3f (%.3f + %.3f)" % (m["cpu_per_10k"], m["cpu_edge_per_10k"], m["cpu_backend_per_10k"]) if known(m["cpu_per_10k"]) else "-"
    rss = lambda m: "%.0f (%.0f + %.0f)" % (m["rss_load_mib"], m["rss_edge_mib"], m["rss_backend_mib"]) if known(m["rss_load_mib"]) else "-"
    for label, s in (("one site", "one"), ("%d sites" % WARM_SITES, "many")):
        for b, kind, protocol in (("herald", s, "uwsgi"), ("nginx", s, "uwsgi"), ("herald", s + "-http", "http-socket"),
                                  ("nginx", s + "-http", "http-socket"), ("floor", s, "http-socket on TCP")):
            m = med["%s/%s" % (b, kind)]
            lines.append("| %s | %s | %s | %.0f | %.2f | %.2f | %s | %s | %s |" % (
                label, b if b != "floor" else "none (the app alone)", protocol, m["rps"], m["p50_ms"], m["p99_ms"], cpu(m), rss(m),
                "%d" % m["errors"] if b != "floor" else "-"))
    lines += ["", "The floor is the same app on a TCP `http-socket`, one request per connection (uWSGI closes each",
              "connection without saying so, which wrk counts as read errors; they are not failures).",
              "Warm requests that nginx's backend failed to pass and sent to its initializer instead (must be 0; its 502",
              "fallback would otherwise hide a broken `uwsgi_pass` behind a slow path): %d." % raw["nginx_warm_requests_via_initializer"], "",
              "Ratios Herald / nginx (targets: throughput >= 1.2, p99 <= 0.8, CPU per request <= 1, edge memory under load <= 1):", "",
              "| scenario | throughput | p99 | CPU per request | edge memory under load | both tiers' memory under load |", "|---|---|---|---|---|---|"]
    for label, s in (("one site, uwsgi", "one"), ("one site, http-socket", "one-http"), ("%d sites, uwsgi" % WARM_SITES, "many"),
                     ("%d sites, http-socket" % WARM_SITES, "many-http")):
        lines.append("| %s | %.2f | %.2f | %.2f | %.2f | %.2f |" % (label, ratio(s, "rps"), ratio(s, "p99_ms"), ratio(s, "cpu_per_10k"),
                                                        ratio(s, "rss_edge_mib"), ratio(s, "rss_load_mib")))
    # CPU per request means little here: the proxies' work for the slow readers counts, only
    # the fast client's requests are counted.
    lines.append("| slow readers: the fast client | %.2f | %.2f | - | %.2f | %.2f |" % (
        ratio("slow", "rps"), ratio("slow", "p99_ms"), ratio("slow", "rss_edge_mib"), ratio("slow", "rss_load_mib")))
    idle = raw["idle_rss_mib"]
    lines += ["", "Idle RSS, edge + backend: Herald %.0f + %.0f MiB, nginx %.0f + %.0f MiB (nginx: master and workers)." % (
        idle["herald/edge"], idle["herald/backend"], idle["nginx/edge"], idle["nginx/backend"]), "",
              "![throughput and p99](%s)" % chart, ""]
    lines += slow_section(raw, med, args)
    lines += static_section(med)
    lines += https_section(med)
    lines += ["## Cold starts (median of %d sites, milliseconds to first byte)" % COLD_SITES, "",
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


# BENCHMARKS.md's section from bench/scale.py, between these markers: report() rewrites the rest.
SCALE_BEGIN, SCALE_END = "<!-- scale:begin -->", "<!-- scale:end -->"


def scale_block(text):
    """The scale section of a report, markers included; None when it has none."""
    begin = text.find(SCALE_BEGIN)
    end = text.find(SCALE_END, begin)
    return text[begin:end + len(SCALE_END)] if begin >= 0 and end >= 0 else None


def with_block(text, block):
    """`text` with its scale section replaced by `block`, or `block` added at its end."""
    begin = text.find(SCALE_BEGIN)
    end = text.find(SCALE_END, begin)
    if begin >= 0 and end >= 0:
        return text[:begin] + block + text[end + len(SCALE_END):]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def save_raw(raw, prefix):
    """A run's raw numbers in a temporary file, kept before anything else is made of them, so a
    report that fails loses no run."""
    path = os.path.join(tempfile.gettempdir(), "%s-raw-%d.json" % (prefix, os.getpid()))
    with open(path, "w") as f:
        json.dump(raw, f)
    print("raw numbers in", path, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per load measurement")
    parser.add_argument("--quick", action="store_true", help="one round of 3 s, to check the harness")
    parser.add_argument("--slow-readers", type=int, default=20, help="slow readers of the large page")
    parser.add_argument("--slow-size", type=int, default=8 << 20, help="bytes of the large page")
    parser.add_argument("--slow-rate", type=int, default=20 << 10, help="bytes/s each slow reader reads")
    parser.add_argument("--output", default=os.path.join(REPO, "BENCHMARKS.md"),
                        help="the report; its chart goes to bench/results.svg, or beside a report written elsewhere")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (configs, logs)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 3
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        parser.error("--output %s: no such directory (checked now rather than after the run)" % args.output)
    root = tempfile.mkdtemp(prefix="herald-bench.")
    bench = Bench(root, args)
    try:
        raw = bench.run()
    finally:
        bench.stop_all()
    save_raw(raw, "herald-bench")
    med = summarize(raw)
    # A report written elsewhere (a trial run) leaves the committed chart alone.
    output = os.path.abspath(args.output)
    chart = os.path.join(REPO, "bench", "results.svg") if output == os.path.join(REPO, "BENCHMARKS.md") \
        else os.path.splitext(output)[0] + ".svg"
    svg_chart(med, chart)
    text = report(raw, med, args, os.path.relpath(chart, os.path.dirname(output)))
    # bench/scale.py's section is its own run's: kept as it is.
    previous = open(args.output).read() if os.path.exists(args.output) else ""
    block = scale_block(previous)
    with open(args.output, "w") as f:
        f.write(with_block(text, block) if block else text)
    print(text.split("## Raw numbers")[0])
    if args.keep:
        print("files and logs kept in", root)
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
