"""The jobs API over the real app (create_app: its guard, middleware and routes) on SQLite with the
store-polled queue, in process: jobs are submitted over HTTP and driven to their end by hand
through the JobStore, as a worker would. Refusals leave either a failed job with its reason or no
trace at all, uploads are refused while they stream, and a call's end queues its summary once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.calls.caller import dial
from tests.jobs.conftest import Clock
from voiceagent.auth.accounts import Role
from voiceagent.config import Settings, StoreSettings
from voiceagent.engines.settings import EngineSettings
from voiceagent.jobs.queue import JobQueue, QueueUnavailable
from voiceagent.jobs.schemas import Claim, ResultFile
from voiceagent.jobs.settings import JobsSettings
from voiceagent.jobs.store import JobStore
from voiceagent.runtime import Runtime
from voiceagent.server.app import create_app
from voiceagent.store.models import Job, JobBlob
from voiceagent.testing.admin import issue_token
from voiceagent.testing.fakes import install_fake_engines
from voiceagent.testing.jobs import ECHO_EXTRA_KINDS

BOUNDARY = "jobs-test-boundary"
WAV = b"RIFF" + bytes(range(256)) * 40  # not audio: the API does not decode, the worker does


@dataclass
class Node:
    runtime: Runtime
    http: httpx.AsyncClient  # signed in as an operator (an API token)
    app: Any
    store_url: str

    @property
    def store(self) -> JobStore:
        return self.runtime.jobs.store

    async def rows(self) -> tuple[int, int]:
        """Every job row (those still receiving an upload too) and every file chunk."""
        async with self.runtime.database.sessions() as session:
            jobs = await session.scalar(select(func.count()).select_from(Job))
            blobs = await session.scalar(select(func.count()).select_from(JobBlob))
            return int(jobs or 0), int(blobs or 0)


OpenNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def open_node(store_url: str) -> AsyncIterator[OpenNode]:
    """A node's app with the given ``jobs`` settings, its store migrated (SQLite, and PostgreSQL
    when it runs); the runtime is not started (the API needs only the store: no broker, no model)."""
    runtimes: list[Runtime] = []
    clients: list[httpx.AsyncClient] = []

    async def open_(**jobs: Any) -> Node:
        settings = Settings(
            node_id="test-node",
            store=StoreSettings(url=store_url),
            engines=EngineSettings(preload=False),
            jobs=JobsSettings(**jobs),
        )
        runtime = Runtime(settings)
        runtimes.append(runtime)
        await runtime.database.migrate()
        app = create_app(runtime)
        token = await issue_token(store_url, Role.OPERATOR)
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://node",
            headers={"Authorization": f"Bearer {token}"},
        )
        clients.append(http)
        return Node(runtime, http, app, store_url)

    yield open_
    for http in clients:
        await http.aclose()
    for runtime in runtimes:
        await runtime.calls.close_all()
        await runtime.database.close()
        await runtime._http.aclose()


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def finish(store: JobStore, job_id: str, files: dict[str, tuple[str, bytes]]) -> Claim:
    """What a worker does: claim the job, report progress, store its files, succeed."""
    claim = await store.claim(job_id, "test-worker", 30.0)
    assert isinstance(claim, Claim), claim
    assert await store.heartbeat(claim, 30.0, progress=0.4, note="halfway") is False
    described = []
    for name, (media_type, data) in files.items():
        size = await store.write_file(claim, name, _chunks(data[:1000], data[1000:]))
        described.append(ResultFile(name=name, media_type=media_type, bytes=size))
    assert await store.succeed(claim, described, {"duration_s": 1.5}, ttl_s=3600.0)
    return claim


def form_head(kind: str, params: dict[str, Any] | None = None, filename: str = "talk.wav") -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="kind"\r\n\r\n{kind}\r\n']
    if params is not None:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params)}\r\n'
        )
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    )
    return "".join(parts).encode()


FORM_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
FORM_TYPE = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def test_a_job_is_accepted_at_once_followed_and_its_files_downloaded(open_node: OpenNode) -> None:
    node = await open_node()
    text = "Hello there. " * 40  # 520 characters: the view shows the first 200
    sent = await node.http.post("/api/jobs", json={"kind": "synthesize", "params": {"text": text}})
    assert sent.status_code == 202, sent.text
    accepted = sent.json()
    job_id = accepted["job_id"]
    assert sent.headers["location"] == accepted["location"] == f"/api/jobs/{job_id}"
    assert accepted["status"] == "queued"

    queued = (await node.http.get(sent.headers["location"])).json()
    assert (queued["status"], queued["progress_percent"], queued["files"]) == ("queued", 0.0, [])
    assert queued["params"]["text"] == text[:200] + "…"
    assert (await node.store.get(job_id)).params["text"] == text  # kept whole
    assert (await node.store.get(job_id)).submitted_by.startswith("token:test-")
    early = await node.http.get(f"/api/jobs/{job_id}/result")
    assert early.status_code == 409 and early.json()["error"] == "not_succeeded"
    assert "queued" in early.json()["detail"] and early.json()["job_id"] == job_id

    claim = await node.store.claim(job_id, "test-worker", 30.0)
    assert isinstance(claim, Claim)
    await node.store.heartbeat(claim, 30.0, progress=0.4, note="sentence 2 of 5")
    running = (await node.http.get(f"/api/jobs/{job_id}")).json()
    assert (running["status"], running["progress_percent"]) == ("running", 40.0)
    assert running["progress_note"] == "sentence 2 of 5" and running["attempts"] == 1
    busy = await node.http.get(f"/api/jobs/{job_id}/result", params={"name": "audio.wav"})
    assert busy.status_code == 409 and "running" in busy.json()["detail"]
    await node.store.release(claim)

    opus = b"OggS" + bytes(3000)
    await finish(node.store, job_id, {"audio.wav": ("audio/wav", WAV), "audio.opus": ("audio/ogg", opus)})
    done = (await node.http.get(f"/api/jobs/{job_id}")).json()
    assert (done["status"], done["progress_percent"], done["result"]) == (
        "succeeded",
        100.0,
        {"duration_s": 1.5},
    )
    link = f"/api/jobs/{job_id}/result?name="
    assert done["files"] == [
        {"name": "audio.wav", "media_type": "audio/wav", "bytes": len(WAV), "url": f"{link}audio.wav"},
        {"name": "audio.opus", "media_type": "audio/ogg", "bytes": len(opus), "url": f"{link}audio.opus"},
    ]
    assert done["expires_at"] is not None and done["finished_at"] is not None

    for link, data in ((done["files"][0]["url"], WAV), (done["files"][1]["url"], opus)):
        download = await node.http.get(link)
        assert download.status_code == 200 and download.content == data
        name = link.rpartition("=")[2]
        assert download.headers["content-disposition"] == f'attachment; filename="{job_id}-{name}"'
        assert download.headers["content-length"] == str(len(data))
        assert download.headers["cache-control"] == "no-store"
    main = await node.http.get(f"/api/jobs/{job_id}/result")
    assert main.headers["content-type"] == "audio/wav" and main.content == WAV  # the first file
    missing = await node.http.get(f"/api/jobs/{job_id}/result", params={"name": "audio.mp3"})
    assert missing.status_code == 404 and "audio.wav, audio.opus" in missing.json()["detail"]

    page = (await node.http.get("/api/jobs")).json()
    assert [j["id"] for j in page["jobs"]] == [job_id] and page["next_before"] is None
    assert (await node.http.get("/api/jobs", params={"status": "queued"})).json()["jobs"] == []
    assert len((await node.http.get("/api/jobs", params={"kind": "synthesize"})).json()["jobs"]) == 1


async def test_the_list_pages_newest_first(open_node: OpenNode) -> None:
    node = await open_node()
    ids = []
    for n in range(5):
        sent = await node.http.post("/api/jobs", json={"kind": "synthesize", "params": {"text": f"Job {n}."}})
        ids.append(sent.json()["job_id"])
        await asyncio.sleep(0.002)  # distinct creation times
    first = (await node.http.get("/api/jobs", params={"limit": 3})).json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:3]
    second = (await node.http.get("/api/jobs", params={"limit": 3, "before": first["next_before"]})).json()
    assert [j["id"] for j in second["jobs"]] == ids[::-1][3:] and second["next_before"] is None
    too_many = await node.http.get("/api/jobs", params={"limit": 500})
    assert too_many.status_code == 422
    assert too_many.json() == {
        "error": "invalid_request",
        "detail": "limit: Input should be less than or equal to 200",
        "job_id": None,
    }
    bad_status = await node.http.get("/api/jobs", params={"status": "receiving"})
    assert bad_status.status_code == 422 and bad_status.json()["error"] == "invalid_request"


async def test_refused_submissions_are_failed_jobs_with_their_reason(open_node: OpenNode) -> None:
    node = await open_node(synthesize={"max_chars": 50})
    cases = [
        ({"kind": "translate", "params": {}}, "unknown_kind", "no kind 'translate'"),
        ({"kind": "synthesize", "params": {"text": ""}}, "empty_text", "no letters or digits"),
        ({"kind": "synthesize", "params": {"text": "?! ... ;-)"}}, "empty_text", "no letters or digits"),
        ({"kind": "synthesize", "params": {"text": "Words. " * 10}}, "too_long", "70 characters > limit 50"),
        (
            {"kind": "synthesize", "params": {"text": "Hi", "speed": 2}},
            "invalid_params",
            "speed: Extra inputs",
        ),
        ({"kind": "synthesize", "params": {}}, "invalid_params", "text: Field required"),
        ({"kind": "transcribe", "params": {}}, "invalid_params", "transcribe needs a file"),
    ]
    for body, reason, detail in cases:
        refused = await node.http.post("/api/jobs", json=body)
        assert refused.status_code == 422, (body, refused.text)
        problem = refused.json()
        assert problem["error"] == reason and detail in problem["detail"], (body, problem)
        stored = (await node.http.get(f"/api/jobs/{problem['job_id']}")).json()
        assert (stored["status"], stored["reason"], stored["kind"]) == ("failed", reason, body["kind"])
        assert stored["detail"] == problem["detail"] and stored["expires_at"] is not None
    assert await node.store.count_queued() == 0

    # A file for a kind that takes none is refused the same way (before the file is read).
    upload = await node.http.post(
        "/api/jobs",
        data={"kind": "synthesize", "params": json.dumps({"text": "Hello."})},
        files={"file": ("talk.wav", WAV, "audio/wav")},
    )
    assert upload.status_code == 422 and upload.json()["error"] == "invalid_params"
    assert upload.json()["detail"] == "synthesize takes no file"
    assert await node.rows() == (len(cases) + 1, 0)  # failed jobs only, no file kept


async def test_malformed_requests_get_clear_answers_and_store_nothing(open_node: OpenNode) -> None:
    node = await open_node(max_request_bytes=1024)
    http = node.http
    wrong_type = await http.post(
        "/api/jobs", content=b"kind=synthesize", headers={"Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 415 and wrong_type.json()["error"] == "unsupported_media_type"
    no_type = await http.post("/api/jobs", content=b"{}")
    assert no_type.status_code == 415 and "no Content-Type" in no_type.json()["detail"]
    big = {"kind": "synthesize", "params": {"text": "x" * 2000}}
    too_big = await http.post("/api/jobs", json=big)
    assert too_big.status_code == 413 and too_big.json()["detail"] == (
        "the submission is larger than the limit of 1024 bytes"
    )
    chunked = await http.post(  # no Content-Length: refused once the body passes the limit
        "/api/jobs", content=_chunks(*[json.dumps(big).encode()[i : i + 100] for i in range(0, 2100, 100)]),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert chunked.status_code == 413
    not_json = await http.post("/api/jobs", content=b"{kind:", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["detail"].startswith("bad job submission: body: ")
    no_kind = await http.post("/api/jobs", json={"params": {}})
    assert (
        no_kind.status_code == 400 and no_kind.json()["detail"] == "bad job submission: kind: Field required"
    )
    control = await http.post("/api/jobs", json={"kind": "synth\u0000esize", "params": {}})
    assert control.status_code == 400 and "printable" in control.json()["detail"]
    not_object = await http.post("/api/jobs", json={"kind": "synthesize", "params": ["text"]})
    assert not_object.status_code == 400 and "params" in not_object.json()["detail"]

    garbage = await http.post("/api/jobs", content=b"this is not multipart at all", headers=FORM_TYPE)
    assert garbage.status_code == 400 and "not valid multipart/form-data" in garbage.json()["detail"]
    no_boundary = await http.post(
        "/api/jobs", content=b"--x--", headers={"Content-Type": "multipart/form-data"}
    )
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["detail"]
    no_kind_field = await http.post("/api/jobs", files={"file": ("a.wav", WAV, "audio/wav")})
    assert no_kind_field.status_code == 400 and "no 'kind' field" in no_kind_field.json()["detail"]
    bad_params = await http.post(
        "/api/jobs", data={"kind": "transcribe", "params": "{oops"}, files={"file": ("a.wav", WAV)}
    )
    assert bad_params.status_code == 400 and "'params' is not JSON" in bad_params.json()["detail"]
    wrong_field = await http.post("/api/jobs", data={"kind": "transcribe"}, files={"audio": ("a.wav", WAV)})
    assert wrong_field.status_code == 400 and "send it as 'file'" in wrong_field.json()["detail"]
    params_part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n'
    after_file = form_head("transcribe") + WAV + f"\r\n{params_part}--{BOUNDARY}--\r\n".encode()
    late = await http.post("/api/jobs", content=after_file, headers=FORM_TYPE)
    assert late.status_code == 400 and "before the file" in late.json()["detail"]
    truncated = await http.post("/api/jobs", content=form_head("transcribe") + WAV[:500], headers=FORM_TYPE)
    assert truncated.status_code == 400 and "ended before the multipart closing boundary" in truncated.text
    assert await node.rows() == (0, 0)


async def test_an_upload_streams_into_the_store_in_chunks(open_node: OpenNode) -> None:
    node = await open_node(blob_chunk_bytes=4096)
    audio = bytes(range(256)) * 50  # 12,800 bytes
    sent = await node.http.post(
        "/api/jobs",
        content=_chunks(form_head("transcribe", {"language": "en"}, "C:\\calls\\talk.wav"), *[
            audio[i : i + 1000] for i in range(0, len(audio), 1000)
        ], FORM_TAIL),
        headers=FORM_TYPE,
    )  # fmt: skip
    assert sent.status_code == 202, sent.text
    job = (await node.http.get(sent.headers["location"])).json()
    assert job["status"] == "queued" and job["params"] == {"language": "en"}
    assert job["input"] == {"name": "talk.wav", "media_type": "audio/wav", "bytes": len(audio)}
    stored = [chunk async for chunk in node.store.read_input(job["id"])]
    assert b"".join(stored) == audio and [len(c) for c in stored] == [4096, 4096, 4096, 512]

    # What a browser sends (httpx, like a FormData: the fields first, then the file).
    browser = await node.http.post(
        "/api/jobs", data={"kind": "transcribe"}, files={"file": ("ünïcode talk.ogg", audio, "audio/ogg")}
    )
    assert browser.status_code == 202, browser.text
    view = (await node.http.get(browser.headers["location"])).json()
    assert view["input"] == {"name": "ünïcode talk.ogg", "media_type": "audio/ogg", "bytes": len(audio)}


async def test_an_oversized_upload_is_refused_as_it_streams_and_leaves_nothing(open_node: OpenNode) -> None:
    node = await open_node(max_upload_bytes=4096, blob_chunk_bytes=4096, max_request_bytes=1024)
    sent_chunks = 0

    async def endless_upload() -> AsyncIterator[bytes]:
        nonlocal sent_chunks
        yield form_head("transcribe")
        for _ in range(1000):  # 1 MB in all, were it read to the end
            sent_chunks += 1
            yield bytes(1024)
        yield FORM_TAIL

    refused = await node.http.post("/api/jobs", content=endless_upload(), headers=FORM_TYPE)
    assert refused.status_code == 413
    assert refused.json() == {
        "error": "too_large",
        "detail": "the file is larger than the limit of 4096 bytes",
        "job_id": None,
    }
    assert sent_chunks <= 10  # refused after the limit, not after the body
    assert await node.rows() == (0, 0)

    # A declared length over the limit is refused before a byte is read.
    declared = await node.http.post(
        "/api/jobs",
        content=endless_upload(),
        headers={**FORM_TYPE, "Content-Length": str(1024 * 1024)},
    )
    assert declared.status_code == 413 and await node.rows() == (0, 0)


async def test_a_client_that_goes_away_mid_upload_leaves_nothing(open_node: OpenNode) -> None:
    node = await open_node(blob_chunk_bytes=4096)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": form_head("transcribe"), "more_body": True},
        *({"type": "http.request", "body": bytes(3000), "more_body": True} for _ in range(5)),
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # nothing more ever comes
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    token = node.http.headers["authorization"]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/api/jobs", "raw_path": b"/api/jobs", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("node", 80),
        "headers": [(b"host", b"node"), (b"authorization", token.encode()),
                    (b"content-type", FORM_TYPE["Content-Type"].encode())],
    }  # fmt: skip
    async with asyncio.timeout(10):
        await node.app(scope, receive, send)
        while await node.rows() != (0, 0):  # the job and the 12 KB already stored, deleted
            await asyncio.sleep(0.02)
    assert await node.store.recent() == []


async def test_unknown_jobs_are_404_everywhere(open_node: OpenNode) -> None:
    node = await open_node()
    for method, path in (
        ("GET", "/api/jobs/0123456789abcdef0123456789abcdef"),
        ("DELETE", "/api/jobs/0123456789abcdef0123456789abcdef"),
        ("GET", "/api/jobs/0123456789abcdef0123456789abcdef/result"),
        ("GET", "/api/jobs/nope/result?name=audio.wav"),
    ):
        answer = await node.http.request(method, path)
        assert answer.status_code == 404, (method, path)
        assert answer.json()["error"] == "not_found" and "no job" in answer.json()["detail"]


async def test_cancelling_queued_running_and_finished_jobs(open_node: OpenNode) -> None:
    node = await open_node()

    async def submit(text: str) -> str:
        sent = await node.http.post("/api/jobs", json={"kind": "synthesize", "params": {"text": text}})
        return str(sent.json()["job_id"])

    queued = await submit("Cancel me before I run.")
    cancelled = await node.http.delete(f"/api/jobs/{queued}")
    assert cancelled.status_code == 200
    view = cancelled.json()
    assert (view["status"], view["cancel_requested"], view["finished_at"] is not None) == (
        "cancelled",
        True,
        True,
    )
    again = await node.http.delete(f"/api/jobs/{queued}")
    assert again.status_code == 409
    assert again.json() == {"error": "finished", "detail": "the job has already cancelled", "job_id": queued}
    assert (await node.http.get(f"/api/jobs/{queued}/result")).status_code == 409

    running = await submit("Cancel me while I run.")
    claim = await node.store.claim(running, "test-worker", 30.0)
    assert isinstance(claim, Claim)
    asked = (await node.http.delete(f"/api/jobs/{running}")).json()
    assert (asked["status"], asked["cancel_requested"]) == ("running", True)
    assert await node.store.heartbeat(claim, 30.0, progress=0.5) is True  # the worker learns it
    await node.store.cancelled(claim, 3600.0)
    assert (await node.http.get(f"/api/jobs/{running}")).json()["status"] == "cancelled"

    done = await submit("I finish first.")
    await finish(node.store, done, {"audio.wav": ("audio/wav", WAV)})
    late = await node.http.delete(f"/api/jobs/{done}")
    assert late.status_code == 409 and late.json()["detail"] == "the job has already succeeded"


async def test_too_many_queued_jobs_is_429_with_retry_after_and_stores_nothing(open_node: OpenNode) -> None:
    node = await open_node(max_queued=2)
    body = {"kind": "synthesize", "params": {"text": "Hello."}}
    assert [(await node.http.post("/api/jobs", json=body)).status_code for _ in range(2)] == [202, 202]
    busy = await node.http.post("/api/jobs", json=body)
    assert busy.status_code == 429 and busy.json()["error"] == "too_many_queued"
    assert busy.headers["retry-after"] == "30"  # nothing finished yet to estimate from
    assert await node.rows() == (2, 0)
    upload = await node.http.post("/api/jobs", data={"kind": "transcribe"}, files={"file": ("a.wav", WAV)})
    assert upload.status_code == 429 and await node.rows() == (2, 0)

    # With jobs finishing about every 10 s, one job over the limit waits about 10 s.
    node.store.clock = clock = Clock()
    for job in await node.store.recent():
        await finish(node.store, job.id, {"audio.wav": ("audio/wav", WAV)})
        clock.advance(10.0)
    for _ in range(2):
        assert (await node.http.post("/api/jobs", json=body)).status_code == 202
    estimated = await node.http.post("/api/jobs", json=body)
    assert estimated.status_code == 429 and estimated.headers["retry-after"] == "10"


class DownQueue(JobQueue):
    kind = "rocketmq"

    async def publish(self, job_id: str, kind: str, deliver_at: datetime | None = None) -> None:
        raise QueueUnavailable("broker unreachable after 5 attempts")


async def test_a_broker_that_is_down_at_submit_is_503_and_keeps_nothing(open_node: OpenNode) -> None:
    node = await open_node(blob_chunk_bytes=4096)
    node.runtime.jobs.service.queue = DownQueue()
    down = await node.http.post("/api/jobs", json={"kind": "synthesize", "params": {"text": "Hello."}})
    assert down.status_code == 503 and down.headers["retry-after"] == "5"
    assert down.json()["error"] == "queue_unavailable" and "nothing was kept" in down.json()["detail"]
    upload = await node.http.post(
        "/api/jobs", data={"kind": "transcribe"}, files={"file": ("a.wav", bytes(10_000), "audio/wav")}
    )
    assert upload.status_code == 503
    assert await node.rows() == (0, 0)


async def test_strangers_are_refused_viewers_read_and_operators_submit(open_node: OpenNode) -> None:
    node = await open_node()
    submitted = await node.http.post("/api/jobs", json={"kind": "synthesize", "params": {"text": "Hi."}})
    job_id = submitted.json()["job_id"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=node.app), base_url="http://node"
    ) as stranger:
        for method, path in (
            ("GET", "/api/jobs"),
            ("GET", f"/api/jobs/{job_id}"),
            ("POST", "/api/jobs"),
            ("DELETE", f"/api/jobs/{job_id}"),
            ("GET", f"/api/jobs/{job_id}/result"),
        ):
            refused = await stranger.request(
                method, path, json={"kind": "synthesize", "params": {"text": "x"}}
            )
            assert refused.status_code == 401, (method, path)
        page = await stranger.get("/jobs")  # the shell is public: it holds no data
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "/static/jobs/jobs.js" in page.text

        viewer = {"Authorization": f"Bearer {await issue_token(node.store_url, Role.VIEWER)}"}
        assert (await stranger.get(f"/api/jobs/{job_id}", headers=viewer)).status_code == 200
        options = (await stranger.get("/api/jobs/kinds", headers=viewer)).json()
        assert {k["name"] for k in options["kinds"]} >= {"synthesize", "transcribe", "summarize_call"}
        assert options["reasons"]["empty_text"] and options["max_text_chars"] == 100_000
        body = {"kind": "synthesize", "params": {"text": "Hi."}}
        assert (await stranger.post("/api/jobs", json=body, headers=viewer)).status_code == 403
        assert (await stranger.delete(f"/api/jobs/{job_id}", headers=viewer)).status_code == 403
    assert (await node.store.get(job_id)).status == "queued"


async def test_the_api_is_described_in_openapi(open_node: OpenNode) -> None:
    node = await open_node()
    spec = (await node.http.get("/openapi.json")).json()
    submit = spec["paths"]["/api/jobs"]["post"]
    assert submit["tags"] == ["jobs"]
    assert {"202", "400", "401", "403", "413", "415", "422", "429", "503"} <= set(submit["responses"])
    assert submit["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobProblem")
    assert set(submit["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert spec["paths"]["/api/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]["$ref"].endswith("/JobView")
    assert {"get", "delete"} <= set(spec["paths"]["/api/jobs/{job_id}"])
    assert "404" in spec["paths"]["/api/jobs/{job_id}/result"]["get"]["responses"]
    assert "/jobs" not in spec["paths"]


@pytest.mark.integration  # a real call: aiortc peers over loopback, a few seconds
async def test_a_call_that_ends_queues_its_summary_once(open_node: OpenNode) -> None:
    node = await open_node()
    runtime = node.runtime
    install_fake_engines(runtime.engines)
    caller = await dial(runtime.calls, user_id="ann")
    since = caller.ask()
    await caller.wait_event("turn", since)  # one caller turn, stored
    await caller.hang_up(say_so=True)
    async with asyncio.timeout(15):
        while not (summaries := await node.store.recent(kind="summarize_call")):
            await asyncio.sleep(0.05)
    [summary] = summaries
    assert (summary.status, summary.params, summary.submitted_by) == (
        "queued",
        {"call_id": caller.call_id},
        "system:call-end",
    )
    assert summary.dedupe_key == f"summarize_call:{caller.call_id}"

    await runtime.jobs.call_ended(caller.call_id, 1)  # the same call ending again: no second job
    assert [j.id for j in await node.store.recent(kind="summarize_call")] == [summary.id]


async def test_the_summary_hook_follows_the_settings_and_never_raises(open_node: OpenNode) -> None:
    node = await open_node(summarize_call={"min_user_turns": 2}, max_queued=1)
    jobs = node.runtime.jobs
    await jobs.call_ended("quiet-call", 1)  # fewer caller turns than asked for
    assert await node.store.recent() == []
    await jobs.call_ended("long-call", 2)
    await jobs.call_ended("long-call", 2)  # told twice: still one job
    await jobs.call_ended("busy-call", 5)  # the queue is full: logged, not raised
    assert [j.params for j in await node.store.recent()] == [{"call_id": "long-call"}]

    jobs.service.queue = DownQueue()  # the broker down: the job stays queued for the sweep
    await node.store.cancel((await node.store.recent())[0].id, 60.0)
    await jobs.call_ended("unannounced-call", 3)
    assert (await node.store.recent(kind="summarize_call", status="queued"))[0].params == {
        "call_id": "unannounced-call"
    }

    off = await open_node(summarize_call={"on_call_end": False})
    await off.runtime.jobs.call_ended("any-call", 9)
    assert await off.store.count_queued() == 1  # only the one above: same store file


async def test_extra_kinds_are_offered_and_submitted_like_the_built_in_ones(open_node: OpenNode) -> None:
    node = await open_node(extra_kinds=ECHO_EXTRA_KINDS)
    options = (await node.http.get("/api/jobs/kinds")).json()
    assert {"name": "echo", "accepts_upload": False, "requires_upload": False} in options["kinds"]
    sent = await node.http.post("/api/jobs", json={"kind": "echo", "params": {"text": "ping", "steps": 2}})
    assert sent.status_code == 202
    refused = await node.http.post("/api/jobs", json={"kind": "echo", "params": {"text": ""}})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("text: String should have")
