"""A live WebRTC call answers from a document ingested during the call: the document goes in
through the submitter, the real RocketMQ broker and the node's ingestion workers (real e5,
Milvus Lite); the caller's next question is looked up, the passage reaches the LLM, and the turn
names its source on the call's events channel and in the store. Speech is faked (any voice is
the question), and so is the LLM, which records what it was shown."""

from __future__ import annotations

import pytest

from tests.calls.caller import dial
from tests.knowledge.conftest import NodeFactory, settled
from tests.pipeline.timeline import words
from voiceagent.calls.session import CallManager
from voiceagent.engines.registry import CallEngines
from voiceagent.knowledge.node import KnowledgeNode
from voiceagent.observability.metrics import Metrics
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.store import Store
from voiceagent.store.database import Database
from voiceagent.testing.fakes import AnyVoiceASR, FakeEngineSource, FakeLLM, LeanTTS, LeanVAD, ScriptedReply
from voiceagent.transport.settings import TransportSettings
from voiceagent.transport.webrtc import WebRTCGateway

pytestmark = [pytest.mark.rocketmq, pytest.mark.models, pytest.mark.integration]
QUESTION = "What is the password for the guest wifi?"
WIFI = "# Guest Wi-Fi\n\nThe guest Wi-Fi network is Harbour-Guest. Its password is bluefrog42."


@pytest.fixture
async def knowledge(knowledge_node: NodeFactory) -> KnowledgeNode:
    return await knowledge_node()


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
        await settled(knowledge, "wifi", "indexed")

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
