"""Entry points for the composition root: the outreach scheduler inside a server node
(``outreach.scheduler.enabled``) or on its own (``voiceagent outreach run``).

Both take what the rest of the process already built (database, publisher, analyzers, intent
store); any number of processes may run the scheduler against one database, the run ledger lets
exactly one of them run each slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from voiceagent.config import REPO_ROOT, Settings
from voiceagent.engines.base import EmbeddingEngine
from voiceagent.events.envelope import utcnow
from voiceagent.outreach.analysis.base import IntentAnalyzer
from voiceagent.outreach.analysis.embedding import EmbeddingIntentAnalyzer
from voiceagent.outreach.analysis.llm import LLMIntentAnalyzer
from voiceagent.outreach.intents import Intents, load_intents
from voiceagent.outreach.jobs import Analyzer, IntentStoreLike, Publisher, ReadTurns, build_jobs
from voiceagent.outreach.runs import RunLedger
from voiceagent.outreach.scheduler import OutreachScheduler, default_runner_id
from voiceagent.store.database import Database


def intents_path(settings: Settings) -> Path:
    """``outreach.intents_file``; a relative path not found from here is taken from the repo root."""
    path = Path(settings.outreach.intents_file).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def analyzers_for(settings: Settings, embeddings: EmbeddingEngine | None) -> list[IntentAnalyzer]:
    """The configured analysis backends (``outreach.analysis.backends``), on the node's shared
    embeddings engine. ``llm`` needs ``llm.base_url``: the embedded 135M model cannot do it."""
    intents = load_intents(intents_path(settings))
    backends = settings.outreach.analysis.backends
    analyzers: list[IntentAnalyzer] = []
    if "embedding" in backends:
        if embeddings is None:
            raise ValueError("outreach.analysis.backends has 'embedding' but no embeddings engine is loaded")
        analyzers.append(EmbeddingIntentAnalyzer(embeddings, intents))
    if "llm" in backends:
        if settings.llm.base_url is None:
            raise ValueError(
                "outreach.analysis.backends has 'llm' but llm.base_url is null: point it at a capable model"
            )
        analyzers.append(LLMIntentAnalyzer.from_settings(intents, settings.llm))
    return analyzers


def build_scheduler(
    settings: Settings,
    database: Database,
    *,
    publisher: Publisher,
    analyzers: Sequence[Analyzer],
    intent_store: IntentStoreLike,
    read_turns: ReadTurns,
    intents: Intents | None = None,
    runner_id: str | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> OutreachScheduler:
    """A scheduler ready to ``await start()`` / ``await stop()``. Raises IntentsError for a bad
    intents file and ValueError for a bad cron expression, both worded for the operator."""
    intents = intents or load_intents(intents_path(settings))
    ledger = RunLedger(database, runner_id or default_runner_id(settings.node_id), clock)
    jobs = build_jobs(
        database,
        settings.outreach,
        publisher=publisher,
        analyzers=analyzers,
        intent_store=intent_store,
        read_turns=read_turns,
        intents=intents,
        clock=clock,
    )
    return OutreachScheduler(settings.outreach.scheduler, ledger, jobs, clock=clock)


async def run_outreach_process(
    settings: Settings,
    stop: asyncio.Event,
    *,
    database: Database,
    publisher: Publisher,
    analyzers: Sequence[Analyzer],
    intent_store: IntentStoreLike,
    read_turns: ReadTurns,
    intents: Intents | None = None,
) -> None:
    """Run the scheduler until ``stop`` is set, then let in-flight runs finish (or cancel them)."""
    scheduler = build_scheduler(
        settings,
        database,
        publisher=publisher,
        analyzers=analyzers,
        intent_store=intent_store,
        read_turns=read_turns,
        intents=intents,
    )
    async with scheduler:
        await stop.wait()
