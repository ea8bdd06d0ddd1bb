"""Who a caller is: a user id is believed only inside a short-lived token the host application
signed (JWT, HS256, with ``security.callers.secret``), so a page cannot take someone else's id —
and with it the outreach prompts meant for them.

The host app mints one token per call (:func:`mint` is the whole recipe) and hands it to the page;
``POST /api/calls`` verifies it (server/calls_api.py). Short-lived because the page holds it: a
token that leaks is worth little for long.
"""

from __future__ import annotations

import re
import time
from typing import Any

import jwt

from voiceagent.auth.settings import CallerIdentitySettings

ALGORITHM = "HS256"  # the one accepted: never "none", never an algorithm the token picks
MAX_TOKEN_CHARS = 4096
MIN_SECRET_BYTES = 32  # HS256's own output size (RFC 7518 §3.2): shorter keys can be guessed offline
USER_ID = re.compile(r"[A-Za-z0-9_.@:-]{1,64}")  # what POST /api/calls accepts as a user_id


class IdentityRefused(Exception):
    """The token proves nothing about the caller; ``reason`` is safe to tell them (it never
    quotes the token or the secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def validate(settings: CallerIdentitySettings) -> None:
    """Refuse, before the node starts, a configuration under which nobody can sign a caller in
    or anyone could: ValueError with a message for the operator."""
    secret = settings.secret.get_secret_value().encode()
    if not secret and not settings.allow_unsigned:
        raise ValueError(
            "security.callers.secret is empty and security.callers.allow_unsigned is false, so no "
            "caller could give a user id: set the secret the host application signs identity tokens "
            f"with (at least {MIN_SECRET_BYTES} bytes; VOICEAGENT_SECURITY__CALLERS__SECRET)"
        )
    if secret and len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"security.callers.secret is {len(secret)} bytes, too short to sign identity tokens "
            f"safely: use at least {MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`)"
        )


def mint(secret: str, user_id: str, ttl_s: float = 300) -> str:
    """A token for ``user_id``, made as the host application makes one (README, "Caller identity")."""
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + int(ttl_s)}, secret, algorithm=ALGORITHM)


class CallerVerifier:
    """Checks the identity tokens of ``POST /api/calls`` against ``security.callers``."""

    def __init__(self, settings: CallerIdentitySettings) -> None:
        self.settings = settings
        self._key = settings.secret.get_secret_value().encode()

    @property
    def allow_unsigned(self) -> bool:
        return self.settings.allow_unsigned

    def verify(self, token: str) -> str:
        """The user id the token was signed for, or IdentityRefused saying why not."""
        if len(token) > MAX_TOKEN_CHARS:
            raise IdentityRefused(f"longer than {MAX_TOKEN_CHARS} characters")
        if not self._key:  # an empty HMAC key would make anyone a signer
            raise IdentityRefused("this node has no security.callers.secret to check it with")
        leeway = self.settings.leeway_s
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[ALGORITHM], leeway=leeway, options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise IdentityRefused("expired") from None
        except jwt.InvalidSignatureError:
            raise IdentityRefused("bad signature") from None
        except jwt.InvalidAlgorithmError:
            raise IdentityRefused(f"not signed with {ALGORITHM}") from None
        except jwt.MissingRequiredClaimError:
            raise IdentityRefused("no expiry (exp)") from None
        except jwt.ImmatureSignatureError:
            raise IdentityRefused("not valid yet (iat or nbf in the future)") from None
        except jwt.InvalidAudienceError:  # meant for some other service of the host's
            raise IdentityRefused("meant for another audience (aud)") from None
        except jwt.PyJWTError:
            raise IdentityRefused("malformed") from None
        # PyJWT takes numeric strings for these; the arithmetic below wants numbers.
        exp, iat = _number(claims["exp"]), _number(claims.get("iat", 0))
        if exp is None or iat is None:
            raise IdentityRefused("malformed")
        max_ttl_s = self.settings.max_ttl_s
        if exp - time.time() > max_ttl_s + leeway or ("iat" in claims and exp - iat > max_ttl_s):
            raise IdentityRefused("valid for longer than security.callers.max_ttl_s")
        subject = claims.get("sub")
        if not subject:
            raise IdentityRefused("no subject")
        if not isinstance(subject, str) or not USER_ID.fullmatch(subject):
            raise IdentityRefused("its subject is not a user id (1-64 of A-Z a-z 0-9 _ . @ : -)")
        return subject


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
