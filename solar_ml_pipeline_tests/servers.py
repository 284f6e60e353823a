"""Throwaway PostgreSQL and Redis servers on free loopback ports, from the installed binaries.

Each runs from its own temporary folder and is stopped (and its folder left to tmp_path)
when the context ends. PostgreSQL refuses to run as root, so as root its commands run as the
`postgres` system user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin() -> Path | None:
    """The server binaries themselves (Debian's /usr/bin ones are wrappers for clusters)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    bin_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/solar_ml"

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(_as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir),
                                            *args]), capture_output=True, text=True, check=check,
                              timeout=60)

    def start(self) -> None:
        self.pg_ctl("-w", "-l", str(self.data_dir / "server.log"), "-o",
                    f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} "
                    "-c fsync=off -c max_connections=200", "start")

    def stop(self) -> None:
        self.pg_ctl("-w", "-m", "immediate", "stop", check=False)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    # Its own folder under /tmp: the postgres user cannot enter root's pytest folders.
    data_dir = Path(tempfile.mkdtemp(prefix="solar-ml-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres")
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data_dir), "-A", "trust",
                                 "-U", "postgres", "--no-sync"]),
                   capture_output=True, text=True, check=True, timeout=120)
    server = PostgresServer(data_dir, free_port(), bin_dir)
    server.start()
    try:
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(server.port),
                        "-U", "postgres", "solar_ml"], capture_output=True, text=True,
                       check=True, timeout=60)
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, folder: Path) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            time.sleep(0.1)
        raise RuntimeError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port())
    server.start(tmp_path)
    try:
        yield server
    finally:
        server.stop()
