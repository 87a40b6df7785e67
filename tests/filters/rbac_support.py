"""Config builders for the RBAC filter tests (Permission / Principal / policies as dicts)."""

from __future__ import annotations

from typing import Any

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
NAME = "envoy.filters.http.rbac"
ANY = {"any": True}


def policy(permissions: list[dict] | None = None,
           principals: list[dict] | None = None) -> dict[str, Any]:
    return {"permissions": permissions or [ANY], "principals": principals or [ANY]}


def rules(action: str = "ALLOW", **policies: dict[str, Any]) -> dict[str, Any]:
    return {"action": action, "policies": policies}


def rbac(rules_: dict | None = None, shadow: dict | None = None, **fields: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": RBAC, **fields}
    if rules_ is not None:
        config["rules"] = rules_
    if shadow is not None:
        config["shadow_rules"] = shadow
    return config


def per_route(rbac_: dict | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": RBAC_PER_ROUTE}
    if rbac_ is not None:
        config["rbac"] = {k: v for k, v in rbac_.items() if k != "@type"}
    return config


def header(name: str, exact: str | None = None, **matcher: Any) -> dict[str, Any]:
    if exact is not None:
        matcher["string_match"] = {"exact": exact}
    return {"header": {"name": name, **matcher}}


def path(**string_match: Any) -> dict[str, Any]:
    return {"url_path": {"path": string_match}}


def cidr(kind: str, prefix: str, length: int) -> dict[str, Any]:
    return {kind: {"address_prefix": prefix, "prefix_len": length}}
