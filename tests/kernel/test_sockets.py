"""Sockets with CRIU >= 4.2: what means the same on another node moves and works there (unix
sockets, loopback TCP connections within the job, listening and unbound sockets, UDP); a
connection that would break (to another host, or to a loopback peer outside the job) is
refused with its peer named, and bare criu shows it failing or restoring it broken."""

from __future__ import annotations

import select
import subprocess

import pytest

from pymosix.testbed import TestBed
from tests.kernel.jobs import Job, MakeBed
from tests.kernel.test_precheck import (  # noqa: F401 - the fixture criu42
    _criu42,
    bare_criu,
    broke,
    looping,
    moves_and_goes_on,
    refused_and_stays,
    start,
)

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("criu42")]

#: A peer outside any job: echoes what it gets (tcp, udp or unix), says "ready" when bound.
ECHO = """
import socket, sys, threading
kind, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, port))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(64); s.sendto(data, peer)
s = socket.socket(socket.AF_UNIX) if kind == "unix" else socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(addr if kind == "unix" else (addr, port)); s.listen()
print("ready", flush=True)
def echo(c):
    while data := c.recv(64):
        c.sendall(data)
while True:
    c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
"""


def serve(
    bed: TestBed,
    node: int,
    procs: list[subprocess.Popen[bytes]],
    kind: str,
    addr: str,
    port: int = 0,
) -> None:
    """An echo peer on `node`, outside any job; returns once it is bound."""
    p = bed.popen(node, ["python3", "-c", ECHO, kind, addr, str(port)], stdout=subprocess.PIPE)
    procs.append(p)
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], 20)
    assert ready, "the echo peer did not start"
    assert p.stdout.readline() == b"ready\n"


#: One byte there and back over `conn` each round.
ROUND_TRIP = """
conn.sendall(b"x")
assert conn.recv(1) == b"x"
"""

# --- they move and work there ---------------------------------------------------------------

UNIX = looping(
    """
    pair_a, pair_b = socket.socketpair()
    path = os.path.join(os.getcwd(), "pmx-%d.sock" % os.getpid())
    named = socket.socket(socket.AF_UNIX); named.bind(path); named.listen()
    abstract = socket.socket(socket.AF_UNIX); abstract.bind("\\0pmx-%d" % os.getpid()); abstract.listen()
    kept = socket.socket(socket.AF_UNIX); kept.connect(path); kept_srv, _ = named.accept()
    if os.fork() == 0:  # the socketpair's other end echoes in a second process of the job
        pair_a.close()
        while data := pair_b.recv(1):
            pair_b.sendall(data)
        os._exit(0)
    pair_b.close()
    """,
    """
    pair_a.sendall(b"p"); assert pair_a.recv(1) == b"p"
    kept.sendall(b"k"); assert kept_srv.recv(1) == b"k"
    for srv, where in ((named, path), (abstract, "\\0pmx-%d" % os.getpid())):
        c = socket.socket(socket.AF_UNIX); c.connect(where); a, _ = srv.accept()
        c.sendall(b"n"); assert a.recv(1) == b"n"; c.close(); a.close()
    """,
)


def test_unix_sockets_and_socketpairs_move_and_work(make_bed: MakeBed, jobs: list[Job]) -> None:
    bed = make_bed(2)
    job = start(bed, jobs, UNIX)
    moves_and_goes_on(job)
    moves_and_goes_on(job, "home", 0x640B)


TCP_IN_JOB = looping(
    """
    srv = socket.socket(); srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen()
    if os.fork() == 0:  # the client: a second process of the job, echoing
        c = socket.create_connection(srv.getsockname())
        while data := c.recv(1):
            c.sendall(data)
        os._exit(0)
    conn, _ = srv.accept()
    """,
    ROUND_TRIP,
)


@pytest.mark.parametrize("as_user", [False, True], ids=["root", "user"])
def test_a_loopback_tcp_connection_within_the_job_moves_and_works(
    make_bed: MakeBed, jobs: list[Job], as_user: bool, request: pytest.FixtureRequest
) -> None:
    user = request.getfixturevalue("user") if as_user else None
    bed = make_bed(3)
    job = start(bed, jobs, TCP_IN_JOB, user=user, args=["0"])
    moves_and_goes_on(job)
    moves_and_goes_on(job, "0x640d", 0x640D)
    moves_and_goes_on(job, "home", 0x640B)


def test_a_move_that_fails_after_the_dump_leaves_the_connection_working_at_home(
    make_bed: MakeBed, jobs: list[Job], procs: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(2)
    serve(bed, 2, procs, "tcp", "127.0.0.1", 7200)  # node2's port is taken: restore fails
    job = start(bed, jobs, TCP_IN_JOB, args=["7200"])
    r = job.migrate("0x640c")
    assert r.returncode != 0
    assert "Address already in use" in r.stderr, r.stderr
    assert job.node() == 0x640B
    # criu left the connection in repair mode; the rollback took it out: it still carries bytes.
    before = job.drain_ints()
    after = job.counts(5)
    seq = before + after
    assert seq == list(range(seq[0], seq[0] + len(seq))), seq
    # And the job moves once the port is free there.
    procs[-1].kill()
    procs[-1].wait()
    moves_and_goes_on(job)


LISTENERS = looping(
    """
    listeners = []
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET, "127.0.0.1"),
                         (socket.AF_INET6, "::"), (socket.AF_INET6, "::1")):
        l = socket.socket(family); l.bind((addr, 0)); l.listen(); listeners.append(l)
    unbound = socket.socket()
    """,
    """
    for l in listeners:
        host = "::1" if l.family == socket.AF_INET6 else "127.0.0.1"
        c = socket.create_connection((host, l.getsockname()[1])); a, _ = l.accept()
        c.sendall(b"l"); assert a.recv(1) == b"l"; c.close(); a.close()
    assert unbound.getsockname() == ("0.0.0.0", 0)
    """,
)


def test_listening_and_unbound_tcp_sockets_move_and_work(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job = start(bed, jobs, LISTENERS)
    moves_and_goes_on(job)


UDP = looping(
    """
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); server.bind(("127.0.0.1", 0))
    anywhere = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); anywhere.bind(("0.0.0.0", 0))
    unbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connected.connect(server.getsockname())
    for s in (server, anywhere, unbound, connected):
        s.settimeout(5)
    """,
    """
    for s in (unbound, connected):
        s.sendto(b"u", server.getsockname()); data, peer = server.recvfrom(8)
        server.sendto(data, peer); assert s.recv(8) == b"u"
    anywhere.sendto(b"w", server.getsockname()); assert server.recv(8) == b"w"
    """,
)


def test_udp_sockets_move_and_work(make_bed: MakeBed, jobs: list[Job]) -> None:
    bed = make_bed(2)
    job = start(bed, jobs, UDP)
    moves_and_goes_on(job)


# --- refused: the connection would break ---------------------------------------------------


def connecting(kind: str, addr: str, port: int) -> str:
    """A job whose `conn` goes to addr:port (outside the job), one round trip a round."""
    if kind == "udp":
        make = "conn = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); conn.connect(ADDR)"
    elif kind == "unix":
        make = "conn = socket.socket(socket.AF_UNIX); conn.connect(ADDR[0])"
    else:
        make = "conn = socket.create_connection(ADDR)"
    setup = f"ADDR = ({addr!r}, {port})\n{make}\nconn.settimeout(2)"
    return looping(setup, ROUND_TRIP.replace("conn.sendall", "conn.send"))


@pytest.mark.parametrize(
    ("kind", "what"), [("tcp", "a TCP connection to"), ("udp", "a UDP socket connected to")]
)
def test_a_connection_to_another_host_is_refused_naming_the_peer(
    make_bed: MakeBed, jobs: list[Job], procs: list[subprocess.Popen[bytes]], kind: str, what: str
) -> None:
    bed = make_bed(2)
    peer = bed.node(2).address
    serve(bed, 2, procs, kind, peer, 7100)
    job = start(bed, jobs, connecting(kind, peer, 7100))
    refused_and_stays(job, f"holds {what} {peer}:7100; it would break on another node")
    # Its local address is node1's: it cannot even be bound on node2.
    bare = bare_criu(bed, job)
    assert bare.step == "restore", bare
    assert "Cannot assign requested address" in bare.said, bare


def test_a_loopback_tcp_connection_to_outside_the_job_is_refused(
    make_bed: MakeBed, jobs: list[Job], procs: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(2)
    serve(bed, 1, procs, "tcp", "127.0.0.1", 5432)  # say, a database on the home node
    job = start(bed, jobs, connecting("tcp", "127.0.0.1", 5432))
    refused_and_stays(job, "holds a TCP connection to 127.0.0.1:5432 outside the job")
    bare = bare_criu(bed, job)
    assert broke(bare), bare


def test_a_loopback_udp_socket_connected_outside_the_job_is_refused(
    make_bed: MakeBed, jobs: list[Job], procs: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(2)
    serve(bed, 1, procs, "udp", "127.0.0.1", 5353)
    job = start(bed, jobs, connecting("udp", "127.0.0.1", 5353))
    refused_and_stays(job, "holds a UDP socket connected to 127.0.0.1:5353 outside the job")
    bare = bare_criu(bed, job)
    assert broke(bare), bare


def test_a_unix_socket_connected_outside_the_job_is_refused(
    make_bed: MakeBed, jobs: list[Job], procs: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(2)
    path = str(bed.shared_dir / "service.sock")  # say, a daemon's socket on the home node
    serve(bed, 1, procs, "unix", path)
    job = start(bed, jobs, connecting("unix", path, 0))
    refused_and_stays(job, f"holds a unix socket connected to {path} outside the job")
    bare = bare_criu(bed, job)
    assert bare.step == "dump", bare
    assert "External socket" in bare.said, bare
