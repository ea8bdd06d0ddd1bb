"""A stand-in for CosyVoice's FastAPI runtime (runtime/python/fastapi/server.py), same wire protocol.

GET or POST /inference_sft with form fields tts_text and spk_id (upstream's own client sends them
as a form body on GET), answered with a bare stream of int16 PCM at 22050 Hz. The speech is real
(Piper, resampled), cut into several body pieces at odd byte offsets with pauses between them, so
the client's re-chunking and sample alignment are tested on the shape a real server produces.
Form bodies are parsed by hand: python-multipart, which Starlette's form parser needs, is not a
dependency here.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qs

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from voiceagent.engines.audio import float_to_pcm16

RATE = 22050
SPEAKERS = ("中文女", "中文男", "英文女", "英文男")


def piper_speech(text: str) -> bytes:
    from tests.engines.conftest import synthesize_speech

    return synthesize_speech(text, sample_rate=RATE, pad_s=0.0)


def tone(text: str) -> bytes:
    """Model-free audio for the error-path tests: 50 ms of 440 Hz per character."""
    t = np.arange(int(0.05 * RATE * max(1, len(text)))) / RATE
    return float_to_pcm16(0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32))


class CosyVoiceTestServer:
    """Runs in its own thread and loop, so it outlives each test's event loop."""

    def __init__(
        self,
        speak: Callable[[str], bytes] = piper_speech,
        *,
        pieces: int = 5,
        piece_delay_s: float = 0.02,
        stall_s: float = 0.0,
        fail_status: int | None = None,
    ) -> None:
        self.speak = speak
        self.pieces = pieces
        self.piece_delay_s = piece_delay_s
        self.stall_s = stall_s
        self.fail_status = fail_status
        self.requests: list[dict[str, str]] = []
        self.sent: list[bytes] = []  # the PCM of each answered request, in order
        routes = [Route("/inference_sft", self._handle, methods=["GET", "POST"])]
        self._server = uvicorn.Server(uvicorn.Config(Starlette(routes=routes), log_level="warning"))
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> CosyVoiceTestServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("CosyVoice test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)
        self._socket.close()

    async def _handle(self, request: Request) -> Response:
        fields = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        fields = {k: v[0] for k, v in parse_qs(request.url.query).items()} | fields
        self.requests.append(fields)
        if "tts_text" not in fields or "spk_id" not in fields:
            return PlainTextResponse('{"detail":"tts_text and spk_id are required"}', status_code=422)
        if self.fail_status is not None:
            return PlainTextResponse("model exploded: CUDA out of memory", status_code=self.fail_status)
        if fields["spk_id"] not in SPEAKERS:
            return PlainTextResponse(f"unknown speaker {fields['spk_id']}", status_code=500)
        pcm = await asyncio.to_thread(self.speak, fields["tts_text"])
        self.sent.append(pcm)
        return StreamingResponse(self._body(pcm), media_type="application/octet-stream")

    async def _body(self, pcm: bytes) -> AsyncIterator[bytes]:
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        # Odd cut points: a sample's two bytes can land in different body pieces.
        cuts = [len(pcm) * i // self.pieces | 1 for i in range(1, self.pieces)]
        for start, end in zip([0, *cuts], [*cuts, len(pcm)], strict=True):
            yield pcm[start:end]
            await asyncio.sleep(self.piece_delay_s)
