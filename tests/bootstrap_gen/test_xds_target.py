"""The generated xds-grpc cluster becomes a gRPC target with an explicit dns: scheme, so a control
plane whose host name is also a gRPC resolver scheme (the compose service `xds`) is dialled by
name instead of being handed to gRPC's own xds: resolver. (The namespace test
test_compose_capture.py runs the real thing with XDS_ADDRESS=xds:18000.)"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pytest
import yaml

from config.bootstrap import load_bootstrap
from config.translate import translate_bootstrap
from filters.registry import http_filter_parser
from sidecar.bootstrap_gen import build_bootstrap, parse_args, settings_from
from sidecar.xds.subscriptions import Subscriptions


def target_for(xds_address: str) -> str:
    args: argparse.Namespace = parse_args(["--xds-address", xds_address])
    bootstrap = build_bootstrap(settings_from({"INSTANCE_IP": "10.0.0.1"}, args))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.yaml"
        path.write_text(yaml.safe_dump(bootstrap))
        snapshot, _warnings = translate_bootstrap(load_bootstrap(str(path)), http_filter_parser)
    assert snapshot.dynamic is not None and snapshot.dynamic.ads is not None
    # target() reads only the snapshot: no node, handler or stats needed
    return Subscriptions(None, None, snapshot, None).target(snapshot.dynamic.ads)  # type: ignore[arg-type]


@pytest.mark.parametrize("address, target", [
    ("xds:18000", "dns:///xds:18000"),
    ("istiod.istio-system.svc:15010", "dns:///istiod.istio-system.svc:15010"),
    ("10.0.0.5:15010", "dns:///10.0.0.5:15010"),
    ("[fd00::5]:15010", "dns:///[fd00::5]:15010"),
])
def test_target_has_dns_scheme(address: str, target: str) -> None:
    assert target_for(address) == target
