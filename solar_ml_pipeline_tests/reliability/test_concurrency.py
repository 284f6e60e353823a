"""Several processes at once on one device: retrains, an import, rollbacks and promotions.

Each writer is a real process (the CLI, or a spawned worker), as the daemon's run workers,
the CLI and the API are in production; the checks read the files and the run log afterwards.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from solar_ml_pipeline.model_store.registry import ModelRegistry
from solar_ml_pipeline.readings.importer import import_file
from solar_ml_pipeline_tests.conftest import PERIOD
from solar_ml_pipeline_tests.reliability.conftest import DAYS
from solar_ml_pipeline_tests.reliability.support import CLI, audit_model_store

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 300
DEVICE = "tracker01"


def start_retrain(env: dict[str, str], device_id: str, period: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "retrain", "--device", device_id, "--period", period,
                             "--days", DAYS, "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(processes: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    outcomes = []
    for process in processes:
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
        outcomes.append((process.returncode, out, err))
    return outcomes


def test_four_simultaneous_retrains_leave_four_records_four_intact_versions_and_a_sound_pointer(
    env_for_subprocess, settings, store, device_with_readings
):
    periods = [PERIOD, PERIOD, "2026-03-09", "2026-03-11"]
    outcomes = finish([start_retrain(env_for_subprocess, device_with_readings, period)
                       for period in periods])
    assert [code for code, _, _ in outcomes] == [0, 0, 0, 0], [err for _, _, err in outcomes]

    records = store.list_runs(device_id=device_with_readings, limit=50).runs
    assert len(records) == 4
    assert {r["status"] for r in records} == {"success"}
    assert sorted(r["period"] for r in records) == sorted(periods)
    registry = ModelRegistry(settings.model_dir)
    versions = audit_model_store(registry, store, device_with_readings)
    assert versions == sorted(r["version"] for r in records)

    # Promotions never go back in time, so the pointer holds the latest cutoff promoted.
    pointer = registry.read_pointer(device_with_readings)
    promoted = [r for r in records if r["promoted"]]
    assert pointer["version"] in {r["version"] for r in promoted}
    newest_cutoff = max(r["window_end"] for r in promoted)
    assert datetime.fromisoformat(pointer["cutoff"].replace("Z", "+00:00")) == newest_cutoff


NEW_HOME_OPENERS = 6


def _open_new_home(settings, start, results) -> None:
    """What each retrain does first: open the Dagster instance, add its device partition."""
    try:
        import dagster as dg

        from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
        from solar_ml_pipeline.orchestration.retraining import add_device_partition

        start.wait(timeout=120)
        ensure_dagster_home(settings)
        with dg.DagsterInstance.get() as instance:
            add_device_partition(instance, DEVICE)
        results.put("ok")
    except BaseException:
        results.put(traceback.format_exc())


def test_processes_opening_a_new_dagster_home_together_all_succeed_and_leave_it_usable(settings):
    import dagster as dg

    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(NEW_HOME_OPENERS), ctx.Queue()
    openers = [ctx.Process(target=_open_new_home, args=(settings, start, results))
               for _ in range(NEW_HOME_OPENERS)]
    for opener in openers:
        opener.start()
    outcomes = [results.get(timeout=RUN_TIMEOUT_S) for _ in openers]
    for opener in openers:
        opener.join(timeout=60)
    assert outcomes == ["ok"] * NEW_HOME_OPENERS, "\n".join(o for o in outcomes if o != "ok")
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        assert instance.get_dynamic_partitions("device") == [DEVICE]


def _new_readings(round_number: int, count: int = 250) -> list[dict[str, object]]:
    """Readings no one has stored yet: a new device, and the trained one a month later."""
    start = datetime(2026, 4, 1, tzinfo=UTC) + timedelta(minutes=round_number * count)
    return [{"device_id": device_id, "timestamp": (start + timedelta(minutes=i)).isoformat(),
             "power": float(i)}
            for i in range(count) for device_id in ("tracker09", DEVICE)]


def test_an_import_while_retrains_read_the_store_loses_nothing(
    env_for_subprocess, store, device_with_readings, tmp_path
):
    before = store.count_readings()
    retrains = [start_retrain(env_for_subprocess, device_with_readings, period)
                for period in (PERIOD, "2026-03-09")]
    offered = added = rounds = 0
    while any(process.poll() is None for process in retrains) or rounds < 3:
        rows = _new_readings(rounds)
        path = tmp_path / f"round{rounds}.jsonl"
        path.write_text("".join(f'{{"device_id": "{r["device_id"]}", "timestamp": '
                                f'"{r["timestamp"]}", "power": {r["power"]}}}\n' for r in rows))
        report = import_file(store, path, now=datetime(2027, 1, 1, tzinfo=UTC))
        assert report.skipped == {}
        offered += len(rows)
        added += report.added
        rounds += 1
    outcomes = finish(retrains)
    assert [code for code, _, _ in outcomes] == [0, 0], [err for _, _, err in outcomes]
    assert rounds > 3  # the import ran for as long as the retrains did
    assert added == offered
    assert store.count_readings() == before + offered
    assert store.count_readings("tracker09") == offered // 2
    records = store.list_runs(device_id=device_with_readings).runs
    assert sorted(r["status"] for r in records) == ["success", "success"]


# --- rollback against promotion ---------------------------------------------------------------------

RACE_ROUNDS = 150


def _versions(registry: ModelRegistry, count: int = 4) -> list[str]:
    versions = []
    for day in range(1, count + 1):
        version = f"202603{day:02d}_130000_{day:06x}"
        registry.save_version(DEVICE, version, {"weights": [day] * 1000},
                              {"partition_key": f"{DEVICE}|2026-03-{day:02d}"})
        versions.append(version)
    registry.promote(DEVICE, versions[0])
    registry.promote(DEVICE, versions[1])
    return versions


def _keep_rolling_back(model_dir: str, rounds: int, start, results) -> None:
    try:
        registry = ModelRegistry(Path(model_dir))
        start.wait(timeout=60)
        for _ in range(rounds):
            registry.rollback(DEVICE)
        results.put(("rollback", rounds))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _keep_promoting(model_dir: str, versions: list[str], rounds: int | None, start, stop,
                    results) -> None:
    """Promote each version in turn, `rounds` times or until `stop` is set."""
    try:
        registry = ModelRegistry(Path(model_dir))
        start.wait(timeout=60)
        done = 0
        while (done < rounds) if rounds is not None else not stop.is_set():
            registry.promote(DEVICE, versions[done % len(versions)])
            done += 1
        results.put(("promote", done))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def test_rollbacks_racing_promotions_never_expose_a_torn_pointer_and_end_on_a_real_version(
    settings, store
):
    registry = ModelRegistry(settings.model_dir)
    versions = _versions(registry)
    shas = {m["version"]: m["sha256"] for m in registry.list_versions(DEVICE)}
    ctx = multiprocessing.get_context("spawn")
    start, stop, results = ctx.Barrier(3), ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_keep_rolling_back,
                    args=(str(settings.model_dir), RACE_ROUNDS, start, results)),
        ctx.Process(target=_keep_promoting,
                    args=(str(settings.model_dir), versions, RACE_ROUNDS, start, stop, results)),
    ]
    for worker in workers:
        worker.start()
    start.wait(timeout=60)
    reads = 0
    while any(worker.is_alive() for worker in workers):
        pointer = registry.read_pointer(DEVICE)  # parses: never a half-written file
        assert shas[pointer["version"]] == pointer["sha256"]
        assert pointer["previous_version"] in shas
        reads += 1
    for worker in workers:
        worker.join(timeout=60)
    outcomes = sorted(results.get(timeout=10) for _ in workers)
    assert outcomes == [("promote", RACE_ROUNDS), ("rollback", RACE_ROUNDS)], outcomes
    assert reads > 0
    audit_model_store(registry, store, DEVICE)
    assert registry.read_pointer(DEVICE)["version"] in versions


def test_model_rollback_commands_racing_promotions_are_each_recorded_and_end_on_a_real_version(
    env_for_subprocess, settings, store
):
    registry = ModelRegistry(settings.model_dir)
    versions = _versions(registry)
    ctx = multiprocessing.get_context("spawn")
    start, stop, results = ctx.Barrier(2), ctx.Event(), ctx.Queue()
    promoter = ctx.Process(target=_keep_promoting,
                           args=(str(settings.model_dir), versions, None, start, stop, results))
    promoter.start()
    start.wait(timeout=60)
    try:
        rollbacks = [subprocess.Popen([*CLI, "model", "rollback", "--device", DEVICE, "--json"],
                                      env=env_for_subprocess, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outcomes = finish(rollbacks)
    finally:
        time.sleep(0.2)  # let a few promotions land after the last rollback too
        stop.set()
        promoter.join(timeout=60)
    assert [code for code, _, _ in outcomes] == [0, 0, 0], [err for _, _, err in outcomes]
    kind, promotions = results.get(timeout=10)
    assert kind == "promote" and promotions > 0
    recorded = store.list_runs(device_id=DEVICE).runs
    assert len(recorded) == 3 and {r["kind"] for r in recorded} == {"rollback"}
    assert {r["version"] for r in recorded} <= set(versions)
    audit_model_store(registry, store, DEVICE)
    assert registry.read_pointer(DEVICE)["version"] in versions
