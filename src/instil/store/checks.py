"""Argument checks shared by the store's methods: names, small words, JSON values and ids.

    check_name("support/train", "dataset name")     # returns the value, or raises StoreError with a hint

Names are database values only, never paths; they are still kept printable and free of spaces so that
``name@version`` references stay unambiguous.
"""

from __future__ import annotations

import json
import re
from typing import Any

from instil.errors import StoreError
from instil.store.types import DatasetVersion, ModelVersion, RunInfo

__all__ = ["as_id", "check_json", "check_name", "check_word"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
_WORD = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid dataset or job name."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise StoreError(
            f"invalid {what} {value!r}",
            hint="Use 1-128 characters: letters, digits and . _ : / -, starting with a letter or digit.",
        )
    return value


def check_word(value: str, what: str) -> str:
    """``value`` if it is a valid kind, role or status: a short lowercase word."""
    if not isinstance(value, str) or not _WORD.fullmatch(value):
        raise StoreError(
            f"invalid {what} {value!r}",
            hint="Use 1-32 lowercase letters, digits, '_' or '-', starting with a letter (e.g. train, holdout).",
        )
    return value


def check_json(value: Any, what: str) -> Any:
    """``value`` if it can be stored in a JSON column on every database (PostgreSQL refuses NaN and Infinity)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(
            f"{what} cannot be stored: it is not JSON ({e})",
            hint="Pass only dicts, lists, strings, finite numbers, booleans and None; convert paths and dates to "
            "strings, and NaN or Infinity to None.",
        ) from None
    return value


def as_id(value: Any, what: str) -> int:
    """The id of a dataclass the store returned, or an int id."""
    if isinstance(value, bool):
        raise StoreError(f"{what} must be an id or a value returned by the store, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, DatasetVersion | ModelVersion | RunInfo):
        return value.id
    raise StoreError(f"{what} must be an id or a value returned by the store, not {type(value).__name__}")
