"""mosctl settings kept across agent restarts: `mosctl block --persist` writes them to a small
JSON file in the state directory, read at start on top of the config's values."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pymosix.errors import ConfigError

#: The settings that may be kept (quiet is a moment's choice, not a node's character).
PERSISTENT = ("speed", "stay", "lstay", "block")
FILE_NAME = "settings.json"


def path_in(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def read(state_dir: Path) -> dict[str, Any]:
    """The kept settings; {} if none. A damaged file is an error naming it (no silent reset)."""
    path = path_in(state_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable kept settings ({e}); fix or remove it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: kept settings must be a JSON object; fix or remove it")
    return {k: v for k, v in data.items() if k in PERSISTENT}


def keep(state_dir: Path, name: str, value: Any) -> Path:
    """Add one setting to the file, atomically (a crash leaves the old file or the new one)."""
    if name not in PERSISTENT:
        raise ValueError(f"{name} cannot be kept across restarts (only {', '.join(PERSISTENT)})")
    data = read(state_dir) | {name: value}
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = path_in(state_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
