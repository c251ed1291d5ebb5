"""Reusing recorded evaluation results: what must match for an earlier run's answers and scores to stand in.

    identity = candidate_identity(candidate, spec, store)       # model, prompt, base weights, prices
    runs = ReusableRuns(store, spec, config, holdout_examples)  # earlier succeeded runs with the same settings
    found = runs.find(identity)                                 # that candidate's rows, or None: generate afresh

A candidate's results are reused (``evaluate(..., reuse=True)``) only from a succeeded eval run with the same holdout
(sha256), the same :func:`eval_inputs_sha256` (graders, prompts, output contract, generation settings), the same
``limit`` and ``max_new_tokens``, and the same :func:`candidate_identity`; an examples file changed since it was
recorded is never read. Pairwise verdicts and failure-mode checks are reused under the same rule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instil.data.records import Example, sha256_hex
from instil.eval.candidates import Candidate
from instil.eval.failure_modes import FailureModes
from instil.eval.results import ExampleResult
from instil.spec import JobSpec
from instil.store import Store

__all__ = ["Found", "ReusableRuns", "candidate_identity", "eval_inputs_sha256"]


def eval_inputs_sha256(spec: JobSpec) -> str:
    """A hash of what decides a candidate's scores besides the model and the holdout: graders, prompts, output
    contract and generation settings. Results recorded under another hash are stale."""
    parts = {
        "graders": [g.model_dump(mode="json") for g in spec.graders],
        "system_prompt": spec.system_prompt,
        "short_prompt": spec.short_prompt,
        "output": spec.output.model_dump(mode="json"),
        "max_new_tokens": spec.eval.max_new_tokens,
    }
    if spec.eval.constrained:  # only when set, so the runs recorded before the option keep their hash
        parts["constrained"] = True
    return sha256_hex(json.dumps(parts, sort_keys=True).encode())


def candidate_identity(c: Candidate, spec: JobSpec, store: Store) -> dict[str, Any]:
    """What must match for a candidate's recorded results to be reused: :meth:`Candidate.to_dict` (with the model
    version's id for a tuned model), the base model's identity for a base candidate (the latest model's recorded
    base folder and weights hash, else the spec's ``model.base`` and revision), and the prices its costs came from.
    """
    identity = c.to_dict()
    if c.kind == "local" and c.model_version is None:
        models = store.list_models(spec.name)
        info = (models[-1].meta.get("model_info") or {}) if models else {}
        identity["base"] = (
            {
                "path": info.get("path"),
                "weights_sha256": info.get("weights_sha256"),
                "revision": info.get("revision"),
            }
            if info
            else {"base": spec.model.base, "revision": spec.model.revision}
        )
    if c.endpoint is not None:
        identity["endpoint"] = c.endpoint.model_dump(mode="json")
    else:
        identity["machine_price_per_hour"] = spec.eval.machine_price_per_hour
    return identity


@dataclass(frozen=True)
class Found:
    """A candidate's rows found in an earlier run."""

    origin: int
    """The run that generated them (an earlier run may itself have reused them)."""
    via: int
    """The run whose examples file they were read from."""
    rows: list[ExampleResult]
    """The rows, in the holdout's order."""


class ReusableRuns:
    """The earlier succeeded eval runs whose settings match this one's, newest first, read lazily."""

    def __init__(self, store: Store, spec: JobSpec, config: dict[str, Any], examples: Sequence[Example]) -> None:
        self.store = store
        self.config = config
        self.keys = [e.key() for e in examples]
        same = ("limit", "max_new_tokens", "inputs_sha256")
        self.runs = [
            r
            for r in reversed(store.list_runs(spec.name, "eval"))
            if r.status == "succeeded"
            and all(r.config.get(k) == config[k] for k in same)
            and (r.config.get("holdout") or {}).get("sha256") == config["holdout"]["sha256"]
        ]
        self._rows: dict[int, list[ExampleResult] | None] = {}

    def find(self, identity: dict[str, Any]) -> Found | None:
        """The newest matching run's rows of this candidate."""
        for run in self.runs:
            if identity not in (run.config.get("identities") or []):
                continue
            rows = self.rows(run.id, identity["name"])
            if [r.example_id for r in rows] != self.keys:
                continue
            # Reused rows keep naming the run that generated them, however many times they are reused.
            recorded = next(
                (e.metrics for e in self.store.list_evaluations(run_id=run.id) if e.candidate == identity["name"]),
                {},
            )
            return Found(recorded.get("reused_from") or run.id, run.id, rows)
        return None

    def verdicts(
        self,
        identities: tuple[dict[str, Any], dict[str, Any]],
        first: Sequence[ExampleResult],
        rows: Sequence[ExampleResult],
    ) -> list[float] | None:
        """The pairwise verdicts of the newest run that played ``identities[1]`` against ``identities[0]`` as its
        first candidate, on the very answers given."""
        for run in self.runs:
            played = run.config.get("identities") or []
            if not played or played[0] != identities[0] or identities[1] not in played:
                continue
            then_first, then = (
                self.rows(run.id, identities[0]["name"]),
                self.rows(run.id, identities[1]["name"]),
            )
            if (
                [r.output for r in then_first] == [r.output for r in first]
                and [r.output for r in then] == [r.output for r in rows]
                and all(r.win is not None for r in then)
            ):
                return [r.win for r in then]  # type: ignore[misc]
        return None

    def failure_modes(self, found: Found, name: str) -> FailureModes | None:
        """The failure modes recorded for ``name`` in the run its rows came from, under the same settings."""
        run = next(r for r in self.runs if r.id == found.via)
        if run.config.get("failure_modes") != self.config["failure_modes"]:
            return None
        recorded = next(
            (e.metrics.get("failure_modes") for e in self.store.list_evaluations(run_id=run.id) if e.candidate == name),
            None,
        )
        return FailureModes.from_dict(recorded) if recorded else None

    def rows(self, run_id: int, name: str) -> list[ExampleResult]:
        if run_id not in self._rows:
            self._rows[run_id] = None
            artifact = next((a for a in self.store.list_artifacts(run_id) if a.kind == "examples"), None)
            if artifact is not None and Path(artifact.path).is_file():
                data = Path(artifact.path).read_bytes()
                # A file changed since it was recorded is not what that run measured: generate afresh instead.
                if artifact.sha256 is None or sha256_hex(data) == artifact.sha256:
                    lines = data.decode("utf-8").splitlines()
                    self._rows[run_id] = [ExampleResult(**json.loads(line)) for line in lines if line.strip()]
        return [r for r in self._rows[run_id] or [] if r.candidate == name]
