"""The one place a node decides whether it trusts who a caller says they are, before it speaks a
pending prompt — possibly personal — to them.

Today a caller's ``user_id`` is whatever the page claims. Signed caller identity (issue 12) plugs
in here: a policy that checks the call's verified identity instead of the claim.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)


class Caller(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def user_id(self) -> str: ...


class CallerTrust(Protocol):
    def trusts(self, caller: Caller) -> bool: ...


class ClaimedIdentity:
    """Trust the claimed user id or not, as configured (``outreach.trust_claimed_user_ids``).
    Anonymous callers (no id given: ``anon-…``) are never trusted with someone's prompt."""

    def __init__(self, trust_claims: bool) -> None:
        self.trust_claims = trust_claims

    def trusts(self, caller: Caller) -> bool:
        if caller.user_id.startswith("anon-"):
            return False
        if not self.trust_claims:
            log.info("call %s: claimed user %r not trusted with pending prompts", caller.id, caller.user_id)
        return self.trust_claims
