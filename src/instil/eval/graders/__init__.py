"""The grader library: one small, pure class per way of scoring an output, built from the spec's ``graders``.

    from instil.eval.graders import build_graders, reward
    graders = build_graders(spec)
    score = graders[0].grade(example, "model output")   # Score(value 0..1, passed, reason, details)
    r = reward(graders, example, "model output")         # the RL reward reuses grade()

One file per family: ``text`` (exact match, contains, regex, numeric, length), ``structured`` (JSON validity, JSON
Schema, field F1), ``labels`` (label accuracy, macro-F1, confusion matrix), ``tools`` (tool-call match),
``embedding`` (embedding similarity, optional), ``judges`` (LLM and pairwise judges), ``python`` (a user function);
``score`` holds what they share and ``build`` turns spec entries into graders.
"""

from __future__ import annotations

from instil.eval.graders.build import build_graders, from_spec, reward
from instil.eval.graders.embedding import EmbeddingSimilarity
from instil.eval.graders.judges import LlmJudge, PairwiseJudge
from instil.eval.graders.labels import INVALID, LabelAccuracy
from instil.eval.graders.python import PythonFunction, load_function
from instil.eval.graders.score import Grader, GraderError, Output, Score, as_output
from instil.eval.graders.structured import FieldF1, JsonSchema, JsonValid, flatten_json
from instil.eval.graders.text import Contains, ExactMatch, Length, Numeric, Regex
from instil.eval.graders.tools import ToolCallMatch

__all__ = [
    "INVALID",
    "Contains",
    "EmbeddingSimilarity",
    "ExactMatch",
    "FieldF1",
    "Grader",
    "GraderError",
    "JsonSchema",
    "JsonValid",
    "LabelAccuracy",
    "Length",
    "LlmJudge",
    "Numeric",
    "Output",
    "PairwiseJudge",
    "PythonFunction",
    "Regex",
    "Score",
    "ToolCallMatch",
    "as_output",
    "build_graders",
    "flatten_json",
    "from_spec",
    "load_function",
    "reward",
]
