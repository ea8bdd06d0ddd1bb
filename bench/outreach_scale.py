"""One outreach analysis run at scale: 100,000 users, 1,000,000 stored user turns, one run of the
scheduler's ``analysis`` job (read, classify, record, then greet every open intent and publish).

What a deployment meets the first time its scheduler runs over a store full of history (or after
the watermark is reset): every turn read once, every distinct text embedded once, one decision per
open intent. Built like production builds it (``build_jobs``, the real ``EmbeddingIntentAnalyzer``
on e5, ``IntentStore``, ``user_turns_after``, a real ``OutreachPublisher`` with ledger and
registry), on a fresh SQLite file; the bus is the real RocketMQ when ``VA_TEST_ROCKETMQ_ENDPOINT``
is set (``make bench``), else the in-process one.

The synthetic store (seeded, so every run has the same data):

- users: ``OUTREACH_SCALE_USERS`` (100,000), 60% English and 40% Chinese speakers; each has a
  display name and, all but 5%, an ``item`` attribute (the order_status templates need it, so
  those 5% show up as ``skipped_template`` when they ask about an order);
- calls: 2 per user on average (each user at least one, the rest spread at random), started at
  random over 30 days; turns: ``OUTREACH_SCALE_TURNS`` (10 per user), each call at least one, 5 on
  average, all user turns, stored in call-start order (so one user's calls are far apart in id);
- texts: a pool of ~3,000 distinct utterances built from templates, English and Chinese: ~1,000
  asking for one of the four intents of configs/intents.yaml (~125 per intent and language) and
  ~2,000 chit-chat (short answers, greetings, small talk, names and places). Chit-chat is drawn
  Zipf-like (weight 1/rank, short answers first), as calls repeat "yes", "thank you", "okay";
- intents: 20% of users are askers: one of their turns asks for an intent (uniform over the four),
  30% of askers ask the same again in another turn, 10% ask a second intent too. Everyone else
  says only chit-chat. So ~2.8% of turns ask for something, and ~20% of users would end up with
  an open intent if the classifier were perfect; its misses and false positives move that (the
  note reports what it found against what was planted);
- live calls: 0.5% of users are in a call on one of four nodes (registry rows heartbeated every
  5 s during the run), so their intents become asks routed to their node.

Events go out with a tag no consumer reads (:class:`SinkRoutedRegistry`): on the shared broker, a
stream of "unrouted" events would reach the router group of the nodes that later suites start.

Setup (populating the store, loading the model, embedding the intents' anchors) is logged, not
measured; the embedding cache starts empty, as after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select

from bench.outreach_scale_data import (
    ENGLISH_SHARE,
    HEARTBEAT_S,
    NODES,
    SEED,
    SINK_NODE,
    log,
    populate,
    utterance_pool,
)
from bench.results import Metric, metric
from voiceagent.config import EventSettings, RocketMQSettings, StoreSettings, load_settings
from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.events import EventBus
from voiceagent.events.envelope import AskEvent, GreetEvent, utcnow
from voiceagent.events.factory import create_transport
from voiceagent.outreach.analysis.base import IntentFinding, Utterance
from voiceagent.outreach.analysis.embedding import EmbeddingIntentAnalyzer
from voiceagent.outreach.intent_store import IntentStore, StoredIntent, user_turns_after
from voiceagent.outreach.intents import load_intents
from voiceagent.outreach.jobs import build_jobs
from voiceagent.outreach.ledger import OutreachLedger
from voiceagent.outreach.process import intents_path
from voiceagent.outreach.publisher import OutreachPublisher
from voiceagent.outreach.registry import SessionRegistry
from voiceagent.outreach.scheduler import JobFailed
from voiceagent.store.database import Database
from voiceagent.store.models import IntentRecord


@dataclass
class Clock:
    """Seconds spent in each instrumented call, and when the greet phase began."""

    spent: dict[str, float] = field(default_factory=dict)
    greet_started: float | None = None
    published: int = 0

    def add(self, name: str, since: float) -> None:
        self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - since


class TimedEmbeddings(E5Embeddings):
    clock: Clock

    async def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return await super().embed_queries(texts)
        finally:
            self.clock.add("embed", started)


class TimedAnalyzer(EmbeddingIntentAnalyzer):
    clock: Clock

    async def analyze(
        self, utterances: Sequence[Utterance], min_confidence: float = 0.0
    ) -> list[IntentFinding]:
        started = time.perf_counter()
        try:
            return await super().analyze(utterances, min_confidence)
        finally:
            self.clock.add("classify", started)


class TimedIntentStore(IntentStore):
    """The first ``open_intents`` call is where the job turns from analysis to greeting."""

    def __init__(self, database: Database, clock: Clock) -> None:
        super().__init__(database)
        self.clock = clock

    async def record(self, findings: Sequence[IntentFinding]) -> list[StoredIntent]:
        started = time.perf_counter()
        try:
            return await super().record(findings)
        finally:
            self.clock.add("record", started)

    async def open_intents(
        self, user_ids: Iterable[str] | None = None, limit: int = 100, offset: int = 0
    ) -> list[StoredIntent]:
        started = time.perf_counter()
        if self.clock.greet_started is None:
            self.clock.greet_started = started
        try:
            return await super().open_intents(user_ids, limit, offset)
        finally:
            self.clock.add("open_intents", started)


class TimedPublisher(OutreachPublisher):
    clock: Clock

    async def send_many(self, events: Sequence[GreetEvent | AskEvent]) -> list[str | Exception]:
        started = time.perf_counter()
        try:
            outcomes = await super().send_many(events)
        finally:
            self.clock.add("send_many", started)
        self.clock.published += sum(1 for e, o in zip(events, outcomes, strict=True) if o == e.id)
        return outcomes


class SinkRoutedRegistry(SessionRegistry):
    """The real lookup; a user with no live call is routed to a node no one runs instead of
    ``unrouted``, so the bench's events never reach a later suite's router group on the broker."""

    async def locate_many(self, user_ids: Collection[str]) -> dict[str, str]:
        found = await super().locate_many(user_ids)
        return {user: found.get(user, SINK_NODE) for user in user_ids}


async def _heartbeat(registry: SessionRegistry, stop: asyncio.Event) -> None:
    """What the nodes holding the live calls do meanwhile: keep their registry rows fresh."""
    while not stop.is_set():
        for node in NODES:
            await registry.heartbeat(node)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEARTBEAT_S)


def _event_settings() -> tuple[EventSettings, str]:
    endpoint = os.environ.get("VA_TEST_ROCKETMQ_ENDPOINT")
    if endpoint:
        return (
            EventSettings(backend="rocketmq", rocketmq=RocketMQSettings(endpoints=endpoint)),
            f"RocketMQ at {endpoint}",
        )
    return EventSettings(backend="inprocess"), "in-process bus"


async def _open_pairs(database: Database) -> set[tuple[str, str]]:
    async with database.sessions() as session:
        rows = await session.execute(
            select(IntentRecord.user_id, IntentRecord.intent).where(IntentRecord.status == "open")
        )
        return {(user, intent) for user, intent in rows}


async def _run() -> dict[str, Metric]:
    settings = load_settings()
    intents = load_intents(intents_path(settings))
    with tempfile.TemporaryDirectory(prefix="outreach-scale-") as folder:
        store_settings = StoreSettings(url=f"sqlite+aiosqlite:///{folder}/outreach.db")
        started = time.perf_counter()
        database = Database(store_settings)
        await database.migrate()
        await database.close()
        pool = utterance_pool(random.Random(SEED))
        population = populate(Path(folder) / "outreach.db", pool, utcnow())
        setup_s = time.perf_counter() - started
        size_mb = (Path(folder) / "outreach.db").stat().st_size / 2**20
        log(
            f"store populated in {setup_s:.1f} s ({size_mb:.0f} MB): {population.users} users, "
            f"{population.calls} calls, {population.turns} turns, {population.distinct_texts} distinct texts"
        )

        clock = Clock()
        database = Database(store_settings)
        await database.ping()
        event_settings, bus_name = _event_settings()
        transport = create_transport(event_settings)
        await transport.start()
        engine = TimedEmbeddings(settings.engines.embeddings)
        engine.clock = clock
        stop = asyncio.Event()
        try:
            registry = SinkRoutedRegistry(database, settings.outreach.stale_after_s)
            publisher = TimedPublisher(
                EventBus(transport, event_settings), OutreachLedger(database), registry, "bench"
            )
            publisher.clock = clock
            analyzer = TimedAnalyzer(engine, intents)
            analyzer.clock = clock
            loading = time.perf_counter()
            await analyzer.prepare()  # once per process, not per run
            log(f"e5 loaded and the intents' anchors embedded in {time.perf_counter() - loading:.1f} s")

            async def read_turns(database: Database, after_turn_id: int, limit: int) -> list[Utterance]:
                began = time.perf_counter()
                try:
                    return await user_turns_after(database, after_turn_id, limit)
                finally:
                    clock.add("read", began)

            job = build_jobs(
                database,
                settings.outreach,
                publisher=publisher,
                analyzers=[analyzer],
                intent_store=TimedIntentStore(database, clock),
                read_turns=read_turns,
                intents=intents,
            )["analysis"]
            beating = asyncio.create_task(_heartbeat(registry, stop))
            log(f"analysis run over {population.turns} turns, publishing on the {bus_name}")
            # One warning per open intent a template cannot fill (the users without `item`):
            # thousands of lines here; the run's stats count them.
            rules_log = logging.getLogger("voiceagent.outreach.rules")
            level = rules_log.level
            rules_log.setLevel(logging.ERROR)
            began = time.perf_counter()
            failure = ""
            try:
                stats = await job(utcnow())
            except JobFailed as exc:
                stats, failure = exc.stats, f"; run FAILED: {exc.detail}"
                log(f"run failed: {exc.detail}")
            finally:
                run_s = time.perf_counter() - began
                rules_log.setLevel(level)
            stop.set()
            await beating
            found_pairs = await _open_pairs(database)
        finally:
            stop.set()
            engine.close()
            await transport.close()
            await database.close()

    greet_started = clock.greet_started if clock.greet_started is not None else began + run_s
    analyse_s = greet_started - began
    publish_s = began + run_s - greet_started
    spent = clock.spent
    events = stats["greets"] + stats["asks"]
    log(f"stats: {stats}")
    log(
        f"run {run_s:.1f} s: analyse {analyse_s:.1f} s (read {spent.get('read', 0):.1f}, classify "
        f"{spent.get('classify', 0):.1f} of which embedding {spent.get('embed', 0):.1f}, record "
        f"{spent.get('record', 0):.1f}); greet {publish_s:.1f} s (open_intents "
        f"{spent.get('open_intents', 0):.1f}, send_many {spent.get('send_many', 0):.1f}); "
        f"{analyzer.embedded} texts embedded"
    )
    data = (
        f"{population.users:,} users, {population.calls:,} calls, {population.turns:,} user turns, "
        f"{population.distinct_texts:,} distinct texts (top 10 = {population.top10_share:.0%} of turns); "
        f"{population.askers:,} planted askers, {len(population.planted):,} planted (user, intent), "
        f"{population.intent_turns:,} intent turns; {population.live_users:,} users in a live call; "
        f"{ENGLISH_SHARE:.0%} of users English, the rest Chinese; chit-chat drawn by 1/rank"
    )
    planted = population.planted
    hits = len(found_pairs & planted)
    users_found = len({user for user, _ in found_pairs})
    log(
        f"{users_found} users ({users_found / population.users:.0%}) have an open intent; "
        f"{hits}/{len(planted)} planted (user, intent) found, {len(found_pairs - planted)} not planted"
    )
    found = (
        f"found {stats['open_intents']:,} open intents of {users_found:,} users "
        f"({users_found / population.users:.0%}): {hits:,} of the planted, "
        f"{len(found_pairs - planted):,} not planted (false positives, mostly chit-chat); "
        f"{events:,} events published ({stats['greets']:,} greets, {stats['asks']:,} asks), "
        f"{stats['skipped_template']:,} skipped (template){failure}"
    )
    where = f"SQLite, {bus_name}, e5 {settings.engines.embeddings.threads} thread(s), fresh embedding cache"
    return {
        "outreach_analysis_run_s": metric(
            run_s,
            "s",
            "< 600",
            f"one analysis job run, {where}; analyse {analyse_s:.1f} s (read {spent.get('read', 0):.1f}, "
            f"classify {spent.get('classify', 0):.1f} incl. embedding {analyzer.embedded:,} texts "
            f"{spent.get('embed', 0):.1f}, record {spent.get('record', 0):.1f}), greet+publish "
            f"{publish_s:.1f} s; {data}; {found}",
        ),
        "outreach_analysis_turns_per_s": metric(
            stats["turns"] / analyse_s if analyse_s > 0 else 0.0,
            "turns/s",
            "> 2000",
            f"read, classify, record, in batches of {settings.outreach.analysis.batch_turns}: "
            f"{stats['turns']:,} turns in {analyse_s:.1f} s; setup (not measured) {setup_s:.0f} s",
        ),
        "outreach_analysis_publish_s": metric(
            publish_s,
            "s",
            "< 120",
            f"greet phase: {stats['open_intents']:,} open intents read, decided, published in batches "
            f"(send_many {spent.get('send_many', 0):.1f} s), {where}",
        ),
        "outreach_analysis_events_per_s": metric(
            events / publish_s if publish_s > 0 else 0.0,
            "events/s",
            "> 200",
            f"{events:,} events published / greet phase seconds, {bus_name}; first run (nothing sent yet)",
        ),
    }


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name:40} {value.value:>10g} {value.unit:8} {value.note}")
