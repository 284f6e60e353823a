"""The embedded instance's pooled event log: the same files and answers as Dagster's own, one
open connection per database, and a live run log in the UI still woken by every write."""

import threading
import time

import dagster as dg
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from solar_ml_pipeline.orchestration.event_log import (
    OPEN_RUN_DATABASES,
    EmbeddedSqliteStorage,
    PooledSqliteEventLogStorage,
)
from solar_ml_pipeline.orchestration.instance import ensure_dagster_home


def materialization(run_id: str, device: str) -> EventLogEntry:
    event = DagsterEvent(
        DagsterEventType.ASSET_MATERIALIZATION.value, "retrain_job",
        event_specific_data=StepMaterializationData(
            dg.AssetMaterialization(asset_key="trained_model", partition=f"{device}|2026-03-10")))
    return EventLogEntry(error_info=None, level="debug", user_message="", run_id=run_id,
                         timestamp=time.time(), dagster_event=event)


def test_the_written_instance_uses_the_pooled_event_log_over_dagsters_own_files(settings, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = ensure_dagster_home(settings)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        instance.event_log_storage.store_event(materialization("run-a", "t1"))
    assert (home / "history" / "runs" / "run-a.db").exists()  # where stock Dagster keeps it
    # Dagster's own storage reads what the pooled one wrote, so the section can be removed
    stock = SqliteEventLogStorage(str(home / "history" / "runs"))
    latest = stock.get_latest_materialization_events([dg.AssetKey("trained_model")])
    assert latest[dg.AssetKey("trained_model")].run_id == "run-a"


def test_a_run_database_keeps_one_engine_across_events(tmp_path):
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    storage.store_event(materialization("run-a", "t1"))
    engine = storage._engines["run-a"]  # noqa: SLF001 - the pooling is what is under test
    storage.store_event(materialization("run-a", "t2"))
    assert storage._engines["run-a"] is engine  # noqa: SLF001
    assert len(storage.get_records_for_run("run-a").records) == 2


def test_engines_of_runs_not_touched_lately_are_closed(tmp_path):
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    for index in range(OPEN_RUN_DATABASES + 3):
        storage.store_event(materialization(f"run-{index}", "t1"))
    open_runs = [name for name in storage._engines if name.startswith("run-")]  # noqa: SLF001
    assert open_runs == [f"run-{index}" for index in range(3, OPEN_RUN_DATABASES + 3)]
    assert len(storage.get_records_for_run("run-0").records) == 1  # reopened on demand


def test_a_watcher_in_another_process_sees_each_new_event_while_the_writer_stays_open(tmp_path):
    writer = PooledSqliteEventLogStorage(str(tmp_path))
    watcher = PooledSqliteEventLogStorage(str(tmp_path))  # the webserver's, apart from the run's
    writer.store_event(materialization("run-a", "t1"))
    seen, arrived = [], threading.Event()

    def on_event(entry, cursor):  # noqa: ANN001, ANN202 - Dagster's callback signature
        seen.append(entry)
        arrived.set()

    watcher.watch("run-a", None, on_event)
    try:
        for device in ("t2", "t3"):
            arrived.clear()
            writer.store_event(materialization("run-a", device))
            assert arrived.wait(10), f"the watcher was not woken by the write of {device}"
    finally:
        watcher.end_watch("run-a", on_event)
        watcher.dispose()
    partitions = {entry.dagster_event.partition for entry in seen}
    assert {"t2|2026-03-10", "t3|2026-03-10"} <= partitions


def test_wipe_closes_the_open_connections_before_deleting_the_files(tmp_path):
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    storage.store_event(materialization("run-a", "t1"))
    storage.wipe()
    assert not (tmp_path / "run-a.db").exists()
    storage.store_event(materialization("run-a", "t2"))  # a new file, not the unlinked one
    assert (tmp_path / "run-a.db").exists()
    assert len(storage.get_records_for_run("run-a").records) == 1


def test_threads_share_the_pooled_storage_without_losing_events(tmp_path):
    storage = EmbeddedSqliteStorage.from_local(str(tmp_path)).event_log_storage
    threads = [threading.Thread(target=lambda n=n: [storage.store_event(
        materialization("run-a", f"t{n}-{i}")) for i in range(10)]) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(storage.get_records_for_run("run-a", limit=100).records) == 40


def test_a_dagster_home_opened_by_path_finds_its_runs_whatever_dagster_home_says(
        settings, monkeypatch, tmp_path):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = ensure_dagster_home(settings)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.store_event(materialization("run-a", "t1"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert len(instance.all_logs("run-a")) == 1


def test_a_moved_dagster_home_is_refused_with_one_line_naming_the_fix(settings, monkeypatch):
    import pytest

    from solar_ml_pipeline.orchestration.instance import InstanceMismatch

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = ensure_dagster_home(settings)
    moved = home.with_name("dagster_home_moved")
    home.rename(moved)
    with pytest.raises(InstanceMismatch, match="not in its own folder .*was DAGSTER_HOME moved"):
        ensure_dagster_home(settings.with_overrides(dagster_home=moved))
