"""Evaluation: score a model's outputs on the frozen holdout with the spec's graders.

    from instil.eval import build_graders, evaluate, reward
    graders = build_graders(spec)
    scores = {g.name: g.grade(example, output) for g in graders}
    report = evaluate(spec, store)     # every candidate on the holdout, recorded with report.json beside it
    write_report(report, store)        # and the self-contained report.html

The graders live in ``instil.eval.graders`` (one file per family); this package re-exports their public names.
"""

from __future__ import annotations

from instil.eval.candidates import Candidate, default_candidates, run_candidate
from instil.eval.compare import evaluate, select_candidates
from instil.eval.failure_modes import (
    FailureModes,
    Forgetting,
    Overfitting,
    StyleCollapse,
    check_failure_modes,
)
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
from instil.eval.report import write_html, write_report
from instil.eval.results import CandidateSummary, EvalReport, ExampleResult, WinRate

__all__ = [
    "Candidate",
    "CandidateSummary",
    "Contains",
    "EmbeddingSimilarity",
    "EvalReport",
    "ExactMatch",
    "ExampleResult",
    "FailureModes",
    "FieldF1",
    "Forgetting",
    "Grader",
    "GraderError",
    "INVALID",
    "JsonSchema",
    "JsonValid",
    "LabelAccuracy",
    "Length",
    "LlmJudge",
    "Numeric",
    "Output",
    "Overfitting",
    "PairwiseJudge",
    "PythonFunction",
    "Regex",
    "Score",
    "StyleCollapse",
    "ToolCallMatch",
    "WinRate",
    "as_output",
    "build_graders",
    "check_failure_modes",
    "default_candidates",
    "evaluate",
    "from_spec",
    "reward",
    "run_candidate",
    "select_candidates",
    "write_html",
    "write_report",
]
