"""Everything one server process owns, started before the port opens and stopped after it closes.

Starting outside uvicorn's lifespan lets ``voiceagent serve`` refuse to listen at all when a
dependency is broken, with one line saying why, instead of half-starting.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from urllib.parse import urlsplit

import httpx
from sqlalchemy import text

from voiceagent.admin.node import AdminNode
from voiceagent.auth.callers import CallerVerifier, validate
from voiceagent.auth.guard import AdminAuth
from voiceagent.calls.session import CallManager
from voiceagent.config import Settings
from voiceagent.engines.registry import Engines
from voiceagent.events import EventBus
from voiceagent.events.factory import create_transport
from voiceagent.jobs.node import JobsNode
from voiceagent.knowledge.node import KnowledgeNode
from voiceagent.observability.metrics import Metrics
from voiceagent.observability.readiness import Readiness
from voiceagent.outreach.identity import IdentityTrust
from voiceagent.outreach.node import OutreachNode
from voiceagent.outreach.scheduler import OutreachScheduler
from voiceagent.store import Database, Store, StoreUnavailable
from voiceagent.transport.webrtc import WebRTCGateway

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """A dependency the node cannot run without; the message is meant for the operator."""


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        callers = settings.security.callers
        try:
            validate(callers)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.callers = CallerVerifier(callers)
        self.metrics = Metrics(settings.node_id)
        self.database = Database(settings.store)
        self.store = Store(self.database)
        self.events = EventBus(create_transport(settings.events), settings.events)
        self.engines = Engines(settings, self.metrics)
        self._engines_loading: asyncio.Task[None] | None = None
        self.knowledge = KnowledgeNode(settings.knowledge, bus=self.events, database=self.database)
        try:
            self.jobs = JobsNode(settings, database=self.database, bus=self.events)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.calls = CallManager(
            gateway=WebRTCGateway(settings.transport),
            engines=self.engines,
            store=self.store,
            metrics=self.metrics,
            settings=settings.conversation,
            node_id=settings.node_id,
            knowledge=self.knowledge.retriever if settings.knowledge.enabled else None,
            on_call_ended=self.jobs.call_ended,
        )
        self.outreach = OutreachNode(
            calls=self.calls,
            bus=self.events,
            database=self.database,
            settings=settings.outreach,
            node_id=settings.node_id,
            trust=IdentityTrust(callers.allow_unsigned),
        )
        self.auth = AdminAuth(self.database, settings.security.admin)
        self.admin = AdminNode(
            database=self.database,
            settings=settings.admin,
            node_id=settings.node_id,
            stale_after_s=settings.outreach.stale_after_s,
        )
        self.scheduler: OutreachScheduler | None = (
            None  # outreach.scheduler.enabled: started with the engines
        )
        self.readiness = Readiness(self.metrics)
        self._http = httpx.AsyncClient(timeout=settings.llm.request_timeout_s)
        self.readiness.add("store", self._probe_store)
        self.readiness.add("events", self._probe_events)
        if settings.llm.base_url:
            self.readiness.add("llm", self._probe_llm)
        if settings.engines.preload:
            self.readiness.add("engines", self._probe_engines)
            if settings.knowledge.enabled:
                self.readiness.add("knowledge", self.knowledge.probe)
        self.started = False

    async def start(self) -> None:
        try:
            await self.database.ping()
            # A down broker does not stop the node: publishes retry and /readyz says so.
            await self.events.transport.start()
            if self.settings.store.migrate_on_start:
                await self.database.migrate()
            else:
                current, head = await self.database.current_revision(), Database.head_revision()
                if current != head:
                    raise StartupError(
                        f"database schema is at {current or 'nothing'}, this version needs {head}: "
                        "run `voiceagent db upgrade` or set store.migrate_on_start"
                    )
            await self.outreach.start()
            await self.knowledge.start()
            await self.admin.start()
        except StoreUnavailable as exc:
            await self.stop()
            raise StartupError(str(exc)) from exc
        except BaseException:
            await self.stop()
            raise
        if self.settings.engines.preload:
            # Models load while the port already answers /healthz; /readyz waits for them.
            self._engines_loading = asyncio.create_task(self._load_engines(), name="load-engines")
        else:
            _freeze_what_lives_forever()
        self.started = True
        log.info("node %s started (store: %s)", self.settings.node_id, self.database.dialect)
        if self.callers.allow_unsigned:
            log.warning(
                "security.callers.allow_unsigned is true: a caller's user_id is believed without a "
                "signed identity_token, so anyone who reaches this node can claim anyone's calls and "
                "outreach prompts (local use only)"
            )

    async def _load_engines(self) -> None:
        await self.engines.load()
        if self.engines.embeddings is not None:
            self.knowledge.start_index(self.engines.embeddings)
        _freeze_what_lives_forever()
        if self.settings.outreach.scheduler.enabled:
            await self._start_scheduler()

    async def _start_scheduler(self) -> None:
        """The outreach jobs in this node (on its embeddings engine); other nodes or `voiceagent
        outreach run` may run them too: the run ledger gives each slot to one of them."""
        from voiceagent.outreach.intent_store import IntentStore, user_turns_after
        from voiceagent.outreach.process import analyzers_for, build_scheduler

        try:
            self.scheduler = build_scheduler(
                self.settings,
                self.database,
                publisher=self.outreach.publisher,
                analyzers=analyzers_for(self.settings, self.engines.embeddings),
                intent_store=IntentStore(self.database),
                read_turns=user_turns_after,
            )
            await self.scheduler.start()
        except ValueError as exc:  # a bad intents file or cron expression: the calls go on
            log.error("outreach scheduler not started: %s", exc)

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None
        await self.calls.close_all()  # hang up first: calls use everything below
        await self.admin.stop()
        await self.outreach.stop()
        await self.knowledge.stop()
        if self._engines_loading is not None:
            # Loads run in worker threads and cannot be interrupted; let them land, then close.
            await asyncio.wait([self._engines_loading], timeout=30)
            self._engines_loading = None
        await self.engines.close()
        await self.events.transport.close()
        await self._http.aclose()
        await self.database.close()
        self.started = False

    async def _probe_store(self) -> str:
        async with self.database.engine.connect() as conn:
            if self.database.dialect == "postgresql":
                version = await conn.scalar(text("SHOW server_version"))
                return f"postgresql {version}"
            version = await conn.scalar(text("SELECT sqlite_version()"))
            return f"sqlite {version}"

    async def _probe_llm(self) -> str:
        base_url = str(self.settings.llm.base_url).rstrip("/")
        headers = {"Authorization": f"Bearer {self.settings.llm.api_key.get_secret_value()}"}
        response = await self._http.get(f"{base_url}/models", headers=headers)
        response.raise_for_status()
        models = [m.get("id") for m in response.json().get("data", [])]
        return f"{len(models)} model(s) at {base_url}"

    async def _probe_engines(self) -> str:
        return self.engines.describe()

    async def _probe_events(self) -> str:
        if self.settings.events.backend == "inprocess":
            return "in-process bus"
        endpoint = self.settings.events.rocketmq.endpoints.split(";")[0]
        parts = urlsplit(f"//{endpoint}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 8081
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        await writer.wait_closed()
        return f"proxy {host}:{port} accepts connections"


def _freeze_what_lives_forever() -> None:
    """What is loaded by now (libraries, models) lives as long as the node: move it out of the
    collector's sight, so the collections that free ended calls (calls/session.py) walk only what
    came after (measured: ~115 ms a collection in the soak server without this)."""
    gc.collect()
    gc.freeze()
