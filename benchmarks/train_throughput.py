"""Benchmark: training throughput of instil's batching against plain TRL's options, same model, data and epochs.

    .venv/bin/python benchmarks/train_throughput.py                   # 1,200 chat examples, 1 epoch, every way
    .venv/bin/python benchmarks/train_throughput.py --n 3000 --epochs 2 --ways instil trl_default

The data is seeded and synthetic: chat examples of 10 to 400 tokens (user turns of made-up words, log-uniform in
length, so short examples are common and long ones rare, as in real chat data), each answered with the first words of
its question reversed. The model is instil's ``tiny`` preset (a random Llama, tokenizer trained on these examples),
built once; 10% of the examples are held out for the validation loss.

Every way trains the same weights on the same pre-tokenized rows (our assistant-only labels), batch 8, with the same
learning rate, seed and epochs, differing only in how batches are laid out:

* ``instil``: the batching ``prepare_sft`` resolves for this machine and ``build_trainer`` installs (on CPU length
  buckets, :class:`~instil.train.batching.LengthBucketSampler`; on GPU random order);
* ``trl_default``: TRL's default collator, random order, right padding;
* ``trl_group_by_length``: ``train_sampling_strategy="group_by_length"``;
* ``trl_padding_free``: ``padding_free=True`` (one flattened row per batch, position_ids restarting per sequence);
* ``trl_packing``: ``packing=True`` with the ``bfd`` strategy (rows packed up to the longest example).

Evaluation and checkpoints are left out of every way, so the timings compare batching alone. Each way runs in a fresh
process (its peak RSS is its own). The table gives non-padding tokens trained per second (measured by
:class:`~instil.train.callbacks.TokenTally` on the batches the model ran), the padding fraction of those batches, the
peak RSS, and the validation loss after training (mean over the trained tokens of the held-out rows, computed the same
way for all). The machine may be shared: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = ["instil", "trl_default", "trl_group_by_length", "trl_padding_free", "trl_packing"]
SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "zu", "an", "or", "el", "is", "um"]


def synthetic_examples(n: int, seed: int) -> list:
    """``n`` seeded chat examples whose rendered length runs from about 10 to 400 tokens."""
    from instil.data.records import Example, Message

    rng = random.Random(seed)
    words = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(400)})
    out = []
    for _ in range(n):
        k = int(math.exp(rng.uniform(math.log(1), math.log(370))))
        question = [rng.choice(words) for _ in range(k)]
        answer = " ".join(reversed(question[:8]))
        out.append(Example([Message("user", " ".join(question)), Message("assistant", answer)]))
    return out


def prepare(workdir: Path, n: int, seed: int) -> dict:
    """Build the tiny model and tokenize the rows once, as instil would; write them to ``workdir`` for the workers."""
    from instil.spec import parse_spec
    from instil.store import Store
    from instil.train.sft import prepare_sft

    os.environ["INSTIL_HOME"] = str(workdir / "home")
    spec = parse_spec(
        """
name: bench
system_prompt: Reverse the first eight words.
graders: [{name: em, type: exact_match, primary: true}]
data: [{path: data.jsonl}]
model: {base: tiny}
training: {adapter: full, batch_size: 8}
""",
        root=workdir,
    )
    with Store.open(home=workdir / "home") as store:
        store.put_dataset("bench:train", synthetic_examples(n, seed), kind="train")
        plan = prepare_sft(spec, store)
    plan.model.save_pretrained(workdir / "model")
    plan.tokenizer.save_pretrained(workdir / "model")
    s = plan.settings
    meta = {
        "train_rows": plan.train_rows,
        "eval_rows": plan.eval_rows,
        "learning_rate": s["learning_rate"].value,
        "max_length": s["max_length"].value,
        "instil": {k: s[k].value for k in ("train_sampling_strategy", "bf16", "gradient_checkpointing")},
    }
    (workdir / "rows.json").write_text(json.dumps(meta), encoding="utf-8")
    return meta


def worker(way: str, workdir: Path, epochs: float, seed: int) -> dict:
    """Train one way in this process and return its measurements."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from instil.train.callbacks import TokenTally

    meta = json.loads((workdir / "rows.json").read_text(encoding="utf-8"))
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    options = {
        "instil": meta["instil"],
        "trl_default": {},
        "trl_group_by_length": {"train_sampling_strategy": "group_by_length"},
        # TRL refuses padding_free with a max_length it cannot enforce; the rows are already cut to it.
        "trl_padding_free": {"padding_free": True, "max_length": None},
        "trl_packing": {"packing": True, "packing_strategy": "bfd"},
    }[way]
    config = SFTConfig(
        output_dir=str(workdir / f"out-{way}"),
        num_train_epochs=epochs,
        learning_rate=meta["learning_rate"],
        per_device_train_batch_size=8,
        seed=seed,
        data_seed=seed,
        report_to="none",
        disable_tqdm=True,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        dataloader_pin_memory=False,
        # TRL's own bf16 default fails on CPU.
        **{
            "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            "max_length": meta["max_length"],
            **options,
        },
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(meta["train_rows"]),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    if way == "instil":
        from instil.train.checkpoints import make_resumable

        make_resumable(trainer, seed)  # what instil's build_trainer does: group_by_length becomes length buckets
    tally = TokenTally()
    handle = tally.attach(trainer.model)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    handle.remove()
    return {
        "way": way,
        "seconds": seconds,
        "steps": trainer.state.global_step,
        "tokens": tally.seen,
        "tokens_per_second": tally.seen / seconds,
        "padding_fraction": tally.padding_fraction,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "eval_loss": validation_loss(trainer.model, meta["eval_rows"], tokenizer.pad_token_id or 0),
    }


def validation_loss(model, rows: list[dict], pad_token_id: int) -> float:
    """Mean cross-entropy over the trained tokens of ``rows``, in padded batches with an attention mask."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), 8):
            chunk = rows[i : i + 8]
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.full((len(chunk), width), pad_token_id)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, r in enumerate(chunk):
                n = len(r["input_ids"])
                ids[j, :n], labels[j, :n], mask[j, :n] = (
                    torch.tensor(r["input_ids"]),
                    torch.tensor(r["labels"]),
                    1,
                )
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += float(loss)
            count += int((target != -100).sum())
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1200, help="chat examples to generate (10%% held out)")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the training rows, the same for all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=WAYS)
    parser.add_argument("--worker", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.workdir, args.epochs, args.seed)))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))  # the table stays readable in a log
    with tempfile.TemporaryDirectory(prefix="instil-train-bench-") as tmp:
        workdir = Path(tmp)
        meta = prepare(workdir, args.n, args.seed)
        lengths = [len(r["input_ids"]) for r in meta["train_rows"]]
        console.print(
            f"{len(lengths)} training rows of {min(lengths)}-{max(lengths)} tokens "
            f"(mean {sum(lengths) / len(lengths):.0f}), {len(meta['eval_rows'])} validation rows; "
            f"instil's batching here: {meta['instil']}"
        )
        results = {}
        for way in args.ways:
            load = os.getloadavg()[0]
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    way,
                    "--workdir",
                    str(workdir),
                    "--epochs",
                    str(args.epochs),
                    "--seed",
                    str(args.seed),
                ],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                console.print(f"[red]{way} failed:[/red]\n{done.stderr[-3000:]}")
                continue
            results[way] = {**json.loads(done.stdout.strip().splitlines()[-1]), "load": load}
            r = results[way]
            console.print(f"  {way}: {r['tokens_per_second']:,.0f} tok/s in {r['seconds']:.1f}s (load {load:.2f})")

    table = Table(title=f"SFT throughput, tiny Llama, batch 8, {args.epochs:g} epoch(s), {os.cpu_count()} CPU(s)")
    for col in ("way", "trained tok/s", "padding", "steps", "time", "peak RSS", "val loss", "load before"):
        table.add_column(col, justify="left" if col == "way" else "right", no_wrap=True)
    for way, r in results.items():
        table.add_row(
            way,
            f"{r['tokens_per_second']:,.0f}",
            f"{r['padding_fraction']:.1%}",
            str(r["steps"]),
            f"{r['seconds']:.1f}s",
            f"{r['peak_rss_mib']:,.0f} MiB",
            f"{r['eval_loss']:.4f}",
            f"{r['load']:.2f}",
        )
    console.print(table)
    if "instil" in results and "trl_default" in results:
        ours = results["instil"]
        trl = {w: r for w, r in results.items() if w.startswith("trl_")}
        best = max(trl, key=lambda w: trl[w]["tokens_per_second"])
        base = results["trl_default"]
        console.print(
            f"instil / TRL default: {ours['tokens_per_second'] / base['tokens_per_second']:.2f}x (goal >= 1.5x); "
            f"instil / best TRL ({best}): {ours['tokens_per_second'] / trl[best]['tokens_per_second']:.2f}x "
            f"(goal >= 1.0x); validation loss vs TRL default: "
            f"{(ours['eval_loss'] - base['eval_loss']) / base['eval_loss']:+.1%} (goal within 2%)"
        )


if __name__ == "__main__":
    main()
