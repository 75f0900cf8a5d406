"""The cluster keys: one file, mode 0600, the same on every node, holding one or more keys.

Format (text, one key a line, oldest first; ``#`` starts a comment)::

    <64 hex digits>  <UTC time from which it signs, 2026-12-01T23:00:00Z>

A node accepts every key in its file, and signs datagrams and opens channels with the newest key
whose start time has passed (or, if none has, the oldest). That gives rotation without downtime:
``pymosix keygen --rotate`` adds a key that starts signing a grace period later, the file is copied
to every node within it (each agent re-reads it within a second), and once every node signs with
the new key ``pymosix keygen --retire`` drops the old ones. A file of one bare hex line (the first
format) is a single key that has always been valid.

A key is named by its id: the first 4 bytes of a hash of it, shown as 8 hex digits. The id is
public (it goes in the clear at the start of a channel handshake) and tells nothing of the key.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pymosix.errors import ConfigError

KEY_BYTES = 32
ID_BYTES = 4
#: More keys than this is a rotation never finished; each costs an HMAC per datagram.
MAX_KEYS = 8
#: A key file is a few hundred bytes; anything far larger is not one.
MAX_FILE_BYTES = 64 * 1024
#: Default time between `keygen --rotate` and the new key signing: the time to copy the file.
DEFAULT_GRACE_S = 600

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_HEADER = (
    "# pymosix cluster keys: the same file on every node, mode 600 (pymosix keygen).\n"
    "# Every key here is accepted; the newest whose start has passed signs.\n"
    "# key (64 hex digits)                                              signs from (UTC)\n"
)


@dataclass(frozen=True, slots=True)
class ClusterKey:
    secret: bytes
    #: Unix time from which this key signs; 0 for always.
    start: int = 0

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(b"pymosix key id\0" + self.secret).digest()[:ID_BYTES]

    @property
    def name(self) -> str:
        return self.key_id.hex()


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime(_TIME_FORMAT)


class KeyRing:
    """The keys a node accepts (`all`) and the one it signs with (`current`).

    `refresh(now)` re-reads the file it came from when the file changed, and moves `current` on
    when a newer key's start time has passed: an agent calls it from its timer.
    """

    def __init__(self, keys: Sequence[ClusterKey], now: float, path: Path | None = None) -> None:
        if not keys:
            raise ConfigError(f"{path or 'key ring'}: no keys")
        self.path = path
        self._stamp = _stamp(path) if path is not None else None
        self._set(tuple(keys), now)

    @classmethod
    def single(cls, secret: bytes) -> KeyRing:
        """A ring of one key that is always valid (tests, tools)."""
        return cls([ClusterKey(_check_length(secret, "key"))], 0)

    def _set(self, keys: tuple[ClusterKey, ...], now: float) -> None:
        self.keys = keys
        self.signing = choose_current(keys, now)
        self.current: bytes = self.signing.secret
        self.all: tuple[bytes, ...] = tuple(k.secret for k in keys)
        self._by_id = {k.key_id: k.secret for k in keys}

    def find(self, key_id: bytes) -> bytes | None:
        """The key with this id, if this node has it."""
        return self._by_id.get(key_id)

    def describe(self) -> str:
        names = ", ".join(k.name for k in self.keys)
        return f"{len(self.keys)} key(s) ({names}), signing with {self.signing.name}"

    def refresh(self, now: float) -> list[str]:
        """Follow the file and the clock; returns what changed, as log lines.

        A file that became unusable leaves the keys in use as they are (and says so once):
        an agent never stops talking to its cluster over a bad copy.
        """
        if self.path is not None and (stamp := _stamp(self.path)) != self._stamp:
            self._stamp = stamp
            try:
                keys = tuple(load_keys(self.path))
            except ConfigError as e:
                return [f"{e}; keeping the {len(self.keys)} key(s) in use"]
            self._set(keys, now)
            return [f"cluster keys reloaded from {self.path}: {self.describe()}"]
        signing = choose_current(self.keys, now)
        if signing != self.signing:
            self._set(self.keys, now)
            return [f"now signing with cluster key {signing.name} (from {_when(signing.start)})"]
        return []


def choose_current(keys: Sequence[ClusterKey], now: float) -> ClusterKey:
    """The newest key whose start has passed; the oldest if none has yet."""
    started = [k for k in keys if k.start <= now]
    if not started:
        return min(keys, key=lambda k: k.start)
    # The later line wins a tie: it was added last.
    return max(reversed(started), key=lambda k: k.start)


def as_ring(keys: KeyRing | bytes) -> KeyRing:
    return keys if isinstance(keys, KeyRing) else KeyRing.single(keys)


# --- the file (pure) -----------------------------------------------------------------------------


def _check_length(secret: bytes, where: str, path: Path | str = "FILE") -> bytes:
    if len(secret) != KEY_BYTES:
        raise ConfigError(
            f"{where}: the key is {len(secret)} bytes; a pymosix key is {KEY_BYTES} "
            f"({KEY_BYTES * 2} hex digits): make one with 'pymosix keygen --force {path}' "
            "and copy it to every node"
        )
    return secret


def parse_keys(text: str, path: Path | str = "key file") -> list[ClusterKey]:
    """The keys in a key file's text; ConfigError naming the line and the fix."""
    keys: list[ClusterKey] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}, line {n}"
        fields = line.split()
        if len(fields) > 2:
            raise ConfigError(f"{where}: expected a key and a start time, got {len(fields)} fields")
        try:
            secret = bytes.fromhex(fields[0])
        except ValueError:
            raise ConfigError(
                f"{where}: not a pymosix key (expected {KEY_BYTES * 2} hex digits); "
                f"make one with 'pymosix keygen --force {path}'"
            ) from None
        _check_length(secret, where, path)
        start = 0
        if len(fields) == 2:
            try:
                start = int(
                    datetime.strptime(fields[1], _TIME_FORMAT).replace(tzinfo=UTC).timestamp()
                )
            except ValueError:
                raise ConfigError(
                    f"{where}: start time {fields[1]!r} is not like 2026-12-01T23:00:00Z"
                ) from None
        key = ClusterKey(secret, start)
        if any(k.key_id == key.key_id for k in keys):
            raise ConfigError(f"{where}: key {key.name} is listed twice; delete one of the lines")
        keys.append(key)
    if not keys:
        raise ConfigError(
            f"{path}: no key in the file; make one with 'pymosix keygen --force {path}'"
        )
    if len(keys) > MAX_KEYS:
        raise ConfigError(
            f"{path}: {len(keys)} keys (at most {MAX_KEYS}); drop old ones with "
            f"'pymosix keygen --retire {path}'"
        )
    return keys


def format_keys(keys: Sequence[ClusterKey]) -> str:
    lines = [f"{k.secret.hex()}  {_when(k.start)}  # {k.name}\n" for k in keys]
    return _HEADER + "".join(lines)


# --- the file (I/O) ------------------------------------------------------------------------------


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def load_keys(path: Path) -> list[ClusterKey]:
    """The keys in `path`, refusing a file others can read, a foreign owner, or a bad key."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no cluster key; make one with 'pymosix keygen {path}'"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the cluster key: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigError(
            f"{path}: not a regular file; point key_file at a key made by 'pymosix keygen'"
        )
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path}: the cluster key is open to other users (mode {mode:03o}); fix: chmod 600 {path}"
            )
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError(
                f"{path}: the cluster key belongs to uid {st.st_uid}, who could change it; "
                f"fix: chown {os.geteuid()} {path}"
            )
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: over {MAX_FILE_BYTES} bytes, not a pymosix key file")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path}: binary data, not a pymosix key file; make one with 'pymosix keygen --force {path}'"
        ) from None
    if "\0" in text:
        raise ConfigError(
            f"{path}: binary data, not a pymosix key file; make one with 'pymosix keygen --force {path}'"
        )
    return parse_keys(text, path)


def read_keys(path: Path, now: float | None = None) -> KeyRing:
    """The key ring in `path`, following the file (see KeyRing.refresh)."""
    keys = load_keys(path)
    return KeyRing(keys, time.time() if now is None else now, path)


def read_key(path: Path) -> bytes:
    """The key `path` signs with now; ConfigError naming the fix if it is missing or malformed."""
    return read_keys(path).current


def _write(path: Path, keys: Sequence[ClusterKey]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(format_keys(keys))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_key(path: Path, force: bool = False, now: float | None = None) -> bytes:
    """Write a new key file of one key; refuses to overwrite one unless `force`."""
    if path.exists() and not force:
        raise ConfigError(
            f"{path} exists; keep it (all nodes share it) or pass --force to replace it"
        )
    key = ClusterKey(secrets.token_bytes(KEY_BYTES), int(time.time() if now is None else now))
    _write(path, [key])
    return key.secret


def rotate(path: Path, now: float, grace_s: int = DEFAULT_GRACE_S) -> ClusterKey:
    """Add a new key that every node accepts now and that signs from now + grace_s."""
    if grace_s < 0:
        raise ConfigError(f"--grace must be 0 or more seconds, not {grace_s}")
    keys = load_keys(path)
    if len(keys) >= MAX_KEYS:
        raise ConfigError(
            f"{path}: already {len(keys)} keys; 'pymosix keygen --retire {path}' first"
        )
    # Start no earlier than any key already there, so that the new one is the newest.
    start = max([int(now) + grace_s, *(k.start for k in keys)])
    key = ClusterKey(secrets.token_bytes(KEY_BYTES), start)
    _write(path, [*keys, key])
    return key


def retire(path: Path, now: float, force: bool = False) -> tuple[ClusterKey, list[ClusterKey]]:
    """Drop every key older than the newest; (the key kept, the keys dropped).

    Refused while the newest has not started signing (some nodes may still sign with an older
    key, and a node without that key would drop them), unless `force`.
    """
    keys = load_keys(path)
    newest = max(reversed(keys), key=lambda k: k.start)
    if newest.start > now and not force:
        raise ConfigError(
            f"key {newest.name} signs only from {_when(newest.start)}; retire the old keys after "
            "that, once every node has the file (or pass --force)"
        )
    dropped = [k for k in keys if k is not newest]
    if dropped:
        _write(path, [ClusterKey(newest.secret, min(newest.start, int(now)))])
    return newest, dropped
