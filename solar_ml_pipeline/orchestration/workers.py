"""Warm Celery workers that execute whole retrain runs (dagster-celery's run launcher).

With CELERY_BROKER_URL set, the daemon hands each run to the broker and a `solar-ml worker`
on any host executes it in one of its long-lived pool processes: a batch pays no fresh
interpreter, only the run itself. Every host shares the Dagster instance (PostgreSQL,
DAGSTER_PG_URL) and the model store (MODEL_DIR, mounted wherever it is on that host).
"""

from __future__ import annotations

import socket
import sys

from solar_ml_pipeline.config import ConfigError, Settings

DEFAULT_QUEUE = "dagster"
APP_MODULE = "solar_ml_pipeline.orchestration.celery_app"


def build_app(settings: Settings):  # noqa: ANN201 - a celery.Celery, imported lazily
    from celery.signals import worker_process_init
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_execute_job_task, create_resume_job_task

    broker = settings.celery_broker_url
    app = make_app(app_args={"broker": broker, "backend": settings.celery_backend_url or broker,
                             "include": [], "config_source": {},
                             "task_default_queue": DEFAULT_QUEUE})
    # A worker reserves only the run it executes (acks_late with a prefetch of one), so a
    # second run goes to an idle worker instead of queueing behind the first on a busy one.
    # result_extended: the backend also keeps which worker ran a run (debug info, tests).
    app.conf.update(worker_prefetch_multiplier=1, task_acks_late=True, result_extended=True,
                    broker_connection_retry_on_startup=True)
    create_execute_job_task(app)
    create_resume_job_task(app)

    @worker_process_init.connect(weak=False)
    def warm_up(**_: object) -> None:
        """Each pool process imports the heavy modules and opens the shared instance once,
        before its first run (the PostgreSQL storage alone is some 600 modules)."""
        import dagster as dg

        import solar_ml_pipeline.orchestration.definitions  # noqa: F401 - imported to warm it

        with dg.DagsterInstance.get() as instance:
            instance.get_runs(limit=1)

    return app


def worker_argv(settings: Settings, *, queue: str, concurrency: int, name: str | None) -> list[str]:
    """The celery worker command line for this project's app."""
    if not settings.celery_broker_url:
        raise ConfigError("solar-ml worker needs CELERY_BROKER_URL (e.g. redis://host:6379/0): "
                          "the broker the daemon hands runs to")
    if not settings.dagster_pg_url:
        raise ConfigError("solar-ml worker needs DAGSTER_PG_URL: a worker records its runs in "
                          "the shared Dagster instance, which SQLite cannot be across hosts")
    return [sys.executable, "-m", "celery", "-A", APP_MODULE, "worker", "-Q", queue,
            "--concurrency", str(concurrency), "--prefetch-multiplier", "1",
            "--loglevel", "INFO", "-n", name or f"solar-ml-{socket.gethostname()}@%h"]
