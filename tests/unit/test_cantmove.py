"""cantmove on a fake /proc: each reason CRIU gives (or a move would make true) is found, with
the CRIU version deciding about inet sockets, and what CRIU moves passes."""

from __future__ import annotations

import os
import socket
import struct
import sys
from pathlib import Path

import pytest

from pymosix.migration.cantmove import (
    _address,
    cantmove,
    inet_dumpable,
    kernel_release,
    parse_inet_table,
)
from pymosix.migration.criu import parse_version

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def hex4(addr: str, port: int) -> str:
    """An IPv4 endpoint as /proc/net/tcp prints it (the word in host order)."""
    word = struct.unpack("=I", socket.inet_aton(addr))[0]
    return f"{word:08X}:{port:04X}"


def hex6(addr: str, port: int) -> str:
    raw = socket.inet_pton(socket.AF_INET6, addr)
    words = struct.unpack("=4I", raw)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def row(local: str, remote: str, state: str, inode: int, rx: int = 0) -> str:
    return f"   0: {local} {remote} {state} 00000000:{rx:08X} 00:00000000 00000000     0        0 {inode} 1 0\n"


class FakeProc:
    """A /proc with one job (pid 100, children as given) and its netns tables."""

    def __init__(self, root: Path, kernel: str = "6.18.44-fc") -> None:
        self.root = root / "proc"
        (self.root / "sys" / "kernel").mkdir(parents=True)
        (self.root / "sys" / "kernel" / "osrelease").write_text(kernel + "\n")
        self.tables: dict[str, str] = {}
        self.unix: dict[str, tuple[str, str]] = {}
        self.process(100)

    def process(self, pid: int, parent: int | None = None, tracer: int = 0, maps: str = "") -> Path:
        base = self.root / str(pid)
        (base / "fd").mkdir(parents=True)
        (base / "task" / str(pid)).mkdir(parents=True)
        (base / "task" / str(pid) / "children").write_text("")
        (base / "status").write_text(f"Name:\tjob\nTracerPid:\t{tracer}\n")
        (base / "maps").write_text(maps)
        if parent is not None:
            kids = self.root / str(parent) / "task" / str(parent) / "children"
            kids.write_text(kids.read_text() + f"{pid} ")
        return base

    def fd(self, pid: int, fd: int, target: str) -> None:
        os.symlink(target, self.root / str(pid) / "fd" / str(fd))

    def sock(
        self,
        table: str,
        inode: int,
        local: str,
        remote: str,
        state: str,
        rx: int = 0,
        pid: int | None = 100,
        fd: int = 3,
    ) -> None:
        """A socket row in the netns table; held by pid at fd (None: held outside the job)."""
        self.tables[table] = self.tables.get(table, HEADER) + row(local, remote, state, inode, rx)
        net = self.root / "100" / "net"
        net.mkdir(exist_ok=True)
        (net / table).write_text(self.tables[table])
        if pid is not None:
            self.fd(pid, fd, f"socket:[{inode}]")

    def why(self, criu: tuple[int, ...] = (4, 2, 1)) -> str | None:
        return cantmove(100, self.root, criu_version=criu, unix=self.unix)


ANY4 = hex4("0.0.0.0", 0)
LISTEN, ESTABLISHED, CLOSE = "0A", "01", "07"


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path)


def test_addresses_as_the_kernel_prints_them() -> None:
    if sys.byteorder == "little":
        assert _address("0100007F") == "127.0.0.1"
        assert _address("0000000000000000FFFF00000100007F") == "127.0.0.1"  # v4-mapped
    assert _address(hex6("::1", 0).split(":")[0]) == "::1"
    assert _address(hex6("fe80::1:2", 0).split(":")[0]) == "fe80::1:2"
    (s,) = parse_inet_table(HEADER + row(hex4("10.1.2.3", 443), ANY4, LISTEN, 77, 2), "TCP")
    assert (s.local, s.remote, s.state, s.accept_queue, s.inode) == (
        ("10.1.2.3", 443),
        ("0.0.0.0", 0),
        LISTEN,
        2,
        "77",
    )


def test_versions() -> None:
    assert parse_version("Version: 4.2.1\nGitID: v4.2.1\n") == (4, 2, 1)
    assert parse_version("Version: 4.1\n") == (4, 1)
    assert parse_version("nonsense") == ()
    assert kernel_release(Path("/nonexistent")) == ()
    assert inet_dumpable((4, 2, 1), (6, 18, 44))
    assert not inet_dumpable((4, 1, 1), (6, 18, 44))
    assert inet_dumpable((4, 1, 1), (6, 12))
    assert not inet_dumpable((4, 1, 1), ())  # an unknown kernel: assume the worst


def test_what_criu_moves_passes(proc: FakeProc) -> None:
    proc.fd(100, 0, "pipe:[1]")
    proc.fd(100, 1, "/dev/null")
    proc.fd(100, 4, "socket:[7]")  # a unix socket: in no inet table
    proc.fd(100, 5, "/memfd:pmx (deleted)")
    proc.fd(100, 6, "/dev/shm/pmx-data (deleted)")
    proc.fd(100, 7, "/etc/hostname")
    (proc.root / "100" / "maps").write_text("7f00-7f01 rw-s 0 00:01 5 /SYSV00000000 (deleted)\n")
    proc.sock("tcp", 11, hex4("0.0.0.0", 7001), ANY4, LISTEN, fd=8)
    proc.sock("tcp", 12, hex4("127.0.0.1", 7002), ANY4, LISTEN, fd=9)
    proc.sock("tcp", 13, ANY4, ANY4, CLOSE, fd=10)  # unbound
    proc.sock("udp", 14, hex4("0.0.0.0", 5000), ANY4, CLOSE, fd=11)
    proc.sock("udp", 15, hex4("127.0.0.1", 40000), hex4("127.0.0.1", 5000), ESTABLISHED, fd=12)
    proc.sock("icmp", 16, ANY4, ANY4, CLOSE, fd=13)
    proc.sock("tcp6", 17, hex6("::", 7003), hex6("::", 0), LISTEN, fd=14)
    assert proc.why() is None


def test_a_loopback_connection_within_the_job_passes(proc: FakeProc) -> None:
    proc.process(101, parent=100)
    proc.sock("tcp", 20, hex4("127.0.0.1", 7006), ANY4, LISTEN)
    proc.sock("tcp", 21, hex4("127.0.0.1", 40001), hex4("127.0.0.1", 7006), ESTABLISHED, pid=101)
    proc.sock("tcp", 22, hex4("127.0.0.1", 7006), hex4("127.0.0.1", 40001), ESTABLISHED, fd=4)
    assert proc.why() is None
    # The same with CRIU 4.1 on this kernel: no inet socket at all.
    why = proc.why((4, 1, 1))
    assert why is not None
    assert "holds a TCP socket (fd 3); CRIU 4.1.1 cannot dump inet sockets on Linux >= 6.16" in why


def test_a_connection_to_another_host_names_the_peer(proc: FakeProc) -> None:
    proc.sock("tcp", 30, hex4("192.168.100.11", 40002), hex4("10.1.2.3", 443), ESTABLISHED)
    assert proc.why() == (
        "process 100 (fd 3) holds a TCP connection to 10.1.2.3:443; it would break on another node"
    )


def test_a_loopback_connection_to_outside_the_job(proc: FakeProc) -> None:
    proc.sock("tcp", 40, hex4("127.0.0.1", 40003), hex4("127.0.0.1", 5432), ESTABLISHED)
    # The server's end exists, but no process of the job holds it.
    proc.sock("tcp", 41, hex4("127.0.0.1", 5432), hex4("127.0.0.1", 40003), ESTABLISHED, pid=None)
    assert (
        proc.why() == "process 100 (fd 3) holds a TCP connection to 127.0.0.1:5432 outside the job"
    )


def test_v4_clients_of_a_v6_listener_are_found(proc: FakeProc) -> None:
    proc.process(101, parent=100)
    mapped = "::ffff:127.0.0.1"
    proc.sock("tcp6", 50, hex6("::", 7007), hex6("::", 0), LISTEN)
    proc.sock("tcp6", 51, hex6(mapped, 7007), hex6(mapped, 40004), ESTABLISHED, fd=4)
    proc.sock("tcp", 52, hex4("127.0.0.1", 40004), hex4("127.0.0.1", 7007), ESTABLISHED, pid=101)
    assert proc.why() is None


def test_loopback_udp_to_outside_the_job_and_to_a_job_server(proc: FakeProc) -> None:
    proc.sock("udp", 60, hex4("127.0.0.1", 40005), hex4("127.0.0.1", 5353), ESTABLISHED)
    assert proc.why() == (
        "process 100 (fd 3) holds a UDP socket connected to 127.0.0.1:5353 outside the job"
    )
    proc.sock("udp", 61, hex4("0.0.0.0", 5353), ANY4, CLOSE, fd=4)  # the job's own server
    assert proc.why() is None


def test_udp_connected_to_another_host(proc: FakeProc) -> None:
    proc.sock("udp", 65, hex4("192.168.100.11", 40007), hex4("10.1.2.3", 53), ESTABLISHED)
    assert proc.why() == (
        "process 100 (fd 3) holds a UDP socket connected to 10.1.2.3:53; "
        "it would break on another node"
    )


def test_addresses_only_this_node_has(proc: FakeProc) -> None:
    proc.sock("tcp", 70, hex4("192.168.100.11", 7020), ANY4, LISTEN)
    assert proc.why() == (
        "process 100 (fd 3) listens on 192.168.100.11:7020, an address only this node has"
    )


def test_udp_bound_to_this_nodes_address(proc: FakeProc) -> None:
    proc.sock("udp", 71, hex4("192.168.100.11", 7021), ANY4, CLOSE)
    assert proc.why() == (
        "process 100 (fd 3) holds a UDP socket bound to 192.168.100.11:7021, "
        "an address only this node has"
    )


def test_connections_waiting_to_be_accepted(proc: FakeProc) -> None:
    proc.sock("tcp", 80, hex4("127.0.0.1", 40006), hex4("127.0.0.1", 7022), ESTABLISHED, fd=4)
    proc.sock("tcp", 81, hex4("127.0.0.1", 7022), ANY4, LISTEN, rx=1, fd=5)
    assert proc.why() == (
        "process 100 (fd 5) has 1 connection(s) not yet accepted on 127.0.0.1:7022; "
        "CRIU cannot dump them"
    )


def test_packet_and_icmp_sockets_with_criu_41(proc: FakeProc) -> None:
    proc.sock("icmp", 90, ANY4, ANY4, CLOSE)
    assert proc.why() is None
    assert "holds an ICMP socket (fd 3); CRIU 4.1.1" in str(proc.why((4, 1, 1)))
    old = FakeProc(proc.root.parent / "old", kernel="6.12.1")
    old.sock("icmp", 90, ANY4, ANY4, CLOSE)
    assert old.why((4, 1, 1)) is None  # before 6.16, 4.1 dumps inet sockets


def test_unix_sockets_within_the_job_pass_and_to_outside_are_refused(proc: FakeProc) -> None:
    proc.fd(100, 3, "socket:[200]")
    proc.fd(100, 4, "socket:[201]")
    proc.unix = {"200": ("201", ""), "201": ("200", "")}  # a socketpair
    assert proc.why() is None
    proc.fd(100, 5, "socket:[202]")
    proc.unix["202"] = ("300", "/run/dbus/system_bus_socket")
    assert proc.why() == (
        "process 100 (fd 5) holds a unix socket connected to /run/dbus/system_bus_socket "
        "outside the job"
    )


def test_other_reasons(tmp_path: Path) -> None:
    traced = FakeProc(tmp_path / "t")
    traced.process(101, parent=100, tracer=100)
    assert traced.why() == "process 101 is being traced (ptrace); CRIU cannot seize it"
    dev = FakeProc(tmp_path / "d")
    dev.fd(100, 4, "/dev/nvidia0")
    assert dev.why() == "process 100 has the device /dev/nvidia0 open (fd 4); CRIU cannot dump it"
    gone = FakeProc(tmp_path / "g")
    gone.fd(100, 5, "/nonexistent/data.txt")
    assert "has /nonexistent/data.txt open, which other nodes cannot see" in str(gone.why())
    link = FakeProc(tmp_path / "l")
    os.symlink("/nonexistent/target", tmp_path / "dangling")
    link.fd(100, 6, str(tmp_path / "dangling"))  # an O_PATH fd on a dangling symlink
    assert link.why() is None
