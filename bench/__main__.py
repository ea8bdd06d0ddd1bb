"""`python -m bench [suite ...]`: run suites, merge into results.json, render RESULTS.md, print it."""

from __future__ import annotations

import sys

from bench import (
    asr_vad,
    call_memory,
    calls,
    conversation_browser,
    dashboard,
    events,
    foundation,
    intents,
    jobs,
    knowledge,
    knowledge_answers,
    llm,
    memory,
    outreach,
    outreach_scale,
    replies,
    soak,
    tts,
    turn_model,
)
from bench.results import RESULTS_MD, save

SUITES = {
    "foundation": foundation.run,
    "events": events.run,
    "asr_vad": asr_vad.run,
    "tts": tts.run,
    "llm": llm.run,
    "calls": calls.run,
    "replies": replies.run,  # ~5 min: 42 written questions x 5 samples through the local LLM
    "turn_model": turn_model.run,  # ~8-10 min: ~500 Piper clips through Whisper and Smart Turn v3
    "conversation": conversation_browser.run,  # ~6 min: the scripted 14-turn browser call (headline)
    "memory": memory.run,
    "call_memory": call_memory.run,
    "intents": intents.run,
    "knowledge_answers": knowledge_answers.run,  # ~8 min: the shipped questions asked 4 ways of the local LLM
    "knowledge": knowledge.run,  # ~8 min: ingest, freshness, 10k/100k-chunk queries, recall by mode
    "outreach": outreach.run,
    "outreach_scale": outreach_scale.run,  # ~2.5 min: one analysis run over 100k users / 1M turns
    "dashboard": dashboard.run,  # ~4-5 min: live-update latency (SQLite, screen, PostgreSQL), 50 dashboards
    "jobs": jobs.run,  # ~14 min: per-kind throughput, a burst's queue wait, a call beside two busy workers
    "soak": soak.run,  # 30 minutes (SOAK_MINUTES); last, so a long run does not hold up the rest
}


def main(argv: list[str]) -> int:
    chosen = argv or list(SUITES)
    unknown = [name for name in chosen if name not in SUITES]
    if unknown:
        print(
            f"unknown suite(s): {', '.join(unknown)}; choose from {', '.join(SUITES)}",
            file=sys.stderr,
        )
        return 2
    for name in chosen:
        print(f"bench: running {name}", flush=True)
        save(SUITES[name]())
    print(RESULTS_MD.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
