"""Model size: bytes per stored version for each MODEL_TYPE, per storage format, and load time.

For each MODEL_TYPE at 7 and 30 days of 1-minute readings, one model is fitted the project's
way (features.build_feature_frame + training.train_and_evaluate: the ForecastModel a
version holds). It is then stored with each candidate format and loaded back through the
serving loader, `ModelServer(registry).load_current(device)` (pointer read, sha256 check,
decode), a fresh server each time so nothing is cached.

The store serialises in one place (model_store/serialization.py: serialize_model /
deserialize_model, called by model_store/versions.py). This benchmark swaps those two functions
where versions.py uses them, *in its own process*, for each candidate format, so the figures
are the real save and load paths with only the encoding changed; no store module is edited. "save s" is `save_version` (encode, sha256, two fsync'd atomic writes).

    python benchmarks/model_size.py
    python benchmarks/model_size.py --days 7 --models random_forest ridge
"""

from __future__ import annotations

import argparse
import gzip
import io
import lzma
import os
import pickle
import statistics
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bench_support as bs
import joblib
from threadpoolctl import threadpool_limits

from solar_ml_pipeline.config import MODEL_TYPES
from solar_ml_pipeline.forecasting.features import build_feature_frame
from solar_ml_pipeline.forecasting.training import train_and_evaluate
from solar_ml_pipeline.model_store import serialization
from solar_ml_pipeline.model_store import versions as versions_module
from solar_ml_pipeline.model_store.registry import ModelRegistry
from solar_ml_pipeline.model_store.serving import ModelServer
from solar_ml_pipeline.readings.simulator import simulate_readings

HORIZON = 15
FLEET_DEVICES = 1000
# lzma at its default preset compresses ~1-3 MB/s here: a 50 MB forest takes over a minute.
SLOW_FORMAT_LIMIT_BYTES = 5 * 2**20
CURRENT = "pickle (current)"
# Always shown in the fleet table: standard-library compression, whatever the picks are.
REFERENCE = "pickle + zlib 6"


def _joblib_dumps(compress: Any) -> Callable[[object], bytes]:
    def dumps(model: object) -> bytes:
        buffer = io.BytesIO()
        joblib.dump(model, buffer, compress=compress)
        return buffer.getvalue()
    return dumps


def _joblib_loads(data: bytes) -> object:
    return joblib.load(io.BytesIO(data))


def _pickled(compress: Callable[[bytes], bytes]) -> Callable[[object], bytes]:
    return lambda model: compress(pickle.dumps(model, protocol=serialization.PICKLE_PROTOCOL))


def _unpickled(decompress: Callable[[bytes], bytes]) -> Callable[[bytes], object]:
    return lambda data: pickle.loads(decompress(data))  # bytes verified by sha256 first


@dataclass(frozen=True)
class Format:
    name: str
    dumps: Callable[[object], bytes]
    loads: Callable[[bytes], object]
    slow: bool = False  # skipped for models above SLOW_FORMAT_LIMIT_BYTES


FORMATS = (
    Format(CURRENT, serialization.serialize_model, serialization.deserialize_model),
    Format("joblib", _joblib_dumps(0), _joblib_loads),
    Format("joblib zlib 1", _joblib_dumps(("zlib", 1)), _joblib_loads),
    Format("joblib zlib 3", _joblib_dumps(("zlib", 3)), _joblib_loads),
    Format("pickle + zlib 1", _pickled(lambda b: zlib.compress(b, 1)), _unpickled(zlib.decompress)),
    Format("pickle + zlib 6", _pickled(lambda b: zlib.compress(b, 6)), _unpickled(zlib.decompress)),
    Format("pickle + gzip 6", _pickled(lambda b: gzip.compress(b, 6, mtime=0)),
           _unpickled(gzip.decompress)),
    Format("pickle + lzma 1", _pickled(lambda b: lzma.compress(b, preset=1)),
           _unpickled(lzma.decompress)),
    Format("pickle + lzma 6", _pickled(lambda b: lzma.compress(b, preset=6)),
           _unpickled(lzma.decompress), slow=True),
)


def fit_model(model_type: str, days: int) -> Any:
    frame = simulate_readings("sizer", start=bs.CUTOFF - timedelta(days=days), end=bs.CUTOFF,
                              interval_minutes=1, seed=3)
    features = build_feature_frame(frame, horizon_minutes=HORIZON, timezone="Asia/Colombo")
    # One OpenMP thread: fit speed is not measured here, and two threads on a busy machine
    # can make gradient boosting 10-40x slower (see RESULTS.md).
    with threadpool_limits(1, user_api="openmp"):
        model, _ = train_and_evaluate(features, model_type=model_type, horizon_minutes=HORIZON,
                                      feature_set="original")
    return model


@dataclass
class Stored:
    size: int
    save_s: float
    load_s: float
    cold_load_s: float


def evict_from_page_cache(path: Path) -> None:
    """Drop this one file's (clean, fsync'd) pages from the OS cache, so the next read comes
    from the disk; touches no other file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def store_and_load(registry: ModelRegistry, device_id: str, model: Any, fmt: Format,
                   load_repeats: int) -> Stored:
    """Save one version in `fmt`, point at it, load it through the serving loader."""
    versions_module.serialize_model = fmt.dumps
    versions_module.deserialize_model = fmt.loads
    try:
        version = registry.new_version_id(datetime.now(UTC))
        with bs.Stopwatch() as save:
            stored = registry.save_version(device_id, version, model, {"format": fmt.name})
        registry.promote(device_id, version)
        loads, cold = [], []
        for _ in range(load_repeats):
            evict_from_page_cache(stored.model_path)
            with bs.Stopwatch() as load:
                served = ModelServer(registry).load_current(device_id)
            cold.append(load.seconds)
            with bs.Stopwatch() as load:
                served = ModelServer(registry).load_current(device_id)
            loads.append(load.seconds)
        if served.model.features != model.features:
            raise RuntimeError(f"{fmt.name} did not round-trip the model")
    finally:
        versions_module.serialize_model = FORMATS[0].dumps
        versions_module.deserialize_model = FORMATS[0].loads
    return Stored(int(stored.meta["size_bytes"]), save.seconds, statistics.median(loads),
                  statistics.median(cold))


def kb(size: int) -> str:
    return f"{size / 1e3:,.0f}" if size >= 10_000 else f"{size / 1e3:.1f}"


def choose_format(results: dict[tuple[str, int], dict[str, Stored]], factor: float) -> str:
    """The smallest total size among formats whose loads from disk stay within `factor` x the
    current pickle's (+ 20 ms for timer noise) for every model over 1 MB.

    From disk, because a fleet's versions (hundreds of GB) do not stay in the page cache, and
    the server caches a model after its first load anyway. Formats skipped for some model are
    not eligible.
    """
    eligible = []
    for fmt in FORMATS:
        rows = [by_format.get(fmt.name) for by_format in results.values()]
        if any(row is None for row in rows):
            continue
        slower = any(
            row.cold_load_s > factor * by_format[CURRENT].cold_load_s + 0.020
            for row, by_format in zip(rows, results.values(), strict=True)
            if by_format[CURRENT].size > 1e6
        )
        if not slower:
            eligible.append((sum(row.size for row in rows), fmt.name))
    return min(eligible)[1] if eligible else CURRENT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[7, 30])
    parser.add_argument("--models", nargs="+", default=list(MODEL_TYPES), choices=MODEL_TYPES)
    parser.add_argument("--load-repeats", type=int, default=3)
    parser.add_argument("--keep-versions", type=int, default=30,
                        help="KEEP_VERSIONS for the fleet storage estimate (project default 30)")
    args = parser.parse_args(argv)
    bs.quiet_warnings()

    print(bs.header("Model size: bytes per stored version and load time through the serving loader"))
    results: dict[tuple[str, int], dict[str, Stored]] = {}
    with bs.bench_home("models") as home:
        registry = ModelRegistry(Path(home) / "ml_models")
        for model_type in args.models:
            for days in args.days:
                model = fit_model(model_type, days)
                device_id = f"{model_type.replace('_', '-')}-{days}d"
                pickled = len(serialization.serialize_model(model))
                results[(model_type, days)] = {
                    fmt.name: store_and_load(registry, device_id, model, fmt, args.load_repeats)
                    for fmt in FORMATS
                    if not (fmt.slow and pickled > SLOW_FORMAT_LIMIT_BYTES)
                }

    print(f"\nSize in kB (10^3 bytes) of one version file. Loads: median of {args.load_repeats} "
          "through a fresh ModelServer.load_current; 'from disk' after dropping that file from "
          "the page cache (posix_fadvise DONTNEED), 'cached' right after. Save: "
          "registry.save_version.\n")
    rows = []
    for (model_type, days), by_format in results.items():
        base = by_format[CURRENT]
        for fmt in FORMATS:
            row = by_format.get(fmt.name)
            if row is None:
                rows.append([model_type, days, fmt.name, "-", "-", "-", "-", "-"])
                continue
            rows.append([model_type, days, fmt.name, kb(row.size),
                         f"{base.size / row.size:.1f}x", f"{row.save_s:.3f}",
                         f"{row.cold_load_s:.3f}", f"{row.load_s:.3f}"])
    print(bs.markdown_table(["model", "days", "format", "kB", "smaller by", "save s",
                             "load s from disk", "load s cached"], rows))
    print("\n`-`: not measured, lzma 6 compresses a forest at 1-3 MB/s (over a minute per version).")

    chosen = choose_format(results, 1.10)
    compact = choose_format(results, 2.0)
    print(f"\nSmallest format whose loads from disk are no slower than the current pickle's "
          f"(within 10 % + 20 ms for every model over 1 MB): **{chosen}**. Smallest whose loads "
          f"from disk stay within 2x pickle's: **{compact}**.\n")
    fleet_rows = []
    for (model_type, days), by_format in results.items():
        for name in dict.fromkeys((CURRENT, chosen, compact, REFERENCE)):
            if name not in by_format:
                continue
            size = by_format[name].size
            steady = FLEET_DEVICES * args.keep_versions * size
            year = FLEET_DEVICES * 365 * size
            fleet_rows.append([model_type, days, name, kb(size), f"{steady / 1e9:,.1f}",
                               f"{year / 1e9:,.1f}"])
    print(f"Fleet storage, {FLEET_DEVICES} devices, one retrain a day:\n")
    print(bs.markdown_table(
        ["model", "days", "format", "kB per version",
         f"GB kept (KEEP_VERSIONS={args.keep_versions}, pruned)", "GB per year unpruned"],
        fleet_rows))
    # The largest model is where the format matters (the shipped boosting is 0.4 MB).
    largest_key = ("random_forest", min(args.days))
    default = results.get(largest_key) or next(iter(results.values()))
    label = (f"{largest_key[0]} {largest_key[1]} days" if largest_key in results
             else "the first model measured")
    factor = default[CURRENT].size / default[compact].size
    print("\n" + bs.ratio_line(
        "model_size",
        f"no-slower-load pick: {chosen}; {compact} vs pickle for {label}: "
        f"{factor:.1f}x smaller ({kb(default[compact].size)} vs {kb(default[CURRENT].size)} kB "
        f"per version), load from disk {default[compact].cold_load_s:.3f} vs "
        f"{default[CURRENT].cold_load_s:.3f} s"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
