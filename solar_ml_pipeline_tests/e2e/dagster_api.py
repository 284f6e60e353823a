"""The few GraphQL calls the end-to-end tests make, as a person's UI clicks would."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

TERMINAL_STATUSES = ("SUCCESS", "FAILURE", "CANCELED")
# Loopback only: a developer's or CI's HTTP(S)_PROXY must not intercept these requests.
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))

REPOSITORIES = """
query { repositoriesOrError {
  __typename
  ... on RepositoryConnection { nodes { name location { name } } }
  ... on PythonError { message }
} }"""

LOCATION_ERRORS = """
query { workspaceOrError {
  __typename
  ... on Workspace { locationEntries { name locationOrLoadError {
      __typename ... on PythonError { message } } } }
} }"""

LAUNCH_RUN = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on PythonError { message }
  ... on Error { message }
} }"""

RUNS = """
query($filter: RunsFilter) { runsOrError(filter: $filter) {
  __typename
  ... on Runs { results { runId status jobName creationTime tags { key value } } }
  ... on PythonError { message }
} }"""

PARTITION_KEYS = """
query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
  __typename
  ... on AssetNode { partitionKeysByDimension { name partitionKeys } }
} }"""

ADD_DYNAMIC_PARTITION = """
mutation($repo: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on AddDynamicPartitionSuccess { partitionKey }
    ... on PythonError { message }
    ... on Error { message }
  }
}"""

MATERIALIZATIONS = """
query($path: [String!]!, $partitions: [String!]) { assetOrError(assetKey: {path: $path}) {
  __typename
  ... on Asset { assetMaterializations(partitions: $partitions) {
    runId partition
    metadataEntries {
      label __typename
      ... on FloatMetadataEntry { floatValue }
      ... on IntMetadataEntry { intValue }
    }
  } }
} }"""

SCHEDULE_STATE = """
query($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) {
  __typename
  ... on Schedule { cronSchedule executionTimezone scheduleState { status } }
  ... on PythonError { message }
} }"""

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename
  ... on LaunchBackfillSuccess { backfillId }
  ... on PythonError { message }
  ... on Error { message }
} }"""

BACKFILL = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename
  ... on PartitionBackfill { status }
  ... on PythonError { message }
} }"""

REEXECUTE = """
mutation($params: ReexecutionParams!) { launchPipelineReexecution(reexecutionParams: $params) {
  __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on Error { message }
} }"""

PARTITION_STATS = """
query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
  __typename
  ... on AssetNode { partitionStats { numMaterialized numFailed numMaterializing } }
} }"""

BACKFILL_DONE = ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")
ASSET_JOB = "__ASSET_JOB"  # the implicit job behind the UI's Materialize buttons


class GraphQLError(AssertionError):
    """The API answered with errors; the message holds them."""


class DagsterApi:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.location: str | None = None
        self.repository: str | None = None

    def query(self, text: str, variables: Mapping[str, Any] | None = None,
              timeout_s: float = 30) -> dict[str, Any]:
        body = json.dumps({"query": text, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(f"{self.base_url}/graphql", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with LOOPBACK.open(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise GraphQLError(json.dumps(answer["errors"])[:2000])
        return answer["data"]

    # the code location ------------------------------------------------------------------------

    def location_errors(self) -> list[str]:
        entries = self.query(LOCATION_ERRORS)["workspaceOrError"].get("locationEntries", [])
        return [f"{e['name']}: {e['locationOrLoadError']['message']}" for e in entries
                if (e.get("locationOrLoadError") or {}).get("__typename") == "PythonError"]

    def find_repository(self) -> bool:
        """Remember the (location, repository) of our code; False while it is still loading."""
        nodes = self.query(REPOSITORIES)["repositoriesOrError"].get("nodes", [])
        if not nodes:
            return False
        (node,) = nodes
        self.location, self.repository = node["location"]["name"], node["name"]
        return True

    @property
    def repository_selector(self) -> dict[str, str]:
        return {"repositoryLocationName": self.location, "repositoryName": self.repository}

    def schedule_state(self, name: str) -> dict[str, Any]:
        selector = {**self.repository_selector, "scheduleName": name}
        return self.query(SCHEDULE_STATE, {"selector": selector})["scheduleOrError"]

    # partitions -------------------------------------------------------------------------------

    def partition_keys(self, asset: str) -> dict[str, list[str]]:
        node = self.query(PARTITION_KEYS, {"path": [asset]})["assetNodeOrError"]
        return {d["name"]: d["partitionKeys"] for d in node["partitionKeysByDimension"]}

    def add_dynamic_partition(self, name: str, key: str) -> None:
        result = self.query(ADD_DYNAMIC_PARTITION,
                            {"repo": self.repository_selector, "name": name, "key": key})
        outcome = result["addDynamicPartition"]
        assert outcome["__typename"] == "AddDynamicPartitionSuccess", outcome

    # runs -------------------------------------------------------------------------------------

    def launch_run(self, job: str, tags: Mapping[str, str],
                   run_config: Mapping[str, Any] | None = None,
                   assets: list[str] | None = None) -> str:
        """A run of one job; `assets` selects a subset, as the asset pages do."""
        selector: dict[str, Any] = {**self.repository_selector, "jobName": job}
        if assets is not None:
            selector["assetSelection"] = [{"path": [name]} for name in assets]
        params = {
            "selector": selector,
            "runConfigData": dict(run_config or {}),
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        outcome = self.query(LAUNCH_RUN, {"params": params})["launchRun"]
        assert outcome["__typename"] == "LaunchRunSuccess", outcome
        return outcome["run"]["runId"]

    def runs(self, *, tags: Mapping[str, str] | None = None,
             run_ids: list[str] | None = None) -> list[dict[str, Any]]:
        run_filter: dict[str, Any] = {}
        if tags:
            run_filter["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        if run_ids:
            run_filter["runIds"] = run_ids
        result = self.query(RUNS, {"filter": run_filter})["runsOrError"]
        assert result["__typename"] == "Runs", result
        return [{**r, "tags": {t["key"]: t["value"] for t in r["tags"]}} for r in result["results"]]

    def wait_for_runs(self, run_ids: list[str], timeout_s: float) -> dict[str, str]:
        """Status of each run once all are finished (or as they are at the timeout)."""
        statuses = wait_until(
            lambda: self._statuses_if_finished(run_ids), timeout_s,
        )
        return statuses or {r["runId"]: r["status"] for r in self.runs(run_ids=run_ids)}

    def _statuses_if_finished(self, run_ids: list[str]) -> dict[str, str] | None:
        statuses = {r["runId"]: r["status"] for r in self.runs(run_ids=run_ids)}
        done = set(statuses) == set(run_ids) and all(s in TERMINAL_STATUSES for s in statuses.values())
        return statuses if done else None

    def reexecute(self, parent_run_id: str, strategy: str = "FROM_FAILURE") -> str:
        params = {"parentRunId": parent_run_id, "strategy": strategy}
        outcome = self.query(REEXECUTE, {"params": params})["launchPipelineReexecution"]
        assert outcome["__typename"] == "LaunchRunSuccess", outcome
        return outcome["run"]["runId"]

    # backfills --------------------------------------------------------------------------------

    def launch_backfill(self, assets: list[str], partitions: list[str]) -> str:
        """What "Materialize all" or an asset page's "Materialize..." dialog launches."""
        params = {"assetSelection": [{"path": [name]} for name in assets],
                  "partitionNames": partitions, "fromFailure": False}
        outcome = self.query(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        assert outcome["__typename"] == "LaunchBackfillSuccess", outcome
        return outcome["backfillId"]

    def wait_for_backfill(self, backfill_id: str, timeout_s: float) -> str:
        def finished():
            status = self.query(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]["status"]
            return status if status in BACKFILL_DONE else None

        return wait_until(finished, timeout_s) or "TIMED_OUT"

    # assets -----------------------------------------------------------------------------------

    def partition_stats(self, asset: str) -> dict[str, int]:
        node = self.query(PARTITION_STATS, {"path": [asset]})["assetNodeOrError"]
        return node["partitionStats"]

    def materialization_metadata(self, asset: str, partition: str) -> list[dict[str, Any]]:
        """Metadata entries of each materialisation of one partition, newest first."""
        result = self.query(MATERIALIZATIONS, {"path": [asset], "partitions": [partition]})
        return [
            {"runId": m["runId"], "partition": m["partition"],
             "entries": {e["label"]: e for e in m["metadataEntries"]}}
            for m in result["assetOrError"]["assetMaterializations"]
        ]


def wait_until(probe: Callable[[], Any], timeout_s: float, interval_s: float = 1.0) -> Any:
    """The probe's first truthy answer, or its last answer once timeout_s have passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = probe()
        if answer or time.monotonic() >= deadline:
            return answer
        time.sleep(interval_s)
