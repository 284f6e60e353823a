"""SQLite specifics beyond the shared contract: file layout, schema, locking, threads, fork."""

from __future__ import annotations

import multiprocessing
import pickle
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.storage import StoreUnavailable, open_store
from solar_ml_pipeline.storage.sqlite import SqliteStore

T0 = datetime(2026, 2, 24, 6, 0, tzinfo=UTC)


def reading(minute: int, device_id: str = "tracker01", power: float = 1.0) -> dict[str, object]:
    return {"device_id": device_id, "timestamp": T0 + timedelta(minutes=minute), "power": power}


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "home" / "nested" / "solar_ml.db"


def test_first_use_creates_the_directory_and_a_wal_database(db_path):
    store = SqliteStore(db_path)
    assert not db_path.parent.exists()  # nothing happens until the store is used
    store.ping()
    assert db_path.exists()
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"readings_raw", "model_runs", "devices"} <= tables
    store.close()


def test_reopening_an_existing_database_keeps_its_data(db_path):
    first = SqliteStore(db_path)
    first.write_readings([reading(0)])
    first.upsert_run({"run_id": "r1", "trained_at": T0})
    first.close()
    second = SqliteStore(db_path)
    assert second.count_readings() == 1
    assert second.get_run("r1") == {"run_id": "r1", "trained_at": T0}
    second.close()


def test_readings_are_keyed_unique_on_device_and_timestamp(db_path):
    store = SqliteStore(db_path)
    store.ping()
    with sqlite3.connect(db_path) as raw:
        indexes = raw.execute("PRAGMA index_list(readings_raw)").fetchall()
        unique = [row[1] for row in indexes if row[2] == 1]
        columns = [[col[2] for col in raw.execute(f"PRAGMA index_info({name})")] for name in unique]
    assert ["device_id", "timestamp"] in columns
    store.close()


def test_timestamps_are_stored_as_integer_utc_microseconds(db_path):
    store = SqliteStore(db_path)
    store.write_readings([reading(0)])
    with sqlite3.connect(db_path) as raw:
        kind, value = raw.execute("SELECT typeof(timestamp), timestamp FROM readings_raw").fetchone()
    assert kind == "integer"
    assert value == int(T0.timestamp()) * 1_000_000
    store.close()


def test_window_reads_search_the_key_range_instead_of_scanning(db_path):
    store = SqliteStore(db_path)
    store.ping()
    with sqlite3.connect(db_path) as raw:
        plan = " ".join(
            str(row[-1])
            for row in raw.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM readings_raw "
                "WHERE device_id = ? AND timestamp >= ? AND timestamp < ? ORDER BY timestamp",
                ("tracker01", 0, 1),
            )
        )
    assert "SEARCH" in plan and "PRIMARY KEY" in plan and "TEMP B-TREE" not in plan
    store.close()


def test_table_names_come_from_the_settings(tmp_path):
    settings = Settings(
        solar_ml_home=tmp_path,
        collection_readings="readings_b",
        collection_model_runs="runs_b",
        collection_devices="devices_b",
    )
    store = SqliteStore.from_settings(settings)
    store.write_readings([reading(0)])
    store.upsert_run({"run_id": "r1"})
    store.set_site("tracker01", {"latitude": 1.0})
    with sqlite3.connect(settings.sqlite_path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM readings_b").fetchone()[0] == 1
        assert raw.execute("SELECT COUNT(*) FROM runs_b").fetchone()[0] == 1
        assert raw.execute("SELECT COUNT(*) FROM devices_b").fetchone()[0] == 1
    store.close()


def test_open_store_without_mongodb_uri_gives_sqlite_in_solar_ml_home(tmp_path):
    store = open_store(Settings(solar_ml_home=tmp_path))
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "solar_ml.db"


def test_a_table_name_that_is_not_an_identifier_is_refused(db_path):
    with pytest.raises(ValueError, match="invalid table name"):
        SqliteStore(db_path, readings_table="readings; DROP TABLE x")


def test_an_unusable_location_raises_one_line_store_unavailable(tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the home directory should be")
    store = SqliteStore(blocker / "solar_ml.db")
    with pytest.raises(StoreUnavailable) as caught:
        store.ping()
    message = str(caught.value)
    assert "\n" not in message
    assert str(blocker / "solar_ml.db") in message and "SOLAR_ML_HOME" in message


def test_a_writer_waits_for_another_connection_holding_the_write_lock(db_path):
    store = SqliteStore(db_path, busy_timeout_s=10)
    store.ping()
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    assert store.write_readings([reading(0)]) == 1
    assert time.monotonic() - started >= 0.4
    release.join()
    holder.close()
    store.close()


def test_threads_sharing_one_store_lose_and_duplicate_nothing(db_path):
    store = SqliteStore(db_path)
    added: list[int] = []
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for batch in range(10):
                first = worker * 50 + batch * 20  # windows overlap between workers
                added.append(store.write_readings([reading(m) for m in range(first, first + 40)]))
                store.upsert_run({"run_id": f"w{worker}-{batch}", "device_id": "tracker01"})
                store.upsert_run({"run_id": "shared", f"worker_{worker}_{batch}": batch})
                store.read_window("tracker01", T0, T0 + timedelta(days=1))
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = len({w * 50 + b * 20 + i for w in range(4) for b in range(10) for i in range(40)})
    assert sum(added) == store.count_readings() == expected
    assert store.list_runs(limit=100).total == 41
    assert len(store.get_run("shared")) == 1 + 40
    store.close()


def _write_in_child(store: SqliteStore, parent_connection_id: int) -> None:
    store.write_readings([reading(1)])
    store.upsert_run({"run_id": "from-child"})
    if id(store._conn) == parent_connection_id:
        raise SystemExit(3)
    store.close()


def test_a_forked_child_opens_its_own_connection(db_path):
    store = SqliteStore(db_path)
    store.write_readings([reading(0)])  # the parent's connection is open before the fork
    child = multiprocessing.get_context("fork").Process(
        target=_write_in_child, args=(store, id(store._conn))
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert store.count_readings() == 2
    assert store.get_run("from-child") == {"run_id": "from-child"}
    store.close()


def test_a_pickled_store_reopens_the_same_file(db_path):
    store = SqliteStore(db_path, runs_table="runs_x")
    store.write_readings([reading(0)])
    copy = pickle.loads(pickle.dumps(store))
    assert copy.path == db_path and copy.runs_table == "runs_x"
    assert copy.count_readings() == 1
    copy.close()
    store.close()


def test_a_closed_store_reopens_on_next_use(db_path):
    store = SqliteStore(db_path)
    store.write_readings([reading(0)])
    store.close()
    assert store.count_readings() == 1
    store.close()
