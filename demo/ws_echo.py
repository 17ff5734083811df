"""A WebSocket echo app for Herald's demo and tests, on uWSGI's own WebSocket API.

- `/ws`: every message comes back as it was sent, in order, until the client closes.
- `/ws/environ`: the same, after a first message with the handshake as the app saw it (JSON:
  the method, path and HTTP_* variables), so a test can check what Herald forwarded.
- While connected, the message `push N MS` makes the app send `push 1` .. `push N`, one every
  MS milliseconds, without reading: traffic from the server only.
- Any other path is an ordinary request: a short text answer (`/sleep?s=1.5` waits first).

A sync uWSGI worker is busy for as long as its WebSocket is open, so run this with more than
one worker (`processes` or `threads` in the vassal); uWSGI also pings every open socket every
`websockets-ping-freq` seconds (30 by default) and answers the client's pings itself.
"""
import json
import os
import time

import uwsgi

SITE = os.environ.get("HERALD_SITE", "unknown")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path in ("/ws", "/ws/environ"):
        return websocket(environ, start_response, path == "/ws/environ")
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING", "s=1").partition("=")[2] or 1))
    payload = ("%s (pid %d): not a WebSocket\n" % (SITE, os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(payload)))])
    return [payload]


def websocket(environ, start_response, report_environ):
    try:
        # Answers 101 with the accept key computed from Sec-WebSocket-Key.
        uwsgi.websocket_handshake()
    except IOError:
        payload = b"expected a WebSocket handshake\n"
        start_response("400 Bad Request", [("Content-Type", "text/plain"), ("Content-Length", str(len(payload)))])
        return [payload]
    if report_environ:
        seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        seen.update(method=environ.get("REQUEST_METHOD"), path=environ.get("PATH_INFO"), site=SITE)
        uwsgi.websocket_send(json.dumps(seen, sort_keys=True).encode())
    while True:
        try:
            message = uwsgi.websocket_recv()
        except IOError:
            return []  # the client closed (or went away): the worker is free again
        if message.startswith(b"push "):
            count, every_ms = (int(n) for n in message.split()[1:3])
            for i in range(1, count + 1):
                time.sleep(every_ms / 1000)
                uwsgi.websocket_send(b"push %d" % i)
        else:
            uwsgi.websocket_send(message)
