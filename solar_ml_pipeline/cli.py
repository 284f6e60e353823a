"""`solar-ml`: the command line for operators and cron.

Every command takes --json, exits 0 on success, 2 on bad input (one line on stderr) and 1 when
the work itself failed (e.g. a retrain attempt, an unreachable store).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from solar_ml_pipeline.config import ConfigError, InvalidDeviceId, Settings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandFailed(Exception):
    """The command ran but its work failed; the message is the one line to print."""


class UsageError(Exception):
    """The user's input is wrong; the message names the problem and the fix."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from solar_ml_pipeline.partitions import InvalidPeriod

    errors: list[type[BaseException]] = [ConfigError, InvalidDeviceId, InvalidPeriod, UsageError]
    try:
        from solar_ml_pipeline.importer import ImportFileError

        errors.append(ImportFileError)
    except ImportError:  # pragma: no cover - importer ships with the package
        pass
    return tuple(errors)


def _failure_errors() -> tuple[type[BaseException], ...]:
    from solar_ml_pipeline.registry import ModelStoreError
    from solar_ml_pipeline.storage import StoreUnavailable

    return (CommandFailed, StoreUnavailable, ModelStoreError)


def emit(args: argparse.Namespace, payload: Any, text: str | Callable[[], str]) -> None:
    """Print the JSON payload with --json, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=_json_default, sort_keys=False))
    else:
        print(text() if callable(text) else text)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"invalid time {text!r}: expected ISO 8601 such as 2026-02-24T18:30:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- simulate / import -------------------------------------------------------------------

def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from solar_ml_pipeline.config import validate_device_id
    from solar_ml_pipeline.simulator import simulate_device, site_for_device
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
    from solar_ml_pipeline.config import validate_device_id
    from solar_ml_pipeline.importer import import_file
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
    from solar_ml_pipeline.retraining import resolve_request, retrain_in_foreground
    from solar_ml_pipeline.run_records import public_run
    from solar_ml_pipeline.storage import open_store

    request = resolve_request(settings, args.device, args.period, args.days)
    store = open_store(settings)
    try:
        store.ping()
        run_id = retrain_in_foreground(settings, request, verbose=args.verbose)
        record = store.get_run(run_id)
    finally:
        store.close()
    if record is None:
        raise CommandFailed(f"retrain run {run_id} ended without a run-log record; "
                            "see the run in the Dagster UI")
    shown = public_run(record)
    emit(args, shown, lambda: _format_attempt(shown))
    if record.get("status") != "success":
        if not args.json:
            print(f"solar-ml: error: {record.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _format_attempt(record: dict[str, Any]) -> str:
    if record.get("status") != "success":
        return (f"retrain {record['device_id']} period {record['period']}: FAILED "
                f"(run {record['run_id']})")
    decision = "promoted" if record.get("promoted") else "not promoted"
    return "\n".join([
        f"retrain {record['device_id']} period {record['period']}: success, {decision}",
        f"  version  {record['version']}  ({record['model_type']}, {record['rows_used']} rows)",
        f"  MAE {record['mae']:.4f}  RMSE {record['rmse']:.4f}  R2 {record['r2']:.4f}  "
        f"persistence MAE {record['persistence_mae']:.4f}  skill {record['skill']:+.3f}",
        f"  decision {record['decision_reason']}",
        f"  run {record['run_id']}",
    ])


# --- demo: the README's first command ---------------------------------------------------

DEMO_DEVICES = ("tracker01", "tracker02", "tracker03")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from solar_ml_pipeline.retraining import resolve_request, retrain_in_foreground
    from solar_ml_pipeline.simulator import simulate_device, site_for_device
    from solar_ml_pipeline.storage import open_store

    store = open_store(settings)
    rows = []
    try:
        store.ping()
        devices = store.list_devices()
        if not devices:
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
    from solar_ml_pipeline.run_records import public_run

    shown = [public_run(r) for r in rows]
    emit(args, {"runs": shown}, lambda: _demo_table(shown, settings))
    return EXIT_OK if all(r.get("status") == "success" for r in rows) else EXIT_FAILED


def _demo_table(rows: list[dict[str, Any]], settings: Settings) -> str:
    header = f"{'device':<12} {'period':<11} {'version':<23} {'MAE':>8} {'skill':>7}  decision"
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.get("status") != "success":
            lines.append(f"{r['device_id']:<12} {str(r.get('period')):<11} FAILED: {r.get('error')}")
            continue
        decision = "promoted" if r["promoted"] else "kept current"
        lines.append(f"{r['device_id']:<12} {r['period']:<11} {r['version']:<23} "
                     f"{r['mae']:>8.3f} {r['skill']:>+7.3f}  {decision}")
    lines.append("")
    lines.append(f"store: {settings.backend}; models: {settings.model_dir}; "
                 f"Dagster instance: {settings.dagster_home}")
    lines.append("open the UI: solar-ml ui   (or: dagster dev -m solar_ml_pipeline.definitions)")
    return "\n".join(lines)


# --- parser -------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"solar-ml: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="solar-ml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("simulate", help="write physically plausible readings for a device")
    p.add_argument("--device", required=True)
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--interval-minutes", type=float, default=1.0)
    p.add_argument("--end", help="last reading time, ISO 8601 (default: now)")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser("import", help="import readings from CSV or JSON lines (idempotent)")
    p.add_argument("file")
    p.add_argument("--device", help="device id for every row (overrides the file's)")
    _common(p)
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("retrain", help="retrain one device for a period (default: current)")
    p.add_argument("--device", required=True)
    p.add_argument("--period", help="period key, e.g. 2026-02-24 (a past one is a backfill)")
    p.add_argument("--days", type=_positive_int, help="days of readings (default RETRAIN_DAYS)")
    p.add_argument("--verbose", action="store_true", help="Dagster step logs on stderr")
    _common(p)
    p.set_defaults(handler=cmd_retrain)

    p = sub.add_parser("demo", help="simulate a demo fleet if the store is empty, retrain every device")
    p.add_argument("--devices", type=_positive_int, default=3)
    p.add_argument("--days", type=float, default=14.0)
    _common(p)
    p.set_defaults(handler=cmd_demo)

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


if __name__ == "__main__":
    sys.exit(main())
