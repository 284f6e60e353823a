"""`solar-ml scores`, `solar-ml backtest` and `solar-ml report`: how good were the forecasts
that served.

Thin like cli_manage: each handler calls one function of `accountability` (shared with the
API), or of `report` for the HTML page, and formats its dict. None imports Dagster.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.interfaces import accountability
from solar_ml_pipeline.interfaces.cli_common import (
    EXIT_OK,
    CommandFailed,
    add_json_flag,
    emit,
    number,
    positive_int,
    with_store,
)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def cmd_scores(args: argparse.Namespace, settings: Settings) -> int:
    listing = with_store(settings, lambda store: accountability.list_scores(
        store, args.device, days=args.days))
    emit(args, listing, lambda: format_scores(listing))
    return EXIT_OK


def format_scores(listing: dict[str, Any]) -> str:
    device = listing["device_id"]
    if not listing["scores"]:
        return (f"device {device} has no realised scores in the last {listing['days']} days: "
                "a period is scored once its readings are in (materialize forecast_score)")
    lines = [f"{'period':<18} {'served by':<24} {'rows':>6} {'daylight MAE':>12} "
             f"{'skill':>8} {'vs smart':>9}"]
    for score in listing["scores"]:
        served = score.get("served_by") or {}
        main = max(served, key=served.get) if served else "-"
        lines.append(f"{score['period']:<18} {main:<24} {score.get('rows_scored') or 0:>6} "
                     f"{number(score.get('daylight_mae'), 1):>12} "
                     f"{_percent(score.get('daylight_skill')):>8} "
                     f"{_percent(score.get('daylight_skill_smart')):>9}")
    return "\n".join(lines)


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    result = with_store(settings, lambda store: accountability.backtest_span(
        settings, store, args.device, args.start, args.end))
    if args.json:  # JSON lines: one per reading, then the summary
        for row in result["rows"]:
            print(json.dumps(row))
        print(json.dumps({"summary": result["summary"]}))
        return EXIT_OK
    print(f"{'timestamp':<25} {'forecast_for':<25} {'predicted':>9} {'actual':>9} "
          f"{'persist':>9} {'smart':>9} served_by")
    for row in result["rows"]:
        print(f"{row['timestamp']:<25} {row['forecast_for']:<25} "
              f"{number(row['predicted_power'], 1):>9} {number(row['power_at_target'], 1):>9} "
              f"{number(row['persistence'], 1):>9} {number(row['smart_persistence'], 1):>9} "
              f"{row['served_by'] or '-'}")
    print(format_summary(result["summary"]))
    return EXIT_OK


def format_summary(summary: dict[str, Any]) -> str:
    served = ", ".join(f"{label} {count}" for label, count in summary["served_by"].items())
    lines = [
        f"{summary['device_id']} [{summary['start']}, {summary['end']}): {summary['rows']} "
        f"readings ({served}); {summary['rows_scored']} scored, "
        f"{summary['daylight_rows']} in daylight",
        f"daylight MAE {number(summary['daylight_mae'], 2)} W (persistence "
        f"{number(summary['daylight_persistence_mae'], 2)}, smart persistence "
        f"{number(summary['daylight_smart_persistence_mae'], 2)}): skill "
        f"{_percent(summary['daylight_skill'])} against persistence, "
        f"{_percent(summary['daylight_skill_smart'])} against smart persistence",
    ]
    if summary["unavailable"]:
        lines.append(f"not forecast: version(s) {', '.join(summary['unavailable'])} cannot be "
                     "loaded any more (pruned or damaged)")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from solar_ml_pipeline.interfaces import report  # matplotlib: loaded for this command only

    try:
        made = with_store(settings, lambda store: report.make_report(
            settings, store, args.device, args.out, days=args.days, day=args.day))
    except (report.NothingToReport, report.ReportNotWritten) as exc:
        raise CommandFailed(str(exc)) from None
    emit(args, made, lambda: (
        f"wrote {made['out']}: {made['device_id']}, {made['periods']} scored period(s), "
        f"{made['moves']} pointer move(s), power plotted for period {made['day']}"))
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """Adds `scores`, `backtest` and `report` to the `solar-ml` subcommands."""
    p = sub.add_parser("scores", help="realised forecast scores per period: what served, its "
                                      "daylight MAE and skill against both baselines")
    p.add_argument("--device", required=True)
    p.add_argument("--days", type=positive_int, default=accountability.DEFAULT_SCORE_DAYS,
                   help="periods that started in the last N days (default %(default)s)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_scores)

    p = sub.add_parser(
        "backtest", help="forecast every reading of a span with the model (or fallback) that "
                         "served then, scored against persistence and smart persistence")
    p.add_argument("--device", required=True)
    p.add_argument("--start", required=True, help="ISO 8601 start (inclusive; no zone: UTC)")
    p.add_argument("--end", required=True, help="ISO 8601 end (exclusive; no zone: UTC)")
    p.add_argument("--json", action="store_true",
                   help="JSON lines: one object per reading, then {\"summary\": ...}")
    p.set_defaults(handler=cmd_backtest)

    p = sub.add_parser(
        "report", help="a self-contained HTML page: realised vs forecast power for one period, "
                       "daily realised skill against both baselines, pointer moves marked")
    p.add_argument("--device", required=True)
    p.add_argument("--days", type=positive_int, default=accountability.DEFAULT_SCORE_DAYS,
                   help="scored periods and moves of the last N days (default %(default)s)")
    p.add_argument("--day", help="period whose power to plot, YYYY-MM-DD as `solar-ml scores` "
                                 "lists it (default: the newest scored period)")
    p.add_argument("--out", required=True, help="the HTML file to write (replaced whole)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_report)
