"""The cluster key: 32 random bytes, hex text, mode 0600. Every node needs the same one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pymosix.errors import ConfigError

KEY_BYTES = 32


def write_key(path: Path, force: bool = False) -> bytes:
    """Write a new key; refuses to overwrite one unless `force`."""
    if path.exists() and not force:
        raise ConfigError(
            f"{path} exists; keep it (all nodes share it) or pass --force to replace it"
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return key


def read_key(path: Path) -> bytes:
    """The key in `path`; ConfigError naming the fix if it is missing or malformed."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no cluster key; make one with 'pymosix keygen {path}'"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the cluster key: {e.strerror}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(
            f"{path}: not a pymosix key (expected {KEY_BYTES * 2} hex digits)"
        ) from None
    if len(key) < 16:
        raise ConfigError(f"{path}: key too short ({len(key)} bytes; want {KEY_BYTES})")
    return key
