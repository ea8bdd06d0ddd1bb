"""One real e5 engine per test module: loading it takes seconds, and nothing in it is per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from voiceagent.engines.embeddings.e5 import E5Embeddings


@pytest.fixture(scope="module")
def e5() -> Iterator[E5Embeddings]:
    engine = E5Embeddings(batch_size=8)
    yield engine
    engine.close()
