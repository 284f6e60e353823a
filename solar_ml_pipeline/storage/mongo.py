"""Production store: the original system's MongoDB collections, through pymongo.

Connection problems surface as one-line StoreUnavailable errors that name the host but
never the credentials. Indexes are created on first use, tolerating what an existing
production database already has (e.g. duplicate readings written by the original system).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
from pymongo import ASCENDING, DESCENDING, MongoClient, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
)

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.storage.base import READING_FIELDS, SITE_FIELDS, RunPage, StoreUnavailable
from solar_ml_pipeline.storage.records import (
    check_page,
    chunks,
    empty_readings_frame,
    lenient_float,
    normalize_readings,
    normalize_run,
    normalize_score,
    normalize_site,
    readings_frame,
    run_from_storage,
    site_from_storage,
    to_epoch_us,
    to_utc,
    window_bounds,
)

log = logging.getLogger(__name__)

WRITE_BATCH = 1_000
DUPLICATE_KEY = 11000
AUTH_FAILURES = (13, 18)  # Unauthorized, AuthenticationFailed
# _id stays in: it breaks ties between duplicate keys an older writer may have left.
READING_PROJECTION = {"timestamp": 1, **{name: 1 for name in READING_FIELDS}}
RUN_ORDER = [("trained_at", DESCENDING), ("run_id", DESCENDING)]


def mongo_location(uri: str) -> str:
    """The host list of a MongoDB URI, without user, password, database or options."""
    rest = uri.split("://", 1)[-1].split("?", 1)[0]
    hosts = rest.rsplit("@", 1)[-1] if "@" in rest else rest
    return hosts.split("/", 1)[0] or "localhost"


def _secrets(uri: str) -> list[str]:
    """The credential fragments of a URI, raw and percent-decoded, longest first."""
    rest = uri.split("://", 1)[-1].split("?", 1)[0]
    if "@" not in rest:
        return []
    userinfo = rest.rsplit("@", 1)[0]
    password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
    fragments = {userinfo, unquote(userinfo), password, unquote(password)}
    return sorted((fragment for fragment in fragments if fragment), key=len, reverse=True)


def short_reason(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """The first clause of a pymongo error, without credentials (its messages run long)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for marker in (" (configured timeouts", ", Timeout:", ", full error:"):
        text = text.split(marker, 1)[0]
    for secret in secrets:
        text = text.replace(secret, "***")
    return text[:200]


class MongoStore:
    """Readings, run log and sites in MongoDB.

    Takes ownership of `client` (close() closes it). Nothing is sent to the server until
    the first operation (or ping()), which also creates the indexes.
    """

    def __init__(
        self,
        client: Any,
        db_name: str = "solar_db",
        *,
        readings_collection: str = "readings_raw",
        runs_collection: str = "model_runs",
        devices_collection: str = "devices",
        scores_collection: str = "forecast_scores",
        location: str = "the configured server",
        secrets: Iterable[str] = (),
    ) -> None:
        self._client = client
        self._db = client[db_name]
        self.db_name = db_name
        self._readings = self._db[readings_collection]
        self._runs = self._db[runs_collection]
        self._devices = self._db[devices_collection]
        self._scores = self._db[scores_collection]
        self.location = location
        self._secrets = list(secrets)
        self._ready = False
        self._ready_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> MongoStore:
        uri = settings.mongodb_uri
        if not uri:
            raise ValueError("MongoStore.from_settings needs MONGODB_URI to be set")
        location, secrets = mongo_location(uri), _secrets(uri)
        try:
            client: MongoClient[dict[str, Any]] = MongoClient(
                uri,
                tz_aware=True,
                tzinfo=UTC,
                serverSelectionTimeoutMS=settings.mongodb_timeout_ms,
                connectTimeoutMS=settings.mongodb_timeout_ms,
                appname="solar-ml-pipeline",
            )
        except (ConfigurationError, ConnectionFailure, OperationFailure) as exc:
            # e.g. a mongodb+srv:// name that does not resolve
            raise StoreUnavailable(_unreachable(location, short_reason(exc, secrets))) from None
        return cls(
            client,
            settings.mongodb_db,
            readings_collection=settings.collection_readings,
            runs_collection=settings.collection_model_runs,
            devices_collection=settings.collection_devices,
            location=location,
            secrets=secrets,
        )

    def __repr__(self) -> str:
        return f"MongoStore({self.location!r}, {self.db_name!r})"

    # -- connection -------------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn a lost or refused connection into StoreUnavailable; let other errors through."""
        try:
            yield
        except ConnectionFailure as exc:
            raise self._unavailable(exc) from None
        except OperationFailure as exc:
            if exc.code in AUTH_FAILURES:
                raise self._unavailable(exc) from None
            raise

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(_unreachable(self.location, short_reason(exc, self._secrets)))

    def _use(self) -> None:
        """Connect and create the indexes once per store object."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            try:
                self._db.command("ping")
                self._ensure_index(self._readings, [("device_id", ASCENDING), ("timestamp", ASCENDING)])
                self._ensure_index(self._runs, [("run_id", ASCENDING)])
                self._ensure_index(
                    self._runs, [("trained_at", DESCENDING), ("run_id", DESCENDING)], unique=False
                )
                self._ensure_index(
                    self._runs, [("device_id", ASCENDING), ("trained_at", DESCENDING)], unique=False
                )
                self._ensure_index(self._devices, [("device_id", ASCENDING)])
                self._ensure_index(self._scores, [("device_id", ASCENDING), ("period", ASCENDING)])
                self._ensure_index(self._scores, [("device_id", ASCENDING),
                                                  ("period_start_at", DESCENDING)], unique=False)
            except (ConnectionFailure, OperationFailure) as exc:
                raise self._unavailable(exc) from None
            self._ready = True

    @staticmethod
    def _ensure_index(collection: Any, keys: list[tuple[str, int]], unique: bool = True) -> None:
        """An index on `keys`, unless one exists already (whatever its name or options).

        A unique index is wanted but not required: when old data holds duplicates the index
        is made non-unique, and writes stay idempotent through $setOnInsert upserts;
        uniqueness only closes the race of two processes inserting the same new key at once.
        """
        for spec in collection.index_information().values():
            if [(name, int(direction)) for name, direction in spec["key"]] == keys:
                return
        if not unique:
            collection.create_index(keys)
            return
        try:
            collection.create_index(keys, unique=True)
        except OperationFailure as exc:  # DuplicateKeyError is one
            if exc.code != DUPLICATE_KEY:
                raise
            log.warning(
                "%s holds duplicate %s keys; using a non-unique index",
                collection.name,
                ", ".join(name for name, _ in keys),
            )
            collection.create_index(keys)

    def ping(self) -> None:
        self._use()
        with self._guard():
            self._db.command("ping")

    def close(self) -> None:
        self._client.close()

    # -- readings ---------------------------------------------------------------------------

    def write_readings(self, readings: Iterable[Mapping[str, Any]]) -> int:
        rows = normalize_readings(readings)
        self._use()
        added = 0
        for batch in chunks(rows, WRITE_BATCH):
            operations = []
            for row in batch:
                key = {"device_id": row.device_id, "timestamp": row.timestamp}
                document = dict(key)
                for name, value in zip(READING_FIELDS, row.values, strict=True):
                    if value is not None:
                        document[name] = bool(value) if name == "fan_on" else value
                operations.append(UpdateOne(key, {"$setOnInsert": document}, upsert=True))
            with self._guard():
                added += self._upsert_batch(operations)
        return added

    def _upsert_batch(self, operations: list[UpdateOne]) -> int:
        try:
            return self._readings.bulk_write(operations, ordered=False).upserted_count
        except BulkWriteError as exc:
            # Another process inserted the same new key first (unique index): already stored.
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or any(
                error.get("code") != DUPLICATE_KEY for error in errors
            ):
                raise
            return int(exc.details.get("nUpserted", 0))

    def read_window(self, device_id: str, start: datetime, end: datetime) -> pd.DataFrame:
        low, high = window_bounds(start, end)
        self._use()
        with self._guard():
            documents = list(
                self._readings.find(
                    {"device_id": device_id, "timestamp": {"$gte": low, "$lt": high}},
                    READING_PROJECTION,
                ).sort("timestamp", ASCENDING)
            )
        return _frame(documents)

    def latest_readings(self, device_id: str, limit: int) -> pd.DataFrame:
        if limit <= 0:
            return empty_readings_frame()
        self._use()
        with self._guard():
            documents = list(
                self._readings.find({"device_id": device_id}, READING_PROJECTION)
                .sort("timestamp", DESCENDING)
                .limit(int(limit))
            )
        documents.reverse()
        return _frame(documents)

    def list_devices(self) -> list[str]:
        self._use()
        with self._guard():
            ids = self._readings.distinct("device_id")
        return sorted(device_id for device_id in ids if isinstance(device_id, str))

    def count_readings(self, device_id: str | None = None) -> int:
        self._use()
        with self._guard():
            return int(self._readings.count_documents({} if device_id is None else {"device_id": device_id}))

    # -- run log ----------------------------------------------------------------------------

    def upsert_run(self, record: Mapping[str, Any]) -> None:
        fields = normalize_run(record)
        self._use()
        with self._guard():
            try:
                self._runs.update_one({"run_id": fields["run_id"]}, {"$set": fields}, upsert=True)
            except DuplicateKeyError:
                # Two processes created the same run at once; the record exists now: merge.
                self._runs.update_one({"run_id": fields["run_id"]}, {"$set": fields})

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        self._use()
        with self._guard():
            stored = self._runs.find_one({"run_id": run_id}, {"_id": 0})
        return run_from_storage(stored) if stored else None

    def list_runs(
        self,
        device_id: str | None = None,
        status: str | None = None,
        promoted: bool | None = None,
        limit: int = 20,
        skip: int = 0,
    ) -> RunPage:
        check_page(limit, skip)
        query: dict[str, Any] = {}
        if device_id is not None:
            query["device_id"] = device_id
        if status is not None:
            query["status"] = status
        if promoted is not None:
            query["promoted"] = bool(promoted)
        self._use()
        with self._guard():
            total = self._runs.count_documents(query)
            stored = []
            if limit > 0:  # MongoDB reads limit 0 as "no limit"
                stored = list(
                    self._runs.find(query, {"_id": 0}).sort(RUN_ORDER).skip(skip).limit(limit)
                )
        return RunPage(total=int(total), runs=[run_from_storage(record) for record in stored])

    def delete_run(self, run_id: str) -> bool:
        self._use()
        with self._guard():
            return self._runs.delete_one({"run_id": run_id}).deleted_count > 0

    # -- forecast scores --------------------------------------------------------------------

    def upsert_score(self, record: Mapping[str, Any]) -> None:
        fields = normalize_score(record)
        key = {"device_id": fields["device_id"], "period": fields["period"]}
        # period_start_at: the same instant as a BSON date, which the index orders by.
        document = {**fields, "period_start_at": to_utc(fields["period_start"], "period_start")}
        self._use()
        with self._guard():
            try:
                self._scores.replace_one(key, document, upsert=True)
            except DuplicateKeyError:  # two scorers of the same period at once: last wins
                self._scores.replace_one(key, document)

    def list_scores(self, device_id: str, since: datetime | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
        check_page(limit, 0)
        query: dict[str, Any] = {"device_id": device_id}
        if since is not None:
            query["period_start_at"] = {"$gte": to_utc(since, "since")}
        self._use()
        with self._guard():
            stored = list(self._scores.find(query, {"_id": 0, "period_start_at": 0})
                          .sort([("period_start_at", DESCENDING), ("period", DESCENDING)])
                          .limit(limit)) if limit > 0 else []
        return stored

    # -- sites ------------------------------------------------------------------------------

    def set_site(self, device_id: str, site: Mapping[str, Any]) -> None:
        record = normalize_site(device_id, site)
        self._use()
        with self._guard():
            self._devices.replace_one({"device_id": device_id}, record, upsert=True)

    def get_site(self, device_id: str) -> dict[str, Any] | None:
        self._use()
        with self._guard():
            stored = self._devices.find_one({"device_id": device_id}, _SITE_PROJECTION)
        return site_from_storage(stored) if stored else None

    def list_sites(self) -> list[dict[str, Any]]:
        self._use()
        with self._guard():
            stored = list(self._devices.find({}, _SITE_PROJECTION).sort("device_id", ASCENDING))
        return [site_from_storage(record) for record in stored]


_SITE_PROJECTION = {"_id": 0, "device_id": 1, **{name: 1 for name in SITE_FIELDS}}


def _unreachable(location: str, reason: str) -> str:
    return (
        f"MongoDB at {location} is unreachable: {reason}; "
        "check MONGODB_URI or unset it to use the embedded store"
    )


def _frame(documents: list[dict[str, Any]]) -> pd.DataFrame:
    """Readings documents (sorted by time) as the contract frame; a repeated key keeps the first."""
    if not documents:
        return empty_readings_frame()
    count = len(documents)
    timestamps = np.fromiter(
        (to_epoch_us(to_utc(document["timestamp"])) for document in documents),
        dtype=np.int64,
        count=count,
    )
    repeated = np.diff(timestamps) == 0
    if repeated.any():
        # Duplicates from an older writer: the earliest inserted (smallest ObjectId) wins.
        order = sorted(range(count), key=lambda i: (timestamps[i], str(documents[i].get("_id"))))
        documents = [documents[i] for i in order]
        timestamps = timestamps[order]
        repeated = np.diff(timestamps) == 0
    values = np.fromiter(
        (lenient_float(document.get(name)) for document in documents for name in READING_FIELDS),
        dtype=np.float64,
        count=count * len(READING_FIELDS),
    ).reshape(count, len(READING_FIELDS))
    keep = np.concatenate(([True], ~repeated))
    return readings_frame(timestamps[keep], values[keep])
