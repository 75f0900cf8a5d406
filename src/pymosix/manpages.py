"""Man pages for the tools, made from their own argument parsers (and mosrun's usage text), so
they never say other than ``--help`` does. setup.py writes them into the wheel at build time
(``pymosix/man/man1/*.1``); ``pymosix install-tools`` links them beside the commands."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import re
from collections.abc import Iterator
from unittest import mock

from pymosix import __version__

#: tool -> (module under pymosix.cli, whether its main(argv) builds an argparse parser, summary).
#: The others (mosrun parses openMosix's own option syntax) are described by their usage text.
TOOLS: dict[str, tuple[str, bool, str]] = {
    "pymosix": ("main", False, "the pymosix node agent and its helpers"),
    "pymosix-node": ("node", True, "run the node agent (one per host, as root)"),
    "pymosix-doctor": ("doctor", True, "check that this host can run a node with migration"),
    "pymosix-setup": ("setup", True, "provision CRIU on this host"),
    "pymosix-install-tools": ("install_tools", True, "link the commands into /usr/local/bin"),
    "pymosix-keygen": ("keygen", True, "write a new cluster key"),
    "pymosix-testbed": ("testbed", True, "a cluster of network namespaces on this machine"),
    "pymosix-demo": ("demo", True, "replay the Instant openMosix walk-through on a test bed"),
    "pymosix-install-service": ("install_service", True, "install the agent's systemd unit"),
    "showmap": ("showmap", True, "print the cluster map"),
    "mosmon": ("mosmon", True, "watch the load of every node"),
    "mosrun": ("mosrun", False, "run a command as a migratable job"),
    "migrate": ("migrate", True, "move a job to another node"),
    "mps": ("mps", True, "list the managed jobs with the node each runs on"),
    "mtop": ("mtop", True, "top for the cluster"),
    "mosctl": ("mosctl", True, "control and query a node"),
}


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _capture(self: argparse.ArgumentParser, *args: object, **kw: object) -> None:
    raise _Captured(self)


def parser_of(module_name: str) -> argparse.ArgumentParser:
    """The parser a tool's main(argv) builds, caught at its parse_args: nothing else runs."""
    module = importlib.import_module(f"pymosix.cli.{module_name}")
    with mock.patch.object(argparse.ArgumentParser, "parse_args", _capture):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                module.main([])
        except _Captured as c:
            return c.parser
    raise RuntimeError(f"pymosix.cli.{module_name}.main() built no argument parser")


def _roff(text: str) -> str:
    """Plain text made safe for roff: backslashes, leading dots and quotes escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln.startswith((".", "'")) else ln for ln in text.splitlines())


def _paragraphs(text: str) -> Iterator[str]:
    """Paragraphs of a docstring; indented blocks (option lists) kept as they are laid out."""
    for block in re.split(r"\n\s*\n", text.strip()):
        body = re.sub(r"``(.+?)``", r"\\fB\1\\fR", _roff(block))
        yield f".PP\n.nf\n{body}\n.fi" if "\n  " in block else f".PP\n{body}"


def render(
    name: str, summary: str, usage: str, description: str, options: list[tuple[str, str]]
) -> str:
    """One man page in roff (man(7) macros)."""
    date = datetime.date.today().isoformat()
    out = [
        f'.TH {name.upper()} 1 "{date}" "pymosix {__version__}" "pymosix"',
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(summary)}",
        ".SH SYNOPSIS",
        ".nf",
        _roff(usage.strip()),
        ".fi",
    ]
    if description.strip():
        out += [".SH DESCRIPTION", *_paragraphs(description)]
    if options:
        out.append(".SH OPTIONS")
        for flags, help_ in options:
            out += [".TP", f"\\fB{_roff(flags)}\\fR", _roff(help_ or "")]
    out += [
        ".SH SEE ALSO",
        ", ".join(f"\\fB{_roff(t)}\\fR(1)" for t in TOOLS if t != name),
    ]
    return "\n".join(out) + "\n"


def page(name: str) -> str:
    """The man page of one tool."""
    module_name, has_parser, summary = TOOLS[name]
    if not has_parser:
        module = importlib.import_module(f"pymosix.cli.{module_name}")
        if hasattr(module, "usage"):
            return render(name, summary, "pymosix COMMAND [ARGS...]", module.usage(), [])
        first, _, rest = (module.__doc__ or "").strip().partition("\n")
        return render(name, summary, first.split(":", 1)[0].replace("``", ""), rest, [])
    parser = parser_of(module_name)
    usage = parser.format_usage().removeprefix("usage: ")
    options = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            options += [(choice, sub.description or "") for choice, sub in action.choices.items()]
            continue
        flags = ", ".join(action.option_strings) or action.dest
        if action.option_strings and action.nargs != 0:
            flags += f" {action.metavar or action.dest.upper()}"
        help_ = "" if action.help == argparse.SUPPRESS else str(action.help or "")
        options.append((flags, help_ % {"default": action.default} if "%(" in help_ else help_))
    return render(name, summary, usage, parser.description or "", options)


def pages() -> dict[str, str]:
    """Every tool's man page, by file name (``mosrun.1``)."""
    return {f"{name}.1": page(name) for name in TOOLS}
