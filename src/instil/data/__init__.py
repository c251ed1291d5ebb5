"""Data: one record type, every common format, validation, statistics, curation and the frozen-holdout split.

from instil.data import read_examples, validate_file, curate, split_examples
"""

from __future__ import annotations

from instil.data.curate import CurationReport, CurationResult, curate, curate_file
from instil.data.formats import FORMATS, detect_format, read_examples
from instil.data.pii import redact, scan_pii
from instil.data.records import Example, Message
from instil.data.split import HoldoutIndex, LeakMatch, SplitResult, split_examples, split_file
from instil.data.stats import DatasetStats, compute_stats
from instil.data.tokens import TokenCounter
from instil.data.validate import Finding, ValidationReport, validate_file, validate_files
from instil.data.writers import write_examples

__all__ = [
    "FORMATS",
    "CurationReport",
    "CurationResult",
    "DatasetStats",
    "Example",
    "Finding",
    "HoldoutIndex",
    "LeakMatch",
    "Message",
    "SplitResult",
    "TokenCounter",
    "ValidationReport",
    "compute_stats",
    "curate",
    "curate_file",
    "detect_format",
    "read_examples",
    "redact",
    "scan_pii",
    "split_examples",
    "split_file",
    "validate_file",
    "validate_files",
    "write_examples",
]
