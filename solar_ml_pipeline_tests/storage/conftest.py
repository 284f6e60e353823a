"""The `store` fixture: every backend the contract suite runs against.

SQLite on a temporary file and MongoStore on mongomock always; a real MongoDB only when
SOLAR_ML_TEST_MONGODB_URI is set, in a throwaway database dropped afterwards.
"""

from __future__ import annotations

import os
import uuid

import pytest

from solar_ml_pipeline.storage.mongo import MongoStore, mongo_location
from solar_ml_pipeline.storage.sqlite import SqliteStore
from solar_ml_pipeline_tests.storage.mongomock_client import mongomock_store

REAL_MONGODB_URI = os.environ.get("SOLAR_ML_TEST_MONGODB_URI")


BACKENDS = ["sqlite", "mongomock", *(["mongodb"] if REAL_MONGODB_URI else [])]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    if request.param == "sqlite":
        backend = SqliteStore(tmp_path / "home" / "solar_ml.db")
        yield backend
        backend.close()
    elif request.param == "mongomock":
        backend = mongomock_store()
        yield backend
        backend.close()
    else:
        from pymongo import MongoClient

        db_name = f"solar_ml_test_{uuid.uuid4().hex[:12]}"
        client = MongoClient(REAL_MONGODB_URI, tz_aware=True, serverSelectionTimeoutMS=5000)
        backend = MongoStore(client, db_name, location=mongo_location(REAL_MONGODB_URI))
        try:
            yield backend
        finally:
            cleanup = MongoClient(REAL_MONGODB_URI, serverSelectionTimeoutMS=5000)
            cleanup.drop_database(db_name)
            cleanup.close()
            backend.close()
