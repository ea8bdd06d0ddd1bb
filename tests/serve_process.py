"""`voiceagent serve` and other `voiceagent` commands as real child processes, as users run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


class VoiceagentProcess:
    """``voiceagent <command>`` started at construction with the caller's VOICEAGENT_* settings
    only (never the developer's); stdout and stderr go to ``cwd/<log_name>``."""

    def __init__(self, cwd: Path, command: Sequence[str], log_name: str, **settings: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEAGENT_")}
        env.update(settings)
        self.settings = settings
        self.log_path = cwd / log_name
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "voiceagent", *command],
                stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env,
            )  # fmt: skip

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 30) -> int:
        return stop_process(self.proc, timeout)


class ServeProcess(VoiceagentProcess):
    """`voiceagent serve --port 0`; its log is ``cwd/server-N.log``."""

    def __init__(self, cwd: Path, *args: str, **settings: str) -> None:
        log_name = f"server-{len(list(cwd.glob('server-*.log')))}.log"
        super().__init__(cwd, ["serve", "--port", "0", *args], log_name, **settings)
        self.base_url = ""
        self._headers: dict[str, str] | None = None

    @property
    def operator(self) -> dict[str, str]:
        """Headers signing an operator in to this server's guarded API (a token in its store,
        made once the server has migrated it)."""
        if self._headers is None:
            from voiceagent.testing.admin import bearer

            self._headers = bearer(self.settings["VOICEAGENT_STORE__URL"])
        return self._headers

    def wait_listening(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log)
            if found:
                self.base_url = found.group(1)
                return self.base_url
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log}")
            time.sleep(0.02)
        raise AssertionError(f"server did not listen within {timeout} s:\n{self.log}")

    def wait_ok(self, path: str, timeout: float = 30, interval: float = 0.1) -> None:
        """Until GET ``path`` answers 200 (e.g. /readyz once the models are loaded)."""
        base = self.base_url or self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}{path}", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log}")
            time.sleep(interval)
        raise AssertionError(f"{path} not OK within {timeout} s:\n{self.log}")
