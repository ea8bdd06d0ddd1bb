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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from voiceagent.engines.base import PCM_RATE, ASREngine, EngineError, TTSEngine, VADEngine, VADEvent
from voiceagent.engines.tts.text import SentenceChunker
from voiceagent.pipeline.agent import Agent
from voiceagent.pipeline.frames import (
    AgentSpeech,
    AgentState,
    ConversationEvent,
    Interrupted,
    StateChanged,
    TurnCompleted,
    UserTranscript,
)
from voiceagent.pipeline.playout import Playout
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.pipeline.turns import end_of_turn_silence
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
        self._background: set[asyncio.Task[None]] = set()

    # -- clock and events --------------------------------------------------------------------

    def now(self) -> float:
        return self._loop.time() - self._origin

    def _emit(self, event: ConversationEvent) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # an observer's bug must not break the call
                log.exception("conversation observer failed")

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
        result = await self.vad.process(pcm)
        for event in result.events:
            self._on_vad(event)
        voiced = result.probability >= self.settings.voiced_probability
        if voiced:
            self._maybe_interrupt()  # counts voiced audio only, not VAD's trailing hang-over
        if result.speaking:
            self._maybe_partial()
        if self._listening is not None and self.state == AgentState.LISTENING:
            self._track_silence(voiced, len(pcm))
            if self._end_at_s is not None and self.now() >= self._end_at_s:
                await self._end_user_turn()

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
            echo_window_ends = self._speaking_since_s + self.settings.interrupt_warmup_s
            if self.state == AgentState.SPEAKING and self._stream_to_clock(at_stream_s) < echo_window_ends:
                return  # most likely the agent hearing itself
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
        self._partial = asyncio.create_task(self._partial_transcript(turn, bytes(turn.audio)))

    async def _partial_transcript(self, turn: _Turn, audio: bytes) -> None:
        try:
            transcript = await self.asr.transcribe(audio, partial=True)
        except EngineError as exc:  # a partial is a nicety; the final transcript decides
            log.debug("partial transcript skipped: %s", exc)
            return
        if turn is self._listening and transcript.text:
            self._emit(UserTranscript(at_s=self.now(), text=transcript.text, final=False))

    async def _end_user_turn(self) -> None:
        turn, self._listening, self._end_at_s = self._listening, None, None
        if turn is None or turn.transcript is None:
            return
        try:
            turn.text = (await turn.transcript).strip()
        except EngineError as exc:
            log.warning("final transcript failed: %s", exc)
            turn.text = ""
        if not turn.text:
            return  # noise that looked like speech: nothing to answer
        self._emit(UserTranscript(at_s=self.now(), text=turn.text, final=True))
        self._replying = turn
        self._reply = asyncio.create_task(self._respond(turn), name=f"reply-{turn.index}")

    # -- the reply ---------------------------------------------------------------------------

    async def _respond(self, turn: _Turn) -> None:
        self._set_state(AgentState.THINKING)
        turn.reply_started_s = self.now()
        self.playout.start_reply()
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        producer = asyncio.create_task(self._think(turn, sentences))
        try:
            await self._speak(turn, sentences)
            await producer
            self.playout.end_reply()
            await self.playout.drained()
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
        self._finish_reply(turn, heard=" ".join(turn.spoken), interrupted=False)

    async def _think(self, turn: _Turn, sentences: asyncio.Queue[str | None]) -> None:
        chunker = SentenceChunker(first_clause_words=self.settings.first_clause_words)
        try:
            async for delta in self.agent.reply(turn.text):
                if turn.first_token_s is None:
                    turn.first_token_s = self.now()
                for sentence in chunker.push(delta):
                    sentences.put_nowait(sentence)
            for sentence in chunker.flush():
                sentences.put_nowait(sentence)
        except EngineError as exc:
            log.warning("LLM failed mid-reply (%s); saying the fallback line", exc)
            for sentence in chunker.flush():
                sentences.put_nowait(sentence)
            if not turn.spoken and sentences.empty():
                sentences.put_nowait(self.settings.fallback_line)
        finally:
            sentences.put_nowait(None)

    async def _speak(self, turn: _Turn, sentences: asyncio.Queue[str | None]) -> None:
        while (sentence := await sentences.get()) is not None:
            if turn.first_sentence_s is None:
                turn.first_sentence_s = self.now()
            first_chunk = True
            try:
                async with contextlib.aclosing(self.tts.synthesize(sentence)) as audio:
                    async for chunk in audio:
                        text = sentence if first_chunk else ""
                        self.playout.enqueue(chunk.model_copy(update={"text": text}))
                        if first_chunk:
                            self._started_speaking(turn, sentence)
                            first_chunk = False
            except EngineError as exc:  # one unspeakable sentence must not end the reply
                log.warning("TTS failed for %r: %s", sentence[:60], exc)

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
        )
        self._emit(completed)
        if self._on_turn is not None:
            task = asyncio.create_task(self._on_turn(completed))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

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
        for task in (self._reply, self._partial):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, EngineError):
                    await task
        if self._replying is not None:
            self._finish_reply(self._replying, heard=self.playout.heard_text(), interrupted=True)
        await self.agent.wait_for_tools()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.playout.flush()
        self.vad.close()
