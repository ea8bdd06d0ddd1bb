"""The model worker pool: bounded concurrency, bounded queue, cancellation that cannot overrun."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from voiceagent.engines.base import EngineOverloaded, EngineTimeout
from voiceagent.engines.pool import ModelWorkerPool
from voiceagent.observability.metrics import Metrics


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Worker threads start when the OS gets to them: wait for that instead of a fixed sleep."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


class Gate:
    """A blocking 'model call' that records how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, value: int) -> int:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        self.release.wait(5)
        with self._lock:
            self.running -= 1
        return value * 2


async def test_results_come_back_and_never_more_than_workers_run() -> None:
    pool = ModelWorkerPool("test", workers=2, max_queue=10)
    gate = Gate()
    tasks = [asyncio.create_task(pool.run(gate, i)) for i in range(6)]
    await until(lambda: gate.running == 2)
    assert gate.running == 2 and pool.queue_depth == 4
    gate.release.set()
    assert await asyncio.gather(*tasks) == [0, 2, 4, 6, 8, 10]
    assert gate.peak == 2
    pool.close()


async def test_a_full_queue_refuses_fast_and_counts_it() -> None:
    metrics = Metrics("n1")
    pool = ModelWorkerPool("asr", workers=1, max_queue=2, metrics=metrics)
    gate = Gate()
    running = [asyncio.create_task(pool.run(gate, i)) for i in range(3)]  # 1 running + 2 queued
    await until(lambda: gate.running == 1 and pool.queue_depth == 2)
    started = time.perf_counter()
    with pytest.raises(EngineOverloaded, match="asr: 2 requests already queued"):
        await pool.run(gate, 99)
    # Defect-only bound: refusing takes microseconds; a caller that queued anyway would wait
    # for the gate (5 s per call).
    assert time.perf_counter() - started < 1.0
    text = metrics.render().decode()
    assert 'voiceagent_engine_queue_depth{engine="asr"} 2.0' in text
    assert 'voiceagent_engine_rejected_total{engine="asr"} 1.0' in text
    gate.release.set()
    await asyncio.gather(*running)
    assert 'voiceagent_engine_queue_depth{engine="asr"} 0.0' in metrics.render().decode()
    pool.close()


async def test_waiting_too_long_for_a_worker_times_out() -> None:
    pool = ModelWorkerPool("tts", workers=1, max_queue=5, queue_timeout_s=0.1)
    gate = Gate()
    busy = asyncio.create_task(pool.run(gate, 1))
    await until(lambda: gate.running == 1)
    with pytest.raises(EngineTimeout, match=r"waited 0\.1 s"):
        await pool.run(gate, 2)
    gate.release.set()
    assert await busy == 2
    pool.close()


async def test_a_cancelled_caller_keeps_its_worker_until_the_call_ends() -> None:
    pool = ModelWorkerPool("llm", workers=1, max_queue=5)
    gate = Gate()
    first = asyncio.create_task(pool.run(gate, 1))
    await until(lambda: gate.running == 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(pool.run(gate, 2))
    await until(lambda: pool.queue_depth == 1)
    assert gate.running == 1  # the cancelled call still runs; the next one waits for it
    gate.release.set()
    assert await second == 4
    assert gate.peak == 1
    pool.close()
