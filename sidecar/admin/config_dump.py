"""The admin's protobuf views: /config_dump (envoy.admin.v3.ConfigDump) and /server_info.

Built from the Bootstrap as loaded, in Envoy 1.40's shape and order, with
Envoy's ``?resource=``, ``?mask=`` and ``?name_regex=`` semantics and its
redaction of fields annotated ``udpa.annotations.sensitive`` (private keys,
generic secrets).  Pure functions over protobuf; no sockets, no asyncio.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory, text_format
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2, server_info_pb2
from envoy.config.core.v3.base_pb2 import Node
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from udpa.annotations import sensitive_pb2

from config.bootstrap import ensure_type_imported
from config.errors import ConfigError

NameMatcher = Callable[[str], bool]
REDACTED = "[redacted]"
_HCM = hcm_pb2.HttpConnectionManager


class AdminError(Exception):
    """A request the admin answers with ``status`` and a plain-text ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- node and /server_info -----------------------------------------------------

def effective_node(bootstrap: Message, options: dict[str, Any], version: str) -> Node:
    """The bootstrap's node as the server presents it.

    Envoy applies --service-node/--service-cluster/--service-zone over the
    bootstrap's node and stamps its own user agent; we do the same, naming
    ourselves in ``user_agent_version`` as non-Envoy xDS clients (gRPC) do.
    """
    node = Node()
    node.CopyFrom(bootstrap.node)
    if options.get("service_node"):
        node.id = str(options["service_node"])
    if options.get("service_cluster"):
        node.cluster = str(options["service_cluster"])
    if options.get("service_zone"):
        node.locality.zone = str(options["service_zone"])
    if not node.user_agent_name:
        node.user_agent_name = "sidecar"
    if node.WhichOneof("user_agent_version_type") is None:
        node.user_agent_version = version
    return node


def server_info_json(*, version: str, state: str, uptime_s: float, options: dict[str, Any],
                     node: Node) -> str:
    """envoy.admin.v3.ServerInfo rendered as Envoy prints it (defaults included)."""
    info = server_info_pb2.ServerInfo(version=version, node=node)
    try:
        info.state = server_info_pb2.ServerInfo.State.Value(state)
    except ValueError:
        raise AdminError(500, f"unknown server state {state!r}") from None
    info.uptime_current_epoch.seconds = int(uptime_s)
    info.uptime_all_epochs.seconds = int(uptime_s)   # no hot restart: one epoch
    info.hot_restart_version = "disabled"            # what Envoy says with --disable-hot-restart
    info.command_line_options.disable_hot_restart = True
    _fill_command_line_options(info.command_line_options, options)
    as_dict = json_format.MessageToDict(info, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
    return json.dumps(_by_field_number(info.DESCRIPTOR, as_dict), indent=1,
                      ensure_ascii=False) + "\n"


def _by_field_number(descriptor: Descriptor, value: dict[str, Any]) -> dict[str, Any]:
    """Envoy prints fields in field-number order; json_format puts the defaults that
    always_print adds after the set fields, so "state": "LIVE" would come last."""
    ordered: dict[str, Any] = {}
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        if field.name not in value:
            continue
        item = value[field.name]
        nested = field.message_type
        # Only plain messages print as an object of their fields (not maps, Struct, Any...).
        if (nested is not None and not nested.GetOptions().map_entry
                and not nested.full_name.startswith("google.protobuf.")):
            if field.is_repeated:
                item = [_by_field_number(nested, v) for v in item]
            else:
                item = _by_field_number(nested, item)
        ordered[field.name] = item
    return ordered


def _fill_command_line_options(msg: Message, options: dict[str, Any]) -> None:
    """Copy the options that CommandLineOptions has a field for; others are sidecar-only."""
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in options.items():
        if value is None:
            continue
        name = key[:-2] if key.endswith("_s") and key[:-2] in fields else key
        field = fields.get(name)
        if field is None:
            continue
        try:
            if field.message_type is not None:       # google.protobuf.Duration
                getattr(msg, name).FromNanoseconds(int(float(value) * 1e9))
            elif field.enum_type is not None:        # mode: "serve" -> Serve
                wanted = str(value).replace("_", "").lower()
                for enum_value in field.enum_type.values:
                    if enum_value.name.lower() == wanted:
                        setattr(msg, name, enum_value.number)
            elif field.is_repeated:
                getattr(msg, name).extend(str(v) for v in value)
            else:
                setattr(msg, name, type(getattr(msg, name))(value))
        except (TypeError, ValueError):
            continue   # a value of the wrong shape is left out, not fatal for /server_info


# --- /config_dump -------------------------------------------------------------

@dataclass(frozen=True)
class DynamicEntry:
    """One resource received over xDS, as /config_dump lists it."""
    name: str
    version: str
    resource: AnyProto
    updated_at: float               # epoch seconds
    warming: bool = False


# type short name ("Cluster", "Listener", "RouteConfiguration", "ClusterLoadAssignment")
# -> its resources, sorted by name
DynamicView = dict[str, list[DynamicEntry]]


def config_dump_json(bootstrap: Message, node: Node, updated_at: float, *,
                     resource: str | None = None, mask: str | None = None,
                     name_regex: NameMatcher | None = None,
                     dynamic: DynamicView | None = None, include_eds: bool = False) -> str:
    """The /config_dump body; raises AdminError(400|404) as Envoy answers bad queries."""
    dumps = list(_static_dumps(bootstrap, node, updated_at, name_regex or (lambda _: True),
                               dynamic or {}, include_eds))
    out = config_dump_pb2.ConfigDump()
    paths = [p for p in mask.split(",") if p] if mask else []
    if resource:
        _add_resource(out, dumps, resource, FieldMask(paths=paths) if mask else None)
    else:
        for dump in dumps:
            if mask:
                trimmed = _trim(FieldMask(paths=paths), dump)
                if trimmed is None:
                    continue   # Envoy skips the dumps a mask does not fit
                dump = trimmed
            out.configs.add().Pack(dump)
        if mask and not out.configs:
            raise AdminError(400, f"FieldMask {mask} could not be successfully applied "
                                  "to any configs.")
    redact(out)
    text: str = json_format.MessageToJson(out, preserving_proto_field_name=True, indent=1)
    return text + "\n"   # Envoy ends its JSON with a newline


def _static_dumps(bootstrap: Message, node: Node, updated_at: float,
                  match: NameMatcher, dynamic: DynamicView, include_eds: bool) -> Iterator[Message]:
    """One dump per resource type, in Envoy 1.40's order; xDS resources beside the static ones."""
    millis = int(updated_at * 1000)   # Envoy prints last_updated with millisecond precision
    boot = config_dump_pb2.BootstrapConfigDump()
    boot.bootstrap.CopyFrom(bootstrap)
    boot.bootstrap.node.CopyFrom(node)
    boot.last_updated.FromMilliseconds(millis)
    yield boot   # name_regex never filters the bootstrap (nor does Envoy)

    static = bootstrap.static_resources
    clusters = config_dump_shared_pb2.ClustersConfigDump()
    # Envoy keeps clusters in a map and lists them by name; listeners in config order.
    for cluster in sorted(static.clusters, key=lambda c: c.name):
        if match(cluster.name):
            entry = clusters.static_clusters.add()
            entry.cluster.Pack(cluster)
            entry.last_updated.FromMilliseconds(millis)
    for item in dynamic.get("Cluster", []):
        if match(item.name):
            dyn = (clusters.dynamic_warming_clusters if item.warming
                   else clusters.dynamic_active_clusters).add(version_info=item.version)
            dyn.cluster.CopyFrom(item.resource)
            dyn.last_updated.FromMilliseconds(int(item.updated_at * 1000))
    if dynamic.get("Cluster") is not None:
        clusters.version_info = _last_version(dynamic["Cluster"])
    yield clusters

    if include_eds:
        endpoints = config_dump_shared_pb2.EndpointsConfigDump()
        for cluster in sorted(static.clusters, key=lambda c: c.name):
            if match(cluster.name):
                # As Envoy: every static cluster, named, with the default overprovisioning
                # factor filled in, and no last_updated.  (Envoy also fills in each
                # endpoint's live health and weight; we list them as configured.)
                assignment = type(cluster.load_assignment)()
                assignment.CopyFrom(cluster.load_assignment)
                assignment.cluster_name = cluster.name
                if not assignment.policy.HasField("overprovisioning_factor"):
                    assignment.policy.overprovisioning_factor.value = 140
                endpoints.static_endpoint_configs.add().endpoint_config.Pack(assignment)
        for item in dynamic.get("ClusterLoadAssignment", []):
            if match(item.name):
                eds = endpoints.dynamic_endpoint_configs.add(version_info=item.version)
                eds.endpoint_config.CopyFrom(item.resource)
                eds.last_updated.FromMilliseconds(int(item.updated_at * 1000))
        yield endpoints

    listeners = config_dump_shared_pb2.ListenersConfigDump()
    for listener in static.listeners:
        if match(listener.name):
            entry = listeners.static_listeners.add()
            entry.listener.Pack(listener)
            entry.last_updated.FromMilliseconds(millis)
    for item in dynamic.get("Listener", []):
        if match(item.name):
            dyn_listener = listeners.dynamic_listeners.add(name=item.name)
            state = dyn_listener.warming_state if item.warming else dyn_listener.active_state
            state.version_info = item.version
            state.listener.CopyFrom(item.resource)
            state.last_updated.FromMilliseconds(int(item.updated_at * 1000))
    if dynamic.get("Listener") is not None:
        listeners.version_info = _last_version(dynamic["Listener"])
    yield listeners

    # Scoped routes inlined in an HCM are not listed (see the closing notes).
    yield config_dump_shared_pb2.ScopedRoutesConfigDump()

    routes = config_dump_shared_pb2.RoutesConfigDump()
    for route_config in inline_route_configs(bootstrap):
        if match(route_config.name):
            entry = routes.static_route_configs.add()
            entry.route_config.Pack(route_config)
            entry.last_updated.FromMilliseconds(millis)
    for item in dynamic.get("RouteConfiguration", []):
        if match(item.name):
            dyn_routes = routes.dynamic_route_configs.add(version_info=item.version)
            dyn_routes.route_config.CopyFrom(item.resource)
            dyn_routes.last_updated.FromMilliseconds(int(item.updated_at * 1000))
    yield routes

    secrets = config_dump_pb2.SecretsConfigDump()
    for secret in static.secrets:
        if match(secret.name):
            # Envoy gives static secrets a name and the Secret, no last_updated.
            entry = secrets.static_secrets.add(name=secret.name)
            entry.secret.Pack(secret)
    yield secrets


def _last_version(items: list[DynamicEntry]) -> str:
    """The version_info of the latest update of a type (what Envoy shows beside the list)."""
    return max(items, key=lambda i: i.updated_at).version if items else ""


def inline_route_configs(bootstrap: Message) -> Iterator[Message]:
    """route_config of every static listener's http_connection_manager, in config order.

    Envoy lists each inlined RouteConfiguration as a static route config, one per
    HCM (duplicate names included); it prints them in hash order, we in config order.
    """
    for listener in bootstrap.static_resources.listeners:
        chains = list(listener.filter_chains)
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        for chain in chains:
            for network_filter in chain.filters:
                typed = network_filter.typed_config
                if typed.Is(_HCM.DESCRIPTOR):
                    hcm = _HCM()
                    typed.Unpack(hcm)
                    if hcm.HasField("route_config"):
                        yield hcm.route_config


def _add_resource(out: Message, dumps: list[Message], resource: str,
                  mask: FieldMask | None) -> None:
    """?resource=: every element of the first dump's repeated field of that name."""
    for dump in dumps:
        field = dump.DESCRIPTOR.fields_by_name.get(resource)
        if field is None:
            continue
        if not field.is_repeated:
            raise AdminError(400, f"{resource} is not a repeated field. "
                                  f"Use ?mask={resource} to get only this field")
        for element in getattr(dump, resource):
            if mask is not None:
                trimmed = _trim_resource(mask, element)
                if trimmed is None:
                    # Envoy prints FieldMask::DebugString() here; this is its text format.
                    raise AdminError(400, f"FieldMask {text_format.MessageToString(mask)}"
                                          " could not be successfully used.")
                element = trimmed
            out.configs.add().Pack(element)
        return
    raise AdminError(404, f"{resource} not found in config dump")


def _trim(mask: FieldMask, message: Message) -> Message | None:
    """A copy holding only the masked fields, or None when a path does not fit the type."""
    if not mask.paths or not mask.IsValidForDescriptor(message.DESCRIPTOR):
        return None
    trimmed = type(message)()
    mask.MergeMessage(message, trimmed)
    return trimmed


def _trim_resource(mask: FieldMask, message: Message) -> Message | None:
    """Envoy's trimResourceMessage: paths may reach into the resource's one Any field.

    "cluster.name,last_updated" on a StaticCluster becomes the inner mask "name"
    for the unpacked Cluster and the outer mask "cluster,last_updated".
    """
    outer: list[str] = []
    inner: list[str] = []
    any_field = ""
    for path in mask.paths:
        head, _, rest = path.partition(".")
        field = message.DESCRIPTOR.fields_by_name.get(head)
        if (field is not None and not field.is_repeated
                and field.message_type is not None
                and field.message_type.full_name == "google.protobuf.Any"):
            any_field = head
            outer.append(head)
            inner.append(rest)
        else:
            outer.append(path)
    copy = type(message)()
    copy.CopyFrom(message)
    if any_field and copy.HasField(any_field):
        packed = getattr(copy, any_field)
        inner_message = _unpack(packed)
        if inner_message is None:
            return None
        trimmed_inner = _trim(FieldMask(paths=inner), inner_message)
        if trimmed_inner is None:
            return None
        packed.Pack(trimmed_inner)
    return _trim(FieldMask(paths=list(dict.fromkeys(outer))), copy)


# --- redaction ------------------------------------------------------------------

def redact(message: Message, sensitive: bool = False) -> None:
    """Envoy's MessageUtil::redact: sensitive strings become "[redacted]", other
    sensitive scalars are cleared, Any payloads are unpacked, redacted and repacked.

    Walking every Any also imports its type, which json_format needs to print it.
    """
    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        inner = _unpack(message)
        if inner is not None:
            redact(inner, sensitive)
            message.value = inner.SerializeToString()   # keep the original type_url
        return
    for field, value in message.ListFields():
        field_sensitive = sensitive or _is_sensitive(field)
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                _redact_map(field, value, field_sensitive)
            elif field.is_repeated:
                for item in value:
                    redact(item, field_sensitive)
            else:
                redact(value, field_sensitive)
        elif field_sensitive:
            if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                marker: str | bytes = (REDACTED if field.type == FieldDescriptor.TYPE_STRING
                                       else REDACTED.encode())
                if field.is_repeated:
                    value[:] = [marker] * len(value)
                else:
                    setattr(message, field.name, marker)
            else:
                message.ClearField(field.name)


def _redact_map(field: FieldDescriptor, mapping: Any, sensitive: bool) -> None:
    """Only map values are redacted: redacted keys would collapse the map."""
    value_field = field.message_type.fields_by_name["value"]
    sensitive = sensitive or _is_sensitive(value_field)
    if value_field.message_type is not None:
        for item in mapping.values():
            redact(item, sensitive)
    elif sensitive:
        if value_field.type == FieldDescriptor.TYPE_STRING:
            for key in list(mapping):
                mapping[key] = REDACTED
        else:
            mapping.clear()


@lru_cache(maxsize=None)
def _is_sensitive(field: FieldDescriptor) -> bool:
    return bool(field.GetOptions().Extensions[sensitive_pb2.sensitive])


def _unpack(packed: AnyProto) -> Message | None:
    """The Any's payload as a message, importing its type; None if Envoy's API lacks it."""
    if not packed.type_url:
        return None
    try:
        ensure_type_imported(packed.type_url)
    except ConfigError:
        return None
    message_class = _message_class(packed.type_url.rsplit("/", 1)[-1])
    message = message_class()
    packed.Unpack(message)
    return message


@lru_cache(maxsize=None)
def _message_class(full_name: str) -> type[Message]:
    descriptor: Descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    message_class: type[Message] = message_factory.GetMessageClass(descriptor)
    return message_class
