"""Asynchronous jobs: limits at submit, the queue, the workers and how long results are kept."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthesizeSettings(_Section):
    max_chars: int = Field(100_000, ge=1)  # longer texts are refused at submit (failed: too_long)
    opus_bitrate: int = Field(32_000, ge=6_000, le=510_000)


class TranscribeSettings(_Section):
    # A CTranslate2 Whisper folder or "packaged:base"; None: the real-time path's engines.asr.model.
    model: str | None = None
    beam_size: int = Field(5, ge=1)  # quality above the real-time path's greedy decoding
    language: str | None = None  # None: detected once per file
    max_audio_s: float = Field(4 * 3600.0, gt=0)  # longer recordings fail with too_long


class SummarizeSettings(_Section):
    on_call_end: bool = True  # a finished call with at least one caller turn is summarized
    min_user_turns: int = Field(1, ge=0)
    max_transcript_chars: int = Field(12_000, ge=200)  # the call's end is kept when it is longer
    max_tokens: int = Field(300, ge=16)


class WorkerSettings(_Section):
    kinds: list[str] = ["synthesize", "transcribe", "summarize_call"]
    concurrency: int = Field(1, ge=1)  # jobs at once per worker process
    threads: int = Field(1, ge=1)  # math threads per model (ONNX Runtime, CTranslate2, torch)
    nice: int = Field(19, ge=0, le=19)  # CPU priority below the calls' (0)
    idle_priority: bool = True  # Linux SCHED_IDLE: run only on CPU time nothing else wants
    # While this node (node_id: the server on this machine, by default) holds a live call, work at
    # most this share of the time, resting between units of work (voiceagent/jobs/pacing.py); 1 off.
    duty_beside_calls: float = Field(0.25, gt=0, le=1)
    invisible_s: float = Field(60.0, gt=0)  # the message (and the store lease) while a job runs, renewed
    max_attempts: int = Field(3, ge=1)  # runs before a job fails for good (dead-lettered with the reason)
    backoff_s: float = Field(5.0, gt=0)  # first retry delay, doubling...
    backoff_max_s: float = Field(300.0, gt=0)  # ...up to this
    poll_s: float = Field(0.5, gt=0)  # the store queue (embedded default): how often an idle worker looks
    sweep_s: float = Field(30.0, gt=0)  # how often a worker looks for jobs with no live message or lease
    requeue_after_s: float = Field(900.0, gt=0)  # a queued job unseen this long is published again
    progress_every_s: float = Field(1.0, gt=0)  # progress writes to the store at most this often
    # RocketMQ consumer groups are "<prefix>-<kind>" (one per kind: a group's members must subscribe
    # alike); another prefix gives a separate set of workers (tests) every wake-up of its own.
    group_prefix: str = Field("voiceagent-jobs", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")


class JobsSettings(_Section):
    enabled: bool = True  # the /api/jobs routes and the /jobs page on this node
    # rocketmq: the jobs topic (events.backend must be rocketmq); store: workers poll the store
    # (the embedded default: `make run` and a `voiceagent worker` share the SQLite file); auto:
    # rocketmq when events.backend is rocketmq, else store.
    queue: Literal["auto", "rocketmq", "store"] = "auto"
    max_queued: int = Field(2000, ge=1)  # more queued jobs: 429 with Retry-After
    max_upload_bytes: int = Field(256 * 1024 * 1024, ge=1024)  # enforced while the upload streams in
    max_request_bytes: int = Field(1024 * 1024, ge=1024)  # a JSON submission (text and parameters)
    result_ttl_s: float = Field(24 * 3600.0, gt=0)  # finished jobs and their files are removed after this
    cleanup_every_s: float = Field(300.0, gt=0)
    blob_chunk_bytes: int = Field(1024 * 1024, ge=4096)  # files live in the store in chunks of this size
    # "module:Class" of more job kinds (a kind is one module; tests add an echo kind this way).
    extra_kinds: list[str] = []
    synthesize: SynthesizeSettings = SynthesizeSettings()
    transcribe: TranscribeSettings = TranscribeSettings()
    summarize_call: SummarizeSettings = SummarizeSettings()
    worker: WorkerSettings = WorkerSettings()
