"""Evaluation: score a model's outputs on the frozen holdout with the spec's graders.

    from instil.eval import build_graders, reward
    graders = build_graders(spec)
    scores = {g.name: g.grade(example, output) for g in graders}

The graders live in ``instil.eval.graders`` (one file per family); this package re-exports their public names.
"""

from __future__ import annotations

from instil.eval.candidates import Candidate, default_candidates, run_candidate
from instil.eval.compare import CandidateSummary, EvalReport, ExampleResult, evaluate, select_candidates
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
    "Candidate",
    "CandidateSummary",
    "Contains",
    "EmbeddingSimilarity",
    "EvalReport",
    "ExactMatch",
    "ExampleResult",
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
    "default_candidates",
    "evaluate",
    "from_spec",
    "reward",
    "run_candidate",
    "select_candidates",
]
