"""State of the World ADS (StreamAggregatedResources) for one stream, sans-IO.

Feed it requests and resource-set changes, it returns the responses to send.
Rules from Envoy's xDS protocol doc (api-docs/xds_protocol):
- the nonce pairs an ACK/NACK with our latest response of that type; a request
  carrying an older nonce is stale and gets no response ("Resource updates");
- a response carries the full set of the subscribed resources of its type;
- respond when the subscription changes or the resources change, not with a
  set the client already has ("When to send an update"), unless it asks again
  on a nonce it already answered (Envoy does, to re-warm a cluster; see on_request).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from sidecar.xds_server.protocol import (WILDCARD, WILDCARD_TYPES, Peer, log, names_text, next_nonce,
                                         push_order, quoted)
from sidecar.xds_server.resources import Resource, ResourceSet, versions_hash


@dataclass(slots=True)
class TypeState:
    """What one type URL's subscription looks like on this stream."""

    wildcard: bool = False
    names: frozenset[str] = field(default_factory=frozenset)
    named_before: bool = False      # once a name was given, an empty list means "nothing", not "*"
    nonce: str = ""                 # of our latest response of this type
    version: str = ""               # version_info of our latest response of this type
    answered: bool = False          # the client ACKed/NACKed that response already

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def names_field(self) -> str:
        shown = names_text(self.names) if self.names else ""
        if self.wildcard:
            return WILDCARD + (f"+{shown}" if shown else "")
        return shown or "[]"


def requested_subscription(type_url: str, requested: list[str],
                           state: TypeState) -> tuple[bool, frozenset[str]]:
    """(wildcard, explicit names) that a request's resource_names mean, given what came before."""
    names = frozenset(requested)
    if type_url in WILDCARD_TYPES:
        if WILDCARD in names:
            return True, names - {WILDCARD}
        if not names and not state.named_before:
            return True, names      # the legacy wildcard: LDS/CDS asking for nothing in particular
    return False, names


class SotwSession:
    """One StreamAggregatedResources stream: per type URL, what was asked for and what was sent."""

    def __init__(self) -> None:
        self.peer = Peer("sotw")
        self.types: dict[str, TypeState] = {}

    def on_request(self, request: Any, resources: ResourceSet) -> list[Any]:
        """A DiscoveryRequest came in; returns the DiscoveryResponses to send (zero or one)."""
        self.peer.learn(request.node.id)
        type_url = request.type_url
        state = self.types.get(type_url)
        nonce = request.response_nonce
        if state is not None and nonce and nonce != state.nonce:
            # A newer response is on its way to the client; its ACK/NACK will carry
            # the client's latest subscription, so this request can be dropped.
            log.info("%s (ignored)", self.peer.line("STALE", type_url, version=request.version_info or "-",
                                                       nonce=nonce, latest=state.nonce))
            return []
        first = state is None
        if state is None:
            state = self.types[type_url] = TypeState()
        wildcard, names = requested_subscription(type_url, list(request.resource_names), state)
        changed = first or (wildcard, names) != (state.wildcard, state.names)
        state.wildcard, state.names = wildcard, names
        state.named_before = state.named_before or bool(request.resource_names)
        # The first request carrying our latest nonce is the ACK/NACK.  Envoy sends
        # another one with the same nonce when it re-creates a subscription (a cluster
        # updated by CDS re-subscribes to its unchanged EDS resource and stays
        # warming until it gets a response: xDS protocol, "Resource warming").
        again = bool(nonce) and nonce == state.nonce and state.answered
        state.answered = state.answered or (bool(nonce) and nonce == state.nonce)
        self._log_request(request, state, first=first, changed=changed, again=again)
        # A new stream, a new subscription or a re-request gets an answer even when
        # nothing changed: the client may be waiting for it to finish warming.
        return [self._response(type_url, state, resources)] if changed or again else []

    def on_resources(self, resources: ResourceSet) -> list[Any]:
        """The resource set was replaced; returns one response per subscribed type that changed."""
        responses = []
        for type_url in push_order(self.types):
            state = self.types[type_url]
            if _selected_version(_selected(resources, type_url, state)) != state.version:
                responses.append(self._response(type_url, state, resources))
        return responses

    def _response(self, type_url: str, state: TypeState, resources: ResourceSet) -> Any:
        selected = _selected(resources, type_url, state)
        state.version = _selected_version(selected)
        state.nonce, state.answered = next_nonce(), False
        response = discovery_pb2.DiscoveryResponse(version_info=state.version, type_url=type_url,
                                                   nonce=state.nonce)
        response.resources.extend(r.body for r in selected)
        log.info("%s", self.peer.line("SEND", type_url, version=state.version, nonce=state.nonce,
                                      resources=names_text(r.name for r in selected)))
        return response

    def _log_request(self, request: Any, state: TypeState, *, first: bool, changed: bool,
                     again: bool) -> None:
        type_url, version = request.type_url, request.version_info or "-"
        names = {"names": state.names_field()} if changed else {}
        if first or not request.response_nonce:
            verb = "SUBSCRIBE" if first else "UPDATE"
            log.info("%s", self.peer.line(verb, type_url, version=version, names=state.names_field()))
        elif again:
            log.info("%s", self.peer.line("REQUEST", type_url, version=version, nonce=request.response_nonce,
                                          names=state.names_field()))
        elif request.HasField("error_detail"):
            # version_info is what the client still runs; "rejected" is what we sent.
            log.info("%s", self.peer.line("NACK", type_url, version=version, rejected=state.version,
                                          nonce=request.response_nonce,
                                          error=quoted(request.error_detail.message), **names))
        else:
            log.info("%s", self.peer.line("ACK", type_url, version=version, nonce=request.response_nonce,
                                          **names))


def _selected(resources: ResourceSet, type_url: str, state: TypeState) -> list[Resource]:
    # of_type is sorted by name, so responses are deterministic.
    return [r for name, r in resources.of_type(type_url).items() if state.wants(name)]


def _selected_version(selected: list[Resource]) -> str:
    return versions_hash((r.name, r.version) for r in selected)
