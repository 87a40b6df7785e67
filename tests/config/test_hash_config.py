"""RING_HASH / MAGLEV cluster settings and route hash_policy: what is accepted, and the
errors (Envoy 1.40's messages, checked with `envoy --mode validate`) naming their paths."""

from __future__ import annotations

from typing import Any

from config import model
from tests.config.test_translate import errors_of, translate
from tests.support.proxy import bootstrap, http_listener, static_cluster, vhost

CLUSTER_PATH = "static_resources.clusters[0]"
ROUTE_PATH = ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
              ".route_config.virtual_hosts[0].routes[0].route")


def config(cluster: dict[str, Any] | None = None, hash_policy: list[dict[str, Any]] | None = None,
           endpoints_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": "backend"}
    if hash_policy is not None:
        action["hash_policy"] = hash_policy
    c = static_cluster("backend", 9000, **(cluster or {}))
    if endpoints_metadata is not None:
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] = endpoints_metadata
    return bootstrap([http_listener("web", [vhost([{"match": {"prefix": "/"}, "route": action}])],
                                    port=8080)], [c])


def cluster_of(cfg: dict[str, Any]) -> model.Cluster:
    return translate(cfg).clusters[0]


def action_of(cfg: dict[str, Any]) -> model.RouteAction:
    route = translate(cfg).listeners[0].filter_chain.filter.route_config.virtual_hosts[0].routes[0]
    assert isinstance(route.action, model.RouteAction)
    return route.action


def test_ring_hash_and_maglev_settings():
    c = cluster_of(config({"lb_policy": "RING_HASH"}))
    assert (c.lb_policy, c.ring_hash_minimum_ring_size, c.ring_hash_maximum_ring_size,
            c.ring_hash_function) == ("RING_HASH", 1024, 8388608, "XX_HASH")
    c = cluster_of(config({"lb_policy": "RING_HASH", "type": "STRICT_DNS", "ring_hash_lb_config": {
        "minimum_ring_size": 64, "maximum_ring_size": 128, "hash_function": "MURMUR_HASH_2"},
        "common_lb_config": {"consistent_hashing_lb_config": {"use_hostname_for_hashing": True}}}))
    assert (c.ring_hash_minimum_ring_size, c.ring_hash_maximum_ring_size, c.ring_hash_function,
            c.use_hostname_for_hashing) == (64, 128, "MURMUR_HASH_2", True)
    c = cluster_of(config({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 101}}))
    assert (c.lb_policy, c.maglev_table_size) == ("MAGLEV", 101)
    assert cluster_of(config({"lb_policy": "MAGLEV"})).maglev_table_size == 65537


def test_bad_ring_and_table_sizes_fail_at_load():
    assert errors_of(config({"lb_policy": "RING_HASH", "ring_hash_lb_config": {
        "minimum_ring_size": 20, "maximum_ring_size": 10}})) == [
        f"{CLUSTER_PATH}.ring_hash_lb_config: ring hash: minimum_ring_size (20) > "
        "maximum_ring_size (10)"]
    assert errors_of(config({"lb_policy": "RING_HASH", "ring_hash_lb_config": {
        "maximum_ring_size": 8388609}})) == [
        f"{CLUSTER_PATH}.ring_hash_lb_config.maximum_ring_size: value must be less than or "
        "equal to 8388608"]
    assert errors_of(config({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 8}})) == [
        f"{CLUSTER_PATH}.maglev_lb_config.table_size: "
        "The table size of maglev must be prime number"]
    # As Envoy: another lb_policy ignores these settings.
    assert cluster_of(config({"lb_policy": "ROUND_ROBIN", "maglev_lb_config": {"table_size": 8}}))


def test_balance_factor_hostname_and_lb_policy_checks():
    c = cluster_of(config({"lb_policy": "RING_HASH", "common_lb_config": {
        "consistent_hashing_lb_config": {"hash_balance_factor": 150}}}))
    assert c.hash_balance_factor == 150
    errors = errors_of(config({"lb_policy": "RING_HASH", "common_lb_config": {
        "consistent_hashing_lb_config": {"hash_balance_factor": 50}}}))
    assert errors == [f"{CLUSTER_PATH}.common_lb_config.consistent_hashing_lb_config."
                      "hash_balance_factor: value must be greater than or equal to 100"]
    # As Envoy: only STRICT_DNS hosts have hostnames to hash by.
    assert errors_of(config({"lb_policy": "MAGLEV", "common_lb_config": {
        "consistent_hashing_lb_config": {"use_hostname_for_hashing": True}}})) == [
        f"{CLUSTER_PATH}.common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing: "
        "Cannot use hostname for consistent hashing loadbalancing for cluster of type: "
        "'envoy.cluster.static'"]
    assert errors_of(config({"lb_policy": "LOAD_BALANCING_POLICY_CONFIG"}))[0].startswith(
        f"{CLUSTER_PATH}.lb_policy: only ROUND_ROBIN")


def test_endpoint_hash_key_metadata():
    c = cluster_of(config({"lb_policy": "MAGLEV"}, endpoints_metadata={
        "filter_metadata": {"envoy.lb": {"hash_key": "node-a"}}}))
    assert c.endpoints[0].hash_key == "node-a"
    c = cluster_of(config({"lb_policy": "MAGLEV"}, endpoints_metadata={
        "filter_metadata": {"envoy.lb": {"hash_key": 5}, "other": {"hash_key": "x"}}}))
    assert c.endpoints[0].hash_key == ""        # not a string: Envoy ignores it


def test_hash_policies_translate():
    action = action_of(config({"lb_policy": "RING_HASH"}, hash_policy=[
        {"header": {"header_name": "X-User", "regex_rewrite": {
            "pattern": {"regex": "^(.*)-x$"}, "substitution": "\\1"}}},
        {"cookie": {"name": "s", "ttl": "90.5s", "path": "/", "attributes": [
            {"name": "SameSite", "value": "Lax"}]}, "terminal": True},
        {"connection_properties": {"source_ip": True}},
        {"connection_properties": {"source_ip": False}},      # adds nothing, as in Envoy
        {"query_parameter": {"name": "u"}}]))
    kinds = [(p.kind, p.name, p.terminal) for p in action.hash_policy]
    assert kinds == [("header", "x-user", False), ("cookie", "s", True), ("source_ip", "", False),
                     ("query_parameter", "u", False)]
    header, cookie = action.hash_policy[:2]
    assert header.regex_rewrite is not None and header.regex_rewrite.substitution == "\\1"
    assert (cookie.cookie_ttl, cookie.cookie_path, cookie.cookie_attributes) == (
        90, "/", (("SameSite", "Lax"),))
    assert action_of(config()).hash_policy == ()


def test_bad_hash_policies_name_their_path():
    errors = errors_of(config(hash_policy=[
        {"filter_state": {"key": "k"}},
        {"header": {"header_name": ""}},
        {"terminal": True},
        {"query_parameter": {"name": ""}},
        {"cookie": {"name": ""}}]))
    assert errors == [
        f"{ROUTE_PATH}.hash_policy[0].filter_state: not supported by sidecar yet "
        "(see docs/compatibility.md)",
        f"{ROUTE_PATH}.hash_policy[1].header.header_name: value length must be at least 1 "
        "characters",
        f"{ROUTE_PATH}.hash_policy[2]: one of header, cookie, connection_properties, "
        "query_parameter or filter_state is required",
        f"{ROUTE_PATH}.hash_policy[3].query_parameter.name: value length must be at least 1 "
        "characters",
        f"{ROUTE_PATH}.hash_policy[4].cookie.name: value length must be at least 1 characters"]
