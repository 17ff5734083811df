"""Unix-socket "apps" that answer badly, for tests/gateway.rs: each socket path given as
BEHAVIOUR=PATH accepts connections, reads what arrives for a moment, answers with its
behaviour and closes. The last argument is a file to write "ready" to once all listen.

- garbage:      bytes that are not HTTP at all
- bad-status:   a status line with a four-digit status
- many-headers: 300 header fields (more than any proxy reads)
- closes:       closes at once, answering nothing
"""
import os
import socket
import sys
import threading

ANSWERS = {
    "garbage": b"this is not HTTP\r\n\r\n",
    "bad-status": b"HTTP/1.1 2000 Fine\r\nContent-Length: 2\r\n\r\nok",
    "many-headers": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(300)) + b"Content-Length: 2\r\n\r\nok",
    "closes": None,
}


def serve(listener, answer):
    while True:
        conn, _ = listener.accept()
        with conn:
            if answer is None:
                continue
            conn.settimeout(0.5)
            try:
                conn.recv(65536)
            except OSError:
                pass
            try:
                conn.sendall(answer)
            except OSError:
                pass


def main():
    *specs, ready = sys.argv[1:]
    threads = []
    for spec in specs:
        behaviour, path = spec.split("=", 1)
        if os.path.exists(path):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(16)
        threads.append(threading.Thread(target=serve, args=(listener, ANSWERS[behaviour]), daemon=True))
    for t in threads:
        t.start()
    with open(ready + ".tmp", "w") as f:
        f.write("ready")
    os.rename(ready + ".tmp", ready)
    threading.Event().wait()


main()
