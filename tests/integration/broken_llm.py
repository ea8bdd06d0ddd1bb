"""An OpenAI-compatible chat endpoint that misbehaves on cue, for fault-injection tests.

Raw asyncio streams on 127.0.0.1 (port 0) in a thread of its own, so a test can put exactly the
fault it wants on the wire: a line that is not JSON, a connection cut mid-body, a stall. A real
framework would tidy those away. Every response says ``Connection: close`` (one request per
connection) and SSE bodies are chunked, so a cut body is visibly cut rather than a clean end.

Faults are scripted for the conversation's questions only: the node's warm-up request (the
registry's ``_warm_llm``: user says "Hi", one token) and ``GET /v1/models`` (its /readyz probe)
are always answered normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["ok", "garbage_after_one", "drop_mid_stream", "stall", "http_500", "non_json"]

OK_ANSWER = ("The answer", " is", " four.")
# What the faults that break mid-reply manage to say first: a whole sentence, and for the cut
# connection a second one, so the first is already being spoken when the connection goes.
PARTIAL_FIRST = "Let me think."
PARTIAL_SECOND = " One moment."
PAUSE_BEFORE_DROP_S = 1.5
STALL_MAX_S = 60.0
WARM_UP_TEXT = "Hi"


@dataclass(frozen=True)
class Served:
    """One chat request as seen here: what was asked and which mode answered it."""

    mode: Mode
    user_text: str
    warm_up: bool


class BrokenLLM:
    """Start with ``start()`` (returns the ``/v1`` base URL); ``script(...)`` the modes the next
    questions get, in order (``ok`` once the script runs out)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: deque[Mode] = deque()
        self.served: list[Served] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="broken-llm", daemon=True)
        self._server: asyncio.Server | None = None
        self.base_url = ""

    # -- control (any thread) --------------------------------------------------------------------

    def start(self) -> str:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        ).result(10)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    def stop(self) -> None:
        server = self._server
        if server is not None:

            async def close() -> None:
                server.close()
                handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in handlers:  # a stall still waiting on its client, say
                    task.cancel()
                await asyncio.gather(*handlers, return_exceptions=True)
                await server.wait_closed()

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def script(self, *modes: Mode) -> None:
        """Replace what the next questions get; also forgets what was served before."""
        with self._lock:
            self._script = deque(modes)
            self.served.clear()

    def questions(self) -> list[Served]:
        with self._lock:
            return [s for s in self.served if not s.warm_up]

    def _next_mode(self, body: dict[str, Any]) -> Mode:
        user_text = next(
            (
                str(m.get("content") or "")
                for m in reversed(body.get("messages", []))
                if m.get("role") == "user"
            ),
            "",
        )
        warm_up = user_text == WARM_UP_TEXT or body.get("max_tokens") == 1
        with self._lock:
            mode: Mode = "ok" if warm_up or not self._script else self._script.popleft()
            self.served.append(Served(mode, user_text, warm_up))
        return mode

    # -- serving (the server's own loop) ---------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, body = await _read_request(reader)
            if method == "GET" and path.rstrip("/") == "/v1/models":
                models = {"object": "list", "data": [{"id": "broken", "object": "model", "owned_by": "test"}]}
                writer.write(_response(200, "application/json", json.dumps(models).encode()))
            elif method == "POST" and path == "/v1/chat/completions":
                await self._chat(self._next_mode(json.loads(body)), reader, writer)
            else:
                writer.write(_response(404, "application/json", b'{"error": {"message": "not found"}}'))
            if not writer.transport.is_closing():
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the node hung up first: expected after a stall or an early close
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _chat(self, mode: Mode, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if mode == "http_500":
            error = {"error": {"message": "the model crashed (injected fault)", "type": "server_error"}}
            writer.write(_response(500, "application/json", json.dumps(error).encode()))
            return
        if mode == "non_json":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            writer.write(_response(200, "application/json", page))
            return
        writer.write(_sse_head())
        if mode == "ok":
            for piece in OK_ANSWER:
                writer.write(_event(_chunk(piece)))
                await writer.drain()
            writer.write(_event(_chunk(None, finish="stop")) + _raw_event(b"[DONE]") + _LAST_CHUNK)
        elif mode == "garbage_after_one":
            writer.write(_event(_chunk(PARTIAL_FIRST)) + _raw_event(b"{not json") + _LAST_CHUNK)
        elif mode == "drop_mid_stream":
            writer.write(_event(_chunk(PARTIAL_FIRST)) + _event(_chunk(PARTIAL_SECOND)))
            await writer.drain()
            await asyncio.sleep(PAUSE_BEFORE_DROP_S)
            writer.transport.abort()  # no [DONE], no last chunk: the body is cut
        elif mode == "stall":
            await writer.drain()
            # Headers only, then nothing until the node gives up and closes its end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STALL_MAX_S):
                    while await reader.read(1024):
                        pass


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        return method, path, bytes(body)
    return method, path, await reader.readexactly(int(headers.get("content-length", "0")))


_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}
_LAST_CHUNK = b"0\r\n\r\n"


def _response(status: int, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _sse_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )


def _raw_event(data: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    payload = b"data: " + data + b"\n\n"
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _event(chunk: dict[str, Any]) -> bytes:
    return _raw_event(json.dumps(chunk).encode())


def _chunk(content: str | None, finish: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {} if content is None else {"role": "assistant", "content": content}
    return {
        "id": "chatcmpl-broken",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "broken",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
