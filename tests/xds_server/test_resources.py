"""Loading the YAML/JSON resource files: merging, versions, and errors that name file and path."""

from __future__ import annotations

import json

import pytest

from config.errors import ConfigErrors
from sidecar.xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, diff, load_resources
from tests.xds_server.support import (eds_cluster, endpoints, rds_listener, route_config, to_cluster,
                                      write_yaml)


def errors_of(path) -> list[str]:
    with pytest.raises(ConfigErrors) as e:
        load_resources(path)
    return [str(err) for err in e.value.errors]


def test_folder_is_merged_in_name_order_and_sorted_by_name(tmp_path):
    write_yaml(tmp_path, "b.yaml", {"clusters": [eds_cluster("z"), eds_cluster("m")],
                                    "routes": [route_config("r", [to_cluster("/", "z")])]})
    (tmp_path / "a.json").write_text(json.dumps({"listeners": [rds_listener("l", 1, "r")],
                                                 "endpoints": [endpoints("z", 2)]}))
    (tmp_path / "notes.txt").write_text("not config")
    (tmp_path / ".b.yaml.swp").write_text("garbage: [")
    s = load_resources(tmp_path)
    assert list(s.of_type(CLUSTER)) == ["m", "z"]
    assert list(s.of_type(LISTENER)) == ["l"] and list(s.of_type(ROUTE)) == ["r"]
    assert list(s.of_type(ENDPOINT)) == ["z"]
    packed = s.of_type(CLUSTER)["z"].body
    assert packed.type_url == CLUSTER
    assert s.of_type(CLUSTER)["z"].eds_name == "z"


def test_versions_are_content_hashes(tmp_path):
    write_yaml(tmp_path, "c.yaml", {"clusters": [eds_cluster("a"), eds_cluster("b")]})
    one = load_resources(tmp_path)
    assert load_resources(tmp_path).of_type(CLUSTER)["a"].version == one.of_type(CLUSTER)["a"].version
    write_yaml(tmp_path, "c.yaml", {"clusters": [eds_cluster("a"), eds_cluster("b", connect_timeout="3s")]})
    two = load_resources(tmp_path)
    assert two.of_type(CLUSTER)["a"].version == one.of_type(CLUSTER)["a"].version
    assert two.of_type(CLUSTER)["b"].version != one.of_type(CLUSTER)["b"].version
    assert two.type_version(CLUSTER) != one.type_version(CLUSTER)
    assert two.type_version(LISTENER) == one.type_version(LISTENER)
    [change] = diff(one, two)
    assert (change.type_url, change.changed, change.added, change.removed) == (CLUSTER, ("b",), (), ())


def test_single_file_and_top_level_type(tmp_path):
    path = tmp_path / "all.yml"
    cluster = {"@type": CLUSTER, **eds_cluster("a")}
    write_yaml(tmp_path, "all.yml", {"clusters": [cluster], "routes": None})
    assert list(load_resources(path).of_type(CLUSTER)) == ["a"]


def test_every_error_names_the_file_and_the_path(tmp_path):
    bad_route = {"name": "r", "virtual_hosts": [{"name": "v", "domainz": ["*"]}]}
    write_yaml(tmp_path, "routes.yaml", {"routes": [bad_route]})
    write_yaml(tmp_path, "a.yaml", {"clusters": [eds_cluster("dup"), {"type": "EDS"},
                                                 {"name": "t", "type": "NOPE"}],
                                    "listenerz": []})
    write_yaml(tmp_path, "b.yaml", {"clusters": [eds_cluster("dup")], "endpoints": {"cluster_name": "x"},
                                    "listeners": [{"@type": CLUSTER, "name": "l"}]})
    write_yaml(tmp_path, "c.yaml", "clusters: [\n")
    write_yaml(tmp_path, "d.yaml", {"listeners": [{"name": "l", "filter_chains": [{"filters": [
        {"name": "x", "typed_config": {"@type": "type.googleapis.com/no.such.Type"}}]}]}]})
    errors = errors_of(tmp_path)
    assert "routes.yaml: routes[0].virtual_hosts[0].domainz: unknown field" in errors
    assert "a.yaml: clusters[1].name: required" in errors
    assert any(e.startswith("a.yaml: clusters[2].type: Invalid enum value NOPE") for e in errors)
    assert "a.yaml: listenerz: unknown key (expected one of clusters, endpoints, listeners, routes)" in errors
    assert "b.yaml: clusters[0].name: duplicate Cluster name 'dup' (also in a.yaml: clusters[0])" in errors
    assert "b.yaml: endpoints: expected a list, got dict" in errors
    assert f"b.yaml: listeners[0].@type: must be {LISTENER} under listeners" in errors
    assert any(e.startswith("c.yaml: invalid YAML") for e in errors)
    assert ("d.yaml: listeners[0].filter_chains[0].filters[0].typed_config.@type: unknown type URL "
            "'type.googleapis.com/no.such.Type': no such message in Envoy's API") in errors
    assert len(errors) == 9, errors


def test_missing_path(tmp_path):
    assert errors_of(tmp_path / "nope") == [f"{tmp_path / 'nope'}: no such file or directory"]
