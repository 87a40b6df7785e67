"""proxy-init's flags: defaults, environment variables, validation errors (sidecar.proxy_init.options)."""

from __future__ import annotations

import ipaddress

import pytest

from sidecar.proxy_init.options import OptionError, parse


def test_defaults_are_istio_injectors() -> None:
    cfg = parse([], {})
    assert (cfg.proxy_port, cfg.inbound_capture_port, cfg.inbound_tunnel_port) == (15001, 15006, 15008)
    assert cfg.proxy_uids == ("1337",) and cfg.proxy_gids == ("1337",)
    assert cfg.inbound_ports_wildcard and cfg.inbound_ports == ()
    assert cfg.inbound_ports_exclude == (15090, 15021, 15020)
    assert cfg.outbound_cidrs_wildcard and cfg.outbound_cidrs == ()
    assert cfg.ipv6 == "auto" and not cfg.dry_run and not cfg.cleanup


def test_lists_drop_blank_entries() -> None:
    cfg = parse(["-b", "6000,7000,", "-i", " 10.0.0.0/8 , fd00::/8 ", "-k", "eth0,,eth1"], {})
    assert cfg.inbound_ports == (6000, 7000)
    assert cfg.outbound_cidrs == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert cfg.kube_virt_interfaces == ("eth0", "eth1")


def test_environment_then_flag() -> None:
    env = {"ISTIO_INBOUND_PORTS": "80", "ISTIO_SERVICE_CIDR": "10.0.0.0/8", "ENVOY_PORT": "16001",
           "PROXY_UID": "5", "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE": "22", "DRY_RUN": "true",
           "ISTIO_AGENT_DUAL_STACK": "1"}
    cfg = parse([], env)
    assert cfg.inbound_ports == (80,) and not cfg.inbound_ports_wildcard
    assert cfg.outbound_cidrs == (ipaddress.ip_network("10.0.0.0/8"),)
    assert cfg.proxy_port == 16001 and cfg.proxy_uids == ("5",) and cfg.proxy_gids == ("5",)
    assert cfg.outbound_ports_exclude == (22,) and cfg.dry_run and cfg.ipv6 == "on"
    cfg = parse(["-b", "*", "-p", "15001", "--ipv6", "off"], env)
    assert cfg.inbound_ports_wildcard and cfg.proxy_port == 15001 and cfg.ipv6 == "off"


def test_iptables_backend() -> None:
    assert parse([], {}).iptables_backend == "auto"
    assert parse([], {"IPTABLES_BACKEND": "legacy"}).iptables_backend == "legacy"
    assert parse(["--iptables-backend", "nft"], {"IPTABLES_BACKEND": "legacy"}).iptables_backend == "nft"
    with pytest.raises(OptionError, match="IPTABLES_BACKEND: 'xt' is not auto, nft or legacy"):
        parse([], {"IPTABLES_BACKEND": "xt"})


def test_cleanup_aliases() -> None:
    for flag in ("--cleanup", "--cleanup-only", "--clean"):
        assert parse([flag], {}).cleanup


@pytest.mark.parametrize("flags, message", [
    (["-m", "TPROXY"], "-m / --istio-inbound-interception-mode: TPROXY is not supported"),
    (["-m", "NAT"], "'NAT' is not a mode"),
    (["-p", "http"], "-p / --envoy-port: 'http' is not a port number"),
    (["-z", "70000"], "-z / --inbound-capture-port: 70000 is not a port number"),
    (["-d", "22,x"], "-d / --istio-local-exclude-ports: 'x' is not a port number"),
    (["-o", "*"], "-o / --istio-local-outbound-ports-exclude: '*' is only allowed for -b"),
    (["-i", "10.0.0.0/33"], "-i / --istio-service-cidr: '10.0.0.0/33' is not a CIDR"),
    (["-i", "10.0.0.0/8,*"], "'*' must be the whole value"),
    (["-x", "*"], "-x / --istio-service-exclude-cidr: '*' is not allowed"),
    (["-u", ""], "-u / --proxy-uid: at least one UID"),
    (["-u", "1337;rm"], "-u / --proxy-uid: '1337;rm' is not a user / group id"),
    (["-c", "a/b"], "-c / --istio-exclude-interfaces: 'a/b' is not an interface name"),
    (["--host-ipv4-loopback-cidr", "10.0.0.0/8"], "is not an IPv4 loopback range"),
    (["--redirect-dns"], "--redirect-dns: not supported by proxy-init: DNS capture"),
    (["--capture-all-dns=true"], "--capture-all-dns: not supported"),
    (["-t", "1337"], "--istio-inbound-tproxy-mark: not supported by proxy-init: TPROXY"),
    (["--drop-invalid"], "--drop-invalid: not supported"),
    (["--network-namespace", "/var/run/netns/x"], "--network-namespace: not supported"),
])
def test_bad_values_name_the_flag(flags: list[str], message: str) -> None:
    with pytest.raises(OptionError) as info:
        parse(flags, {})
    assert message in str(info.value)


def test_unknown_flag_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        parse(["--no-such-flag"], {})
    assert info.value.code == 2
