"""Which kinds exist, by name, imported on demand ("module:Class")."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from voiceagent.jobs.kinds.base import JobKind

BUILTIN_KINDS = {
    "synthesize": "voiceagent.jobs.kinds.synthesize:SynthesizeKind",
    "transcribe": "voiceagent.jobs.kinds.transcribe:TranscribeKind",
    "summarize_call": "voiceagent.jobs.kinds.summarize_call:SummarizeCallKind",
}


class KindRegistry:
    def __init__(self, extra: Sequence[str] = ()) -> None:
        self._kinds: dict[str, type[JobKind]] = {}
        for target in [*BUILTIN_KINDS.values(), *extra]:
            kind = _import(target)
            self._kinds[kind.name] = kind

    def get(self, name: str) -> type[JobKind] | None:
        return self._kinds.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._kinds)


def _import(target: str) -> type[JobKind]:
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"job kind {target!r}: expected 'module:Class'")
    kind = getattr(importlib.import_module(module_name), attribute)
    if not (isinstance(kind, type) and issubclass(kind, JobKind)):
        raise ValueError(f"job kind {target!r} is not a JobKind")
    return kind
