"""The one place a node decides whether it believes who a caller is, before it speaks an outreach
prompt — possibly personal — in their call.

How a call's user id is known is set when the call starts (``CallSession.identity``, from
``POST /api/calls``: auth/callers.py): signed by the host application, claimed by the page, or
made up for an anonymous caller. The policy here trusts by that, never by the id itself.
"""

from __future__ import annotations

from typing import Protocol

from voiceagent.calls.session import Identity


class Caller(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def user_id(self) -> str: ...

    @property
    def identity(self) -> Identity: ...


class CallerTrust(Protocol):
    def trusts(self, caller: Caller) -> bool:
        """Whether the caller is told what is pending for their user id: decided before this
        call, and possibly personal."""
        ...

    def may_hear(self, caller: Caller) -> bool:
        """Whether an event for the caller's user id may be spoken in this live call."""
        ...


class IdentityTrust:
    """Signed callers are trusted; claimed ones only where ``security.callers.allow_unsigned``
    says claims are believed (local use); anonymous ones never with what is pending (their id was
    made up for this one call, so nothing pending can be theirs)."""

    def __init__(self, allow_unsigned: bool) -> None:
        self.allow_unsigned = allow_unsigned

    def trusts(self, caller: Caller) -> bool:
        return caller.identity == "signed" or (caller.identity == "claimed" and self.allow_unsigned)

    def may_hear(self, caller: Caller) -> bool:
        # An anonymous caller's id names only their call: an event for it (a check-in) was
        # decided about that very call.
        return caller.identity == "anonymous" or self.trusts(caller)
