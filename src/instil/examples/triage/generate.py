"""Seeded generator of the triage example's data: a golden set, a traffic pool and a frozen holdout.

    python -m instil.examples.triage.generate OUT_DIR --seed 0

    from instil.examples.triage.generate import generate
    paths = generate("data", seed=0)      # {"golden": .../golden.jsonl, "traffic": ..., "holdout": ...}

Each line is OpenAI chat JSONL written as ``canonical_json(Example.to_dict())``: the system message is the job's
system prompt (read from ``instil.yaml`` beside this file), the user message is the ticket, and the assistant
message is the reference answer, ``json.dumps`` of ``{"category", "urgency", "summary"}`` in that fixed order
(the order the prompt asks for). ``metadata`` holds ``id`` (``golden-0001``...) and ``tags``.

How an answer follows from a ticket (what a model must learn):
  - category and summary: each ticket states one standard issue (``phrases.ISSUES``) in one of several wordings;
    the summary is ``"<Category>: <issue name>"``.
  - urgency: the ticket's cue phrase (``phrases.CUES``); with none, medium, or low for category ``other``.
  - edge cases, tagged: ``edge:empty`` (no request: other / low / "Other: empty ticket"), ``lang:es|fr|de``,
    ``edge:injection`` (a line tries to override the rules; the answer ignores it), ``edge:long`` (1.5-3k
    characters of story around the request).
  - golden uses only the ``common`` wordings; traffic and holdout also use the ``rare`` ones.

Planted problems in golden and traffic (``PLANTED``): exact duplicate pairs (``planted:duplicate``), and contradiction
groups (``planted:contradiction``): a majority group holds the ticket twice with its right answer and once with a
wrong category; a tie group holds it once right and once wrong. Resolution rule: see README.md.

Every distinct ticket is kept below ``GUARD_JACCARD`` word 3-gram Jaccard similarity of every other, so the holdout
holds no exact or near-duplicate of a golden or traffic ticket, and curation finds no duplicates but the planted
ones. Only ``random.Random(seed)`` is used: the same seed and sizes give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from instil.data.records import Example, Message, canonical_json, normalize_text
from instil.examples.triage import phrases
from instil.examples.triage.phrases import CATEGORIES, CUES, EMPTY_SUMMARY, ISSUES, LANGUAGES, Issue
from instil.spec import load_spec

__all__ = [
    "EDGE_FRACTIONS",
    "GUARD_JACCARD",
    "PLANTED",
    "SPEC_PATH",
    "SPLITS",
    "answer_text",
    "edge_counts",
    "generate",
    "main",
    "shingles",
]

SPEC_PATH = Path(__file__).with_name("instil.yaml")
"""The job spec whose system prompt every example carries."""
SPLITS = ("golden", "traffic", "holdout")
"""The files written, as ``<split>.jsonl``."""

GUARD_JACCARD = 0.6
"""Distinct tickets stay below this word 3-gram Jaccard similarity (a margin under the spec's 0.8)."""

EDGE_FRACTIONS: dict[str, float] = {
    "lang:es": 0.02,
    "lang:fr": 0.02,
    "lang:de": 0.02,
    "edge:injection": 0.03,
    "edge:long": 0.015,
    "edge:empty": 0.015,
}
"""Share of each split's distinct tickets per edge tag (at least one each). Long tickets stay few: training time."""


@dataclass(frozen=True)
class Planted:
    """How many planted problems a split holds."""

    duplicates: int
    """Pairs of identical examples (one extra line each)."""
    majority: int
    """Contradiction groups of three: the right answer twice, a wrong category once (two extra lines each)."""
    ties: int
    """Contradiction groups of two: the right answer once, a wrong category once (one extra line each)."""

    @property
    def extra_lines(self) -> int:
        return self.duplicates + 2 * self.majority + self.ties

    @property
    def dropped_by_rule(self) -> int:
        """Lines the resolution rule removes: duplicate copies, majority groups' two extra lines, whole tie groups."""
        return self.duplicates + 2 * self.majority + 2 * self.ties


PLANTED: dict[str, Planted] = {
    "golden": Planted(duplicates=3, majority=1, ties=1),
    "traffic": Planted(duplicates=6, majority=2, ties=2),
}
"""Planted problems per split; the holdout has none."""

_URGENCY_WEIGHTS = {"critical": 0.15, "high": 0.25, "medium": 0.35, "low": 0.25}
_MAX_TRIES = 500


def answer_text(category: str, urgency: str, summary: str) -> str:
    """The reference answer as the assistant writes it: keys in the fixed order category, urgency, summary."""
    return json.dumps({"category": category, "urgency": urgency, "summary": summary}, ensure_ascii=False)


_WORD = re.compile(r"\w+")


def shingles(text: str) -> frozenset[tuple[str, ...]]:
    """Word 3-grams of the normalised text (the whole text as one shingle when it has fewer than three words)."""
    words = _WORD.findall(normalize_text(text))
    if len(words) < 3:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(zip(words, words[1:], words[2:], strict=False))


def edge_counts(n_distinct: int) -> dict[str, int]:
    """How many tickets of each edge tag a split of ``n_distinct`` distinct tickets holds."""
    return {tag: max(1, round(n_distinct * frac)) for tag, frac in EDGE_FRACTIONS.items()}


# ---- one ticket ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ticket:
    text: str
    category: str
    urgency: str
    summary: str
    tags: tuple[str, ...] = ()


@dataclass
class _Seen:
    """Every accepted ticket, to keep new ones away from exact and near-duplicates."""

    normalized: set[str] = field(default_factory=set)
    sets: list[frozenset[tuple[str, ...]]] = field(default_factory=list)

    def too_close(self, text: str, sh: frozenset[tuple[str, ...]]) -> bool:
        if normalize_text(text) in self.normalized:
            return True
        for other in self.sets:
            inter = len(sh & other)
            if inter and inter / (len(sh) + len(other) - inter) >= GUARD_JACCARD:
                return True
        return False

    def add(self, text: str, sh: frozenset[tuple[str, ...]]) -> None:
        self.normalized.add(normalize_text(text))
        self.sets.append(sh)


class _Composer:
    """Builds tickets from the phrase tables with one random stream."""

    def __init__(self, rng: random.Random, *, rare: bool) -> None:
        self.rng = rng
        self.rare = rare

    def slots(self, wrong: str = "") -> dict[str, str]:
        r = self.rng
        first, last = r.choice(phrases.FIRST_NAMES), r.choice(phrases.LAST_NAMES)
        return {
            "order": f"#{r.choice('ABCDEFGHJKLMNPRSTW')}{r.randint(10000, 99999)}",
            "amount": f"${r.randint(5, 480)}.{r.choice(['00', '49', '99'])}",
            "app": r.choice(phrases.APPS),
            "item": r.choice(phrases.ITEMS),
            "device": r.choice(phrases.DEVICES),
            "error": f"E-{r.randint(1000, 9999)}",
            "plan": r.choice(phrases.PLANS),
            "email": f"{first.lower()}.{last.lower()}{r.randint(1, 99)}@example.com",
            "date": f"{r.choice(['March', 'April', 'May', 'June', 'July', 'September', 'October'])} {r.randint(1, 28)}",
            "city": r.choice(phrases.CITIES),
            "carrier": r.choice(phrases.CARRIERS),
            "days": str(r.randint(3, 14)),
            "digits": str(r.randint(1000, 9999)),
            "company": r.choice(phrases.COMPANIES),
            "years": str(r.randint(2, 12)),
            "version": f"{r.randint(2, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
            "first": first,
            "last": last,
            "wrong": wrong,
        }

    def urgency(self, category: str) -> str:
        if category == "other":
            return "low" if self.rng.random() < 0.8 else "medium"
        levels = list(_URGENCY_WEIGHTS)
        return self.rng.choices(levels, weights=[_URGENCY_WEIGHTS[u] for u in levels])[0]

    def cue(self, category: str, urgency: str, cues: dict[str, tuple[str, ...]]) -> str | None:
        # No cue reads as the default: medium, or low for category other (the prompt's rule).
        default = "low" if category == "other" else "medium"
        if urgency == default and self.rng.random() < 0.5:
            return None
        return self.rng.choice(cues[urgency])

    def english(self, issue: Issue, *, extra: str | None = None, filler: int = 0) -> _Ticket:
        """An English ticket; ``extra`` is a sentence slipped in anywhere, ``filler`` a length to pad the story to."""
        r = self.rng
        urgency = self.urgency(issue.category)
        wordings = issue.common + (issue.rare if self.rare else ())
        s = self.slots(wrong=r.choice([c for c in CATEGORIES if c != issue.category]))
        body = [r.choice(wordings)]
        if r.random() < 0.35:
            body.insert(0, r.choice(phrases.CONTEXTS))
        if r.random() < 0.3:
            body.append(r.choice(phrases.DETAILS[issue.category]))
        cue = self.cue(issue.category, urgency, CUES)
        if cue is not None:
            body.insert(0 if r.random() < 0.25 else len(body), cue)
        if extra is not None:
            body.insert(r.randint(0, len(body)), extra)
        if filler:
            # The request sits inside the story: two thirds of the filler before it, a third after.
            length = sum(len(b) for b in body)
            before: list[str] = []
            after: list[str] = []
            for i, sentence in enumerate(r.sample(phrases.FILLER, len(phrases.FILLER))):
                if length >= filler:
                    break
                (after if i % 3 == 2 else before).append(sentence)
                length += len(sentence) + 1
            body = before + body + after
        text = self._frame(body, s, phrases.GREETINGS, phrases.CLOSINGS, lowercase=not filler and r.random() < 0.1)
        return _Ticket(text, issue.category, urgency, issue.summary)

    def injection(self, issue: Issue) -> _Ticket:
        t = self.english(issue, extra=self.rng.choice(phrases.INJECTIONS))
        return _Ticket(t.text, t.category, t.urgency, t.summary, ("edge:injection",))

    def language(self, lang: str) -> _Ticket:
        r = self.rng
        pack = LANGUAGES[lang]
        key = r.choice(sorted(pack.issues))
        issue = next(i for i in ISSUES if i.key == key)
        urgency = self.urgency(issue.category)
        body = [r.choice(pack.issues[key])]
        cue = self.cue(issue.category, urgency, pack.cues)
        if cue is not None:
            body.insert(0 if r.random() < 0.25 else 1, cue)
        text = self._frame(body, self.slots(), pack.greetings, pack.closings, lowercase=False)
        return _Ticket(text, issue.category, urgency, issue.summary, (f"lang:{lang}",))

    def long(self, issue: Issue) -> _Ticket:
        t = self.english(issue, filler=self.rng.randint(1500, 3000))
        return _Ticket(t.text, t.category, t.urgency, t.summary, ("edge:long",))

    def empty(self, *, blank: bool) -> _Ticket:
        if blank:
            text = ""
        else:
            s = self.slots()
            s["greeting"] = self.rng.choice(phrases.GREETINGS)
            s["closing"] = self.rng.choice(phrases.CLOSINGS)
            text = self.rng.choice(phrases.NO_CONTENT).format_map(s)
        return _Ticket(text, "other", "low", EMPTY_SUMMARY, ("edge:empty",))

    def _frame(
        self,
        body: list[str],
        s: dict[str, str],
        greetings: tuple[str, ...],
        closings: tuple[str, ...],
        *,
        lowercase: bool,
    ) -> str:
        r = self.rng
        sentences = [_capitalize(b.format_map(s)) for b in body]
        parts: list[str] = []
        if r.random() < 0.7:
            parts.append(r.choice(greetings))
        # Long stories come in paragraphs of four sentences; short tickets are one paragraph.
        parts.extend(" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4))
        if r.random() < 0.6:
            sign = r.choice(closings)
            if r.random() < 0.8:
                sign += "\n" + (s["first"] if r.random() < 0.5 else f"{s['first']} {s['last']}")
            parts.append(sign)
        text = "\n\n".join(parts)
        return text.lower() if lowercase else text


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


# ---- one split -------------------------------------------------------------------------------------------------------
def _fresh(seen: _Seen, make: Callable[[], _Ticket]) -> _Ticket:
    for _ in range(_MAX_TRIES):
        ticket = make()
        sh = shingles(ticket.text)
        if not seen.too_close(ticket.text, sh):
            seen.add(ticket.text, sh)
            return ticket
    # Only sizes far above the defaults exhaust the phrase tables' supply of tickets unlike the others.
    raise ValueError(f"could not compose a ticket unlike the others in {_MAX_TRIES} tries; use smaller split sizes")


def _split(rng: random.Random, seen: _Seen, name: str, n: int, system_prompt: str) -> list[Example]:
    planted = PLANTED.get(name)
    n_distinct = n - (planted.extra_lines if planted else 0)
    counts = edge_counts(n_distinct)
    n_normal = n_distinct - sum(counts.values())
    # Each planted group needs its own normal ticket; each edge tag at least one.
    needed = planted.duplicates + planted.majority + planted.ties if planted else 0
    if n_normal < max(needed, 1):
        raise ValueError(
            f"{name}: n={n} is too small for its edge cases and planted problems; use at least "
            f"{n + max(needed, 1) - n_normal}"
        )
    c = _Composer(rng, rare=name != "golden")
    tickets: list[_Ticket] = []
    for tag, count in counts.items():
        for i in range(count):
            # One blank ticket in the whole data (golden): blanks are equal after normalisation, so a second would be
            # an exact duplicate, and one in the holdout a leak. Other empty tickets hold only hello and goodbye.
            blank = tag == "edge:empty" and name == "golden" and i == 0
            tickets.append(_fresh(seen, partial(_edge_ticket, c, tag, blank=blank)))
    normal = [_fresh(seen, partial(_normal_ticket, c)) for _ in range(n_normal)]
    tickets.extend(normal)
    if planted is not None:
        groups = rng.sample(range(len(normal)), needed)
        dup, maj, tie = (
            groups[: planted.duplicates],
            groups[planted.duplicates : planted.duplicates + planted.majority],
            groups[planted.duplicates + planted.majority :],
        )
        for i in dup:
            tickets.remove(normal[i])
            tickets += [_tagged(normal[i], "planted:duplicate")] * 2
        for i in maj + tie:
            tickets.remove(normal[i])
            right = _tagged(normal[i], "planted:contradiction")
            tickets += [right, right] if i in maj else [right]
            tickets.append(_mislabelled(rng, right))
    rng.shuffle(tickets)
    assert len(tickets) == n, (name, len(tickets), n)
    return [
        Example(
            messages=[
                Message("system", system_prompt),
                Message("user", t.text),
                Message("assistant", answer_text(t.category, t.urgency, t.summary)),
            ],
            id=f"{name}-{k:04d}",
            tags=sorted(t.tags),
        )
        for k, t in enumerate(tickets, start=1)
    ]


def _edge_ticket(c: _Composer, tag: str, *, blank: bool) -> _Ticket:
    if tag.startswith("lang:"):
        return c.language(tag.removeprefix("lang:"))
    if tag == "edge:injection":
        return c.injection(c.rng.choice(ISSUES))
    if tag == "edge:long":
        return c.long(c.rng.choice(ISSUES))
    return c.empty(blank=blank)


def _normal_ticket(c: _Composer) -> _Ticket:
    return c.english(c.rng.choice(ISSUES))


def _tagged(t: _Ticket, tag: str) -> _Ticket:
    return _Ticket(t.text, t.category, t.urgency, t.summary, (*t.tags, tag))


def _mislabelled(rng: random.Random, t: _Ticket) -> _Ticket:
    # A reviewer's slip: another category, the summary's prefix following it (so the answer still fits the schema).
    wrong = rng.choice([c for c in CATEGORIES if c != t.category])
    summary = f"{wrong.capitalize()}:{t.summary.split(':', 1)[1]}"
    return _Ticket(t.text, wrong, t.urgency, summary, t.tags)


# ---- the files -------------------------------------------------------------------------------------------------------
def generate(
    out_dir: str | Path, *, seed: int = 0, n_golden: int = 120, n_traffic: int = 400, n_holdout: int = 120
) -> dict[str, Path]:
    """Write ``golden.jsonl``, ``traffic.jsonl`` and ``holdout.jsonl`` into ``out_dir``; return their paths by split.

    Sizes count lines, planted copies included. Raises ``ValueError`` when a size is too small to hold its edge cases
    and planted problems, or too large for the phrase tables to keep every ticket unlike the others.
    """
    system_prompt = load_spec(SPEC_PATH).system_prompt
    rng = random.Random(seed)
    seen = _Seen()
    sizes = {"golden": n_golden, "traffic": n_traffic, "holdout": n_holdout}
    # The holdout is drawn last, so every holdout ticket is checked against every golden and traffic ticket.
    splits = {name: _split(rng, seen, name, sizes[name], system_prompt) for name in SPLITS}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, examples in splits.items():
        path = out / f"{name}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for ex in examples:
                f.write(canonical_json(ex.to_dict()) + "\n")
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m instil.examples.triage.generate",
        description="Generate the triage example's golden, traffic and holdout JSONL files.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write golden.jsonl, traffic.jsonl, holdout.jsonl into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--n-golden", type=int, default=120, help="lines in golden.jsonl")
    parser.add_argument("--n-traffic", type=int, default=400, help="lines in traffic.jsonl")
    parser.add_argument("--n-holdout", type=int, default=120, help="lines in holdout.jsonl")
    args = parser.parse_args(argv)
    try:
        paths = generate(
            args.out_dir,
            seed=args.seed,
            n_golden=args.n_golden,
            n_traffic=args.n_traffic,
            n_holdout=args.n_holdout,
        )
    except ValueError as e:
        parser.error(str(e))
    for name, path in paths.items():
        lines = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"{name:8} {lines:5} lines  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
