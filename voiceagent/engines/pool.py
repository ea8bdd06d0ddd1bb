"""One loaded model serves every call through a bounded queue and a few worker threads.

Blocking inference (CTranslate2, ONNX Runtime, Piper) never runs on the event loop. The queue is
bounded so overload turns into a fast EngineOverloaded instead of unbounded latency, and its
depth is exported so back-pressure shows on /metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from voiceagent.engines.base import EngineOverloaded, EngineTimeout

if TYPE_CHECKING:
    from voiceagent.observability.metrics import Metrics

P = ParamSpec("P")
T = TypeVar("T")


class ModelWorkerPool:
    def __init__(
        self,
        name: str,
        workers: int = 1,
        max_queue: int = 32,
        queue_timeout_s: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.workers = workers
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"engine-{name}")
        self._slots = asyncio.Semaphore(workers)
        self._waiting = 0
        self._metrics = metrics

    @property
    def queue_depth(self) -> int:
        return self._waiting

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.engine_queue_depth.labels(engine=self.name).set(self._waiting)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on a worker once one is free; fail fast when the queue is full."""
        if self._waiting >= self.max_queue:
            if self._metrics is not None:
                self._metrics.engine_rejected.labels(engine=self.name).inc()
            raise EngineOverloaded(f"{self.name}: {self._waiting} requests already queued")
        self._waiting += 1
        self._gauge()
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise EngineTimeout(f"{self.name}: waited {self.queue_timeout_s:g} s for a free worker") from None
        finally:
            self._waiting -= 1
            self._gauge()
        started = time.perf_counter()
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        except BaseException:
            self._slots.release()
            raise
        # The slot is freed when the thread finishes, not when the caller stops waiting: a
        # cancelled request can never let more than `workers` inferences run at once.
        future.add_done_callback(lambda _: self._slots.release())
        try:
            return await asyncio.shield(future)
        finally:
            if self._metrics is not None:
                self._metrics.engine_seconds.labels(engine=self.name).observe(time.perf_counter() - started)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
