"""MinHash fingerprints and LSH candidate search shared by curation, splitting and the holdout check.

    sigs = signatures(["hello world, how are you", "hello world how are you?"])   # (2, 128) uint16
    pairs, sims = similar_pairs(sigs, threshold=0.8)                               # [[0, 1]], [1.0]
    labels = components(len(sigs), pairs)                                          # cluster id per row

Shingles are byte 5-grams of the text after :func:`shingle_text` (NFKC, case-folded, punctuation dropped). Character
n-grams rather than word n-grams because the defects curation must catch are small edits of short texts: one typo
changes 1 word 3-gram in 3 of a 20-word text (Jaccard ~0.7, missed at 0.8) but only ~5 of ~120 character 5-grams
(Jaccard ~0.92); swapped words likewise change a few character grams, not whole word windows.

The MinHash itself is rensa's (Rust, batch over a flat buffer of token hashes); only the shingle hashing (vectorised
numpy) and the LSH banding (sort each band's keys, pair equal neighbours) are here, because rensa's LSH answers with
per-row flags or per-object queries, not with the candidate pairs over a matrix that clustering needs.

Signatures keep the low 16 bits of each of the ``num_perm`` MinHash values: two different values agree by chance with
probability 2^-16, which moves a similarity estimate by less than 0.0001 while halving the memory of 1M signatures.
Every LSH candidate is verified against the threshold with the signatures, so precision does not rest on the banding.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import rensa

__all__ = [
    "NGRAM",
    "NUM_PERM",
    "SEED",
    "band_layout",
    "components",
    "cross_pairs",
    "estimated_similarity",
    "shingle_text",
    "signatures",
    "similar_pairs",
    "stable_hash64",
    "truncate",
]

NUM_PERM = 128
"""MinHash values per signature."""
NGRAM = 5
"""Shingle width in bytes of the shingle text."""
SEED = 1
"""rensa's permutation seed; signatures are only comparable under the same (num_perm, ngram, seed)."""

_NONWORD = re.compile(r"[^\w]+")
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def shingle_text(text: str) -> str:
    """The text shingles are taken from: NFKC, case-folded, punctuation and whitespace runs made one space.

    On the same NFKC + casefold as ``normalize_text``, so texts equal under it shingle the same.
    """
    return _NONWORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def stable_hash64(text: str) -> int:
    """A 64-bit hash of a string that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: spreads the raw n-gram bytes over all 64 bits before rensa permutes them.
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _M1
        x = x ^ (x >> np.uint64(27))
        x = x * _M2
        return x ^ (x >> np.uint64(31))


def _shingle_hashes(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint64 hashes of every byte n-gram of every text, and the row offsets into them."""
    raw = [t.encode("utf-8") for t in texts]
    # A text shorter than one n-gram becomes a single padded gram, so it still has a (distinct) signature.
    raw = [b if len(b) >= ngram else b + b"\0" * (ngram - len(b)) for b in raw]
    lengths = np.fromiter((len(b) for b in raw), dtype=np.int64, count=len(raw))
    buf = np.frombuffer(b"".join(raw), dtype=np.uint8)
    starts = np.zeros(len(raw), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    positions = len(buf) - ngram + 1
    grams = np.zeros(positions, dtype=np.uint64)
    for k in range(ngram):
        grams |= buf[k : k + positions].astype(np.uint64) << np.uint64(8 * k)
    counts = lengths - ngram + 1
    # Grams that would run past the end of their text into the next one are masked out.
    valid = np.ones(positions, dtype=bool)
    ends = starts + lengths
    for k in range(1, ngram):
        valid[ends[ends - k < positions] - k] = False
    hashes = _mix(grams[valid])
    offsets = np.zeros(len(raw) + 1, dtype=np.uint64)
    np.cumsum(counts, out=offsets[1:])
    return hashes, offsets


def signatures(
    texts: Sequence[str],
    *,
    num_perm: int = NUM_PERM,
    ngram: int = NGRAM,
    seed: int = SEED,
    prepared: bool = False,
    full: bool = False,
) -> np.ndarray:
    """MinHash signatures, shape ``(len(texts), num_perm)``, dtype uint16 (see the module docstring).

    ``prepared=True`` says the texts went through :func:`shingle_text` already. ``full=True`` returns the uint32
    values instead: the element-wise minimum of two full signatures is the signature of the union of the two shingle
    sets (how a whole example's signature is made from its input's and output's); pass it to :func:`truncate`.
    """
    if not texts:
        return np.zeros((0, num_perm), dtype=np.uint32 if full else np.uint16)
    if not prepared:
        texts = [shingle_text(t) for t in texts]
    hashes, offsets = _shingle_hashes(texts, ngram)
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, num_perm, seed)
    flat = np.fromiter(itertools.chain.from_iterable(matrix.to_rows()), dtype=np.uint32, count=len(texts) * num_perm)
    sigs = flat.reshape(len(texts), num_perm)
    return sigs if full else truncate(sigs)


def truncate(sigs: np.ndarray) -> np.ndarray:
    """The stored form of full uint32 signatures: their low 16 bits."""
    return (sigs & 0xFFFF).astype(np.uint16)


def estimated_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise estimated Jaccard similarity of two equally shaped signature matrices."""
    return (a == b).mean(axis=1, dtype=np.float64)


def band_layout(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) for a threshold: the most selective layout that still finds a pair at the threshold
    with probability >= 0.99, so that unrelated pairs rarely become candidates."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.99:
            best = (bands, rows)
    return best


def _band_keys(sigs: np.ndarray, band: int, rows: int) -> np.ndarray:
    cols = sigs[:, band * rows : (band + 1) * rows].astype(np.uint64)
    key = np.full(len(sigs), (band * int(_GOLDEN)) % 2**64, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in range(cols.shape[1]):
            key = _mix(key ^ cols[:, c])
    return key


# Pairs are taken between rows at most this far apart in a band's sorted order: every pair of a bucket of up to
# WINDOW + 1 rows, and neighbours (which still connect the cluster) in bigger buckets.
WINDOW = 8


def _candidates(sigs: np.ndarray, threshold: float) -> np.ndarray:
    n, num_perm = sigs.shape
    bands, rows = band_layout(threshold, num_perm)
    found: list[np.ndarray] = []
    for band in range(bands):
        keys = _band_keys(sigs, band, rows)
        order = np.argsort(keys, kind="stable")
        skeys = keys[order]
        for d in range(1, min(WINDOW, n - 1) + 1):
            eq = np.flatnonzero(skeys[d:] == skeys[:-d])
            if len(eq) == 0:
                break
            a, b = order[eq], order[eq + d]
            found.append(np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], axis=1)


def _verify(a: np.ndarray, b: np.ndarray, pairs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    sims = np.empty(len(pairs), dtype=np.float64)
    step = 200_000  # bounds the gathered rows' memory
    for i in range(0, len(pairs), step):
        p = pairs[i : i + step]
        sims[i : i + step] = estimated_similarity(a[p[:, 0]], b[p[:, 1]])
    keep = sims >= threshold
    return pairs[keep], sims[keep]


def similar_pairs(sigs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of rows whose estimated similarity is at least ``threshold``, and the
    similarities. Linear in the rows (one sort per band), plus the candidates' verification."""
    if len(sigs) < 2:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    return _verify(sigs, sigs, _candidates(sigs, threshold), threshold)


def cross_pairs(left: np.ndarray, right: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` of a row of ``left`` and a row of ``right`` at least ``threshold`` similar."""
    if len(left) == 0 or len(right) == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    both = np.concatenate([left, right])
    n = len(left)
    # Pairs within one side are not wanted; candidates are found over both and filtered, which keeps one code path.
    pairs = _candidates(both, threshold)
    pairs = pairs[(pairs[:, 0] < n) & (pairs[:, 1] >= n)]
    pairs[:, 1] -= n
    return _verify(left, right, pairs, threshold)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes linked by ``pairs``: each node's label is the smallest node of its
    component, so labels do not depend on the order of the pairs."""
    labels = np.arange(n, dtype=np.int64)
    if len(pairs) == 0:
        return labels
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        while True:  # pointer jumping: every node points at its root
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels
