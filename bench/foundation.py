"""Foundation figures: server start-up, HTTP overhead, store write throughput per backend."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.results import Metric, metric, percentile
from tests.serve_process import ServeProcess
from voiceagent.config import StoreSettings
from voiceagent.store import Database, NewTurn, Store, TurnMetrics

HTTP_REQUESTS = 2000
HTTP_CONCURRENCY = 16
TURN_WRITES = 1000
TURN_WRITERS = 8


def _start_server(workdir: Path) -> tuple[ServeProcess, float]:
    started = time.perf_counter()
    server = ServeProcess(workdir)
    server.wait_ok("/healthz", timeout=60, interval=0.02)
    return server, time.perf_counter() - started


async def _keepalive_client(host: str, port: int, count: int, latencies: list[float]) -> None:
    """A bare HTTP/1.1 keep-alive client: light enough that the server, not the load, is measured."""
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
    finally:
        writer.close()
        await writer.wait_closed()


async def _hammer(base: str, concurrency: int) -> tuple[list[float], float]:
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    t0 = time.perf_counter()
    await asyncio.gather(
        *(
            _keepalive_client(host, int(port), HTTP_REQUESTS // concurrency, latencies)
            for _ in range(concurrency)
        )
    )
    return latencies, time.perf_counter() - t0


async def _turn_writes(url: str) -> float:
    database = Database(StoreSettings(url=url, pool_size=TURN_WRITERS))
    await database.migrate()
    store = Store(database)
    await store.touch_user("bench")
    calls = [await store.start_call("bench", node_id="bench") for _ in range(TURN_WRITERS)]
    turn = NewTurn(
        started_at=datetime.now(UTC),
        user_text="how is the weather",
        agent_text="sunny",
        agent_text_heard="sunny",
        metrics=TurnMetrics(asr_s=0.3, voice_to_voice_s=0.8),
    )

    async def writer(call_id: str) -> None:
        for _ in range(TURN_WRITES // TURN_WRITERS):
            await store.add_turn(call_id, turn)

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(c.id) for c in calls))
    elapsed = time.perf_counter() - t0
    await database.close()
    return TURN_WRITES / elapsed


async def _fresh_postgres_db(admin_url: str) -> str:
    import uuid

    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    name = f"va_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return url.set(database=name).render_as_string(hide_password=False)


def run() -> dict[str, Metric]:
    results: dict[str, Metric] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server, startup = _start_server(workdir)
        try:
            asyncio.run(_hammer(server.base_url, 1))  # warm-up
            latencies, _ = asyncio.run(_hammer(server.base_url, 1))
            _, elapsed = asyncio.run(_hammer(server.base_url, HTTP_CONCURRENCY))
        finally:
            server.stop()
        results["serve_startup_to_healthz_s"] = metric(
            startup,
            "s",
            "<= 10",
            "process start → first 200 from /healthz (SQLite, migrations applied)",
        )
        results["http_healthz_p50_ms"] = metric(
            percentile(latencies, 50) * 1000, "ms", "<= 5", "one keep-alive client, loopback"
        )
        results["http_healthz_p99_ms"] = metric(percentile(latencies, 99) * 1000, "ms", "<= 20")
        results["http_healthz_requests_per_s"] = metric(
            HTTP_REQUESTS / elapsed,
            "req/s",
            ">= 1000",
            f"{HTTP_CONCURRENCY} keep-alive clients, one uvicorn worker",
        )

        results["store_turn_writes_sqlite_per_s"] = metric(
            asyncio.run(_turn_writes(f"sqlite+aiosqlite:///{workdir / 'bench.db'}")),
            "turns/s",
            ">= 200",
            f"{TURN_WRITERS} calls writing at once",
        )
    pg = os.environ.get("VA_TEST_POSTGRES_URL")
    if pg:
        url = asyncio.run(_fresh_postgres_db(pg))
        results["store_turn_writes_postgresql_per_s"] = metric(
            asyncio.run(_turn_writes(url)),
            "turns/s",
            ">= 200",
            f"{TURN_WRITERS} calls writing at once",
        )
    return results
