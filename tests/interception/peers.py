"""Servers and clients for the interception tests, run inside the namespaces (stdlib only, from
source text with ``python -c``, so any UID's interpreter can run them).

    serve NAME [tcp|http] ADDR:PORT ...   servers answering "NAME from PEER-IP"; prints READY
    tcp HOST:PORT ...                     one JSON line: each target's first line, or "error: ..."
    http URL HOST-HEADER                  one JSON line: [status, body] ([0, error] on failure)
"""

import http.client
import http.server
import json
import socket
import socketserver
import sys
import threading


def split(target):
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def _bind(server):
    if server.address_family == socket.AF_INET6:      # [::] beside 0.0.0.0 on the same port
        server.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.socket.bind(server.server_address)
    server.server_address = server.socket.getsockname()


def serve(name, kind, targets):
    class Tcp(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.sendall(f"{name} from {self.client_address[0]}\n".encode())
            while data := self.request.recv(65536):
                self.request.sendall(data)

    class Http(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"{name} from {self.client_address[0]}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    for target in targets:
        host, port = split(target)
        base = socketserver.ThreadingTCPServer if kind == "tcp" else http.server.ThreadingHTTPServer
        cls = type("Server", (base,), {"address_family": socket.AF_INET6 if ":" in host
                                       else socket.AF_INET, "allow_reuse_address": True,
                                       "daemon_threads": True, "server_bind": _bind})
        server = cls((host, port), Tcp if kind == "tcp" else Http)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("READY", flush=True)
    threading.Event().wait()


def tcp(targets):
    out = []
    for target in targets:
        try:
            with socket.create_connection(split(target), timeout=3) as s:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(1024)
                    if not chunk:
                        break
                    data += chunk
                out.append(data.decode().strip() or "error: closed")
        except OSError as e:
            out.append(f"error: {e}")
    print(json.dumps(out))


def get(url, host):
    rest = url.split("://", 1)[1]
    address, _, path = rest.partition("/")
    try:
        conn = http.client.HTTPConnection(*split(address), timeout=3)
        conn.request("GET", "/" + path, headers={"Host": host})
        r = conn.getresponse()
        print(json.dumps([r.status, r.read().decode()]))
    except OSError as e:
        print(json.dumps([0, str(e)]))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0], args[1], args[2:])
    elif cmd == "tcp":
        tcp(args)
    else:
        get(args[0], args[1])
