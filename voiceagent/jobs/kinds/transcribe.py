"""transcribe: an uploaded recording (any format PyAV decodes) to text with timestamps.

Two passes, both bounded in memory however long the recording:

1. Decode to 16 kHz mono int16 in a raw file in the job's folder, a minute of audio per thread hop
   (progress and cancellation in between). Refusals are decided here, before any model time:
   no audio stream or undecodable → ``not_audio``; nothing decoded, or nothing audible (peak under
   -60 dBFS: a muted microphone, a file of zeros) → ``empty_audio``; longer than
   ``transcribe.max_audio_s`` → ``too_long``; a decoding error after some audio, or clearly less
   audio than the container's header declares → ``truncated``. Sound without speech (room noise)
   is not an error: it succeeds with an empty transcript.
2. Whisper over blocks of at most ``BLOCK_S`` (faster-whisper computes the features of everything
   it is handed at once: ~1 GB for an hour), each cut at the quietest 100 ms near its end, with
   faster-whisper's Silero VAD filter so silences are skipped rather than hallucinated into
   ("Thank you."). Text is not conditioned on the previous window: slightly less consistent
   spelling across windows, but no repetition loops on long recordings. Progress is the end of
   the latest segment over the duration.

Declared durations are trusted only from headers that state them (WAV's data size, FLAC's
STREAMINFO, MP4, Matroska/WebM, Ogg); MP3 and raw AAC durations are often estimated from the
bitrate, so there only a decoding error reveals truncation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from voiceagent.jobs.kinds.base import JobContext, JobInputError, JobKind, KindParams, in_thread

if TYPE_CHECKING:
    import numpy as np

    from voiceagent.config import Settings
    from voiceagent.engines.settings import ASRSettings
    from voiceagent.store.database import Database

RATE = 16_000  # what Whisper takes
DECODE_SHARE = 0.1  # of the progress bar: decoding is fast next to transcribing
DECODE_STEP_S = 60.0  # audio decoded per thread hop
BLOCK_S = 600.0  # audio handed to Whisper at once
CUT_SEARCH_S = 30.0  # a block ends at the quietest 100 ms of its last CUT_SEARCH_S
CUT_FRAME = RATE // 10
AUDIBLE_PEAK = 33  # int16: -60 dBFS; a file that never reaches it has nothing to hear
# Missing audio tolerated before a file counts as truncated: codec priming and padding, rounding.
TRUNCATION_TOLERANCE_S = 1.0
TRUNCATION_TOLERANCE_RATIO = 0.02
# Demuxers (FFmpeg names) whose header states the duration; others may estimate it from the bitrate.
DECLARING_FORMATS = frozenset({"wav", "flac", "mp4", "matroska", "webm", "ogg"})
_WAV_UNKNOWN_SIZES = (0, 0x7FFFFFFF, 0xFFFFFFFF)  # placeholders of writers that never knew the length


class TranscribeParams(KindParams):
    language: str | None = Field(None, pattern=r"^[a-z]{2,3}$", description="None: detected")
    beam_size: int | None = Field(None, ge=1, le=10)


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str


class TranscribeKind(JobKind):
    name = "transcribe"
    Params = TranscribeParams
    accepts_upload = True
    requires_upload = True

    def __init__(self, settings: Settings, database: Database) -> None:
        super().__init__(settings, database)
        self.model: Any = None  # faster_whisper.WhisperModel

    def asr_settings(self) -> ASRSettings:
        """The real-time path's ASR settings with the job's model and thread count."""
        asr = self.settings.engines.asr
        update = {"model": self.settings.jobs.transcribe.model or asr.model}
        return asr.model_copy(update=update | {"cpu_threads": self.settings.jobs.worker.threads})

    async def load(self) -> None:
        if self.model is None:
            self.model = await in_thread(load_whisper, self.asr_settings())

    async def close(self) -> None:
        self.model = None

    async def run(self, job: JobContext) -> dict[str, Any]:
        assert isinstance(job.params, TranscribeParams)
        if job.input_path is None:
            raise JobInputError("not_audio", "no file was uploaded")
        await self.load()
        started = time.perf_counter()
        settings = self.settings.jobs.transcribe
        language = job.params.language or settings.language
        if language is not None and language not in self.model.supported_languages:
            raise JobInputError(
                "invalid_params", f"language {language!r} is not one this Whisper model knows"
            )
        pcm_path = job.workdir / "decoded.pcm"
        samples = await decode_file(job, job.input_path, pcm_path, settings.max_audio_s)
        duration = samples / RATE
        await job.progress(DECODE_SHARE, f"decoded {clock(duration)} of audio")
        language, segments = await self._transcribe(
            job, pcm_path, samples, language, job.params.beam_size or settings.beam_size
        )
        pcm_path.unlink(missing_ok=True)
        text = " ".join(s.text for s in segments)
        await in_thread(write_outputs, job.workdir, language, duration, text, segments)
        for name, media_type in (
            ("transcript.json", "application/json"),
            ("transcript.txt", "text/plain; charset=utf-8"),
            ("transcript.vtt", "text/vtt; charset=utf-8"),
        ):
            job.add_file(name, media_type, job.workdir / name)
        await job.progress(1.0, f"{len(segments)} segments")
        return {
            "language": language,
            "duration_s": round(duration, 3),
            "segments": len(segments),
            "text_preview": text[:200],
            "realtime_factor": round((time.perf_counter() - started) / duration, 3),
        }

    async def _transcribe(
        self, job: JobContext, pcm_path: Path, samples: int, language: str | None, beam_size: int
    ) -> tuple[str | None, list[Segment]]:
        """Block by block; the language, once detected on a block with speech, holds for the rest."""
        import numpy as np

        audio = np.memmap(pcm_path, dtype="<i2", mode="r", shape=(samples,))
        duration = samples / RATE
        segments: list[Segment] = []
        start = 0
        while start < samples:
            end = block_end(audio, start)
            block = audio[start:end].astype(np.float32) / 32768.0
            pieces, info = await in_thread(self._start_block, block, language, beam_size)
            offset, block_s = start / RATE, (end - start) / RATE
            found = False
            while (piece := await in_thread(next, pieces, None)) is not None:
                text = piece.text.strip()
                begin = offset + min(max(piece.start, 0.0), block_s)
                segment = Segment(
                    round(begin, 3), round(max(begin, offset + min(piece.end, block_s)), 3), text
                )
                if text:
                    segments.append(segment)
                    found = True
                fraction = DECODE_SHARE + (1 - DECODE_SHARE) * segment.end / duration
                await job.progress(min(fraction, 1.0), f"{clock(segment.end)} of {clock(duration)}")
            if found and language is None:
                language = info.language
            start = end
        return language, segments

    def _start_block(self, block: np.ndarray, language: str | None, beam_size: int) -> tuple[Any, Any]:
        # The returned generator decodes as it is iterated: the caller steps it in threads.
        segments, info = self.model.transcribe(
            block,
            language=language,
            beam_size=beam_size,
            condition_on_previous_text=False,
            vad_filter=True,
        )
        return iter(segments), info


def load_whisper(asr: ASRSettings) -> Any:
    """faster-whisper's stock model (30 s windows: long-form audio fills them anyway)."""
    from faster_whisper import WhisperModel

    from voiceagent.engines.asr.weights import resolve_model

    path = resolve_model(asr)
    return WhisperModel(
        str(path),
        device=asr.device,
        compute_type=asr.compute_type,
        cpu_threads=asr.cpu_threads,
        local_files_only=True,
    )


def block_end(audio: np.ndarray, start: int) -> int:
    """Where the block from ``start`` ends: the file's end, or the quietest 100 ms near BLOCK_S."""
    import numpy as np

    limit = start + int(BLOCK_S * RATE)
    if limit >= audio.size:
        return int(audio.size)
    search = limit - int(CUT_SEARCH_S * RATE)
    frames = audio[search:limit].astype(np.float32).reshape(-1, CUT_FRAME)
    quietest = int(np.argmin(np.square(frames).mean(axis=1)))
    return search + quietest * CUT_FRAME + CUT_FRAME // 2


# -- decoding -------------------------------------------------------------------------------------


async def decode_file(job: JobContext, source: Path, target: Path, max_audio_s: float) -> int:
    """Decode ``source`` into ``target`` (16 kHz mono int16, raw); the number of samples."""
    decoder: AudioDecoder = await in_thread(AudioDecoder, source, target, max_audio_s)
    try:
        while not await in_thread(decoder.step, DECODE_STEP_S):
            expected = decoder.expected_s
            fraction = DECODE_SHARE * min(1.0, decoder.seconds / expected) if expected else 0.0
            await job.progress(fraction, f"decoding: {clock(decoder.seconds)}")
        samples: int = await in_thread(decoder.finish)
        return samples
    finally:
        await in_thread(decoder.close)


class AudioDecoder:
    """One file's first audio stream, resampled as it is decoded; blocking, driven step by step.
    Raises JobInputError for the refusals in the module docstring."""

    def __init__(self, source: Path, target: Path, max_audio_s: float) -> None:
        import av

        self.max_audio_s = max_audio_s
        self.samples = 0
        self.peak = 0
        try:
            self._container: Any = av.open(str(source), metadata_errors="ignore")
        except av.FFmpegError as exc:
            raise JobInputError("not_audio", f"cannot read the file as media: {_reason(exc)}") from None
        try:
            if not self._container.streams.audio:
                raise JobInputError(
                    "not_audio", f"{self._container.format.name} file without an audio stream"
                )
            stream = self._container.streams.audio[0]
            self.declared_s = declared_seconds(self._container, stream, source)
            container_s = self._container.duration / 1_000_000 if self._container.duration else None
            self.expected_s = self.declared_s or container_s  # for progress only (may be an estimate)
            if self.declared_s is not None and self.declared_s > max_audio_s:
                raise JobInputError(
                    "too_long", f"{clock(self.declared_s)} of audio > limit {clock(max_audio_s)}"
                )
            self._packets = self._container.demux(stream)
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            self._out = target.open("wb")
        except BaseException:
            self._container.close()
            raise

    @property
    def seconds(self) -> float:
        return self.samples / RATE

    def step(self, seconds: float) -> bool:
        """Decode about ``seconds`` more audio; True once the file is exhausted."""
        import av

        goal = self.samples + int(seconds * RATE)
        try:
            for packet in self._packets:
                for frame in packet.decode():
                    self._write(self._resampler.resample(frame))
                if self.samples >= goal:
                    return False
        except av.FFmpegError as exc:
            if self.samples == 0:
                raise JobInputError("not_audio", f"cannot decode the audio: {_reason(exc)}") from None
            raise JobInputError(
                "truncated", f"decoding failed after {clock(self.seconds)}: {_reason(exc)}"
            ) from None
        self._write(self._resampler.resample(None))
        return True

    def _write(self, frames: list[Any]) -> None:
        for frame in frames:
            pcm = frame.to_ndarray().reshape(-1)
            if pcm.size:
                self.peak = max(self.peak, int(abs(pcm.astype("int32")).max()))
                self._out.write(pcm.tobytes())
                self.samples += pcm.size
        if self.seconds > self.max_audio_s:
            raise JobInputError("too_long", f"over {clock(self.max_audio_s)} of audio")

    def finish(self) -> int:
        """The sample count, once the whole file is decoded and passed the checks."""
        self._out.flush()
        if self.samples == 0:
            raise JobInputError("empty_audio", "the file decodes to no samples")
        if self.peak < AUDIBLE_PEAK:
            raise JobInputError("empty_audio", f"{clock(self.seconds)} of silence (peak under -60 dBFS)")
        declared = self.declared_s
        if declared is not None:
            missing = declared - self.seconds
            if missing > max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_RATIO * declared):
                raise JobInputError(
                    "truncated", f"{clock(self.seconds)} of audio where the header declares {clock(declared)}"
                )
        return self.samples

    def close(self) -> None:
        self._out.close()
        self._container.close()


def declared_seconds(container: Any, stream: Any, source: Path) -> float | None:
    """The duration the file's header promises, where it states one (None: not known)."""
    names = set(container.format.name.split(","))
    if not names & DECLARING_FORMATS:
        return None
    if "wav" in names:
        return wav_data_seconds(source)
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000 if container.duration else None


def wav_data_seconds(path: Path) -> float | None:
    """What a RIFF/WAVE header's data chunk size promises. FFmpeg clamps that size to the file it
    finds, so a cut WAV looks whole to it: the header is read here instead."""
    with path.open("rb") as f:
        riff = f.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
            return None  # RF64, Wave64...: not checked
        byte_rate = 0
        while len(chunk := f.read(8)) == 8:
            kind, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if kind == b"fmt ":
                byte_rate = int.from_bytes(f.read(size)[8:12], "little")
                f.seek(size % 2, 1)
            elif kind == b"data":
                return size / byte_rate if byte_rate and size not in _WAV_UNKNOWN_SIZES else None
            else:
                f.seek(size + size % 2, 1)
    return None


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# -- outputs --------------------------------------------------------------------------------------


def clock(seconds: float) -> str:
    """1:02:03 or 2:03: progress notes and details."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}.{millis % 1000:03d}"


def vtt(segments: list[Segment]) -> str:
    """WebVTT: one cue per segment; text escaped (``&``, ``<``, ``>``) so no cue reads as markup."""
    cues = ["WEBVTT", ""]
    for segment in segments:
        end = max(segment.end, segment.start + 0.001)  # a cue must end after it starts
        text = segment.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        cues += [f"{vtt_time(segment.start)} --> {vtt_time(end)}", text, ""]
    return "\n".join(cues)


def write_outputs(
    folder: Path, language: str | None, duration: float, text: str, segments: list[Segment]
) -> None:
    document = {
        "language": language,
        "duration_s": round(duration, 3),
        "text": text,
        "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in segments],
    }
    (folder / "transcript.json").write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    (folder / "transcript.txt").write_text("".join(f"{s.text}\n" for s in segments))
    (folder / "transcript.vtt").write_text(vtt(segments))
