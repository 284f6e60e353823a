import sqlite3
from datetime import UTC, datetime

import dagster as dg

from solar_ml_pipeline.orchestration.definitions import build_definitions
from solar_ml_pipeline.orchestration.partitions import DEVICE_DIMENSION
from solar_ml_pipeline.orchestration.resources import StoreResource
from solar_ml_pipeline.orchestration.sensors import DEVICE_SENSOR


def _reading(device_id):
    return {"device_id": device_id, "timestamp": datetime(2026, 3, 1, 6, tzinfo=UTC), "power": 10.0}


def _write_behind_the_stores_back(settings, device_id):
    """Another system writing into the readings collection is not bound by our validation."""
    with sqlite3.connect(settings.sqlite_path) as conn:
        conn.execute("INSERT INTO readings_raw (device_id, timestamp, power) VALUES (?, ?, ?)",
                     (device_id, 1_772_344_800_000_000, 10.0))


def test_sensor_adds_new_valid_devices_and_requests_their_current_period(settings, store):
    store.write_readings([_reading("tracker01"), _reading("tracker02")])
    _write_behind_the_stores_back(settings, "bad|id")
    assert "bad|id" in store.list_devices()
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def(DEVICE_SENSOR)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, ["tracker01"])
        context = dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def(),
                                          resources={"store": StoreResource.from_settings(settings)})
        result = sensor(context)
        added = [key for req in result.dynamic_partitions_requests for key in req.partition_keys]
        assert added == ["tracker02"]
        assert [str(r.partition_key).split("|")[0] for r in result.run_requests] == ["tracker02"]


def test_sensor_skips_when_every_device_is_known(settings, store):
    store.write_readings([_reading("tracker01")])
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def(DEVICE_SENSOR)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, ["tracker01"])
        context = dg.build_sensor_context(instance=instance,
                                          resources={"store": StoreResource.from_settings(settings)})
        result = sensor(context)
        assert isinstance(result, dg.SkipReason)
        assert "no new devices" in result.skip_message
