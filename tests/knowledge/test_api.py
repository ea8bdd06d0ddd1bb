"""`/api/knowledge/documents` end to end, as an operator uses it: an upload is kept, published on
the real RocketMQ broker, ingested by the node's workers (real e5, Milvus Lite) and retrieved by
`/api/knowledge/search` (what a call would be told), in English and Chinese; replaced and deleted
documents leave nothing behind; bad uploads get a clear answer and a stored state while the
pipeline goes on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.events.test_contract import dead_letter_reader, drain
from tests.knowledge.conftest import SETTLE_S, NodeFactory
from voiceagent.events import EventBus
from voiceagent.events.envelope import decode
from voiceagent.events.eventbus import DLQ_REASON
from voiceagent.knowledge.node import KnowledgeNode
from voiceagent.knowledge.sources.api import knowledge_router

pytestmark = [pytest.mark.rocketmq, pytest.mark.models, pytest.mark.integration]
MAX_BYTES = 64 * 1024


class Node:
    def __init__(self, node: KnowledgeNode, http: httpx.AsyncClient, bus: EventBus) -> None:
        self.node, self.http, self.bus = node, http, bus

    async def state(self, doc_id: str, *wanted: str) -> dict[str, Any]:
        """The document's state once it is one of ``wanted`` (and, if it names a version, that
        of the last submission)."""
        async with asyncio.timeout(SETTLE_S):
            while True:
                response = await self.http.get(f"/api/knowledge/documents/{doc_id}")
                if response.status_code == 200 and response.json()["state"] in wanted:
                    return dict(response.json())
                await asyncio.sleep(0.1)

    async def search(self, question: str) -> list[dict[str, Any]]:
        response = await self.http.get("/api/knowledge/search", params={"q": question})
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] in ("found", "nothing")
        return list(response.json()["passages"])


@pytest.fixture
async def node(knowledge_node: NodeFactory) -> AsyncIterator[Node]:
    knowledge = await knowledge_node(max_document_bytes=MAX_BYTES)
    app = FastAPI()
    app.include_router(knowledge_router(knowledge.submitter, knowledge.states, knowledge.retriever))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://node") as http:
        yield Node(knowledge, http, knowledge.bus)


HOURS = "# Opening hours\n\nThe kitchen closes at 21:45 on weekdays. On Sundays there is no dinner service."
HOURS_V2 = "# Opening hours\n\nThe kitchen now closes at 23:00 every day, Sundays included."
SPA_ZH = "# 水疗中心\n\n水疗中心每天上午十点开门。热石按摩九十分钟，价格是六百八十元。"


async def test_uploads_are_retrievable_in_english_and_chinese_then_replaced_and_deleted(node: Node) -> None:
    added = await node.http.post("/api/knowledge/documents", json={"doc_id": "hours", "text": HOURS})
    assert added.status_code == 202, added.text
    assert added.json()["change"] == "added" and added.json()["idempotency_key"].startswith("hours@")
    spa = await node.http.post(
        "/api/knowledge/documents",
        files={"file": ("spa_zh.md", SPA_ZH.encode(), "text/markdown")},
        data={"doc_id": "spa"},
    )
    assert spa.status_code == 202, spa.text
    assert (await node.state("hours", "indexed"))["chunks"] == 1
    assert (await node.state("spa", "indexed"))["title"] == "水疗中心"

    [hit, *_] = await node.search("When does the kitchen stop serving on a weekday?")
    assert hit["doc_id"] == "hours" and "21:45" in hit["text"]
    [hit, *_] = await node.search("热石按摩多少钱？")
    assert hit["doc_id"] == "spa" and "六百八十元" in hit["text"]

    again = await node.http.post("/api/knowledge/documents", json={"doc_id": "hours", "text": HOURS})
    assert again.status_code == 202 and again.json()["unchanged"] is True  # a retried upload
    clash = await node.http.post("/api/knowledge/documents", json={"doc_id": "hours", "text": HOURS_V2})
    assert clash.status_code == 409 and "PUT" in clash.text  # a duplicate id is not a silent replace
    replaced = await node.http.put("/api/knowledge/documents/hours", json={"text": HOURS_V2})
    assert replaced.status_code == 202 and replaced.json()["change"] == "updated"
    version = replaced.json()["version"]
    state = await node.state("hours", "indexed")
    while state["version"] != version:
        state = await node.state("hours", "indexed")
    # Indexed at the new version: from that moment no search finds the old text.
    texts = [p["text"] for p in await node.search("When does the kitchen close?")]
    assert any("23:00" in t for t in texts) and not any("21:45" in t for t in texts), texts

    deleted = await node.http.delete("/api/knowledge/documents/hours")
    assert deleted.status_code == 202 and deleted.json()["change"] == "deleted"
    await node.state("hours", "deleted")
    assert all(p["doc_id"] != "hours" for p in await node.search("When does the kitchen close?"))
    assert (await node.http.delete("/api/knowledge/documents/hours")).json()["unchanged"] is True
    assert (await node.http.delete("/api/knowledge/documents/never")).status_code == 404


async def test_bad_uploads_are_refused_or_fail_with_a_reason_and_the_pipeline_goes_on(node: Node) -> None:
    letters = await dead_letter_reader(node.bus, lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}")
    http = node.http
    too_big = await http.post(
        "/api/knowledge/documents", files={"file": ("big.txt", b"x" * (MAX_BYTES + 1), "text/plain")}
    )
    assert too_big.status_code == 413 and "too_large" in too_big.text
    assert (await node.state("big.txt", "failed"))["reason"] == "too_large"

    not_json = await http.post(
        "/api/knowledge/documents", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400 and "bad document" in not_json.text
    no_text = await http.post("/api/knowledge/documents", json={"doc_id": "x", "text": ""})
    assert no_text.status_code == 400 and "text" in no_text.text
    no_file = await http.post("/api/knowledge/documents", files={"other": ("a.txt", b"hi", "text/plain")})
    assert no_file.status_code == 400 and "file" in no_file.text

    # Accepted (it is a well-formed upload), then refused by the ingestor: failed, dead-lettered.
    for name, content in (
        ("scan.pdf", b"%PDF-1.7 ..."),
        ("blob.md", bytes(range(256)) * 4),
        ("empty.md", b"  \n"),
    ):
        sent = await http.post(
            "/api/knowledge/documents", files={"file": (name, content, "application/octet-stream")}
        )
        assert sent.status_code == 202, sent.text
    reasons = {
        name: (await node.state(name, "failed"))["reason"] for name in ("scan.pdf", "blob.md", "empty.md")
    }
    assert reasons == {"scan.pdf": "unsupported", "blob.md": "not_text", "empty.md": "empty"}
    group, letters_for = node.node.settings.ingest.group, dict[str, str]()
    async with asyncio.timeout(SETTLE_S):
        while len(letters_for) < 3:  # the group may also be handed other tests' older changes
            for letter in await drain(letters, group, 1):
                doc_id = decode(letter.body).payload.document_id  # type: ignore[union-attr]
                if doc_id in reasons:
                    letters_for[doc_id] = letter.properties[DLQ_REASON]
    assert letters_for == reasons

    good = await http.post("/api/knowledge/documents", json={"doc_id": "spa", "text": SPA_ZH})
    assert good.status_code == 202
    assert (await node.state("spa", "indexed"))["chunks"] == 1  # the pipeline went on
