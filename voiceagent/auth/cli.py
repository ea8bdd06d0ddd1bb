"""``voiceagent admin …``: dashboard users, API tokens and sessions, from the command line.

Each command migrates the store first (so it works on a fresh install, before the first
``serve``) and writes an audit entry with actor "cli". Refusals are one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from voiceagent.auth import accounts
from voiceagent.auth.accounts import AccountError, Role
from voiceagent.auth.audit import AuditLog
from voiceagent.auth.passwords import PasswordRejected, check_policy
from voiceagent.store import Database

if TYPE_CHECKING:
    from voiceagent.config import Settings

EXIT_OK, EXIT_FAILURE = 0, 1
ROLES = [role.value for role in Role]

Operation = Callable[[Database, "Settings", argparse.Namespace], Awaitable[None]]


def admin_commands(admin: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Fill in the ``admin`` command's subcommands (``common`` carries ``--config``)."""
    groups = admin.add_subparsers(title="admin commands", metavar="WHAT", required=True)

    user = groups.add_parser("user", help="dashboard users").add_subparsers(
        title="user commands", metavar="ACTION", required=True
    )
    add = user.add_parser("add", parents=[common], help="add a user (asks for the password twice)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    _password_stdin(add)
    add.set_defaults(handler=_command(_user_add))
    user.add_parser("list", parents=[common], help="list users").set_defaults(handler=_command(_user_list))
    remove = user.add_parser("remove", parents=[common], help="remove a user and end their sessions")
    remove.add_argument("name")
    remove.set_defaults(handler=_command(_user_remove))
    passwd = user.add_parser("passwd", parents=[common], help="set a new password (ends their sessions)")
    passwd.add_argument("name")
    _password_stdin(passwd)
    passwd.set_defaults(handler=_command(_user_passwd))
    role = user.add_parser("role", parents=[common], help="change a user's role (ends their sessions)")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    role.set_defaults(handler=_command(_user_role))

    disable = user.add_parser(
        "disable",
        parents=[common],
        help="refuse a user's logins and end their sessions (kept for the audit log)",
    )
    disable.add_argument("name")
    disable.set_defaults(handler=_command(_user_disable))
    enable = user.add_parser("enable", parents=[common], help="let a disabled user log in again")
    enable.add_argument("name")
    enable.set_defaults(handler=_command(_user_enable))

    token = groups.add_parser("token", help="API tokens for scripts (Authorization: Bearer)").add_subparsers(
        title="token commands", metavar="ACTION", required=True
    )
    create = token.add_parser("create", parents=[common], help="create a token; prints it alone, once")
    create.add_argument("name")
    create.add_argument("--role", choices=ROLES, required=True)
    create.set_defaults(handler=_command(_token_create))
    token.add_parser("list", parents=[common], help="list live tokens").set_defaults(
        handler=_command(_token_list)
    )
    revoke = token.add_parser("revoke", parents=[common], help="revoke a token")
    revoke.add_argument("name")
    revoke.set_defaults(handler=_command(_token_revoke))

    sessions = groups.add_parser("sessions", help="dashboard logins").add_subparsers(
        title="sessions commands", metavar="ACTION", required=True
    )
    end = sessions.add_parser("revoke", parents=[common], help="end all sessions of a user")
    end.add_argument("name")
    end.set_defaults(handler=_command(_sessions_revoke))


def _password_stdin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )


def _command(operation: Operation) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        async def go() -> None:
            database = Database(settings.store)
            try:
                await database.ping()
                await _migrate_quietly(database)
                await operation(database, settings, args)
            finally:
                await database.close()

        try:
            asyncio.run(go())
        except (AccountError, PasswordRejected) as exc:
            print(f"voiceagent: error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        return EXIT_OK

    return run


async def _migrate_quietly(database: Database) -> None:
    """Migrate without alembic's INFO lines: these commands are about accounts, not the schema."""
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(max(level, logging.WARNING))
    try:
        await database.migrate()
    finally:
        alembic_log.setLevel(level)


def _read_password(args: argparse.Namespace, min_length: int) -> str:
    """From stdin's first line, or typed twice without echo; checked before the store is touched."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise PasswordRejected("the passwords differ")
    check_policy(password, min_length)
    return password


def _audit(database: Database, action: str, target: str, detail: str | None = None) -> Awaitable[None]:
    return AuditLog(database).record(None, action, target=target, detail=detail, actor="cli")


async def _user_add(database: Database, settings: Settings, args: argparse.Namespace) -> None:
    min_length = settings.security.admin.password_min_length
    accounts.check_name(args.name)
    if await accounts.get_user(database, args.name) is not None:
        raise AccountError(f"admin user {args.name!r} already exists")
    password = _read_password(args, min_length)
    await accounts.create_user(database, args.name, password, args.role, min_length=min_length)
    await _audit(database, "user.add", f"user:{args.name}", f"role {args.role}")
    print(f"added admin user {args.name} ({args.role})")


async def _user_list(database: Database, _settings: Settings, _args: argparse.Namespace) -> None:
    for user in await accounts.list_users(database):
        state = "  disabled" if user.disabled else ""
        print(f"{user.username:<24} {user.role.value:<9} created {user.created_at:%Y-%m-%d %H:%M}Z{state}")


async def _user_remove(database: Database, _settings: Settings, args: argparse.Namespace) -> None:
    await accounts.remove_user(database, args.name)
    await _audit(database, "user.remove", f"user:{args.name}")
    print(f"removed admin user {args.name}")


async def _user_passwd(database: Database, settings: Settings, args: argparse.Namespace) -> None:
    min_length = settings.security.admin.password_min_length
    if await accounts.get_user(database, args.name) is None:
        raise AccountError(f"no admin user {args.name!r}")
    ended = await accounts.set_password(
        database, args.name, _read_password(args, min_length), min_length=min_length
    )
    await _audit(database, "user.passwd", f"user:{args.name}", f"{ended} sessions ended")
    print(f"password of {args.name} changed; {ended} sessions ended")


async def _user_role(database: Database, _settings: Settings, args: argparse.Namespace) -> None:
    ended = await accounts.set_role(database, args.name, args.role)
    await _audit(database, "user.role", f"user:{args.name}", f"role {args.role}; {ended} sessions ended")
    print(f"{args.name} is now {args.role}; {ended} sessions ended")


async def _user_disable(database: Database, _settings: Settings, args: argparse.Namespace) -> None:
    ended = await accounts.set_disabled(database, args.name, True)
    await _audit(database, "user.disable", f"user:{args.name}", f"{ended} sessions ended")
    print(f"{args.name} is disabled; {ended} sessions ended")


async def _user_enable(database: Database, _settings: Settings, args: argparse.Namespace) -> None:
    await accounts.set_disabled(database, args.name, False)
    await _audit(database, "user.enable", f"user:{args.name}")
    print(f"{args.name} may log in again")


async def _token_create(database: Database, _settings: Settings, args: argparse.Namespace) -> None:
    token = await accounts.create_token(database, args.name, args.role, created_by="cli")
    await _audit(database, "token.create", f"token:{args.name}", f"role {args.role}")
    print(token, flush=True)  # alone on stdout, for TOKEN=$(voiceagent admin token create …)
    print(f"token {args.name} ({args.role}) created; it is not shown again", file=sys.stderr)


async def _token_list(database: Database, _settings: Settings, _args: argparse.Namespace) -> None:
    for token in await accounts.list_tokens(database):
        used = f"{token.last_used_at:%Y-%m-%d %H:%M}Z" if token.last_used_at else "never"
        print(
            f"{token.name:<24} {token.role.value:<9} created {token.created_at:%Y-%m-%d %H:%M}Z "
            f"by {token.created_by}, last used {used}"
        )


async def _token_revoke(database: Database, _settings: Settings, args: argparse.Namespace) -> None:
    await accounts.revoke_token(database, args.name)
    await _audit(database, "token.revoke", f"token:{args.name}")
    print(f"revoked token {args.name}")


async def _sessions_revoke(database: Database, _settings: Settings, args: argparse.Namespace) -> None:
    ended = await accounts.revoke_sessions(database, args.name)
    await _audit(database, "sessions.revoke", f"user:{args.name}", f"{ended} sessions ended")
    print(f"{ended} sessions of {args.name} ended")
