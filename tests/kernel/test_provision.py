"""provision-criu.sh for real, into a temporary prefix: CRIU >= 4.2 from the Debian archive of
this host's apt sources, an old prefix upgraded by a re-run, and the fallback when the preferred
suite's criu fails `criu check` (Debian 12's 3.17 does on kernels >= 6.13), and the host's apt
proxy setting honoured."""

from __future__ import annotations

import http.server
import os
import platform
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest

SCRIPT = Path(__file__).parents[2] / "src" / "pymosix" / "data" / "provision-criu.sh"

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt"),
    pytest.mark.skipif(shutil.which("criu") is not None, reason="a system criu would be used"),
]


def provision(prefix: Path, suites: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYMOSIX_CRIU"}
    env["PYMOSIX_CRIU_PREFIX"] = str(prefix)
    if suites:
        env["PYMOSIX_CRIU_SUITES"] = suites
    r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == str(prefix / "bin" / "criu")
    return r


def version(criu: Path) -> tuple[int, ...]:
    out = subprocess.run([str(criu), "--version"], capture_output=True, text=True, timeout=30)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("Version:"))
    return tuple(int(x) for x in line.split()[1].split("."))


def check(criu: Path) -> str:
    r = subprocess.run([str(criu), "check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def test_an_old_prefix_is_upgraded_to_criu_42(tmp_path: Path) -> None:
    prefix = tmp_path / "criu"
    criu = prefix / "bin" / "criu"
    provision(prefix, suites="trixie")
    assert version(criu)[:2] == (4, 1)
    check(criu)
    upgraded = provision(prefix)
    assert "forky" in upgraded.stderr
    assert version(criu) >= (4, 2)
    assert "Looks good" in check(criu)
    again = provision(prefix)
    assert "fetching" not in again.stderr, "a re-run with nothing missing fetches nothing"
    assert not Path(f"{prefix}.new").exists()


def _kernel() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@pytest.mark.skipif(_kernel() < (6, 13), reason="Debian 12's criu 3.17 passes on this kernel")
def test_a_suite_whose_criu_fails_check_falls_back(tmp_path: Path) -> None:
    prefix = tmp_path / "criu"
    criu = prefix / "bin" / "criu"
    first = provision(prefix, suites="bookworm trixie")
    assert "Debian bookworm's criu 3.17" in first.stderr
    assert "fails 'criu check'" in first.stderr
    assert version(criu)[:2] == (4, 1)
    check(criu)
    again = provision(prefix, suites="bookworm trixie")
    assert "fetching" not in again.stderr, "the failed suite is not fetched again on this kernel"
    assert "keeping" in again.stderr


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A forwarding HTTP proxy on loopback that remembers what it was asked for."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        keep = {"Range", "If-Modified-Since", "If-Range", "Accept", "User-Agent"}
        headers = {k: v for k, v in self.headers.items() if k in keep}
        try:
            with urllib.request.urlopen(
                urllib.request.Request(self.path, headers=headers), timeout=60
            ) as up:
                status, body, got = up.status, up.read(), up.headers
        except urllib.error.HTTPError as e:
            status, body, got = e.code, e.read(), e.headers
        try:
            self.send_response(status)
            for k in ("Content-Type", "Last-Modified", "Content-Range", "Date"):
                if got.get(k):
                    self.send_header(k, got[k])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # apt hung up: it has what it needs
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_hosts_apt_proxy_is_used(tmp_path: Path) -> None:
    mirror = subprocess.run(
        ["bash", str(SCRIPT), "--print-mirror"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    if not mirror.startswith("http://"):
        pytest.skip("this test's proxy speaks plain HTTP only")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conf = tmp_path / "apt.conf"  # as an admin would put it in /etc/apt/apt.conf.d
    conf.write_text(f'Acquire::http::Proxy "http://127.0.0.1:{server.server_port}/";\n')
    try:
        _Proxy.seen.clear()
        env = {k: v for k, v in os.environ.items() if k != "PYMOSIX_CRIU"}
        env |= {"PYMOSIX_CRIU_PREFIX": str(tmp_path / "criu"), "APT_CONFIG": str(conf)}
        r = subprocess.run(
            ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=500
        )
        assert r.returncode == 0, r.stderr
        assert version(tmp_path / "criu" / "bin" / "criu") >= (4, 2)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert any(p.startswith(mirror) and "/dists/forky/" in p for p in _Proxy.seen), _Proxy.seen
    assert any(p.startswith(mirror) and "/criu_4." in p for p in _Proxy.seen), _Proxy.seen


def test_the_arm64_loader_is_where_debian_forkys_libc6_has_it(tmp_path: Path) -> None:
    """The loader the script runs on arm64, checked against the real package (fetched, not run)."""
    q = ["bash", str(SCRIPT)]
    mirror = subprocess.run([*q, "--print-mirror"], capture_output=True, text=True, timeout=60)
    loader = subprocess.run([*q, "--print-loader", "arm64"], capture_output=True, text=True)
    assert mirror.returncode == 0, mirror.stderr
    for d in ("etc/sources.list.d", "state/lists/partial", "cache/archives/partial", "debs"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "state" / "status").touch()
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    (tmp_path / "etc" / "sources.list").write_text(
        f"deb [signed-by={keyring}] {mirror.stdout.strip()} forky main\n"
    )
    apt = [
        f"-oDir::Etc::SourceList={tmp_path}/etc/sources.list",
        f"-oDir::Etc::SourceParts={tmp_path}/etc/sources.list.d",
        f"-oDir::State={tmp_path}/state",
        f"-oDir::State::status={tmp_path}/state/status",
        f"-oDir::Cache={tmp_path}/cache",
        "-oAPT::Architecture=arm64",
        "-oAPT::Architectures=arm64",
        "-oAPT::Sandbox::User=root",
        "-qq",
    ]
    for step in (["update"], ["download", "libc6"]):
        r = subprocess.run(
            ["apt-get", *apt, *step],
            cwd=tmp_path / "debs",
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
    [deb] = (tmp_path / "debs").glob("libc6_*_arm64.deb")
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True).stdout
    assert f"./{loader.stdout.strip()}\n" in files
