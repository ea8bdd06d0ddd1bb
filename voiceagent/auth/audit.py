"""The audit log: who changed what, when and from where, kept in the shared store.

Every change a signed-in caller is let through to is written here: routes that know what the
change means write a specific entry (``outreach.ask`` to ``ann``) with :meth:`AuditLog.record_change`;
any other is written by :class:`voiceagent.auth.changes.AuditChanges` as its method, route and
HTTP status, so a new route cannot change things unrecorded.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from starlette.requests import HTTPConnection

from voiceagent.store.database import Database
from voiceagent.store.models import AuditLogEntry

if TYPE_CHECKING:
    from voiceagent.admin.schemas import AuditEntry
    from voiceagent.auth.guard import Principal

log = logging.getLogger(__name__)

# Keys in the request's scope["state"]: who was admitted (set by the guard), and whether the
# route wrote its own entry (so the middleware does not write a second one).
PRINCIPAL_KEY = "voiceagent_principal"
AUDITED_KEY = "voiceagent_audited"


def client_address(connection: HTTPConnection) -> str:
    """The peer's address (a trusted proxy's X-Forwarded-For already applied by the server)."""
    return connection.client.host[:64] if connection.client else "unknown"


def _cut(value: str | None, length: int) -> str | None:
    # NUL is replaced: PostgreSQL refuses it in text, and a caller may pass what a client sent.
    return None if value is None else value[:length].replace("\x00", "\ufffd")


class AuditLog:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def record(
        self,
        principal: Principal | None,
        action: str,
        *,
        target: str | None = None,
        detail: str | None = None,
        address: str | None = None,
        actor: str | None = None,
    ) -> None:
        """Write one entry. Never raises: the action it records has happened already, and a
        failed write is logged as an error instead. ``actor`` overrides the principal's name
        (e.g. the account a failed login tried)."""
        entry = AuditLogEntry(
            actor=_cut(actor if actor is not None else principal.name if principal else "anonymous", 128),
            role=principal.role.value if principal else "",
            action=_cut(action, 64),
            target=_cut(target, 256),
            detail=_cut(detail, 500),
            address=_cut(address, 64),
        )
        try:
            async with self.database.sessions.begin() as session:
                session.add(entry)
        except Exception as exc:
            log.error("audit entry %s by %r not written: %s", action, entry.actor, exc)

    async def record_change(
        self, connection: HTTPConnection, action: str, *, target: str | None = None, detail: str | None = None
    ) -> None:
        """The entry for a change the guard admitted on ``connection``, by whom it admitted."""
        state = connection.scope.setdefault("state", {})
        state[AUDITED_KEY] = True
        principal = state.get(PRINCIPAL_KEY)
        await self.record(principal, action, target=target, detail=detail, address=client_address(connection))

    async def page(
        self, *, limit: int = 50, offset: int = 0, action: str | None = None, actor: str | None = None
    ) -> tuple[list[AuditEntry], int]:
        """Entries newest first, and how many match in all: ``action`` is a prefix ("login" finds
        login.failed too, "POST" every change written by its route), ``actor`` a whole name."""
        # Imported here: the dashboard package may well import this module in turn.
        from voiceagent.admin.schemas import AuditEntry

        query = select(AuditLogEntry)
        if action is not None:
            query = query.where(AuditLogEntry.action.startswith(action, autoescape=True))
        if actor is not None:
            query = query.where(AuditLogEntry.actor == actor)
        async with self.database.sessions() as session:
            total = await session.scalar(select(func.count()).select_from(query.subquery()))
            rows = await session.scalars(
                query.order_by(AuditLogEntry.at.desc(), AuditLogEntry.id.desc())
                .limit(max(limit, 0))
                .offset(max(offset, 0))
            )
            return [AuditEntry.model_validate(row) for row in rows], int(total or 0)
