"""An in-memory MongoDB client for tests (mongomock), made to accept pymongo 4.9+ bulk writes.

pymongo >= 4.9 passes a `sort` argument from UpdateOne into the bulk builder, which
mongomock 4.3 does not know; the store never sorts its upserts, so dropping a `sort=None`
is exact. Other test modules that put a MongoStore on mongomock should use this too.
"""

from __future__ import annotations

import functools

import mongomock
from mongomock.collection import BulkOperationBuilder

from solar_ml_pipeline.storage.mongo import MongoStore


def _accept_unsorted_updates() -> None:
    original = BulkOperationBuilder.add_update
    if getattr(original, "_drops_sort", False):
        return

    @functools.wraps(original)
    def add_update(self, *args, sort=None, **kwargs):
        if sort is not None:
            raise NotImplementedError("mongomock cannot sort a bulk update")
        return original(self, *args, **kwargs)

    add_update._drops_sort = True
    BulkOperationBuilder.add_update = add_update


def mongomock_client() -> mongomock.MongoClient:
    _accept_unsorted_updates()
    return mongomock.MongoClient(tz_aware=True)


def mongomock_store(db_name: str = "solar_db") -> MongoStore:
    return MongoStore(mongomock_client(), db_name, location="mongomock")
