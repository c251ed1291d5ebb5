"""The failure modes of a tuned model that the field warns about: overfitting, style collapse and forgetting.

    from instil.eval.failure_modes import check_failure_modes, style_collapse
    modes = check_failure_modes(spec, store, candidate, holdout, outputs, scores, graders)
    modes.overfitting.gap, modes.style_collapse.flagged, modes.forgetting.drop, modes.flags
    style_collapse(["red"] * 8, references)      # the pure checks run on plain lists too

Each check returns a small typed result: its numbers, ``flagged``, and one line saying what was found.

- **Overfitting**: the tuned model's primary-grader mean on a seeded sample (``eval.overfit_sample``, default 64) of
  the very training split it was trained on (the dataset version its ``train`` run read) minus its mean on the
  holdout; flagged when the gap exceeds ``eval.overfit_threshold``. The training split is only sampled and scored,
  and a frozen (holdout) version is refused, so nothing here moves holdout examples anywhere near training.
- **Style collapse**: on the holdout, the answers' length in characters (mean and sd), their distinct-2 (distinct word
  bigrams over all bigrams; each answer framed by start and end markers, so one-word answers count) and the share of
  the most common answer, each beside the references'. Flagged when distinct-2 falls below half the references', or
  when more than half the answers are one same answer and that share exceeds the references' by more than 0.25.
- **Forgetting**: the regression set (``eval.regression_set``, a chat JSONL of out-of-domain prompts) answered by
  the base model and by the tuned model, both with the set's own messages (the job's prompts are not applied: the
  question is what the weights still know). Answers are scored by token F1 (SQuAD-style bag-of-words overlap) against
  the set's reference answers when every example has one; otherwise against the base model's answers, so the base
  scores 1 and the tuned model's score measures how far its answers drifted from the base's. Token F1 rather than the
  job's graders, because those check the job's output contract, which out-of-domain answers need not meet. Flagged
  when the tuned model's score is below the base's by more than ``eval.forgetting_threshold``. For a LoRA model the
  base answers come from the same loaded model with its adapter disabled: exactly the base it was trained on.
"""

from __future__ import annotations

import random
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from instil.data.formats import read_examples
from instil.data.records import Example, sha256_hex
from instil.errors import DataError, InstilError
from instil.eval.candidates import Candidate, default_max_new_tokens, load_candidate, prompt_examples
from instil.eval.generate import generate_local
from instil.eval.graders import Grader, Output
from instil.spec import JobSpec
from instil.store import Store

__all__ = [
    "FailureModes",
    "Forgetting",
    "Overfitting",
    "StyleCollapse",
    "check_failure_modes",
    "distinct_n",
    "failure_settings",
    "forgetting",
    "overfitting",
    "read_regression_set",
    "style_collapse",
    "token_f1",
]

COLLAPSE_DIVERSITY_RATIO = 0.5
"""Style collapse: distinct-2 below this share of the references' distinct-2."""
COLLAPSE_TOP_SHARE = 0.5
"""Style collapse: more than this share of the answers is one same answer..."""
COLLAPSE_TOP_EXCESS = 0.25
"""...and that share exceeds the references' own most-common share by more than this."""
DRIFT_MAX_NEW_TOKENS = 128
"""Tokens per regression-set answer when neither the caller, the spec nor references say how long answers are."""


@dataclass(frozen=True)
class Overfitting:
    """The primary grader on a sample of the model's own training split against the holdout."""

    train_dataset: str
    """The training split version sampled (``<job>:train@<n>``)."""
    n_train: int
    """Training examples scored."""
    n_holdout: int
    """Holdout examples scored."""
    train_score: float
    """Mean primary score on the training sample."""
    holdout_score: float
    """Mean primary score on the holdout."""
    gap: float
    """``train_score - holdout_score``."""
    threshold: float
    """The largest gap not flagged."""
    flagged: bool
    """Whether the gap exceeds the threshold."""
    explanation: str
    """One line saying what was found."""


@dataclass(frozen=True)
class StyleCollapse:
    """The answers' length and diversity beside the references'."""

    n: int
    """Answers compared."""
    length_mean: float
    """Mean answer length in characters."""
    length_sd: float
    """Standard deviation of the answer length (population)."""
    ref_length_mean: float
    """Mean reference length in characters."""
    ref_length_sd: float
    """Standard deviation of the reference length."""
    distinct2: float
    """Distinct word bigrams over all bigrams of the answers (start and end markers included)."""
    ref_distinct2: float
    """The same of the references."""
    unique_ratio: float
    """Distinct answers over answers."""
    ref_unique_ratio: float
    """Distinct references over references."""
    top_share: float
    """Share of the most common answer."""
    ref_top_share: float
    """Share of the most common reference."""
    flagged: bool
    """Whether the answers collapsed (see the module docstring for the rule)."""
    explanation: str
    """One line saying what was found."""


@dataclass(frozen=True)
class Forgetting:
    """The regression set's score of the tuned model against the base model's."""

    regression_set: str
    """The regression set file."""
    n: int
    """Prompts answered."""
    against: str
    """What answers were scored against: ``references`` (the set's own) or ``base`` (the base model's answers)."""
    base_score: float
    """Mean token F1 of the base model's answers (1.0 when scored against themselves)."""
    tuned_score: float
    """Mean token F1 of the tuned model's answers."""
    drop: float
    """``base_score - tuned_score``."""
    threshold: float
    """The largest drop not flagged."""
    flagged: bool
    """Whether the drop exceeds the threshold."""
    explanation: str
    """One line saying what was found."""
    base_answers: list[str] = field(default_factory=list)
    """The base model's answers, in the set's order (for the report)."""
    tuned_answers: list[str] = field(default_factory=list)
    """The tuned model's answers."""


@dataclass(frozen=True)
class FailureModes:
    """The failure-mode checks of one tuned candidate."""

    candidate: str
    """The candidate's name."""
    style_collapse: StyleCollapse
    """Always checked (it needs only the holdout answers)."""
    overfitting: Overfitting | None = None
    """None when not checked (``eval.overfit_sample: 0``, or no training split recorded); see ``notes``."""
    forgetting: Forgetting | None = None
    """None when the spec has no ``eval.regression_set``."""
    notes: list[str] = field(default_factory=list)
    """Why a check was skipped."""

    @property
    def flags(self) -> list[str]:
        """The names of the flagged checks."""
        checks = {
            "overfitting": self.overfitting,
            "style_collapse": self.style_collapse,
            "forgetting": self.forgetting,
        }
        return [name for name, c in checks.items() if c is not None and c.flagged]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flags": self.flags}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FailureModes:
        """Read what :meth:`to_dict` wrote."""
        over, forget = d.get("overfitting"), d.get("forgetting")
        return cls(
            candidate=d["candidate"],
            style_collapse=StyleCollapse(**d["style_collapse"]),
            overfitting=Overfitting(**over) if over else None,
            forgetting=Forgetting(**forget) if forget else None,
            notes=list(d.get("notes") or []),
        )


# ---- the pure checks -------------------------------------------------------------------------------------------------
_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-words F1 of two texts (case-folded words); 1.0 when both have no words, 0.0 when one has none."""
    p, r = _words(prediction), _words(reference)
    if not p or not r:
        return float(not p and not r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all n-grams of ``texts``, each text framed by start and end markers (so a one-word
    text still has n-grams); 0.0 for no texts."""
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = ["<s>", *_words(text), "</s>"]
        grams.extend(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def _top_share(texts: Sequence[str]) -> float:
    return Counter(t.strip() for t in texts).most_common(1)[0][1] / len(texts) if texts else 0.0


def overfitting(
    train_scores: Sequence[float],
    holdout_scores: Sequence[float],
    *,
    threshold: float = 0.1,
    train_dataset: str = "",
) -> Overfitting:
    """The gap of the mean primary score on the training sample over the holdout's; flagged above ``threshold``."""
    if not train_scores or not holdout_scores:
        raise DataError("overfitting: need at least one training and one holdout score")
    train, hold = statistics.fmean(train_scores), statistics.fmean(holdout_scores)
    gap = train - hold
    flagged = gap > threshold
    verdict = "overfitting" if flagged else "no overfitting"
    explanation = (
        f"{verdict}: {train:.3f} on {len(train_scores)} training examples vs {hold:.3f} on the holdout "
        f"(gap {gap:+.3f}, threshold {threshold:g})"
    )
    return Overfitting(
        train_dataset,
        len(train_scores),
        len(holdout_scores),
        train,
        hold,
        gap,
        threshold,
        flagged,
        explanation,
    )


def style_collapse(outputs: Sequence[str], references: Sequence[str]) -> StyleCollapse:
    """Length and diversity of ``outputs`` beside ``references`` (same examples, same order)."""
    if not outputs or len(outputs) != len(references):
        raise DataError(f"style_collapse: need as many outputs as references, got {len(outputs)} and {len(references)}")
    lengths, ref_lengths = [len(o) for o in outputs], [len(r) for r in references]
    d2, ref_d2 = distinct_n(outputs), distinct_n(references)
    top, ref_top = _top_share(outputs), _top_share(references)
    reasons = []
    if d2 < COLLAPSE_DIVERSITY_RATIO * ref_d2:
        reasons.append(f"distinct-2 {d2:.2f} is under half the references' {ref_d2:.2f}")
    if top > COLLAPSE_TOP_SHARE and top - ref_top > COLLAPSE_TOP_EXCESS:
        reasons.append(f"{top:.0%} of the answers are one same answer (references: {ref_top:.0%})")
    lengths_line = (
        f"length {statistics.fmean(lengths):.0f}±{statistics.pstdev(lengths):.0f} chars vs "
        f"{statistics.fmean(ref_lengths):.0f}±{statistics.pstdev(ref_lengths):.0f}"
    )
    explanation = (
        "style collapse: " + "; ".join(reasons)
        if reasons
        else f"no style collapse: distinct-2 {d2:.2f} vs {ref_d2:.2f}, most common answer {top:.0%} vs {ref_top:.0%}"
    ) + f"; {lengths_line}"
    return StyleCollapse(
        n=len(outputs),
        length_mean=statistics.fmean(lengths),
        length_sd=statistics.pstdev(lengths),
        ref_length_mean=statistics.fmean(ref_lengths),
        ref_length_sd=statistics.pstdev(ref_lengths),
        distinct2=d2,
        ref_distinct2=ref_d2,
        unique_ratio=len({o.strip() for o in outputs}) / len(outputs),
        ref_unique_ratio=len({r.strip() for r in references}) / len(references),
        top_share=top,
        ref_top_share=ref_top,
        flagged=bool(reasons),
        explanation=explanation,
    )


def forgetting(
    base_answers: Sequence[str],
    tuned_answers: Sequence[str],
    references: Sequence[str] | None = None,
    *,
    threshold: float = 0.25,
    regression_set: str = "",
) -> Forgetting:
    """Token F1 of both models' answers against ``references`` (or, without them, against the base's answers); flagged
    when the tuned model's mean falls below the base's by more than ``threshold``."""
    n = len(base_answers)
    if n == 0 or len(tuned_answers) != n or (references is not None and len(references) != n):
        raise DataError("forgetting: need one base answer, one tuned answer (and one reference) per prompt")
    targets, against = (list(references), "references") if references is not None else (list(base_answers), "base")
    base = statistics.fmean(token_f1(a, t) for a, t in zip(base_answers, targets, strict=True))
    tuned = statistics.fmean(token_f1(a, t) for a, t in zip(tuned_answers, targets, strict=True))
    drop = base - tuned
    flagged = drop > threshold
    what = "the references" if against == "references" else "the base model's answers"
    explanation = (
        f"{'forgetting' if flagged else 'no forgetting'}: token F1 against {what} {tuned:.3f} (tuned) vs "
        f"{base:.3f} (base) on {n} out-of-domain prompts (drop {drop:+.3f}, threshold {threshold:g})"
    )
    return Forgetting(
        regression_set,
        n,
        against,
        base,
        tuned,
        drop,
        threshold,
        flagged,
        explanation,
        list(base_answers),
        list(tuned_answers),
    )


# ---- running them on a tuned candidate -------------------------------------------------------------------------------
def read_regression_set(spec: JobSpec) -> tuple[list[Example], str] | None:
    """The regression set's examples and the sha256 of its bytes; None when the spec names none."""
    if spec.eval.regression_set is None:
        return None
    path = spec.resolve(spec.eval.regression_set)
    if not path.is_file():
        raise DataError(
            f"{spec.file or 'the spec'}: eval.regression_set: {path} does not exist",
            hint="point it at a chat JSONL of out-of-domain prompts (relative to the spec file), or remove it",
        )
    examples = list(read_examples(path, format="chat"))
    if not examples:
        raise DataError(f"eval.regression_set {path} holds no examples", hint="add out-of-domain prompts to it")
    return examples, sha256_hex(path.read_bytes())


def failure_settings(spec: JobSpec) -> dict[str, Any]:
    """What the checks' results depend on besides the model: recorded with an eval run so they can be reused."""
    regression = read_regression_set(spec)
    return {
        "overfit_sample": spec.eval.overfit_sample,
        "overfit_threshold": spec.eval.overfit_threshold,
        "seed": spec.eval.seed,
        "forgetting_threshold": spec.eval.forgetting_threshold,
        "regression_set_sha256": regression[1] if regression is not None else None,
    }


def check_failure_modes(
    spec: JobSpec,
    store: Store,
    candidate: Candidate,
    holdout: Sequence[Example],
    outputs: Sequence[str],
    scores: Sequence[float],
    graders: Sequence[Grader],
    *,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
) -> FailureModes:
    """All three checks for a tuned ``candidate``, given its answers to the ``holdout`` and their primary scores.

    Generates the candidate's answers to the training sample and, with a regression set, both models' answers to it.
    """
    if candidate.model_version is None or candidate.kind != "local":
        raise InstilError(f"candidate {candidate.name} is not a tuned model: failure modes are checked on tuned models")
    collapse = style_collapse(outputs, [e.output_text() for e in holdout])
    notes: list[str] = []
    train = _train_sample(spec, store, candidate, notes)
    regression = read_regression_set(spec)
    if train is None and regression is None:
        return FailureModes(candidate.name, collapse, notes=notes)
    loaded = load_candidate(candidate, spec, store)
    model, tokenizer, renderer = loaded.model, loaded.tokenizer, loaded.renderer
    batch_size = batch_size or spec.eval.batch_size

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    over = None
    if train is not None:
        version, sample = train
        # As the holdout was answered: the candidate's prompt, the job's tools, the same length rule.
        shown = prompt_examples(candidate, spec, sample)
        tools = spec.output.tool_dicts()
        limit = max_new_tokens or spec.eval.max_new_tokens or default_max_new_tokens(sample, count)
        gens = generate_local(
            model,
            tokenizer,
            renderer,
            shown,
            system_prompt=None,
            tools=tools,
            max_new_tokens=limit,
            batch_size=batch_size,
        )
        primary = next(g for g in graders if g.name == spec.primary_grader)
        train_scores = [primary.grade(e, Output(g.text, g.tool_calls)).value for e, g in zip(sample, gens, strict=True)]
        over = overfitting(train_scores, scores, threshold=spec.eval.overfit_threshold, train_dataset=version)
    forget = None
    if regression is not None:
        examples = regression[0]
        with_refs = all(e.output_message() is not None for e in examples)
        limit = max_new_tokens or spec.eval.max_new_tokens
        if limit is None:
            limit = default_max_new_tokens(examples, count) if with_refs else DRIFT_MAX_NEW_TOKENS

        def answers(m: Any, tok: Any, rend: Any) -> list[str]:
            # The set's own messages, system prompt included: no job prompt is swapped in.
            gens = generate_local(
                m, tok, rend, examples, system_prompt=None, max_new_tokens=limit, batch_size=batch_size
            )
            return [g.text for g in gens]

        tuned = answers(model, tokenizer, renderer)
        if hasattr(model, "disable_adapter"):  # a PEFT model: the very base it was trained on, adapter off
            with model.disable_adapter():
                base = answers(model, tokenizer, renderer)
        else:
            plain = load_candidate(Candidate("base", "local", "none", "base"), spec, store)
            base = answers(plain.model, plain.tokenizer, plain.renderer)
        references = [e.output_text() for e in examples] if with_refs else None
        where = str(spec.resolve(spec.eval.regression_set or ""))
        forget = forgetting(base, tuned, references, threshold=spec.eval.forgetting_threshold, regression_set=where)
    return FailureModes(candidate.name, collapse, over, forget, notes)


def _train_sample(
    spec: JobSpec, store: Store, candidate: Candidate, notes: list[str]
) -> tuple[str, list[Example]] | None:
    """(the training split's ref, a seeded sample of it) of the candidate's model; None (with a note) when skipped."""
    version = candidate.model_version
    assert version is not None
    if spec.eval.overfit_sample == 0:
        notes.append("overfitting not checked: eval.overfit_sample is 0")
        return None
    ids = [d for d, role in store.get_run(version.run_id).datasets if role == "train"] if version.run_id else []
    if not ids:
        notes.append(f"overfitting not checked: {version.ref} has no training run with a recorded training split")
        return None
    dataset = store.get_version(ids[0])
    if dataset.frozen:  # never happens through train_sft, which refuses a frozen version; never score one as "train"
        raise DataError(f"{version.ref} lists the frozen version {dataset.ref} as its training split")
    examples = list(store.iter_examples(dataset))
    if not examples:
        notes.append(f"overfitting not checked: the training split {dataset.ref} is empty")
        return None
    k = min(spec.eval.overfit_sample, len(examples))
    picked = sorted(random.Random(spec.eval.seed).sample(range(len(examples)), k))
    return dataset.ref, [examples[i] for i in picked]
