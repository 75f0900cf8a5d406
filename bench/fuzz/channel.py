"""Fuzz the agent channel's inputs with hypothesis: the handshake messages, the frame stream and
the frame decoder. Each input must end in a result or in DecodeError/AuthError (what the channel
refuses with); any other exception is a crash, and an input taking over WATCHDOG_S is a hang.
Either stops the run with the input printed.

Targets:
  hello   bytes a client sends first, to the server's parser (random and mutated genuine ones)
  reply   bytes a server answers, to the client's parser
  stream  a byte stream after a genuine handshake, in arbitrary read sizes, through FrameStream
          and Channel.recv (mutated genuine frames, so that some open and reach the decoder)
  decode  frame plaintext an authenticated peer could send, to decode_frame

Usage: python -m bench.fuzz.channel [--inputs 100000] [--targets hello,reply,stream,decode]
       [--seed N] [--batch 25]; exit status 1 on a crash or a hang, with the input in hex.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from pymosix.errors import AuthError, DecodeError
from pymosix.migration.channel import (
    CONFIRM,
    HELLO_BYTES,
    MAX_FRAME,
    RAW,
    REPLY_BYTES,
    Channel,
    ClientHandshake,
    FrameCipher,
    Session,
    decode_frame,
    encode_frame,
    frame_length,
    server_reply,
)
from pymosix.migration.framestream import FrameStream

KEY = bytes(range(32))
#: One input taking longer than this is a hang.
WATCHDOG_S = 5.0
EXPECTED = (DecodeError, AuthError)


def _genuine() -> tuple[bytes, bytes, Session, bytes]:
    """(hello, reply, the server's session, a stream of genuine client frames) of one session."""
    client = ClientHandshake(KEY, 0x640B)
    reply, server = server_reply(KEY, client.hello, 0x640C)
    session = client.finish(reply)
    send = FrameCipher(session.send_key)
    frames = [
        encode_frame(CONFIRM, {}),
        encode_frame(1, {"meta": {"pid": 1, "argv": ["a"] * 3}, "keys": {"0": "/dev/null"}}),
        bytes([22 | RAW]) + bytes(range(256)) * 300,  # a big raw frame: the decrypt_into path
        encode_frame(22, {"name": "pages-1.img", "data": b"x" * 100}),
    ]
    stream = b"".join(send.seal(f) for f in frames)
    return client.hello, reply, server, stream


HELLO, REPLY, SERVER, STREAM = _genuine()


def mutate(base: bytes, edits: list[tuple[int, int]], cut: int, tail: bytes) -> bytes:
    """`base` with bytes replaced, cut short by `cut` bytes, and `tail` added."""
    out = bytearray(base)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    if cut:
        del out[-min(cut, len(out)) :]
    return bytes(out) + tail


def mutated(base: bytes, max_tail: int = 8) -> st.SearchStrategy[bytes]:
    return st.builds(
        mutate,
        st.just(base),
        st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=4),
        st.integers(0, 8),
        st.binary(max_size=max_tail),
    )


# --- targets ---------------------------------------------------------------------------------


def check_hello(data: bytes) -> str:
    reply, _ = server_reply(KEY, data, 0x640C)
    assert len(reply) == REPLY_BYTES
    return "accepted"


def check_reply(data: bytes) -> str:
    ClientHandshake(KEY, 0x640B).finish(data)
    return "accepted"  # only a forgery would get here


class _Transport(asyncio.Transport):
    """Enough of a transport for FrameStream: records what the protocol asks of it."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write(self, data: Any) -> None:
        pass


async def _stream_case(data: bytes, sizes: list[int]) -> str:
    proto = FrameStream(frame_length)
    transport = _Transport()
    proto.connection_made(transport)
    send, recv = SERVER.ciphers()
    ch = Channel(proto, send, recv, SERVER.peer_id)
    # Fed the way the event loop feeds it: into the buffers the protocol hands out.
    pos, i = 0, 0
    while pos < len(data) and not transport.closed:
        want = sizes[i % len(sizes)] if sizes else len(data)
        i += 1
        buf = proto.get_buffer(want)
        n = min(len(buf), want, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        proto.buffer_updated(n)
        pos += n
    proto.eof_received()
    frames = 0
    while True:
        try:
            await ch.recv()
        except EOFError:
            return f"eof after {frames} frames"
        frames += 1


_LOOP = asyncio.new_event_loop()


def check_stream(data: bytes, sizes: list[int]) -> str:
    return _LOOP.run_until_complete(_stream_case(data, sizes))


def check_decode(data: bytes) -> str:
    kind, payload = decode_frame(data)
    assert 0 <= kind < 256
    assert isinstance(payload, dict)
    return "decoded"


def _msgpack_like() -> st.SearchStrategy[bytes]:
    """Plaintexts near valid ones: a kind byte, then msgpack heads with wild lengths."""
    heads = st.sampled_from(
        [
            *(b"\x80", b"\x81", b"\xde\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff"),
            b"\xc4\xff",
            b"\xc6\xff\xff\xff\xff",
            b"\x91" * 50,
            b"\x81\xa1a" * 3,
            b"\xc1",
            b"\xd4",
        ]
    )
    return st.builds(lambda k, h, t: bytes([k]) + h + t, st.integers(0, 255), heads, st.binary())


@dataclass(frozen=True)
class Target:
    strategy: st.SearchStrategy[tuple[Any, ...]]
    check: Callable[..., str]


TARGETS: dict[str, Target] = {
    "hello": Target(
        st.tuples(st.one_of(st.binary(max_size=HELLO_BYTES + 8), mutated(HELLO))), check_hello
    ),
    "reply": Target(
        st.tuples(st.one_of(st.binary(max_size=REPLY_BYTES + 8), mutated(REPLY))), check_reply
    ),
    "stream": Target(
        st.tuples(
            st.one_of(
                mutated(STREAM, 64),
                st.binary(max_size=512),
                st.builds(
                    lambda n, rest: n.to_bytes(4, "big") + rest,
                    st.sampled_from([0, 1, 16, 17, MAX_FRAME + 16, MAX_FRAME + 17, (1 << 32) - 1]),
                    st.binary(max_size=64),
                ),
            ),
            st.lists(st.integers(1, 70_000), max_size=6),
        ),
        check_stream,
    ),
    "decode": Target(st.tuples(st.one_of(st.binary(max_size=256), _msgpack_like())), check_decode),
}


class Hang(Exception):
    pass


class Crash(Exception):
    """An input made a target raise something other than its refusals, or hang."""

    def __init__(self, target: str, args: tuple[Any, ...], error: BaseException) -> None:
        self.args_fed = args
        super().__init__(
            f"{target}: {type(error).__name__}: {error} on input {args[0][:200].hex()}"
            + (f" (read sizes {args[1]})" if len(args) > 1 else "")
        )


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang(f"one input took over {WATCHDOG_S} s")


#: Lengths that sit on the parsers' bounds, spliced in by `havoc`.
_EDGES = [0, 1, 15, 16, 17, HELLO_BYTES, REPLY_BYTES, MAX_FRAME + 16, MAX_FRAME + 17, 1 << 31]


def havoc(data: bytes, rnd: random.Random) -> bytes:
    """One cheap random mutation (AFL-style: flip, set, insert, delete, duplicate, edge length)."""
    out = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(6)
        at = rnd.randrange(len(out) + 1)
        if op == 0 and out:
            out[at % len(out)] ^= 1 << rnd.randrange(8)
        elif op == 1 and out:
            out[at % len(out)] = rnd.choice((0, 0xFF, 0x7F, 0x80, rnd.randrange(256)))
        elif op == 2:
            out[at:at] = rnd.randbytes(rnd.randint(1, 16))
        elif op == 3:
            del out[at : at + rnd.randint(1, 32)]
        elif op == 4 and out:
            start = rnd.randrange(len(out))
            out[at:at] = out[start : start + rnd.randint(1, 64)]
        else:
            out[at : at + 4] = rnd.choice(_EDGES).to_bytes(4, "big")
    return bytes(out)


def run(name: str, inputs: int, rng_seed: int, batch: int = 25) -> Counter[str]:
    """Feed about `inputs` inputs to one target; outcomes counted. Raises Crash.

    Hypothesis draws each example (random, near-genuine, or edge-case inputs, as the target's
    strategy says) and a seeded Random; the example is fed as drawn, then as `batch - 1` cheap
    havoc mutations of it: hypothesis's own cost per example is milliseconds, a mutation's
    microseconds, and 100,000 inputs per target fit in minutes.
    """
    target = TARGETS[name]
    outcomes: Counter[str] = Counter()

    def feed(args: tuple[Any, ...]) -> None:
        signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
        try:
            outcomes[target.check(*args)] += 1
        except EXPECTED as e:
            outcomes[type(e).__name__] += 1
        except Exception as e:  # Hang included
            raise Crash(name, args, e) from e
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    @seed(rng_seed)
    @settings(
        max_examples=max(1, -(-inputs // batch)),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        phases=[Phase.generate, Phase.shrink],
    )
    @given(target.strategy, st.randoms(use_true_random=False))
    def one(args: tuple[Any, ...], rnd: random.Random) -> None:
        feed(args)
        for _ in range(batch - 1):
            feed((havoc(args[0], rnd), *args[1:]))

    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        one()
    finally:
        signal.signal(signal.SIGALRM, old)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz.channel", description=__doc__)
    p.add_argument("--inputs", type=int, default=100_000, help="inputs per target")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=25, help="inputs per hypothesis example")
    args = p.parse_args(argv)
    names = [t for t in args.targets.split(",") if t]
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        p.error(f"no target {', '.join(unknown)} (targets: {', '.join(TARGETS)})")
    failed = False
    for name in names:
        t0 = time.monotonic()
        try:
            outcomes = run(name, args.inputs, args.seed, args.batch)
        except Crash as e:
            print(f"CRASH {e}", flush=True)
            failed = True
            continue
        took = time.monotonic() - t0
        total = sum(outcomes.values())
        summary = ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
        print(f"{name}: {total} inputs in {took:.0f} s, no crash, no hang ({summary})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
