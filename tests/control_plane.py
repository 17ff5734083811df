"""A stand-in for an operator's control plane, for Herald's `http` initializer tests.

POST /start {"host": SITE} enables SITE's vassal (copies it from the sites directory into the
emperor's, atomically); POST /stop removes it. Sites named refuse* get a 500, slow* are
answered after 3 s. Every call is appended to the log file. The port it listens on is
written to the port file once it accepts connections.

usage: control_plane.py SITES_DIR VASSALS_DIR LOG_FILE PORT_FILE
"""
import json
import os
import shutil
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SITES_DIR, VASSALS_DIR, LOG_FILE, PORT_FILE = sys.argv[1:5]


class ControlPlane(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        site = body["host"]
        with open(LOG_FILE, "a") as log:
            log.write("%s %s\n" % (self.path, site))
        if site.startswith("refuse"):
            return self.answer(500, "no webapp called %s in the database" % site)
        if site.startswith("slow"):
            time.sleep(3)
        vassal = os.path.join(VASSALS_DIR, site + ".ini")
        if self.path == "/start":
            temporary = os.path.join(VASSALS_DIR, "." + site + ".tmp")
            shutil.copy(os.path.join(SITES_DIR, site + ".ini"), temporary)
            os.rename(temporary, vassal)
        elif self.path == "/stop" and os.path.exists(vassal):
            os.remove(vassal)
        self.answer(200, "ok")

    def answer(self, status, text):
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), ControlPlane)
with open(PORT_FILE + ".tmp", "w") as port_file:
    port_file.write(str(server.server_address[1]))
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
