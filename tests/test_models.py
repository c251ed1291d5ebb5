"""Base models: the tiny preset, resolving model.base, loading through from_pretrained, and describing what loaded.

Every model here is built in the test (tiny random Llama / Qwen2) or read from ../shared (skipped when absent).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from instil.data.records import Example, Message  # noqa: E402
from instil.errors import InstilError  # noqa: E402
from instil.spec import ModelSpec  # noqa: E402
from instil.train.models import (  # noqa: E402
    ModelError,
    load_model,
    load_tokenizer,
    model_info,
    resolve_base,
    weights_sha256,
)
from instil.train.tiny import TINY_MARKER, TINY_NOTICE, build_tiny  # noqa: E402

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K-hf"
TOOLS = [{"type": "function", "function": {"name": "book", "parameters": {"type": "object"}}}]


def _examples(n: int = 60, word: str = "table") -> list[Example]:
    out = []
    for i in range(n):
        out.append(
            Example(
                messages=[
                    Message("system", "Classify the request."),
                    Message("user", f"please book a {word} for {i} people at nine, près de la fenêtre"),
                    Message("assistant", f'{{"intent": "book_{word}", "n": {i}}}'),
                ],
                tools=TOOLS if i % 3 == 0 else None,
            )
        )
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model of each architecture, built once for the module."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny(_examples(), root / arch, arch=arch) for arch in ("llama", "qwen2")}


# ---- the tiny preset -------------------------------------------------------------------------------------------------
def test_tiny_build_is_deterministic_and_says_it_is_random(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    again = build_tiny(_examples(), tmp_path / "again", arch="llama")
    first = tiny_dirs["llama"]
    assert _sha(again / "tokenizer.json") == _sha(first / "tokenizer.json")
    assert _sha(again / "model.safetensors") == _sha(first / "model.safetensors")

    reseeded = build_tiny(_examples(), tmp_path / "seed1", arch="llama", seed=1)
    assert _sha(reseeded / "tokenizer.json") == _sha(first / "tokenizer.json")
    assert _sha(reseeded / "model.safetensors") != _sha(first / "model.safetensors")

    record = json.loads((first / TINY_MARKER).read_text())
    assert record["random_initialised"] is True
    assert record["notice"] == TINY_NOTICE and "knowing nothing" in TINY_NOTICE
    assert record["settings"]["arch"] == "llama" and record["settings"]["seed"] == 0
    # Small data gives a vocabulary smaller than the 2048 asked for; the model's embedding matches it exactly.
    config = json.loads((first / "config.json").read_text())
    assert record["vocab_size"] == config["vocab_size"] < 2048


def test_tiny_refuses_data_without_text(tmp_path: Path) -> None:
    with pytest.raises(InstilError, match="no text"):
        build_tiny([Example(messages=[Message("user", "")])], tmp_path / "empty")


@pytest.mark.parametrize("arch, cls", [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_tiny_architectures_run_forward_and_generate(tiny_dirs: dict[str, Path], arch: str, cls: str) -> None:
    model = load_model(tiny_dirs[arch])
    tokenizer = load_tokenizer(tiny_dirs[arch])
    assert type(model).__name__ == cls
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "please book a table for 3 people"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    outputs = [model.generate(ids, max_new_tokens=4, do_sample=False) for _ in range(2)]
    assert outputs[0].shape[1] > ids.shape[1]
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_tokenizer_round_trips_and_has_the_chat_template(tiny_dirs: dict[str, Path], arch: str) -> None:
    from tokenizers import Tokenizer

    tokenizer = load_tokenizer(tiny_dirs[arch])
    raw = Tokenizer.from_file(str(tiny_dirs[arch] / "tokenizer.json"))
    for text in [
        "please book a table for 12 people",
        "naïve café 日本語 🙂\n\n  tabs\tand spaces ",
        '{"n": 3}',
    ]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
        # transformers rebuilds a qwen2 tokenizer with Qwen's own pre-tokenizer on load: it must match the trained one.
        assert ids == raw.encode(text).ids
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for special in ("<|im_start|>", "<|im_end|>", "<tool_call>"):
        assert len(tokenizer(special)["input_ids"]) == 1
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "book 2"},
        {"role": "assistant", "content": "Booked."},
    ]
    text = tokenizer.apply_chat_template(chat, tools=TOOLS, tokenize=False)
    assert '"name": "book"' in text and text.count("<|im_start|>") == 3
    prompt = tokenizer.apply_chat_template(chat[:2], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")


# ---- resolving model.base --------------------------------------------------------------------------------------------
def test_resolve_base_builds_tiny_once_per_data(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = resolve_base(ModelSpec(base="tiny"), root=tmp_path, examples=_examples(20), cache_dir=cache)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = resolve_base(ModelSpec(base="tiny"), root=tmp_path, examples=_examples(20), cache_dir=cache)
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp
    other = resolve_base(ModelSpec(base="tiny"), root=tmp_path, examples=_examples(20, "car"), cache_dir=cache)
    assert other != first
    qwen = resolve_base(ModelSpec(base="tiny-qwen2"), root=tmp_path, examples=_examples(20), cache_dir=cache)
    assert json.loads((qwen / "config.json").read_text())["model_type"] == "qwen2"
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == []  # no staging folder left behind
    with pytest.raises(ModelError, match="no examples"):
        resolve_base(ModelSpec(base="tiny"), root=tmp_path, cache_dir=cache)


def test_resolve_base_defaults_to_the_instil_home(tmp_path: Path, instil_home: Path) -> None:
    path = resolve_base(ModelSpec(base="tiny"), root=tmp_path, examples=_examples(10))
    assert Path(path).parent == instil_home / "models" / "tiny"


def test_resolve_base_local_folders_and_hub_ids(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    shutil.copytree(tiny_dirs["llama"], tmp_path / "models" / "mine")
    assert resolve_base(ModelSpec(base="models/mine"), root=tmp_path) == (tmp_path / "models" / "mine").resolve()
    assert resolve_base(ModelSpec(base="Qwen/Qwen2.5-0.5B"), root=tmp_path) == "Qwen/Qwen2.5-0.5B"
    with pytest.raises(ModelError, match="model folder not found") as err:
        resolve_base(ModelSpec(base="./models/missing"), root=tmp_path)
    assert str(tmp_path / "models" / "missing") in str(err.value) and err.value.hint
    (tmp_path / "models" / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_base(ModelSpec(base="models/empty"), root=tmp_path)


# ---- loading ---------------------------------------------------------------------------------------------------------
def test_local_folder_loads_and_model_info_hashes_the_weights(tiny_dirs: dict[str, Path]) -> None:
    folder = tiny_dirs["qwen2"]
    info = model_info(folder)
    assert info.weights_sha256 == _sha(folder / "model.safetensors") == weights_sha256(folder)
    assert info.architecture == "Qwen2ForCausalLM" and info.dtype == "float32"
    assert info.is_tiny and info.has_chat_template and info.notice == TINY_NOTICE
    assert info.revision is None

    model = load_model(folder, dtype="float32")
    loaded = model_info(model, base="tiny-qwen2")
    assert loaded.n_parameters == info.n_parameters == model.num_parameters()
    assert loaded.weights_sha256 == info.weights_sha256 and loaded.base == "tiny-qwen2" and loaded.is_tiny
    assert load_model(folder, dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model(folder, dtype="float12")


def test_spec_chat_template_file_is_read_from_the_spec_folder(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    (tmp_path / "tpl.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    spec = ModelSpec(base=str(tiny_dirs["llama"]), chat_template="tpl.jinja")
    tokenizer = load_tokenizer(spec, root=tmp_path)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[hi]"
    with pytest.raises(ModelError, match="build it first"):
        load_model(ModelSpec(base="tiny"))


def test_offline_hub_id_not_cached_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelError, match="not in the local Hugging Face cache") as err:
            load("nobody/no-such-model")
        assert "hf download nobody/no-such-model" in err.value.hint
    with pytest.raises(ModelError, match="not a valid hub id|neither an existing folder"):
        load_model("not a valid id!")
    with pytest.raises(ModelError, match="model folder not found"):
        load_model(str(tmp_path / "missing" / "model"))


def test_unreachable_hub_is_treated_as_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from instil.train import models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    models._hub_reachable.cache_clear()
    try:
        with pytest.raises(ModelError, match=r"http://127.0.0.1:9 cannot be reached"):
            load_model("nobody/no-such-model")
    finally:
        models._hub_reachable.cache_clear()


def test_offline_hub_id_loads_from_the_cache_with_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_dirs: dict[str, Path]
) -> None:
    # The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny-chat"
    shutil.copytree(tiny_dirs["llama"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model = load_model("acme/tiny-chat")
    info = model_info(model, base="acme/tiny-chat")
    assert info.revision == commit and info.base == "acme/tiny-chat"
    assert info.weights_sha256 == _sha(tiny_dirs["llama"] / "model.safetensors")
    assert model_info("acme/tiny-chat").revision == commit
    assert load_tokenizer("acme/tiny-chat").eos_token == "<|im_end|>"


def test_remote_code_never_runs_by_default(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    folder = tmp_path / "custom"
    folder.mkdir()
    shutil.copy(tiny_dirs["llama"] / "model.safetensors", folder)
    sentinel = tmp_path / "code-ran"
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "acme_custom",
                "auto_map": {"AutoConfig": "configuration_acme.AcmeConfig"},
                "architectures": ["AcmeForCausalLM"],
            }
        )
    )
    (folder / "configuration_acme.py").write_text(
        f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class AcmeConfig(PretrainedConfig):\n    model_type = 'acme_custom'\n"
    )
    with pytest.raises(ModelError, match="code shipped with the model") as err:
        load_model(folder)
    assert "trust_remote_code" in err.value.hint
    with pytest.raises(ModelError, match="no tokenizer that transformers can read"):
        load_tokenizer(folder)
    assert not sentinel.exists()
    shutil.copy(tiny_dirs["llama"] / "tokenizer.json", folder)
    shutil.copy(tiny_dirs["llama"] / "tokenizer_config.json", folder)
    assert load_tokenizer(folder).eos_token == "<|im_end|>"
    assert not sentinel.exists()


def test_pickle_checkpoints_need_an_explicit_opt_in(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    source = load_model(tiny_dirs["llama"])
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_dirs["llama"] / "config.json", folder)
    torch.save(source.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only pickle checkpoints") as err:
        load_model(folder)
    assert "allow_pickle=True" in err.value.hint
    model = load_model(folder, allow_pickle=True)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, source(ids).logits)
    assert model_info(folder).weights_sha256 is None  # no safetensors to hash


# ---- a real pretrained checkpoint (optional) -------------------------------------------------------------------------
@pytest.mark.skipif(not STORIES.is_dir(), reason="../shared/models/stories260K-hf is not present")
def test_stories260k_loads_and_generates_its_documented_sample() -> None:
    pytest.importorskip("sentencepiece", reason="its tokenizer is a SentencePiece model")
    tokenizer = load_tokenizer(STORIES)
    model = load_model(STORIES)
    info = model_info(model)
    assert info.n_parameters == 260_032 and not info.is_tiny and not info.has_chat_template
    assert info.architecture == "LlamaForCausalLM" and info.weights_sha256 == _sha(STORIES / "model.safetensors")
    ids = torch.tensor([[tokenizer.bos_token_id]])
    out = model.generate(ids, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    assert text.startswith("Once upon a time, there was a little girl named Lily.")
