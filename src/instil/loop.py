"""The loop, stage by stage: ``instil run instil.yaml`` and ``instil quickstart``.

    result = instil.loop.run("instil.yaml")                  # validate -> curate -> split -> baseline -> train
                                                             #   -> evaluate -> promote
    result = instil.loop.run("instil.yaml", iterations=2)    # then learn from the pool's failures and go round again
    result = instil.loop.quickstart("quickstart/")           # copy the example job there and turn the loop twice
    result.stages[-1].summary, result.report.html_path, result.promotions[-1].promoted

Each stage records what went in (a content hash of its inputs: data files, spec sections, dataset and model
versions) and what came out in ``<home>/loop/<job>.json``. A stage whose inputs have not changed since it last
finished is skipped, so a second run does only new work, and a run stopped halfway resumes where it stopped (training
continues from its newest checkpoint). An error names the stage it happened in; what earlier stages wrote stays.

Iteration 2 and later start with ``learn``: the production model answers the job's ``pool`` (captured traffic), the
graders find its failures, and each failure's corrected answer (the pool's reference; a reviewer's correction in real
life) joins the training data as ``<job>:corrections``, also kept as a preference pair (chosen: the correction,
rejected: the model's answer) in ``<job>:preferences``. The holdout is never touched: corrections matching it are
left out. Then split folds the corrections into a new training version, and train, evaluate and promote run again.

Each stage reports a :class:`StageResult` to an optional callback as it finishes, so the CLI prints one line per stage
while the API stays silent.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from instil.data.stages import curate_job, dataset_name, frozen_holdout, split_job, validate_job
from instil.env import home_dir
from instil.errors import DataError, InstilError
from instil.learn import fold_corrections, latest_version, learn_from_failures, version_with_hash
from instil.spec import JobSpec, load_spec
from instil.store import ModelVersion, Store

__all__ = ["STAGES", "LoopResult", "LoopState", "StageResult", "quickstart", "run"]

STAGES = ("learn", "validate", "curate", "split", "baseline", "train", "evaluate", "promote")
"""Every stage in the order it runs (``learn`` only from the second iteration on)."""


@dataclass
class StageResult:
    """One finished (or skipped) stage."""

    name: str
    """One of :data:`STAGES`."""
    summary: str
    """One line for people."""
    seconds: float
    """Wall time."""
    detail: Any = None
    """The stage's own result object (reports, dataset versions, the evaluation, the promotion)."""
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
    reports: list[Any] = field(default_factory=list)
    """Each iteration's :class:`~instil.eval.compare.EvalReport` (absent for an iteration whose evaluation was
    skipped and whose earlier report could not be found)."""
    promotions: list[Any] = field(default_factory=list)
    """Each iteration's :class:`~instil.registry.Promotion`."""

    def stage(self, name: str, iteration: int | None = None) -> StageResult:
        """The stage of that name (of the last iteration that ran it, unless ``iteration`` is given)."""
        found = [s for s in self.stages if s.name == name and (iteration is None or s.iteration == iteration)]
        if not found:
            raise KeyError(f"no stage {name!r} in this run")
        return found[-1]

    @property
    def report(self) -> Any:
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)


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


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """Adds the stage's name to any instil error raised inside it."""
    try:
        yield
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


def run(
    spec: str | Path | JobSpec,
    *,
    iterations: int = 1,
    on_stage: Callable[[StageResult], None] | None = None,
    contradictions: str = "majority",
    max_steps: int | None = None,
    progress: bool = False,
    until: str | None = None,
) -> LoopResult:
    """Run the loop's stages in order on a job, ``iterations`` times; stop at the first stage that fails, naming it.

    ``max_steps`` caps each training run's optimizer steps; ``progress`` shows training's progress bar; ``until``
    stops after the first stage of that name (``until="split"``: the data stages only).
    """
    if iterations < 1:
        raise InstilError(f"iterations must be at least 1, got {iterations}")
    if until is not None and until not in STAGES:
        raise InstilError(f"until: no stage named {until!r}", hint=f"use one of {', '.join(STAGES)}")
    job = spec if isinstance(spec, JobSpec) else load_spec(spec)
    home = home_dir(job.root)
    result = LoopResult(job, home)
    state = LoopState(home, job.name)
    with Store.open(home=home) as store:
        for turn in range(1, iterations + 1):
            if not _Iteration(
                job, store, state, result, turn, on_stage, contradictions, max_steps, progress, until
            ).run():
                break
    return result


class _Iteration:
    """One turn of the loop; each method is one stage.

    Turn ``n``'s stages are recorded under ``<stage>@<n>`` and take their inputs from what turn ``n``'s earlier stages
    and turn ``n-1`` recorded, never from whatever is newest in the store: so the loop is a function of the data, the
    spec and the number of turns, and running it again with nothing changed redoes nothing.
    """

    def __init__(
        self,
        spec: JobSpec,
        store: Store,
        state: LoopState,
        result: LoopResult,
        turn: int,
        on_stage: Callable[[StageResult], None] | None,
        contradictions: str,
        max_steps: int | None,
        progress: bool,
        until: str | None = None,
    ) -> None:
        self.until = until
        self.spec, self.store, self.state, self.result = spec, store, state, result
        self.turn, self.on_stage = turn, on_stage
        self.contradictions, self.max_steps, self.progress = contradictions, max_steps, progress
        self.model: ModelVersion | None = None
        self.corrections: str | None = None
        """The sha256 of the corrections this turn trains on (None in turn 1)."""
        self.train_sha: str | None = None

    def run(self) -> bool:
        """Run the turn's stages; False when the loop stops here (nothing to learn, or ``until`` reached)."""
        if self.turn == 1:
            names = ["validate", "curate", "split", "baseline", "train", "evaluate", "promote"]
        else:
            if not self._do("learn", self.learn) or self.until == "learn":
                return False
            names = ["split", "train", "evaluate", "promote"]
        for name in names:
            self._do(name, getattr(self, name))
            if name == self.until:
                return False
        return True

    def _do(self, name: str, fn: Callable[[], tuple[str, Any, bool]]) -> bool:
        t = time.perf_counter()
        with _stage(name):
            summary, detail, skipped = fn()
        stage = StageResult(name, summary, time.perf_counter() - t, detail, skipped, self.turn)
        self.result.stages.append(stage)
        if self.on_stage is not None:
            self.on_stage(stage)
        return detail is not None or skipped

    def _key(self, stage: str) -> str:
        return f"{stage}@{self.turn}"

    def _before(self, stage: str) -> dict[str, Any]:
        """What ``stage`` of the previous turn recorded."""
        return self.state.data.get(f"{stage}@{self.turn - 1}") or {}

    # ---- stages ------------------------------------------------------------------------------------------------------
    def learn(self) -> tuple[str, Any, bool]:
        current = _model(self.store, self.spec.name, self._before("promote").get("production_id"))
        pool = latest_version(self.store, dataset_name(self.spec, "pool"))
        if current is None or pool is None:
            why = "no model was promoted" if current is None else "the job has no pool (data with role: pool)"
            return f"nothing to learn from ({why}): the loop stops here", None, False
        previous = self.state.data.get(f"learn@{self.turn - 1}", {}).get("corrections")
        before_train = self._before("split").get("train")
        inputs = _hash(
            pool.sha256,
            current.id,
            _eval_inputs(self.spec),
            _holdout_sha(self.spec, self.store),
            previous,
            before_train,
        )
        if (done := self.state.done(self._key("learn"), inputs)) is not None and _exists(
            self.store, done.get("corrections")
        ):
            self.corrections = done["corrections"]
            return done["summary"], None, True
        outcome = learn_from_failures(self.spec, self.store, current, previous=previous, train=before_train)
        self.corrections = outcome.corrections.sha256 if outcome.corrections is not None else None
        summary = outcome.summary()
        self.state.mark(self._key("learn"), inputs, "finished", summary=summary, corrections=self.corrections)
        return summary, outcome, False

    def validate(self) -> tuple[str, Any, bool]:
        files = [(s.path, s.role, _file_sha256(self.spec.root / s.path)) for s in self.spec.data]
        # The model too: lengths are checked with its tokenizer.
        inputs = _hash(
            files,
            [s.model_dump(mode="json") for s in self.spec.data],
            self.spec.output.model_dump(),
            self.spec.model.model_dump(mode="json"),
        )
        if (done := self.state.done(self._key("validate"), inputs)) is not None:
            return done["summary"], None, True
        reports = validate_job(self.spec, rejects_dir=self.store.home / "rejects")
        bad = [r for r in reports if not r.report.ok]
        if bad:
            first = bad[0].report
            raise DataError(
                f"{len(bad)} data source(s) have errors; first: {bad[0].path}\n{first.format_findings(5)}",
                hint=f"run `instil data validate --spec {self.spec.file or 'instil.yaml'}` to see every problem; "
                f"rejected lines are in {self.store.home / 'rejects'}",
            )
        n = sum(r.report.n_valid for r in reports)
        warnings = sum(r.report.n_warnings for r in reports)
        summary = f"{len(reports)} sources, {n} valid examples, {warnings} warnings"
        self.state.mark(self._key("validate"), inputs, "finished", summary=summary)
        return summary, reports, False

    def curate(self) -> tuple[str, Any, bool]:
        inputs = _hash(
            self.state.data[self._key("validate")]["inputs"],
            self.contradictions,
            self.spec.model_dump(mode="json").get("curate"),
        )
        done = self.state.done(self._key("curate"), inputs)
        if done is not None and _exists(self.store, done.get("curated")):
            return done["summary"], None, True
        cur = curate_job(self.spec, self.store, contradictions=self.contradictions)
        rep = cur.report
        summary = (
            f"{rep.total} read, {rep.kept} kept: {len(rep.exact_groups)} exact-duplicate groups, "
            f"{len(rep.near_groups)} near-duplicate groups, {len(rep.contradiction_groups)} contradictions "
            f"({rep.contradiction_rule}), {len(rep.pii)} PII findings"
        )
        self.state.mark(self._key("curate"), inputs, "finished", summary=summary, curated=cur.curated.sha256)
        return summary, cur, False

    def split(self) -> tuple[str, Any, bool]:
        curated = self.store.get_dataset(dataset_name(self.spec, "curated"))
        holdout = frozen_holdout(self.spec, self.store)
        # The frozen holdout is split's own output the first time, so it is checked against what split recorded
        # rather than hashed into the inputs (a re-frozen holdout still makes split run again).
        inputs = _hash(curated.sha256, self.spec.split.model_dump(mode="json"), self.corrections)
        done = self.state.done(self._key("split"), inputs)
        if (
            done is not None
            and _exists(self.store, done.get("train"))
            and holdout is not None
            and done.get("holdout") == holdout.sha256
        ):
            self.train_sha = done["train"]
            return done["summary"], None, True
        sp = split_job(self.spec, self.store)
        train, added = sp.train, 0
        if self.corrections is not None:
            corrections = version_with_hash(self.store, dataset_name(self.spec, "corrections"), self.corrections)
            train, added = fold_corrections(self.spec, self.store, sp.train, corrections)
        self.train_sha = train.sha256
        frozen = "kept frozen" if sp.reused_holdout else "frozen"
        plus = f" incl. {added} corrections" if self.corrections is not None else ""
        summary = (
            f"train {train.n_examples}{plus} ({train.ref}, {train.short_hash}), holdout {sp.holdout.n_examples} "
            f"({sp.holdout.short_hash}, {frozen}), {len(sp.left_out)} left out for matching the holdout"
        )
        self.state.mark(
            self._key("split"),
            inputs,
            "finished",
            summary=summary,
            train=train.sha256,
            holdout=sp.holdout.sha256,
        )
        return summary, sp, False

    def baseline(self) -> tuple[str, Any, bool]:
        from instil.eval.candidates import default_candidates

        candidates = [c for c in default_candidates(self.spec, self.store) if c.model_version is None]
        inputs = _hash(
            _holdout_sha(self.spec, self.store),
            _eval_inputs(self.spec),
            self.spec.model.model_dump(mode="json"),
            [c.to_dict() for c in candidates],
        )
        if (done := self.state.done(self._key("baseline"), inputs)) is not None:
            return done["summary"], None, True
        report = self._evaluate(candidates)
        summary = "; ".join(f"{c.name}: {report.primary} {_score(c, report.primary)}" for c in report.candidates)
        self.state.mark(self._key("baseline"), inputs, "finished", summary=summary, run_id=report.run_id)
        return summary, report, False

    def train(self) -> tuple[str, Any, bool]:
        from instil.train.checkpoints import NoCheckpointError
        from instil.train.sft import train_sft

        assert self.train_sha is not None
        train = version_with_hash(self.store, dataset_name(self.spec, "train"), self.train_sha)
        inputs = _hash(
            train.sha256,
            self.spec.training.model_dump(mode="json"),
            self.spec.model.model_dump(mode="json"),
            self.spec.short_prompt,
            self.max_steps,
            _instil_version(),
        )
        done = self.state.done(self._key("train"), inputs)
        if done is not None and (model := _model(self.store, self.spec.name, done.get("model_id"))) is not None:
            self.model = model
            return done["summary"], None, True
        resume = self.state.started(self._key("train"), inputs)
        self.state.mark(self._key("train"), inputs, "started")
        kwargs = {"dataset": train, "max_steps": self.max_steps, "progress": self.progress}
        try:
            res = train_sft(self.spec, self.store, resume=resume, **kwargs)
        except NoCheckpointError:  # it stopped before its first checkpoint: start over
            res = train_sft(self.spec, self.store, **kwargs)
        self.model = res.model
        m = res.metrics
        summary = (
            f"{res.model.ref} on {train.ref}: {m.steps} steps, train loss {_fmt(m.train_loss)}, validation loss "
            f"{_fmt(m.eval_loss)}, {m.tokens_per_second:,.0f} tokens/s{' (resumed)' if resume else ''}"
        )
        self.state.mark(self._key("train"), inputs, "finished", summary=summary, model_id=res.model.id)
        return summary, res, False

    def evaluate(self) -> tuple[str, Any, bool]:
        from instil.eval.candidates import model_candidate, prompted_baselines

        assert self.model is not None
        before = _model(self.store, self.spec.name, self._before("promote").get("production_id"))
        candidates = prompted_baselines(self.spec)
        if before is not None and before.id != self.model.id:
            candidates.append(model_candidate(self.spec, before))
        candidates.append(model_candidate(self.spec, self.model))
        inputs = _hash(_holdout_sha(self.spec, self.store), _eval_inputs(self.spec), [c.to_dict() for c in candidates])
        done = self.state.done(self._key("evaluate"), inputs)
        report = self._evaluate(candidates)  # every result recorded before is reused: cheap when nothing changed
        summary = "; ".join(f"{c.name}: {report.primary} {_score(c, report.primary)}" for c in report.candidates)
        self.state.mark(self._key("evaluate"), inputs, "finished", summary=summary, run_id=report.run_id)
        return summary, report, done is not None

    def promote(self) -> tuple[str, Any, bool]:
        from instil.registry import find_decision, production, promote

        assert self.model is not None
        report = self.result.report
        inputs = _hash(
            self.model.id,
            _holdout_sha(self.spec, self.store),
            _eval_inputs(self.spec),
            self.spec.gate.model_dump(mode="json"),
            self._before("promote").get("production_id"),
        )
        done = self.state.done(self._key("promote"), inputs)
        promotion = find_decision(self.spec, self.store, done["decision_id"]) if done is not None else None
        skipped = promotion is not None
        if promotion is None:
            promotion = promote(self.spec, self.store, self.model.version)
        self.result.promotions.append(promotion)
        if report is not None:
            _write_report(self.spec, self.store, report, self.result.promotions)
        if skipped:
            assert done is not None
            return done["summary"], promotion, True
        current = production(self.store, self.spec.name)
        verdict = "promoted" if promotion.promoted else "refused"
        summary = f"{promotion.candidate} {verdict} over {promotion.reference}: {_gate_line(promotion)}"
        self.state.mark(
            self._key("promote"),
            inputs,
            "finished",
            summary=summary,
            decision_id=promotion.id,
            production_id=current.id if current is not None else None,
        )
        return summary, promotion, False

    def _evaluate(self, candidates: list[Any]) -> Any:
        from instil.eval.compare import evaluate

        report = evaluate(self.spec, self.store, candidates, reuse=True)
        self.result.reports.append(report)
        return report


# ---- small helpers ---------------------------------------------------------------------------------------------------
def _exists(store: Store, sha256: str | None) -> bool:
    return bool(sha256) and store.blob_path(sha256).exists()


def _model(store: Store, job: str, model_id: int | None) -> ModelVersion | None:
    for m in store.list_models(job):
        if m.id == model_id and Path(m.path).exists():
            return m
    return None


def _holdout_sha(spec: JobSpec, store: Store) -> str | None:
    h = frozen_holdout(spec, store)
    return h.sha256 if h is not None else None


def _eval_inputs(spec: JobSpec) -> str:
    from instil.eval.compare import eval_inputs_sha256

    return eval_inputs_sha256(spec)


def _score(c: Any, primary: str) -> str:
    g = c.graders[primary]
    return f"{g.mean:.2f} [{g.low:.2f}, {g.high:.2f}]"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _gate_line(promotion: Any) -> str:
    first = promotion.decision.comparisons[0]
    line = f"{first.name} {first.estimate:+.3f} (lower bound {first.low:+.3f}, p={first.p_adjusted:.2g}, {first.test})"
    if not promotion.promoted and promotion.decision.reasons:
        line += f"; failed: {promotion.decision.reasons[0]}"
    return line


def _write_report(spec: JobSpec, store: Store, report: Any, promotions: list[Any]) -> None:
    """Rewrite the evaluation's HTML report with the gate decisions of this run."""
    from dataclasses import asdict

    from instil.eval.report import write_html

    decisions = [{**asdict(p.decision), "candidate": p.candidate, "reference": p.reference} for p in promotions]
    path = getattr(report, "html_path", None) or Path(report.examples_path).with_name("report.html")
    write_html(report, path, store=store, decisions=decisions, title=f"{spec.name}: the loop")


# ---- quickstart ------------------------------------------------------------------------------------------------------
def quickstart(
    dest: str | Path = "quickstart",
    *,
    model: str | None = None,
    iterations: int = 2,
    on_stage: Callable[[StageResult], None] | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> LoopResult:
    """Copy the shipped example job into ``dest`` (unless it is there already) and turn the loop on it twice.

    ``model`` replaces the spec's base model (any Hugging Face causal LM id or local path) in the copied spec.
    """
    from instil.examples import copy_example

    dest = Path(dest)
    spec_path = dest / "instil.yaml"
    if not spec_path.exists():
        spec_path = copy_example("triage", dest)
    if model is not None:
        _set_base_model(spec_path, model)
    return run(spec_path, iterations=iterations, on_stage=on_stage, max_steps=max_steps, progress=progress)


_PRETRAINED_TRAINING = {
    "adapter": "lora   # set by `instil quickstart --model`: a pretrained model is steered, not retrained",
    "epochs": "3",
    "learning_rate": "2.0e-4",
}
"""What the copied spec's training section becomes for a pretrained base (the example's values suit a random one)."""


def _set_base_model(spec_path: Path, model: str) -> None:
    """Point the copied spec at another base model, with training settings for a pretrained one."""
    import yaml

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
    spec_path.write_text("".join(out), encoding="utf-8")
    load_spec(spec_path)  # fail now, naming the line, if the edit broke it


def _instil_version() -> str:
    import instil  # at call time: instil/__init__ imports this module

    return instil.__version__
