"""Does the server itself leak across calls? Sequential batches of calls on an in-process calls
layer (fake engines, SQLite store, real aiortc callers), ending every way a call ends, with
Python's in-use memory (tracemalloc), live objects and RSS sampled as calls accumulate.

The figure is the slope over the second half of the run (after caches have levelled off): what
each further call costs for good. Engine memory (Whisper, Piper, llama.cpp) is measured in
bench/memory.py and the whole-server RSS over 30 minutes in bench/soak.py.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

from bench.results import Metric, metric
from tests.calls.caller import Footprint, fake_call_manager, run_calls, settle
from voiceagent.config import StoreSettings
from voiceagent.observability.metrics import Metrics
from voiceagent.store import Database, Store

AT_ONCE = 3
CALLS = int(os.environ.get("CALL_MEMORY_CALLS", "120"))
SAMPLE_EVERY = 15


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _slope(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(xs, ys, 1)[0]) if len(xs) >= 2 else 0.0


async def _measure() -> dict[str, Metric]:
    with tempfile.TemporaryDirectory() as tmp:
        database = Database(StoreSettings(url=f"sqlite+aiosqlite:///{tmp}/calls.db"))
        await database.migrate()
        manager = fake_call_manager(Store(database), Metrics("bench"), max_calls=AT_ONCE, dead_peer_s=1.0)
        try:
            await run_calls(manager, range(-2 * AT_ONCE, 0), at_once=AT_ONCE)  # warm-up
            baseline = await settle(manager, Footprint.now(manager))
            tracemalloc.start()
            samples: list[tuple[int, float, int, float]] = []  # (calls, traced KB, objects, RSS MB)
            for done in range(0, CALLS, SAMPLE_EVERY):
                await run_calls(manager, range(done, done + SAMPLE_EVERY), at_once=AT_ONCE)
                footprint = await settle(manager, baseline)
                traced_kb = tracemalloc.get_traced_memory()[0] / 1024
                samples.append((done + SAMPLE_EVERY, traced_kb, footprint.objects, _rss_mb()))
                print(f"  call_memory: {samples[-1]}", flush=True)
            tracemalloc.stop()
        finally:
            await manager.close_all()
            await database.close()

    later = samples[len(samples) // 2 :]
    calls = [float(s[0]) for s in later]
    kb_per_call = _slope(calls, [s[1] for s in later])
    objects_per_call = _slope(calls, [float(s[2]) for s in later])
    note = f"{CALLS} calls, {AT_ONCE} at a time, slope over the last {len(later)} samples"
    return {
        "server_heap_growth_per_call_kb": metric(kb_per_call, "KB/call", "≈ 0 (≤ 2)", note),
        "server_objects_growth_per_call": metric(objects_per_call, "objects/call", "≈ 0 (≤ 20)", note),
        "server_rss_growth_over_calls_mb": metric(
            samples[-1][3] - samples[0][3], "MB", "≤ 10", f"RSS after {SAMPLE_EVERY} → after {CALLS} calls"
        ),
    }


def run() -> dict[str, Metric]:
    return asyncio.run(_measure())
