"""The example jobs shipped inside instil, ready to copy and run.

    from instil.examples import EXAMPLES, copy_example
    spec_path = copy_example("triage", Path("triage"))    # triage/instil.yaml, triage/README.md, triage/data/*.jsonl
    spec = instil.load_spec(spec_path)

Each example is a folder beside this file holding ``instil.yaml`` (the job spec), ``README.md`` and ``generate.py``,
a seeded generator whose ``generate(out_dir, *, seed)`` writes the data files the spec names under ``data/``.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from instil.errors import InstilError

__all__ = ["EXAMPLES", "copy_example", "example_dir"]

EXAMPLES: tuple[str, ...] = ("triage",)
"""The names of the shipped examples."""

_COPIED = ("instil.yaml", "README.md")
"""The files copied as they are; the data is generated, not shipped."""


def _check_name(name: str) -> str:
    # Names come from users: only a known name may become a path or a module name.
    if name not in EXAMPLES:
        raise InstilError(
            f"unknown example {name!r}; the shipped examples are: {', '.join(EXAMPLES)}",
            hint="Pick one of the names above.",
        )
    return name


def example_dir(name: str) -> Path:
    """The folder of a shipped example (inside the installed package; read it, do not write to it)."""
    return Path(__file__).parent / _check_name(name)


def copy_example(name: str, dest: str | Path, *, overwrite: bool = False, seed: int = 0) -> Path:
    """Copy an example's spec and README into ``dest`` and generate its data into ``dest/data``.

    Returns the path of the copied ``instil.yaml``. Refuses a ``dest`` that is a file, or a non-empty folder unless
    ``overwrite`` is true (then the example's files are written over; nothing else in ``dest`` is touched).
    """
    src = example_dir(name)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise InstilError(
            f"{dest}: exists and is not a folder; cannot copy example {name!r} into it",
            hint="Choose a new folder name.",
        )
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise InstilError(
            f"{dest}: folder is not empty; refusing to copy example {name!r} over what is there",
            hint="Choose an empty or new folder, or pass overwrite=True (--force) to write the example's files "
            "over it.",
        )
    dest.mkdir(parents=True, exist_ok=True)
    for filename in _COPIED:
        shutil.copyfile(src / filename, dest / filename)
    generator = importlib.import_module(f"instil.examples.{name}.generate")
    generator.generate(dest / "data", seed=seed)
    return dest / "instil.yaml"
