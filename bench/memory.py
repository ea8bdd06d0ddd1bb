"""Memory over a long run: the local LLM child's RSS conversation after conversation, and Piper's
RSS over repeated long sentences, with what the settings that bound them cost in synthesis time.

The LLM child grew without levelling off (279 -> 538 MB over 25 six-question calls) while
llama.cpp's prompt cache had its stock 8 GiB cap; Piper kept ~200-440 MB after a few long
sentences in ONNX Runtime's arena. RSS is VmRSS from /proc: what the OS has to give the process.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from pathlib import Path

from bench.results import Metric, metric
from voiceagent.config import load_settings
from voiceagent.engines.base import ChatMessage
from voiceagent.engines.llm.local_server import LocalLLMServer, local_engine
from voiceagent.engines.llm.openai_compat import OpenAICompatibleLLM
from voiceagent.engines.settings import TTSSettings
from voiceagent.engines.tts.piper import PiperTTS

CONVERSATIONS = 30
MAX_TOKENS = 64
PERSONA = "You are Ava, the receptionist of Acme Dental. Answer in one to three short sentences."
QUESTIONS = (
    "Hi, this is caller number {n}. Can I book a cleaning for next week?",
    "What days and hours are you open?",
    "Do you take my insurance, plan number {n}?",
    "How much does a checkup cost without insurance?",
    "Can I bring my child along to the appointment?",
    "Thanks. What should I bring with me on the day?",
)
TTS_ROUNDS = 20
LONG_SENTENCE = (
    "Caller number {n} asked about the appointment on Tuesday morning, so we booked a cleaning "
    "with Doctor Smith at {hour} o'clock and sent a reminder for the day before, with the forms."
)


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def _conversation(engine: OpenAICompatibleLLM, n: int) -> None:
    messages = [ChatMessage(role="system", content=PERSONA)]
    for question in QUESTIONS:
        messages.append(ChatMessage(role="user", content=question.format(n=n)))
        reply = "".join([d.text async for d in engine.stream(messages, max_tokens=MAX_TOKENS)])
        messages.append(ChatMessage(role="assistant", content=reply or "I see."))


async def _llm(out: dict[str, Metric]) -> None:
    settings = load_settings().llm
    local = settings.local
    server = LocalLLMServer(local)
    await server.start()
    assert server.pid is not None
    engine = local_engine(settings, server)
    try:
        await _conversation(engine, -1)  # warm-up: first-use allocations are not growth
        start = rss_mb(server.pid)
        after: list[float] = []
        for n in range(CONVERSATIONS):
            await _conversation(engine, n)
            after.append(rss_mb(server.pid))
    finally:
        await engine.aclose()
        await server.stop()
    setup = (
        f"{CONVERSATIONS} distinct six-question conversations, one at a time, max_tokens {MAX_TOKENS}, "
        f"prompt_cache_mib {local.prompt_cache_mib}, {local.parallel} slots"
    )
    out["llm_server_rss_mb"] = metric(after[-1], "MB", "< 500", f"child VmRSS at the end; {setup}")
    out["llm_server_rss_growth_mb"] = metric(
        after[-1] - start,
        "MB",
        f"< {local.prompt_cache_mib + 40}",
        f"after the run minus after a warm-up conversation (was +259 MB over 25 calls, rising, "
        f"with the stock 8 GiB cache); {setup}",
    )
    half = CONVERSATIONS // 2
    out["llm_server_rss_growth_second_half_mb"] = metric(
        after[-1] - after[half - 1],
        "MB",
        "< 30",
        f"levelled off: ~10 MB a conversation uncapped; it wobbles by an entry as the cache evicts; {setup}",
    )


class _PeakRSS:
    """The highest RSS seen while synthesizing, sampled every 10 ms from a thread."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-rss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def _tts(out: dict[str, Metric], settings: TTSSettings, suffix: str, label: str) -> None:
    engine = await PiperTTS.load(settings)
    try:
        await _speak(engine, "A short sentence loads the phonemizer first.")
        start = rss_mb()
        walls: list[float] = []
        with _PeakRSS() as peak:
            for n in range(TTS_ROUNDS):
                text = LONG_SENTENCE.format(n=n * 37, hour=8 + n % 4)
                started = time.perf_counter()
                await _speak(engine, text)
                walls.append(time.perf_counter() - started)
        growth = rss_mb() - start
    finally:
        engine.close()
    chars = len(LONG_SENTENCE.format(n=999, hour=11))
    setup = f"{TTS_ROUNDS} distinct sentences of ~{chars} characters, one synthesis each; {label}"
    out[f"tts_rss_growth{suffix}_mb"] = metric(
        growth, "MB", "< 30" if not suffix else "info", f"RSS after minus before; {setup}"
    )
    out[f"tts_rss_peak_above_start{suffix}_mb"] = metric(
        peak.peak - start, "MB", "info", f"highest RSS while synthesizing, sampled every 10 ms; {setup}"
    )
    out[f"tts_long_sentence_synthesis{suffix}_s"] = metric(
        statistics.median(walls), "s", "< 1 s" if not suffix else "info", f"p50 wall time; {setup}"
    )


async def _speak(engine: PiperTTS, text: str) -> None:
    async for _ in engine.synthesize(text):
        pass


async def _run() -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    tts = load_settings().engines.tts
    # The chosen settings first: the stock arena's memory would otherwise count as their growth.
    await _tts(out, tts, "", f"release_memory={tts.piper.release_memory}")
    stock = tts.model_copy(update={"piper": tts.piper.model_copy(update={"release_memory": False})})
    await _tts(out, stock, "_stock_arena", "release_memory=False (ONNX Runtime's stock arena)")
    await _llm(out)
    return out


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


if __name__ == "__main__":
    for name, m in run().items():
        print(f"{name:44} {m.value:10.4g} {m.unit:3} {m.note}")
