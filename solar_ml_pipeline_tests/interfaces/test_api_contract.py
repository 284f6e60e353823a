"""The HTTP API against its own OpenAPI document: schemathesis, every check and every phase
(examples, coverage, fuzzing, stateful), a fixed seed, on a real uvicorn server whose store
holds a device retrained three times (versions, pointer history, realised scores, readings
of the last hours to predict from), a device on smart persistence and a failed run.

Three runs, one per way the server can be set up and called:
- reads open, writes disabled (API_TOKEN unset): every write is a declared 401/403, so the
  fuzzing starts no retrain;
- both tokens set, the read token sent: reads behind API_READ_TOKEN, writes a declared 403;
- both tokens set, the write token sent: reads and real deletes (the stateful phase lists
  runs, deletes them and checks they are gone). POST /api/ml/retrain is left out of this
  run: each request it accepts is a Dagster run (test_api and test_api_guards retrain for
  real, the 504 included).
Set CONTRACT_MAX_EXAMPLES (default 25) and CONTRACT_SEED to fuzz harder or elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from solar_ml_pipeline.config import Settings, settings_from_env
from solar_ml_pipeline.forecasting.scoring import score_period
from solar_ml_pipeline.readings.simulator import simulate_readings
from solar_ml_pipeline.readings.sites import DEFAULT_SITE
from solar_ml_pipeline.storage.run_records import utc_now
from solar_ml_pipeline_tests.forecasting.test_backtest import DAY, FIRST_CUTOFF, replay_retrains
from solar_ml_pipeline_tests.interfaces.test_api import serving
from solar_ml_pipeline_tests.interfaces.test_operations import (
    put_on_fallback,
    run_record,
    save_constant_version,
    write_recent_readings,
)

pytestmark = pytest.mark.slow

WRITE_TOKEN = "contract-write-token-0123456789abcdef"
READ_TOKEN = "contract-read-token-0123456789abcdef"
SEED = int(os.environ.get("CONTRACT_SEED", "20260301"))
MAX_EXAMPLES = int(os.environ.get("CONTRACT_MAX_EXAMPLES", "25"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
OPERATIONS = 11  # with /api/ml/predict/fleet (issue 18)
# The one rule of the document a schema cannot state: a backtest's end is after its start and
# at most 400 days later, so two schema-valid times are often a (declared) 422.
CONFIG = """
[[operations]]
include-path = "/api/ml/backtest"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "422"]
"""


@pytest.fixture(scope="module")
def contract_home(tmp_path_factory) -> Path:
    """tracker01: three daily retrains in March (each promoted), two scored periods, and
    simulated readings of the last three hours; fb on smart persistence with fresh readings;
    a failed run."""
    home = tmp_path_factory.mktemp("contract") / "home"
    replay = replay_retrains(home, [FIRST_CUTOFF + i * DAY for i in range(3)])
    for day in range(2):
        start = FIRST_CUTOFF + day * DAY
        score_period(replay.settings, replay.store, replay.registry, "tracker01",
                     start.strftime("%Y-%m-%d"), start, start + DAY)
    now = utc_now().replace(second=0, microsecond=0)
    recent = simulate_readings("tracker01", start=now - timedelta(hours=3), end=now,
                               interval_minutes=1, seed=5, site=DEFAULT_SITE)
    replay.store.write_readings(recent.to_dict("records"))
    save_constant_version(replay.registry, "fb", 111.0, 1)
    put_on_fallback(replay.registry, "fb")
    write_recent_readings(replay.store, "fb", now - timedelta(minutes=1))
    replay.store.upsert_run(run_record("tracker01", now - timedelta(days=1), status="failed"))
    replay.store.close()
    return home


def settings_for(home: Path, **env: str) -> Settings:
    return settings_from_env({"SOLAR_ML_HOME": str(home), "RETRAIN_DAYS": "7",
                              "PERIODS_START": "2026-01-01", **env})


def schemathesis(url: str, workdir: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`schemathesis run` with every check and phase: its output and its JSON report."""
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    report = workdir / "report.json"
    command = [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{url}/openapi.json",
               "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
               "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
               "--no-color", "--generation-database", "none",
               "--report", "json", "--report-json-path", str(report), *args]
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                          cwd=workdir)
    return done, json.loads(report.read_text()) if report.exists() else {}


SETUPS = {
    "reads-open-writes-disabled": ({}, [], OPERATIONS),
    "read-token": ({"API_TOKEN": WRITE_TOKEN, "API_READ_TOKEN": READ_TOKEN},
                   ["-H", f"Authorization: Bearer {READ_TOKEN}"], OPERATIONS),
    "write-token": ({"API_TOKEN": WRITE_TOKEN, "API_READ_TOKEN": READ_TOKEN},
                    ["-H", f"Authorization: Bearer {WRITE_TOKEN}",
                     "--exclude-path", "/api/ml/retrain"], OPERATIONS - 1),
}


@pytest.mark.parametrize("setup", list(SETUPS))
def test_every_answer_of_the_api_matches_its_openapi_document(contract_home, tmp_path, setup):
    env, args, operations = SETUPS[setup]
    started = time.monotonic()
    with serving(settings_for(contract_home, **env)) as url:
        done, report = schemathesis(url, tmp_path, *args)
    cases = report.get("test_cases", {})
    print(f"{setup}: schemathesis {report.get('schemathesis_version')} seed {SEED}, "
          f"{report.get('operations', {}).get('tested')} operations, "
          f"{cases.get('generated')} test cases, {cases.get('unique_failures')} failures, "
          f"{time.monotonic() - started:.1f} s")
    assert done.returncode == 0 and report.get("failures") == [], (
        f"schemathesis found failures:\n{done.stdout[-30000:]}\n{done.stderr[-3000:]}")
    assert report["operations"]["tested"] == operations, done.stdout[-5000:]
    assert {name: phase["status"] for name, phase in report["phases"].items()} == dict.fromkeys(
        ("examples", "coverage", "fuzzing", "stateful"), "success"), done.stdout[-5000:]
    assert report["errors"] == [] and cases["with_failures"] == 0
