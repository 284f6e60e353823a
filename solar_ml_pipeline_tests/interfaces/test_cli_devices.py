"""`solar-ml device set/list` through the real `main()`, on the SQLite store and on MongoStore
over mongomock; and the site set this way reaching the simulator and training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from solar_ml_pipeline import storage
from solar_ml_pipeline.interfaces import cli
from solar_ml_pipeline.storage.mongo import MongoStore
from solar_ml_pipeline_tests.conftest import PERIOD, PERIOD_START
from solar_ml_pipeline_tests.storage.mongomock_client import mongomock_client


@pytest.fixture(params=["sqlite", "mongomock"])
def backend(request, test_env, monkeypatch):
    """The CLI's environment, with its store on the backend of the parameter."""
    for name, value in test_env.items():
        monkeypatch.setenv(name, value)
    if request.param == "mongomock":
        client = mongomock_client()  # one in-memory server: every open_store sees the same data
        monkeypatch.setattr(storage, "open_store",
                            lambda settings: MongoStore(client, "solar_db", location="mongomock"))
    return request.param


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's own checks and --help
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *argv: str) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def write_reading(device_id: str) -> None:
    from solar_ml_pipeline.config import load_settings

    store = storage.open_store(load_settings())
    try:
        store.write_readings([{"device_id": device_id, "timestamp": PERIOD_START, "power": 1.0}])
    finally:
        store.close()


def test_device_set_creates_a_site_and_list_shows_it_with_its_defaults(backend, capsys):
    entry = run_json(capsys, "device", "set", "--device", "t1", "--lat", "52.5", "--lon",
                     "13.4", "--capacity", "450")
    assert (entry["created"], entry["latitude"], entry["longitude"], entry["capacity_w"]) == (
        True, 52.5, 13.4, 450.0)
    assert entry["defaults"] == ["altitude", "timezone"]
    assert entry["timezone"] == "Asia/Colombo"  # TIMEZONE, as the default site
    listing = run_json(capsys, "device", "list")
    assert [d["device_id"] for d in listing["devices"]] == ["t1"]
    assert listing["devices"][0]["capacity_w"] == 450.0


def test_device_set_on_an_existing_device_updates_only_the_given_fields(backend, capsys):
    run_json(capsys, "device", "set", "--device", "t1", "--lat", "52.5", "--lon", "13.4",
             "--altitude", "34", "--capacity", "450")
    entry = run_json(capsys, "device", "set", "--device", "t1", "--capacity", "600",
                     "--timezone", "Europe/Berlin")
    assert (entry["created"], entry["updated"]) == (False, ["capacity_w", "timezone"])
    assert (entry["latitude"], entry["longitude"], entry["altitude"]) == (52.5, 13.4, 34.0)
    assert (entry["capacity_w"], entry["timezone"], entry["defaults"]) == (600.0, "Europe/Berlin", [])
    assert run_json(capsys, "device", "list")["devices"] == [
        {key: entry[key] for key in ("device_id", "latitude", "longitude", "altitude",
                                     "capacity_w", "timezone", "defaults")}]


def test_device_list_names_the_devices_with_readings_on_the_default_site(backend, capsys):
    run_json(capsys, "device", "set", "--device", "t1", "--lat", "52.5", "--lon", "13.4")
    for device_id in ("t1", "t2", "t3"):
        write_reading(device_id)
    listing = run_json(capsys, "device", "list")
    assert listing["default_site_devices"] == ["t2", "t3"]
    assert (listing["default_site"]["latitude"], listing["default_site"]["longitude"]) == (
        6.9271, 79.8612)
    code, out, _ = run(capsys, "device", "list")
    assert code == 0
    assert out.splitlines()[0].startswith("t1           lat 52.5000, lon 13.4000")
    assert "devices with readings on it: t2, t3" in out


def test_device_list_shows_a_site_stored_around_device_set_that_cannot_be_used(backend, capsys):
    from solar_ml_pipeline.config import load_settings

    store = storage.open_store(load_settings())
    try:
        store.set_site("t9", {"latitude": 95.0, "longitude": 13.4})  # e.g. edited in MongoDB
    finally:
        store.close()
    entry = run_json(capsys, "device", "list")["devices"][0]
    assert entry["device_id"] == "t9" and "latitude=95.0 is invalid" in entry["problem"]
    code, out, _ = run(capsys, "device", "list")
    assert code == 0 and out.startswith("t9           unusable site: site latitude=95.0")
    run_json(capsys, "device", "set", "--device", "t9", "--lat", "52.5")  # the fix
    assert "problem" not in run_json(capsys, "device", "list")["devices"][0]


def test_device_list_of_an_empty_store_says_how_to_register_one(backend, capsys):
    code, out, _ = run(capsys, "device", "list")
    assert code == 0 and "no device has a site: register one with `solar-ml device set" in out


@pytest.mark.parametrize("argv, expected", [
    (["--device", "t1", "--lat", "90.5", "--lon", "0"], "invalid latitude 90.5: expected degrees from -90 to 90"),
    (["--device", "t1", "--lat", "0", "--lon", "-181"], "invalid longitude -181"),
    (["--device", "t1", "--lat", "0", "--lon", "0", "--capacity", "0"], "invalid capacity_w 0"),
    (["--device", "t1", "--lat", "0", "--lon", "0", "--capacity", "-5"], "invalid capacity_w -5"),
    (["--device", "t1", "--lat", "nan", "--lon", "0"], "invalid latitude nan: expected a finite"),
    (["--device", "t1", "--lat", "0", "--lon", "0", "--timezone", "Mars/Olympus"],
     "unknown timezone 'Mars/Olympus'"),
    (["--device", "t1", "--lat", "0", "--lon", "0", "--timezone", "../../etc/passwd"],
     "unknown timezone"),
    (["--device", "../etc", "--lat", "0", "--lon", "0"], "invalid device id"),
    (["--device", "t1", "--lat", "10"], "device t1 has no site yet: give both latitude and longitude"),
    (["--device", "t1"], "nothing to set"),
    (["--device", "t1", "--lat", "north", "--lon", "0"], "invalid float value: 'north'"),
])
def test_device_set_refuses_bad_input_with_one_line_exit_2_and_writes_nothing(
        backend, capsys, argv, expected):
    code, out, err = run(capsys, "device", "set", *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("solar-ml: error: ") and expected in lines[0]
    assert run_json(capsys, "device", "list")["devices"] == []


def test_device_set_help_says_an_existing_device_keeps_the_fields_not_given(capsys):
    code, out, _ = run(capsys, "device", "set", "--help")
    assert code == 0 and "--json" in out
    assert "only the fields given are updated" in " ".join(out.split())
    code, out, _ = run(capsys, "device", "list", "--help")
    assert code == 0 and "--json" in out


def test_a_site_set_on_the_command_line_drives_the_simulator_and_training(test_env, monkeypatch,
                                                                           capsys):
    """Berlin instead of Colombo: other sunrise, other clear-sky power, in readings and model."""
    from solar_ml_pipeline.config import load_settings
    from solar_ml_pipeline.forecasting.features import build_feature_frame
    from solar_ml_pipeline.interfaces import operations
    from solar_ml_pipeline.readings.sites import DEFAULT_SITE, Site

    for name, value in test_env.items():
        monkeypatch.setenv(name, value)
    run_json(capsys, "device", "set", "--device", "far", "--lat", "52.5", "--lon", "13.4",
             "--timezone", "Europe/Berlin")
    end = PERIOD_START.isoformat().replace("+00:00", "Z")
    for device_id in ("far", "home"):
        run_json(capsys, "simulate", "--device", device_id, "--days", "8",
                 "--interval-minutes", "5", "--end", end)
    settings = load_settings()
    store = storage.open_store(settings)
    try:
        window = (PERIOD_START - pd.Timedelta(days=2), PERIOD_START)
        far, home = (store.read_window(d, *window) for d in ("far", "home"))
    finally:
        store.close()
    # 05:00 UTC: past sunrise in Colombo (10:30 local), before it in Berlin in March
    at_five = [frame[frame["timestamp"].dt.hour == 5]["power"].mean() for frame in (far, home)]
    assert at_five[0] < 1.0 < at_five[1]

    record = run_json(capsys, "retrain", "--device", "far", "--period", PERIOD)
    assert record["status"] == "success", record.get("error")
    model = operations.registry_for(settings).load_model("far", record["version"])
    assert (model.site["latitude"], model.site["longitude"]) == (52.5, 13.4)
    frames = [build_feature_frame(far, horizon_minutes=15, timezone=settings.timezone,
                                  feature_set="solar", with_target=False, site=site).frame
              for site in (Site(**model.site), DEFAULT_SITE)]
    assert not np.allclose(frames[0]["clear_sky_power"], frames[1]["clear_sky_power"])
