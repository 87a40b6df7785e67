"""Retry policy: translation, Envoy's retry decisions and its jittered back-off (no real sleeps)."""

from __future__ import annotations

import pytest

from config import model
from config.bootstrap import parse_message
from config.errors import ConfigError, ConfigErrors
from config.translate import translate_bootstrap
from filters.http.router.retry import BackOff, next_host, retry_failure, retry_response
from filters.registry import http_filter_parser
from tests.support.proxy import bootstrap, http_listener, static_cluster, vhost

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

PREVIOUS_HOSTS = {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}


def routes_of(routes: list[dict], **vh: object) -> tuple[tuple[model.Route, ...], list[str]]:
    config = bootstrap([http_listener("web", [vhost(routes, **vh)], port=8080)],
                       [static_cluster("c", 9000)])
    snap, warnings = translate_bootstrap(parse_message(config, Bootstrap), http_filter_parser)
    return snap.listeners[0].filter_chain.filter.route_config.virtual_hosts[0].routes, warnings


def errors_of(routes: list[dict], **vh: object) -> list[str]:
    with pytest.raises((ConfigErrors, ConfigError)) as info:
        routes_of(routes, **vh)
    e = info.value
    return [str(x) for x in e.errors] if isinstance(e, ConfigErrors) else [str(e)]


def fwd(prefix: str = "/", **action: object) -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": "c", **action}}


# --- translation ------------------------------------------------------------------

def test_defaults_and_fields():
    (r,), _ = routes_of([fwd(retry_policy={
        "retry_on": "5xx, reset,retriable-status-codes", "retriable_status_codes": [418],
        "per_try_timeout": "0.5s", "retry_host_predicate": [PREVIOUS_HOSTS],
        "host_selection_retry_max_attempts": 4,
        "retriable_headers": [{"name": "X-Retry", "present_match": True}]})])
    p = r.action.retry_policy
    assert p.retry_on == {"5xx", "reset", "retriable-status-codes"}
    assert p.num_retries == 1                       # Envoy's default
    assert (p.base_interval_ms, p.max_interval_ms) == (25, 250)
    assert p.per_try_timeout == 0.5 and p.retriable_status_codes == {418}
    assert p.previous_hosts and p.host_selection_retry_max_attempts == 4
    assert p.retriable_headers[0].name == "x-retry"
    assert p.buffer_limit is None


def test_no_policy_means_none_on_the_action():
    (r,), _ = routes_of([fwd()])
    assert r.action.retry_policy is None


def test_route_policy_replaces_the_virtual_hosts_whole():
    vh_policy = {"retry_on": "5xx", "num_retries": 3}
    (own, inherited), _ = routes_of(
        [fwd("/own", retry_policy={"retry_on": "retriable-4xx"}), fwd("/")],
        retry_policy=vh_policy, per_request_buffer_limit_bytes=2048)
    assert own.action.retry_policy.retry_on == {"retriable-4xx"}
    assert own.action.retry_policy.num_retries == 1
    assert inherited.action.retry_policy.retry_on == {"5xx"}
    assert inherited.action.retry_policy.num_retries == 3
    assert inherited.action.retry_policy.buffer_limit == 2048


def test_attempt_count_options_alone_make_a_single_attempt_policy():
    (r,), _ = routes_of([fwd()], include_attempt_count_in_response=True)
    p = r.action.retry_policy
    assert p.retry_on == frozenset() and p.include_attempt_count_in_response
    assert not p.include_request_attempt_count


def test_route_buffer_limit_wins():
    route = {**fwd(retry_policy={"retry_on": "5xx"}), "per_request_buffer_limit_bytes": 100}
    (r,), _ = routes_of([route], per_request_buffer_limit_bytes=2048)
    assert r.action.retry_policy.buffer_limit == 100


def test_back_off_fields():
    (r,), _ = routes_of([fwd(retry_policy={"retry_on": "5xx", "retry_back_off": {
        "base_interval": "0.0001s"}})])
    assert (r.action.retry_policy.base_interval_ms, r.action.retry_policy.max_interval_ms) == (1, 10)
    (r,), _ = routes_of([fwd(retry_policy={"retry_on": "5xx", "retry_back_off": {
        "base_interval": "0.1s", "max_interval": "1s"}})])
    assert (r.action.retry_policy.base_interval_ms, r.action.retry_policy.max_interval_ms) == (100, 1000)


def test_unknown_retry_on_tokens_are_ignored_with_a_warning():
    (r,), warnings = routes_of([fwd(retry_policy={"retry_on": "5xx,bogus"})])
    assert r.action.retry_policy.retry_on == {"5xx"}
    assert any("bogus" in w for w in warnings)


@pytest.mark.parametrize("policy,field", [
    ({"retry_on": "5xx", "retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}},
     "retry_back_off.max_interval"),
    ({"retry_on": "5xx", "per_try_idle_timeout": "1s"}, "per_try_idle_timeout"),
    ({"retry_on": "5xx", "retry_priority": {"name": "x"}}, "retry_priority"),
    ({"retry_on": "5xx", "retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts",
      "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate"}}]},
     "retry_host_predicate[0]"),
])
def test_rejected_fields_name_their_path(policy, field):
    errors = errors_of([fwd(retry_policy=policy)])
    assert any(f"routes[0].route.retry_policy.{field}" in e for e in errors), errors


# --- decisions --------------------------------------------------------------------

def pol(retry_on: str, **kw: object) -> model.RetryPolicy:
    return model.RetryPolicy(retry_on=frozenset(retry_on.split(",")), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("retry_on,status,headers,expected", [
    ("5xx", 500, [], True), ("5xx", 503, [], True), ("5xx", 499, [], False),
    ("gateway-error", 502, [], True), ("gateway-error", 504, [], True),
    ("gateway-error", 500, [], False),
    ("retriable-4xx", 409, [], True), ("retriable-4xx", 404, [], False),
    ("reset", 503, [], False), ("connect-failure", 503, [], False),
    ("envoy-ratelimited", 429, [("x-envoy-ratelimited", "true")], True),
    ("envoy-ratelimited", 429, [], False),
    ("unavailable", 200, [("grpc-status", "14")], True),
    ("unavailable", 200, [("grpc-status", "13")], False),
    ("internal,cancelled", 200, [("grpc-status", "1")], True),
    ("deadline-exceeded", 200, [("grpc-status", "4")], True),
    ("resource-exhausted", 200, [("grpc-status", "8")], True),
])
def test_retry_response(retry_on, status, headers, expected):
    assert retry_response(pol(retry_on), status, headers) is expected


def test_retriable_status_codes_and_headers():
    p = pol("retriable-status-codes", retriable_status_codes=frozenset({418}))
    assert retry_response(p, 418, []) and not retry_response(p, 503, [])
    (r,), _ = routes_of([fwd(retry_policy={"retry_on": "retriable-headers", "retriable_headers": [
        {"name": "x-retry", "string_match": {"exact": "yes"}}]})])
    p = r.action.retry_policy
    assert retry_response(p, 200, [("x-retry", "yes")])
    assert not retry_response(p, 200, [("x-retry", "no")])


@pytest.mark.parametrize("retry_on,kind,expected", [
    ("5xx", "reset", True), ("gateway-error", "reset", True), ("reset", "reset", True),
    ("connect-failure", "reset", False), ("connect-failure", "connect", True),
    ("reset-before-request", "connect", True), ("reset-before-request", "reset", False),
    ("5xx", "per_try_timeout", True), ("retriable-4xx", "per_try_timeout", False),
    ("refused-stream", "reset", False), ("retriable-4xx", "connect", False),
])
def test_retry_failure(retry_on, kind, expected):
    assert retry_failure(pol(retry_on), kind) is expected


# --- back-off ---------------------------------------------------------------------

def test_back_off_is_jittered_below_a_doubling_ceiling_capped_at_max():
    b = BackOff(25, 250, lambda: 10**12 - 1)
    ceilings = []
    for _ in range(7):
        ceiling = b.next_ms
        ceilings.append(ceiling)
        assert b.next_backoff_ms() == (10**12 - 1) % ceiling
    assert ceilings == [25, 50, 100, 200, 250, 250, 250]


def test_back_off_uses_the_random_source_modulo():
    values = iter([7, 130, 0])
    b = BackOff(10, 100, lambda: next(values))
    assert [b.next_backoff_ms() for _ in range(3)] == [7 % 10, 130 % 20, 0]


def test_back_off_of_one_ms_never_waits():
    b = BackOff(1, 10, lambda: 123456789)
    assert b.next_backoff_ms() == 0


# --- host selection ---------------------------------------------------------------

class FakeCluster:
    def __init__(self, picks: list[str]) -> None:
        self.picks = iter(picks)

    def choose_host(self, hash_key: int | None = None, attempt: int = 0) -> str:
        return next(self.picks)


def test_previous_hosts_reselects_up_to_max_attempts():
    p = pol("5xx", previous_hosts=True, host_selection_retry_max_attempts=2)
    assert next_host(FakeCluster(["a", "a", "b"]), p, ["a"]) == "b"
    # Out of attempts: the last pick is used even if tried before (as Envoy).
    assert next_host(FakeCluster(["a", "a", "a", "b"]), p, ["a"]) == "a"
    assert next_host(FakeCluster(["a", "b"]), pol("5xx"), ["a"]) == "a"
