"""``mosrun [options] CMD [ARGS...]``: run CMD as a migratable job; stay here as its deputy.

Options (openMosix's mosrun, plus MOSIX's -b):
  -h        run at home (locked there unless -l)
  -NODE     start on NODE (locked there unless -l): a hex id (-0x640b), a decimal id, a static
            map's node number (-2), an IP address or a host name. An unknown node, or one not
            heard from (down, or quiet), is an error before anything starts, unless -F
  -jLIST    start on one of these nodes, e.g. -j0x640b,0x640c or -j1-3,7 (locked to them
            unless -l); every node listed must be in the map, and one of them up, unless -F
  -F        with -NODE/-j: if that node is unavailable, run at home instead of failing
  -b        start on the best node now
  -l / -L   unlock / lock against automatic migration;  -k  keep the default
  -C SECS   while the job runs on another node, that node sends a checkpoint of it here every
            SECS seconds (0: none; default: the node's checkpoint_interval). If that node dies
            or is cut off, the job goes on here from its last checkpoint, at most SECS seconds
            back: stdin, stdout and stderr go on where they were, without a gap or a repeat;
            files it wrote since then are not rolled back (docs/reliability.md)
Job kinds, accepted as openMosix's hints and ignored (pymosix measures what a job does, and
ages its statistics one way): -c (CPU-bound), -i (I/O-bound), -n, -s, -f (no, slow, fast
decay), -t TT, -d DEC (decay interval and rate), -e, -E, -r, -R.
Wrappers: runhome CMD (= mosrun -h), runon NODE CMD (= mosrun -NODE), nomig CMD (= mosrun -L),
cpujob / iojob / nodecay / slowdecay / fastdecay [-h|-NODE] CMD (= mosrun -c / -i / -n / -s / -f).
A host name that looks like an option (beginning with j, or one of the letters above): use its
address, or runon.

mosrun relays stdin, stdout and stderr, forwards signals, and exits with the job's status (128+N
when it died of signal N), wherever the job runs. Killing mosrun kills the job.

Exit status 255: the job is lost (its node vanished and no checkpoint of it was here: "job
lost with node 0x640c", within 5 s of its last sign of life), or the agent went away and no new
one took the job back within 30 s (an agent restarted at once takes a job back that runs at
home: mosrun goes on as before; docs/reliability.md). With a
checkpoint mosrun says instead "node 0x640c lost: the job goes on at home from a checkpoint of
N s ago", and the job runs on. SIGTERM, SIGINT (Ctrl-C) and SIGHUP always
end mosrun: the first is forwarded to the job (which may handle it); a second one ends mosrun
at once with 128+N, and home kills the job.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymosix.cli._common import node_resolver
from pymosix.control_client import ControlClient, call
from pymosix.errors import PymosixError
from pymosix.ids import HOME, NodeId, describe_node, expand_node_list, resolve_node
from pymosix.migration.stdio import (
    ACK_BYTES,
    CHUNK,
    CTRL,
    STDIO_FRAMES,
    TO_MOSRUN,
    FrameReader,
    StdioError,
    ctrl_frame,
    data_head,
    parse_ctrl,
    widen_output,
)

#: How long mosrun waits for a new agent to take its job back when its agent went away.
REATTACH_S = 30.0
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
    #: -C: seconds between checkpoints while it runs away from home (None: the node's)
    checkpoint: float | None = None
    #: openMosix job-kind and decay hints given (accepted, not acted on)
    hints: list[str] = field(default_factory=list)


#: openMosix's job-kind and decay flags: hints that pymosix accepts and ignores.
HINTS = {"-c", "-i", "-n", "-s", "-f", "-e", "-E", "-r", "-R"}
#: ...and those of them that take a value (-t TT, -d DEC, or attached: -t5).
VALUED_HINTS = {"-t", "-d"}

Resolver = Callable[[str], "NodeId | str"]


def parse_args(args: list[str], resolve: Resolver = resolve_node) -> Options:
    """openMosix-style options up to the command: -h, -NODE, -jLIST, -F, -b, -l, -L, -k and the
    job-kind hints. `resolve` turns a node name into its id (the map's numbers need the agent)."""
    o = Options()
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        a = args[i]
        if a in HINTS:
            o.hints.append(a)
            i += 1
            continue
        if a[:2] in VALUED_HINTS and (a[2:].isdigit() or len(a) == 2):
            if len(a) == 2:
                i += 1
                if i >= len(args) or not args[i].isdigit():
                    raise PymosixError(f"{a} takes a whole number (an openMosix decay hint)")
                a += args[i]
            o.hints.append(a)
            i += 1
            continue
        if a == "--":
            i += 1
            break
        if a.startswith("-C"):
            if a == "-C":
                i += 1
            value = a[2:] if a != "-C" else (args[i] if i < len(args) else "")
            o.checkpoint = checkpoint_seconds(value)
            i += 1
            continue
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
                nodes = [resolve(x) for x in expand_node_list(a[2:])]
            except ValueError as e:
                raise PymosixError(f"{a}: {e}") from None
            if not nodes or HOME in nodes:
                raise PymosixError(f"{a}: give node ids, e.g. -j0x640b,0x640c or -j1-3,7")
            o.nodes = list(dict.fromkeys(int(n) for n in nodes))
        else:
            try:
                target = resolve(a[1:])
            except ValueError as e:
                raise PymosixError(f"unknown option or node {a} (see mosrun --help): {e}") from None
            if target == HOME:
                o.home = True
            else:
                o.where = int(target)
        i += 1
    o.argv = args[i:]
    if not o.argv:
        raise PymosixError("no command given: mosrun [options] CMD [ARGS...]")
    return o


def checkpoint_seconds(value: str) -> float:
    """-C's value: 0 (none) or 1 to 86400 seconds."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (seconds == 0 or 1 <= seconds <= 86_400):
        raise PymosixError(f"-C {value}: give seconds between checkpoints, 1 to 86400 (0: none)")
    return seconds


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
        "checkpoint": o.checkpoint,
        "acks": True,  # it confirms the output it gets (migration/outlog.py)
    }


def exit_status(msg: dict[str, Any]) -> int:
    if msg.get("signal"):
        return 128 + int(msg["signal"])
    return int(msg.get("code") or 0)


class Deputy:
    """The job's stand-in at home: relays until the job's exit status arrives. After the `run`
    reply, the connection carries binary frames (migration/stdio.py), not JSON lines."""

    def __init__(self, client: ControlClient, acks: bool = False) -> None:
        self.client = client
        self.sock = client.sock
        self.sock.settimeout(None)
        self.sel = selectors.DefaultSelector()
        self.sig_r, self.sig_w = os.pipe()
        os.set_blocking(self.sig_w, False)
        os.set_blocking(self.sig_r, False)
        self.frames = FrameReader(TO_MOSRUN)
        for fd in (1, 2):
            widen_output(fd)
        #: What the agent sent after its reply line, read along with it.
        self.early = bytes(client._buf)
        #: The first ending signal forwarded (a second one ends mosrun).
        self.ending: int | None = None
        self.stdin_open = True
        #: Bytes of stdout and stderr received in whole frames (written out), and as of the
        #: last ack: a restarted agent's job host sends again what lies beyond (outlog.py).
        self.got = {1: 0, 2: 0}
        self.acked = 0
        self.acks = acks

    def _send(self, frame: bytes) -> None:
        # If the agent already closed, what it said before closing is still to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionError):
            self.sock.sendall(frame)

    def send(self, msg: dict[str, Any]) -> None:
        self._send(ctrl_frame(msg))

    def run(self) -> int:
        for sig in FORWARDED:
            signal.signal(sig, lambda *_: None)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)
        self.sel.register(self.sock, selectors.EVENT_READ, "sock")
        self.sel.register(self.sig_r, selectors.EVENT_READ, "sig")
        try:
            self.sel.register(0, selectors.EVENT_READ, "stdin")
        except (ValueError, OSError, PermissionError):
            self.stdin_open = False
            self.send({"t": "eof"})
        code = self._received(self.early)
        while code is None:
            for key, _ in self.sel.select():
                if key.data == "sock":
                    code = self._from_agent()
                    if code is not None:
                        return code
                elif key.data == "stdin" and self.stdin_open:
                    data = os.read(0, CHUNK)
                    if data:
                        self._send(data_head(0, len(data)) + data)
                    else:
                        self.sel.unregister(0)
                        self.stdin_open = False
                        self.send({"t": "eof"})
                elif key.data == "sig":
                    for b in os.read(self.sig_r, 64):
                        if b in ENDING and self.ending is not None:
                            return self._give_up(b)
                        self._signal(b)
        return code

    def _from_agent(self) -> int | None:
        """Read what the agent sent (into the frame buffer, no copy) and act on it."""
        try:
            space = self.frames.space()
            n = self.sock.recv_into(space)
        except ConnectionError:
            n = 0
        if not n:
            if not self._reattach():
                print(
                    f"mosrun: the agent went away and none took the job back within "
                    f"{REATTACH_S:.0f} s; the job's fate is unknown",
                    file=sys.stderr,
                )
                return 255
            print("mosrun: the agent restarted; the job goes on", file=sys.stderr)
            return self._received(self.early)
        self.frames.filled(n)
        return self._handle()

    def _reattach(self) -> bool:
        """The agent went (a crash, a restart): ask its next one, by this process's PID, for
        the job back (docs/reliability.md). It says how much output it has: a job away from
        home is sent again what lies beyond (a frame the dead agent had begun, too); one at home
        loses what the dead agent had read from its pipes and not sent."""
        self.sel.unregister(self.sock)
        self.sock.close()
        deadline = time.monotonic() + REATTACH_S
        while time.monotonic() < deadline:
            try:
                client = ControlClient(self.client.path, timeout_s=5.0)
            except (PymosixError, OSError):
                time.sleep(0.2)
                continue
            try:
                client.send(
                    "reattach", stdin_eof=not self.stdin_open, got=[self.got[1], self.got[2]]
                )
                reply = client.receive()
            except (PymosixError, OSError):
                reply = {}
            if not reply.get("ok") or reply.get("stdio") != STDIO_FRAMES:
                client.close()
                time.sleep(0.2)  # not yet adopted (the agent is starting), or never
                continue
            self.client, self.sock = client, client.sock
            self.acks = bool(reply.get("acks"))
            self.sock.settimeout(None)
            self.frames = FrameReader(TO_MOSRUN)
            self.early = bytes(client._buf)
            self.sel.register(self.sock, selectors.EVENT_READ, "sock")
            return True
        return False

    def _received(self, data: bytes) -> int | None:
        view = memoryview(data)
        while view:
            space = self.frames.space()
            n = min(len(space), len(view))
            space[:n] = view[:n]
            view = view[n:]
            self.frames.filled(n)
            code = self._handle()
            if code is not None:
                return code
        return None

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

    def _handle(self) -> int | None:
        """Act on the whole frames buffered: output written out, control messages obeyed."""
        try:
            for kind, fd, payload in self.frames.frames():
                if kind != CTRL:
                    _write_all(fd, payload)
                    self.got[fd] += len(payload)
                    continue
                code = self._control(parse_ctrl(payload))
                if code is not None:
                    return code
        except StdioError as e:
            print(f"mosrun: the agent sent a bad frame ({e}); the job is killed", file=sys.stderr)
            return 255
        if self.acks and self.got[1] + self.got[2] - self.acked >= ACK_BYTES:
            self.acked = self.got[1] + self.got[2]
            self.send({"t": "ack", "o": [self.got[1], self.got[2]]})
        return None

    def _control(self, msg: dict[str, Any]) -> int | None:
        t = msg.get("t")
        if t == "exit":
            return exit_status(msg)
        if t in ("error", "note"):
            print(f"mosrun: {msg.get('message')}", file=sys.stderr)
        elif t == "lost" and msg.get("fd") in self.got and isinstance(msg.get("n"), int):
            # Bytes of the stream that never came (an agent died holding them): counted as had,
            # so that the positions stay the stream's, and said.
            fd, n = int(msg["fd"]), int(msg["n"])
            self.got[fd] += n
            name = "stdout" if fd == 1 else "stderr"
            print(f"mosrun: {n} bytes of the job's {name} were lost on the way", file=sys.stderr)
        return None


def _write_all(fd: int, data: memoryview) -> None:
    """All of it, blocking: a slow reader of mosrun's output holds the job back (a pipe would)."""
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
    except BrokenPipeError:
        pass


def placement_problem(o: Options, loads: list[dict[str, Any]]) -> str | None:
    """Why -NODE / -j cannot be honoured, from the agent's load rows; None if it can."""
    rows = {int(r["node_id"]): r for r in loads}
    wanted = [o.where] if o.where is not None else o.nodes or []
    unknown = [n for n in wanted if n not in rows]
    if unknown:
        names = ", ".join(describe_node(n) for n in unknown)
        return f"node {names} is not in this node's map (see showmap)"
    if wanted and not any(rows[n].get("up") or rows[n].get("self") for n in wanted):
        names = ", ".join(describe_node(n) for n in wanted)
        return f"node {names} is unreachable: no load information from it (down, or quiet)"
    return None


def place(o: Options) -> None:
    """Fail before anything starts if the asked-for node is unavailable; with -F, run at home."""
    if o.where is None and o.nodes is None:
        return
    problem = placement_problem(o, call("loads")["nodes"])
    if problem is None:
        return
    if not o.fallback:
        raise PymosixError(f"{problem}; nothing was started (-F runs it at home instead)")
    print(f"mosrun: {problem}; running at home (-F)", file=sys.stderr)
    o.where, o.nodes, o.home = None, None, True


def run(args: list[str]) -> int:
    try:
        o = parse_args(args, node_resolver())
        place(o)
        client = ControlClient()
        client.send("run", **request(o))
        started = client.receive()
        if not started.get("ok"):
            raise PymosixError(str(started.get("error")))
        if started.get("stdio") != STDIO_FRAMES:
            # The job runs, but its stdio would be unreadable: end it (closing kills it).
            client.sock.close()
            raise PymosixError("the agent is older than this mosrun: restart it (pymosix node)")
    except PymosixError as e:
        print(f"mosrun: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mosrun: {e}", file=sys.stderr)
        return 1
    try:
        return Deputy(client, acks=bool(started.get("acks"))).run()
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


def _hint_main(flag: str) -> Callable[[], int]:
    def main() -> int:
        return run([flag, *sys.argv[1:]])

    return main


cpujob_main = _hint_main("-c")
iojob_main = _hint_main("-i")
nodecay_main = _hint_main("-n")
slowdecay_main = _hint_main("-s")
fastdecay_main = _hint_main("-f")
