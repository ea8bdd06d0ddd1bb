"""Bench-only server: the real app (HTTP signaling, WebRTC gateway, CallManager, Conversation,
Playout, store) with either the fake engines of tests/pipeline/fakes.py or the real models, plus
``GET /bench/stats`` with per-call outbound-track stats and the process's CPU time.

  python -m bench.call_load_server --engines fake|real --port-file FILE

Listens on 127.0.0.1 on a free port and writes ``http://127.0.0.1:PORT`` to ``--port-file`` once
it answers. SIGTERM stops it cleanly (calls hung up, engines closed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from fastapi import Request

from voiceagent.config import load_settings
from voiceagent.engines.base import ChatMessage, LLMDelta, ToolSpec, Transcript
from voiceagent.pipeline.frames import TurnCompleted
from voiceagent.runtime import Runtime

# The fake reply: two sentences, 9 words, ~2.25 s of FakeTTS audio.
REPLY_TOKENS = ("Sure", ",", " here", " is", " an", " answer", ".", " That", " is", " all", ".")


def _fake_engines(runtime: Runtime) -> None:
    from tests.pipeline.fakes import SPEECH_BASE, FakeASR, FakeLLM, FakeTTS, FakeVAD, ScriptedReply

    class BenchASR(FakeASR):
        """Any voiced audio (a tone through Opus, not the exact SPEECH_BASE+k values) is one question."""

        async def transcribe(
            self, pcm: bytes, *, partial: bool = False, language: str | None = None, prompt: str | None = None
        ) -> Transcript:
            import numpy as np

            await asyncio.sleep(self.delay_s)
            voiced = pcm and int(np.abs(np.frombuffer(pcm, dtype="<i2")).max()) >= SPEECH_BASE
            text = ("What can you do" if partial else "What can you do for me today?") if voiced else ""
            return Transcript(
                text=text,
                language="en",
                duration_s=len(pcm) / 32000,
                processing_s=self.delay_s,
                partial=partial,
            )

    class EndlessLLM(FakeLLM):
        def stream(
            self,
            messages: Sequence[ChatMessage],
            *,
            tools: Sequence[ToolSpec] = (),
            max_tokens: int | None = None,
            temperature: float | None = None,
        ) -> AsyncGenerator[LLMDelta, None]:
            self.replies.append(ScriptedReply(tokens=REPLY_TOKENS))
            self.requests.clear()  # unbounded otherwise
            return super().stream(messages, tools=tools, max_tokens=max_tokens, temperature=temperature)

    class LeanVAD(FakeVAD):
        def stream(self) -> Any:
            stream = super().stream()
            self.streams.clear()  # do not keep every call's stream alive
            return stream

    class LeanTTS(FakeTTS):
        async def synthesize(self, text: str) -> Any:
            self.started.clear()
            async for chunk in super().synthesize(text):
                yield chunk

    engines = runtime.engines
    engines.vad = LeanVAD()
    engines.asr = BenchASR({})
    engines.llm = EndlessLLM([])
    engines.tts = LeanTTS()
    engines.load_s = {"fake": 0.0}
    engines._loaded.set()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _stats(runtime: Runtime, lag: dict[str, float]) -> dict[str, Any]:
    calls: dict[str, Any] = {}
    for call_id, transport in runtime.calls.gateway.calls.items():
        stats = transport.outbound_stats
        session = runtime.calls.sessions.get(call_id)
        turns = [e for e in session.events if isinstance(e, TurnCompleted)] if session else []
        calls[call_id] = {
            "connected": transport.connected,
            "out_frames": stats.frames,
            "late_frames": stats.late_frames,
            "resyncs": stats.resyncs,
            "max_late_s": round(stats.max_late_s, 4),
            "inbound_dropped": transport.inbound_dropped,
            "turns": len(turns),
            "answered_turns": sum(1 for t in turns if t.agent_text.strip()),
            "v2v_s": [t.metrics.voice_to_voice_s for t in turns if t.metrics.voice_to_voice_s is not None],
        }
    return {
        "time": time.monotonic(),
        "cpu_s": _cpu_s(),
        "loop_lag_max_s": round(lag["max"], 4),
        "gateway_late_frames": runtime.calls.gateway.late_frames,
        "calls": calls,
    }


async def _serve(engines: str, port_file: Path) -> None:
    import uvicorn

    from voiceagent.server.app import create_app

    settings = load_settings()
    if engines == "fake":
        settings = settings.model_copy(
            update={"engines": settings.engines.model_copy(update={"preload": False})}
        )
    runtime = Runtime(settings)
    await runtime.start()
    if engines == "fake":
        _fake_engines(runtime)
    app = create_app(runtime)
    lag = {"max": 0.0}

    @app.get("/bench/stats", include_in_schema=False)
    async def bench_stats(request: Request) -> dict[str, Any]:
        if request.query_params.get("reset"):
            lag["max"] = 0.0
        return _stats(runtime, lag)

    async def watch_lag() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            lag["max"] = max(lag["max"], loop.time() - before - 0.01)

    lag_task = asyncio.create_task(watch_lag())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))  # uvicorn handles SIGTERM
    for _ in range(600):  # uvicorn has no "started" event to wait on
        if server.started or serving.done():
            break
        await asyncio.sleep(0.05)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(f"http://127.0.0.1:{sock.getsockname()[1]}")
    os.replace(tmp, port_file)
    await serving
    lag_task.cancel()
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", choices=("fake", "real"), default="fake")
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.engines, args.port_file))


if __name__ == "__main__":
    main()
