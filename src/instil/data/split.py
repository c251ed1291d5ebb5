"""The train/holdout split, its leakage audit, and the frozen holdout index that guards training data.

    result = split_examples(examples, spec.split, label_field=spec.output.label_field)
    result.train, result.holdout, result.audit.pairs
    result.index.save(store_dir / "holdout-index")             # index.json + index.npz, no pickle
    HoldoutIndex.load(store_dir / "holdout-index").assert_no_leak(new_training_examples)   # HoldoutLeakError

    summary = split_file("curated.jsonl", "train.jsonl", "holdout.jsonl", spec.split)   # streamed, for 1M examples

The split is seeded and deterministic (numpy's seeded generator over rows in input order; no ``hash()``). Examples are
assigned in units: connected components of exact and near duplicates (whole example or input), equal inputs, equal
``group`` keys and equal ``meta[group_by]`` values, so none of these straddle the split. With labels, units are
stratified by their majority label and every label with two units or more gets at least one in the holdout.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instil.data import minhash
from instil.data.curate import Fingerprints, _hash_labels, fingerprint, iter_jsonl
from instil.data.records import Example, canonical_json, sha256_hex
from instil.errors import DataError, HoldoutLeakError
from instil.files import replacing
from instil.spec import SplitSpec

__all__ = [
    "HoldoutIndex",
    "LeakMatch",
    "LeakageAudit",
    "SplitResult",
    "SplitSummary",
    "assign_holdout",
    "split_examples",
    "split_file",
]

INDEX_VERSION = 1


# ---- assigning units -------------------------------------------------------------------------------------------------
def _units(fp: Fingerprints, threshold: float) -> np.ndarray:
    """Each row's unit label (components of every link that must not straddle the split)."""
    n = len(fp)
    links = [
        minhash.similar_pairs(fp.example_sig, threshold)[0],
        minhash.similar_pairs(fp.input_sig, threshold)[0],
    ]
    for ids in (_hash_labels(fp.example_hash), _hash_labels(fp.input_hash), fp.groups[:, 0], fp.groups[:, 1]):
        rows = np.flatnonzero(ids >= 0)
        # Link every row to the first row with the same id.
        first = np.full(int(ids.max(initial=-1)) + 1, n, dtype=np.int64)
        np.minimum.at(first, ids[rows], rows)
        links.append(np.stack([first[ids[rows]], rows], axis=1))
    return minhash.components(n, np.concatenate(links))


def _use_labels(fp: Fingerprints, settings: SplitSpec, told: bool) -> bool:
    if not settings.stratify or not fp.label_names:
        return False
    if told:
        return True
    # Guessed labels (short outputs) count only when every example has one and they repeat.
    return bool((fp.labels >= 0).all()) and len(fp.label_names) <= max(2, min(100, len(fp) // 10))


def assign_holdout(fp: Fingerprints, settings: SplitSpec, *, labels_given: bool = False) -> np.ndarray:
    """A boolean mask of the rows that go to the holdout (see the module docstring for the rules)."""
    n = len(fp)
    if n < 2:
        raise DataError(f"cannot split {n} example(s): the holdout and the training set each need at least one")
    units = _units(fp, settings.near_duplicate_threshold)
    unit_ids, unit_of_row, sizes = np.unique(units, return_inverse=True, return_counts=True)
    if len(unit_ids) < 2:
        raise DataError(
            f"all {n} examples are linked into one unit (duplicates, near-duplicates or shared group keys), so no "
            "holdout can be made without leakage; check split.group_by and the data's group fields"
        )
    stratify = _use_labels(fp, settings, labels_given)
    if stratify:
        unit_label = _majority(unit_of_row, np.where(fp.labels >= 0, fp.labels, len(fp.label_names)), len(unit_ids))
    else:
        unit_label = np.zeros(len(unit_ids), dtype=np.int64)
    want = settings.holdout_size if settings.holdout_size is not None else settings.holdout_fraction * n
    if settings.holdout_size is not None and not 0 < settings.holdout_size < n:
        raise DataError(f"split.holdout_size is {settings.holdout_size} but the data has {n} examples; use 1..{n - 1}")
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(unit_ids))
    holdout_units = np.zeros(len(unit_ids), dtype=bool)
    strata = np.unique(unit_label)
    # Largest-remainder apportionment: per-label targets that add up to the wanted holdout size.
    quota = np.array([want * sizes[unit_label == label].sum() / n for label in strata])
    targets = np.floor(quota).astype(np.int64)
    extra = int(round(want)) - int(targets.sum())
    targets[np.argsort(-(quota - targets), kind="stable")[: max(extra, 0)]] += 1
    for label, target in zip(strata.tolist(), targets.tolist(), strict=True):
        members = order[unit_label[order] == label]
        if len(members) >= 2:
            target = max(target, 1)
        taken = held = 0
        for u in members.tolist():
            if taken >= target:
                break
            # A unit that would overshoot the target by more than half its size stays in train, and so does the
            # stratum's last unit.
            if taken + sizes[u] / 2 <= target and held < len(members) - 1:
                holdout_units[u] = True
                taken += int(sizes[u])
                held += 1
    if not holdout_units.any() or holdout_units.all():
        raise DataError(
            f"could not form a holdout of about {want:.0f} examples from {len(unit_ids)} units (the largest has "
            f"{sizes.max()} examples); lower split.holdout_fraction or check the group keys"
        )
    return holdout_units[unit_of_row]


def _majority(unit_of_row: np.ndarray, labels: np.ndarray, n_units: int) -> np.ndarray:
    counts = np.zeros((n_units, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (unit_of_row, labels), 1)
    return counts.argmax(axis=1)


# ---- leakage audit and the frozen holdout ----------------------------------------------------------------------------
@dataclass
class LeakMatch:
    """A training example that matches a holdout example."""

    example_key: str
    """The training example's key."""
    example_source: str | None
    """Its ``file:line``."""
    holdout_key: str
    """The key of the holdout example it matches."""
    kind: str
    """``exact`` (same normalised input) or ``near`` (input similarity at least the threshold)."""
    similarity: float
    """Estimated input similarity (1.0 for exact)."""

    def format(self) -> str:
        where = f" ({self.example_source})" if self.example_source else ""
        return f"{self.example_key}{where} ~ holdout {self.holdout_key} [{self.kind}, {self.similarity:.2f}]"


@dataclass
class LeakageAudit:
    """Near-duplicate pairs across train and holdout (empty by construction; anything here is a bug or a threshold
    edge, and is shown rather than hidden)."""

    threshold: float
    """The similarity checked against."""
    pairs: list[LeakMatch]
    """Each train example that matches a holdout example."""

    @property
    def clean(self) -> bool:
        return not self.pairs


def _matches(
    fp: Fingerprints, hold_keys: list[str], hold_hash: np.ndarray, hold_sig: np.ndarray, threshold: float
) -> list[LeakMatch]:
    out: dict[int, LeakMatch] = {}
    order = np.argsort(hold_hash, kind="stable")
    pos = np.searchsorted(hold_hash[order], fp.input_hash)
    pos = np.minimum(pos, max(len(order) - 1, 0))
    if len(order):
        for i in np.flatnonzero(hold_hash[order][pos] == fp.input_hash).tolist():
            out[i] = LeakMatch(fp.keys[i], fp.sources[i], hold_keys[int(order[pos[i]])], "exact", 1.0)
    pairs, sims = minhash.cross_pairs(fp.input_sig, hold_sig, threshold)
    for (i, j), s in sorted(zip(pairs.tolist(), sims.tolist(), strict=True), key=lambda p: (p[0][0], -p[1])):
        if i not in out:
            out[i] = LeakMatch(fp.keys[i], fp.sources[i], hold_keys[j], "near", float(s))
    return [out[i] for i in sorted(out)]


@dataclass
class HoldoutIndex:
    """The frozen holdout's fingerprint: its content hash, and each example's normalised-input hash and MinHash."""

    content_hash: str
    """sha256 of the holdout's canonical JSONL, in order (the hash the store records)."""
    keys: list[str]
    """The holdout examples' keys."""
    input_hashes: np.ndarray
    """uint64 hash of each holdout example's normalised input."""
    signatures: np.ndarray
    """(m, num_perm) uint16 MinHash of each holdout example's input."""
    threshold: float
    """Input similarity at or above which a training example is refused."""
    num_perm: int = minhash.NUM_PERM
    """MinHash values per signature."""
    ngram: int = minhash.NGRAM
    """Shingle width (bytes)."""
    seed: int = minhash.SEED
    """MinHash seed."""

    @classmethod
    def build(cls, content_hash: str, fp: Fingerprints, rows: np.ndarray, threshold: float) -> HoldoutIndex:
        return cls(content_hash, [fp.keys[i] for i in rows], fp.input_hash[rows], fp.input_sig[rows], threshold)

    def save(self, path: str | Path) -> Path:
        """Write ``index.json`` and ``index.npz`` into the folder ``path``, both or neither (a folder that is there
        already is kept: it is named by the holdout's content hash, so it holds the same index)."""
        path = Path(path)
        meta = {
            "version": INDEX_VERSION,
            "content_hash": self.content_hash,
            "keys": self.keys,
            "threshold": self.threshold,
            "num_perm": self.num_perm,
            "ngram": self.ngram,
            "seed": self.seed,
        }
        with replacing(path, keep_existing=True) as staging:
            staging.mkdir()
            (staging / "index.json").write_text(json.dumps(meta), encoding="utf-8")
            np.savez_compressed(staging / "index.npz", input_hashes=self.input_hashes, signatures=self.signatures)
        return path

    @classmethod
    def load(cls, path: str | Path) -> HoldoutIndex:
        path = Path(path)
        try:
            meta = json.loads((path / "index.json").read_text(encoding="utf-8"))
            with np.load(path / "index.npz", allow_pickle=False) as z:
                hashes, sigs = z["input_hashes"], z["signatures"]
        except (OSError, ValueError, KeyError) as e:
            raise DataError(
                f"{path}: cannot read the holdout index ({e}); re-create it with `instil data split`"
            ) from None
        if meta.get("version") != INDEX_VERSION or len(meta["keys"]) != len(hashes) or sigs.shape[0] != len(hashes):
            raise DataError(f"{path}: the holdout index is damaged or from another version; re-run `instil data split`")
        if (meta["num_perm"], meta["ngram"], meta["seed"]) != (minhash.NUM_PERM, minhash.NGRAM, minhash.SEED):
            raise DataError(f"{path}: the holdout index used other MinHash settings; re-run `instil data split`")
        return cls(
            meta["content_hash"],
            meta["keys"],
            hashes,
            sigs,
            meta["threshold"],
            meta["num_perm"],
            meta["ngram"],
            meta["seed"],
        )

    def check(self, examples: Iterable[Example]) -> list[LeakMatch]:
        """Every example whose input equals or nearly equals a holdout example's input."""
        return _matches(fingerprint(examples), self.keys, self.input_hashes, self.signatures, self.threshold)

    def assert_no_leak(self, examples: Iterable[Example]) -> None:
        """Raise :class:`HoldoutLeakError` naming every example that matches the holdout."""
        matches = self.check(examples)
        if matches:
            shown = "\n".join("  " + m.format() for m in matches[:20])
            more = f"\n  ... and {len(matches) - 20} more" if len(matches) > 20 else ""
            raise HoldoutLeakError(
                f"{len(matches)} training example(s) match the frozen holdout (content {self.content_hash[:12]}):\n"
                f"{shown}{more}",
                matches,
            )


# ---- the split -------------------------------------------------------------------------------------------------------
@dataclass
class SplitResult:
    """A split held in memory."""

    train: list[Example]
    """Training examples, in input order."""
    holdout: list[Example]
    """Holdout examples, in input order."""
    audit: LeakageAudit
    """Near-duplicates across the two sides (empty when all is well)."""
    index: HoldoutIndex
    """The frozen holdout's index, to check later training data against."""


def _holdout_hash(holdout: Iterable[Example]) -> str:
    return sha256_hex("".join(canonical_json(e.to_dict()) + "\n" for e in holdout))


def _audit(fp: Fingerprints, hold: np.ndarray, threshold: float) -> LeakageAudit:
    train_rows, hold_rows = np.flatnonzero(~hold), np.flatnonzero(hold)
    sub = _subset(fp, train_rows)
    return LeakageAudit(
        threshold,
        _matches(sub, [fp.keys[i] for i in hold_rows], fp.input_hash[hold_rows], fp.input_sig[hold_rows], threshold),
    )


def _subset(fp: Fingerprints, rows: np.ndarray) -> Fingerprints:
    arrays = {
        name: getattr(fp, name)[rows]
        for name in (
            "example_hash",
            "input_hash",
            "output_hash",
            "example_sig",
            "input_sig",
            "output_sig",
            "labels",
            "groups",
        )
    }
    return Fingerprints(
        keys=[fp.keys[i] for i in rows],
        sources=[fp.sources[i] for i in rows],
        label_names=fp.label_names,
        **arrays,
    )


def split_examples(
    examples: list[Example],
    settings: SplitSpec,
    *,
    label_field: str | None = None,
    labels: list[str] | None = None,
) -> SplitResult:
    """Split examples into train and holdout (see the module docstring)."""
    told = label_field is not None or labels is not None
    fp = fingerprint(examples, label_field=label_field, labelled=told, group_by=settings.group_by)
    if labels is not None:
        _check_labels(fp, labels)
    hold = assign_holdout(fp, settings, labels_given=told)
    train = [e for e, h in zip(examples, hold, strict=True) if not h]
    holdout = [e for e, h in zip(examples, hold, strict=True) if h]
    index = HoldoutIndex.build(_holdout_hash(holdout), fp, np.flatnonzero(hold), settings.near_duplicate_threshold)
    return SplitResult(train, holdout, _audit(fp, hold, settings.near_duplicate_threshold), index)


def _check_labels(fp: Fingerprints, labels: list[str]) -> None:
    unknown = sorted(set(fp.label_names) - set(labels))
    if unknown:
        raise DataError(
            f"the data has label(s) {unknown[:10]} that are not in output.labels {labels}; fix the data "
            "or add them to the spec"
        )


@dataclass
class SplitSummary:
    """What :func:`split_file` wrote."""

    train: int
    """Training examples written."""
    holdout: int
    """Holdout examples written."""
    audit: LeakageAudit
    """Near-duplicates across the sides (empty when all is well)."""
    index: HoldoutIndex
    """The frozen holdout's index."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": self.train,
            "holdout": self.holdout,
            "content_hash": self.index.content_hash,
            "leaks": [m.__dict__ for m in self.audit.pairs],
        }


def split_file(
    path: str | Path,
    train_out: str | Path,
    holdout_out: str | Path,
    settings: SplitSpec,
    *,
    label_field: str | None = None,
    labels: list[str] | None = None,
    reader: Callable[[Path], Iterable[Example]] = iter_jsonl,
) -> SplitSummary:
    """Split a file in two streaming passes: fingerprint and assign, then write both sides."""
    path = Path(path)
    told = label_field is not None or labels is not None
    fp = fingerprint(reader(path), label_field=label_field, labelled=told, group_by=settings.group_by)
    if labels is not None:
        _check_labels(fp, labels)
    hold = assign_holdout(fp, settings, labels_given=told)
    digest = hashlib.sha256()
    with (
        Path(train_out).open("w", encoding="utf-8") as tf,
        Path(holdout_out).open("w", encoding="utf-8") as hf,
    ):
        for e, h in zip(reader(path), hold, strict=True):
            line = canonical_json(e.to_dict()) + "\n"
            if h:
                hf.write(line)
                digest.update(line.encode("utf-8"))
            else:
                tf.write(line)
    rows = np.flatnonzero(hold)
    index = HoldoutIndex.build(digest.hexdigest(), fp, rows, settings.near_duplicate_threshold)
    return SplitSummary(int((~hold).sum()), len(rows), _audit(fp, hold, settings.near_duplicate_threshold), index)
