"""The one Dagster instance (DAGSTER_HOME) shared by the CLI, the UI, the daemon and the API."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from solar_ml_pipeline.config import Settings

DAGSTER_YAML = """\
# Written by solar-ml on first use; edit freely, it is not overwritten.
# Runs queue and at most {max_runs} run at once; one run per device at a time, so a fleet's
# schedule tick queues instead of oversubscribing the machine.
concurrency:
  runs:
    max_concurrent_runs: {max_runs}
    tag_concurrency_limits:
      - key: dagster/partition/device
        value:
          applyLimitPerUniqueValue: true
        limit: 1
# A freed slot is refilled within a second (Dagster's default poll is 5 s, which left a
# 7-day retrain's slot empty for a third of its run time: benchmarks/RESULTS.md, fleet).
run_queue:
  dequeue_interval_seconds: 1
# A run whose worker dies is marked failed instead of hanging: by its code server at once
# (OOM kill), or, when the code server died with it (host or `dagster dev` restart), after
# max_runtime_seconds: the default run launcher cannot ask a dead worker how it is, and a
# run left "started" would hold its device's queue slot for good.
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_runtime_seconds: 3600
  max_resume_run_attempts: 0
  poll_interval_seconds: 30
# Old tick history is purged; run records and their logs are kept.
retention:
  schedule:
    purge_after_days: 90
  sensor:
    purge_after_days:
      skipped: 7
      failure: 30
      success: -1
telemetry:
  enabled: false
"""


EMBEDDED_STORAGE = """\
# Dagster's SQLite files in this folder (the files stock Dagster keeps here), with the event
# log's connections kept open between events (orchestration/event_log.py: 3x cheaper events,
# benchmarks/RESULTS.md). Remove this section to get Dagster's stock SQLite storage.
storage:
  custom:
    module: solar_ml_pipeline.orchestration.event_log
    class: EmbeddedSqliteStorage
    config:
      base_dir: {base_dir}
"""

POSTGRES_STORAGE = """\
# Runs, events, schedules and partitions in PostgreSQL (DAGSTER_PG_URL), shared by the
# webserver, the daemon and every worker host; each process keeps one connection per storage
# (orchestration/postgres_storage.py) instead of a new PostgreSQL session per event.
storage:
  custom:
    module: solar_ml_pipeline.orchestration.postgres_storage
    class: PooledPostgresStorage
    config:
      postgres_url:
        env: DAGSTER_PG_URL
"""

CELERY_LAUNCHER = """\
# Runs execute inside warm Celery workers (`solar-ml worker`) on any host, through the broker
# (CELERY_BROKER_URL); run monitoring asks the result backend (CELERY_BACKEND_URL, else the
# broker) whether a run's worker still lives.
run_launcher:
  module: dagster_celery.launcher
  class: CeleryRunLauncher
  config:
    default_queue: dagster
    broker:
      env: CELERY_BROKER_URL
    backend:
      env: {backend_variable}
"""


class InstanceMismatch(ValueError):
    """DAGSTER_HOME's dagster.yaml was written for another deployment than the settings say."""


def dagster_yaml_text(settings: Settings, *, pooled_sqlite: bool = True) -> str:
    text = DAGSTER_YAML.format(max_runs=settings.max_concurrent_runs)
    if settings.dagster_pg_url:
        text += POSTGRES_STORAGE
    elif pooled_sqlite:  # the folder itself, not $DAGSTER_HOME: an instance opened by path
        # from a process whose DAGSTER_HOME differs must still find its runs
        home = str(settings.dagster_home.resolve())
        text += EMBEDDED_STORAGE.format(base_dir=json.dumps(home))
    if settings.celery_broker_url:
        text += CELERY_LAUNCHER.format(backend_variable="CELERY_BACKEND_URL"
                                       if settings.celery_backend_url else "CELERY_BROKER_URL")
    return text


def check_matches(config: Path, settings: Settings) -> None:
    """Refuse a dagster.yaml that would silently keep SQLite or the default launcher."""
    text = config.read_text()
    for variable, wanted, needle in (
            ("DAGSTER_PG_URL", settings.dagster_pg_url, "DAGSTER_PG_URL"),
            ("CELERY_BROKER_URL", settings.celery_broker_url, "CeleryRunLauncher")):
        if wanted and needle not in text:
            raise InstanceMismatch(
                f"{variable} is set but {config} was written without it: delete that file "
                "(solar-ml writes it again from the template) or add the section by hand")
    written = _embedded_base_dir(text)
    if written is not None and Path(written) != config.parent.resolve():
        raise InstanceMismatch(
            f"{config} keeps the instance's files in {written}, not in its own folder (was "
            "DAGSTER_HOME moved?): set base_dir there to this folder, or delete the file")


def _embedded_base_dir(text: str) -> str | None:
    import yaml

    storage = (yaml.safe_load(text) or {}).get("storage")
    custom = storage.get("custom") if isinstance(storage, dict) else None
    if not isinstance(custom, dict) or custom.get("class") != "EmbeddedSqliteStorage":
        return None
    base_dir = (custom.get("config") or {}).get("base_dir")
    return base_dir if isinstance(base_dir, str) else None


# Written once the instance's storage exists; its absence sends a process through the lock.
INITIALISED_MARKER = ".solar_ml_initialised"
INIT_LOCK = ".solar_ml_init.lock"


def ensure_dagster_home(settings: Settings) -> Path:
    """Create DAGSTER_HOME with the template dagster.yaml if absent, export it, and create
    the instance's storage once."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        tmp = config.with_suffix(f".yaml.tmp{os.getpid()}")
        tmp.write_text(dagster_yaml_text(settings))
        os.replace(tmp, config)
    check_matches(config, settings)
    os.environ["DAGSTER_HOME"] = str(home)
    for variable, value in (("DAGSTER_PG_URL", settings.dagster_pg_url),
                            ("CELERY_BROKER_URL", settings.celery_broker_url),
                            ("CELERY_BACKEND_URL", settings.celery_backend_url)):
        if value:  # dagster.yaml reads them from the environment (a .env file included)
            os.environ[variable] = value
    initialise_storage_once(home)
    return home


def initialise_storage_once(home: Path) -> None:
    """Create the instance's SQLite schemas in one process at a time.

    Dagster creates and stamps them on first open without a lock, so processes opening a new
    DAGSTER_HOME together (cron retrains of several devices on a fresh install) fail, and can
    leave the instance unusable ("more than one head present" on every later open).
    """
    marker = home / INITIALISED_MARKER
    if marker.exists():
        return
    import dagster as dg

    with open(home / INIT_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if marker.exists():
            return
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.get_runs(limit=1)
            instance.get_dynamic_partitions("device")
            instance.schedule_storage.all_instigator_state()  # type: ignore[union-attr]
            instance.event_log_storage.get_event_records(
                dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION),
                limit=1,
            )
        marker.write_text("the Dagster instance storage here is initialised\n")
