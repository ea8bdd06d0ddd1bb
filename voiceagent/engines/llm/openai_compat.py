"""Chat through any OpenAI-compatible endpoint (the embedded llama.cpp server, vLLM, OpenAI...).

A voice call cannot wait on a stalled model, so every wait is bounded by the settings: the first
token by ``first_token_timeout_s`` (the caller then speaks a fallback line) and the whole reply by
``request_timeout_s``. The deadlines wrap each single read from the stream, never a ``yield``: a
timeout scope held open across a yield would fire into whatever the consumer is doing.

A server that answers but not in the protocol (a body that is not an event stream, an event that
is not a JSON chunk) is an ``EngineError`` too, like a refused connection or an HTTP 500: to the
caller every way the LLM can fail is one kind of failure, with the reason in the message.

Stopping early matters as much: a caller that barges in drops the reply, and the HTTP stream is
closed in ``finally`` so the server stops decoding for a listener that is gone. Consumers that
break out of the loop should wrap the iterator in ``contextlib.aclosing`` to close it at once
rather than when the generator is garbage-collected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCallParam,
)
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from voiceagent.config import LLMSettings
from voiceagent.engines.base import (
    ChatMessage,
    EngineError,
    EngineTimeout,
    LLMDelta,
    LLMEngine,
    ModelUnavailable,
    ToolCall,
    ToolSpec,
)

log = logging.getLogger(__name__)

# Connecting is local or nearly so; a refused or black-holed endpoint should fail well before the
# first-token deadline so the error says "unreachable", not "slow".
_CONNECT_TIMEOUT_S = 3.0
_NO_KEEPALIVE = httpx2.Limits(max_connections=1000, max_keepalive_connections=0)


class OpenAICompatibleLLM(LLMEngine):
    """Streams chat completions.

    ``base_url`` overrides ``settings.base_url`` (the local server's address is only known once it
    runs). ``keep_alive=False`` opens a connection per request, for servers such as llama.cpp's
    that close the connection after every streamed reply while still advertising keep-alive.
    """

    def __init__(
        self, settings: LLMSettings, *, base_url: str | None = None, keep_alive: bool = True
    ) -> None:
        url = base_url or settings.base_url
        if not url:
            raise ValueError("no base_url: set llm.base_url or start the local server first")
        self.settings = settings
        self.base_url = url.rstrip("/")
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=settings.api_key.get_secret_value() or "not-needed",
            # A retry would silently double the caller's wait; the caller has a fallback instead.
            max_retries=0,
            timeout=openai.Timeout(
                settings.request_timeout_s, connect=min(_CONNECT_TIMEOUT_S, settings.first_token_timeout_s)
            ),
            http_client=None if keep_alive else openai.DefaultAsyncHttpxClient(limits=_NO_KEEPALIVE),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
        grounded: bool = False,
    ) -> AsyncGenerator[LLMDelta, None]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        total_deadline = started + self.settings.request_timeout_s
        first_deadline = min(total_deadline, started + self.settings.first_token_timeout_s)
        got_token = False
        stream: openai.AsyncStream[ChatCompletionChunk] | None = None
        calls = _ToolCallAccumulator()
        finish_reason: str | None = None
        try:
            async with asyncio.timeout_at(first_deadline):
                stream = await self._open(
                    [_message_param(m) for m in messages],
                    [_tool_param(t) for t in tools],
                    max_tokens or self.settings.max_tokens,
                    self.settings.temperature if temperature is None else temperature,
                    {**self.settings.extra_body, **self.settings.grounded_extra_body}
                    if grounded
                    else self.settings.extra_body,
                )
            _check_event_stream(stream, self.base_url)
            while True:
                try:
                    async with asyncio.timeout_at(total_deadline if got_token else first_deadline):
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                except ValueError as exc:  # the SDK's json.loads of a `data:` line, or its validation
                    raise EngineError(
                        f"LLM at {self.base_url} sent a malformed stream event"
                        f"{' mid-reply' if got_token else ''}: {type(exc).__name__}: {exc}"
                    ) from exc
                for choice in chunk.choices[:1]:  # n=1: only one choice is ever asked for
                    finish_reason = choice.finish_reason or finish_reason
                    delta = choice.delta
                    if delta.tool_calls:
                        got_token = True
                        calls.add(delta.tool_calls)
                    if delta.content:
                        got_token = True
                        yield LLMDelta(text=delta.content)
            yield LLMDelta(tool_calls=calls.complete(), finish_reason=finish_reason)
        except TimeoutError:
            waited = loop.time() - started
            if got_token:
                raise EngineTimeout(
                    f"LLM at {self.base_url}: reply not finished within {self.settings.request_timeout_s:g} s"
                ) from None
            raise EngineTimeout(
                f"LLM at {self.base_url}: no first token within {waited:.1f} s "
                f"(limit {self.settings.first_token_timeout_s:g} s)"
            ) from None
        except openai.APITimeoutError:
            raise EngineTimeout(f"LLM at {self.base_url}: HTTP timeout") from None
        except openai.APIConnectionError as exc:
            if got_token:
                raise EngineError(
                    f"LLM at {self.base_url}: connection lost mid-reply: {innermost_reason(exc)}"
                ) from exc
            raise ModelUnavailable(
                f"LLM endpoint {self.base_url} is unreachable: {innermost_reason(exc)}"
            ) from exc
        except openai.APIStatusError as exc:
            raise EngineError(
                f"LLM at {self.base_url} answered HTTP {exc.status_code}: {api_error_message(exc)}"
            ) from exc
        except openai.OpenAIError as exc:
            raise EngineError(f"LLM at {self.base_url} failed: {exc}") from exc
        finally:
            if stream is not None:
                # Closing the response drops the connection, which is how the server learns to
                # stop decoding. Shielded so a second cancellation cannot leave it half-open.
                await asyncio.shield(stream.close())

    async def _open(
        self,
        messages: list[ChatCompletionMessageParam],
        tools: list[ChatCompletionFunctionToolParam],
        max_tokens: int,
        temperature: float,
        extra_body: dict[str, Any],
    ) -> openai.AsyncStream[ChatCompletionChunk]:
        for attempt in (1, 2):
            try:
                return await self._client.chat.completions.create(
                    model=self.settings.model,
                    messages=messages,
                    tools=tools or openai.omit,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stream=True,
                    extra_body=extra_body or None,
                )
            except openai.APIConnectionError as exc:
                # A pooled connection the server closed while idle fails before any byte is
                # answered; the request never ran, so one retry on a fresh connection is safe.
                if attempt == 2 or not isinstance(exc.__cause__, httpx2.RemoteProtocolError):
                    raise
                log.debug("LLM at %s: stale pooled connection, retrying once", self.base_url)
        raise AssertionError("unreachable")


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _ToolCallAccumulator:
    """Tool calls arrive as fragments keyed by index: id and name once, arguments in pieces."""

    def __init__(self) -> None:
        self._calls: dict[int, _PendingCall] = {}

    def add(self, fragments: Sequence[ChoiceDeltaToolCall]) -> None:
        for fragment in fragments:
            pending = self._calls.setdefault(fragment.index, _PendingCall())
            if fragment.id:
                pending.id = fragment.id
            if fragment.function is not None:
                if fragment.function.name:
                    pending.name += fragment.function.name
                if fragment.function.arguments:
                    pending.arguments.append(fragment.function.arguments)

    def complete(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(id=call.id or f"call_{index}", name=call.name, arguments="".join(call.arguments) or "{}")
            for index, call in sorted(self._calls.items())
            if call.name
        )


def _message_param(message: ChatMessage) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "user":
        return {"role": "user", "content": message.content}
    if message.role == "tool":
        return {"role": "tool", "content": message.content, "tool_call_id": message.tool_call_id or ""}
    calls: list[ChatCompletionMessageToolCallParam] = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in message.tool_calls
    ]
    if calls:
        return {"role": "assistant", "content": message.content or None, "tool_calls": calls}
    return {"role": "assistant", "content": message.content}


def _tool_param(tool: ToolSpec) -> ChatCompletionFunctionToolParam:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


def _check_event_stream(stream: openai.AsyncStream[ChatCompletionChunk], base_url: str) -> None:
    """The SDK reads any 200 body as SSE and skips lines that are not ``data:`` fields, so an
    HTML error page or a non-streamed JSON completion would pass as an empty reply."""
    content_type = stream.response.headers.get("content-type", "")
    if not content_type.lower().startswith("text/event-stream"):
        raise EngineError(
            f"LLM at {base_url} answered {content_type or 'no content type'}, not an event stream "
            "(a proxy's error page, or a server that does not stream?)"
        )


def innermost_reason(exc: BaseException) -> str:
    """The innermost reason ("Connection refused"), which the SDK's "Connection error." hides."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


def api_error_message(exc: openai.APIStatusError) -> str:
    """The server's own error text from an OpenAI-style error body, else the SDK's."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return exc.message
