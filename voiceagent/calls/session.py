"""One live call: caller audio → conversation → agent audio, events to the page, turns to the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from voiceagent.pipeline.agent import Agent
from voiceagent.pipeline.conversation import Conversation
from voiceagent.pipeline.frames import ConversationEvent, TurnCompleted
from voiceagent.pipeline.playout import Playout
from voiceagent.store import NewTurn, StoreUnavailable

if TYPE_CHECKING:
    from voiceagent.runtime import Runtime
    from voiceagent.transport.webrtc import CallTransport, WebRTCGateway

log = logging.getLogger(__name__)
STAGES = ("endpointing_s", "asr_s", "llm_first_token_s", "tts_first_audio_s", "voice_to_voice_s")


class EnginesLoading(RuntimeError):
    pass


class CallSession:
    def __init__(self, runtime: Runtime, transport: CallTransport, playout: Playout, user_id: str) -> None:
        self.runtime = runtime
        self.transport = transport
        self.playout = playout
        self.user_id = user_id
        self.id = transport.id
        self.started_at = datetime.now(UTC)
        engines = runtime.engines
        assert engines.vad and engines.asr and engines.tts and engines.llm
        self.agent = Agent(engines.llm, runtime.settings.conversation)
        self.conversation = Conversation(
            vad=engines.vad,
            asr=engines.asr,
            tts=engines.tts,
            agent=self.agent,
            playout=playout,
            settings=runtime.settings.conversation,
            on_event=self._on_event,
            on_turn=self._record_turn,
        )
        self.events: list[ConversationEvent] = []

    async def run(self) -> None:
        """Feed the caller's audio until the call ends; always leaves the store consistent."""
        metrics = self.runtime.metrics
        metrics.calls_active.inc()
        recorded = await self._record_start()
        reason = "hangup"
        try:
            async for frame in self.transport.frames():
                await self.conversation.feed(frame)
            reason = self.transport.close_reason or "hangup"
        except asyncio.CancelledError:
            reason = "server-shutdown"
            raise
        except Exception as exc:  # a pipeline bug ends this call, never the server
            log.exception("call %s failed", self.id)
            reason = f"error: {type(exc).__name__}"
            self.transport.send_event({"kind": "error", "message": "the call failed on the server"})
        finally:
            metrics.calls_active.dec()
            with contextlib.suppress(Exception):
                await self.conversation.close()
            await self.transport.close(reason)
            if recorded:
                with contextlib.suppress(StoreUnavailable, OSError):
                    await self.runtime.store.end_call(self.id, reason)
            log.info("call %s ended: %s", self.id, reason)

    async def _record_start(self) -> bool:
        try:
            await self.runtime.store.touch_user(self.user_id)
            await self.runtime.store.start_call(self.user_id, self.runtime.settings.node_id, call_id=self.id)
        except Exception as exc:  # the call still works without its transcript being stored
            log.warning("call %s is not recorded: %s", self.id, exc)
            return False
        return True

    def _on_event(self, event: ConversationEvent) -> None:
        self.events.append(event)
        self.transport.send_event(event.model_dump(mode="json"))

    async def _record_turn(self, turn: TurnCompleted) -> None:
        histogram = self.runtime.metrics.turn_seconds
        for stage in STAGES:
            value = getattr(turn.metrics, stage)
            if value is not None:
                histogram.labels(stage=stage.removesuffix("_s")).observe(value)
        if turn.interrupted:
            self.runtime.metrics.barge_ins.inc()
        ended = self.started_at + timedelta(seconds=turn.at_s)
        record = NewTurn(
            started_at=ended - timedelta(seconds=turn.metrics.voice_to_voice_s or 0),
            ended_at=ended,
            user_text=turn.user_text,
            agent_text=turn.agent_text,
            agent_text_heard=turn.agent_text_heard,
            interrupted=turn.interrupted,
            metrics=turn.metrics,
        )
        try:
            await self.runtime.store.add_turn(self.id, record)
        except Exception as exc:
            log.warning("turn %d of call %s not stored: %s", turn.index, self.id, exc)


class CallManager:
    """Accepts offers, runs one CallSession per call, hangs them all up at shutdown."""

    def __init__(self, runtime: Runtime, gateway: WebRTCGateway) -> None:
        self.runtime = runtime
        self.gateway = gateway
        self.sessions: dict[str, CallSession] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self, sdp: str, type_: str, user_id: str | None) -> tuple[CallSession, str]:
        if not self.runtime.engines.ready:
            raise EnginesLoading("the models are still loading; try again in a few seconds")
        playout = Playout(sample_rate=48_000)
        transport, answer = await self.gateway.accept(sdp, type_, playout)
        session = CallSession(self.runtime, transport, playout, user_id or f"anon-{uuid.uuid4().hex[:12]}")
        self.sessions[session.id] = session
        task = asyncio.create_task(session.run(), name=f"call-{session.id}")
        self._tasks[session.id] = task
        task.add_done_callback(lambda _: self._forget(session.id))
        return session, answer

    def _forget(self, call_id: str) -> None:
        self.sessions.pop(call_id, None)
        self._tasks.pop(call_id, None)

    async def hang_up(self, call_id: str) -> bool:
        session = self.sessions.get(call_id)
        if session is None:
            return False
        await session.transport.close("hangup")
        task = self._tasks.get(call_id)
        if task is not None:
            await asyncio.wait([task], timeout=10)
        return True

    async def close_all(self) -> None:
        for call_id in list(self.sessions):
            await self.hang_up(call_id)
        await self.gateway.close_all()
