"""The channel between node agents: mutually authenticated with the cluster key, encrypted.

Python 3.11's ssl has no pre-shared keys, so the handshake is our own, small and standard in
shape: each side sends a random nonce and proves the key by an HMAC over both nonces and both
node ids (a replayed handshake fails, since the other side's nonce is new); session keys for each
direction come from HKDF over the key and the nonces; every frame is ChaCha20-Poly1305 with a
counter nonce, so a frame cannot be altered, dropped, reordered or replayed unnoticed.

Frame plaintext: kind (1 byte) + msgpack payload. Images travel as FILE frames of at most 1 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pymosix.errors import AuthError, DecodeError

MAGIC = b"PMXC1"
NONCE_BYTES = 32
#: Largest frame accepted (a 1 MiB image chunk plus its framing fits with room to spare).
MAX_FRAME = 4 * 1024 * 1024
HANDSHAKE_TIMEOUT_S = 10.0


def _proof(key: bytes, role: bytes, cn: bytes, sn: bytes, cid: int, sid: int) -> bytes:
    return hmac.new(key, role + cn + sn + struct.pack("!HH", cid, sid), hashlib.sha256).digest()


def session_keys(key: bytes, cn: bytes, sn: bytes) -> tuple[bytes, bytes]:
    """(client-to-server, server-to-client) keys for this session."""
    c2s, s2c = (
        HKDF(algorithm=hashes.SHA256(), length=32, salt=cn + sn, info=info).derive(key)
        for info in (b"pymosix c2s", b"pymosix s2c")
    )
    return c2s, s2c


@dataclass
class FrameCipher:
    """One direction of a session: seals or opens frames in order."""

    key: bytes
    counter: int = 0

    def _nonce(self) -> bytes:
        n = struct.pack("!4xQ", self.counter)
        self.counter += 1
        return n

    def seal(self, plaintext: bytes) -> bytes:
        return ChaCha20Poly1305(self.key).encrypt(self._nonce(), plaintext, None)

    def open(self, ciphertext: bytes) -> bytes:
        try:
            return ChaCha20Poly1305(self.key).decrypt(self._nonce(), ciphertext, None)
        except InvalidTag:
            raise AuthError(
                "channel frame failed authentication (tampered, reordered or replayed)"
            ) from None


def encode_frame(kind: int, payload: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    return bytes([kind]) + body


def decode_frame(plaintext: bytes) -> tuple[int, dict[str, Any]]:
    if not plaintext:
        raise DecodeError("empty frame")
    try:
        payload = msgpack.unpackb(plaintext[1:], raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise DecodeError(f"frame payload is not valid msgpack: {e}") from None
    if not isinstance(payload, dict):
        raise DecodeError("frame payload is not a map")
    return plaintext[0], payload


class Channel:
    """An open, authenticated, encrypted connection to a peer agent."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        send: FrameCipher,
        recv: FrameCipher,
        peer_id: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._send = send
        self._recv = recv
        self.peer_id = peer_id
        self._lock = asyncio.Lock()

    async def send(self, kind: int, payload: dict[str, Any]) -> None:
        data = self._send.seal(encode_frame(kind, payload))
        async with self._lock:
            self.writer.write(struct.pack("!I", len(data)) + data)
            await self.writer.drain()

    async def recv(self) -> tuple[int, dict[str, Any]]:
        """The next frame; EOFError when the peer closed the connection."""
        try:
            (length,) = struct.unpack("!I", await self.reader.readexactly(4))
            if length > MAX_FRAME + 64:
                raise DecodeError(f"frame of {length} bytes is too large")
            data = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise EOFError("channel closed") from None
        return decode_frame(self._recv.open(data))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def open_channel(
    host: str, port: int, key: bytes, node_id: int, timeout_s: float = HANDSHAKE_TIMEOUT_S
) -> Channel:
    """Connect to a peer agent and authenticate both ways."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        return await asyncio.wait_for(_client_handshake(reader, writer, key, node_id), timeout_s)
    except BaseException:
        writer.close()
        raise


async def _client_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes, node_id: int
) -> Channel:
    cn = os.urandom(NONCE_BYTES)
    writer.write(MAGIC + cn + struct.pack("!H", node_id))
    await writer.drain()
    try:
        sn = await reader.readexactly(NONCE_BYTES)
        (sid,) = struct.unpack("!H", await reader.readexactly(2))
        proof = await reader.readexactly(32)
    except asyncio.IncompleteReadError:
        raise AuthError(
            "the peer closed the channel during the handshake (another cluster key?)"
        ) from None
    if not hmac.compare_digest(proof, _proof(key, b"server", cn, sn, node_id, sid)):
        raise AuthError("the peer could not prove the cluster key")
    writer.write(_proof(key, b"client", cn, sn, node_id, sid))
    await writer.drain()
    c2s, s2c = session_keys(key, cn, sn)
    return Channel(reader, writer, FrameCipher(c2s), FrameCipher(s2c), sid)


async def accept_channel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    key: bytes,
    node_id: int,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> Channel:
    """Server side of the handshake; AuthError if the client does not have the key."""
    return await asyncio.wait_for(_server_handshake(reader, writer, key, node_id), timeout_s)


async def _server_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes, node_id: int
) -> Channel:
    try:
        head = await reader.readexactly(len(MAGIC) + NONCE_BYTES + 2)
    except asyncio.IncompleteReadError:
        raise DecodeError("connection closed before the handshake") from None
    if head[: len(MAGIC)] != MAGIC:
        raise DecodeError("not a pymosix channel")
    cn = head[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    (cid,) = struct.unpack("!H", head[-2:])
    sn = os.urandom(NONCE_BYTES)
    writer.write(sn + struct.pack("!H", node_id) + _proof(key, b"server", cn, sn, cid, node_id))
    await writer.drain()
    try:
        proof = await reader.readexactly(32)
    except asyncio.IncompleteReadError:
        raise AuthError("the peer left the handshake (another cluster key?)") from None
    if not hmac.compare_digest(proof, _proof(key, b"client", cn, sn, cid, node_id)):
        raise AuthError("the peer could not prove the cluster key")
    c2s, s2c = session_keys(key, cn, sn)
    return Channel(reader, writer, FrameCipher(s2c), FrameCipher(c2s), cid)
