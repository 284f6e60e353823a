"""Serving at fleet scale (issue 18): today's prediction path vs the one before, in one run.

A throwaway SQLite store holds N simulated devices (default 1,000) with 1-minute readings up
to now and one real `hist_gradient_boosting` model on the `solar` features (trained once on a
simulated device, its pickle saved as a version of every device and promoted). Measured:

- single-device predict in this process, alone: the old path (3 hours read, full rebuild, no
  forecast cache), the new one without its cache (the short lookback alone, i.e. a device
  whose newest reading changed) and with it warm;
- 8 concurrent HTTP clients (asyncio, httpx, one connection each) for `--seconds` against a
  real `solar-ml api --workers 1|2` (new) and against the old path served the same way
  (uvicorn on `create_app` with the 3-hour lookback and no forecast cache), each device of a
  hot set of `--hot` devices requested at random after a warm-up;
- the fleet forecast of every device in one call (`predict_fleet`), cold and warm cache, vs
  the old way: one old `predict_latest` per device.

"old" mirrors the code before issue 18 exactly: the prediction code is today's with
`prediction.lookback` returning the former 3-hour LOOKBACK and no ForecastCache (the
ModelServer's model cache existed before and stays on both sides).

    python benchmarks/serving_scale.py
    python benchmarks/serving_scale.py --devices 200 --seconds 5     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bench_support as bs

HERE = Path(__file__).resolve().parent
CLIENTS = 8


# -- the old path ------------------------------------------------------------------------------

def use_old_path() -> None:
    """Today's code with the pre-issue-18 behaviour: 3-hour read, no forecast cache."""
    from solar_ml_pipeline.forecasting import prediction
    from solar_ml_pipeline.interfaces import api

    class NoCache(prediction.ForecastCache):
        def get(self, device_id: str, key: tuple[Any, ...]) -> None:
            return None

        def put(self, *args: Any, **kwargs: Any) -> None:
            return None

    prediction.lookback = lambda feature_set, horizon_minutes: prediction.LOOKBACK
    api.ForecastCache = NoCache


def old_app() -> Any:
    """uvicorn factory of the old path (each worker process patches itself)."""
    from solar_ml_pipeline.config import load_settings
    from solar_ml_pipeline.interfaces.api import create_app

    use_old_path()
    return create_app(load_settings())


# -- set-up ------------------------------------------------------------------------------------

def seed_fleet(settings: Any, store: Any, registry: Any, devices: list[str],
               now: datetime) -> dict[str, Any]:
    from solar_ml_pipeline.forecasting.features import build_feature_frame
    from solar_ml_pipeline.forecasting.training import train_and_evaluate
    from solar_ml_pipeline.readings.simulator import readings_records, simulate_readings
    from solar_ml_pipeline.readings.sites import DEFAULT_SITE

    history = simulate_readings("seed", start=now - timedelta(days=4), end=now,
                                interval_minutes=1, seed=3)
    frame = build_feature_frame(history, horizon_minutes=15, timezone=settings.timezone,
                                feature_set="solar", site=DEFAULT_SITE)
    model, evaluation = train_and_evaluate(frame, model_type="hist_gradient_boosting",
                                           horizon_minutes=15, feature_set="solar", threads=1)
    meta = {"trained_at": now.isoformat().replace("+00:00", "Z"),
            "metrics": evaluation.as_metrics(), "model_type": "hist_gradient_boosting",
            "feature_set": "solar", "features": list(model.features), "horizon_minutes": 15,
            "intervals": evaluation.intervals, "rows_used": evaluation.rows_used, "days_used": 4}
    recent = history[history["timestamp"] >= now - timedelta(hours=3, minutes=30)]
    records = readings_records(recent)
    version = registry.new_version_id(now)
    for index, device_id in enumerate(devices):
        scale = 0.8 + 0.4 * (index % 11) / 10
        store.write_readings([{**r, "device_id": device_id,
                               "power": None if r["power"] is None else r["power"] * scale}
                              for r in records])
        registry.save_version(device_id, version, model, meta)
        registry.promote(device_id, version)
    return {"readings_per_device": len(records), "version": version}


# -- measurements ------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def timed_calls(call: Any, devices: list[str], repeats: int) -> list[float]:
    seconds = []
    for i in range(repeats):
        device_id = devices[i % len(devices)]
        start = time.perf_counter()
        call(device_id)
        seconds.append(time.perf_counter() - start)
    return seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(kind: str, workers: int, port: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    if kind == "new":
        command = [sys.executable, "-m", "solar_ml_pipeline.interfaces.cli", "api",
                   "--port", str(port), "--workers", str(workers)]
    else:
        command = [sys.executable, "-c",
                   "import uvicorn; uvicorn.run('serving_scale:old_app', factory=True, "
                   f"host='127.0.0.1', port={port}, workers={workers}, log_level='warning')"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def wait_ready(url: str, device_id: str, process: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/api/ml/predict", params={"device_id": device_id},
                         timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not answer within 90 s")


async def _load(url: str, devices: list[str], seconds: float, warmup: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    measuring = {"on": False}

    async def client(seed: int, stop_at: float) -> None:
        nonlocal errors
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                answer = await http.get("/api/ml/predict",
                                        params={"device_id": rng.choice(devices)})
                if measuring["on"]:
                    latencies.append(time.perf_counter() - start)
                    errors += answer.status_code != 200

    begin = time.perf_counter()
    stop_at = begin + warmup + seconds

    async def switch() -> None:
        await asyncio.sleep(warmup)
        measuring["on"] = True

    started = time.perf_counter()
    await asyncio.gather(switch(), *(client(i, stop_at) for i in range(CLIENTS)))
    measured = time.perf_counter() - started - warmup
    return {"requests": len(latencies), "rps": len(latencies) / measured, "errors": errors,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99)}


def http_load(kind: str, workers: int, devices: list[str], seconds: float,
              warmup: float) -> dict[str, Any]:
    port = free_port()
    process = start_server(kind, workers, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, devices[0], process)
        return asyncio.run(_load(url, devices, seconds, warmup))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, help="devices in the store")
    parser.add_argument("--hot", type=int, default=50, help="devices the HTTP clients ask for")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured load per server")
    parser.add_argument("--warmup", type=float, default=8.0, help="unmeasured load first")
    parser.add_argument("--repeats", type=int, default=200, help="single-device calls per side")
    args = parser.parse_args(argv)
    bs.quiet_warnings()

    print(bs.header("Serving at fleet scale: predict, old path vs new, one run"))
    from solar_ml_pipeline.forecasting import prediction
    from solar_ml_pipeline.interfaces import operations
    from solar_ml_pipeline.model_store.serving import ModelServer
    from solar_ml_pipeline.storage import open_store

    with bs.bench_home("serving", MODEL_TYPE="hist_gradient_boosting"):
        settings = bs.settings_here()
        store = open_store(settings)
        registry = operations.registry_for(settings)
        devices = [f"tracker{i:05d}" for i in range(args.devices)]
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        with bs.Stopwatch() as setup:
            seeded = seed_fleet(settings, store, registry, devices, now)
        print(f"\n{args.devices} devices, {seeded['readings_per_device']} readings each "
              f"(1 a minute up to {now:%H:%M} UTC), one hist_gradient_boosting model on the "
              f"solar features saved and promoted for each; set-up {setup.seconds:.0f} s.\n")

        server = ModelServer(registry)
        for device_id in devices:
            server.load_current(device_id)  # both sides with warm model caches
        new_lookback = prediction.lookback

        def old_lookback(feature_set: str, horizon_minutes: int) -> timedelta:
            return prediction.LOOKBACK

        def old_predict(device_id: str) -> dict[str, Any]:
            prediction.lookback = old_lookback
            try:
                return prediction.predict_latest(settings, store, server, device_id)
            finally:
                prediction.lookback = new_lookback

        cache = prediction.ForecastCache()
        hot = devices[:args.hot]
        for device_id in hot:  # same answers, old and new
            old = old_predict(device_id)
            new = prediction.predict_latest(settings, store, server, device_id, cache=cache)
            if old["predicted_power"] != new["predicted_power"] or old["p90"] != new["p90"]:
                raise RuntimeError(f"{device_id}: old and new forecasts differ: {old} {new}")

        single: dict[str, list[float]] = {"old": [], "new, cache miss": [], "new, cache warm": []}
        for _ in range(2):  # alternately
            single["old"] += timed_calls(old_predict, hot, args.repeats // 2)
            single["new, cache miss"] += timed_calls(
                lambda d: prediction.predict_latest(settings, store, server, d), hot,
                args.repeats // 2)
            single["new, cache warm"] += timed_calls(
                lambda d: prediction.predict_latest(settings, store, server, d, cache=cache),
                hot, args.repeats // 2)

        with bs.Stopwatch() as fleet_old:
            for device_id in devices:
                old_predict(device_id)
        fleet_cache = prediction.ForecastCache()
        with bs.Stopwatch() as fleet_cold:
            fleet = prediction.predict_fleet(settings, store, server, limit=len(devices),
                                             cache=fleet_cache)
        with bs.Stopwatch() as fleet_warm:
            prediction.predict_fleet(settings, store, server, limit=len(devices),
                                     cache=fleet_cache)
        if len(fleet["forecasts"]) != len(devices):
            raise RuntimeError(f"fleet forecast missed devices: {fleet['unavailable'][:3]}")
        store.close()

        load = {}
        for kind in ("old", "new"):
            for workers in (1, 2):
                load[(kind, workers)] = http_load(kind, workers, hot, args.seconds, args.warmup)

    rows = []
    for name, seconds in single.items():
        rows.append([f"single device in process, {name}", len(seconds),
                     f"{1000 * percentile(seconds, 0.5):.1f}",
                     f"{1000 * percentile(seconds, 0.99):.1f}", "-"])
    for (kind, workers), result in load.items():
        rows.append([f"HTTP, {CLIENTS} clients, {kind}, {workers} worker(s)",
                     f"{result['requests']} ({result['errors']} errors)",
                     f"{result['p50_ms']:.1f}", f"{result['p99_ms']:.1f}",
                     f"{result['rps']:.0f}"])
    print(bs.markdown_table(["what", "requests", "p50 ms", "p99 ms", "requests/s"], rows))
    print()
    print(bs.markdown_table(
        [f"fleet forecast, {len(devices)} devices", "seconds"],
        [["old: one predict_latest per device", f"{fleet_old.seconds:.2f}"],
         ["new: predict_fleet, cold forecast cache", f"{fleet_cold.seconds:.2f}"],
         ["new: predict_fleet, warm forecast cache", f"{fleet_warm.seconds:.2f}"]]))

    warm_p50 = 1000 * percentile(single["new, cache warm"], 0.5)
    best = load[("new", 2)]
    targets = [
        ["single-device p50 warm", "<= 5 ms", f"{warm_p50:.1f} ms", warm_p50 <= 5],
        ["8 clients, 2 workers", ">= 300 req/s", f"{best['rps']:.0f} req/s", best["rps"] >= 300],
        ["8 clients, 2 workers, p99", "<= 50 ms", f"{best['p99_ms']:.1f} ms",
         best["p99_ms"] <= 50],
        [f"fleet of {len(devices)} in one call (cold cache)", "<= 1 s",
         f"{fleet_cold.seconds:.2f} s", fleet_cold.seconds <= 1],
        [f"fleet of {len(devices)} in one call (warm cache)", "<= 1 s",
         f"{fleet_warm.seconds:.2f} s", fleet_warm.seconds <= 1],
    ]
    print()
    print(bs.markdown_table(["target (issue 18)", "wanted", "measured", "status"],
                            [[*t[:3], "met" if t[3] else "**not met**"] for t in targets]))
    old_single = 1000 * percentile(single["old"], 0.5)
    print("\n" + bs.ratio_line(
        "serving_scale",
        f"single p50 old {old_single:.1f} ms, new warm {warm_p50:.1f} ms "
        f"({old_single / warm_p50:.0f}x); 8 clients 2 workers "
        f"{load[('old', 2)]['rps']:.0f} -> {best['rps']:.0f} req/s, p99 "
        f"{load[('old', 2)]['p99_ms']:.0f} -> {best['p99_ms']:.0f} ms; fleet {len(devices)} "
        f"{fleet_old.seconds:.1f} s -> {fleet_cold.seconds:.1f} s cold, "
        f"{fleet_warm.seconds:.2f} s warm"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
