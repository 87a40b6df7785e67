"""Fixtures for proxy-init's namespace tests.

``net`` is a fresh app / remote namespace pair (skipped with the reason when the harness cannot
run). ``captured`` adds, in the app namespace, a capture server standing in for the sidecar (UID
and GID 1337, listening on 15001 and 15006, both families) and an app server (root; ports 9000,
9001, 15021), and in the remote namespace a remote server (ports 8080, 8081). Every server
answers a connection with one JSON line naming itself and the original destination it read.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.proxy_init.helpers import PROXY_UID, listen_args, server_argv
from tests.support.netns import NetnsPair, netns_skip_reason, python_for_uid


@pytest.fixture
def net() -> Iterator[NetnsPair]:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    if python_for_uid(PROXY_UID) is None:
        pytest.skip(f"no Python interpreter that UID {PROXY_UID} may execute")
    with NetnsPair() as pair:
        yield pair


@pytest.fixture
def captured(net: NetnsPair) -> NetnsPair:
    net.app.spawn(server_argv("serve", "--name", "proxy", *listen_args(15001, 15006)),
                  user=PROXY_UID, group=PROXY_UID, ready_line="READY")
    net.app.spawn(server_argv("serve", "--name", "app", *listen_args(9000, 9001, 15021)),
                  ready_line="READY")
    net.remote.spawn(server_argv("serve", "--name", "remote", *listen_args(8080, 8081)),
                     ready_line="READY")
    return net
