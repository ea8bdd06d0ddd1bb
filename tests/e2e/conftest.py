"""A real server (every model loaded) and Debian's Chromium with a wav file as its microphone."""

from __future__ import annotations

import os
import shutil
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.browser import CHROMIUM, chromium_args
from tests.engines.conftest import synthesize_speech
from tests.serve_process import ServeProcess
from voiceagent.config import Settings
from voiceagent.runtime import Runtime
from voiceagent.server.app import create_app
from voiceagent.testing.fakes import install_fake_engines
from voiceagent.testing.serving import served


@dataclass(frozen=True)
class Server:
    base: str
    store_url: str
    operator: dict[str, str]  # headers that sign an operator in to the guarded API


def write_mic_wav(
    path: Path, parts: list[tuple[str, float]], lead_s: float = 1.0, tail_s: float = 8.0
) -> Path:
    """Speech for the fake microphone: each (text, pause after) in turn, 48 kHz mono 16-bit."""
    return write_wav(
        path, [(synthesize_speech(text, pad_s=0.0), pause_s) for text, pause_s in parts], lead_s, tail_s
    )


def write_wav(path: Path, parts: list[tuple[bytes, float]], lead_s: float, tail_s: float) -> Path:
    """A fake microphone's file: each (16 kHz int16 audio, pause after) in turn, 48 kHz mono 16-bit."""
    pieces = [np.zeros(int(lead_s * 16_000), dtype="<i2")]
    for pcm, pause_s in parts:
        pieces.append(np.frombuffer(pcm, dtype="<i2"))
        pieces.append(np.zeros(int(pause_s * 16_000), dtype="<i2"))
    pieces.append(np.zeros(int(tail_s * 16_000), dtype="<i2"))
    audio16 = np.concatenate(pieces).astype(np.float32)
    audio48 = np.interp(np.arange(len(audio16) * 3) / 3, np.arange(len(audio16)), audio16).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(audio48.tobytes())
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`voiceagent serve` as a user runs it, waiting until /readyz says the models are loaded."""
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail("Debian chromium is not installed: run tests/services/system-deps.sh")
    workdir = tmp_path_factory.mktemp("server")
    store_url = f"sqlite+aiosqlite:///{workdir}/va.db"
    server = ServeProcess(
        workdir,
        VOICEAGENT_STORE__URL=store_url,
        VOICEAGENT_LLM__TEMPERATURE="0",  # the same answer every run...
        VOICEAGENT_LLM__MAX_TOKENS="60",  # ...and short enough to transcribe back whole
    )
    try:
        server.wait_listening(timeout=60)
        server.wait_ok("/readyz", timeout=120, interval=0.3)
        yield Server(server.base_url, store_url, server.operator)
    finally:
        server.stop()
        print(server.log[-4000:])


@dataclass(frozen=True)
class FakeServer:
    base: str
    runtime: Runtime


@pytest.fixture
async def fake_server(settings: Settings) -> AsyncIterator[FakeServer]:
    """The real app, calls layer and store in this process, with the fake engines (a tone is a
    question, the reply is REPLY_TOKENS): a call page to drive in a second, no model to load."""
    runtime = Runtime(settings)
    await runtime.start()
    install_fake_engines(runtime.engines)
    async with served(create_app(runtime), settings.server) as base:  # its lifespan stops the runtime
        yield FakeServer(base, runtime)


@pytest.fixture
async def launch_browser() -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    browsers = []
    async with async_playwright() as playwright:

        async def launch(mic_wav: Path) -> object:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=chromium_args(mic_wav),
            )
            browsers.append(browser)
            return browser

        yield launch
        for browser in browsers:
            await browser.close()
