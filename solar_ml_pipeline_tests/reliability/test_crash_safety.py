"""SIGKILL `solar-ml retrain` at random moments: the model store and the run log stay sound.

The kills are seeded and spread over one measured run: a quarter over start-up (imports,
Dagster instance, reading the window), the rest over training, saving and promotion. After
each kill the store is audited from the files themselves (support.audit_model_store). The
whole test costs about 12 retrains: 20 trials averaging ~0.5 of a run, plus two full runs.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from solar_ml_pipeline.model_store.registry import STALE_AGE_S, TEMP_PREFIX, ModelRegistry
from solar_ml_pipeline_tests.conftest import PERIOD
from solar_ml_pipeline_tests.reliability.conftest import DAYS
from solar_ml_pipeline_tests.reliability.support import CLI, audit_model_store

pytestmark = pytest.mark.slow

TRIALS = 20
SEED = 20260310
RUN_TIMEOUT_S = 300


def kill_delays(full_run_s: float, trials: int = TRIALS, seed: int = SEED) -> list[float]:
    """Seconds after launch to kill each trial: 1 in 4 during start-up, the rest later.

    A run's work (reading, training, saving, promoting, recording) ends at about 0.7 of its
    wall time; the rest is Dagster's teardown and the interpreter's exit.
    """
    rng = random.Random(seed)
    return [full_run_s * (rng.uniform(0.05, 0.4) if trial % 4 == 0 else rng.uniform(0.4, 0.8))
            for trial in range(trials)]


def retrain_command(device_id: str) -> list[str]:
    return [*CLI, "retrain", "--device", device_id, "--period", PERIOD, "--days", DAYS]


def kill_after(command: list[str], env: dict[str, str], delay_s: float) -> bool:
    """Run the command and SIGKILL it (its whole process group) after delay_s.

    True when the kill landed, False when the run had already finished by then.
    """
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        process.wait(timeout=delay_s)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # start_new_session: the group id is the pid
        process.wait(timeout=30)
        return True


def test_sigkill_at_random_moments_never_leaves_a_torn_model_or_a_false_success_record(
    env_for_subprocess, settings, store, device_with_readings
):
    device_id = device_with_readings
    registry = ModelRegistry(settings.model_dir)
    command = retrain_command(device_id)

    started = time.monotonic()
    first = subprocess.run(command, env=env_for_subprocess, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S, check=False)
    full_run_s = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    assert len(audit_model_store(registry, store, device_id)) == 1

    landed = 0
    for trial, delay in enumerate(kill_delays(full_run_s)):
        landed += kill_after(command, env_for_subprocess, delay)
        try:
            audit_model_store(registry, store, device_id)
        except AssertionError as exc:
            raise AssertionError(f"trial {trial}, killed after {delay:.2f}s: {exc}") from exc
    assert landed >= TRIALS // 2, f"only {landed} of {TRIALS} kills landed before the run ended"

    # Temp files a killed writer left: stale ones go with the next save, a live writer's stay.
    stale_at = time.time() - STALE_AGE_S - 60
    planted = registry.versions_dir(device_id) / f"{TEMP_PREFIX}model_planted.pkl.0123456789ab"
    planted.write_bytes(b"half a pickle")
    leftovers = [*settings.model_dir.rglob(f"{TEMP_PREFIX}*")]
    for path in leftovers:
        os.utime(path, (stale_at, stale_at))
    live = registry.device_dir(device_id) / f"{TEMP_PREFIX}current_model.json.live0000000"
    live.write_bytes(b"{}")

    final = subprocess.run(command, env=env_for_subprocess, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S, check=False)
    assert final.returncode == 0, final.stderr
    assert [path for path in leftovers if path.exists()] == []
    assert live.exists()
    versions = audit_model_store(registry, store, device_id)
    newest = store.list_runs(device_id=device_id, limit=1).runs[0]
    assert newest["status"] == "success" and newest["version"] in versions
