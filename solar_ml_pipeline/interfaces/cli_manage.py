"""`solar-ml runs ...`, `solar-ml model ...` and `solar-ml predict`: auditing and serving.

Thin: each handler parses, calls one function of `operations` (shared with the HTTP API) and
formats its dict. None of these import Dagster, so they answer in about a second.
"""

from __future__ import annotations

import argparse
from typing import Any

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.interfaces import accountability, operations
from solar_ml_pipeline.interfaces.cli_common import (
    EXIT_OK,
    add_json_flag,
    emit,
    human_bytes,
    non_negative_int,
    number,
    on_smart_persistence,
    positive_int,
    with_store,
)

# --- runs -------------------------------------------------------------------------------------


def cmd_runs_list(args: argparse.Namespace, settings: Settings) -> int:
    page = with_store(settings, lambda store: operations.list_runs(
        store, device_id=args.device, status=args.status,
        promoted=True if args.promoted else None, limit=args.limit, skip=args.skip))
    emit(args, page, lambda: format_runs(page, args.skip))
    return EXIT_OK


def format_runs(page: dict[str, Any], skip: int) -> str:
    runs = page["runs"]
    if not runs:
        return f"no runs (total {page['total']}, skipped {skip})"
    header = (f"{'trained_at (UTC)':<20} {'device':<12} {'kind':<8} {'status':<7} "
              f"{'promoted':<8} {'version':<23} {'MAE':>9}  run_id")
    lines = [header, "-" * len(header)]
    for run in runs:
        trained = (run.get("trained_at") or "-")[:19].replace("T", " ")
        lines.append(
            f"{trained:<20} {run.get('device_id') or '-':<12} {run.get('kind') or 'retrain':<8} "
            f"{run.get('status') or '-':<7} {'yes' if run.get('promoted') else 'no':<8} "
            f"{run.get('version') or '-':<23} {number(run.get('mae'), 3):>9}  {run['run_id']}")
    lines.append(f"runs {skip + 1}-{skip + len(runs)} of {page['total']}")
    return "\n".join(lines)


def cmd_runs_show(args: argparse.Namespace, settings: Settings) -> int:
    record = with_store(settings, lambda store: operations.show_run(store, args.run_id))
    emit(args, record, lambda: format_record(record))
    return EXIT_OK


def format_record(record: dict[str, Any]) -> str:
    width = max(len(name) for name in record)
    lines = []
    for name, value in record.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        lines.append(f"{name:<{width}}  {'-' if shown is None else shown}")
    return "\n".join(lines)


def cmd_runs_delete(args: argparse.Namespace, settings: Settings) -> int:
    result = with_store(settings, lambda store: operations.delete_run(store, args.run_id))
    emit(args, result, f"deleted run record {args.run_id} (model versions are kept)")
    return EXIT_OK


# --- model ------------------------------------------------------------------------------------


def cmd_model_current(args: argparse.Namespace, settings: Settings) -> int:
    shown = operations.current_model(settings, args.device)
    emit(args, shown, lambda: format_current(shown))
    return EXIT_OK


def format_current(shown: dict[str, Any]) -> str:
    device = shown["device_id"]
    if on_smart_persistence(shown):
        return fallback_line(shown)
    if not shown["model_exists"]:
        return (f"{device} has no current model: train one with "
                f"`solar-ml retrain --device {device}`")
    metrics = shown.get("metrics") or {}
    return "\n".join([
        f"{device}: current model {shown['version']} ({shown.get('model_type') or '?'}), "
        f"updated {shown.get('updated_at')}",
        f"  MAE {number(metrics.get('mae'))}  RMSE {number(metrics.get('rmse'))}  "
        f"R2 {number(metrics.get('r2'))}  skill {number(metrics.get('skill'), 3)}",
        f"  previous {shown.get('previous_version') or '-'}",
        f"  file {shown['model_path']}",
        *([f"  cold start: a fleet model taught by {', '.join(shown.get('trained_on') or [])}"
           " until the device's own model wins"] if shown.get("cold_start") else []),
    ])


def fallback_line(shown: dict[str, Any]) -> str:
    """One line: the device is served by smart persistence, why, and the way back."""
    device = shown["device_id"]
    previous = shown.get("previous_version")
    back = (f"`solar-ml model rollback --device {device}` serves {previous} again" if previous
            else f"the next model that beats persistence serves (`solar-ml retrain --device {device}`)")
    return (f"{device}: served by smart persistence, no model (since {shown.get('updated_at')}): "
            f"{shown.get('reason')}; {back}")


def cmd_model_list(args: argparse.Namespace, settings: Settings) -> int:
    listing = operations.list_models(settings, args.device)
    emit(args, listing, lambda: format_versions(listing))
    return EXIT_OK


def format_versions(listing: dict[str, Any]) -> str:
    device, versions = listing["device_id"], listing["versions"]
    if not versions:
        return f"{device} has no model versions: train one with `solar-ml retrain --device {device}`"
    header = (f"  {'version':<23} {'trained_at (UTC)':<20} {'period':<11} {'MAE':>9} "
              f"{'skill':>7} {'size':>9}")
    current = listing["current_version"] or (
        "none, served by smart persistence" if on_smart_persistence(listing)
        else "-")
    lines = [f"{device}: {len(versions)} versions, current {current}", header]
    for v in versions:
        mark = "*" if v["current"] else " "
        role = "current" if v["current"] else "previous" if v["previous"] else ""
        trained = (v.get("trained_at") or "-")[:19].replace("T", " ")
        metrics = v.get("metrics") or {}
        lines.append(
            f"{mark} {v['version']:<23} {trained:<20} {v.get('period') or '-':<11} "
            f"{number(metrics.get('mae'), 3):>9} {number(metrics.get('skill'), 3):>7} "
            f"{human_bytes(v.get('size_bytes') or 0):>9}  {role}".rstrip())
    return "\n".join(lines)


def cmd_model_history(args: argparse.Namespace, settings: Settings) -> int:
    history = accountability.model_history(settings, args.device)
    emit(args, history, lambda: format_history(history))
    return EXIT_OK


def format_history(history: dict[str, Any]) -> str:
    if not history["moves"]:
        return (f"device {history['device_id']} has no pointer history: nothing has served it "
                f"yet (train one with `solar-ml retrain --device {history['device_id']}`)")
    lines = [f"{'at':<28} {'move':<11} {'serving':<28} {'replaced':<24} run_id / reason"]
    for move in history["moves"]:
        serving = move["version"] or move["serving"]
        why = " ".join(str(part) for part in (move.get("run_id"), move.get("reason")) if part)
        lines.append(f"{move['at']:<28} {move['move']:<11} {serving:<28} "
                     f"{move.get('replaced') or '-':<24} {why}")
    return "\n".join(lines)


def cmd_model_rollback(args: argparse.Namespace, settings: Settings) -> int:
    result = with_store(settings, lambda store: operations.rollback_model(
        settings, store, args.device, args.to))
    emit(args, result, lambda: (
        f"{args.device}: now serving {result['version']} "
        f"(was {'smart persistence' if result['replaced'] == 'smart_persistence' else result['replaced']}); "
        f"recorded as run {result['run_id']}"))
    return EXIT_OK


def cmd_model_prune(args: argparse.Namespace, settings: Settings) -> int:
    report = operations.prune_models(settings, keep=args.keep, dry_run=args.dry_run,
                                     device_id=args.device)
    emit(args, report, lambda: format_prune(report))
    return EXIT_OK


def format_prune(report: dict[str, Any]) -> str:
    verb = "would remove" if report["dry_run"] else "removed"
    lines = []
    for device in report["devices"]:
        if device.get("skipped_reason"):
            lines.append(f"{device['device_id']}: skipped, {device['skipped_reason']}")
            continue
        lines.append(f"{device['device_id']}: {verb} {len(device['removed'])} versions, "
                     f"kept {len(device['kept'])} ({human_bytes(device['freed_bytes'])})")
    lines.append(f"{verb} {report['removed_count']} versions in total, keeping the newest "
                 f"{report['keep']} per device plus current and previous: "
                 f"{report['freed_bytes']} bytes ({human_bytes(report['freed_bytes'])}) "
                 f"{'would be ' if report['dry_run'] else ''}freed")
    return "\n".join(lines)


# --- predict ----------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from solar_ml_pipeline.forecasting.prediction import (
        FLEET_DEFAULT_LIMIT,
        FLEET_MAX_LIMIT,
        predict_fleet,
        predict_latest,
    )
    from solar_ml_pipeline.model_store.serving import ModelServer

    server = ModelServer(operations.registry_for(settings))
    if args.all:
        limit = FLEET_DEFAULT_LIMIT if args.limit is None else args.limit
        if limit > FLEET_MAX_LIMIT:
            raise operations.InvalidRequest(
                f"invalid limit {limit}: expected 1 to {FLEET_MAX_LIMIT}")
        fleet = operations.json_ready(with_store(settings, lambda store: predict_fleet(
            settings, store, server, limit=limit, skip=args.skip)))
        emit(args, fleet, lambda: fleet_text(fleet))
        return EXIT_OK
    if args.limit is not None or args.skip:
        raise operations.InvalidRequest("--limit and --skip page `predict --all`: drop them with --device")
    forecast = operations.json_ready(with_store(settings, lambda store: predict_latest(
        settings, store, server, args.device)))
    emit(args, forecast, lambda: forecast_text(forecast))
    return EXIT_OK


def forecast_text(forecast: dict[str, Any]) -> str:
    source = (f"smart persistence, no model: {forecast['reason']}"
              if on_smart_persistence(forecast) else f"model {forecast['version']}"
              + (" (cold start: fleet model)" if forecast.get("cold_start") else ""))
    return (f"{forecast['device_id']}: power {number(forecast['predicted_power'], 1)}"
            f"{interval_text(forecast)} forecast for "
            f"{forecast['forecast_for']} ({forecast['horizon_minutes']} min after the reading at "
            f"{forecast['based_on']}, power then {number(forecast['current_power'], 1)}); "
            f"{source}")


def fleet_text(fleet: dict[str, Any]) -> str:
    """One line per device of the page, forecasts first, then a summary line."""
    lines = [forecast_text(forecast) for forecast in fleet["forecasts"]]
    lines += [f"{item['device_id']}: no forecast ({item['kind']}): {item['reason']}"
              for item in fleet["unavailable"]]
    shown = len(fleet["forecasts"]) + len(fleet["unavailable"])
    first = fleet["skip"] + 1 if shown else fleet["skip"]
    lines.append(f"{len(fleet['forecasts'])} forecast(s), {len(fleet['unavailable'])} device(s) "
                 f"without one; devices {first}-{fleet['skip'] + shown} of {fleet['total']} "
                 f"with readings")
    return "\n".join(lines)


def interval_text(forecast: dict[str, Any]) -> str:
    if forecast.get("p10") is None or forecast.get("p90") is None:
        return ""
    return f" (P10-P90 {number(forecast['p10'], 1)}-{number(forecast['p90'], 1)})"


# --- parser -----------------------------------------------------------------------------------


def add_commands(sub: Any) -> None:
    """Adds `runs`, `model` and `predict` to the `solar-ml` subcommands."""
    runs = sub.add_parser("runs", help="the run log: list, show or delete attempt records")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, parser_class=type(runs))

    p = runs_sub.add_parser("list", help="run records, newest first")
    p.add_argument("--device", help="only this device")
    p.add_argument("--status", choices=operations.RUN_STATUSES, help="only this status")
    p.add_argument("--promoted", action="store_true", help="only attempts that were promoted")
    p.add_argument("--limit", type=positive_int, default=operations.DEFAULT_LIMIT,
                   help=f"records per page, 1-{operations.MAX_LIMIT} (default %(default)s)")
    p.add_argument("--skip", type=non_negative_int, default=0, help="records to skip (paging)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_runs_list)

    p = runs_sub.add_parser("show", help="one run record")
    p.add_argument("run_id")
    add_json_flag(p)
    p.set_defaults(handler=cmd_runs_show)

    p = runs_sub.add_parser("delete", help="delete one run record (model versions stay)")
    p.add_argument("run_id")
    add_json_flag(p)
    p.set_defaults(handler=cmd_runs_delete)

    model = sub.add_parser("model", help="model versions: current, list, rollback, prune")
    model_sub = model.add_subparsers(dest="model_command", required=True,
                                     parser_class=type(model))

    p = model_sub.add_parser(
        "current", help="the model in service for a device, or why smart persistence serves it")
    p.add_argument("--device", required=True)
    add_json_flag(p)
    p.set_defaults(handler=cmd_model_current)

    p = model_sub.add_parser("list", help="every version of a device, newest first")
    p.add_argument("--device", required=True)
    add_json_flag(p)
    p.set_defaults(handler=cmd_model_list)

    p = model_sub.add_parser(
        "history", help="who served the device when: every promotion, rollback, fallback and "
                        "drift, newest first")
    p.add_argument("--device", required=True)
    add_json_flag(p)
    p.set_defaults(handler=cmd_model_history)

    p = model_sub.add_parser(
        "rollback", help="serve the previous version again (twice in a row rolls forward; "
                         "from smart persistence, the model it displaced)")
    p.add_argument("--device", required=True)
    p.add_argument("--to", metavar="VERSION", help="serve this version instead of the previous")
    add_json_flag(p)
    p.set_defaults(handler=cmd_model_rollback)

    p = model_sub.add_parser(
        "prune", help="delete old versions (never the current or previous one)")
    p.add_argument("--keep", type=positive_int,
                   help="newest versions kept per device (default KEEP_VERSIONS)")
    p.add_argument("--device", help="only this device (default: every device)")
    p.add_argument("--dry-run", action="store_true", help="report what would go, delete nothing")
    add_json_flag(p)
    p.set_defaults(handler=cmd_model_prune)

    p = sub.add_parser("predict", help="forecast power HORIZON_MINUTES ahead from the latest "
                                       "readings (smart persistence when no model beats it)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--device")
    which.add_argument("--all", action="store_true",
                       help="every device with readings, in id order, a page at a time; devices "
                            "without a forecast are listed with the reason")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="with --all: devices per page (default 1000, at most 10000)")
    p.add_argument("--skip", type=non_negative_int, default=0,
                   help="with --all: devices to skip (paging)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_predict)
