"""A live WebRTC call answers from a document ingested during the call: the document goes in
through the submitter, the real RocketMQ broker and the node's ingestion workers (real e5,
Milvus Lite); the caller's next question is looked up, the passage reaches the LLM, and the turn
names its source on the call's events channel and in the store. Speech is faked (any voice is
the question), and so is the LLM, which records what it was shown."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.calls.caller import dial
from tests.conftest import require_service
from tests.events.conftest import ROCKETMQ_ENV, event_settings
from tests.pipeline.timeline import words
from voiceagent.calls.session import CallManager
from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.engines.registry import CallEngines
from voiceagent.events import EventBus
from voiceagent.events.factory import create_transport
from voiceagent.knowledge.milvus import MilvusSettings
from voiceagent.knowledge.node import KnowledgeNode
from voiceagent.knowledge.settings import IngestSettings, KnowledgeSettings
from voiceagent.observability.metrics import Metrics
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.store import Store
from voiceagent.store.database import Database
from voiceagent.testing.fakes import AnyVoiceASR, FakeEngineSource, FakeLLM, LeanTTS, LeanVAD, ScriptedReply
from voiceagent.transport.settings import TransportSettings
from voiceagent.transport.webrtc import WebRTCGateway

pytestmark = [pytest.mark.rocketmq, pytest.mark.models, pytest.mark.integration]
SETTLE_S = 60.0  # broker round trips and ingestion on a busy machine: only a lost event crosses it
QUESTION = "What is the password for the guest wifi?"
WIFI = "# Guest Wi-Fi\n\nThe guest Wi-Fi network is Harbour-Guest. Its password is bluefrog42."


@pytest.fixture
async def knowledge(
    tmp_path: Path, sqlite_database: Database, e5: E5Embeddings
) -> AsyncIterator[KnowledgeNode]:
    events = event_settings("rocketmq", require_service("RocketMQ", ROCKETMQ_ENV))
    transport = create_transport(events)
    await transport.start()
    settings = KnowledgeSettings(
        milvus=MilvusSettings(uri=str(tmp_path / "milvus.db")),
        ingest=IngestSettings(group=f"ingest-{uuid.uuid4().hex[:10]}", invisible_s=10.0),
    )
    node = KnowledgeNode(settings, bus=EventBus(transport, events), database=sqlite_database)
    await node.start()
    node.start_index(e5)
    async with asyncio.timeout(SETTLE_S):
        while node.consumer is None:
            await asyncio.sleep(0.05)
    yield node
    await node.stop()
    await transport.close()


async def test_a_call_answers_from_a_document_ingested_during_it_and_names_the_source(
    knowledge: KnowledgeNode, sqlite_database: Database
) -> None:
    llm = FakeLLM([ScriptedReply(tokens=words("It is bluefrog42.")) for _ in range(4)])
    engines = CallEngines(vad=LeanVAD(), asr=AnyVoiceASR(QUESTION), llm=llm, tts=LeanTTS())
    store = Store(sqlite_database)
    manager = CallManager(
        gateway=WebRTCGateway(TransportSettings(connect_timeout_s=5.0)),
        engines=FakeEngineSource(engines),
        store=store,
        metrics=Metrics("test-node"),
        settings=ConversationSettings(),
        node_id="test-node",
        knowledge=knowledge.retriever,
    )
    try:
        caller = await dial(manager, user_id="guest-12")
        before = await caller.wait_event("turn", caller.ask())
        assert before["sources"] == [] and not llm.grounded[-1]  # nothing known yet: no notes

        await knowledge.submitter.submit("wifi", WIFI.encode(), filename="wifi.md", origin="api")
        async with asyncio.timeout(SETTLE_S):
            while (state := await knowledge.states.get("wifi")) is None or state.state != "indexed":
                await asyncio.sleep(0.1)

        after = await caller.wait_event("turn", caller.ask())
        assert [(s["doc_id"], s["title"]) for s in after["sources"]] == [("wifi", "Guest Wi-Fi")]
        assert after["metrics"]["retrieval_s"] > 0
        shown = "\n".join(m.content or "" for m in llm.requests[-1] if m.role == "system")
        assert "bluefrog42" in shown and llm.grounded[-1]  # the passage reached the model
        assert llm.requests[-1][-1].content == QUESTION  # ...right before the question

        await caller.hang_up()
        await manager.hang_up(caller.call_id)
        [call] = await store.list_calls(user_id="guest-12")
        stored = await store.get_call(call.id)
        assert [[s.doc_id for s in t.sources] for t in stored.turns] == [[], ["wifi"]]
    finally:
        await manager.close_all()
