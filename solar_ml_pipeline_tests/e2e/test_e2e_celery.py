"""Scale-out on an existing engine: the Dagster instance on PostgreSQL, runs executed by two
Celery workers (two "hosts": separate processes, each in its own network namespace where the
machine allows it, reaching the servers over a veth pair, and each with its own DAGSTER_HOME
and the shared model folder mounted at its own path), Redis as the broker. Real servers.

Every process is started from the README's deployment files: the commands of
`deploy/systemd/*.service` and the environment of `deploy/solar-ml.env`, with this test's
servers and folders filled in (readings and run log stay in SQLite: no MongoDB here).

The tests run in file order on one deployment: a 40-device fleet discovered and retrained in
batches on both workers, then a worker killed with SIGKILL in the middle of a batch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from solar_ml_pipeline.config import settings_from_env
from solar_ml_pipeline.model_store.registry import ModelRegistry
from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
from solar_ml_pipeline.orchestration.partitions import period_key_at
from solar_ml_pipeline.orchestration.workers import build_app
from solar_ml_pipeline.storage import open_store
from solar_ml_pipeline_tests.conftest import CONFIG_VARIABLES, simulate_into
from solar_ml_pipeline_tests.deployment import deploy_env, unit_command
from solar_ml_pipeline_tests.e2e.conftest import (
    free_port,
    stop_process_group,
    wait_until_serving,
)
from solar_ml_pipeline_tests.e2e.dagster_api import DagsterApi, wait_until
from solar_ml_pipeline_tests.reliability.support import audit_model_store
from solar_ml_pipeline_tests.reliability.test_daemon_restart import shorten_run_monitoring
from solar_ml_pipeline_tests.servers import host_networks, postgres_server, redis_server

pytest.importorskip("dagster_celery")
pytest.importorskip("dagster_postgres")
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FLEET = [f"fleet{i:02d}" for i in range(40)]
HOSTS = ("host_a", "host_b")
MAX_RUNTIME_S = 45  # run monitoring gives up on a run whose worker died after this


TEST_OWN = ("DAGSTER_PG_URL", "CELERY_BROKER_URL", "DAGSTER_HOME", "MODEL_DIR", "SOLAR_ML_HOME",
            "MONGODB_URI")


class Deployment:
    def __init__(self, root: Path, env: dict[str, str], networks: dict | None) -> None:
        self.root, self.env, self.networks = root, env, networks
        self.workers: dict[str, subprocess.Popen] = {}
        self.dev: subprocess.Popen | None = None  # the webserver
        self.daemon: subprocess.Popen | None = None
        self.api: DagsterApi | None = None

    def host_env(self, host: str) -> dict[str, str]:
        env = {**self.env, "DAGSTER_HOME": str(self.root / host / "dagster_home"),
               "MODEL_DIR": str(self.root / host / "models")}
        network = (self.networks or {}).get(host)
        if network:  # the servers at this host's gateway, not at loopback
            for name in ("DAGSTER_PG_URL", "CELERY_BROKER_URL"):
                env[name] = network.url(env[name])
        return env

    def start_worker(self, host: str) -> None:
        log = open(self.root / f"{host}.log", "ab")  # noqa: SIM115 - closed with the process
        command = unit_command("solar-ml-worker@.service", host)
        network = (self.networks or {}).get(host)
        self.workers[host] = subprocess.Popen(
            network.command(command) if network else command, env=self.host_env(host),
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def settings(self, host: str = "daemon"):
        return settings_from_env(self.host_env(host))

    def records(self):
        store = open_store(self.settings())
        try:
            return store.list_runs(limit=1000).runs
        finally:
            store.close()

    def worker_of(self, run: dict) -> str:
        """Which host executed a run: the Celery backend keeps the worker's name."""
        app = build_app(self.settings())
        worker = app.AsyncResult(run["tags"]["dagster-celery/task_id"]).worker or ""
        return worker.split("@")[0]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("celery")
    with host_networks(HOSTS) as networks:
        gateways = tuple(network.gateway for network in (networks or {}).values())
        with postgres_server(gateways) as postgres, redis_server(root, gateways) as redis:
            yield root, postgres, redis, networks


@pytest.fixture
def redis_control(servers):
    return servers[2]


@pytest.fixture(scope="module")
def deployment(servers):
    root, postgres, redis, networks = servers
    if True:
        now = datetime.now(UTC)
        env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
        env.update(deploy_env(TEST_OWN))
        env.update({
            "SOLAR_ML_HOME": str(root / "shared"),  # readings and run log (MongoDB in production)
            "DAGSTER_PG_URL": postgres.url, "CELERY_BROKER_URL": redis.url,
            "FLEET_BATCH_SIZE": "5", "RETRAIN_ENABLED": "false",  # test-sized
            "RETRAIN_DAYS": "2", "TIMEZONE": "UTC", "MODEL_TYPE": "hist_gradient_boosting",
            "PERIODS_START": (now - timedelta(days=30)).date().isoformat(),
            "PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost",
        })
        (root / "shared" / "models").mkdir(parents=True)
        deployment = Deployment(root, env, networks)
        for host in (*HOSTS, "daemon"):  # the shared folder, mounted at each host's own path
            (root / host).mkdir()
            (root / host / "models").symlink_to(root / "shared" / "models")
            home = ensure_dagster_home(deployment.settings(host))
            shorten_run_monitoring(home, max_runtime_seconds=MAX_RUNTIME_S,
                                   poll_interval_seconds=5)
        store = open_store(deployment.settings())
        try:
            for seed, device_id in enumerate(FLEET):
                simulate_into(store, device_id, end=now, days=4, seed=seed, interval_minutes=1)
        finally:
            store.close()
        for host in HOSTS:
            deployment.start_worker(host)
        port = free_port()
        deployment.api = DagsterApi(f"http://127.0.0.1:{port}")
        log_path = root / "dagster_dev.log"
        webserver = [part.replace("0.0.0.0", "127.0.0.1").replace("3000", str(port))
                     for part in unit_command("solar-ml-webserver.service")]
        with open(log_path, "ab") as log:
            deployment.daemon, deployment.dev = (
                subprocess.Popen(command, env=deployment.host_env("daemon"), cwd=root,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                for command in (unit_command("solar-ml-daemon.service"), webserver))
        try:
            wait_until_serving(deployment.api, deployment.dev, log_path)
            yield deployment
        finally:
            stop_process_group(deployment.dev)
            stop_process_group(deployment.daemon)
            for process in deployment.workers.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=20)


def test_a_40_device_fleet_retrains_in_batches_on_both_workers_each_attempt_once(deployment):
    api = deployment.api
    runs = wait_until(lambda: (lambda r: r if len(r) >= 8 else None)(
        api.runs(tags={"solar/trigger": "discovery"})), 120) or []
    assert len(runs) == 8, runs  # 40 devices in batches of 5
    statuses = api.wait_for_runs([r["runId"] for r in runs], 600)
    log = (deployment.root / "dagster_dev.log").read_text()[-3000:]
    assert set(statuses.values()) == {"SUCCESS"}, f"{statuses}\n{log}"
    records = deployment.records()
    assert Counter(r["device_id"] for r in records) == Counter(FLEET)  # one record each
    assert {r["status"] for r in records} == {"success"}
    registry = ModelRegistry(deployment.root / "shared" / "models")
    for device_id in FLEET:
        assert len(registry.list_versions(device_id)) == 1
    finished = {r["runId"]: r for r in api.runs(run_ids=list(statuses))}
    workers = Counter(deployment.worker_of(run) for run in finished.values())
    assert set(workers) == set(HOSTS), workers  # both hosts took runs
    if deployment.networks:  # each "host" had a network of its own, no loopback to share
        spaces = {os.readlink(f"/proc/{p.pid}/ns/net") for p in deployment.workers.values()}
        assert len(spaces) == len(HOSTS) and os.readlink("/proc/self/ns/net") not in spaces


def test_a_worker_killed_mid_batch_fails_its_run_and_the_other_worker_goes_on(deployment):
    api = deployment.api
    period = period_key_at(deployment.settings(), datetime.now(UTC) - timedelta(days=1))
    launched = []
    for first, last in ((FLEET[0], FLEET[9]), (FLEET[10], FLEET[19])):
        launched.append(api.launch_run("retrain_job", {
            "dagster/asset_partition_range_start": f"{first}|{period}",
            "dagster/asset_partition_range_end": f"{last}|{period}"}))
    in_batch = {run_id: [] for run_id in launched}

    def one_mid_batch():
        for record in deployment.records():
            if record.get("dagster_run_id") in in_batch and record["period"] == period:
                in_batch[record["dagster_run_id"]].append(record["device_id"])
        started = [run for run in api.runs(run_ids=launched) if run["status"] == "STARTED"]
        return next((run for run in started if 0 < len(set(in_batch[run["runId"]])) < 10), None)

    victim_run = wait_until(one_mid_batch, 180, 0.2)
    assert victim_run, api.runs(run_ids=launched)
    victim = deployment.worker_of(victim_run)
    os.killpg(deployment.workers[victim].pid, signal.SIGKILL)  # the host goes down

    statuses = api.wait_for_runs(launched, MAX_RUNTIME_S + 180)
    survivor_run = next(r for r in launched if r != victim_run["runId"])
    assert statuses[victim_run["runId"]] == "FAILURE", statuses
    assert statuses[survivor_run] == "SUCCESS", statuses
    time.sleep(20)  # the run-failure sensor records what the dead worker never finished
    records = [r for r in deployment.records() if r["period"] == period]
    counts = Counter(r["device_id"] for r in records)
    assert counts == Counter(FLEET[:20]), counts  # every attempt recorded exactly once
    dead = [r for r in records if r["dagster_run_id"] == victim_run["runId"]]
    assert {r["status"] for r in dead} == {"success", "failed"}
    assert all(r["status"] == "success" for r in records if r["dagster_run_id"] == survivor_run)
    store = open_store(deployment.settings())
    registry = ModelRegistry(deployment.root / "shared" / "models")
    try:
        for device_id in FLEET[:20]:
            audit_model_store(registry, store, device_id)  # no torn pointer or version
    finally:
        store.close()


def test_the_broker_stopped_mid_batch_fails_new_launches_with_one_clear_error_and_loses_nothing(
        deployment, redis_control):
    api = deployment.api
    settings = deployment.settings()
    earlier = period_key_at(settings, datetime.now(UTC) - timedelta(days=2))
    batch = FLEET[20:30]
    running = api.launch_run("retrain_job", {
        "dagster/asset_partition_range_start": f"{batch[0]}|{earlier}",
        "dagster/asset_partition_range_end": f"{batch[-1]}|{earlier}"})

    def mid_batch():
        done = {r["device_id"] for r in deployment.records() if r.get("dagster_run_id") == running}
        return 0 < len(done) < len(batch) or None

    assert wait_until(mid_batch, 180, 0.2), api.runs(run_ids=[running])
    period = period_key_at(settings, datetime.now(UTC))
    device_id = FLEET[30]
    before = [r["run_id"] for r in deployment.records() if r["device_id"] == device_id]
    redis_control.stop()  # the broker goes down while a worker is inside a batch
    try:
        run_id = api.launch_run("retrain_job", {"dagster/partition": f"{device_id}|{period}"})
        assert api.wait_for_runs([run_id], 120)[run_id] == "FAILURE"
        record = wait_until(lambda: next((r for r in deployment.records()
                                          if r["run_id"] == run_id), None), 60)
        # the batch already on a worker needs no broker to finish: events go to PostgreSQL
        assert api.wait_for_runs([running], 120)[running] == "SUCCESS"
    finally:
        redis_control.start(deployment.root)
    assert record is not None and record["status"] == "failed"
    assert record["error"].startswith("the run could not be launched (")
    assert "check CELERY_BROKER_URL and that the broker is up" in record["error"]
    assert "\n" not in record["error"]
    after = [r["run_id"] for r in deployment.records() if r["device_id"] == device_id]
    assert after == [run_id, *before]  # that one failed record, nothing else
    registry = ModelRegistry(deployment.root / "shared" / "models")
    assert len(registry.list_versions(device_id)) == 1  # no version was made
    records = [r for r in deployment.records() if r["period"] == earlier]
    assert Counter(r["device_id"] for r in records) == Counter(batch)  # each exactly once
    assert {r["status"] for r in records} == {"success"}
    store = open_store(settings)
    try:
        for each in batch:
            audit_model_store(registry, store, each)  # no torn pointer or version
    finally:
        store.close()
    # the workers reconnect: the next launch runs
    again = api.launch_run("retrain_job", {"dagster/partition": f"{device_id}|{period}"})
    assert api.wait_for_runs([again], 180)[again] == "SUCCESS"
