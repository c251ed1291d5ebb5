"""Chat rendering and loss masks on a tiny character-level tokenizer built here: covers the logic without ../shared."""

from __future__ import annotations

import string

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from chats import chat
from instil.data.records import Example
from instil.train import (
    CHATML_TEMPLATE,
    IGNORE_INDEX,
    ChatRenderer,
    ChatTemplateError,
    mask_preview,
    tokenize_example,
    trained_segments,
)
from instil.train.chat import resolve_template


def tiny_tokenizer(template: str | None = CHATML_TEMPLATE) -> PreTrainedTokenizerFast:
    """One token per printable character, plus ChatML's special tokens and a BOS."""
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(sorted(set(string.printable)))}}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]")),
        unk_token="[UNK]",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = template
    return tok


def test_chatml_trains_assistant_content_and_end_marker_only() -> None:
    r = ChatRenderer(tiny_tokenizer())
    assert r.end_of_turn == "<|im_end|>"
    assert trained_segments(r, chat()) == ["Paris.<|im_end|>", "Berlin.<|im_end|>"]


def test_labels_are_ids_on_trained_tokens_and_ignore_elsewhere() -> None:
    tok = tiny_tokenizer()
    r = ChatRenderer(tok)
    t = tokenize_example(r, chat())
    assert len(t.labels) == len(t.input_ids)
    assert all(label in (IGNORE_INDEX, i) for label, i in zip(t.labels, t.input_ids, strict=True))
    # "Paris." and "Berlin." are one token per character, each marker one token.
    assert t.n_trained == len("Paris.") + 1 + len("Berlin.") + 1
    trained = "".join(tok.convert_ids_to_tokens([label for label in t.labels if label != IGNORE_INDEX]))
    assert trained == "Paris.<|im_end|>Berlin.<|im_end|>"
    assert not t.truncated
    # The rendered text tokenizes to the same ids the template's own tokenization gives.
    assert t.input_ids == tok.apply_chat_template([m.to_dict() for m in chat().messages], return_dict=False)


def test_weight_zero_excludes_a_turn() -> None:
    r = ChatRenderer(tiny_tokenizer())
    assert trained_segments(r, chat(first_weight=0)) == ["Berlin.<|im_end|>"]
    assert trained_segments(r, chat(first_weight=1)) == ["Paris.<|im_end|>", "Berlin.<|im_end|>"]


def test_truncation_cuts_the_end_and_counts_what_is_left() -> None:
    r = ChatRenderer(tiny_tokenizer())
    full = tokenize_example(r, chat())
    cut = tokenize_example(r, chat(), max_length=len(full.input_ids) - 3)
    assert cut.truncated and cut.input_ids == full.input_ids[:-3]
    assert cut.n_trained == full.n_trained - 2  # "." and "<|im_end|>" of the last turn; the final "\n" is untrained


def test_reply_that_looks_like_a_role_header_is_found_at_its_turn() -> None:
    ex = Example.from_dict(
        {
            "messages": [
                {"role": "user", "content": "Say assistant"},
                {"role": "assistant", "content": "assistant"},
            ]
        }
    )
    r = ChatRenderer(tiny_tokenizer())
    rendering = r.locate(ex)
    (span,) = rendering.spans
    assert rendering.text[span.start : span.end] == "assistant<|im_end|>"
    assert rendering.text[: span.start].endswith("<|im_start|>assistant\n")


def test_prompt_ends_where_training_starts() -> None:
    r = ChatRenderer(tiny_tokenizer())
    ex = chat()
    rendering = r.locate(ex)
    prompt = r.prompt(ex)
    assert prompt == rendering.text[: rendering.spans[-1].start]
    assert prompt.endswith("And Germany?<|im_end|>\n<|im_start|>assistant\n")
    # A conversation that ends with the user gets the same prompt.
    assert r.prompt(ex.messages[:-1]) == prompt
    override = r.prompt(ex, system_prompt_override="Be verbose.")
    assert override.startswith("<|im_start|>system\nBe verbose.<|im_end|>\n") and "terse" not in override


def test_tokenizer_without_template_needs_an_explicit_choice() -> None:
    with pytest.raises(ChatTemplateError) as e:
        ChatRenderer(tiny_tokenizer(template=None))
    assert "no chat template" in str(e.value) and "chat_template: chatml" in (e.value.hint or "")
    r = ChatRenderer(tiny_tokenizer(template=None), chat_template="chatml")
    assert r.template_name == "chatml"
    assert trained_segments(r, chat()) == ["Paris.<|im_end|>", "Berlin.<|im_end|>"]


DROPS_SYSTEM = (
    "{% for m in messages %}{% if m['role'] != 'system' %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] "
    "+ '<|im_end|>\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


def test_a_template_that_drops_the_system_prompt_is_an_error_unless_allowed() -> None:
    with pytest.raises(ChatTemplateError) as e:
        ChatRenderer(tiny_tokenizer(DROPS_SYSTEM)).locate(chat())
    assert "drops messages[0] (system: 'You are terse.')" in str(e.value)
    assert "allow_dropped_messages" in (e.value.hint or "")
    r = ChatRenderer(tiny_tokenizer(DROPS_SYSTEM), allow_dropped_messages=True)
    assert r.locate(chat()).dropped == (0,)
    assert trained_segments(r, chat()) == ["Paris.<|im_end|>", "Berlin.<|im_end|>"]


def test_a_template_without_an_end_of_turn_token_is_refused() -> None:
    plain = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="no end-of-turn token"):
        ChatRenderer(tiny_tokenizer(plain))


def test_a_double_bos_is_refused() -> None:
    doubled = "{{ bos_token + bos_token }}" + CHATML_TEMPLATE
    with pytest.raises(ChatTemplateError, match="two BOS"):
        ChatRenderer(tiny_tokenizer(doubled))


def test_template_errors_name_the_source_and_the_fix() -> None:
    strict = "{{ raise_exception('roles must alternate') }}"
    r = ChatRenderer(tiny_tokenizer(), chat_template="chatml")
    r.template = strict
    ex = chat()
    ex.source = "train.jsonl:7"
    with pytest.raises(ChatTemplateError) as e:
        r.render(ex)
    assert str(e.value).startswith("train.jsonl:7: the chat template cannot render") and "alternate" in str(e.value)


def test_tool_calls_are_trained_with_their_end_marker() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
    }
    ex = Example.from_dict(
        {
            "tools": tools,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "assistant", "content": "Sunny."},
            ],
        }
    )
    r = ChatRenderer(tiny_tokenizer())
    assert '"name": "get_weather"' in r.render(ex)  # the tools are rendered into the system block
    assert trained_segments(r, ex) == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>',
        "Sunny.<|im_end|>",
    ]


def test_mask_preview_colours_exactly_the_trained_text() -> None:
    r = ChatRenderer(tiny_tokenizer())
    preview = mask_preview(r, chat())
    assert preview.plain == r.render(chat())
    green = [preview.plain[s.start : s.end] for s in preview.spans if "green" in str(s.style)]
    assert "".join(green) == "Paris.<|im_end|>Berlin.<|im_end|>"


def test_resolve_template(tmp_path) -> None:
    path = tmp_path / "t.jinja"
    path.write_text(CHATML_TEMPLATE, encoding="utf-8")
    assert resolve_template(str(path)) == (CHATML_TEMPLATE, None)
    assert resolve_template("chatml") == (CHATML_TEMPLATE, "<|im_end|>")
    with pytest.raises(ChatTemplateError, match="neither a built-in"):
        resolve_template("chatmll")
    with pytest.raises(ChatTemplateError, match="cannot read"):
        resolve_template(str(tmp_path / "missing.jinja"))
