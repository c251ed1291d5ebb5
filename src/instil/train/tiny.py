"""The ``tiny`` preset: a small random-initialised model of a real architecture, built from the job's own data.

It lets the whole loop (train, eval, serve) run on a laptop CPU in minutes. It starts knowing nothing: its tokenizer
is trained on the job's texts and its weights are random, so whatever it does after training it learned from the
job's examples alone. Use it to try the loop and to test; use a real pretrained base for a model worth shipping.

    from instil.train.tiny import build_tiny
    path = build_tiny(examples, Path("out/tiny"), arch="qwen2")   # a folder that from_pretrained loads
    model = AutoModelForCausalLM.from_pretrained(path)

The folder holds ``config.json``, ``model.safetensors``, the tokenizer files (with instil's built-in ``chatml`` chat
template, :data:`instil.train.chat.CHATML_TEMPLATE`, which renders ``tools`` and ``add_generation_prompt``) and
``instil_tiny.json``, which records the settings and that the weights are random. The same data and settings give
byte-identical ``tokenizer.json`` and ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

from instil.data.records import Example, canonical_json, sha256_hex
from instil.errors import DataError, InstilError
from instil.train.chat import CHATML_TEMPLATE

__all__ = [
    "TINY_MARKER",
    "TINY_NOTICE",
    "TinySettings",
    "build_tiny",
    "tiny_cache_key",
    "tiny_data_hash",
]

TINY_MARKER = "instil_tiny.json"
"""The file in a tiny model's folder that records its settings; its presence marks the model as random-initialised."""

TINY_NOTICE = (
    "The tiny model is random-initialised and starts knowing nothing: its tokenizer was trained on this job's "
    "texts and its weights are random, so it can only learn what the job's examples show. Use it to try the loop; "
    "set model.base to a pretrained model for results worth shipping."
)
"""What the CLI and reports print whenever a tiny model is used."""

Arch = Literal["llama", "qwen2"]

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"

# Text the chat template adds around messages; the tokenizer learns it too, so a rendered chat tokenizes compactly.
_TEMPLATE_TEXTS = (
    "system\n",
    "user\n",
    "assistant\n",
    "tool\n",
    "# Tools\n\nYou may call these functions.\n<tools>\n</tools>\n",
    '<tool_call>{"name": "", "arguments": {}}</tool_call>',
)

# transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX, copied: a private detail of transformers may move.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_BUILD_VERSION = 2
"""Bumped whenever the build changes its output for the same inputs, so caches keyed on settings rebuild."""


@dataclass(frozen=True)
class TinySettings:
    """Everything that decides a tiny model, besides the data. Recorded in ``instil_tiny.json``."""

    arch: Arch = "llama"
    """The architecture: ``llama`` (LlamaForCausalLM) or ``qwen2`` (Qwen2ForCausalLM)."""
    vocab_size: int = 2048
    """The most tokens the tokenizer may have; fewer when the data has fewer frequent pairs to merge."""
    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 2
    """Number of decoder layers."""
    num_heads: int = 4
    """Attention heads per layer (key/value heads too: no grouped-query sharing at this size)."""
    max_position_embeddings: int = 4096
    """The longest sequence the model accepts (RoPE positions; also the tokenizer's ``model_max_length``)."""
    seed: int = 0
    """Seed of the weight initialisation."""

    def validate(self) -> None:
        problems = []
        if self.arch not in ("llama", "qwen2"):
            problems.append(f"arch is {self.arch!r}; use 'llama' or 'qwen2'")
        if self.vocab_size < 300:
            problems.append(f"vocab_size is {self.vocab_size}; it must be at least 300 (256 bytes + special tokens)")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            problems.append(
                f"hidden_size {self.hidden_size} must split into {self.num_heads} heads of an even size (RoPE)"
            )
        if min(self.num_layers, self.num_heads, self.max_position_embeddings) < 1:
            problems.append("num_layers, num_heads and max_position_embeddings must be at least 1")
        if problems:
            raise InstilError("invalid tiny model settings: " + "; ".join(problems))


def build_tiny(
    examples: Iterable[Example],
    out_dir: Path,
    *,
    arch: Arch = "llama",
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``examples``, build a random model of ``arch`` on it, and save both into ``out_dir``.

    Returns ``out_dir``. Raises :class:`DataError` when the examples hold no text to train a tokenizer on.
    """
    settings = TinySettings(arch, vocab_size, hidden_size, num_layers, num_heads, max_position_embeddings, seed)
    settings.validate()
    examples = list(examples)
    texts = list(_texts(examples))
    if not any(t.strip() for t in texts[len(_TEMPLATE_TEXTS) :]):
        raise DataError(
            f"cannot build the tiny model: the {len(examples)} example(s) given hold no text to train a tokenizer on",
            hint="check that the job's data files are not empty, or set model.base to a pretrained model",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer(texts, settings)
    model = _random_model(settings, tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    record = {
        "random_initialised": True,
        "notice": TINY_NOTICE,
        "settings": asdict(settings),
        "vocab_size": len(tokenizer),
        "n_parameters": model.num_parameters(),
        "n_examples": len(examples),
        "data_sha256": tiny_data_hash(examples),
        "build_version": _BUILD_VERSION,
    }
    (out_dir / TINY_MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir


def tiny_data_hash(examples: Iterable[Example]) -> str:
    """sha256 over the examples' content hashes, in order: what a tiny model's tokenizer was trained on."""
    return sha256_hex("\n".join(e.content_hash() for e in examples))


def tiny_cache_key(examples: Iterable[Example], settings: TinySettings) -> str:
    """A hash naming what :func:`build_tiny` would build: the data, the settings, the build and library versions.

    Library versions are in it because a new tokenizers, transformers or torch may build other bytes from the same
    data and seed.
    """
    return sha256_hex(
        canonical_json(
            {
                "settings": asdict(settings),
                "data": tiny_data_hash(examples),
                "build": _BUILD_VERSION,
                "versions": {p: metadata.version(p) for p in ("tokenizers", "transformers", "torch")},
            }
        )
    )


def _texts(examples: list[Example]) -> Iterator[str]:
    yield from _TEMPLATE_TEXTS
    for example in examples:
        for message in [*example.messages, *(example.rejected or [])]:
            yield message.text()
        if example.tools:
            yield canonical_json(example.tools)


def _train_tokenizer(texts: list[str], settings: TinySettings):
    # Byte-level BPE (GPT-2 / Qwen style): every string is encodable, so there is no unknown token.
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # The Rust trainer counts words in parallel; one thread keeps the merge order (and tokenizer.json) reproducible.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        backend = Tokenizer(models.BPE())
        # Qwen2's exact pipeline (NFC, its split regex with one digit per token, then bytes): transformers rebuilds
        # a qwen2 model's tokenizer with it on load, so training with anything else would tokenize differently.
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=settings.vocab_size,
            min_frequency=2,
            show_progress=False,
            special_tokens=[ENDOFTEXT, IM_START, IM_END],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=settings.max_position_embeddings,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    # Tool-call tags as single tokens, so a serving parser can find them; not special, so decode keeps them.
    tokenizer.add_tokens([TOOL_CALL_OPEN, TOOL_CALL_CLOSE])
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _random_model(settings: TinySettings, tokenizer):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END),
        "pad_token_id": tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    }
    shape = {
        "hidden_size": settings.hidden_size,
        "intermediate_size": settings.hidden_size * 4,
        "num_hidden_layers": settings.num_layers,
        "num_attention_heads": settings.num_heads,
        "num_key_value_heads": settings.num_heads,
        "max_position_embeddings": settings.max_position_embeddings,
        "tie_word_embeddings": True,  # halves the parameters at this size, as small Qwen2 models do
    }
    if settings.arch == "llama":
        config_cls, model_cls = LlamaConfig, LlamaForCausalLM
    else:
        config_cls, model_cls = Qwen2Config, Qwen2ForCausalLM
    config = config_cls(**ids, **shape)
    # The global RNG is what transformers' _init_weights draws from; a fork keeps the caller's RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = model_cls(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token_id"],
        eos_token_id=[ids["eos_token_id"], ids["pad_token_id"]],
        pad_token_id=ids["pad_token_id"],
    )
    return model.to(torch.float32)
