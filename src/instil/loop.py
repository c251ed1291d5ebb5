"""The loop, stage by stage: `instil run instil.yaml` and `instil quickstart`.

    result = instil.loop.run("instil.yaml")            # validate -> curate -> split (train, eval, promote come next)
    result = instil.loop.quickstart("quickstart/")     # copy the example job there, then run it

Each stage reports a :class:`StageResult` to an optional callback as it finishes, so the CLI can print one line per
stage while the API stays silent. The training, evaluation and promotion stages join this list as they land.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instil.data.stages import CurateOutcome, SplitOutcome, curate_job, split_job, validate_job
from instil.env import home_dir
from instil.errors import DataError, InstilError
from instil.spec import JobSpec, load_spec
from instil.store import Store

__all__ = ["LoopResult", "StageResult", "quickstart", "run"]


@dataclass
class StageResult:
    """One finished stage."""

    name: str
    """``validate``, ``curate``, ``split``, ..."""
    summary: str
    """One line for people."""
    seconds: float
    """Wall time."""
    detail: Any = None
    """The stage's own result object (reports, dataset versions)."""


@dataclass
class LoopResult:
    """Everything a run of the loop did."""

    spec: JobSpec
    home: Path
    stages: list[StageResult] = field(default_factory=list)

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.name == name)


def run(
    spec: str | Path | JobSpec,
    *,
    on_stage: Callable[[StageResult], None] | None = None,
    contradictions: str = "majority",
) -> LoopResult:
    """Run the loop's stages in order on a job. Stops at the first stage that fails, naming it."""
    job = spec if isinstance(spec, JobSpec) else load_spec(spec)
    home = home_dir(job.root)
    result = LoopResult(job, home)

    def done(name: str, summary: str, started: float, detail: Any = None) -> None:
        stage = StageResult(name, summary, time.perf_counter() - started, detail)
        result.stages.append(stage)
        if on_stage is not None:
            on_stage(stage)

    with Store.open(home=home) as store:
        t = time.perf_counter()
        with _stage("validate"):
            reports = validate_job(job, rejects_dir=home / "rejects")
            bad = [r for r in reports if not r.report.ok]
            if bad:
                first = bad[0].report
                raise DataError(
                    f"{len(bad)} data source(s) have errors; first: {bad[0].path}\n{first.format_findings(5)}",
                    hint=f"run `instil data validate --spec {job.file or 'instil.yaml'}` to see every problem",
                )
        n = sum(r.report.n_valid for r in reports)
        warnings = sum(r.report.n_warnings for r in reports)
        done("validate", f"{len(reports)} sources, {n} valid examples, {warnings} warnings", t, reports)

        t = time.perf_counter()
        with _stage("curate"):
            cur: CurateOutcome = curate_job(job, store, contradictions=contradictions)
        rep = cur.report
        done(
            "curate",
            f"{rep.total} read, {rep.kept} kept: {len(rep.exact_groups)} exact-duplicate groups, "
            f"{len(rep.near_groups)} near-duplicate groups, {len(rep.contradiction_groups)} contradictions "
            f"({rep.contradiction_rule}), {len(rep.pii)} PII findings",
            t,
            cur,
        )

        t = time.perf_counter()
        with _stage("split"):
            sp: SplitOutcome = split_job(job, store)
        frozen = "kept frozen" if sp.reused_holdout else "frozen"
        done(
            "split",
            f"train {sp.train.n_examples} ({sp.train.short_hash}), holdout {sp.holdout.n_examples} "
            f"({sp.holdout.short_hash}, {frozen}), {len(sp.left_out)} left out for matching the holdout",
            t,
            sp,
        )
    return result


class _stage:
    """Adds the stage's name to any instil error raised inside it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, InstilError) and not str(exc).startswith("stage "):
            exc.args = (f"stage {self.name}: {exc}", *exc.args[1:])
        return False


def quickstart(dest: str | Path = "quickstart", *, on_stage: Callable[[StageResult], None] | None = None) -> LoopResult:
    """Copy the shipped example job into ``dest`` (unless it is there already) and run the loop on it."""
    from instil.examples import copy_example

    dest = Path(dest)
    spec_path = dest / "instil.yaml"
    if not spec_path.exists():
        spec_path = copy_example("triage", dest)
    return run(spec_path, on_stage=on_stage)
