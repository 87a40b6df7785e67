"""Envoy bootstrap YAML/JSON -> envoy.config.bootstrap.v3.Bootstrap (protobuf json_format).

Typed ``Any`` payloads (``typed_config`` and friends) are resolved by importing
the xds-protos modules of the package their type URL names, on demand: importing
all of Envoy's API up front costs seconds.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format, symbol_database
from google.protobuf.message import Message

from config.errors import ConfigError

TYPE_URL_PREFIX = "type.googleapis.com/"


def load_bootstrap(path: str | None, config_yaml: str | None = None) -> Message:
    """Read the bootstrap as Envoy does: the file, then ``--config-yaml`` merged over it.

    Envoy merges with protobuf MergeFrom: scalars replaced, messages merged,
    repeated fields appended.  Raises ConfigError naming the field path.
    """
    from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

    if not path and not config_yaml:
        raise ConfigError("", "no configuration: give -c/--config-path or --config-yaml")
    bootstrap = Bootstrap()
    if path:
        bootstrap.MergeFrom(parse_message(read_config_file(path), Bootstrap))
    if config_yaml:
        bootstrap.MergeFrom(parse_message(_parse_yaml(config_yaml, "--config-yaml"), Bootstrap))
    return bootstrap


def read_config_file(path: str) -> Any:
    """Load a .yaml/.yml/.json file into plain Python data."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from None
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError("", f"{path}: invalid JSON: {e}") from None
    return _parse_yaml(text, path)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{source}: invalid YAML: {e}") from None
    return {} if data is None else data


def parse_message(data: Any, message_type: type[Message]) -> Message:
    """Parse plain data into ``message_type``, rejecting unknown fields as Envoy does."""
    if not isinstance(data, dict):
        raise ConfigError("", f"expected a mapping for {message_type.DESCRIPTOR.full_name}, "
                          f"got {type(data).__name__}")
    _import_any_types(data, "")
    message = message_type()
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        raise _parse_error_to_config_error(str(e), message_type.DESCRIPTOR.name) from None
    return message


def _import_any_types(node: Any, path: str) -> None:
    """Import the protobuf module of every ``@type`` found, so json_format can resolve it."""
    if isinstance(node, dict):
        type_url = node.get("@type")
        if isinstance(type_url, str):
            ensure_type_imported(type_url, f"{path}.@type" if path else "@type")
        for key, value in node.items():
            _import_any_types(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _import_any_types(value, f"{path}[{i}]")


def ensure_type_imported(type_url: str, path: str = "") -> None:
    full_name = type_url.rsplit("/", 1)[-1]
    if not _import_message_type(full_name):
        raise ConfigError(path, f"unknown type URL {type_url!r}: no such message in Envoy's API")


@lru_cache(maxsize=None)
def _import_message_type(full_name: str) -> bool:
    """Import every *_pb2 module of the message's proto package; True if it is then known."""
    db = symbol_database.Default()
    try:
        db.GetSymbol(full_name)
        return True
    except KeyError:
        pass
    package = full_name.rsplit(".", 1)[0]
    # Nested messages (a.b.v3.Outer.Inner): walk up until a real package is found.
    while package:
        try:
            module = importlib.import_module(package)
        except ImportError:
            package = package.rpartition(".")[0]
            continue
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            if info.name.endswith("_pb2"):
                importlib.import_module(f"{package}.{info.name}")
        break
    try:
        db.GetSymbol(full_name)
        return True
    except KeyError:
        return False


_FIELD_PREFIX = re.compile(r"Failed to parse (\w+) field: ")
_AT_PATH = re.compile(r' at "?([\w.\[\]@]+?)"?\.*$')
_NO_FIELD = re.compile(r'has no field named "([^"]+)"')


def _parse_error_to_config_error(text: str, root: str) -> ConfigError:
    """Turn json_format's nested message into ``path: reason``.

    json_format says e.g. 'Failed to parse static_resources field: ... Message
    type "X" has no field named "bogus" at "Bootstrap.static_resources.listeners[0]"';
    we report 'static_resources.listeners[0].bogus: unknown field'.  Some of its
    messages carry the path (with indices), others only the chain of field names.
    """
    first_line = text.splitlines()[0] if text else text
    fields = _FIELD_PREFIX.findall(first_line)
    reason = first_line.rsplit("field: ", 1)[-1]
    at = _AT_PATH.search(reason)
    if at:
        reason = reason[: at.start()]
        path = at.group(1)
        path = "" if path == root else path.removeprefix(root + ".")
    else:
        path = ".".join(fields)
    no_field = _NO_FIELD.search(reason)
    if no_field:
        path = f"{path}.{no_field.group(1)}" if path else no_field.group(1)
        reason = "unknown field"
    return ConfigError(path, reason.strip().rstrip(".") or first_line)
