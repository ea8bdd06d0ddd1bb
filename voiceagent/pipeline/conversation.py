"""One call's conversation: VAD → turn detection → ASR → agent → sentences → TTS → playout.

The transport feeds 16 kHz PCM in real time (`feed`) and pulls outgoing frames from `playout`.
Everything else happens here, as small steps on one clock (the event loop's, so tests can run
it on virtual time):

- the user's speech is collected from a little before VAD's speech_start;
- at speech_end a transcript is started at once (speculatively), and the turn ends after a
  silence that depends on how that transcript ends (see turns.py);
- the reply streams LLM text → sentence chunker → TTS → playout, each sentence spoken as soon
  as it is complete;
- user speech during the reply that lasts `interrupt_min_speech_s` (and is not the agent's echo
  in its first `interrupt_warmup_s`) flushes playout, cancels LLM and TTS, and the agent
  remembers only what was heard. Shorter sounds are ignored.

Faults are contained: an exception of any type from an engine, a tool, an observer or a bug in
a reply ends at most that reply (see `_contain`); the agent says `fallback_line` when nothing was
said yet, and goes back to listening. A watchdog resets any state no live task explains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from voiceagent.engines.audio import trim_leading_silence
from voiceagent.engines.base import (
    PCM_RATE,
    ASREngine,
    EngineError,
    TTSEngine,
    VADEngine,
    VADEvent,
    VADResult,
)
from voiceagent.engines.tts.text import SentenceChunker
from voiceagent.pipeline.agent import Agent
from voiceagent.pipeline.frames import (
    AgentSpeech,
    AgentState,
    ConversationEvent,
    Fault,
    FaultStage,
    Interrupted,
    Recovered,
    StateChanged,
    TurnCompleted,
    UserTranscript,
)
from voiceagent.pipeline.playout import Playout
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.pipeline.speech import PromptQueue, SpeechHandle, SpeechOutcome, SpeechResult
from voiceagent.pipeline.turns import COMPLETE_ENDINGS, end_of_turn_silence
from voiceagent.store.records import TurnMetrics

log = logging.getLogger(__name__)

BYTES_PER_S = PCM_RATE * 2
# Audio kept from before the current utterance: VAD confirms speech some 0.25 s after it began,
# and a barge-in is confirmed later still, so keep enough to give ASR the first word whole.
HISTORY_S = 1.5


class _Turn:
    """The user's utterance in progress, and the reply to it once there is one."""

    def __init__(self, index: int, started_s: float) -> None:
        self.index = index
        self.started_s = started_s
        self.audio = bytearray()
        self.speech_end_s: float | None = None  # conversation clock
        self.transcript: asyncio.Task[str] | None = None
        self.transcript_audio_len = 0
        self.asr_s = 0.0
        self.text = ""
        self.reply_started_s = 0.0
        self.first_token_s: float | None = None
        self.first_sentence_s: float | None = None
        self.first_audio_s: float | None = None
        self.spoken: list[str] = []
        self.fault: str | None = None  # the first contained failure of this turn
        self.prompt: SpeechHandle | None = None  # set when the agent speaks first (no user turn)


class Conversation:
    def __init__(
        self,
        *,
        vad: VADEngine,
        asr: ASREngine,
        tts: TTSEngine,
        agent: Agent,
        playout: Playout,
        settings: ConversationSettings,
        on_event: Callable[[ConversationEvent], None] | None = None,
        on_turn: Callable[[TurnCompleted], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._vad_engine = vad
        self.vad = vad.stream()
        self.asr = asr
        self.tts = tts
        self.agent = agent
        self.playout = playout
        self.settings = settings
        self._on_event = on_event
        self._on_turn = on_turn
        self.state = AgentState.LISTENING
        self._loop = asyncio.get_running_loop()
        self._origin = self._loop.time()
        self._stream_s = 0.0  # seconds of user audio fed so far
        self._recent: deque[tuple[float, bytes]] = deque()  # (stream time at its end, pcm)
        self._turns = 0
        self._listening: _Turn | None = None  # the user's utterance being collected
        self._end_at_s: float | None = None  # when the current utterance's turn ends
        self._reply: asyncio.Task[None] | None = None
        self._replying: _Turn | None = None
        self._speaking_since_s = 0.0
        self._barge_in_from_s: float | None = None  # stream time of speech that may interrupt
        self._partial: asyncio.Task[None] | None = None
        self._last_partial_s = 0.0
        self._background: set[asyncio.Task[Any]] = set()
        self._vad_failing = False
        self._vad_offset_s = 0.0  # stream time at which the current VAD stream began
        self._stuck_since_s: float | None = None
        self._prompts = PromptQueue()
        self._last_voiced_s = -1e9  # stream time of the last voiced frame
        self._closing = False

    # -- clock and events --------------------------------------------------------------------

    def now(self) -> float:
        return self._loop.time() - self._origin

    def _emit(self, event: ConversationEvent) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # an observer's bug must not break the call
                log.exception("conversation observer failed")

    def _fault(self, stage: FaultStage, exc: BaseException, turn: _Turn | None = None) -> str:
        """Log and announce a contained failure; the first one of a turn is stored with it."""
        message = f"{stage}: {type(exc).__name__}: {exc}"[:300]
        if isinstance(exc, EngineError):
            log.warning("contained %s", message)
        else:  # not an engine's known failure mode: keep the traceback for the bug report
            log.error("contained %s", message, exc_info=exc)
        if turn is not None and turn.fault is None:
            turn.fault = message
        self._emit(Fault(at_s=self.now(), stage=stage, message=message))
        return message

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task the conversation owns: kept until done, and its failure is never silent."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._fault("background", exc)

    def _set_state(self, state: AgentState) -> None:
        if state != self.state:
            self.state = state
            self._emit(StateChanged(at_s=self.now(), state=state))

    # -- input -------------------------------------------------------------------------------

    async def feed(self, pcm: bytes) -> None:
        """User audio, 16 kHz int16 mono, in order and in real time (typically 20 ms frames)."""
        self._stream_s += len(pcm) / BYTES_PER_S
        if self._listening is not None:
            self._listening.audio += pcm
        self._keep_recent(pcm)
        result = await self._detect_voice(pcm)
        for event in result.events:
            self._on_vad(event)
        voiced = result.probability >= self.settings.voiced_probability
        if voiced:
            self._last_voiced_s = self._stream_s
            self._maybe_interrupt()  # counts voiced audio only, not VAD's trailing hang-over
        if result.speaking:
            self._maybe_partial()
        if self._listening is not None and self.state == AgentState.LISTENING:
            self._track_silence(voiced, len(pcm))
            if self._end_at_s is not None and self.now() >= self._end_at_s:
                await self._end_user_turn()
            elif len(self._listening.audio) >= self.settings.max_utterance_s * BYTES_PER_S:
                await self._cut_long_utterance()
        self._maybe_start_prompt()
        self._watch_for_stuck_state()

    async def _detect_voice(self, pcm: bytes) -> VADResult:
        """VAD on one frame; a failing VAD costs that frame (heard as silence), not the call.

        The stream is replaced so a corrupted state cannot fail every frame after; one log line
        per run of failures."""
        try:
            result = await self.vad.process(pcm)
        except Exception as exc:
            if not self._vad_failing:
                self._vad_failing = True
                self._fault("vad", exc, self._listening)
            with contextlib.suppress(Exception):
                self.vad.close()
            try:
                self.vad = self._vad_engine.stream()
                self._vad_offset_s = self._stream_s  # its clock starts at the next frame
            except Exception as again:
                log.debug("no fresh VAD stream yet: %s", again)
            return VADResult(probability=0.0, speaking=False, events=())
        if self._vad_failing:
            self._vad_failing = False
            log.info("VAD works again")
        if self._vad_offset_s and result.events:
            shifted = tuple(e.model_copy(update={"at_s": e.at_s + self._vad_offset_s}) for e in result.events)
            result = result.model_copy(update={"events": shifted})
        return result

    def _keep_recent(self, pcm: bytes) -> None:
        self._recent.append((self._stream_s, pcm))
        while self._recent and self._recent[0][0] < self._stream_s - HISTORY_S - self.settings.pre_roll_s:
            self._recent.popleft()

    def _audio_since(self, stream_s: float) -> bytes:
        return b"".join(pcm for end, pcm in self._recent if end > stream_s)

    def _on_vad(self, event: VADEvent) -> None:
        if event.kind == "speech_start":
            self._on_speech_start(event.at_s)
        else:
            self._on_speech_end(event.at_s)

    def _stream_to_clock(self, stream_s: float) -> float:
        """VAD reports stream time; the conversation clock runs alongside it."""
        return self.now() - (self._stream_s - stream_s)

    def _on_speech_start(self, at_stream_s: float) -> None:
        if self.state != AgentState.LISTENING:
            started = self._stream_to_clock(at_stream_s)
            echo_window = (self._speaking_since_s, self._speaking_since_s + self.settings.interrupt_warmup_s)
            # Speech that began in the agent's first moments is most likely its own echo; speech
            # that began before the agent spoke (the caller started as a prompt did) is not.
            if self.state == AgentState.SPEAKING and echo_window[0] <= started < echo_window[1]:
                return
            self._barge_in_from_s = at_stream_s
            return
        self._end_at_s = None  # the user goes on: the turn is not over
        if self._listening is None:
            self._turns += 1
            self._listening = _Turn(self._turns, self._stream_to_clock(at_stream_s))
            self._listening.audio += self._audio_since(at_stream_s - self.settings.pre_roll_s)
            self._last_partial_s = self._stream_s

    def _on_speech_end(self, _at_stream_s: float) -> None:
        self._barge_in_from_s = None  # too short to interrupt: a cough, a "mm-hm"

    def _track_silence(self, voiced: bool, frame_bytes: int) -> None:
        """Turn-taking reads each frame, not VAD's debounced speech_end (which comes a fixed
        min_silence_s late): the turn's own silence budget depends on what was said."""
        turn = self._listening
        assert turn is not None
        if voiced:
            if turn.speech_end_s is not None:  # the user goes on: not the end after all
                turn.speech_end_s, self._end_at_s = None, None
            return
        if turn.speech_end_s is None:
            turn.speech_end_s = self.now() - frame_bytes / BYTES_PER_S  # silence began with this frame
        silent_for = self.now() - turn.speech_end_s
        stale = turn.transcript is None or turn.transcript_audio_len < len(turn.audio) - self._tail_bytes(
            turn
        )
        if silent_for >= self.settings.speculate_after_s and stale:
            # Speculative: transcribe at the pause; usually ready before the silence budget runs out.
            turn.transcript_audio_len = len(turn.audio)
            turn.transcript = asyncio.create_task(self._transcribe(turn))
            # A speculative transcript may be superseded and never awaited: read its outcome anyway.
            turn.transcript.add_done_callback(_swallow_outcome)
            if self._end_at_s is None:
                self._end_at_s = turn.speech_end_s + self.settings.end_of_turn_silence_s

    def _tail_bytes(self, turn: _Turn) -> int:
        """Bytes of trailing silence in the utterance (not worth transcribing again)."""
        if turn.speech_end_s is None:
            return 0
        return int((self.now() - turn.speech_end_s) * BYTES_PER_S) + 1

    async def _transcribe(self, turn: _Turn) -> str:
        transcript = await self.asr.transcribe(bytes(turn.audio))
        turn.asr_s = transcript.processing_s
        if turn is self._listening and turn.speech_end_s is not None:
            # Now that we know what was said, decide how long a silence ends this turn.
            self._end_at_s = turn.speech_end_s + end_of_turn_silence(transcript.text, self.settings)
        return transcript.text

    def _maybe_partial(self) -> None:
        turn = self._listening
        due = self._stream_s - self._last_partial_s >= self.settings.partial_every_s
        if turn is None or not due or (self._partial is not None and not self._partial.done()):
            return
        self._last_partial_s = self._stream_s
        self._partial = self._spawn(self._partial_transcript(turn, bytes(turn.audio)), name="partial")

    async def _partial_transcript(self, turn: _Turn, audio: bytes) -> None:
        try:
            transcript = await self.asr.transcribe(audio, partial=True)
        except Exception as exc:  # a partial is a nicety; the final transcript decides
            log.debug("partial transcript skipped: %s: %s", type(exc).__name__, exc)
            return
        if turn is self._listening and transcript.text:
            self._emit(UserTranscript(at_s=self.now(), text=transcript.text, final=False))

    async def _cut_long_utterance(self) -> None:
        """End a turn that never paused: transcribe what there is and answer it."""
        turn = self._listening
        assert turn is not None
        log.info("utterance reached %.0f s without a pause: ending the turn", self.settings.max_utterance_s)
        if turn.transcript is None or turn.transcript_audio_len < len(turn.audio):
            turn.transcript_audio_len = len(turn.audio)
            turn.transcript = asyncio.create_task(self._transcribe(turn))
            turn.transcript.add_done_callback(_swallow_outcome)
        if turn.speech_end_s is None:
            turn.speech_end_s = self.now()
        await self._end_user_turn()

    async def _end_user_turn(self) -> None:
        turn, self._listening, self._end_at_s = self._listening, None, None
        if turn is None or turn.transcript is None:
            return
        try:
            turn.text = (await turn.transcript).strip()
        except Exception as exc:  # the user spoke and we cannot tell what: say so, keep listening
            self._fault("asr", exc, turn)
            turn.text = ""
        if not turn.text and turn.fault is None:
            return  # noise that looked like speech: nothing to answer
        if turn.text:
            self._emit(UserTranscript(at_s=self.now(), text=turn.text, final=True))
        self._replying = turn
        self._reply = self._spawn(self._respond(turn), name=f"reply-{turn.index}")

    # -- speech the agent starts itself ------------------------------------------------------

    def say(
        self,
        text: str | None = None,
        *,
        instructions: str | None = None,
        priority: int = 0,
        allow_interruptions: bool = True,
        expires_in_s: float | None = None,
        replaces: str | None = None,
        event_id: str | None = None,
    ) -> SpeechHandle:
        """Say something no user turn asked for: ``text`` as it is, or ``instructions`` the LLM
        phrases in the call's language and context. It starts at the next safe point (the agent
        silent and idle, the caller not speaking), within ``conversation.prompt_max_wait_s`` or
        never; the handle says whether it was heard to the end, interrupted, or dropped."""
        now = self.now()
        handle = SpeechHandle(
            text=text,
            instructions=instructions,
            priority=priority,
            allow_interruptions=allow_interruptions,
            expires_at_s=None if expires_in_s is None else now + expires_in_s,
            give_up_at_s=now + self.settings.prompt_max_wait_s,
            replaces=replaces,
            event_id=event_id,
        )
        if self._closing:
            handle.drop("call_ended")
        else:
            self._prompts.add(handle)
        return handle

    def _safe_point(self) -> bool:
        idle = self.state == AgentState.LISTENING and (self._reply is None or self._reply.done())
        caller_quiet = self._listening is None and (
            self._stream_s - self._last_voiced_s >= self.settings.prompt_after_quiet_s
        )
        return idle and caller_quiet and self.playout.queued_s == 0

    def _maybe_start_prompt(self) -> None:
        if not len(self._prompts):
            return
        self._prompts.expire(self.now())
        if not self._safe_point() or (handle := self._prompts.pop()) is None:
            return
        handle.mark_started()
        self._turns += 1
        turn = _Turn(self._turns, self.now())
        turn.prompt = handle
        self._replying = turn
        self._reply = self._spawn(self._respond(turn), name=f"prompt-{turn.index}")

    # -- the reply ---------------------------------------------------------------------------

    async def _respond(self, turn: _Turn) -> None:
        """The reply task. Its last-resort boundary: whatever fails in here, the turn is finished
        and the conversation listens again."""
        try:
            await self._reply_to(turn)
        except Exception as exc:
            _raise_if_cancelling(exc)
            self._fault("reply", exc, turn)
            if self._replying is turn:  # not already finished by a barge-in or hang-up
                self.playout.flush()
                self._finish_reply(turn, heard=self.playout.heard_text(), interrupted=False)
        else:
            self._finish_reply(turn, heard=" ".join(turn.spoken), interrupted=False)

    async def _reply_to(self, turn: _Turn) -> None:
        self._set_state(AgentState.THINKING)
        turn.reply_started_s = self.now()
        self.playout.start_reply()
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        producer: asyncio.Task[None] | None = None
        if turn.prompt is not None and turn.prompt.text is not None:  # said as written
            chunker = SentenceChunker()
            for sentence in [*chunker.push(turn.prompt.text), *chunker.flush()]:
                sentences.put_nowait(sentence)
            sentences.put_nowait(None)
        elif turn.text or turn.prompt is not None:
            producer = asyncio.create_task(self._think(turn, sentences))
        else:  # nothing to ask the LLM about (the transcript failed): apologise instead
            sentences.put_nowait(self.settings.fallback_line)
            sentences.put_nowait(None)
        try:
            await self._speak(turn, sentences)
            if producer is not None:
                await producer
            self.playout.end_reply()
            await self.playout.drained()
        finally:
            if producer is not None and not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await producer

    async def _think(self, turn: _Turn, sentences: asyncio.Queue[str | None]) -> None:
        """LLM text → sentences. If the LLM fails, what was said stands: with nothing said yet the
        agent says the fallback line; cut off mid-sentence, it says the cut-off line instead of
        the unfinished words; between sentences, the reply simply ends there."""
        chunker = SentenceChunker(first_clause_words=self.settings.first_clause_words)
        produced = False
        if turn.prompt is not None and turn.prompt.instructions is not None:
            deltas = self.agent.instructed(turn.prompt.instructions)
        else:
            deltas = self.agent.reply(turn.text)
        try:
            async for delta in deltas:
                if turn.first_token_s is None:
                    turn.first_token_s = self.now()
                for sentence in chunker.push(delta):
                    sentences.put_nowait(sentence)
                    produced = True
            for sentence in chunker.flush():
                sentences.put_nowait(sentence)
        except Exception as exc:
            _raise_if_cancelling(exc)
            self._fault("llm", exc, turn)
            unfinished = False
            for piece in chunker.flush():
                if piece.endswith(COMPLETE_ENDINGS):  # whole sentences the LLM did finish
                    sentences.put_nowait(piece)
                    produced = True
                else:
                    unfinished = True
            if not produced and turn.prompt is None:  # a prompt nobody asked for is simply dropped
                sentences.put_nowait(self.settings.fallback_line)
            elif produced and unfinished:
                sentences.put_nowait(self.settings.cut_off_line)
        finally:
            sentences.put_nowait(None)

    async def _speak(self, turn: _Turn, sentences: asyncio.Queue[str | None]) -> None:
        tried_fallback = False
        while (sentence := await sentences.get()) is not None:
            tried_fallback = tried_fallback or sentence == self.settings.fallback_line
            await self._say(turn, sentence)
        if not turn.spoken and turn.fault is not None and not tried_fallback and turn.prompt is None:
            await self._say(turn, self.settings.fallback_line)  # every sentence failed to speak

    async def _say(self, turn: _Turn, sentence: str) -> None:
        """One sentence through TTS into playout; a failure costs this sentence only."""
        if turn.first_sentence_s is None:
            turn.first_sentence_s = self.now()
        first_chunk = True
        try:
            async with contextlib.aclosing(self.tts.synthesize(sentence)) as audio:
                async for chunk in audio:
                    update: dict[str, object] = {"text": sentence if first_chunk else ""}
                    if first_chunk and turn.first_audio_s is None:  # the reply's very first sound
                        update["pcm"] = trim_leading_silence(chunk.pcm, chunk.sample_rate)
                    self.playout.enqueue(chunk.model_copy(update=update))
                    if first_chunk:
                        self._started_speaking(turn, sentence)
                        first_chunk = False
        except Exception as exc:
            _raise_if_cancelling(exc)
            self._fault("tts", exc, turn)

    def _started_speaking(self, turn: _Turn, sentence: str) -> None:
        turn.spoken.append(sentence)
        if turn.first_audio_s is None:
            turn.first_audio_s = self.now()
            self._speaking_since_s = turn.first_audio_s
            self._set_state(AgentState.SPEAKING)
        self._emit(AgentSpeech(at_s=self.now(), text=sentence))

    def _maybe_interrupt(self) -> None:
        if self._barge_in_from_s is None or self._reply is None or self._reply.done():
            return
        prompt = self._replying.prompt if self._replying is not None else None
        if prompt is not None and not prompt.allow_interruptions:
            return
        if self._stream_s - self._barge_in_from_s < self.settings.interrupt_min_speech_s:
            return
        self._interrupt()

    def _interrupt(self) -> None:
        turn, reply = self._replying, self._reply
        if turn is None or reply is None:
            return
        self.playout.flush()  # first: the user must stop hearing the agent now
        heard = self.playout.heard_text()
        reply.cancel()
        self._finish_reply(turn, heard=heard, interrupted=True)
        self._emit(Interrupted(at_s=self.now(), heard=heard))
        # The interrupting speech is the next user turn, from its start (plus pre-roll).
        started_at = self._barge_in_from_s or self._stream_s
        self._barge_in_from_s = None
        self._on_speech_start(started_at)

    def _finish_reply(self, turn: _Turn, *, heard: str, interrupted: bool) -> None:
        if self._replying is not turn:
            return  # already finished (interrupted while completing)
        self._replying = None
        self.agent.commit_reply(heard)
        self._set_state(AgentState.LISTENING)
        completed = TurnCompleted(
            at_s=self.now(),
            index=turn.index,
            user_text=turn.text,
            agent_text=" ".join(turn.spoken),
            agent_text_heard=heard,
            interrupted=interrupted,
            metrics=self._metrics(turn),
            fault=turn.fault,
            initiator="user" if turn.prompt is None else "agent",
            event_id=turn.prompt.event_id if turn.prompt is not None else None,
        )
        if turn.prompt is not None:
            turn.prompt.settle(self._prompt_result(turn, heard=heard, interrupted=interrupted))
        self._emit(completed)
        if self._on_turn is not None:
            self._spawn(self._on_turn(completed), name=f"turn-{turn.index}-record")

    def _prompt_result(self, turn: _Turn, *, heard: str, interrupted: bool) -> SpeechResult:
        if self._closing:
            return SpeechResult(outcome=SpeechOutcome.DROPPED, heard=heard, reason="call_ended")
        if interrupted:
            return SpeechResult(outcome=SpeechOutcome.INTERRUPTED, heard=heard)
        if not turn.spoken:  # its text could not be produced or spoken
            return SpeechResult(outcome=SpeechOutcome.DROPPED, reason="failed")
        return SpeechResult(outcome=SpeechOutcome.PLAYED, heard=heard)

    # -- the watchdog ------------------------------------------------------------------------

    def _watch_for_stuck_state(self) -> None:
        """THINKING or SPEAKING needs a live reply task or audio still playing. Neither, for
        ``stuck_state_s``, means a bug left the state behind: reset it so the caller is heard."""
        reply_alive = self._reply is not None and not self._reply.done()
        if self.state == AgentState.LISTENING or reply_alive or self.playout.queued_s > 0:
            self._stuck_since_s = None
            return
        if self._stuck_since_s is None:
            self._stuck_since_s = self.now()
            return
        if self.now() - self._stuck_since_s < self.settings.stuck_state_s:
            return
        reason = "reply_task_gone" if self._reply is not None else "no_reply_task"
        stuck_in = self.state
        log.error("conversation stuck in %s with no reply task; recovering (%s)", stuck_in.value, reason)
        self._stuck_since_s = None
        self._replying = None
        self.playout.flush()
        self._set_state(AgentState.LISTENING)
        self._emit(Recovered(at_s=self.now(), reason=reason, stuck_in=stuck_in))

    def _metrics(self, turn: _Turn) -> TurnMetrics:
        def since(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else max(0.0, end - start)

        return TurnMetrics(
            endpointing_s=since(turn.speech_end_s, turn.reply_started_s or None),
            asr_s=turn.asr_s or None,
            llm_first_token_s=since(turn.reply_started_s, turn.first_token_s),
            tts_first_audio_s=since(turn.first_sentence_s, turn.first_audio_s),
            voice_to_voice_s=since(turn.speech_end_s, turn.first_audio_s),
        )

    async def close(self) -> None:
        """Hang up: stop the reply, let started tools finish, release per-call state."""
        self._closing = True
        self._prompts.drop_all("call_ended")
        for task in (self._reply, self._partial):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._replying is not None:
            self._finish_reply(self._replying, heard=self.playout.heard_text(), interrupted=True)
        await self.agent.wait_for_tools()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.playout.flush()
        with contextlib.suppress(Exception):
            self.vad.close()


def _raise_if_cancelling(exc: BaseException) -> None:
    """An engine that raises while being cancelled (a stream whose close fails) must not turn a
    barge-in's cancellation into an error we carry on from: the cancellation wins."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        log.info("while cancelling: %s: %s (the cancellation goes on)", type(exc).__name__, exc)
        raise asyncio.CancelledError from exc


def _swallow_outcome(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
