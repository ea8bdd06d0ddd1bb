"""A worker process yields the CPU to live calls.

Calls are real time: a reply that waits 300 ms for a core because a transcription is busy is a
call that sounds broken, while a job that takes a few seconds longer harms nobody. So a worker
runs below every call on the machine:

* ``nice`` (19 by default) and, on Linux, ``SCHED_IDLE``: the kernel runs the worker only on CPU
  time nothing else wants. Both are per thread on Linux and inherited by threads created later,
  so this runs first, before the event loop's thread pool or any model's threads exist.
* Math libraries start one thread per core by default (OpenMP, MKL, OpenBLAS, torch): a worker
  beside calls would then contend for every core at once. They are bounded to ``worker.threads``
  through the environment before the models are imported (kinds import them in ``load``), and
  through torch directly if it is already imported. ONNX Runtime and CTranslate2 ignore the
  environment: the kinds pass ``worker.threads`` to the sessions they build.

The price: on a machine the calls keep fully busy, a worker makes no progress (and its lease may
lapse, so another worker on a quieter machine takes its job over). That is the intended order.
"""

from __future__ import annotations

import logging
import os
import sys

from voiceagent.jobs.settings import WorkerSettings

log = logging.getLogger(__name__)

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def apply_priority(settings: WorkerSettings) -> str:
    """Lower this process' CPU priority and bound its math threads; returns a description for
    the start log line (what was applied, and what the system refused)."""
    parts = [_lower_nice(settings.nice)]
    if settings.idle_priority:
        parts.append(_idle_scheduling())
    parts.append(bound_threads(settings.threads))
    return ", ".join(parts)


def _lower_nice(target: int) -> str:
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if current < target:
            os.nice(target - current)
        return f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"
    except OSError as exc:  # never raised to lower a priority, but a sandbox may refuse anything
        log.info("could not lower the CPU priority to nice %d: %s", target, exc)
        return "nice unchanged"


def _idle_scheduling() -> str:
    if not sys.platform.startswith("linux") or not hasattr(os, "SCHED_IDLE"):
        return "no SCHED_IDLE (not Linux)"
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:  # a container's seccomp profile may forbid it
        log.info("SCHED_IDLE not permitted (%s): running at nice priority only", exc)
        return "no SCHED_IDLE (not permitted)"
    return "SCHED_IDLE"


def bound_threads(threads: int) -> str:
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return f"{threads} math thread(s)"
