"""Prerequisite checks for a node: each returns a Check that is OK, WARN or FAIL with the fix.

The checks read the system through small functions that tests replace with fakes; none sends a
packet or changes anything that outlives the check (the network-namespace probe deletes its own).
"""

from __future__ import annotations

import gzip
import importlib
import os
import platform
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
from pymosix.keys import read_keys


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


#: Capabilities a node agent needs: checkpoint/restore and namespaces (CAP_SYS_ADMIN covers
#: CAP_CHECKPOINT_RESTORE on kernels before 5.9), and ptrace for CRIU's seize.
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_CHECKPOINT_RESTORE = 40

PYTHON_DEPENDENCIES = (
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


def check_root(euid: int, caps: int) -> Check:
    """Root with CAP_SYS_ADMIN (namespaces; covers checkpoint/restore) and CAP_SYS_PTRACE."""
    missing = [
        name
        for bit, name in ((CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"))
        if not caps & (1 << bit)
    ]
    if euid != 0:
        return Check("root", Status.FAIL, f"running as uid {euid}", "run as root (sudo)")
    if missing:
        return Check("root", Status.FAIL, "missing " + ", ".join(missing), "run as full root")
    extra = ", CAP_CHECKPOINT_RESTORE" if caps & (1 << CAP_CHECKPOINT_RESTORE) else ""
    return Check("root", Status.OK, f"uid 0 with CAP_SYS_ADMIN, CAP_SYS_PTRACE{extra}")


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


def check_criu(
    configured: str = "", runner: Callable[[str], tuple[bool, str, str]] = run_criu_check
) -> Check:
    criu = find_criu(configured)
    fix = "run 'make setup' (or src/pymosix/data/provision-criu.sh), or set PYMOSIX_CRIU"
    if criu is None or (os.sep in criu and not Path(criu).exists()):
        return Check("criu", Status.FAIL, "no criu found", fix)
    ok, version, said = runner(criu)
    if not ok:
        return Check("criu", Status.FAIL, f"{criu} {version}: 'criu check' says: {said}", fix)
    return Check("criu", Status.OK, f"{criu} (version {version}): 'criu check' says: {said}")


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
    if (cgroup_root / "cpuset" / "cpuset.cpus").exists():
        return Check("cpuset", Status.OK, "cgroup v1 cpuset at /sys/fs/cgroup/cpuset")
    controllers = cgroup_root / "cgroup.controllers"
    if controllers.exists() and "cpuset" in controllers.read_text().split():
        return Check("cpuset", Status.OK, "cgroup v2 with the cpuset controller")
    return Check(
        "cpuset",
        Status.WARN,
        "no cpuset cgroup: test-bed nodes will share all CPUs",
        "mount the cpuset controller (only the test bed needs it)",
    )


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
            "reinstall pymosix in its venv (make setup)",
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
    checks = guarded("root", lambda: check_root(euid, effective_caps(_read("/proc/self/status"))))
    checks += guarded("kernel", lambda: check_kernel_options(read_kernel_config()))
    if checks[0].status is not Status.OK:
        # criu and `ip netns` would only fail for want of privileges, with murkier messages.
        for name in ("criu", "netns"):
            checks.append(Check(name, Status.FAIL, "not checked: needs full root", "run as root"))
    else:
        checks += guarded("criu", lambda: check_criu(criu))
        checks += guarded("netns", check_netns)
    default = default_route_interface(_read("/proc/net/route"))
    checks += guarded("multicast", lambda: check_multicast(interface, default=default))
    checks += guarded("cpuset", check_cpuset)
    checks += guarded("cluster key", lambda: check_key(key_file))
    checks += guarded("python", check_python_dependencies)
    return checks


def can_run_node(checks: list[Check]) -> bool:
    """A node with migration can run when nothing FAILs."""
    return all(c.status is not Status.FAIL for c in checks)
