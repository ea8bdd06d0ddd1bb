"""What a delivered outreach event's stage log must show.

The publisher writes ``published`` after the broker took the message, and a node may route it
(even speak it) before that write lands: the ledger allows it, so the log's order of
``published`` against the delivery stages is a race, not a defect. Everything else is ordered."""

DELIVERED = ["decided", "routed", "spoken", "heard", "acked"]


def assert_delivered_once(stages: list[str]) -> None:
    assert stages.count("published") == 1, stages
    assert stages.index("published") > stages.index("decided"), stages
    assert [s for s in stages if s != "published"] == DELIVERED, stages
