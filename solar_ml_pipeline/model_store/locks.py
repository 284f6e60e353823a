"""The per-device lock, so pointer moves and pruning of one device never interleave, across
processes (flock: the kernel drops it when the holder dies), across hosts when the store is
shared (a PostgreSQL advisory lock: the server drops it when the holder's session ends), and
reentrant within a thread."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from solar_ml_pipeline.model_store.errors import LockTimeout, LockUnavailable
from solar_ml_pipeline.model_store.layout import StoreLayout

LOCK_NAME = ".lock"
DEFAULT_LOCK_TIMEOUT_S = 120.0

_held_locks = threading.local()


def _held() -> dict[str, int]:
    if not hasattr(_held_locks, "depths"):
        _held_locks.depths = {}
    return _held_locks.depths


class DeviceLocks(StoreLayout):
    """The lock every pointer move and prune of a device takes."""

    @contextmanager
    def device_lock(
        self, device_id: str, timeout_s: float | None = DEFAULT_LOCK_TIMEOUT_S
    ) -> Iterator[None]:
        """Exclusive per-device lock across processes (flock on `<device>/.lock`).

        Reentrant within a thread, so promotion code can hold it across read-decide-promote
        and still call `promote`. The kernel drops it when the holder dies: no stale locks.
        """
        lock_path = self.device_dir(device_id) / LOCK_NAME
        key = str(lock_path)
        depths = _held()
        if depths.get(key):
            depths[key] += 1
            try:
                yield
            finally:
                depths[key] -= 1
            return
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise LockTimeout(
                            f"device {device_id} is locked by another retrain, rollback or prune "
                            f"for over {timeout_s:g}s: retry when it finishes"
                        ) from None
                    time.sleep(0.05)
            try:
                with self._across_hosts(device_id, deadline, timeout_s):
                    depths[key] = 1
                    try:
                        yield
                    finally:
                        depths.pop(key, None)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextmanager
    def _across_hosts(self, device_id: str, deadline: float | None,
                      timeout_s: float | None) -> Iterator[None]:
        """The device's advisory lock in the shared PostgreSQL, held by its own session."""
        if not self.lock_url:
            yield
            return
        import psycopg2

        try:
            conn = psycopg2.connect(self.lock_url, connect_timeout=5)
        except psycopg2.Error as exc:
            problem = " ".join(str(exc).split())[:200]
            raise LockUnavailable(
                f"cannot take device {device_id}'s promotion lock in PostgreSQL ({problem}): "
                "check DAGSTER_PG_URL and that the server is up") from None
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                while True:
                    cursor.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                   (f"solar-ml/device/{device_id}",))
                    if cursor.fetchone()[0]:
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        raise LockTimeout(
                            f"device {device_id} is locked by a retrain, rollback or prune on "
                            f"another host for over {timeout_s:g}s: retry when it finishes")
                    time.sleep(0.05)
            yield
        finally:
            conn.close()  # ends the session, which releases its advisory locks

    def holds_lock(self, device_id: str) -> bool:
        return bool(_held().get(str(self.device_dir(device_id) / LOCK_NAME)))
