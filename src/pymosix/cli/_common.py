"""What every tool shares: error reporting in one line, and --json output."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from pymosix.errors import PymosixError


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
