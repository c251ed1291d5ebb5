"""Correct failures into training data: the production model answers the pool, the graders find what it got wrong,
and each failure's correction joins the training data (and is kept as a preference pair).

    from instil.learn import learn_from_failures
    outcome = learn_from_failures(spec, store, production_model)
    outcome.failed, outcome.added, outcome.corrections.ref       # '<job>:corrections@<n>', cumulative

Each failure goes into the review queue (:mod:`instil.review`) as a production failure would, and the
:class:`~instil.review.ReferenceReviewer` decides it there, through the same calls a person makes: the pool's
reference answer is its correction. The corrections then come from the queue, so whatever people decided (reviewed
traces, user feedback) joins them. The holdout is never touched: an example matching it, exactly or nearly, is left
out. :func:`fold_corrections` makes the next training version: the split's training examples plus every correction
not already among them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from instil.data.records import Example
from instil.errors import DataError, NotFoundError
from instil.eval.candidates import model_candidate, run_candidate
from instil.eval.graders import Output, build_graders
from instil.jobdata import dataset_name, frozen_holdout, holdout_index
from instil.review import ReferenceReviewer, corrections, queue_failures
from instil.spec import JobSpec
from instil.store import DatasetVersion, ModelVersion, Store, Trace

Traffic = Callable[[JobSpec, Store, ModelVersion, list[Example]], list[Trace | None]]
"""Sends examples to a model as traffic and returns the trace of each answer (None: no answer)."""

__all__ = ["LearnOutcome", "Traffic", "fold_corrections", "latest_version", "learn_from_failures", "version_with_hash"]


@dataclass
class LearnOutcome:
    """What :func:`learn_from_failures` found and recorded."""

    model: str
    """The model that answered the pool (``<job>@<n>``)."""
    scored: int
    """Pool examples answered and graded."""
    failed: int
    """Of those, how many failed at least one grader."""
    added: int
    """Corrections new to ``<job>:corrections`` (failures already corrected, in training, or matching the holdout
    are not added)."""
    left_out_for_holdout: int
    """Failures left out because they match the frozen holdout."""
    corrections: DatasetVersion | None
    """The corrections dataset version (cumulative over iterations)."""
    preferences: DatasetVersion | None
    """This turn's preference pairs (correction chosen over the model's answer); None when nothing was added."""
    failed_by_grader: dict[str, int] = field(default_factory=dict)
    """Failures per grader."""
    via: str = "in process"
    """How the model answered: in process, or through the served API (each answer a trace)."""

    def summary(self) -> str:
        by = ", ".join(f"{k} {v}" for k, v in self.failed_by_grader.items())
        total = self.corrections.n_examples if self.corrections is not None else 0
        return (
            f"{self.model} answered {self.scored} pool examples {self.via}: {self.failed} failed ({by}), queued for "
            "review and "
            f"corrected by the reference reviewer (the pool's reference answers); {self.added} corrections added "
            f"({total} in all), {self.left_out_for_holdout} left out for matching the holdout"
        )


def learn_from_failures(
    spec: JobSpec,
    store: Store,
    model: ModelVersion,
    *,
    previous: DatasetVersion | str | None = None,
    train: DatasetVersion | str | None = None,
    max_corrections: int | None = None,
    traffic: Traffic | None = None,
) -> LearnOutcome:
    """Run ``model`` on the job's pool, grade it, and record each failure's correction as training data.

    ``previous`` is the corrections version to add to (a version or its sha256; None starts afresh) and ``train`` the
    training version the model learnt from: failures already in either are not added twice. ``max_corrections``
    caps the corrections taken (a reviewer's budget), in pool order. The pool's reference answers stand in for a
    reviewer's corrections. Each correction is also recorded as a preference pair (chosen: the correction; rejected:
    what the model answered) for preference training.
    """
    pool_version = latest_version(store, dataset_name(spec, "pool"))
    if pool_version is None:
        raise DataError(f"job '{spec.name}' has no pool", hint="add a data source with role: pool")
    pool = list(store.iter_examples(pool_version))
    graders = build_graders(spec)
    if traffic is None:
        gens = run_candidate(model_candidate(spec, model), spec, store, pool)
        answers: list[tuple[str, Any, str | None] | None] = [(g.text, g.tool_calls, None) for g in gens]
        via = "in process"
    else:
        traces = traffic(spec, store, model, pool)
        answers = [(t.output or "", t.tool_calls, t.id) if t is not None else None for t in traces]
        via = f"through the served API ({sum(a is not None for a in answers)} requests, each a trace)"
    failed: list[tuple[Example, str, str, str | None]] = []
    by_grader: dict[str, int] = {g.name: 0 for g in graders}
    for e, got in zip(pool, answers, strict=True):
        if got is None:  # no answer came back: nothing to judge
            continue
        text, calls, trace_id = got
        answer = Output(text, calls)
        scores = [(gr.name, gr.grade(e, answer)) for gr in graders]
        lost = [(name, score) for name, score in scores if not score.passed]
        for name, _ in lost:
            by_grader[name] += 1
        if lost:
            reason = "; ".join(f"{name}: {score.reason or 'failed'}" for name, score in lost)
            failed.append((e, text, reason, trace_id))

    # The failures go through the review queue as any other answer would, decided by the reference reviewer; what
    # anyone decided there (reviewed traces, feedback) comes into the corrections with them.
    prev = _resolve(store, dataset_name(spec, "corrections"), previous)
    trained = _resolve(store, dataset_name(spec, "train"), train)
    known = {e.key() for e in store.iter_examples(trained)} if trained is not None else set()
    items = queue_failures(spec, store, model.ref, [(e, text, reason) for e, text, reason, _ in failed],
                           trace_ids=[t for *_, t in failed])  # fmt: skip
    still_open = [i for i in items if i.status == "open"]
    budget = still_open if max_corrections is None else still_open[:max_corrections]
    ReferenceReviewer().review(spec, store, budget)
    out = corrections(spec, store, previous=prev, exclude=known)
    corrections_version, preferences = out.corrections, out.preferences
    return LearnOutcome(
        model.ref,
        sum(a is not None for a in answers),
        len(failed),
        out.added,
        out.left_out_for_holdout,
        corrections_version,
        preferences,
        {k: v for k, v in by_grader.items() if v},
        via,
    )


def _resolve(store: Store, name: str, version: DatasetVersion | str | None) -> DatasetVersion | None:
    if version is None or isinstance(version, DatasetVersion):
        return version
    return version_with_hash(store, name, version)


def fold_corrections(
    spec: JobSpec, store: Store, train: DatasetVersion, corrections: DatasetVersion
) -> tuple[DatasetVersion, int]:
    """A new training version: the split's training examples plus the corrections not already among them."""
    examples = list(store.iter_examples(train))
    keys = {e.key() for e in examples}
    added = [e for e in store.iter_examples(corrections) if e.key() not in keys]
    holdout = frozen_holdout(spec, store)
    if holdout is not None and added:  # checked again: the holdout may have been re-frozen since
        leaking = {m.example_key for m in holdout_index(spec, store, holdout).check(added)}
        added = [e for e in added if e.key() not in leaking]
    if not added:
        return train, 0
    merged = store.put_dataset(
        dataset_name(spec, "train"),
        [*examples, *added],
        kind="train",
        parents=[train, corrections],
        meta={"corrections": len(added)},
    )
    return merged, len(added)


def latest_version(store: Store, name: str) -> DatasetVersion | None:
    """The newest version of a dataset, or None when there is none."""
    try:
        return store.get_dataset(name)
    except NotFoundError:
        return None


def version_with_hash(store: Store, name: str, sha256: str) -> DatasetVersion:
    """The version of dataset ``name`` with this content (recorded by an earlier stage), else :class:`DataError`."""
    try:
        return store.get_dataset(name, sha256)
    except NotFoundError:
        raise DataError(
            f"{name} has no version with content {sha256[:12]}", hint="run the loop again from the start"
        ) from None
