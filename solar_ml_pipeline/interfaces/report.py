"""`solar-ml report`: one self-contained HTML page on how a device's forecasts did.

What it shows comes from `accountability` (and `operations` for what serves now), as
`solar-ml scores`, `backtest` and `model history` print it: the realised scores of the last N days, the pointer's moves, and a backtest of one
scored period. Two matplotlib figures (Agg, no display) are inlined as SVG with their text
kept as <text>, so labels can be read, searched and tested; the page fetches nothing (a
Content-Security-Policy says so to the browser). It is written atomically: a temp file in the
target folder, then a rename, so a failed report leaves no file behind.
"""

from __future__ import annotations

import contextlib
import html
import io
import os
import re
import tempfile
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.interfaces import accountability, operations
from solar_ml_pipeline.storage import Store
from solar_ml_pipeline.storage.run_records import iso_z, utc_now

PLOT_POWER, PLOT_SKILL = "plot-power", "plot-skill"
MOVE_COLOURS = {"promotion": "#2ca02c", "rollback": "#9467bd", "fallback": "#ff7f0e",
                "drift": "#d62728", "restore": "#17becf", "unrecorded": "#7f7f7f"}
# A period key as `solar-ml scores` lists it: a local start date, and a time if sub-daily.
DAY_PATTERN = re.compile(r"^(\d{4}-\d{2}-\d{2})(-\d{2}:\d{2})?$")
SMART = "smart_persistence"


class NothingToReport(LookupError):
    """The device has no realised scores in the span: there is nothing to plot."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else "nothing to report"


class ReportNotWritten(RuntimeError):
    """The page was made but could not be written; no file is left behind."""


# --- input ----------------------------------------------------------------------------------


def check_out(out: str | os.PathLike[str]) -> Path:
    """The report's path, refused (InvalidRequest) before any work if it cannot be written."""
    if not str(out).strip():
        raise operations.InvalidRequest("invalid out '': name the report file, e.g. report.html")
    path = Path(out).expanduser().absolute()
    if path.is_dir():
        raise operations.InvalidRequest(f"cannot write the report to {path}: it is a folder; "
                                        f"name the file, e.g. {path / 'report.html'}")
    if not path.parent.is_dir():
        raise operations.InvalidRequest(f"cannot write the report to {path}: folder "
                                        f"{path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise operations.InvalidRequest(f"cannot write the report to {path}: folder "
                                        f"{path.parent} is not writable")
    return path


def validate_day(day: str | None) -> str | None:
    """A --day as given (a date or a period key), or InvalidRequest."""
    if day is None:
        return None
    text = day.strip() if isinstance(day, str) else ""
    match = DAY_PATTERN.fullmatch(text)
    try:
        date.fromisoformat(match.group(1) if match else "")
    except ValueError:
        raise operations.InvalidRequest(
            f"invalid day {str(day)[:40]!r}: expected YYYY-MM-DD (or a period key as "
            "`solar-ml scores` lists it)") from None
    return text


def _span_of(scores: list[dict[str, Any]], day: str | None, days: int) -> tuple[str, str, str]:
    """(day, start, end): the scored period(s) to backtest, by default the newest (scores
    come newest first)."""
    if day is None:
        chosen = [scores[0]]
        day = scores[0]["period"]
    else:  # a period key, or a date: every sub-daily period of that date
        chosen = [s for s in scores if s["period"] == day or s["period"].startswith(day + "-")]
        if not chosen:
            raise operations.InvalidRequest(
                f"no scored period on {day} in the last {days} days (scored: "
                f"{scores[-1]['period']} to {scores[0]['period']}): see `solar-ml scores`")
    return (day, min(s["period_start"] for s in chosen), max(s["period_end"] for s in chosen))


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def gather(settings: Settings, store: Store, device_id: str, *, days: int,
           day: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Everything the page shows, as the operations give it (JSON-ready dicts)."""
    day = validate_day(day)
    now = now or utc_now()
    listing = accountability.list_scores(store, device_id, days=days, now=now)
    scores = listing["scores"]
    if not scores:
        raise NothingToReport(
            f"device {device_id} has no realised scores in the last {days} days: nothing to "
            "report (a period is scored once its readings are in; see `solar-ml scores`)")
    day, start, end = _span_of(scores, day, days)
    backtest = accountability.backtest_span(settings, store, device_id, start, end)
    since = now - timedelta(days=days)
    moves = [m for m in accountability.model_history(settings, device_id)["moves"]
             if _at(m["at"]) >= since]
    return {"device_id": device_id, "days": days, "since": iso_z(since), "now": iso_z(now),
            "scores": scores, "day": day, "day_start": start, "day_end": end,
            "backtest": backtest, "moves": moves,
            "current": operations.current_model(settings, device_id)}


# --- figures --------------------------------------------------------------------------------


def _drawing(settings: Settings, plot_id: str) -> Any:
    """Where a figure is drawn and saved: dates in TIMEZONE, text kept as <text>, ids
    salted per figure (two SVGs in one page must not share clip-path or marker ids)."""
    import matplotlib

    return matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": plot_id,
                                  "svg.id": plot_id, "timezone": settings.timezone})


def _svg(fig: Any) -> str:
    """The figure as an inline <svg>: no XML prolog, DOCTYPE or metadata."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.DOTALL)
    return svg.replace("<svg ", '<svg class="plot" role="img" ', 1)


def _new_figure(height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _times(values: Iterable[str]) -> Any:
    import pandas as pd

    return pd.to_datetime(list(values), utc=True, format="ISO8601")


def _mark_moves(ax: Any, moves: list[dict[str, Any]], start: datetime | None = None,
                end: datetime | None = None) -> None:
    """A vertical line per pointer move, labelled with the move and what it put in service."""
    for move in moves:
        at = _at(move["at"])
        if (start and at < start) or (end and at >= end):
            continue
        colour = MOVE_COLOURS.get(move["move"], "#7f7f7f")
        ax.axvline(at, color=colour, linestyle=":", linewidth=1.6)
        serving = move.get("version") or move.get("serving") or "nothing"
        ax.text(at, 0.98, f" {move['move']} \u2192 {_short(serving)}", rotation=90,
                transform=ax.get_xaxis_transform(), color=colour, fontsize=8, ha="right",
                va="top", gid=f"move-{move['move']}")


def _legend_below(ax: Any) -> None:
    """Under the axes, where it hides neither the lines nor the move labels."""
    ax.figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=4,
                     fontsize=8, frameon=False)


def _short(label: str) -> str:
    return "smart persistence" if label == SMART else label


def power_figure(report: dict[str, Any], settings: Settings) -> str:
    with _drawing(settings, PLOT_POWER):
        return _svg(_draw_power(report, settings))


def _draw_power(report: dict[str, Any], settings: Settings) -> Any:
    import matplotlib.dates as mdates
    import numpy as np

    rows = report["backtest"]["rows"]
    fig, ax = _new_figure(4.2)
    when = _times(r["forecast_for"] for r in rows)

    def series(name: str) -> Any:
        return np.array([np.nan if r[name] is None else r[name] for r in rows], dtype=float)

    daylight = np.array([bool(r["daylight"]) for r in rows])
    if daylight.any():
        ax.fill_between(when, 0, 1, where=daylight, transform=ax.get_xaxis_transform(),
                        color="#fff3c4", linewidth=0, label="daylight (scored)")
    served = sorted({r["served_by"] or "nothing" for r in rows})
    ax.plot(when, series("power_at_target"), color="black", linewidth=1.3,
            label="realised power")
    ax.plot(when, series("predicted_power"), color="#1f77b4", linewidth=1.1,
            label=f"served forecast ({', '.join(_short(s) for s in served)})")
    ax.plot(when, series("smart_persistence"), color="#ff7f0e", linewidth=1.0,
            linestyle="--", label="smart persistence")
    _mark_moves(ax, report["moves"], _at(report["day_start"]), _at(report["day_end"]))
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_title(f"{report['device_id']}, period {report['day']}: power "
                 f"{settings.horizon_minutes} min ahead, forecast vs realised")
    ax.set_ylabel("power at target time (W)")
    ax.set_xlabel(f"target time ({settings.timezone})")
    _legend_below(ax)
    ax.grid(alpha=0.3)
    return fig


def skill_figure(report: dict[str, Any], settings: Settings) -> str:
    with _drawing(settings, PLOT_SKILL):
        return _svg(_draw_skill(report))


MAX_PERIOD_LABELS = 12


def _draw_skill(report: dict[str, Any]) -> Any:
    import numpy as np

    scores = sorted(report["scores"], key=lambda s: s["period_start"])
    fig, ax = _new_figure(4.2)
    starts = _times(s["period_start"] for s in scores)

    def percent(name: str) -> Any:
        return np.array([np.nan if s.get(name) is None else 100 * s[name] for s in scores])

    ax.axvspan(_at(report["day_start"]), _at(report["day_end"]), color="#e8e8e8",
               label=f"period {report['day']} (above)")
    ax.axhline(0, color="black", linewidth=0.9)
    ax.plot(starts, percent("daylight_skill"), marker="o", color="#1f77b4",
            label="vs persistence")
    ax.plot(starts, percent("daylight_skill_smart"), marker="s", color="#ff7f0e",
            label="vs smart persistence")
    _mark_moves(ax, report["moves"])
    # From the first point or move to the end of the last period (or the newest move).
    left = min([starts[0], *(_at(m["at"]) for m in report["moves"])])
    right = max([_at(scores[-1]["period_end"]), *(_at(m["at"]) for m in report["moves"])])
    pad = (right - left) * 0.02
    ax.set_xlim(left - pad, right + pad)
    step = -(-len(scores) // MAX_PERIOD_LABELS)
    ax.set_xticks(list(starts), [s["period"] if i % step == 0 else ""
                                 for i, s in enumerate(scores)], rotation=30, ha="right")
    ax.set_title(f"{report['device_id']}: realised daylight skill per scored period "
                 f"(1 - MAE / baseline MAE), last {report['days']} days")
    ax.set_ylabel("daylight skill (%)")
    ax.set_xlabel("scored period (each point at its start); dotted lines: pointer moves")
    _legend_below(ax)
    ax.grid(alpha=0.3)
    return fig


# --- page -----------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
.facts { color: #444; margin: .2rem 0; }
svg.plot { display: block; width: 100%; height: auto; }
table { border-collapse: collapse; font-size: .85rem; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .25rem .5rem; text-align: left;
         vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.move-drift td:first-child, tr.move-drift td:nth-child(2) { color: #d62728; font-weight: 600; }
"""


def _when(value: Any) -> str:
    """An ISO 8601 UTC time as '2026-03-08 14:00 UTC' (seconds only when not zero)."""
    try:
        at = _at(value)
    except (TypeError, ValueError, AttributeError):
        return "-" if value is None else str(value)
    return at.strftime("%Y-%m-%d %H:%M" + (":%S" if at.second else "") + " UTC")


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _pct(value: Any) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{value:+.1%}"


def _watts(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.1f} W"


def _serving_now(current: dict[str, Any]) -> str:
    if current.get("serving") == "model":
        return f"model {current['version']} (since {_when(current.get('updated_at'))})"
    if current.get("serving") == SMART:
        return (f"smart persistence (since {_when(current.get('updated_at'))}): "
                f"{current.get('reason') or 'no reason recorded'}")
    return "nothing (no model has been promoted)"


def _main_server(score: dict[str, Any]) -> str:
    served = score.get("served_by") or {}
    return _short(max(served, key=served.get)) if served else "-"


def _moves_table(moves: list[dict[str, Any]]) -> str:
    if not moves:
        return "<p>No pointer moves in this span.</p>"
    rows = "".join(
        f'<tr class="move-{_e(m["move"])}"><td>{_e(_when(m["at"]))}</td>'
        f'<td>{_e(m["move"])}</td>'
        f'<td>{_e(_short(m.get("version") or m.get("serving") or "nothing"))}</td>'
        f'<td>{_e(_short(m["replaced"]) if m.get("replaced") else None)}</td>'
        f'<td>{_e(m.get("reason"))}</td><td>{_e(m.get("run_id"))}</td></tr>'
        for m in moves)
    return ('<table id="moves"><thead><tr><th>at</th><th>move</th><th>now serving</th>'
            '<th>replaced</th><th>reason</th><th>run</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def _scores_table(scores: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(s['period'])}</td><td>{_e(_main_server(s))}</td>"
        f"<td class=num>{_e(s.get('daylight_rows'))}</td>"
        f"<td class=num>{_watts(s.get('daylight_mae'))}</td>"
        f"<td class=num>{_watts(s.get('daylight_smart_persistence_mae'))}</td>"
        f"<td class=num>{_pct(s.get('daylight_skill'))}</td>"
        f"<td class=num>{_pct(s.get('daylight_skill_smart'))}</td></tr>"
        for s in scores)
    return ('<table id="scores"><thead><tr><th>period</th><th>served by</th>'
            '<th>daylight rows</th><th>daylight MAE</th><th>smart persistence MAE</th>'
            '<th>skill</th><th>vs smart</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def render(report: dict[str, Any], settings: Settings) -> str:
    """The page: header, the two figures, the moves and the scores."""
    scores, summary = report["scores"], report["backtest"]["summary"]
    device = report["device_id"]
    drifts = sum(m["move"] == "drift" for m in report["moves"])
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Everything is inline: the browser is told to fetch nothing at all.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Forecast report: {_e(device)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Forecast report: {_e(device)}</h1>",
        f'<p class="facts">Span: the last {report["days"]} days '
        f'({_e(_when(report["since"]))} to {_e(_when(report["now"]))}): {len(scores)} scored '
        f'period(s), {_e(scores[-1]["period"])} to {_e(scores[0]["period"])}; '
        f'{len(report["moves"])} pointer move(s), {drifts} drift(s).</p>',
        f'<p class="facts" id="serving-now">Serving now: {_e(_serving_now(report["current"]))}'
        "</p>",
        f'<h2>Period {_e(report["day"])}: realised vs forecast power</h2>',
        f'<p class="facts">[{_e(_when(report["day_start"]))}, '
        f'{_e(_when(report["day_end"]))}): {summary["rows"]} readings, '
        f'{summary["daylight_rows"]} in daylight; daylight MAE '
        f'{_watts(summary["daylight_mae"])} (persistence '
        f'{_watts(summary["daylight_persistence_mae"])}, smart persistence '
        f'{_watts(summary["daylight_smart_persistence_mae"])}): skill '
        f'{_pct(summary["daylight_skill"])} against persistence, '
        f'{_pct(summary["daylight_skill_smart"])} against smart persistence.</p>',
        power_figure(report, settings),
        "<h2>Daily realised daylight skill against both baselines</h2>",
        '<p class="facts">Above zero the served forecast beat the baseline in that period. '
        "Dotted lines mark the pointer moves (promotions, rollbacks, fallbacks, drifts).</p>",
        skill_figure(report, settings),
        "<h2>Pointer moves</h2>", _moves_table(report["moves"]),
        "<h2>Scored periods</h2>", _scores_table(scores),
        f'<p class="facts">Made by solar-ml report at {_e(_when(report["now"]))}.</p>',
        "</body></html>", ""])


# --- output ---------------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """`text` at `path` whole or not at all: a temp file beside it, synced, then renamed."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ReportNotWritten(f"cannot write the report to {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise ReportNotWritten(f"cannot write the report to {path}: "
                                   f"{exc.strerror or exc}") from None
        raise


def make_report(settings: Settings, store: Store, device_id: str, out: str | os.PathLike[str],
                *, days: int = accountability.DEFAULT_SCORE_DAYS, day: str | None = None,
                now: datetime | None = None) -> dict[str, Any]:
    """Gather, draw and write the report; returns what `--json` prints."""
    path = check_out(out)
    report = gather(settings, store, device_id, days=days, day=day, now=now)
    write_atomically(path, render(report, settings))
    return {"out": str(path), "device_id": device_id, "periods": len(report["scores"]),
            "moves": len(report["moves"]), "day": report["day"],
            "day_start": report["day_start"], "day_end": report["day_end"]}
