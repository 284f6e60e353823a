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
    also_listen: tuple[str, ...] = ()  # addresses besides loopback (other network namespaces)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/solar_ml"

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(_as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir),
                                            *args]), capture_output=True, text=True, check=check,
                              timeout=60)

    def start(self) -> None:
        self.pg_ctl("-w", "-l", str(self.data_dir / "server.log"), "-o",
                    f"-p {self.port} -c listen_addresses={','.join(('127.0.0.1', *self.also_listen))} "
                    f"-k {self.data_dir} "
                    "-c fsync=off -c max_connections=200", "start")

    def stop(self) -> None:
        self.pg_ctl("-w", "-m", "immediate", "stop", check=False)


@contextlib.contextmanager
def postgres_server(also_listen: tuple[str, ...] = ()) -> Iterator[PostgresServer]:
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
    if also_listen:  # initdb trusts loopback only
        with open(data_dir / "pg_hba.conf", "a") as hba:
            hba.write("host all all samenet trust\n")  # the subnets of also_listen
    server = PostgresServer(data_dir, free_port(), bin_dir, also_listen)
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
    also_listen: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, folder: Path) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", *self.also_listen,
             "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(folder)],
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
def redis_server(tmp_path: Path, also_listen: tuple[str, ...] = ()) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port(), also_listen=also_listen)
    server.start(tmp_path)
    try:
        yield server
    finally:
        server.stop()


# -- worker "hosts" in their own network namespaces ---------------------------------------


@dataclass(frozen=True)
class HostNetwork:
    """A network namespace joined to this one by a veth pair: processes in it reach the
    servers only at `gateway` (this side's address), never over this namespace's loopback."""

    namespace: str
    gateway: str

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def url(self, loopback_url: str) -> str:
        """A server's URL as seen from inside the namespace."""
        return loopback_url.replace("127.0.0.1", self.gateway)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, check=True, timeout=30)


@contextlib.contextmanager
def host_networks(hosts: tuple[str, ...]) -> Iterator[dict[str, HostNetwork] | None]:
    """One network namespace per host where the machine allows it (root and iproute2), else
    None: the caller then runs its "hosts" as plain processes."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield None
        return
    made: list[str] = []
    networks: dict[str, HostNetwork] | None = {}
    tag = os.getpid() % 100_000
    try:
        for index, host in enumerate(hosts, start=1):
            namespace, outside, inside = f"solarml{tag}{host}", f"sm{tag}o{index}", f"sm{tag}i{index}"
            gateway, address = f"10.199.{index}.1", f"10.199.{index}.2"
            _ip("netns", "add", namespace)
            made.append(namespace)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", namespace)
            _ip("addr", "add", f"{gateway}/24", "dev", outside)
            _ip("link", "set", outside, "up")
            for args in (("addr", "add", f"{address}/24", "dev", inside),
                         ("link", "set", inside, "up"), ("link", "set", "lo", "up")):
                _ip("netns", "exec", namespace, "ip", *args)
            networks[host] = HostNetwork(namespace, gateway)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        networks = None  # e.g. a container without CAP_NET_ADMIN
    try:
        yield networks
    finally:
        for namespace in made:  # the veth pair goes with its namespace
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
