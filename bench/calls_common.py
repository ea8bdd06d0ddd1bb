"""What the call benchmarks share: the bench server process and small helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import percentile
from tests.serve_process import stop_process

REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"bench calls: {message}", flush=True)


def p50(xs: list[float]) -> float:
    return percentile(xs, 50) if xs else float("nan")


# -- servers ------------------------------------------------------------------------------------


@dataclass
class BenchServer:
    proc: subprocess.Popen[bytes]
    base: str
    workdir: Path

    def stats(self, reset: bool = False) -> dict[str, Any]:
        url = self.base + "/bench/stats" + ("?reset=1" if reset else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data

    def get(self, path: str) -> dict[str, Any]:
        """Any JSON endpoint of the bench server, e.g. ``/bench/stats?reset=1&gc=1``."""
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_server(
    engines: str,
    timeout_s: float = 180,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> BenchServer:
    """``extra_env`` is applied after the caller's VOICEAGENT_* variables are dropped."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-calls-{engines}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEAGENT_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "VOICEAGENT_STORE__URL": f"sqlite+aiosqlite:///{workdir}/va.db",
            "VOICEAGENT_LLM__TEMPERATURE": "0",
            "VOICEAGENT_LLM__MAX_TOKENS": "40",
            "VOICEAGENT_TRANSPORT__MAX_CALLS": "64",
            "VOICEAGENT_SERVER__LOG_LEVEL": "warning",
            **(extra_env or {}),
        }
    )
    port_file = workdir / "port"
    log_file = (workdir / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.call_load_server", "--engines", engines, "--port-file", str(port_file),
         *extra_args],
        cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log_file.close()
    return wait_until_ready(proc, workdir, timeout_s)


def wait_until_ready(proc: subprocess.Popen[bytes], workdir: Path, timeout_s: float) -> BenchServer:
    """A bench server child that writes its address to ``workdir/port``, once /readyz says so."""
    port_file = workdir / "port"
    server = BenchServer(proc, "", workdir)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"bench server exited:\n{(workdir / 'server.log').read_text()[-3000:]}")
            if port_file.exists():
                server.base = port_file.read_text().strip()
                try:
                    with urllib.request.urlopen(server.base + "/readyz", timeout=5) as response:
                        if response.status == 200:
                            return server
                except OSError:
                    pass
            time.sleep(0.3)
        raise RuntimeError(f"bench server not ready:\n{(workdir / 'server.log').read_text()[-3000:]}")
    except BaseException:
        server.stop()
        raise


def speech(text: str) -> np.ndarray:
    from tests.engines.conftest import synthesize_speech

    return np.frombuffer(synthesize_speech(text, pad_s=0.0), dtype="<i2")
