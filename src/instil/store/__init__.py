"""The store: metadata and lineage in SQLite (or PostgreSQL), examples in content-addressed files beside it.

    from instil.store import Store
    with Store.open() as store:            # home: $INSTIL_HOME or ./.instil; database: $INSTIL_DB_URL or SQLite there
        v1 = store.put_dataset("support/raw", examples)
        store.get_dataset("support/raw")   # latest; or a version number, or a content-hash prefix

Modules: ``store.py`` (the API), ``types.py`` (the values it returns), ``blobs.py`` (the example files),
``models.py`` (the tables), ``db.py`` (engine setup and migrations), ``migrations/`` (Alembic, forward-only).
"""

from __future__ import annotations

from instil.store.blobs import BlobInfo, BlobStore
from instil.store.db import DB_URL_ENV
from instil.store.store import DECISION_KINDS, FINAL_STATUSES, Store
from instil.store.traces import Outcome, TraceFilter
from instil.store.types import (
    ArtifactInfo,
    DatasetVersion,
    DecisionInfo,
    EvaluationInfo,
    ModelVersion,
    PinInfo,
    ReviewItem,
    RolloutInfo,
    RunInfo,
    Trace,
)

__all__ = [
    "ArtifactInfo",
    "BlobInfo",
    "BlobStore",
    "DB_URL_ENV",
    "DECISION_KINDS",
    "DatasetVersion",
    "DecisionInfo",
    "EvaluationInfo",
    "FINAL_STATUSES",
    "ModelVersion",
    "Outcome",
    "PinInfo",
    "ReviewItem",
    "RolloutInfo",
    "RunInfo",
    "Store",
    "Trace",
    "TraceFilter",
]
