"""What every tool shares: error reporting in one line, --json output, node names."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pymosix.control_client import call
from pymosix.errors import PymosixError
from pymosix.ids import NodeId, resolve_node

#: How a node may be named on any tool's command line.
NODE_HELP = "a node: hex id (0x640b), decimal id, map number, IP address, host name, or home"


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def fail(prog: str, message: str, code: int = 1) -> int:
    """Print ``prog: message`` on stderr and return the exit code to use."""
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def run_tool(prog: str, body: Callable[[], int]) -> int:
    """Run a tool's body; expected errors become one line on stderr and exit status 1."""
    try:
        return body()
    except PymosixError as e:
        return fail(prog, str(e))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (| head): not an error; keep Python from complaining at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def map_rows() -> list[dict[str, Any]]:
    """This node's map as the agent lists it (with map numbers)."""
    rows: list[dict[str, Any]] = call("map")["nodes"]
    return rows


def needs_map(text: str) -> bool:
    """Whether naming this node needs the map: a whole number or a host name does."""
    t = text.strip().lower()
    dotted = t.count(".") == 3 and t.replace(".", "").isdigit()
    return not (t.startswith("0x") or t == "home" or dotted)


def node_resolver() -> Callable[[str], NodeId | str]:
    """`resolve_node` against this node's map, asked for once, and only if a name needs it;
    ValueError for a name that names no node."""
    rows: list[dict[str, Any]] | None = None

    def resolve(text: str) -> NodeId | str:
        nonlocal rows
        if rows is None and needs_map(text):
            rows = map_rows()
        return resolve_node(text, rows or ())

    return resolve


def node_arg(text: str, rows: Sequence[Mapping[str, Any]] | None = None) -> NodeId | str:
    """A node named on the command line: its id, or ``"home"``; PymosixError if it names none."""
    try:
        return resolve_node(text, rows) if rows is not None else node_resolver()(text)
    except ValueError as e:
        raise PymosixError(str(e)) from None
