"""Rule generation for flag combinations (sidecar.proxy_init.rules), against expected rule lists.

Expected orders follow istio-iptables' capture/run.go; cases mirror Istio's golden test cases
(capture/run_test.go) where one exists, minus the DNS rules proxy-init does not write.
"""

from __future__ import annotations

import pytest

from sidecar.proxy_init.options import OptionError, parse
from sidecar.proxy_init.rules import (IPV4, IPV6, Family, builtin_chain_rules, restore_input,
                                       rule_lines)

ENV: dict[str, str] = {}        # never read the test runner's environment


def rules(*flags: str, family: Family = IPV4) -> list[str]:
    return rule_lines(parse(["-b", "", "-i", "", "-d", "", *flags], ENV), family)


PROLOGUE = [
    "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
    "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
]


def owner_rules(kind: str, owner: str, loopback: str = "127.0.0.1/32",
                skip_lo_return: bool = False) -> list[str]:
    out = [f"-A ISTIO_OUTPUT -o lo ! -d {loopback} -p tcp ! --dport 15008 -m owner "
           f"--{kind}-owner {owner} -j ISTIO_IN_REDIRECT"]
    if not skip_lo_return:
        out.append(f"-A ISTIO_OUTPUT -o lo -m owner ! --{kind}-owner {owner} -j RETURN")
    out.append(f"-A ISTIO_OUTPUT -m owner --{kind}-owner {owner} -j RETURN")
    return out


def test_bare_rules() -> None:
    assert rules() == PROLOGUE + [
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
        *owner_rules("uid", "1337"), *owner_rules("gid", "1337"),
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
    ]


def test_several_uids_and_gids_in_istio_order() -> None:
    # ip-range.golden's owner block (-u 3,4 -g 1,2): every UID, then every GID.
    got = rules("-u", "3,4", "-g", "1,2")
    owners = [line for line in got if "-owner" in line]
    assert owners == (owner_rules("uid", "3") + owner_rules("uid", "4") +
                      owner_rules("gid", "1") + owner_rules("gid", "2"))


def test_gid_defaults_to_uid() -> None:
    assert any("--gid-owner 4242 -j RETURN" in line for line in rules("-u", "4242"))
    assert not any("1337" in line for line in rules("-u", "4242"))


def test_inbound_ports_list_and_wildcard() -> None:
    listed = rules("-b", "80,8080", "-d", "9999")       # -d only applies with '*'
    assert listed[3:6] == [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp --dport 80 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT",
    ]
    assert not any("9999" in line for line in listed)
    wild = rules("-b", "*", "-d", "9999")
    assert wild[3:6] == [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp --dport 9999 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
    ]
    assert not any("PREROUTING" in line for line in rules("-b", ""))


def test_multiport_chunks_of_fifteen() -> None:
    ports = ",".join(str(p) for p in range(1000, 1017))     # 17 ports
    got = [line for line in rules("-o", ports) if "--dport" in line and "RETURN" in line
           and "15008" not in line]
    assert got == [
        "-A ISTIO_OUTPUT -p tcp -m multiport --dports " + ",".join(map(str, range(1000, 1015))) + " -j RETURN",
        "-A ISTIO_OUTPUT -p tcp -m multiport --dports 1015,1016 -j RETURN",
        "-A ISTIO_OUTPUT -p udp -m multiport --dports " + ",".join(map(str, range(1000, 1015))) + " -j RETURN",
        "-A ISTIO_OUTPUT -p udp -m multiport --dports 1015,1016 -j RETURN",
    ]


def test_outbound_cidrs_split_by_family() -> None:
    flags = ("-i", "10.0.0.0/8,fd00::/8", "-x", "10.1.0.0/16,fd00:1::/32")
    v4 = rules(*flags)
    v6 = rules(*flags, family=IPV6)
    assert v4[-3:] == [
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
    ]
    assert v6[-3:] == [
        "-A ISTIO_OUTPUT -d ::1/128 -j RETURN",
        "-A ISTIO_OUTPUT -d fd00:1::/32 -j RETURN",
        "-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT",
    ]
    assert not any("fd00" in line for line in v4)
    assert not any("10." in line for line in v6)


def test_only_ipv4_cidrs_leave_ipv6_outbound_uncaptured() -> None:
    v6 = rules("-i", "10.0.0.0/8", family=IPV6)
    assert not any("-j ISTIO_REDIRECT" in line for line in v6 if line.startswith("-A ISTIO_OUTPUT"))


def test_wildcard_outbound_and_ordering_of_exclusions() -> None:
    got = rules("-i", "*", "-x", "192.168.0.0/16", "-q", "5000")
    assert got[-4:] == [
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -d 192.168.0.0/16 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp --dport 5000 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    ]


def test_loopback_include_keeps_app_loopback_capturable() -> None:
    # loopback-outbound-iprange.golden: with a loopback range included, no "-o lo ! owner RETURN".
    got = rules("-i", "127.1.2.3/32")
    assert not any("-o lo -m owner !" in line for line in got)
    assert got[-1] == "-A ISTIO_OUTPUT -d 127.1.2.3/32 -j ISTIO_REDIRECT"
    assert [line for line in got if "-owner" in line] == (
        owner_rules("uid", "1337", skip_lo_return=True) + owner_rules("gid", "1337", skip_lo_return=True))


def test_excluded_interfaces_come_first() -> None:
    # basic-exclude-nic.golden
    got = rules("-c", "not-istio-nic")
    assert got[:2] == ["-A PREROUTING -i not-istio-nic -j RETURN",
                       "-A OUTPUT -o not-istio-nic -j RETURN"]
    assert got[2:5] == PROLOGUE


def test_kube_virt_interfaces_with_cidrs() -> None:
    # ipnets-with-kube-virt-interfaces.golden (without its old trailing RETURN)
    got = rules("-k", "eth1,eth2", "-i", "10.0.0.0/8")
    assert got[:2] == ["-I PREROUTING 1 -i eth1 -j RETURN", "-I PREROUTING 1 -i eth2 -j RETURN"]
    assert got[-3:] == [
        "-I PREROUTING 1 -i eth1 -d 10.0.0.0/8 -j ISTIO_REDIRECT",
        "-I PREROUTING 1 -i eth2 -d 10.0.0.0/8 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
    ]


def test_custom_ports() -> None:
    got = rules("-p", "16001", "-z", "16006", "-e", "16008")
    assert got[:3] == [
        "-A ISTIO_INBOUND -p tcp --dport 16008 -j RETURN",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
    ]
    assert all("! --dport 16008" in line for line in got if "ISTIO_IN_REDIRECT" in line
               and "-m owner" in line)


def test_ipv6_uses_its_own_loopback_and_passthrough() -> None:
    got = rules("--host-ipv4-loopback-cidr", "127.0.0.0/8", family=IPV6)
    assert "-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN" in got
    assert "-A ISTIO_OUTPUT -d ::1/128 -j RETURN" in got
    assert not any("127." in line for line in got)


def test_chains_declared_once_in_first_use_order() -> None:
    text = restore_input(parse(["-c", "eth9"], ENV), IPV4)
    lines = text.splitlines()
    assert lines[0] == "* nat" and lines[-1] == "COMMIT"
    assert [line for line in lines if line.startswith("-N")] == [
        "-N ISTIO_INBOUND", "-N ISTIO_REDIRECT", "-N ISTIO_IN_REDIRECT", "-N ISTIO_OUTPUT"]


def test_builtin_chain_rules_for_cleanup() -> None:
    cfg = parse(["-c", "eth9", "-k", "vm0"], ENV)
    assert builtin_chain_rules(cfg, IPV4) == [
        "-A PREROUTING -i eth9 -j RETURN",
        "-A OUTPUT -o eth9 -j RETURN",
        "-A PREROUTING -i vm0 -j RETURN",
    ]


def test_tproxy_is_rejected() -> None:
    with pytest.raises(OptionError, match="TPROXY is not supported"):
        parse(["-m", "TPROXY"], ENV)
