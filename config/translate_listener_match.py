"""Listener protobuf -> model, the parts beyond one chain: listener filters, filter_chain_match,
default_filter_chain, use_original_dst and the listener filter timeout.

Mixed into the Translator (config/translate.py), whose ``listener()`` calls ``listener_extras``.
"""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any

from google.protobuf.message import Message

from config import model
from config.translate_base import TranslatorBase, optional_timeout, wrapped

_LISTENER_FILTER = "type.googleapis.com/envoy.extensions.filters.listener."
LISTENER_FILTER_TYPES = {
    _LISTENER_FILTER + "original_dst.v3.OriginalDst": "original_dst",
    _LISTENER_FILTER + "http_inspector.v3.HttpInspector": "http_inspector",
    _LISTENER_FILTER + "tls_inspector.v3.TlsInspector": "tls_inspector",
}


class ListenerMatchTranslator(TranslatorBase):

    def listener_filters(self, filters: Any, path: str) -> tuple[model.ListenerFilter, ...]:
        out = []
        for i, f in enumerate(filters):
            p = f"{path}[{i}]"
            self.only(f, p, ("name", "typed_config", "filter_disabled"))
            kind = LISTENER_FILTER_TYPES.get(f.typed_config.type_url)
            if kind is None:
                # Envoy 1.40 looks listener filters up by type URL only.
                self.error(p, f"Didn't find a registered implementation for '{f.name}' with type "
                           f"URL: '{f.typed_config.type_url.rsplit('/', 1)[-1]}' (listener filters: "
                           "original_dst, http_inspector, tls_inspector)")
                continue
            msg = self.unpack(f.typed_config, f"{p}.typed_config")
            if msg is None:
                continue
            if kind == "tls_inspector":
                # The ClientHello is read whole (up to Envoy's 16 KiB default); fingerprints: no.
                self.only(msg, f"{p}.typed_config", ("initial_read_buffer_size",))
            else:
                self.only(msg, f"{p}.typed_config", ())
            disabled = (self.filter_predicate(f.filter_disabled, f"{p}.filter_disabled")
                        if f.HasField("filter_disabled") else None)
            out.append(model.ListenerFilter(kind, f.name, disabled))
        return tuple(out)

    def filter_predicate(self, m: Message, path: str) -> model.ListenerFilterPredicate:
        """A ListenerFilterChainMatchPredicate: or / and / not / any / destination_port_range."""
        which = m.WhichOneof("rule")
        if which in ("or_match", "and_match"):
            rules = getattr(m, which).rules
            if len(rules) < 2:
                self.error(f"{path}.{which}.rules", "value must contain at least 2 item(s)")
            return model.ListenerFilterPredicate("and" if which == "and_match" else "or", tuple(
                self.filter_predicate(r, f"{path}.{which}.rules[{i}]") for i, r in enumerate(rules)))
        if which == "not_match":
            return model.ListenerFilterPredicate("not", (
                self.filter_predicate(m.not_match, f"{path}.not_match"),))
        if which == "any_match":
            if not m.any_match:
                self.error(f"{path}.any_match", "value must equal true")
            return model.ListenerFilterPredicate("any")
        if which == "destination_port_range":
            r = m.destination_port_range
            if r.end <= r.start:
                self.error(f"{path}.destination_port_range", "end must be greater than start")
            return model.ListenerFilterPredicate("port", port_start=r.start, port_end=r.end)
        self.error(path, "a rule is required")
        return model.ListenerFilterPredicate("any")

    def listener_extras(self, lst: Message, path: str, chains: list[model.FilterChain],
                        default: model.FilterChain | None) -> dict[str, Any]:
        """The model.Listener fields for listener filters and chain selection."""
        filters = self.listener_filters(lst.listener_filters, f"{path}.listener_filters")
        matching = len(chains) > 1 or any(c.match is not None for c in chains) or (
            default is not None and bool(chains))
        if matching:
            self.check_unique_matches(lst, path)
            for i, chain in enumerate(chains):
                nf = chain.filter
                if isinstance(nf, model.HttpConnectionManager) and nf.rds_config_source is not None:
                    self.error(f"{path}.filter_chains[{i}]", "rds in a listener with several filter "
                               "chains is not supported yet (use route_config)")
        return dict(
            filter_chains=tuple(chains) if matching else (),
            default_filter_chain=default if matching else None,
            listener_filters=filters,
            listener_filters_timeout=optional_timeout(lst, "listener_filters_timeout", 15.0),
            continue_on_listener_filters_timeout=lst.continue_on_listener_filters_timeout,
            use_original_dst=wrapped(lst, "use_original_dst", False))

    def filter_chain_match(self, m: Message, path: str) -> model.FilterChainMatch | None:
        self.only(m, path, ("destination_port", "prefix_ranges", "source_prefix_ranges",
                            "source_ports", "server_names", "transport_protocol",
                            "application_protocols", "source_type"))
        if m.source_type != 0:
            self.error(f"{path}.source_type", "only ANY is supported yet")
        port = wrapped(m, "destination_port", None)
        if port is not None and not 1 <= port <= 65535:
            self.error(f"{path}.destination_port", "value must be inside range [1, 65535]")
        for i, name in enumerate(m.server_names):
            if "*" in name and not (name.startswith("*.") and "*" not in name[1:]):
                self.error(f"{path}.server_names[{i}]",
                           f"partial wildcards are not supported in \"server_names\": {name!r}")
        return model.FilterChainMatch(
            destination_port=port,
            prefix_ranges=self.cidr_ranges(m.prefix_ranges, f"{path}.prefix_ranges"),
            source_prefix_ranges=self.cidr_ranges(m.source_prefix_ranges, f"{path}.source_prefix_ranges"),
            source_ports=frozenset(m.source_ports),
            server_names=tuple(n.lower() for n in m.server_names),
            transport_protocol=m.transport_protocol,
            application_protocols=tuple(m.application_protocols))

    def cidr_ranges(self, ranges: Any, path: str) -> tuple[Any, ...]:
        out = []
        for i, r in enumerate(ranges):
            p = f"{path}[{i}]"
            self.only(r, p, ("address_prefix", "prefix_len"))
            try:
                ip = ipaddress.ip_address(r.address_prefix)
            except ValueError:
                self.error(f"{p}.address_prefix", f"malformed IP address: {r.address_prefix}")
                continue
            length = wrapped(r, "prefix_len", 0)
            if length > ip.max_prefixlen:
                self.error(f"{p}.prefix_len", f"must be at most {ip.max_prefixlen}")
                continue
            # Envoy masks the address to the prefix (10.1.2.3/8 is 10.0.0.0/8).
            out.append(ipaddress.ip_network(f"{ip}/{length}", strict=False))
        return tuple(out)

    def check_unique_matches(self, lst: Message, path: str) -> None:
        """Envoy rejects a listener where two chains match the same connections."""
        seen: dict[tuple[Any, ...], int] = {}
        for i, fc in enumerate(lst.filter_chains):
            m = fc.filter_chain_match
            dims = (
                [wrapped(m, "destination_port", 0)],
                [f"{r.address_prefix}/{wrapped(r, 'prefix_len', 0)}" for r in m.prefix_ranges] or [""],
                [n.lower() for n in m.server_names] or [""],
                [m.transport_protocol],
                list(m.application_protocols) or [""],
                [f"{r.address_prefix}/{wrapped(r, 'prefix_len', 0)}" for r in m.source_prefix_ranges]
                or [""],
                list(m.source_ports) or [0],
            )
            for key in itertools.product(*dims):
                if key in seen and seen[key] != i:
                    sa = lst.address.socket_address
                    self.error(f"{path}.filter_chains[{i}]",
                               f"error adding listener '{sa.address}:{sa.port_value}': multiple "
                               "filter chains with overlapping matching rules are defined")
                    return
                seen[key] = i
