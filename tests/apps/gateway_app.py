"""A WSGI app for the app-gateway tests (tests/gateway.rs), run by uWSGI with one process.

- /big?n=BYTES: a deterministic body of that size (byte i is i % 251), sent in 64 KiB pieces.
- /sse?events=N&gap=SECONDS: Server-Sent Events with `X-Accel-Buffering: no`, one every gap.
- /upload: reads the body; answers its length, SHA-256 and CONTENT_LENGTH.
- anything else: "ok PID" with the time the request arrived, for latency checks.
"""
import hashlib
import os
import time


def big(n):
    block = bytes(i % 251 for i in range(251 * 261))  # a multiple of 251, ~64 KiB
    sent = 0
    while sent < n:
        piece = block[: min(len(block), n - sent)]
        sent += len(piece)
        yield piece


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = dict(
        pair.split("=", 1) for pair in environ.get("QUERY_STRING", "").split("&") if "=" in pair
    )
    if path == "/big":
        n = int(query.get("n", "0"))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        return big(n)
    if path == "/sse":
        events, gap = int(query.get("events", "3")), float(query.get("gap", "0.5"))

        def stream():
            for i in range(events):
                yield ("data: event %d at %.3f\n\n" % (i, time.time())).encode()
                if i + 1 < events:
                    time.sleep(gap)

        start_response("200 OK", [("Content-Type", "text/event-stream"), ("X-Accel-Buffering", "no")])
        return stream()
    if path == "/upload":
        body = environ["wsgi.input"].read()
        answer = "%d %s %s\n" % (len(body), hashlib.sha256(body).hexdigest(), environ.get("CONTENT_LENGTH", ""))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))])
        return [answer.encode()]
    answer = "ok %d %.6f\n" % (os.getpid(), time.time())
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))])
    return [answer.encode()]
