"""Who may use the server: callers' signed identity, and the admin users' sessions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CallerIdentitySettings(_Section):
    """A caller's ``user_id`` is believed only inside a short-lived token the host application
    signed (JWT, HS256, with ``secret``). Unsigned ids are for local use, where nobody else can
    reach the server: allowed only when this says so, and logged at start."""

    allow_unsigned: bool = True  # configs/default.yaml says so too; production configs set false
    secret: SecretStr = SecretStr("")  # shared with the host app; at least 32 bytes
    max_ttl_s: float = Field(900.0, gt=0)  # a token valid for longer than this is refused
    leeway_s: float = Field(30.0, ge=0)  # clock skew between the host app and this node


class AdminAuthSettings(_Section):
    session_ttl_s: float = Field(12 * 3600.0, gt=0)  # a login lasts at most this long...
    session_idle_s: float = Field(3600.0, gt=0)  # ...and ends after this long unused
    # Secure cookies when the request came over TLS ("auto"), always, or never.
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    password_min_length: int = Field(10, ge=8)
    # Failed logins within login_window_s before the account (or the address) is refused (429).
    login_window_s: float = Field(900.0, gt=0)
    login_max_failures_per_account: int = Field(5, ge=1)
    login_max_failures_per_address: int = Field(20, ge=1)


class SecuritySettings(_Section):
    callers: CallerIdentitySettings = CallerIdentitySettings()
    admin: AdminAuthSettings = AdminAuthSettings()
