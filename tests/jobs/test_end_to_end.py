"""Each job kind end to end as a user runs it: `voiceagent serve` takes the job over HTTP, the real
RocketMQ carries the wake-up, a `voiceagent worker` process runs it with the real models, and the
result comes back over HTTP. The three kinds chain: the synthesized WAV is uploaded for
transcription, and the call summarized is one the store recorded."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from tests.conftest import open_migrated, require_service
from tests.events.conftest import ROCKETMQ_ENV
from tests.serve_process import ServeProcess, VoiceagentProcess
from voiceagent.jobs.summaries import CallSummaries
from voiceagent.store import Database, NewTurn, Store

pytestmark = [pytest.mark.integration, pytest.mark.rocketmq, pytest.mark.postgres, pytest.mark.models]

TEXT = (
    "Our museum opens at nine in the morning. Guided tours leave from the main hall every hour. "
    "Children under twelve enter for free."
)
CALL = [
    ("Hi, I'd like to cancel my subscription please.", "I can help with that. May I ask why?"),
    ("It's too expensive for me at the moment.", "I understand. I have cancelled it for you."),
]


@pytest.fixture
def services(postgres_url: str, tmp_path: Path) -> Iterator[tuple[ServeProcess, VoiceagentProcess]]:
    endpoint = require_service("RocketMQ", ROCKETMQ_ENV)
    env = {
        "VOICEAGENT_STORE__URL": postgres_url,
        "VOICEAGENT_EVENTS__BACKEND": "rocketmq",
        "VOICEAGENT_EVENTS__ROCKETMQ__ENDPOINTS": endpoint,
        # A group of its own: wake-ups other tests left on the shared topic stay theirs.
        "VOICEAGENT_JOBS__WORKER__GROUP_PREFIX": f"va-test-e2e-{uuid.uuid4().hex[:8]}",
        "VOICEAGENT_JOBS__WORKER__IDLE_PRIORITY": "false",  # see test_worker_broker: a busy CI box
    }
    server = ServeProcess(
        tmp_path,
        VOICEAGENT_ENGINES__PRELOAD="false",  # the API node needs no model: the worker has them
        VOICEAGENT_KNOWLEDGE__ENABLED="false",
        VOICEAGENT_OUTREACH__ENABLED="false",
        **env,
    )
    worker = VoiceagentProcess(tmp_path, ["worker"], "worker.log", **env)
    try:
        server.wait_ok("/readyz", timeout=120)
        yield server, worker
    finally:
        worker.stop()
        server.stop()


async def _finished(http: httpx.AsyncClient, location: str, worker: VoiceagentProcess) -> dict[str, Any]:
    """Poll the job as the page does, until it has finished (a real defect: never, within 4 min)."""
    deadline = time.monotonic() + 240
    seen: set[str] = set()
    while time.monotonic() < deadline:
        job: dict[str, Any] = (await http.get(location)).raise_for_status().json()
        seen.add(job["status"])
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", (job, worker.log[-3000:])
            assert seen <= {"queued", "running", "succeeded"}
            return job
        await asyncio.sleep(0.25)
    raise AssertionError(f"not finished: {job}\n{worker.log[-3000:]}")


async def _recorded_call(url: str) -> str:
    database: Database = await open_migrated(url)
    try:
        store = Store(database)
        await store.touch_user("ann")
        call = await store.start_call("ann", node_id="elsewhere")
        start = datetime.now(UTC) - timedelta(minutes=2)
        for i, (said, answered) in enumerate(CALL):
            at = start + timedelta(seconds=15 * i)
            turn = NewTurn(
                started_at=at, ended_at=at + timedelta(seconds=5), user_text=said, agent_text=answered
            )
            await store.add_turn(call.id, turn)
        await store.end_call(call.id, "hangup")
        return call.id
    finally:
        await database.close()


async def test_each_kind_from_submit_through_the_broker_and_a_worker_to_its_result(
    services: tuple[ServeProcess, VoiceagentProcess], postgres_url: str
) -> None:
    server, worker = services
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.operator, timeout=30) as http:
        # synthesize: text in, WAV and Opus out.
        submitted = await http.post("/api/jobs", json={"kind": "synthesize", "params": {"text": TEXT}})
        assert submitted.status_code == 202, submitted.text
        assert submitted.headers["location"] == f"/api/jobs/{submitted.json()['job_id']}"
        job = await _finished(http, submitted.headers["location"], worker)
        assert [f["name"] for f in job["files"]] == ["audio.wav", "audio.opus"]
        wav = (await http.get(f"{submitted.headers['location']}/result")).raise_for_status()
        assert wav.headers["content-type"] == "audio/wav"
        opus = (
            await http.get(f"{submitted.headers['location']}/result", params={"name": "audio.opus"})
        ).content
        for audio in (wav.content, opus):
            with av.open(io.BytesIO(audio)) as container:
                assert container.streams.audio[0].duration or container.duration
        assert job["result"]["duration_s"] > 4  # three sentences of speech

        # transcribe: that WAV uploaded as a file; the words come back.
        files = {"file": ("speech.wav", wav.content, "audio/wav")}
        submitted = await http.post("/api/jobs", data={"kind": "transcribe"}, files=files)
        assert submitted.status_code == 202, submitted.text
        job = await _finished(http, submitted.headers["location"], worker)
        transcript = json.loads((await http.get(f"{submitted.headers['location']}/result")).content)
        words = transcript["text"].lower()
        assert all(word in words for word in ("museum", "morning", "main hall", "children", "free")), words
        starts = [s["start"] for s in transcript["segments"]]
        assert (
            starts == sorted(starts) and transcript["segments"][-1]["end"] <= transcript["duration_s"] + 0.5
        )

        # summarize_call: a call the store recorded; the summary is kept for the dashboard.
        call_id = await _recorded_call(postgres_url)
        submitted = await http.post(
            "/api/jobs", json={"kind": "summarize_call", "params": {"call_id": call_id}}
        )
        assert submitted.status_code == 202, submitted.text
        job = await _finished(http, submitted.headers["location"], worker)
        assert job["result"]["summary"].strip()
    database = await open_migrated(postgres_url)
    try:
        stored = await CallSummaries(database).get(call_id)
        assert stored is not None and stored.summary == job["result"]["summary"]
    finally:
        await database.close()
    assert worker.log.count(": succeeded") == 3, worker.log[-3000:]
