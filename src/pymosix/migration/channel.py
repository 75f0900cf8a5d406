"""The channel between node agents: a Noise handshake on the cluster key, then AES-GCM frames.

The handshake is the Noise framework's ``Noise_NNpsk0_25519_AESGCM_SHA256`` (noiseprotocol.org,
through the `noiseprotocol` library): both sides make a fresh X25519 key pair for the connection,
and the cluster key (through HKDF, kept apart from its other uses) is the pre-shared key mixed in
before the first message. So only holders of the key complete it, and the session keys come from
the ephemeral Diffie-Hellman too: a recording of the traffic cannot be read later with the cluster
key alone (forward secrecy). Messages, all of fixed size::

  client -> server  MAGIC, key id (4 B) | Noise message 1: e, payload = client node id (2 B)
  server -> client  Noise message 2: e, ee, payload = server node id (2 B)
  client -> server  the first frame, CONFIRM: proves the client has the session keys

MAGIC and the key id (which of the cluster keys, see keys.py) are the Noise prologue, and the node
ids are handshake payloads: all are bound by the handshake hash, so neither side can be told
another's id or key. Message 1 alone could be replayed (0-RTT, as in every NNpsk0), so the server
takes a client only once its CONFIRM frame opens under the new session key.

After the handshake Noise's Split() gives one key per direction; each frame is a 4-byte length,
then AES-256-GCM under that key (AES-NI makes it the fastest AEAD here: images are gigabytes) with
a counter nonce (Noise's own nonce layout) and the length as associated data, so a frame cannot be
altered, dropped, reordered, truncated or replayed unnoticed. Big frames are decrypted into a
reused buffer: the bulk path costs what it cost before the handshake changed.

Frame plaintext: kind (1 byte) + msgpack map; or, for bulk data (a job's pages), kind | RAW and
the bytes themselves, which the receiver sees as a map {"data": bytes}: no packing, no copy.
The handshake and frame functions are pure; only `Channel`, `open_channel` and
`accept_channel` touch asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from noise.connection import Keypair, NoiseConnection

from pymosix.errors import AuthError, DecodeError
from pymosix.keys import ID_BYTES, KeyRing, as_ring
from pymosix.migration.framestream import FrameStream, connect, listen

Buffer = bytes | bytearray | memoryview

PROTOCOL = b"Noise_NNpsk0_25519_AESGCM_SHA256"
MAGIC = b"PMXN1"
_PROLOGUE = b"pymosix agent channel\0"
_DH_BYTES = 32
_ID = struct.Struct("!H")
#: The client's first message: MAGIC, key id, ephemeral key, sealed node id.
HELLO_BYTES = len(MAGIC) + ID_BYTES + _DH_BYTES + _ID.size + 16
#: The server's reply: ephemeral key, sealed node id.
REPLY_BYTES = _DH_BYTES + _ID.size + 16
#: Largest frame plaintext accepted (a 1 MiB image chunk plus its framing fits with room to spare).
MAX_FRAME = 4 * 1024 * 1024
TAG_BYTES = 16
HANDSHAKE_TIMEOUT_S = 10.0
#: Kind of the client's first frame, which completes the handshake (never handed to a handler).
CONFIRM = 0x7F

# --- handshake (pure: the ephemeral keys may be passed in) -------------------------------------


def _psk(key: bytes) -> bytes:
    """The Noise PSK: the cluster key also signs datagrams, so keep the uses apart."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"pymosix channel psk"
    ).derive(key)


@dataclass(frozen=True, slots=True)
class Session:
    """What a finished handshake gives one side."""

    peer_id: int
    send_key: bytes
    recv_key: bytes
    #: Noise's handshake hash: the same on both sides, unique to this session.
    handshake_hash: bytes

    def ciphers(self) -> tuple[FrameCipher, FrameCipher]:
        """(send, receive) frame ciphers."""
        return FrameCipher(self.send_key), FrameCipher(self.recv_key)


def _noise(key: bytes, key_id: bytes, initiator: bool, ephemeral: bytes | None) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL)
    conn.set_psks(_psk(key))
    conn.set_prologue(_PROLOGUE + MAGIC + key_id)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    if ephemeral is not None:
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    conn.start_handshake()
    return conn


def _session(conn: NoiseConnection, peer_id: int) -> Session:
    proto = conn.noise_protocol
    return Session(
        peer_id,
        bytes(proto.cipher_state_encrypt.k),
        bytes(proto.cipher_state_decrypt.k),
        bytes(conn.get_handshake_hash()),
    )


def _read_id(payload: bytes) -> int:
    if len(payload) != _ID.size:
        raise DecodeError("handshake payload of the wrong size")
    (node_id,) = _ID.unpack(payload)
    return int(node_id)


class ClientHandshake:
    """The client's side: send `hello`, then `finish(reply)` once."""

    def __init__(self, keys: KeyRing | bytes, node_id: int, ephemeral: bytes | None = None) -> None:
        ring = as_ring(keys)
        key_id = ring.signing.key_id
        self._conn = _noise(ring.current, key_id, True, ephemeral)
        self.hello = MAGIC + key_id + bytes(self._conn.write_message(_ID.pack(node_id)))

    def finish(self, reply: bytes) -> Session:
        """The session, once the server proved the key; AuthError if it could not."""
        if len(reply) != REPLY_BYTES:
            raise DecodeError("short handshake reply")
        try:
            payload = bytes(self._conn.read_message(reply))
        except (InvalidTag, ValueError):
            raise AuthError("the peer could not prove the cluster key (another cluster?)") from None
        return _session(self._conn, _read_id(payload))


def server_reply(
    keys: KeyRing | bytes, hello: bytes, node_id: int, ephemeral: bytes | None = None
) -> tuple[bytes, Session]:
    """The server's reply to a client's hello, and the session (confirmed by the first frame).

    DecodeError if it is not a pymosix hello; AuthError if its key is not ours.
    """
    if len(hello) != HELLO_BYTES or hello[: len(MAGIC)] != MAGIC:
        raise DecodeError("not a pymosix agent channel (or another version)")
    key_id = hello[len(MAGIC) : len(MAGIC) + ID_BYTES]
    key = as_ring(keys).find(key_id)
    if key is None:
        raise AuthError(
            f"the peer uses cluster key {key_id.hex()}, which this node does not have "
            "(another cluster, or a key file not yet copied here)"
        )
    conn = _noise(key, key_id, False, ephemeral)
    try:
        payload = bytes(conn.read_message(hello[len(MAGIC) + ID_BYTES :]))
    except (InvalidTag, ValueError):
        raise AuthError("the peer could not prove the cluster key (another cluster?)") from None
    peer = _read_id(payload)
    try:
        reply = bytes(conn.write_message(_ID.pack(node_id)))
    except ValueError:  # X25519 refuses a low-order point: only a key holder can send one
        raise AuthError(f"node {peer} sent an invalid ephemeral key") from None
    return reply, _session(conn, peer)


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
    host: str,
    port: int,
    keys: KeyRing | bytes,
    node_id: int,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> Channel:
    """Connect to a peer agent and authenticate both ways, with the key `keys` signs with now."""
    stream = await asyncio.wait_for(connect(host, port, frame_length), timeout_s)
    try:
        return await asyncio.wait_for(_client_handshake(stream, keys, node_id), timeout_s)
    except BaseException:
        stream.close()
        raise


async def _client_handshake(stream: FrameStream, keys: KeyRing | bytes, node_id: int) -> Channel:
    hs = ClientHandshake(keys, node_id)
    stream.write(hs.hello)
    await stream.drain()
    session = hs.finish(await _read(stream, REPLY_BYTES, "reply"))
    ch = Channel(stream, *session.ciphers(), session.peer_id)
    # No round trip: the caller's first frame follows right behind.
    await ch.send(CONFIRM, {})
    return ch


async def accept_channel(
    stream: FrameStream,
    keys: KeyRing | bytes,
    node_id: int,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> Channel:
    """Server side of the handshake (any key of the ring); AuthError if the client has none."""
    return await asyncio.wait_for(_server_handshake(stream, keys, node_id), timeout_s)


async def _server_handshake(stream: FrameStream, keys: KeyRing | bytes, node_id: int) -> Channel:
    try:
        hello = await stream.read_exactly(HELLO_BYTES)
    except (EOFError, ConnectionError):
        raise DecodeError("connection closed before the handshake") from None
    reply, session = server_reply(keys, hello, node_id)
    stream.write(reply)
    await stream.drain()
    ch = Channel(stream, *session.ciphers(), session.peer_id)
    try:
        kind, _ = await ch.recv()
    except EOFError:
        raise AuthError(
            f"node {session.peer_id} left the handshake before confirming it (a replayed hello?)"
        ) from None
    if kind != CONFIRM:
        raise AuthError(f"node {session.peer_id} sent frame kind {kind} before confirming")
    return ch


async def serve_channels(
    host: str,
    port: int,
    keys: KeyRing | bytes,
    node_id: int,
    handler: Callable[[Channel], Awaitable[None]],
    on_refused: Callable[[str], None] | None = None,
) -> asyncio.Server:
    """Listen; run handler(channel) for each peer that proves the key, then close its channel."""

    async def accept(stream: FrameStream) -> None:
        try:
            ch = await accept_channel(stream, keys, node_id)
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
