"""The OpenAI-compatible LLM engine against the embedded llama.cpp server and against fakes.

The fakes are raw asyncio socket servers so each test controls exactly what goes on the wire: a
port that accepts and never answers, or an SSE stream of tool-call fragments.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from voiceagent.config import LLMSettings, LocalLLMSettings
from voiceagent.engines.base import (
    ChatMessage,
    EngineError,
    EngineTimeout,
    LLMDelta,
    ModelUnavailable,
    ToolSpec,
)
from voiceagent.engines.llm.local_server import LocalLLMServer, open_llm, resolve_model
from voiceagent.engines.llm.openai_compat import OpenAICompatibleLLM

PERSONA = ChatMessage(
    role="system",
    content="You are Ava, the receptionist of Acme Dental. Always introduce yourself as Ava. Be brief.",
)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def user(text: str) -> list[ChatMessage]:
    return [PERSONA, ChatMessage(role="user", content=text)]


async def collect(deltas: AsyncIterator[LLMDelta]) -> list[LLMDelta]:
    return [d async for d in deltas]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[str]:
    """A local endpoint whose behaviour is ``handler``; yields its ``/v1`` base URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> dict[str, object]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body: dict[str, object] = json.loads(await reader.readexactly(length))
    return body


def sse_response(events: Iterable[dict[str, object]]) -> bytes:
    body = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def call_fragment(
    index: int, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, object]:
    """A streamed tool-call piece: id, type and name come only with a call's first fragment."""
    function: dict[str, str] = {"arguments": arguments}
    fragment: dict[str, object] = {"index": index, "function": function}
    if call_id is not None and name is not None:
        fragment.update(id=call_id, type="function")
        function["name"] = name
    return {"tool_calls": [fragment]}


# -- against fakes (no model) -----------------------------------------------------------------


async def test_unreachable_endpoint_is_model_unavailable_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = OpenAICompatibleLLM(LLMSettings(base_url=url, first_token_timeout_s=60))
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match=url):
        await collect(engine.stream(user("hi")))
    # Defect-only bound: a refused loopback connect fails in ms; waiting out the 3 s connect
    # timeout (or retrying with back-off) is what "fast" rules out.
    assert time.perf_counter() - started < 2.5
    await engine.aclose()


async def test_silent_endpoint_times_out_at_first_token_deadline() -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client hangs up
        writer.close()

    async with fake_server(never_answer) as url:
        engine = OpenAICompatibleLLM(LLMSettings(base_url=url, first_token_timeout_s=0.5))
        started = time.perf_counter()
        with pytest.raises(EngineTimeout, match="first token"):
            await collect(engine.stream(user("hi")))
        # Not before the 0.5 s deadline; the upper bound is defect-only: 20x the deadline, far
        # below the 30 s request timeout that a missed first-token deadline would wait for.
        assert 0.4 < time.perf_counter() - started < 10.0
        await engine.aclose()


async def test_stalled_reply_times_out_at_request_deadline() -> None:
    async def one_token_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        event = f"data: {json.dumps(chunk({'content': 'Hel'}))}\n\n".encode()
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    async with fake_server(one_token_then_stall) as url:
        settings = LLMSettings(base_url=url, first_token_timeout_s=0.5, request_timeout_s=1.0)
        engine = OpenAICompatibleLLM(settings)
        texts: list[str] = []
        with pytest.raises(EngineTimeout, match="not finished"):
            async for delta in engine.stream(user("hi")):
                texts.append(delta.text)
        assert texts == ["Hel"]
        await engine.aclose()


async def test_http_error_is_engine_error_with_status_and_message() -> None:
    async def reject(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = json.dumps({"error": {"message": "context too long", "type": "invalid_request_error"}})
        writer.write(
            f"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode()
        )
        await writer.drain()
        writer.close()

    async with fake_server(reject) as url:
        engine = OpenAICompatibleLLM(LLMSettings(base_url=url))
        with pytest.raises(EngineError, match="HTTP 400: context too long"):
            await collect(engine.stream(user("hi")))
        await engine.aclose()


async def test_extra_body_fields_reach_the_server() -> None:
    bodies: list[dict[str, object]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bodies.append(await read_request(reader))
        writer.write(sse_response([chunk({"content": "Hi."}, finish="stop")]))
        await writer.drain()
        writer.close()

    async with fake_server(answer) as url:
        settings = LLMSettings(
            base_url=url,
            extra_body={"repeat_penalty": 1.2, "top_k": 20},
            grounded_extra_body={"repeat_penalty": 1.0},
        )
        engine = OpenAICompatibleLLM(settings)
        assert [d.text for d in await collect(engine.stream(user("hi"))) if d.text] == ["Hi."]
        await collect(engine.stream(user("hi"), grounded=True))  # answering from notes
        await engine.aclose()
    assert bodies[0]["repeat_penalty"] == 1.2 and bodies[0]["top_k"] == 20
    assert bodies[0]["temperature"] == LLMSettings().temperature  # the standard fields are still there
    assert (bodies[1]["repeat_penalty"], bodies[1]["top_k"]) == (1.0, 20)


async def test_tool_calls_are_assembled_from_streamed_fragments() -> None:
    seen: dict[str, object] = {}
    fragments = [
        chunk({"role": "assistant", "content": "Let me check. "}),
        chunk(call_fragment(0, "", call_id="call_a", name="get_weather")),
        chunk(call_fragment(0, '{"city": ')),
        chunk(call_fragment(1, "{}", call_id="call_b", name="book")),
        chunk(call_fragment(0, '"Paris"}')),
        chunk({}, finish="tool_calls"),
    ]

    async def tool_caller(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.update(await read_request(reader))
        writer.write(sse_response(fragments))
        await writer.drain()
        writer.close()

    weather = ToolSpec(
        name="get_weather",
        description="Current weather for a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    async with fake_server(tool_caller) as url:
        engine = OpenAICompatibleLLM(LLMSettings(base_url=url))
        deltas = await collect(engine.stream(user("Weather in Paris?"), tools=[weather]))
        await engine.aclose()

    assert "".join(d.text for d in deltas) == "Let me check. "
    final = deltas[-1]
    assert final.finish_reason == "tool_calls"
    assert [(c.id, c.name, json.loads(c.arguments)) for c in final.tool_calls] == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "book", {}),
    ]
    assert all(not d.tool_calls for d in deltas[:-1])
    assert seen["stream"] is True
    assert seen["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": weather.description,
                                          "parameters": weather.parameters}},
    ]  # fmt: skip


def test_missing_gguf_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"nowhere\.gguf"):
        resolve_model(str(tmp_path / "nowhere.gguf"))
    (tmp_path / "junk.gguf").write_bytes(b"not a model")
    with pytest.raises(ModelUnavailable, match="not a GGUF"):
        resolve_model(str(tmp_path / "junk.gguf"))
    with pytest.raises(ModelUnavailable, match="unknown packaged"):
        resolve_model("packaged:gpt-5")


async def test_missing_gguf_fails_server_start(tmp_path: Path) -> None:
    settings = LLMSettings(local=LocalLLMSettings(model_path=str(tmp_path / "missing.gguf")))
    with pytest.raises(ModelUnavailable, match=r"missing\.gguf"):
        await open_llm(settings)


# -- against the real local server --------------------------------------------------------------

MODULE = pytest.mark.asyncio(loop_scope="module")
# A dropped stream frees its slot within ~0.1 s; a server that went on decoding the 2000-token
# story would stay busy for tens of seconds. 8 s tells the two apart on a busy machine too.
STOP_DECODING_S = 8.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def local_server() -> AsyncIterator[LocalLLMServer]:
    async with LocalLLMServer(LocalLLMSettings(threads=1, parallel=2, context_tokens=2048)) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def local_llm(local_server: LocalLLMServer) -> AsyncIterator[OpenAICompatibleLLM]:
    engine = OpenAICompatibleLLM(
        LLMSettings(max_tokens=48, temperature=0.2, first_token_timeout_s=15, request_timeout_s=60),
        base_url=local_server.base_url,
        keep_alive=False,
    )
    yield engine
    await engine.aclose()


async def busy_slots(server: LocalLLMServer) -> int:
    async with httpx.AsyncClient() as client:
        slots = (await client.get(f"{server.address}/slots")).json()
    return sum(1 for slot in slots if slot["is_processing"])


@pytest.mark.models
@MODULE
async def test_reply_streams_from_local_server(local_llm: OpenAICompatibleLLM) -> None:
    deltas = await collect(local_llm.stream(user("Hello! Who are you?")))
    texts = [d.text for d in deltas if d.text]
    assert len(texts) >= 3
    assert "".join(texts).strip()
    assert deltas[-1].finish_reason in {"stop", "length"}


@pytest.mark.models
@MODULE
async def test_persona_is_roughly_followed(local_llm: OpenAICompatibleLLM) -> None:
    # A 135M model drifts; asking a few times and wanting the name once is all it can promise.
    replies = [
        "".join(d.text for d in await collect(local_llm.stream(user("What is your name?")))) for _ in range(3)
    ]
    assert any("ava" in reply.lower() for reply in replies), replies


@pytest.mark.models
@MODULE
async def test_cancel_mid_stream_stops_generation(
    local_llm: OpenAICompatibleLLM, local_server: LocalLLMServer
) -> None:
    long_story = user("Tell me a very long story about a dragon, with many details.")
    async with aclosing(local_llm.stream(long_story, max_tokens=2000)) as deltas:
        async for _ in deltas:
            assert await busy_slots(local_server) == 1
            break
    started = time.perf_counter()
    while await busy_slots(local_server):
        assert time.perf_counter() - started < STOP_DECODING_S, "server still decoding for a closed stream"
        await asyncio.sleep(0.05)

    task = asyncio.create_task(collect(local_llm.stream(long_story, max_tokens=2000)))
    async with asyncio.timeout(30):  # until it is decoding (a deadline, not a latency bound)
        while not await busy_slots(local_server):
            await asyncio.sleep(0.05)
    started = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Defect-only: cancelling takes ms; a cancel that waits for the reply (or a timeout) does not.
    assert time.perf_counter() - started < 3.0
    while await busy_slots(local_server):
        assert time.perf_counter() - started < STOP_DECODING_S, "server still decoding for a cancelled task"
        await asyncio.sleep(0.05)

    assert "".join(d.text for d in await collect(local_llm.stream(user("Say hi.")))).strip()


@pytest.mark.models
@MODULE
async def test_dropping_the_oldest_exchanges_reuses_the_cached_rest_of_the_conversation(
    local_server: LocalLLMServer,
) -> None:
    """The agent's memory drops old exchanges from the top of the prompt; the server shifts the
    rest of its cached conversation into place (llm.local.cache_reuse_tokens) instead of reading
    it all again: counted in tokens, not timed."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}]
    for i in range(8):
        messages += [
            {"role": "user", "content": f"Question number {i}: what is {i} plus {i}? Tell me."},
            {"role": "assistant", "content": f"The answer to question {i} is {2 * i}, as anyone can see."},
        ]

    async def processed(prompt: list[dict[str, str]]) -> dict[str, int]:
        async with httpx.AsyncClient(timeout=120) as client:
            body = {"model": "local", "messages": prompt, "max_tokens": 1}
            reply = (await client.post(f"{local_server.base_url}/chat/completions", json=body)).json()
        timings: dict[str, int] = reply["timings"]
        return timings

    await processed([*messages, {"role": "user", "content": "Thanks."}])
    kept = [messages[0], *messages[9:], {"role": "user", "content": "Thanks!"}]  # 4 of 8 exchanges dropped
    second = await processed(kept)
    assert second["cache_n"] > 5 * second["prompt_n"], second  # most of it came from the cache


# A recorded call: SmolLM2 began every reply the same way and, by the end, said earlier replies
# again word for word.
COPIED_OPENING = "I'm sorry for any misunderstanding, but as an AI,"
RECORDED = [
    ("Hi there, are you open for dinner tonight?", "I'm designed to help with everyday tasks."),
    ("Do you take reservations for a group of six?", "I don't have the ability to take reservations."),
    ("Is there parking near the restaurant?", "I don't have the ability to provide parking details."),
    ("Do you have gluten-free bread?", "I'm designed to provide information."),
]


@pytest.mark.models
async def test_the_local_servers_repeat_penalty_stops_the_model_copying_its_earlier_replies() -> None:
    history = [PERSONA]
    for question, answer in RECORDED:
        history += [
            ChatMessage(role="user", content=question),
            ChatMessage(role="assistant", content=f"{COPIED_OPENING} {answer}"),
        ]
    history.append(ChatMessage(role="user", content="How do I get there by bus?"))
    local = LocalLLMSettings(threads=1, parallel=1, context_tokens=2048)

    async def greedy_reply(repeat_penalty: float) -> str:
        settings = LLMSettings(
            max_tokens=12, temperature=0, local=local.model_copy(update={"repeat_penalty": repeat_penalty})
        )
        engine, server = await open_llm(settings)
        assert server is not None
        try:
            return "".join(d.text for d in await collect(engine.stream(history)) if d.text)
        finally:
            await engine.aclose()
            await server.stop()

    assert (await greedy_reply(1.0)).startswith("I'm sorry for any")  # the model does copy
    penalized = await greedy_reply(LocalLLMSettings().repeat_penalty)  # the default
    assert penalized.strip() and not penalized.startswith("I'm sorry for any"), penalized


@pytest.mark.models
async def test_open_llm_starts_and_stops_the_local_server() -> None:
    settings = LLMSettings(max_tokens=8, local=LocalLLMSettings(threads=1, parallel=1, context_tokens=512))
    engine, server = await open_llm(settings)
    assert server is not None and server.start_s is not None
    pid, address = server.pid, server.address
    assert pid is not None and address is not None
    try:
        # Two streams in a row: llama.cpp drops the connection after each, the engine must cope.
        for _ in range(2):
            assert any(d.text for d in await collect(engine.stream(user("Hi"))))
    finally:
        await engine.aclose()
        await server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    async with httpx.AsyncClient(timeout=1) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{address}/health")
