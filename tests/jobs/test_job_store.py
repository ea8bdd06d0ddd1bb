"""The jobs' state machine in the store, on the embedded SQLite and on the real PostgreSQL: claims
are exclusive, a lapsed lease passes the job on and silences the old run, cancel/retry/release
move it as the worker and the API expect, and the upkeep (sweep, retention) finds what it must."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy import func, select

from tests.jobs.conftest import Clock
from voiceagent.jobs.schemas import Claim, ResultFile
from voiceagent.jobs.store import JobFinished, JobNotFound, JobStore
from voiceagent.store import Database
from voiceagent.store.models import JobBlob

LEASE_S = 30.0
TTL_S = 86400.0


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read(store: JobStore, job_id: str, owner: str, name: str) -> list[bytes]:
    return [chunk async for chunk in store.read_file(job_id, owner, name)]


async def claimed(store: JobStore, job_id: str, worker: str = "w1") -> Claim:
    claim = await store.claim(job_id, worker, LEASE_S)
    assert isinstance(claim, Claim), claim
    return claim


async def blob_owners(database: Database, job_id: str) -> set[str]:
    async with database.sessions() as session:
        return set((await session.scalars(select(JobBlob.owner).where(JobBlob.job_id == job_id))).all())


async def test_a_job_is_claimed_by_exactly_one_of_many_concurrent_claimers(job_store: JobStore) -> None:
    job = await job_store.create("echo", {"text": "hi"})
    answers = await asyncio.gather(*(job_store.claim(job.id, f"w{i}", LEASE_S) for i in range(20)))
    claims = [a for a in answers if isinstance(a, Claim)]
    assert len(claims) == 1
    assert sorted(set(a for a in answers if not isinstance(a, Claim))) == ["held"]
    [claim] = claims
    assert (claim.job.status, claim.job.attempts, claim.job.claim) == ("running", 1, claim.token)
    assert claim.job.started_at is not None and claim.job.lease_until is not None


async def test_concurrent_pollers_each_take_a_different_job(job_store: JobStore) -> None:
    jobs = [await job_store.create("echo", {"text": str(i)}) for i in range(8)]
    await job_store.create("other", {})
    claims = await asyncio.gather(*(job_store.claim_next(["echo"], f"w{i}", LEASE_S) for i in range(8)))
    assert all(isinstance(c, Claim) for c in claims)  # none lost to a race over the same row
    assert sorted(c.job_id for c in claims if c) == sorted(j.id for j in jobs)
    assert await job_store.claim_next(["echo"], "w9", LEASE_S) is None  # "other" is not asked for


async def test_claim_next_takes_the_oldest_due_job_first(job_store: JobStore, clock: Clock) -> None:
    first = await job_store.create("echo", {})
    clock.advance(1)
    second = await job_store.create("echo", {})
    claim = await job_store.claim_next(["echo"], "w", LEASE_S)
    assert claim is not None and claim.job_id == first.id
    retried = await job_store.retry(claim, "worker_error", "boom", delay_s=60)
    assert retried is not None
    claim = await job_store.claim_next(["echo"], "w", LEASE_S)
    assert claim is not None and claim.job_id == second.id  # the first waits for its retry time
    assert await job_store.claim_next(["echo"], "w", LEASE_S) is None


async def test_a_lapsed_lease_passes_the_job_on_and_silences_the_old_run(
    job_store: JobStore, clock: Clock, database: Database
) -> None:
    job = await job_store.create("echo", {})
    old = await claimed(job_store, job.id, "w1")
    assert await job_store.heartbeat(old, LEASE_S, progress=0.5, note="half") is False
    assert await job_store.claim(job.id, "w2", LEASE_S) == "held"
    await job_store.write_file(old, "echo.txt", chunks(b"old"))

    clock.advance(LEASE_S + 1)  # the old worker stopped renewing (killed, or the store was away)
    new = await claimed(job_store, job.id, "w2")
    assert (new.job.attempts, new.job.worker) == (2, "w2")
    assert await job_store.heartbeat(old, LEASE_S) is None
    assert await job_store.succeed(old, [], {"by": "old"}, TTL_S) is False
    assert await job_store.fail(old, "gave_up", "x", TTL_S) is False
    assert await job_store.retry(old, "worker_error", "x", 1) is None
    assert await job_store.release(old) is False

    await job_store.write_file(new, "echo.txt", chunks(b"new"))
    files = [ResultFile(name="echo.txt", media_type="text/plain", bytes=3)]
    assert await job_store.succeed(new, files, {"by": "new"}, TTL_S) is True
    done = await job_store.get(job.id)
    assert done is not None
    assert (done.status, done.result, done.result_owner, done.progress) == (
        "succeeded",
        {"by": "new"},
        new.token,
        1.0,
    )
    assert await read(job_store, job.id, new.token, "echo.txt") == [b"new"]
    assert await blob_owners(database, job.id) == {old.token, new.token}  # until the retention runs
    assert await job_store.claim(job.id, "w3", LEASE_S) == "finished"


async def test_heartbeat_records_progress_and_renews_the_lease(job_store: JobStore, clock: Clock) -> None:
    job = await job_store.create("echo", {})
    claim = await claimed(job_store, job.id)
    clock.advance(LEASE_S - 1)
    assert await job_store.heartbeat(claim, LEASE_S, progress=1.7, note="n" * 500) is False
    clock.advance(LEASE_S - 1)  # past the first lease, within the renewed one
    assert await job_store.claim(job.id, "w2", LEASE_S) == "held"
    seen = await job_store.get(job.id)
    assert seen is not None and seen.progress == 1.0 and seen.progress_note == "n" * 200


async def test_cancel_queued_running_finished_and_unknown(job_store: JobStore, clock: Clock) -> None:
    queued = await job_store.create("echo", {})
    record = await job_store.cancel(queued.id, TTL_S)
    assert (record.status, record.detail, record.cancel_requested) == (
        "cancelled",
        "cancelled before it ran",
        True,
    )
    assert record.expires_at is not None and record.finished_at is not None
    assert await job_store.claim(queued.id, "w", LEASE_S) == "finished"

    running = await job_store.create("echo", {})
    claim = await claimed(job_store, running.id)
    record = await job_store.cancel(running.id, TTL_S)
    assert (record.status, record.cancel_requested) == ("running", True)  # the worker settles it
    assert await job_store.claim(running.id, "w2", LEASE_S) == "cancel_requested"
    assert await job_store.heartbeat(claim, LEASE_S, progress=0.3) is True
    assert await job_store.cancelled(claim, TTL_S) is True
    record = await job_store.get(running.id)  # type: ignore[assignment]
    assert (record.status, record.detail, record.reason) == ("cancelled", "cancelled while running", None)

    with pytest.raises(JobFinished) as finished:
        await job_store.cancel(running.id, TTL_S)
    assert finished.value.job.status == "cancelled"
    with pytest.raises(JobNotFound):
        await job_store.cancel("no-such-job", TTL_S)
    receiving = await job_store.create("echo", {}, status="receiving")
    with pytest.raises(JobNotFound):  # an upload still streaming in is not a job yet
        await job_store.cancel(receiving.id, TTL_S)


async def test_a_cancelled_job_whose_worker_died_is_settled_by_the_next_claimer(
    job_store: JobStore, clock: Clock
) -> None:
    by_message, by_poll = await job_store.create("echo", {}), await job_store.create("echo", {})
    for job in (by_message, by_poll):
        await claimed(job_store, job.id)
        await job_store.cancel(job.id, TTL_S)
    clock.advance(LEASE_S + 1)  # their worker is gone: nobody reports progress any more
    assert await job_store.claim(by_message.id, "w2", LEASE_S, ttl_s=TTL_S) == "finished"
    assert await job_store.claim_next(["echo"], "w2", LEASE_S, ttl_s=TTL_S) is None
    for job in (by_message, by_poll):
        record = await job_store.get(job.id)
        assert record is not None and (record.status, record.detail) == (
            "cancelled",
            "cancelled while running",
        )
        assert record.expires_at is not None and record.finished_at is not None
        assert abs((record.expires_at - record.finished_at).total_seconds() - TTL_S) < 1


async def test_retry_waits_for_its_time_and_counts_attempts(job_store: JobStore, clock: Clock) -> None:
    job = await job_store.create("echo", {})
    claim = await claimed(job_store, job.id)
    at = await job_store.retry(claim, "worker_error", "RuntimeError: boom", delay_s=10)
    assert at is not None and abs((at - clock.now).total_seconds() - 10) < 0.01
    record = await job_store.get(job.id)
    assert record is not None
    assert (record.status, record.not_before, record.reason, record.claim) == (
        "queued",
        at,
        "worker_error",
        None,
    )
    assert await job_store.claim(job.id, "w", LEASE_S) == "not_yet"
    assert await job_store.claim_next(["echo"], "w", LEASE_S) is None
    clock.advance(10)
    second = await claimed(job_store, job.id)
    assert second.job.attempts == 2
    assert await job_store.succeed(second, [], {}, TTL_S)
    record = await job_store.get(job.id)
    assert record is not None and (record.status, record.reason, record.detail) == ("succeeded", None, None)


async def test_release_hands_the_job_back_at_once_without_counting(job_store: JobStore) -> None:
    job = await job_store.create("echo", {})
    claim = await claimed(job_store, job.id)
    await job_store.heartbeat(claim, LEASE_S, progress=0.4)
    assert await job_store.release(claim) is True
    record = await job_store.get(job.id)
    assert record is not None and (record.status, record.attempts, record.progress) == ("queued", 0, 0.0)
    again = await claimed(job_store, job.id, "w2")
    assert again.job.attempts == 1
    assert await job_store.heartbeat(claim, LEASE_S) is None  # the released run is over


async def test_a_dedupe_key_makes_one_job_even_when_submitted_concurrently(job_store: JobStore) -> None:
    first = await job_store.create("summarize_call", {"call_id": "c1"}, dedupe_key="summary:c1")
    again = await job_store.create("summarize_call", {"call_id": "c1"}, dedupe_key="summary:c1")
    assert again.id == first.id
    racing = await asyncio.gather(
        *(job_store.create("summarize_call", {"call_id": "c2"}, dedupe_key="summary:c2") for _ in range(5))
    )
    assert len({job.id for job in racing}) == 1
    assert (await job_store.counts()) == {"queued": 2}
    assert await job_store.count_queued() == 2


async def test_stale_finds_lost_wake_ups_once_per_horizon(job_store: JobStore, clock: Clock) -> None:
    requeue_after_s = 300.0
    queued = await job_store.create("echo", {})
    running = await job_store.create("echo", {})
    claim = await claimed(job_store, running.id)
    retrying = await job_store.create("echo", {})
    await job_store.retry(
        await claimed(job_store, retrying.id), "worker_error", "x", delay_s=3 * requeue_after_s
    )
    receiving = await job_store.create("echo", {}, status="receiving")
    assert await job_store.stale(requeue_after_s) == []  # every one has a wake-up or a live lease

    clock.advance(requeue_after_s + LEASE_S + 1)
    stale = await job_store.stale(requeue_after_s)
    assert sorted(j.id for j in stale) == sorted([queued.id, running.id])  # not the retry: not due yet
    assert all(j.published_at == clock.now for j in stale)
    assert await job_store.stale(requeue_after_s) == []  # republished: not again until the horizon

    clock.advance(requeue_after_s + 1)
    assert {j.id for j in await job_store.stale(requeue_after_s)} == {queued.id, running.id}
    assert await job_store.heartbeat(claim, LEASE_S) is False  # a slow worker still owns its run
    assert receiving.id not in {j.id for j in await job_store.stale(0)}


async def test_concurrent_sweepers_republish_each_job_once(job_store: JobStore, clock: Clock) -> None:
    jobs = {(await job_store.create("echo", {})).id for _ in range(10)}
    clock.advance(61)
    found = await asyncio.gather(*(job_store.stale(60) for _ in range(4)))
    ids = [job.id for batch in found for job in batch]
    assert sorted(ids) == sorted(jobs)


async def test_files_stream_back_in_order_and_uploads_round_trip(job_store: JobStore) -> None:
    job = await job_store.create(
        "transcribe", {}, status="receiving", input_name="a.wav", input_type="audio/wav"
    )
    parts = [bytes([i]) * (1000 + i) for i in range(12)]
    for seq, part in enumerate(parts):
        await job_store.append_input(job.id, seq, part)
    assert await job_store.get(job.id) is None  # not a job until the upload is complete
    queued = await job_store.mark_queued(job.id)
    assert (queued.status, queued.input_bytes) == ("queued", sum(map(len, parts)))
    assert [c async for c in job_store.read_input(job.id)] == parts

    claim = await claimed(job_store, job.id)
    size = await job_store.write_file(claim, "out.txt", chunks(*reversed(parts)))
    assert size == sum(map(len, parts))
    assert await read(job_store, job.id, claim.token, "out.txt") == list(reversed(parts))
    assert await read(job_store, job.id, claim.token, "missing.txt") == []


async def test_retention_removes_expired_jobs_abandoned_uploads_and_orphan_files(
    job_store: JobStore, clock: Clock, database: Database
) -> None:
    keep = await job_store.create("echo", {})
    lost = await claimed(job_store, keep.id, "w1")
    await job_store.write_file(lost, "echo.txt", chunks(b"partial"))
    clock.advance(LEASE_S + 1)
    winner = await claimed(job_store, keep.id, "w2")
    await job_store.write_file(winner, "echo.txt", chunks(b"whole"))
    assert await job_store.succeed(
        winner, [ResultFile(name="echo.txt", media_type="text/plain", bytes=5)], {}, TTL_S
    )

    failed = await job_store.create("echo", {})
    failing = await claimed(job_store, failed.id)
    await job_store.write_file(failing, "echo.txt", chunks(b"half"))
    assert await job_store.fail(failing, "invalid_params", "no", ttl_s=10)

    upload = await job_store.create("transcribe", {}, status="receiving", input_name="a.wav")
    await job_store.append_input(upload.id, 0, b"RIFF")
    refused = await job_store.create("echo", {}, status="failed", reason="too_long", detail="x", ttl_s=10)

    assert await job_store.remove_expired() == 0  # nothing expired yet...
    assert await blob_owners(database, keep.id) == {winner.token}  # ...but orphans go at once
    assert await blob_owners(database, failed.id) == set()
    assert await read(job_store, keep.id, winner.token, "echo.txt") == [b"whole"]

    clock.advance(3600 + 1)  # past the failed ones' 10 s and the upload's hour
    assert await job_store.remove_expired() == 3
    for gone in (failed, upload, refused):
        assert await job_store.get(gone.id) is None
    assert await blob_owners(database, upload.id) == set()
    assert await job_store.get(keep.id) is not None
    clock.advance(TTL_S)
    assert await job_store.remove_expired() == 1
    assert await blob_owners(database, keep.id) == set()
    async with database.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(JobBlob)) == 0


async def test_recent_pages_newest_first(job_store: JobStore, clock: Clock) -> None:
    made: Sequence[str] = []
    for i in range(5):
        made = [*made, (await job_store.create("echo" if i % 2 else "other", {})).id]
        clock.advance(1)
    await job_store.create("echo", {}, status="receiving")
    page = await job_store.recent(limit=3)
    assert [j.id for j in page] == list(reversed(made))[:3]
    older = await job_store.recent(limit=3, before=page[-1].created_at)
    assert [j.id for j in older] == list(reversed(made))[3:]
    assert {j.kind for j in await job_store.recent(kind="echo")} == {"echo"}
