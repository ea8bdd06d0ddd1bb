from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.calls.caller import fake_call_manager
from voiceagent.calls.session import CallManager
from voiceagent.config import StoreSettings
from voiceagent.observability.metrics import Metrics
from voiceagent.store import Database, Store
from voiceagent.testing.fakes import FlakyStore

MAX_CALLS = 3
DEAD_PEER_S = 1.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FlakyStore]:
    database = Database(StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path}/calls.db"))
    await database.migrate()
    yield FlakyStore(Store(database))
    await database.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics("test-node")


@pytest.fixture
async def manager(store: FlakyStore, metrics: Metrics) -> AsyncIterator[CallManager]:
    calls = fake_call_manager(store, metrics, max_calls=MAX_CALLS, dead_peer_s=DEAD_PEER_S)
    yield calls
    await calls.close_all()
    assert calls.sessions == {} and calls.gateway.active == 0
