"""State of the World ADS, driven by a grpcio client: names, ACK/NACK, stale nonces, pushes."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from google.rpc.status_pb2 import Status

from tests.xds_server.support import (CLUSTER, ENDPOINT, AdsClient, XdsServer, eds_cluster, endpoints,
                                      names, write_yaml)


@pytest.fixture
def server(tmp_path):
    write_yaml(tmp_path, "clusters.yaml", {"clusters": [eds_cluster("b"), eds_cluster("a")]})
    write_yaml(tmp_path, "endpoints.yaml",
               {"endpoints": [endpoints(n, 9000 + i) for i, n in enumerate("abc")]})
    with XdsServer(tmp_path) as s:
        yield s


def request(type_url, resource_names=(), version="", nonce="", error=None, node="client-1"):
    req = DiscoveryRequest(type_url=type_url, resource_names=list(resource_names),
                           version_info=version, response_nonce=nonce)
    if node:
        req.node.id = node
    if error:
        req.error_detail.CopyFrom(Status(code=3, message=error))
    return req


def test_eds_by_name_gets_only_the_named_ones_and_acks_get_no_resend(server, tmp_path):
    with AdsClient(server.port) as ads:
        ads.send(request(ENDPOINT, ["b"]))
        first = ads.recv()
        assert first.type_url == ENDPOINT
        assert names(first) == ["b"]
        assert first.version_info and first.nonce

        ads.send(request(ENDPOINT, ["b"], version=first.version_info, nonce=first.nonce, node=""))
        ads.expect_silence()            # the client has this set: nothing to resend
        server.wait_for(rf"ACK node=client-1 type=ClusterLoadAssignment version={first.version_info} "
                        rf"nonce={first.nonce}\b")

        # A new subscription (same version, more names) is answered, sorted by name.
        ads.send(request(ENDPOINT, ["c", "a", "b"], version=first.version_info, nonce=first.nonce))
        wider = ads.recv()
        assert names(wider) == ["a", "b", "c"]
        assert wider.nonce != first.nonce

        # A file change pushes only to what is subscribed, with a new version.
        write_yaml(tmp_path, "endpoints.yaml",
                   {"endpoints": [endpoints("a", 9000), endpoints("b", 9999), endpoints("c", 9002)]})
        pushed = ads.recv()
        assert names(pushed) == ["a", "b", "c"]
        assert pushed.version_info != wider.version_info


def test_stale_nonce_is_ignored(server):
    with AdsClient(server.port) as ads:
        ads.send(request(ENDPOINT, ["a"]))
        first = ads.recv()
        ads.send(request(ENDPOINT, ["a", "b"], version=first.version_info, nonce=first.nonce))
        second = ads.recv()
        assert names(second) == ["a", "b"]

        mark = server.mark()
        ads.send(request(ENDPOINT, ["c"], version=first.version_info, nonce=first.nonce))
        ads.expect_silence()
        server.wait_for(rf"STALE node=client-1 type=ClusterLoadAssignment .*nonce={first.nonce} "
                        rf"latest={second.nonce} \(ignored\)", since=mark)

        # The same change with the current nonce is honoured.
        ads.send(request(ENDPOINT, ["c"], version=second.version_info, nonce=second.nonce))
        assert names(ads.recv()) == ["c"]


def test_nack_is_logged_and_not_answered(server):
    with AdsClient(server.port) as ads:
        ads.send(request(CLUSTER))      # CDS with no names: the wildcard
        first = ads.recv()
        assert names(first) == ["a", "b"]
        ads.send(request(CLUSTER, version="", nonce=first.nonce, error='clusters[0]: "a" is bad\nreally'))
        ads.expect_silence()
        server.wait_for(rf"NACK node=client-1 type=Cluster version=- rejected={first.version_info} "
                        rf"nonce={first.nonce} error=\"clusters\[0\]: \\\"a\\\" is bad\\nreally\"")


def test_reconnect_and_rerequest_are_answered(server):
    """A new stream always gets the set; so does a second request on an already ACKed nonce
    (Envoy sends one when it re-creates a subscription and waits for the answer)."""
    with AdsClient(server.port) as ads:
        ads.send(request(CLUSTER, ["*"]))
        first = ads.recv()
        ads.send(request(CLUSTER, ["*"], version=first.version_info, nonce=first.nonce))
        ads.expect_silence(0.3)
        ads.send(request(CLUSTER, ["*"], version=first.version_info, nonce=first.nonce))
        again = ads.recv()
        assert names(again) == ["a", "b"] and again.version_info == first.version_info
    with AdsClient(server.port) as ads:
        ads.send(request(CLUSTER, version=first.version_info))
        assert ads.recv().version_info == first.version_info
