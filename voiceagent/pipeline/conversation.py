"""One call's conversation: VAD → turn detection → ASR → agent → sentences → TTS → playout.

The transport feeds 16 kHz PCM in real time (`feed`) and pulls outgoing frames from `playout`.
Everything else happens here, as small steps on one clock (the event loop's, so tests can run
it on virtual time):

- the user's speech is collected from a little before VAD's speech_start;
- at a pause a transcript is started at once (speculatively); the turn ends after a silence that
  depends on how that transcript ends (see turns.py), never before the transcript is known;
- meanwhile the reply is prepared (preemptive): LLM text → sentence chunker → TTS into a held
  playout, so it plays the moment the turn ends. Voice before the agent's audio starts means the
  caller goes on: that reply is discarded unheard and the same turn continues;
- voice over the agent's audio holds it at once; it is an interruption only once it transcribes to
  words that are not a backchannel or the agent's echo (see interruptions.py). Then playout is
  flushed, LLM and TTS are cancelled, and the agent remembers only what was heard; otherwise the
  agent goes on where it stopped.

Faults are contained: an exception of any type from an engine, a tool, an observer or a bug in
a reply ends at most that reply (see `_respond`); the agent says `fallback_line` when nothing was
said yet, and goes back to listening. A watchdog resets any state no live task explains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any, Literal

from voiceagent.engines.audio import trim_leading_silence
from voiceagent.engines.base import (
    PCM_RATE,
    ASREngine,
    EngineError,
    TTSEngine,
    VADEngine,
    VADResult,
)
from voiceagent.engines.tts.text import SentenceChunker
from voiceagent.pipeline.agent import Agent
from voiceagent.pipeline.frames import (
    AgentSpeech,
    AgentState,
    BargeIn,
    ConversationEvent,
    Fault,
    FaultStage,
    Interrupted,
    Recovered,
    RejectReason,
    ReplyDiscarded,
    StateChanged,
    TurnCompleted,
    UserTranscript,
)
from voiceagent.pipeline.interruptions import Suspicion, classify_overlap
from voiceagent.pipeline.knowledge import Consulted
from voiceagent.pipeline.playout import Playout
from voiceagent.pipeline.replies import SpokenReply, words_of
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.pipeline.speech import PromptQueue, SpeechHandle, SpeechOutcome, SpeechResult
from voiceagent.pipeline.turns import end_of_turn_silence
from voiceagent.store.records import TurnMetrics

log = logging.getLogger(__name__)

BYTES_PER_S = PCM_RATE * 2
# Audio kept from before the current utterance: VAD confirms speech some 0.25 s after it began,
# and a barge-in is confirmed later still, so keep enough to give ASR the first word whole; a
# turn the caller resumes takes back the audio since it ended from here too.
HISTORY_S = 2.5


class _Turn:
    """The user's utterance in progress, and the reply to it once there is one."""

    def __init__(self, index: int, started_s: float) -> None:
        self.index = index
        self.started_s = started_s
        self.audio = bytearray()
        self.audio_end_stream_s = 0.0  # stream time the turn's audio ends (once it ended)
        self.speech_end_s: float | None = None  # conversation clock
        self.transcript: asyncio.Task[str] | None = None
        self.asr_s = 0.0
        self.text = ""
        self.cut = False  # ended for its length, not by a pause
        self.prompt: SpeechHandle | None = None  # set when the agent speaks first (no user turn)
        self.reset_reply()

    def reset_reply(self) -> None:
        """Forget a reply that never happened (the caller went on): the turn continues."""
        self.held = False  # prepared while the caller may go on: its audio waits, unheard
        self.confirmed = asyncio.Event()  # the turn is over: the reply counts (and may act)
        self.held_speech: list[AgentSpeech] = []  # queued while held, announced on release
        self.prepared_s: float | None = None  # when a preemptive reply began
        self.reply_started_s = 0.0  # when the reply began to count (the turn's end)
        self.first_token_s: float | None = None
        self.first_sentence_s: float | None = None
        self.first_chunk_s: float | None = None  # the first audio out of TTS
        self.first_audio_s: float | None = None  # the first audio the caller can hear
        self.llm_deltas = 0
        self.tts_audio_s = 0.0
        self.acted = False  # a tool ran for it
        self.consulted: Consulted | None = None  # what the knowledge base gave the reply
        self.spoken: list[str] = []
        self.fault: str | None = None  # the first contained failure of this turn

    def took_notes(self, consulted: Consulted) -> None:
        self.consulted = consulted


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
        self._voiced_run_s = 0.0  # voiced seconds in a row, up to the current frame
        self._suspicion: Suspicion | None = None  # voice over the agent, being judged
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
        frame_s = len(pcm) / BYTES_PER_S
        self._stream_s += frame_s
        if self._listening is not None:
            self._listening.audio += pcm
        self._keep_recent(pcm)
        result = await self._detect_voice(pcm)
        for event in result.events:
            if event.kind == "speech_start":
                self._on_speech_start(event.at_s)
        voiced = result.probability >= self.settings.voiced_probability
        self._voiced_run_s = self._voiced_run_s + frame_s if voiced else 0.0
        if voiced:
            self._last_voiced_s = self._stream_s
        if voiced:  # not in VAD's hang-over: a partial there would hold up the pause's transcript
            self._maybe_partial()
        if self._listening is not None and self.state == AgentState.LISTENING:
            self._track_silence(voiced)
            if self._end_at_s is not None and self.now() >= self._end_at_s:
                self._end_user_turn()
            elif len(self._listening.audio) >= self.settings.max_utterance_s * BYTES_PER_S:
                self._cut_long_utterance()
        elif self._replying is not None:
            self._watch_voice_over_reply(voiced, frame_s)
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
        return b"".join(pcm for end, pcm in self._recent if end > stream_s + 1e-9)

    def _stream_to_clock(self, stream_s: float) -> float:
        """VAD reports stream time; the conversation clock runs alongside it."""
        return self.now() - (self._stream_s - stream_s)

    def _on_speech_start(self, at_stream_s: float) -> None:
        """A new utterance while the agent listens (voice over a reply is judged frame by frame,
        in `_watch_voice_over_reply`)."""
        if self.state != AgentState.LISTENING or self._listening is not None:
            return
        self._turns += 1
        self._listening = _Turn(self._turns, self._stream_to_clock(at_stream_s))
        self._listening.audio += self._audio_since(at_stream_s - self.settings.pre_roll_s)
        self._last_partial_s = self._stream_s

    # -- the end of the caller's turn ----------------------------------------------------------

    def _track_silence(self, voiced: bool) -> None:
        """Turn-taking reads each frame, not VAD's debounced speech_end (which comes a fixed
        min_silence_s late): the turn's own silence budget depends on what was said."""
        turn = self._listening
        assert turn is not None
        if turn.cut:
            return  # it ends once its transcript is ready, however the caller goes on
        if voiced:
            if turn.speech_end_s is not None and self._voiced_run_s >= self.settings.resume_min_speech_s:
                self._resume_turn(turn)
            return
        if turn.speech_end_s is None:
            turn.speech_end_s = self._stream_to_clock(self._last_voiced_s)
        if turn.transcript is None and self.now() - turn.speech_end_s >= self.settings.speculate_after_s:
            # Speculative: transcribe at the pause; usually ready before the silence budget runs out.
            turn.transcript = asyncio.create_task(self._transcribe(turn))
            # A speculative transcript may be superseded and never awaited: read its outcome anyway.
            turn.transcript.add_done_callback(_swallow_outcome)

    def _resume_turn(self, turn: _Turn) -> None:
        """The caller goes on after a pause: what was started for that pause is dropped."""
        turn.speech_end_s, self._end_at_s = None, None
        if turn.transcript is not None and not turn.transcript.done():
            turn.transcript.cancel()
        turn.transcript = None
        self._discard_reply(turn, "caller_went_on")

    async def _transcribe(self, turn: _Turn) -> str:
        """The transcript of the turn so far; once known, it decides how long a silence ends
        the turn, and the reply is prepared while that silence runs."""
        task = asyncio.current_task()
        failed = False
        try:
            transcript = await self.asr.transcribe(bytes(turn.audio))
            text = transcript.text.strip()
            turn.asr_s = transcript.processing_s
        except Exception as exc:  # the caller spoke and we cannot tell what: say so at once
            self._fault("asr", exc, turn)
            text, failed = "", True
        if turn is self._listening and turn.transcript is task and turn.speech_end_s is not None:
            turn.text = text
            if failed or turn.cut:
                self._end_at_s = self.now()
            else:
                self._end_at_s = turn.speech_end_s + end_of_turn_silence(text, self.settings)
                if text and self.settings.preemptive_replies:
                    self._prepare_reply(turn)
        return text

    def _maybe_partial(self) -> None:
        turn = self._listening
        due = self._stream_s - self._last_partial_s >= self.settings.partial_every_s
        busy = self._partial is not None and not self._partial.done()
        if turn is None or not due or busy or turn.transcript is not None:
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
            self._emit(UserTranscript(at_s=self.now(), index=turn.index, text=transcript.text, final=False))

    def _cut_long_utterance(self) -> None:
        """End a turn that never paused: transcribe what there is and answer it."""
        turn = self._listening
        assert turn is not None
        if turn.cut or turn.speech_end_s is not None:
            return  # already ending, or in a pause that will end it
        log.info("utterance reached %.0f s without a pause: ending the turn", self.settings.max_utterance_s)
        turn.cut = True
        turn.speech_end_s = self.now()
        turn.transcript = asyncio.create_task(self._transcribe(turn))
        turn.transcript.add_done_callback(_swallow_outcome)

    def _end_user_turn(self) -> None:
        turn, self._listening, self._end_at_s = self._listening, None, None
        if turn is None:
            return
        turn.audio_end_stream_s = self._stream_s
        if not turn.text and turn.fault is None:
            return  # noise that looked like speech: nothing to answer
        if turn.text:
            self._emit(UserTranscript(at_s=self.now(), index=turn.index, text=turn.text, final=True))
        if self._replying is turn:
            self._confirm_reply(turn)
        else:
            self._begin_reply(turn)

    def _reopen_turn(self, turn: _Turn) -> None:
        """The caller goes on before the agent made a sound: it is the same turn, and the reply
        to its first part never happened."""
        self._discard_reply(turn, "caller_went_on")
        turn.audio += self._audio_since(turn.audio_end_stream_s)
        turn.speech_end_s, turn.transcript, turn.text = None, None, ""
        self._listening = turn
        self._last_partial_s = self._stream_s

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
        self._begin_reply(turn)

    # -- the reply ---------------------------------------------------------------------------

    def _prepare_reply(self, turn: _Turn) -> None:
        """Start the reply at the pause, held: it plays only if the turn ends as it is now."""
        if self._closing or self._replying is not None:
            return
        turn.held = True
        turn.prepared_s = self.now()
        self._begin_reply(turn)

    def _begin_reply(self, turn: _Turn) -> None:
        self._replying = turn
        self.playout.start_reply()
        if turn.held:
            self.playout.hold()
        else:
            turn.confirmed.set()
            turn.reply_started_s = self.now()
            self._set_state(AgentState.THINKING)
        name = f"reply-{turn.index}" if turn.prompt is None else f"prompt-{turn.index}"
        self._reply = self._spawn(self._respond(turn), name=name)

    def _confirm_reply(self, turn: _Turn) -> None:
        """The turn ended as the prepared reply assumed: it counts, and plays from now."""
        turn.held = False
        turn.confirmed.set()
        turn.reply_started_s = self.now()
        self._set_state(AgentState.THINKING)
        held, turn.held_speech = turn.held_speech, []
        if held:
            self._began_audio(turn)
        for event in held:
            self._emit(event.model_copy(update={"at_s": self.now()}))
        self.playout.release()

    def _discard_reply(self, turn: _Turn, reason: Literal["caller_went_on", "call_ended"]) -> None:
        """Throw away a reply nobody heard a word of: no playout, no memory, no tool run."""
        if self._replying is not turn:
            return
        reply, self._reply, self._replying = self._reply, None, None
        self._suspicion = None
        self.playout.flush()
        if reply is not None and not reply.done():
            reply.cancel()
        self.agent.discard_reply()
        began = turn.prepared_s if turn.prepared_s is not None else turn.reply_started_s
        self._emit(
            ReplyDiscarded(
                at_s=self.now(), index=turn.index, reason=reason, llm_deltas=turn.llm_deltas,
                tts_audio_s=round(turn.tts_audio_s, 3), busy_s=round(max(0.0, self.now() - began), 3),
            )
        )  # fmt: skip
        turn.reset_reply()
        self._set_state(AgentState.LISTENING)

    async def _respond(self, turn: _Turn) -> None:
        """The reply task. Its last-resort boundary: whatever fails in here, the turn is finished
        and the conversation listens again."""
        try:
            await self._reply_to(turn)
        except Exception as exc:
            _raise_if_cancelling(exc)
            self._fault("reply", exc, turn)
            if self._replying is turn:  # not already finished by a barge-in or hang-up
                if turn.held:  # the turn is not over: its end starts a fresh reply
                    self._discard_reply(turn, "caller_went_on")
                    return
                self.playout.flush()
                self._finish_reply(turn, heard=self.playout.heard_text(), interrupted=False)
        else:
            self._finish_reply(turn, heard=" ".join(turn.spoken), interrupted=False)

    async def _reply_to(self, turn: _Turn) -> None:
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
            await turn.confirmed.wait()  # a prepared reply ends only once it counts
            self.playout.end_reply()
            await self.playout.drained()
        finally:
            if producer is not None and not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await producer

    async def _think(self, turn: _Turn, sentences: asyncio.Queue[str | None]) -> None:
        """LLM text → the sentences to speak, cut to a spoken reply's size (see replies.py): at
        its sentence cap, token budget or a loop the LLM stream is closed and the reply ends. If
        the LLM fails, what was said stands: with nothing said yet the agent says the fallback
        line; cut off mid-sentence, it says the cut-off line instead of the unfinished words;
        between sentences, the reply simply ends there."""
        reply = SpokenReply(self.settings.reply, first_clause_words=self.settings.first_clause_words)
        if turn.prompt is not None and turn.prompt.instructions is not None:
            deltas = self.agent.instructed(turn.prompt.instructions)
        else:
            deltas = self.agent.reply(
                turn.text, may_act=lambda: self._may_act(turn), on_consulted=turn.took_notes
            )
        try:
            async for delta in deltas:
                turn.llm_deltas += 1
                if turn.first_token_s is None:
                    turn.first_token_s = self.now()
                for sentence in reply.push(delta):
                    sentences.put_nowait(sentence)
                if reply.stop_reason is not None:
                    log.info("reply %d ended at its %s limit", turn.index, reply.stop_reason)
                    await _close_quietly(deltas)  # the reply is whole: a failing close is no fault
                    break
            for sentence in reply.flush():
                sentences.put_nowait(sentence)
            if not reply.spoken and turn.prompt is None:  # nothing sayable (gibberish, empty)
                sentences.put_nowait(self.settings.fallback_line)
        except Exception as exc:
            _raise_if_cancelling(exc)
            self._fault("llm", exc, turn)
            for sentence in reply.flush(complete_only=True):  # whole sentences the LLM did finish
                sentences.put_nowait(sentence)
            if not reply.spoken and turn.prompt is None:  # a prompt nobody asked for is dropped
                sentences.put_nowait(self.settings.fallback_line)
            elif reply.spoken and reply.unfinished:
                sentences.put_nowait(self.settings.cut_off_line)
        finally:
            sentences.put_nowait(None)

    async def _may_act(self, turn: _Turn) -> None:
        """A tool changes the world: it runs only once the reply counts, and after that the
        reply cannot be undone as if it never happened."""
        await turn.confirmed.wait()
        turn.acted = True

    async def _speak(self, turn: _Turn, sentences: asyncio.Queue[str | None]) -> None:
        tried_fallback = False
        while (sentence := await sentences.get()) is not None:
            if turn.spoken:  # a prepared reply synthesizes its opening only: the rest may be wasted
                await turn.confirmed.wait()
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
                    turn.tts_audio_s += len(chunk.pcm) / 2 / chunk.sample_rate
                    update: dict[str, object] = {"text": sentence if first_chunk else ""}
                    if first_chunk and turn.first_chunk_s is None:  # the reply's very first sound
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
        if turn.first_chunk_s is None:
            turn.first_chunk_s = self.now()
        event = AgentSpeech(at_s=self.now(), index=turn.index, text=sentence)
        if turn.held:
            turn.held_speech.append(event)
            return
        if turn.first_audio_s is None:
            self._began_audio(turn)
        self._emit(event)

    def _began_audio(self, turn: _Turn) -> None:
        turn.first_audio_s = self.now()
        self._speaking_since_s = turn.first_audio_s
        self._set_state(AgentState.SPEAKING)

    # -- voice over the reply ----------------------------------------------------------------

    def _watch_voice_over_reply(self, voiced: bool, frame_s: float) -> None:
        """The caller's voice while the agent replies: before its first sound, the caller goes
        on with the same turn; over its audio, the audio is held at once and the voice judged."""
        turn = self._replying
        assert turn is not None
        suspicion = self._suspicion
        if suspicion is None:
            if not voiced:
                return
            if turn.first_audio_s is None and turn.prompt is None and not (turn.cut or turn.acted):
                if self._voiced_run_s >= self.settings.resume_min_speech_s:
                    self._reopen_turn(turn)
                return
            if self._voiced_run_s < self.settings.barge_in_onset_s:
                return
            if turn.prompt is not None and not turn.prompt.allow_interruptions:
                return
            onset = self._stream_s - self._voiced_run_s
            began = self._stream_to_clock(onset)
            warmup_ends = self._speaking_since_s + self.settings.interrupt_warmup_s
            if turn.first_audio_s is not None and self._speaking_since_s <= began < warmup_ends:
                return  # most likely the agent's own first words coming back (echo)
            self._suspicion = Suspicion(onset_s=onset, voiced_s=self._voiced_run_s)
            self.playout.hold()
            self._emit(BargeIn(at_s=self.now(), index=turn.index, phase="suspected"))
            return
        step = suspicion.step(voiced, frame_s, self.settings)
        if step == "check":
            suspicion.check = self._spawn(self._check_voice(turn, suspicion), name="barge-in-check")
        elif step == "too_long":
            self._reject(turn, "too_long", keep=suspicion)
        elif step == "release":
            self._reject(turn, suspicion.verdict or "short")
        elif step == "forget":
            self._suspicion = None  # quiet again: the next voice is judged afresh

    async def _check_voice(self, turn: _Turn, suspicion: Suspicion) -> None:
        """Transcribe the voice over the agent: words interrupt, anything else does not."""
        covered_s = suspicion.voiced_s
        audio = self._audio_since(suspicion.onset_s - self.settings.pre_roll_s)
        text = ""
        try:
            text = (await self.asr.transcribe(audio)).text
            verdict = classify_overlap(text, " ".join(turn.spoken), self.settings.backchannels)
        except Exception as exc:  # no way to tell: the caller is heard rather than talked over
            log.warning("barge-in check failed (%s: %s): taken as words", type(exc).__name__, exc)
            verdict, suspicion.final = "words", True
        if self._suspicion is not suspicion or self._replying is not turn:
            return  # judged meanwhile (the reply ended, or the call)
        outcome = suspicion.judged(verdict, len(words_of(text)), covered_s)
        if outcome == "interrupt":
            if self._caller_went_on(turn, suspicion):
                self._reopen_turn(turn)
            else:
                self._interrupt()
        elif outcome == "release" and verdict != "words":
            self._reject(turn, verdict, keep=suspicion)

    def _caller_went_on(self, turn: _Turn, suspicion: Suspicion) -> bool:
        """Words this soon after the caller's own speech ended continue their turn, even though
        the (fast) answer had begun: they had only paused, and a reply to half a sentence is
        worse than a moment of the agent's voice nobody remembers."""
        if turn.prompt is not None or turn.acted or turn.cut or turn.speech_end_s is None:
            return False
        return self._stream_to_clock(suspicion.onset_s) - turn.speech_end_s <= self.settings.late_resume_s

    def _reject(self, turn: _Turn, reason: RejectReason, keep: Suspicion | None = None) -> None:
        """Not an interruption: the agent goes on where it stopped."""
        self._suspicion = keep
        self.playout.release()
        self._emit(BargeIn(at_s=self.now(), index=turn.index, phase="rejected", reason=reason))

    def _interrupt(self) -> None:
        turn, reply = self._replying, self._reply
        if turn is None or reply is None:
            return
        suspicion, self._suspicion = self._suspicion, None
        self.playout.flush()  # first: the user must stop hearing the agent now
        heard = self.playout.heard_text()
        reply.cancel()
        # Announced before the turn's record, so whoever shows the reply can mark it at once.
        self._emit(Interrupted(at_s=self.now(), index=turn.index, heard=heard))
        self._finish_reply(turn, heard=heard, interrupted=True)
        # The interrupting speech is the next user turn, from its start (plus pre-roll).
        self._on_speech_start(suspicion.onset_s if suspicion is not None else self._stream_s)

    def _finish_reply(self, turn: _Turn, *, heard: str, interrupted: bool) -> None:
        if self._replying is not turn:
            return  # already finished (interrupted while completing)
        self._replying = None
        if self._suspicion is not None:
            self._suspicion = None
            self.playout.release()
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
            sources=list(turn.consulted.references) if turn.consulted is not None else [],
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

        reply_began = turn.prepared_s if turn.prepared_s is not None else turn.reply_started_s
        retrieval_s = turn.consulted.seconds if turn.consulted is not None else None
        return TurnMetrics(
            endpointing_s=since(turn.speech_end_s, turn.reply_started_s or None),
            asr_s=turn.asr_s or None,
            retrieval_s=retrieval_s,
            llm_first_token_s=since(reply_began + (retrieval_s or 0.0), turn.first_token_s),
            tts_first_audio_s=since(turn.first_sentence_s, turn.first_chunk_s),
            voice_to_voice_s=since(turn.speech_end_s, turn.first_audio_s),
        )

    async def close(self) -> None:
        """Hang up: stop the reply, let started tools finish, release per-call state."""
        self._closing = True
        self._prompts.drop_all("call_ended")
        if self._replying is not None and self._replying.held:
            self._discard_reply(self._replying, "call_ended")
        if self._listening is not None and self._listening.transcript is not None:
            self._listening.transcript.cancel()
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


async def _close_quietly(stream: AsyncGenerator[str, None]) -> None:
    try:
        await stream.aclose()
    except Exception as exc:
        log.info("closing the LLM stream early: %s: %s", type(exc).__name__, exc)


def _swallow_outcome(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
