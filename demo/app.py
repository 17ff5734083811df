"""The sample WSGI app behind Herald's demo and tests.

Every site runs this same file; the vassal tells it its name in HERALD_SITE. It answers with
JSON: the site, its pid, what it received (body length and SHA-256) and its WSGI environ, so a
test can see exactly what Herald forwarded.
"""
import hashlib
import json
import os
import time

SITE = os.environ.get("HERALD_SITE", "unknown")


def application(environ, start_response):
    body = environ["wsgi.input"].read() if environ.get("CONTENT_LENGTH") else b""
    answer = {
        "site": SITE,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "method": environ.get("REQUEST_METHOD"),
        "path": environ.get("PATH_INFO"),
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "environ": {k: v for k, v in environ.items() if isinstance(v, str)},
    }
    if environ.get("PATH_INFO") == "/sleep":
        # A slow view, for timeout and concurrency tests: /sleep?s=1.5
        time.sleep(float(environ.get("QUERY_STRING", "s=1").partition("=")[2] or 1))
    if environ.get("PATH_INFO") == "/hello":
        payload = ("Hello from %s (pid %d)\n" % (SITE, os.getpid())).encode()
        content_type = "text/plain; charset=utf-8"
    else:
        payload = (json.dumps(answer, indent=1, sort_keys=True) + "\n").encode()
        content_type = "application/json"
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(payload)))])
    return [payload]
