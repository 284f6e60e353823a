"""`solar-ml report` on a replayed device that loses an inverter string: one self-contained
HTML page whose two plots render in a headless browser and show the drift that moved it."""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest

from solar_ml_pipeline.forecasting.scoring import guard_against_drift, score_period
from solar_ml_pipeline.interfaces import cli
from solar_ml_pipeline_tests.forecasting.test_backtest import (
    DAY,
    DEVICE,
    FIRST_CUTOFF,
    replay_retrains,
)
from solar_ml_pipeline_tests.forecasting.test_scoring import FAULT
from solar_ml_pipeline_tests.interfaces.conftest import ENV

PERIODS = 8  # 4 before the fault, DRIFT_PERIODS (3) losing to smart persistence, 1 after
CHROMIUM = "/usr/bin/chromium"
# A fetch from the page: a src/href (or CSS url) that leaves it.
EXTERNAL = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)\s*(?:https?:)?//""",
                      re.IGNORECASE)


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """Two retrains before the string is lost and none after; each period scored an hour
    after it ends, the drift guard run then (and a drift dated then)."""
    replay = replay_retrains(tmp_path_factory.mktemp("report") / "home",
                             [FIRST_CUTOFF - DAY, FIRST_CUTOFF], days_after=PERIODS + 1,
                             lost_string_from=FAULT)
    drifts = []
    for day in range(PERIODS):
        start = FIRST_CUTOFF + day * DAY
        scored_at = start + DAY + timedelta(hours=1)
        replay.registry.clock = lambda at=scored_at: at
        score_period(replay.settings, replay.store, replay.registry, DEVICE,
                     start.strftime("%Y-%m-%d"), start, start + DAY, now=scored_at)
        if guard_against_drift(replay.settings, replay.store, replay.registry, DEVICE):
            drifts.append(start)
    assert len(drifts) == 1 and drifts[0] < FIRST_CUTOFF + (PERIODS - 1) * DAY
    return replay


@pytest.fixture(scope="module")
def report_file(replay, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report_out") / "report.html"
    env = {"SOLAR_ML_HOME": str(replay.settings.solar_ml_home), **ENV}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert cli.main(["report", "--device", DEVICE, "--days", "3650", "--day", "2026-03-06",
                         "--out", str(out)]) == 0
    return out


def test_the_report_is_one_self_contained_page_with_both_plots_and_the_drift(report_file):
    page = report_file.read_text(encoding="utf-8")
    assert EXTERNAL.findall(page) == []
    assert "<link" not in page and "<script" not in page
    for plot in ("plot-power", "plot-skill"):
        assert len(re.findall(rf'<svg[^>]*\bid="{plot}"', page)) == 1
    assert 'class="move-drift"' in page  # the moves table
    assert "lost to smart persistence" in page
    assert re.search(r"<text[^>]*>\s*drift \u2192 smart persistence", page)  # the marker
    assert "period 2026-03-06" in page and "Serving now: smart persistence" in page
    assert list(report_file.parent.iterdir()) == [report_file]  # no temp file left


def test_json_names_the_file_its_periods_moves_and_day(home_env, tmp_path, capsys):
    out = tmp_path / "newest.html"
    assert cli.main(["report", "--device", DEVICE, "--days", "3650", "--out", str(out),
                     "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["out"] == str(out) and out.is_file()
    assert (made["periods"], made["day"]) == (PERIODS, "2026-03-08")  # the newest by default
    assert made["moves"] == 3  # two promotions, one drift
    assert os.stat(out).st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--device", "tracker99"], 1, "tracker99 has no realised scores in the last 3650 days"),
    (["--device", DEVICE, "--days", "1"], 1, "no realised scores in the last 1 days"),
    (["--device", DEVICE, "--day", "06/03/2026"], 2, "invalid day '06/03/2026'"),
    (["--device", DEVICE, "--day", "2026-02-30"], 2, "invalid day '2026-02-30'"),
    (["--device", DEVICE, "--day", "2026-02-01"], 2, "no scored period on 2026-02-01"),
    (["--device", DEVICE, "--out-dir", "missing"], 2, "folder"),
    (["--device", "../etc"], 2, "device"),
])
def test_refusals_are_one_line_and_leave_no_file(home_env, tmp_path, capsys, args, code,
                                                 message):
    out = tmp_path / "report.html"
    if "--out-dir" in args:  # a folder that does not exist
        args, out = args[:2], tmp_path / "missing" / "report.html"
    full = ["report", *args, "--out", str(out)]
    if "--days" not in args:
        full += ["--days", "3650"]
    assert cli.main(full) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.rglob("*")) == []


def test_an_out_that_is_a_folder_is_refused(home_env, tmp_path, capsys):
    assert cli.main(["report", "--device", DEVICE, "--days", "3650", "--out",
                     str(tmp_path)]) == 2
    assert "it is a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_the_plots_render_in_a_headless_browser(report_file):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install "
                    "chromium)")
    from playwright.sync_api import sync_playwright

    requests = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--no-proxy-server"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report_file.as_uri())
            for plot in ("plot-power", "plot-skill"):
                element = page.locator(f"svg#{plot}")
                element.scroll_into_view_if_needed()
                assert element.is_visible()
                box = element.bounding_box()
                assert box and box["width"] > 300 and box["height"] > 100, (plot, box)
                assert element.locator("path").count() > 10
                drawn = element.evaluate(
                    "svg => [...svg.querySelectorAll('path')].filter(p => {"
                    " const b = p.getBBox(); return b.width > 0 || b.height > 0; }).length")
                assert drawn > 10, plot
            marker = page.locator("svg#plot-skill text", has_text="drift")
            assert marker.count() == 1 and marker.is_visible()
            assert "smart persistence" in (marker.text_content() or "")
            assert page.locator("#moves tr.move-drift").count() == 1
        finally:
            browser.close()
    assert requests == [report_file.as_uri()]  # the page itself, nothing else
