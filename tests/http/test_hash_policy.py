"""A route's hash_policy evaluated on a request, as Envoy's HashPolicyImpl::generateHash."""

from __future__ import annotations

from config import model
from config.matchers import compile_regex
from filters.http.router.hash_policy import (compute_hash, cookie_value, downstream_ip,
                                             query_value, set_cookie_value)
from sidecar.http.message import Request
from sidecar.upstream.hashing import MASK, xxhash64


def req(path: str = "/", headers: list[tuple[str, str]] | None = None,
        peer: tuple[str, int] = ("10.0.0.7", 40000),
        local: tuple[str, int] = ("10.0.0.1", 8080)) -> Request:
    r = Request("GET", path, "example.com", "http", list(headers or []), None)
    r.info.downstream_remote_address = peer
    r.info.downstream_local_address = local
    return r


def h(text: str, seed: int = 0) -> int:
    return xxhash64(text.encode(), seed)


def rotl_xor(a: int, b: int) -> int:
    return (((a << 1) | (a >> 63)) & MASK) ^ b


HEADER = model.HashPolicy("header", "x-user")


def run(policies: tuple[model.HashPolicy, ...], request: Request,
        use_remote_address: bool = False, hops: int = 0) -> int | None:
    return compute_hash(policies, request, use_remote_address, hops)[0]


def test_header_policy():
    assert run((HEADER,), req(headers=[("x-user", "alice")])) == h("alice")
    assert run((HEADER,), req()) is None
    # Repeated: sorted, chained; the order does not matter.
    two = run((HEADER,), req(headers=[("x-user", "b"), ("x-user", "a")]))
    assert two == h("b", h("a")) == run((HEADER,), req(headers=[("x-user", "a"), ("x-user", "b")]))
    # Pseudo-headers and Host.
    assert run((model.HashPolicy("header", ":authority"),), req()) == h("example.com")
    assert run((model.HashPolicy("header", "host"),), req()) == h("example.com")
    assert run((model.HashPolicy("header", ":path"),), req("/a?b")) == h("/a?b")


def test_header_regex_rewrite():
    rewrite = model.RegexRewrite(compile_regex(r"^(\w+)-\d+$"), r"\1")
    policy = model.HashPolicy("header", "x-user", regex_rewrite=rewrite)
    assert run((policy,), req(headers=[("x-user", "alice-42")])) == h("alice")
    assert run((policy,), req(headers=[("x-user", "no digits")])) == h("no digits")


def test_cookie_parsing_as_envoy():
    headers = [("cookie", "a=1; b=2"), ("cookie", 'session="quoted"; x')]
    assert cookie_value(headers, "b") == "2"
    assert cookie_value(headers, "session") == "quoted"
    assert cookie_value(headers, "x") == ""          # no '=': not a cookie
    assert cookie_value(headers, "missing") == ""
    # An empty value ends that header; a later Cookie header may still have it.
    assert cookie_value([("cookie", "s=; s=late"), ("cookie", "s=next")], "s") == "next"
    assert cookie_value([("cookie", "s=a=b")], "s") == "a=b"
    policy = model.HashPolicy("cookie", "session")
    assert run((policy,), req(headers=headers)) == h("quoted")
    assert compute_hash((policy,), req(), False, 0) == (None, None)     # no ttl: none made


def test_cookie_with_ttl_is_generated_from_the_addresses():
    policy = model.HashPolicy("cookie", "sticky", cookie_ttl=3600, cookie_path="/app",
                              cookie_attributes=(("SameSite", "Strict"), ("Secure", "")))
    key, set_cookie = compute_hash((policy,), req(), False, 0)
    value = "%016x" % h("10.0.0.7:4000010.0.0.1:8080")
    assert key == h(value)
    assert set_cookie == (f'sticky="{value}"; Max-Age=3600; Path=/app; SameSite=Strict; '
                          "Secure; HttpOnly")
    # A ttl of 0: a session cookie (no Max-Age).
    assert set_cookie_value(model.HashPolicy("cookie", "s", cookie_ttl=0), "v") == 's="v"; HttpOnly'
    # The cookie present: used, nothing set.
    present = req(headers=[("cookie", "sticky=abc")])
    assert compute_hash((policy,), present, False, 0) == (h("abc"), None)
    # x-forwarded-for does not change it: the connection's addresses (as Envoy 1.40).
    key, set_cookie = compute_hash((policy,), req(headers=[("x-forwarded-for", "192.0.2.9")]),
                                   False, 0)
    assert key == h(value)
    v6 = req(peer=("::1", 5000, 0, 0), local=("::1", 80, 0, 0))
    assert compute_hash((policy,), v6, True, 0)[0] == h("%016x" % h("[::1]:5000[::1]:80"))


def test_query_parameter():
    assert query_value("/p?a=1&b=2&a=3", "a") == "1"
    assert query_value("/p?flag&x=1", "flag") == ""
    assert query_value("/p?x=a%20b", "x") == "a%20b"       # raw, as Envoy
    assert query_value("/p", "a") is None and query_value("/p?b=1", "a") is None
    assert run((model.HashPolicy("query_parameter", "u"),), req("/x?u=bob")) == h("bob")


def test_source_ip_follows_the_downstream_remote_address():
    policy = (model.HashPolicy("source_ip"),)
    assert run(policy, req()) == h("10.0.0.7")
    xff = req(headers=[("x-forwarded-for", "192.0.2.1, 198.51.100.2")])
    assert run(policy, xff) == h("198.51.100.2")                    # the last XFF entry
    assert run(policy, xff, use_remote_address=True) == h("10.0.0.7")
    assert run(policy, xff, use_remote_address=False, hops=1) == h("192.0.2.1")
    assert run(policy, req(peer=("::ffff:10.1.2.3", 1))) == h("10.1.2.3")
    assert downstream_ip(req(peer=("2001:db8::1", 1)), True, 0) == "2001:db8::1"
    # x-forwarded-for entries are parsed: canonical text, junk ignored (the peer then).
    def via(xff: str) -> str | None:
        return downstream_ip(req(headers=[("x-forwarded-for", xff)]), False, 0)
    assert via("2001:DB8:0::5") == "2001:db8::5"
    assert via("::ffff:1.2.3.4") == "1.2.3.4"
    assert via("junk") == "10.0.0.7"


def test_policies_combine_and_terminal_stops_once_there_is_a_hash():
    a, b = model.HashPolicy("header", "x-a"), model.HashPolicy("header", "x-b", terminal=True)
    c = model.HashPolicy("query_parameter", "c")
    both = req("/?c=C", [("x-a", "A"), ("x-b", "B")])
    assert run((a, b, c), both) == rotl_xor(h("A"), h("B"))
    assert run((a, c), req("/?c=C", [("x-a", "A")])) == rotl_xor(h("A"), h("C"))
    assert run((a, b, c), req("/?c=C", [("x-a", "A")])) == h("A")
    assert run((a, b, c), req("/?c=C")) == h("C")
    # The same policy twice does not cancel out (the rotation).
    assert run((a, a), req(headers=[("x-a", "A")])) == rotl_xor(h("A"), h("A")) != 0
