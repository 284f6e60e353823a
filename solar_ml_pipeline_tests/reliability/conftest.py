"""Fixtures of the reliability tests: a device with readings, and the CLI run in-process."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from solar_ml_pipeline_tests.conftest import PERIOD, simulate_into

DEVICE = "tracker01"
# Two days of one-minute readings: enough rows to train, quick to train on.
DAYS = "2"


@pytest.fixture
def device_with_readings(store) -> str:
    simulate_into(store, DEVICE, days=3)
    return DEVICE


@pytest.fixture
def user_environment(monkeypatch, test_env) -> dict[str, str]:
    """The test project's settings in os.environ, as `solar-ml` run by a user would see them."""
    for name, value in test_env.items():
        monkeypatch.setenv(name, value)
    return test_env


@pytest.fixture
def run_cli(user_environment, capsys) -> Callable[..., tuple[int, str, str]]:
    """`solar-ml ARGS` in this process: (exit code, stdout, stderr)."""
    from solar_ml_pipeline.interfaces.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse refusing the arguments
            code = exc.code
        captured = capsys.readouterr()
        return int(code), captured.out, captured.err

    return run


@pytest.fixture
def trained_device(run_cli, device_with_readings) -> str:
    """A device whose first retrain succeeded and promoted a version."""
    code, out, err = run_cli("retrain", "--device", device_with_readings, "--period", PERIOD,
                             "--days", DAYS)
    assert code == 0, out + err
    return device_with_readings
