"""Device discovery: ids that appear in the readings store become `device` partitions."""


import dagster as dg

from solar_ml_pipeline.config import Settings, is_valid_device_id
from solar_ml_pipeline.orchestration.batches import batch_run_requests
from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
from solar_ml_pipeline.orchestration.partitions import (
    DEVICE_DIMENSION,
    device_partitions,
    period_key_at,
)
from solar_ml_pipeline.orchestration.resources import StoreResource
from solar_ml_pipeline.storage.run_records import utc_now

DEVICE_SENSOR = "device_discovery_sensor"


def build_device_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name=DEVICE_SENSOR,
        job_name=RETRAIN_JOB,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Adds device ids found in the readings store to the device partitions and "
            "requests the current period for the new ones, in batches of FLEET_BATCH_SIZE. Invalid ids are skipped and logged."
        ),
        tags={"domain": "solar-forecasting"},
    )
    def device_discovery_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult | dg.SkipReason:
        known = set(context.instance.get_dynamic_partitions(DEVICE_DIMENSION))
        found = store.open().list_devices()
        invalid = [d for d in found if not is_valid_device_id(d)]
        if invalid:
            context.log.warning(f"skipped {len(invalid)} invalid device id(s) in the readings store: "
                                f"{', '.join(repr(d)[:70] for d in invalid[:5])}")
        new = sorted(d for d in found if is_valid_device_id(d) and d not in known)
        if not new:
            return dg.SkipReason(f"no new devices ({len(known)} known)")
        period = period_key_at(settings, utc_now())
        # The new ids go after every known one, so their batches are ranges of new devices.
        return dg.SensorResult(
            dynamic_partitions_requests=[device_partitions.build_add_request(new)],
            run_requests=batch_run_requests(settings, new, period, "discovery"),
        )

    return device_discovery_sensor
