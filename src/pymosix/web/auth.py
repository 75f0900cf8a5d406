"""Who may use the web monitor: per-user tokens kept root-only in the state directory, handed
out over the control socket (whose SO_PEERCRED says who asks), and the sessions of those who
logged in with one."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import pwd
import secrets
from dataclasses import dataclass
from pathlib import Path

from pymosix.errors import PymosixError

#: A session lasts this long after login (then the page asks for the token again).
SESSION_S = 12 * 3600


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def may_log_in(uid: int, web_users: str) -> bool:
    """Root always; others if root listed them in `web_users` ("*": every local user)."""
    if uid == 0:
        return True
    allowed = {u.strip() for u in web_users.split(",") if u.strip()}
    return "*" in allowed or user_name(uid) in allowed or str(uid) in allowed


class TokenStore:
    """uid -> token, in one JSON file only root can read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[int, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise PymosixError(
                f"{self.path}: unreadable web tokens ({e}); remove it and run 'pymosix web-token'"
            ) from None
        return {int(k): str(v) for k, v in dict(data).items()}

    def _write(self, tokens: dict[int, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({str(k): v for k, v in tokens.items()}, f)
        os.replace(tmp, self.path)

    def token_for(self, uid: int, new: bool = False) -> str:
        """uid's token; made on first use, or anew (the old one stops working) if `new`."""
        tokens = self._read()
        if new or uid not in tokens:
            tokens[uid] = secrets.token_urlsafe(24)
            self._write(tokens)
        return tokens[uid]

    def uid_of(self, token: str) -> int | None:
        """Whose token this is, or None."""
        found = None
        for uid, t in self._read().items():
            # Compare every one in constant time, so timing says nothing about which is close.
            if hmac.compare_digest(t.encode(), token.encode()):
                found = uid
        return found


@dataclass(frozen=True, slots=True)
class Session:
    uid: int
    user: str
    expires: float  # monotonic

    @property
    def root(self) -> bool:
        return self.uid == 0


class Sessions:
    """Logged-in browsers: a random cookie value each, kept in memory (a restart logs out)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    def open(self, uid: int, now: float) -> str:
        sid = secrets.token_urlsafe(24)
        self._by_id[sid] = Session(uid, user_name(uid), now + SESSION_S)
        return sid

    def get(self, sid: str | None, now: float) -> Session | None:
        s = self._by_id.get(sid or "")
        if s is None or s.expires < now:
            self._by_id.pop(sid or "", None)
            return None
        return s

    def count(self, now: float) -> int:
        """Sessions that have not expired."""
        return sum(1 for s in self._by_id.values() if s.expires >= now)

    def close(self, sid: str | None) -> None:
        self._by_id.pop(sid or "", None)

    def end_user(self, uid: int) -> None:
        """A new token for uid: its old sessions end too."""
        for sid in [k for k, s in self._by_id.items() if s.uid == uid]:
            del self._by_id[sid]
