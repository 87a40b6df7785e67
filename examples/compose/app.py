"""The example app of docker-compose.yml: a tiny HTTP server (standard library only).

GET /      -> "hello from $NAME"
GET /call  -> calls $UPSTREAM_URL (default http://backend:8080/) and returns what it got,
              so you can watch the sidecar route the app's outbound call.
Listens on $BIND:$PORT (default 0.0.0.0:8080). Runs the same as the app and as both backends.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("NAME", "app")
UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://backend:8080/")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/call":
            try:
                with urllib.request.urlopen(UPSTREAM_URL, timeout=5) as r:
                    status, got = r.status, r.read().decode(errors="replace")
            except urllib.error.HTTPError as e:
                status, got = e.code, e.read().decode(errors="replace")
            except OSError as e:
                status, got = 502, f"{e}\n"
            self.reply(status, f"{NAME} called {UPSTREAM_URL}: {status} {got}")
        else:
            self.reply(200, f"hello from {NAME}\n")

    def reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{NAME}: {self.address_string()} {format % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    bind = os.environ.get("BIND", "0.0.0.0")
    server = ThreadingHTTPServer((bind, port), Handler)
    print(f"{NAME} listening on {bind}:{port}", flush=True)
    server.serve_forever()
