"""The migration channel: handshake and frames refuse wrong keys, replays, tampering, truncation."""

from __future__ import annotations

import asyncio
import os

import pytest

from pymosix.errors import AuthError, DecodeError
from pymosix.migration.channel import (
    HELLO_BYTES,
    MAX_FRAME,
    FrameCipher,
    Transcript,
    client_finish,
    client_hello,
    decode_frame,
    encode_frame,
    frame_length,
    open_channel,
    serve_channels,
    server_finish,
    server_reply,
    session_ciphers,
)

KEY = bytes(range(32))
OTHER = bytes(32)


def handshake(ckey: bytes = KEY, skey: bytes = KEY) -> tuple[Transcript, Transcript, bytes, bytes]:
    cn, sn = os.urandom(32), os.urandom(32)
    hello = client_hello(cn, 0x640B)
    assert len(hello) == HELLO_BYTES
    reply, st = server_reply(skey, hello, sn, 0x640C)
    proof, ct = client_finish(ckey, cn, 0x640B, reply)
    server_finish(skey, st, proof)
    return ct, st, hello, proof


def test_handshake_agrees_on_ids_and_keys() -> None:
    ct, st, _, _ = handshake()
    assert ct == st
    assert (ct.client_id, ct.server_id) == (0x640B, 0x640C)
    c2s, s2c = ct.session_keys(KEY)
    assert c2s != s2c, "one key per direction"
    assert handshake()[0].session_keys(KEY) != (c2s, s2c), "fresh keys every session"


def test_wrong_key_fails_on_both_sides() -> None:
    with pytest.raises(AuthError):
        handshake(ckey=OTHER)  # the client refuses the server's proof
    cn = os.urandom(32)
    reply, st = server_reply(KEY, client_hello(cn, 1), os.urandom(32), 2)
    forged = Transcript(cn, 1, reply[:32], 2).proof(OTHER, b"client")
    with pytest.raises(AuthError):
        server_finish(KEY, st, forged)


def test_replayed_client_handshake_is_refused() -> None:
    _, _, hello, proof = handshake()
    # An eavesdropper replays HELLO and PROOF: the server's new nonce makes the old proof wrong.
    _, st = server_reply(KEY, hello, os.urandom(32), 0x640C)
    with pytest.raises(AuthError):
        server_finish(KEY, st, proof)


def test_reflected_server_proof_is_refused() -> None:
    cn = os.urandom(32)
    reply, st = server_reply(KEY, client_hello(cn, 1), os.urandom(32), 2)
    with pytest.raises(AuthError):
        server_finish(KEY, st, reply[34:])  # the server's own MAC sent back as the client's


def test_garbage_hello_and_short_reply() -> None:
    with pytest.raises(DecodeError):
        server_reply(KEY, b"GET / HTTP/1.1\r\n" + bytes(23), os.urandom(32), 1)
    with pytest.raises(DecodeError):
        client_finish(KEY, os.urandom(32), 1, b"short")


def pair() -> tuple[FrameCipher, FrameCipher]:
    ct, st, _, _ = handshake()
    c_send, _ = session_ciphers(KEY, ct, client=True)
    _, s_recv = session_ciphers(KEY, st, client=False)
    return c_send, s_recv


def split(frame: bytes) -> tuple[bytes, bytes]:
    head, body = frame[:4], frame[4:]
    assert frame_length(head) == len(body)
    return head, body


def test_frames_round_trip_in_order() -> None:
    send, recv = pair()
    for i in range(3):
        head, body = split(send.seal(encode_frame(22, {"name": "pages-1.img", "data": bytes([i])})))
        assert decode_frame(recv.open(head, body)) == (
            22,
            {"name": "pages-1.img", "data": bytes([i])},
        )


@pytest.mark.parametrize("where", [0, 3, 4, 10, -1])
def test_tampered_frame_is_refused(where: int) -> None:
    send, recv = pair()
    frame = bytearray(send.seal(encode_frame(1, {"data": b"x" * 40})))
    frame[where] ^= 0x01
    head = bytes(frame[:4])

    def receive() -> bytes:
        return recv.open(head, bytes(frame[4 : 4 + frame_length(head)]))

    with pytest.raises((AuthError, DecodeError)):
        receive()


def test_replayed_reordered_and_dropped_frames_are_refused() -> None:
    send, recv = pair()
    first = split(send.seal(encode_frame(1, {"n": 1})))
    second = split(send.seal(encode_frame(1, {"n": 2})))
    recv.open(*first)
    with pytest.raises(AuthError):
        recv.open(*first)  # replayed
    send2, recv2 = pair()
    send2.seal(b"\x01\x80")  # a first frame that never arrives
    with pytest.raises(AuthError):
        recv2.open(*split(send2.seal(b"\x01\x80")))  # dropped or reordered
    with pytest.raises(AuthError):
        recv.open(*second)  # after a failure the session is dead, even for the right frame


def test_frames_from_another_session_are_refused() -> None:
    send, _ = pair()
    _, recv = pair()
    with pytest.raises(AuthError):
        recv.open(*split(send.seal(encode_frame(1, {}))))


def test_frame_bounds() -> None:
    with pytest.raises(DecodeError):
        frame_length((MAX_FRAME + 17).to_bytes(4, "big"))
    with pytest.raises(DecodeError):
        frame_length(bytes(4))
    send, _ = pair()
    with pytest.raises(ValueError, match="limit"):
        send.seal(bytes(MAX_FRAME + 1))
    with pytest.raises(DecodeError):
        decode_frame(b"\x01\xc1")  # msgpack's never-used byte
    with pytest.raises(DecodeError):
        decode_frame(b"\x01\x01")  # not a map
    with pytest.raises(DecodeError):
        decode_frame(b"")


async def test_loopback_both_ways_and_truncation() -> None:
    got: asyncio.Queue[tuple[int, dict[str, object]]] = asyncio.Queue()
    refused: list[str] = []

    async def echo(ch: object) -> None:
        from pymosix.migration.channel import Channel

        assert isinstance(ch, Channel)
        assert ch.peer_id == 7
        while True:
            try:
                kind, payload = await ch.recv()
            except EOFError:
                return
            await got.put((kind, payload))
            await ch.send(kind + 1, payload)

    server = await serve_channels("127.0.0.1", 0, KEY, 9, echo, refused.append)
    port = server.sockets[0].getsockname()[1]
    try:
        ch = await asyncio.wait_for(open_channel("127.0.0.1", port, KEY, 7), 5)
        assert ch.peer_id == 9
        big = os.urandom(1 << 20)
        await ch.send(22, {"data": big})
        assert await asyncio.wait_for(ch.recv(), 5) == (23, {"data": big})
        assert (await got.get())[0] == 22
        # A frame cut short by a dropped connection is EOF on the other side, never a frame.
        ch.stream.write(ch._send.seal(encode_frame(1, {"x": 1}))[:-5])
        await ch.stream.drain()
        await ch.aclose()

        with pytest.raises(AuthError):
            await asyncio.wait_for(open_channel("127.0.0.1", port, OTHER, 7), 5)

        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"N" * HELLO_BYTES)
        await w.drain()
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        for _ in range(100):
            if len(refused) >= 2:
                break
            await asyncio.sleep(0.01)
        assert len(refused) == 2, refused
        assert got.empty(), "the truncated frame must never arrive"
    finally:
        server.close()
        await server.wait_closed()
