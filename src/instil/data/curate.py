"""Curation: exact and near duplicates, contradictions, and a PII/secret scan.

    result = curate(examples, near_threshold=0.8, contradictions="majority", redact_pii=True)
    result.examples            # what is kept (exact duplicates dropped, contradictions resolved, PII redacted)
    result.report.to_dict()    # every group and finding, with each example's key and ``file:line``

    report = curate_file("data.jsonl", "curated.jsonl")        # the same, streamed for millions of examples

Definitions (texts compared after ``normalize_text``):

* exact duplicates: the same input (``Example.input_text()``) and the same output. The first is kept.
* near duplicates: whole-example similarity (MinHash estimate of the Jaccard similarity of the input's and output's
  character 5-grams, see ``instil.data.minhash``) at least ``near_threshold``, with the same answer. Reported and
  kept unless ``drop_near``.
* contradictions: the same or near-same input (similarity >= ``near_threshold``) with different answers (outputs
  neither equal nor near-duplicates). A group's id is a hash of its normalised inputs, stable across runs and orders;
  ``choices`` (group id -> the key of the example to keep) overrides the ``contradictions`` rule.

Everything heavy works on :class:`Fingerprints`: compact numpy arrays built chunk by chunk, so 1M examples never sit in
memory as Python objects at once.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from instil.data import minhash
from instil.data.pii import redact, scan_example
from instil.data.records import Example, canonical_json
from instil.errors import DataError, DataFormatError

__all__ = [
    "ContradictionRule",
    "CurationReport",
    "CurationResult",
    "Fingerprints",
    "Group",
    "PiiFinding",
    "curate",
    "curate_file",
    "find_contradictions",
    "find_duplicates",
    "fingerprint",
    "iter_jsonl",
    "plan",
]

ContradictionRule = Literal["report", "drop", "majority", "first", "last"]
CHUNK = 50_000
"""Examples fingerprinted per batch: bounds the Python objects alive at once."""


# ---- fingerprints ----------------------------------------------------------------------------------------------------
@dataclass
class PiiFinding:
    """One piece of personal data or secret found in an example."""

    example_key: str
    """The example's key (its id, or a content hash)."""
    source: str | None
    """Where the example was read from (``file:line``)."""
    field: str
    """The field path, such as ``messages[1].content``."""
    kind: str
    """``email``, ``phone``, ``card``, ``iban`` or ``secret``."""
    start: int
    """Start offset of the match in the field's text."""
    end: int
    """End offset (exclusive)."""
    preview: str
    """The match, masked (``j***@e***.com``): safe to print."""


@dataclass
class Fingerprints:
    """What curation and splitting need of each example, as compact arrays (row i = the i-th example read)."""

    keys: list[str]
    """Each example's key (``Example.key()``)."""
    sources: list[str | None]
    """Each example's ``file:line``."""
    example_hash: np.ndarray
    """uint64 hash of the normalised input and output: equal for exact duplicates."""
    input_hash: np.ndarray
    """uint64 hash of the normalised input."""
    output_hash: np.ndarray
    """uint64 hash of the normalised output."""
    example_sig: np.ndarray
    """(n, num_perm) uint16 MinHash of the whole example (input and output shingles)."""
    input_sig: np.ndarray
    """(n, num_perm) uint16 MinHash of the input."""
    output_sig: np.ndarray
    """(n, num_perm) uint16 MinHash of the output."""
    labels: np.ndarray
    """int32 index into ``label_names`` of each example's label (-1: none)."""
    label_names: list[str]
    """The distinct labels, in order of first appearance."""
    groups: np.ndarray
    """(n, 2) int64 ids of the example's ``group`` and of its ``meta[group_by]`` value (-1: none)."""
    pii: list[PiiFinding] = field(default_factory=list)
    """PII findings, when scanned."""

    def __len__(self) -> int:
        return len(self.keys)

    def where(self, i: int) -> str:
        return f"{self.keys[i]} ({self.sources[i]})" if self.sources[i] else self.keys[i]


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def fingerprint(
    examples: Iterable[Example],
    *,
    label_field: str | None = None,
    labelled: bool = False,
    group_by: str | None = None,
    scan: bool = False,
    chunk_size: int = CHUNK,
) -> Fingerprints:
    """Fingerprint a stream of examples in chunks; only the arrays outlive a chunk.

    Labels are ``Example.label(label_field)`` when ``label_field`` is given or ``labelled`` (the job has labels),
    otherwise the normalised output when it is short
    (at most 40 characters), so classification-like jobs stratify without being told.
    """
    keys: list[str] = []
    sources: list[str | None] = []
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    label_ids: dict[str, int] = {}
    group_ids: dict[tuple[int, Any], int] = {}
    pii: list[PiiFinding] = []
    chunk: list[Example] = []

    def flush() -> None:
        inputs = [_norm(e.input_text()) for e in chunk]
        outputs = [_norm(e.output_text()) for e in chunk]
        parts["example_hash"].append(
            np.fromiter(
                (minhash.stable_hash64(i + "\x1e" + o) for i, o in zip(inputs, outputs, strict=True)),
                np.uint64,
            )
        )
        parts["input_hash"].append(np.fromiter((minhash.stable_hash64(i) for i in inputs), np.uint64))
        parts["output_hash"].append(np.fromiter((minhash.stable_hash64(o) for o in outputs), np.uint64))
        sig_in = minhash.signatures([minhash.shingle_text(t) for t in inputs], prepared=True, full=True)
        sig_out = minhash.signatures([minhash.shingle_text(t) for t in outputs], prepared=True, full=True)
        parts["example_sig"].append(minhash.truncate(np.minimum(sig_in, sig_out)))
        parts["input_sig"].append(minhash.truncate(sig_in))
        parts["output_sig"].append(minhash.truncate(sig_out))
        labels = np.full(len(chunk), -1, dtype=np.int32)
        groups = np.full((len(chunk), 2), -1, dtype=np.int64)
        for j, e in enumerate(chunk):
            told = labelled or label_field is not None
            label = e.label(label_field) if told else _short_label(outputs[j])
            if label is not None:
                labels[j] = label_ids.setdefault(label, len(label_ids))
            if e.group is not None:
                groups[j, 0] = group_ids.setdefault((0, e.group), len(group_ids))
            value = e.meta.get(group_by) if group_by is not None else None
            if value is not None:
                groups[j, 1] = group_ids.setdefault((1, canonical_json(value)), len(group_ids))
            keys.append(e.key())
            sources.append(e.source)
            if scan:
                pii.extend(PiiFinding(keys[-1], e.source, *f) for f in scan_example(e))
        parts["labels"].append(labels)
        parts["groups"].append(groups)
        chunk.clear()

    for example in examples:
        chunk.append(example)
        if len(chunk) >= chunk_size:
            flush()
    if chunk:
        flush()
    arrays = {k: np.concatenate(v) for k, v in parts.items()} if keys else _empty_arrays()
    return Fingerprints(keys=keys, sources=sources, label_names=list(label_ids), pii=pii, **arrays)


def _short_label(output: str) -> str | None:
    return output if 0 < len(output) <= 40 else None


def _empty_arrays() -> dict[str, np.ndarray]:
    sig = np.zeros((0, minhash.NUM_PERM), dtype=np.uint16)
    h = np.zeros(0, dtype=np.uint64)
    return {
        "example_hash": h,
        "input_hash": h,
        "output_hash": h,
        "example_sig": sig,
        "input_sig": sig,
        "output_sig": sig,
        "labels": np.zeros(0, np.int32),
        "groups": np.zeros((0, 2), np.int64),
    }


# ---- duplicates and contradictions -----------------------------------------------------------------------------------
@dataclass
class Group:
    """A set of related examples, by row (position in the input) with their keys and sources."""

    id: str
    """Stable id: a hash of the members' normalised content, independent of their order in the data."""
    rows: list[int]
    """Row numbers (0-based positions in the input), in input order."""
    keys: list[str]
    """The members' keys."""
    sources: list[str | None]
    """The members' ``file:line``."""
    answers: list[int] | None = None
    """For a contradiction: which answer each member gives (members with equal numbers agree)."""
    similarity: float | None = None
    """For near duplicates: the lowest verified similarity that links the group."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "keys": self.keys, "sources": self.sources, "rows": self.rows}
        if self.answers is not None:
            d["answers"] = self.answers
        if self.similarity is not None:
            d["similarity"] = round(self.similarity, 4)
        return d


def _groups_of(labels: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """Members (rows, ascending) of each label shared by two or more of ``rows``."""
    order = np.lexsort((rows, labels[rows]))
    lab = labels[rows][order]
    srt = rows[order]
    cuts = np.flatnonzero(np.diff(lab)) + 1
    return [g for g in np.split(srt, cuts) if len(g) > 1]


def _group(fp: Fingerprints, rows: np.ndarray, prefix: str, hashes: np.ndarray, **extra: Any) -> Group:
    gid = f"{prefix}-{int(hashes[rows].min()):016x}"
    r = [int(i) for i in rows]
    return Group(gid, r, [fp.keys[i] for i in r], [fp.sources[i] for i in r], **extra)


def find_duplicates(
    fp: Fingerprints, *, near_threshold: float = 0.8, rows: np.ndarray | None = None
) -> tuple[list[Group], list[Group]]:
    """Exact-duplicate groups and near-duplicate groups among ``rows`` (all by default).

    Near-duplicate groups are found among the first member of each exact group only, and link examples whose
    whole-example similarity reaches ``near_threshold`` and whose answers agree (pairs with different answers are
    contradictions, see :func:`find_contradictions`).
    """
    rows = np.arange(len(fp)) if rows is None else np.asarray(rows)
    exact = [_group(fp, g, "x", fp.example_hash) for g in _groups_of(_hash_labels(fp.example_hash), rows)]
    dropped = np.zeros(len(fp), dtype=bool)
    for g in exact:
        dropped[g.rows[1:]] = True
    distinct = rows[~dropped[rows]]
    pairs, sims = minhash.similar_pairs(fp.example_sig[distinct], near_threshold)
    pairs = distinct[pairs] if len(pairs) else pairs
    same_answer = _same_answer(fp, pairs, near_threshold)
    pairs, sims = pairs[same_answer], sims[same_answer]
    labels = minhash.components(len(fp), pairs)
    lowest = np.ones(len(fp))
    np.minimum.at(lowest, labels[pairs[:, 0]], sims)
    near = [
        _group(fp, g, "n", fp.example_hash, similarity=float(lowest[labels[g[0]]]))
        for g in _groups_of(labels, distinct)
    ]
    return exact, near


def _hash_labels(hashes: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(hashes, return_inverse=True)
    return inverse.astype(np.int64)


def _same_answer(fp: Fingerprints, pairs: np.ndarray, threshold: float) -> np.ndarray:
    if len(pairs) == 0:
        return np.zeros(0, dtype=bool)
    a, b = pairs[:, 0], pairs[:, 1]
    equal = fp.output_hash[a] == fp.output_hash[b]
    near = minhash.estimated_similarity(fp.output_sig[a], fp.output_sig[b]) >= threshold
    return equal | near


def find_contradictions(
    fp: Fingerprints, *, near_threshold: float = 0.8, rows: np.ndarray | None = None
) -> list[Group]:
    """Groups of examples with the same or near-same input and two or more different answers.

    Inputs are clustered (equal normalised input, or input similarity >= ``near_threshold``); within a cluster,
    members whose outputs are equal or near-duplicates give the same answer. A cluster with two answers or more is a
    contradiction. Each member's answer number is in ``Group.answers``.
    """
    rows = np.arange(len(fp)) if rows is None else np.asarray(rows)
    if len(rows) < 2:
        return []
    # One representative per distinct input goes through LSH; equal inputs are linked by their hash.
    in_labels = _hash_labels(fp.input_hash)
    first_of = {}
    for r in rows.tolist():
        first_of.setdefault(int(in_labels[r]), r)
    reps = np.array(sorted(first_of.values()), dtype=np.int64)
    pairs, _ = minhash.similar_pairs(fp.input_sig[reps], near_threshold)
    links = [reps[pairs]] if len(pairs) else []
    rep_of = np.array([first_of[int(in_labels[r])] for r in rows.tolist()], dtype=np.int64)
    links.append(np.stack([rep_of, rows], axis=1))
    clusters = minhash.components(len(fp), np.concatenate(links))
    out: list[Group] = []
    for members in _groups_of(clusters, rows):
        if len(np.unique(fp.output_hash[members])) < 2:
            continue
        answers = _answers(fp, members, near_threshold)
        if max(answers) >= 1:
            out.append(_group(fp, members, "c", fp.input_hash, answers=answers))
    return out


def _answers(fp: Fingerprints, members: np.ndarray, threshold: float) -> list[int]:
    m = len(members)
    i, j = np.triu_indices(m, k=1)
    pairs = np.stack([members[i], members[j]], axis=1)
    same = _same_answer(fp, pairs, threshold)
    labels = minhash.components(m, np.stack([i[same], j[same]], axis=1))
    numbering: dict[int, int] = {}
    return [numbering.setdefault(int(x), len(numbering)) for x in labels]


# ---- curation --------------------------------------------------------------------------------------------------------
@dataclass
class CurationReport:
    """What curation found and did."""

    total: int
    """Examples read."""
    kept: int
    """Examples kept."""
    exact_groups: list[Group]
    """Exact duplicates: the first of each group is kept, the rest dropped."""
    near_groups: list[Group]
    """Near duplicates (kept unless ``drop_near``, which keeps the first)."""
    contradiction_groups: list[Group]
    """Same or near-same input, different answers."""
    contradiction_rule: str
    """How contradictions were resolved."""
    resolved: dict[str, list[str]]
    """Contradiction group id -> the keys kept."""
    pii: list[PiiFinding]
    """PII and secrets found (redacted in the output when ``redact_pii``)."""
    redacted: bool
    """Whether PII was redacted in the kept examples."""
    dropped: dict[str, int]
    """Examples dropped, by reason (``exact``, ``near``, ``contradiction``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "counts": {
                "exact_groups": len(self.exact_groups),
                "near_groups": len(self.near_groups),
                "contradiction_groups": len(self.contradiction_groups),
                "pii": dict(Counter(f.kind for f in self.pii)),
            },
            "exact_groups": [g.to_dict() for g in self.exact_groups],
            "near_groups": [g.to_dict() for g in self.near_groups],
            "contradiction_groups": [g.to_dict() for g in self.contradiction_groups],
            "contradiction_rule": self.contradiction_rule,
            "resolved": self.resolved,
            "pii": [f.__dict__ for f in self.pii],
            "redacted": self.redacted,
        }


@dataclass
class CurationResult:
    """The kept examples and the report."""

    examples: list[Example]
    """The examples kept, in input order (redacted when asked)."""
    report: CurationReport
    """What was found and done."""


def plan(
    fp: Fingerprints,
    *,
    near_threshold: float = 0.8,
    contradictions: ContradictionRule = "report",
    choices: dict[str, str] | None = None,
    drop_near: bool = False,
    redacted: bool = False,
) -> tuple[np.ndarray, CurationReport]:
    """Decide what to keep from fingerprints alone: a boolean mask over rows and the report."""
    if contradictions not in get_args(ContradictionRule):
        raise DataError(f"contradictions={contradictions!r} is not a rule; use report, drop, majority, first or last")
    keep = np.ones(len(fp), dtype=bool)
    dropped: Counter[str] = Counter()
    exact, near = find_duplicates(fp, near_threshold=near_threshold)
    for g in exact:
        keep[g.rows[1:]] = False
        dropped["exact"] += len(g.rows) - 1
    # Contradictions are found over every row, exact copies included: each copy is a vote for its answer, so
    # "majority" means the answer most copies give (the example job's documented rule).
    contra = find_contradictions(fp, near_threshold=near_threshold)
    choices = dict(choices or {})
    unknown = sorted(set(choices) - {g.id for g in contra})
    if unknown:
        raise DataError(
            f"choices name contradiction group(s) {unknown[:5]} that the data does not have; "
            "group ids come from the curation report's contradiction_groups"
        )
    resolved: dict[str, list[str]] = {}
    for g in contra:
        winners = _resolve(g, contradictions, choices.get(g.id))
        survivors: set[int] = set()
        for r in winners:
            # A winner dropped as an exact copy is represented by its first copy, which was kept.
            twin = (
                r
                if keep[r]
                else next((k for k in g.rows if keep[k] and fp.example_hash[k] == fp.example_hash[r]), None)
            )
            if twin is not None:
                survivors.add(twin)
        for r in g.rows:
            if keep[r] and r not in survivors:
                keep[r] = False
                dropped["contradiction"] += 1
        resolved[g.id] = [fp.keys[r] for r in g.rows if r in survivors]
    if drop_near:
        for g in near:
            for r in g.rows[1:]:
                if keep[r]:
                    keep[r] = False
                    dropped["near"] += 1
    report = CurationReport(
        total=len(fp),
        kept=int(keep.sum()),
        exact_groups=exact,
        near_groups=near,
        contradiction_groups=contra,
        contradiction_rule=contradictions,
        resolved=resolved,
        pii=fp.pii,
        redacted=redacted,
        dropped=dict(dropped),
    )
    return keep, report


def _resolve(g: Group, rule: str, choice: str | None) -> set[int]:
    if choice is not None:
        if choice not in g.keys:
            raise DataError(
                f"choice for contradiction group {g.id} is {choice!r}, which is not one of its examples "
                f"{g.keys}; pick one of those keys"
            )
        return {g.rows[g.keys.index(choice)]}
    if rule == "report":
        return set(g.rows)
    if rule == "drop":
        return set()
    if rule == "first":
        return {g.rows[0]}
    if rule == "last":
        return {g.rows[-1]}
    votes = Counter(g.answers or [])
    (top, n), *rest = votes.most_common()
    if rest and rest[0][1] == n:  # a tie has no majority: drop the group
        return set()
    return {g.rows[(g.answers or []).index(top)]}


def curate(
    examples: Iterable[Example],
    *,
    near_threshold: float = 0.8,
    contradictions: ContradictionRule = "report",
    choices: dict[str, str] | None = None,
    drop_near: bool = False,
    redact_pii: bool = False,
) -> CurationResult:
    """Curate examples held in memory (see the module docstring; :func:`curate_file` streams)."""
    examples = list(examples)
    fp = fingerprint(examples, scan=True)
    keep, report = plan(
        fp,
        near_threshold=near_threshold,
        contradictions=contradictions,
        choices=choices,
        drop_near=drop_near,
        redacted=redact_pii,
    )
    kept = [redact(e) if redact_pii else e for e, k in zip(examples, keep, strict=True) if k]
    return CurationResult(kept, report)


def iter_jsonl(path: str | Path) -> Iterator[Example]:
    """Read instil's canonical chat JSONL (``Example.to_dict`` records), with ``file:line`` sources."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Example.from_dict(json.loads(line), source=f"{path}:{n}")
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise DataFormatError(
                    f"{path}:{n}: not a chat record ({e}); run `instil data validate {path}` to see every problem"
                ) from None


def curate_file(
    path: str | Path,
    out: str | Path | None = None,
    *,
    near_threshold: float = 0.8,
    contradictions: ContradictionRule = "report",
    choices: dict[str, str] | None = None,
    drop_near: bool = False,
    redact_pii: bool = False,
    reader: Callable[[Path], Iterable[Example]] = iter_jsonl,
) -> CurationReport:
    """Curate a file in two streaming passes (fingerprint, then write what is kept to ``out`` when given)."""
    path = Path(path)
    fp = fingerprint(reader(path), scan=True)
    keep, report = plan(
        fp,
        near_threshold=near_threshold,
        contradictions=contradictions,
        choices=choices,
        drop_near=drop_near,
        redacted=redact_pii,
    )
    if out is not None:
        with Path(out).open("w", encoding="utf-8") as f:
            for e, k in zip(reader(path), keep, strict=True):
                if k:
                    f.write(canonical_json((redact(e) if redact_pii else e).to_dict()) + "\n")
    return report
