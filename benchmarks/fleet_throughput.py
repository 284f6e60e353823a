"""Fleet throughput: 20 device retrains through the real daemon and run queue vs a plain loop.

Both sides retrain the same devices on the same readings for the same period, each into its
own MODEL_DIR (so neither finds a champion the other stored), in one DAGSTER_HOME:

- loop: `retrain_in_foreground` for each device in turn, in this process (no daemon);
- daemon: `dagster dev` (webserver + daemon + code server) on that DAGSTER_HOME with the
  project's dagster.yaml (run queue, MAX_CONCURRENT_RUNS, one run per device); every
  partition is submitted at once over GraphQL, as a schedule tick does, then the run records
  are polled until all runs have finished. Each run is a fresh worker process
  (`dagster api execute_run`), so worker start-up is part of its cost.

Per-run phases come from each run's own events: queued (ENQUEUED -> STARTING, the queue
hands it to the launcher), worker start-up (STARTING -> RUN_START: a new process, imports,
code location load) and execution (RUN_START -> SUCCESS), plus the dequeue latency: from a
slot freeing to the next queued run's launch.

    python benchmarks/fleet_throughput.py                      # 20 devices x 7 days, random_forest
    python benchmarks/fleet_throughput.py --devices 4 --model ridge
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_support as bs

from solar_ml_pipeline.config import MODEL_TYPES
from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
from solar_ml_pipeline.orchestration.partitions import DEVICE_DIMENSION
from solar_ml_pipeline.orchestration.retraining import (
    resolve_request,
    retrain_in_foreground,
    run_config_for,
    run_tags,
)
from solar_ml_pipeline.storage import open_store

DAYS = 7
STARTUP_TIMEOUT_S = 240
RUNS_TIMEOUT_S = 1800


def device_ids(count: int) -> list[str]:
    return [f"fleet{index:02d}" for index in range(count)]


# -- the loop side ----------------------------------------------------------------------


def run_loop(settings: Any, store: Any, devices: list[str]) -> tuple[float, list[float]]:
    each = []
    with bs.Stopwatch() as total:
        for device_id in devices:
            with bs.Stopwatch() as watch:
                request = resolve_request(settings, device_id, bs.PERIOD, DAYS)
                record = store.get_run(retrain_in_foreground(settings, request, trigger="bench-loop"))
            if record is None or record.get("status") != "success":
                raise RuntimeError(f"loop retrain of {device_id} failed: {record and record.get('error')}")
            each.append(watch.seconds)
    return total.seconds, each


# -- the daemon side --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_dagster_dev(port: int, log_path: Path) -> subprocess.Popen:
    """`dagster dev` in its own session, so the whole tree can be ended by its group id."""
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-m", "solar_ml_pipeline.definitions",
               "-h", "127.0.0.1", "-p", str(port)]
    log = log_path.open("wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
                            start_new_session=True)


def stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


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


def wait_until_ready(port: int, process: subprocess.Popen,
                     log_path: Path) -> tuple[float, tuple[str, str]]:
    """Seconds until the webserver answers with the job loaded, and where the job is."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    started = time.perf_counter()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster dev exited early; see {log_path}")
        try:
            where = job_location(port, "retrain_job")
        except (OSError, ValueError, KeyError, TypeError):
            where = None
        if where is not None:
            return time.perf_counter() - started, where
        time.sleep(0.5)
    raise RuntimeError(f"dagster dev did not load the code location in {STARTUP_TIMEOUT_S} s; "
                       f"see {log_path}")


def submit_runs(client: Any, where: tuple[str, str], devices: list[str],
                settings: Any) -> list[str]:
    run_ids = []
    for device_id in devices:
        request = resolve_request(settings, device_id, bs.PERIOD, DAYS)
        tags = {
            **run_tags(request, "bench-daemon"),
            "dagster/partition": f"{device_id}|{bs.PERIOD}",
            "dagster/partition/device": device_id,
            "dagster/partition/period": bs.PERIOD,
        }
        run_ids.append(client.submit_job_execution(
            "retrain_job", repository_location_name=where[0], repository_name=where[1],
            run_config=run_config_for(request), tags=tags))
    return run_ids


def wait_for_runs(instance: Any, run_ids: list[str]) -> list[Any]:
    import dagster as dg

    deadline = time.monotonic() + RUNS_TIMEOUT_S
    while time.monotonic() < deadline:
        records = instance.get_run_records(dg.RunsFilter(run_ids=run_ids))
        if len(records) == len(run_ids) and all(r.dagster_run.is_finished for r in records):
            return records
        time.sleep(0.25)
    raise RuntimeError(f"runs not finished after {RUNS_TIMEOUT_S} s")


@dataclass(frozen=True)
class RunPhases:
    enqueued: float
    starting: float  # the queue handed the run to the launcher
    started: float  # RUN_START: the worker has loaded the code and begins the steps
    finished: float  # RUN_SUCCESS / RUN_FAILURE: the queue slot frees

    @property
    def queued_s(self) -> float:
        return self.starting - self.enqueued

    @property
    def launch_s(self) -> float:
        return self.started - self.starting

    @property
    def execution_s(self) -> float:
        return self.finished - self.started


def run_phases(instance: Any, run_id: str) -> RunPhases:
    from dagster import DagsterEventType as T

    stamps: dict[Any, float] = {}
    for entry in instance.all_logs(run_id):
        if entry.is_dagster_event and entry.dagster_event_type not in stamps:
            stamps[entry.dagster_event_type] = entry.timestamp
    nan = float("nan")
    end = stamps.get(T.RUN_SUCCESS, stamps.get(T.RUN_FAILURE, nan))
    return RunPhases(stamps.get(T.RUN_ENQUEUED, nan), stamps.get(T.RUN_STARTING, nan),
                     stamps.get(T.RUN_START, nan), end)


def slot_gaps(phases: list[RunPhases], slots: int) -> list[float]:
    """For each run that had to wait for a slot: seconds from the slot freeing to its launch
    (the run queue's dequeue latency)."""
    ordered = sorted(phases, key=lambda p: p.starting)
    gaps = []
    for index in range(slots, len(ordered)):
        freed = sorted(p.finished for p in ordered[:index])[index - slots]
        if ordered[index].enqueued < freed:
            gaps.append(max(ordered[index].starting - freed, 0.0))
    return gaps


def run_daemon(devices: list[str], settings: Any, home: Path) -> dict[str, Any]:
    import dagster as dg
    from dagster_graphql import DagsterGraphQLClient

    port = free_port()
    log_path = home / "dagster_dev.log"
    process = start_dagster_dev(port, log_path)
    try:
        ready_s, where = wait_until_ready(port, process, log_path)
        client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=60)
        with dg.DagsterInstance.get() as instance:
            submitted_at = time.time()
            with bs.Stopwatch() as total:
                run_ids = submit_runs(client, where, devices, settings)
                submit_s = time.time() - submitted_at
                records = wait_for_runs(instance, run_ids)
            phases = [run_phases(instance, run_id) for run_id in run_ids]
            failed = [r.dagster_run.run_id for r in records
                      if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
    finally:
        stop_process_group(process)
    if failed:
        raise RuntimeError(f"{len(failed)} daemon run(s) failed, e.g. {failed[0]}; see {log_path} "
                           f"and the run log in {home}")
    return {"seconds": total.seconds, "submit_s": submit_s, "ready_s": ready_s, "phases": phases}


# -- what a worker start-up is made of ----------------------------------------------------

IMPORT_PARTS = ("dagster", "pandas", "sklearn", "pvlib", "solar_ml_pipeline.definitions")


def import_costs() -> tuple[float, dict[str, float]]:
    """A fresh interpreter importing the code location, as every run worker does: its wall
    seconds and the cumulative import seconds of the heavy packages (python -X importtime)."""
    command = [sys.executable, "-X", "importtime", "-c", "import solar_ml_pipeline.definitions"]
    with bs.Stopwatch() as watch:
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=dict(os.environ))
    parts: dict[str, float] = {}
    for line in done.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) == 3 and fields[2].strip() in IMPORT_PARTS:
            name = fields[2].strip()
            parts[name] = max(parts.get(name, 0.0), int(fields[1]) / 1e6)
    return watch.seconds, parts


# -- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--model", default="random_forest", choices=MODEL_TYPES)
    parser.add_argument("--max-concurrent-runs", type=int, default=2,
                        help="MAX_CONCURRENT_RUNS written into dagster.yaml (project default 2)")
    parser.add_argument("--dequeue-interval", type=int, default=None,
                        help="what-if: replace run_queue.dequeue_interval_seconds in this "
                             "benchmark's dagster.yaml (shipped: 1; Dagster's default: 5)")
    args = parser.parse_args(argv)
    bs.quiet_warnings()

    print(bs.header("Fleet throughput: daemon + run queue vs a sequential in-process loop"))
    devices = device_ids(args.devices)
    with bs.bench_home("fleet", MODEL_TYPE=args.model,
                       MAX_CONCURRENT_RUNS=str(args.max_concurrent_runs)) as home:
        settings = bs.settings_here()
        config = ensure_dagster_home(settings) / "dagster.yaml"
        text = config.read_text()
        shipped = re.search(r"dequeue_interval_seconds: (\d+)", text)
        if args.dequeue_interval is not None:
            config.write_text(re.sub(r"dequeue_interval_seconds: \d+",
                                     f"dequeue_interval_seconds: {args.dequeue_interval}", text))
        dequeue = (args.dequeue_interval if args.dequeue_interval is not None
                   else int(shipped.group(1)) if shipped else 5)
        store = open_store(settings)
        for seed, device_id in enumerate(devices):
            bs.seed_readings(store, device_id, DAYS, seed=seed)
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            # Known devices: the discovery sensor has nothing new to launch during the run.
            instance.add_dynamic_partitions(DEVICE_DIMENSION, devices)

        loop_settings = settings.with_overrides(model_dir=home / "models_loop")
        loop_s, loop_each = run_loop(loop_settings, store, devices)
        os.environ["MODEL_DIR"] = str(home / "models_daemon")
        daemon = run_daemon(devices, bs.settings_here(), home)
        import_wall, import_parts = import_costs()
        store.close()

    phases: list[RunPhases] = daemon["phases"]
    n = len(devices)
    loop_rate = n / loop_s * 60
    daemon_rate = n / daemon["seconds"] * 60
    ratio = daemon_rate / loop_rate
    print(f"\n{n} devices x {DAYS} days of 1-minute readings, {args.model}, period {bs.PERIOD}; "
          f"MAX_CONCURRENT_RUNS={args.max_concurrent_runs}; dequeue interval "
          f"{dequeue} s{'' if args.dequeue_interval is not None else ' (as shipped)'}; "
          f"dagster dev ready after {daemon['ready_s']:.1f} s (not counted).\n")
    print(bs.markdown_table(
        ["path", "retrains", "wall s", "retrains/min", "median s per retrain"],
        [["loop (in-process, sequential)", n, f"{loop_s:.1f}", f"{loop_rate:.2f}",
          f"{statistics.median(loop_each):.2f}"],
         ["daemon (queue, run workers)", n, f"{daemon['seconds']:.1f}", f"{daemon_rate:.2f}",
          f"{statistics.median(p.launch_s + p.execution_s for p in phases):.2f}"]]))

    def stats(values: list[float]) -> list[str]:
        return [f"{statistics.median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}"]

    gaps = slot_gaps(phases, args.max_concurrent_runs)
    makespan = max(p.finished for p in phases) - min(p.enqueued for p in phases)
    busy = sum(p.finished - p.starting for p in phases) / (makespan * args.max_concurrent_runs)
    working = sum(p.execution_s for p in phases) / (makespan * args.max_concurrent_runs)
    print("\nDaemon runs, per-run phases (s), from each run's events:\n")
    print(bs.markdown_table(
        ["phase", "median", "min", "max"],
        [["queued (ENQUEUED -> STARTING)", *stats([p.queued_s for p in phases])],
         ["slot freed -> next run STARTING (dequeue latency)", *(stats(gaps) if gaps else ["-"] * 3)],
         ["worker start-up (STARTING -> RUN_START: process, imports, code load)",
          *stats([p.launch_s for p in phases])],
         ["execution (RUN_START -> SUCCESS)", *stats([p.execution_s for p in phases])],
         ["loop retrain, for comparison", *stats(loop_each)]]))
    overhead = statistics.median(p.launch_s for p in phases)
    print(f"\nSubmitting {n} runs over GraphQL took {daemon['submit_s']:.1f} s. Of the "
          f"{args.max_concurrent_runs} run slots over the {makespan:.1f} s from first enqueue to "
          f"last finish, runs held {100 * busy:.0f} % and executed steps {100 * working:.0f} % "
          f"(the rest: worker start-up {100 * (busy - working):.0f} %, empty slots "
          f"{100 * (1 - busy):.0f} %). Per-run launch overhead (worker start-up before the first "
          f"step): median {overhead:.2f} s; queue dequeue latency median "
          f"{statistics.median(gaps) if gaps else float('nan'):.2f} s.")
    print(f"\nA fresh `python -c 'import solar_ml_pipeline.definitions'` (what each worker does "
          f"before its first step) took {import_wall:.1f} s; cumulative import seconds under "
          "-X importtime (nested: pvlib and sklearn load inside the package's modules):\n")
    print(bs.markdown_table(["package", "import s"],
                            [[name, f"{import_parts.get(name, 0.0):.2f}"] for name in IMPORT_PARTS]))
    verdict = "met" if ratio >= 0.7 else "NOT met"
    print("\n" + bs.ratio_line(
        "fleet_throughput",
        f"daemon/loop throughput {ratio:.2f} ({daemon_rate:.2f} vs {loop_rate:.2f} retrains/min; "
        f"target >= 0.70: {verdict})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
