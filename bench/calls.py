"""Calls end to end: browser voice-to-voice latency and barge-in with the real models, and how many
simultaneous calls one node holds in real time (fake engines, then real models).

Servers: ``bench/call_load_server.py`` in a subprocess: the real app (HTTP signaling, WebRTC
gateway, CallManager, Conversation, Playout, store) with the real models (as ``voiceagent serve``
loads them) or the fakes of voiceagent/testing/fakes.py, plus ``GET /bench/stats`` (per-call outbound
track stats, process CPU). Everything listens on 127.0.0.1.

1. v2v from the browser: Chromium, a wav of 10 short questions as its microphone. The wav's
   timeline is mapped onto the page clock (Date.now) by fitting the wav's RMS envelope to
   ``window.__va.micLevels`` (offset grid search, 1 ms steps); latency = end of a question's speech
   in the wav (mapped) -> first ``window.__va.levels`` sample above AUDIBLE after it.
2. barge-in: a wav of 5 long-story requests 4.5 s apart, each talking over the previous answer.
   Stop latency = arrival of the "interrupted" event at the page (``eventTimes``) -> the agent's
   received level falling below SILENT for good (>= 400 ms). Decision latency = onset of the
   interrupting speech in the wav (mapped) -> that event's arrival.
3. calls held, fake engines: N in-process aiortc callers (tone talk / pause) per level.
4. calls held, real models: N aiortc callers speaking synthesized questions.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from bench.calls_browser import measure_barge_in, measure_v2v
from bench.calls_common import log, start_server
from bench.calls_load import measure_fake_load, measure_real_load
from bench.results import Metric


async def _run() -> dict[str, Metric]:
    results: dict[str, Metric] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-calls-"))
    try:
        log("starting the bench server with the real models")
        started = time.monotonic()
        server = start_server("real")
        log(f"real models ready in {time.monotonic() - started:.1f} s")
        try:
            results.update(await measure_v2v(server.base, tmp))
            results.update(await measure_barge_in(server.base, tmp))
            log("real-model load: N aiortc callers with spoken questions")
            real, _ = await measure_real_load(server)
            results.update(real)
        finally:
            server.stop()
        fake, _ = await measure_fake_load()
        results.update(fake)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def run() -> dict[str, Metric]:
    return asyncio.run(_run())
