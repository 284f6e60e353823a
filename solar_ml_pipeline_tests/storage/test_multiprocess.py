"""Several processes share the embedded SQLite store, as webserver, daemon, workers and CLI do."""

from __future__ import annotations

import multiprocessing
import random
import traceback
from datetime import UTC, datetime, timedelta

from solar_ml_pipeline.storage.sqlite import SqliteStore

T0 = datetime(2026, 2, 24, 0, 0, tzinfo=UTC)
DEVICES = ("tracker01", "tracker02")
WRITERS = 3
MINUTES_PER_WRITER = 600
OVERLAP_STEP = 300  # writer w covers minutes [w * 300, w * 300 + 600): neighbours overlap
BATCH = 50
RUNS_PER_WRITER = 20


def writer_minutes(writer: int) -> range:
    return range(writer * OVERLAP_STEP, writer * OVERLAP_STEP + MINUTES_PER_WRITER)


def power_of(writer: int, minute: int) -> float:
    return writer * 100_000.0 + minute


def write(path, writer, barrier, results) -> None:
    try:
        store = SqliteStore(path)
        rows = [
            {"device_id": device, "timestamp": T0 + timedelta(minutes=m), "power": power_of(writer, m)}
            for m in writer_minutes(writer)
            for device in DEVICES
        ]
        random.Random(writer).shuffle(rows)
        barrier.wait(timeout=60)
        added = 0
        for start in range(0, len(rows), BATCH):
            added += store.write_readings(rows[start : start + BATCH])
            run = start // BATCH
            if run < RUNS_PER_WRITER:
                run_id = f"w{writer}-r{run}"
                store.upsert_run({"run_id": run_id, "device_id": DEVICES[run % 2],
                                  "status": "running", "trained_at": T0 + timedelta(hours=run)})
                store.upsert_run({"run_id": run_id, "status": "success", "mae": 0.1 * run})
                # every writer merges its own fields into one shared record: none may be lost
                store.upsert_run({"run_id": "shared", f"w{writer}_r{run}": run})
        store.close()
        results.put(("writer", writer, added))
    except BaseException:
        results.put(("error", writer, traceback.format_exc()))


def read(path, barrier, stop, results) -> None:
    try:
        store = SqliteStore(path)
        barrier.wait(timeout=60)
        reads = 0
        while not stop.is_set() or reads < 5:
            for device in DEVICES:
                frame = store.read_window(device, T0, T0 + timedelta(days=2))
                stamps = frame["timestamp"]
                assert stamps.is_monotonic_increasing and stamps.is_unique
                assert frame["power"].notna().all()
                store.list_runs(device_id=device, limit=5)
            reads += 1
        store.close()
        results.put(("reader", 0, reads))
    except BaseException:
        results.put(("error", "reader", traceback.format_exc()))


def test_concurrent_writer_processes_and_a_reader_lose_and_duplicate_nothing(tmp_path):
    path = tmp_path / "home" / "solar_ml.db"  # no process has created it yet
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS + 1)
    stop = context.Event()
    results = context.Queue()
    writers = [
        context.Process(target=write, args=(path, writer, barrier, results))
        for writer in range(WRITERS)
    ]
    reader = context.Process(target=read, args=(path, barrier, stop, results))
    for process in [*writers, reader]:
        process.start()

    outcomes = []
    for _ in writers:
        outcomes.append(results.get(timeout=60))
    stop.set()
    outcomes.append(results.get(timeout=60))
    for process in [*writers, reader]:
        process.join(timeout=30)
        assert process.exitcode == 0

    errors = [outcome[2] for outcome in outcomes if outcome[0] == "error"]
    assert errors == []
    assert [outcome for outcome in outcomes if outcome[0] == "reader"][0][2] >= 5

    store = SqliteStore(path)
    all_minutes = sorted({m for writer in range(WRITERS) for m in writer_minutes(writer)})
    expected = len(all_minutes) * len(DEVICES)
    added = sum(outcome[2] for outcome in outcomes if outcome[0] == "writer")
    assert added == expected  # each new key counted by exactly one writer
    assert store.count_readings() == expected
    for device in DEVICES:
        frame = store.read_window(device, T0, T0 + timedelta(days=2))
        minutes = [int((ts - T0) / timedelta(minutes=1)) for ts in frame["timestamp"]]
        assert minutes == all_minutes
        for minute, power in zip(minutes, frame["power"], strict=True):
            writers_of_key = [w for w in range(WRITERS) if minute in writer_minutes(w)]
            assert power in {power_of(w, minute) for w in writers_of_key}

    page = store.list_runs(limit=1000)
    run_ids = [record["run_id"] for record in page.runs]
    expected_ids = {f"w{w}-r{r}" for w in range(WRITERS) for r in range(RUNS_PER_WRITER)}
    assert page.total == len(run_ids) == len(expected_ids) + 1
    assert set(run_ids) == expected_ids | {"shared"}
    for run_id in expected_ids:
        record = store.get_run(run_id)
        assert record["status"] == "success" and record["trained_at"] is not None
    shared = store.get_run("shared")
    assert {name for name in shared if name != "run_id"} == {
        f"w{w}_r{r}" for w in range(WRITERS) for r in range(RUNS_PER_WRITER)
    }
    store.close()
