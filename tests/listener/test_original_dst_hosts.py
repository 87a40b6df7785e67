"""ORIGINAL_DST host bookkeeping (sidecar/upstream/original_dst.py) and the own-address guard
(sidecar/listener/own_addresses.py), without sockets or sleeps: cleanup() is called directly."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from config import model
from sidecar.listener import own_addresses
from sidecar.stats import ClusterStats
from sidecar.upstream.pool import Http1Pool
from sidecar.upstream.original_dst import OriginalDstHosts, parse_host_port


def cluster() -> Any:
    stats = ClusterStats("od")
    return SimpleNamespace(name="od", stats=stats, pools={}, hosts=[], new_pool=lambda host: Http1Pool(
        host.address, host.port, stats, lambda: None, 1.0, None, 0, 65536))


def request(headers: list[tuple[str, str]], local: tuple[str, int] | None) -> Any:
    return SimpleNamespace(headers=headers, info=SimpleNamespace(downstream_local_address=local))


def test_parse_host_port():
    assert parse_host_port("10.0.0.1:80") == ("10.0.0.1", 80)
    assert parse_host_port("[fd00::1]:8080") == ("fd00::1", 8080)
    for bad in ("10.0.0.1", "example.com:80", "10.0.0.1:0", "10.0.0.1:99999", "[fd00::1]", ""):
        assert parse_host_port(bad) is None, bad


def test_hosts_are_made_once_and_picked_by_key():
    c = cluster()
    hosts = OriginalDstHosts(c, model.OriginalDst())
    k1 = hosts.key_for(("10.0.0.1", 80))
    assert k1 is not None and hosts.key_for(("10.0.0.1", 80)) == k1
    k2 = hosts.key_for(("::ffff:10.0.0.2", 80))       # a dual-stack socket's IPv4 client
    assert hosts.pick(k2).address == "10.0.0.2"        # type: ignore[union-attr]
    assert [h.label for h in c.hosts] == ["10.0.0.1:80", "10.0.0.2:80"]
    assert c.stats.membership_total == 2 and set(c.pools) == {("10.0.0.1", 80), ("10.0.0.2", 80)}
    assert hosts.pick(None) is None and hosts.pick(999) is None


def test_header_then_the_connections_destination():
    hosts = OriginalDstHosts(cluster(), model.OriginalDst(use_http_header=True,
                                                          http_header_name="X-Dst"))
    local = ("10.0.0.9", 80)
    pick = lambda headers: hosts.pick(hosts.key_for_request(request(headers, local))).label  # noqa: E731
    assert pick([("x-dst", "10.0.0.1:81")]) == "10.0.0.1:81"
    # an invalid header, or none: the connection's (original) destination, as Envoy
    assert pick([("x-dst", "nope")]) == "10.0.0.9:80"
    assert pick([]) == "10.0.0.9:80"
    without = OriginalDstHosts(cluster(), model.OriginalDst())
    key = without.key_for_request(request([("x-envoy-original-dst-host", "10.0.0.1:81")], local))
    assert without.pick(key).label == "10.0.0.9:80"    # type: ignore[union-attr]


def test_cleanup_keeps_used_hosts_and_hosts_with_pooled_connections():
    c = cluster()
    hosts = OriginalDstHosts(c, model.OriginalDst())
    for port in (1, 2, 3):
        hosts.key_for(("10.0.0.1", port))
    hosts.cleanup()                                    # all used in this interval: kept
    assert c.stats.membership_total == 3
    c.pools[("10.0.0.1", 2)].busy.add(object())        # a connection keeps its host
    hosts.key_for(("10.0.0.1", 3))                     # picked again: kept
    gone = c.pools[("10.0.0.1", 1)]
    hosts.cleanup()
    assert [h.port for h in c.hosts] == [2, 3] and c.stats.membership_total == 2
    assert gone.closed and ("10.0.0.1", 1) not in c.pools
    hosts.cleanup()
    assert [h.port for h in c.hosts] == [2]


def test_own_listening_addresses_are_refused():
    c = cluster()
    hosts = OriginalDstHosts(c, model.OriginalDst())
    own_addresses.add("10.0.0.5", 15001)
    own_addresses.add("0.0.0.0", 15006)
    try:
        assert hosts.key_for(("10.0.0.5", 15001)) is None
        assert hosts.key_for(("127.0.0.1", 15006)) is None       # a wildcard listener's port
        assert hosts.key_for(("127.0.0.1", 15007)) is not None
        assert not own_addresses.is_own("192.0.2.1", 15006)      # not an address of this host
    finally:
        own_addresses.remove("10.0.0.5", 15001)
        own_addresses.remove("0.0.0.0", 15006)
    assert not own_addresses.is_own("10.0.0.5", 15001)
