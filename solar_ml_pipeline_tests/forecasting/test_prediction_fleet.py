"""Serving at fleet scale: the short lookback gives the 3-hour forecast, the forecast cache
follows new readings and every pointer move on the next call, and one call forecasts a page of
the fleet, naming the devices it cannot forecast and why."""

from __future__ import annotations

from datetime import timedelta

import pytest

from solar_ml_pipeline.forecasting import prediction
from solar_ml_pipeline.forecasting.features import history_needed
from solar_ml_pipeline.forecasting.prediction import (
    LOOKBACK,
    ForecastCache,
    PredictionUnavailable,
    predict_fleet,
    predict_latest,
)
from solar_ml_pipeline.model_store.serving import ModelServer
from solar_ml_pipeline_tests.forecasting.test_backtest import (
    DAY,
    DEVICE,
    FIRST_CUTOFF,
    replay_retrains,
)
from solar_ml_pipeline_tests.interfaces.test_operations import (
    NOW,
    put_on_fallback,
    registry,  # noqa: F401 - fixture
    save_constant_version,
    write_recent_readings,
)


def _without_readings_used(forecast: dict) -> dict:
    return {k: v for k, v in forecast.items() if k != "readings_used"}


def test_history_needed_covers_the_longest_lag_and_window():
    assert history_needed("solar") == timedelta(minutes=82)  # 60-min lag +- 12 min, + MAX_GAP
    assert history_needed("original") == timedelta(minutes=60)
    assert prediction.lookback("solar", 15) < LOOKBACK
    with pytest.raises(ValueError, match="unknown feature set"):
        history_needed("nope")


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    return replay_retrains(tmp_path_factory.mktemp("fleet"), [FIRST_CUTOFF])


@pytest.mark.parametrize("hours_after", [16.0, 17.25, 19.5, 21.0, 23.9])
def test_the_short_lookback_forecasts_what_three_hours_forecast(replay, monkeypatch, hours_after):
    now = FIRST_CUTOFF + timedelta(hours=hours_after)
    server = ModelServer(replay.registry)
    short = predict_latest(replay.settings, replay.store, server, DEVICE, now=now)
    assert short["serving"] == "model"
    monkeypatch.setattr(prediction, "lookback", lambda feature_set, horizon: LOOKBACK)
    long = predict_latest(replay.settings, replay.store, server, DEVICE, now=now)
    assert _without_readings_used(short) == _without_readings_used(long)
    assert short["readings_used"] < long["readings_used"]


def test_the_short_lookback_fallback_forecasts_what_three_hours_forecast(replay, monkeypatch):
    now = FIRST_CUTOFF + DAY - timedelta(hours=5)
    pointer = replay.registry.read_pointer(DEVICE)
    meta = replay.registry.read_meta(DEVICE, pointer["version"])
    with replay.registry.device_lock(DEVICE):
        replay.registry.set_fallback(DEVICE, reason="test", intervals={
            "smart_persistence": meta["intervals"]["smart_persistence"]})
    try:
        server = ModelServer(replay.registry)
        short = predict_latest(replay.settings, replay.store, server, DEVICE, now=now)
        monkeypatch.setattr(prediction, "lookback", lambda feature_set, horizon: LOOKBACK)
        long = predict_latest(replay.settings, replay.store, server, DEVICE, now=now)
    finally:
        replay.registry.rollback(DEVICE)
    assert short["serving"] == "smart_persistence" and short["p90"] > short["p10"]
    assert _without_readings_used(short) == _without_readings_used(long)


def test_the_fleet_computes_a_sites_geometry_once_and_forecasts_what_each_device_would_alone(
        replay, monkeypatch):
    from solar_ml_pipeline.forecasting import solar

    twin = "twin01"  # the same tracker's readings and model under a second id, same site
    replay.store.write_readings(replay.readings.assign(device_id=twin).to_dict("records"))
    served = ModelServer(replay.registry).load_current(DEVICE)
    replay.registry.save_version(twin, served.version, served.model,
                                 replay.registry.read_meta(DEVICE, served.version))
    replay.registry.promote(twin, served.version)
    now = FIRST_CUTOFF + timedelta(hours=19.5)
    calls = []
    position = solar.solar_position
    monkeypatch.setattr(solar, "solar_position",
                        lambda t, site: calls.append(len(t)) or position(t, site))
    server = ModelServer(replay.registry)
    alone = [predict_latest(replay.settings, replay.store, server, d, now=now)
             for d in (DEVICE, twin)]
    calls_alone, calls[:] = list(calls), []
    fleet = predict_fleet(replay.settings, replay.store, server, now=now)
    assert [f["device_id"] for f in fleet["forecasts"]] == [DEVICE, twin]
    for together, single in zip(fleet["forecasts"], alone, strict=True):
        assert together["serving"] == "model"
        for name in ("predicted_power", "p10", "p90", "current_power"):
            assert together[name] == pytest.approx(single[name], rel=1e-9), name
        assert together["based_on"] == single["based_on"]
    assert len(calls_alone) == 4  # now and 15 minutes ahead, for each device
    assert len(calls) == 2  # the twin's instants were the first device's


@pytest.fixture
def counted(monkeypatch) -> list[str]:
    """Device ids of the forecasts actually computed (cache misses)."""
    calls: list[str] = []
    compute = prediction._forecast

    def counting(settings, store, served, now, *rest):
        calls.append(served.device_id)
        return compute(settings, store, served, now, *rest)

    monkeypatch.setattr(prediction, "_forecast", counting)
    return calls


def test_a_cache_hit_returns_the_same_forecast_without_recomputing(
        settings, store, registry, counted):  # noqa: F811 - fixture
    save_constant_version(registry, "t1", 111.0, 1)
    write_recent_readings(store, "t1", NOW - timedelta(minutes=2))
    server, cache = ModelServer(registry), ForecastCache()
    first = predict_latest(settings, store, server, "t1", now=NOW, cache=cache)
    later = NOW + timedelta(minutes=1)
    again = predict_latest(settings, store, server, "t1", now=later, cache=cache)
    assert counted == ["t1"] and (cache.hits, cache.misses) == (1, 1)
    assert {**first, "generated_at": None} == {**again, "generated_at": None}
    assert again["generated_at"] == "2026-03-12T06:01:00Z"
    assert first == predict_latest(settings, store, server, "t1", now=NOW)  # = uncached


def test_a_newer_reading_is_forecast_from_on_the_next_call(settings, store, registry, counted):  # noqa: F811
    save_constant_version(registry, "t1", 111.0, 1)
    write_recent_readings(store, "t1", NOW - timedelta(minutes=2))
    server, cache = ModelServer(registry), ForecastCache()
    assert predict_latest(settings, store, server, "t1", now=NOW,
                          cache=cache)["based_on"] == "2026-03-12T05:58:00Z"
    write_recent_readings(store, "t1", NOW - timedelta(minutes=1), minutes=1)
    forecast = predict_latest(settings, store, server, "t1", now=NOW, cache=cache)
    assert forecast["based_on"] == "2026-03-12T05:59:00Z" and counted == ["t1", "t1"]


def test_a_stale_cached_forecast_is_not_served(settings, store, registry):  # noqa: F811
    save_constant_version(registry, "t1", 111.0, 1)
    write_recent_readings(store, "t1", NOW - timedelta(minutes=2))
    server, cache = ModelServer(registry), ForecastCache()
    predict_latest(settings, store, server, "t1", now=NOW, cache=cache)
    with pytest.raises(PredictionUnavailable, match="more than the 15-minute horizon"):
        predict_latest(settings, store, server, "t1", now=NOW + timedelta(minutes=20),
                       cache=cache)


def test_promotion_rollback_and_fallback_are_served_by_the_next_request_in_every_worker(
        settings, store, registry):  # noqa: F811
    first = save_constant_version(registry, "t1", 111.0, 1)
    write_recent_readings(store, "t1", NOW - timedelta(minutes=2))
    # Two workers: each its own model server and forecast cache, one model store.
    workers = [(ModelServer(registry), ForecastCache()) for _ in range(2)]

    def served() -> list[tuple]:
        answers = [predict_latest(settings, store, server, "t1", now=NOW, cache=cache)
                   for server, cache in workers]
        return [(a["serving"], a["version"], a["predicted_power"]) for a in answers]

    assert served() == [("model", first, 111.0)] * 2
    assert served() == [("model", first, 111.0)] * 2  # cached
    second = save_constant_version(registry, "t1", 222.0, 2)  # promoted
    assert served() == [("model", second, 222.0)] * 2
    registry.rollback("t1")
    assert served() == [("model", first, 111.0)] * 2
    put_on_fallback(registry, "t1")
    assert {s[:2] for s in served()} == {("smart_persistence", None)}


def test_the_fleet_forecast_lists_every_device_with_readings_and_why_some_have_none(
        settings, store, registry):  # noqa: F811
    save_constant_version(registry, "a-model", 111.0, 1)
    write_recent_readings(store, "a-model", NOW - timedelta(minutes=2))
    put_on_fallback(registry, "b-fallback")
    write_recent_readings(store, "b-fallback", NOW - timedelta(minutes=3))
    save_constant_version(registry, "c-stale", 333.0, 1)
    write_recent_readings(store, "c-stale", NOW - timedelta(minutes=40))
    write_recent_readings(store, "d-no-model", NOW - timedelta(minutes=1))
    save_constant_version(registry, "e-no-readings", 5.0, 1)  # no readings: not in the fleet
    server, cache = ModelServer(registry), ForecastCache()

    fleet = predict_fleet(settings, store, server, now=NOW, cache=cache)
    assert (fleet["total"], fleet["limit"], fleet["skip"]) == (4, 1000, 0)
    assert [(f["device_id"], f["serving"]) for f in fleet["forecasts"]] == [
        ("a-model", "model"), ("b-fallback", "smart_persistence")]
    assert fleet["forecasts"][0] == predict_latest(settings, store, server, "a-model", now=NOW)
    assert [(u["device_id"], u["kind"]) for u in fleet["unavailable"]] == [
        ("c-stale", "no_recent_readings"), ("d-no-model", "no_model")]
    assert "more than the 15-minute horizon" in fleet["unavailable"][0]["reason"]
    assert "has no current model" in fleet["unavailable"][1]["reason"]

    page = predict_fleet(settings, store, server, now=NOW, limit=2, skip=1, cache=cache)
    assert (page["total"], page["limit"], page["skip"]) == (4, 2, 1)
    assert [f["device_id"] for f in page["forecasts"]] == ["b-fallback"]
    assert [u["device_id"] for u in page["unavailable"]] == ["c-stale"]
    assert predict_fleet(settings, store, server, now=NOW, skip=4)["forecasts"] == []
    for bad in ({"limit": 0}, {"limit": 10_001}, {"skip": -1}):
        with pytest.raises(ValueError, match="is invalid"):
            predict_fleet(settings, store, server, now=NOW, **bad)


def test_the_cache_follows_new_readings_on_a_store_without_the_newest_reading_probe(
        settings, store, registry, counted, monkeypatch):  # noqa: F811
    save_constant_version(registry, "t1", 111.0, 1)
    write_recent_readings(store, "t1", NOW - timedelta(minutes=2))
    start, end = NOW - timedelta(minutes=15), NOW + prediction.CLOCK_SKEW
    probed = prediction._newest_reading(store, "t1", start, end)
    monkeypatch.setattr(type(store), "newest_reading_us", None)  # as the Mongo store
    windowed = prediction._newest_reading(store, "t1", start, end)
    assert probed == int(windowed.value // 1000)
    server, cache = ModelServer(registry), ForecastCache()
    predict_latest(settings, store, server, "t1", now=NOW, cache=cache)
    predict_latest(settings, store, server, "t1", now=NOW, cache=cache)
    write_recent_readings(store, "t1", NOW - timedelta(minutes=1), minutes=1)
    assert predict_latest(settings, store, server, "t1", now=NOW,
                          cache=cache)["based_on"] == "2026-03-12T05:59:00Z"
    assert counted == ["t1", "t1"]
