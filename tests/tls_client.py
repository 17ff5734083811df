"""A TLS client for tests/tls.rs, on Python's ssl module (OpenSSL).

    python3 tls_client.py PORT [--addr IP] [--sni NAME] [--ca FILE] [--tls 1.1|1.2|1.3]
                               [--alpn P,P] [--get PATH --host HOST] [--h2-idle SECONDS]
                               [--websocket COUNT --host HOST]

Connects to IP:PORT (127.0.0.1 without --addr), sending NAME as SNI (no SNI without --sni), and
prints one JSON object: the handshake's outcome (the negotiated version and ALPN protocol, and
the certificate the server chose, checked against the CA: its common name, DNS names, serial
number and validity in seconds since the epoch), then, with --get, the HTTP/1.1
answer to `GET PATH` with `Host: HOST`. With --h2-idle, it speaks the HTTP/2 preface and
SETTINGS and then waits, up to SECONDS, for the server to close the idle connection. With
--websocket, it opens a WebSocket to `/ws/environ` on HOST (the echo app, demo/ws_echo.py),
reads the handshake the app saw, sends COUNT numbered messages and reads their echoes.
"""
import base64
import hashlib
import os
import struct
import argparse
import json
import socket
import ssl
import sys
import time

VERSIONS = {
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--addr", default="127.0.0.1")
    parser.add_argument("--sni")
    parser.add_argument("--ca")
    parser.add_argument("--tls", choices=sorted(VERSIONS))
    parser.add_argument("--alpn")
    parser.add_argument("--get")
    parser.add_argument("--host")
    parser.add_argument("--h2-idle", type=float)
    parser.add_argument("--websocket", type=int)
    args = parser.parse_args()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The certificate is checked against the test's CA, but not against the name: the tests
    # ask which certificate an unknown name gets.
    context.check_hostname = False
    if args.ca:
        context.load_verify_locations(args.ca)
    else:
        context.verify_mode = ssl.CERT_NONE
    if args.tls:
        context.minimum_version = context.maximum_version = VERSIONS[args.tls]
        if args.tls == "1.1":
            # OpenSSL 3 refuses TLS 1.1 at its default security level; the server must say no.
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if args.alpn:
        context.set_alpn_protocols(args.alpn.split(","))

    result = {}
    try:
        raw = socket.create_connection((args.addr, args.port), timeout=30)
        conn = context.wrap_socket(raw, server_hostname=args.sni)
    except (ssl.SSLError, OSError) as e:
        result["error"] = "%s: %s" % (type(e).__name__, e)
        print(json.dumps(result))
        return
    result["version"] = conn.version()
    result["alpn"] = conn.selected_alpn_protocol()
    cert = conn.getpeercert() if args.ca else None
    if cert:
        subject = dict(pair for rdn in cert["subject"] for pair in rdn)
        result["cn"] = subject.get("commonName")
        result["san"] = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
        result["serial"] = cert.get("serialNumber")
        result["not_before"] = int(ssl.cert_time_to_seconds(cert["notBefore"]))
        result["not_after"] = int(ssl.cert_time_to_seconds(cert["notAfter"]))
    if args.get:
        request = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (args.get, args.host)
        conn.sendall(request.encode())
        answer = read_to_end(conn)
        head, _, body = answer.partition(b"\r\n\r\n")
        result["status"] = int(head.split(b" ")[1])
        result["body"] = body.decode("utf-8", "replace")
    if args.websocket is not None:
        result.update(websocket(conn, args.host, args.websocket))
    if args.h2_idle is not None:
        conn.sendall(H2_PREFACE + EMPTY_SETTINGS)
        conn.settimeout(args.h2_idle)
        started = time.monotonic()
        try:
            read_to_end(conn)
            result["closed_after"] = time.monotonic() - started
        except socket.timeout:
            result["closed_after"] = None
    conn.close()
    print(json.dumps(result))


def websocket(conn, host, count):
    """A WebSocket on `conn`: the 101, the app's report of the handshake, `count` echoes."""
    key = base64.b64encode(os.urandom(16)).decode()
    conn.sendall(("GET /ws/environ HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host, key)).encode())
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return {"ws_error": "closed during the handshake: %r" % buffer}
        buffer += chunk
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if status != 101:
        return {"ws_status": status}
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    if b"sec-websocket-accept: " + accept.lower() not in head.lower():
        return {"ws_error": "wrong Sec-WebSocket-Accept: %r" % head}
    frames = FrameReader(conn, buffer)
    environ = json.loads(frames.next_text())
    echoed = 0
    for i in range(count):
        text = ("message %d " % i + "x" * (i % 300)).encode()
        mask = os.urandom(4)
        length = len(text)
        header = bytes([0x81]) + (bytes([0x80 | length]) if length < 126 else bytes([0x80 | 126]) + struct.pack("!H", length))
        conn.sendall(header + mask + bytes(b ^ mask[j % 4] for j, b in enumerate(text)))
        if frames.next_text() == text.decode():
            echoed += 1
    return {"ws_status": 101, "ws_environ": environ, "echoed": echoed}


class FrameReader:
    """Unmasked server frames, text only (pings are answered)."""

    def __init__(self, conn, buffer):
        self.conn, self.buffer = conn, buffer

    def need(self, n):
        while len(self.buffer) < n:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise EOFError("the server closed the WebSocket")
            self.buffer += chunk
        taken, self.buffer = self.buffer[:n], self.buffer[n:]
        return taken

    def next_text(self):
        while True:
            first, second = self.need(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.need(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.need(8))[0]
            payload = self.need(length)
            opcode = first & 0x0F
            if opcode == 0x9:  # ping: pong with the same payload, masked
                mask = os.urandom(4)
                self.conn.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + bytes(b ^ mask[j % 4] for j, b in enumerate(payload)))
                continue
            if opcode == 0x1:
                return payload.decode()
            raise EOFError("unexpected frame opcode %d" % opcode)


def read_to_end(conn):
    chunks = []
    while True:
        try:
            chunk = conn.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    sys.exit(main())
