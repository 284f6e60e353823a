"""Store scale: one device's 7-day window from an embedded store of 40 thousand readings vs 4 million.

Both stores hold the same target device (simulated 1-minute readings); the large one also
holds 99 more devices x 30 days (100 x 30 days = 4.3 million readings). The same window is
read from each, alternately, many times in this one process; the large store should be
within 2x of the small one because the primary key (device_id, timestamp) makes a window
one range scan whatever else the table holds.

Import rates in readings per second: `write_readings` (records already built), the importer
on a JSON-lines file (parsing included) and a re-import of the same file (all duplicates).

Bulk rows for the 99 other devices come from a cheap vectorised generator and go straight
into the store's table with one executemany per device (the table layout is the store's:
INTEGER microseconds, READING_FIELDS columns); a read-back check makes sure they are what
`read_window` returns, so a layout change fails loudly instead of measuring nonsense.

    python benchmarks/store_scale.py
    python benchmarks/store_scale.py --devices 20      # smaller large store, quicker
"""

from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import statistics
from datetime import timedelta
from pathlib import Path
from typing import Any

import bench_support as bs
import numpy as np

from solar_ml_pipeline.readings.importer import import_file
from solar_ml_pipeline.readings.simulator import readings_records, simulate_readings
from solar_ml_pipeline.storage import READING_FIELDS, open_store

TARGET = "tracker00"
SMALL_DAYS = 28  # ~40 thousand 1-minute readings
LARGE_DAYS = 30
WINDOW_DAYS = 7
MINUTE_US = 60_000_000


def synthetic_rows(device_id: str, start_us: int, count: int, seed: int) -> Any:
    """Plausible-looking 1-minute rows (device, epoch us, READING_FIELDS...) without physics."""
    rng = np.random.default_rng(seed)
    stamps = start_us + np.arange(count, dtype=np.int64) * MINUTE_US
    day_fraction = (stamps // MINUTE_US % 1440) / 1440.0
    sun = np.clip(np.sin(np.pi * (day_fraction - 0.25) / 0.5), 0.0, None)
    cloud = 0.6 + 0.4 * rng.random(count)
    power = np.round(300.0 * sun * cloud, 2)
    columns = {
        "servo_angle": np.round(90 + 60 * np.cos(np.pi * day_fraction), 2),
        "temperature": np.round(28 + 15 * sun * cloud, 2),
        "humidity": np.round(80 - 20 * sun, 1),
        "lux": np.round(120_000 * sun * cloud, 1),
        "voltage": np.round(32 * (sun > 0), 3),
        "current": np.round(power / 32, 4),
        "power": power,
        "fan_on": (sun * cloud > 0.8).astype(float),
    }
    ordered = [columns[name].tolist() for name in READING_FIELDS]
    return zip(itertools.repeat(device_id), stamps.tolist(), *ordered, strict=False)


def bulk_load(store: Any, devices: list[str], start_us: int, count: int) -> float:
    """Rows per second of raw executemany into the store's own table, one transaction per device."""
    store.ping()  # creates the schema
    names = ", ".join(("device_id", "timestamp", *READING_FIELDS))
    marks = ", ".join("?" * (2 + len(READING_FIELDS)))
    sql = f"INSERT OR IGNORE INTO {store.readings_table} ({names}) VALUES ({marks})"  # noqa: S608 - table name from the store
    connection = sqlite3.connect(store.path, timeout=60, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous = NORMAL")
        with bs.Stopwatch() as watch:
            for seed, device_id in enumerate(devices, start=1):
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany(sql, synthetic_rows(device_id, start_us, count, seed))
                connection.execute("COMMIT")
    finally:
        connection.close()
    return len(devices) * count / watch.seconds


def check_bulk_rows(store: Any, device_id: str, start_us: int, count: int, seed: int) -> None:
    expected = list(synthetic_rows(device_id, start_us, count, seed))
    start = bs.CUTOFF - timedelta(days=LARGE_DAYS)
    frame = store.read_window(device_id, start, bs.CUTOFF)
    power = READING_FIELDS.index("power")
    if len(frame) != count or not np.allclose(frame["power"].to_numpy(),
                                              [row[2 + power] for row in expected]):
        raise RuntimeError(
            f"bulk rows of {device_id} do not read back as written ({len(frame)} of {count}): "
            "the store's table layout changed; update bulk_load in benchmarks/store_scale.py")


def write_jsonl(records: list[dict[str, Any]], path: Path, device_id: str) -> None:
    with path.open("w") as handle:
        for record in records:
            row = {**record, "device_id": device_id, "timestamp": record["timestamp"].isoformat()}
            handle.write(json.dumps(row) + "\n")


def timed_reads(stores: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """Alternate the stores so that load on the machine hits both alike."""
    start = bs.CUTOFF - timedelta(days=WINDOW_DAYS)
    seconds: dict[str, list[float]] = {name: [] for name in stores}
    rows: dict[str, int] = {}
    for _ in range(repeats):
        for name, store in stores.items():
            with bs.Stopwatch() as watch:
                frame = store.read_window(TARGET, start, bs.CUTOFF)
            seconds[name].append(watch.seconds)
            rows[name] = len(frame)
    if len(set(rows.values())) != 1:
        raise RuntimeError(f"the stores returned different windows: {rows}")
    return seconds


def file_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100, help="devices in the large store")
    parser.add_argument("--repeats", type=int, default=15, help="reads of each store")
    args = parser.parse_args(argv)
    bs.quiet_warnings()

    print(bs.header("Store scale: embedded SQLite store, 7-day window of one device"))
    with bs.bench_home("store") as home:
        base = bs.settings_here()
        small = open_store(base.with_overrides(solar_ml_home=home / "small"))
        large = open_store(base.with_overrides(solar_ml_home=home / "large"))

        month = simulate_readings(TARGET, start=bs.CUTOFF - timedelta(days=LARGE_DAYS),
                                  end=bs.CUTOFF, interval_minutes=1, seed=7)
        records = readings_records(month)
        small_start = bs.CUTOFF - timedelta(days=SMALL_DAYS)
        small_records = [r for r in records if r["timestamp"] >= small_start]
        with bs.Stopwatch() as small_write:
            small.write_readings(small_records)

        start_us = int((bs.CUTOFF - timedelta(days=LARGE_DAYS)).timestamp()) * 1_000_000
        count = LARGE_DAYS * 1440
        others = [f"bulk{index:03d}" for index in range(1, args.devices)]
        with bs.Stopwatch() as bulk_watch:
            bulk_rate = bulk_load(large, others, start_us, count)
        check_bulk_rows(large, others[0], start_us, count, seed=1)
        with bs.Stopwatch() as large_write:
            large.write_readings(records)

        jsonl = home / "readings.jsonl"
        write_jsonl(records, jsonl, "jsonl01")
        with bs.Stopwatch() as import_watch:
            first = import_file(large, jsonl)
        with bs.Stopwatch() as reimport_watch:
            again = import_file(large, jsonl)
        if first.added != len(records) or again.added != 0:
            raise RuntimeError(f"import added {first.added} then {again.added} of {len(records)}")

        small_count, large_count = small.count_readings(), large.count_readings()
        large_devices = len(large.list_devices())
        seconds = timed_reads({"small": small, "large": large}, args.repeats)
        window_rows = len(large.read_window(TARGET, bs.CUTOFF - timedelta(days=WINDOW_DAYS), bs.CUTOFF))
        small_mib, large_mib = file_mib(small.path), file_mib(large.path)
        small.close()
        large.close()

    small_ms = 1000 * statistics.median(seconds["small"])
    large_ms = 1000 * statistics.median(seconds["large"])
    ratio = large_ms / small_ms
    print(f"\nTarget device {TARGET}: {window_rows} readings in its {WINDOW_DAYS}-day window; "
          f"{args.repeats} reads of each store, alternating.\n")
    print(bs.markdown_table(
        ["store", "readings held", "devices", "file MiB", "read median ms", "read min ms",
         "read max ms"],
        [["small", f"{small_count:,}", 1, f"{small_mib:.1f}", f"{small_ms:.1f}",
          f"{1000 * min(seconds['small']):.1f}", f"{1000 * max(seconds['small']):.1f}"],
         ["large", f"{large_count:,}", large_devices, f"{large_mib:.1f}", f"{large_ms:.1f}",
          f"{1000 * min(seconds['large']):.1f}", f"{1000 * max(seconds['large']):.1f}"]]))
    print(f"\n(The large store also holds the {len(records):,} readings imported as device jsonl01.)\n")
    print(bs.markdown_table(
        ["import path", "readings", "seconds", "readings/s"],
        [["write_readings into the small store (records built)", f"{len(small_records):,}",
          f"{small_write.seconds:.2f}", f"{len(small_records) / small_write.seconds:,.0f}"],
         ["write_readings into the large store (records built)", f"{len(records):,}",
          f"{large_write.seconds:.2f}", f"{len(records) / large_write.seconds:,.0f}"],
         ["importer, JSON lines file, new readings", f"{first.rows_read:,}",
          f"{import_watch.seconds:.2f}", f"{first.rows_read / import_watch.seconds:,.0f}"],
         ["importer, same file again (all already present)", f"{again.rows_read:,}",
          f"{reimport_watch.seconds:.2f}", f"{again.rows_read / reimport_watch.seconds:,.0f}"],
         ["raw executemany (bulk rows of the large store; reference)",
          f"{len(others) * count:,}", f"{bulk_watch.seconds:.2f}", f"{bulk_rate:,.0f}"]]))
    verdict = "met" if ratio <= 2.0 else "NOT met"
    print("\n" + bs.ratio_line(
        "store_scale",
        f"large/small 7-day read {ratio:.2f}x ({large_ms:.1f} vs {small_ms:.1f} ms; "
        f"target <= 2.0: {verdict})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
