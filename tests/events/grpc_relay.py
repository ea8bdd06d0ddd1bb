"""A gRPC relay in front of the real RocketMQ proxy, to take "the broker" down and bring it back
without restarting the shared broker.

The local proxy names itself (127.0.0.1:8081) in every route, so heartbeats, sends and telemetry
would bypass a plain TCP forwarder; the relay rewrites routes to point at itself, so every call
of a client configured with ``relay.address`` goes through it. ``stop()`` closes the port and
cuts every call in flight, like a proxy that died; ``start()`` listens again on the same port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from rocketmq.grpc_protocol.service_pb2 import QueryRouteResponse

SERVICE = "/apache.rocketmq.v2.MessagingService/"
STREAMING = {"ReceiveMessage": "unary_stream", "PullMessage": "unary_stream", "Telemetry": "stream_stream"}
DROPPED_HEADERS = {"user-agent", "te", "content-type"}


class Relay(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.upstream)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self,))
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace=None)

    async def close(self) -> None:
        await self.stop()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # -- forwarding --------------------------------------------------------------------------

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(handler_call_details.method)
        if not method.startswith(SERVICE):
            return None
        kind = STREAMING.get(method.removeprefix(SERVICE), "unary_unary")
        if kind == "unary_stream":
            return grpc.unary_stream_rpc_method_handler(self._unary_stream(method))
        if kind == "stream_stream":
            return grpc.stream_stream_rpc_method_handler(self._stream_stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary_unary(method))

    @property
    def channel(self) -> grpc.aio.Channel:
        assert self._channel is not None, "relay not started"
        return self._channel

    @staticmethod
    def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> list[tuple[str, str | bytes]]:
        return [
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if not key.startswith((":", "grpc-")) and key not in DROPPED_HEADERS
        ]

    def _rewrite_route(self, body: bytes) -> bytes:
        response = QueryRouteResponse.FromString(body)
        for queue in response.message_queues:
            addresses = queue.broker.endpoints.addresses
            del addresses[:]
            addresses.add(host="127.0.0.1", port=self.port)
        return bytes(response.SerializeToString())

    def _unary_unary(self, method: str) -> Callable[..., Awaitable[bytes]]:
        async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            try:
                body = await self.channel.unary_unary(method)(
                    request, metadata=self._metadata(context), timeout=context.time_remaining()
                )
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            return self._rewrite_route(body) if method.endswith("/QueryRoute") else bytes(body)

        return call

    def _unary_stream(self, method: str) -> Callable[..., AsyncIterator[bytes]]:
        async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
            upstream = self.channel.unary_stream(method)(
                request, metadata=self._metadata(context), timeout=context.time_remaining()
            )
            async for response in _forward(upstream, context):
                yield response

        return call

    def _stream_stream(self, method: str) -> Callable[..., AsyncIterator[bytes]]:
        async def call(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            upstream = self.channel.stream_stream(method)(requests, metadata=self._metadata(context))
            async for response in _forward(upstream, context):
                yield response

        return call


async def _forward(upstream: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
    """Upstream's responses, its errors passed on as this call's status."""
    try:
        async for response in upstream:
            yield response
    except grpc.aio.AioRpcError as exc:
        await context.abort(exc.code(), exc.details() or "")
    except asyncio.CancelledError:  # the relay stopped under this call: that is the point
        upstream.cancel()
