"""instil: turn your team's best prompt into a fine-tuned model that provably beats it.

    import instil
    spec = instil.load_spec("instil.yaml")

The Python API is the product; the `instil` command wraps it.
"""

from __future__ import annotations

from instil.errors import (
    DataError,
    DataFormatError,
    DependencyError,
    HoldoutLeakError,
    InstilError,
    NotFoundError,
    SpecError,
    StoreError,
)
from instil.spec import JobSpec, load_spec, parse_spec, write_starter_spec

__version__ = "0.1.0.dev0"

__all__ = [
    "DataError",
    "DataFormatError",
    "DependencyError",
    "HoldoutLeakError",
    "InstilError",
    "JobSpec",
    "NotFoundError",
    "SpecError",
    "StoreError",
    "__version__",
    "load_spec",
    "parse_spec",
    "write_starter_spec",
]
