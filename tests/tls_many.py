"""Many TLS handshakes at once, one per SNI name, for tests/acme.rs.

    python3 tls_many.py ADDR PORT CA_FILE TIMEOUT NAMES_FILE [THREADS]

Handshakes with ADDR:PORT once for each name in NAMES_FILE (one a line), THREADS (default 32)
at a time, each given TIMEOUT seconds, the certificate checked against CA_FILE but not against
the name (as tls_client.py does). Prints one JSON object: for each name, the certificate's
common name, DNS names and serial number, or the error.
"""
import json
import socket
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor


def handshake(context, addr, port, timeout, name):
    try:
        with socket.create_connection((addr, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=name) as conn:
                cert = conn.getpeercert()
    except (ssl.SSLError, OSError) as e:
        return {"error": "%s: %s" % (type(e).__name__, e)}
    subject = dict(pair for rdn in cert["subject"] for pair in rdn)
    return {
        "cn": subject.get("commonName"),
        "san": [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"],
        "serial": cert.get("serialNumber"),
    }


def main():
    addr, port, ca, timeout, names_file = sys.argv[1:6]
    threads = int(sys.argv[6]) if len(sys.argv) > 6 else 32
    with open(names_file) as f:
        names = [line.strip() for line in f if line.strip()]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(ca)
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda name: handshake(context, addr, int(port), float(timeout), name), names)
        print(json.dumps(dict(zip(names, results))))


if __name__ == "__main__":
    sys.exit(main())
