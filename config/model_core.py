"""Model pieces the others share (Envoy's core.v3): addresses, header mutations, config sources."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SocketAddress:
    address: str
    port: int
    ipv4_compat: bool = False

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.address


# --- headers -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HeaderValueOption:
    """envoy.config.core.v3.HeaderValueOption: a header to add, and how."""

    name: str                # lower-case
    value: str
    # APPEND_IF_EXISTS_OR_ADD | ADD_IF_ABSENT | OVERWRITE_IF_EXISTS_OR_ADD | OVERWRITE_IF_EXISTS
    action: str = "APPEND_IF_EXISTS_OR_ADD"
    keep_empty_value: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMutations:
    """One level's *_headers_to_add / *_headers_to_remove (``None`` stands for none at all)."""

    add: tuple[HeaderValueOption, ...] = ()
    remove: tuple[str, ...] = ()


# --- config sources --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GrpcService:
    """An xDS management server and the variant it speaks (ads_config or an api_config_source)."""
    delta: bool                                 # DELTA_GRPC (else GRPC, State of the World)
    cluster_name: str = ""                      # envoy_grpc: a static cluster
    target_uri: str = ""                        # google_grpc
    set_node_on_first_message_only: bool = False


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where one resource type comes from: the ADS stream, its own gRPC stream, or a file."""
    ads: bool = False
    grpc: GrpcService | None = None             # api_config_source (non-aggregated)
    path: str = ""                              # path_config_source: a DiscoveryResponse file
