"""The review queue: what went wrong in production becomes training data, through a person's (or a script's) decision.

    from instil import review
    review.collect(spec, store)                       # failed graders, shadow disagreements, unscored answers
    review.feedback(spec, store, "chatcmpl-1a2b", rating=0, correction="billing")   # what POST /v1/feedback does
    for g in review.groups(spec, store):              # open items grouped by grader reason, then by similarity
        print(g.label, len(g.items))
    review.decide(spec, store, g.ids, "correct", correction="billing", by="ana")     # one decision for a group
    out = review.corrections(spec, store)             # -> <job>:corrections (SFT) and <job>:preferences (pairs)

Where items come from (:func:`collect`, idempotent: an answer collected twice is one item):

- ``failed``: a trace some capture grader failed (the graders' reasons say why);
- ``unscored``: a trace every capture grader failed to judge (a grader error, not a verdict);
- ``disagreement``: a shadowed request whose shadow answered otherwise (production's answer under review, the
  shadow's on offer as the suggestion);
- ``feedback``: ``POST /v1/feedback`` (or :func:`feedback`) with a trace id, a rating (0 bad .. 1 good) and/or a
  corrected answer;
- the loop's learn stage adds the production model's failures on the pool, with the pool's reference answer as the
  suggestion (:func:`queue_failures`) and decides them by :class:`ReferenceReviewer`, through the same calls.

Decisions: ``accept`` (the answer under review was right), ``correct`` (this text is right: an edit, or the
suggestion taken), ``discard``. Each records who and when; a later decision replaces an earlier one.

:func:`corrections` turns every accepted or corrected item into an SFT example (the conversation with the decided
answer) in ``<job>:corrections``, and every one with a rejected alternative (the original answer of a correction, the
suggestion an accept turned down) into a preference pair in ``<job>:preferences`` (each version holds the pairs new
since the last). The corrections are cumulative, one example per answer as last decided (a later discard drops it),
and near-duplicates of the frozen holdout are left out and counted, so nothing reviewed ever reaches the holdout.

Grouping (:func:`groups`): by kind and the graders that failed, then by similarity of the input and answer: TF-IDF
(scikit-learn) cosine similarity, or sentence embeddings when ``embeddings`` names a sentence-transformers model
(the optional extra), with average-linkage clustering at ``similarity``. Groups are what a reviewer decides at once
after looking at a sample of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from instil.data.records import Example, Message
from instil.errors import DependencyError, InstilError, NotFoundError
from instil.jobdata import dataset_name, frozen_holdout, holdout_index
from instil.spec import JobSpec
from instil.store import DatasetVersion, ReviewItem, Store, Trace, TraceFilter

__all__ = [
    "ACTIONS",
    "CollectOutcome",
    "CorrectionsOutcome",
    "Group",
    "HoldoutRefresh",
    "ReferenceReviewer",
    "collect",
    "correct_each",
    "corrections",
    "decide",
    "decisions_fingerprint",
    "feedback",
    "groups",
    "item_example",
    "queue_failures",
    "refresh_holdout",
]

ACTIONS = {"accept": "accepted", "correct": "corrected", "discard": "discarded", "reopen": "open"}
"""A reviewer's actions and the status each leaves an item in."""
MAX_GROUPED = 5000
"""The most open items :func:`groups` clusters at once (the oldest first); the rest wait for the next look."""


# ---- collecting ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectOutcome:
    """What :func:`collect` queued, by kind."""

    added: dict[str, int]
    seen: int
    """Traces looked at."""

    @property
    def total(self) -> int:
        return sum(self.added.values())


def _reason(t: Trace) -> str | None:
    failing = [
        f"{name}: {g.get('reason') or 'failed'}" for name, g in (t.grades or {}).items() if g.get("passed") is False
    ]
    return "; ".join(failing) or None


def _from_trace(job: str, kind: str, t: Trace, **extra: Any) -> ReviewItem:
    failing = sorted(n for n, g in (t.grades or {}).items() if g.get("passed") is False)
    fields: dict[str, Any] = {
        "job": job,
        "kind": kind,
        "key": _key(kind, t.id),
        "messages": list(t.messages),
        "output": t.output,
        "tool_calls": t.tool_calls,
        "tools": t.tools,
        "trace_id": t.id,
        "version": t.version,
        "reason": _reason(t),
        "meta": {"model": t.model, "user": t.user, "failed": failing, "arm": t.arm},
    }
    return ReviewItem(**{**fields, **extra})


def collect(spec: JobSpec, store: Store, *, limit: int = 10_000) -> CollectOutcome:
    """Queue the job's traces that need a look (the newest ``limit`` of each kind): failed graders, unscored
    answers, shadow disagreements. Items already queued are not queued again."""
    job = spec.name
    items: list[ReviewItem] = []
    seen = 0
    failed = store.list_traces(TraceFilter(job=job, status=200, passed=False), limit=limit)
    seen += len(failed)
    items += [_from_trace(job, "failed", t) for t in failed]
    unjudged = store.list_traces(TraceFilter(job=job, status=200, no_verdict=True), limit=limit)
    seen += len(unjudged)
    for t in unjudged:
        errors = [f"{n}: {g['error']}" for n, g in (t.grades or {}).items() if "error" in g]
        if errors:  # graded, but no grader could judge it (an ungraded trace has no grades at all)
            items.append(_from_trace(job, "unscored", t, reason="; ".join(errors)))
    shadows = store.list_traces(TraceFilter(job=job, arm="shadow", status=200), limit=limit)
    seen += len(shadows)
    for shadow in shadows:
        if shadow.pair_id is None:
            continue
        pair = store.list_traces(TraceFilter(job=job, pair_id=shadow.pair_id, arm="production"), limit=1)
        if not pair or pair[0].status != 200:
            continue
        prod = pair[0]
        if (prod.output or "").split() == (shadow.output or "").split() and _calls(prod) == _calls(shadow):
            continue
        items.append(
            _from_trace(
                job,
                "disagreement",
                prod,
                suggestion=shadow.output,
                other_trace_id=shadow.id,
                reason=f"the shadow {shadow.model} answered otherwise",
            )  # fmt: skip
        )
    added = store.add_review_items(items)
    counts = {k: 0 for k in ("failed", "unscored", "disagreement")}
    for it in added:
        counts[it.kind] += 1
    return CollectOutcome(counts, seen)


def _calls(t: Trace) -> list[tuple[str, str]]:
    """A trace's tool calls as (name, arguments): what two answers must share to agree (call ids never do)."""
    out = []
    for c in t.tool_calls or []:
        fn = (c.get("function") or {}) if isinstance(c, dict) else {}
        out.append((str(fn.get("name")), str(fn.get("arguments"))))
    return out


def feedback(
    spec: JobSpec,
    store: Store,
    trace_id: str,
    *,
    rating: float | None = None,
    correction: str | None = None,
    comment: str | None = None,
    by: str | None = None,
) -> ReviewItem:
    """Queue a user's feedback on one answer (``trace_id``, exactly: the response's id): a ``rating`` (0 bad .. 1
    good) and/or a ``correction`` (the answer it should have been) and a ``comment``. One item per answer and user
    (``by``): feedback sent again replaces the earlier one and opens it for review again."""
    if rating is None and correction is None and not comment:
        raise InstilError("feedback needs a rating, a correction or a comment", hint="send at least one of them")
    if rating is not None and not 0 <= rating <= 1:
        raise InstilError(f"a rating is between 0 (bad) and 1 (good), not {rating}", hint="thumbs up 1, down 0")
    trace = store.find_trace(trace_id)
    if trace is None or trace.job != spec.name:
        raise NotFoundError(f"no answer {trace_id!r} of job {spec.name!r}", hint="send the id of one of its answers")
    said = comment or (f"rated {rating:g}" if rating is not None else "a correction was sent")
    key = _key("feedback", trace.id, by or "")
    item = _from_trace(spec.name, "feedback", trace, suggestion=correction, rating=rating, reason=said, key=key)
    (kept,) = store.add_review_items([dataclasses.replace(item, meta={**item.meta, "by": by})], replace=True)
    return kept


def _key(*parts: str) -> str:
    """An item's key from its parts; long ones (a long example id, say) hashed to fit the column."""
    key = ":".join(parts)
    return key if len(key) <= 200 else f"{parts[0]}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def queue_failures(
    spec: JobSpec,
    store: Store,
    model_ref: str,
    failures: Sequence[tuple[Example, str, str]],
    *,
    trace_ids: Sequence[str | None] | None = None,
) -> list[ReviewItem]:
    """Queue a model's failures on examples with reference answers (the pool): ``(example, answer, reason)`` each,
    the example's reference answer as the suggestion; ``trace_ids``: each answer's trace, when it was served.
    Returns every item, new or queued before."""
    items = []
    traced = list(trace_ids) if trace_ids is not None else [None] * len(failures)
    for (e, answer, reason), trace_id in zip(failures, traced, strict=True):
        reference = e.messages[-1]
        items.append(
            ReviewItem(
                job=spec.name,
                kind="failed",
                key=_key("pool", model_ref, e.key()),
                trace_id=trace_id,
                messages=[m.to_dict() for m in e.messages[:-1]],
                output=answer,
                tools=e.tools,
                suggestion=reference.content,
                reason=reason,
                meta={
                    "model": model_ref,
                    "example": e.key(),
                    "reference": reference.to_dict(),
                    "tags": list(e.tags),
                    "group": e.group,
                },
            )  # fmt: skip
        )
    store.add_review_items(items)
    keys = {it.key for it in items}
    return [i for i in store.list_review_items(spec.name, kind="failed") if i.key in keys]


# ---- deciding --------------------------------------------------------------------------------------------------------
def decide(
    spec: JobSpec,
    store: Store,
    ids: Iterable[int],
    action: str,
    *,
    by: str,
    correction: str | None = None,
) -> list[ReviewItem]:
    """Decide items: ``accept``, ``correct`` (with ``correction``, the right answer, for every item given),
    ``discard``, or ``reopen``; ``by`` names who decided (kept with the time)."""
    if action not in ACTIONS:
        raise InstilError(f"unknown review action {action!r}", hint=f"one of: {', '.join(ACTIONS)}")
    if action == "correct" and (correction is None or not correction.strip()):
        raise InstilError("a correction needs the right answer", hint="give the corrected output")
    if action != "correct" and correction is not None:
        raise InstilError(f"only a correction takes an answer, not {action!r}")
    chosen = list(dict.fromkeys(ids))
    if not chosen:
        return []
    status = ACTIONS[action]
    decided = {i: (status, correction if action == "correct" else None) for i in chosen}
    if action == "accept":  # the answer as it was: its text, or its tool calls
        answers = {
            i.id: i.output if i.output is not None else json.dumps(i.tool_calls or [])
            for i in store.list_review_items(spec.name, ids=chosen)
        }
        decided = {i: (status, answers.get(i)) for i in chosen}
    return store.decide_review_items(spec.name, decided, by=by)


def correct_each(spec: JobSpec, store: Store, corrections: dict[int, str], *, by: str) -> list[ReviewItem]:
    """Correct many items at once, each with its own answer (``{item id: answer}``), in one transaction: what taking
    each item's own suggestion for a whole group does."""
    blank = [i for i, text in corrections.items() if text is None or not text.strip()]
    if blank:
        raise InstilError(f"items {blank} have no answer to correct them with", hint="give each a corrected output")
    if not corrections:
        return []
    return store.decide_review_items(spec.name, {i: ("corrected", text) for i, text in corrections.items()}, by=by)


@dataclass
class ReferenceReviewer:
    """The unattended reviewer the quickstart runs: it corrects every open item that carries a reference answer
    (the pool's) with that answer, through :func:`decide` as a person would, and leaves the rest open."""

    name: str = "reference reviewer (the pool's reference answers)"

    def review(self, spec: JobSpec, store: Store, items: Sequence[ReviewItem]) -> list[ReviewItem]:
        chosen = {
            it.id: it.suggestion
            for it in items
            if it.id is not None and it.status == "open" and it.suggestion is not None and "reference" in it.meta
        }
        return correct_each(spec, store, chosen, by=self.name)


def decisions_fingerprint(spec: JobSpec, store: Store, *, besides: str = ReferenceReviewer.name) -> str:
    """A hash of every decision people made in the job's queue (not ``besides``'s, the reference reviewer's): what
    the loop's learn stage takes as an input, so a new review makes it run again."""
    rows = [
        (i.id, i.status, i.correction)
        for i in store.list_review_items(spec.name)
        if i.status != "open" and i.decided_by != besides
    ]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


# ---- grouping --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """Open items alike: the same kind and failing graders, and similar inputs and answers."""

    label: str
    """The kind and graders, and a few words the items share."""
    items: list[ReviewItem]

    @property
    def ids(self) -> list[int]:
        return [i.id for i in self.items if i.id is not None]


def _text(it: ReviewItem) -> str:
    asked = " ".join(str(m.get("content") or "") for m in it.messages if m.get("role") == "user")
    return f"{asked} \n {it.output or ''}"


def groups(
    spec: JobSpec,
    store: Store,
    *,
    items: Sequence[ReviewItem] | None = None,
    similarity: float = 0.35,
    embeddings: str | None = None,
) -> list[Group]:
    """The open items (or ``items``) grouped: by kind and failing graders, then by similarity of input and answer
    (cosine at least ``similarity``, average linkage). Largest groups first."""
    pool = list(items) if items is not None else store.list_review_items(spec.name, status="open", limit=MAX_GROUPED)
    by_reason: dict[tuple[str, tuple[str, ...]], list[ReviewItem]] = {}
    for it in pool:
        by_reason.setdefault((it.kind, tuple(it.meta.get("failed") or ())), []).append(it)
    out: list[Group] = []
    for (kind, failing), members in by_reason.items():
        head = kind + (f" ({', '.join(failing)})" if failing else "")
        for cluster, words in _clusters(members, similarity, embeddings):
            out.append(Group(head + (f": {' '.join(words)}" if words else ""), cluster))
    return sorted(out, key=lambda g: (-len(g.items), g.label))


def _clusters(
    items: list[ReviewItem], similarity: float, embeddings: str | None
) -> list[tuple[list[ReviewItem], list[str]]]:
    if len(items) == 1:
        return [(items, [])]
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [_text(i) for i in items]
    tfidf = TfidfVectorizer(max_features=4096, sublinear_tf=True)
    try:
        sparse = tfidf.fit_transform(texts)
    except ValueError:  # no words at all (empty answers): one group
        return [(items, [])]
    if embeddings:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise DependencyError(
                "grouping by embeddings needs sentence-transformers", hint="pip install 'instil[embeddings]'"
            ) from None

        vectors = SentenceTransformer(embeddings, device="cpu").encode(texts, normalize_embeddings=True)
    else:
        vectors = sparse.toarray()
    labels = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=1 - similarity
    ).fit_predict(vectors)
    vocab = tfidf.get_feature_names_out()
    out = []
    for label in sorted(set(labels), key=lambda k: -int((labels == k).sum())):
        rows = [i for i, k in enumerate(labels) if k == label]
        weights = sparse[rows].sum(axis=0).A1
        words = [str(vocab[j]) for j in weights.argsort()[::-1][:3] if weights[j] > 0]
        out.append(([items[i] for i in rows], words))
    return out


# ---- into training data ----------------------------------------------------------------------------------------------
@dataclass
class CorrectionsOutcome:
    """What :func:`corrections` recorded."""

    decided: int
    """Accepted or corrected items looked at."""
    added: int
    """SFT examples new to ``<job>:corrections``."""
    pairs: int
    """Preference pairs in this turn's ``<job>:preferences`` version."""
    left_out_for_holdout: int
    corrections: DatasetVersion | None
    preferences: DatasetVersion | None
    items: list[int] = field(default_factory=list)
    """The items whose examples were added."""

    def summary(self) -> str:
        total = self.corrections.n_examples if self.corrections is not None else 0
        return (
            f"{self.decided} reviewed answers: {self.added} new corrections ({total} in all), {self.pairs} preference "
            f"pairs, {self.left_out_for_holdout} left out for matching the holdout"
        )


def _example_id(it: ReviewItem) -> str:
    """One example per answer: the pool example's id, else the trace's (feedback and a failed grader on the same
    answer are one example, as last decided), else the item's."""
    return str(it.meta.get("example") or it.trace_id or f"review-{it.id}")


def item_example(it: ReviewItem) -> tuple[Example, Example | None]:
    """A decided item as an SFT example (the conversation with the decided answer) and, when an alternative was
    turned down, a preference pair (chosen: the decided answer; rejected: the other)."""
    if it.correction is None:
        raise InstilError(f"review item {it.id} has no decided answer", hint="accept or correct it first")
    reference = it.meta.get("reference")
    if reference is not None and it.correction == it.suggestion:
        answer = Message.from_dict(reference)
    elif it.status == "accepted" and it.tool_calls:
        answer = Message("assistant", it.output or None)
        answer.tool_calls = it.tool_calls
    else:
        answer = Message("assistant", it.correction)
    messages = [*(Message.from_dict(m) for m in it.messages), answer]
    tags = ["review", it.kind, *it.meta.get("tags", [])]
    meta = {"review_item": it.id, "trace": it.trace_id, "decided_by": it.decided_by}
    group = it.meta.get("group")
    example = Example(
        messages, tools=it.tools, id=_example_id(it), tags=tags, meta=meta, source=f"review {it.id}", group=group
    )
    rejected = it.output if it.status == "corrected" else it.suggestion
    pair = None
    if rejected is not None and rejected.split() != (it.correction or "").split():
        pair = Example(
            messages, tools=it.tools, rejected=[Message("assistant", rejected)], id=example.id, tags=tags, meta=meta,
            group=group,
        )  # fmt: skip
    return example, pair


_LATEST = object()


def corrections(
    spec: JobSpec,
    store: Store,
    *,
    previous: DatasetVersion | None | object = _LATEST,
    exclude: Iterable[str] = (),
) -> CorrectionsOutcome:
    """Every accepted or corrected item into the next ``<job>:corrections`` version and the new preference pairs into
    ``<job>:preferences``; examples matching the frozen holdout are left out and counted.

    The version is ``previous`` (default: the latest; None: start afresh) with each reviewed item's example as last
    decided (a re-decided item replaces its earlier example, a discarded one is dropped) and nothing whose key is in
    ``exclude`` (the training data's keys, say)."""
    # One example per answer, as last decided: a later discard removes it, a later correction replaces it.
    reviewed = sorted(
        (i for i in store.list_review_items(spec.name) if i.status != "open"),
        key=lambda i: (i.decided_at or i.created_at, i.id or 0),
    )
    latest = {_example_id(i): i for i in reviewed}
    decided = [i for i in latest.values() if i.status in ("accepted", "corrected") and i.correction is not None]
    made = [(it, *item_example(it)) for it in decided]
    name = dataset_name(spec, "corrections")
    if previous is _LATEST:
        try:
            previous = store.get_dataset(name)
        except NotFoundError:
            previous = None
    assert previous is None or isinstance(previous, DatasetVersion)
    before = list(store.iter_examples(previous)) if previous is not None else []
    rest = [e for e in before if e.key() not in latest]
    holdout = frozen_holdout(spec, store)
    leaking: set[str] = set()
    if holdout is not None and (made or rest):  # the carried examples too: the holdout may be new since
        checked = [*(e for _, e, _ in made), *rest]
        leaking = {m.example_key for m in holdout_index(spec, store, holdout).check(checked)}
    skip = set(exclude) | leaking
    kept = [(it, e, p) for it, e, p in made if e.key() not in skip]
    examples = {e.key(): e for e in [*(e for e in rest if e.key() not in skip), *(e for _, e, _ in kept)]}
    known = {e.content_hash() for e in before}
    new = [(it, e, p) for it, e, p in kept if e.content_hash() not in known]
    version, prefs = previous, None
    if [e.content_hash() for e in examples.values()] != [e.content_hash() for e in before]:
        version = store.put_dataset(
            name, list(examples.values()), kind="corrections",
            parents=[previous] if previous is not None else [], meta={"review_items": [it.id for it, _, _ in kept]},
        )  # fmt: skip
        pairs = list({p.key(): p for _, _, p in new if p is not None}.values())  # one per answer
        if pairs:
            prefs = store.put_dataset(
                dataset_name(spec, "preferences"), pairs, kind="preferences", parents=[version],
                meta={"review_items": [it.id for it, _, p in new if p is not None]},
            )  # fmt: skip
    return CorrectionsOutcome(
        decided=len(decided),
        added=len(new),
        pairs=sum(1 for _, _, p in new if p is not None),
        left_out_for_holdout=sum(1 for _, e, _ in made if e.key() in leaking),
        corrections=version,
        preferences=prefs,
        items=[it.id for it, _, _ in new if it.id is not None],
    )


# ---- a fresher holdout -----------------------------------------------------------------------------------------------
@dataclass
class HoldoutRefresh:
    """What :func:`refresh_holdout` made."""

    previous: DatasetVersion
    holdout: DatasetVersion
    """The new frozen holdout version (the previous one's examples, then the reviewed ones added)."""
    added: int
    left_out_for_training: int
    """Reviewed answers left out because a training version holds them (or near-duplicates of them)."""

    def summary(self) -> str:
        return (
            f"{self.holdout.ref}: {self.previous.n_examples} examples from {self.previous.ref} and {self.added} "
            f"reviewed answers; {self.left_out_for_training} left out for matching a training version"
        )


def refresh_holdout(
    spec: JobSpec, store: Store, *, since: datetime | None = None, limit: int | None = None
) -> HoldoutRefresh:
    """A new frozen holdout version: the current one plus the reviewed answers (accepted or corrected, decided since
    ``since``, at most ``limit``, the newest first) that no training version of the job holds, exactly or nearly.

    Gates from then on run on it and say so; decisions made on the older version keep naming it. Those answers never
    become training data afterwards (:func:`corrections` leaves out whatever matches the frozen holdout)."""
    import numpy as np

    from instil.data.curate import fingerprint
    from instil.data.split import HoldoutIndex

    holdout = frozen_holdout(spec, store)
    if holdout is None:
        raise InstilError(f"job {spec.name!r} has no frozen holdout to refresh", hint="run `instil data split` first")
    # Each answer as last decided (a later discard keeps it out), as corrections() takes them.
    reviewed = sorted(
        (i for i in store.list_review_items(spec.name) if i.status != "open"),
        key=lambda i: (i.decided_at or i.created_at, i.id or 0),
    )
    latest = {_example_id(i): i for i in reviewed}
    decided = [
        i
        for i in latest.values()
        if i.status in ("accepted", "corrected")
        and i.correction is not None
        and (since is None or (i.decided_at is not None and i.decided_at >= since))
    ]
    decided.sort(key=lambda i: (i.decided_at or i.created_at, i.id or 0), reverse=True)
    if limit is not None:
        decided = decided[:limit]
    fresh = {e.key(): e for e in (item_example(i)[0] for i in decided)}
    current = list(store.iter_examples(holdout))
    have = {e.key() for e in current} | {e.content_hash() for e in current}
    fresh = {k: e for k, e in fresh.items() if k not in have and e.content_hash() not in have}
    # Everything any version learnt from (whatever dataset it was), and every training and corrections version.
    versions = {v.id: v for v in store.list_versions(dataset_name(spec, "train"))}
    versions.update({v.id: v for v in store.list_versions(dataset_name(spec, "corrections"))})
    for model in store.list_models(spec.name):
        versions.update({v.id: v for v in store.trace_model(model) if v.kind not in ("raw", "holdout")})
    trained: dict[str, Example] = {}
    for v in versions.values():
        for e in store.iter_examples(v):
            trained.setdefault(e.content_hash(), e)
    left_out: set[str] = set()
    if fresh and trained:
        fp = fingerprint(list(trained.values()))
        index = HoldoutIndex.build("trained", fp, np.arange(len(fp)), spec.split.near_duplicate_threshold)
        left_out = {m.example_key for m in index.check(list(fresh.values()))}
    added = [e for k, e in fresh.items() if k not in left_out]
    if not added:
        return HoldoutRefresh(holdout, holdout, 0, len(left_out))
    new = store.put_dataset(
        dataset_name(spec, "holdout"), [*current, *added], kind="holdout", parents=[holdout], frozen=True,
        meta={"refreshed_from_review": [e.meta.get("review_item") for e in added]},
    )  # fmt: skip
    return HoldoutRefresh(holdout, new, len(added), len(left_out))
