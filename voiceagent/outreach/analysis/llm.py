"""Intent extraction by an LLM behind an OpenAI-compatible endpoint: one chat completion per batch.

Worth it only with a capable model (the packaged SmolLM2-135M is not one), so the caller enables
it when ``llm.base_url`` points somewhere. The model answers JSON, which is checked with pydantic
before anything is believed: a reply that is not JSON, not the expected shape, or cut off is an
:class:`AnalysisError` for that batch (logged, counted, its turns left without findings); intent
names the model made up and turn ids it was not given are dropped. Utterances are sent as JSON
strings, so what a caller said cannot masquerade as instructions in the prompt's structure.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import openai
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from voiceagent.config import LLMSettings
from voiceagent.engines.llm.openai_compat import api_error_message, innermost_reason
from voiceagent.outreach.analysis.base import AnalysisError, IntentAnalyzer, Utterance, UtteranceLabel
from voiceagent.outreach.intents import Intents

log = logging.getLogger(__name__)

BATCH_SIZE = 20  # utterances per completion: long enough to amortise the prompt, short to stay exact
TOKENS_PER_UTTERANCE = 40  # reply budget per utterance ({"turn_id": ..., "intent": ..., ...})
_CONNECT_TIMEOUT_S = 5.0
_NO_INTENT = {"none", "null", ""}

SYSTEM_PROMPT = """\
You label what callers of a customer-service phone line want. Utterances are speech \
transcripts, in English or Chinese, and may be lowercase, unpunctuated or contain fillers.

Intents:
{intents}

For every utterance, choose the one intent it asks for, or null if it asks for none of them \
(greetings, thanks, small talk, requests about anything else). confidence is your probability, \
0 to 1, that the label is right.

Answer with JSON only, no other text:
{{"labels": [{{"turn_id": <the utterance's turn_id>, "intent": <an intent name or null>, \
"confidence": <0 to 1>}}]}}
with exactly one entry per utterance."""


class _RawLabel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    turn_id: int
    intent: str | None
    confidence: float = Field(ge=0, le=1)


_LABELS = TypeAdapter(list[_RawLabel])


class LLMIntentAnalyzer(IntentAnalyzer):
    name = "llm"

    def __init__(
        self,
        intents: Intents,
        *,
        base_url: str,
        api_key: str = "not-needed",
        model: str = "local",
        request_timeout_s: float = 30.0,
        batch_size: int = BATCH_SIZE,
        json_mode: bool = False,
    ) -> None:
        """``json_mode`` sends ``response_format={"type": "json_object"}``: OpenAI, vLLM and
        llama.cpp then constrain the reply to JSON; off by default because not every
        OpenAI-compatible server accepts the parameter (those answer HTTP 400)."""
        super().__init__()
        if not base_url:
            raise ValueError("the llm intent analyzer needs a base_url (llm.base_url)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.intents = intents
        self.names = {intent.name for intent in intents.intents}
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.request_timeout_s = request_timeout_s
        self.batch_size = batch_size
        self.json_mode = json_mode
        self.dropped_labels = 0  # unknown intents or turn ids the model invented, since construction
        self.system_prompt = SYSTEM_PROMPT.format(intents=_describe(intents))
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or "not-needed",
            max_retries=0,  # the next scheduled run is the retry; a silent one would double the wait
            timeout=openai.Timeout(request_timeout_s, connect=min(_CONNECT_TIMEOUT_S, request_timeout_s)),
        )

    @classmethod
    def from_settings(cls, intents: Intents, settings: LLMSettings, **options: Any) -> LLMIntentAnalyzer:
        if not settings.base_url:
            raise ValueError("llm.base_url is not set: the llm intent analyzer needs an external model")
        return cls(
            intents,
            base_url=settings.base_url,
            api_key=settings.api_key.get_secret_value(),
            model=settings.model,
            request_timeout_s=settings.request_timeout_s,
            **options,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def label(self, utterances: Sequence[Utterance]) -> list[UtteranceLabel]:
        spoken = [u for u in utterances if u.text.strip()]
        labels: list[UtteranceLabel] = []
        for start in range(0, len(spoken), self.batch_size):
            batch = spoken[start : start + self.batch_size]
            try:
                labels.extend(await self.label_batch(batch))
            except AnalysisError as exc:
                log.warning(
                    "intent analysis: batch of %d turns from %d skipped: %s",
                    len(batch),
                    batch[0].turn_id,
                    exc,
                )
                self._failed((u.turn_id for u in batch), str(exc))
        return labels

    async def label_batch(self, batch: Sequence[Utterance]) -> list[UtteranceLabel]:
        """Labels for one batch (one completion); AnalysisError says what went wrong."""
        if not batch:
            return []
        content = await self._complete(batch)
        raw = _parse(content)
        by_turn = {u.turn_id: u for u in batch}
        labels: dict[int, UtteranceLabel] = {}
        for item in raw:
            utterance = by_turn.get(item.turn_id)
            intent = item.intent.strip() if item.intent is not None else None
            if intent is not None and intent.lower() in _NO_INTENT:
                intent = None
            if (
                utterance is None
                or item.turn_id in labels
                or (intent is not None and intent not in self.names)
            ):
                # Made up, or a second opinion on a turn already labelled (the first one stands).
                self.dropped_labels += 1
                log.info("intent analysis: dropped a label with turn %s, intent %r", item.turn_id, intent)
                continue
            labels[item.turn_id] = UtteranceLabel(
                turn_id=item.turn_id, user_id=utterance.user_id, intent=intent, confidence=item.confidence
            )
        return list(labels.values())

    async def _complete(self, batch: Sequence[Utterance]) -> str:
        listing = json.dumps(
            [{"turn_id": u.turn_id, "text": u.text.strip()} for u in batch], ensure_ascii=False
        )
        where = f"LLM at {self.base_url}"
        try:
            async with asyncio.timeout(self.request_timeout_s + 1):
                response = await self._client.chat.completions.create(
                    model=self.model,
                    messages=[
                        {"role": "system", "content": self.system_prompt},
                        {"role": "user", "content": f"Utterances:\n{listing}"},
                    ],
                    temperature=0,
                    max_tokens=64 + TOKENS_PER_UTTERANCE * len(batch),
                    response_format={"type": "json_object"} if self.json_mode else openai.omit,
                )
        except (TimeoutError, openai.APITimeoutError):
            raise AnalysisError(f"{where}: no answer within {self.request_timeout_s:g} s") from None
        except openai.APIConnectionError as exc:
            raise AnalysisError(f"{where} is unreachable: {innermost_reason(exc)}") from exc
        except openai.APIStatusError as exc:
            raise AnalysisError(f"{where} answered HTTP {exc.status_code}: {api_error_message(exc)}") from exc
        except (openai.OpenAIError, ValueError) as exc:  # e.g. a 200 body that is not a completion
            raise AnalysisError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
        choices = getattr(response, "choices", None)
        if not choices:
            raise AnalysisError(f"{where} answered without a choice (not a chat completion?)")
        choice = choices[0]
        content = choice.message.content or ""
        if choice.finish_reason == "length":
            raise AnalysisError(f"{where}: reply cut off at max_tokens ({len(content)} characters)")
        return content


def _describe(intents: Intents) -> str:
    lines = []
    for intent in intents.intents:
        examples = " / ".join(
            json.dumps(e, ensure_ascii=False) for u in intent.examples.values() for e in u[:1]
        )
        lines.append(f"- {intent.name}: {intent.description} For example: {examples}")
    return "\n".join(lines)


def _parse(content: str) -> list[_RawLabel]:
    """The labels in a reply: JSON ``{"labels": [...]}`` or a bare list, allowing a code fence
    or prose around it (small models add them even when told not to)."""
    starts = [i for i in (content.find("{"), content.find("[")) if i >= 0]
    if not starts:
        raise AnalysisError(f"model reply is not JSON: {_excerpt(content)}")
    try:
        value, _ = json.JSONDecoder().raw_decode(content, min(starts))
    except json.JSONDecodeError as exc:
        raise AnalysisError(f"model reply is not valid JSON ({exc.msg}): {_excerpt(content)}") from None
    if isinstance(value, dict):
        value = value.get("labels")
    if not isinstance(value, list):
        raise AnalysisError(f'model reply is not {{"labels": [...]}} nor a list: {_excerpt(content)}')
    try:
        return _LABELS.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AnalysisError(f"model reply has a malformed label at labels.{where}: {first['msg']}") from None


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")
