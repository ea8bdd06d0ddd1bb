"""Signing tests and benchmarks in to a node's admin API: an operator token in its store."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

from voiceagent.auth.accounts import Role, create_token
from voiceagent.config import StoreSettings
from voiceagent.store import Database


async def issue_token(store_url: str, role: Role = Role.OPERATOR) -> str:
    """A new API token in the store at ``store_url`` (migrated first, as a node would)."""
    database = Database(StoreSettings(url=store_url))
    try:
        await database.migrate()
        return await create_token(database, f"test-{uuid.uuid4().hex[:8]}", role, created_by="tests")
    finally:
        await database.close()


def bearer(store_url: str, role: Role = Role.OPERATOR) -> dict[str, str]:
    """Headers for a token made in a thread of its own: callable inside or outside an event loop."""
    with ThreadPoolExecutor(1) as thread:
        token = thread.submit(asyncio.run, issue_token(store_url, role)).result()
    return {"Authorization": f"Bearer {token}"}
