"""Dataset statistics on hand-made examples with known answers."""

from __future__ import annotations

import pytest

from instil.data.records import Example, Message
from instil.data.stats import compute_stats
from instil.data.tokens import TokenCounter


def ex(user: str, answer: str, *, tags=(), rejected: str | None = None) -> Example:
    return Example(
        messages=[Message("user", user), Message("assistant", answer)],
        tags=list(tags),
        rejected=[Message("assistant", rejected)] if rejected is not None else None,
    )


def test_counts_labels_tokens_and_cost():
    data = [ex("hello there", '{"label": "yes"}', tags=["a"]) for _ in range(3)]
    data.append(ex("bye", '{"label": "no"}', rejected='{"label": "yes"}'))
    counter = TokenCounter.estimate()
    stats = compute_stats(
        data,
        counter=counter,
        labels=["yes", "no", "maybe"],
        label_field="label",
        epochs=2,
        price_per_million=10.0,
    )
    assert stats.n_examples == 4 and stats.n_preference == 1
    assert stats.labels == {"yes": 3, "no": 1}
    assert stats.tags == {"a": 3}
    assert stats.messages.min == stats.messages.max == 2
    totals = [counter.count_example(e).total for e in data]
    assert stats.total_tokens.total == sum(totals)
    assert stats.training_tokens == sum(totals) * 2
    assert stats.estimated_cost == pytest.approx(sum(totals) * 2 * 10 / 1e6)
    assert stats.tokens_estimated
    assert any("maybe" in note for note in stats.notes)  # a label with no example is worth a note
    assert stats.output_chars.max == len('{"label": "yes"}')


def test_free_text_outputs_are_not_mistaken_for_labels():
    data = [ex(f"q{i}", f"answer number {i} is here") for i in range(50)]
    stats = compute_stats(data)
    assert stats.labels == {}


def test_length_limit_and_empty_answers_are_noted():
    data = [ex("x " * 400, "ok"), ex("short", "")]
    stats = compute_stats(data, max_tokens=50)
    assert stats.over_limit == 1
    assert any("longer than 50" in n for n in stats.notes)
    assert any("empty final answer" in n for n in stats.notes)
