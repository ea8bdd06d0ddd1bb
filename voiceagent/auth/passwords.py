"""Password hashing (argon2id, argon2-cffi's default parameters) and the password policy.

Hashing and verifying take tens of milliseconds of CPU and 64 MiB on purpose: callers on the event
loop run them in a thread (``asyncio.to_thread``) so one login never stalls the calls.
"""

from __future__ import annotations

import functools
import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MAX_PASSWORD_LENGTH = 1024  # argon2 takes any length; this bounds the work one request can ask for

_hasher = PasswordHasher()
# Each hash holds 64 MiB while it runs: a flood of logins from many addresses queues here
# instead of taking the node's memory.
_slots = threading.BoundedSemaphore(4)


class PasswordRejected(ValueError):
    """The password does not meet the policy; the message says why (never the password)."""


def check_policy(password: str, min_length: int) -> None:
    if len(password) < min_length:
        raise PasswordRejected(f"password too short: at least {min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordRejected(f"password too long: at most {MAX_PASSWORD_LENGTH} characters")
    if not password.strip():
        raise PasswordRejected("password is only blanks")


def hash_password(password: str) -> str:
    with _slots:
        return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        with _slots:
            return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's defaults."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@functools.cache
def dummy_hash() -> str:
    """A hash of nothing anyone knows, with today's parameters: an unknown user's login is checked
    against it, so it takes as long as a real user's and timing does not tell who exists."""
    return hash_password(secrets.token_urlsafe(32))


def verify_or_dummy(password_hash: str | None, password: str) -> bool:
    """Verify against ``password_hash``, or spend the same time and fail when there is none."""
    if password_hash is None:
        verify_password(dummy_hash(), password)
        return False
    return verify_password(password_hash, password)
