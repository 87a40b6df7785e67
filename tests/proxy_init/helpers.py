"""Helpers for proxy-init's namespace tests: run proxy-init, the capture server, connections."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.support.netns import Netns, python_for_uid

ROOT = str(Path(__file__).resolve().parents[2])
# The server runs from its source text (python -c), and on an interpreter UID 1337 can run: the
# checkout or the venv may sit where only root can read (e.g. under /root).
SERVER_SOURCE = Path(__file__).with_name("capture_server.py").read_text()
PY = sys.executable
PROXY_UID = 1337


def server_argv(*args: str) -> list[str]:
    py = python_for_uid(PROXY_UID)
    assert py is not None
    return [py, "-I", "-S", "-c", SERVER_SOURCE, *args]


def listen_args(*ports: int) -> list[str]:
    out = []
    for port in ports:
        out += ["--listen", f"0.0.0.0:{port}", "--listen", f"[::]:{port}"]
    return out


def proxy_init(ns: Netns, *flags: str, check: bool = True,
               env: dict[str, str] | None = None) -> Any:
    """Run ``python -m sidecar.proxy_init`` (the proxy-init console script) in ``ns``."""
    return ns.run([PY, "-m", "sidecar.proxy_init", *flags], check=check, cwd=ROOT, env=env)


def connect(ns: Netns, *targets: str, user: int | None = None, group: int | None = None,
            source: str | None = None) -> list[dict[str, Any]]:
    argv = server_argv("connect", *(["--source", source] if source else []), *targets)
    return json.loads(ns.run(argv, user=user, group=group).stdout)


def names(replies: list[dict[str, Any]]) -> list[str]:
    return [r.get("name", r.get("error", "?")) for r in replies]


def nat_rules(ns: Netns, tool: str = "iptables") -> str:
    return ns.run([f"{tool}-save", "-t", "nat"]).stdout
