"""Intent analysis over stored turns: what callers want, found offline (embeddings) or by an LLM.

Construct from settings (the analysis job's wiring)::

    intents = load_intents(Path(settings.outreach.intents_file))
    embedding = EmbeddingIntentAnalyzer(engines.embeddings, intents)  # the shared E5Embeddings
    llm = LLMIntentAnalyzer.from_settings(intents, settings.llm)  # only when settings.llm.base_url
"""

from voiceagent.outreach.analysis.base import (
    AnalysisError,
    BatchFailure,
    IntentAnalyzer,
    IntentFinding,
    Utterance,
    UtteranceLabel,
    aggregate,
)

__all__ = [
    "AnalysisError",
    "BatchFailure",
    "IntentAnalyzer",
    "IntentFinding",
    "Utterance",
    "UtteranceLabel",
    "aggregate",
]
