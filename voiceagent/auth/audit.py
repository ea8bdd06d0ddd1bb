"""The audit log: who changed what, when and from where, kept in the shared store.

Every change a signed-in caller is let through to is written here, by one writer:
:class:`voiceagent.auth.changes.AuditChanges`, around the whole app. A route that knows what its
change means says so with :func:`describe_change` (``outreach.ask`` to ``ann``, the event id);
any other change is written as its method, route and HTTP status, so a route added later cannot
change things unrecorded. Logins (which admit nobody yet) and the CLI write with
:meth:`AuditLog.record` themselves.
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

# Keys in the request's scope["state"]: who the guard admitted, and what the route said its
# change means.
PRINCIPAL_KEY = "voiceagent_principal"
CHANGE_KEY = "voiceagent_change"


def describe_change(
    connection: HTTPConnection, action: str, *, target: str | None = None, detail: str | None = None
) -> None:
    """Name this request's change for the audit log (written by the middleware, for whoever the
    guard admitted, before the answer goes out); the last description wins."""
    connection.scope.setdefault("state", {})[CHANGE_KEY] = (action, target, detail)


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

    async def page(
        self, *, limit: int = 50, offset: int = 0, action: str | None = None, actor: str | None = None
    ) -> tuple[list[AuditEntry], int]:
        """Entries newest first, and how many match in all: ``action`` is a prefix ("login" finds
        login.failed too, "POST" every change written by its route), ``actor`` a whole name."""
        # Imported here: the dashboard package may well import this module in turn.
        from voiceagent.admin.schemas import AuditEntry

        query = select(AuditLogEntry)
        if action is not None:
            # substr, not LIKE: SQLite's LIKE ignores case and PostgreSQL's does not.
            query = query.where(func.substr(AuditLogEntry.action, 1, len(action)) == action)
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
