"""Scale-out on Celery workers: two workers pinned to one core each vs one, and warm start-up.

The README's several-hosts deployment on one machine: the Dagster instance on a throwaway
PostgreSQL, Redis as the broker, `solar-ml worker` processes and the daemon started from the
commands of `deploy/systemd/*.service` with the environment of `deploy/solar-ml.env` (this
benchmark's servers and folders filled in; readings and run log in SQLite, no MongoDB, no
webserver: everything is read through the instance API). The discovery sensor finds the
fleet on the daemon's first tick and launches FLEET_BATCH_SIZE-device batch runs.

Three sides, one after the other, each on a fresh instance and store (its own PostgreSQL
database and Redis database, SOLAR_ML_HOME, DAGSTER_HOME per "host", MODEL_DIR), repeated in
`--rounds` rounds with the two Celery sides in alternating order (load from other processes
then hits both alike):

1. one worker, `taskset -c 0 solar-ml worker --concurrency 1`, MAX_CONCURRENT_RUNS=1;
2. two workers, `taskset -c 0 ...` and `taskset -c 1 ...`, MAX_CONCURRENT_RUNS=2;
3. the default run launcher (a daemon without CELERY_BROKER_URL on a SQLite DAGSTER_HOME: a
   fresh `dagster api execute_run` process per run), single-device runs, one at a time.

Throughput = devices retrained / (last run end - first run creation), from the run records.
Start-up = RUN_STARTING -> RUN_START of each run (what the launcher and the worker do before
the run's first event of its own), first run of each worker apart from the rest. The daemon,
PostgreSQL and Redis are not pinned unless `--daemon-cpus` says so; the CPU each used inside
the measured window is printed beside the figures.

    python benchmarks/scale_out.py                  # 40 devices, 2 rounds
    python benchmarks/scale_out.py --quick          # 20 devices, 1 round
    python benchmarks/scale_out.py --devices 10 --rounds 1 --baseline-runs 2 --every-run
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bench_support as bs

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # the throwaway servers come from the test suite's helpers
    sys.path.insert(1, str(REPO_ROOT))

from solar_ml_pipeline_tests.deployment import deploy_env, unit_command  # noqa: E402 - after the path

# Set by this benchmark for each side, never taken from deploy/solar-ml.env or the caller.
OWN_VARIABLES = ("DAGSTER_PG_URL", "CELERY_BROKER_URL", "CELERY_BACKEND_URL", "DAGSTER_HOME",
                 "MODEL_DIR", "SOLAR_ML_HOME", "MONGODB_URI", "FLEET_BATCH_SIZE",
                 "MAX_CONCURRENT_RUNS")
TARGET_RATIO = 1.7
TARGET_STARTUP_S = 1.0
READY_TIMEOUT_S = 180
STOP_GRACE_S = 15
TICK = os.sysconf("SC_CLK_TCK")


# -- the deployment files ---------------------------------------------------------------------


def pinned(cpus: str | None, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else command


# -- processes --------------------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _cpu_of(pids: Sequence[int]) -> float:
    """utime+stime of the processes and of their reaped children, in seconds."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def group_cpu(pgid: int) -> float:
    return _cpu_of(group_members(pgid))


def tree_cpu(root_pid: int) -> float:
    """CPU of a process and its live children (PostgreSQL: the postmaster and backends)."""
    pids = [root_pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            if int(text[text.rindex(")") + 2:].split()[1]) == root_pid:
                pids.append(int(stat.parent.name))
    return _cpu_of(pids)


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores; /proc/stat)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:9]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK


@dataclass
class Started:
    name: str
    process: subprocess.Popen
    log_path: Path
    role: str  # worker / daemon


class Processes:
    """Every process this benchmark starts: each in its own session, its group ended at the
    end (SIGTERM, then SIGKILL after a grace period), whatever happened."""

    def __init__(self) -> None:
        self.started: list[Started] = []

    def start(self, name: str, role: str, argv: list[str], env: dict[str, str], cwd: Path,
              log_path: Path) -> Started:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        item = Started(name, process, log_path, role)
        self.started.append(item)
        return item

    def stop(self, item: Started) -> None:
        pgid = item.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            item.process.wait(timeout=STOP_GRACE_S)
        deadline = time.monotonic() + STOP_GRACE_S
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            item.process.wait(timeout=STOP_GRACE_S)
        deadline = time.monotonic() + STOP_GRACE_S
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_members(pgid):
            print(f"warning: processes of {item.name} survived: {group_members(pgid)}",
                  file=sys.stderr)
        if item in self.started:
            self.started.remove(item)

    def stop_all(self) -> None:
        for item in list(reversed(self.started)):  # the daemon first, then the workers
            self.stop(item)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- one side ---------------------------------------------------------------------------------


@dataclass
class Side:
    kind: str  # one / two / default
    label: str
    worker_cpus: list[str]  # one entry per worker; empty: the default run launcher
    max_runs: int
    devices: int
    batch_size: int
    round: int = 1

    @property
    def celery(self) -> bool:
        return bool(self.worker_cpus)

    @property
    def key(self) -> str:
        return f"{self.kind}{self.round}"


def sides_of_round(round_number: int, devices: int, batch_size: int,
                   baseline_runs: int) -> list[Side]:
    """The two Celery sides (in alternating order from round to round), then the baseline."""
    one = Side("one", "1 worker (CPU 0)", ["0"], 1, devices, batch_size, round_number)
    two = Side("two", "2 workers (CPU 0, CPU 1)", ["0", "1"], 2, devices, batch_size,
               round_number)
    default = Side("default", "default launcher (SQLite)", [], 1, baseline_runs, 1, round_number)
    return [one, two, default] if round_number % 2 else [two, one, default]


@dataclass
class RunTiming:
    run_id: str
    status: str
    devices: int
    created: float
    starting: float | None
    started: float | None
    ended: float | None
    worker: str = ""
    received: float | None = None  # when the Celery worker took the task
    first_on_worker: bool = False

    @property
    def handoff_s(self) -> float | None:
        if self.starting is None or self.received is None:
            return None
        return self.received - self.starting

    @property
    def in_worker_s(self) -> float | None:
        if self.received is None or self.started is None:
            return None
        return self.started - self.received

    @property
    def queued_s(self) -> float | None:
        return None if self.starting is None else self.starting - self.created

    @property
    def startup_s(self) -> float | None:
        if self.starting is None or self.started is None:
            return None
        return self.started - self.starting

    @property
    def execution_s(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


@dataclass
class SideResult:
    side: Side
    runs: list[RunTiming]
    attempts: Counter
    promoted: int
    window_s: float
    cpu: dict[str, float]
    load_start: str
    load_end: str
    period: str = ""
    idle_cpu_per_s: dict[str, float] = field(default_factory=dict)
    pg_sessions: int | None = None  # PostgreSQL sessions opened inside the window
    ready_s: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def retrained(self) -> int:
        return self.attempts.get("success", 0)

    @property
    def per_minute(self) -> float:
        return self.retrained / self.window_s * 60 if self.window_s > 0 else float("nan")


@dataclass
class Servers:
    postgres: Any
    redis: Any
    createdb: Path
    postmaster_pid: int


def side_environment(side: Side, root: Path, servers: Servers, db_index: int,
                     args: argparse.Namespace, now: datetime) -> dict[str, str]:
    from solar_ml_pipeline_tests.conftest import CONFIG_VARIABLES

    env = {k: v for k, v in os.environ.items()
           if k not in CONFIG_VARIABLES and k not in OWN_VARIABLES}
    env.update(deploy_env(OWN_VARIABLES))
    retrain_at = now - timedelta(hours=6)  # the current period began 6 h ago, ends in 18 h
    env.update({
        "SOLAR_ML_HOME": str(root / "home"),  # readings and run log (MongoDB in production)
        "MODEL_DIR": str(root / "models"),  # the shared model folder
        "FLEET_BATCH_SIZE": str(side.batch_size), "MAX_CONCURRENT_RUNS": str(side.max_runs),
        "RETRAIN_ENABLED": "false", "RETRAIN_DAYS": str(args.days), "TIMEZONE": "UTC",
        "RETRAIN_TIME": retrain_at.strftime("%H:%M"), "MODEL_TYPE": args.model,
        "PERIODS_START": (now - timedelta(days=30)).date().isoformat(),
        "PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    if side.celery:
        database = f"solar_ml_{side.key}"
        subprocess.run([str(servers.createdb), "-h", "127.0.0.1", "-p", str(servers.postgres.port),
                        "-U", "postgres", database], capture_output=True, text=True, check=True,
                       timeout=60)
        env["DAGSTER_PG_URL"] = f"postgresql://postgres@127.0.0.1:{servers.postgres.port}/{database}"
        # Redis has 16 databases: a side's own one (a database is reused after 15 sides,
        # holding only the finished tasks' results of a side long gone).
        env["CELERY_BROKER_URL"] = (f"redis://127.0.0.1:{servers.redis.port}/"
                                    f"{(db_index - 1) % 15 + 1}")
    return env


def host_env(env: dict[str, str], root: Path, host: str) -> dict[str, str]:
    return {**env, "DAGSTER_HOME": str(root / host / "dagster_home")}


def seed_fleet(env: dict[str, str], devices: list[str], days: float) -> str:
    """`days` of 1-minute readings for each device ending at the current period's cutoff;
    returns the period key."""
    from solar_ml_pipeline.config import settings_from_env
    from solar_ml_pipeline.orchestration.partitions import period_bounds, period_key_at
    from solar_ml_pipeline.readings.simulator import readings_records, simulate_readings
    from solar_ml_pipeline.storage import open_store

    settings = settings_from_env(env)
    period = period_key_at(settings, datetime.now(UTC))
    cutoff = period_bounds(settings, period)[0]
    store = open_store(settings)
    try:
        for seed, device_id in enumerate(devices):
            frame = simulate_readings(device_id, start=cutoff - timedelta(days=days), end=cutoff,
                                      interval_minutes=1, seed=seed)
            store.write_readings(readings_records(frame))
    finally:
        store.close()
    return period


def wait_for_worker(item: Started, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Until Celery says ready and the pool's warm-up imports are over (the group's CPU use
    falls below 5 % over a second); returns the seconds it took."""
    begun = time.monotonic()
    deadline = begun + timeout_s
    while " ready." not in item.log_path.read_text(errors="replace"):
        if item.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker {item.name} did not start:\n{log_tail(item.log_path)}")
        time.sleep(0.2)
    previous = group_cpu(item.process.pid)
    while True:
        time.sleep(1.0)
        now = group_cpu(item.process.pid)
        if now - previous < 0.05 or time.monotonic() > deadline:
            return time.monotonic() - begun
        previous = now


RECEIVED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
                      r"Task \S+\[([0-9a-f-]{36})\] received", re.MULTILINE)


def worker_of_tasks(workers: list[Started]) -> dict[str, tuple[str, float]]:
    """Celery task id -> (the worker that received it, when), from the workers' own logs
    (Celery stamps them in local time, to the millisecond)."""
    owner = {}
    for item in workers:
        for stamp, task_id in RECEIVED.findall(item.log_path.read_text(errors="replace")):
            received = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            owner[task_id] = (item.name, received)
    return owner


def cpu_snapshot(servers: Servers, processes: list[Started]) -> dict[str, float]:
    snapshot = {"machine": machine_busy_s(), "postgres": tree_cpu(servers.postmaster_pid),
                "redis": _cpu_of([servers.redis.process.pid]), "workers": 0.0, "daemon": 0.0,
                "bench": _cpu_of([os.getpid()])}
    for item in processes:
        snapshot[item.role + "s" if item.role == "worker" else item.role] += group_cpu(
            item.process.pid)
    return snapshot


def pg_sessions(url: str | None) -> int | None:
    """Sessions PostgreSQL has opened for the database so far (pg_stat_database, PG 14+):
    dagster-postgres opens a connection per storage call outside the webserver (NullPool)."""
    if not url:
        return None
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = "
                           "current_database()")
            row = cursor.fetchone()
    finally:
        connection.close()
    return int(row[0]) if row and row[0] is not None else None


def run_side(side: Side, base: Path, servers: Servers, db_index: int, args: argparse.Namespace,
             processes: Processes) -> SideResult:
    import dagster as dg

    from solar_ml_pipeline.config import settings_from_env
    from solar_ml_pipeline.orchestration.batches import device_batches
    from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
    from solar_ml_pipeline.storage import open_store

    root = base / side.key
    (root / "models").mkdir(parents=True)
    saved_environ = dict(os.environ)
    env = side_environment(side, root, servers, db_index, args, datetime.now(UTC))
    hosts = [f"w{i}" for i in range(len(side.worker_cpus))]
    try:
        for host in (*hosts, "daemon"):  # each "host" its own DAGSTER_HOME, written on first use
            (root / host).mkdir()
            ensure_dagster_home(settings_from_env(host_env(env, root, host)))
        devices = [f"fleet{i:03d}" for i in range(side.devices)]
        period = seed_fleet(env, devices, args.days)
        expected_runs = len(device_batches(devices, side.batch_size, side.max_runs))

        workers, ready_s = [], {}
        for host, cpus in zip(hosts, side.worker_cpus, strict=True):
            workers.append(processes.start(
                host, "worker", pinned(cpus, unit_command("solar-ml-worker@.service", host)),
                host_env(env, root, host), root, root / f"{host}.log"))
        for item in workers:
            ready_s[item.name] = wait_for_worker(item)
        daemon_started = time.monotonic()
        daemon = processes.start("daemon", "daemon",
                                 pinned(args.daemon_cpus, unit_command("solar-ml-daemon.service")),
                                 host_env(env, root, "daemon"), root, root / "daemon.log")
        ours = [*workers, daemon]

        # This process reads the instance the daemon writes (PostgreSQL or SQLite).
        os.environ.update(host_env(env, root, "daemon"))
        for variable in ("DAGSTER_PG_URL", "CELERY_BROKER_URL"):
            if variable not in env:
                os.environ.pop(variable, None)
        load_start = bs.load_average()
        terminal = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                    dg.DagsterRunStatus.CANCELED}
        deadline = time.monotonic() + args.timeout

        def alive() -> None:
            if daemon.process.poll() is not None:
                raise RuntimeError(f"the daemon exited:\n{log_tail(daemon.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{side.label}: not finished after {args.timeout} s:\n"
                                   f"{log_tail(daemon.log_path)}")

        def all_done(records: list[Any]) -> bool:
            return (len(records) >= expected_runs
                    and all(r.dagster_run.status in terminal for r in records))

        pg_url = env.get("DAGSTER_PG_URL")
        with dg.DagsterInstance.from_config(str(root / "daemon" / "dagster_home")) as instance:
            while not instance.get_run_records(limit=1):  # the daemon's first sensor tick
                alive()
                time.sleep(0.5)
            cpu_start, sessions_start = cpu_snapshot(servers, ours), pg_sessions(pg_url)
            ready_s["daemon (to first run)"] = time.monotonic() - daemon_started
            # Wait on the run log (SQLite) instead of the instance: every query of a
            # PostgreSQL instance is a new connection that would count as the deployment's.
            store = open_store(settings_from_env(env))
            try:
                checked = time.monotonic()
                while len(store.list_runs(limit=100_000).runs) < side.devices:
                    alive()
                    if time.monotonic() - checked > 10:  # a run that failed before recording
                        checked = time.monotonic()
                        if all_done(instance.get_run_records()):
                            break
                    time.sleep(0.25)
            finally:
                store.close()
            while not all_done(records := instance.get_run_records()):
                alive()
                time.sleep(0.1)
            cpu_end, sessions_end = cpu_snapshot(servers, ours), pg_sessions(pg_url)
            load_end = bs.load_average()
            runs = collect_runs(instance, records)
        # What the deployment costs with nothing to run: the daemon's loops, its queries.
        time.sleep(1.0)
        idle_start, idle_began = cpu_snapshot(servers, ours), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_end, idle_s = cpu_snapshot(servers, ours), time.monotonic() - idle_began
        idle = {name: (idle_end[name] - idle_start[name]) / idle_s for name in idle_end}
        owner = worker_of_tasks(workers)
        for run, record in zip(runs, records, strict=True):
            task_id = record.dagster_run.tags.get("dagster-celery/task_id", "")
            run.worker, run.received = owner.get(
                task_id, ("?" if side.celery else "run process", None))
        seen = set()
        for run in sorted(runs, key=lambda r: r.starting or math.inf):
            run.first_on_worker = side.celery and run.worker not in seen
            seen.add(run.worker)

        store = open_store(settings_from_env(env))
        try:
            run_ids = {run.run_id for run in runs}
            attempts = [r for r in store.list_runs(limit=100_000).runs
                        if r.get("dagster_run_id") in run_ids]
        finally:
            store.close()
        problems = []
        failed = [run.run_id[:8] for run in runs if run.status != "SUCCESS"]
        if failed:
            problems.append(f"{len(failed)} run(s) did not succeed: {', '.join(failed)}")
        if len(attempts) != side.devices:
            problems.append(f"{len(attempts)} attempt records for {side.devices} devices")
        first = min(run.created for run in runs)
        last = max(run.ended or run.created for run in runs)
        cpu = {name: cpu_end[name] - cpu_start[name] for name in cpu_end}
        for item in reversed(ours):
            processes.stop(item)
        return SideResult(side=side, runs=runs, attempts=Counter(r["status"] for r in attempts),
                          promoted=sum(bool(r.get("promoted")) for r in attempts),
                          window_s=last - first, cpu=cpu, load_start=load_start,
                          load_end=load_end, period=period, idle_cpu_per_s=idle,
                          pg_sessions=(None if sessions_start is None or sessions_end is None
                                       else sessions_end - sessions_start - 1),
                          ready_s=ready_s,
                          problems=problems)
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)


def collect_runs(instance: Any, records: list[Any]) -> list[RunTiming]:
    import dagster as dg

    wanted = {dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING,
              dg.DagsterEventType.RUN_START}
    runs = []
    for record in records:
        run = record.dagster_run
        stamps: dict[Any, float] = {}
        for entry in instance.all_logs(run.run_id, of_type=wanted):
            stamps.setdefault(entry.dagster_event.event_type, entry.timestamp)
        created = record.create_timestamp.timestamp()
        enqueued = stamps.get(dg.DagsterEventType.RUN_ENQUEUED, created)
        if abs(enqueued - created) > 5:  # the record's clock (the database's) vs the events'
            raise RuntimeError(f"run {run.run_id}: created {created} but RUN_ENQUEUED at "
                               f"{enqueued}: a time zone mix-up?")
        runs.append(RunTiming(
            run_id=run.run_id, status=run.status.value,
            devices=int(run.tags.get("solar/devices", "1")), created=created,
            starting=stamps.get(dg.DagsterEventType.RUN_STARTING),
            started=stamps.get(dg.DagsterEventType.RUN_START), ended=record.end_time))
    return runs


# -- servers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway_servers(folder: Path) -> Iterator[Servers]:
    from solar_ml_pipeline_tests.servers import postgres_server, redis_server

    with postgres_server() as postgres, redis_server(folder) as redis:
        postmaster = int((postgres.data_dir / "postmaster.pid").read_text().split()[0])
        yield Servers(postgres, redis, postgres.bin_dir / "createdb", postmaster)


# -- report -----------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def median_max(values: Sequence[float]) -> tuple[float | None, float | None]:
    return (statistics.median(values), max(values)) if values else (None, None)


def startup_of(results: Sequence[SideResult], first: bool | None,
               phase: str = "startup_s") -> list[float]:
    values = (getattr(run, phase) for result in results for run in result.runs
              if first is None or run.first_on_worker == first)
    return [value for value in values if value is not None]


def median_of(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def report(results: list[SideResult], args: argparse.Namespace, devices: int) -> None:
    by_kind = {kind: [r for r in results if r.side.kind == kind]
               for kind in ("one", "two", "default")}
    labels = {kind: found[0].side.label for kind, found in by_kind.items() if found}
    pin = f"pinned to CPU {args.daemon_cpus}" if args.daemon_cpus else "not pinned"
    print(f"{devices} simulated devices x {args.days} days of 1-minute readings, RETRAIN_DAYS="
          f"{args.days}, {args.model}, FLEET_BATCH_SIZE={args.batch_size}, "
          f"REQUIRE_BEAT_PERSISTENCE on (default); period {results[0].period}. {args.rounds} "
          f"round(s), the two Celery sides in alternating order, each side on a fresh "
          f"PostgreSQL database, Redis database, SOLAR_ML_HOME, DAGSTER_HOMEs and MODEL_DIR. "
          f"Workers: `taskset -c N` + the worker unit's command; daemon (and its code server) "
          f"{pin}; PostgreSQL and Redis not pinned; no webserver (the benchmark reads the "
          f"instance API). Environment: deploy/solar-ml.env with this benchmark's servers and "
          f"folders.\n")

    rows = []
    for r in results:
        if not r.side.celery:
            continue
        created = [x.created for x in r.runs]
        rows.append([r.side.round, r.side.label, r.side.max_runs, len(r.runs), r.retrained,
                     r.promoted, fmt(max(created) - min(created), 1), fmt(r.window_s, 1),
                     fmt(r.per_minute), r.load_start, r.load_end])
    print(bs.markdown_table(["round", "side", "MAX_CONCURRENT_RUNS", "runs", "devices retrained",
                             "promoted", "runs created over s", "first created -> last end s",
                             "devices/min", "load at start (1 5 15)", "load at end"], rows))
    ratios = [two.per_minute / one.per_minute
              for one, two in zip(by_kind["one"], by_kind["two"], strict=False)]
    if ratios:
        print(f"\nPer-round ratio 2 workers / 1 worker: {', '.join(f'{x:.2f}x' for x in ratios)}"
              f" (median {statistics.median(ratios):.2f}x).")

    print("\nCPU seconds inside each side's window (first run seen -> last finish; 2 cores, so "
          "2 x window core-seconds exist), and CPU use with nothing to run (mean over "
          f"{args.idle_seconds:.0f} s after the last run, in cores):\n")
    rows = []
    for r in results:
        ours = sum(r.cpu[name] for name in ("workers", "daemon", "postgres", "redis", "bench"))
        idle = r.idle_cpu_per_s
        sessions = "n/a" if r.pg_sessions is None else str(r.pg_sessions)
        per_device = ("n/a" if r.pg_sessions is None or not r.retrained
                      else f"{r.pg_sessions / r.retrained:.0f}")
        rows.append([r.side.round, r.side.label, fmt(r.window_s, 1), fmt(2 * r.window_s, 1),
                     fmt(r.cpu["workers"], 1), fmt(r.cpu["daemon"], 1),
                     fmt(r.cpu["postgres"], 1), fmt(r.cpu["redis"], 1), fmt(r.cpu["bench"], 1),
                     fmt(r.cpu["machine"] - ours, 1), sessions, per_device,
                     fmt(idle.get("daemon")), fmt(idle.get("postgres")),
                     fmt(idle.get("machine"))])
    print(bs.markdown_table(["round", "side", "window s", "core-s", "workers", "daemon",
                             "PostgreSQL", "Redis", "benchmark", "other processes",
                             "PG sessions", "PG sessions per device", "idle: daemon",
                             "idle: PostgreSQL", "idle: machine"], rows))
    print("\n(daemon = the daemon's process group: its code server and, on the default "
          "launcher, every run's `dagster api execute_run` process; benchmark = this script "
          "(it waits on the SQLite run log, not on PostgreSQL); other processes = the "
          "machine's busy time minus all of these, i.e. load from elsewhere. PG sessions: "
          "connections PostgreSQL accepted for the side's database in the window.)")

    print("\nRun start-up, RUN_STARTING -> RUN_START (s): launcher hand-off, broker, worker "
          "pick-up, instance open and job load before the run's first event; all rounds:\n")
    rows = []
    for kind in ("one", "two", "default"):
        if not by_kind[kind]:
            continue
        groups = ((("first run on its worker", True), ("later runs (warm worker)", False),
                   ("all runs", None)) if kind != "default"
                  else (("every run (fresh process)", None),))
        for name, which in groups:
            values = startup_of(by_kind[kind], which)
            med, top = median_max(values)
            rows.append([labels[kind], name, len(values), fmt(med), fmt(top),
                         fmt(min(values) if values else None),
                         fmt(median_of(startup_of(by_kind[kind], which, "handoff_s"))),
                         fmt(median_of(startup_of(by_kind[kind], which, "in_worker_s")))])
    print(bs.markdown_table(["side", "runs", "n", "median s", "max s", "min s",
                             "median hand-off (STARTING -> task received)",
                             "median in worker (received -> RUN_START)"], rows))

    print("\nPer-run phases (medians, s; queued = created -> RUN_STARTING, execution = "
          "RUN_START -> end), and what came before the window (not counted):\n")
    rows = []
    for r in results:
        queued = [x.queued_s for x in r.runs if x.queued_s is not None]
        execution = [x.execution_s for x in r.runs if x.execution_s is not None]
        per_device = [x.execution_s / x.devices for x in r.runs if x.execution_s is not None]
        workers = Counter(x.worker for x in r.runs)
        rows.append([r.side.round, r.side.label, len(r.runs), fmt(median_of(queued)),
                     fmt(median_of(execution)), fmt(median_of(per_device)),
                     ", ".join(f"{w} {n}" for w, n in sorted(workers.items())),
                     ", ".join(f"{k} {v:.1f}" for k, v in r.ready_s.items())])
    print(bs.markdown_table(["round", "side", "runs", "queued", "execution",
                             "execution per device", "runs per worker",
                             "ready after s (workers: warm-up done; daemon: first run)"], rows))

    if args.every_run:
        print("\nEvery run (s from its side's first run creation):\n")
        rows = []
        for r in results:
            origin = min(x.created for x in r.runs)
            for x in sorted(r.runs, key=lambda run: run.starting or math.inf):
                rows.append([r.side.key, x.run_id[:8], x.worker, x.devices, x.status,
                             fmt((x.starting or math.nan) - origin, 1), fmt(x.startup_s),
                             fmt(x.handoff_s), fmt(x.in_worker_s), fmt(x.execution_s),
                             "yes" if x.first_on_worker else ""])
        print(bs.markdown_table(["side", "run", "worker", "devices", "status", "STARTING at",
                                 "start-up", "hand-off", "in worker", "execution",
                                 "first on worker"], rows))

    problems = [f"{r.side.key}: {p}" for r in results for p in r.problems]
    if problems:
        print("\nProblems: " + "; ".join(problems))

    parts = []
    if ratios:
        ratio = statistics.median(ratios)
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        parts.append(f"2 workers/1 worker throughput {ratio:.2f}x (median of {len(ratios)} "
                     f"round(s); {fmt(median_of([r.per_minute for r in by_kind['two']]))} vs "
                     f"{fmt(median_of([r.per_minute for r in by_kind['one']]))} devices/min; "
                     f"target >= {TARGET_RATIO}: {verdict})")
    celery = by_kind["one"] + by_kind["two"]
    warm, first = startup_of(celery, False), startup_of(celery, True)
    if warm:
        med, top = median_max(warm)
        verdict = ("met" if top <= TARGET_STARTUP_S else
                   "median met, max NOT met" if med <= TARGET_STARTUP_S else "NOT met")
        text = (f"warm-worker start-up median {med:.2f} s, max {top:.2f} s (target <= "
                f"{TARGET_STARTUP_S:.0f} s: {verdict}); first run on a worker median "
                f"{fmt(median_of(first))} s")
        baseline = startup_of(by_kind["default"], None)
        if baseline and med > 0:
            text += (f"; default launcher median {statistics.median(baseline):.2f} s, "
                     f"default/warm {statistics.median(baseline) / med:.1f}x")
        parts.append(text)
    print()
    print(bs.ratio_line("scale_out", "; ".join(parts) or "no result"))


# -- main -------------------------------------------------------------------------------------


def wait_for_quiet(max_load: float, max_wait_s: float) -> None:
    begun = time.monotonic()
    while os.getloadavg()[0] >= max_load and time.monotonic() - begun < max_wait_s:
        print(f"(load {bs.load_average()}: waiting for the 1-minute average < {max_load})",
              flush=True)
        time.sleep(30)
    late = os.getloadavg()[0] >= max_load
    print(f"(load {bs.load_average()} after waiting {time.monotonic() - begun:.0f} s"
          f"{'; wait limit reached, running anyway' if late else ''})", flush=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # runs every finally: process groups, servers, folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=None,
                        help="fleet size of the two Celery sides (40; 20 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="20 devices, one round, 3 baseline runs (about half the time)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of (1 worker, 2 workers, default launcher), the Celery "
                             "sides alternating in order (2; 1 with --quick)")
    parser.add_argument("--days", type=int, default=2, help="days of readings = RETRAIN_DAYS (2)")
    parser.add_argument("--batch-size", type=int, default=5, help="FLEET_BATCH_SIZE (5)")
    parser.add_argument("--model", default="hist_gradient_boosting", help="MODEL_TYPE")
    parser.add_argument("--baseline-runs", type=int, default=None,
                        help="single-device runs through the default launcher per round "
                             "(4; 3 with --quick)")
    parser.add_argument("--daemon-cpus", default="",
                        help="taskset CPU list for the daemon (default: not pinned)")
    parser.add_argument("--idle-seconds", type=float, default=8,
                        help="CPU use with nothing to run is measured this long per side (8)")
    parser.add_argument("--every-run", action="store_true", help="also print a row per run")
    parser.add_argument("--timeout", type=float, default=400, help="seconds allowed per side")
    parser.add_argument("--max-load", type=float, default=None,
                        help="first wait for the 1-minute load average to drop below this")
    parser.add_argument("--max-wait", type=float, default=1200,
                        help="longest wait for --max-load, seconds (1200)")
    args = parser.parse_args(argv)
    devices = args.devices or (20 if args.quick else 40)
    args.rounds = args.rounds or (1 if args.quick else 2)
    baseline_runs = args.baseline_runs or (3 if args.quick else 4)
    if not {0, 1} <= os.sched_getaffinity(0):
        print("scale_out pins workers to CPUs 0 and 1, which this process may not use",
              file=sys.stderr)
        return 2
    if shutil.which("taskset") is None:
        print("scale_out needs taskset (util-linux)", file=sys.stderr)
        return 2

    bs.quiet_warnings()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if args.max_load is not None:
        wait_for_quiet(args.max_load, args.max_wait)
    began = time.perf_counter()
    print(bs.header("Scale-out on Celery workers: 2 pinned workers vs 1, and warm run start-up"))
    print()
    base = Path(tempfile.mkdtemp(prefix="solar_bench_scale_out_"))
    processes = Processes()
    results: list[SideResult] = []
    try:
        with throwaway_servers(base) as servers:
            db_index = 0
            for round_number in range(1, args.rounds + 1):
                for side in sides_of_round(round_number, devices, args.batch_size, baseline_runs):
                    db_index += 1
                    print(f"(round {round_number}, {side.label}: {side.devices} devices, "
                          f"load {bs.load_average()})", flush=True)
                    result = run_side(side, base, servers, db_index, args, processes)
                    print(f"(round {round_number}, {side.label}: {len(result.runs)} runs, "
                          f"{result.window_s:.1f} s from first creation to last end, "
                          f"load {bs.load_average()})", flush=True)
                    results.append(result)
    finally:
        processes.stop_all()
        if os.environ.get("BENCH_KEEP") == "1":
            print(f"(kept {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print()
    report(results, args, devices)
    command = " ".join(["python benchmarks/scale_out.py", *(argv if argv is not None
                                                             else sys.argv[1:])])
    print(f"\n_Reproduce: `{command}` ({time.perf_counter() - began:.0f} s on this machine this "
          f"time; load at end {bs.load_average()})._")
    return 0


if __name__ == "__main__":
    sys.exit(main())
