"""Two `voiceagent serve` nodes sharing a fresh PostgreSQL database and the real RocketMQ broker,
with a scripted OpenAI-compatible LLM: what the multi-node tests and the outreach bench run on."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from tests.conftest import POSTGRES_URL_ENV, require_service
from tests.events.conftest import ROCKETMQ_ENV
from tests.integration.broken_llm import BrokenLLM
from tests.serve_process import ServeProcess, VoiceagentProcess

CLAIM_S = 6.0  # short leases, so a dead node's claim lapses within a test
INVISIBLE_S = 15.0  # most prompts finish unextended (extensions bring copies back: events/consumer.py)


@dataclass
class Cluster:
    a: ServeProcess
    b: ServeProcess
    a_id: str
    b_id: str
    env: dict[str, str]  # the settings both nodes share (for a CLI run against them)


def fresh_database(admin_url: str) -> str:
    import asyncpg
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url)
    name = f"va_cluster_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    # Its own thread: the caller may be inside an event loop (the bench) or not (a fixture).
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, create()).result()
    return admin.set(database=name).render_as_string(hide_password=False)


@contextmanager
def start_cluster(name: str, workdir: Path | None = None) -> Iterator[Cluster]:
    """Both nodes ready (models loaded) on exit of the ``with`` line; stopped afterwards. Node ids
    are new each run, so messages other runs left in their groups never reach these nodes."""
    database = fresh_database(require_service("PostgreSQL", POSTGRES_URL_ENV))
    endpoint = require_service("RocketMQ", ROCKETMQ_ENV)
    llm = BrokenLLM()
    run = uuid.uuid4().hex[:6]
    env = {
        "VOICEAGENT_STORE__URL": database,
        "VOICEAGENT_EVENTS__BACKEND": "rocketmq",
        "VOICEAGENT_EVENTS__ROCKETMQ__ENDPOINTS": endpoint,
        "VOICEAGENT_LLM__BASE_URL": llm.start(),
        "VOICEAGENT_OUTREACH__HEARTBEAT_S": "0.5",
        "VOICEAGENT_OUTREACH__STALE_AFTER_S": "6",
        "VOICEAGENT_OUTREACH__CLAIM_S": str(CLAIM_S),
        "VOICEAGENT_OUTREACH__INVISIBLE_S": str(INVISIBLE_S),
        # Both nodes share a folder: Milvus Lite would let only one open the index there.
        "VOICEAGENT_KNOWLEDGE__ENABLED": "false",
    }
    with TemporaryDirectory(prefix=f"{name}-") as tmp:
        where = workdir or Path(tmp)
        a_id, b_id = f"{name}-a-{run}", f"{name}-b-{run}"
        a = ServeProcess(where, VOICEAGENT_NODE_ID=a_id, **env)
        b: ServeProcess | None = None
        try:
            a.wait_listening(timeout=120)  # the first node migrates the shared database
            b = ServeProcess(where, VOICEAGENT_NODE_ID=b_id, **env)
            for node in (a, b):
                node.wait_listening(timeout=120)
                node.wait_ok("/readyz", timeout=300, interval=0.5)
            yield Cluster(a, b, a_id, b_id, env)
        finally:
            for started in (a, b):
                if started is not None:
                    started.stop()
            llm.stop()


class SchedulerProcess(VoiceagentProcess):
    """`voiceagent outreach run` against the cluster's store and broker; log in ``workdir``."""

    def __init__(self, cluster: Cluster, workdir: Path, name: str, **settings: str) -> None:
        everything = {**cluster.env, "VOICEAGENT_NODE_ID": name, **settings}
        super().__init__(workdir, ["outreach", "run"], f"{name}.log", **everything)

    def wait_running(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while "outreach scheduler running" not in self.log:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"scheduler not running (exit {self.proc.poll()}):\n{self.log}")
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
