"""ICE candidate control for loopback-only serving.

aioice has no option to gather 127.0.0.1: ``Connection.gather_candidates`` calls the module
function ``aioice.ice.get_host_addresses``, which hard-codes ``ip != "127.0.0.1"``, and aiortc
builds the aioice ``Connection`` itself without a hook. So the module function is wrapped once,
and the wrapper only changes behaviour while the ContextVar below is set, i.e. inside
``with loopback_host_candidates():`` in the task negotiating one call. ContextVars are copied
into the tasks aiortc creates with ``asyncio.gather`` to gather, so the override reaches them;
every other caller in the process sees the original function.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Callable, Iterator, Sequence

import aioice.ice

_host_addresses_override: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "voiceagent_host_addresses", default=None
)
_original_get_host_addresses: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses
_HOOK_MARK = "_voiceagent_hook"


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    override = _host_addresses_override.get()
    if override is None:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return [a for a in override if (use_ipv6 if ":" in a else use_ipv4)]


def _install_hook() -> None:
    if not getattr(aioice.ice.get_host_addresses, _HOOK_MARK, False):
        setattr(_get_host_addresses, _HOOK_MARK, True)
        setattr(aioice.ice, "get_host_addresses", _get_host_addresses)  # noqa: B010


@contextlib.contextmanager
def loopback_host_candidates(addresses: Sequence[str] = ("127.0.0.1",)) -> Iterator[None]:
    """Within this block (and tasks started from it) aioice gathers exactly ``addresses``."""
    _install_hook()
    token = _host_addresses_override.set(tuple(addresses))
    try:
        yield
    finally:
        _host_addresses_override.reset(token)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1; False for other IPs and for names (mDNS ``*.local``)."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def filter_candidates(sdp: str, keep: Callable[[str], bool]) -> str:
    """Drop ``a=candidate`` lines whose connection address fails ``keep``: in loopback-only mode
    the browser's LAN, mDNS and srflx candidates would only cost connectivity checks that fail."""
    lines: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) > 4 and not keep(parts[4]):
                continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"
