"""The per-response counter bumps of the request path, compiled.

sidecar/stats.py's scopes are interpreted classes (their stats are slots named at
run time, which mypyc cannot compile), so a method call on one is an interpreted
frame; the hot path calls these functions on the scope's lists instead.
"""

from __future__ import annotations


def count_class(responses: list[int], status: int) -> None:
    """One response: <x>_rq_completed (index 0) and <x>_rq_<N>xx (index N, 1xx-5xx only)."""
    responses[0] += 1
    cls = status // 100
    if 0 < cls < 6:
        responses[cls] += 1


def count_response(responses: list[int], codes: dict[int, int], status: int) -> None:
    """An upstream request's response: its class counters and upstream_rq_<code>."""
    count_class(responses, status)
    codes[status] = codes.get(status, 0) + 1
