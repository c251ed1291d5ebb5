"""instil: turn your team's best prompt into a fine-tuned model that provably beats it.

    import instil
    spec = instil.load_spec("instil.yaml")
    result = instil.run(spec)                       # validate, curate, split, baseline, train, evaluate, promote
    result.promotions[-1].summary()                 # the gate's verdict, with every number behind it
    with instil.Store.open() as store: ...          # datasets, versions, lineage, runs, models

The Python API is the product; the `instil` command wraps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from instil.env import instil_version
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
from instil.spec import JobSpec, load_spec, parse_spec, write_starter_spec
from instil.store import DatasetVersion, Store, Trace, TraceFilter

if TYPE_CHECKING:  # loaded on first use, below
    from instil.loop import quickstart, run

__version__ = instil_version()

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
    "Trace",
    "TraceFilter",
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


def __getattr__(name: str) -> object:
    # The loop imports the whole stack (data, training, evaluation): it loads on first use, so that `import instil`
    # and the `instil` command start fast.
    if name in ("quickstart", "run"):
        from instil import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'instil' has no attribute {name!r}")
