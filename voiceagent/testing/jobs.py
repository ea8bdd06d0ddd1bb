"""An ``echo`` job kind for tests and benchmarks of the job machinery (no model): registered with
``jobs.extra_kinds: ["voiceagent.testing.jobs:EchoKind"]`` (in a child process:
``VOICEAGENT_JOBS__EXTRA_KINDS='["voiceagent.testing.jobs:EchoKind"]'``).

Its name is ``echo``, or ``VA_TEST_ECHO_KIND`` when set (read at import): the kind is the tag of
its wake-ups on the shared RocketMQ topic, and a consumer group new to the broker starts at the
oldest message it still holds, so a test run on the real broker names the kind afresh rather
than replay every earlier run's wake-ups.

Each run appends ``<job_id> <pid> <attempt> start`` and, once its work is done,
``<job_id> <pid> <attempt> done`` to the file named by ``VA_TEST_ECHO_LOG`` (if set): every
process of a test writes there, so the test counts how often each job was really run and by whom.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from voiceagent.jobs.kinds.base import JobContext, JobInputError, JobKind, KindParams, in_thread
from voiceagent.jobs.queue import JobQueue
from voiceagent.jobs.schemas import FINISHED, JobRecord
from voiceagent.jobs.store import JobStore

ECHO_LOG_ENV = "VA_TEST_ECHO_LOG"
ECHO_KIND_ENV = "VA_TEST_ECHO_KIND"
ECHO_EXTRA_KINDS = ["voiceagent.testing.jobs:EchoKind"]


class EchoParams(KindParams):
    text: str = Field(min_length=1, max_length=10_000)
    sleep_s: float = Field(0.0, ge=0)  # spread over the steps
    steps: int = Field(1, ge=1, le=10_000)  # a progress report after each
    fail_times: int = Field(0, ge=0)  # runs 1..N raise a transient error (RuntimeError)
    fail_input: bool = False  # the run refuses its input (JobInputError: invalid_params)


class EchoKind(JobKind):
    """Writes ``text`` to ``echo.txt`` after ``steps`` progress reports over ``sleep_s``."""

    name = os.environ.get(ECHO_KIND_ENV, "echo")
    Params = EchoParams

    async def run(self, job: JobContext) -> dict[str, Any]:
        params = job.params
        assert isinstance(params, EchoParams)
        await in_thread(_append_log, f"{job.job_id} {os.getpid()} {job.attempt} start")
        if params.fail_input:
            raise JobInputError("invalid_params", "fail_input is set")
        for step in range(params.steps):
            await asyncio.sleep(params.sleep_s / params.steps)
            await job.progress((step + 1) / params.steps, f"step {step + 1} of {params.steps}")
        if job.attempt <= params.fail_times:
            raise RuntimeError(f"echo fails run {job.attempt} of the first {params.fail_times}")
        path = job.workdir / "echo.txt"
        await in_thread(path.write_text, params.text, "utf-8")
        job.add_file("echo.txt", "text/plain; charset=utf-8", path)
        await in_thread(_append_log, f"{job.job_id} {os.getpid()} {job.attempt} done")
        return {"chars": len(params.text), "attempt": job.attempt}


def _append_log(line: str) -> None:
    target = os.environ.get(ECHO_LOG_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as log:  # one short write: lines never interleave
            log.write(line + "\n")


class EchoLog:
    """What ``VA_TEST_ECHO_LOG`` recorded: runs started and done, by job."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        return [line.split() for line in self.path.read_text(encoding="utf-8").splitlines() if line]

    def count(self, phase: str) -> Counter[str]:
        return Counter(parts[0] for parts in self.lines() if parts[-1] == phase)

    def runs(self, job_id: str, phase: str = "start") -> Sequence[tuple[int, int]]:
        """(pid, attempt) of each run of the job that reached ``phase``."""
        return [(int(p[1]), int(p[2])) for p in self.lines() if p[0] == job_id and p[-1] == phase]


@dataclass
class JobClient:
    """Submit jobs the way the API does (store, then wake-up) and wait on their state: what the
    worker tests and the jobs benchmark share."""

    store: JobStore
    queue: JobQueue
    poll_s: float = 0.05

    async def submit(self, kind: str, params: dict[str, Any], *, publish: bool = True) -> str:
        job = await self.store.create(kind, params)
        if publish:
            await self.queue.publish(job.id, kind)
        return job.id

    async def wait(
        self,
        job_id: str,
        until: Callable[[JobRecord], bool] = lambda j: j.status in FINISHED,
        within_s: float = 15,
        describe: Callable[[], str] = lambda: "",
    ) -> JobRecord:
        """The job once ``until`` holds; AssertionError (with ``describe()``, e.g. worker logs)
        when it does not within ``within_s``."""
        deadline = time.monotonic() + within_s
        while True:
            job = await self.store.get(job_id)
            if job is not None and until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never got there: {job}\n{describe()}")
            await asyncio.sleep(self.poll_s)
