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


# HeaderValueOption.HeaderAppendAction
APPEND_ACTIONS = {0: "APPEND_IF_EXISTS_OR_ADD", 1: "ADD_IF_ABSENT",
                  2: "OVERWRITE_IF_EXISTS_OR_ADD", 3: "OVERWRITE_IF_EXISTS"}


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

    def header_value_option(self, hv: Message, path: str) -> model.HeaderValueOption:
        """One HeaderValueOption (a *_headers_to_add entry): plain values, no %...% formatters
        yet.  Whether the key may be set at all is the caller's check."""
        self.only(hv, path, ("header", "append", "append_action", "keep_empty_value"))
        self.only(hv.header, f"{path}.header", ("key", "value", "raw_value"))
        key = hv.header.key.lower()
        if not key:
            self.error(f"{path}.header.key", "value length must be at least 1 characters")
        action = APPEND_ACTIONS.get(hv.append_action, "APPEND_IF_EXISTS_OR_ADD")
        if hv.HasField("append"):   # deprecated BoolValue: false means overwrite
            action = "APPEND_IF_EXISTS_OR_ADD" if hv.append.value else "OVERWRITE_IF_EXISTS_OR_ADD"
        value = hv.header.value or hv.header.raw_value.decode("latin-1")
        if "%" in value:
            self.error(f"{path}.header.value", "header formatters (%...%) are not supported yet")
        return model.HeaderValueOption(key, value, action, hv.keep_empty_value)

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

    def config_source(self, source: Message, path: str, files: bool = False) -> model.ConfigSource:
        """A ConfigSource: ``ads: {}``, an ``api_config_source`` (GRPC or DELTA_GRPC) or, where
        ``files`` (LDS and CDS), a ``path_config_source``."""
        self.only(source, path, ("ads", "api_config_source", "path", "path_config_source",
                                 "resource_api_version", "initial_fetch_timeout"))
        if source.resource_api_version == 1:
            self.error(f"{path}.resource_api_version", "must be V3")
        which = source.WhichOneof("config_source_specifier")
        if which == "ads":
            return model.ConfigSource(ads=True)
        if which == "api_config_source":
            grpc = self.grpc_service(source.api_config_source, f"{path}.api_config_source")
            return model.ConfigSource(grpc=grpc)
        if which in ("path", "path_config_source") and files:
            if which == "path":
                file = source.path
            else:
                self.only(source.path_config_source, f"{path}.path_config_source", ("path",))
                file = source.path_config_source.path
            if not file:
                self.error(f"{path}.{which}", "value length must be at least 1 characters")
            return model.ConfigSource(path=file)
        self.error(path, f"{which or 'no config source'} is not supported here yet "
                   f"(ads, api_config_source{', path_config_source' if files else ''})")
        return model.ConfigSource(ads=True)

    def grpc_service(self, api: Message, path: str) -> model.GrpcService | None:
        """ads_config or an api_config_source: GRPC or DELTA_GRPC to one gRPC service."""
        self.only(api, path, ("api_type", "transport_api_version", "grpc_services",
                              "set_node_on_first_message_only"))
        kind = {2: "GRPC", 3: "DELTA_GRPC"}.get(api.api_type)
        if kind is None:
            self.error(f"{path}.api_type", "api_type must be GRPC or DELTA_GRPC")
        if api.transport_api_version == 1:
            self.error(f"{path}.transport_api_version", "must be V3")
        if len(api.grpc_services) != 1:
            self.error(f"{path}.grpc_services", "exactly one grpc_service is supported")
            return None
        service, sp = api.grpc_services[0], f"{path}.grpc_services[0]"
        self.only(service, sp, ("envoy_grpc", "google_grpc", "timeout"))
        cluster_name = target_uri = ""
        if service.HasField("envoy_grpc"):
            self.only(service.envoy_grpc, f"{sp}.envoy_grpc", ("cluster_name",))
            cluster_name = service.envoy_grpc.cluster_name
            if not cluster_name:
                self.error(f"{sp}.envoy_grpc.cluster_name", "value length must be at least 1 characters")
        elif service.HasField("google_grpc"):
            self.only(service.google_grpc, f"{sp}.google_grpc", ("target_uri", "stat_prefix"))
            target_uri = service.google_grpc.target_uri
            if not target_uri:
                self.error(f"{sp}.google_grpc.target_uri", "value length must be at least 1 characters")
        else:
            self.error(sp, "one of envoy_grpc or google_grpc is required")
        if kind is None:
            return None
        return model.GrpcService(delta=kind == "DELTA_GRPC", cluster_name=cluster_name,
                                 target_uri=target_uri,
                                 set_node_on_first_message_only=api.set_node_on_first_message_only)
