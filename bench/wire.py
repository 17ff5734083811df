"""What the bench's own clients (the initializer, the cold-start baseline) send to an app's unix
socket: the uwsgi protocol or HTTP, whichever the site's vassal declares, as Herald and nginx do.
Either way the app answers with an HTTP status line and header (uWSGI writes one on both).
"""
import struct


def vassal_protocol(ini):
    """"uwsgi" or "http": what the first socket option of the vassal's [uwsgi] section says
    (`socket`, `uwsgi-socket`; `http-socket`, `http11-socket`), "uwsgi" when there is none. Herald
    reads more (the option at its socket path, `protocol = http`); the bench's vassals have one."""
    section = None
    for line in ini.splitlines():
        line = line.strip()
        if line.startswith((";", "#")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key = line.partition("=")[0].strip().replace("_", "-")
        if section == "uwsgi" and "=" in line:
            if key in ("socket", "uwsgi-socket"):
                return "uwsgi"
            if key in ("http-socket", "http11-socket"):
                return "http"
    return "uwsgi"


def request(protocol, host, target):
    """The bytes of `GET target` for `host`, in the app's protocol. uwsgi: one packet (modifier1
    0, the CGI variables as nginx's uwsgi_params has them), no body."""
    if protocol == "http":
        return ("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (target, host)).encode()
    path, _, query = target.partition("?")
    env = {"REQUEST_METHOD": "GET", "REQUEST_URI": target, "PATH_INFO": path, "QUERY_STRING": query,
           "SERVER_PROTOCOL": "HTTP/1.0", "REQUEST_SCHEME": "http", "SERVER_NAME": host, "SERVER_PORT": "80",
           "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "0", "HTTP_HOST": host}
    body = b"".join(struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode() for k, v in env.items())
    return struct.pack("<BHB", 0, len(body), 0) + body
