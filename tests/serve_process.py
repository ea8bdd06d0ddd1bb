"""`voiceagent serve --port 0` as a real child process: the one way tests and benchmarks start it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


class ServeProcess:
    """Starts at construction with the caller's VOICEAGENT_* settings only (never the developer's);
    stdout and stderr go to ``cwd/server-N.log``."""

    def __init__(self, cwd: Path, *args: str, **settings: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEAGENT_")}
        env.update(settings)
        self.log_path = cwd / f"server-{len(list(cwd.glob('server-*.log')))}.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "voiceagent", "serve", "--port", "0", *args],
                stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env,
            )  # fmt: skip
        self.base_url = ""

    @property
    def log(self) -> str:
        return self.log_path.read_text()

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

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()
