"""Access logs: one line per request in Envoy's text format, buffered and flushed periodically.

As Envoy's, the buffer is written every --file-flush-interval-msec (default
10 s) or as soon as 64 KiB are waiting.  Each path is opened once, however
many connection managers log to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from config import model
from sidecar.http.message import Request

log = logging.getLogger(__name__)

FLUSH_BYTES = 64 * 1024


class LogFile:
    """One open access log file with a write buffer."""

    def __init__(self, path: str, flush_interval: float) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.pending: list[bytes] = []
        self.size = 0
        self.flush_handle: asyncio.TimerHandle | None = None

    def write(self, line: str) -> None:
        data = line.encode("utf-8", "replace")
        self.pending.append(data)
        self.size += len(data)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.flush_handle is None:
            self.flush_handle = asyncio.get_running_loop().call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if not self.pending:
            return
        data = b"".join(self.pending)
        self.pending.clear()
        self.size = 0
        try:
            os.write(self.fd, data)
        except OSError as e:
            log.warning("access log %s: write failed: %s", self.path, e)

    def close(self) -> None:
        self.flush()
        os.close(self.fd)


class AccessLogs:
    """The open log files of a server, by path."""

    def __init__(self, flush_interval: float = 10.0) -> None:
        self.flush_interval = flush_interval
        self.files: dict[str, LogFile] = {}

    def open(self, config: model.AccessLog) -> tuple[LogFile, tuple[Any, ...]]:
        f = self.files.get(config.path)
        if f is None:
            f = self.files[config.path] = LogFile(config.path, self.flush_interval)
        return f, config.tokens

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _request_header(request: Request, name: str) -> str | None:
    if name[0] == ":":
        # (Empty: a request whose head the codec refused, which Envoy logs as "- -".)
        return {":method": request.method, ":path": request.path, ":authority": request.authority,
                ":scheme": request.scheme}.get(name) or None
    if name == "host":
        return request.authority or None
    return _header(request.headers, name)


def _start_time(start_wall: float) -> str:
    # Envoy's default: 2026-11-25T19:12:29.123Z
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start_wall)) + \
        f".{int(start_wall * 1000) % 1000:03d}Z"


def render(tokens: tuple[Any, ...], request: Request, status: int,
           response_headers: list[tuple[str, str]], duration: float) -> str:
    """One access log line for a finished request."""
    info = request.info
    out = []
    for token in tokens:
        if type(token) is str:
            out.append(token)
            continue
        op, names, length = token
        value: str | None
        if op == "REQ" or op == "RESP":
            value = None
            for name in names:
                value = (_request_header(request, name) if op == "REQ"
                         else _header(response_headers, name))
                if value is not None:
                    break
        elif op == "START_TIME":
            value = _start_time(time.time() - duration)
        elif op == "PROTOCOL":
            value = f"HTTP/{request.version}"
        elif op == "RESPONSE_CODE":
            value = str(status)
        elif op == "RESPONSE_FLAGS":
            value = info.flags_text
        elif op == "RESPONSE_CODE_DETAILS":
            value = info.response_code_details or None
        elif op == "BYTES_RECEIVED":
            value = str(info.bytes_received)
        elif op == "BYTES_SENT":
            value = str(info.bytes_sent)
        elif op == "DURATION":
            value = str(int(duration * 1000))
        elif op == "UPSTREAM_HOST":
            value = info.upstream_host or None
        elif op == "UPSTREAM_CLUSTER":
            value = info.upstream_cluster or None
        elif op.startswith("DOWNSTREAM_"):
            addr = (info.downstream_local_address if op == "DOWNSTREAM_LOCAL_ADDRESS"
                    else info.downstream_remote_address)
            if addr is None:
                value = None
            elif op.endswith("WITHOUT_PORT"):
                value = addr[0]
            else:
                value = f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
        else:   # ROUTE_NAME
            entry = request.route
            value = entry.route.name if entry is not None and entry.route.name else None
        if value is None:
            value = "-"
        elif length is not None:
            value = value[:length]
        out.append(value)
    return "".join(out)
