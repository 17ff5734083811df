"""An operator's `ask` endpoint (edge.tls.acme.ask), for the demo and tests/acme.rs: may the
edge get a certificate for a name? A platform's would look the name up among its sites.

    python3 ask.py ALLOWED_FILE PORT_FILE

Listens on 127.0.0.1 (a port of its choosing, written to PORT_FILE once it is ready).
`GET /allowed?domain=NAME` answers 200 when NAME is a line of ALLOWED_FILE (read again for each
request, so a test can change it; a missing file allows nothing) and 404 otherwise; every such
request is counted per domain. `GET /counts` answers those counts as a JSON object.
"""
import json
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALLOWED_FILE = sys.argv[1]
COUNTS = {}
LOCK = threading.Lock()


def allowed(name):
    try:
        with open(ALLOWED_FILE) as f:
            return name in {line.strip() for line in f}
    except FileNotFoundError:
        return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/counts":
            with LOCK:
                self.answer(200, json.dumps(COUNTS))
            return
        query = urllib.parse.parse_qs(url.query)
        name = query.get("domain", [""])[0]
        with LOCK:
            COUNTS[name] = COUNTS.get(name, 0) + 1
        if allowed(name):
            self.answer(200, "yes\n")
        else:
            self.answer(404, "no\n")

    def answer(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        sys.stderr.write("ask: %s\n" % (format % args))


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port_file = sys.argv[2]
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
