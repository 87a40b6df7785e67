"""A real grpcio server with the four RPC shapes, raw bytes in and out (no generated code).

Methods of service ``test.Echo``:
- ``Unary``: echoes the request; metadata ``x-fail: CODE[:details]`` aborts with that status,
  ``x-sleep: S`` waits first;
- ``ClientStream``: answers the concatenation of every request message;
- ``ServerStream``: the request is a count N; answers N messages ``b"msg-<i>"``, each after
  ``x-sleep`` seconds;
- ``Bidi``: echoes each message as it comes.
Every call's initial metadata ``x-echo`` comes back as initial metadata, and a trailing
``x-trailer: done`` is sent.  ``cancelled`` counts calls the server saw cancelled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "test.Echo"
MAX_MESSAGE = 8 * 1024 * 1024


def _identity(data: bytes) -> bytes:
    return data


class EchoService:
    def __init__(self) -> None:
        self.cancelled = 0
        self.calls = 0
        self.lock = threading.Lock()
        self.peak_concurrent = 0
        self.active = 0

    # --- helpers ---------------------------------------------------------------------

    def _begin(self, context: grpc.ServicerContext) -> dict[str, str]:
        metadata = dict(context.invocation_metadata())
        with self.lock:
            self.calls += 1
            self.active += 1
            self.peak_concurrent = max(self.peak_concurrent, self.active)
        context.add_callback(self._end)
        if "x-echo" in metadata:
            context.send_initial_metadata((("x-echo", metadata["x-echo"]),))
        context.set_trailing_metadata((("x-trailer", "done"),))
        fail = metadata.get("x-fail")
        if fail:
            code, _, details = fail.partition(":")
            context.abort(grpc.StatusCode[code], details)
        return metadata

    def _end(self) -> None:
        with self.lock:
            self.active -= 1

    def _sleep(self, metadata: dict[str, str], context: grpc.ServicerContext) -> None:
        delay = float(metadata.get("x-sleep", "0"))
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if not context.is_active():
                with self.lock:
                    self.cancelled += 1
                return
            time.sleep(0.01)

    # --- the methods -------------------------------------------------------------------

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = self._begin(context)
        self._sleep(metadata, context)
        return request

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._begin(context)
        return b"".join(requests)

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        metadata = self._begin(context)
        for i in range(int(request or b"0")):
            self._sleep(metadata, context)
            if not context.is_active():
                return
            yield f"msg-{i}".encode()

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._begin(context)
        for message in requests:
            yield message

    def handler(self) -> grpc.GenericRpcHandler:
        kw: dict[str, Any] = {"request_deserializer": _identity, "response_serializer": _identity}
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary, **kw),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream, **kw),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream, **kw),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi, **kw),
        })


class GrpcServer:
    """``with GrpcServer() as s``: the echo service on 127.0.0.1:``s.port`` (``service``: an
    EchoService of the test's own, e.g. one that records what it got)."""

    def __init__(self, workers: int = 64, service: EchoService | None = None) -> None:
        self.service = service or EchoService()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_concurrent_streams", 2000)])
        self.server.add_generic_rpc_handlers((self.service.handler(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def __enter__(self) -> GrpcServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)


def stubs(channel: grpc.Channel) -> dict[str, Any]:
    """The four methods as callables on ``channel``."""
    kw: dict[str, Any] = {"request_serializer": _identity, "response_deserializer": _identity}
    return {"unary": channel.unary_unary(f"/{SERVICE}/Unary", **kw),
            "client_stream": channel.stream_unary(f"/{SERVICE}/ClientStream", **kw),
            "server_stream": channel.unary_stream(f"/{SERVICE}/ServerStream", **kw),
            "bidi": channel.stream_stream(f"/{SERVICE}/Bidi", **kw)}


def channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE)])
