"""A tiny random model for the generation and serving tests, with its weights scaled up so greedy answers vary.

    model, tokenizer, renderer = scaled_tiny(examples * 3, tmp_path_factory.mktemp("tiny") / "llama")

The default initialisation of a tiny model repeats one token whatever the prompt, which would hide a position or mask
error (and make equal outputs equal by accident); with every matrix redrawn from N(0, 0.2) the answers differ from
token to token and from prompt to prompt. The redraw is seeded, so the model is the same on every run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from instil.data.records import Example


def scaled_tiny(examples: Iterable[Example], folder: Path, arch: str = "llama", std: float = 0.2, seed: int = 1) -> Any:
    """(model in eval mode, tokenizer, ChatRenderer) of a tiny ``arch`` model built from ``examples`` in ``folder``,
    its 2-D weights redrawn from N(0, ``std``) under ``seed`` (the global torch RNG is left as it was)."""
    import torch
    import transformers

    from instil.train.chat import ChatRenderer
    from instil.train.tiny import build_tiny

    folder = build_tiny(examples, folder, arch=arch)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    return model, tokenizer, ChatRenderer(tokenizer)
