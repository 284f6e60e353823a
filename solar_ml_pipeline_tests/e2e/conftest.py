"""One real `dagster dev` (webserver + daemon + code server) shared by the end-to-end tests.

It runs on a temporary, absolute DAGSTER_HOME prepared from the project's dagster.yaml
template and on a free loopback port, in its own process group: teardown kills the group
and asserts nothing of it is left, whether the tests passed or not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from solar_ml_pipeline.config import Settings, settings_from_env
from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
from solar_ml_pipeline.storage import open_store
from solar_ml_pipeline_tests.conftest import CONFIG_VARIABLES, simulate_into
from solar_ml_pipeline_tests.e2e.dagster_api import LOOPBACK, DagsterApi, wait_until
from solar_ml_pipeline_tests.e2e.webhook_receiver import WebhookReceiver

DEVICES = ("tracker01", "tracker02")
# The schedule's first period starts this long after the fixture begins (rounded up to a whole
# minute): the daemon must be up before it (a schedule first seen after its tick time does not
# catch up), while the other tests' runs may still be going.
SCHEDULE_LEAD = timedelta(seconds=90)
STARTUP_TIMEOUT_S = 120
STOP_GRACE_S = 10


@dataclass
class DagsterDev:
    url: str
    api: DagsterApi
    process: subprocess.Popen
    settings: Settings
    webhook: WebhookReceiver
    started_at: datetime
    retrain_at: datetime  # UTC instant at which RETRAIN_TIME next occurs: the schedule fires
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)


def log_tail(log_path: Path, lines: int = 60) -> str:
    text = log_path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def next_whole_minute(when: datetime) -> datetime:
    floor = when.replace(second=0, microsecond=0)
    return floor if floor == when else floor + timedelta(minutes=1)


def live_group_members(pgid: int) -> list[int]:
    """Processes of the group that are still alive (zombies, already dead, are not counted)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel whether the group has any member
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _ppid, pgrp = text[text.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_process_group(process: subprocess.Popen) -> list[int]:
    """SIGTERM the group, SIGKILL whatever is left after a grace period; returns survivors."""
    pgid = process.pid  # start_new_session=True: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)
    wait_until(lambda: not live_group_members(pgid), STOP_GRACE_S, 0.2)
    return live_group_members(pgid)


def _server_info(url: str) -> bool:
    try:
        with LOOPBACK.open(f"{url}/server_info", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_dagster_dev(env: Mapping[str, str], port: int, cwd: Path,
                      log_path: Path) -> subprocess.Popen:
    """`dagster dev` on 127.0.0.1:port in its own session: its pid is the group to kill.
    Output is appended to log_path, so a restart continues the same log."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-m", "solar_ml_pipeline.definitions",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until_serving(api: DagsterApi, process: subprocess.Popen, log_path: Path,
                       timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Fail the test unless the webserver answers and our code location loads in time."""
    deadline = time.monotonic() + timeout_s
    while not _server_info(api.base_url):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"dagster dev did not serve /server_info:\n{log_tail(log_path)}")
        time.sleep(0.5)
    while not api.find_repository():
        errors = api.location_errors()
        if errors or time.monotonic() > deadline:
            pytest.fail(f"code location did not load: {errors}\n{log_tail(log_path)}")
        time.sleep(0.5)


@contextlib.contextmanager
def running_dagster_dev(root: Path, devices: Mapping[str, float],
                        extra_env: Mapping[str, str] | None = None,
                        schedule_lead: timedelta = SCHEDULE_LEAD) -> Iterator[DagsterDev]:
    """`dagster dev` on a fresh project home whose store holds `devices` (id -> days of
    5-minute readings up to now); the schedule's period starts `schedule_lead` from now."""
    started_at = datetime.now(UTC)
    retrain_at = next_whole_minute(started_at + schedule_lead)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with WebhookReceiver() as webhook:
        test_env = {
            "SOLAR_ML_HOME": str(root / "home"),
            "DAGSTER_HOME": str((root / "dagster_home").absolute()),
            "MODEL_TYPE": "hist_gradient_boosting",
            "PERIODS_START": (started_at - timedelta(days=30)).date().isoformat(),
            "TIMEZONE": "UTC",
            "RETRAIN_TIME": retrain_at.strftime("%H:%M"),
            "ALERT_WEBHOOK_URL": webhook.url,
            "MAX_CONCURRENT_RUNS": "2",
            **(extra_env or {}),
        }
        settings = settings_from_env(test_env)
        previous_home = os.environ.get("DAGSTER_HOME")
        try:
            ensure_dagster_home(settings)  # the template users get, unchanged
        finally:
            if previous_home is None:
                os.environ.pop("DAGSTER_HOME", None)
            else:
                os.environ["DAGSTER_HOME"] = previous_home

        store = open_store(settings)
        try:
            for seed, (device_id, days) in enumerate(devices.items()):
                # readings up to "now" (and a day beyond), so the current period's window is full
                simulate_into(store, device_id, end=started_at, days=days, seed=seed,
                              interval_minutes=5)
        finally:
            store.close()

        env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
        env.update(test_env, DAGSTER_WEBSERVER_URL=url, PYTHONUNBUFFERED="1",
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        log_path = root / "dagster_dev.log"
        process = start_dagster_dev(env, port, root, log_path)
        dev = DagsterDev(url=url, api=DagsterApi(url), process=process, settings=settings,
                         webhook=webhook, started_at=started_at, retrain_at=retrain_at,
                         log_path=log_path)
        try:
            wait_until_serving(dev.api, process, log_path)
            assert live_group_members(process.pid), "the process-group check sees no live member"
            yield dev
        finally:
            survivors = stop_process_group(process)
            assert not survivors, f"processes of dagster dev survived teardown: {survivors}"


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory) -> Iterator[DagsterDev]:
    with running_dagster_dev(tmp_path_factory.mktemp("e2e"), dict.fromkeys(DEVICES, 10)) as dev:
        yield dev
