"""instil: turn your team's best prompt into a fine-tuned model that provably beats it.

    import instil
    spec = instil.load_spec("instil.yaml")
    result = instil.run(spec)                       # validate -> curate -> split, recorded in the store
    with instil.Store.open() as store: ...          # datasets, versions, lineage, runs, models

The Python API is the product; the `instil` command wraps it.
"""

from __future__ import annotations

from instil.data import (
    Example,
    Message,
    compute_stats,
    curate,
    read_examples,
    split_examples,
    validate_file,
    write_examples,
)
from instil.errors import (
    ChatTemplateError,
    DataError,
    DataFormatError,
    DependencyError,
    HoldoutLeakError,
    InstilError,
    ModelError,
    NotFoundError,
    SpecError,
    StoreError,
)
from instil.loop import quickstart, run
from instil.spec import JobSpec, load_spec, parse_spec, write_starter_spec
from instil.store import DatasetVersion, Store

__version__ = "0.1.0.dev0"

__all__ = [
    "ChatTemplateError",
    "DataError",
    "DataFormatError",
    "DatasetVersion",
    "DependencyError",
    "Example",
    "HoldoutLeakError",
    "InstilError",
    "JobSpec",
    "Message",
    "ModelError",
    "NotFoundError",
    "SpecError",
    "Store",
    "StoreError",
    "__version__",
    "compute_stats",
    "curate",
    "load_spec",
    "parse_spec",
    "quickstart",
    "read_examples",
    "run",
    "split_examples",
    "validate_file",
    "write_examples",
    "write_starter_spec",
]
