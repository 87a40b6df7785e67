"""sidecar/bootstrap_gen.py: environment and flags -> settings -> bootstrap dict, and the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from sidecar import bootstrap_gen
from sidecar.bootstrap_gen import BootstrapError, build_bootstrap, parse_args, settings_from

POD = {"POD_NAME": "reviews-v1-abc", "POD_NAMESPACE": "shop", "INSTANCE_IP": "10.4.0.7"}


def settings(env: dict[str, str], *flags: str) -> bootstrap_gen.Settings:
    return settings_from(env, parse_args(list(flags)))


def generate(env: dict[str, str], *flags: str) -> dict[str, Any]:
    return build_bootstrap(settings(env, *flags))


def cluster(b: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in b["static_resources"]["clusters"] if c["name"] == name)


def listener(b: dict[str, Any], name: str) -> dict[str, Any]:
    return next(lst for lst in b["static_resources"]["listeners"] if lst["name"] == name)


def endpoint(c: dict[str, Any]) -> dict[str, Any]:
    return c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]


def route(lst: dict[str, Any]) -> dict[str, Any]:
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["route_config"]["virtual_hosts"][0]["routes"][0]


# ---- node ---------------------------------------------------------------------------------------

def test_node_id_is_istios_format() -> None:
    s = settings(POD)
    assert s.node_id == "sidecar~10.4.0.7~reviews-v1-abc.shop~shop.svc.cluster.local"


def test_node_id_router_type_domain_suffix_and_override() -> None:
    env = dict(POD, DOMAIN_SUFFIX="corp.example")
    assert settings(env, "--proxy-type", "router").node_id == \
        "router~10.4.0.7~reviews-v1-abc.shop~shop.svc.corp.example"
    assert settings(env, "--node-id", "n1").node_id == "n1"


def test_node_id_first_of_several_instance_ips() -> None:
    s = settings(dict(POD, INSTANCE_IP="10.4.0.7,fd00::7"))
    assert s.node_id.startswith("sidecar~10.4.0.7~")
    assert s.metadata["INSTANCE_IPS"] == "10.4.0.7,fd00::7"
    assert not s.ipv6        # dual stack: IPv4 listeners, as Istio without its dual-stack feature


def test_defaults_without_pod_variables() -> None:
    s = settings({})
    assert s.metadata["NAMESPACE"] == "default"
    parts = s.node_id.split("~")
    assert parts[0] == "sidecar" and parts[3] == "default.svc.cluster.local"
    assert parts[1]                             # an address of this host
    assert s.cluster == "istio-proxy.default"


def test_cluster_from_app_label_then_workload_then_namespace() -> None:
    labels = dict(POD, ISTIO_METAJSON_LABELS='{"app": "reviews", "version": "v1"}')
    assert settings(labels).cluster == "reviews.shop"
    workload = dict(POD, ISTIO_META_WORKLOAD_NAME="reviews-v1")
    assert settings(workload).cluster == "reviews-v1.shop"
    assert settings(POD).cluster == "istio-proxy.shop"
    assert settings(labels, "--service-cluster", "explicit").cluster == "explicit"
    assert settings(dict(labels, PROXY_CONFIG="serviceCluster: from-proxy-config")).cluster == \
        "from-proxy-config"


def test_metadata_from_istio_variables() -> None:
    env = dict(POD, ISTIO_META_MESH_ID="mesh1", ISTIO_META_CLUSTER_ID="c1", SERVICE_ACCOUNT="sa",
               ISTIO_METAJSON_LABELS='{"app": "reviews"}',
               ISTIO_METAJSON_ANNOTATIONS='{"ANNOTATIONS": {"a": "b"}}', UNRELATED="x")
    meta = settings(env, "--metadata", "EXTRA=1").metadata
    assert meta == {"MESH_ID": "mesh1", "CLUSTER_ID": "c1", "LABELS": {"app": "reviews"},
                    "ANNOTATIONS": {"a": "b"}, "NAMESPACE": "shop", "NAME": "reviews-v1-abc",
                    "INSTANCE_IPS": "10.4.0.7", "SERVICE_ACCOUNT": "sa", "EXTRA": "1"}


def test_explicit_istio_meta_wins_over_derived_values() -> None:
    meta = settings(dict(POD, ISTIO_META_NAMESPACE="other")).metadata
    assert meta["NAMESPACE"] == "other"


def test_locality_from_istio_locality_label() -> None:
    env = dict(POD, ISTIO_METAJSON_LABELS='{"istio-locality": "us-east1.us-east1-b.rack7"}')
    b = generate(env)
    assert b["node"]["locality"] == {"region": "us-east1", "zone": "us-east1-b", "sub_zone": "rack7"}
    assert "locality" not in generate(POD)["node"]


# ---- xDS ----------------------------------------------------------------------------------------

def test_xds_address_precedence_flag_env_proxy_config_default() -> None:
    env = dict(POD, XDS_ADDRESS="10.0.0.1:18000", PROXY_CONFIG='{"discoveryAddress": "istiod:15010"}')
    assert (settings(env, "--xds-address", "10.9.9.9:1").xds_host) == "10.9.9.9"
    s = settings(env)
    assert (s.xds_host, s.xds_port) == ("10.0.0.1", 18000)
    s = settings(dict(POD, PROXY_CONFIG='{"discoveryAddress": "istiod:15010"}'))
    assert (s.xds_host, s.xds_port) == ("istiod", 15010)
    s = settings(POD)
    assert (s.xds_host, s.xds_port) == ("istiod.istio-system.svc", 15010)


def test_xds_cluster_static_for_an_ip_strict_dns_for_a_name() -> None:
    b = generate(dict(POD, XDS_ADDRESS="10.0.0.1:18000"))
    xds = cluster(b, "xds-grpc")
    assert xds["type"] == "STATIC"
    assert endpoint(xds) == {"address": "10.0.0.1", "port_value": 18000}
    assert "http2_protocol_options" in json.dumps(xds["typed_extension_protocol_options"])
    named = cluster(generate(dict(POD, XDS_ADDRESS="xds:18000")), "xds-grpc")
    assert (named["type"], named["dns_lookup_family"]) == ("STRICT_DNS", "V4_ONLY")
    named = cluster(generate(dict(POD, INSTANCE_IP="fd00::7", XDS_ADDRESS="xds:18000")), "xds-grpc")
    assert named["dns_lookup_family"] == "V6_ONLY"
    assert "dns_lookup_family" not in xds
    v6 = cluster(generate(dict(POD, XDS_ADDRESS="[fd00::1]:15010")), "xds-grpc")
    assert v6["type"] == "STATIC" and endpoint(v6)["address"] == "fd00::1"


def test_ads_delta_by_default_sotw_by_flag_or_env() -> None:
    def api(b: dict[str, Any]) -> str:
        return str(b["dynamic_resources"]["ads_config"]["api_type"])
    assert api(generate(POD)) == "DELTA_GRPC"
    assert api(generate(POD, "--xds-type", "sotw")) == "GRPC"
    assert api(generate(dict(POD, ISTIO_DELTA_XDS="false"))) == "GRPC"
    assert api(generate(dict(POD, ISTIO_DELTA_XDS="false"), "--xds-type", "delta")) == "DELTA_GRPC"


def test_dynamic_resources_as_istio() -> None:
    dr = generate(POD)["dynamic_resources"]
    assert dr["ads_config"]["grpc_services"] == [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
    assert dr["ads_config"]["set_node_on_first_message_only"] is True
    for source in ("lds_config", "cds_config"):
        assert dr[source] == {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}


# ---- admin, metrics and readiness ---------------------------------------------------------------

def test_admin_prometheus_and_readiness_ports() -> None:
    b = generate(POD)
    assert b["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}
    assert endpoint(cluster(b, "prometheus_stats")) == {"address": "127.0.0.1", "port_value": 15000}
    prom = listener(b, "prometheus_stats")
    assert prom["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 15090}
    assert route(prom) == {"match": {"prefix": "/stats/prometheus"},
                           "route": {"cluster": "prometheus_stats"}}
    status = listener(b, "status")
    assert status["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 15021}
    assert route(status) == {"match": {"prefix": "/healthz/ready"},
                             "route": {"cluster": "prometheus_stats", "prefix_rewrite": "/ready"}}


def test_ports_from_flags_and_proxy_config() -> None:
    b = generate(POD, "--admin-port", "9901", "--prometheus-port", "9090", "--status-port", "9021")
    assert b["admin"]["address"]["socket_address"]["port_value"] == 9901
    assert endpoint(cluster(b, "prometheus_stats"))["port_value"] == 9901
    assert listener(b, "prometheus_stats")["address"]["socket_address"]["port_value"] == 9090
    assert listener(b, "status")["address"]["socket_address"]["port_value"] == 9021
    b = generate(dict(POD, PROXY_CONFIG="proxyAdminPort: 9902"))
    assert b["admin"]["address"]["socket_address"]["port_value"] == 9902


def test_ipv6_only_pod_listens_on_ipv6() -> None:
    b = generate(dict(POD, INSTANCE_IP="fd00::7"))
    assert b["admin"]["address"]["socket_address"]["address"] == "::1"
    assert endpoint(cluster(b, "prometheus_stats"))["address"] == "::1"
    assert listener(b, "status")["address"]["socket_address"]["address"] == "::"


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("env, flags, message", [
    ({"XDS_ADDRESS": "nohostport"}, [], "XDS_ADDRESS: 'nohostport' is not HOST:PORT"),
    ({"XDS_ADDRESS": "h:99999"}, [], "XDS_ADDRESS"),
    ({}, ["--xds-address", "h:"], "--xds-address"),
    ({"PROXY_CONFIG": "discoveryAddress: [1"}, [], "PROXY_CONFIG: not YAML"),
    ({"PROXY_CONFIG": "- a list"}, [], "PROXY_CONFIG: must be a mapping"),
    ({"PROXY_CONFIG": "{proxyAdminPort: x}"}, [], "PROXY_CONFIG.proxyAdminPort"),
    ({"ISTIO_METAJSON_LABELS": "{bad"}, [], "ISTIO_METAJSON_LABELS: not JSON"),
    ({"ISTIO_METAJSON_LABELS": '["a"]'}, [], "ISTIO_METAJSON_LABELS: must be a JSON object"),
    ({"ISTIO_METAJSON_LABELS": '{"a": 1}'}, [], "label values must be strings"),
    ({"INSTANCE_IP": "not-an-ip"}, [], "INSTANCE_IP: 'not-an-ip' is not an IP address"),
    ({"ISTIO_DELTA_XDS": "maybe"}, [], "ISTIO_DELTA_XDS"),
    ({}, ["--metadata", "novalue"], "--metadata"),
])
def test_bad_input_names_the_variable(env: dict[str, str], flags: list[str], message: str) -> None:
    with pytest.raises(BootstrapError, match=message.replace("[", r"\[").replace("{", r"\{")):
        settings(dict(POD, **env), *flags)


# ---- command line -------------------------------------------------------------------------------

def test_cli_writes_yaml_to_stdout(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    for k, v in POD.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("XDS_ADDRESS", "127.0.0.1:18000")
    from sidecar.__main__ import main
    assert main(["bootstrap"]) == 0
    out = capsys.readouterr().out
    assert "&id" not in out                     # no YAML anchors
    assert yaml.safe_load(out) == build_bootstrap(
        settings(dict(POD, XDS_ADDRESS="127.0.0.1:18000")))


def test_cli_writes_json_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("INSTANCE_IP", "10.0.0.1")
    out = tmp_path / "envoy.json"
    assert bootstrap_gen.main(["-o", str(out)]) == 0
    data = json.loads(out.read_text())          # .json picks JSON
    assert data["node"]["id"].startswith("sidecar~10.0.0.1~")
    yml = tmp_path / "envoy.yaml"
    assert bootstrap_gen.main(["-o", str(yml), "--format", "json"]) == 0
    assert json.loads(yml.read_text()) == data


def test_cli_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDS_ADDRESS", "bad")
    assert bootstrap_gen.main([]) == 1
    assert "error: XDS_ADDRESS: 'bad' is not HOST:PORT" in capsys.readouterr().err
    monkeypatch.delenv("XDS_ADDRESS")
    assert bootstrap_gen.main(["--", "-l", "debug"]) == 2
    assert "need --run" in capsys.readouterr().err
    assert bootstrap_gen.main(["--status-port", "70000"]) == 2
    assert "--status-port: 70000" in capsys.readouterr().err
    assert bootstrap_gen.main(["--initial-fetch-timeout", "15"]) == 2
    assert "--initial-fetch-timeout: '15'" in capsys.readouterr().err


def test_cli_initial_fetch_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    assert bootstrap_gen.main(["--initial-fetch-timeout", "1.5s"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["dynamic_resources"]["lds_config"]["initial_fetch_timeout"] == "1.5s"
