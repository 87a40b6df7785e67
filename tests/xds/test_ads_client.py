"""The ADS client of a real sidecar process, against a scripted real gRPC ADS server.

The test plays the control plane: it sees every request the proxy sends and
answers what it wants, including the wrong things (garbage in an Any,
duplicate names, a reset mid-push), and checks the protocol (ACK/NACK with
the right version and nonce, subscriptions following listeners and
clusters), warming (/ready, traffic) and the last good config.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import any_pb2

from tests.support.client import request
from tests.support.proxy import HCM, ROUTER, ProxyProcess, address, free_port
from tests.support.upstream import Reply, Upstream
from tests.xds.ads_server import CLUSTER, ENDPOINT, LISTENER, ROUTE, ScriptedAds, Stream
from tests.xds_server import support

H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
ADS_SOURCE = {"ads": {}, "resource_api_version": "V3"}


def ads_bootstrap(ads_port: int, delta: bool) -> dict[str, Any]:
    return support.ads_bootstrap(ads_port, "DELTA_GRPC" if delta else "GRPC",
                                 node="sidecar-test", cluster="test-cluster")


def eds_cluster(name: str) -> dict[str, Any]:
    return {"name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": ADS_SOURCE}}


def assignment(name: str, *ports: int) -> dict[str, Any]:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": address(p)}} for p in ports]}]}


def rds_listener(name: str, port: int, route_name: str,
                 source: dict[str, Any] = ADS_SOURCE) -> dict[str, Any]:
    return {"name": name, "address": address(port), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {"@type": HCM, "stat_prefix": name,
                         "rds": {"route_config_name": route_name, "config_source": source},
                         "http_filters": [{"name": "envoy.filters.http.router",
                                           "typed_config": {"@type": ROUTER}}]}}]}]}


def route_config(name: str, cluster: str, prefix: str = "/") -> dict[str, Any]:
    return {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": prefix}, "route": {"cluster": cluster}}]}]}


def ready(proxy: ProxyProcess) -> int:
    return proxy.admin("/ready")[0]


def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {check}")
        time.sleep(0.05)


def is_ack(req: Any, nonce: str) -> bool:
    return req.response_nonce == nonce and not req.HasField("error_detail")


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream(lambda r: Reply(200, body=f"v1 {r.target}".encode())) as u:
        yield u


class Session:
    """A sidecar connected to the scripted server, brought to a served config."""

    def __init__(self, ads: ScriptedAds, proxy: ProxyProcess, stream: Stream, delta: bool) -> None:
        self.ads, self.proxy, self.stream, self.delta = ads, proxy, stream, delta

    def send(self, type_url: str, version: str, resources: list[dict[str, Any]],
             removed: list[str] = ()) -> str:
        if self.delta:
            by_name = {r.get("name") or r["cluster_name"]: (version, r) for r in resources}
            return self.stream.send_delta(type_url, by_name, list(removed), system_version=version)
        return self.stream.send_sotw(type_url, version, resources)

    def ack(self, type_url: str, nonce: str, version: str) -> Any:
        """The ACK of the response ``nonce`` (subscription changes sent before it are passed over)."""
        req = self.stream.next_request(type_url)
        while req.response_nonce != nonce and not req.HasField("error_detail"):
            req = self.stream.next_request(type_url)
        assert is_ack(req, nonce), req
        if not self.delta:
            assert req.version_info == version
        return req


def start_session(ads: ScriptedAds, upstream: Upstream, delta: bool, port: int,
                  stack: Any) -> Session:
    proxy = stack.enter_context(ProxyProcess(ads_bootstrap(ads.port, delta), wait_ready=False))
    stream = ads.next_stream()
    s = Session(ads, proxy, stream, delta)
    first = stream.next_request()
    assert first.node.id == "sidecar-test" and first.node.cluster == "test-cluster"
    assert first.type_url == CLUSTER            # CDS first, as Envoy
    lds = stream.next_request(LISTENER)
    if delta:
        assert list(first.resource_names_subscribe) == [] and list(lds.resource_names_subscribe) == []
    else:
        assert list(first.resource_names) == [] and list(lds.resource_names) == []   # wildcard
    # CDS: an EDS cluster, which warms until its endpoints arrive.
    nonce = s.send(CLUSTER, "c1", [eds_cluster("backend")])
    s.ack(CLUSTER, nonce, "c1")
    eds = stream.next_request(ENDPOINT)
    names = eds.resource_names_subscribe if delta else eds.resource_names
    assert list(names) == ["backend"]
    assert ready(proxy) == 503
    nonce = s.send(ENDPOINT, "e1", [assignment("backend", upstream.port)])
    s.ack(ENDPOINT, nonce, "e1")
    # LDS: a listener that waits for its routes.
    nonce = s.send(LISTENER, "l1", [rds_listener("ingress", port, "routes")])
    s.ack(LISTENER, nonce, "l1")
    rds = stream.next_request(ROUTE)
    assert list(rds.resource_names_subscribe if delta else rds.resource_names) == ["routes"]
    assert ready(proxy) == 503
    nonce = s.send(ROUTE, "r1", [route_config("routes", "backend")])
    s.ack(ROUTE, nonce, "r1")
    eventually(lambda: ready(proxy) == 200)
    return s


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_warming_then_traffic_then_updates(delta: bool, upstream: Upstream) -> None:
    from contextlib import ExitStack
    port = free_port()
    with ScriptedAds() as ads, ExitStack() as stack:
        s = start_session(ads, upstream, delta, port, stack)
        assert request(port, "/hello").body == b"v1 /hello"

        # A route update applies to new requests at once.
        nonce = s.send(ROUTE, "r2", [route_config("routes", "backend", prefix="/only")])
        s.ack(ROUTE, nonce, "r2")
        eventually(lambda: request(port, "/hello").status == 404)
        assert request(port, "/only/x").body == b"v1 /only/x"

        # An EDS update moves traffic to the new endpoint.
        with Upstream(lambda r: Reply(200, body=b"v2")) as second:
            nonce = s.send(ENDPOINT, "e2", [assignment("backend", second.port)])
            s.ack(ENDPOINT, nonce, "e2")
            eventually(lambda: request(port, "/only").body == b"v2")
            nonce = s.send(ENDPOINT, "e3", [assignment("backend", upstream.port)])
            s.ack(ENDPOINT, nonce, "e3")
            eventually(lambda: request(port, "/only").body == b"v1 /only")

        # An invalid cluster is NACKed with a reason naming it; the old config serves on.
        bad = {"name": "backend", "type": "EDS", "connect_timeout": "1s",
               "lb_policy": "CLUSTER_PROVIDED",
               "eds_cluster_config": {"eds_config": ADS_SOURCE}}
        nonce = s.send(CLUSTER, "c2", [bad])
        nack = s.stream.next_request(CLUSTER)
        assert nack.response_nonce == nonce and nack.HasField("error_detail")
        assert "Cluster 'backend'" in nack.error_detail.message
        assert "lb_policy" in nack.error_detail.message
        if not delta:
            assert nack.version_info == "c1"        # the last good version
        assert request(port, "/only/y").status == 200
        stats = s.proxy.stats()
        assert (stats["cluster_manager.cds.update_success"], stats["cluster_manager.cds.update_rejected"]) == (1, 1)
        assert stats["cluster.backend.update_success"] == 3            # e1, e2, e3


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_garbage_and_duplicates_are_nacked(delta: bool, upstream: Upstream) -> None:
    from contextlib import ExitStack
    port = free_port()
    with ScriptedAds() as ads, ExitStack() as stack:
        s = start_session(ads, upstream, delta, port, stack)
        garbage = any_pb2.Any(type_url=CLUSTER, value=b"\xff\xff\xff\xff")
        if delta:
            nonce = s.stream.send_delta(CLUSTER, {}, packed={"junk": ("g1", garbage)})
        else:
            nonce = s.stream.send_sotw(CLUSTER, "g1", [], packed=[garbage])
        nack = s.stream.next_request(CLUSTER)
        assert nack.response_nonce == nonce and nack.error_detail.message
        # The same cluster twice in one response.
        from tests.xds.ads_server import pack
        twice = pack(CLUSTER, eds_cluster("dup"))
        if delta:
            from envoy.service.discovery.v3 import discovery_pb2
            s.stream.nonce += 1
            resp = discovery_pb2.DeltaDiscoveryResponse(type_url=CLUSTER, nonce="dupe")
            resp.resources.add(name="dup", version="d1", resource=twice)
            resp.resources.add(name="dup", version="d1", resource=twice)
            s.stream.outbox.put(resp)
            nonce = "dupe"
        else:
            nonce = s.stream.send_sotw(CLUSTER, "d1", [], packed=[twice, twice])
        nack = s.stream.next_request(CLUSTER)
        assert nack.response_nonce == nonce and "duplicate" in nack.error_detail.message
        assert request(port, "/after-garbage").body == b"v1 /after-garbage"
        assert ready(s.proxy) == 200


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_stream_reset_keeps_serving_and_resumes(delta: bool, upstream: Upstream) -> None:
    from contextlib import ExitStack
    port = free_port()
    with ScriptedAds() as ads, ExitStack() as stack:
        s = start_session(ads, upstream, delta, port, stack)
        s.stream.reset()
        again = ads.next_stream(timeout=15)
        # While the control plane is away, traffic flows on the last good config.
        assert request(port, "/during-outage").body == b"v1 /during-outage"
        requests = {}
        for _ in range(4):
            req = again.next_request()
            requests[req.type_url] = req
        assert set(requests) == {CLUSTER, LISTENER, ENDPOINT, ROUTE}
        if delta:
            # Delta resumes with what it holds.
            assert dict(requests[CLUSTER].initial_resource_versions) == {"backend": "c1"}
            assert dict(requests[ROUTE].initial_resource_versions) == {"routes": "r1"}
            assert list(requests[ENDPOINT].resource_names_subscribe) == ["backend"]
        else:
            # SotW resends the versions it accepted, and its named subscriptions.
            assert requests[CLUSTER].version_info == "c1"
            assert requests[LISTENER].version_info == "l1"
            assert list(requests[ROUTE].resource_names) == ["routes"]
            assert requests[ENDPOINT].version_info == "e1"
        assert all(r.node.id == "sidecar-test" for r in requests.values())


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_removal_follows_the_protocol(delta: bool, upstream: Upstream) -> None:
    from contextlib import ExitStack
    port = free_port()
    with ScriptedAds() as ads, ExitStack() as stack:
        s = start_session(ads, upstream, delta, port, stack)
        # Drop the cluster: SotW by leaving it out of the (complete) CDS set, Delta by name.
        nonce = s.send(CLUSTER, "c2", [], removed=["backend"])
        s.ack(CLUSTER, nonce, "c2")
        eventually(lambda: request(port, "/gone").status == 503)
        eds = s.stream.next_request(ENDPOINT)
        if delta:
            assert list(eds.resource_names_unsubscribe) == ["backend"]
        else:
            assert list(eds.resource_names) == []
        # Drop the listener: its port stops accepting.
        nonce = s.send(LISTENER, "l2", [], removed=["ingress"])
        s.ack(LISTENER, nonce, "l2")

        def refused() -> bool:
            try:
                request(port, "/", timeout=1)
            except ConnectionRefusedError:
                return True
            return False
        eventually(refused)


def test_listener_update_drains_old_connections_on_the_old_config(upstream: Upstream) -> None:
    """In-flight requests finish on the old config; new connections get the new one."""
    from contextlib import ExitStack
    import http.client
    port = free_port()
    old_routes = {"name": "routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/in-flight"}, "route": {"cluster": "slow"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]}
    new_routes = {"name": "routes2", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "new"}}}]}]}
    with ScriptedAds() as ads, ExitStack() as stack, \
            Upstream(lambda r: Reply(200, body=b"slow", delay=2.0)) as slow:
        s = start_session(ads, upstream, False, port, stack)
        nonce = s.send(CLUSTER, "c2", [eds_cluster("backend"), eds_cluster("slow")])
        s.ack(CLUSTER, nonce, "c2")
        nonce = s.send(ENDPOINT, "e2", [assignment("backend", upstream.port),
                                        assignment("slow", slow.port)])
        s.ack(ENDPOINT, nonce, "e2")
        nonce = s.send(ROUTE, "r2", [old_routes])
        s.ack(ROUTE, nonce, "r2")
        old = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        old.request("GET", "/in-flight")
        time.sleep(0.3)                       # the request is at the slow upstream now
        nonce = s.send(LISTENER, "l2", [rds_listener("ingress", port, "routes2")])
        s.ack(LISTENER, nonce, "l2")
        # The new listener warms: its routes are asked for, beside the old one's; the
        # old listener serves meanwhile.
        assert sorted(s.stream.next_request(ROUTE).resource_names) == ["routes", "routes2"]
        assert request(port, "/still-old").body == b"v1 /still-old"
        nonce = s.send(ROUTE, "r3", [old_routes, new_routes])
        # Once it replaced the old listener, only its routes stay subscribed (said in the ACK).
        assert list(s.ack(ROUTE, nonce, "r3").resource_names) == ["routes2"]
        assert request(port, "/new").body == b"new"
        response = old.getresponse()
        assert (response.status, response.read()) == (200, b"slow")
        assert response.getheader("connection") == "close"     # drained after it
        old.close()


def test_config_dump_shows_dynamic_resources(upstream: Upstream) -> None:
    """Envoy's ConfigDump shape: dynamic_active_clusters, dynamic_listeners, dynamic_route_configs,
    and with ?include_eds the endpoint configs, each with version_info and last_updated."""
    from contextlib import ExitStack
    import json
    port = free_port()
    with ScriptedAds() as ads, ExitStack() as stack:
        s = start_session(ads, upstream, False, port, stack)
        status, body = s.proxy.admin("/config_dump?include_eds")
        assert status == 200
        dumps = {c["@type"].rsplit(".", 1)[-1]: c for c in json.loads(body)["configs"]}
        clusters = dumps["ClustersConfigDump"]
        assert [c["cluster"]["name"] for c in clusters["static_clusters"]] == ["xds"]
        [active] = clusters["dynamic_active_clusters"]
        assert active["version_info"] == "c1" and active["cluster"]["name"] == "backend"
        assert active["cluster"]["@type"].endswith("envoy.config.cluster.v3.Cluster")
        assert active["last_updated"].endswith("Z")
        assert clusters["version_info"] == "c1"
        [listener] = dumps["ListenersConfigDump"]["dynamic_listeners"]
        assert listener["name"] == "ingress"
        assert listener["active_state"]["version_info"] == "l1"
        assert listener["active_state"]["listener"]["address"]["socket_address"]["port_value"] == port
        [routes] = dumps["RoutesConfigDump"]["dynamic_route_configs"]
        assert (routes["version_info"], routes["route_config"]["name"]) == ("r1", "routes")
        [eds] = dumps["EndpointsConfigDump"]["dynamic_endpoint_configs"]
        assert eds["version_info"] == "e1" and eds["endpoint_config"]["cluster_name"] == "backend"
        # A cluster waiting for its endpoints is listed as warming.
        nonce = s.send(CLUSTER, "c2", [eds_cluster("backend"), eds_cluster("later")])
        s.ack(CLUSTER, nonce, "c2")
        _, body = s.proxy.admin("/config_dump?resource=dynamic_warming_clusters")
        assert [c["cluster"]["name"] for c in json.loads(body)["configs"]] == ["later"]


def test_oversized_response_drops_the_stream_not_the_config(upstream: Upstream) -> None:
    """A response over the client's 64 MiB message limit: grpc refuses it, the stream is
    re-opened (with the last good versions) and the proxy serves on throughout."""
    from contextlib import ExitStack
    port = free_port()
    with ScriptedAds() as ads, ExitStack() as stack:
        s = start_session(ads, upstream, False, port, stack)
        huge = any_pb2.Any(type_url=CLUSTER, value=b"\x0a" + b"\xff" * (65 * 1024 * 1024))
        s.stream.send_sotw(CLUSTER, "huge", [], packed=[huge])
        again = ads.next_stream(timeout=15)
        assert again.next_request(CLUSTER).version_info == "c1"
        assert request(port, "/after-huge").body == b"v1 /after-huge"
        assert s.proxy.proc.poll() is None


def test_updates_keep_pooled_connections_and_in_flight_requests(upstream: Upstream) -> None:
    """A CDS update of a cluster keeps its warm upstream connections; an EDS update that
    moves traffic lets the request in flight to the old endpoint finish."""
    from contextlib import ExitStack
    import http.client
    port = free_port()
    with ScriptedAds() as ads, ExitStack() as stack:
        s = start_session(ads, upstream, False, port, stack)
        assert request(port, "/warm").status == 200
        connections = upstream.connections
        changed = {**eds_cluster("backend"), "connect_timeout": "2s"}
        nonce = s.send(CLUSTER, "c2", [changed])
        s.ack(CLUSTER, nonce, "c2")
        for i in range(5):
            assert request(port, f"/after-cds/{i}").status == 200
        assert upstream.connections == connections          # the pooled connection was reused

        with Upstream(lambda r: Reply(200, body=b"slow old", delay=1.5)) as slow_old, \
                Upstream(lambda r: Reply(200, body=b"new")) as new:
            nonce = s.send(ENDPOINT, "e2", [assignment("backend", slow_old.port)])
            s.ack(ENDPOINT, nonce, "e2")
            eventually(lambda: request(port, "/probe").status == 200)
            in_flight = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            in_flight.request("GET", "/in-flight")
            time.sleep(0.3)
            nonce = s.send(ENDPOINT, "e3", [assignment("backend", new.port)])
            s.ack(ENDPOINT, nonce, "e3")
            eventually(lambda: request(port, "/moved").body == b"new")
            response = in_flight.getresponse()
            assert (response.status, response.read()) == (200, b"slow old")
            in_flight.close()


def test_node_only_on_first_message_when_configured(upstream: Upstream) -> None:
    with ScriptedAds() as ads:
        config = ads_bootstrap(ads.port, False)
        config["dynamic_resources"]["ads_config"]["set_node_on_first_message_only"] = True
        with ProxyProcess(config, wait_ready=False):
            stream = ads.next_stream()
            first = stream.next_request(CLUSTER)
            assert first.node.id == "sidecar-test"
            assert not stream.next_request(LISTENER).HasField("node")
            nonce = stream.send_sotw(CLUSTER, "c1", [eds_cluster("backend")])
            ack = stream.next_request(CLUSTER)
            assert is_ack(ack, nonce) and not ack.HasField("node")


def test_response_for_an_unsubscribed_type_is_ignored(upstream: Upstream) -> None:
    from contextlib import ExitStack
    port = free_port()
    with ScriptedAds() as ads, ExitStack() as stack:
        s = start_session(ads, upstream, False, port, stack)
        stray = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
        s.stream.send_sotw(stray, "x1", [], packed=[any_pb2.Any(type_url=stray, value=b"")])
        assert s.stream.no_request(wait=1.0)
        assert request(port, "/still").body == b"v1 /still"


def test_cli_node_flags_override_the_bootstrap_node() -> None:
    with ScriptedAds() as ads:
        config = ads_bootstrap(ads.port, True)
        config["node"]["metadata"] = {"ISTIO_VERSION": "1.24"}
        config["node"]["locality"] = {"zone": "boot-zone"}
        args = ["--service-node", "cli-node", "--service-cluster", "cli-cluster", "--service-zone", "z1"]
        with ProxyProcess(config, extra_args=args, wait_ready=False):
            node = ads.next_stream().next_request().node
            assert (node.id, node.cluster, node.locality.zone) == ("cli-node", "cli-cluster", "z1")
            assert node.metadata.fields["ISTIO_VERSION"].string_value == "1.24"


def test_sigterm_while_waiting_for_the_initial_config_exits_promptly() -> None:
    with ScriptedAds() as ads:
        with ProxyProcess(ads_bootstrap(ads.port, False), wait_ready=False) as proxy:
            ads.next_stream()                       # connected; the config never comes
            assert ready(proxy) == 503
            started = time.monotonic()
            proxy.proc.terminate()
            assert proxy.proc.wait(5) == 0
            assert time.monotonic() - started < 3    # not the 15 s initial_fetch_timeout


def test_google_grpc_target_and_a_reused_nonce(upstream: Upstream) -> None:
    """ads_config by google_grpc target_uri; a server that repeats a nonce still gets exactly one
    ACK per response."""
    with ScriptedAds() as ads:
        config = ads_bootstrap(ads.port, False)
        config["dynamic_resources"]["ads_config"]["grpc_services"] = [
            {"google_grpc": {"target_uri": f"127.0.0.1:{ads.port}", "stat_prefix": "ads"}}]
        config["static_resources"]["clusters"] = []
        with ProxyProcess(config, wait_ready=False):
            stream = ads.next_stream()
            assert stream.next_request(CLUSTER).node.id == "sidecar-test"
            nonce = stream.send_sotw(CLUSTER, "c1", [eds_cluster("backend")])
            stream.nonce -= 1                         # the next response reuses that nonce
            assert stream.send_sotw(CLUSTER, "c2", [eds_cluster("backend"), eds_cluster("b2")]) == nonce
            first, second = stream.next_request(CLUSTER), stream.next_request(CLUSTER)
            assert is_ack(first, nonce) and first.version_info == "c1"
            assert is_ack(second, nonce) and second.version_info == "c2"
            with pytest.raises(AssertionError, match="no type.googleapis.com/envoy.config.cluster"):
                stream.next_request(CLUSTER, timeout=0.5)      # and no third
