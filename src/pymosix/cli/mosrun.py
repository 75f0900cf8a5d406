"""``mosrun [options] CMD [ARGS...]``: run CMD as a migratable job; stay here as its deputy.

Options (openMosix's mosrun, plus MOSIX's -b):
  -h        run at home (locked there unless -l)
  -ID       start on node ID (decimal, 0x hex or IP; locked there unless -l)
  -jLIST    start on one of these nodes, e.g. -j0x640b,0x640c (locked to them unless -l)
  -F        with -ID/-j: fall back to home if that node is unavailable
  -b        start on the best node now
  -l / -L   unlock / lock against automatic migration;  -k  keep the default
Wrappers: runhome CMD (= mosrun -h), runon ID CMD (= mosrun -ID), nomig CMD (= mosrun -L).

mosrun relays stdin, stdout and stderr, forwards signals, and exits with the job's status (128+N
when it died of signal N), wherever the job runs. Killing mosrun kills the job.

Exit status 255: the job is lost (its node vanished: "job lost with node 0x640c", within 5 s
of its last sign of life), or the agent went away. SIGTERM, SIGINT (Ctrl-C) and SIGHUP always
end mosrun: the first is forwarded to the job (which may handle it); a second one ends mosrun
at once with 128+N, and home kills the job.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import selectors
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from pymosix.control_client import ControlClient
from pymosix.errors import PymosixError
from pymosix.ids import HOME, parse_node_arg

#: Signals that end mosrun when they come twice, whatever the job does (see the docstring).
ENDING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCONT,
    signal.SIGWINCH,
    signal.SIGTSTP,
)


@dataclass
class Options:
    argv: list[str] = field(default_factory=list)
    where: int | None = None
    home: bool = False
    nodes: list[int] | None = None
    fallback: bool = False
    best: bool = False
    lock: bool | None = None  # None: the default for the options given


def parse_args(args: list[str]) -> Options:
    """openMosix-style options up to the command: -h, -ID, -jLIST, -F, -b, -l, -L, -k."""
    o = Options()
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        a = args[i]
        if a == "--":
            i += 1
            break
        if a in ("--help", "-?"):
            raise SystemExit(print(__doc__) or 0)
        if a == "-h":
            o.home = True
        elif a == "-F":
            o.fallback = True
        elif a == "-b":
            o.best = True
        elif a == "-l":
            o.lock = False
        elif a == "-L":
            o.lock = True
        elif a == "-k":
            o.lock = None
        elif a.startswith("-j"):
            try:
                nodes = [parse_node_arg(x) for x in a[2:].split(",") if x]
            except ValueError as e:
                raise PymosixError(f"{a}: {e}") from None
            if not nodes or HOME in nodes:
                raise PymosixError(f"{a}: give node ids, e.g. -j0x640b,0x640c")
            o.nodes = [int(n) for n in nodes]
        else:
            try:
                target = parse_node_arg(a[1:])
            except ValueError:
                raise PymosixError(f"unknown option {a} (see mosrun --help)") from None
            if target == HOME:
                o.home = True
            else:
                o.where = int(target)
        i += 1
    o.argv = args[i:]
    if not o.argv:
        raise PymosixError("no command given: mosrun [options] CMD [ARGS...]")
    return o


def request(o: Options) -> dict[str, Any]:
    placed = o.home or o.where is not None or o.nodes is not None
    lock = o.lock if o.lock is not None else placed  # -h, -ID, -j lock unless -l (openMosix)
    return {
        "argv": o.argv,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "where": o.where,
        "nodes": o.nodes,
        "fallback": o.fallback,
        "best": o.best and not placed,
        "lock": lock,
    }


def exit_status(msg: dict[str, Any]) -> int:
    if msg.get("signal"):
        return 128 + int(msg["signal"])
    return int(msg.get("code") or 0)


class Deputy:
    """The job's stand-in at home: relays until the job's exit status arrives."""

    def __init__(self, client: ControlClient) -> None:
        self.client = client
        self.sock = client.sock
        self.sock.settimeout(None)
        self.sel = selectors.DefaultSelector()
        self.sig_r, self.sig_w = os.pipe()
        os.set_blocking(self.sig_w, False)
        os.set_blocking(self.sig_r, False)
        self.buf = client._buf
        #: The first ending signal forwarded (a second one ends mosrun).
        self.ending: int | None = None

    def send(self, msg: dict[str, Any]) -> None:
        # If the agent already closed, what it said before closing is still to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionError):
            self.sock.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def run(self) -> int:
        for sig in FORWARDED:
            signal.signal(sig, lambda *_: None)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)
        self.sel.register(self.sock, selectors.EVENT_READ, "sock")
        self.sel.register(self.sig_r, selectors.EVENT_READ, "sig")
        stdin_open = True
        try:
            self.sel.register(0, selectors.EVENT_READ, "stdin")
        except (ValueError, OSError, PermissionError):
            stdin_open = False
            self.send({"t": "eof"})
        while True:
            code = self._handle_buffered()
            if code is not None:
                return code
            for key, _ in self.sel.select():
                if key.data == "sock":
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        print(
                            "mosrun: the agent went away; the job's fate is unknown",
                            file=sys.stderr,
                        )
                        return 255
                    self.buf += chunk
                elif key.data == "stdin" and stdin_open:
                    data = os.read(0, 65536)
                    if data:
                        self.send({"t": "in", "d": base64.b64encode(data).decode()})
                    else:
                        self.sel.unregister(0)
                        stdin_open = False
                        self.send({"t": "eof"})
                elif key.data == "sig":
                    for b in os.read(self.sig_r, 64):
                        if b in ENDING and self.ending is not None:
                            return self._give_up(b)
                        self._signal(b)

    def _give_up(self, sig: int) -> int:
        """mosrun ends on a signal the job outlived: closing the connection kills the job."""
        print(f"mosrun: ended by signal {sig}; the job is killed", file=sys.stderr)
        return 128 + sig

    def _signal(self, sig: int) -> None:
        if sig in ENDING and self.ending is None:
            self.ending = sig
        self.send({"t": "sig", "n": sig})
        if sig == signal.SIGTSTP:
            # Ctrl-Z: the job stops (above); then so do we, as the shell expects.
            signal.signal(signal.SIGTSTP, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTSTP)
            signal.signal(signal.SIGTSTP, lambda *_: None)

    def _handle_buffered(self) -> int | None:
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            msg = json.loads(line)
            t = msg.get("t")
            if t == "out":
                fd = 2 if msg.get("fd") == 2 else 1
                data = base64.b64decode(msg["d"])
                try:
                    while data:
                        n = os.write(fd, data)
                        data = data[n:]
                except BrokenPipeError:
                    pass
            elif t == "exit":
                return exit_status(msg)
            elif t == "error":
                print(f"mosrun: {msg.get('message')}", file=sys.stderr)
            elif msg.get("ok") is False:
                print(f"mosrun: {msg.get('error')}", file=sys.stderr)
                return 1
        return None


def run(args: list[str]) -> int:
    try:
        o = parse_args(args)
        client = ControlClient()
        client.send("run", **request(o))
        started = client.receive()
        if not started.get("ok"):
            raise PymosixError(str(started.get("error")))
    except PymosixError as e:
        print(f"mosrun: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mosrun: {e}", file=sys.stderr)
        return 1
    try:
        return Deputy(client).run()
    except KeyboardInterrupt:
        return 130


def main() -> int:
    return run(sys.argv[1:])


def runhome_main() -> int:
    return run(["-h", *sys.argv[1:]])


def runon_main() -> int:
    if len(sys.argv) < 3:
        print("usage: runon ID CMD [ARGS...]", file=sys.stderr)
        return 2
    return run([f"-{sys.argv[1]}", *sys.argv[2:]])


def nomig_main() -> int:
    return run(["-L", *sys.argv[1:]])
