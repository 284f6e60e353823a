"""What every benchmark shares: a throw-away project home, the machine, memory peaks, tables.

Benchmarks are scripts, not tests: run from the repository root as
`python benchmarks/<name>.py` (the script's folder is then on sys.path, so `import
bench_support` works without making benchmarks/ a package).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

# One fixed period keeps every run reproducible: its cutoff is 2026-03-10 18:30 Asia/Colombo.
PERIOD = "2026-03-10"
CUTOFF = datetime(2026, 3, 10, 13, 0, tzinfo=UTC)

# Variables that would point a benchmark at someone's real data or change what it measures.
_ISOLATED_VARIABLES = (
    "MONGODB_URI", "MONGODB_DB", "COLLECTION_READINGS", "COLLECTION_MODEL_RUNS",
    "COLLECTION_DEVICES", "SOLAR_ML_HOME", "MODEL_DIR", "DAGSTER_HOME", "RETRAIN_ENABLED",
    "RETRAIN_DAYS", "RETRAIN_INTERVAL_HOURS", "RETRAIN_TIME", "TIMEZONE", "PERIODS_START",
    "MAE_THRESHOLD_PERCENT", "HORIZON_MINUTES", "MODEL_TYPE", "FEATURE_SET",
    "MIN_TRAINING_ROWS", "KEEP_VERSIONS", "MAX_CONCURRENT_RUNS", "FLEET_BATCH_SIZE",
)


@contextlib.contextmanager
def bench_home(name: str, **env: str) -> Iterator[Path]:
    """A fresh SOLAR_ML_HOME (and DAGSTER_HOME inside it) in a temp folder, exported to this
    process and its children; the schedule is off so nothing launches on its own.

    The working directory moves there too, so no `.env` of the caller is read. Everything is
    deleted afterwards unless BENCH_KEEP=1.
    """
    saved_env = dict(os.environ)
    saved_cwd = Path.cwd()
    home = Path(tempfile.mkdtemp(prefix=f"solar_bench_{name}_"))
    for variable in _ISOLATED_VARIABLES:
        os.environ.pop(variable, None)
    os.environ.update({
        "SOLAR_ML_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "RETRAIN_ENABLED": "false",
        "PERIODS_START": "2026-01-01",
        **env,
    })
    os.chdir(home)
    try:
        yield home
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        if os.environ.get("BENCH_KEEP") == "1":
            print(f"(kept {home})")
        else:
            shutil.rmtree(home, ignore_errors=True)


def quiet_warnings() -> None:
    """Library deprecation and parallelism warnings would bury the tables; none is a result."""
    warnings.simplefilter("ignore")


def settings_here(**overrides: Any) -> Any:
    """Settings from this process's environment (as bench_home left it), with overrides."""
    from solar_ml_pipeline.config import settings_from_env

    return settings_from_env(dict(os.environ)).with_overrides(**overrides)


def seed_readings(store: Any, device_id: str, days: float, *, seed: int = 0,
                  cutoff: datetime = CUTOFF, interval_minutes: float = 1) -> int:
    """`days` of simulated readings (every `interval_minutes`, 1 unless told) ending at
    `cutoff`, written through the store."""
    from solar_ml_pipeline.readings.simulator import readings_records, simulate_readings

    frame = simulate_readings(device_id, start=cutoff - timedelta(days=days), end=cutoff,
                              interval_minutes=interval_minutes, seed=seed)
    return store.write_readings(readings_records(frame))


# -- memory ---------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: peak memory needs Linux")


def _release_free_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class PeakRss:
    """Peak resident memory of this process while the block ran, as growth over its start.

    Linux resets the high-water mark (VmHWM) when 5 is written to /proc/self/clear_refs; freed
    heap is handed back (malloc_trim) first, so each measured block starts from the same
    floor whichever side ran before it. Counts C allocations (tree nodes, BLAS buffers) that
    tracemalloc cannot see, and costs nothing while the block runs.
    """

    start_kib: int = 0
    peak_kib: int = 0

    def __enter__(self) -> PeakRss:
        _release_free_memory()
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        self.start_kib = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_kib = _status_kib("VmHWM")

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.start_kib) / 1024

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


# -- the machine ----------------------------------------------------------------------------


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def total_ram_gib() -> float:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def package_versions() -> dict[str, str]:
    names = ("dagster", "pandas", "numpy", "scikit-learn", "joblib", "pvlib", "solar-ml-pipeline")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_lines() -> list[str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{name} {version}" for name, version in package_versions().items())
    return [
        f"- CPU: {cores} cores usable (nproc), {cpu_model()}; RAM {total_ram_gib():.1f} GiB",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()} ({sys.executable})",
        f"- Packages: {versions}",
    ]


# -- output ---------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned, everything as given (pre-formatted)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    numeric = [all(_looks_numeric(row[i]) for row in cells) and bool(cells)
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w)
                  for v, w, num in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, numeric, strict=True)) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in cells)])


def _looks_numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace("x", "").replace("%", "").strip()
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def ratio_line(name: str, text: str) -> str:
    """The one line run_all.py collects from each benchmark's output."""
    return f"RATIO {name}: {text}"


def header(title: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"## {title}\n\nRun {stamp}; load average at start {load_average()} (1, 5, 15 min)."


class Stopwatch:
    """perf_counter seconds of a block: `with Stopwatch() as watch: ...; watch.seconds`."""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
