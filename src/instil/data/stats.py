"""Dataset statistics: what `instil data stats` prints.

    stats = compute_stats(examples, counter=TokenCounter.estimate(), epochs=3)
    stats.to_dict()

Counts, token distributions (messages per example, total and assistant tokens), label balance, output-length spread,
and the training-token count and cost estimate for N epochs. Streams: it holds numbers, never the examples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from instil.data.records import Example
from instil.data.tokens import TokenCounter

__all__ = ["DatasetStats", "Distribution", "compute_stats"]


@dataclass(frozen=True)
class Distribution:
    """Summary of one per-example quantity."""

    min: float
    p50: float
    p90: float
    p99: float
    max: float
    mean: float
    total: float

    @classmethod
    def of(cls, values: list[int]) -> Distribution:
        if not values:
            return cls(0, 0, 0, 0, 0, 0, 0)
        a = np.asarray(values, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(
            float(a.min()),
            float(p50),
            float(p90),
            float(p99),
            float(a.max()),
            float(a.mean()),
            float(a.sum()),
        )


@dataclass(frozen=True)
class DatasetStats:
    """What a dataset holds, in numbers."""

    n_examples: int
    """Examples read."""
    n_preference: int
    """Examples with a non-preferred output (preference pairs)."""
    n_with_tools: int
    """Examples that offer tools."""
    messages: Distribution
    """Messages per example."""
    total_tokens: Distribution
    """Tokens per example, the whole chat."""
    assistant_tokens: Distribution
    """Tokens per example in assistant turns (what the loss is taken on)."""
    output_chars: Distribution
    """Characters of the final assistant answer."""
    labels: dict[str, int]
    """Label counts, when the job has labels (or the outputs are short labels)."""
    tags: dict[str, int]
    """Tag counts."""
    tokens_estimated: bool
    """True when token counts are estimates (no real tokenizer was given)."""
    epochs: float
    """Epochs the training-token figure is for."""
    training_tokens: int
    """Tokens processed in training: total tokens times epochs."""
    price_per_million: float | None = None
    """Price per million training tokens, when given."""
    estimated_cost: float | None = None
    """training_tokens * price_per_million / 1e6."""
    over_limit: int = 0
    """Examples longer than the given token limit."""
    notes: list[str] = field(default_factory=list)
    """Warnings worth reading (label imbalance, very short outputs, ...)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_stats(
    examples: Iterable[Example],
    *,
    counter: TokenCounter | None = None,
    labels: list[str] | None = None,
    label_field: str | None = None,
    epochs: float = 3.0,
    price_per_million: float | None = None,
    max_tokens: int | None = None,
) -> DatasetStats:
    """Compute :class:`DatasetStats` in one pass over ``examples``."""
    counter = counter or TokenCounter.estimate()
    n = n_pref = n_tools = over = 0
    messages: list[int] = []
    total: list[int] = []
    assistant: list[int] = []
    out_chars: list[int] = []
    label_counts: Counter[str] = Counter()
    tag_counts: Counter[str] = Counter()
    guess_labels = labels is None and label_field is None
    for ex in examples:
        n += 1
        n_pref += ex.rejected is not None
        n_tools += bool(ex.tools)
        messages.append(len(ex.messages))
        tokens = counter.count_example(ex)
        total.append(tokens.total)
        assistant.append(tokens.assistant)
        if max_tokens is not None and tokens.total > max_tokens:
            over += 1
        out_chars.append(len(ex.output_text()))
        tag_counts.update(ex.tags)
        label = ex.label(label_field)
        # Without a label set, only short single-line outputs are counted as labels (a classifier's answers).
        if label is not None and (not guess_labels or (len(label) <= 40 and "\n" not in label)):
            label_counts[label] += 1

    notes: list[str] = []
    if guess_labels and label_counts and len(label_counts) > max(20, n // 5):
        label_counts.clear()  # outputs are free text, not labels
    if labels:
        missing = [lab for lab in labels if label_counts.get(lab, 0) == 0]
        if missing:
            notes.append(f"labels with no example: {missing}")
    if label_counts and len(label_counts) > 1:
        most, least = max(label_counts.values()), min(label_counts.values())
        if least and most / least >= 10:
            notes.append(f"label imbalance: the most common label has {most / least:.0f}x the rarest's examples")
    if n and sum(1 for c in out_chars if c == 0) > 0:
        notes.append(f"{sum(1 for c in out_chars if c == 0)} example(s) have an empty final answer")
    if over:
        notes.append(f"{over} example(s) are longer than {max_tokens} tokens")

    training_tokens = int(round(sum(total) * epochs))
    cost = training_tokens * price_per_million / 1e6 if price_per_million is not None else None
    return DatasetStats(
        n_examples=n,
        n_preference=n_pref,
        n_with_tools=n_tools,
        messages=Distribution.of(messages),
        total_tokens=Distribution.of(total),
        assistant_tokens=Distribution.of(assistant),
        output_chars=Distribution.of(out_chars),
        labels=dict(label_counts.most_common()),
        tags=dict(tag_counts.most_common()),
        tokens_estimated=counter.estimated,
        epochs=epochs,
        training_tokens=training_tokens,
        price_per_million=price_per_million,
        estimated_cost=cost,
        over_limit=over,
        notes=notes,
    )
