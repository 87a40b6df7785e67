"""YAML/JSON files -> an immutable, versioned set of xDS resources (Listener, Route, Cluster, CLA).

A config file has up to four top-level keys, each a list of Envoy v3 objects in
Envoy's own YAML/JSON form; a folder is every ``*.yaml``/``*.yml``/``*.json``
in it, read in name order and merged.  Every error names the file and the
field path, as ``routes.yaml: routes[0].virtual_hosts[0].domainz: unknown field``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import any_pb2
from google.protobuf.message import Message

from config.bootstrap import parse_message
from config.errors import ConfigError, ConfigErrors

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class Kind:
    """One resource type: its key in the YAML, its type URL, and which field names it."""

    key: str
    type_url: str
    name_field: str

    @property
    def short(self) -> str:
        return short_type(self.type_url)


# Order matters twice: errors are reported in this order, and pushes go out in
# this order, which is the make-before-break order the xDS protocol asks of ADS
# servers (CDS, then EDS, then LDS, then RDS; "Eventual consistency considerations").
KINDS = (Kind("clusters", CLUSTER, "name"), Kind("endpoints", ENDPOINT, "cluster_name"),
         Kind("listeners", LISTENER, "name"), Kind("routes", ROUTE, "name"))
KIND_BY_KEY = {k.key: k for k in KINDS}
TYPE_ORDER = tuple(k.type_url for k in KINDS)


def short_type(type_url: str) -> str:
    """``type.googleapis.com/envoy.config.cluster.v3.Cluster`` -> ``Cluster``, for log lines."""
    return type_url.rsplit(".", 1)[-1] if type_url else "?"


def _message_class(type_url: str) -> type[Message]:
    # Imported lazily: the Envoy API modules take a while to load.
    from envoy.config.cluster.v3.cluster_pb2 import Cluster
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
    from envoy.config.listener.v3.listener_pb2 import Listener
    from envoy.config.route.v3.route_pb2 import RouteConfiguration

    classes: dict[str, type[Message]] = {LISTENER: Listener, ROUTE: RouteConfiguration,
                                         CLUSTER: Cluster, ENDPOINT: ClusterLoadAssignment}
    return classes[type_url]


def digest(data: bytes | str) -> str:
    """A short, stable content hash used as a version string."""
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Resource:
    """One named resource, packed once into the Any that goes on the wire."""

    name: str
    version: str
    body: Any          # google.protobuf.Any; never mutated after load
    source: str        # "clusters.yaml: clusters[2]", for error messages
    eds_name: str = ""  # for an EDS Cluster: the ClusterLoadAssignment it subscribes to


def versions_hash(pairs: Iterable[tuple[str, str]]) -> str:
    """A version for a group of resources: changes iff a name or a resource version changes."""
    return digest("\n".join(f"{name}={version}" for name, version in sorted(pairs)))


@dataclass(frozen=True, slots=True)
class ResourceSet:
    """Every resource, by type URL then name.  Replaced whole on reload, never mutated."""

    by_type: Mapping[str, Mapping[str, Resource]] = field(default_factory=dict)

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.by_type.get(type_url, {})

    def type_version(self, type_url: str) -> str:
        return versions_hash((r.name, r.version) for r in self.of_type(type_url).values())

    def summary(self) -> str:
        return ", ".join(f"{len(self.of_type(k.type_url))} {k.key}" for k in KINDS)


@dataclass(frozen=True, slots=True)
class Change:
    """What one reload changed in one type, for the reload log line."""

    type_url: str
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    def describe(self) -> str:
        parts = [f"{sign}{name}" for sign, names in (("+", self.added), ("~", self.changed),
                                                      ("-", self.removed)) for name in names]
        return f"{short_type(self.type_url)}: {' '.join(parts)}"


def diff(old: ResourceSet, new: ResourceSet) -> list[Change]:
    """Per type, the names added, changed (new version) and removed; only types that changed."""
    changes = []
    for type_url in TYPE_ORDER:
        before, after = old.of_type(type_url), new.of_type(type_url)
        added = tuple(sorted(after.keys() - before.keys()))
        removed = tuple(sorted(before.keys() - after.keys()))
        changed = tuple(sorted(n for n in after.keys() & before.keys()
                               if after[n].version != before[n].version))
        if added or changed or removed:
            changes.append(Change(type_url, added, changed, removed))
    return changes


def config_files(path: Path) -> list[Path]:
    """The files a config path stands for: the file itself, or the folder's config files by name."""
    if path.is_dir():
        return sorted(p for p in path.iterdir()
                      if p.suffix in CONFIG_SUFFIXES and p.is_file() and not p.name.startswith("."))
    return [path]


def load_resources(path: str | Path) -> ResourceSet:
    """Read and parse every resource under ``path``; raises ConfigErrors listing every problem."""
    root = Path(path)
    if not root.exists():
        raise ConfigErrors([ConfigError("", f"{root}: no such file or directory")])
    try:
        files = config_files(root)
    except OSError as e:
        raise ConfigErrors([ConfigError("", f"{root}: cannot list: {e.strerror}")]) from None
    errors: list[ConfigError] = []
    found: dict[str, dict[str, Resource]] = {k.type_url: {} for k in KINDS}
    for file in files:
        for kind, index, item in _file_items(file, errors):
            resource = _parse_resource(file.name, kind, index, item, errors)
            if resource is None:
                continue
            existing = found[kind.type_url].get(resource.name)
            if existing is not None:
                errors.append(ConfigError(f"{resource.source}.{kind.name_field}",
                                          f"duplicate {kind.short} name {resource.name!r} "
                                          f"(also in {existing.source})"))
                continue
            found[kind.type_url][resource.name] = resource
    if errors:
        raise ConfigErrors(errors)
    # Sorted by name, so every response built from a set lists resources in the same order.
    return ResourceSet({t: dict(sorted(by_name.items())) for t, by_name in found.items()})


def _read_file(file: Path) -> Any:
    text = file.read_text()
    if file.suffix == ".json":
        return json.loads(text)
    data = yaml.safe_load(text)
    return {} if data is None else data


def _file_items(file: Path, errors: list[ConfigError]) -> Iterable[tuple[Kind, int, Any]]:
    """(kind, index, raw object) for every resource in one file; structural errors go to ``errors``."""
    name = file.name
    try:
        data = _read_file(file)
    except OSError as e:
        errors.append(ConfigError(name, f"cannot read: {e.strerror}"))
        return []
    except (yaml.YAMLError, ValueError) as e:      # ValueError: JSONDecodeError, UnicodeDecodeError
        errors.append(ConfigError(name, f"invalid {file.suffix.lstrip('.').upper()}: {e}"))
        return []
    if not isinstance(data, dict):
        errors.append(ConfigError(name, "expected a mapping with listeners, routes, clusters "
                                        f"and/or endpoints, got {type(data).__name__}"))
        return []
    items: list[tuple[Kind, int, Any]] = []
    for key, value in data.items():
        kind = KIND_BY_KEY.get(key)
        if kind is None:
            errors.append(ConfigError(f"{name}: {key}", "unknown key (expected one of "
                                      f"{', '.join(sorted(KIND_BY_KEY))})"))
        elif value is None:
            continue          # "routes:" with nothing under it: an empty list
        elif not isinstance(value, list):
            errors.append(ConfigError(f"{name}: {key}", f"expected a list, got {type(value).__name__}"))
        else:
            items.extend((kind, i, item) for i, item in enumerate(value))
    return items


def _parse_resource(file: str, kind: Kind, index: int, item: Any,
                    errors: list[ConfigError]) -> Resource | None:
    """One raw object -> Resource, or None with the error appended."""
    where = f"{kind.key}[{index}]"
    source = f"{file}: {where}"
    if isinstance(item, dict) and "@type" in item:
        # Accepted for copy-paste from config_dump, but it must name the right type.
        item = dict(item)
        if item.pop("@type") != kind.type_url:
            errors.append(ConfigError(f"{source}.@type", f"must be {kind.type_url} under {kind.key}"))
            return None
    try:
        message = parse_message(item, _message_class(kind.type_url))
    except ConfigError as e:
        errors.append(ConfigError(f"{source}.{e.path}" if e.path else source, e.message))
        return None
    name = getattr(message, kind.name_field)
    if not name:
        errors.append(ConfigError(f"{source}.{kind.name_field}", "required"))
        return None
    body = any_pb2.Any()
    # Deterministic serialization, so an unchanged resource keeps its version across reloads.
    body.Pack(message, deterministic=True)
    return Resource(name=name, version=digest(body.value), body=body, source=source,
                    eds_name=_eds_name(kind, message))


def _eds_name(kind: Kind, message: Any) -> str:
    if kind.type_url != CLUSTER or message.WhichOneof("cluster_discovery_type") != "type":
        return ""
    if message.type != message.EDS:
        return ""
    return message.eds_cluster_config.service_name or message.name
