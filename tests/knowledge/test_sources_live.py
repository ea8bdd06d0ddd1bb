"""The sources feeding a running knowledge base, end to end: a file saved in the watched folder and
a row changed in a source table (captured by triggers) become retrievable through the real
RocketMQ broker, real e5 and Milvus Lite; an edit replaces what was known and a delete removes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.knowledge.conftest import NodeFactory, eventually, settled
from voiceagent.knowledge.node import KnowledgeNode
from voiceagent.knowledge.settings import FolderSourceSettings, TableSourceSettings

pytestmark = [pytest.mark.rocketmq, pytest.mark.models, pytest.mark.integration]


async def ask(node: KnowledgeNode, question: str) -> list[str]:
    """What the index holds closest to the question (the retriever's relevance gate aside: this
    is about what is in the index)."""
    assert node.index is not None and node.retriever.embeddings is not None
    [vector] = await node.retriever.embeddings.embed_queries([question])
    return [f"{h.doc_id}: {h.text}" for h in await node.index.search(question, vector, limit=3)]


async def test_a_file_saved_in_the_watched_folder_is_retrievable_and_its_edits_replace_it(
    tmp_path: Path, knowledge_node: NodeFactory
) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "parking.md").write_text("# Parking\n\nGuests park free in the garage on level -2.\n")
    node = await knowledge_node(folder=FolderSourceSettings(path=str(folder), debounce_s=0.1))
    await settled(node, "folder:parking.md", "indexed")  # there before the node started
    assert any("level -2" in hit for hit in await ask(node, "Where can I park my car?"))

    (folder / "parking.md").write_text("# Parking\n\nThe garage is closed; guests park on Hill Street.\n")
    hits = await eventually(lambda: ask(node, "Where can I park my car?"), lambda h: "Hill" in "".join(h))
    assert not any("level -2" in hit for hit in hits), hits  # the new text in, the old one out at once

    (folder / "parking.md").unlink()
    await settled(node, "folder:parking.md", "deleted")
    assert not any(hit.startswith("folder:parking.md") for hit in await ask(node, "Where can I park my car?"))


async def test_a_row_changed_in_the_source_table_is_retrievable(
    tmp_path: Path, knowledge_node: NodeFactory
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}"
    source = create_async_engine(url)
    async with source.begin() as conn:
        await conn.execute(text("CREATE TABLE faq (id INTEGER PRIMARY KEY, question TEXT, answer TEXT)"))
        await conn.execute(text("INSERT INTO faq VALUES (1, 'Pets', 'Dogs up to 15 kg are welcome.')"))
    table = TableSourceSettings(
        name="faq", url=url, table="faq", title_column="question", text_columns=("answer",), poll_s=0.2
    )
    node = await knowledge_node(tables=(table,))
    try:
        await settled(node, "faq:1", "indexed")  # the initial load
        async with source.begin() as conn:
            await conn.execute(
                text("INSERT INTO faq VALUES (2, '早餐', '早餐在花园餐厅供应，早上七点到十点。')")
            )
            await conn.execute(text("UPDATE faq SET answer = 'Cats are welcome too.' WHERE id = 1"))
        await settled(node, "faq:2", "indexed")
        assert any("花园餐厅" in hit for hit in await ask(node, "早餐在哪里吃？"))
        hits = await eventually(lambda: ask(node, "Can I bring my pet?"), lambda h: "Cats" in "".join(h))
        assert not any("15 kg" in hit for hit in hits), hits

        async with source.begin() as conn:
            await conn.execute(text("DELETE FROM faq WHERE id = 2"))
        await settled(node, "faq:2", "deleted")
    finally:
        await source.dispose()
