"""Benchmark: batched local generation (``generate_local``) against one-by-one ``model.generate``, one run.

    .venv/bin/python benchmarks/eval_throughput.py                       # tiny preset and a ~100M Llama, 64 prompts
    .venv/bin/python benchmarks/eval_throughput.py --n 32 --skip-large --prompt full

Two random-initialised models on the same tokenizer: the ``tiny`` preset (``build_tiny`` on the triage example's
golden and traffic sets) and a ~100M-parameter Llama (hidden 768, 12 layers, 12 heads, MLP 2560). Their weights are
drawn with a larger spread than the usual initialisation (``--init-std``), because the usual one makes a random model
repeat one token, which would make the output check below pass trivially.

The prompts are the first ``--n`` tickets of the triage holdout, rendered by the chat template with the system prompt
that ``--prompt`` picks: ``short`` (the job's ``short_prompt``, what a distilled model runs with; the default),
``full`` (the long best prompt) or ``none``. Both ways are greedy with the same ``--max-new-tokens`` and stop tokens.
A random model may end its turn early; the stopped request then does less work on both sides, so the table gives
generated tokens per second beside requests per second. The script checks that both ways give the same answers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

from instil.data.records import Example
from instil.eval.generate import generate_local, stop_token_ids
from instil.examples.triage.generate import SPEC_PATH, generate
from instil.spec import load_spec
from instil.train.chat import ChatRenderer
from instil.train.tiny import build_tiny


def read(path: Path) -> list[Example]:
    with path.open(encoding="utf-8") as f:
        return [Example.from_dict(json.loads(line)) for line in f if line.strip()]


def spread_weights(model: torch.nn.Module, std: float, seed: int) -> None:
    """Redraw every matrix from N(0, std): varied greedy answers, so equal outputs are not equal by accident."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)


def large_llama(tokenizer, tiny_config) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        intermediate_size=2560,
        max_position_embeddings=tiny_config.max_position_embeddings,
        bos_token_id=tiny_config.bos_token_id,
        eos_token_id=tiny_config.eos_token_id,
        pad_token_id=tiny_config.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    return model.to(torch.float32).eval()


def one_by_one(model, tokenizer, renderer, examples, system_prompt, max_new_tokens) -> tuple[float, list[str], int]:
    """The plain transformers way: each prompt alone through ``model.generate``."""
    stops = stop_token_ids(tokenizer, renderer, model)
    texts, tokens = [], 0
    began = time.perf_counter()
    for ex in examples:
        prompt = renderer.prompt(ex, system_prompt_override=system_prompt)
        enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        end = next((k for k, t in enumerate(new) if t in stops), None)
        tokens += len(new) if end is None else end + 1
        text = tokenizer.decode(new if end is None else new[:end], skip_special_tokens=False)
        texts.append(text.split(renderer.end_of_turn)[0].strip())
    return time.perf_counter() - began, texts, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="prompts per model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--prompt", choices=["short", "full", "none"], default="short")
    parser.add_argument("--init-std", type=float, default=0.2, help="spread of the random weights")
    parser.add_argument("--skip-large", action="store_true", help="time only the tiny model")
    parser.add_argument("--workdir", type=Path, default=None, help="where data and the tiny model go (a temp dir)")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 110))  # the table stays readable in a log
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="instil-bench-"))

    paths = generate(workdir / "data", seed=0)
    train = read(paths["golden"]) + read(paths["traffic"])
    examples = read(paths["holdout"])[: args.n]
    spec = load_spec(SPEC_PATH)
    system_prompt = {"short": spec.short_prompt, "full": spec.system_prompt, "none": None}[args.prompt]

    folder = build_tiny(train, workdir / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    renderer = ChatRenderer(tokenizer)
    tiny = AutoModelForCausalLM.from_pretrained(folder).eval()
    models = [("tiny", tiny)]
    if not args.skip_large:
        models.append(("llama-100m", large_llama(tokenizer, tiny.config)))
    input_tokens = [
        len(tokenizer(renderer.prompt(e, system_prompt_override=system_prompt), add_special_tokens=False)["input_ids"])
        for e in examples
    ]
    console.print(
        f"{len(examples)} triage holdout prompts, system prompt: {args.prompt}; input tokens mean "
        f"{sum(input_tokens) / len(input_tokens):.0f}, max {max(input_tokens)}; max_new_tokens {args.max_new_tokens}; "
        f"greedy, float32, {torch.get_num_threads()} CPU threads"
    )

    table = Table(title="Local generation for evaluation: batched vs one-by-one")
    for col in ("model", "params", "way", "wall s", "requests/s", "tokens/s", "speedup", "same answers"):
        table.add_column(col, justify="left" if col in ("model", "way") else "right")
    for name, model in models:
        spread_weights(model, args.init_std, seed=1)
        params = sum(p.numel() for p in model.parameters())
        # Warm-up (first-call allocations and kernel choices), untimed, the same for both ways.
        generate_local(model, tokenizer, renderer, examples[:2], system_prompt=system_prompt, max_new_tokens=4)

        single_s, single_texts, single_tokens = one_by_one(
            model, tokenizer, renderer, examples, system_prompt, args.max_new_tokens
        )
        began = time.perf_counter()
        gens = generate_local(
            model,
            tokenizer,
            renderer,
            examples,
            system_prompt=system_prompt,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )
        batched_s = time.perf_counter() - began
        batched_tokens = sum(g.output_tokens for g in gens)
        same = sum(g.text == t for g, t in zip(gens, single_texts, strict=True))
        n = len(examples)
        table.add_row(
            name,
            f"{params / 1e6:.1f}M",
            "generate, one by one",
            f"{single_s:.2f}",
            f"{n / single_s:.1f}",
            f"{single_tokens / single_s:.0f}",
            "1.0x",
            "",
        )
        table.add_row(
            name,
            f"{params / 1e6:.1f}M",
            f"generate_local b={args.batch_size}",
            f"{batched_s:.2f}",
            f"{n / batched_s:.1f}",
            f"{batched_tokens / batched_s:.0f}",
            f"{single_s / batched_s:.1f}x",
            f"{same}/{n}",
        )
        if same != n or batched_tokens != single_tokens:
            console.print(
                f"[red]{name}: {n - same} answer(s) differ between the two ways "
                f"(tokens {batched_tokens} vs {single_tokens})[/red]"
            )
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
