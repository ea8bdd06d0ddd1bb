"""Idempotency: RocketMQ delivers at least once and never deduplicates by key, so we do."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class Deduplicator:
    """Remembers handled idempotency keys for ``ttl_s`` (bounded, oldest forgotten first).

    Call :meth:`remember` only after an event was handled: a handler that failed must see the
    redelivery again.
    """

    def __init__(
        self, ttl_s: float = 3600.0, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ):
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def is_duplicate(self, key: str) -> bool:
        self._expire()
        return key in self._seen

    def remember(self, key: str) -> None:
        self._seen[key] = self._clock() + self._ttl_s
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        self._expire()
        return len(self._seen)

    def _expire(self) -> None:
        now = self._clock()
        while self._seen:
            key, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[key]
