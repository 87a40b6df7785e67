"""http.<stat_prefix>.rbac.*: the RBAC filters' counters, kept in this folder.

Envoy 1.40 (checked on its /stats and /stats/prometheus):

- http.<hcm prefix>.rbac.allowed / denied / shadow_allowed / shadow_denied, all four
  created with the filter;
- rules_stat_prefix goes before allowed / denied, shadow_rules_stat_prefix before
  shadow_allowed / shadow_denied, joined with a "." unless it ends with one:
  ``enf_`` gives http.<p>.rbac.enf_.allowed;
- on /stats/prometheus the prefix's first segment is the tag envoy_rbac_http_prefix
  (before envoy_http_conn_manager_prefix) and the rest stays in the name:
  ``dry.run`` gives envoy_http_rbac_run_shadow_allowed{envoy_rbac_http_prefix="dry",...}.

The enforced and the shadow pair are two scopes, one class per rules prefix (the
connection manager keeps one scope per class: ``HttpStats.filter_scope``), so
filters with the same prefixes share them and they survive config updates, as
Envoy's stats shared by name.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from sidecar.stats import Scope

HCM_LABEL = "envoy_http_conn_manager_prefix"
TAG = "envoy_rbac_http_prefix"


class RbacStats(Scope):
    """http.<prefix>.rbac.[<rules_stat_prefix>.]{allowed,denied}."""

    COUNTERS: ClassVar[tuple[str, ...]] = ("allowed", "denied")
    __slots__ = COUNTERS
    PROM_PREFIX = "envoy_http_rbac_"
    DOTTED_PREFIX = "http."
    DOTTED_SUFFIX = "rbac."
    LABEL = HCM_LABEL


class RbacShadowStats(Scope):
    """http.<prefix>.rbac.[<shadow_rules_stat_prefix>.]{shadow_allowed,shadow_denied}."""

    COUNTERS: ClassVar[tuple[str, ...]] = ("shadow_allowed", "shadow_denied")
    __slots__ = COUNTERS
    PROM_PREFIX = "envoy_http_rbac_"
    DOTTED_PREFIX = "http."
    DOTTED_SUFFIX = "rbac."
    LABEL = HCM_LABEL


_KINDS: dict[tuple[type[Scope], str], type[Scope]] = {}


def scope_kind(base: type[Scope], rules_prefix: str) -> type[Scope]:
    """The scope class of ``base`` with ``rules_prefix`` before each counter's name."""
    if not rules_prefix:
        return base
    kind = _KINDS.get((base, rules_prefix))
    if kind is None:
        joined = rules_prefix if rules_prefix.endswith(".") else rules_prefix + "."
        tag, _, rest = joined.partition(".")
        # The renderer writes LABEL="<hcm prefix>": the tag goes first, as in Envoy's output.
        label = f'{TAG}="{_escape(tag)}",{HCM_LABEL}' if tag else HCM_LABEL
        kind = _KINDS[(base, rules_prefix)] = type(base.__name__, (base,), {
            "__slots__": (), "DOTTED_SUFFIX": base.DOTTED_SUFFIX + joined,
            "PROM_PREFIX": base.PROM_PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", rest),
            "LABEL": label})
    return kind


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counters:
    """The four counters of one filter, whatever their prefixes."""

    __slots__ = ("enforced", "shadow")

    def __init__(self, http_stats: Any, rules_prefix: str, shadow_prefix: str) -> None:
        self.enforced = http_stats.filter_scope(scope_kind(RbacStats, rules_prefix))
        self.shadow = http_stats.filter_scope(scope_kind(RbacShadowStats, shadow_prefix))
