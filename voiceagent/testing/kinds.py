"""Run one job kind in-process, without a worker or a store: for the tests and the benchmarks.

The context is what a worker would hand the kind (parameters parsed the same way, a work folder,
an optional upload); progress reports are recorded instead of written, and can cancel the run.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voiceagent.jobs.kinds.base import JobCancelled, JobContext, JobKind

if TYPE_CHECKING:
    from voiceagent.config import Settings
    from voiceagent.jobs.schemas import ResultFile


@dataclass
class KindRun:
    result: dict[str, Any]
    outputs: list[tuple[ResultFile, Path]]
    progress: list[tuple[float, str | None]] = field(default_factory=list)
    seconds: float = 0.0  # wall time of run()

    @property
    def fractions(self) -> list[float]:
        return [fraction for fraction, _ in self.progress]

    @property
    def files(self) -> dict[str, Path]:
        """Result files by name, in the order the kind added them."""
        return {described.name: path for described, path in self.outputs}

    def media_type(self, name: str) -> str:
        return next(described.media_type for described, _ in self.outputs if described.name == name)


async def run_kind(
    kind: JobKind,
    params: dict[str, Any],
    settings: Settings,
    *,
    workdir: Path,
    input_path: Path | None = None,
    job_id: str = "job-under-test",
    cancel_at: float | None = None,
) -> KindRun:
    """``kind.run`` on ``params`` (parsed as at submit: JobInputError if refused). ``cancel_at``:
    the first progress report at or past this fraction raises JobCancelled, as an operator's
    cancel would. The result must be JSON, as the worker stores it."""
    progress: list[tuple[float, str | None]] = []

    async def report(fraction: float, note: str | None) -> None:
        progress.append((fraction, note))
        if cancel_at is not None and fraction >= cancel_at:
            raise JobCancelled(f"cancelled at {fraction:.2f}")

    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    job = JobContext(
        job_id=job_id,
        params=type(kind).parse(params, settings),
        workdir=workdir,
        input_path=input_path,
        input_name=input_path.name if input_path is not None else None,
        report=report,
    )
    started = time.perf_counter()
    result = await kind.run(job)
    json.dumps(result)  # a result the store could not keep fails here, not in a worker
    return KindRun(
        result=result, outputs=job.outputs, progress=progress, seconds=time.perf_counter() - started
    )
