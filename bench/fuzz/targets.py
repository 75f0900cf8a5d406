"""Fuzz targets: each takes one input and may raise only the errors its decoder promises.

- ``envelope``: raw bytes as a datagram (what anyone on the LAN can send): `unseal`, which
  raises only DecodeError or AuthError.
- ``signed``: bytes signed with the cluster key (what gets past the tag: a node with the key, or
  a bug): `unseal` and then every payload decoder (hello, bye, load), DecodeError only.
- ``control``: one line on the control socket: `parse_request`, PymosixError only, and through a
  real ControlConnection (line framing, size cap) every few inputs.
- ``stdio``: what follows a `run` reply on the control socket, both ways (mosrun's stdin and
  signals to the agent, the job's output and exit to mosrun): the frame reader of
  migration/stdio.py and its control-message parser, StdioError only.
- ``images``: the FILE frames of an incoming image (msgpack, as the channel hands them over) into
  the target's `ImageReceiver`: ImageError only, and nothing written outside its directory.

A mutator (seeded, fast) makes the inputs from valid seeds: bit flips, byte sets, inserts, cuts,
splices and interesting values, so that the fuzz goes past the first check of each decoder.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import hmac
import io
import random
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from pymosix.control_server import ControlConnection, PeerCred, parse_request
from pymosix.errors import AuthError, DecodeError, PymosixError
from pymosix.load.gossip import LoadEntry
from pymosix.migration.images import ImageError, ImageReceiver
from pymosix.migration.stdio import (
    CTRL,
    TO_AGENT,
    TO_MOSRUN,
    FrameReader,
    StdioError,
    ctrl_frame,
    data_head,
    parse_ctrl,
)
from pymosix.wire.envelope import TAG_BYTES, Envelope, Kind, seal, unseal
from pymosix.wire.messages import Hello

KEY = bytes(range(32))
T_MS = 1_800_000_000_000

#: One input in; whether the decoder accepted it (a valid message) out.
Target = Callable[[bytes], bool]


def _hello() -> bytes:
    return seal(
        KEY,
        Envelope(
            Kind.HELLO, 0x640B, 7, 1, T_MS, Hello("192.168.100.11", 7078, 7079, 500).to_payload()
        ),
    )


def _load() -> bytes:
    entry = [0x640B, 1.5, 0.5, 10000, 2, 1 << 30, 1 << 29, 1, 0, 5, 120]
    return seal(KEY, Envelope(Kind.LOAD, 0x640B, 7, 2, T_MS, {"e": [entry, entry]}))


def _bye() -> bytes:
    return seal(KEY, Envelope(Kind.BYE, 0x640B, 7, 3, T_MS, {"a": "192.168.100.11"}))


DATAGRAM_SEEDS = [_hello(), _load(), _bye(), b"PMX1", b""]
CONTROL_SEEDS = [
    b'{"op":"status"}\n',
    b'{"op":"set","name":"speed","value":15000}\n',
    b'{"op":"run","argv":["/bin/echo","hi"],"env":{"A":"b"},"cwd":"/tmp","target":null}\n',
    b'{"op":"migrate","pid":123,"to":25612}\n',
    b'{"op":"x","v":[[[[1.5e308]]]],"w":"\\u00e9\\ud800"}\n',
]
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xC1, 0xDC, 0xDD, 0xDE, 0xDF, ord("["), ord("{"), ord('"')]
TOKENS = [b"Infinity", b"NaN", b"-Infinity", b"[" * 64, b'{"a":' * 32, b"1e999", b"9" * 5000]


def mutate(seed: bytes, rng: random.Random, tokens: list[bytes] | None = None) -> bytes:
    """A few random edits of `seed`."""
    data = bytearray(seed)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        op = rng.randrange(7)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            data[rng.randrange(len(data))] = rng.choice(INTERESTING)
        elif op == 2:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 3 and data:
            del data[pos : pos + rng.randrange(1, 17)]
        elif op == 4 and data:
            a = rng.randrange(len(data))
            data[pos:pos] = data[a : a + rng.randrange(1, 33)]
        elif op == 5 and tokens:
            data[pos:pos] = rng.choice(tokens)
        elif op == 6 and len(data) >= 8:
            i = rng.randrange(len(data) - 7)
            data[i : i + 8] = struct.pack("!Q", rng.choice((0, 1, 2**63 - 1, 2**64 - 1, T_MS)))
    return bytes(data)


def envelope(data: bytes) -> bool:
    try:
        unseal(KEY, data)
    except (DecodeError, AuthError):
        return False
    return True


def _resign(data: bytes) -> bytes:
    """The mutated datagram with a valid tag: only the decoders stand between it and the agent."""
    body = data[:-TAG_BYTES] if len(data) > TAG_BYTES else data
    return body + hmac.new(KEY, body, hashlib.sha256).digest()


def _decode_payload(env: Envelope) -> None:
    if env.kind == Kind.HELLO:
        Hello.from_payload(env.payload)
    elif env.kind == Kind.BYE:
        if not isinstance(env.payload.get("a"), str):
            raise DecodeError("bye without an address")
    elif env.kind == Kind.LOAD:
        entries = env.payload.get("e")
        if not isinstance(entries, list) or not entries or len(entries) > 32:
            raise DecodeError("load report without entries")
        for e in entries:
            LoadEntry.from_wire(e, 1000.0)


def signed(data: bytes) -> bool:
    try:
        _decode_payload(unseal(KEY, _resign(data)))
    except (DecodeError, AuthError):
        return False
    return True


def control(data: bytes) -> bool:
    try:
        parse_request(data)
    except PymosixError:
        return False
    return True


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def _stream(data: bytes) -> bool:
    """The bytes through a real ControlConnection: framing and caps, then the parser."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=256 * 1024)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport = _Transport()
    protocol.connection_made(transport)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    reader.feed_data(data)
    reader.feed_eof()
    conn = ControlConnection(reader, writer, PeerCred(1, 1000, 1000), idle_timeout_s=1.0)
    accepted = False
    try:
        for _ in range(64):
            try:
                if await conn.read_request() is None:
                    break
            except PymosixError:
                break
            accepted = True
    finally:
        writer.close()
    return accepted


_loops: list[asyncio.AbstractEventLoop] = []


def control_stream(data: bytes) -> bool:
    if not _loops:  # one loop for the whole run: a new one per input would be most of the cost
        _loops.append(asyncio.new_event_loop())
        atexit.register(_loops[0].close)
    return _loops[0].run_until_complete(_stream(data))


STDIO_SEEDS = [
    data_head(0, 5) + b"hello" + ctrl_frame({"t": "eof"}),
    ctrl_frame({"t": "sig", "n": 15}) + ctrl_frame({"t": "sig", "n": 2}),
    data_head(1, 3) + b"out" + data_head(2, 3) + b"err" + ctrl_frame({"t": "moved", "node": 2}),
    ctrl_frame({"t": "exit", "code": None, "signal": 9}),
    b'{"t":"in","d":"aGk="}\n',
]
STDIO_TOKENS = [b"\x01\x00", b"\x02\x00", b"\x00\x10\x00\x00", b"\xff\xff\xff\xff", b'{"t":']


def stdio(data: bytes) -> bool:
    """The bytes as a stream each way, in pieces of a few sizes: StdioError only."""
    accepted = False
    for fds in (TO_AGENT, TO_MOSRUN):
        reader = FrameReader(fds)
        try:
            for at in range(0, len(data), 7):
                for kind, _fd, payload in reader.feed(data[at : at + 7]):
                    if kind == CTRL:
                        parse_ctrl(payload)
                    accepted = True
        except StdioError:
            continue
    return accepted


_IMAGE_ROOT: list[Path] = []


def _image_seed(*frames: tuple[str, bytes, bool]) -> bytes:
    return b"".join(msgpack.packb({"name": n, "data": d, "first": f}) for n, d, f in frames)


IMAGE_SEEDS = [
    _image_seed(("core-1.img", b"\x01" * 40, True), ("core-1.img", b"\x02" * 8, False)),
    _image_seed(("inventory.img", b"inv", True), ("stats-dump", b"s", True)),
    _image_seed(("../x", b"", True), (".hidden", b"", True)),
]
IMAGE_TOKENS = [b"../", b"/", b"\x00", b".img", b"\xa5first", b"\xc3", b"\xc2"]


def images(data: bytes) -> bool:
    """Frames into a fresh directory under a private root; nothing may appear beside it."""
    if not _IMAGE_ROOT:
        root = Path(tempfile.mkdtemp(prefix="pmx-fuzz-images-"))
        _IMAGE_ROOT.append(root)
        atexit.register(shutil.rmtree, root, True)
    root = _IMAGE_ROOT[0]
    try:  # what the channel's frame decoding would hand over; not the receiver's business
        frames = list(msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=False))
    except (ValueError, TypeError, msgpack.UnpackException):
        return False
    where = root / "in"
    receiver = ImageReceiver(where, limit_bytes=4096)
    accepted = False
    try:
        for frame in frames:
            receiver.feed(frame)
            accepted = True
    except ImageError:
        accepted = False
    finally:
        receiver.close()
        shutil.rmtree(where, ignore_errors=True)
    if list(root.iterdir()):
        raise AssertionError(f"the receiver wrote outside its directory: {list(root.iterdir())}")
    return accepted


_ODD_VALUES: list[object] = [[[]] * 40, {"e": None}, 2**64 - 1, -(2**63), "x" * 300, 1e308]

#: name -> (target, seeds, tokens)
TARGETS: dict[str, tuple[Target, list[bytes], list[bytes]]] = {
    "envelope": (envelope, DATAGRAM_SEEDS, []),
    "signed": (
        signed,
        DATAGRAM_SEEDS,
        [msgpack.packb(x) for x in _ODD_VALUES],
    ),
    "control": (control, CONTROL_SEEDS, TOKENS),
    "control-stream": (control_stream, [b"".join(CONTROL_SEEDS), *CONTROL_SEEDS], TOKENS),
    "images": (images, IMAGE_SEEDS, IMAGE_TOKENS),
    "stdio": (stdio, STDIO_SEEDS, STDIO_TOKENS),
}
