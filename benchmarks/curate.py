"""Benchmark: validate + curate + split 1M chat examples with planted defects; time, memory, precision and recall.

    .venv/bin/python benchmarks/curate.py                   # 1,000,000 examples (a few minutes on 2 cores)
    .venv/bin/python benchmarks/curate.py --n 50000 --seed 1 --workdir /tmp/bench

The data (generated untimed) are short support-style chats: a user question of 12-40 words drawn from a Zipf-weighted
vocabulary and an answer that is a label or a sentence. Planted among them, at random positions:

* exact copies, and copies changed only in whitespace or casing (exact duplicates once normalised);
* near duplicates: 1-2 typos, changed punctuation, or two adjacent words swapped in the question;
* contradictions: the same question (re-cased) with a different answer;
* PII: an email, phone number or card number in the question.

Each stage runs through the public functions a user would call (``curate_file``, ``split_file``); precision and
recall are counted per planted kind against the generator's ground truth.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from instil.data.curate import curate_file
from instil.data.split import split_file
from instil.data.validate import validate_file
from instil.spec import SplitSpec

SHARES = {  # fraction of the final data set per planted kind
    "exact": 0.03,
    "whitespace": 0.015,
    "casing": 0.015,
    "typo": 0.03,
    "punctuation": 0.02,
    "reorder": 0.02,
    "contradiction": 0.02,
}
EXACT_KINDS = ("exact", "whitespace", "casing")
NEAR_KINDS = ("typo", "punctuation", "reorder")
LABELS = ["billing", "shipping", "returns", "account", "technical", "sales", "feedback", "other"]


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


# ---- data generation (untimed) ---------------------------------------------------------------------------------------
def make_vocab(rng: np.random.Generator, size: int = 20_000) -> np.ndarray:
    syl = "ka to ri men sa lo pe tur qu an el or is da vi ne co ba fi ul ser gin mo ra te li pa su ho ve".split()  # noqa: SIM905
    words = {"".join(rng.choice(syl, size=rng.integers(1, 5))) for _ in range(size * 2)}
    return np.array(sorted(words)[:size])


def typo(words: list[str], rng: np.random.Generator) -> None:
    for _ in range(rng.integers(1, 3)):
        idx = [i for i, w in enumerate(words) if len(w) >= 4]
        if not idx:
            return
        i = int(rng.choice(idx))
        w, p = words[i], int(rng.integers(1, len(words[i]) - 1))
        op = rng.integers(4)
        c = "abcdefghijklmnopqrstuvwxyz"[rng.integers(26)]
        words[i] = [
            w[:p] + c + w[p + 1 :],
            w[:p] + w[p + 1 :],
            w[:p] + c + w[p:],
            w[: p - 1] + w[p] + w[p - 1] + w[p + 1 :],
        ][op]


def perturb(text: str, kind: str, rng: np.random.Generator) -> str:
    """The text changed in the kind's way; never returned unchanged."""
    for _ in range(10):
        changed = _perturb(text, kind, rng)
        if changed != text:
            return changed
    return text + ","


def _perturb(text: str, kind: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    if kind == "typo":
        typo(words, rng)
    elif kind == "punctuation":
        for _ in range(rng.integers(1, 4)):
            i = int(rng.integers(len(words)))
            words[i] = words[i].rstrip(",.?!") + str(rng.choice([",", ".", "!", ";", ""]))
    elif kind == "reorder":
        i = int(rng.integers(len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == "whitespace":
        return "  " + "\n".join(" ".join(words[k : k + 7]) for k in range(0, len(words), 7)) + " \t"
    elif kind in ("casing", "contradiction"):
        return text.upper() if rng.random() < 0.5 else text.title()
    return " ".join(words)


def generate(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write ``n`` examples; return each line's family (original it derives from), kind, and planted-PII flag."""
    rng = np.random.default_rng(seed)
    vocab = make_vocab(rng)
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 0.9
    p /= p.sum()
    planted = {k: int(v * n) for k, v in SHARES.items()}
    n_orig = n - sum(planted.values())
    lengths = rng.integers(12, 41, size=n_orig)
    words = vocab[rng.choice(len(vocab), size=int(lengths.sum()), p=p)]
    ends = np.cumsum(lengths)
    questions = [" ".join(words[e - k : e]) + "?" for e, k in zip(ends.tolist(), lengths.tolist(), strict=True)]
    sentence_answer = rng.random(n_orig) < 0.5
    answers: list[str] = []
    for i in range(n_orig):
        if sentence_answer[i]:
            answers.append(
                "Please " + " ".join(vocab[rng.choice(len(vocab), size=int(rng.integers(5, 20)), p=p)]) + "."
            )
        else:
            answers.append(LABELS[int(rng.integers(len(LABELS)))])
    pii = np.zeros(n_orig, dtype=bool)
    for i in np.flatnonzero(rng.random(n_orig) < 0.01).tolist():
        pii[i] = True
        questions[i] += " " + str(
            rng.choice(
                [
                    f"my email is user{i}@example.com",
                    f"call me at +1 415 555 {i % 10000:04d}",
                    "card 4111 1111 1111 1111",
                ]
            )
        )
    rows: list[tuple[int, str, str, str]] = [(i, "original", questions[i], answers[i]) for i in range(n_orig)]
    for kind, count in planted.items():
        for f in rng.integers(0, n_orig, size=count).tolist():
            q, a = questions[f], answers[f]
            if kind == "contradiction":
                a = (
                    "Please " + " ".join(vocab[rng.choice(len(vocab), size=8)]) + "."
                    if sentence_answer[f]
                    else LABELS[(LABELS.index(a) + int(rng.integers(1, len(LABELS)))) % len(LABELS)]
                )
            if kind != "exact":
                q = perturb(q, kind, rng)
            rows.append((f, kind, q, a))
    order = rng.permutation(len(rows))
    family = np.empty(len(rows), dtype=np.int64)
    kinds = np.empty(len(rows), dtype=object)
    with path.open("w", encoding="utf-8") as out:
        for line, r in enumerate(order.tolist()):
            f, kind, q, a = rows[r]
            family[line], kinds[line] = f, kind
            record = {
                "messages": [
                    {"role": "system", "content": "You route support tickets."},
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": a},
                ],
                "metadata": {"id": f"ex{line}"},
            }
            out.write(json.dumps(record) + "\n")
    return family, kinds.astype(str), pii[family]


# ---- scoring ---------------------------------------------------------------------------------------------------------
def score(report, family: np.ndarray, kinds: np.ndarray, pii_rows: np.ndarray) -> list[tuple[str, int, int, int, int]]:
    """(kind, planted, found, correct among found, planted that were found) per kind."""
    out: list[tuple[str, int, int, int, int]] = []
    # Exact: a member is correct when another member of its group is of its family.
    exact_of = {r: g.rows for g in report.exact_groups for r in g.rows}
    # Near: a member is correct when another member of its group is of its family.
    group_of = {r: g.rows for g in report.near_groups for r in g.rows}
    for kind in EXACT_KINDS + NEAR_KINDS:
        planted = np.flatnonzero(kinds == kind).tolist()
        if kind in EXACT_KINDS:
            found = [r for r in exact_of if kinds[r] == kind]
            correct = sum(int((family[exact_of[r]] == family[r]).sum()) > 1 for r in found)
            hits = correct
        else:
            found = [r for r in group_of if kinds[r] == kind]
            correct = sum(int((family[group_of[r]] == family[r]).sum()) > 1 for r in found)
            hits = correct
        out.append((kind, len(planted), len(found), correct, hits))
    members = [r for rows in group_of.values() for r in rows]
    all_correct = sum(int((family[group_of[r]] == family[r]).sum()) > 1 for r in set(members))
    out.append(
        (
            "near (all members)",
            sum(int((kinds == k).sum()) for k in NEAR_KINDS),
            len(set(members)),
            all_correct,
            sum(o[4] for o in out if o[0] in NEAR_KINDS),
        )
    )
    # Contradictions: a group is correct when it is one family; a planted one is found when its group holds a
    # member of its family with another answer.
    groups = report.contradiction_groups
    correct_groups = sum(len(set(family[g.rows].tolist())) == 1 for g in groups)
    in_group = {r: g for g in groups for r in g.rows}
    planted = np.flatnonzero(kinds == "contradiction").tolist()
    hits = 0
    for r in planted:
        g = in_group.get(r)
        if g is not None:
            mine = g.answers[g.rows.index(r)]
            hits += any(family[m] == family[r] and a != mine for m, a in zip(g.rows, g.answers, strict=True))
    out.append(("contradiction (groups)", len(planted), len(groups), correct_groups, hits))
    found_rows = {int(f.source.rsplit(":", 1)[1]) - 1 for f in report.pii}
    truth = set(np.flatnonzero(pii_rows).tolist())
    out.append(("pii (examples)", len(truth), len(found_rows), len(found_rows & truth), len(found_rows & truth)))
    return out


def _generate_to(path: Path, n: int, seed: int) -> None:
    family, kinds, pii = generate(path, n, seed)
    np.savez(path.with_suffix(".truth.npz"), family=family, kinds=kinds, pii=pii)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    console = Console()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="instil-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data.jsonl"
    t = time.perf_counter()
    # Generated in a child process, so the peak RSS below is the pipeline's alone.
    child = multiprocessing.get_context("spawn").Process(target=_generate_to, args=(data, args.n, args.seed))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"data generation failed (exit code {child.exitcode})")
    with np.load(data.with_suffix(".truth.npz"), allow_pickle=False) as truth:
        family, kinds, pii_rows = truth["family"], truth["kinds"], truth["pii"]
    console.print(f"generated {args.n:,} examples in {time.perf_counter() - t:.0f}s (untimed) -> {data}")

    stages: list[tuple[str, float, float]] = []
    t = time.perf_counter()
    validation = validate_file(data)
    stages.append((f"validate ({validation.n_valid:,} valid)", time.perf_counter() - t, rss_gib()))

    t = time.perf_counter()
    report = curate_file(data, work / "curated.jsonl", contradictions="report")
    stages.append((f"curate (kept {report.kept:,})", time.perf_counter() - t, rss_gib()))

    t = time.perf_counter()
    summary = split_file(
        work / "curated.jsonl", work / "train.jsonl", work / "holdout.jsonl", SplitSpec(seed=args.seed)
    )
    stages.append(
        (
            f"split ({summary.train:,} / {summary.holdout:,}, {len(summary.audit.pairs)} leaks)",
            time.perf_counter() - t,
            rss_gib(),
        )
    )

    table = Table(title=f"instil data pipeline on {args.n:,} examples")
    for col in ("stage", "wall time (s)", "peak RSS (GiB)"):
        table.add_column(col)
    for name, secs, rss in stages:
        table.add_row(name, f"{secs:.1f}", f"{rss:.2f}")
    table.add_row("total", f"{sum(s for _, s, _ in stages):.1f}", f"{rss_gib():.2f}")
    console.print(table)

    quality = Table(title="planted defects")
    for col in ("kind", "planted", "found", "precision", "recall"):
        quality.add_column(col)
    for kind, planted, found, correct, hits in score(report, family, kinds, pii_rows):
        precision = correct / found if found else float("nan")
        recall = hits / planted if planted else float("nan")
        quality.add_row(kind, f"{planted:,}", f"{found:,}", f"{precision:.4f}", f"{recall:.4f}")
    console.print(quality)
    console.print(f"PII findings by kind: {dict(Counter(f.kind for f in report.pii))}")


if __name__ == "__main__":
    main()
