"""proxy-init's rules in real network namespaces: what is captured, where it lands, what is not.

The app namespace runs proxy-init; a capture server as UID/GID 1337 stands in for the sidecar on
15001 (outbound) and 15006 (inbound) and reports the original destination (SO_ORIGINAL_DST). A
reply named "proxy" means the connection was captured; "app" / "remote" means it went straight
to the server it was addressed to.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.proxy_init.helpers import PROXY_UID, connect, names, nat_rules, proxy_init
from tests.support.netns import NetnsPair

REMOTE4, REMOTE6 = "10.77.0.2", "[fd77::2]"
APP4, APP6 = "10.77.0.1", "[fd77::1]"


def test_default_flags_capture_outbound_and_inbound_both_families(captured: NetnsPair) -> None:
    net = captured
    proxy_init(net.app)         # defaults; IPv6 found on the veth (auto)
    assert "-A OUTPUT -j ISTIO_OUTPUT" in nat_rules(net.app)
    assert "-A OUTPUT -j ISTIO_OUTPUT" in nat_rules(net.app, "ip6tables")

    out = connect(net.app, f"{REMOTE4}:8080", f"{REMOTE6}:8081")
    assert names(out) == ["proxy", "proxy"]
    assert [r["local"].rsplit(":", 1)[1] for r in out] == ["15001", "15001"]
    assert [r["orig"] for r in out] == [f"{REMOTE4}:8080", f"{REMOTE6}:8081"]
    assert out[0]["uid"] == PROXY_UID

    inbound = connect(net.remote, f"{APP4}:9000", f"{APP6}:9001")
    assert names(inbound) == ["proxy", "proxy"]
    # REDIRECT lands on the incoming interface's address.
    assert [r["local"] for r in inbound] == [f"{APP4}:15006", f"{APP6}:15006"]
    assert [r["orig"] for r in inbound] == [f"{APP4}:9000", f"{APP6}:9001"]


def test_default_excluded_inbound_ports_reach_the_app(captured: NetnsPair) -> None:
    proxy_init(captured.app)    # -d 15090,15021,15020 by default (Istio's injector)
    assert names(connect(captured.remote, f"{APP4}:15021", f"{APP6}:15021", f"{APP4}:9000")) == \
        ["app", "app", "proxy"]


def test_localhost_is_never_captured(captured: NetnsPair) -> None:
    proxy_init(captured.app)
    assert names(connect(captured.app, "127.0.0.1:9000", "[::1]:9000")) == ["app", "app"]
    assert names(connect(captured.app, "127.0.0.1:9000", user=PROXY_UID)) == ["app"]


def test_proxy_uid_and_gid_bypass_capture(captured: NetnsPair) -> None:
    net = captured
    proxy_init(net.app)
    assert names(connect(net.app, f"{REMOTE4}:8080", f"{REMOTE6}:8080", user=PROXY_UID,
                         group=PROXY_UID)) == ["remote", "remote"]
    # The GID alone is enough (-g), the UID alone too (-u).
    assert names(connect(net.app, f"{REMOTE4}:8080", user=4242, group=PROXY_UID)) == ["remote"]
    assert names(connect(net.app, f"{REMOTE4}:8080", user=PROXY_UID, group=4242)) == ["remote"]
    # Any other user is captured: the match is the proxy's identity, not "not root".
    assert names(connect(net.app, f"{REMOTE4}:8080", f"{REMOTE6}:8080", user=4242,
                         group=4242)) == ["proxy", "proxy"]


def test_custom_proxy_uid(captured: NetnsPair) -> None:
    proxy_init(captured.app, "-u", "4242", "-g", "4243")
    assert names(connect(captured.app, f"{REMOTE4}:8080", user=4242, group=4242)) == ["remote"]
    assert names(connect(captured.app, f"{REMOTE4}:8080", user=4000, group=4243)) == ["remote"]
    # 1337 is no longer special.
    assert names(connect(captured.app, f"{REMOTE4}:8080", user=PROXY_UID,
                         group=PROXY_UID)) == ["proxy"]


def test_loopback_to_own_pod_ip(captured: NetnsPair) -> None:
    net = captured
    proxy_init(net.app)
    # The app calling its own pod address goes straight to itself...
    assert names(connect(net.app, f"{APP4}:9000", f"{APP6}:9000")) == ["app", "app"]
    # ...the proxy calling it (app -> proxy -> proxy -> app) goes to the inbound listener.
    out = connect(net.app, f"{APP4}:9000", f"{APP6}:9000", user=PROXY_UID, group=PROXY_UID)
    assert names(out) == ["proxy", "proxy"]
    assert [r["local"].rsplit(":", 1)[1] for r in out] == ["15006", "15006"]
    assert [r["orig"] for r in out] == [f"{APP4}:9000", f"{APP6}:9000"]


def test_inbound_passthrough_source_is_not_captured(captured: NetnsPair) -> None:
    net = captured
    proxy_init(net.app)     # also adds ::6 to lo for the IPv6 passthrough source
    for source, target in (("127.0.0.6", f"{APP4}:9000"), ("::6", f"{APP6}:9000")):
        out = connect(net.app, target, user=PROXY_UID, group=PROXY_UID, source=source)
        assert names(out) == ["app"], (source, out)
        assert out[0]["peer"].startswith(f"[{source}]" if ":" in source else source)


def test_excluded_outbound_ports(captured: NetnsPair) -> None:
    proxy_init(captured.app, "-o", "8081")
    assert names(connect(captured.app, f"{REMOTE4}:8081", f"{REMOTE6}:8081",
                         f"{REMOTE4}:8080", f"{REMOTE6}:8080")) == ["remote", "remote", "proxy", "proxy"]


def test_excluded_outbound_cidrs(captured: NetnsPair) -> None:
    proxy_init(captured.app, "-x", "10.77.0.2/32")
    assert names(connect(captured.app, f"{REMOTE4}:8080", f"{REMOTE6}:8080")) == ["remote", "proxy"]
    proxy_init(captured.app, "-x", "10.77.0.0/24,fd77::2/128")
    assert names(connect(captured.app, f"{REMOTE4}:8080", f"{REMOTE6}:8080")) == ["remote", "remote"]


def test_included_outbound_cidrs_and_ports(captured: NetnsPair) -> None:
    net = captured
    proxy_init(net.app, "-i", "10.99.0.0/16")
    assert names(connect(net.app, f"{REMOTE4}:8080", f"{REMOTE6}:8080")) == ["remote", "remote"]
    proxy_init(net.app, "-i", "10.77.0.0/24")
    assert names(connect(net.app, f"{REMOTE4}:8080", f"{REMOTE6}:8080")) == ["proxy", "remote"]
    # -q captures a port whatever the destination.
    proxy_init(net.app, "-i", "", "-q", "8081")
    assert names(connect(net.app, f"{REMOTE4}:8080", f"{REMOTE4}:8081", f"{REMOTE6}:8081")) == \
        ["remote", "proxy", "proxy"]


def test_inbound_port_selection(captured: NetnsPair) -> None:
    net = captured
    proxy_init(net.app, "-b", "9000")
    assert names(connect(net.remote, f"{APP4}:9000", f"{APP6}:9000", f"{APP4}:9001")) == \
        ["proxy", "proxy", "app"]
    proxy_init(net.app, "-b", "*", "-d", "9001")
    assert names(connect(net.remote, f"{APP4}:9000", f"{APP4}:9001", f"{APP6}:9001")) == \
        ["proxy", "app", "app"]
    proxy_init(net.app, "-b", "")
    assert names(connect(net.remote, f"{APP4}:9000", f"{APP6}:9000")) == ["app", "app"]


def test_excluded_interface(captured: NetnsPair) -> None:
    net = captured
    proxy_init(net.app, "-c", net.app_if)
    assert names(connect(net.app, f"{REMOTE4}:8080", f"{REMOTE6}:8080")) == ["remote", "remote"]
    assert names(connect(net.remote, f"{APP4}:9000", f"{APP6}:9000")) == ["app", "app"]


def test_ipv6_off_leaves_ipv6_alone(captured: NetnsPair) -> None:
    proxy_init(captured.app, "--ipv6", "off")
    assert "ISTIO" not in nat_rules(captured.app, "ip6tables")
    assert names(connect(captured.app, f"{REMOTE4}:8080", f"{REMOTE6}:8080")) == ["proxy", "remote"]


def test_rerun_reconciles_instead_of_doubling(captured: NetnsPair) -> None:
    net = captured
    proxy_init(net.app)
    proxy_init(net.app)
    for tool in ("iptables", "ip6tables"):
        rules = nat_rules(net.app, tool)
        assert rules.count("-j ISTIO_OUTPUT") == 1, rules
        assert rules.count("-j ISTIO_INBOUND") == 1, rules
    # A re-run with other flags replaces the rules.
    proxy_init(net.app, "-o", "8080")
    assert names(connect(net.app, f"{REMOTE4}:8080", f"{REMOTE4}:8081")) == ["remote", "proxy"]


def test_cleanup_removes_every_rule_and_keeps_the_others(captured: NetnsPair) -> None:
    net = captured
    # Rules that are not ours, before and around ours: --noflush must keep them all.
    for tool, addr in (("iptables", "10.66.0.1"), ("ip6tables", "fd66::1")):
        net.app.run([tool, "-t", "nat", "-A", "POSTROUTING", "-d", addr, "-j", "RETURN"])
        net.app.run([tool, "-t", "nat", "-A", "OUTPUT", "-d", addr, "-j", "RETURN"])
        net.app.run([tool, "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "7",
                     "-j", "ACCEPT"])
    proxy_init(net.app, "-c", "dummy0", "-k", "dummy1")
    for tool, addr in (("iptables", "10.66.0.1/32"), ("ip6tables", "fd66::1/128")):
        saved = net.app.run([f"{tool}-save"]).stdout
        assert "ISTIO_OUTPUT" in saved and "-A PREROUTING -i dummy0 -j RETURN" in saved
        assert f"-A POSTROUTING -d {addr} -j RETURN" in saved
        assert f"-A OUTPUT -d {addr} -j RETURN" in saved
        assert "--dport 7 -j ACCEPT" in saved
    assert names(connect(net.app, f"{REMOTE4}:8080")) == ["proxy"]

    proxy_init(net.app, "--cleanup", "-c", "dummy0", "-k", "dummy1")
    for tool, addr in (("iptables", "10.66.0.1/32"), ("ip6tables", "fd66::1/128")):
        saved = net.app.run([f"{tool}-save"]).stdout
        assert "ISTIO" not in saved, saved
        assert "dummy" not in saved, saved
        assert f"-A POSTROUTING -d {addr} -j RETURN" in saved
        assert f"-A OUTPUT -d {addr} -j RETURN" in saved
        assert "--dport 7 -j ACCEPT" in saved
    assert names(connect(net.app, f"{REMOTE4}:8080", f"{REMOTE6}:8080")) == ["remote", "remote"]
    assert names(connect(net.remote, f"{APP4}:9000", f"{APP6}:9000")) == ["app", "app"]
    # Cleaning again is a no-op, not an error.
    proxy_init(net.app, "--cleanup")


def test_dry_run_changes_nothing(net: NetnsPair) -> None:
    out = proxy_init(net.app, "-n", "--ipv6", "on")
    assert out.stdout.count("* nat\n") == 2
    assert "-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN" in out.stdout
    for tool in ("iptables", "ip6tables"):
        assert "ISTIO" not in nat_rules(net.app, tool)


def test_ipv6_failure_rolls_back_ipv4(net: NetnsPair, tmp_path: Path) -> None:
    # An ip6tables-restore that always fails, first on PATH.
    fake = tmp_path / "ip6tables-restore"
    fake.write_text("#!/bin/sh\necho 'simulated failure' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ.get('PATH', '')}")
    out = proxy_init(net.app, "--ipv6", "on", check=False, env=env)
    assert out.returncode == 1
    assert "simulated failure" in out.stderr
    assert "ISTIO" not in nat_rules(net.app)           # IPv4 rules rolled back


def test_bad_flags_exit_2_without_touching_rules(net: NetnsPair) -> None:
    out = proxy_init(net.app, "-m", "TPROXY", check=False)
    assert out.returncode == 2 and "TPROXY is not supported" in out.stderr
    out = proxy_init(net.app, "-x", "*", check=False)
    assert out.returncode == 2 and "-x / --istio-service-exclude-cidr" in out.stderr
    assert "ISTIO" not in nat_rules(net.app)


def _require_legacy(net: NetnsPair) -> None:
    if not all(shutil.which(f"{t}-legacy-{k}") for t in ("iptables", "ip6tables")
               for k in ("restore", "save")):
        pytest.skip("iptables-legacy not installed")
    probe = net.app.run(["iptables-legacy-save", "-t", "nat"], check=False)
    if probe.returncode != 0:
        pytest.skip(f"iptables-legacy does not work here: {probe.stderr.strip()}")


def test_backend_holding_rules_is_detected(captured: NetnsPair) -> None:
    """A namespace whose rules came from iptables-legacy (say, Docker's embedded-DNS rules
    written by a legacy host) gets our rules through legacy too, as istio-iptables detects it."""
    net = captured
    _require_legacy(net)
    net.app.run(["iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-d", "10.66.0.1/32",
                 "-j", "RETURN"])
    net.app.run(["ip6tables-legacy", "-t", "nat", "-A", "POSTROUTING", "-d", "fd66::1/128",
                 "-j", "RETURN"])
    proxy_init(net.app)
    for tool in ("iptables", "ip6tables"):
        assert "-A OUTPUT -j ISTIO_OUTPUT" in net.app.run([f"{tool}-legacy-save"]).stdout
        assert "ISTIO" not in net.app.run([f"{tool}-nft-save"]).stdout
    assert names(connect(net.app, f"{REMOTE4}:8080", f"{REMOTE6}:8080")) == ["proxy", "proxy"]
    assert names(connect(net.remote, f"{APP4}:9000")) == ["proxy"]

    proxy_init(net.app, "--cleanup")
    for tool, addr in (("iptables", "10.66.0.1/32"), ("ip6tables", "fd66::1/128")):
        saved = net.app.run([f"{tool}-legacy-save"]).stdout
        assert "ISTIO" not in saved and f"-A POSTROUTING -d {addr} -j RETURN" in saved
    assert names(connect(net.app, f"{REMOTE4}:8080")) == ["remote"]


def test_explicit_backend(captured: NetnsPair) -> None:
    net = captured
    _require_legacy(net)
    proxy_init(net.app, "--iptables-backend", "legacy", "--ipv6", "off")
    assert "ISTIO_OUTPUT" in net.app.run(["iptables-legacy-save", "-t", "nat"]).stdout
    assert "ISTIO" not in nat_rules(net.app)         # the system default (nft) untouched
    assert names(connect(net.app, f"{REMOTE4}:8080")) == ["proxy"]
    proxy_init(net.app, "--iptables-backend", "legacy", "--cleanup")
    assert "ISTIO" not in net.app.run(["iptables-legacy-save", "-t", "nat"]).stdout
