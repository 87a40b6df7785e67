"""The route config model: route configs, virtual hosts, routes, their matches and actions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from config.matchers import StringMatcher
from config.model_core import HeaderMutations


# --- route matching -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """envoy.config.route.v3.HeaderMatcher, all legacy forms folded into one."""

    name: str                                   # lower-case
    string: StringMatcher | None = None         # exact/prefix/suffix/contains/regex
    present: bool | None = None                 # present_match
    range: tuple[int, int] | None = None        # [start, end)
    invert: bool = False
    treat_missing_as_empty: bool = False


@dataclass(frozen=True, slots=True)
class QueryParameterMatcher:
    name: str
    string: StringMatcher | None = None
    present: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    # "prefix" | "path" | "safe_regex" | "path_separated_prefix"
    kind: str
    value: str                                  # the prefix/path/regex text
    case_sensitive: bool = True
    regex: Any = None                           # compiled RE2 pattern when kind == "safe_regex"
    headers: tuple[HeaderMatcher, ...] = ()
    query_parameters: tuple[QueryParameterMatcher, ...] = ()


# --- route actions ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RegexRewrite:
    pattern: Any                                # compiled RE2 pattern
    substitution: str                           # RE2 syntax: \1 for groups


@dataclass(frozen=True, slots=True)
class WeightedClusterEntry:
    name: str
    weight: int
    request_headers: HeaderMutations | None = None
    response_headers: HeaderMutations | None = None
    host_rewrite_literal: str | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's (else its virtual host's) retry_policy, with the virtual host's attempt
    count options folded in: a route whose virtual host only asks for
    x-envoy-attempt-count gets a policy with no ``retry_on`` (one attempt)."""

    retry_on: frozenset[str] = frozenset()      # Envoy's tokens: "5xx", "reset", "cancelled", ...
    num_retries: int = 1
    per_try_timeout: float | None = None
    retriable_status_codes: frozenset[int] = frozenset()
    retriable_headers: tuple[HeaderMatcher, ...] = ()
    base_interval_ms: int = 25
    max_interval_ms: int = 250                  # Envoy's default: 10 x base_interval
    previous_hosts: bool = False                # retry_host_predicate previous_hosts
    host_selection_retry_max_attempts: int = 1
    buffer_limit: int | None = None             # per_request_buffer_limit_bytes (route, else vhost)
    include_attempt_count_in_response: bool = False
    include_request_attempt_count: bool = False


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """One RouteAction.hash_policy entry (filters/http/router/hash_policy.py evaluates them)."""

    kind: str                                   # header | cookie | source_ip | query_parameter
    name: str = ""                              # header (lower-case), cookie or parameter name
    regex_rewrite: RegexRewrite | None = None   # header only
    cookie_ttl: int | None = None               # whole seconds; set: generate a missing cookie
    cookie_path: str = ""
    cookie_attributes: tuple[tuple[str, str], ...] = ()
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class RouteAction:
    """Forward to a cluster (one, or a weighted split)."""

    cluster: str | None = None
    cluster_header: str | None = None
    weighted_clusters: tuple[WeightedClusterEntry, ...] = ()
    total_weight: int = 0
    cluster_not_found_response_code: int = 503
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite_literal: str | None = None
    auto_host_rewrite: bool = False
    timeout: float | None = 15.0                # Envoy's default; None = disabled
    retry_policy: RetryPolicy | None = None     # None: one attempt, no attempt count headers
    hash_policy: tuple[HashPolicy, ...] = ()    # for RING_HASH / MAGLEV clusters
    mirror_policies: tuple[MirrorPolicy, ...] = ()   # request_mirror_policies
    # max_stream_duration: the stream's limit (None: none); with grpc_timeout_header_max set
    # (0: no cap) a request's grpc-timeout header, capped, less the offset, replaces it.
    max_stream_duration: float | None = None
    grpc_timeout_header_max: float | None = None
    grpc_timeout_header_offset: float = 0.0
    # upgrade_configs: (lower-case upgrade type, enabled), overriding the connection manager's
    upgrade_configs: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """One request_mirror_policies entry: a shadow copy of the request to another cluster."""

    cluster: str | None = None
    cluster_header: str | None = None           # the cluster named by this request header
    numerator: int = 100                        # runtime_fraction: mirror numerator/denominator
    denominator: int = 100
    disable_shadow_host_suffix_append: bool = False


@dataclass(frozen=True, slots=True)
class RedirectAction:
    scheme: str | None = None                   # https_redirect sets "https"
    host: str | None = None
    port: int | None = None
    path: str | None = None
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    response_code: int = 301
    strip_query: bool = False


@dataclass(frozen=True, slots=True)
class DirectResponseAction:
    status: int
    body: bytes | None = None


Action = Union[RouteAction, RedirectAction, DirectResponseAction]


class FilterDisabled:
    """The value of a typed_per_filter_config entry that is ``FilterConfig{disabled: true}``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FILTER_DISABLED"


FILTER_DISABLED = FilterDisabled()

# typed_per_filter_config of one level (route, virtual host, route config): the
# filter config name and what that filter's factory parsed (or FILTER_DISABLED),
# sorted by name.
PerFilterConfigs = tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Route:
    match: RouteMatch
    action: Action
    name: str = ""
    request_headers: HeaderMutations | None = None
    response_headers: HeaderMutations | None = None
    typed_per_filter_config: PerFilterConfigs = ()
    per_request_buffer_limit_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    request_headers: HeaderMutations | None = None
    response_headers: HeaderMutations | None = None
    typed_per_filter_config: PerFilterConfigs = ()


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    request_headers: HeaderMutations | None = None
    response_headers: HeaderMutations | None = None
    typed_per_filter_config: PerFilterConfigs = ()
