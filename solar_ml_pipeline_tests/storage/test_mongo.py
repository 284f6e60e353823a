"""MongoDB specifics beyond the shared contract: failure messages, indexes, legacy documents."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta

import mongomock
import pytest
from pymongo.errors import AutoReconnect, OperationFailure, ServerSelectionTimeoutError

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.storage import StoreUnavailable, open_store
from solar_ml_pipeline.storage.mongo import MongoStore, mongo_location, short_reason
from solar_ml_pipeline_tests.storage.mongomock_client import mongomock_client, mongomock_store

T0 = datetime(2026, 2, 24, 6, 0, tzinfo=UTC)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_server_fails_within_seconds_with_one_line_and_no_password():
    port = closed_port()
    settings = Settings(
        mongodb_uri=f"mongodb://solar:s3cr%40t-pw@127.0.0.1:{port}/solar_db?authSource=admin",
        mongodb_timeout_ms=500,
    )
    started = time.monotonic()
    store = open_store(settings)
    assert isinstance(store, MongoStore)
    with pytest.raises(StoreUnavailable) as caught:
        store.ping()
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert message.startswith(f"MongoDB at 127.0.0.1:{port} is unreachable: ")
    assert message.endswith("; check MONGODB_URI or unset it to use the embedded store")
    assert "\n" not in message and len(message) < 400
    for secret in ("s3cr", "s3cr%40t-pw", "s3cr@t-pw", "solar:"):
        assert secret not in message
    store.close()


def test_every_operation_on_an_unreachable_server_raises_store_unavailable():
    settings = Settings(mongodb_uri=f"mongodb://127.0.0.1:{closed_port()}/", mongodb_timeout_ms=200)
    store = MongoStore.from_settings(settings)
    with pytest.raises(StoreUnavailable):
        store.write_readings([{"device_id": "tracker01", "timestamp": T0, "power": 1.0}])
    with pytest.raises(StoreUnavailable):
        store.list_runs()
    store.close()


@pytest.mark.parametrize(
    ("uri", "location"),
    [
        ("mongodb://localhost:27017", "localhost:27017"),
        ("mongodb://user:pw@db1:27017,db2:27018/solar_db?replicaSet=rs0", "db1:27017,db2:27018"),
        ("mongodb+srv://user:p%2Fw@cluster0.example.net/?retryWrites=true", "cluster0.example.net"),
        ("mongodb://user:pa/ss@wo@rd@host/db", "host"),
        ("mongodb://", "localhost"),
    ],
)
def test_mongo_location_names_the_hosts_without_credentials(uri, location):
    assert mongo_location(uri) == location


def test_short_reason_keeps_the_first_clause_and_hides_secrets():
    error = ServerSelectionTimeoutError(
        "db1:27017: [Errno 111] Connection refused (configured timeouts: socketTimeoutMS: "
        "20000.0ms, connectTimeoutMS: 500.0ms), Timeout: 0.5s, Topology Description: <...>"
    )
    assert short_reason(error) == "db1:27017: [Errno 111] Connection refused"
    assert short_reason(OperationFailure("bad auth for hunter2"), ["hunter2"]) == "bad auth for ***"


def test_authentication_failure_on_connect_is_store_unavailable(monkeypatch):
    store = mongomock_store()

    def refuse(*args, **kwargs):
        raise OperationFailure("Authentication failed.", code=18)

    monkeypatch.setattr(store._db, "command", refuse)
    with pytest.raises(StoreUnavailable, match="is unreachable: Authentication failed"):
        store.ping()


def test_a_connection_lost_during_a_read_is_store_unavailable(monkeypatch):
    store = mongomock_store()
    store.ping()

    def drop(*args, **kwargs):
        raise AutoReconnect("db1:27017: connection closed")

    monkeypatch.setattr(store._readings, "find", drop)
    with pytest.raises(StoreUnavailable, match="connection closed"):
        store.read_window("tracker01", T0, T0 + timedelta(hours=1))


def test_indexes_are_created_idempotently_and_unique_on_a_fresh_database():
    client = mongomock_client()
    MongoStore(client, "solar_db").ping()
    MongoStore(client, "solar_db").ping()  # a second process finds them in place
    db = client["solar_db"]

    def unique_keys(collection):
        return {
            tuple(name for name, _ in spec["key"])
            for spec in db[collection].index_information().values()
            if spec.get("unique")
        }

    assert ("device_id", "timestamp") in unique_keys("readings_raw")
    assert ("run_id",) in unique_keys("model_runs")
    assert ("device_id",) in unique_keys("devices")


def test_collection_names_come_from_the_settings():
    client = mongomock_client()
    settings = Settings(mongodb_db="db_b", collection_readings="readings_b",
                        collection_model_runs="runs_b", collection_devices="devices_b")
    store = MongoStore(client, settings.mongodb_db, readings_collection=settings.collection_readings,
                       runs_collection=settings.collection_model_runs,
                       devices_collection=settings.collection_devices)
    store.write_readings([{"device_id": "tracker01", "timestamp": T0, "power": 1.0}])
    store.upsert_run({"run_id": "r1"})
    assert client["db_b"]["readings_b"].count_documents({}) == 1
    assert client["db_b"]["runs_b"].count_documents({}) == 1


def test_a_legacy_collection_with_duplicate_readings_still_works_and_reads_each_key_once():
    client = mongomock_client()
    legacy = client["solar_db"]["readings_raw"]
    legacy.insert_many(
        [
            {"device_id": "tracker01", "timestamp": T0, "power": 1.0},
            {"device_id": "tracker01", "timestamp": T0, "power": 2.0},
            {"device_id": "tracker01", "timestamp": T0 + timedelta(minutes=1), "power": 3.0},
        ]
    )
    store = MongoStore(client, "solar_db")
    store.ping()
    index = [spec for spec in legacy.index_information().values()
             if [name for name, _ in spec["key"]] == ["device_id", "timestamp"]]
    assert len(index) == 1 and not index[0].get("unique")
    assert store.write_readings([{"device_id": "tracker01", "timestamp": T0, "power": 9.0}]) == 0
    frame = store.read_window("tracker01", T0, T0 + timedelta(hours=1))
    assert frame["power"].tolist() == [1.0, 3.0]
    assert store.latest_readings("tracker01", 5)["power"].tolist() == [1.0, 3.0]


def test_an_existing_index_on_the_reading_key_is_kept():
    client = mongomock_client()
    client["solar_db"]["readings_raw"].create_index(
        [("device_id", 1), ("timestamp", 1)], name="legacy_key"
    )
    MongoStore(client, "solar_db").ping()
    names = list(client["solar_db"]["readings_raw"].index_information())
    assert sorted(names) == ["_id_", "legacy_key"]


def test_documents_written_by_the_original_system_read_back_in_the_contract_shape():
    # no tz_aware client: stored datetimes come back naive and must still read as UTC
    client = mongomock.MongoClient()
    db = client["solar_db"]
    db["readings_raw"].insert_one(
        {"device_id": "tracker01", "timestamp": datetime(2026, 2, 24, 6, 0), "power": 5,
         "lux": "n/a", "fan_on": True, "extra": "ignored"}
    )
    db["model_runs"].insert_one(
        {"run_id": "old", "device_id": "tracker01", "trained_at": datetime(2026, 2, 24, 18, 30),
         "status": "success", "promoted": True}
    )
    store = MongoStore(client, "solar_db")
    frame = store.read_window("tracker01", T0, T0 + timedelta(minutes=1))
    assert frame["timestamp"].tolist() == [T0]
    assert frame["power"][0] == 5.0 and frame["fan_on"][0] == 1.0
    assert frame["lux"].isna().all()
    assert "extra" not in frame.columns
    old = store.get_run("old")
    assert old["trained_at"] == datetime(2026, 2, 24, 18, 30, tzinfo=UTC)
    assert old["trained_at"].tzinfo is UTC
    assert "_id" not in old


def test_readings_are_stored_in_the_original_document_shape():
    client = mongomock_client()
    store = MongoStore(client, "solar_db")
    store.write_readings(
        [{"device_id": "tracker01", "timestamp": T0, "power": 4.0, "fan_on": 1, "lux": None}]
    )
    document = client["solar_db"]["readings_raw"].find_one({}, {"_id": 0})
    assert document == {"device_id": "tracker01", "timestamp": T0, "power": 4.0, "fan_on": True}
