"""The channel between node agents: mutually authenticated with the cluster key, encrypted.

Python 3.11's ssl has no pre-shared keys, so the handshake is our own, small and standard in
shape:

  client -> server  HELLO  = MAGIC, client nonce (32 B), client node id (2 B)
  server -> client  REPLY  = server nonce (32 B), server node id (2 B), HMAC("server", transcript)
  client -> server  PROOF  = HMAC("client", transcript)

The transcript is MAGIC + both nonces + both node ids; the HMAC key is derived from the cluster
key for this use only. A replayed handshake fails, since the other side's nonce is new each time;
a reflected proof fails, since the roles are in the MAC. Session keys, one per direction, come
from HKDF over the cluster key and the transcript. Every frame is a 4-byte length, then
AES-256-GCM (AES-NI makes it the fastest AEAD here: images are gigabytes) with a per-direction
counter nonce and the length as associated data, so a frame cannot be altered, dropped,
reordered, truncated or replayed unnoticed.

Frame plaintext: kind (1 byte) + msgpack map; or, for bulk data (a job's pages), kind | RAW and
the bytes themselves, which the receiver sees as a map {"data": bytes}: no packing, no copy.
The handshake and frame functions are pure; only `Channel`, `open_channel` and
`accept_channel` touch asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pymosix.errors import AuthError, DecodeError
from pymosix.migration.framestream import FrameStream, connect, listen

Buffer = bytes | bytearray | memoryview

MAGIC = b"PMXC3"
NONCE_BYTES = 32
MAC_BYTES = 32
HELLO_BYTES = len(MAGIC) + NONCE_BYTES + 2
REPLY_BYTES = NONCE_BYTES + 2 + MAC_BYTES
#: Largest frame plaintext accepted (a 1 MiB image chunk plus its framing fits with room to spare).
MAX_FRAME = 4 * 1024 * 1024
TAG_BYTES = 16
HANDSHAKE_TIMEOUT_S = 10.0

# --- handshake (pure) ---------------------------------------------------------------------------


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def _auth_key(key: bytes) -> bytes:
    """The handshake's MAC key: the cluster key also signs discovery, so keep the uses apart."""
    return _hkdf(key, b"", b"pymosix channel auth")


@dataclass(frozen=True, slots=True)
class Transcript:
    """Everything both sides said in the handshake; what the proofs and keys are bound to."""

    client_nonce: bytes
    client_id: int
    server_nonce: bytes
    server_id: int

    def data(self) -> bytes:
        return (
            MAGIC
            + self.client_nonce
            + struct.pack("!H", self.client_id)
            + self.server_nonce
            + struct.pack("!H", self.server_id)
        )

    def proof(self, key: bytes, role: bytes) -> bytes:
        return hmac.new(_auth_key(key), role + self.data(), hashlib.sha256).digest()

    def session_keys(self, key: bytes) -> tuple[bytes, bytes]:
        """(client-to-server, server-to-client) keys for this session."""
        salt = hashlib.sha256(self.data()).digest()
        return _hkdf(key, salt, b"pymosix c2s"), _hkdf(key, salt, b"pymosix s2c")


def client_hello(nonce: bytes, node_id: int) -> bytes:
    """The client's first message."""
    return MAGIC + nonce + struct.pack("!H", node_id)


def parse_client_hello(data: bytes) -> tuple[bytes, int]:
    """(client nonce, client node id) from HELLO; DecodeError if it is not ours."""
    if len(data) != HELLO_BYTES or data[: len(MAGIC)] != MAGIC:
        raise DecodeError("not a pymosix migration channel (or another version)")
    (cid,) = struct.unpack("!H", data[-2:])
    return data[len(MAGIC) : len(MAGIC) + NONCE_BYTES], cid


def server_reply(key: bytes, hello: bytes, nonce: bytes, node_id: int) -> tuple[bytes, Transcript]:
    """The server's REPLY to a HELLO, and the transcript to check the client's PROOF against."""
    cn, cid = parse_client_hello(hello)
    t = Transcript(cn, cid, nonce, node_id)
    return nonce + struct.pack("!H", node_id) + t.proof(key, b"server"), t


def client_finish(key: bytes, nonce: bytes, node_id: int, reply: bytes) -> tuple[bytes, Transcript]:
    """Check the server's REPLY; return the client's PROOF and the transcript."""
    if len(reply) != REPLY_BYTES:
        raise DecodeError("short handshake reply")
    sn = reply[:NONCE_BYTES]
    (sid,) = struct.unpack("!H", reply[NONCE_BYTES : NONCE_BYTES + 2])
    t = Transcript(nonce, node_id, sn, sid)
    if not hmac.compare_digest(reply[NONCE_BYTES + 2 :], t.proof(key, b"server")):
        raise AuthError("the peer could not prove the cluster key (another cluster?)")
    return t.proof(key, b"client"), t


def server_finish(key: bytes, t: Transcript, proof: bytes) -> None:
    """Check the client's PROOF; AuthError if it does not hold the key or replays an old one."""
    if not hmac.compare_digest(proof, t.proof(key, b"client")):
        raise AuthError(f"node {t.client_id} could not prove the cluster key (another cluster?)")


# --- frames (pure) ------------------------------------------------------------------------------


@dataclass
class FrameCipher:
    """One direction of a session: seals or opens frames in order."""

    key: bytes
    counter: int = 0
    _aead: AESGCM = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._aead = AESGCM(self.key)

    def _nonce(self) -> bytes:
        if self.counter < 0:
            raise AuthError("channel already failed authentication")
        n = struct.pack("!4xQ", self.counter)
        self.counter += 1
        return n

    def seal(self, plaintext: Buffer) -> bytes:
        """Length prefix + ciphertext of the next frame."""
        head, body = self.seal_parts(plaintext)
        return head + body

    def seal_parts(self, plaintext: Buffer) -> tuple[bytes, bytes]:
        """(length prefix, ciphertext) of the next frame: a big frame goes out without a copy."""
        size = memoryview(plaintext).nbytes
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes is over the {MAX_FRAME} limit")
        head = struct.pack("!I", size + TAG_BYTES)
        return head, self._aead.encrypt(self._nonce(), plaintext, head)

    def open_into(self, head: bytes, ciphertext: Buffer, out: memoryview) -> None:
        """Like open(), into out (exactly the plaintext's size): big frames need no new buffer."""
        if not _HAS_DECRYPT_INTO:
            out[:] = self.open(head, ciphertext)
            return
        try:
            self._aead.decrypt_into(self._nonce(), ciphertext, head, out)
        except InvalidTag:
            self.counter = -(1 << 70)
            raise AuthError(
                "channel frame failed authentication (tampered, reordered or replayed)"
            ) from None

    def open(self, head: bytes, ciphertext: Buffer) -> bytes:
        """The plaintext of the next frame; AuthError if it is not the next one sent.

        After one failure every later frame fails too: the session is no longer trustworthy.
        """
        try:
            return self._aead.decrypt(self._nonce(), ciphertext, head)
        except InvalidTag:
            self.counter = -(1 << 70)  # no nonce ever matches again; _nonce cannot pack it
            raise AuthError(
                "channel frame failed authentication (tampered, reordered or replayed)"
            ) from None


def frame_length(head: bytes) -> int:
    """Ciphertext length from a 4-byte frame head; DecodeError when out of bounds."""
    (length,) = struct.unpack("!I", head)
    if not TAG_BYTES < length <= MAX_FRAME + TAG_BYTES:
        raise DecodeError(f"frame of {length} bytes is out of bounds")
    return int(length)


#: cryptography >= 46 decrypts into a given buffer.
_HAS_DECRYPT_INTO = hasattr(AESGCM, "decrypt_into")
#: Frames above this size are decrypted into the channel's reusable buffer.
_BIG = 64 * 1024

#: Kind bit of a raw frame: the plaintext after the kind byte is data, not msgpack.
RAW = 0x80


def encode_frame(kind: int, payload: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    return bytes([kind]) + body


def decode_frame(plaintext: Buffer) -> tuple[int, dict[str, Any]]:
    if not plaintext:
        raise DecodeError("empty frame")
    if plaintext[0] & RAW:
        return plaintext[0] & ~RAW, {"data": memoryview(plaintext)[1:]}
    try:
        payload = msgpack.unpackb(plaintext[1:], raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise DecodeError(f"frame payload is not valid msgpack: {e}") from None
    if not isinstance(payload, dict):
        raise DecodeError("frame payload is not a map")
    return plaintext[0], payload


def session_ciphers(key: bytes, t: Transcript, client: bool) -> tuple[FrameCipher, FrameCipher]:
    """(send, receive) ciphers for one side of a session."""
    c2s, s2c = t.session_keys(key)
    return (FrameCipher(c2s), FrameCipher(s2c)) if client else (FrameCipher(s2c), FrameCipher(c2s))


# --- streams ------------------------------------------------------------------------------------


class Channel:
    """An open, authenticated, encrypted connection to a peer agent."""

    def __init__(
        self, stream: FrameStream, send: FrameCipher, recv: FrameCipher, peer_id: int
    ) -> None:
        self.stream = stream
        self._send = send
        self._recv = recv
        self.peer_id = peer_id
        self._lock = asyncio.Lock()
        self._plain = bytearray()
        stream.start_frames()

    async def send(self, kind: int, payload: dict[str, Any]) -> None:
        await self.send_plaintext(encode_frame(kind, payload))

    async def send_plaintext(self, plaintext: Buffer) -> None:
        """Send a frame already laid out: kind byte first (kind | RAW, then data, for bulk)."""
        # Seal under the lock: the counter order must be the wire order.
        async with self._lock:
            head, body = self._send.seal_parts(plaintext)
            self.stream.write(head)
            self.stream.write(body)
            await self.stream.drain()

    async def recv(self) -> tuple[int, dict[str, Any]]:
        """The next frame; EOFError when the peer closed the connection (or cut a frame short).

        A raw frame's data is a view that stays valid only until the next recv().
        """
        try:
            head, data = await self.stream.read_frame()
        except ConnectionError:
            raise EOFError("channel closed") from None
        try:
            size = len(data) - TAG_BYTES
            if size <= _BIG:
                return decode_frame(self._recv.open(head, data))
            if len(self._plain) < size:
                self._plain = bytearray(max(size, MAX_FRAME // 4))
            plain = memoryview(self._plain)[:size]
            self._recv.open_into(head, data, plain)
            return decode_frame(plain)
        finally:
            self.stream.release(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.close()

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(Exception):
            await self.stream.wait_closed()


async def _read(stream: FrameStream, n: int, what: str) -> bytes:
    try:
        return await stream.read_exactly(n)
    except (EOFError, ConnectionError):
        raise AuthError(
            f"the peer left the handshake before its {what} (another cluster key?)"
        ) from None


async def open_channel(
    host: str, port: int, key: bytes, node_id: int, timeout_s: float = HANDSHAKE_TIMEOUT_S
) -> Channel:
    """Connect to a peer agent and authenticate both ways."""
    stream = await asyncio.wait_for(connect(host, port, frame_length), timeout_s)
    try:
        return await asyncio.wait_for(_client_handshake(stream, key, node_id), timeout_s)
    except BaseException:
        stream.close()
        raise


async def _client_handshake(stream: FrameStream, key: bytes, node_id: int) -> Channel:
    cn = os.urandom(NONCE_BYTES)
    stream.write(client_hello(cn, node_id))
    await stream.drain()
    proof, t = client_finish(key, cn, node_id, await _read(stream, REPLY_BYTES, "reply"))
    stream.write(proof)
    await stream.drain()
    send, recv = session_ciphers(key, t, client=True)
    return Channel(stream, send, recv, t.server_id)


async def accept_channel(
    stream: FrameStream, key: bytes, node_id: int, timeout_s: float = HANDSHAKE_TIMEOUT_S
) -> Channel:
    """Server side of the handshake; AuthError if the client does not have the key."""
    return await asyncio.wait_for(_server_handshake(stream, key, node_id), timeout_s)


async def _server_handshake(stream: FrameStream, key: bytes, node_id: int) -> Channel:
    try:
        hello = await stream.read_exactly(HELLO_BYTES)
    except (EOFError, ConnectionError):
        raise DecodeError("connection closed before the handshake") from None
    reply, t = server_reply(key, hello, os.urandom(NONCE_BYTES), node_id)
    stream.write(reply)
    await stream.drain()
    server_finish(key, t, await _read(stream, MAC_BYTES, "proof"))
    send, recv = session_ciphers(key, t, client=False)
    return Channel(stream, send, recv, t.client_id)


async def serve_channels(
    host: str,
    port: int,
    key: bytes,
    node_id: int,
    handler: Callable[[Channel], Awaitable[None]],
    on_refused: Callable[[str], None] | None = None,
) -> asyncio.Server:
    """Listen; run handler(channel) for each peer that proves the key, then close its channel."""

    async def accept(stream: FrameStream) -> None:
        try:
            ch = await accept_channel(stream, key, node_id)
        except (AuthError, DecodeError, TimeoutError, OSError) as e:
            stream.close()
            if on_refused is not None:
                on_refused(str(e) or type(e).__name__)
            return
        try:
            await handler(ch)
        finally:
            await ch.aclose()

    return await listen(host, port, frame_length, accept)
