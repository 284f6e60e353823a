"""Promotions of one device stay serialised across hosts: a PostgreSQL advisory lock, not a
file lock (which a network filesystem does not share between hosts)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import pytest

from solar_ml_pipeline.model_store.registry import LockTimeout, LockUnavailable, ModelRegistry
from solar_ml_pipeline_tests.model_store.test_registry import _save
from solar_ml_pipeline_tests.servers import postgres_server

pytest.importorskip("psycopg2")
DEVICE = "tracker01"
ROUNDS = 15


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:
        yield server


def _host(model_dir: str, lock_url: str, host: str, versions: list[str], log: str) -> None:
    """One host promoting in a loop. flock is disabled, as between two NFS clients: only the
    database lock stands between the two hosts' read-decide-write."""
    import fcntl

    fcntl.flock = lambda *args: None
    registry = ModelRegistry(model_dir, lock_url=lock_url)
    for version in versions:
        with registry.device_lock(DEVICE):
            before = registry.read_pointer(DEVICE)
            time.sleep(0.01)  # decide: another host must not move the pointer meanwhile
            after = registry.set_pointer(DEVICE, version)
            with open(log, "a") as out:
                out.write(json.dumps({"host": host, "before": before and before["version"],
                                      "previous": after["previous_version"]}) + "\n")


def test_two_hosts_promoting_the_same_device_never_lose_an_update(tmp_path, postgres):
    shared = tmp_path / "shared_models"
    registry = ModelRegistry(shared)
    versions = [_save(registry, i).version for i in range(1, 2 * ROUNDS + 1)]
    for host in ("host_a", "host_b"):  # the same store mounted at two paths
        (tmp_path / host).mkdir()
        (tmp_path / host / "models").symlink_to(shared)
    log = tmp_path / "promotions.jsonl"
    hosts = [multiprocessing.get_context("spawn").Process(
        target=_host, args=(str(tmp_path / host / "models"), postgres.url, host,
                            versions[i::2], str(log)))
        for i, host in enumerate(("host_a", "host_b"))]
    for process in hosts:
        process.start()
    for process in hosts:
        process.join(120)
        assert process.exitcode == 0
    moves = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(moves) == 2 * ROUNDS
    assert {m["host"] for m in moves} == {"host_a", "host_b"}
    # each promotion saw the pointer the previous one wrote: none was lost in between
    assert all(m["previous"] == m["before"] for m in moves)


def _hold_forever(model_dir: str, lock_url: str, held: str) -> None:
    import fcntl
    from pathlib import Path

    fcntl.flock = lambda *args: None
    with ModelRegistry(model_dir, lock_url=lock_url).device_lock(DEVICE):
        Path(held).touch()
        time.sleep(300)


def test_a_host_that_dies_holding_the_lock_frees_it(tmp_path, postgres):
    holder = multiprocessing.get_context("spawn").Process(
        target=_hold_forever, args=(str(tmp_path), postgres.url, str(tmp_path / "held")))
    holder.start()
    registry = ModelRegistry(tmp_path / "elsewhere", lock_url=postgres.url)
    deadline = time.monotonic() + 60
    while not (tmp_path / "held").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # until the other host holds the lock
    with pytest.raises(LockTimeout, match="locked by a retrain, rollback or prune on another host"):
        with registry.device_lock(DEVICE, timeout_s=0.5):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    with registry.device_lock(DEVICE, timeout_s=30):  # the server ended its session
        pass


def test_an_unreachable_lock_database_is_one_line_and_moves_nothing(tmp_path, postgres):
    registry = ModelRegistry(tmp_path, lock_url=postgres.url)
    version = _save(registry, 1).version
    postgres.stop()
    try:
        down = ModelRegistry(tmp_path, lock_url=postgres.url)
        with pytest.raises(LockUnavailable) as raised:
            with down.device_lock(DEVICE):
                down.set_pointer(DEVICE, version)
        assert "\n" not in str(raised.value)
        assert str(raised.value).startswith(f"cannot take device {DEVICE}'s promotion lock in "
                                            "PostgreSQL")
        assert "check DAGSTER_PG_URL" in str(raised.value)
        assert down.read_pointer(DEVICE) is None
    finally:
        postgres.start()


def test_an_attempt_whose_lock_database_went_down_fails_in_one_line_and_keeps_the_pointer(
        settings, store, postgres):
    from solar_ml_pipeline.forecasting.attempt import retrain_device
    from solar_ml_pipeline_tests.conftest import PERIOD_START, simulate_into

    simulate_into(store, DEVICE, days=3)
    registry = ModelRegistry(settings.model_dir, lock_url=postgres.url)
    first = retrain_device(settings, store, registry, DEVICE, "2026-03-10", PERIOD_START,
                           run_id="before", days=2)
    assert first["status"] == "success"
    pointer = registry.pointer_path(DEVICE).read_bytes()
    postgres.stop()
    try:
        record = retrain_device(settings, store, registry, DEVICE, "2026-03-10", PERIOD_START,
                                run_id="while-down", days=2)
    finally:
        postgres.start()
    assert record["status"] == "failed" and "\n" not in record["error"]
    assert "promotion lock in PostgreSQL" in record["error"]
    assert registry.pointer_path(DEVICE).read_bytes() == pointer  # nothing moved
    assert [r["run_id"] for r in store.list_runs(device_id=DEVICE).runs] == ["while-down", "before"]
