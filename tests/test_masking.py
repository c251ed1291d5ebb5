"""Loss masks through the real chat templates in ../shared/tokenizers, against trained strings written by hand.

Whitespace policy (see instil.train.masking): a token is trained when it overlaps the assistant content + end-of-turn
marker. So Mistral's trained text starts with the space its "▁Paris" token carries, and Phi-3's "<|end|>" token carries
the newline after it; a newline that is its own token after the marker is never trained.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from chats import chat
from instil.data.records import Example
from instil.train import IGNORE_INDEX, ChatRenderer, ChatTemplateError, tokenize_example, trained_segments

TOKENIZERS = Path(__file__).resolve().parents[2] / "shared" / "tokenizers"
pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not TOKENIZERS.is_dir(), reason="needs ../shared/tokenizers beside the checkout"),
]


@cache
def load(name: str):
    transformers = pytest.importorskip("transformers")
    if name.startswith("mistral"):
        # Its tokenizer.model is converted on load, which needs both.
        pytest.importorskip("sentencepiece")
        pytest.importorskip("google.protobuf")
    return transformers.AutoTokenizer.from_pretrained(str(TOKENIZERS / name))


EXPECTED = {
    "qwen3": ["Paris.<|im_end|>", "Berlin.<|im_end|>"],
    "qwen2.5-instruct": ["Paris.<|im_end|>", "Berlin.<|im_end|>"],
    "llama-3-instruct": ["Paris.<|eot_id|>", "Berlin.<|eot_id|>"],
    "gemma-3-it": ["Paris.<end_of_turn>", "Berlin.<end_of_turn>"],
    "mistral-7b-instruct-v0.3": [" Paris.</s>", " Berlin.</s>"],
    "phi-3-mini-4k-instruct": ["Paris.<|end|>\n", "Berlin.<|end|>\n"],
    "phi-3-mini-128k-instruct": ["Paris.<|end|>", "Berlin.<|end|>"],
}

# What each template writes just before the final answer: the prompt given at eval and serving time.
PROMPT_ENDS = {
    "qwen3": "And Germany?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "qwen2.5-instruct": "And Germany?<|im_end|>\n<|im_start|>assistant\n",
    "llama-3-instruct": "And Germany?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma-3-it": "And Germany?<end_of_turn>\n<start_of_turn>model\n",
    "mistral-7b-instruct-v0.3": "[INST] You are terse.\n\nAnd Germany?[/INST]",
    "phi-3-mini-4k-instruct": "And Germany?<|end|>\n<|assistant|>\n",
    "phi-3-mini-128k-instruct": "And Germany?<|end|>\n<|assistant|>\n",
}

DROPS_SYSTEM = {"phi-3-mini-128k-instruct"}


def renderer(name: str) -> ChatRenderer:
    return ChatRenderer(load(name), allow_dropped_messages=name in DROPS_SYSTEM)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_trained_strings(name: str) -> None:
    assert trained_segments(renderer(name), chat()) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_weight_zero_excludes_the_first_turn(name: str) -> None:
    assert trained_segments(renderer(name), chat(first_weight=0)) == EXPECTED[name][1:]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ids_match_the_templates_own_tokenization(name: str) -> None:
    tok = load(name)
    t = tokenize_example(renderer(name), chat())
    ids = tok.apply_chat_template([m.to_dict() for m in chat().messages], tokenize=True, return_dict=False)
    assert t.input_ids == list(ids)
    assert all(label in (IGNORE_INDEX, i) for label, i in zip(t.labels, t.input_ids, strict=True))
    if tok.bos_token_id is not None and t.input_ids[0] == tok.bos_token_id:
        assert t.input_ids[1] != tok.bos_token_id  # the template's BOS, not a second one


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_prompt_ends_where_the_trained_tokens_begin(name: str) -> None:
    r = renderer(name)
    rendering = r.locate(chat())
    prompt = r.prompt(chat())
    assert prompt.endswith(PROMPT_ENDS[name])
    # The prompt is the training text up to the final answer's first trained token.
    _, offsets = r.encode(rendering.text)
    first = next(a for a, b in offsets if b > rendering.spans[-1].start)
    assert prompt == rendering.text[:first]


def test_phi3_128k_drops_the_system_prompt() -> None:
    with pytest.raises(ChatTemplateError) as e:
        ChatRenderer(load("phi-3-mini-128k-instruct")).locate(chat())
    assert "drops messages[0] (system: 'You are terse.')" in str(e.value)
    assert "allow_dropped_messages" in (e.value.hint or "")
    assert renderer("phi-3-mini-128k-instruct").locate(chat()).dropped == (0,)


def test_tokenizer_without_template_needs_a_choice() -> None:
    tok = load("smollm-135m-finetune-output-with-pad")
    with pytest.raises(ChatTemplateError) as e:
        ChatRenderer(tok)
    assert "model.chat_template: chatml" in (e.value.hint or "")
    r = ChatRenderer(tok, chat_template="chatml")
    assert trained_segments(r, chat()) == ["Paris.<|im_end|>", "Berlin.<|im_end|>"]
    assert r.stop_strings == ["<|im_end|>", "<|endoftext|>"]


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = {
    "id": "call12345",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
}


def tool_chat() -> Example:
    return Example.from_dict(
        {
            "tools": TOOLS,
            "messages": [
                {"role": "system", "content": "Use tools."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call12345", "content": "sunny"},
                {"role": "assistant", "content": "Sunny."},
            ],
        }
    )


QWEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'


@pytest.mark.parametrize("name", ["qwen2.5-instruct", "qwen3"])
def test_tool_calls_through_qwen_templates(name: str) -> None:
    r = renderer(name)
    assert "<tools>\n" + '{"type": "function", "function": {"name": "get_weather"' in r.render(tool_chat())
    assert trained_segments(r, tool_chat()) == [QWEN_CALL, "Sunny.<|im_end|>"]


def test_llama3_template_drops_tool_calls() -> None:
    with pytest.raises(ChatTemplateError, match=r"drops messages\[2\] \(assistant: tool calls to get_weather\)"):
        renderer("llama-3-instruct").locate(tool_chat())


def test_gemma_template_refuses_tool_messages() -> None:
    with pytest.raises(ChatTemplateError, match="cannot render this conversation.*alternate"):
        renderer("gemma-3-it").locate(tool_chat())
