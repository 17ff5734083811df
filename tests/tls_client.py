"""A TLS client for tests/tls.rs, on Python's ssl module (OpenSSL).

    python3 tls_client.py PORT [--sni NAME] [--ca FILE] [--tls 1.1|1.2|1.3] [--alpn P,P]
                               [--get PATH --host HOST] [--h2-idle SECONDS]

Connects to 127.0.0.1:PORT, sending NAME as SNI (no SNI without --sni), and prints one JSON
object: the handshake's outcome (the negotiated version and ALPN protocol, and the common name
of the certificate the server chose, checked against the CA), then, with --get, the HTTP/1.1
answer to `GET PATH` with `Host: HOST`. With --h2-idle, it speaks the HTTP/2 preface and
SETTINGS and then waits, up to SECONDS, for the server to close the idle connection.
"""
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
    parser.add_argument("--sni")
    parser.add_argument("--ca")
    parser.add_argument("--tls", choices=sorted(VERSIONS))
    parser.add_argument("--alpn")
    parser.add_argument("--get")
    parser.add_argument("--host")
    parser.add_argument("--h2-idle", type=float)
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
        raw = socket.create_connection(("127.0.0.1", args.port), timeout=30)
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
    if args.get:
        request = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (args.get, args.host)
        conn.sendall(request.encode())
        answer = read_to_end(conn)
        head, _, body = answer.partition(b"\r\n\r\n")
        result["status"] = int(head.split(b" ")[1])
        result["body"] = body.decode("utf-8", "replace")
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
