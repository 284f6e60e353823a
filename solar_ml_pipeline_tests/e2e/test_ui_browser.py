"""The Dagster UI as an operator clicks it, in headless Debian chromium (Playwright, sync API).

One `dagster dev` serves the module: four healthy trackers with four days of readings and
`ghost01` with a few minutes of them, so every batch holding ghost01 is a partially failed
batch. The device sensor adds the five devices and launches its batches for the current
period; the tests wait for those, then:

1. "Materialize all" on the `retraining` asset group, all devices x the latest period, launches
   a backfill of ranged runs of at most FLEET_BATCH_SIZE devices; the run holding ghost01 fails
   and the backfill completes as failed, every healthy device materialised.
2. The newest failed run holding ghost01 (the backfill's) shows the truth per device on its run
   page and in the asset's partitions view; once ghost01 has readings, the run page's
   "Re-execute" > "From failure" retrains ghost01 alone.

State is checked over GraphQL and in the run log, never by sleeping; the screenshots of the
key pages go to pytest's tmp dir (their paths are printed).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from solar_ml_pipeline.orchestration.batches import PARTITION_TAG, RANGE_END_TAG, RANGE_START_TAG
from solar_ml_pipeline.orchestration.partitions import (
    DEVICE_DIMENSION,
    PERIOD_DIMENSION,
    period_key_at,
)
from solar_ml_pipeline.storage import open_store
from solar_ml_pipeline_tests.conftest import simulate_into
from solar_ml_pipeline_tests.e2e.conftest import DagsterDev, running_dagster_dev
from solar_ml_pipeline_tests.e2e.dagster_api import DagsterApi, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium); "
                "the UI tests drive it headless", allow_module_level=True)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--no-proxy-server"]

HEALTHY = ("tracker01", "tracker02", "tracker03", "tracker04")
GHOST = "ghost01"  # a few minutes of readings: none in any training window
DEVICES = {**dict.fromkeys(HEALTHY, 4), GHOST: 0.05}
BATCH_SIZE = 3
ENV = {"FLEET_BATCH_SIZE": str(BATCH_SIZE), "RETRAIN_ENABLED": "false", "RETRAIN_DAYS": "3"}
# The current period began ~18 h ago and the next begins in 6 h: the "latest" period the UI
# offers stays the one the sensor trained while the module runs.
SCHEDULE_LEAD = timedelta(hours=6)
GROUP = "retraining"
DECISION = "promotion_decision"

UI_TIMEOUT_MS = 60_000
CLICK_EFFECT_MS = 3_000  # a click's visible effect: longer means the click was lost
RUN_TIMEOUT_S = 180
BACKFILL_TIMEOUT_S = 240
BACKFILL_DONE = ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")
RETRY_TAGS = {"parent": "dagster/parent_run_id", "resume": "dagster/is_resume_retry",
              "backfill": "dagster/backfill"}

BACKFILL = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename
  ... on PartitionBackfill { id status numPartitions partitionNames }
  ... on PythonError { message }
} }"""

PARTITION_STATUSES = """
query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
  __typename
  ... on AssetNode { assetPartitionStatuses {
    __typename
    ... on MultiPartitionStatuses { primaryDimensionName ranges {
      primaryDimStartKey primaryDimEndKey
      secondaryDim { __typename ... on DefaultPartitionStatuses {
        materializedPartitions failedPartitions materializingPartitions } } } }
  } }
} }"""


# fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory) -> Iterator[DagsterDev]:
    with running_dagster_dev(tmp_path_factory.mktemp("ui"), DEVICES, extra_env=ENV,
                             schedule_lead=SCHEDULE_LEAD) as dev:
        yield dev


@pytest.fixture(scope="module")
def browser(dagster_ui) -> Iterator[Browser]:
    expect.set_options(timeout=UI_TIMEOUT_MS)  # every assertion waits for the live UI
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, dagster_ui) -> Iterator[Page]:
    """A fresh browser context (no cookies, no local storage) per test."""
    context = browser.new_context(base_url=dagster_ui.url,
                                  viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    # A first visit may show the "Join the Dagster community" dialog over whatever is next.
    page.add_locator_handler(page.get_by_role("button", name="Skip", exact=True),
                             lambda skip: skip.click())
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui_screenshots")


@pytest.fixture(scope="module")
def fleet(dagster_ui) -> dict[str, object]:
    """The devices in Dagster's order and the current period, once the sensor's batches are
    done (a later launch for the same partitions would otherwise race them)."""
    api = dagster_ui.api
    known = wait_until(lambda: set(DEVICES) <= set(device_order(api)), timeout_s=120)
    assert known, f"device sensor did not add {sorted(DEVICES)}:\n{dagster_ui.log_tail()}"
    order = device_order(api)

    def discovery_runs():
        runs = api.runs(tags={"solar/trigger": "discovery"})
        covered = {d for run in runs for d in run_devices(run, order)}
        return runs if covered >= set(DEVICES) else None

    runs = wait_until(discovery_runs, timeout_s=60)
    assert runs, f"no discovery runs for {sorted(DEVICES)}:\n{dagster_ui.log_tail()}"
    statuses = api.wait_for_runs([r["runId"] for r in runs], RUN_TIMEOUT_S)
    assert all(s in ("SUCCESS", "FAILURE") for s in statuses.values()), (
        f"{statuses}\n{dagster_ui.log_tail()}")
    (period,) = {r["tags"]["solar/period"] for r in runs}
    assert period == period_key_at(dagster_ui.settings, datetime.now(UTC))
    return {"order": order, "period": period}


# helpers ----------------------------------------------------------------------------------------

def device_order(api: DagsterApi) -> list[str]:
    """Device partition keys in Dagster's order (insertion order, which ranges follow)."""
    return api.partition_keys("raw_readings").get(DEVICE_DIMENSION, [])


def run_devices(run: dict, order: list[str]) -> list[str]:
    """The devices a run targeted: its device range, or its single partition."""
    tags = run["tags"]
    if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
        first, last = (tags[t].split("|")[0] for t in (RANGE_START_TAG, RANGE_END_TAG))
        return order[order.index(first):order.index(last) + 1]
    if PARTITION_TAG in tags:
        return [tags[PARTITION_TAG].split("|")[0]]
    return []


def device_statuses(api: DagsterApi, asset: str, period: str) -> dict[str, set[str]]:
    """What the UI's partitions view draws for one period: devices materialised / failed."""
    node = api.query(PARTITION_STATUSES, {"path": [asset]})["assetNodeOrError"]
    statuses = node["assetPartitionStatuses"]
    assert statuses["primaryDimensionName"] == PERIOD_DIMENSION, statuses
    out: dict[str, set[str]] = {"materialized": set(), "failed": set(), "materializing": set()}
    for span in statuses["ranges"]:
        if span["primaryDimStartKey"] <= period <= span["primaryDimEndKey"]:
            dim = span["secondaryDim"]
            out["materialized"] |= set(dim["materializedPartitions"])
            out["failed"] |= set(dim["failedPartitions"])
            out["materializing"] |= set(dim["materializingPartitions"])
    return out


def latest_materialization_run(api: DagsterApi, asset: str, partition: str) -> str | None:
    events = api.materialization_metadata(asset, partition)  # newest first
    return events[0]["runId"] if events else None


def shoot(page: Page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def click_until(click: Locator | Callable[[float], None], effect: Callable[[float], None]) -> None:
    """Click until the effect shows (`effect(timeout_ms)` asserts it): a click that lands
    before the page has wired its handlers or loaded what the control acts on is lost, and a
    person would click again. `click` is a locator or `click(timeout_ms)`."""
    def attempt(timeout_ms: float) -> None:
        if isinstance(click, Locator):
            click.click(timeout=timeout_ms)
        else:
            click(timeout_ms)

    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        try:
            attempt(CLICK_EFFECT_MS)
        except PlaywrightTimeoutError:
            pass  # not clickable yet, or covered by what the previous click opened
        try:
            effect(CLICK_EFFECT_MS)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def visible(locator: Locator) -> Callable[[float], None]:
    return lambda timeout_ms: expect(locator).to_be_visible(timeout=timeout_ms)


def open_ui(page: Page, path: str) -> None:
    page.goto(path)
    page.wait_for_load_state("networkidle")


def device_dot(page: Page, device: str):
    """The status dot beside a device in the partitions view's device column."""
    return page.locator(f'[data-tooltip="{device}"]').first.locator(
        "xpath=following-sibling::div[1]")


def open_partitions_view(page: Page, asset: str, period: str) -> None:
    open_ui(page, f"/assets/{asset}?view=partitions&period_range={quote(period)}")
    expect(page.get_by_text(f"{len(DEVICES)} Partitions Selected")).to_be_visible()


def select_partition(page: Page, device: str, period: str) -> None:
    """Click the device, then the period, in the partitions view: the partition's details."""
    def click(timeout_ms: float) -> None:
        page.locator(f'[data-tooltip="{device}"]').first.click(timeout=timeout_ms)
        page.locator(f'[data-tooltip="{period}"]').first.click(timeout=timeout_ms)

    click_until(click, visible(page.get_by_text(f"{device}|{period}", exact=True).first))


def rerun_menu_item(page: Page, label: str):
    """Open the dropdown beside the run page's "Re-execute all (*)" and return one item."""
    button = page.get_by_role("button", name="Re-execute all (*)")
    expect(button).to_be_enabled()
    item = page.get_by_role("menuitem", name=re.compile(rf"(^|\s){re.escape(label)}$"))
    dropdown = button.locator("xpath=..").get_by_role("button").filter(
        has=page.get_by_role("img", name="arrow_drop_down"))
    click_until(dropdown, visible(item))
    return item


# tests ------------------------------------------------------------------------------------------

def test_materialize_all_from_the_asset_graph_launches_a_batched_backfill(
        dagster_ui, fleet, page, screenshots):
    api, order, period = dagster_ui.api, fleet["order"], fleet["period"]
    assert api.partition_keys("raw_readings")[PERIOD_DIMENSION][-1] == period  # the "Latest"

    open_ui(page, f"/locations/{api.location}/asset-groups/{GROUP}")
    for asset in ("raw_readings", "feature_frame", "model_version", DECISION):
        expect(page.get_by_text(asset, exact=True).first).to_be_visible()
    shoot(page, screenshots, "1_asset_group_graph")

    dialog = page.locator("[role=dialog][aria-modal=true]").filter(
        has_text="Launch runs to materialize 4 assets")
    click_until(page.get_by_role("button", name="Materialize all"), visible(dialog))
    all_devices = dialog.get_by_role("button", name="All", exact=True).first  # then the period's
    click_until(all_devices,
                visible(dialog.get_by_text(f"{len(DEVICES)} partitions selected")))
    period_input = dialog.get_by_placeholder(re.compile(r"^ex: "))
    click_until(dialog.get_by_role("button", name="Latest", exact=True),
                lambda timeout_ms: expect(period_input).to_have_value(period, timeout=timeout_ms))
    expect(dialog.get_by_text(f"{len(DEVICES)} partitions", exact=True)).to_be_visible()
    shoot(page, screenshots, "2_materialize_all_dialog")
    dialog.get_by_role("button", name="Launch backfill").click()

    toast = page.get_by_text(re.compile(r"^Created backfill [a-z0-9]+$"))
    expect(toast).to_be_visible()
    backfill_id = toast.inner_text().split()[-1]
    shoot(page, screenshots, "3_backfill_created")

    def finished():
        backfill = api.query(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        return backfill if backfill["status"] in BACKFILL_DONE else None

    backfill = wait_until(finished, BACKFILL_TIMEOUT_S, interval_s=2)
    assert backfill, f"backfill {backfill_id} did not finish:\n{dagster_ui.log_tail()}"
    assert sorted(backfill["partitionNames"]) == sorted(f"{d}|{period}" for d in DEVICES)

    runs = api.runs(tags={RETRY_TAGS["backfill"]: backfill_id})
    assert len(runs) == math.ceil(len(DEVICES) / BATCH_SIZE), runs
    batches = {}
    for run in runs:
        tags = run["tags"]
        assert {tags[RANGE_START_TAG].split("|")[1], tags[RANGE_END_TAG].split("|")[1]} == {period}
        devices = run_devices(run, order)
        assert 1 <= len(devices) <= BATCH_SIZE, (tags, order)
        batches[run["runId"]] = devices
    assert sorted(d for ds in batches.values() for d in ds) == sorted(DEVICES)  # each once

    # the batch holding ghost01 fails (its other devices are retrained); the others succeed
    for run in runs:
        expected = "FAILURE" if GHOST in batches[run["runId"]] else "SUCCESS"
        assert run["status"] == expected, (run, dagster_ui.log_tail())
    assert backfill["status"] == "COMPLETED_FAILED", backfill
    for device in HEALTHY:
        assert latest_materialization_run(api, DECISION, f"{device}|{period}") in batches, device
    assert set(HEALTHY) <= device_statuses(api, DECISION, period)["materialized"]

    open_ui(page, f"/runs/b/{backfill_id}")
    expect(page.get_by_text("Failed", exact=True).first).to_be_visible()
    shoot(page, screenshots, "4_backfill_page")


def test_a_partially_failed_batch_tells_the_truth_per_device_and_retries_only_the_failed(
        dagster_ui, fleet, page, screenshots):
    api, order, period = dagster_ui.api, fleet["order"], fleet["period"]
    # the newest run holding ghost01 (the backfill's when the test above ran, else the sensor's)
    failed = next(r for r in api.runs() if GHOST in run_devices(r, order))
    run_id, batch = failed["runId"], run_devices(failed, order)
    others = [d for d in batch if d != GHOST]
    assert failed["status"] == "FAILURE" and others, (failed, batch)

    # the truth per device, over GraphQL: ghost01 failed, its batch-mates materialised by the run
    statuses = device_statuses(api, DECISION, period)
    assert statuses["failed"] == {GHOST}, statuses
    assert set(HEALTHY) <= statuses["materialized"], statuses
    assert latest_materialization_run(api, DECISION, f"{GHOST}|{period}") is None
    for device in others:
        assert latest_materialization_run(api, DECISION, f"{device}|{period}") == run_id

    # ... on the run page: failed, with the step's error naming the failed device
    open_ui(page, f"/runs/{run_id}")
    expect(page.get_by_text("Failure", exact=True).first).to_be_visible()
    expect(page.get_by_text("Errored (1)")).to_be_visible()
    expect(page.get_by_text(re.compile(
        rf"1 of {len(batch)} devices failed \({GHOST}: No data found for training")).first
    ).to_be_visible()
    expect(page.get_by_text(re.compile(r"Re-execute from failure .* retries only the failed ones"))
           .first).to_be_visible()
    shoot(page, screenshots, "5_failed_batch_run_page")

    # ... and in the asset's partitions view of the period: red for ghost01, green for the rest
    open_partitions_view(page, DECISION, period)
    expect(page.get_by_text("Failed (1)", exact=True)).to_be_visible()
    expect(page.get_by_text(f"Materialized ({len(HEALTHY)})", exact=True)).to_be_visible()
    expect(device_dot(page, GHOST)).to_have_attribute("style", re.compile(r"accent-red"))
    for device in HEALTHY:
        expect(device_dot(page, device)).to_have_attribute("style", re.compile(r"accent-green"))
    select_partition(page, GHOST, period)
    expect(page.get_by_text("did not materialize this asset")).to_contain_text(
        f"Run {run_id[:8]} failed, and did not materialize this asset")
    shoot(page, screenshots, "6_partitions_ghost01_failed")
    select_partition(page, others[0], period)
    expect(page.get_by_text("Materialized", exact=True)).to_be_visible()  # the partition's tag
    expect(page.get_by_role("link", name=run_id[:8]).first).to_be_visible()
    shoot(page, screenshots, "7_partitions_batch_mate_materialized")

    # ghost01's readings arrive; one click re-executes the run from failure
    store = open_store(dagster_ui.settings)
    try:
        assert simulate_into(store, GHOST, end=datetime.now(UTC), days=4, interval_minutes=5) > 0
    finally:
        store.close()
    open_ui(page, f"/runs/{run_id}")
    from_failure = rerun_menu_item(page, "From failure")
    expect(from_failure).to_have_attribute("aria-disabled", "false")
    shoot(page, screenshots, "8_reexecute_menu")
    from_failure.click()
    if RETRY_TAGS["backfill"] in failed["tags"]:  # the UI asks before re-running a backfill's run
        confirm = page.locator("[role=dialog][aria-modal=true]").filter(
            has_text="Re-execution within backfill")
        expect(confirm).to_contain_text("Re-executing will not update the backfill status")
        confirm.get_by_role("button", name="Confirm").click()
    page.wait_for_url(re.compile(rf"/runs/(?!{run_id})[0-9a-f-]{{36}}"))
    retry_id = page.url.split("/runs/")[1].split("?")[0]

    statuses = api.wait_for_runs([retry_id], RUN_TIMEOUT_S)
    assert statuses[retry_id] == "SUCCESS", f"{statuses}\n{dagster_ui.log_tail()}"
    (retry,) = api.runs(run_ids=[retry_id])
    assert retry["tags"][RETRY_TAGS["parent"]] == run_id
    assert retry["tags"][RETRY_TAGS["resume"]] == "true"
    assert run_devices(retry, order) == batch  # the parent's range; only ghost01 is retrained

    store = open_store(dagster_ui.settings)
    try:
        ghost_records = store.list_runs(device_id=GHOST).runs
        by_retry = {d: [r for r in store.list_runs(device_id=d).runs
                        if r["dagster_run_id"] == retry_id] for d in others}
    finally:
        store.close()
    assert [r["status"] for r in ghost_records if r["dagster_run_id"] == retry_id] == ["success"]
    assert by_retry == {d: [] for d in others}, by_retry
    assert latest_materialization_run(api, DECISION, f"{GHOST}|{period}") == retry_id
    for device in others:
        assert latest_materialization_run(api, DECISION, f"{device}|{period}") == run_id
    assert device_statuses(api, DECISION, period)["failed"] == set()

    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    shoot(page, screenshots, "9_retry_run_succeeded")
    open_partitions_view(page, DECISION, period)
    expect(page.get_by_text("Failed (0)", exact=True)).to_be_visible()
    expect(page.get_by_text(f"Materialized ({len(DEVICES)})", exact=True)).to_be_visible()
    expect(device_dot(page, GHOST)).to_have_attribute("style", re.compile(r"accent-green"))
    shoot(page, screenshots, "10_partitions_after_retry")
