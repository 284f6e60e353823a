"""Fleet throughput: batch runs through the real daemon vs an in-process loop vs a cron loop.

For each fleet size (`--sizes 24,200`) one fresh SOLAR_ML_HOME holds the readings of N
devices (RETRAIN_DAYS=3 of 5-minute readings, hist_gradient_boosting, unless told: small
windows so that one invocation measures everything in about a quarter of an hour), and
three paths retrain all N for the same period, each into its own MODEL_DIR (so none finds
a champion another stored):

- loop: `forecasting.attempt.retrain_device` for each device in turn in this process, warm
  (one throw-away retrain first). The fit uses `training.threads_per_run(MAX_CONCURRENT_RUNS)`
  OpenMP threads, as every run does (1 on 2 cores); the libraries' default (all cores) is
  slower on this machine and is shown beside it, at the first size, for reference.
- daemon: `dagster dev` (webserver, daemon, code server) on a fresh DAGSTER_HOME written by
  `ensure_dagster_home` (the project's dagster.yaml: run queue, MAX_CONCURRENT_RUNS), the
  devices already known as partitions. The runs are the schedule's own: the requests of
  `batches.batch_run_requests` (one ranged run per batch of FLEET_BATCH_SIZE devices, at
  least MAX_CONCURRENT_RUNS batches), each submitted as a GraphQL `launchRun` with its tags;
  wall time is from the first submission to the last run's RUN_SUCCESS event, and every
  run and every device's run-log record must be a success. Why launchRun and not the
  discovery sensor: the sensor requests the *current* period (wall clock), ticks at most
  every 60 s and adds the partitions in the same tick, so its latency (up to a minute, more
  than the whole 24-device fleet takes) and the period would change with the time of day;
  the runs it would make are these same `batch_run_requests`, queued the same way.
- cron: the cron user's loop of `solar-ml retrain --device D --period P` processes, one after
  another, on the first `--cron-devices` (24) devices; for a larger fleet its time is
  extrapolated linearly per device, and the table says so.

Also, once per invocation:

- Dagster overhead per device inside a batch: one batch of FLEET_BATCH_SIZE devices as a
  ranged run, (a) in process (`execute_in_process` with the range tags) and (b) through the
  daemon (submission to RUN_SUCCESS: queue, new worker process, code load included), minus
  the sum of `retrain_device` times for the same devices, divided by the devices. Twice,
  alternating, on two sets of devices (a fresh MODEL_DIR for every measurement).
- The schedule tick over 10,000 devices: `evaluate_tick` of the real `retrain_schedule` vs
  the old way (one `RunRequest(partition_key=...)` per device, a schedule built here) on the
  same instance and repository, alternating.
- FLEET_BATCH_SIZE: a model of the daemon's makespan (runs list-scheduled on
  MAX_CONCURRENT_RUNS slots; per run: submission, queue gap, start-up, devices x time per
  device) calibrated on the largest fleet's runs, for batch sizes 1-50, at the benchmark's
  window and at a production-like one (30 days of 1-minute readings, per-device time
  measured here); `--direct-batch-sizes` (5,50) measures some of them for real as a check.

    python benchmarks/fleet_throughput.py                              # 24 and 200 devices
    python benchmarks/fleet_throughput.py --sizes 6 --cron-devices 3 --tick-devices 1000 \\
        --direct-batch-sizes ""                                        # a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_support as bs

from solar_ml_pipeline.config import MODEL_TYPES

STARTUP_TIMEOUT_S = 240
RUNS_TIMEOUT_S = 1800
BATCH_SIZES = (1, 5, 10, 25, 50)
PROD_DAYS, PROD_INTERVAL = 30, 1  # the production-like window of the batch-size model
TARGET_LOOP, TARGET_CRON, TARGET_TICK_S, TARGET_OVERHEAD_S = 0.9, 2.0, 5.0, 0.15


def load() -> str:
    """os.getloadavg() now, for every figure."""
    return "load " + bs.load_average()


def device_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index:03d}" for index in range(count)]


def seed(store: Any, devices: Sequence[str], days: float, interval: float, first_seed: int = 0) -> None:
    for offset, device_id in enumerate(devices):
        bs.seed_readings(store, device_id, days, seed=first_seed + offset, interval_minutes=interval)


def add_partitions(devices: Sequence[str]) -> None:
    import dagster as dg

    from solar_ml_pipeline.orchestration.partitions import DEVICE_DIMENSION

    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(DEVICE_DIMENSION, list(devices))


# -- in this process ------------------------------------------------------------------------


def loop_retrains(settings: Any, store: Any, devices: Sequence[str], model_dir: Path, *,
                  threads: int | None, tag: str, days: int | None = None) -> list[float]:
    """`retrain_device` for each device in turn; seconds of each (every record a success)."""
    from solar_ml_pipeline.forecasting.attempt import retrain_device
    from solar_ml_pipeline.model_store.registry import ModelRegistry

    registry = ModelRegistry(model_dir)
    each = []
    for device_id in devices:
        with bs.Stopwatch() as watch:
            record = retrain_device(settings, store, registry, device_id, bs.PERIOD, bs.CUTOFF,
                                    run_id=f"{tag}-{device_id}", days=days, threads=threads)
        assert record["status"] == "success", f"loop retrain of {device_id}: {record.get('error')}"
        each.append(watch.seconds)
    return each


def ranged_in_process(settings: Any, store: Any, devices: Sequence[str], model_dir: Path) -> float:
    """Wall seconds of one ranged run of the retrain job over `devices`, in this process, with
    the tags the schedule gives a batch (console log swallowed, not skipped)."""
    import dagster as dg

    from solar_ml_pipeline.orchestration.batches import batch_run_requests
    from solar_ml_pipeline.orchestration.retraining import _retrain_job
    from solar_ml_pipeline.storage.run_records import attempt_id

    here = settings.with_overrides(model_dir=model_dir)
    job = _retrain_job(here)  # built before the clock starts, as a warm process has it
    (request,) = batch_run_requests(here.with_overrides(fleet_batch_size=len(devices),
                                                        max_concurrent_runs=1),
                                    devices, bs.PERIOD, "bench-in-process")
    with dg.DagsterInstance.get() as instance, contextlib.redirect_stderr(io.StringIO()):
        with bs.Stopwatch() as watch:
            result = job.execute_in_process(instance=instance, tags=request.tags,
                                            raise_on_error=False)
    assert result.success, f"in-process ranged run {result.run_id} failed"
    for device_id in devices:
        record = store.get_run(attempt_id(result.run_id, device_id, bs.PERIOD, batch=len(devices) > 1))
        assert record and record["status"] == "success", f"{device_id} in run {result.run_id}"
    return watch.seconds


# -- the cron user's loop -------------------------------------------------------------------


def cron_loop(devices: Sequence[str], model_dir: Path) -> list[float]:
    """`solar-ml retrain --device D --period P`, one process after another; seconds of each."""
    command = str(Path(sys.executable).with_name("solar-ml"))
    env = {**os.environ, "MODEL_DIR": str(model_dir)}
    each = []
    for device_id in devices:
        with bs.Stopwatch() as watch:
            done = subprocess.run([command, "retrain", "--device", device_id, "--period", bs.PERIOD],
                                  capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, f"solar-ml retrain {device_id}: {done.stderr.strip()[-300:]}"
        each.append(watch.seconds)
    return each


# -- CPU seconds ----------------------------------------------------------------------------


def session_cpu_s(session_id: int) -> float:
    """CPU seconds (user + system) of every process in the session, with the children each
    has reaped: dagster dev's webserver, daemon, code server and the run workers it spawns."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is the state, field 3
        if int(fields[3]) == session_id:  # session id, field 6
            ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- dagster dev ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


JOB_LOCATIONS_QUERY = """
{ repositoriesOrError { __typename
    ... on RepositoryConnection { nodes { name location { name } jobs { name } } } } }
"""


def graphql(port: int, query: str) -> dict[str, Any]:
    body = json.dumps({"query": query}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,  # noqa: S310 - local URL built here
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - local URL built here
        return json.loads(response.read())["data"]


def job_location(port: int, job_name: str) -> tuple[str, str] | None:
    """(code location, repository) holding the job, once the code location has loaded."""
    result = graphql(port, JOB_LOCATIONS_QUERY)["repositoriesOrError"]
    for node in result.get("nodes", []):
        if any(job["name"] == job_name for job in node["jobs"]):
            return node["location"]["name"], node["name"]
    return None


class DagsterDev:
    """`dagster dev` on this process's DAGSTER_HOME in its own session (ended by its process
    group); the environment (MODEL_DIR, FLEET_BATCH_SIZE, ...) is this process's at start."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        dagster = Path(sys.executable).with_name("dagster")
        command = [str(dagster), "dev", "-m", "solar_ml_pipeline.definitions",
                   "-h", "127.0.0.1", "-p", str(self.port)]
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=dict(os.environ), start_new_session=True)
        self.ready_s, self.where = self._wait_until_ready()

    def _wait_until_ready(self) -> tuple[float, tuple[str, str]]:
        from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        started = time.perf_counter()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited early; see {self.log_path}")
            try:
                where = job_location(self.port, RETRAIN_JOB)
            except (OSError, ValueError, KeyError, TypeError):
                where = None
            if where is not None:
                return time.perf_counter() - started, where
            time.sleep(0.5)
        raise RuntimeError(f"dagster dev did not load the code location in {STARTUP_TIMEOUT_S} s; "
                           f"see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        self.log.close()


def request_tags(request: Any) -> dict[str, str]:
    """The tags a RunRequest gives its run: a range's tags, or a single partition's."""
    tags = dict(request.tags)
    if request.partition_key is not None:
        key = request.partition_key
        tags["dagster/partition"] = str(key)
        for dimension, value in key.keys_by_dimension.items():
            tags[f"dagster/partition/{dimension}"] = value
    return tags


@dataclass
class RunTimeline:
    """One run's events: the queue, the worker start-up, the step, and each device's end."""

    run_id: str
    devices: int
    enqueued: float
    starting: float  # the queue handed the run to the launcher
    started: float  # RUN_START: the worker process has loaded the code
    step_start: float
    device_ends: list[float]  # each device's promotion_decision materialisation
    finished: float  # RUN_SUCCESS

    @property
    def startup_s(self) -> float:
        return self.started - self.starting

    @property
    def fixed_s(self) -> float:
        """Per-run time that is no device's: worker start-up, run set-up, and run end."""
        return (self.step_start - self.starting) + (self.finished - self.device_ends[-1])

    @property
    def device_s(self) -> list[float]:
        ends = [self.step_start, *self.device_ends]
        return [later - earlier for earlier, later in zip(ends, ends[1:], strict=False)]


def run_timeline(instance: Any, run_id: str) -> RunTimeline:
    from dagster import DagsterEventType as T

    stamps: dict[Any, float] = {}
    ends = []
    for entry in instance.all_logs(run_id):
        if not entry.is_dagster_event:
            continue
        kind = entry.dagster_event_type
        stamps.setdefault(kind, entry.timestamp)
        if kind == T.ASSET_MATERIALIZATION:
            materialization = entry.asset_materialization
            if materialization is not None and materialization.asset_key.to_user_string() == "promotion_decision":
                ends.append(entry.timestamp)
    return RunTimeline(run_id, len(ends), stamps[T.RUN_ENQUEUED], stamps[T.RUN_STARTING],
                       stamps[T.RUN_START], stamps[T.STEP_START], ends, stamps[T.RUN_SUCCESS])


@dataclass
class DaemonResult:
    seconds: float  # first submission -> last RUN_SUCCESS
    submit_s: float  # all the launchRun calls
    first_submit: float
    runs: list[RunTimeline] = field(default_factory=list)
    launch_s: list[float] = field(default_factory=list)  # each launchRun call, in run order
    cpu_s: float = float("nan")  # the dagster dev session's CPU from submission to the end


def daemon_fleet(dev: DagsterDev, settings: Any, store: Any, devices: Sequence[str]) -> DaemonResult:
    """The schedule's requests for `devices` (FLEET_BATCH_SIZE and MAX_CONCURRENT_RUNS of
    `settings`) as launchRuns, waited for and checked."""
    import dagster as dg
    from dagster_graphql import DagsterGraphQLClient

    from solar_ml_pipeline.orchestration.batches import batch_run_requests
    from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
    from solar_ml_pipeline.storage.run_records import attempt_id

    requests = batch_run_requests(settings, devices, bs.PERIOD, "bench-daemon")
    client = DagsterGraphQLClient("127.0.0.1", port_number=dev.port, timeout=60)
    cpu_before = session_cpu_s(dev.process.pid)
    first_submit = time.time()
    run_ids, launch_s = [], []
    for request in requests:
        with bs.Stopwatch() as launching:
            run_ids.append(client.submit_job_execution(
                RETRAIN_JOB, repository_location_name=dev.where[0], repository_name=dev.where[1],
                run_config={}, tags=request_tags(request)))
        launch_s.append(launching.seconds)
    submit_s = time.time() - first_submit
    with dg.DagsterInstance.get() as instance:
        deadline = time.monotonic() + RUNS_TIMEOUT_S
        while True:
            records = instance.get_run_records(dg.RunsFilter(run_ids=run_ids))
            if len(records) == len(run_ids) and all(r.dagster_run.is_finished for r in records):
                cpu_s = session_cpu_s(dev.process.pid) - cpu_before
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"runs not finished after {RUNS_TIMEOUT_S} s")
            time.sleep(0.5)
        failed = [r.dagster_run.run_id for r in records
                  if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
        assert not failed, f"{len(failed)} daemon run(s) failed, e.g. {failed[0]}; see {dev.log_path}"
        timelines = [run_timeline(instance, run_id) for run_id in run_ids]
    for run_id, request in zip(run_ids, requests, strict=True):
        batch = int(request.tags["solar/devices"])
        covered = ([request.partition_key.keys_by_dimension["device"]] if batch == 1
                   else _range_devices(devices, request))
        for device_id in covered:
            record = store.get_run(attempt_id(run_id, device_id, bs.PERIOD, batch=batch > 1))
            assert record and record["status"] == "success", f"{device_id} in daemon run {run_id}"
    last = max(t.finished for t in timelines)
    return DaemonResult(last - first_submit, submit_s, first_submit, timelines, launch_s, cpu_s)


def _range_devices(devices: Sequence[str], request: Any) -> list[str]:
    from solar_ml_pipeline.orchestration.batches import RANGE_END_TAG, RANGE_START_TAG

    first = request.tags[RANGE_START_TAG].split("|")[0]
    last = request.tags[RANGE_END_TAG].split("|")[0]
    return list(devices[devices.index(first):devices.index(last) + 1])


# -- the schedule tick ----------------------------------------------------------------------


def old_style_schedule(settings: Any) -> Any:
    """The retrain schedule as it was: one RunRequest per device (for the tick baseline)."""
    import dagster as dg

    from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB
    from solar_ml_pipeline.orchestration.partitions import (
        DEVICE_DIMENSION,
        partition_key,
        period_cron,
        period_key_at,
    )

    @dg.schedule(name="retrain_schedule_one_run_per_device", cron_schedule=period_cron(settings),
                 execution_timezone=settings.timezone, job_name=RETRAIN_JOB)
    def one_run_per_device(context):  # noqa: ANN001, ANN202 - dagster reads the hints; none here
        period = period_key_at(settings, context.scheduled_execution_time)
        for device_id in context.instance.get_dynamic_partitions(DEVICE_DIMENSION):
            yield dg.RunRequest(run_key=f"retrain:{device_id}:{period}",
                                partition_key=partition_key(device_id, period),
                                tags={"solar/device": device_id, "solar/period": period,
                                      "solar/trigger": "schedule"})

    return one_run_per_device


def measure_tick(settings: Any, count: int, repeats: int) -> dict[str, Any]:
    import dagster as dg

    from solar_ml_pipeline.orchestration.definitions import build_definitions
    from solar_ml_pipeline.orchestration.schedules import RETRAIN_SCHEDULE

    devices = [f"t{index:05d}" for index in range(count)]
    with bs.Stopwatch() as adding:
        add_partitions(devices)
    old = old_style_schedule(settings)
    defs = dg.Definitions.merge(build_definitions(settings), dg.Definitions(schedules=[old]))
    repository = defs.get_repository_def()
    when = bs.CUTOFF  # 18:30 Asia/Colombo: the tick that starts period bs.PERIOD
    times: dict[str, list[float]] = {"new": [], "old": []}
    loads: dict[str, list[str]] = {"new": [], "old": []}
    counts: dict[str, int] = {}
    requests: dict[str, list[Any]] = {}
    with dg.DagsterInstance.get() as instance:
        for _ in range(repeats):
            for name, schedule_name in (("new", RETRAIN_SCHEDULE), ("old", old.name)):
                schedule = defs.resolve_schedule_def(schedule_name)
                context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                                    repository_def=repository)
                loads[name].append(load())
                with bs.Stopwatch() as watch:
                    result = schedule.evaluate_tick(context)
                times[name].append(watch.seconds)
                counts[name] = len(result.run_requests or [])
                requests[name] = list(result.run_requests or [])
    return {"devices": count, "add_s": adding.seconds, "times": times, "loads": loads,
            "counts": counts, "requests": requests}


def measure_run_creation(home: Path, requests: dict[str, list[Any]], sample: int) -> dict[str, Any]:
    """What the daemon must do after a tick: create (and queue) one run per request. The first
    `sample` requests of each tick are submitted as launchRuns (the same run creation: the
    run record and an ASSET_MATERIALIZATION_PLANNED event per asset and partition) to a
    dagster dev whose queue is closed (max_concurrent_runs: 0), so nothing executes."""
    import dagster as dg
    from dagster_graphql import DagsterGraphQLClient

    from solar_ml_pipeline.orchestration.jobs import RETRAIN_JOB

    config = Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"
    config.write_text(re.sub(r"max_concurrent_runs: \d+", "max_concurrent_runs: 0", config.read_text()))
    dev = DagsterDev(home / "dagster_dev_tick.log")
    out: dict[str, Any] = {}
    try:
        client = DagsterGraphQLClient("127.0.0.1", port_number=dev.port, timeout=120)
        for name in ("new", "old"):
            each, run_ids = [], []
            out[f"{name}_load"] = load()
            for request in requests[name][:sample]:
                with bs.Stopwatch() as watch:
                    run_ids.append(client.submit_job_execution(
                        RETRAIN_JOB, repository_location_name=dev.where[0],
                        repository_name=dev.where[1], run_config={}, tags=request_tags(request)))
                each.append(watch.seconds)
            out[name] = each
            with dg.DagsterInstance.get() as instance:
                statuses = {r.status for r in instance.get_runs(dg.RunsFilter(run_ids=run_ids))}
            assert statuses == {dg.DagsterRunStatus.QUEUED}, f"runs left the closed queue: {statuses}"
    finally:
        dev.stop()
    return out


# -- the batch-size model -------------------------------------------------------------------


def linear_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y on x."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return mean_y - slope * mean_x, slope


@dataclass(frozen=True)
class FleetModel:
    """Daemon makespan for a fleet, a model: the runs are launched one after another (a
    launch of n devices takes launch0 + launch1 x n), each is picked up by the queue
    `pickup_s` after its launch, and they are list-scheduled on `slots`; a slot freed by an
    earlier run refills after `gap_s`; a run of n devices takes run0 + run1 x n from STARTING
    to RUN_SUCCESS (worker start-up, set-up, devices, end)."""

    slots: int
    launch0: float
    launch1: float
    pickup_s: float
    gap_s: float
    run0: float
    run1: float

    def makespan(self, devices: int, batch_size: int) -> tuple[int, float]:
        from solar_ml_pipeline.orchestration.batches import device_batches

        batches = device_batches([str(i) for i in range(devices)], batch_size, self.slots)
        free = [0.0] * self.slots
        launched = 0.0
        for index, batch in enumerate(batches):
            launched += self.launch0 + self.launch1 * len(batch)
            slot = min(range(self.slots), key=free.__getitem__)
            start = max(launched + self.pickup_s,
                        free[slot] + (self.gap_s if index >= self.slots else 0.0))
            free[slot] = start + self.run0 + self.run1 * len(batch)
        return len(batches), max(free)

    def with_device_time(self, run1: float) -> FleetModel:
        return FleetModel(self.slots, self.launch0, self.launch1, self.pickup_s, self.gap_s,
                          self.run0, run1)


def dequeue_gaps(runs: Sequence[RunTimeline], slots: int) -> list[float]:
    """For each run that waited for a slot: seconds from the slot freeing to its STARTING."""
    ordered = sorted(runs, key=lambda r: r.starting)
    gaps = []
    for index in range(slots, len(ordered)):
        freed = sorted(r.finished for r in ordered[:index])[index - slots]
        if ordered[index].enqueued < freed:
            gaps.append(max(ordered[index].starting - freed, 0.0))
    return gaps


def fit_model(results: Sequence[DaemonResult], slots: int) -> FleetModel:
    """Fitted on every run of the given fleets (so under the fleets' own concurrency)."""
    runs = [run for result in results for run in result.runs]
    launch0, launch1 = linear_fit([(run.devices, seconds) for result in results
                                   for run, seconds in zip(result.runs, result.launch_s, strict=True)])
    run0, run1 = linear_fit([(run.devices, run.finished - run.starting) for run in runs])
    pickups = [run.starting - run.enqueued for result in results
               for run in sorted(result.runs, key=lambda r: r.enqueued)[:slots]]
    gaps = [gap for result in results for gap in dequeue_gaps(result.runs, slots)]
    return FleetModel(slots, launch0, launch1, median(pickups), median(gaps) if gaps else 0.0,
                      run0, run1)


# -- output helpers -------------------------------------------------------------------------


def rate(devices: int, seconds: float) -> float:
    return devices / seconds * 60


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="24,200",
                        help="fleet sizes, comma-separated (default 24,200)")
    parser.add_argument("--devices", type=int, default=None, help="one fleet size (overrides --sizes)")
    parser.add_argument("--days", type=int, default=3, help="RETRAIN_DAYS of every retrain (3)")
    parser.add_argument("--interval-minutes", type=float, default=5,
                        help="minutes between simulated readings (5)")
    parser.add_argument("--model", default="hist_gradient_boosting", choices=MODEL_TYPES)
    parser.add_argument("--max-concurrent-runs", type=int, default=2,
                        help="MAX_CONCURRENT_RUNS written into dagster.yaml (project default 2)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="FLEET_BATCH_SIZE (default: the project's, 25)")
    parser.add_argument("--cron-devices", type=int, default=24,
                        help="devices the cron loop is measured on; larger fleets extrapolate (24)")
    parser.add_argument("--tick-devices", type=int, default=10_000)
    parser.add_argument("--tick-repeats", type=int, default=2)
    parser.add_argument("--run-creation-sample", type=int, default=5,
                        help="requests of each tick submitted to a closed queue to time run "
                             "creation (5; 0 skips)")
    parser.add_argument("--direct-batch-sizes", default="5,50",
                        help="batch sizes also measured through the daemon at the largest fleet "
                             "size, as a check on the model; comma-separated, '' for none (5,50)")
    parser.add_argument("--dequeue-interval", type=int, default=None,
                        help="what-if: replace run_queue.dequeue_interval_seconds in this "
                             "benchmark's dagster.yaml (shipped: 1)")
    args = parser.parse_args(argv)
    bs.quiet_warnings()

    from solar_ml_pipeline.config import Settings
    from solar_ml_pipeline.forecasting.training import threads_per_run
    from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
    from solar_ml_pipeline.storage import open_store

    sizes = [args.devices] if args.devices else [int(s) for s in args.sizes.split(",") if s.strip()]
    direct = [int(s) for s in args.direct_batch_sizes.split(",") if s.strip()]
    batch_size = args.batch_size or Settings().fleet_batch_size
    slots = args.max_concurrent_runs
    threads = threads_per_run(slots)
    env = {"MODEL_TYPE": args.model, "MAX_CONCURRENT_RUNS": str(slots),
           "FLEET_BATCH_SIZE": str(batch_size), "RETRAIN_DAYS": str(args.days)}

    def fresh_home(name: str) -> Any:
        return bs.bench_home(name, **env)

    def prepare_instance(settings: Any) -> None:
        config = ensure_dagster_home(settings) / "dagster.yaml"
        if args.dequeue_interval is not None:
            config.write_text(re.sub(r"dequeue_interval_seconds: \d+",
                                     f"dequeue_interval_seconds: {args.dequeue_interval}",
                                     config.read_text()))

    print(bs.header("Fleet throughput: batch runs through the daemon vs an in-process loop "
                    "vs a cron loop"))
    print(f"\nEvery retrain: {args.days} days of {args.interval_minutes:g}-minute simulated "
          f"readings ({int(args.days * 1440 / args.interval_minutes)} per device), {args.model}, "
          f"period {bs.PERIOD}, {threads} OpenMP thread(s) per fit "
          f"(threads_per_run({slots})); MAX_CONCURRENT_RUNS={slots}, FLEET_BATCH_SIZE={batch_size}"
          f"{'' if args.dequeue_interval is None else f', dequeue interval {args.dequeue_interval} s (what-if)'}.",
          flush=True)
    started = time.perf_counter()

    # 1. One batch: overhead per device, in process and through the daemon ----------------
    batch: dict[str, Any] = {"loop": [], "in_process": [], "daemon": [], "loads": []}
    with fresh_home("fleet_batch") as home:
        settings = bs.settings_here()
        prepare_instance(settings)
        store = open_store(settings)
        warm = device_ids("warm", 2)
        sets = [device_ids("batcha", batch_size), device_ids("batchb", batch_size)]
        prod = device_ids("prod", 3)
        seed(store, [*warm, *sets[0], *sets[1]], args.days, args.interval_minutes)
        seed(store, prod, PROD_DAYS, PROD_INTERVAL, first_seed=100)
        add_partitions([*warm, *sets[0], *sets[1], *prod])
        loop_retrains(settings, store, warm, home / "models_warm", threads=threads, tag="warm")
        ranged_in_process(settings, store, warm, home / "models_warm_ranged")
        for index, devices in enumerate(sets):
            batch["loads"].append(load())
            batch["loop"].append(sum(loop_retrains(settings, store, devices, home / f"models_loop{index}",
                                                   threads=threads, tag=f"batch-loop{index}")))
            batch["in_process"].append(ranged_in_process(settings, store, devices,
                                                         home / f"models_ranged{index}"))
        prod_each = loop_retrains(settings, store, prod, home / "models_prod", threads=threads,
                                  tag="prod", days=PROD_DAYS)
        prod_load = load()
        os.environ["MODEL_DIR"] = str(home / "models_daemon")
        dev = DagsterDev(home / "dagster_dev.log")
        try:
            for devices in sets:
                batch["loads"].append(load())
                one_batch = bs.settings_here(fleet_batch_size=len(devices), max_concurrent_runs=1)
                batch["daemon"].append(daemon_fleet(dev, one_batch, store, devices))
        finally:
            dev.stop()
        store.close()
    print(f"\n(one batch measured: {time.perf_counter() - started:.0f} s so far, {load()})", flush=True)

    # 2. The fleets ---------------------------------------------------------------------------
    fleets: list[dict[str, Any]] = []
    for position, size in enumerate(sizes):
        fleet: dict[str, Any] = {"size": size}
        with fresh_home(f"fleet_{size}") as home:
            settings = bs.settings_here()
            prepare_instance(settings)
            store = open_store(settings)
            devices = device_ids("fleet", size)
            seed(store, devices, args.days, args.interval_minutes)
            add_partitions(devices)  # known devices: the discovery sensor has nothing to launch
            loop_retrains(settings, store, devices[:1], home / "models_warm", threads=threads, tag="warm")
            fleet["loop_load"] = load()
            cpu_before = time.process_time()
            with bs.Stopwatch() as watch:
                fleet["loop_each"] = loop_retrains(settings, store, devices, home / "models_loop",
                                                   threads=threads, tag="loop")
            fleet["loop_s"] = watch.seconds
            fleet["loop_cpu_s"] = time.process_time() - cpu_before
            if position == 0:
                fleet["loop_all_cores_load"] = load()
                with bs.Stopwatch() as watch:
                    loop_retrains(settings, store, devices, home / "models_loop_all_cores",
                                  threads=None, tag="loop-all-cores")
                fleet["loop_all_cores_s"] = watch.seconds
            cron_devices = devices[:min(size, args.cron_devices)]
            fleet["cron_load"] = load()
            cpu_before = children_cpu_s()
            fleet["cron_each"] = cron_loop(cron_devices, home / "models_cron")
            fleet["cron_cpu_s"] = children_cpu_s() - cpu_before
            os.environ["MODEL_DIR"] = str(home / "models_daemon")
            dev = DagsterDev(home / "dagster_dev.log")
            try:
                fleet["ready_s"] = dev.ready_s
                fleet["daemon_load"] = load()
                fleet["daemon"] = daemon_fleet(dev, bs.settings_here(), store, devices)
                fleet["daemon_end_load"] = load()
            finally:
                dev.stop()
            fleet["direct"] = {}
            if position == len(sizes) - 1:
                for size_b in direct:
                    os.environ["MODEL_DIR"] = str(home / f"models_daemon_b{size_b}")
                    os.environ["FLEET_BATCH_SIZE"] = str(size_b)
                    dev = DagsterDev(home / f"dagster_dev_b{size_b}.log")
                    try:
                        direct_load = load()
                        result = daemon_fleet(dev, bs.settings_here(), store, devices)
                        fleet["direct"][size_b] = (result, direct_load)
                    finally:
                        dev.stop()
                    os.environ["FLEET_BATCH_SIZE"] = str(batch_size)
            store.close()
        fleets.append(fleet)
        print(f"({size} devices measured: {time.perf_counter() - started:.0f} s so far, {load()})",
              flush=True)

    # 3. The schedule tick --------------------------------------------------------------------
    with fresh_home("fleet_tick"):
        settings = bs.settings_here()
        prepare_instance(settings)
        tick = measure_tick(settings, args.tick_devices, args.tick_repeats)
        if args.run_creation_sample:
            tick["creation"] = measure_run_creation(Path.cwd(), tick["requests"],
                                                    args.run_creation_sample)
    print(f"(tick measured: {time.perf_counter() - started:.0f} s in all, {load()})", flush=True)

    report(args, sizes, batch_size, slots, threads, batch, prod_each, prod_load, fleets, tick)
    return 0


def report(args: argparse.Namespace, sizes: list[int], batch_size: int, slots: int, threads: int,
           batch: dict[str, Any], prod_each: list[float], prod_load: str,
           fleets: list[dict[str, Any]], tick: dict[str, Any]) -> None:
    targets: list[list[str]] = []
    ratio_bits: list[str] = []

    # -- throughput -----------------------------------------------------------------------
    rows = []
    for fleet in fleets:
        n = fleet["size"]
        loop_rate = rate(n, fleet["loop_s"])
        daemon: DaemonResult = fleet["daemon"]
        daemon_rate = rate(n, daemon.seconds)
        cron_each = fleet["cron_each"]
        cron_per = statistics.mean(cron_each)
        extrapolated = len(cron_each) < n
        cron_rate = 60 / cron_per
        rows.append([f"{n}", "loop: retrain_device in turn, this process", f"{fleet['loop_s']:.1f}",
                     f"{loop_rate:.1f}", "1.00", f"{fleet['loop_cpu_s'] / n:.2f}", fleet["loop_load"]])
        if "loop_all_cores_s" in fleet:
            rows.append([f"{n}", "(loop with the libraries' default threads, for reference)",
                         f"{fleet['loop_all_cores_s']:.1f}",
                         f"{rate(n, fleet['loop_all_cores_s']):.1f}",
                         f"{rate(n, fleet['loop_all_cores_s']) / loop_rate:.2f}", "-",
                         fleet["loop_all_cores_load"]])
        sizes_text = "/".join(sorted({str(r.devices) for r in daemon.runs}, key=int))
        rows.append([f"{n}", f"daemon: {len(daemon.runs)} ranged runs of {sizes_text} devices, "
                     f"{slots} slots", f"{daemon.seconds:.1f}", f"{daemon_rate:.1f}",
                     f"{daemon_rate / loop_rate:.2f}", f"{daemon.cpu_s / n:.2f}",
                     f"{fleet['daemon_load']} (end: {fleet['daemon_end_load'].removeprefix('load ')})"])
        cron_label = (f"cron: `solar-ml retrain` processes, measured on {len(cron_each)}, "
                      f"**extrapolated x{n / len(cron_each):.2f} to {n}**" if extrapolated
                      else f"cron: {n} `solar-ml retrain` processes in turn")
        rows.append([f"{n}", cron_label, f"{cron_per * n:.1f}", f"{cron_rate:.1f}",
                     f"{cron_rate / loop_rate:.2f}", f"{fleet['cron_cpu_s'] / len(cron_each):.2f}",
                     fleet["cron_load"]])
        for size_b, (result, direct_load) in sorted(fleet["direct"].items()):
            rows.append([f"{n}", f"daemon, FLEET_BATCH_SIZE={size_b}: {len(result.runs)} runs "
                         "(direct check)", f"{result.seconds:.1f}", f"{rate(n, result.seconds):.1f}",
                         f"{rate(n, result.seconds) / loop_rate:.2f}", f"{result.cpu_s / n:.2f}",
                         direct_load])
        fleet.update(loop_rate=loop_rate, daemon_rate=daemon_rate, cron_rate=cron_rate)
        vs_loop, vs_cron = daemon_rate / loop_rate, daemon_rate / cron_rate
        targets.append([f"{n} devices: daemon / loop", f">= {TARGET_LOOP}", f"{vs_loop:.2f}",
                        verdict(vs_loop >= TARGET_LOOP)])
        targets.append([f"{n} devices: daemon / cron" + (" (cron extrapolated)" if extrapolated else ""),
                        f">= {TARGET_CRON:g}x", f"{vs_cron:.1f}x", verdict(vs_cron >= TARGET_CRON)])
        ratio_bits.append(f"{n} devices daemon/loop {vs_loop:.2f}, daemon/cron {vs_cron:.1f}x"
                          + (" (cron extrapolated)" if extrapolated else ""))
    print("\n### Throughput\n")
    print(bs.markdown_table(["devices", "path", "wall s", "retrains/min", "vs loop",
                             "CPU s per retrain", "load (1, 5, 15 min)"], rows))
    print("\nwall s: the loop from its first retrain to its last; the daemon from the first "
          "launchRun to the last run's RUN_SUCCESS event (dagster dev's own start-up, "
          + ", ".join(f"{f['ready_s']:.0f} s" for f in fleets) + ", not counted); cron: the sum "
          "of the processes' wall times (mean per process x devices where extrapolated; per "
          "process median / slowest: " + ", ".join(
              f"{median(f['cron_each']):.1f} / {max(f['cron_each']):.1f} s" for f in fleets)
          + "). CPU: "
          "this process's for the loop, the `solar-ml` processes' for cron, and for the daemon "
          "every process of the dagster dev session (webserver, daemon, code server, run "
          "workers) over the same interval, divided by the devices.")

    # -- daemon runs ----------------------------------------------------------------------
    rows = []
    measured_fleets = [(fleet["size"], batch_size, fleet["daemon"]) for fleet in fleets]
    measured_fleets += [(fleets[-1]["size"], size_b, result)
                        for size_b, (result, _) in sorted(fleets[-1]["direct"].items())]
    for n, size_b, result in measured_fleets:
        runs = result.runs
        device_times = [s for r in runs for s in r.device_s]
        gaps = dequeue_gaps(runs, slots)
        rows.append([f"{n}", f"{size_b}", f"{len(runs)}", f"{median(result.launch_s):.2f}",
                     f"{result.submit_s:.1f}",
                     f"{median([r.startup_s for r in runs]):.2f}",
                     f"{median([r.step_start - r.started for r in runs]):.2f}",
                     f"{median([r.finished - r.device_ends[-1] for r in runs]):.2f}",
                     f"{median(gaps):.2f}" if gaps else "-",
                     f"{median(device_times):.3f}"])
    print("\n### Daemon runs, from each run's events (medians over the runs)\n")
    print(bs.markdown_table(["devices", "batch", "runs", "launchRun s (each)", "all launchRuns s",
                             "worker start-up s (STARTING -> RUN_START)",
                             "run set-up s (RUN_START -> STEP_START)",
                             "run end s (last device -> RUN_SUCCESS)",
                             "slot freed -> next STARTING s", "per device in a run s"], rows))
    print("\nPer device in the loop: " + "; ".join(
        f"{fleet['size']} devices {median(fleet['loop_each']):.3f} s" for fleet in fleets)
          + " (medians). A launchRun of a ranged run writes the run and one "
          "ASSET_MATERIALIZATION_PLANNED event per asset and device (4 per device) before it "
          "returns, in the webserver, while earlier runs execute on the same cores.")

    # -- overhead per device --------------------------------------------------------------
    loop_sum, in_process = batch["loop"], batch["in_process"]
    daemon_walls = [r.seconds for r in batch["daemon"]]
    per_ip = [(w - s) / batch_size for w, s in zip(in_process, loop_sum, strict=True)]
    per_daemon = [(w - s) / batch_size for w, s in zip(daemon_walls, loop_sum, strict=True)]
    startup = [d - w for d, w in zip(daemon_walls, in_process, strict=True)]
    rows = []
    for index in range(len(loop_sum)):
        result = batch["daemon"][index]
        rows.append([f"{index + 1}", f"{loop_sum[index]:.2f}", f"{in_process[index]:.2f}",
                     f"{daemon_walls[index]:.2f}", f"{result.launch_s[0]:.2f}",
                     f"{result.runs[0].startup_s:.2f}",
                     f"{per_ip[index]:.3f}", f"{per_daemon[index]:.3f}", f"{startup[index]:.2f}",
                     f"{batch['loads'][index]} / {batch['loads'][len(loop_sum) + index].removeprefix('load ')}"])
    print(f"\n### Dagster overhead per device inside a batch of {batch_size}\n")
    print(bs.markdown_table(["set", "sum of retrain_device s", "ranged run in process s",
                             "ranged run via daemon s", "of which launchRun s",
                             "of which worker start-up s", "in-process overhead s/device",
                             "daemon overhead s/device", "daemon per-run start-up s",
                             "load (in process / daemon)"], rows))
    ip, dm = median(per_ip), median(per_daemon)
    print(f"\nOverhead = (ranged run's wall - sum of `retrain_device` for the same {batch_size} "
          "devices, same threads, each into a fresh MODEL_DIR) / devices. In process: "
          "`execute_in_process` with the schedule's range tags, the job built beforehand; "
          "via the daemon: launchRun to RUN_SUCCESS, the run alone in the queue, so its per-run "
          "start-up (run creation, queue pick-up, a new worker interpreter, code load, run "
          "set-up) is amortised over the batch. Daemon per-run start-up = daemon wall - "
          "in-process wall. A batch run of n devices writes 11 n + 11 events: per device 4 "
          "materialisations planned, 4 materialised, 3 check evaluations.")
    targets.append([f"Dagster overhead per device in a batch of {batch_size}, in process",
                    f"<= {TARGET_OVERHEAD_S}", f"{ip:.3f} s", verdict(ip <= TARGET_OVERHEAD_S)])
    targets.append(["the same through the daemon (per-run start-up amortised)",
                    f"<= {TARGET_OVERHEAD_S}", f"{dm:.3f} s", verdict(dm <= TARGET_OVERHEAD_S)])
    ratio_bits.append(f"overhead/device in a batch of {batch_size} {ip:.3f} s in process, "
                      f"{dm:.3f} s via daemon")

    # -- the tick -------------------------------------------------------------------------
    times, counts = tick["times"], tick["counts"]
    new, old = median(times["new"]), median(times["old"])
    print(f"\n### Schedule tick over {tick['devices']:,} devices (`evaluate_tick`)\n")
    print(bs.markdown_table(
        ["schedule", "run requests", "seconds (each)", "median s", "load at each"],
        [["retrain_schedule (batches, as shipped)", f"{counts['new']:,}",
          ", ".join(f"{t:.2f}" for t in times["new"]), f"{new:.2f}", "; ".join(tick["loads"]["new"])],
         ["one RunRequest(partition_key=...) per device (old way, built here)", f"{counts['old']:,}",
          ", ".join(f"{t:.2f}" for t in times["old"]), f"{old:.2f}", "; ".join(tick["loads"]["old"])]]))
    print(f"\nSame instance (a fresh DAGSTER_HOME, {tick['devices']:,} device partitions added in "
          f"{tick['add_s']:.1f} s, not counted), same repository (the project's definitions plus "
          f"the old-style schedule), alternating; old/new {old / new:.1f}x.")
    creation = tick.get("creation")
    if creation:
        rows = []
        for name, label in (("new", "batches (as shipped)"), ("old", "one run per device (old way)")):
            each = creation[name]
            rows.append([label, f"{len(each)}", ", ".join(f"{s:.2f}" for s in each),
                         f"{median(each):.2f}", f"{counts[name]:,}",
                         f"{median(each) * counts[name]:,.0f}", creation[f"{name}_load"]])
        print("\nAfter the tick the daemon creates and queues one run per request. Timed here as "
              f"launchRuns of each tick's first {len(creation['new'])} requests to dagster dev "
              "on the same instance with its queue closed (max_concurrent_runs: 0, nothing "
              "executes), extrapolated to all requests (a model):\n")
        print(bs.markdown_table(["tick", "runs created", "seconds each", "median s", "requests",
                                 "extrapolated s for all", "load"], rows))
    targets.append([f"schedule tick over {tick['devices']:,} devices (`evaluate_tick`)",
                    f"< {TARGET_TICK_S:g} s", f"{new:.2f} s (old way {old:.1f} s)",
                    verdict(new < TARGET_TICK_S)])
    ratio_bits.append(f"tick {tick['devices']:,} devices {new:.2f} s vs {old:.1f} s one-per-device")

    # -- FLEET_BATCH_SIZE ------------------------------------------------------------------
    largest = fleets[-1]
    n = largest["size"]
    model = fit_model([result for _, _, result in measured_fleets], slots)
    t_bench = median(largest["loop_each"])
    t_prod = median(prod_each)
    prod_model = model.with_device_time(model.run1 - t_bench + t_prod)
    loop_bench = 60 / statistics.mean(largest["loop_each"])
    loop_prod = 60 / statistics.mean(prod_each)
    measured_at = {size_b: result for m, size_b, result in measured_fleets if m == n}
    rows = []
    modelled: dict[int, float] = {}
    for size_b in sorted({*BATCH_SIZES, batch_size, 2 * max(BATCH_SIZES)}):
        runs, span = model.makespan(n, size_b)
        _, prod_span = prod_model.makespan(n, size_b)
        modelled[size_b] = rate(n, prod_span)
        measured = measured_at.get(size_b)
        rows.append([f"{size_b}" + ("" if size_b in BATCH_SIZES else " (beyond the brief)"),
                     f"{runs}", f"{span:.1f}", f"{rate(n, span):.1f}",
                     f"{rate(n, span) / loop_bench:.2f}",
                     f"{rate(n, measured.seconds):.1f}" if measured else "-",
                     f"{prod_span:.0f}", f"{rate(n, prod_span):.1f}",
                     f"{rate(n, prod_span) / loop_prod:.2f}"])
    best = max(modelled[b] for b in BATCH_SIZES)
    recommended = min(b for b in BATCH_SIZES if modelled[b] >= 0.95 * best)
    print(f"\n### FLEET_BATCH_SIZE: a measured model for {n} devices and {slots} run slots\n")
    print(f"The model (not a measurement): the runs are launched one after another, a launch of "
          f"n devices taking {model.launch0:.2f} + {model.launch1:.3f} n s; the queue picks a "
          f"run up {model.pickup_s:.2f} s after its launch and refills a freed slot after "
          f"{model.gap_s:.2f} s; a run of n devices takes {model.run0:.2f} + {model.run1:.3f} n s "
          f"from STARTING to RUN_SUCCESS. Lines fitted (least squares) on all "
          f"{sum(len(r.runs) for _, _, r in measured_fleets)} daemon runs of the fleets above, "
          f"so they include the runs' own contention for the two cores (and other users' load). "
          f"Production-like: {PROD_DAYS} days of {PROD_INTERVAL}-minute readings, per device "
          f"{model.run1:.3f} - {t_bench:.3f} (loop retrain here) + {t_prod:.3f} s (median "
          f"`retrain_device` of {len(prod_each)} such devices in this process, {prod_load}) = "
          f"{prod_model.run1:.3f} s; its loop {loop_prod:.1f} retrains/min.\n")
    print(bs.markdown_table(
        ["FLEET_BATCH_SIZE", "runs", "model wall s", "model retrains/min", "model vs loop",
         "measured retrains/min", f"{PROD_DAYS}-day model wall s", f"{PROD_DAYS}-day retrains/min",
         f"{PROD_DAYS}-day vs its loop"], rows))
    check = []
    for m, size_b, result in measured_fleets:
        _, span = model.makespan(m, size_b)
        check.append(f"{m} devices at {size_b}: model {span:.1f} s, measured {result.seconds:.1f} s")
    print("\nModel against the fleets it is fitted on: " + "; ".join(check) + ".")
    print(f"\nBy throughput alone: FLEET_BATCH_SIZE={recommended}, the smallest of "
          f"{', '.join(str(b) for b in BATCH_SIZES)} whose modelled {PROD_DAYS}-day throughput "
          f"is within 5 % of the best of them ({best:.1f} retrains/min).")
    ratio_bits.append(f"batch size by modelled throughput {recommended}")

    print("\n### Targets (issue 13)\n")
    print(bs.markdown_table(["target", "wanted", "measured", "status"], targets))
    print("\n" + bs.ratio_line("fleet_throughput", "; ".join(ratio_bits)))


if __name__ == "__main__":
    raise SystemExit(main())
