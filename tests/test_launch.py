"""Multi-process training: a real 2-process CPU (gloo) run through the launcher, and the shipped GPU configs."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import yaml

from instil.data.records import Example, Message
from instil.errors import InstilError
from instil.spec import load_spec
from instil.store import Store
from instil.train.launch import CONFIGS, CONFIGS_DIR, DEEPSPEED_JSON, launch, launch_command
from instil.train.sft import train_sft

COLORS = ["red", "green", "blue", "yellow"]
SPEC = """\
name: colors
system_prompt: Answer with one colour name.
graders: [{name: em, type: exact_match, primary: true}]
data: [{path: data.jsonl}]
model: {base: tiny}
training: {adapter: full, batch_size: 8, learning_rate: 1.0e-3}
"""


def write_job(root: Path, store: Store) -> Path:
    exs = [
        Example(
            [
                Message("user", f"Colour of item {i}?" + " please" * (i % 3)),
                Message("assistant", COLORS[i % len(COLORS)]),
            ]
        )
        for i in range(8)
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(e.to_dict()) + "\n" for e in exs), encoding="utf-8")
    (root / "instil.yaml").write_text(SPEC, encoding="utf-8")
    store.put_dataset("colors:train", exs, kind="train")  # 8 rows, batch 8: every step sees the whole set
    return root / "instil.yaml"


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_two_gloo_processes_train_like_one_process_with_the_same_global_batch(tmp_path: Path, store: Store):
    spec_path = write_job(tmp_path, store)
    single = train_sft(load_spec(spec_path), store, output_dir=tmp_path / "one", max_steps=3, progress=False)

    started = time.perf_counter()
    code = launch(
        spec_path,
        processes=2,
        extra_args=["--max-steps", "3", "--output-dir", str(tmp_path / "two"), "--no-progress"],
    )
    seconds = time.perf_counter() - started
    assert code == 0

    runs = [r for r in store.list_runs() if r.kind == "train"]
    assert len(runs) == 2  # only rank 0 recorded its run
    two = max(runs, key=lambda r: r.id)
    settings = two.config["settings"]
    assert settings["processes"]["value"] == 2  # the world size the workers saw
    assert settings["per_device_batch_size"]["value"] == 4 and settings["ddp_backend"]["value"] == "gloo"
    assert "processes" not in single.resolved
    # Token counts are summed over both ranks: the same rows were seen as in one process.
    assert two.metrics["steps"] == 3 and two.metrics["tokens_seen"] == single.metrics.tokens_seen
    assert two.metrics["trained_tokens"] == single.metrics.trained_tokens

    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    (base,) = Path(store.home, "models", "tiny").glob("*/model.safetensors")  # the tiny base both runs started from
    initial = weights(base.parent)
    moved = max(float((a[k] - initial[k]).abs().max()) for k in a)
    assert moved > 1e-4  # training changed the weights, so the comparison means something
    print(f"2 processes vs 1: max abs weight diff {diff:.2e}, weights moved {moved:.2e}, launch {seconds:.1f}s")
    assert diff <= 1e-5, f"2 processes differ from 1 by {diff} (after {seconds:.0f}s)"


def test_the_command_line_uses_torchrun_without_a_config_and_accelerate_with_one(tmp_path: Path):
    plain = launch_command(tmp_path / "instil.yaml", processes=2)
    assert plain[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert plain[6:9] == ["-m", "instil.train.launch", str((tmp_path / "instil.yaml").resolve())]
    zero3 = launch_command("instil.yaml", processes=8, config="deepspeed-zero3")
    assert zero3[1:3] == ["-m", "accelerate.commands.launch"]
    assert zero3[zero3.index("--num_processes") + 1] == "8"
    assert Path(zero3[zero3.index("--deepspeed_config_file") + 1]).is_file()
    with pytest.raises(InstilError, match="neither a shipped config"):
        launch_command("instil.yaml", processes=2, config="zero9")
    with pytest.raises(InstilError, match="--processes is 0"):
        launch_command("instil.yaml", processes=0)


def test_a_batch_the_processes_cannot_split_is_refused(monkeypatch: pytest.MonkeyPatch):
    from instil.train.distributed import distributed_settings

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(InstilError, match="batch_size is 8, which 3 processes cannot split"):
        distributed_settings(8, cuda=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed_settings(8, cuda=False) == {}


def test_shipped_configs_parse_and_name_real_accelerate_and_deepspeed_keys():
    import accelerate.commands.launch as accelerate_launch
    import transformers.integrations.deepspeed as hf_deepspeed
    from accelerate.commands.config.config_args import ClusterConfig

    cluster_keys = {f.name for f in dataclasses.fields(ClusterConfig)}
    options = {o for a in accelerate_launch.launch_command_parser()._actions for o in a.option_strings}
    for name, file in CONFIGS.items():
        config = yaml.safe_load((CONFIGS_DIR / file).read_text(encoding="utf-8"))
        assert set(config) <= cluster_keys, (name, set(config) - cluster_keys)
        for section in ("fsdp_config", "deepspeed_config"):
            for key in config.get(section, {}):
                assert f"--{key}" in options, (name, section, key)
        if name in DEEPSPEED_JSON:
            assert config["deepspeed_config"]["deepspeed_config_file"] == DEEPSPEED_JSON[name]
    assert yaml.safe_load((CONFIGS_DIR / "fsdp.yaml").read_text())["distributed_type"] == "FSDP"

    hf_source = Path(hf_deepspeed.__file__).read_text(encoding="utf-8")
    for name, file in DEEPSPEED_JSON.items():
        ds = json.loads((CONFIGS_DIR / file).read_text(encoding="utf-8"))
        assert ds["zero_optimization"]["stage"] == int(name[-1])
        # Every "auto" value must be one the Trainer fills in, or DeepSpeed refuses the config.
        autos = [k for k, v in ds.items() if v == "auto"] + [
            k for k, v in ds["zero_optimization"].items() if v == "auto"
        ]
        for key in autos:
            assert f'"{key}"' in hf_source or f'"zero_optimization.{key}"' in hf_source, (file, key)
    assert (CONFIGS_DIR / "README.md").is_file()
