"""Prerequisite checks for a node: each returns a Check that is OK, WARN or FAIL with the fix.

The checks read the system through small functions that tests replace with fakes; none sends a
packet or changes anything that outlives the check (the network-namespace probe deletes its own).
"""

from __future__ import annotations

import gzip
import importlib
import os
import platform
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pymosix.config import DEFAULT_KEY_FILE, find_criu
from pymosix.errors import ConfigError
from pymosix.install import reinstall_fix, setup_fix
from pymosix.keys import read_keys
from pymosix.netif import auto_interface_name


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    """The result of one check; `fix` says what to do when it is not OK."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.name}: {self.detail}"
        return f"{text} (fix: {self.fix})" if self.fix and self.status is not Status.OK else text


CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
CAP_CHECKPOINT_RESTORE = 40

#: The capabilities CRIU needs to move any user's job, and what fails without each. The kernel
#: accepts CAP_SYS_ADMIN wherever it asks for CAP_CHECKPOINT_RESTORE (which exists from 5.9 on).
CRIU_CAPABILITIES = (
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN", "jobs get no namespaces of their own and criu cannot restore"),
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE", "criu cannot seize another user's job (ptrace: EPERM)"),
    (
        CAP_CHECKPOINT_RESTORE,
        "CAP_CHECKPOINT_RESTORE",
        "criu cannot read a job's map_files or choose restored PIDs",
    ),
    (
        CAP_SYS_RESOURCE,
        "CAP_SYS_RESOURCE",
        "root's criu may not read users' rlimits; pymosix dumps users' jobs with the owner's "
        "real uid instead (a job with processes of two users cannot move)",
    ),
)

#: The first CRIU that dumps inet sockets on Linux >= 6.16 (4.1: "Can't get 1:16 opt").
CRIU_SOCKETS = (4, 2)
KERNEL_SOCKETS = (6, 16)

PYTHON_DEPENDENCIES = (
    "aiohttp",
    "cryptography",
    "msgpack",
    "noise",
    "psutil",
    "rich",
    "textual",
    "prometheus_client",
)


def effective_caps(status_text: str) -> int:
    """CapEff from /proc/self/status text."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_root(euid: int) -> Check:
    if euid != 0:
        return Check("root", Status.FAIL, f"running as uid {euid}", "run as root (sudo)")
    return Check("root", Status.OK, "uid 0")


def check_capabilities(caps: int, cap_last_cap: int = CAP_CHECKPOINT_RESTORE) -> Check:
    """The agent's CapEff against CRIU_CAPABILITIES: without CAP_SYS_ADMIN or CAP_SYS_PTRACE
    nothing moves (FAIL); without the others, some users' jobs do not (WARN)."""
    missing = [
        (bit, name, why)
        for bit, name, why in CRIU_CAPABILITIES
        if bit <= cap_last_cap and not caps & (1 << bit)
    ]
    covered = caps & (1 << CAP_SYS_ADMIN)
    missing = [m for m in missing if not (m[0] == CAP_CHECKPOINT_RESTORE and covered)]
    if not missing:
        names = [n for b, n, _ in CRIU_CAPABILITIES if b <= cap_last_cap]
        return Check("capabilities", Status.OK, f"{', '.join(names)}: any user's job can move")
    fatal = any(bit in (CAP_SYS_ADMIN, CAP_SYS_PTRACE) for bit, _, _ in missing)
    detail = "; ".join(f"without {name}, {why}" for _, name, why in missing)
    adds = " ".join(f"--cap-add {name.removeprefix('CAP_')}" for _, name, _ in missing)
    return Check(
        "capabilities",
        Status.FAIL if fatal else Status.WARN,
        detail,
        f"give the agent {', '.join(n for _, n, _ in missing)} (full root; a container: {adds})",
    )


def read_kernel_config() -> str | None:
    """The running kernel's config text, from /proc/config.gz or /boot, if readable."""
    gz = Path("/proc/config.gz")
    if gz.exists():
        try:
            return gzip.decompress(gz.read_bytes()).decode(errors="replace")
        except OSError:
            pass
    boot = Path(f"/boot/config-{platform.release()}")
    if boot.exists():
        return boot.read_text(errors="replace")
    return None


def check_kernel_options(config_text: str | None, proc: Path = Path("/proc")) -> list[Check]:
    wanted = {
        "CONFIG_CHECKPOINT_RESTORE": "needed by CRIU to dump and restore processes",
        "CONFIG_USERFAULTFD": "needed for post-copy (lazy) migration",
    }
    out: list[Check] = []
    if config_text is None:
        # No config to read: infer from what the kernel exposes. kernel.ns_last_pid exists only
        # with CONFIG_CHECKPOINT_RESTORE (and PID namespaces, which jobs need as well).
        inferred = {
            "CONFIG_CHECKPOINT_RESTORE": (proc / "self" / "ns" / "pid").exists()
            and (proc / "sys" / "kernel" / "ns_last_pid").exists(),
            "CONFIG_USERFAULTFD": (proc / "sys" / "vm" / "unprivileged_userfaultfd").exists(),
        }
        for opt, why in wanted.items():
            if inferred[opt]:
                out.append(
                    Check(
                        opt, Status.OK, "present (inferred from /proc: no kernel config readable)"
                    )
                )
            else:
                out.append(
                    Check(
                        opt,
                        Status.FAIL if opt == "CONFIG_CHECKPOINT_RESTORE" else Status.WARN,
                        f"appears missing (inferred from /proc); {why}",
                        "use a kernel built with it",
                    )
                )
        return out
    lines = set(config_text.splitlines())
    for opt, why in wanted.items():
        if f"{opt}=y" in lines:
            out.append(Check(opt, Status.OK, "=y"))
        else:
            status = Status.FAIL if opt == "CONFIG_CHECKPOINT_RESTORE" else Status.WARN
            out.append(Check(opt, status, f"not set; {why}", "use a kernel built with it"))
    return out


def run_criu_check(criu: str) -> tuple[bool, str, str]:
    """(passes, version, last line of output) of `criu check`."""
    try:
        v = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=20)
        version = next((ln for ln in v.stdout.splitlines() if ln.startswith("Version")), "").strip()
        r = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return False, "", str(e)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    said = next((ln for ln in lines if "Looks good" in ln), lines[-1] if lines else "no output")
    return r.returncode == 0, version.replace("Version: ", ""), said.strip()


def release_tuple(text: str) -> tuple[int, int]:
    """(major, minor) of "4.2.1" or "6.18.44-fc"; (0, 0) if there is none."""
    m = re.match(r"\s*(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_criu(
    configured: str = "",
    runner: Callable[[str], tuple[bool, str, str]] = run_criu_check,
    kernel: str = "",
) -> Check:
    """Whether criu passes `criu check`, and what its version allows on this kernel."""
    criu = find_criu(configured)
    fix = f"{setup_fix()}, or set PYMOSIX_CRIU"
    if criu is None or (os.sep in criu and not Path(criu).exists()):
        return Check("criu", Status.FAIL, "no criu found", fix)
    ok, version, said = runner(criu)
    if not ok:
        return Check("criu", Status.FAIL, f"{criu} {version}: 'criu check' says: {said}", fix)
    kernel = kernel or platform.release()
    where = f"{criu} (criu {version}, 'criu check': {said})"
    if release_tuple(version) >= CRIU_SOCKETS:
        return Check("criu", Status.OK, f"{version}: jobs with sockets can move; {where}")
    lacks = f"{version}: jobs holding inet sockets cannot move on Linux >= 6.16"
    detail = f"{lacks} (this is {kernel}); {where}"
    if release_tuple(kernel) < KERNEL_SOCKETS:
        return Check("criu", Status.OK, detail)
    return Check("criu", Status.WARN, detail, f"{setup_fix()} to get CRIU 4.2")


def check_postcopy(pipe_max: int, has_sys_resource: bool, criu_version: str) -> Check:
    """Whether big jobs can move by post-copy here (migration/postcopy.py): else stop-and-copy."""
    from pymosix.migration.postcopy import lazy_problem

    version = tuple(int(x) for x in re.findall(r"\d+", criu_version)[:3])
    why = lazy_problem(pipe_max, has_sys_resource, version)
    if why is None:
        return Check("post-copy", Status.OK, "available: big jobs run on the target at once")
    detail, _, fix = why.partition(" (fix: ")
    fix = fix.rstrip(")") or f"{setup_fix()} to get CRIU 4.2"
    return Check(
        "post-copy",
        Status.WARN,
        f"not available (optional, postcopy_min_mib), big jobs move stop-and-copy: {detail}",
        fix,
    )


def _criu_version(criu: str) -> str:
    path = find_criu(criu)
    if path is None:
        return ""
    r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20, check=False)
    return next(
        (ln.split(":", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("Version:")), ""
    )


def check_netns() -> Check:
    ip = shutil.which("ip")
    if ip is None:
        return Check("netns", Status.FAIL, "no 'ip' command", "apt-get install iproute2")
    name = f"pmx-doctor-{secrets.token_hex(3)}"
    r = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        return Check("netns", Status.FAIL, r.stderr.strip(), "a kernel with CONFIG_NET_NS; root")
    subprocess.run([ip, "netns", "delete", name], capture_output=True, timeout=20)
    return Check("netns", Status.OK, "network namespaces can be made (test bed)")


IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_MULTICAST = 0x1000


def default_route_interface(route_text: str) -> str:
    """The interface of the IPv4 default route, from /proc/net/route text; "" if none."""
    for line in route_text.splitlines()[1:]:
        f = line.split()
        if len(f) > 2 and f[1] == "00000000":
            return f[0]
    return ""


def check_multicast(
    interface: str = "", sys_net: Path = Path("/sys/class/net"), default: str = ""
) -> Check:
    """Whether the interface carries multicast, from its flags; nothing is sent.

    The configured interface, else the default route's, else the first up non-loopback one.
    """
    chosen = interface or default
    if not chosen:
        for p in sorted(sys_net.iterdir()):
            flags = _flags(p / "flags")
            if flags is not None and flags & IFF_UP and not flags & IFF_LOOPBACK:
                chosen = p.name
                break
    if not chosen:
        return Check("multicast", Status.WARN, "no interface is up", "bring the LAN interface up")
    flags = _flags(sys_net / chosen / "flags")
    if flags is None:
        return Check("multicast", Status.FAIL, f"no interface {chosen}", "check the name")
    if flags & IFF_MULTICAST:
        return Check("multicast", Status.OK, f"{chosen} has MULTICAST (discovery can run)")
    return Check(
        "multicast",
        Status.WARN,
        f"{chosen} without MULTICAST",
        f"ip link set {chosen} multicast on, or use a static map (map_file)",
    )


def _flags(path: Path) -> int | None:
    try:
        return int(path.read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def check_cpuset(cgroup_root: Path = Path("/sys/fs/cgroup")) -> Check:
    """Which cgroup setup the test bed finds: how its nodes get CPUs of their own, if they do."""
    if (cgroup_root / "cpuset" / "cpuset.cpus").exists():
        return Check(
            "cgroup", Status.OK, f"v1 cpuset at {cgroup_root / 'cpuset'}: bed nodes get own CPUs"
        )
    unified = next(
        (d for d in (cgroup_root, cgroup_root / "unified") if (d / "cgroup.controllers").exists()),
        None,
    )
    fix = "enable the cpuset controller (only the test bed needs it)"
    if unified is None:
        return Check(
            "cgroup", Status.WARN, "no v1 cpuset and no v2 hierarchy: bed nodes share CPUs", fix
        )
    if "cpuset" not in _read(str(unified / "cgroup.controllers")).split():
        return Check(
            "cgroup",
            Status.WARN,
            f"v2 at {unified} without cpuset: bed nodes will share CPUs (CPU affinity is used instead)",
            fix,
        )
    enabled = "cpuset" in _read(str(unified / "cgroup.subtree_control")).split()
    how = "delegated to child cgroups" if enabled else "available, the bed delegates it to a child"
    return Check("cgroup", Status.OK, f"v2 at {unified} with cpuset {how}: bed nodes get own CPUs")


def check_key(path: Path = DEFAULT_KEY_FILE) -> Check:
    if not path.exists():
        return Check(
            "cluster key",
            Status.WARN,
            f"{path} does not exist yet; the agent makes one on first start",
            f"'pymosix keygen {path}' on one node and copy it to the others",
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Check("cluster key", Status.FAIL, f"{path} has mode {mode:o}", f"chmod 600 {path}")
    try:
        ring = read_keys(path)
    except ConfigError as e:  # the message names the fix
        return Check("cluster key", Status.FAIL, str(e))
    return Check("cluster key", Status.OK, f"{path} (mode 600): {ring.describe()}")


def check_python_dependencies(
    names: tuple[str, ...] = PYTHON_DEPENDENCIES,
    importer: Callable[[str], object] = importlib.import_module,
) -> Check:
    missing = []
    for name in names:
        try:
            importer(name)
        except ImportError:
            missing.append(name)
    if missing:
        return Check(
            "python",
            Status.FAIL,
            "missing " + ", ".join(missing),
            reinstall_fix(),
        )
    return Check("python", Status.OK, f"Python {platform.python_version()}, dependencies present")


def guarded(name: str, fn: Callable[[], Check | list[Check]]) -> list[Check]:
    """Run one check; an unexpected error is that check's FAIL line, never a traceback."""
    try:
        out = fn()
    except Exception as e:
        return [Check(name, Status.FAIL, f"check crashed: {type(e).__name__}: {e}", "report it")]
    return out if isinstance(out, list) else [out]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def run_all(key_file: Path = DEFAULT_KEY_FILE, interface: str = "", criu: str = "") -> list[Check]:
    """Every check, in the order the doctor prints them."""
    euid = os.geteuid()
    caps = effective_caps(_read("/proc/self/status"))
    last_cap = int(_read("/proc/sys/kernel/cap_last_cap").strip() or CAP_CHECKPOINT_RESTORE)
    checks = guarded("root", lambda: check_root(euid))
    checks += guarded("capabilities", lambda: check_capabilities(caps, last_cap))
    checks += guarded("kernel", lambda: check_kernel_options(read_kernel_config()))
    if any(c.status is Status.FAIL for c in checks[:2]):
        # criu and `ip netns` would only fail for want of privileges, with murkier messages.
        for name in ("criu", "netns"):
            checks.append(Check(name, Status.FAIL, "not checked: needs full root", "run as root"))
    else:
        checks += guarded("criu", lambda: check_criu(criu))
        pipe_max = int(_read("/proc/sys/fs/pipe-max-size").strip() or 0)
        sys_resource = bool(caps >> CAP_SYS_RESOURCE & 1)
        checks += guarded(
            "post-copy", lambda: check_postcopy(pipe_max, sys_resource, _criu_version(criu))
        )
        checks += guarded("netns", check_netns)
    default = auto_interface_name()  # the agent's own rule (pymosix.netif)
    checks += guarded("multicast", lambda: check_multicast(interface, default=default))
    checks += guarded("cpuset", check_cpuset)
    checks += guarded("cluster key", lambda: check_key(key_file))
    checks += guarded("python", check_python_dependencies)
    return checks


def can_run_node(checks: list[Check]) -> bool:
    """A node with migration can run when nothing FAILs."""
    return all(c.status is not Status.FAIL for c in checks)
