"""Benchmark: what constrained decoding (llguidance) costs, beside free generation, measured in one run.

    .venv/bin/python benchmarks/constrained.py                  # ../shared's tokenizers, the tiny model
    .venv/bin/python benchmarks/constrained.py --json out.json

Two measures:

1. **The mask per token** on real vocabularies (the Qwen2.5 and Llama 3 tokenizers in ``../shared/tokenizers``, 151k
   and 128k tokens; skipped without them): compiling the triage schema, and computing the allowed-token mask at each
   step of a valid answer, then consuming its token; p50 and p99 in microseconds. This is what one constrained row
   adds to each generated token, whatever the model.
2. **Generation end to end** on the tiny model: a batch of 8 prompts, free and with every row held to the schema
   (greedy, ``--max-tokens``), tokens/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SHARED = HERE.parents[2] / "shared" / "tokenizers"
SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "account", "shipping", "other"]},
        "urgent": {"type": "boolean"},
        "summary": {"type": "string", "maxLength": 40},
    },
    "required": ["category", "urgent", "summary"],
    "additionalProperties": False,
}
ANSWER = '{"category": "billing", "urgent": true, "summary": "Charged twice for the March invoice."}'


def mask_cost(folder: Path) -> dict:
    import torch
    from transformers import AutoTokenizer

    from instil.eval.constrain import Constrainer, schema_grammar

    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [0]
    began = time.perf_counter()
    constrainer = Constrainer(tokenizer, eos, None)
    tokenizer_s = time.perf_counter() - began
    began = time.perf_counter()
    matcher = constrainer.matcher(schema_grammar(SCHEMA))
    compile_ms = (time.perf_counter() - began) * 1000
    ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    words = (len(tokenizer) + 31) // 32
    mask = torch.zeros(words, dtype=torch.int32)
    steps = []
    for token in ids:
        t0 = time.perf_counter()
        matcher.unsafe_compute_mask_ptr(mask.data_ptr(), mask.numel() * 4)
        ok = matcher.consume_token(token)
        steps.append((time.perf_counter() - t0) * 1e6)
        if not ok:
            raise SystemExit(f"{folder.name}: the valid answer was refused at token {token}: {matcher.get_error()}")
    steps.sort()
    return {
        "tokenizer": folder.name,
        "vocab": len(tokenizer),
        "tokenizer_load_s": round(tokenizer_s, 3),
        "compile_ms": round(compile_ms, 2),
        "tokens": len(ids),
        "mask_p50_us": round(statistics.median(steps), 1),
        "mask_p99_us": round(steps[min(len(steps) - 1, int(len(steps) * 0.99))], 1),
    }


def generation_cost(max_tokens: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    from instil.eval.constrain import Constrainer, schema_grammar
    from instil.eval.generate import Row, generate_rows, stop_token_ids
    from test_generate import _examples
    from tiny_models import scaled_tiny

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, renderer = scaled_tiny(_examples() * 3, Path(tmp) / "tiny", arch="qwen2")
    ids = [list(tokenizer(renderer.prompt(e), add_special_tokens=False)["input_ids"]) for e in _examples()]
    ids = (ids * 2)[:8]
    constrainer = Constrainer.for_model(model, tokenizer, stop_token_ids(tokenizer, renderer, model))
    grammar = schema_grammar(SCHEMA)
    out = {}
    for kind in ("free", "constrained", "free", "constrained"):  # each twice: the second run is the one kept
        rows = [Row(list(i), max_tokens, matcher=constrainer.matcher(grammar) if kind == "constrained" else None)
                for i in ids]  # fmt: skip
        torch.manual_seed(0)
        began = time.perf_counter()
        gens = generate_rows(model, tokenizer, renderer, rows)
        seconds = time.perf_counter() - began
        tokens = sum(g.output_tokens for g in gens)
        valid = sum(1 for g in gens if _fits(g.text))
        cut = sum(1 for g in gens if g.finish_reason == "length")
        out[kind] = {"seconds": round(seconds, 3), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
                     "valid_json": f"{valid}/{len(gens)}", "cut": cut}  # fmt: skip
    out["slowdown"] = round(out["free"]["tokens_per_s"] / out["constrained"]["tokens_per_s"], 2)
    return out


def _fits(text: str) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    console = Console()
    masks = [mask_cost(SHARED / name) for name in ("qwen2.5-instruct", "llama-3-instruct") if (SHARED / name).is_dir()]
    table = Table(title="llguidance: the token mask on real vocabularies (the triage schema)")
    for col in ("tokenizer", "vocab", "tokenizer load s", "compile ms", "answer tokens", "mask p50 µs", "mask p99 µs"):
        table.add_column(col, justify="right")
    for m in masks:
        table.add_row(*(str(v) for v in m.values()))
    console.print(table)
    gen = generation_cost(args.max_tokens)
    table = Table(title=f"tiny model, a batch of 8, greedy, {args.max_tokens} new tokens at most")
    for col in ("", "seconds", "tokens", "tokens/s", "valid JSON of the schema", "cut by max_tokens"):
        table.add_column(col, justify="right")
    for kind in ("free", "constrained"):
        table.add_row(kind, *(str(v) for v in gen[kind].values()))
    console.print(table)
    console.print(f"constrained is {gen['slowdown']}x the time per token of free generation")
    if args.json:
        args.json.write_text(json.dumps({"masks": masks, "generation": gen}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
