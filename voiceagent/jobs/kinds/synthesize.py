"""synthesize: a long text read aloud by the configured voice, as WAV and Ogg Opus files.

The text is cut into sentences by the voice's own rules (voiceagent.engines.tts.text), spoken one
sentence at a time and appended to ``audio.wav`` as it comes, so memory stays flat however long the
text is and progress (characters spoken) is reported after every sentence, which is also where a
cancel is noticed. The Opus file is encoded from the WAV afterwards, a block at a time.
"""

from __future__ import annotations

import contextlib
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voiceagent.engines.base import BadText
from voiceagent.engines.tts.text import clean_text, is_speakable, prepare_text
from voiceagent.jobs.kinds.base import JobContext, JobInputError, JobKind, KindParams, in_thread

if TYPE_CHECKING:
    from voiceagent.config import Settings
    from voiceagent.engines.base import TTSEngine
    from voiceagent.store.database import Database

OPUS_RATE = 48_000  # Opus' native rate; any other is resampled inside the encoder anyway
WAV_BLOCK_FRAMES = 16_384  # samples read from the WAV per Opus encoding step


class SynthesizeParams(KindParams):
    text: str


class SynthesizeKind(JobKind):
    name = "synthesize"
    Params = SynthesizeParams

    def __init__(self, settings: Settings, database: Database) -> None:
        super().__init__(settings, database)
        self.engine: TTSEngine | None = None

    @classmethod
    def check(cls, params: SynthesizeParams, settings: Settings) -> None:
        """Cheap enough for the API (~50 ms for 100,000 characters): the length, and whether
        anything speakable is left once markup and emoji are removed."""
        limit = settings.jobs.synthesize.max_chars
        if len(params.text) > limit:
            raise JobInputError("too_long", f"{len(params.text)} characters > limit {limit}")
        if not is_speakable(clean_text(params.text)):
            raise JobInputError(
                "empty_text", "no letters or digits to speak once markup and symbols are removed"
            )

    async def load(self) -> None:
        from voiceagent.engines.registry import load_tts

        tts = self.settings.engines.tts
        piper = tts.piper.model_copy(update={"threads": self.settings.jobs.worker.threads})
        self.engine = await load_tts(tts.model_copy(update={"piper": piper}))

    async def close(self) -> None:
        from voiceagent.engines.registry import close_engine

        engine, self.engine = self.engine, None
        await close_engine(engine)

    async def run(self, job: JobContext) -> dict[str, Any]:
        assert isinstance(job.params, SynthesizeParams)
        if self.engine is None:
            await self.load()
        engine = self.engine
        assert engine is not None
        tts = self.settings.engines.tts
        # Splitting 100,000 characters takes seconds: off the event loop.
        try:
            sentences: list[str] = await in_thread(
                prepare_text,
                job.params.text,
                self.settings.jobs.synthesize.max_chars,
                tts.max_synthesis_chars,
            )
        except BadText as exc:  # check() refused unspeakable text already: a safety net, never a retry
            raise JobInputError("empty_text", str(exc)) from None
        total = sum(len(s) for s in sentences)
        wav_path = job.workdir / "audio.wav"
        samples = 0
        done = 0
        with wave.open(str(wav_path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(engine.sample_rate)
            for index, sentence in enumerate(sentences, 1):
                async with contextlib.aclosing(engine.synthesize(sentence)) as chunks:
                    async for chunk in chunks:
                        if chunk.sample_rate != engine.sample_rate:
                            rates = f"{engine.sample_rate} Hz to {chunk.sample_rate} Hz"
                            raise RuntimeError(f"the voice switched from {rates} mid-text")
                        await in_thread(wav.writeframes, chunk.pcm)
                        samples += len(chunk.pcm) // 2
                done += len(sentence)
                await job.progress(done / total, f"sentence {index} of {len(sentences)}")
        if samples == 0:
            raise JobInputError("empty_text", "the voice made no sound for this text")
        opus_path = job.workdir / "audio.opus"
        await in_thread(encode_opus, wav_path, opus_path, self.settings.jobs.synthesize.opus_bitrate)
        job.add_file("audio.wav", "audio/wav", wav_path)
        job.add_file("audio.opus", "audio/ogg", opus_path)
        return {
            "characters": len(job.params.text),
            "sentences": len(sentences),
            "duration_s": round(samples / engine.sample_rate, 3),
            "sample_rate": engine.sample_rate,
            "engine": tts.backend,
        }


def encode_opus(wav_path: Path, opus_path: Path, bitrate: int) -> None:
    """16-bit mono WAV to Ogg Opus at 48 kHz, streamed in blocks (never the whole file in memory)."""
    import av
    import numpy as np

    with wave.open(str(wav_path), "rb") as wav, av.open(str(opus_path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=OPUS_RATE, layout="mono")
        stream.bit_rate = bitrate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=OPUS_RATE)
        rate = wav.getframerate()
        while block := wav.readframes(WAV_BLOCK_FRAMES):
            frame = av.AudioFrame.from_ndarray(
                np.frombuffer(block, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = rate
            for resampled in resampler.resample(frame):
                out.mux(stream.encode(resampled))
        for resampled in resampler.resample(None):
            out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))
