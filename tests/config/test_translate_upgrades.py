"""upgrade_configs at the connection manager and on routes: what loads, what fails with its path."""

from __future__ import annotations

from config import model
from sidecar.http.upgrade import upgrade_allowed
from tests.config.test_translate import basic, errors_of, translate

HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def with_route_upgrades(config: dict, upgrades: list) -> dict:
    route = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    route["route"]["upgrade_configs"] = upgrades
    return config


def test_upgrade_configs_load_lower_cased_with_route_overrides() -> None:
    config = with_route_upgrades(
        basic(upgrade_configs=[{"upgrade_type": "WebSocket"},
                               {"upgrade_type": "spdy/3", "enabled": False}]),
        [{"upgrade_type": "SPDY/3", "enabled": True}])
    hcm = translate(config).listeners[0].filter_chain.filter
    assert hcm.upgrade_configs == (("websocket", True), ("spdy/3", False))
    action = hcm.route_config.virtual_hosts[0].routes[0].action
    assert action.upgrade_configs == (("spdy/3", True),)


def test_unsupported_upgrade_fields_fail_with_their_path() -> None:
    config = with_route_upgrades(
        basic(upgrade_configs=[{"upgrade_type": "websocket", "filters": [
            {"name": "envoy.filters.http.router"}]}, {"upgrade_type": "CONNECT"}]),
        [{"upgrade_type": "CONNECT", "connect_config": {}}])
    errors = errors_of(config)
    route = f"{HCM_PATH}.route_config.virtual_hosts[0].routes[0].route.upgrade_configs[0]"
    assert sorted(errors) == sorted([
        f"{HCM_PATH}.upgrade_configs[0].filters: not supported by sidecar yet "
        "(see docs/compatibility.md)",
        f"{HCM_PATH}.upgrade_configs[1].upgrade_type: CONNECT is not supported yet",
        f"{route}.connect_config: not supported by sidecar yet (see docs/compatibility.md)",
        f"{route}.upgrade_type: CONNECT is not supported yet",
    ])


def test_upgrade_allowed_follows_envoys_rule() -> None:
    hcm = (("websocket", True), ("spdy/3", False))
    plain = model.RouteAction(cluster="c")
    assert upgrade_allowed(hcm, plain, "WebSocket")
    assert not upgrade_allowed(hcm, plain, "spdy/3")          # disabled at the manager
    assert not upgrade_allowed(hcm, plain, "h3")              # not listed at all
    on = model.RouteAction(cluster="c", upgrade_configs=(("spdy/3", True), ("h3", True)))
    off = model.RouteAction(cluster="c", upgrade_configs=(("websocket", False),))
    assert upgrade_allowed(hcm, on, "spdy/3")                 # the route enables it
    assert not upgrade_allowed(hcm, on, "h3")                 # ...but only what the manager lists
    assert not upgrade_allowed(hcm, off, "websocket")
    assert not upgrade_allowed(hcm, model.DirectResponseAction(status=200), "spdy/3")
