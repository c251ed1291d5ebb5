"""Token ids and loss masks for training: loss only on what the model should learn.

    renderer = ChatRenderer(tokenizer)
    tok = tokenize_example(renderer, example, max_length=2048)   # TokenizedExample(input_ids, labels, n_trained, ...)
    trained_segments(renderer, example)                          # ["Paris.<|im_end|>", "Berlin.<|im_end|>"]
    rich.print(mask_preview(renderer, example))                  # trained text green, the rest dim (--show-mask)

What is trained: the assistant turns that :meth:`ChatRenderer.locate` finds (content + end-of-turn marker; a turn with
``weight: 0`` is left out), never system, user or tool text. Labels are the token ids there and -100 elsewhere, aligned
with ``input_ids`` (the model shifts them itself).

The whitespace policy, at token level: a token is trained when any of its characters lies in a trained span. So a
space the tokenizer folds into the first content token (Mistral's ``[/INST] Paris`` -> ``▁Paris``) is trained, as the
model must produce that token; so is a newline a special token swallows (Phi-3's ``<|end|>`` absorbs the ``\\n`` after
it). Whitespace that is its own token after the marker is never trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from instil.data.records import Example
from instil.train.chat import ChatRenderer

__all__ = ["IGNORE_INDEX", "TokenizedExample", "mask_preview", "tokenize_example", "trained_segments"]

IGNORE_INDEX = -100
"""The label that excludes a token from the loss (PyTorch's cross-entropy ``ignore_index``)."""


@dataclass(frozen=True, slots=True)
class TokenizedExample:
    """One example as the trainer sees it."""

    input_ids: list[int]
    """The token ids of the rendered conversation (BOS included when the template writes it)."""
    labels: list[int]
    """``input_ids`` where the loss is taken, ``IGNORE_INDEX`` elsewhere; same length as ``input_ids``."""
    n_trained: int
    """How many tokens carry loss (after truncation)."""
    truncated: bool
    """True when the conversation was longer than ``max_length`` and its end was cut."""


def _token_mask(renderer: ChatRenderer, example: Example) -> tuple[str, list[int], list[tuple[int, int]], list[bool]]:
    """The rendered text, its token ids and offsets, and whether each token is trained."""
    rendering = renderer.locate(example)
    ids, offsets = renderer.encode(rendering.text)
    trained = [any(a < s.end and b > s.start for s in rendering.spans) for a, b in offsets]
    return rendering.text, ids, offsets, trained


def tokenize_example(renderer: ChatRenderer, example: Example, *, max_length: int | None = None) -> TokenizedExample:
    """Token ids and labels of one example; the end is cut at ``max_length`` tokens."""
    _, ids, _, trained = _token_mask(renderer, example)
    labels = [tid if t else IGNORE_INDEX for tid, t in zip(ids, trained, strict=True)]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return TokenizedExample(
        input_ids=ids,
        labels=labels,
        n_trained=sum(1 for x in labels if x != IGNORE_INDEX),
        truncated=truncated,
    )


def _runs(trained: list[bool]) -> list[tuple[int, int]]:
    """Index ranges [i, j) of consecutive trained tokens."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(trained):
        if trained[i]:
            j = i
            while j < len(trained) and trained[j]:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


def trained_segments(renderer: ChatRenderer, example: Example) -> list[str]:
    """The text of each run of trained tokens, as the tokens cover it: what the model learns to write."""
    text, _, offsets, trained = _token_mask(renderer, example)
    return [text[offsets[i][0] : offsets[j - 1][1]] for i, j in _runs(trained)]


def mask_preview(renderer: ChatRenderer, example: Example) -> Text:
    """The rendered example with trained tokens in green and the rest dim: ``instil train --show-mask``."""
    text, _, offsets, trained = _token_mask(renderer, example)
    out = Text()
    pos = 0
    for (a, b), t in zip(offsets, trained, strict=True):
        if a > pos:  # characters no token covers (rare: normalisers that drop text)
            out.append(text[pos:a], style="dim")
        a = max(a, pos)  # some tokenizers give overlapping offsets for byte-split characters
        if b > a:
            out.append(text[a:b], style="bold green" if t else "dim")
            pos = b
    if pos < len(text):
        out.append(text[pos:], style="dim")
    return out
