"""Load assignment priorities, localities, locality weights and policy -> model; what is rejected."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import any_pb2

from config import model
from sidecar.xds.resources import ENDPOINT, translate as translate_resource
from tests.config.test_translate import errors_of, translate
from tests.support.proxy import address, bootstrap, http_listener, vhost

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from google.protobuf import json_format


def config(levels: list[dict[str, Any]], policy: dict[str, Any] | None = None,
           **cluster: Any) -> dict:
    la: dict[str, Any] = {"cluster_name": "backend", "endpoints": levels}
    if policy is not None:
        la["policy"] = policy
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
    return bootstrap([http_listener("web", [vhost(routes)], port=8080)],
                     [{"name": "backend", "type": "STATIC", "connect_timeout": "1s",
                       "load_assignment": la, **cluster}])


def lle(*ports: int, **extra: Any) -> dict[str, Any]:
    return {"lb_endpoints": [{"endpoint": {"address": address(p)}} for p in ports], **extra}


A = {"region": "r", "zone": "a"}
B = {"region": "r", "zone": "b", "sub_zone": "s"}
LA = model.Locality("r", "a")
LB = model.Locality("r", "b", "s")


def test_priority_locality_and_locality_weight_reach_the_endpoints():
    snap = translate(config([lle(1, locality=A, load_balancing_weight=2),
                             lle(2, locality=B, priority=1, load_balancing_weight=5)],
                            common_lb_config={"locality_weighted_lb_config": {}}))
    c = snap.clusters[0]
    assert c.locality_weighted_lb
    e1, e2 = c.endpoints
    assert (e1.priority, e1.locality, e1.locality_weight) == (0, LA, 2)
    assert (e2.priority, e2.locality, e2.locality_weight) == (1, LB, 5)
    assert e1.policy == model.AssignmentPolicy(140, False)


def test_locality_weight_needs_a_locality_and_the_last_one_of_a_locality_wins():
    snap = translate(config([lle(1, load_balancing_weight=4),              # no locality: none
                             lle(2, locality=A, load_balancing_weight=1),
                             lle(3, locality=A, load_balancing_weight=3),  # same locality: wins
                             lle(4, locality=A, priority=1)]))             # other priority
    weights = [e.locality_weight for e in snap.clusters[0].endpoints]
    assert weights == [0, 3, 3, 0]
    assert not snap.clusters[0].locality_weighted_lb


def test_policy_overprovisioning_factor_and_weighted_priority_health():
    snap = translate(config([lle(1)], {"overprovisioning_factor": 100,
                                       "weighted_priority_health": True}))
    assert snap.clusters[0].endpoints[0].policy == model.AssignmentPolicy(100, True)


def test_eds_assignment_carries_its_policy_and_localities():
    la = json_format.ParseDict({
        "cluster_name": "svc",
        "endpoints": [{"locality": A, "load_balancing_weight": 7, "priority": 2,
                       "lb_endpoints": [{"endpoint": {"address": address(80, "10.0.0.1")}}]}],
        "policy": {"overprovisioning_factor": 200}}, ClusterLoadAssignment())
    packed = any_pb2.Any()
    packed.Pack(la)
    (e,) = translate_resource(ENDPOINT, "svc", packed)
    assert (e.priority, e.locality, e.locality_weight) == (2, LA, 7)
    assert e.policy.overprovisioning_factor == 200


P = "static_resources.clusters[0]"


@pytest.mark.parametrize("cfg, error", [
    (config([lle(1)], {"overprovisioning_factor": 0}),
     f"{P}.load_assignment.policy.overprovisioning_factor: value must be greater than 0"),
    (config([lle(1)], {"drop_overloads": [{"category": "x", "drop_percentage": {"numerator": 5}}]}),
     f"{P}.load_assignment.policy.drop_overloads: not supported by sidecar yet "
     "(see docs/compatibility.md)"),
    (config([lle(1, locality=A, load_balancing_weight=0)]),
     f"{P}.load_assignment.endpoints[0].load_balancing_weight: value must be greater than or "
     "equal to 1"),
    (config([lle(1, priority=129)]),
     f"{P}.load_assignment.endpoints[0].priority: value must be less than or equal to 128"),
    (config([lle(1)], common_lb_config={"zone_aware_lb_config": {"min_cluster_size": 3}}),
     f"{P}.common_lb_config.zone_aware_lb_config: not supported by sidecar yet "
     "(see docs/compatibility.md)"),
    (config([lle(1)], lb_policy="MAGLEV", common_lb_config={"locality_weighted_lb_config": {}}),
     f"{P}.common_lb_config.locality_weighted_lb_config: not supported with lb_policy MAGLEV "
     "yet (see docs/compatibility.md)"),
])
def test_unsupported_or_invalid_fields_fail_at_load_with_their_path(cfg, error):
    assert error in errors_of(cfg)
