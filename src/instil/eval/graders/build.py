"""From the spec to graders, and the RL reward that reuses them.

    spec = instil.load_spec("instil.yaml")
    graders = build_graders(spec)                       # one per spec grader, in order
    scores = {g.name: g.grade(example, output) for g in graders}
    r = reward(graders, example, output)                # the primary grader's value (GRPO's reward)

One plain function with a ``match`` on the type, no registry: adding a grader means a class and a case here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from instil import spec as s
from instil.data.records import Example
from instil.eval.graders.embedding import EmbeddingSimilarity
from instil.eval.graders.judges import LlmJudge, PairwiseJudge
from instil.eval.graders.labels import LabelAccuracy
from instil.eval.graders.python import PythonFunction, load_function
from instil.eval.graders.score import Grader, GraderError
from instil.eval.graders.structured import FieldF1, JsonSchema, JsonValid
from instil.eval.graders.text import Contains, ExactMatch, Length, Numeric, Regex
from instil.eval.graders.tools import ToolCallMatch

__all__ = ["build_graders", "from_spec", "reward"]


def _api_key(endpoint: s.EndpointSpec, name: str) -> str | None:
    if endpoint.api_key_env is None:
        return None
    key = os.environ.get(endpoint.api_key_env)
    if not key:
        raise GraderError(
            f"the environment variable {endpoint.api_key_env} (endpoint.api_key_env) is not set",
            grader=name,
            hint=f"export {endpoint.api_key_env}=<the judge's API key>",
        )
    return key


def _model_path(model: str, root: Path) -> str:
    # A relative folder beside the spec wins over a hub id of the same spelling.
    local = root / model
    return str(local) if not Path(model).is_absolute() and local.exists() else model


def from_spec(g: s.GraderSpec, job: s.JobSpec) -> Grader:
    """The grader a spec entry describes; ``job`` supplies output.schema, labels, label_field and the root folder."""
    common: dict[str, Any] = {
        "name": g.name,
        "threshold": g.threshold,
        "primary": g.name == job.primary_grader,
    }
    match g:
        case s.ExactMatchGrader():
            return ExactMatch(**common, normalize=tuple(g.normalize))
        case s.ContainsGrader():
            return Contains(
                **common,
                values=tuple(g.values),
                case_sensitive=g.case_sensitive,
                negate=g.type == "not_contains",
            )
        case s.RegexGrader():
            return Regex(**common, pattern=g.pattern, full_match=g.full_match)
        case s.JsonValidGrader():
            return JsonValid(**common)
        case s.JsonSchemaGrader():
            schema = g.json_schema if g.json_schema is not None else job.output.json_schema
            assert schema is not None  # JobSpec validation guarantees one of the two
            return JsonSchema(**common, schema=schema)
        case s.FieldF1Grader():
            return FieldF1(**common, fields=tuple(g.fields) if g.fields is not None else None, metric=g.metric)
        case s.LabelAccuracyGrader():
            assert job.output.labels  # JobSpec validation guarantees labels
            return LabelAccuracy(**common, labels=tuple(job.output.labels), field=g.field or job.output.label_field)
        case s.NumericGrader():
            return Numeric(**common, field=g.field, tolerance=g.tolerance, relative=g.relative)
        case s.LengthGrader():
            return Length(
                **common,
                min_chars=g.min_chars,
                max_chars=g.max_chars,
                min_words=g.min_words,
                max_words=g.max_words,
            )
        case s.ToolCallMatchGrader():
            return ToolCallMatch(**common, check_arguments=g.check_arguments, order_matters=g.order_matters)
        case s.EmbeddingSimilarityGrader():
            return EmbeddingSimilarity(**common, model=_model_path(g.model, job.root))
        case s.LlmJudgeGrader():
            e = g.endpoint
            return LlmJudge(
                **common,
                rubric=g.rubric,
                base_url=e.base_url,
                model=e.model,
                api_key=_api_key(e, g.name),
                scale=g.scale,
            )
        case s.PairwiseJudgeGrader():
            e = g.endpoint
            return PairwiseJudge(
                **common, rubric=g.rubric, base_url=e.base_url, model=e.model, api_key=_api_key(e, g.name)
            )
        case s.PythonGrader():
            return PythonFunction(**common, function=load_function(g.function, job.root, g.name))
    # Reached only when spec.py gains a grader type without a case here.
    raise AssertionError(f"grader type {g.type!r} has no case in from_spec")


def build_graders(job: s.JobSpec) -> list[Grader]:
    """Every grader of the spec, in the spec's order."""
    return [from_spec(g, job) for g in job.graders]


def reward(
    graders: Sequence[Grader], example: Example, output: Any, weights: Mapping[str, float] | None = None
) -> float:
    """The RL reward of one output: the same grade() that evaluation runs, so training optimises what is measured.

    Without ``weights`` it is the primary grader's value (the one grader when there is only one). With ``weights``
    (grader name -> weight, non-negative, not all zero) it is the weighted mean of those graders' values; graders
    not named are not run. A malformed output scores 0; a broken grader raises GraderError as in evaluation.
    """
    by_name = {g.name: g for g in graders}
    if weights is None:
        primary = [g for g in graders if g.primary] or (list(graders) if len(graders) == 1 else [])
        if len(primary) != 1:
            raise ValueError(
                f"reward() needs exactly one primary grader (found {len(primary)} among {list(by_name)}), or weights"
            )
        return primary[0].grade(example, output).value
    unknown = sorted(set(weights) - set(by_name))
    if unknown:
        raise ValueError(f"reward weights name unknown grader(s) {unknown}; graders are {list(by_name)}")
    if any(w < 0 or not math.isfinite(w) for w in weights.values()) or not sum(weights.values()):
        raise ValueError(f"reward weights must be non-negative and not all zero; got {dict(weights)}")
    total = sum(weights.values())
    return sum(w * by_name[n].grade(example, output).value for n, w in weights.items() if w) / total
