"""`solar-ml` through its real entry point: `python -m solar_ml_pipeline.interfaces.cli` in a subprocess
for each operator command (simulate, retrain, retrain --background, runs, model, predict, api)
with exit codes and one-line errors; the wider error matrix, --dry-run and `ui` (which execs
`dagster dev`) call the same `main()` in-process. One module-wide project home is shared: the CLI
simulates and retrains `t1` once, the other devices get tiny constant-model versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import dagster as dg
import httpx
import pytest

from solar_ml_pipeline.config import settings_from_env
from solar_ml_pipeline.interfaces import cli, operations
from solar_ml_pipeline.readings.simulator import simulate_readings
from solar_ml_pipeline.readings.sites import DEFAULT_SITE
from solar_ml_pipeline.storage import open_store
from solar_ml_pipeline.storage.run_records import utc_now
from solar_ml_pipeline_tests.conftest import (
    CONFIG_VARIABLES,
    PERIOD,
    PERIOD_START,
    simulate_into,
)
from solar_ml_pipeline_tests.interfaces.test_api import free_port
from solar_ml_pipeline_tests.interfaces.test_operations import (
    FALLBACK_REASON,
    put_on_fallback,
    run_record,
    save_constant_version,
    write_recent_readings,
)

CLI = [sys.executable, "-m", "solar_ml_pipeline.interfaces.cli"]


def solar_ml(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def one_error_line(result: subprocess.CompletedProcess, expected: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("solar-ml: error: "), result.stderr
    assert expected in lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The shared project home: its settings, subprocess env and what the fixture did."""
    root = tmp_path_factory.mktemp("cli_home")
    test_env = {"SOLAR_ML_HOME": str(root / "home"), "MODEL_TYPE": "hist_gradient_boosting",
                "PERIODS_START": "2026-01-01"}
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES} | test_env
    end = PERIOD_START.isoformat().replace("+00:00", "Z")
    simulated = solar_ml(env, "simulate", "--device", "t1", "--days", "8",
                         "--interval-minutes", "5", "--end", end, "--json")
    retrained = solar_ml(env, "retrain", "--device", "t1", "--period", PERIOD, "--json")

    settings = settings_from_env(test_env)
    store = open_store(settings)
    registry = operations.registry_for(settings)
    now = utc_now()
    live = simulate_readings("t1", start=now - timedelta(hours=2), end=now, interval_minutes=1,
                             site=DEFAULT_SITE)
    store.write_readings(live.to_dict("records"))  # every sensor, as the model was trained on
    paged = [run_record("pg", utc_now() - timedelta(hours=i), status="failed" if i == 3
                        else "success") for i in range(5)]
    for record in paged:
        store.upsert_run(record)
    rollback_versions = [save_constant_version(registry, "rb", 10.0 + day, day) for day in (1, 2)]
    prune_versions = [save_constant_version(registry, "pr", 1.0, day) for day in (1, 2, 3, 4)]
    yield {"env": env, "test_env": test_env, "settings": settings, "store": store,
           "simulated": simulated, "retrained": retrained, "paged": paged,
           "rollback_versions": rollback_versions, "prune_versions": prune_versions}
    store.close()


@pytest.fixture
def in_home(home, monkeypatch):
    """For in-process `cli.main` calls: the shared home's environment."""
    for name, value in home["test_env"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_HOME")
    return home


# --- simulate / retrain -----------------------------------------------------------------------


def test_simulate_writes_readings_and_reports_them(home):
    result = home["simulated"]
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device_id"] == "t1" and report["rows_written"] == report["rows_generated"] > 0


def test_retrain_runs_the_job_and_prints_the_promoted_record(home):
    result = home["retrained"]
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["status"], record["promoted"], record["period"]) == ("success", True, PERIOD)
    assert home["store"].get_run(record["run_id"])["version"] == record["version"]


def test_retrain_dry_run_checks_the_window_and_writes_nothing(settings, store, test_env,
                                                               monkeypatch, capsys):
    simulate_into(store, "t1", interval_minutes=5)
    store.close()
    for name, value in test_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_HOME")
    code = cli.main(["retrain", "--device", "t1", "--period", PERIOD, "--dry-run", "--json"])
    assert code == 0, capsys.readouterr().err
    plan = json.loads(capsys.readouterr().out)
    assert (plan["ready"], plan["dry_run"], plan["period"]) == (True, True, PERIOD)
    assert plan["rows"] >= settings.min_training_rows
    assert not settings.dagster_home.exists() and not settings.model_dir.exists()
    assert open_store(settings).list_runs().total == 0


def test_retrain_dry_run_without_enough_rows_exits_1_with_the_reason(in_home, capsys):
    code = cli.main(["retrain", "--device", "t1", "--period", "2026-01-05", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 1 and "NOT ready" in captured.out
    assert captured.err.strip().startswith("solar-ml: error: No data found for training")


def test_retrain_background_queues_a_run_for_the_daemon(home):
    result = solar_ml(home["env"], "retrain", "--device", "t1", "--period", PERIOD,
                      "--background", "--json")
    assert result.returncode == 0, result.stderr
    queued = json.loads(result.stdout)
    assert (queued["background"], queued["status"]) == (True, "QUEUED")
    with dg.DagsterInstance.from_config(str(home["settings"].dagster_home)) as instance:
        run = instance.get_run_by_id(queued["run_id"])
    assert run.status == dg.DagsterRunStatus.QUEUED
    assert (run.tags["dagster/partition/device"], run.tags["dagster/partition/period"]) == (
        "t1", PERIOD)
    assert run.remote_job_origin.location_name == operations.CODE_LOCATION


def test_retrain_bad_device_exits_2_with_one_line(home):
    result = solar_ml(home["env"], "retrain", "--device", "bad id")
    assert result.returncode == 2 and result.stdout == ""
    one_error_line(result, "invalid device id 'bad id'")


@pytest.mark.parametrize("argv, expected", [
    (["retrain", "--device", "t1", "--period", "someday"], "invalid period 'someday'"),
    (["retrain", "--device", "t1", "--days", "0"], "at least 1"),
    (["retrain", "--device", "t1", "--dry-run", "--background"], "not allowed with"),
    (["runs", "list", "--status", "done"], "invalid choice"),
    (["runs", "list", "--limit", str(operations.MAX_LIMIT + 1)], "invalid limit"),
    (["runs", "list", "--skip", "-1"], "0 or more"),
    (["runs", "show", "has space"], "invalid run id"),
    (["model", "current", "--device", "../etc"], "invalid device id"),
    (["model", "rollback", "--device", "rb", "--to", "latest"], "invalid model version"),
    (["model", "prune", "--keep", "0"], "at least 1"),
    (["api", "--port", "70000"], "1 to 65535"),
    (["ui", "--port", "0"], "at least 1"),
])
def test_bad_input_exits_2_with_one_line(in_home, capsys, argv, expected):
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("solar-ml: error: ")
    assert expected in err[0]


@pytest.mark.parametrize("command", [
    ["simulate"], ["import"], ["retrain"], ["runs", "list"], ["runs", "show"], ["runs", "delete"],
    ["model", "current"], ["model", "list"], ["model", "rollback"], ["model", "prune"],
    ["predict"], ["api"], ["ui"], ["demo"], ["device", "set"], ["device", "list"],
])
def test_every_command_has_help_and_a_json_flag(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "--json" in capsys.readouterr().out


# --- runs -------------------------------------------------------------------------------------


def test_runs_list_pages_newest_first_with_the_total(home):
    result = solar_ml(home["env"], "runs", "list", "--device", "pg", "--limit", "2", "--skip",
                      "2", "--json")
    assert result.returncode == 0, result.stderr
    page = json.loads(result.stdout)
    assert page["total"] == 5
    assert [r["run_id"] for r in page["runs"]] == [r["run_id"] for r in home["paged"][2:4]]


def test_runs_list_filters_and_prints_a_table(in_home, capsys):
    assert cli.main(["runs", "list", "--device", "pg", "--status", "failed"]) == 0
    out = capsys.readouterr().out
    assert in_home["paged"][3]["run_id"] in out and "runs 1-1 of 1" in out
    assert cli.main(["runs", "list", "--promoted", "--json"]) == 0
    promoted = json.loads(capsys.readouterr().out)
    assert promoted["total"] >= 1 and all(r["promoted"] for r in promoted["runs"])


def test_runs_show_prints_one_record_and_an_unknown_id_exits_1(home):
    run_id = home["paged"][0]["run_id"]
    shown = solar_ml(home["env"], "runs", "show", run_id, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["run_id"] == run_id
    unknown = solar_ml(home["env"], "runs", "show", "no-such-run")
    assert unknown.returncode == 1
    one_error_line(unknown, "no run with id 'no-such-run'")


def test_runs_delete_removes_one_record_and_an_unknown_id_deletes_nothing(home, in_home,
                                                                           capsys):
    store = home["store"]
    target = run_record("del", utc_now())
    store.upsert_run(target)
    before = store.list_runs().total
    assert cli.main(["runs", "delete", "no-such-run"]) == 1
    assert "nothing deleted" in capsys.readouterr().err
    assert store.list_runs().total == before
    result = solar_ml(home["env"], "runs", "delete", target["run_id"])
    assert result.returncode == 0, result.stderr
    assert store.get_run(target["run_id"]) is None and store.list_runs().total == before - 1


# --- model ------------------------------------------------------------------------------------


def test_model_current_json_has_the_original_shape(home):
    result = solar_ml(home["env"], "model", "current", "--device", "t1", "--json")
    assert result.returncode == 0, result.stderr
    current = json.loads(result.stdout)
    assert {"model_exists", "version", "updated_at", "model_path", "metrics"} <= set(current)
    assert current["version"] == json.loads(home["retrained"].stdout)["version"]


def test_model_current_of_a_device_without_a_model_says_so(in_home, capsys):
    assert cli.main(["model", "current", "--device", "nomodel"]) == 0
    assert "nomodel has no current model" in capsys.readouterr().out


def test_model_list_marks_the_current_and_previous_versions(home):
    first, second = home["prune_versions"][:2]
    result = solar_ml(home["env"], "model", "list", "--device", "pr")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[1] if line.startswith("*") else line.split()[0]: line
             for line in result.stdout.splitlines()[2:]}
    newest, before_newest = home["prune_versions"][3], home["prune_versions"][2]
    assert lines[newest].startswith("*") and lines[newest].endswith("current")
    assert lines[before_newest].endswith("previous")
    assert not lines[first].endswith(("current", "previous"))
    assert second in lines


def test_model_rollback_and_forward_are_logged_and_a_bad_target_changes_nothing(home, in_home,
                                                                                capsys):
    first, second = home["rollback_versions"]
    back = solar_ml(home["env"], "model", "rollback", "--device", "rb", "--json")
    assert back.returncode == 0, back.stderr
    moved = json.loads(back.stdout)
    assert (moved["version"], moved["previous_version"]) == (first, second)
    logged = home["store"].get_run(moved["run_id"])
    assert (logged["kind"], logged["version"], logged["promoted"]) == ("rollback", first, True)

    assert cli.main(["model", "rollback", "--device", "rb", "--to", "20990101_000000_abcdef"]) == 1
    assert "not found" in capsys.readouterr().err
    assert operations.current_model(home["settings"], "rb")["version"] == first

    assert cli.main(["model", "rollback", "--device", "rb"]) == 0
    assert f"now serving {second} (was {first})" in capsys.readouterr().out  # ids as typed


def test_model_prune_reports_freed_bytes_and_keeps_current_and_previous(home, in_home, capsys):
    versions = home["prune_versions"]
    registry = operations.registry_for(home["settings"])
    registry.rollback("pr", to=versions[0])  # current: oldest, previous: newest
    assert cli.main(["model", "prune", "--device", "pr", "--keep", "1", "--dry-run"]) == 0
    assert "would remove 2 versions" in capsys.readouterr().out
    result = solar_ml(home["env"], "model", "prune", "--device", "pr", "--keep", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(report["devices"][0]["removed"]) == versions[1:3]
    assert report["freed_bytes"] > 0
    left = [v["version"] for v in operations.list_models(home["settings"], "pr")["versions"]]
    assert left == [versions[3], versions[0]]


# --- predict / api ----------------------------------------------------------------------------


def test_predict_forecasts_from_the_latest_readings_with_the_current_version(home):
    result = solar_ml(home["env"], "predict", "--device", "t1", "--json")
    assert result.returncode == 0, result.stderr
    forecast = json.loads(result.stdout)
    assert forecast["version"] == json.loads(home["retrained"].stdout)["version"]
    assert forecast["horizon_minutes"] == 15 and isinstance(forecast["predicted_power"], float)


def test_predict_without_a_model_exits_1_with_one_line(in_home, capsys):
    assert cli.main(["predict", "--device", "nomodel"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["solar-ml: error: device nomodel has no current model: train one with "
                   "`solar-ml retrain --device nomodel`"]


def test_a_device_on_smart_persistence_is_reported_by_model_current_predict_and_rollback(
        home, in_home, capsys):
    registry = operations.registry_for(home["settings"])
    displaced = save_constant_version(registry, "fb", 120.0, 1)
    put_on_fallback(registry, "fb")
    write_recent_readings(home["store"], "fb", utc_now() - timedelta(minutes=1))

    assert cli.main(["model", "current", "--device", "fb"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fb: served by smart persistence, no model")
    assert FALLBACK_REASON in lines[0]
    assert f"`solar-ml model rollback --device fb` serves {displaced} again" in lines[0]
    assert cli.main(["model", "list", "--device", "fb"]) == 0
    assert "current none, served by smart persistence" in capsys.readouterr().out

    result = solar_ml(home["env"], "predict", "--device", "fb", "--json")
    assert result.returncode == 0, result.stderr
    forecast = json.loads(result.stdout)
    assert (forecast["serving"], forecast["version"], forecast["reason"]) == (
        "smart_persistence", None, FALLBACK_REASON)
    assert cli.main(["predict", "--device", "fb"]) == 0
    assert capsys.readouterr().out.strip().endswith(
        f"smart persistence, no model: {FALLBACK_REASON}")

    assert cli.main(["model", "rollback", "--device", "fb"]) == 0
    assert f"fb: now serving {displaced} (was smart persistence)" in capsys.readouterr().out
    assert cli.main(["predict", "--device", "fb"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"model {displaced}")


def test_api_command_serves_on_loopback_by_default(home):
    port = free_port()
    process = subprocess.Popen([*CLI, "api", "--port", str(port), "--json"], env=home["env"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        started = json.loads(process.stdout.readline())
        assert started["url"] == f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{started['url']}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
                time.sleep(0.1)
        assert health.json() == {"status": "ok", "store": "sqlite"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def test_demo_skips_invalid_device_ids_in_the_store_and_trains_the_valid_ones(
        test_env, monkeypatch, capsys):
    import sqlite3

    for name, value in test_env.items():
        monkeypatch.setenv(name, value)
    settings = settings_from_env(test_env)
    store = open_store(settings)
    simulate_into(store, "tracker01", end=utc_now(), days=3)
    store.close()
    with sqlite3.connect(settings.sqlite_path) as conn:  # written by another system
        conn.execute("INSERT INTO readings_raw (device_id, timestamp, power) VALUES (?, ?, ?)",
                     ("../x", 1_772_344_800_000_000, 10.0))
    code = cli.main(["demo", "--json"])
    captured = capsys.readouterr()
    runs = json.loads(captured.out)["runs"]
    assert [r["device_id"] for r in runs] == ["tracker01"]
    assert code == (0 if runs[0]["status"] == "success" else 1)
    assert "skipped invalid device id '../x'" in captured.err


# --- unexpected errors ------------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_and_exit_1_with_the_traceback_on_request(
        in_home, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("disk quota exceeded\nwhile writing")

    monkeypatch.setattr(operations, "list_runs", broken)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    assert cli.main(["runs", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("solar-ml: error: unexpected RuntimeError: disk quota exceeded while "
                          "writing (set SOLAR_ML_DEBUG=1 to see the traceback)")

    monkeypatch.setenv(cli.DEBUG_VARIABLE, "1")
    with pytest.raises(RuntimeError, match="disk quota exceeded"):
        cli.main(["runs", "list"])


def test_retrain_and_demo_output_say_when_the_device_is_left_on_smart_persistence(settings):
    record = {"status": "success", "device_id": "fb", "period": PERIOD, "run_id": "r1",
              "version": "20260310_130000_abcdef", "model_type": "ridge", "rows_used": 100,
              "mae": 30.0, "skill": -0.1, "daylight_skill": -0.2, "promoted": False,
              "decision_rule": "loses_to_persistence", "decision_reason": "Not promoted: ...",
              "serving": "smart_persistence"}
    assert "success, not promoted; served by smart persistence" in cli._format_attempt(record)
    table = cli._demo_table([record], settings)
    assert "not promoted (loses_to_persistence); served by smart persistence" in table
    assert "smart persistence" not in cli._demo_table([{**record, "serving": "model"}], settings)
