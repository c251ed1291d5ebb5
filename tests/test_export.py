"""Exporting trained models (merged LoRA that matches base+adapter, copies, refusals), the CLI, and the loss PNG.

The last test fine-tunes a real pretrained checkpoint (stories260K) when ../shared/models holds it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

from instil.cli import main
from instil.data.records import Example, Message
from instil.errors import DataError, InstilError, ModelError, NotFoundError
from instil.spec import JobSpec, parse_spec
from instil.store import Store
from instil.train.export import EXPORT_FILE, export_model
from instil.train.models import model_kind
from instil.train.plots import plot_loss
from instil.train.sft import train_sft

COLORS = ["red", "green", "blue", "yellow", "black", "white"]
STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K-hf"
SPEC = """
name: colors
system_prompt: You are the colour desk. Answer with one colour name.
short_prompt: Name the colour.
graders: [{{name: em, type: exact_match, primary: true}}]
data: [{{path: data.jsonl}}]
model: {model}
training: {training}
"""


def job(root: Path, adapter: str = "lora", model: str = "{base: tiny}", **training: object) -> JobSpec:
    fields = {"adapter": adapter, "batch_size": 4, **training}
    text = SPEC.format(model=model, training="{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}")
    (root / "instil.yaml").write_text(text, encoding="utf-8")
    return parse_spec(text, root=root)


def put_train(store: Store, n: int) -> None:
    exs = [
        Example([Message("user", f"Colour of item {i}?"), Message("assistant", COLORS[i % len(COLORS)])])
        for i in range(n)
    ]
    store.put_dataset("colors:train", exs, kind="train")


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lora_export_merges_into_a_plain_model_with_the_logits_of_base_plus_adapter(tmp_path: Path, store: Store):
    spec = job(tmp_path, learning_rate="1.0e-2")  # a large step, so the adapter clearly moves the logits
    put_train(store, 8)
    result = train_sft(spec, store, max_steps=4, progress=False)
    adapter = result.output_dir
    assert model_kind(adapter) == "lora"

    out = export_model(store, "colors", dest=tmp_path / "export" / "colors")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", EXPORT_FILE, "instil_train.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert [p.name for p in out.parent.iterdir()] == ["colors"]  # no staging folder left behind

    record = json.loads((out / EXPORT_FILE).read_text())
    assert record["merged"] is True and record["source"]["ref"] == "colors@1" and record["source"]["kind"] == "lora"
    assert record["adapter_files"]["adapter_model.safetensors"] == sha256(adapter / "adapter_model.safetensors")
    assert record["base"]["path"] == result.model.meta["model_info"]["path"] and record["dtype"] == "float32"
    assert record["weights_sha256"] == sha256(out / "model.safetensors")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(record["base"]["path"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(adapter).chat_template
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Colour of item 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    base_logits = logits(base, ids)
    with_adapter = logits(PeftModel.from_pretrained(base, adapter).eval(), ids)
    assert not torch.allclose(with_adapter, base_logits, atol=1e-3)  # the adapter did change the model...
    # ...and merging keeps it, up to float32 re-association (torch's float32 defaults: 1e-5 + 1.3e-6 * |logit|).
    torch.testing.assert_close(logits(merged, ids), with_adapter, atol=1e-5, rtol=1.3e-6)


def test_no_merge_copies_the_adapter_and_full_fine_tunes_are_copied_as_they_are(tmp_path: Path, store: Store):
    put_train(store, 6)
    lora = train_sft(job(tmp_path), store, max_steps=1, progress=False)
    copied = export_model(store, "colors", dest=tmp_path / "adapter", merge=False)
    assert sha256(copied / "adapter_model.safetensors") == sha256(lora.output_dir / "adapter_model.safetensors")
    record = json.loads((copied / EXPORT_FILE).read_text())
    assert record["merged"] is False and record["source"]["kind"] == "lora"

    full = train_sft(job(tmp_path, "full"), store, max_steps=1, progress=False)
    out = export_model(store, "colors", version=2, dest=tmp_path / "full")  # merge asked, nothing to merge
    assert sha256(out / "model.safetensors") == sha256(full.output_dir / "model.safetensors")
    record = json.loads((out / EXPORT_FILE).read_text())
    assert record["merged"] is False and record["source"] == {
        **record["source"],
        "kind": "full",
        "version": 2,
    }
    assert "adapter_files" not in record


def test_prompt_tuning_cannot_be_merged_and_bad_targets_are_refused(tmp_path: Path, store: Store):
    put_train(store, 6)
    train_sft(job(tmp_path, "prompt_tuning", num_virtual_tokens=4), store, max_steps=1, progress=False)
    with pytest.raises(ModelError, match="prompt_tuning adapter, which cannot be merged") as e:
        export_model(store, "colors", dest=tmp_path / "merged")
    assert "--no-merge" in (e.value.hint or "")
    assert not (tmp_path / "merged").exists()
    out = export_model(store, "colors", dest=tmp_path / "kept", merge=False)
    assert (out / "adapter_config.json").is_file()

    with pytest.raises(InstilError, match="exists already"):
        export_model(store, "colors", dest=out, merge=False)
    with pytest.raises(NotFoundError, match="no model version 7"):
        export_model(store, "colors", version=7, dest=tmp_path / "x")


def test_a_missing_base_folder_is_named_not_replaced(tmp_path: Path, store: Store):
    import shutil

    put_train(store, 6)
    result = train_sft(job(tmp_path), store, max_steps=1, progress=False)
    shutil.rmtree(result.model.meta["model_info"]["path"])  # the built tiny base, gone from the home
    with pytest.raises(ModelError, match="that folder is gone"):
        export_model(store, "colors", dest=tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged*"))


def test_cli_export_merges_and_reports_errors_without_a_traceback(tmp_path: Path, store: Store, capsys):
    put_train(store, 6)
    train_sft(job(tmp_path), store, max_steps=1, progress=False)
    spec = str(tmp_path / "instil.yaml")
    assert main(["export", spec, "--out", str(tmp_path / "m")]) == 0
    assert "colors@1 (lora) merged into its base" in capsys.readouterr().out
    assert main(["export", spec, "--out", str(tmp_path / "a"), "--no-merge", "--version", "1"]) == 0
    assert (tmp_path / "a" / "adapter_config.json").is_file()
    assert main(["export", spec, "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "exists already" in err and "Traceback" not in err


def test_qlora_merges_into_the_dequantized_base_the_adapter_was_trained_against(tmp_path: Path, store: Store):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel

    from instil.train.models import load_model

    put_train(store, 6)
    result = train_sft(job(tmp_path, "qlora", learning_rate="1.0e-2"), store, max_steps=2, progress=False)
    out = export_model(store, "colors", dest=tmp_path / "merged")
    record = json.loads((out / EXPORT_FILE).read_text())
    assert record["source"]["kind"] == "qlora" and record["merged"] is True

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    # A plain float model, loadable anywhere: no quantization config left behind.
    assert getattr(merged.config, "quantization_config", None) is None
    base = Path(record["base"]["path"])
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])

    def with_adapter(model):
        return logits(PeftModel.from_pretrained(model, result.output_dir).eval(), ids)

    dequantized = load_model(base, dtype="float32", quantization="4bit").dequantize(dtype=torch.float32)
    torch.testing.assert_close(logits(merged, ids), with_adapter(dequantized), atol=1e-5, rtol=1.3e-6)
    # The point of merging into the dequantized base: it stays closer to the 4-bit model the adapter was trained
    # on than a merge into the original float weights would (measured: 2e-3 against 6e-2 on this model).
    trained = with_adapter(load_model(base, dtype="float32", quantization="4bit"))
    original = with_adapter(load_model(base, dtype="float32"))
    assert (logits(merged, ids) - trained).abs().max() < (original - trained).abs().max() / 4


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_loss_draws_a_png_from_a_real_run_history(tmp_path: Path, store: Store):
    put_train(store, 12)  # 10 or more: a validation slice, so the history has eval losses too
    result = train_sft(job(tmp_path, "full"), store, max_steps=6, progress=False)
    assert any("eval_loss" in h for h in result.history) and any("loss" in h for h in result.history)
    path = plot_loss(result.history, tmp_path / "plots" / "loss_curve.png")
    assert path == tmp_path / "plots" / "loss_curve.png"
    assert png_size(path) == (640, 400)
    assert path.stat().st_size > 5_000  # axes, two curves and a legend, not a blank canvas
    assert [p.name for p in path.parent.iterdir()] == ["loss_curve.png"]

    history = json.loads((result.output_dir / "loss_history.json").read_text())
    assert png_size(plot_loss(history[:1], tmp_path / "one.png")) == (640, 400)  # one point still draws
    with pytest.raises(DataError, match="none holds a 'loss'"):
        plot_loss([{"step": 1, "epoch": 1.0}], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


@pytest.mark.skipif(not STORIES.is_dir(), reason=f"the pretrained test checkpoint is not at {STORIES}")
def test_real_pretrained_weights_lora_with_an_explicit_template_then_merged(tmp_path: Path, store: Store):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(STORIES)
    assert tokenizer.chat_template is None  # so the spec must choose one
    story = base.generate(torch.tensor([[tokenizer.bos_token_id]]), max_new_tokens=5, do_sample=False)
    assert tokenizer.decode(story[0], skip_special_tokens=True).startswith("Once upon a time")  # real weights

    spec = job(tmp_path, model=f"{{base: '{STORIES}', chat_template: chatml}}", learning_rate="1.0e-2")
    put_train(store, 8)
    result = train_sft(spec, store, max_steps=4, progress=False)
    assert result.model.base_model == str(STORIES)
    out = export_model(store, "colors", dest=tmp_path / "merged")
    record = json.loads((out / EXPORT_FILE).read_text())
    assert record["merged"] is True and Path(record["base"]["path"]) == STORIES

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    exported = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in exported.chat_template  # the template chosen in the spec travels with the model
    ids = exported.apply_chat_template(
        [{"role": "user", "content": "Colour of item 2?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    base_logits = logits(base, ids)
    with_adapter = logits(PeftModel.from_pretrained(base, result.output_dir).eval(), ids)
    assert not torch.allclose(with_adapter, base_logits, atol=1e-3)
    # Merging reorders float32 sums (W + BA once vs W x + B(A x)): a few logits move by ~1e-5 on these real weights.
    torch.testing.assert_close(logits(merged, ids), with_adapter, atol=5e-5, rtol=1e-5)
