"""Shared by the translators: error collection, unsupported-field checks, Any unpacking, units."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf import symbol_database
from google.protobuf.message import Message

from config import model
from config.bootstrap import ensure_type_imported
from config.errors import ConfigError

# Looks up an HTTP filter by Envoy name / type URL; returns its parse(message, path)
# or None when we don't implement it.  Injected so config/ imports nothing of ours.
FilterParserLookup = Callable[[str, str], Callable[[Message, str], Any] | None]


def seconds(duration: Message) -> float:
    return duration.seconds + duration.nanos / 1e9


def optional_timeout(msg: Message, field: str, default: float | None) -> float | None:
    """A Duration field where unset means ``default`` and 0 means disabled (Envoy's rule)."""
    if not msg.HasField(field):
        return default
    value = seconds(getattr(msg, field))
    return value if value > 0 else None


def each(items: Iterable[Any], path: str, translate: Callable[[Any, str], Any]) -> list[Any]:
    """Translate every item of a repeated field; items that failed (None) are left out."""
    out = []
    for i, item in enumerate(items):
        result = translate(item, f"{path}[{i}]")
        if result is not None:
            out.append(result)
    return out


def wrapped(msg: Message, field: str, default: Any) -> Any:
    """Read a google.protobuf.*Value wrapper field."""
    return getattr(msg, field).value if msg.HasField(field) else default


class TranslatorBase:
    """Collects errors while walking the config; ``errors`` holds them all."""

    def __init__(self, lookup_http_filter: FilterParserLookup) -> None:
        self.lookup_http_filter = lookup_http_filter
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(ConfigError(path, message))

    def only(self, msg: Message, path: str, supported: Iterable[str]) -> None:
        """Reject every set field of ``msg`` that is not in ``supported``."""
        allowed = set(supported)
        for fd, _ in msg.ListFields():
            if fd.name not in allowed:
                self.error(f"{path}.{fd.name}" if path else fd.name,
                           "not supported by sidecar yet (see docs/compatibility.md)")

    def unpack(self, any_msg: Message, path: str) -> Message | None:
        """Unpack a google.protobuf.Any into its concrete message."""
        try:
            ensure_type_imported(any_msg.type_url, f"{path}.@type")
        except ConfigError as e:
            self.errors.append(e)
            return None
        cls = symbol_database.Default().GetSymbol(any_msg.type_url.rsplit("/", 1)[-1])
        message = cls()
        if not any_msg.Unpack(message):
            self.error(path, f"cannot unpack {any_msg.type_url}")
            return None
        return message

    def data_source(self, ds: Message, path: str) -> bytes | None:
        self.only(ds, path, ("filename", "inline_bytes", "inline_string"))
        kind = ds.WhichOneof("specifier")
        if kind == "inline_string":
            return ds.inline_string.encode()
        if kind == "inline_bytes":
            return ds.inline_bytes
        if kind == "filename":
            try:
                with open(ds.filename, "rb") as f:
                    return f.read()
            except OSError as e:
                self.error(f"{path}.filename", f"cannot read {ds.filename}: {e.strerror}")
        return None

    def socket_address(self, address: Message, path: str) -> model.SocketAddress | None:
        self.only(address, path, ("socket_address",))
        if not address.HasField("socket_address"):
            self.error(path, "only socket_address is supported")
            return None
        sa = address.socket_address
        p = f"{path}.socket_address"
        self.only(sa, p, ("address", "port_value", "protocol", "ipv4_compat"))
        if sa.protocol != 0:
            self.error(f"{p}.protocol", "only TCP is supported")
        if not sa.address:
            self.error(f"{p}.address", "value length must be at least 1 characters")
        if sa.port_value > 65535:
            self.error(f"{p}.port_value", "value must be less than or equal to 65535")
        return model.SocketAddress(sa.address, sa.port_value, sa.ipv4_compat)

    def ads_source(self, source: Message, path: str) -> None:
        """A ConfigSource that must say ``ads: {}`` (with resource_api_version V3)."""
        self.only(source, path, ("ads", "resource_api_version", "initial_fetch_timeout"))
        if not source.HasField("ads"):
            self.error(path, "only 'ads: {}' config sources are supported yet")
        if source.resource_api_version == 1:
            self.error(f"{path}.resource_api_version", "must be V3")
