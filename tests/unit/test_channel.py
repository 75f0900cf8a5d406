"""The agent channel: the Noise handshake refuses wrong keys, replays and tampering and gives
forward secrecy; frames refuse replays, reordering, tampering, truncation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from noise.connection import NoiseConnection

from pymosix.errors import AuthError, DecodeError
from pymosix.keys import ClusterKey, KeyRing
from pymosix.migration import channel
from pymosix.migration.channel import (
    CONFIRM,
    HELLO_BYTES,
    MAX_FRAME,
    REPLY_BYTES,
    Channel,
    ClientHandshake,
    FrameCipher,
    Session,
    decode_frame,
    encode_frame,
    frame_length,
    open_channel,
    serve_channels,
    server_reply,
)

KEY = bytes(range(32))
OTHER = bytes(32)
#: Injecting an ephemeral key (to replay a session exactly) makes the library warn, rightly.
injects_ephemeral = pytest.mark.filterwarnings("ignore:One of ephemeral keypairs")


def handshake(
    ckeys: KeyRing | bytes = KEY, skeys: KeyRing | bytes = KEY, ephemeral: bytes | None = None
) -> tuple[Session, Session, bytes, bytes]:
    """(client session, server session, hello, reply) of one handshake, 0x640b to 0x640c."""
    client = ClientHandshake(ckeys, 0x640B, ephemeral)
    hello = client.hello
    assert len(hello) == HELLO_BYTES
    reply, server = server_reply(skeys, hello, 0x640C)
    assert len(reply) == REPLY_BYTES
    return client.finish(reply), server, hello, reply


def test_handshake_agrees_on_ids_and_keys() -> None:
    c, s, _, _ = handshake()
    assert (c.peer_id, s.peer_id) == (0x640C, 0x640B)
    assert (c.send_key, c.recv_key) == (s.recv_key, s.send_key)
    assert c.send_key != c.recv_key, "one key per direction"
    assert c.handshake_hash == s.handshake_hash
    again, _, _, _ = handshake()
    assert again.send_key != c.send_key, "fresh keys every session"


def test_wrong_key_is_refused_on_both_sides() -> None:
    with pytest.raises(AuthError, match="does not have"):
        handshake(ckeys=OTHER)  # the server does not know the client's key
    # The right key id with the wrong key behind it: the Noise message does not open.
    forged = bytearray(ClientHandshake(OTHER, 1).hello)
    forged[5:9] = ClusterKey(KEY).key_id
    with pytest.raises(AuthError, match="prove"):
        server_reply(KEY, bytes(forged), 2)
    # A server without the key cannot make a reply the client takes.
    with pytest.raises(AuthError, match="prove"):
        ClientHandshake(KEY, 1).finish(os.urandom(REPLY_BYTES))
    reply, _ = server_reply(KEY, ClientHandshake(KEY, 1).hello, 2)
    with pytest.raises(AuthError):
        ClientHandshake(KEY, 1).finish(reply)  # a reply to another client's hello


@pytest.mark.parametrize("where", [0, 4, 5, 8, 9, 40, HELLO_BYTES - 1])
def test_tampered_hello_is_refused(where: int) -> None:
    """Magic, key id, ephemeral key, node id: every byte is bound."""
    hello = bytearray(ClientHandshake(KEY, 0x640B).hello)
    hello[where] ^= 0x01
    with pytest.raises((AuthError, DecodeError)):
        server_reply(KEY, bytes(hello), 0x640C)


@pytest.mark.parametrize("where", [0, 31, 32, 33, REPLY_BYTES - 1])
def test_tampered_reply_is_refused(where: int) -> None:
    """The server's node id and ephemeral key cannot be changed on the way."""
    client = ClientHandshake(KEY, 0x640B)
    reply = bytearray(server_reply(KEY, client.hello, 0x640C)[0])
    reply[where] ^= 0x01
    with pytest.raises(AuthError):
        client.finish(bytes(reply))


def test_replayed_hello_gives_a_session_nobody_can_confirm() -> None:
    """NNpsk0's first message can be replayed; the confirm frame that follows cannot."""
    c, _, hello, _ = handshake()
    confirm = split(FrameCipher(c.send_key).seal(encode_frame(CONFIRM, {})))
    _, replayed = server_reply(KEY, hello, 0x640C)  # an eavesdropper resends the hello
    with pytest.raises(AuthError):
        replayed.ciphers()[1].open(*confirm)


def test_garbage_and_short_messages() -> None:
    with pytest.raises(DecodeError):
        server_reply(KEY, b"GET / HTTP/1.1\r\n" + bytes(HELLO_BYTES - 16), 1)
    with pytest.raises(DecodeError):
        server_reply(KEY, ClientHandshake(KEY, 1).hello[:-1], 1)
    with pytest.raises(DecodeError):
        ClientHandshake(KEY, 1).finish(b"short")


def test_rotation_client_and_server_with_different_rings() -> None:
    old, new = ClusterKey(KEY, 0), ClusterKey(OTHER, 100)
    both_before = KeyRing([old, new], now=50)  # the new key accepted, not signing yet
    both_after = KeyRing([old, new], now=150)
    only_old, only_new = KeyRing([old], 0), KeyRing([new], 0)
    assert both_before.current == KEY
    assert both_after.current == OTHER
    for client, server in [
        (both_before, only_old),
        (only_old, both_after),
        (both_after, only_new),
        (only_new, both_before),
    ]:
        c, s, _, _ = handshake(client, server)
        assert c.send_key == s.recv_key
    with pytest.raises(AuthError, match=new.name):
        handshake(only_new, only_old)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@injects_ephemeral
def test_forward_secrecy_key_alone_does_not_open_a_recording() -> None:
    """Everything on the wire plus the cluster key is not enough; with the client's ephemeral
    secret (gone when the session ends) it is, which shows the recording is complete."""
    eph = private_bytes(X25519PrivateKey.generate())
    c, _, hello, reply = handshake(ephemeral=eph)
    frame = split(FrameCipher(c.send_key).seal(encode_frame(22, {"data": b"secret pages"})))
    assert attack_with_key(KEY, hello, reply, frame) is None
    # Control: the one thing the attacker lacks.
    again = ClientHandshake(KEY, 0x640B, eph)
    assert again.hello == hello
    opened = again.finish(reply).ciphers()[0]
    assert decode_frame(FrameCipher(opened.key).open(*frame))[1]["data"] == b"secret pages"


def attack_with_key(
    key: bytes, hello: bytes, reply: bytes, frame: tuple[bytes, bytes]
) -> bytes | None:
    """All an attacker holding the cluster key can do with a recording: be the server again, or
    be a client with an ephemeral key of its own. None if no frame opened."""
    _, server = server_reply(key, hello, 0x640C)
    tries = [server.recv_key, server.send_key]
    with pytest.raises(AuthError):
        ClientHandshake(key, 0x640B).finish(reply)
    for k in tries:
        try:
            return FrameCipher(k).open(*frame)
        except AuthError:
            continue
    return None


def split(frame: bytes) -> tuple[bytes, bytes]:
    head, body = frame[:4], frame[4:]
    assert frame_length(head) == len(body)
    return head, body


def pair() -> tuple[FrameCipher, FrameCipher]:
    c, s, _, _ = handshake()
    return c.ciphers()[0], s.ciphers()[1]


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


async def start_server(
    keys: KeyRing | bytes,
    handler: Callable[[Channel], Awaitable[None]],
    refused: list[str],
) -> tuple[asyncio.Server, int]:
    server = await serve_channels("127.0.0.1", 0, keys, 9, handler, refused.append)
    return server, server.sockets[0].getsockname()[1]


async def wait_for(cond: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def record_through_proxy(
    port: int, run: Callable[[int], Awaitable[None]]
) -> tuple[bytes, bytes]:
    """Run `run(proxy_port)` through a relay that records both directions: (c2s, s2c)."""
    c2s, s2c = bytearray(), bytearray()
    done: list[asyncio.Task[None]] = []

    async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, log: bytearray) -> None:
        try:
            while data := await r.read(1 << 16):
                log += data
                w.write(data)
                await w.drain()
        finally:
            w.close()

    async def relay(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", port)
        done.append(asyncio.create_task(pump(cr, sw, c2s)))
        done.append(asyncio.create_task(pump(sr, cw, s2c)))

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        await run(proxy.sockets[0].getsockname()[1])
        await asyncio.wait_for(asyncio.gather(*done, return_exceptions=True), 5)
    finally:
        proxy.close()
        await proxy.wait_closed()
    return bytes(c2s), bytes(s2c)


async def test_recorded_session_stays_closed_to_the_key_holder() -> None:
    """A migration recorded off the wire, then attacked with the cluster key: nothing opens."""
    secret = b"the memory of a user's job " * 100
    got: list[bytes] = []

    async def sink(ch: Channel) -> None:
        _, p = await ch.recv()
        got.append(bytes(p["data"]))
        await ch.send(23, {"ok": True})

    server, port = await start_server(KEY, sink, [])

    async def migrate(via: int) -> None:
        ch = await asyncio.wait_for(open_channel("127.0.0.1", via, KEY, 7), 5)
        await ch.send(22, {"data": secret})
        assert (await asyncio.wait_for(ch.recv(), 5))[0] == 23
        await ch.aclose()

    try:
        c2s, s2c = await record_through_proxy(port, migrate)
    finally:
        server.close()
        await server.wait_closed()
    assert got == [secret], "the recorded session was a real one"
    assert secret[:20] not in c2s, "no plaintext on the wire"
    hello, reply = c2s[:HELLO_BYTES], s2c[:REPLY_BYTES]
    # The client's frames: CONFIRM, then the pages.
    first = c2s[HELLO_BYTES:]
    confirm_len = frame_length(first[:4])
    pages = first[4 + confirm_len :]
    frame = (pages[:4], pages[4 : 4 + frame_length(pages[:4])])
    assert attack_with_key(KEY, hello, reply, frame) is None


async def test_replayed_hello_over_the_wire_is_refused() -> None:
    """A captured hello resent to the server: the server answers, but never takes the peer."""
    handled: list[int] = []
    refused: list[str] = []

    async def handler(ch: Channel) -> None:
        handled.append(ch.peer_id)

    server, port = await start_server(KEY, handler, refused)
    try:

        async def connect(via: int) -> None:
            ch = await asyncio.wait_for(open_channel("127.0.0.1", via, KEY, 7), 5)
            await ch.aclose()

        c2s, _ = await record_through_proxy(port, connect)
        await wait_for(lambda: handled == [7], "the genuine session")
        for replay in (c2s[:HELLO_BYTES], c2s):  # the hello alone; everything the client sent
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(replay)
            await w.drain()
            w.write_eof()
            assert len(await asyncio.wait_for(r.read(), 5)) == REPLY_BYTES
            w.close()
        await wait_for(lambda: len(refused) == 2, "two refusals")
        assert handled == [7], refused
        assert "confirm" in refused[0], refused
    finally:
        server.close()
        await server.wait_closed()


def test_low_order_ephemeral_from_a_key_holder_is_an_auth_error() -> None:
    """Even with the key, an all-zero X25519 point is refused cleanly, not with a ValueError."""
    key_id = ClusterKey(KEY).key_id
    conn = NoiseConnection.from_name(channel.PROTOCOL)
    conn.set_psks(channel._psk(KEY))
    conn.set_prologue(channel._PROLOGUE + channel.MAGIC + key_id)
    conn.set_as_initiator()
    conn.start_handshake()
    # Write message 1 by hand with the point 0 in place of a real ephemeral key.
    hs = conn.noise_protocol.handshake_state
    sym = hs.symmetric_state
    zero = bytes(32)
    sym.mix_key_and_hash(conn.noise_protocol.psks.pop(0))
    sym.mix_hash(zero)
    sym.mix_key(zero)
    hello = channel.MAGIC + key_id + zero + bytes(sym.encrypt_and_hash((1).to_bytes(2, "big")))
    with pytest.raises(AuthError, match="invalid ephemeral"):
        server_reply(KEY, hello, 2)
