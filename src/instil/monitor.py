"""`instil monitor`: is production traffic drifting away from what the model was trained on, is it failing more, and
is it time to train again?

    from instil.monitor import monitor
    report = monitor(spec, store)                  # the last spec.monitor.window_hours of traces vs the training data
    report.drifted, report.retrain_due, report.reasons
    print(report.table())

What is compared (each a test with its p-value; a p-value under ``monitor.p_value`` is drift, and a test with fewer
than ``monitor.min_traces`` traces behind it is reported but not judged):

- **input length**: the characters of the last user message, training examples vs the window's traces
  (two-sample Kolmogorov-Smirnov);
- **input content**: TF-IDF vectors of the same messages (sentence embeddings with ``embeddings``, the optional
  extra); the statistic is the distance between the two sets' mean vectors, its p-value from 200 random relabellings
  (a permutation test: exact for any distribution; it cannot go under 1/201, so ``monitor.p_value`` must be above);
- **output labels**, for a job with labels: the answers' label counts vs the training labels (chi-square);
- **refusals**: the share of answers that refuse ("I can't", "I'm sorry"...), vs the training answers' (Fisher's
  exact test);
- **schema failures**: the share of the window's answers a JSON-schema grader failed (no training counterpart:
  training data fits its schema), judged against ``monitor.max_failure_rate`` when set;
- **online pass rate** per window over the last ``windows`` windows, with Wilson intervals; the latest window above
  ``monitor.max_failure_rate`` failures is an alert.

Retraining is due when drift is found, the latest window's failure rate is above the threshold, or at least
``monitor.retrain_after_failures`` failures came in since the newest model version was trained (traces a grader
failed, and answers users said were wrong through feedback).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from instil.data.records import Example
from instil.errors import DataError, DependencyError, NotFoundError
from instil.eval.stats import Interval, wilson_interval
from instil.jobdata import dataset_name, trace_example
from instil.spec import JobSpec
from instil.store import Store, Trace, TraceFilter

__all__ = ["Check", "MonitorReport", "WindowRate", "monitor"]

REFUSAL = re.compile(
    r"\b(i can(no|')t|i cannot|i am unable|i'm unable|i am not able|i'm not able|i won't|as an ai\b|i'm sorry,? but|"
    r"i apologi[sz]e,? but)",
    re.IGNORECASE,
)
"""What counts as a refusal: the usual English phrasings of "I can't help with that"."""
MAX_SAMPLE = 2000
"""The most examples (and traces) each test takes, drawn at random with a fixed seed."""
PERMUTATIONS = 200
"""Relabellings behind the content test's p-value: it is never under 1/201 (about 0.005)."""
MAX_WINDOW = 20_000
"""The most traces of the window read (the newest), before sampling."""


@dataclass(frozen=True)
class Check:
    """One drift test."""

    name: str
    statistic: float | None
    p_value: float | None
    n_reference: int
    n_recent: int
    drifted: bool
    """Whether it counts as drift (p-value under the threshold, with enough traces)."""
    detail: str


@dataclass(frozen=True)
class WindowRate:
    """The online pass rate of one window."""

    start: datetime
    end: datetime
    graded: int
    passed: int
    rate: Interval | None


@dataclass
class MonitorReport:
    """What :func:`monitor` found."""

    job: str
    window: tuple[datetime, datetime]
    traces: int
    """Answered traces in the window (shadows left out: callers never saw them)."""
    checks: list[Check]
    windows: list[WindowRate]
    failures_since_training: int
    """Failed traces, and answers users said were wrong (feedback), since the newest model version was trained."""
    trained_at: datetime | None
    reasons: list[str] = field(default_factory=list)
    """Why retraining is due (empty: it is not)."""

    @property
    def drifted(self) -> bool:
        return any(c.drifted for c in self.checks)

    @property
    def retrain_due(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = [t.isoformat() for t in self.window]
        d["trained_at"] = self.trained_at.isoformat() if self.trained_at else None
        for w in d["windows"]:
            w["start"], w["end"] = w["start"].isoformat(), w["end"].isoformat()
        d["drifted"], d["retrain_due"] = self.drifted, self.retrain_due
        return d


def _asked(e: Example) -> str:
    users = [m for m in e.messages if m.role == "user"]
    content = users[-1].content if users else None
    return content if isinstance(content, str) else ""


def _sample(items: list[Any], rng: np.random.Generator) -> list[Any]:
    if len(items) <= MAX_SAMPLE:
        return items
    return [items[i] for i in sorted(rng.choice(len(items), MAX_SAMPLE, replace=False))]


def monitor(
    spec: JobSpec,
    store: Store,
    *,
    now: datetime | None = None,
    window_hours: float | None = None,
    windows: int = 7,
    embeddings: str | None = None,
) -> MonitorReport:
    """Compare the last ``window_hours`` (default ``monitor.window_hours``) of the job's traces with its training
    data, rate the last ``windows`` windows, and say whether retraining is due (see the module doc)."""
    cfg = spec.monitor
    hours = cfg.window_hours if window_hours is None else window_hours
    if hours <= 0:
        raise DataError(f"the window must be longer than 0 hours, not {hours}")
    end = now or datetime.now(UTC)
    start = end - timedelta(hours=hours)
    try:
        train = store.get_dataset(dataset_name(spec, "train"))
    except NotFoundError:
        raise DataError(
            f"job {spec.name!r} has no training data to compare traffic with", hint="run `instil data split` first"
        ) from None
    rng = np.random.default_rng(0)
    reference = _sample(list(store.iter_examples(train)), rng)
    recent_traces = [
        t
        for t in store.list_traces(TraceFilter(job=spec.name, since=start, until=end, status=200), limit=MAX_WINDOW)
        if t.arm != "shadow"
    ]
    recent = _sample([trace_example(t) for t in recent_traces], rng)
    enough = len(recent) >= cfg.min_traces

    checks = [
        _lengths(reference, recent, cfg.p_value, enough),
        _content(reference, recent, cfg.p_value, enough, embeddings, rng),
        _refusals(reference, recent, cfg.p_value, enough),
        _schema_failures(recent_traces, spec, cfg.max_failure_rate, enough),
    ]
    if spec.output.labels:
        checks.insert(2, _labels(reference, recent, spec, cfg.p_value, enough))

    rates = _windows(store, spec.name, end, hours, windows)
    models = store.list_models(spec.name)
    trained_at = models[-1].created_at if models else None
    failed_since = 0
    if trained_at is not None:  # failed graders, and users saying an answer was wrong
        failed = TraceFilter(job=spec.name, passed=False, since=trained_at)
        failed_since = store.count_traces(failed) - sum(  # production's failures: not a canary's or a shadow's
            store.count_traces(dataclasses.replace(failed, arm=arm)) for arm in ("candidate", "shadow")
        )
        failed_since += sum(
            1
            for i in store.list_review_items(spec.name, kind="feedback")
            if i.created_at is not None and i.created_at >= trained_at
            and (i.suggestion is not None or (i.rating is not None and i.rating < 0.5))
        )  # fmt: skip

    reasons = [f"drift in {c.name}: {c.detail}" for c in checks if c.drifted]
    latest = rates[-1] if rates else None
    if cfg.max_failure_rate is not None and latest is not None and latest.rate is not None:
        failing = 1 - latest.rate.estimate
        if latest.graded >= cfg.min_traces and failing > cfg.max_failure_rate:
            reasons.append(
                f"{failing:.1%} of the latest window's answers failed a grader, over monitor.max_failure_rate "
                f"({cfg.max_failure_rate:.1%})"
            )
    if trained_at is not None and failed_since >= cfg.retrain_after_failures:
        reasons.append(
            f"{failed_since} failed answers since the newest version was trained (monitor.retrain_after_failures: "
            f"{cfg.retrain_after_failures})"
        )
    return MonitorReport(spec.name, (start, end), len(recent_traces), checks, rates, failed_since, trained_at, reasons)


def _judged(p: float | None, threshold: float, enough: bool) -> bool:
    return enough and p is not None and p < threshold


def _lengths(reference: list[Example], recent: list[Example], threshold: float, enough: bool) -> Check:
    from scipy.stats import ks_2samp

    a = [len(_asked(e)) for e in reference]
    b = [len(_asked(e)) for e in recent]
    if not a or not b:
        return Check("input length", None, None, len(a), len(b), False, "no traces in the window")
    result = ks_2samp(a, b)
    p = float(result.pvalue)
    detail = f"median {np.median(a):.0f} chars in training, {np.median(b):.0f} now (KS D={result.statistic:.3f})"
    return Check("input length", float(result.statistic), p, len(a), len(b), _judged(p, threshold, enough), detail)


def _content(
    reference: list[Example],
    recent: list[Example],
    threshold: float,
    enough: bool,
    embeddings: str | None,
    rng: np.random.Generator,
) -> Check:
    a, b = [_asked(e) for e in reference], [_asked(e) for e in recent]
    if not a or not b:
        return Check("input content", None, None, len(a), len(b), False, "no traces in the window")
    if embeddings:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise DependencyError(
                "comparing inputs by embeddings needs sentence-transformers", hint="pip install 'instil[embeddings]'"
            ) from None

        vectors = SentenceTransformer(embeddings, device="cpu").encode(a + b, normalize_embeddings=True)
        how = "embeddings"
    else:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        try:
            sparse = TfidfVectorizer(max_features=4096, sublinear_tf=True).fit_transform(a + b)
        except ValueError:  # no words at all
            return Check("input content", None, None, len(a), len(b), False, "no words to compare")
        k = min(64, sparse.shape[1] - 1, sparse.shape[0] - 1)
        vectors = TruncatedSVD(k, random_state=0).fit_transform(sparse) if k >= 2 else sparse.toarray()
        how = "TF-IDF"
    x = np.asarray(vectors, dtype=np.float64)
    n = len(a)

    def distance(order: np.ndarray) -> float:
        return float(np.sum((x[order[:n]].mean(axis=0) - x[order[n:]].mean(axis=0)) ** 2))

    observed = distance(np.arange(len(x)))
    beyond = sum(distance(rng.permutation(len(x))) >= observed for _ in range(PERMUTATIONS))
    p = (beyond + 1) / (PERMUTATIONS + 1)
    detail = f"{how} mean-vector distance {observed:.4f}, p from {PERMUTATIONS} relabellings"
    return Check("input content", observed, p, len(a), len(b), _judged(p, threshold, enough), detail)


def _labels(reference: list[Example], recent: list[Example], spec: JobSpec, threshold: float, enough: bool) -> Check:
    from scipy.stats import chi2_contingency

    labels = list(spec.output.labels or [])
    field_ = spec.output.label_field

    def counts(examples: list[Example]) -> list[int]:
        found = [e.label(field_) for e in examples]
        return [sum(1 for f in found if f == lab) for lab in labels] + [sum(1 for f in found if f not in labels)]

    a, b = counts(reference), counts(recent)
    keep = [i for i in range(len(a)) if a[i] + b[i] > 0]
    if len(keep) < 2 or not sum(b) or not sum(a):
        return Check("output labels", None, None, sum(a), sum(b), False, "too few labels to compare")
    table = np.array([[a[i] for i in keep], [b[i] for i in keep]])
    chi2, p, _, _ = chi2_contingency(table)
    names = [*labels, "(other)"]
    shifts = sorted(
        ((b[i] / max(sum(b), 1) - a[i] / max(sum(a), 1), names[i]) for i in keep), key=lambda t: -abs(t[0])
    )[:2]
    detail = "; ".join(f"{name} {delta:+.1%}" for delta, name in shifts)
    return Check("output labels", float(chi2), float(p), sum(a), sum(b), _judged(float(p), threshold, enough), detail)


def _refusals(reference: list[Example], recent: list[Example], threshold: float, enough: bool) -> Check:
    from scipy.stats import fisher_exact

    a = sum(1 for e in reference if REFUSAL.search(e.output_text() or ""))
    b = sum(1 for e in recent if REFUSAL.search(e.output_text() or ""))
    if not recent:
        return Check("refusals", None, None, len(reference), 0, False, "no traces in the window")
    _, p = fisher_exact([[b, len(recent) - b], [a, len(reference) - a]], alternative="greater")
    detail = f"{b / len(recent):.1%} of answers refuse now, {a / max(len(reference), 1):.1%} in training"
    drifted = _judged(float(p), threshold, enough)
    return Check("refusals", b / len(recent), float(p), len(reference), len(recent), drifted, detail)


def _schema_failures(traces: list[Trace], spec: JobSpec, limit: float | None, enough: bool) -> Check:
    schema_graders = {g.name for g in spec.graders if g.type == "json_schema"}
    graded = [t for t in traces if t.grades and any(n in t.grades for n in schema_graders)]
    if not schema_graders or not graded:
        why = "the job has no json_schema grader" if not schema_graders else "no answer was graded for its schema"
        return Check("schema failures", None, None, 0, len(graded), False, why)
    failed = sum(1 for t in graded if any((t.grades or {}).get(n, {}).get("passed") is False for n in schema_graders))
    rate = failed / len(graded)
    over = limit is not None and enough and rate > limit
    detail = f"{failed} of {len(graded)} answers ({rate:.1%}) failed their schema" + (
        f", over monitor.max_failure_rate ({limit:.1%})" if over else ""
    )
    return Check("schema failures", rate, None, 0, len(graded), over, detail)


def _windows(store: Store, job: str, end: datetime, hours: float, n: int) -> list[WindowRate]:
    out = []
    for k in range(n, 0, -1):
        lo, hi = end - timedelta(hours=hours * k), end - timedelta(hours=hours * (k - 1))

        def count(passed: bool, lo: datetime = lo, hi: datetime = hi) -> int:  # shadows aside: nobody saw them
            every = store.count_traces(TraceFilter(job=job, since=lo, until=hi, passed=passed))
            return every - store.count_traces(TraceFilter(job=job, since=lo, until=hi, passed=passed, arm="shadow"))

        passed, failed = count(True), count(False)
        graded = passed + failed
        out.append(WindowRate(lo, hi, graded, passed, wilson_interval(passed, graded) if graded else None))
    return out
