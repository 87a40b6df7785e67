"""The ADS gRPC service on grpc.aio: one protocol session per stream, plus the server lifecycle.

Each stream is one loop over one queue that receives both the client's requests
(from a reader task) and resource-set replacements (from the store), so a
session's state is only ever touched by that loop, in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from sidecar.xds_server.delta import DeltaSession
from sidecar.xds_server.protocol import Peer
from sidecar.xds_server.resources import ResourceSet
from sidecar.xds_server.sotw import SotwSession
from sidecar.xds_server.store import ResourceStore
from sidecar.xds_server.watch import watch_config

log = logging.getLogger("sidecar.xds_server")

# Open streams never finish on their own; this is how long a stop waits before cancelling them.
STOP_GRACE_S = 0.5


class Session(Protocol):
    peer: Peer

    def on_request(self, request: Any, resources: ResourceSet) -> list[Any]: ...

    def on_resources(self, resources: ResourceSet) -> list[Any]: ...


class _End:
    """Queued when the client's half of the stream ends."""


_END = _End()


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Both ADS variants over the same store."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store

    # grpc.aio treats an async generator method as a response-streaming handler.
    async def StreamAggregatedResources(self, request_iterator: AsyncIterator[Any],
                                        context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in self._run(SotwSession(), request_iterator):
            yield response

    async def DeltaAggregatedResources(self, request_iterator: AsyncIterator[Any],
                                       context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in self._run(DeltaSession(), request_iterator):
            yield response

    async def _run(self, session: Session, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        events: asyncio.Queue[Any] = asyncio.Queue()
        stop_watching = self.store.watch(events.put_nowait)
        reader = asyncio.create_task(_read_requests(requests, events))
        try:
            while True:
                event = await events.get()
                if event is _END:
                    return
                if isinstance(event, ResourceSet):
                    responses = session.on_resources(event)
                else:
                    responses = session.on_request(event, self.store.current)
                for response in responses:
                    yield response
        except Exception:
            log.exception("stream failed (%s) node=%s", session.peer.kind, session.peer.node_id or "?")
            raise
        finally:
            stop_watching()
            reader.cancel()       # owned by this stream; cancelled with it
            log.info("stream closed (%s) node=%s", session.peer.kind, session.peer.node_id or "?")


async def _read_requests(requests: AsyncIterator[Any], events: asyncio.Queue[Any]) -> None:
    try:
        async for request in requests:
            events.put_nowait(request)
    except grpc.aio.AioRpcError as e:
        log.debug("stream read ended: %s", e.code())
    finally:
        events.put_nowait(_END)


def _target(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def serve(store: ResourceStore, address: str, port: int) -> int:
    """Serve ADS until SIGTERM/SIGINT; 0 on a clean stop, 1 if the port cannot be bound."""
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AdsServicer(store), server)
    try:
        bound = server.add_insecure_port(_target(address, port))
    except RuntimeError as e:           # grpcio raises when the bind fails
        log.critical("cannot listen on %s: %s", _target(address, port), e)
        return 1
    await server.start()
    log.info("xds-server listening on %s", _target(address, bound))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(watch_config(store))
            await stop.wait()
            log.info("stopping")
            watcher.cancel()
            await server.stop(STOP_GRACE_S)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
