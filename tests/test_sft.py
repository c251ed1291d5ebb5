"""SFT end to end on the tiny model: runs recorded, adapters saved and loaded back, losses that fall, masks kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instil.data.records import Example, Message
from instil.errors import HoldoutLeakError, InstilError
from instil.spec import JobSpec, parse_spec
from instil.store import Store
from instil.train.masking import IGNORE_INDEX
from instil.train.sft import build_trainer, prepare_sft, train_sft

COLORS = ["red", "green", "blue", "yellow", "black", "white"]
LONG_PROMPT = "You are the colour desk. Answer with one colour name, lower case, nothing else, ever."


def job(root: Path, adapter: str = "lora", **training: object) -> JobSpec:
    extra = "".join(f", {k}: {v}" for k, v in training.items())
    return parse_spec(
        f"""
name: colors
system_prompt: {LONG_PROMPT}
short_prompt: Name the colour.
graders: [{{name: em, type: exact_match, primary: true}}]
data: [{{path: data.jsonl}}]
model: {{base: tiny}}
training: {{adapter: {adapter}, batch_size: 4{extra}}}
""",
        root=root,
    )


def examples(n: int) -> list[Example]:
    return [
        Example(
            [
                Message("system", LONG_PROMPT),
                Message("user", f"Colour of item {i}?"),
                Message("assistant", COLORS[i % len(COLORS)]),
            ]
        )
        for i in range(n)
    ]


def put_train(store: Store, exs: list[Example]) -> None:
    store.put_dataset("colors:train", exs, kind="train")


def test_lora_run_records_run_model_and_a_safetensors_adapter_that_loads_back(tmp_path: Path, store: Store):
    spec = job(tmp_path)
    put_train(store, examples(8))  # fewer than 10: no validation slice
    result = train_sft(spec, store, max_steps=4, progress=False)

    run = store.get_run(result.run_id)
    assert run.status == "succeeded" and run.kind == "train"
    assert run.config["settings"]["learning_rate"] == {
        "value": 2e-4,
        "source": "default",
        "why": "for adapter lora",
    }
    assert run.config["dataset"]["sha256"] == store.get_dataset("colors:train").sha256
    assert [role for _, role in run.datasets] == ["train"]
    assert run.metrics["steps"] == 4
    # 4 steps of 4 rows over 8 rows: every example twice; each trains its colour (1+ tokens) and the end-of-turn marker.
    plan = prepare_sft(spec, store)
    per_pass = sum(sum(1 for x in r["labels"] if x != IGNORE_INDEX) for r in plan.train_rows)
    assert result.metrics.trained_tokens == 2 * per_pass >= 2 * 8 * 2
    assert result.metrics.tokens_seen == 2 * sum(len(r["input_ids"]) for r in plan.train_rows)

    model = store.get_model("colors")
    assert model.run_id == result.run_id and model.base_model == "tiny" and Path(model.path) == result.output_dir
    assert model.meta["dataset"]["sha256"] == run.config["dataset"]["sha256"]
    assert model.meta["seed"] == 0 and "torch" in model.meta["library_versions"]
    assert model.meta["model_info"]["is_tiny"] is True and model.meta["loss_history"]
    kinds = {a.kind: a for a in store.list_artifacts(result.run_id)}
    assert kinds["model"].sha256 and Path(kinds["history"].path).is_file()
    assert Path(kinds["loss_curve"].path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out = result.output_dir
    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "loss_history.json",
        "loss_curve.png",
    } <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no staging or checkpoint folder left behind

    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tokenizer.chat_template
    loaded = AutoPeftModelForCausalLM.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Colour of item 1?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = loaded.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_full_fine_tuning_drives_the_loss_down_and_saves_a_loadable_model(tmp_path: Path, store: Store):
    spec = job(tmp_path, "full", learning_rate="3.0e-3", batch_size=8)
    put_train(store, examples(6))
    result = train_sft(spec, store, max_steps=30, progress=False)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) >= 10
    assert losses[-1] < losses[0] / 3, losses  # from ~ln(vocab) to a few tenths: the colours are learned

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(result.output_dir)
    assert (result.output_dir / "model.safetensors").is_file()
    ids = torch.tensor([[1, 2, 3]])
    assert loaded.generate(ids, max_new_tokens=2, do_sample=False).shape[1] >= 4


def test_a_training_set_that_leaks_the_holdout_is_refused_before_training(tmp_path: Path, store: Store):
    spec = job(tmp_path)
    exs = examples(8)
    store.put_dataset("colors:holdout", [exs[3]], kind="holdout", frozen=True)
    put_train(store, exs)
    with pytest.raises(HoldoutLeakError) as caught:
        train_sft(spec, store, max_steps=1, progress=False)
    assert exs[3].key() in {m.example_key for m in caught.value.matches}  # (its near-twins match too)
    assert not [r for r in store.list_runs("colors") if r.status == "succeeded"]
    assert store.list_models("colors") == []


def test_prompt_tuning_trains_soft_tokens(tmp_path: Path, store: Store):
    spec = job(tmp_path, "prompt_tuning", num_virtual_tokens=4)
    put_train(store, examples(8))
    result = train_sft(spec, store, max_steps=2, progress=False)
    assert result.metrics.steps == 2
    assert result.resolved["learning_rate"].value == 3e-2
    assert (result.output_dir / "adapter_model.safetensors").is_file()


def test_the_collated_batches_carry_exactly_our_labels(tmp_path: Path, store: Store):
    spec = job(tmp_path)
    put_train(store, examples(8))
    plan = prepare_sft(spec, store)
    ours = {tuple(r["input_ids"]): r["labels"] for r in plan.train_rows}
    trainer = build_trainer(plan, tmp_path / "checkpoints")
    checked = 0
    for batch in trainer.get_train_dataloader():
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
            n = int(mask.sum())
            assert labels[:n].tolist() == ours[tuple(ids[:n].tolist())]
            assert (labels[n:] == IGNORE_INDEX).all()  # padding never carries loss
            checked += 1
    assert checked == len(plan.train_rows) == 8


def test_validation_slice_comes_from_train_and_drives_early_stopping(tmp_path: Path, store: Store):
    spec = job(tmp_path, "full", learning_rate="1.0e-3", trl="{eval_steps: 3}")
    put_train(store, examples(20))
    result = train_sft(spec, store, max_steps=6, progress=False)
    assert result.resolved["validation_rows"].value == 2 and result.resolved["train_rows"].value == 18
    assert result.resolved["eval_steps"].source == "trl"
    evals = [h["eval_loss"] for h in result.history if "eval_loss" in h]
    assert len(evals) == 2 and result.metrics.eval_loss == min(evals)


def test_defaults_come_from_the_data_and_the_spec_wins(tmp_path: Path, store: Store):
    put_train(store, examples(12))
    plan = prepare_sft(job(tmp_path), store)
    s = plan.settings
    assert s["epochs"].value == 10 and s["epochs"].source == "data"  # 3000 examples seen, capped at 10 passes
    assert s["max_length"].value == max(len(r["input_ids"]) for r in plan.train_rows + plan.eval_rows)
    assert s["train_sampling_strategy"].value == ("random" if torch.cuda.is_available() else "group_by_length")
    full = prepare_sft(job(tmp_path, "full"), store).settings
    assert full["learning_rate"].value == 1e-3  # the random tiny model learns from scratch
    pinned = prepare_sft(job(tmp_path, epochs=2, learning_rate="5.0e-4"), store).settings
    assert (pinned["epochs"].value, pinned["epochs"].source) == (2, "spec")
    assert (pinned["learning_rate"].value, pinned["learning_rate"].source) == (5e-4, "spec")


def test_the_short_prompt_replaces_the_system_prompt():
    ex = examples(1)[0]
    assert [m.content for m in ex.with_system_prompt("Short.").messages][0] == "Short."
    assert [m.role for m in ex.with_system_prompt(None).messages] == ["user", "assistant"]
    assert ex.with_system_prompt(None).key() == ex.key()  # the id follows the stored example


def test_a_run_that_fails_after_it_started_is_recorded_as_failed(tmp_path: Path, store: Store):
    spec = job(tmp_path, trl="{lr_scheduler_type: not-a-scheduler}")
    put_train(store, examples(8))
    with pytest.raises(InstilError, match="SFTConfig refused"):
        train_sft(spec, store, max_steps=1, progress=False)
    [run] = store.list_runs("colors")
    assert run.status == "failed" and "lr_scheduler_type" in (run.error or "")


def test_qlora_trains_lora_on_a_4bit_base(tmp_path: Path, store: Store):
    # bitsandbytes >= 0.45 has CPU kernels for nf4, so QLoRA runs in CI too.
    pytest.importorskip("bitsandbytes")
    spec = job(tmp_path, "qlora")
    put_train(store, examples(8))
    result = train_sft(spec, store, max_steps=2, progress=False)
    assert result.metrics.steps == 2
    assert result.resolved["adapter"].value == "qlora"
    assert (result.output_dir / "adapter_model.safetensors").is_file()


def test_a_diverging_run_stops_at_the_nan_and_is_recorded_failed(tmp_path: Path, store: Store):
    spec = job(tmp_path, "full", learning_rate=1.0e6)
    put_train(store, examples(8))
    with pytest.raises(InstilError, match="diverged"):
        train_sft(spec, store, max_steps=10, progress=False)
    [run] = store.list_runs("colors")
    assert run.status == "failed" and "step" in (run.error or "")
    assert store.list_models("colors") == []
