"""One live call: caller audio → conversation → agent audio, events to the page, turns to the store.

Each session is handed what it uses (engines, a store, metrics, settings), never the whole
runtime: the calls layer can be built and tested on its own, and the runtime depends on it, not
the other way round. A call's failures stay in the call: the conversation contains engine faults
(see pipeline/conversation.py), the store being down costs the transcript and never the call, and
a bug that escapes the conversation ends this call only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, get_args

from voiceagent.engines.registry import CallEngines
from voiceagent.observability.metrics import Metrics
from voiceagent.pipeline.agent import Agent
from voiceagent.pipeline.conversation import Conversation
from voiceagent.pipeline.frames import (
    RECOVERY_REASONS,
    BargeIn,
    ConversationEvent,
    Fault,
    FaultStage,
    Recovered,
    ReplyDiscarded,
    TurnCompleted,
)
from voiceagent.pipeline.knowledge import KnowledgeLookup
from voiceagent.pipeline.playout import Playout
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.store import NewTurn, TurnMetrics
from voiceagent.transport.webrtc import HANGUP, CallTransport, WebRTCGateway

log = logging.getLogger(__name__)
STAGES = tuple(TurnMetrics.model_fields)
RECENT_EVENTS = 200  # kept per call for inspection; older ones are only in the store and metrics
TURN_WRITE_ATTEMPTS = 3  # a turn write is retried this often (backing off) before it is dropped
TURN_WRITE_BACKOFF_S = 0.5
# A call's objects (aiortc's peer connection above all) form reference cycles that only Python's
# cyclic collector frees, and it runs rarely; meanwhile each call's FFmpeg resamplers keep their
# native threads. So once calls have ended (debounced: one collection per burst of hang-ups), the
# node collects. The runtime freezes everything loaded at start-up, which keeps this cheap.
RECLAIM_AFTER_S = 3.0
RECLAIM_EVERY_S = 30.0  # at most this often: each collection holds up the event loop (gc_seconds)
FOLLOW_UP_WAIT_S = 5.0  # at shutdown, how long the ended calls' hooks may still run
# How a call's user id is known: inside a token the host app signed, claimed by the page (believed
# only where security.callers.allow_unsigned), or made up here for a caller who gave none.
Identity = Literal["signed", "claimed", "anonymous"]
# Told (call id, the caller's turns) once a call's end is stored, e.g. to queue its summary. The
# calls layer knows nothing of what it does: it runs in a task of its own after the hang-up.
CallEnded = Callable[[str, int], Awaitable[None]]


class EnginesLoading(RuntimeError):
    pass


class EngineSource(Protocol):
    """Where a call finds its engines: the node's registry, or a test's fakes."""

    @property
    def ready(self) -> bool: ...

    def for_call(self) -> CallEngines: ...


class CallStore(Protocol):
    """What a call records; `voiceagent.store.Store` is the real one."""

    async def touch_user(self, user_id: str) -> Any: ...

    async def start_call(self, user_id: str, node_id: str, call_id: str | None = None) -> Any: ...

    async def add_turn(self, call_id: str, turn: NewTurn) -> Any: ...

    async def end_call(self, call_id: str, reason: str) -> Any: ...


class CallListener(Protocol):
    """Told when a call starts and ends (e.g. outreach: register it, speak what is pending).
    Called on the event loop and must not block: a listener starts its own tasks."""

    def call_started(self, session: CallSession) -> None: ...

    def call_ended(self, session: CallSession) -> None: ...


@dataclass
class CallStats:
    """Running totals for one call: bounded, however long the call lasts."""

    turns: int = 0
    user_turns: int = 0  # turns in which the caller said something (not agent prompts)
    answered_turns: int = 0
    barge_ins: int = 0
    faults: int = 0
    recoveries: int = 0
    turns_not_stored: int = 0
    voice_to_voice_s: deque[float] = field(default_factory=lambda: deque(maxlen=100))


class CallSession:
    def __init__(
        self,
        *,
        transport: CallTransport,
        playout: Playout,
        user_id: str,
        identity: Identity,
        engines: CallEngines,
        store: CallStore,
        metrics: Metrics,
        settings: ConversationSettings,
        node_id: str,
        listeners: tuple[CallListener, ...] = (),
        knowledge: KnowledgeLookup | None = None,
    ) -> None:
        self.transport = transport
        self.playout = playout
        self.user_id = user_id
        self.identity = identity
        self.id = transport.id
        self.node_id = node_id
        self.started_at = datetime.now(UTC)
        self.last_activity_at = self.started_at  # the caller or the agent last said something
        self.listeners = listeners
        self.store = store
        self.metrics = metrics
        self.stats = CallStats()
        self.recent_events: deque[ConversationEvent] = deque(maxlen=RECENT_EVENTS)
        self.recorded = False  # the call row exists: its turns can be stored
        self.end_recorded = False  # ...and its end is stored too
        self.agent = Agent(engines.llm, settings, knowledge=knowledge)
        self.conversation = Conversation(
            vad=engines.vad,
            asr=engines.asr,
            tts=engines.tts,
            agent=self.agent,
            playout=playout,
            settings=settings,
            on_event=self._on_event,
            on_turn=self._record_turn,
        )

    async def run(self) -> None:
        """Feed the caller's audio until the call ends; always leaves the store consistent."""
        self.metrics.calls_active.inc()
        self.recorded = await self._record_start()
        self._tell_listeners("call_started")
        reason = HANGUP
        try:
            async for frame in self.transport.frames():
                await self.conversation.feed(frame)
            reason = self.transport.close_reason or HANGUP
        except asyncio.CancelledError:
            reason = "server-shutdown"
            raise
        except Exception as exc:  # a pipeline bug ends this call, never the server
            log.exception("call %s failed", self.id)
            reason = f"error: {type(exc).__name__}"
            self.metrics.calls_failed.inc()
            self.transport.send_event({"kind": "error", "message": "the call failed on the server"})
        finally:
            self.metrics.calls_active.dec()
            try:
                await self.conversation.close()
            except Exception:
                log.exception("call %s: closing the conversation failed", self.id)
            await self.transport.close(reason)
            self._tell_listeners("call_ended")
            await self._record_end(reason)
            log.info("call %s ended: %s", self.id, reason)

    def _tell_listeners(self, what: Literal["call_started", "call_ended"]) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, what)(self)
            except Exception:  # a listener's bug is not the call's
                log.exception("call %s: %s listener failed", self.id, what)

    async def _record_start(self) -> bool:
        try:
            await self.store.touch_user(self.user_id)
            await self.store.start_call(self.user_id, self.node_id, call_id=self.id)
        except Exception as exc:  # the call still works without its transcript being stored
            log.warning("call %s is not recorded (store: %s: %s)", self.id, type(exc).__name__, exc)
            return False
        return True

    async def _record_end(self, reason: str) -> None:
        if not self.recorded:
            return
        try:
            await self.store.end_call(self.id, reason)
            self.end_recorded = True
        except Exception as exc:
            log.warning(
                "call %s: its end (%s) is not stored: %s: %s", self.id, reason, type(exc).__name__, exc
            )

    def _on_event(self, event: ConversationEvent) -> None:
        self.recent_events.append(event)
        if not isinstance(event, Fault | Recovered):  # someone spoke, or the agent is replying
            self.last_activity_at = datetime.now(UTC)
        if isinstance(event, Fault):
            self.stats.faults += 1
            self.metrics.call_faults.labels(stage=event.stage).inc()
        elif isinstance(event, Recovered):
            self.stats.recoveries += 1
            self.metrics.call_recoveries.labels(reason=event.reason).inc()
        elif isinstance(event, TurnCompleted):
            self._count_turn(event)
        elif isinstance(event, BargeIn) and event.reason is not None:
            self.metrics.barge_ins_rejected.labels(reason=event.reason).inc()
        elif isinstance(event, ReplyDiscarded):
            self.metrics.replies_discarded.inc()
            self.metrics.replies_discarded_seconds.inc(event.busy_s)
        self.transport.send_event(event.model_dump(mode="json"))

    def _count_turn(self, turn: TurnCompleted) -> None:
        self.stats.turns += 1
        self.stats.user_turns += turn.initiator == "user" and bool(turn.user_text.strip())
        self.stats.answered_turns += bool(turn.agent_text.strip())
        if turn.metrics.voice_to_voice_s is not None:
            self.stats.voice_to_voice_s.append(turn.metrics.voice_to_voice_s)
        for stage in STAGES:
            value = getattr(turn.metrics, stage)
            if value is not None:
                self.metrics.turn_seconds.labels(stage=stage.removesuffix("_s")).observe(value)
        if turn.interrupted:
            self.stats.barge_ins += 1
            self.metrics.barge_ins.inc()

    async def _record_turn(self, turn: TurnCompleted) -> None:
        """Store one turn: a store that is briefly down is retried, one that stays down costs
        this turn's record (logged and counted), never the call."""
        if not self.recorded:
            return
        ended = self.started_at + timedelta(seconds=turn.at_s)
        record = NewTurn(
            started_at=ended - timedelta(seconds=turn.metrics.voice_to_voice_s or 0),
            ended_at=ended,
            user_text=turn.user_text,
            agent_text=turn.agent_text,
            agent_text_heard=turn.agent_text_heard,
            interrupted=turn.interrupted,
            metrics=turn.metrics,
            fault=turn.fault,
            initiator=turn.initiator,
            event_id=turn.event_id,
            sources=turn.sources,
        )
        for attempt in range(1, TURN_WRITE_ATTEMPTS + 1):
            try:
                await self.store.add_turn(self.id, record)
                return
            except Exception as exc:
                if attempt == TURN_WRITE_ATTEMPTS:
                    self.stats.turns_not_stored += 1
                    self.metrics.turns_not_stored.inc()
                    log.warning(
                        "turn %d of call %s not stored after %d attempts: %s: %s",
                        turn.index, self.id, attempt, type(exc).__name__, exc,
                    )  # fmt: skip
                    return
                await asyncio.sleep(TURN_WRITE_BACKOFF_S * 2 ** (attempt - 1))


class CallManager:
    """Accepts offers, runs one CallSession per call, hangs them all up at shutdown."""

    def __init__(
        self,
        *,
        gateway: WebRTCGateway,
        engines: EngineSource,
        store: CallStore,
        metrics: Metrics,
        settings: ConversationSettings,
        node_id: str,
        knowledge: KnowledgeLookup | None = None,
        on_call_ended: CallEnded | None = None,
    ) -> None:
        self.gateway = gateway
        self.on_call_ended = on_call_ended
        self.knowledge = knowledge  # what every call's agent may consult (None: no knowledge base)
        self.listeners: list[CallListener] = []
        self.engines = engines
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.node_id = node_id
        self.sessions: dict[str, CallSession] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._follow_ups: set[asyncio.Task[None]] = set()  # on_call_ended, running
        self._reclaim: asyncio.TimerHandle | None = None
        self._reclaimed_at = -RECLAIM_EVERY_S  # loop time of the last collection
        # Every series at 0 from the start, so "never happened" reads as 0, not as no data.
        for stage in get_args(FaultStage):
            metrics.call_faults.labels(stage=stage)
        for reason in RECOVERY_REASONS:
            metrics.call_recoveries.labels(reason=reason)

    async def start(
        self, sdp: str, type_: str, user_id: str | None, identity: Identity | None = None
    ) -> tuple[CallSession, str]:
        """Answer ``sdp`` and run the call. ``identity`` says how ``user_id`` is known (the HTTP
        API always says); left out, a given id counts as claimed, none as anonymous."""
        if identity is None:
            identity = "claimed" if user_id else "anonymous"
        if (identity == "anonymous") == bool(user_id):
            raise ValueError(f"identity {identity!r} does not fit user_id {user_id!r}")
        if not self.engines.ready:
            raise EnginesLoading("the models are still loading; try again in a few seconds")
        engines = self.engines.for_call()
        playout = Playout(sample_rate=48_000)
        transport, answer = await self.gateway.accept(sdp, type_, playout)
        try:
            session = CallSession(
                transport=transport,
                playout=playout,
                user_id=user_id or f"anon-{uuid.uuid4().hex[:12]}",
                identity=identity,
                engines=engines,
                store=self.store,
                metrics=self.metrics,
                settings=self.settings,
                node_id=self.node_id,
                listeners=tuple(self.listeners),
                knowledge=self.knowledge,
            )
        except BaseException:
            await transport.close("setup-failed")  # the gateway's call must not outlive this
            raise
        self.sessions[session.id] = session
        task = asyncio.create_task(session.run(), name=f"call-{session.id}")
        self._tasks[session.id] = task
        task.add_done_callback(lambda _: self._ended(session))
        return session, answer

    def session_of_user(self, user_id: str) -> CallSession | None:
        """This node's live call with ``user_id`` (the newest, if they have several)."""
        mine = [s for s in self.sessions.values() if s.user_id == user_id]
        return max(mine, key=lambda s: s.started_at) if mine else None

    def _ended(self, session: CallSession) -> None:
        self._forget(session.id)
        if self.on_call_ended is not None and session.end_recorded:
            follow_up = asyncio.create_task(
                self._follow_up(self.on_call_ended, session.id, session.stats.user_turns),
                name=f"call-ended-{session.id}",
            )
            self._follow_ups.add(follow_up)
            follow_up.add_done_callback(self._follow_ups.discard)

    async def _follow_up(self, hook: CallEnded, call_id: str, user_turns: int) -> None:
        try:
            await hook(call_id, user_turns)
        except Exception:  # the hook's bug is not the call's (it has ended anyway)
            log.exception("call %s: the call-ended hook failed", call_id)

    def _forget(self, call_id: str) -> None:
        self.sessions.pop(call_id, None)
        self._tasks.pop(call_id, None)
        if self._reclaim is None:
            loop = asyncio.get_running_loop()
            due = max(loop.time() + RECLAIM_AFTER_S, self._reclaimed_at + RECLAIM_EVERY_S)
            self._reclaim = loop.call_at(due, self._collect_ended_calls)

    def _collect_ended_calls(self) -> None:
        self._reclaim = None
        self._reclaimed_at = asyncio.get_running_loop().time()
        started = time.perf_counter()
        found = gc.collect()
        self.metrics.gc_seconds.observe(time.perf_counter() - started)
        log.debug(
            "collected %d objects of ended calls in %.1f ms", found, (time.perf_counter() - started) * 1e3
        )

    async def hang_up(self, call_id: str, reason: str = HANGUP) -> bool:
        session = self.sessions.get(call_id)
        if session is None:
            return False
        await session.transport.close(reason)
        task = self._tasks.get(call_id)
        if task is not None:
            await asyncio.wait([task], timeout=10)
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(self.hang_up(call_id, "server-shutdown") for call_id in list(self.sessions)))
        if self._follow_ups:  # before the store they write to closes
            await asyncio.wait(list(self._follow_ups), timeout=FOLLOW_UP_WAIT_S)
        await self.gateway.close_all()
        if self._reclaim is not None:
            self._reclaim.cancel()
            self._reclaim = None
