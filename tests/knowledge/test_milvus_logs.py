"""Milvus Lite's one expected refusal (pymilvus asking it for AllocTimestamp) is not logged as an
error at every start; any other error of its gRPC server still is."""

from __future__ import annotations

import logging
import sys

from voiceagent.knowledge.milvus import _UnimplementedByMilvusLite


def _record(raise_from: str) -> logging.LogRecord:
    def AllocTimestamp() -> None:  # named like the gRPC method
        raise NotImplementedError("Method not implemented!")

    def Search() -> None:
        raise NotImplementedError("Method not implemented!")

    try:
        {"AllocTimestamp": AllocTimestamp, "Search": Search}[raise_from]()
    except NotImplementedError:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "grpc._server", logging.ERROR, __file__, 1, "Exception calling application", (), exc_info
    )


def test_only_the_timestamp_refusal_is_dropped() -> None:
    quiet = _UnimplementedByMilvusLite()
    assert quiet.filter(_record("AllocTimestamp")) is False
    assert quiet.filter(_record("Search")) is True
    assert (
        quiet.filter(logging.LogRecord("grpc._server", logging.ERROR, __file__, 1, "boom", (), None)) is True
    )
