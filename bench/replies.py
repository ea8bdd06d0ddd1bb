"""Replies made for the ear: are spoken replies short, loop-free and on topic, raw and shaped?

Each question in replies_questions.yaml is asked SAMPLES times of the embedded SmolLM2 through the
engine the voice pipeline uses, with the default config's sampling (temperature, max_tokens: no
bench-only caps). The raw reply is the whole streamed text; the shaped one is what `SpokenReply`
with the default `ReplyLimits` hands to TTS, fed the same deltas in the same order (it is
deterministic, so replaying equals running it live and cancelling the stream at its stop).

- within the sentence limit: sentences (the TTS splitter's) <= the default max_sentences;
- loop: an unmistakable degeneration, defined here independently of (and more leniently than)
  the guard: a sentence said twice word for word, a 1-8 word phrase three times in a row (one word
  four times), any 8 words in a row said twice, or a sentence of over 50 words;
- addresses the question: the reply contains one of the question's `expect` words (a keyword
  check, written per question: the right answer for facts and yes/no, on-topic words otherwise);
- spoken seconds: the shaped replies synthesized by the default Piper voice; raw replies are
  estimated at the seconds per character measured on the shaped ones (synthesizing minutes of
  raw text would add nothing but time).

`python -m bench.replies --candidates` compares the candidate persona prompts (CANDIDATES)
instead of saving; the suite measures the default prompt (ConversationSettings().system_prompt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.results import Metric, metric, percentile
from voiceagent.config import load_settings
from voiceagent.engines.base import ChatMessage
from voiceagent.engines.llm.local_server import LocalLLMServer, local_engine
from voiceagent.engines.llm.openai_compat import OpenAICompatibleLLM
from voiceagent.engines.tts.piper import PiperTTS
from voiceagent.engines.tts.text import clean_text, split_sentences
from voiceagent.pipeline.replies import ReplyLimits, SpokenReply, estimate_tokens, words_of
from voiceagent.pipeline.settings import ConversationSettings

QUESTIONS_FILE = Path(__file__).with_name("replies_questions.yaml")
SAMPLES = 5
CONCURRENCY = 2  # the 2-core bench machine: one request per core
# Persona prompts tried for SmolLM2-135M (see the module docstring for how they are compared).
CANDIDATES = {
    "previous": (
        "You are {persona}, a friendly voice assistant. You are talking, not writing: answer in one "
        "to three short sentences, no lists, no markdown, no emoji. If you do not know, say so."
    ),
    "previous_two": (
        "You are {persona}, a friendly voice assistant. You are talking, not writing: answer in one "
        "or two short sentences. If you do not know, say so."
    ),
    "short": "You are {persona}, a helpful voice assistant. Answer in one or two short sentences.",
    "phone": (
        "You are {persona}, a friendly assistant talking on the phone. Keep your answers short and simple."
    ),
    "direct": "You are {persona}, a helpful assistant. Give a short, direct answer to the question.",
    "smol": "You are {persona}, a helpful AI assistant.",
    "example": (
        "You are {persona}, a helpful voice assistant. Answer briefly and directly, in plain words. "
        'For example, asked "What is the capital of Italy?", you say "The capital of Italy is Rome."'
    ),
    "answer_first": (
        "You are {persona}, a helpful voice assistant. Answer the question in your first sentence, "
        "then stop. Keep it short and simple."
    ),
    "plain": (
        "You are {persona}, a helpful voice assistant. Answer the question briefly and directly, "
        "in plain words."
    ),
    "plain_first": (
        "You are {persona}, a helpful voice assistant. Answer the question directly in your first "
        "sentence, in plain words."
    ),
    "plain_two": (
        "You are {persona}, a helpful voice assistant. Answer the question briefly and directly, in one "
        "or two sentences of plain words."
    ),
}
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


@dataclass
class Sample:
    question: dict[str, Any]
    deltas: list[str]
    finish_reason: str | None
    shaped: list[str] = field(default_factory=list)
    stop_reason: str | None = None
    opening_clause: bool = False  # shaped[0] is an opening clause, run on into its sentence

    @property
    def raw(self) -> str:
        return "".join(self.deltas)


def sentence_count(text: str) -> int:
    return len(split_sentences(clean_text(text)))


def shaped_text(sample: Sample) -> str:
    """The pieces as the voice gets them: one line each (so a list marker at a piece's start is
    cleaned off as it is for TTS), an opening clause run on into the rest of its sentence."""
    return "".join(
        piece + (" " if i == 0 and sample.opening_clause else "\n") for i, piece in enumerate(sample.shaped)
    ).strip()


def has_loop(text: str) -> bool:
    sentences = [tuple(words_of(s)) for s in split_sentences(clean_text(text))]
    sentences = [s for s in sentences if s]
    if len(set(sentences)) < len(sentences) or any(len(s) > 50 for s in sentences):
        return True
    words = words_of(text)
    for n in range(1, 9):
        copies = 4 if n == 1 else 3
        for i in range(len(words) - n * copies + 1):
            if all(words[i + k * n : i + (k + 1) * n] == words[i : i + n] for k in range(copies)):
                return True
    grams = [tuple(words[i : i + 8]) for i in range(len(words) - 7)]
    return len(set(grams)) < len(grams)


def addresses(text: str, expect: list[str]) -> bool:
    text = clean_text(text).replace("’", "'").lower()
    for word in expect:
        word = str(word).lower()
        if _CJK.search(word):
            if word in text:
                return True
        elif re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text):
            return True
    return False


def shape(sample: Sample, limits: ReplyLimits, first_clause_words: int | None) -> None:
    reply = SpokenReply(limits, first_clause_words)
    for delta in sample.deltas:
        sample.shaped += reply.push(delta)
        if reply.stop_reason:
            break
    sample.shaped += reply.flush()
    sample.stop_reason = reply.stop_reason
    sample.opening_clause = reply.opening_clause is not None


async def ask_all(
    engine: OpenAICompatibleLLM, prompt: str, questions: list[dict[str, Any]], samples: int
) -> list[Sample]:
    gate = asyncio.Semaphore(CONCURRENCY)
    system = ChatMessage(role="system", content=prompt.format(persona=ConversationSettings().persona))

    async def one(question: dict[str, Any]) -> Sample:
        async with gate:
            deltas: list[str] = []
            finish: str | None = None
            messages = [system, ChatMessage(role="user", content=question["q"])]
            async for delta in engine.stream(messages):  # the config's max_tokens and temperature
                if delta.text:
                    deltas.append(delta.text)
                finish = delta.finish_reason or finish
            return Sample(question, deltas, finish)

    return list(await asyncio.gather(*(one(q) for q in questions for _ in range(samples))))


@dataclass
class Figures:
    within_raw: float
    within: float
    loop_raw: float
    loop: float
    addresses_raw: float
    addresses: float
    words_raw: float
    words: float
    stops: Counter[str]
    truncated_raw: float
    token_estimate_ratio: float

    def row(self, name: str) -> str:
        stops = ", ".join(f"{k} {v}" for k, v in sorted(self.stops.items()))
        return (
            f"{name:10} within {self.within_raw:5.2f} -> {self.within:4.2f}  loop {self.loop_raw:5.2f} -> "
            f"{self.loop:4.2f}  addresses {self.addresses_raw:4.2f} -> {self.addresses:4.2f}  words "
            f"{self.words_raw:5.1f} -> {self.words:4.1f}  raw at max_tokens {self.truncated_raw:4.2f}  "
            f"stops: {stops}"
        )


def figures(samples: list[Sample], limits: ReplyLimits) -> Figures:
    def share(flags: list[bool]) -> float:
        return sum(flags) / len(flags)

    shaped = [shaped_text(s) for s in samples]
    raw = [s.raw for s in samples]
    return Figures(
        within_raw=share([sentence_count(t) <= limits.max_sentences for t in raw]),
        within=share([sentence_count(t) <= limits.max_sentences for t in shaped]),
        loop_raw=share([has_loop(t) for t in raw]),
        loop=share([has_loop(t) for t in shaped]),
        addresses_raw=share([addresses(t, s.question["expect"]) for t, s in zip(raw, samples, strict=True)]),
        addresses=share([addresses(t, s.question["expect"]) for t, s in zip(shaped, samples, strict=True)]),
        words_raw=statistics.mean(len(words_of(t)) for t in raw),
        words=statistics.mean(len(words_of(t)) for t in shaped),
        stops=Counter(s.stop_reason or "end" for s in samples),
        truncated_raw=share([s.finish_reason == "length" for s in samples]),
        # llama.cpp streams one token per delta: the estimate's error on the model's own tokens.
        token_estimate_ratio=sum(estimate_tokens(t) for t in raw) / sum(len(s.deltas) for s in samples),
    )


async def spoken_seconds(samples: list[Sample]) -> tuple[list[float], float]:
    """Seconds of Piper audio per shaped reply, and seconds per character of cleaned text."""
    tts = await PiperTTS.load(load_settings().engines.tts)
    durations: list[float] = []
    chars = 0
    try:
        for sample in samples:
            seconds = 0.0
            for piece in sample.shaped:
                chars += len(clean_text(piece))
                async for chunk in tts.synthesize(piece):
                    seconds += chunk.duration_s
            durations.append(seconds)
    finally:
        tts.close()
    return durations, sum(durations) / max(chars, 1)


async def collect(prompts: dict[str, str], samples: int, dump: Path | None = None) -> dict[str, list[Sample]]:
    settings = load_settings()
    local = settings.llm.local.model_copy(update={"parallel": max(settings.llm.local.parallel, CONCURRENCY)})
    # Waits only: a shared bench machine may be slow, and a timed-out reply would be a lost sample.
    llm = settings.llm.model_copy(update={"request_timeout_s": 300.0, "first_token_timeout_s": 120.0})
    questions = yaml.safe_load(QUESTIONS_FILE.read_text())
    server = LocalLLMServer(local)
    await server.start()
    engine = local_engine(llm.model_copy(update={"local": local}), server)
    got: dict[str, list[Sample]] = {}
    try:
        for name, prompt in prompts.items():
            started = time.perf_counter()
            got[name] = await ask_all(engine, prompt, questions, samples)
            print(
                f"bench.replies: {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True
            )
            if dump is not None:
                raw = {n: [[s.question["q"], s.deltas, s.finish_reason] for s in r] for n, r in got.items()}
                await asyncio.to_thread(dump.write_text, json.dumps(raw, ensure_ascii=False))
        return got
    finally:
        await engine.aclose()
        await server.stop()


async def _run(samples: int = SAMPLES) -> dict[str, Metric]:
    conversation = ConversationSettings()
    limits = conversation.reply
    configured = load_settings().conversation
    if (configured.system_prompt, configured.reply) != (conversation.system_prompt, limits):
        print(
            "bench.replies: the config's prompt or reply limits differ from the code defaults",
            file=sys.stderr,
        )
    [replies] = (await collect({"default": conversation.system_prompt}, samples)).values()
    for sample in replies:
        shape(sample, limits, conversation.first_clause_words)
    got = figures(replies, limits)
    durations, per_char = await spoken_seconds(replies)
    raw_durations = [len(clean_text(s.raw)) * per_char for s in replies]
    setup = (
        f"{len(replies) // samples} questions x {samples} samples, SmolLM2-135M at the config's sampling, "
        f"max_sentences {limits.max_sentences}, max_tokens {limits.max_tokens}"
    )
    stops = ", ".join(f"{k} {v}" for k, v in sorted(got.stops.items()))
    return {
        "reply_within_sentence_limit_ratio": metric(
            got.within, "ratio", ">= 0.99", f"shaped by SpokenReply; {setup}"
        ),
        "reply_within_sentence_limit_raw_ratio": metric(
            got.within_raw, "ratio", "(reference)", f"raw model output; {setup}"
        ),
        "reply_loop_ratio": metric(
            got.loop,
            "ratio",
            "0",
            f"shaped; loop: repeated sentence/phrase/8-gram or 50+ word run-on; {setup}",
        ),
        "reply_loop_raw_ratio": metric(got.loop_raw, "ratio", "(reference)", f"raw model output; {setup}"),
        "reply_addresses_question_ratio": metric(
            got.addresses,
            "ratio",
            ">= 0.6",
            f"shaped; contains a per-question expected answer/on-topic keyword; stops: {stops}; {setup}",
        ),
        "reply_addresses_question_raw_ratio": metric(
            got.addresses_raw, "ratio", "(reference)", f"raw model output (up to max_tokens); {setup}"
        ),
        "reply_spoken_p90_s": metric(
            percentile(durations, 90), "s", "< 12", f"shaped replies through Piper joe-medium; {setup}"
        ),
        "reply_spoken_raw_p90_s": metric(
            percentile(raw_durations, 90),
            "s",
            "(reference)",
            f"raw replies at Piper's {per_char:.3f} s/char measured on the shaped ones; {setup}",
        ),
        "reply_token_estimate_ratio": metric(
            got.token_estimate_ratio,
            "ratio",
            "0.8-1.2",
            "estimate_tokens (the budget's count) / SmolLM2 tokens streamed, over all raw replies",
        ),
    }


async def _compare(samples: int, limit_sets: dict[str, ReplyLimits], dump: Path | None) -> None:
    conversation = ConversationSettings()
    prompts = dict(CANDIDATES)
    if conversation.system_prompt not in prompts.values():
        prompts["default"] = conversation.system_prompt
    by_prompt = await collect(prompts, samples, dump)
    for name, limits in limit_sets.items():
        print(f"\nlimits {name}: {limits}")
        for prompt, replies in by_prompt.items():
            for sample in replies:
                sample.shaped, sample.stop_reason = [], None
                shape(sample, limits, conversation.first_clause_words)
            print(figures(replies, limits).row(prompt))


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replies")
    parser.add_argument("--candidates", action="store_true", help="compare CANDIDATES, save nothing")
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--dump", type=Path, help="with --candidates: write the raw replies here (JSON)")
    args = parser.parse_args(argv)
    if args.candidates:
        limit_sets = {
            "default": ConversationSettings().reply,
            "3 sentences, 60 tokens": ReplyLimits(max_sentences=3, max_tokens=60),
        }
        asyncio.run(_compare(args.samples, limit_sets, args.dump))
        return 0
    for name, m in asyncio.run(_run(args.samples)).items():
        print(f"{name:40} {m.value:8.4g} {m.unit:6} {m.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
