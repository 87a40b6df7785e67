"""envoy.type.matcher.v3.StringMatcher as a small immutable value with a match() method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import re2


def compile_regex(pattern: str) -> Any:
    """RE2, as Envoy's safe_regex: linear time, so a hostile pattern can't stall the loop.

    Raises ValueError (re2.error) when the pattern is not valid RE2 syntax.
    """
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options=options)


@dataclass(frozen=True, slots=True)
class StringMatcher:
    kind: str            # "exact" | "prefix" | "suffix" | "contains" | "regex"
    value: str           # lower-cased when ignore_case (regex: the pattern)
    ignore_case: bool = False
    regex: Any = None    # compiled when kind == "regex"

    def match(self, candidate: str) -> bool:
        kind = self.kind
        if kind == "regex":
            # Envoy's safe_regex matches the whole value (RE2::FullMatch).
            return self.regex.fullmatch(candidate) is not None
        if self.ignore_case:
            candidate = candidate.lower()
        if kind == "exact":
            return candidate == self.value
        if kind == "prefix":
            return candidate.startswith(self.value)
        if kind == "suffix":
            return candidate.endswith(self.value)
        return self.value in candidate   # contains
