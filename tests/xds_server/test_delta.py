"""Delta (incremental) ADS, driven by a grpcio client: wildcard, removals, reconnects, names."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest
from google.rpc.status_pb2 import Status

from tests.xds_server.support import (CLUSTER, ENDPOINT, AdsClient, XdsServer, eds_cluster, endpoints,
                                      names, write_yaml)


@pytest.fixture
def server(tmp_path):
    write_yaml(tmp_path, "clusters.yaml", {"clusters": [eds_cluster("b"), eds_cluster("a")]})
    write_yaml(tmp_path, "endpoints.yaml", {"endpoints": [endpoints("a", 9000), endpoints("b", 9001)]})
    with XdsServer(tmp_path) as s:
        yield s


def request(type_url, subscribe=(), unsubscribe=(), nonce="", initial=None, error=None, node="client-1"):
    req = DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=list(subscribe),
                                resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce,
                                initial_resource_versions=initial or {})
    if node:
        req.node.id = node
    if error:
        req.error_detail.CopyFrom(Status(code=3, message=error))
    return req


def versions(response) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


def test_wildcard_removal_and_reconnect(server, tmp_path):
    with AdsClient(server.port, delta=True) as ads:
        ads.send(request(CLUSTER))                    # nothing named: the (legacy) wildcard
        first = ads.recv()
        assert names(first) == ["a", "b"]
        assert [r.name for r in first.resources] == ["a", "b"]
        assert list(first.removed_resources) == []
        assert first.system_version_info and first.nonce

        ads.send(request(CLUSTER, nonce=first.nonce, node=""))
        ads.expect_silence()
        server.wait_for(rf"ACK node=client-1 type=Cluster version={first.system_version_info} "
                        rf"nonce={first.nonce}\b")

        write_yaml(tmp_path, "clusters.yaml", {"clusters": [eds_cluster("b")]})
        removal = ads.recv()
        assert list(removal.removed_resources) == ["a"]
        assert len(removal.resources) == 0        # b did not change: not resent
        ads.send(request(CLUSTER, nonce=removal.nonce))
        held = {"b": versions(first)["b"]}

    # A new stream that says what it holds gets nothing it already has.
    with AdsClient(server.port, delta=True) as ads:
        ads.send(request(CLUSTER, initial=held))
        answer = ads.recv()
        assert len(answer.resources) == 0 and len(answer.removed_resources) == 0
        ads.expect_silence(0.3)

    # One holding a stale copy and a deleted resource gets the new copy and the removal.
    with AdsClient(server.port, delta=True) as ads:
        ads.send(request(CLUSTER, subscribe=["*"], initial={"a": "old", "b": "old"}))
        answer = ads.recv()
        assert names(answer) == ["b"] and versions(answer)["b"] == held["b"]
        assert list(answer.removed_resources) == ["a"]


def test_named_subscriptions_missing_names_and_changes(server, tmp_path):
    with AdsClient(server.port, delta=True) as ads:
        ads.send(request(ENDPOINT, subscribe=["b", "zzz"]))
        first = ads.recv()
        assert names(first) == ["b"]
        assert list(first.removed_resources) == ["zzz"]     # "does not exist", said at once
        ads.send(request(ENDPOINT, nonce=first.nonce))
        ads.expect_silence()

        # A change to a resource not subscribed is not sent; one to a subscribed one is, alone.
        write_yaml(tmp_path, "endpoints.yaml", {"endpoints": [endpoints("a", 9100), endpoints("b", 9101)]})
        changed = ads.recv()
        assert names(changed) == ["b"] and not changed.removed_resources
        ads.send(request(ENDPOINT, nonce=changed.nonce))

        # Subscribing to a name that later appears: it is sent when it does.
        ads.send(request(ENDPOINT, subscribe=["c"]))
        assert list(ads.recv().removed_resources) == ["c"]
        write_yaml(tmp_path, "endpoints.yaml", {"endpoints": [endpoints(n, 9100) for n in "abc"]})
        appeared = ads.recv()
        assert names(appeared) == ["b", "c"]


def test_stale_nonce_still_changes_the_subscription_and_nack_is_logged(server):
    with AdsClient(server.port, delta=True) as ads:
        ads.send(request(ENDPOINT, subscribe=["a"]))
        first = ads.recv()
        ads.send(request(ENDPOINT, nonce=first.nonce, error="bad endpoint"))
        ads.expect_silence()
        server.wait_for(rf"NACK node=client-1 type=ClusterLoadAssignment "
                        rf"rejected={first.system_version_info} "
                        rf"nonce={first.nonce} error=\"bad endpoint\"")

        # The protocol: subscription changes count even when the nonce is stale.
        ads.send(request(ENDPOINT, subscribe=["b"], nonce="not-ours"))
        assert names(ads.recv()) == ["b"]
        server.wait_for(r"STALE node=client-1 type=ClusterLoadAssignment nonce=not-ours ")
