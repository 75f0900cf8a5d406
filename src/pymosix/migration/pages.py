"""A job's memory streams to the target while it is dumped: CRIU's page-server protocol, carried
over the encrypted channel.

On the source `criu dump --page-server --ps-socket FD` and on the target `criu page-server
--ps-socket FD` each get one end of a local socketpair; `relay_pages`, the same on both sides,
carries the bytes between the other end and the channel, both ways (the page server answers the
dumper's open and flush requests). So the pages go from the job's address space to the target's
image directory in one pass: the source writes no image of them, and the sending overlaps the
dump instead of following it. We never parse the stream: CRIU's two halves speak to each other,
and the channel makes sure nobody else does.

  source -> target  PAGES {data}... PAGES_END   (what the dumper wrote, then its end)
  target -> source  PAGES {data}... PAGES_END   (the page server's answers, then its end)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from pymosix.errors import MigrationError
from pymosix.migration.channel import RAW, Channel
from pymosix.migration.link import Frame

#: Bytes read from the local socket per frame: one MiB keeps the frame count (and the per-frame
#: cost of sealing) low while staying well under the channel's frame limit.
PAGES_CHUNK = 1024 * 1024


def page_socketpair() -> tuple[socket.socket, socket.socket]:
    """(criu's end, our end); big buffers, since a dump writes in bursts of a pipe's worth."""
    criu_end, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (criu_end, ours):
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * PAGES_CHUNK)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * PAGES_CHUNK)
    ours.setblocking(False)
    return criu_end, ours


async def relay_pages(ch: Channel, sock: socket.socket, limit: int) -> int:
    """Carry bytes between the local CRIU at the other end of sock and the peer's, until both
    directions have ended; returns the bytes that came in. Closes sock.

    MigrationError if the peer sends anything else (a FAILED with its reason), or more than
    limit bytes; EOFError if the channel closes first.
    """
    loop = asyncio.get_running_loop()
    received = 0

    async def outbound() -> None:
        # Read straight into a raw frame's plaintext, after its kind byte: no copies.
        frame = bytearray(1 + PAGES_CHUNK)
        frame[0] = Frame.PAGES | RAW
        view = memoryview(frame)
        while True:
            n = await loop.sock_recv_into(sock, view[1:])
            if not n:
                await ch.send(Frame.PAGES_END, {})
                return
            await ch.send_plaintext(view[: 1 + n])

    async def inbound() -> None:
        nonlocal received
        while True:
            kind, p = await ch.recv()
            if kind == Frame.PAGES_END:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                return
            if kind == Frame.FAILED:
                raise MigrationError(str(p.get("error") or "the peer gave up"))
            if kind != Frame.PAGES:
                raise MigrationError(f"unexpected frame {kind} among the pages")
            data = p.get("data") or b""
            received += len(data)
            if received > limit:
                raise MigrationError(f"more than {limit >> 30} GiB of pages")
            # If CRIU at this end stopped reading (it failed; its log says why), drop the rest
            # and let the other end finish, so that both sides see the outcome.
            with contextlib.suppress(OSError):
                await loop.sock_sendall(sock, data)

    tasks = [asyncio.ensure_future(outbound()), asyncio.ensure_future(inbound())]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
    return received
