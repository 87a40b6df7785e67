"""The ``sidecar`` command line, run as a real process: validate mode, overrides, refusals."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.support.proxy import REPO, bootstrap, http_listener, static_cluster, vhost


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=60)


def write_config(tmp_path, config) -> str:
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def good_config() -> dict:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "b"}}]
    return bootstrap([http_listener("web", [vhost(routes)], port=18080)], [static_cluster("b", 9)])


def test_validate_ok(tmp_path):
    path = write_config(tmp_path, good_config())
    r = run("--mode", "validate", "-c", path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"configuration '{path}' OK"


def test_validate_lists_every_error_with_its_path(tmp_path):
    config = good_config()
    config["static_resources"]["clusters"][0]["lb_policy"] = "CLUSTER_PROVIDED"
    config["static_resources"]["clusters"][0]["upstream_connection_options"] = {"tcp_keepalive": {}}
    r = run("--mode", "validate", "-c", write_config(tmp_path, config))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2
    assert any("static_resources.clusters[0].lb_policy" in line for line in lines)
    assert any("static_resources.clusters[0].upstream_connection_options" in line for line in lines)


def test_validate_unknown_field(tmp_path):
    config = good_config()
    config["static_resources"]["listeners"][0]["nonsense"] = 1
    r = run("--mode", "validate", "-c", write_config(tmp_path, config))
    assert r.returncode == 1
    assert "static_resources.listeners[0].nonsense: unknown field" in r.stderr


def test_config_yaml_is_merged_over_the_file(tmp_path):
    config = good_config()
    config["static_resources"]["clusters"] = []
    path = write_config(tmp_path, config)
    assert run("--mode", "validate", "-c", path).returncode == 1      # route to unknown cluster b
    extra = "static_resources: {clusters: [{name: b, type: STATIC}]}"
    r = run("--mode", "validate", "-c", path, "--config-yaml", extra)
    assert r.returncode == 0, r.stderr


def test_missing_config_is_a_clear_error(tmp_path):
    r = run("--mode", "validate", "-c", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1 and "cannot read config file" in r.stderr
    r = run("--mode", "validate")
    assert r.returncode == 1 and "no configuration" in r.stderr


def test_concurrency_above_one_is_refused_clearly(tmp_path):
    r = run("--concurrency", "4", "-c", write_config(tmp_path, good_config()))
    assert r.returncode == 1
    assert "--concurrency 4 is not supported yet" in r.stderr


def test_bind_failure_exits_with_a_message(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = good_config()
        config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = \
            busy.getsockname()[1]
        config["admin"]["address"]["socket_address"]["port_value"] = 0
        r = run("-c", write_config(tmp_path, config))
    assert r.returncode == 1
    assert "Address already in use" in r.stderr
    assert "Traceback" not in r.stderr
