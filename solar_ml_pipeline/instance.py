"""The one Dagster instance (DAGSTER_HOME) shared by the CLI, the UI, the daemon and the API."""

from __future__ import annotations

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
# A run whose worker dies (daemon restart, OOM kill) is marked failed instead of hanging.
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
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


def dagster_yaml_text(settings: Settings) -> str:
    return DAGSTER_YAML.format(max_runs=settings.max_concurrent_runs)


def ensure_dagster_home(settings: Settings) -> Path:
    """Create DAGSTER_HOME with the template dagster.yaml if absent and export it."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        tmp = config.with_suffix(".yaml.tmp")
        tmp.write_text(dagster_yaml_text(settings))
        os.replace(tmp, config)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
