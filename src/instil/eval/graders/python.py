"""The user's own grader: a Python function ``grade(example, output) -> float | bool | Score``.

    # graders.py, beside instil.yaml
    def short_and_polite(example, output):        # example: instil Example; output: instil.eval.Output (.text)
        return len(output.text) < 200 and "please" in output.text.lower()

    # instil.yaml
    graders:
      - {name: polite, type: python, function: graders.py:short_and_polite}

``function`` is ``path/to/file.py:function`` (relative to the spec's folder) or ``package.module:function``
(imported as is). It comes from the spec file only, never from a request. A bool counts as 1 or 0, a float must lie
in 0..1, and a returned :class:`Score` keeps its reason and details (its pass rule is this grader's threshold).
A function that raises, or returns anything else, is a broken grader: :class:`GraderError`, with the example's id.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instil.data.records import Example, sha256_hex
from instil.eval.graders.score import NO_OUTPUT, GraderError, Score, as_output, failed, scored

__all__ = ["PythonFunction", "load_function"]


def load_function(target: str, root: Path, grader: str) -> Callable[..., Any]:
    """Import ``file.py:function`` (relative to ``root``) or ``module:function``; GraderError when it cannot be."""
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise GraderError(f"function '{target}' must be written 'file.py:function' or 'module:function'", grader=grader)
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise GraderError(
                f"file {path} not found (function '{target}', resolved against {root})",
                grader=grader,
                hint="Paths in the spec are relative to the spec file's folder.",
            )
        # A private module name per file, so two specs' graders.py never overwrite each other in sys.modules.
        name = f"instil_user_grader_{sha256_hex(str(path.resolve()))[:16]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise GraderError(f"cannot load {path} as Python", grader=grader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise GraderError(f"importing {path} failed: {type(e).__name__}: {e}", grader=grader) from e
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise GraderError(
                f"cannot import module '{where}': {type(e).__name__}: {e}",
                grader=grader,
                hint="For a file beside the spec, write 'file.py:function'.",
            ) from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise GraderError(f"'{attr}' in {where} is {'missing' if fn is None else 'not a function'}", grader=grader)
    return fn


@dataclass(frozen=True)
class PythonFunction:
    """Grades with a user function; see the module doc for what it may return."""

    name: str
    """The grader's name, used in reports."""
    function: Callable[..., Any]
    """The loaded function, called as ``function(example, output)`` with an :class:`~instil.eval.Output`."""
    threshold: float = 1.0
    """The pass rule: value >= threshold."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""

    def grade(self, example: Example, output: Any) -> Score:
        out = as_output(output)
        if out is None:  # nothing to hand the function: a failing score, as with every grader
            return failed(NO_OUTPUT)
        fn_name = getattr(self.function, "__qualname__", repr(self.function))
        try:
            result = self.function(example, out)
        except Exception as e:
            raise GraderError(
                f"function {fn_name} raised {type(e).__name__}: {e}",
                grader=self.name,
                example_id=example.key(),
                hint="Fix the function; a grader must return a score for any output, even None or malformed text.",
            ) from e
        if isinstance(result, Score) and 0.0 <= result.value <= 1.0:
            return Score(result.value, result.value >= self.threshold, result.reason, dict(result.details))
        if isinstance(result, bool):
            return scored(float(result), self.threshold, None if result else f"{fn_name} returned False")
        if isinstance(result, int | float) and math.isfinite(result) and 0.0 <= result <= 1.0:
            return scored(float(result), self.threshold, f"{fn_name} returned {result:g}")
        raise GraderError(
            f"function {fn_name} returned {result!r:.80}; it must return a bool, a float in 0..1 "
            "or an instil.eval.Score",
            grader=self.name,
            example_id=example.key(),
        )
