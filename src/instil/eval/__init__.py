"""Evaluation: score a model's outputs on the frozen holdout with the spec's graders.

    from instil.eval import build_graders, reward
    graders = build_graders(spec)
    scores = {g.name: g.grade(example, output) for g in graders}

The graders live in ``instil.eval.graders`` (one file per family); this package re-exports their public names.
"""

from __future__ import annotations

from instil.eval.graders import (
    INVALID,
    Contains,
    EmbeddingSimilarity,
    ExactMatch,
    FieldF1,
    Grader,
    GraderError,
    JsonSchema,
    JsonValid,
    LabelAccuracy,
    Length,
    LlmJudge,
    Numeric,
    Output,
    PairwiseJudge,
    PythonFunction,
    Regex,
    Score,
    ToolCallMatch,
    as_output,
    build_graders,
    from_spec,
    reward,
)

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
    "from_spec",
    "reward",
]
