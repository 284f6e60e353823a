"""Foreground retrains: the launcher records failures that no asset body caught."""

from solar_ml_pipeline.orchestration.resources import ModelStoreResource
from solar_ml_pipeline.orchestration.retraining import resolve_request, retrain_in_foreground
from solar_ml_pipeline_tests.conftest import PERIOD, simulate_into


def test_a_failure_outside_every_asset_body_still_leaves_one_failed_record(settings, store,
                                                                          monkeypatch):
    simulate_into(store, "tracker01", days=3)

    def unreadable(self):
        raise OSError("model store unreadable: check MODEL_DIR permissions")

    monkeypatch.setattr(ModelStoreResource, "registry", unreadable)
    run_id = retrain_in_foreground(settings, resolve_request(settings, "tracker01", PERIOD))

    record = store.get_run(run_id)
    assert record["status"] == "failed"
    assert "model store unreadable: check MODEL_DIR permissions" in record["error"]
    assert record["device_id"] == "tracker01" and record["period"] == PERIOD
    assert store.list_runs(device_id="tracker01").total == 1


def test_a_failure_the_asset_recorded_keeps_the_assets_own_words(settings, store):
    run_id = retrain_in_foreground(settings, resolve_request(settings, "tracker01", PERIOD))
    record = store.get_run(run_id)
    assert record["status"] == "failed"
    assert record["error"].startswith("No data found for training: device tracker01")
    assert record["duration_s"] is not None  # the asset's own record, not the launcher's
    assert store.list_runs(device_id="tracker01").total == 1
