"""`solar-ml`: the command line for operators and cron.

Every command takes --json, exits 0 on success, 2 on bad input (one line on stderr) and 1 when
the work itself failed (e.g. a retrain attempt, an unreachable store).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from solar_ml_pipeline.config import (
    ConfigError,
    InvalidDeviceId,
    Settings,
    is_valid_device_id,
    load_settings,
    validate_device_id,
)
from solar_ml_pipeline.interfaces.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    Parser,
    UsageError,
    add_json_flag,
    emit,
    number,
    on_smart_persistence,
    port_number,
    positive_int,
)

# Set to anything to let unexpected errors end in their traceback.
DEBUG_VARIABLE = "SOLAR_ML_DEBUG"

__all__ = ["CommandFailed", "UsageError", "build_parser", "emit", "main"]


# An exception can only come from a module already imported, so error classes are looked up
# in sys.modules: mapping an error to its exit code never pays for importing Dagster.
USER_ERRORS = (
    ("solar_ml_pipeline.orchestration.instance", "InstanceMismatch"),
    ("solar_ml_pipeline.orchestration.partitions", "InvalidPeriod"),
    ("solar_ml_pipeline.interfaces.operations", "InvalidRequest"),
    ("solar_ml_pipeline.model_store.registry", "InvalidVersion"),
    ("solar_ml_pipeline.readings.importer", "ImportFileError"),
)
FAILURE_ERRORS = (
    ("solar_ml_pipeline.storage.base", "StoreUnavailable"),
    ("solar_ml_pipeline.model_store.registry", "ModelStoreError"),
    ("solar_ml_pipeline.interfaces.operations", "UnknownRun"),
    ("solar_ml_pipeline.interfaces.operations", "RetrainFailed"),
    ("solar_ml_pipeline.forecasting.prediction", "PredictionUnavailable"),
    ("solar_ml_pipeline.forecasting.backtest", "BacktestUnavailable"),
)


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    found = (getattr(sys.modules.get(module), name, None) for module, name in names)
    return tuple(error for error in found if isinstance(error, type))


def _user_errors() -> tuple[type[BaseException], ...]:
    return (ConfigError, InvalidDeviceId, UsageError, *_loaded(USER_ERRORS))


def _failure_errors() -> tuple[type[BaseException], ...]:
    return (CommandFailed, *_loaded(FAILURE_ERRORS))


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"invalid time {text!r}: expected ISO 8601 such as 2026-02-24T18:30:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- simulate / import -------------------------------------------------------------------

def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from solar_ml_pipeline.readings.simulator import simulate_device
    from solar_ml_pipeline.readings.sites import site_for_device
    from solar_ml_pipeline.storage import open_store

    validate_device_id(args.device)
    if args.days <= 0 or args.interval_minutes <= 0:
        raise UsageError("--days and --interval-minutes must be greater than 0")
    end = _parse_time(args.end) if args.end else None
    store = open_store(settings)
    try:
        result = simulate_device(
            store, args.device, days=args.days, interval_minutes=args.interval_minutes,
            end=end, seed=args.seed, site=site_for_device(store, settings, args.device),
        )
    finally:
        store.close()
    payload = {"device_id": args.device, "rows_generated": result.rows_generated,
               "rows_written": result.rows_written, "start": result.start, "end": result.end}
    emit(args, payload, lambda: (
        f"simulated {result.rows_generated} readings for {args.device} "
        f"({result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M} UTC), "
        f"{result.rows_written} new in the {settings.backend} store"))
    return EXIT_OK


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from solar_ml_pipeline.readings.importer import import_file
    from solar_ml_pipeline.storage import open_store

    if args.device is not None:
        validate_device_id(args.device)
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"cannot read {args.file!r}: no such file")
    store = open_store(settings)
    try:
        report = import_file(store, path, device_id=args.device)
    finally:
        store.close()
    emit(args, report.as_dict(), report.summary)
    return EXIT_OK


# --- retrain ------------------------------------------------------------------------------

def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    if args.retry_failed:
        return _retry_failed(args, settings)
    if args.device is None:
        raise UsageError("retrain needs --device D (or --retry-failed RUN_ID)")
    validate_device_id(args.device)  # before importing Dagster: a typo fails in a blink
    from solar_ml_pipeline.interfaces import operations
    from solar_ml_pipeline.orchestration.retraining import resolve_request
    from solar_ml_pipeline.storage import open_store

    request = resolve_request(settings, args.device, args.period, args.days)
    store = open_store(settings)
    try:
        if args.dry_run:
            plan = operations.retrain_dry_run(settings, store, request)
        elif args.background:
            queued = operations.queue_retrain(settings, store, request, trigger="cli")
        else:
            record = operations.retrain_now(settings, store, request, verbose=args.verbose)
    finally:
        store.close()
    if args.dry_run:
        emit(args, plan, lambda: _format_dry_run(plan))
        if not plan["ready"]:
            if not args.json:
                print(f"solar-ml: error: {plan['problem']}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    if args.background:
        emit(args, {"success": True, "background": True, **queued}, lambda: (
            f"queued retrain of {queued['device_id']} for period {queued['period']} as Dagster "
            f"run {queued['run_id']}: the daemon launches it (`solar-ml ui` runs one); "
            f"see `solar-ml runs show {queued['run_id']}` once it has finished"))
        return EXIT_OK
    emit(args, record, lambda: _format_attempt(record))
    if record.get("status") != "success":
        if not args.json:
            print(f"solar-ml: error: {record.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _retry_failed(args: argparse.Namespace, settings: Settings) -> int:
    from solar_ml_pipeline.interfaces import operations
    from solar_ml_pipeline.storage import open_store

    if args.device or args.period or args.days or args.dry_run or args.background:
        raise UsageError("--retry-failed takes only a run id: the run says which devices, "
                         "period and days to retry")
    run_id = operations.validate_run_id(args.retry_failed)
    store = open_store(settings)
    try:
        retried = operations.retry_failed(settings, store, run_id, verbose=args.verbose)
    finally:
        store.close()
    attempts = retried["attempts"]
    emit(args, retried, lambda: "\n".join([
        f"retried {len(attempts)} device(s) of failed run {run_id} as run {retried['run_id']}",
        *(_format_attempt(record).splitlines()[0] for record in attempts)]))
    failed = [r for r in attempts if r.get("status") != "success"]
    if failed and not args.json:
        print(f"solar-ml: error: {len(failed)} of {len(attempts)} retried device(s) failed "
              f"again, e.g. {failed[0]['device_id']}: {failed[0].get('error')}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _format_dry_run(plan: dict[str, Any]) -> str:
    verdict = "ready to train" if plan["ready"] else "NOT ready"
    return "\n".join([
        f"dry run: retrain {plan['device_id']} period {plan['period']}: {verdict}",
        f"  window   [{plan['window_start']}, {plan['window_end']}) ({plan['days']} days)",
        f"  rows     {plan['rows']} clean readings (at least {plan['min_training_rows']} needed)",
        f"  model    {plan['model_type']}, feature set {plan['feature_set']}, "
        f"horizon {plan['horizon_minutes']} min",
        f"  store    {plan['backend']}; models in {plan['model_dir']}; "
        f"current version {plan['current_version'] or '-'}"
        + (" (served by smart persistence)" if on_smart_persistence(plan) else ""),
        "  nothing was trained or written",
    ])


def _fallback_note(record: dict[str, Any]) -> str:
    return ("; served by smart persistence" if on_smart_persistence(record)
            else "")


def _format_attempt(record: dict[str, Any]) -> str:
    if record.get("status") != "success":
        return (f"retrain {record['device_id']} period {record.get('period')}: FAILED "
                f"(run {record['run_id']})")
    decision = "promoted" if record.get("promoted") else "not promoted"
    decision += _fallback_note(record)
    return "\n".join([
        f"retrain {record['device_id']} period {record.get('period')}: success, {decision}",
        f"  version  {record['version']}  ({record['model_type']}, {record['rows_used']} rows)",
        f"  MAE {number(record.get('mae'))}  RMSE {number(record.get('rmse'))}  "
        f"R2 {number(record.get('r2'))}  persistence MAE {number(record.get('persistence_mae'))}  "
        f"skill {number(record.get('skill'), 3)}",
        f"  decision {record.get('decision_reason')}",
        f"  run {record['run_id']}",
    ])


# --- api / ui: long-running servers ------------------------------------------------------------

def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from solar_ml_pipeline.interfaces.api import serve

    info = {"url": f"http://{args.host}:{args.port}", "docs": f"http://{args.host}:{args.port}/docs",
            "writes_enabled": settings.api_token is not None, "store": settings.backend,
            "workers": args.workers}
    emit(args, info, lambda: (
        f"solar-ml API on {info['url']} (docs {info['docs']}); writes "
        f"{'need the API_TOKEN bearer token' if info['writes_enabled'] else 'disabled: set API_TOKEN'}"))
    if not _is_loopback(args.host):
        print(f"solar-ml: warning: binding {args.host} exposes the API beyond this machine",
              file=sys.stderr)
    sys.stdout.flush()
    serve(settings, host=args.host, port=args.port, workers=args.workers)
    return EXIT_OK


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    """`dagster dev` on this project's instance and code location (UI, schedules, daemon)."""
    from solar_ml_pipeline.interfaces.operations import DEFINITIONS_MODULE
    from solar_ml_pipeline.orchestration.instance import ensure_dagster_home

    home = ensure_dagster_home(settings)
    command = [sys.executable, "-m", "dagster", "dev", "-m", DEFINITIONS_MODULE,
               "-h", args.host, "-p", str(args.port)]
    emit(args, {"url": f"http://{args.host}:{args.port}", "dagster_home": str(home),
                "command": command},
         f"Dagster UI and daemon on http://{args.host}:{args.port} (DAGSTER_HOME={home})")
    sys.stdout.flush()
    # Replace this process: Ctrl-C and service managers then reach dagster dev directly.
    os.execv(sys.executable, command)  # noqa: S606 - fixed argv: our interpreter, dagster dev
    return EXIT_OK  # pragma: no cover - execv does not return


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """A warm Celery worker executing this project's runs (DAGSTER_PG_URL, CELERY_BROKER_URL)."""
    from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
    from solar_ml_pipeline.orchestration.workers import worker_argv

    command = worker_argv(settings, queue=args.queue, concurrency=args.concurrency,
                          name=args.name)  # refuses a missing broker or instance first
    home = ensure_dagster_home(settings)
    emit(args, {"queue": args.queue, "concurrency": args.concurrency,
                "dagster_home": str(home), "command": command},
         f"Celery worker on queue {args.queue!r}, {args.concurrency} run(s) at once "
         f"(DAGSTER_HOME={home})")
    sys.stdout.flush()
    os.execv(sys.executable, command)  # noqa: S606 - fixed argv: our interpreter, celery
    return EXIT_OK  # pragma: no cover - execv does not return


# --- demo: the README's first command ---------------------------------------------------

DEMO_DEVICES = ("tracker01", "tracker02", "tracker03")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from solar_ml_pipeline.orchestration.retraining import resolve_request, retrain_in_foreground
    from solar_ml_pipeline.readings.simulator import simulate_device
    from solar_ml_pipeline.readings.sites import site_for_device
    from solar_ml_pipeline.storage import open_store

    store = open_store(settings)
    rows = []
    try:
        store.ping()
        found = store.list_devices()
        devices = [d for d in found if is_valid_device_id(d)]
        for skipped in sorted(set(found) - set(devices)):
            print(f"solar-ml: warning: skipped invalid device id {skipped!r:.70} in the store",
                  file=sys.stderr)
        if not found:
            devices = list(DEMO_DEVICES[: args.devices])
            for seed, device_id in enumerate(devices):
                simulate_device(store, device_id, days=args.days, interval_minutes=1, seed=seed,
                                site=site_for_device(store, settings, device_id))
        for device_id in devices:
            request = resolve_request(settings, device_id)
            run_id = retrain_in_foreground(settings, request, trigger="demo")
            record = store.get_run(run_id) or {"device_id": device_id, "status": "failed",
                                               "error": "no run-log record"}
            rows.append(record)
    finally:
        store.close()
    from solar_ml_pipeline.storage.run_records import public_run

    shown = [public_run(r) for r in rows]
    emit(args, {"runs": shown}, lambda: _demo_table(shown, settings))
    return EXIT_OK if all(r.get("status") == "success" for r in rows) else EXIT_FAILED


def _demo_table(rows: list[dict[str, Any]], settings: Settings) -> str:
    header = (f"{'device':<12} {'period':<11} {'version':<23} {'MAE':>8} {'skill':>7} "
              f"{'daylight':>8}  decision")
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.get("status") != "success":
            lines.append(f"{r['device_id']:<12} {str(r.get('period')):<11} FAILED: {r.get('error')}")
            continue
        decision = "promoted" if r["promoted"] else f"not promoted ({r.get('decision_rule')})"
        decision += _fallback_note(r)
        daylight = r.get("daylight_skill")
        shown = f"{daylight:>+8.3f}" if isinstance(daylight, float) else f"{'-':>8}"
        lines.append(f"{r['device_id']:<12} {r['period']:<11} {r['version']:<23} "
                     f"{r['mae']:>8.3f} {r['skill']:>+7.3f} {shown}  {decision}")
    lines.append("")
    lines.append("skill = 1 - MAE / persistence MAE on the test window (all hours; daylight: sun above 5 deg)")
    lines.append(f"store: {settings.backend}; models: {settings.model_dir}; "
                 f"Dagster instance: {settings.dagster_home}")
    lines.append("open the UI: solar-ml ui   (or: dagster dev -m solar_ml_pipeline.definitions)")
    return "\n".join(lines)


# --- parser -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from solar_ml_pipeline.interfaces import cli_devices, cli_forecasts, cli_manage
    parser = Parser(prog="solar-ml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("simulate", help="write physically plausible readings for a device")
    p.add_argument("--device", required=True)
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--interval-minutes", type=float, default=1.0)
    p.add_argument("--end", help="last reading time, ISO 8601 (default: now)")
    p.add_argument("--seed", type=int, default=0)
    add_json_flag(p)
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser("import", help="import readings from CSV or JSON lines (idempotent)")
    p.add_argument("file")
    p.add_argument("--device", help="device id for every row (overrides the file's)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("retrain", help="retrain one device for a period (default: current)")
    p.add_argument("--device", help="the device to retrain (required unless --retry-failed)")
    p.add_argument("--period", help="period key, e.g. 2026-02-24 (a past one is a backfill)")
    p.add_argument("--retry-failed", metavar="RUN_ID",
                   help="re-execute a failed Dagster run from failure: only its devices that "
                        "failed retrain (the UI's Re-execute from failure)")
    p.add_argument("--days", type=positive_int, help="days of readings (default RETRAIN_DAYS)")
    p.add_argument("--verbose", action="store_true", help="Dagster step logs on stderr")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="check configuration, store and data; train and write nothing")
    mode.add_argument("--background", action="store_true",
                      help="queue the run for the Dagster daemon and print its run id")
    add_json_flag(p)
    p.set_defaults(handler=cmd_retrain)

    cli_manage.add_commands(sub)
    cli_devices.add_commands(sub)
    cli_forecasts.add_commands(sub)

    p = sub.add_parser("demo", help="simulate a demo fleet if the store is empty, retrain every device")
    p.add_argument("--devices", type=positive_int, default=3)
    p.add_argument("--days", type=float, default=31.0)
    add_json_flag(p)
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("api", help="serve the management HTTP API (FastAPI, docs at /docs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default %(default)s)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="uvicorn worker processes sharing the port, e.g. one per core "
                        "(default %(default)s)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_api)

    p = sub.add_parser("ui", help="run the Dagster UI and daemon (dagster dev) on this project")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=port_number, default=3000, help="port (default %(default)s)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_ui)

    p = sub.add_parser("worker", help="run a Celery worker that executes retrain runs "
                                      "(needs CELERY_BROKER_URL and DAGSTER_PG_URL)")
    p.add_argument("--queue", default="dagster", help="queue to take runs from (default %(default)s)")
    p.add_argument("--concurrency", type=positive_int, default=1,
                   help="runs executed at once, one pool process each (default %(default)s)")
    p.add_argument("--name", help="worker name (default solar-ml-HOSTNAME)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_worker)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        return int(args.handler(args, settings))
    except _user_errors() as exc:
        print(f"solar-ml: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _failure_errors() as exc:
        print(f"solar-ml: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("solar-ml: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A bug or an unforeseen fault (disk full, permissions): still one line for cron and
        # operators; the traceback is one variable away for whoever debugs it.
        if os.environ.get(DEBUG_VARIABLE):
            raise
        message = " ".join(str(exc).split()) or "no message"
        print(f"solar-ml: error: unexpected {type(exc).__name__}: {message[:500]} (set "
              f"{DEBUG_VARIABLE}=1 to see the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
