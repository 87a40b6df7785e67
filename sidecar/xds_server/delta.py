"""Incremental (Delta) ADS (DeltaAggregatedResources) for one stream, sans-IO.

Per type URL we track the subscription (wildcard and/or names) and what the
client holds (name -> version, seeded from initial_resource_versions), and send
only the difference.  Rules from Envoy's xDS protocol doc, "Incremental xDS":
- subscription changes are honoured even when the request's nonce is stale;
- names in resource_names_subscribe are resent even if the client should have them;
- a subscribed name that does not exist is reported in removed_resources;
- unsubscribing a name while "*" is subscribed gets that name resent or removed,
  so the client knows whether the wildcard still covers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from sidecar.xds_server.protocol import (WILDCARD, WILDCARD_TYPES, Peer, log, names_text, next_nonce,
                                         push_order, quoted)
from sidecar.xds_server.resources import CLUSTER, ENDPOINT, Resource, ResourceSet


@dataclass(slots=True)
class TypeState:
    """One type URL on this stream: the subscription and the client's copy of it."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    has: dict[str, str] = field(default_factory=dict)     # what the client holds: name -> version
    told_absent: set[str] = field(default_factory=set)    # names we already said do not exist
    nonce: str = ""
    version: str = ""                                      # system_version_info of that response

    def in_scope(self, name: str) -> bool:
        return self.wildcard or name in self.names


@dataclass(slots=True)
class Delta:
    """One response's worth of difference."""

    send: list[Resource]
    removed: list[str]

    def __bool__(self) -> bool:
        return bool(self.send or self.removed)


def compute_delta(state: TypeState, current: Mapping[str, Resource], force: set[str]) -> Delta:
    """What the client lacks (new or newer version, or forced) and what it must drop."""
    send = [r for name, r in current.items()
            if state.in_scope(name) and (name in force or state.has.get(name) != r.version)]
    removed = {name for name in state.has if name not in current}
    removed |= {name for name in state.names - state.told_absent if name not in current}
    removed |= {name for name in force if name not in current}
    return Delta(send, sorted(removed))


class DeltaSession:
    """One DeltaAggregatedResources stream."""

    def __init__(self) -> None:
        self.peer = Peer("delta")
        self.types: dict[str, TypeState] = {}

    def on_request(self, request: Any, resources: ResourceSet) -> list[Any]:
        """A DeltaDiscoveryRequest came in; returns the responses to send (zero or one)."""
        self.peer.learn(request.node.id)
        type_url = request.type_url
        first = type_url not in self.types
        state = self.types.setdefault(type_url, TypeState())
        was_wildcard = state.wildcard
        if first:
            # The client tells us what it kept from an earlier stream, so we do not resend it.
            state.has = dict(request.initial_resource_versions)
            subscribes_nothing = not (request.resource_names_subscribe or request.resource_names_unsubscribe)
            state.wildcard = type_url in WILDCARD_TYPES and subscribes_nothing   # legacy wildcard
        force = self._apply_subscription(state, request, first=first)
        self._log_request(request, state, first=first)
        delta = compute_delta(state, resources.of_type(type_url), force)
        # A fresh wildcard subscription always gets an answer, even an empty one:
        # Envoy's initialization waits for the first LDS/CDS response.
        if delta or (state.wildcard and not was_wildcard):
            return [self._response(type_url, state, resources, delta)]
        return []

    def on_resources(self, resources: ResourceSet) -> list[Any]:
        """The resource set was replaced; returns one response per type whose delta is not empty."""
        responses = []
        resend_eds: set[str] = set()
        for type_url in push_order(self.types):
            state = self.types[type_url]
            force = {n for n in resend_eds if state.in_scope(n)} if type_url == ENDPOINT else set()
            delta = compute_delta(state, resources.of_type(type_url), force)
            if delta:
                responses.append(self._response(type_url, state, resources, delta))
            if type_url == CLUSTER:
                # An updated EDS cluster warms until it receives its ClusterLoadAssignment,
                # but over Delta, Envoy 1.40 does not ask again for an unchanged one (its
                # unsubscribe and resubscribe cancel out), so the cluster would stay warming
                # until initial_fetch_timeout.  Resend it, as Istio does (envoy#31535).
                resend_eds = {r.eds_name for r in delta.send if r.eds_name}
        return responses

    def _apply_subscription(self, state: TypeState, request: Any, *, first: bool) -> set[str]:
        """Update the subscription; returns the names that must be answered whatever the client has."""
        force: set[str] = set()
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                state.wildcard = True
            else:
                state.names.add(name)
                # On a new stream, initial_resource_versions says what the client has;
                # later, a subscribe means the client may have forgotten it.
                if not first:
                    force.add(name)
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
            else:
                state.names.discard(name)
                if state.wildcard:
                    force.add(name)
        # What the client no longer subscribes to needs no removal notice; forget it.
        state.has = {n: v for n, v in state.has.items() if state.in_scope(n) or n in force}
        state.told_absent = {n for n in state.told_absent if n in state.names and n not in force}
        return force

    def _response(self, type_url: str, state: TypeState, resources: ResourceSet, delta: Delta) -> Any:
        state.nonce = next_nonce()
        state.version = resources.type_version(type_url)
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=state.version, type_url=type_url, nonce=state.nonce,
            removed_resources=delta.removed)
        for r in delta.send:
            response.resources.add(name=r.name, version=r.version).resource.CopyFrom(r.body)
            state.has[r.name] = r.version
            state.told_absent.discard(r.name)
        for name in delta.removed:
            state.has.pop(name, None)
            if name in state.names:
                state.told_absent.add(name)
        log.info("%s", self.peer.line("SEND", type_url, version=state.version, nonce=state.nonce,
                                      resources=names_text(r.name for r in delta.send),
                                      removed=names_text(delta.removed)))
        return response

    def _log_request(self, request: Any, state: TypeState, *, first: bool) -> None:
        type_url, nonce = request.type_url, request.response_nonce
        fields = {}
        if request.resource_names_subscribe:
            fields["subscribe"] = names_text(request.resource_names_subscribe)
        if request.resource_names_unsubscribe:
            fields["unsubscribe"] = names_text(request.resource_names_unsubscribe)
        if first:
            fields.setdefault("subscribe", WILDCARD if state.wildcard else "[]")
            known = str(len(request.initial_resource_versions))
            log.info("%s", self.peer.line("SUBSCRIBE", type_url, known=known, **fields))
        elif not nonce:
            log.info("%s", self.peer.line("UPDATE", type_url, **fields))
        elif nonce != state.nonce:
            # Not an answer to our latest response; its subscription change still counts (protocol).
            log.info("%s", self.peer.line("STALE", type_url, nonce=nonce, latest=state.nonce, **fields))
        elif request.HasField("error_detail"):
            log.info("%s", self.peer.line("NACK", type_url, rejected=state.version, nonce=nonce,
                                          error=quoted(request.error_detail.message), **fields))
        else:
            log.info("%s", self.peer.line("ACK", type_url, version=state.version, nonce=nonce, **fields))
