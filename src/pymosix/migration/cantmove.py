"""Why a job cannot move, found before freezing it (openMosix's /proc/PID/cantmove).

A reason is given for exactly what the CRIU in use cannot move on this kernel, and for what it
would move but what would then mean something else on another node (a connection to another
host, a loopback peer outside the job, an address only this node has). Everything else passes:
System V IPC (the job has its own IPC namespace), memfd and shared memory, symlinks, unix
sockets, listening and unbound sockets, UDP. docs/migration.md has the table, checked with
bare CRIU in pymosix's order by tests/kernel/test_precheck.py and test_sockets.py.

Reads /proc, and the kernel's sock_diag for unix peers (which /proc does not show); the proc
root and the unix peers are parameters so tests feed fake ones.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from pymosix.proctree import children

#: Devices that exist the same on every node, by path: what is checked when stat() fails.
_HARMLESS_DEVICES = {"/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/full"}
#: CRIU dumps character devices of this major (null, zero, kmsg, random, ...) as plain files.
MEM_MAJOR = 1
#: /proc/PID/net tables of inet sockets, and what to call their sockets.
_INET_TABLES = {
    "tcp": "TCP",
    "tcp6": "TCP",
    "udp": "UDP",
    "udp6": "UDP",
    "udplite": "UDP-Lite",
    "udplite6": "UDP-Lite",
    "raw": "raw",
    "raw6": "raw",
    "icmp": "ICMP",
    "icmp6": "ICMP",
}
_TCP_LISTEN, _TCP_CLOSE = "0A", "07"
#: Linux from which CRIU older than 4.2 cannot dump any inet or packet socket (SO_PASSCRED).
INET_BROKEN_KERNEL = (6, 16)
INET_FIXED_CRIU = (4, 2)


@dataclass(frozen=True, slots=True)
class InetSocket:
    """One row of a /proc/PID/net inet table."""

    kind: str  # TCP, UDP, raw, ...
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str  # two hex digits, as the kernel prints it
    accept_queue: int  # for a TCP listener: connections not yet accepted
    inode: str


def _address(hex_addr: str) -> str:
    """'0100007F:1F90'-style address (the kernel prints each 32-bit word in host order)."""
    raw = bytes.fromhex(hex_addr)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # a v6 socket's v4 peer: the same address as seen from v4
    return str(ip)


def _endpoint(field: str) -> tuple[str, int]:
    addr, _, port = field.partition(":")
    return _address(addr), int(port, 16)


def parse_inet_table(text: str, kind: str) -> list[InetSocket]:
    """The rows of /proc/net/{tcp,udp,raw,icmp}[6] (they share one layout)."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        try:
            rx = int(parts[4].partition(":")[2], 16)
            out.append(
                InetSocket(kind, _endpoint(parts[1]), _endpoint(parts[2]), parts[3], rx, parts[9])
            )
        except ValueError:
            continue
    return out


def _inet_sockets(proc: Path, pid: int) -> tuple[dict[str, InetSocket], set[str]]:
    """The inet sockets of the process's network namespace by inode, and its packet sockets."""
    inet: dict[str, InetSocket] = {}
    for table, kind in _INET_TABLES.items():
        try:
            text = (proc / str(pid) / "net" / table).read_text()
        except OSError:
            continue
        for s in parse_inet_table(text, kind):
            inet[s.inode] = s
    packet: set[str] = set()
    try:
        for line in (proc / str(pid) / "net" / "packet").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 8:
                packet.add(parts[8])
    except OSError:
        pass
    return inet, packet


def _is_loopback(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_loopback


def _is_wildcard(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_unspecified


def _show(endpoint: tuple[str, int]) -> str:
    addr, port = endpoint
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def kernel_release(proc: Path = Path("/proc")) -> tuple[int, ...]:
    """This kernel's version as numbers, (6, 18, 44) for '6.18.44-foo'; () if unreadable."""
    try:
        text = (proc / "sys" / "kernel" / "osrelease").read_text().strip()
    except OSError:
        return ()
    nums = []
    for part in text.split("-")[0].split("."):
        if not part.isdigit():
            break
        nums.append(int(part))
    return tuple(nums)


def inet_dumpable(criu_version: tuple[int, ...], kernel: tuple[int, ...]) -> bool:
    """Whether this CRIU can dump inet and packet sockets on this kernel (research/criu.md §7)."""
    return criu_version >= INET_FIXED_CRIU or (bool(kernel) and kernel < INET_BROKEN_KERNEL)


def socket_reason(s: InetSocket, job_inodes: set[str], table: dict[str, InetSocket]) -> str | None:
    """Why this inet socket of the job cannot move, when CRIU can dump inet sockets at all.

    A connection must be over loopback with its other end in the job: anything else would be
    cut (and its local address, this node's, cannot even be bound on another node). A bound
    socket must be on loopback or the wildcard address, which every node has.
    """
    if s.kind == "TCP" and s.state == _TCP_LISTEN and s.accept_queue:
        return (
            f"has {s.accept_queue} connection(s) not yet accepted on {_show(s.local)}; "
            "CRIU cannot dump them"
        )
    connected = s.remote[1] != 0 and s.state != _TCP_LISTEN
    if connected and s.kind in ("TCP", "UDP", "UDP-Lite"):
        noun = "TCP connection to" if s.kind == "TCP" else f"{s.kind} socket connected to"
        if not _is_loopback(s.remote[0]):
            return f"holds a {noun} {_show(s.remote)}; it would break on another node"
        if not any(_peers(s, p) for p in table.values() if p.inode in job_inodes):
            return f"holds a {noun} {_show(s.remote)} outside the job"
        return None
    if not (_is_loopback(s.local[0]) or _is_wildcard(s.local[0])):
        what = "listens on" if s.state == _TCP_LISTEN else f"holds a {s.kind} socket bound to"
        return f"{what} {_show(s.local)}, an address only this node has"
    return None


def _peers(s: InetSocket, p: InetSocket) -> bool:
    """Whether p is the other end of s: bound where s sends, and talking back to s (or to
    anyone, for an unconnected UDP socket; a UDP server may be bound to the wildcard)."""
    if p.kind != s.kind or p.local[1] != s.remote[1] or p is s:
        return False
    if p.local[0] != s.remote[0] and (s.kind == "TCP" or not _is_wildcard(p.local[0])):
        return False
    return p.remote == s.local or (s.kind != "TCP" and p.remote[1] == 0)


_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLMSG_ERROR, _NLMSG_DONE = 4, 20, 2, 3
_UDIAG_SHOW_NAME, _UDIAG_SHOW_PEER, _UNIX_DIAG_NAME, _UNIX_DIAG_PEER = 1, 4, 0, 2


def _unix_name(raw: bytes) -> str:
    """A unix socket's bound name as ss shows it: a path, or @name in the abstract namespace."""
    if raw.startswith(b"\0"):
        return "@" + raw[1:].decode(errors="replace")
    return raw.rstrip(b"\0").decode(errors="replace")


def unix_peers() -> dict[str, tuple[str, str]]:
    """For each connected unix socket of this network namespace: inode -> (its peer's inode,
    the peer's bound name or ""), from a sock_diag dump (ss -x asks the same)."""
    req = struct.pack(
        "=BBHIIIII",
        socket.AF_UNIX,
        0,
        0,
        0xFFFFFFFF,
        0,
        _UDIAG_SHOW_NAME | _UDIAG_SHOW_PEER,
        0xFFFFFFFF,
        0xFFFFFFFF,
    )
    head = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, 0x301, 1, 0)  # REQUEST|DUMP
    names: dict[int, str] = {}
    peers: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.sendto(head + req, (0, 0))
        done = False
        while not done:
            data, off = nl.recv(1 << 16), 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind in (_NLMSG_DONE, _NLMSG_ERROR) or length < 16:
                    done = True
                    break
                msg = data[off + 16 : off + length]
                ino, at = struct.unpack_from("=I", msg, 4)[0], 16  # after struct unix_diag_msg
                while at + 4 <= len(msg):
                    alen, atype = struct.unpack_from("=HH", msg, at)
                    if alen < 4:
                        break
                    value = msg[at + 4 : at + alen]
                    if atype == _UNIX_DIAG_NAME:
                        names[ino] = _unix_name(value)
                    elif atype == _UNIX_DIAG_PEER and len(value) >= 4:
                        peers[ino] = struct.unpack_from("=I", value)[0]
                    at += (alen + 3) & ~3
                off += (length + 3) & ~3
    return {str(i): (str(p), names.get(p, "")) for i, p in peers.items() if p}


def process_owner(pid: int, proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """The real (uid, gid) of a process, or None if it is gone."""
    ids: dict[str, int] = {}
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Uid", "Gid"):
                ids[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return (ids["Uid"], ids["Gid"]) if len(ids) == 2 else None


def tree_pids(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The job and all its descendants (children files of every task)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(FileNotFoundError):
            todo += children(p, proc)
    return out


def _fds(proc: Path, pid: int) -> list[tuple[str, str]]:
    """(fd, what it points to) for each open fd of the process."""
    out: list[tuple[str, str]] = []
    try:
        fds = sorted(os.listdir(proc / str(pid) / "fd"), key=lambda s: int(s) if s.isdigit() else 0)
    except OSError:
        return out
    for fd in fds:
        try:
            out.append((fd, os.readlink(proc / str(pid) / "fd" / fd)))
        except OSError:
            continue
    return out


def _device_reason(proc: Path, pid: int, fd: str, target: str) -> str | None:
    try:
        st = os.stat(proc / str(pid) / "fd" / fd)
    except OSError:
        harmless = target in _HARMLESS_DEVICES
    else:
        is_dev = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        harmless = not is_dev or (stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == MEM_MAJOR)
    return None if harmless else f"has the device {target} open (fd {fd}); CRIU cannot dump it"


def _own_ipc(proc: Path, pid: int) -> bool:
    """Whether the job has an IPC namespace of its own (not this process's): CRIU then dumps
    its System V IPC with the namespace."""
    try:
        return os.readlink(proc / str(pid) / "ns" / "ipc") != os.readlink(proc / "self/ns/ipc")
    except OSError:
        return True  # a /proc without namespace files (a fake one) tells nothing


def cantmove(
    pid: int,
    proc: Path = Path("/proc"),
    criu_version: tuple[int, ...] = INET_FIXED_CRIU,
    unix: dict[str, tuple[str, str]] | None = None,
) -> str | None:
    """The reason the job rooted at `pid` cannot migrate with this CRIU, or None.

    unix: `unix_peers()` of the job's network namespace, asked when not given.
    """
    pids = tree_pids(pid, proc)
    fds = {p: _fds(proc, p) for p in pids}
    sockets = {t[8:-1]: (p, fd) for p in pids for fd, t in fds[p] if t.startswith("socket:[")}
    inet, packet = _inet_sockets(proc, pid) if sockets else ({}, set())
    inet_ok = inet_dumpable(criu_version, kernel_release(proc))
    own_ipc = _own_ipc(proc, pid)
    for p in pids:
        try:
            status = (proc / str(p) / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("TracerPid:") and line.split()[1] != "0":
                return f"process {p} is being traced (ptrace); CRIU cannot seize it"
        if not own_ipc:
            try:
                maps = (proc / str(p) / "maps").read_text()
            except OSError:
                maps = ""
            if "/SYSV" in maps:
                return (
                    f"process {p} uses System V shared memory outside an IPC namespace of its own"
                )
        for fd, target in fds[p]:
            if target.startswith("/dev/") and not target.startswith("/dev/shm/"):
                reason = _device_reason(proc, p, fd, target)
                if reason:
                    return f"process {p} {reason}"
            # lexists: an O_PATH fd on a symlink, even a dangling one, moves with CRIU.
            elif (
                target.startswith("/")
                and not target.endswith(" (deleted)")
                and not os.path.lexists(target)
            ):
                return f"process {p} has {target} open, which other nodes cannot see at that path"
    version = f"CRIU {'.'.join(map(str, criu_version))}" if criu_version else "this CRIU"
    # Listeners first: their queued connections are the cause, not the clients' end of them.
    ordered = sorted(sockets, key=lambda i: i not in inet or inet[i].state != _TCP_LISTEN)
    for inode in ordered:
        p, fd = sockets[inode]
        s = inet.get(inode)
        if s is None and inode not in packet:
            # Unix and netlink sockets: CRIU dumps them with the job, unless a unix socket's
            # other end is outside it ("External socket is used").
            if unix is None:
                try:
                    unix = unix_peers()
                except OSError:
                    unix = {}
            peer, name = unix.get(inode, ("", ""))
            if peer and peer not in sockets:
                where = name or "an unnamed socket"
                return f"process {p} (fd {fd}) holds a unix socket connected to {where} outside the job"
            continue
        if not inet_ok:
            kind = "packet" if s is None else s.kind
            article = "an" if kind == "ICMP" else "a"
            return (
                f"process {p} holds {article} {kind} socket (fd {fd}); {version} cannot "
                f"dump inet sockets on Linux >= {'.'.join(map(str, INET_BROKEN_KERNEL))} "
                "(CRIU >= 4.2 can)"
            )
        reason = None if s is None else socket_reason(s, set(sockets), inet)
        if reason:
            return f"process {p} (fd {fd}) {reason}"
    return None
