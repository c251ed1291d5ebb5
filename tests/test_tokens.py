"""Token counting: the estimate, and real tokenizers from ../shared (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from instil.data.records import Example, Message
from instil.data.tokens import MESSAGE_OVERHEAD, REPLY_OVERHEAD, TokenCounter
from instil.errors import InstilError
from instil.spec import parse_spec

SHARED = Path(__file__).parents[2] / "shared"
TOKENIZERS = SHARED / "tokenizers"
needs_shared = pytest.mark.skipif(not TOKENIZERS.is_dir(), reason="../shared/tokenizers is absent")

EXAMPLE = Example(
    [
        Message("system", "You are a terse assistant."),
        Message("user", "What is 2+2?"),
        Message("assistant", "4."),
        Message("user", "And 3+3?"),
        Message("assistant", "6."),
    ]
)

SPEC = """
name: t
system_prompt: Answer.
graders: [{name: exact, type: exact_match, primary: true}]
data: [{path: d.jsonl}]
model:
  base: BASE
"""


def test_estimate_is_four_chars_per_token_plus_overheads() -> None:
    counter = TokenCounter.estimate()
    assert counter.estimated and counter.context_length is None
    assert counter.count_text("") == 0
    assert counter.count_text("abcd") == 1 and counter.count_text("abcde") == 2
    counts = counter.count_example(EXAMPLE)
    per = [counter.count_text(m.content) + MESSAGE_OVERHEAD for m in EXAMPLE.messages]
    assert counts.messages == tuple(per)
    assert counts.assistant == per[2] + per[4]
    assert counts.total == sum(per) + REPLY_OVERHEAD and not counts.templated


def test_preference_total_counts_the_longer_branch() -> None:
    counter = TokenCounter.estimate()
    short = Example([Message("user", "q"), Message("assistant", "ok")], rejected=[Message("assistant", "x" * 400)])
    assert counter.count_example(short).total >= 100


def test_tiny_base_model_means_estimate(tmp_path: Path) -> None:
    spec = parse_spec(SPEC.replace("BASE", "tiny"), root=tmp_path)
    assert TokenCounter.from_spec(spec).estimated


def test_missing_tokenizer_is_a_clear_error_and_never_downloads(tmp_path: Path) -> None:
    spec = parse_spec(SPEC.replace("BASE", "no-such-org/no-such-model-xyz"), root=tmp_path)
    with pytest.raises(InstilError, match="cannot load the tokenizer 'no-such-org/no-such-model-xyz'") as err:
        TokenCounter.from_spec(spec)
    assert "never downloads" in (err.value.hint or "")


@needs_shared
def test_real_tokenizer_with_chat_template_counts_the_rendered_chat() -> None:
    from transformers import AutoTokenizer

    path = TOKENIZERS / "qwen2.5-instruct"
    counter = TokenCounter.from_tokenizer(path)
    assert not counter.estimated and counter.has_chat_template
    tok = AutoTokenizer.from_pretrained(str(path))
    chat = [m.to_dict() for m in EXAMPLE.messages]
    expected = len(tok.apply_chat_template(chat, tokenize=True, return_dict=False))
    counts = counter.count_example(EXAMPLE)
    assert counts.templated and counts.total == expected
    assert counter.count_text("hello world") == len(tok.encode("hello world", add_special_tokens=False))


@needs_shared
def test_real_tokenizer_without_template_sums_messages() -> None:
    counter = TokenCounter.from_tokenizer(TOKENIZERS / "smollm-135m-finetune-output-with-pad")
    assert not counter.has_chat_template
    counts = counter.count_example(EXAMPLE)
    assert not counts.templated and counts.total == sum(counts.messages) + REPLY_OVERHEAD


@needs_shared
def test_spec_chat_template_file_overrides(tmp_path: Path) -> None:
    (tmp_path / "t.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    base = TOKENIZERS / "smollm-135m-finetune-output-with-pad"
    spec = parse_spec(SPEC.replace("BASE", str(base)) + "  chat_template: t.jinja\n", root=tmp_path)
    counter = TokenCounter.from_spec(spec)
    counts = counter.count_example(EXAMPLE)
    joined = "".join(m.content for m in EXAMPLE.messages)
    assert counts.templated and counts.total == counter.count_text(joined)
