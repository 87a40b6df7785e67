"""Envoy's filter chain matching order (sidecar/listener/chain_match.py), without sockets."""

from __future__ import annotations

import ipaddress

from config import model
from sidecar.listener.chain_match import ConnectionFacts, ip_of, select_chain

NF = model.TcpProxy("t", cluster="c")


def chain(name: str, **match: object) -> model.FilterChain:
    for key in ("prefix_ranges", "source_prefix_ranges"):
        if key in match:
            match[key] = tuple(ipaddress.ip_network(n) for n in match[key])  # type: ignore[union-attr]
    if "source_ports" in match:
        match["source_ports"] = frozenset(match["source_ports"])  # type: ignore[arg-type]
    return model.FilterChain(name, NF, model.FilterChainMatch(**match) if match else None)  # type: ignore[arg-type]


def facts(dst: str = "10.0.0.1", port: int = 80, src: str = "10.1.0.1", sport: int = 5000,
          **extra: object) -> ConnectionFacts:
    return ConnectionFacts(ip_of(dst), port, ip_of(src), sport, **extra)  # type: ignore[arg-type]


def pick(chains: list[model.FilterChain], f: ConnectionFacts,
         default: model.FilterChain | None = None) -> str | None:
    c = select_chain(chains, default, f)
    return c.name if c else None


def test_destination_port_beats_everything_after_it():
    chains = [chain("port", destination_port=80), chain("prefix", prefix_ranges=["10.0.0.1/32"])]
    assert pick(chains, facts()) == "port"
    assert pick(chains, facts(port=81)) == "prefix"


def test_longest_destination_prefix_then_catch_all():
    chains = [chain("8", prefix_ranges=["10.0.0.0/8"]), chain("24", prefix_ranges=["10.0.0.0/24"]),
              chain("any")]
    assert pick(chains, facts()) == "24"
    assert pick(chains, facts(dst="10.9.0.1")) == "8"
    assert pick(chains, facts(dst="192.168.0.1")) == "any"
    assert pick(chains, facts(dst="fd00::1")) == "any"


def test_server_names_exact_then_longest_wildcard():
    chains = [chain("exact", server_names=("a.b.example.com",)),
              chain("b", server_names=("*.b.example.com",)),
              chain("wild", server_names=("*.example.com",)), chain("none")]
    assert pick(chains, facts(server_name="a.b.example.com")) == "exact"
    assert pick(chains, facts(server_name="x.b.example.com")) == "b"
    assert pick(chains, facts(server_name="x.example.com")) == "wild"
    assert pick(chains, facts(server_name="example.com")) == "none"
    assert pick(chains, facts()) == "none"


def test_no_backtracking_falls_to_the_default_chain():
    chains = [chain("sni-h2", server_names=("a.com",), application_protocols=("h2",)),
              chain("any")]
    default = chain("default")
    # a.com picks the first chain at the server name level; its ALPN then fails: no match
    assert pick(chains, facts(server_name="a.com", application_protocols=("http/1.1",)),
                default) == "default"
    assert pick(chains, facts(server_name="a.com", application_protocols=("http/1.1",))) is None
    assert pick(chains, facts(server_name="a.com", application_protocols=("x", "h2"))) == "sni-h2"


def test_transport_protocol_before_application_protocols():
    chains = [chain("raw", transport_protocol="raw_buffer"),
              chain("http", application_protocols=("http/1.1",))]
    assert pick(chains, facts(application_protocols=("http/1.1",))) == "raw"
    assert pick(chains, facts(transport_protocol="tls", application_protocols=("http/1.1",))) == "http"


def test_source_prefix_and_port_last():
    chains = [chain("src", source_prefix_ranges=["10.1.0.0/16"]),
              chain("src-port", source_prefix_ranges=["10.1.0.0/16"], source_ports=[5000]),
              chain("any")]
    assert pick(chains, facts()) == "src-port"
    assert pick(chains, facts(sport=6000)) == "src"
    assert pick(chains, facts(src="10.2.0.1")) == "any"


def test_ipv4_mapped_addresses_match_ipv4_prefixes():
    chains = [chain("v4", prefix_ranges=["10.0.0.0/8"]), chain("any")]
    assert pick(chains, facts(dst="::ffff:10.0.0.1")) == "v4"
