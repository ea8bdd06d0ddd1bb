"""summarize_call: what a finished call was about, in a few sentences, and what the caller wanted.

The prose comes from the configured LLM (the embedded SmolLM2-135M unless ``llm.base_url`` names
a better one). A 135M model cannot be trusted with structure, so it is asked only for one or two
plain sentences and its reply is cleaned and cut to ``MAX_SENTENCES``; the transcript it reads is
the call's end when the call is longer than ``summarize_call.max_transcript_chars`` (how a call
ends says more about its outcome than how it began).

Intents do not come from the LLM: the caller's turns go through the same analyzers as the
scheduled intent analysis (``outreach.analysis.backends``, by default the e5 embedding classifier
over ``configs/intents.yaml``), findings at or above ``outreach.analysis.min_confidence`` are kept,
stored on the summary and recorded in the intent store as analyzer ``call_summary``, so the
dashboard shows them as soon as the call is summarized rather than at the next analysis run
(which later finds the same turns and merges into the same rows).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from pydantic import Field

from voiceagent.jobs.kinds.base import JobContext, JobInputError, JobKind, KindParams, in_thread
from voiceagent.jobs.summaries import CallSummaries, SummaryIntent

if TYPE_CHECKING:
    from voiceagent.config import LLMSettings, Settings
    from voiceagent.engines.base import EmbeddingEngine, LLMEngine
    from voiceagent.engines.llm.local_server import LocalLLMServer
    from voiceagent.outreach.analysis.base import IntentAnalyzer, IntentFinding
    from voiceagent.store.database import Database
    from voiceagent.store.records import CallRecord, TurnRecord

ANALYZER = "call_summary"  # the analyzer name on intent records this job writes
SYSTEM_PROMPT = "You are a helpful assistant."
# Measured on SmolLM2-135M over recorded calls: asking "what did the caller want and how did the
# agent help" kept it closest to the transcript; "summarize" alone invited invented refunds.
INSTRUCTION = (
    "Read this phone call between a caller and an agent.\n\n{transcript}\n\n"
    "In one or two sentences, what did the caller want and how did the agent help?"
)
TEMPERATURE = 0.2
MAX_SENTENCES = 3
MAX_SUMMARY_CHARS = 600
NO_SPEECH_SUMMARY = "The caller said nothing that was transcribed."
# The embedded server's context must hold the transcript: ~2 characters a token at worst (Chinese
# runs nearer 1.5, English 4), plus the reply and the prompt; SmolLM2 was trained on 8192.
CHARS_PER_TOKEN = 2
MAX_LOCAL_CONTEXT = 8192
# A job may wait longer for its reply than a caller can.
FIRST_TOKEN_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 180.0


class SummarizeCallParams(KindParams):
    call_id: str = Field(min_length=1, max_length=64)


class SummarizeCallKind(JobKind):
    name = "summarize_call"
    Params = SummarizeCallParams

    def __init__(self, settings: Settings, database: Database) -> None:
        super().__init__(settings, database)
        self.llm: LLMEngine | None = None
        self.llm_server: LocalLLMServer | None = None
        self.embeddings: EmbeddingEngine | None = None
        self.analyzers: list[IntentAnalyzer] = []

    def llm_settings(self) -> LLMSettings:
        """The configured LLM, with the worker's threads, a context that holds the transcript,
        and deadlines for a job rather than a caller."""
        llm, jobs = self.settings.llm, self.settings.jobs
        wanted = (
            jobs.summarize_call.max_transcript_chars // CHARS_PER_TOKEN + jobs.summarize_call.max_tokens + 512
        )
        local = llm.local.model_copy(
            update={
                "threads": jobs.worker.threads,
                "parallel": jobs.worker.concurrency,
                "context_tokens": max(llm.local.context_tokens, min(wanted, MAX_LOCAL_CONTEXT)),
            }
        )
        return llm.model_copy(
            update={
                "local": local,
                "first_token_timeout_s": max(llm.first_token_timeout_s, FIRST_TOKEN_TIMEOUT_S),
                "request_timeout_s": max(llm.request_timeout_s, REQUEST_TIMEOUT_S),
            }
        )

    @property
    def model_name(self) -> str:
        llm = self.settings.llm
        return llm.model if llm.base_url else llm.local.model_path

    async def load(self) -> None:
        """The LLM (the embedded server is started, in a child process) and the intent analyzers."""
        from voiceagent.engines.embeddings.e5 import E5Embeddings
        from voiceagent.engines.llm.local_server import open_llm
        from voiceagent.outreach.process import analyzers_for

        if self.llm is not None:
            return
        try:
            self.llm, self.llm_server = await open_llm(self.llm_settings())
            if "embedding" in self.settings.outreach.analysis.backends:
                embeddings = self.settings.engines.embeddings
                threads = {"threads": self.settings.jobs.worker.threads}
                self.embeddings = await in_thread(E5Embeddings, embeddings.model_copy(update=threads))
            self.analyzers = analyzers_for(self.settings, self.embeddings)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        from voiceagent.engines.registry import close_engine

        analyzers, self.analyzers = self.analyzers, []
        for analyzer in analyzers:
            await analyzer.aclose()
        for engine in (self.llm, self.embeddings):
            await close_engine(engine)
        self.llm = self.embeddings = None
        if self.llm_server is not None:
            server, self.llm_server = self.llm_server, None
            await server.stop()

    async def run(self, job: JobContext) -> dict[str, Any]:
        from voiceagent.outreach.intent_store import IntentStore
        from voiceagent.store.repository import NotFound, Store

        assert isinstance(job.params, SummarizeCallParams)
        call_id = job.params.call_id
        try:
            call = await Store(self.database).get_call(call_id)
        except NotFound:
            raise JobInputError("call_not_found", f"no call {call_id!r}") from None
        if call.ended_at is None:
            raise JobInputError("call_not_ended", f"call {call_id!r} is still live")
        await self.load()
        spoken = [t for t in call.turns if t.initiator == "user" and t.user_text.strip()]
        await job.progress(0.05, f"summarizing {len(call.turns)} turns")
        if spoken:
            summary, model = await self._summary(call), self.model_name
        else:  # nothing to summarize: say so rather than let the model invent a call
            summary, model = NO_SPEECH_SUMMARY, "none"
        await job.progress(0.8, "finding intents")
        findings = await self._findings(call, spoken)
        intents = [
            SummaryIntent(intent=f.intent, confidence=f.confidence, evidence=f.evidence) for f in findings
        ]
        await CallSummaries(self.database).save(
            call_id, summary=summary, intents=intents, model=model, job_id=job.job_id
        )
        await IntentStore(self.database).record(findings)
        await job.progress(1.0, f"{len(intents)} intents")
        return {
            "summary": summary,
            "intents": [i.model_dump() for i in intents],
            "turns": len(call.turns),
            "model": model,
        }

    async def _summary(self, call: CallRecord) -> str:
        from voiceagent.engines.base import ChatMessage

        assert self.llm is not None
        limit = self.settings.jobs.summarize_call
        messages = [
            ChatMessage(role="system", content=SYSTEM_PROMPT),
            ChatMessage(
                role="user",
                content=INSTRUCTION.format(transcript=transcript(call.turns, limit.max_transcript_chars)),
            ),
        ]
        reply: list[str] = []
        # grounded: the summary should reuse the call's words, which the local server's repeat
        # penalty (tuned against a chatty agent repeating itself) would push it away from.
        stream = self.llm.stream(
            messages, max_tokens=limit.max_tokens, temperature=TEMPERATURE, grounded=True
        )
        async with contextlib.aclosing(stream) as deltas:
            async for delta in deltas:
                reply.append(delta.text)
        summary = clean_summary("".join(reply))
        if not summary:
            # Transient: a sampled reply may have words next time (the worker retries).
            raise RuntimeError(
                f"the LLM ({self.model_name}) gave no usable summary: {''.join(reply)[:100]!r}"
            )
        return summary

    async def _findings(self, call: CallRecord, spoken: list[TurnRecord]) -> list[IntentFinding]:
        """Every analyzer's findings on the caller's turns, one per intent (strongest confidence,
        all evidence), labelled as this job's."""
        from voiceagent.outreach.analysis.base import IntentFinding, Utterance

        utterances = [Utterance(turn_id=t.id, user_id=call.user_id, text=t.user_text.strip()) for t in spoken]
        if not utterances:
            return []
        threshold = self.settings.outreach.analysis.min_confidence
        merged: dict[str, IntentFinding] = {}
        for analyzer in self.analyzers:
            found = await analyzer.analyze(utterances, min_confidence=threshold)
            if analyzer.last_failures:  # an endpoint down: transient, the worker retries
                raise RuntimeError(f"intent analysis ({analyzer.name}): {analyzer.last_failures[0].error}")
            for finding in found:
                if finding.confidence < threshold:
                    continue
                seen = merged.get(finding.intent)
                merged[finding.intent] = IntentFinding(
                    user_id=call.user_id,
                    intent=finding.intent,
                    confidence=max(finding.confidence, seen.confidence if seen else 0.0),
                    evidence=sorted({*finding.evidence, *(seen.evidence if seen else ())}),
                    analyzer=ANALYZER,
                )
        return sorted(merged.values(), key=lambda f: (-f.confidence, f.intent))


def transcript(turns: list[TurnRecord], max_chars: int) -> str:
    """ "Caller: ..." / "Agent: ..." lines (what the caller heard of an interrupted reply); when
    longer than ``max_chars``, the end, from a line start."""
    lines: list[str] = []
    for turn in turns:
        if said := turn.user_text.strip():
            lines.append(f"Caller: {said}")
        if reply := (turn.agent_text_heard if turn.interrupted else turn.agent_text).strip():
            lines.append(f"Agent: {reply}")
    text = "\n".join(lines)
    if len(text) <= max_chars:
        return text
    tail = text[-max_chars:]
    start = tail.find("\n") + 1
    return "[...]\n" + (tail[start:] if 0 < start < len(tail) else tail)


def clean_summary(reply: str) -> str:
    """Plain sentences: markup removed (the voice's cleaner), at most MAX_SENTENCES and
    MAX_SUMMARY_CHARS (cut at a word), so a model that rambles or loops leaves a short summary."""
    from voiceagent.engines.tts.text import clean_text, split_sentences

    sentences = split_sentences(clean_text(reply).replace("\n", " "))[:MAX_SENTENCES]
    summary = " ".join(s.strip() for s in sentences).strip()
    if len(summary) > MAX_SUMMARY_CHARS:
        summary = summary[:MAX_SUMMARY_CHARS].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return summary
