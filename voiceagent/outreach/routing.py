"""How an outreach event finds the node that holds the user's call: broker tags.

Every node reads the outreach topic in a consumer group of its own, filtered by its own tag
(``node-<id>``); the broker filters by tag on its side (a hash in each consume-queue entry), so a
node receives only the events meant for its calls. Events for a user the publisher could not
place carry the tag ``unrouted`` and go to one shared group that every node joins (each event to
one of them), which routes them again or makes them pending. See the README ("Routing outreach")
for why this scheme and how it behaves with 100 nodes.
"""

from __future__ import annotations

import hashlib
import re

UNROUTED_TAG = "unrouted"
ROUTER_GROUP = "voiceagent-outreach-router"


def _slug(node_id: str) -> str:
    # Tags and group names allow [A-Za-z0-9_-]; the hash keeps "a.b" and "a_b" apart.
    digest = hashlib.sha1(node_id.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', node_id)[:80]}-{digest}"


def node_tag(node_id: str) -> str:
    return f"node-{_slug(node_id)}"


def node_group(node_id: str) -> str:
    return f"voiceagent-node-{_slug(node_id)}"
