"""Each bed node's own mount namespace: private /tmp, /var/tmp and /dev/shm, as on separate
machines, and one shared directory that stands in for the NFS real clusters keep job data on.

The namespace is kept by a bind mount of its nsfs file (as `ip netns` keeps network
namespaces), so that `nsenter --mount=FILE` enters it whether or not any process lives there.
Such files may only sit on a private mount, hence `HOLDERS` is bind-mounted onto itself and
made private once. Everything else (the root file system, /home, /run) stays shared: files
outside the private directories are the same on every node, as with a shared /home.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from pathlib import Path

from pymosix.testbed.kernel import KernelError

#: Where the nsfs files of the nodes' mount namespaces are bound.
HOLDERS = Path("/run/pymosix-testbed-mnt")
#: The directories each node has a private tmpfs on.
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

#: Run inside the new namespace: the private directories, and no copies of the host's
#: network-namespace mounts (they change as beds come and go, and jobs' namespaces would
#: carry them from node to node).
_SETUP = " && ".join(
    [f"mount -t tmpfs -o mode=1777,nosuid,nodev pmx-node {d}" for d in PRIVATE_DIRS]
    + ["{ ! mountpoint -q /run/netns || umount -R -l /run/netns; }"]
)


def kept(paths: list[Path]) -> list[Path]:
    """Of these paths, the top directories under a private directory that nodes must still see
    (pymosix itself: a clone or venv under /tmp would vanish from every node otherwise)."""
    out: list[Path] = []
    for path in paths:
        for d in PRIVATE_DIRS:
            rel = path.resolve().relative_to(d) if path.resolve().is_relative_to(d) else None
            if rel is not None and rel.parts:
                top = Path(d) / rel.parts[0]
                if top not in out:
                    out.append(top)
    return out


def setup_script(keep: list[Path]) -> str:
    """The shell lines that make a node's private directories, keeping `keep` visible: each is
    bound aside before the tmpfs covers its parent, then moved back to its own path."""
    before, after = [], []
    for i, path in enumerate(keep):
        aside = HOLDERS / f".keep-{os.getpid()}-{i}"
        q, qa = shlex.quote(str(path)), shlex.quote(str(aside))
        before.append(f"mkdir -p {qa} && mount --bind {q} {qa}")
        after.append(f"mkdir -p {q} && mount --move {qa} {q} && rmdir {qa} 2>/dev/null; true")
    return " && ".join([*before, _SETUP, *after])


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        raise KernelError(f"{' '.join(argv)}: {r.stderr.strip() or f'status {r.returncode}'}")


def _is_mountpoint(path: Path) -> bool:
    r = subprocess.run(["mountpoint", "-q", str(path)], check=False, timeout=10)
    return r.returncode == 0


def holder(name: str) -> Path:
    """The nsfs file that keeps the mount namespace `name` (``pmx-BED-nodeI``)."""
    return HOLDERS / name


def make_mount_ns(name: str, keep: list[Path] | None = None) -> Path:
    """Make a node's mount namespace; returns the file `nsenter --mount=` takes. Directories in
    `keep` (see `kept`) stay the host's, though they lie under a private directory."""
    HOLDERS.mkdir(mode=0o755, exist_ok=True)
    if not _is_mountpoint(HOLDERS):
        _run(["mount", "--bind", str(HOLDERS), str(HOLDERS)])
    _run(["mount", "--make-private", str(HOLDERS)])
    path = holder(name)
    path.touch()
    script = setup_script(keep or [])
    argv = ["unshare", f"--mount={path}", "--propagation", "private", "sh", "-c", script]
    # Binding a namespace file is refused (EINVAL) when the kernel takes the new namespace for
    # an older one than the caller's: on Linux 6.18 namespace ids come from per-CPU batches, so
    # a caller that is itself in a young namespace may see this on some CPUs. Try each CPU.
    tries = [argv] + [["taskset", "-c", str(cpu), *argv] for cpu in sorted(os.sched_getaffinity(0))]
    for i, attempt in enumerate(tries):
        try:
            _run(attempt)
            return path
        except KernelError:
            if i == len(tries) - 1:
                remove_mount_ns(name)
                raise
            subprocess.run(
                ["umount", "-l", str(path)], capture_output=True, timeout=10, check=False
            )
    return path


def remove_mount_ns(name: str) -> None:
    """Unbind and remove a node's namespace file; the namespace ends with its last process."""
    path = holder(name)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10, check=False)
    path.unlink(missing_ok=True)


def mount_namespaces(prefix: str) -> list[str]:
    """Names of the namespace files whose name starts with prefix."""
    try:
        return sorted(p.name for p in HOLDERS.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []
