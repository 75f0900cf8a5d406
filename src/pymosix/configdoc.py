"""node.toml written from NodeConfig itself: every setting with its comment, default and unit, so
the file an admin edits never falls behind the code (`pymosix install-service`), and the effective
configuration in the same form (`pymosix node --print-config`)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path
from typing import Any

from pymosix import config as config_module
from pymosix.config import NodeConfig

#: Fields of NodeConfig that are not settings of the file.
NOT_SETTINGS = {"extra"}


def settings() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(NodeConfig) if f.name not in NOT_SETTINGS]


def field_docs() -> dict[str, str]:
    """Each field's ``#:`` comment in config.py, the one place settings are described."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    source = inspect.getsource(config_module.NodeConfig)
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        m = re.match(r"(\w+)\s*:", stripped)
        if m and pending:
            docs[m.group(1)] = " ".join(pending)
        pending = []
    return docs


def unit_of(f: dataclasses.Field[Any]) -> str:
    """What a value is measured in, from the name's suffix and the type."""
    name, ftype = f.name, str(f.type)
    if name.endswith("_ms"):
        return "milliseconds"
    if name.endswith("_port"):
        return "port number"
    if name.endswith(("_file", "_dir", "_path")):
        return "path"
    if name == "speed":
        return "openMosix speed units"
    if name == "gossip_fanout":
        return "nodes"
    if ftype == "bool":
        return "true or false"
    if ftype == "int":
        return "whole number"
    return "text"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return '""'
    return json.dumps(str(value) if isinstance(value, Path) else value)


def _wrap(text: str, width: int = 96) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width - 2:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [f"# {ln}" for ln in [*lines, line] if ln]


def render(config: NodeConfig | None = None, template: bool = True) -> str:
    """The whole node.toml. `template`: every setting commented out at its default, to be edited
    (unset ones keep following the code's defaults on upgrade); else `config`'s values, live."""
    base = NodeConfig()
    config = config or base
    docs = field_docs()
    if template:
        head = [
            "# pymosix node agent configuration (docs/instant-cluster.md).",
            "# Every setting is listed with its unit and default; a line starting '# name =' is",
            "# unset and follows the default. Flags of 'pymosix node' override this file.",
        ]
    else:
        head = ["# The effective configuration of this node: its file, then its flags."]
    out = [*head, "", "[node]"]
    for f in settings():
        value = getattr(config, f.name)
        default = getattr(base, f.name)
        out.append("")
        out += _wrap(docs.get(f.name, f.name.replace("_", " ")))
        out.append(f"# ({unit_of(f)}; default {toml_value(default)})")
        line = f"{f.name} = {toml_value(value)}"
        out.append(f"# {line}" if template or value is None else line)
    return "\n".join(out) + "\n"
