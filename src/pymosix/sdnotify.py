"""systemd's readiness and watchdog protocol (sd_notify) without a dependency: one datagram per
state to the AF_UNIX socket in $NOTIFY_SOCKET (a path, or '@name' for the abstract namespace).

Outside systemd (no $NOTIFY_SOCKET) every call is a no-op, so the agent always calls them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("pymosix")


def _address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in "/@":
        return None
    return "\0" + addr[1:] if addr[0] == "@" else addr


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...`` (newline-separated);
    True if it was sent. A failure is logged, never raised: the service must not die of it."""
    addr = _address(os.environ if env is None else env)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", addr.lstrip("\0"), e)
        return False


def watchdog_period_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """How often to send WATCHDOG=1: half of $WATCHDOG_USEC (as sd_watchdog_enabled advises),
    or None when no watchdog is asked of this process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2e6


async def watchdog(period_s: float) -> None:
    """Ping from the event loop: if the loop hangs, the pings stop and systemd restarts us."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period_s)
