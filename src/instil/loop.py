"""The loop, stage by stage: ``instil run instil.yaml`` and ``instil quickstart``.

    result = instil.loop.run("instil.yaml")                  # validate -> curate -> split -> baseline -> train
                                                             #   -> evaluate -> promote
    result = instil.loop.run("instil.yaml", iterations=2)    # then learn from the pool's failures and go round again
    result = instil.loop.quickstart("quickstart/")           # copy the example job there and turn the loop twice
    result.stages[-1].summary, result.report.html_path, result.promotions[-1].promoted

One turn reads as straight-line code (:meth:`_Loop.turn`): each stage is a method that takes the values the earlier
stages returned and returns its own (a training dataset version, a model version, an evaluation report, a
promotion). Adding a stage is one method and one line in the turn.

Each stage records what went in (a content hash of its inputs: data files, spec sections, dataset and model
versions) and what came out in ``<home>/loop/<job>.json``. A stage whose inputs have not changed since it last
finished is skipped (:meth:`_Loop.unless_unchanged`), so a second run does only new work, and a run stopped halfway
resumes where it stopped (training continues from its newest checkpoint). An error names the stage it happened in;
what earlier stages wrote stays.

Iteration 2 and later start with ``learn``: the production model answers the job's ``pool`` (captured traffic), the
graders find its failures, and each failure's corrected answer (the pool's reference; a reviewer's correction in real
life) joins the training data as ``<job>:corrections``, also kept as a preference pair (chosen: the correction,
rejected: the model's answer) in ``<job>:preferences``. The holdout is never touched: corrections matching it are
left out. Then split folds the corrections into a new training version, and train, evaluate and promote run again.

Each stage reports a :class:`StageResult` to an optional callback as it finishes, so the CLI prints one line per stage
while the API stays silent. Each turn writes its evaluation's HTML page once, with the gate decisions of the run.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from instil.env import home_dir, instil_version
from instil.errors import DataError, InstilError, NoCheckpointError
from instil.eval.candidates import Candidate, default_candidates, model_candidate, prompted_baselines
from instil.eval.compare import evaluate
from instil.eval.report import write_report
from instil.eval.results import CandidateSummary, EvalReport
from instil.eval.reuse import eval_inputs_sha256
from instil.examples import copy_example
from instil.files import write_atomic
from instil.jobdata import (
    CurateOutcome,
    SourceReport,
    SplitOutcome,
    curate_job,
    dataset_name,
    frozen_holdout,
    split_job,
    validate_job,
)
from instil.learn import LearnOutcome, Traffic, fold_corrections, latest_version, learn_from_failures, version_with_hash
from instil.registry import Promotion, find_decision, production, promote
from instil.review import decisions_fingerprint
from instil.spec import JobSpec, load_spec
from instil.store import DatasetVersion, ModelVersion, Store
from instil.train.sft import TrainResult, train_sft

__all__ = ["STAGES", "LoopResult", "LoopState", "StageDetail", "StageResult", "quickstart", "run"]

STAGES = ("learn", "validate", "curate", "split", "baseline", "train", "evaluate", "promote")
"""Every stage in the order it runs (``learn`` only from the second iteration on)."""

StageDetail = list[SourceReport] | CurateOutcome | LearnOutcome | SplitOutcome | EvalReport | TrainResult | Promotion
"""What a stage that did its work returns besides its value: its own full result, for callers that want it."""

T = TypeVar("T")


@dataclass
class StageResult:
    """One finished (or skipped) stage."""

    name: str
    """One of :data:`STAGES`."""
    summary: str
    """One line for people."""
    seconds: float
    """Wall time."""
    detail: StageDetail | None = None
    """The stage's own result (validation reports, curation, split, training, evaluation, promotion); None when it
    was skipped or found nothing to do. ``evaluate`` always runs (taking every result recorded before, so it is cheap)
    and keeps its report, even when its inputs were unchanged."""
    skipped: bool = False
    """True when its inputs had not changed since it last finished, so nothing was redone."""
    iteration: int = 1
    """Which turn of the loop it belongs to."""


@dataclass
class LoopResult:
    """Everything a run of the loop did."""

    spec: JobSpec
    home: Path
    stages: list[StageResult] = field(default_factory=list)
    reports: list[EvalReport] = field(default_factory=list)
    """Every evaluation report of the run, in order: each turn's baseline (turn 1) and evaluation."""
    promotions: list[Promotion] = field(default_factory=list)
    """Each iteration's gate decision."""

    def stage(self, name: str, iteration: int | None = None) -> StageResult:
        """The stage of that name (of the last iteration that ran it, unless ``iteration`` is given)."""
        found = [s for s in self.stages if s.name == name and (iteration is None or s.iteration == iteration)]
        if not found:
            raise KeyError(f"no stage {name!r} in this run")
        return found[-1]

    @property
    def report(self) -> EvalReport | None:
        """The last evaluation report, or None."""
        return self.reports[-1] if self.reports else None

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


class LoopState:
    """What each stage last finished with: ``<home>/loop/<job>.json``, written atomically after every stage."""

    def __init__(self, home: Path, job: str) -> None:
        # Job names may hold '/' and ':': the file name keeps a readable part and a hash that tells them apart.
        readable = re.sub(r"[^A-Za-z0-9._-]", "_", job)[:64]
        self.path = Path(home) / "loop" / f"{readable}-{hashlib.sha256(job.encode()).hexdigest()[:8]}.json"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                self.data = {}  # a torn or foreign file only costs a re-run of the stages

    def done(self, key: str, inputs: str) -> dict[str, Any] | None:
        """The outputs recorded for ``key`` when it finished with these very inputs, else None."""
        entry = self.data.get(key)
        if entry and entry.get("inputs") == inputs and entry.get("status") == "finished":
            return entry
        return None

    def started(self, key: str, inputs: str) -> bool:
        """True when ``key`` was started with these inputs and never finished (it was interrupted)."""
        entry = self.data.get(key)
        return bool(entry and entry.get("inputs") == inputs and entry.get("status") == "started")

    def mark(self, key: str, inputs: str, status: str, **outputs: Any) -> None:
        self.data[key] = {"inputs": inputs, "status": status, "at": datetime.now(UTC).isoformat(), **outputs}
        write_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True))


def run(
    spec: str | Path | JobSpec,
    *,
    iterations: int = 1,
    on_stage: Callable[[StageResult], None] | None = None,
    contradictions: str = "majority",
    max_steps: int | None = None,
    progress: bool = False,
    until: str | None = None,
    traffic: Traffic | None = None,
) -> LoopResult:
    """Run the loop's stages in order on a job, ``iterations`` times; stop at the first stage that fails, naming it.

    ``max_steps`` caps each training run's optimizer steps; ``progress`` shows training's progress bar; ``until``
    stops after the first stage of that name (``until="split"``: the data stages only). ``traffic``: how the learn
    stage sends the pool to the production model (:func:`instil.serve.replay.replay`: through the served API, each
    answer a trace); without it the model answers in process.
    """
    if iterations < 1:
        raise InstilError(f"iterations must be at least 1, got {iterations}")
    if until is not None and until not in STAGES:
        raise InstilError(f"until: no stage named {until!r}", hint=f"use one of {', '.join(STAGES)}")
    job = spec if isinstance(spec, JobSpec) else load_spec(spec)
    home = home_dir(job.root)
    result = LoopResult(job, home)
    with Store.open(home=home) as store:
        loop = _Loop(
            job, store, LoopState(home, job.name), result, on_stage, contradictions, max_steps, progress, until,
            traffic,
        )  # fmt: skip
        before: _Carry | None = None
        try:
            for n in range(1, iterations + 1):
                before = loop.turn(n, before)
        except _Stop:
            pass
    return result


# ---- one turn ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Carry:
    """What one turn hands the next."""

    production: ModelVersion | None
    """The production model after the turn's gate (None when nothing was ever promoted)."""
    train: DatasetVersion
    """The training version the turn's model learnt from."""
    corrections: str | None
    """The sha256 of the corrections the turn trained on (None in turn 1)."""


@dataclass(frozen=True)
class _Done(Generic[T]):
    """A stage's value, with what to report about it."""

    value: T
    summary: str
    detail: StageDetail | None = None
    skipped: bool = False


class _Stop(Exception):
    """Ends the loop early: ``until`` reached, or nothing left to learn from."""


class _Redo(Exception):
    """What a stage recorded is gone (a deleted blob, model folder or decision): do its work again."""


class _Loop:
    """The loop over one job: its fixed settings, and one method per stage.

    Turn ``n``'s stages are recorded under ``<stage>@<n>`` and take their inputs from the values earlier stages
    returned (and what turn ``n-1`` handed on), never from whatever is newest in the store: so the loop is a function
    of the data, the spec and the number of turns, and running it again with nothing changed redoes nothing.
    """

    def __init__(
        self,
        spec: JobSpec,
        store: Store,
        state: LoopState,
        result: LoopResult,
        on_stage: Callable[[StageResult], None] | None,
        contradictions: str,
        max_steps: int | None,
        progress: bool,
        until: str | None,
        traffic: Traffic | None = None,
    ) -> None:
        self.spec, self.store, self.state, self.result, self.on_stage = spec, store, state, result, on_stage
        self.contradictions, self.max_steps, self.progress, self.until = contradictions, max_steps, progress, until
        self.traffic = traffic

    def turn(self, n: int, before: _Carry | None) -> _Carry:
        """One turn of the loop; ``before`` is what the previous turn handed on (None for the first)."""
        if before is None:
            validated = self.stage(n, "validate", self.validate)
            self.stage(n, "curate", self.curate, validated)
            corrections = None
        else:
            corrections = self.stage(n, "learn", self.learn, before)
        train = self.stage(n, "split", self.split, corrections)
        if before is None:
            self.stage(n, "baseline", self.baseline)
        model = self.stage(n, "train", self.train, train)
        previous = before.production if before is not None else None
        report = self.stage(n, "evaluate", self.evaluate, model, previous)
        with self.report_page(report):
            current = self.stage(n, "promote", self.promote, model, previous)
        return _Carry(current, train, corrections)

    def stage(self, n: int, name: str, fn: Callable[..., _Done[T]], *args: Any) -> T:
        """Run one stage (``fn(key, *args)``), report it, and return its value; stop the loop after ``until``."""
        if self.until is not None and any(s.name == self.until for s in self.result.stages):
            raise _Stop
        began = time.perf_counter()
        try:
            with _naming_errors(name):
                done = fn(f"{name}@{n}", *args)
        except _Stop as stop:  # the stage found nothing to do: say why, then end the loop
            self._report(StageResult(name, str(stop), time.perf_counter() - began, iteration=n))
            raise
        self._report(StageResult(name, done.summary, time.perf_counter() - began, done.detail, done.skipped, n))
        return done.value

    def _report(self, stage: StageResult) -> None:
        self.result.stages.append(stage)
        if self.on_stage is not None:
            self.on_stage(stage)

    def unless_unchanged(
        self,
        key: str,
        inputs: str,
        recorded: Callable[[dict[str, Any]], T],
        work: Callable[[], tuple[T, str, StageDetail, dict[str, Any]]],
    ) -> _Done[T]:
        """Skip a stage whose inputs are unchanged since it last finished and whose output is still there.

        ``recorded(entry)`` rebuilds the value from what the stage recorded, raising :class:`_Redo` when that is gone;
        ``work()`` does the stage and returns (value, summary, detail, outputs to record).
        """
        entry = self.state.done(key, inputs)
        if entry is not None:
            try:
                return _Done(recorded(entry), entry["summary"], skipped=True)
            except _Redo:
                pass
        value, summary, detail, outputs = work()
        self.state.mark(key, inputs, "finished", summary=summary, **outputs)
        return _Done(value, summary, detail)

    @contextmanager
    def report_page(self, report: EvalReport) -> Iterator[None]:
        """Write the evaluation's HTML page once, with the run's gate decisions: after the gate, or when the loop
        stops before it (``until``). A failed gate leaves the page unwritten, and its error stands alone."""
        try:
            yield
        except _Stop:
            self._write_page(report)
            raise
        self._write_page(report)

    def _write_page(self, report: EvalReport) -> None:
        with _naming_errors("promote"):
            decisions = [p.report_row() for p in self.result.promotions]
            write_report(report, self.store, decisions=decisions, title=f"{self.spec.name}: the loop")

    # ---- the stages ---------------------------------------------------------------------------------------------
    def validate(self, key: str) -> _Done[str]:
        """Every data source checked against the spec; the value is a hash of what was validated."""
        spec = self.spec
        files = [(s.path, s.role, _file_sha256(spec.root / s.path)) for s in spec.data]
        # The model too: lengths are checked with its tokenizer.
        inputs = _hash(
            files,
            [s.model_dump(mode="json") for s in spec.data],
            spec.output.model_dump(),
            spec.model.model_dump(mode="json"),
        )

        def work() -> tuple[str, str, StageDetail, dict[str, Any]]:
            reports = validate_job(spec, rejects_dir=self.store.home / "rejects")
            bad = [r for r in reports if not r.report.ok]
            if bad:
                raise DataError(
                    f"{len(bad)} data source(s) have errors; first: {bad[0].path}\n{bad[0].report.format_findings(5)}",
                    hint=f"run `instil data validate --spec {spec.file or 'instil.yaml'}` to see every problem; "
                    f"rejected lines are in {self.store.home / 'rejects'}",
                )
            n = sum(r.report.n_valid for r in reports)
            warnings = sum(r.report.n_warnings for r in reports)
            return inputs, f"{len(reports)} sources, {n} valid examples, {warnings} warnings", reports, {}

        return self.unless_unchanged(key, inputs, lambda entry: inputs, work)

    def curate(self, key: str, validated: str) -> _Done[str]:
        """Duplicates, contradictions and PII of the validated data; the value is the curated version's sha256."""
        traces = latest_version(self.store, dataset_name(self.spec, "traces"))  # imported production traffic
        inputs = _hash(
            validated,
            self.contradictions,
            self.spec.model_dump(mode="json").get("curate"),
            *([traces.sha256] if traces is not None else []),  # absent: the same key as before traces existed
        )

        def work() -> tuple[str, str, StageDetail, dict[str, Any]]:
            cur = curate_job(self.spec, self.store, contradictions=self.contradictions)
            rep = cur.report
            summary = (
                f"{rep.total} read, {rep.kept} kept: {len(rep.exact_groups)} exact-duplicate groups, "
                f"{len(rep.near_groups)} near-duplicate groups, {len(rep.contradiction_groups)} contradictions "
                f"({rep.contradiction_rule}), {len(rep.pii)} PII findings"
            )
            return cur.curated.sha256, summary, cur, {"curated": cur.curated.sha256}

        return self.unless_unchanged(key, inputs, lambda entry: self._blob(entry["curated"]), work)

    def learn(self, key: str, before: _Carry) -> _Done[str | None]:
        current, pool = before.production, latest_version(self.store, dataset_name(self.spec, "pool"))
        if current is None or pool is None:
            why = "no model was promoted" if current is None else "the job has no pool (data with role: pool)"
            raise _Stop(f"nothing to learn from ({why}): the loop stops here")
        inputs = _hash(
            pool.sha256,
            current.id,
            eval_inputs_sha256(self.spec),
            self._holdout_sha(),
            before.corrections,
            before.train.sha256,
            decisions_fingerprint(self.spec, self.store),  # people's reviews since: learn again
        )

        def work() -> tuple[str | None, str, StageDetail, dict[str, Any]]:
            outcome = learn_from_failures(
                self.spec, self.store, current, previous=before.corrections, train=before.train, traffic=self.traffic
            )
            sha = outcome.corrections.sha256 if outcome.corrections is not None else None
            return sha, outcome.summary(), outcome, {"corrections": sha}

        def recorded(entry: dict[str, Any]) -> str | None:
            return None if entry["corrections"] is None else self._blob(entry["corrections"])

        return self.unless_unchanged(key, inputs, recorded, work)

    def split(self, key: str, corrections: str | None) -> _Done[DatasetVersion]:
        curated = self.store.get_dataset(dataset_name(self.spec, "curated"))
        holdout = frozen_holdout(self.spec, self.store)
        # The frozen holdout is split's own output the first time, so it is checked against what split recorded
        # rather than hashed into the inputs (a re-frozen holdout still makes split run again).
        inputs = _hash(curated.sha256, self.spec.split.model_dump(mode="json"), corrections)

        def recorded(entry: dict[str, Any]) -> DatasetVersion:
            if holdout is None or entry.get("holdout") != holdout.sha256:
                raise _Redo  # the holdout was re-frozen since
            try:
                return version_with_hash(self.store, dataset_name(self.spec, "train"), self._blob(entry["train"]))
            except DataError:
                raise _Redo from None

        def work() -> tuple[DatasetVersion, str, StageDetail, dict[str, Any]]:
            sp = split_job(self.spec, self.store)
            train, added = sp.train, 0
            if corrections is not None:
                folded = version_with_hash(self.store, dataset_name(self.spec, "corrections"), corrections)
                train, added = fold_corrections(self.spec, self.store, sp.train, folded)
            frozen = "kept frozen" if sp.reused_holdout else "frozen"
            plus = f" incl. {added} corrections" if corrections is not None else ""
            summary = (
                f"train {train.n_examples}{plus} ({train.ref}, {train.short_hash}), holdout {sp.holdout.n_examples} "
                f"({sp.holdout.short_hash}, {frozen}), {len(sp.left_out)} left out for matching the holdout"
            )
            return train, summary, sp, {"train": train.sha256, "holdout": sp.holdout.sha256}

        return self.unless_unchanged(key, inputs, recorded, work)

    def baseline(self, key: str) -> _Done[EvalReport | None]:
        candidates = [c for c in default_candidates(self.spec, self.store) if c.model_version is None]
        inputs = _hash(
            self._holdout_sha(),
            eval_inputs_sha256(self.spec),
            self.spec.model.model_dump(mode="json"),
            [c.to_dict() for c in candidates],
        )

        def work() -> tuple[EvalReport | None, str, StageDetail, dict[str, Any]]:
            report = self._evaluate(candidates)
            write_report(report, self.store)  # its page: no gate decides on the baseline
            return report, _scores(report), report, {"run_id": report.run_id}

        return self.unless_unchanged(key, inputs, lambda entry: None, work)

    def train(self, key: str, train: DatasetVersion) -> _Done[ModelVersion]:
        spec = self.spec
        inputs = _hash(
            train.sha256,
            spec.training.model_dump(mode="json"),
            spec.model.model_dump(mode="json"),
            spec.short_prompt,
            self.max_steps,
            instil_version(),
        )

        def work() -> tuple[ModelVersion, str, StageDetail, dict[str, Any]]:
            resume = self.state.started(key, inputs)
            self.state.mark(key, inputs, "started")
            options = {"dataset": train, "max_steps": self.max_steps, "progress": self.progress}
            try:
                res = train_sft(spec, self.store, resume=resume, **options)
            except NoCheckpointError:  # it stopped before its first checkpoint: start over
                res = train_sft(spec, self.store, **options)
            m = res.metrics
            summary = (
                f"{res.model.ref} on {train.ref}: {m.steps} steps, train loss {_fmt(m.train_loss)}, validation loss "
                f"{_fmt(m.eval_loss)}, {m.tokens_per_second:,.0f} tokens/s{f' ({res.resumed})' if res.resumed else ''}"
            )
            return res.model, summary, res, {"model_id": res.model.id}

        def recorded(entry: dict[str, Any]) -> ModelVersion:
            if (model := self._model(entry.get("model_id"))) is None:
                raise _Redo
            return model

        return self.unless_unchanged(key, inputs, recorded, work)

    def evaluate(self, key: str, model: ModelVersion, previous: ModelVersion | None) -> _Done[EvalReport]:
        candidates: list[Candidate] = prompted_baselines(self.spec)
        if previous is not None and previous.id != model.id:
            candidates.append(model_candidate(self.spec, previous))
        candidates.append(model_candidate(self.spec, model))
        inputs = _hash(self._holdout_sha(), eval_inputs_sha256(self.spec), [c.to_dict() for c in candidates])
        unchanged = self.state.done(key, inputs) is not None
        report = self._evaluate(candidates)  # every result recorded before is reused: cheap when nothing changed
        summary = _scores(report)
        self.state.mark(key, inputs, "finished", summary=summary, run_id=report.run_id)
        return _Done(report, summary, report, unchanged)

    def promote(self, key: str, model: ModelVersion, previous: ModelVersion | None) -> _Done[ModelVersion | None]:
        inputs = _hash(
            model.id,
            self._holdout_sha(),
            eval_inputs_sha256(self.spec),
            self.spec.gate.model_dump(mode="json"),
            previous.id if previous is not None else None,
        )

        def recorded(entry: dict[str, Any]) -> ModelVersion | None:
            if (promotion := find_decision(self.spec, self.store, entry["decision_id"])) is None:
                raise _Redo
            self.result.promotions.append(promotion)
            return self._model(entry.get("production_id"))

        def work() -> tuple[ModelVersion | None, str, StageDetail, dict[str, Any]]:
            promotion = promote(self.spec, self.store, model.version)
            self.result.promotions.append(promotion)
            current = production(self.store, self.spec.name)
            verdict = "promoted" if promotion.promoted else "refused"
            summary = f"{promotion.candidate} {verdict} over {promotion.reference}: {_gate_line(promotion)}"
            outputs = {"decision_id": promotion.decision_id, "production_id": current.id if current else None}
            return current, summary, promotion, outputs

        return self.unless_unchanged(key, inputs, recorded, work)

    # ---- small helpers ------------------------------------------------------------------------------------------
    def _evaluate(self, candidates: list[Candidate]) -> EvalReport:
        report = evaluate(self.spec, self.store, candidates, reuse=True)
        self.result.reports.append(report)
        return report

    def _blob(self, sha256: str | None) -> str:
        """``sha256``, when its blob is still in the store (else :class:`_Redo`)."""
        if not sha256 or not self.store.blob_path(sha256).exists():
            raise _Redo
        return sha256

    def _model(self, model_id: int | None) -> ModelVersion | None:
        """The job's model version with that id, when its folder is still there."""
        found = [m for m in self.store.list_models(self.spec.name) if m.id == model_id]
        return found[0] if found and Path(found[0].path).exists() else None

    def _holdout_sha(self) -> str | None:
        h = frozen_holdout(self.spec, self.store)
        return h.sha256 if h is not None else None


@contextmanager
def _naming_errors(name: str) -> Iterator[None]:
    """Adds the stage's name to any instil error raised inside it."""
    try:
        yield
    except _Stop:
        raise
    except InstilError as e:
        if not str(e).startswith("stage "):
            e.args = (f"stage {name}: {e}", *e.args[1:])
        raise
    except OSError as e:  # a full disk or a vanished folder: say where, keep what is written
        raise InstilError(
            f"stage {name}: {e.strerror or e} ({e.filename or 'no file name'})",
            hint="free disk space or fix the folder's permissions, then run again: finished stages are kept",
        ) from e
    except Exception as e:
        # Libraries wrap a full disk in their own errors (safetensors' SafetensorError, SQLite's "disk is full").
        text = str(e)
        if not any(m in text for m in ("No space left on device", "os error 28", "database or disk is full")):
            raise
        raise InstilError(
            f"stage {name}: No space left on device ({type(e).__name__}: {text.splitlines()[0] if text else ''})",
            hint="free disk space, then run again: finished stages are kept",
        ) from e


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return "missing"  # validate reports the missing file with its name
    return h.hexdigest()


def _scores(report: EvalReport) -> str:
    def score(c: CandidateSummary) -> str:
        g = c.graders[report.primary]
        return f"{g.mean:.2f} [{g.low:.2f}, {g.high:.2f}]"

    return "; ".join(f"{c.name}: {report.primary} {score(c)}" for c in report.candidates)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _gate_line(promotion: Promotion) -> str:
    first = promotion.decision.comparisons[0]
    line = f"{first.name} {first.estimate:+.3f} (lower bound {first.low:+.3f}, p={first.p_adjusted:.2g}, {first.test})"
    if not promotion.promoted and promotion.decision.reasons:
        line += f"; failed: {promotion.decision.reasons[0]}"
    return line


# ---- quickstart ------------------------------------------------------------------------------------------------------
def quickstart(
    dest: str | Path = "quickstart",
    *,
    model: str | None = None,
    iterations: int = 2,
    on_stage: Callable[[StageResult], None] | None = None,
    max_steps: int | None = None,
    progress: bool = False,
    traffic: Traffic | None = None,
) -> LoopResult:
    """Copy the shipped example job into ``dest`` (unless it is there already) and turn the loop on it twice.

    ``model`` replaces the spec's base model (any Hugging Face causal LM id or local path) in the copied spec.
    ``traffic`` as for :func:`run` (`instil quickstart` replays the pool through the served v1).
    """
    dest = Path(dest)
    spec_path = dest / "instil.yaml"
    if not spec_path.exists():
        spec_path = copy_example("triage", dest)
    if model is not None:
        _set_base_model(spec_path, model)
    return run(
        spec_path, iterations=iterations, on_stage=on_stage, max_steps=max_steps, progress=progress, traffic=traffic
    )


_PRETRAINED_TRAINING = {
    "adapter": "lora   # set by `instil quickstart --model`: a pretrained model is steered, not retrained",
    "epochs": "3",
    "learning_rate": "2.0e-4",
}
"""What the copied spec's training section becomes for a pretrained base (the example's values suit a random one)."""


def _set_base_model(spec_path: Path, model: str) -> None:
    """Point the copied spec at another base model, with training settings for a pretrained one."""
    text = spec_path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if (data.get("model") or {}).get("base") == model:
        return
    out: list[str] = []
    section = None
    for line in text.splitlines(keepends=True):
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            section = line.strip().rstrip(":")
        key = line.strip().split(":", 1)[0]
        if section == "model" and line.startswith("  base:"):
            line = f"  base: {json.dumps(model)}   # set by `instil quickstart --model`\n"
        elif section == "training" and line.startswith("  ") and key in _PRETRAINED_TRAINING:
            line = f"  {key}: {_PRETRAINED_TRAINING[key]}\n"
        out.append(line)
    backup = spec_path.with_suffix(".yaml.orig")
    if not backup.exists():
        shutil.copyfile(spec_path, backup)
    write_atomic(spec_path, "".join(out))
    load_spec(spec_path)  # fail now, naming the line, if the edit broke it
