"""Readiness: each dependency is probed concurrently under a deadline and reported by name."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from voiceagent.observability.metrics import Metrics

# A probe returns a short human detail ("postgresql 15.8") or raises with the reason.
Probe = Callable[[], Awaitable[str]]


class CheckResult(BaseModel):
    ok: bool
    detail: str
    latency_ms: float


class ReadinessReport(BaseModel):
    ready: bool
    checks: dict[str, CheckResult]


class Readiness:
    def __init__(self, metrics: Metrics, timeout_s: float = 3.0) -> None:
        self._probes: dict[str, Probe] = {}
        self._metrics = metrics
        self._timeout_s = timeout_s

    def add(self, name: str, probe: Probe) -> None:
        if name in self._probes:
            raise ValueError(f"readiness check {name!r} registered twice")
        self._probes[name] = probe

    @property
    def names(self) -> list[str]:
        return list(self._probes)

    async def check(self) -> ReadinessReport:
        names = list(self._probes)
        results = await asyncio.gather(*(self._run(self._probes[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        for name, result in checks.items():
            self._metrics.dependency_up.labels(dependency=name).set(1 if result.ok else 0)
        return ReadinessReport(ready=all(r.ok for r in checks.values()), checks=checks)

    async def _run(self, probe: Probe) -> CheckResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):
                detail = await probe()
            ok = True
        except TimeoutError:
            ok, detail = False, f"no answer within {self._timeout_s:g} s"
        except Exception as exc:
            ok, detail = False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return CheckResult(ok=ok, detail=detail, latency_ms=round((time.perf_counter() - started) * 1000, 2))
