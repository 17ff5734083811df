#!/usr/bin/env python3
"""The talk's "initialize webapp" service, for the nginx side of the benchmark: nginx's backend
sends here the requests its 502 error_page catches. It enables the site's vassal (once per site,
however many requests wait), waits for the app's socket, then proxies the request to the app
itself, in the protocol its vassal declares (uwsgi or HTTP), and returns its answer. Like the
talk's setup, it does not wake the emperor.

usage: initializer.py PORT SITES_DIR VASSALS_DIR SOCKETS_DIR
"""
import http.client
import os
import shutil
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import wire  # beside this file

PORT, SITES, VASSALS, SOCKETS = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
locks = {}
locks_guard = threading.Lock()


def answers(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Initializer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        site = self.headers.get("Host", "").split(":")[0]
        source = os.path.join(SITES, site + ".ini")
        if "/" in site or not os.path.exists(source):
            return self.answer(404, b"no such site\n")
        sock = os.path.join(SOCKETS, site + ".sock")
        with locks_guard:
            lock = locks.setdefault(site, threading.Lock())
        with lock:
            target = os.path.join(VASSALS, site + ".ini")
            if not os.path.exists(target):
                tmp = os.path.join(VASSALS, "." + site + ".tmp")
                shutil.copy(source, tmp)
                os.rename(tmp, target)
                print("start %s" % site, flush=True)
        deadline = time.time() + 30
        while not answers(sock):
            if time.time() > deadline:
                return self.answer(504, b"the app did not start\n")
            time.sleep(0.005)
        with open(source) as f:
            protocol = wire.vassal_protocol(f.read())
        print("proxy %s %s" % (site, protocol), flush=True)  # the bench checks warm sites get none
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(300)
        try:
            s.connect(sock)
            s.sendall(wire.request(protocol, site, self.path))
            resp = http.client.HTTPResponse(s)
            resp.begin()
            status, body = resp.status, resp.read()
        finally:
            s.close()
        self.answer(status, body)

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 1024
ThreadingHTTPServer(("127.0.0.1", PORT), Initializer).serve_forever()
