"""CosyVoice: Chinese (and multilingual) speech from a CosyVoice server, or in-process when installed.

remote speaks the protocol of CosyVoice's own FastAPI runtime (FunAudioLLM/CosyVoice,
runtime/python/fastapi/server.py): ``POST {url}/inference_sft`` with form fields ``tts_text`` and
``spk_id``; the body streams raw int16 little-endian mono PCM at the model's rate (22050 Hz for
CosyVoice-300M, 24000 Hz for CosyVoice2: set ``sample_rate`` to match, the protocol does not say)
with no header, one body piece per segment the server synthesizes. One request per sentence, so
the first sentence plays while the server works on the next and a barge-in closes the stream.

local needs the ``cosyvoice`` package (torch + ModelScope weights), which cannot be installed on
these machines: that path is written against the upstream API but has never run here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from voiceagent.engines.audio import float_to_pcm16
from voiceagent.engines.base import AudioChunk, EngineError, EngineTimeout, ModelUnavailable, TTSEngine
from voiceagent.engines.pool import ModelWorkerPool
from voiceagent.engines.settings import CosyVoiceSettings, TTSSettings
from voiceagent.engines.tts.text import prepare_text

if TYPE_CHECKING:
    from voiceagent.observability.metrics import Metrics

log = logging.getLogger(__name__)

CHUNK_S = 0.1  # audio per yielded chunk: small enough to start playback early, to stop on barge-in
MAX_ERROR_BODY = 500


async def rechunk(source: AsyncGenerator[bytes, None], size: int) -> AsyncGenerator[bytes, None]:
    """Fixed-size pieces of a PCM byte stream whose pieces may be cut anywhere, odd offsets
    included; every piece but the last is ``size`` bytes (even), so no sample is ever split."""
    if size <= 0 or size % 2:
        raise ValueError(f"chunk size must be a positive even byte count, not {size}")
    buffer = bytearray()
    async with contextlib.aclosing(source):
        async for piece in source:
            buffer += piece
            while len(buffer) >= size:
                yield bytes(buffer[:size])
                del buffer[:size]
    if len(buffer) % 2:
        log.warning("CosyVoice stream ended mid-sample: dropping 1 byte")
        del buffer[-1:]
    if buffer:
        yield bytes(buffer)


class _LocalModel:
    """The in-process model; every call on it is blocking and goes through the pool."""

    def __init__(self, settings: CosyVoiceSettings) -> None:
        try:
            module = importlib.import_module("cosyvoice.cli.cosyvoice")
        except ImportError as exc:
            raise ModelUnavailable(
                "CosyVoice local mode needs the `cosyvoice` package (torch, from the CosyVoice repo), "
                f"which is not installed ({exc}); use mode: remote with CosyVoice's FastAPI server"
            ) from exc
        model_dir = Path(settings.model_dir).expanduser() if settings.model_dir else None
        if model_dir is None or not model_dir.is_dir():
            raise ModelUnavailable(f"CosyVoice model_dir {settings.model_dir!r} is not a directory")
        factory = getattr(module, "AutoModel", None) or module.CosyVoice
        try:
            self.model: Any = factory(model_dir=str(model_dir))
        except Exception as exc:  # torch and the model's yaml raise anything on bad weights
            raise ModelUnavailable(f"CosyVoice model in {model_dir} does not load: {exc}") from exc
        speakers = list(self.model.list_available_spks())
        if settings.speaker not in speakers:
            raise ModelUnavailable(f"speaker {settings.speaker!r} not in {model_dir.name}: {speakers}")
        self.sample_rate = int(self.model.sample_rate)

    def start(self, sentence: str, speaker: str) -> Iterator[dict[str, Any]]:
        return iter(self.model.inference_sft(sentence, speaker, stream=True))

    @staticmethod
    def next_pcm(outputs: Iterator[dict[str, Any]]) -> bytes | None:
        item = next(outputs, None)
        if item is None:
            return None
        return float_to_pcm16(np.asarray(item["tts_speech"].numpy(), dtype=np.float32).reshape(-1))


class CosyVoiceTTS(TTSEngine):
    def __init__(
        self,
        settings: TTSSettings | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        pool: ModelWorkerPool | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings or TTSSettings()
        cosy = self.settings.cosyvoice
        self._url = cosy.url.rstrip("/") + "/inference_sft"
        self._local: _LocalModel | None = None
        self._client: httpx.AsyncClient | None = None
        self._pool: ModelWorkerPool | None = None
        if cosy.mode == "local":
            self._local = _LocalModel(cosy)
            self.sample_rate = self._local.sample_rate
            self._pool = pool or ModelWorkerPool("tts", **cosy.pool.model_dump(), metrics=metrics)
        else:
            self.sample_rate = cosy.sample_rate
            timeout = httpx.Timeout(cosy.request_timeout_s, connect=min(cosy.request_timeout_s, 5.0))
            self._client = client or httpx.AsyncClient(timeout=timeout)
        self._chunk_bytes = 2 * max(1, round(self.sample_rate * CHUNK_S))

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        """~100 ms chunks; a sentence's text rides on its first chunk only, so joining the
        ``text`` of the chunks played so far gives what the listener has heard."""
        for sentence in prepare_text(text, self.settings.max_chars, self.settings.max_synthesis_chars):
            source = self._local_pcm(sentence) if self._local else self._remote_pcm(sentence)
            label = sentence
            async with contextlib.aclosing(rechunk(source, self._chunk_bytes)) as pieces:
                async for pcm in pieces:
                    yield AudioChunk(pcm=pcm, sample_rate=self.sample_rate, text=label)
                    label = ""

    async def _remote_pcm(self, sentence: str) -> AsyncGenerator[bytes, None]:
        assert self._client is not None
        form = {"tts_text": sentence, "spk_id": self.settings.cosyvoice.speaker}
        try:
            async with self._client.stream("POST", self._url, data=form) as response:
                if response.status_code != 200:
                    body = (await response.aread()).decode("utf-8", "replace").strip()
                    raise EngineError(
                        f"CosyVoice {self._url} answered {response.status_code}: {body[:MAX_ERROR_BODY]}"
                    )
                async for piece in response.aiter_bytes():
                    yield piece
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ModelUnavailable(f"CosyVoice server {self._url} unreachable: {exc!r}") from exc
        except httpx.TimeoutException as exc:
            raise EngineTimeout(
                f"CosyVoice {self._url} sent nothing for {self.settings.cosyvoice.request_timeout_s:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"CosyVoice {self._url} failed mid-stream: {exc!r}") from exc

    async def _local_pcm(self, sentence: str) -> AsyncGenerator[bytes, None]:
        local, pool = self._local, self._pool
        assert local is not None and pool is not None
        outputs = await pool.run(local.start, sentence, self.settings.cosyvoice.speaker)
        while (pcm := await pool.run(local.next_pcm, outputs)) is not None:
            yield pcm

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._pool is not None:
            self._pool.close()
