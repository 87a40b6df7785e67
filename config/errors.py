"""Config errors that name the field path, as in "static_resources.clusters[2].lb_policy: ..."."""

from __future__ import annotations


class ConfigError(Exception):
    """One invalid or unsupported field, with the path to it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class ConfigErrors(Exception):
    """Every error found in one config; ``str()`` lists one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
