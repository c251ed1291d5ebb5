"""Find, load and describe the base model: a Hugging Face hub id, a local folder, or the built-in ``tiny`` preset.

    from instil.train.models import resolve_base, load_model, load_tokenizer, model_info
    source = resolve_base(spec.model, root=spec.root, examples=train_examples)  # builds `tiny` once, then reuses it
    tokenizer = load_tokenizer(source, revision=spec.model.revision)
    model = load_model(source, revision=spec.model.revision, dtype="auto")
    info = model_info(model)          # architecture, parameter count, dtype, content hash of the weights

Loading is transformers' own ``from_pretrained``: a hub id or a local folder. Safe by default: code shipped with a
model never runs unless ``trust_remote_code`` is set, and weights are read from safetensors only (pickle checkpoints
need ``allow_pickle=True``, and even then are read with ``torch.load(weights_only=True)``).

Offline (``HF_HUB_OFFLINE=1``), or with a revision pinned to a commit already in the cache, a hub id is resolved to its
folder in the local Hugging Face cache before loading, so nothing touches the network; a model that is not there gives
a :class:`ModelError` saying how to download it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from instil.data.records import Example, sha256_hex
from instil.env import cuda_available, home_dir
from instil.errors import DependencyError, InstilError, ModelError, NotFoundError
from instil.files import replacing
from instil.jobdata import dataset_name
from instil.spec import TINY_BASES, JobSpec, ModelSpec, is_tiny_base
from instil.store import ModelVersion, Store
from instil.train.chat import ChatRenderer, resolve_template
from instil.train.tiny import TINY_MARKER, TINY_NOTICE, TinySettings, build_tiny, tiny_cache_key

__all__ = [
    "LoadedModel",
    "ModelError",
    "ModelInfo",
    "default_dtype",
    "job_base",
    "load_for_inference",
    "load_model",
    "load_tokenizer",
    "model_info",
    "model_kind",
    "resolve_base",
    "trained_base",
    "version_kind",
    "weights_sha256",
]

_COMMIT = re.compile(r"[0-9a-f]{40}")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, recorded with every run so that it can be reproduced."""

    base: str
    """``model.base`` as the user wrote it (hub id, folder, or ``tiny``)."""
    path: str
    """Where the weights were read from: a local folder (for a hub id, its snapshot in the cache) or the hub id."""
    revision: str | None
    """The commit hash when the hub cache gives one, else the requested revision; None for a local folder."""
    weights_sha256: str | None
    """Content hash of the safetensors files (see :func:`weights_sha256`); None when no local files were found."""
    architecture: str
    """The model class in ``config.json`` (``LlamaForCausalLM``), or the model type when none is named."""
    n_parameters: int
    """Number of parameters (tied weights counted once)."""
    dtype: str
    """The weights' dtype (``float32``, ``bfloat16``); for an unloaded folder, the one ``config.json`` names."""
    is_tiny: bool
    """True for a random-initialised model built by the ``tiny`` preset: it starts knowing nothing."""
    has_chat_template: bool
    """Whether the tokenizer beside the weights has a chat template."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def notice(self) -> str | None:
        """A line to show the user about this model (for a tiny model, that it starts knowing nothing)."""
        return TINY_NOTICE if self.is_tiny else None


# ---- resolving -------------------------------------------------------------------------------------------------------
def resolve_base(
    spec: ModelSpec,
    *,
    root: Path,
    examples: Iterable[Example] | None = None,
    cache_dir: Path | None = None,
) -> Path | str:
    """Where to load ``spec.base`` from: a folder (local, or a tiny model built for these examples) or a hub id.

    ``tiny`` is built once per distinct data and settings under ``cache_dir`` (default ``<instil home>/models/tiny``)
    and reused after. A local path is resolved against ``root`` (the spec's folder) and must exist. Anything else is
    returned unchanged as a hub id; :func:`load_model` checks it.
    """
    base = spec.base
    if is_tiny_base(base):
        if examples is None:
            raise ModelError(
                f"model.base is {base!r}, whose tokenizer is trained on the job's data, but no examples were given",
                hint="pass the training examples: resolve_base(spec.model, root=..., examples=train_examples)",
            )
        return _build_tiny_cached(list(examples), TINY_BASES[base], cache_dir or home_dir(root) / "models" / "tiny")
    return spec.locate(root)


def _build_tiny_cached(examples: list[Example], arch: str, cache_dir: Path) -> Path:
    settings = TinySettings(arch=arch)  # type: ignore[arg-type]
    key = tiny_cache_key(examples, settings)
    target = Path(cache_dir) / f"{arch}-{key[:16]}"
    if (target / TINY_MARKER).is_file():
        return target
    # Built beside the target and renamed: a crash mid-build never leaves a half-written model that looks complete;
    # a concurrent build that finished first is kept.
    with replacing(target, keep_existing=True) as staging:
        build_tiny(examples, staging, **asdict(settings))
    return target


def _offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _source(spec_or_path: ModelSpec | str | Path, revision: str | None, root: Path | None) -> tuple[str | Path, str]:
    """(what from_pretrained reads: a local folder or a hub id, the base as the user wrote it)."""
    if isinstance(spec_or_path, ModelSpec):
        base = spec_or_path.base
        if is_tiny_base(base):
            raise ModelError(
                f"model.base is {base!r}: build it first with resolve_base(spec.model, root=..., examples=...)",
                hint="pass the folder resolve_base returns to load_model and load_tokenizer",
            )
        located = spec_or_path.locate(root)
    else:
        base = str(spec_or_path)
        # A Path is a folder whatever its shape; a string may be a hub id.
        where = Path(spec_or_path).expanduser().absolute() if isinstance(spec_or_path, Path) else base
        located = ModelSpec(base=str(where)).locate(root)
    if isinstance(located, Path):
        return located, base
    offline = _offline() or not _hub_reachable()
    cached = _cached_snapshot(base, revision) if (offline or _is_commit(revision)) else None
    if cached is not None:
        return cached, base
    if offline:
        why = "HF_HUB_OFFLINE is set" if _offline() else f"{_hub_endpoint()} cannot be reached"
        raise ModelError(
            f"model {base!r}{_at(revision)} is not in the local Hugging Face cache, and {why}",
            hint=f"download it first: `hf download {base}{' --revision ' + revision if revision else ''}`, "
            "or set HF_HOME to the cache that holds it, or point model.base at a local folder",
        )
    return base, base


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.cache
def _hub_reachable() -> bool:
    """Whether a TCP connection to the hub opens within 3 s (checked once per process).

    Without this check, a machine without network waits through huggingface_hub's retries (about 25 s) before the
    same "not in the cache" answer. Behind a proxy the direct connection says nothing, so it is not tried.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True

    parts = urlsplit(_hub_endpoint())
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=3):
            return True
    except OSError:
        return False


def _is_commit(revision: str | None) -> bool:
    return revision is not None and _COMMIT.fullmatch(revision) is not None


def _at(revision: str | None) -> str:
    return f" at revision {revision!r}" if revision else ""


def _hub_cache_dir() -> Path:
    # Read at call time, like _offline(): huggingface_hub fixes its default cache folder when first imported.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The folder of ``repo_id`` at ``revision`` in the local hub cache, or None when it is not there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=_hub_cache_dir(), local_files_only=True))
    except HFValidationError as e:
        raise ModelError(
            f"model.base {repo_id!r} is neither an existing folder nor a valid hub id: {e}",
            hint="use a hub id like 'Qwen/Qwen2.5-0.5B-Instruct', a path to a local folder, or 'tiny'",
        ) from None
    except (OSError, ValueError):  # LocalEntryNotFoundError and friends: not cached
        return None
    return folder if (folder / "config.json").is_file() else None


# ---- loading ---------------------------------------------------------------------------------------------------------
def load_tokenizer(
    spec_or_path: ModelSpec | str | Path,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    root: Path | None = None,
):
    """The tokenizer of a hub id, a local folder, or a :class:`ModelSpec` (whose ``chat_template`` then applies).

    ``root`` is the folder relative paths in the spec are read from (the spec's folder; the cwd when None).
    """
    from transformers import AutoTokenizer

    revision, trust_remote_code = _from_spec(spec_or_path, revision, trust_remote_code)
    source, base = _source(spec_or_path, revision, root)
    kwargs = _hub_kwargs(source, revision, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError, KeyError) as e:
        raise _load_error("tokenizer", base, source, revision, e) from None
    if isinstance(spec_or_path, ModelSpec) and spec_or_path.chat_template:
        tokenizer.chat_template = _chat_template(spec_or_path.chat_template, root)
    return tokenizer


def load_model(
    spec_or_path: ModelSpec | str | Path,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: str | Any = "auto",
    quantization: str | None = None,
    allow_pickle: bool = False,
    root: Path | None = None,
):
    """A causal LM from a hub id, a local folder, or a :class:`ModelSpec`, through ``AutoModelForCausalLM``.

    ``dtype`` is ``auto`` (what config.json names), a name (``bfloat16``) or a ``torch.dtype``. ``quantization`` is
    None, ``4bit`` (QLoRA's NF4) or ``8bit``; both need bitsandbytes and a CUDA GPU. Pickle-only checkpoints are
    refused unless ``allow_pickle`` is set.
    """
    from transformers import AutoModelForCausalLM

    revision, trust_remote_code = _from_spec(spec_or_path, revision, trust_remote_code)
    source, base = _source(spec_or_path, revision, root)
    if isinstance(source, Path) and not allow_pickle:
        _require_safetensors(source, base)
    kwargs = _hub_kwargs(source, revision, trust_remote_code)
    kwargs["dtype"] = _torch_dtype(dtype)
    # Safetensors only, unless the user opted in; weights_only keeps torch.load from running pickled code either way.
    kwargs["use_safetensors"] = None if allow_pickle else True
    kwargs["weights_only"] = True
    if quantization is not None:
        kwargs["quantization_config"] = _quantization_config(quantization)
    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError, KeyError) as e:
        raise _load_error("model", base, source, revision, e, allow_pickle=allow_pickle) from None


def _from_spec(spec_or_path: Any, revision: str | None, trust_remote_code: bool) -> tuple[str | None, bool]:
    if isinstance(spec_or_path, ModelSpec):
        return revision or spec_or_path.revision, trust_remote_code or spec_or_path.trust_remote_code
    return revision, trust_remote_code


def _hub_kwargs(source: str | Path, revision: str | None, trust_remote_code: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": bool(trust_remote_code)}
    if isinstance(source, Path):
        # A folder (or a cached snapshot): never ask the hub anything, not even for an adapter config.
        kwargs["local_files_only"] = True
        return kwargs
    kwargs["local_files_only"] = _offline() or not _hub_reachable()
    if revision is not None:
        kwargs["revision"] = revision
    return kwargs


def _require_safetensors(folder: Path, base: str) -> None:
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = sorted(n for n in names if n.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise ModelError(
            f"{folder} holds only pickle checkpoints ({', '.join(pickles)}), no safetensors (model.base is {base!r}); "
            "instil reads safetensors by default because a pickle can run code when loaded",
            hint="convert it once (load with transformers, then save_pretrained(dir, safe_serialization=True)), or "
            "pass allow_pickle=True if you trust the file (it is then read with torch.load(weights_only=True))",
        )
    raise ModelError(
        f"{folder} has no weights: no *.safetensors file (model.base is {base!r})",
        hint="check the folder is complete; `hf download <id> --local-dir <folder>` fetches every file",
    )


def _torch_dtype(dtype: str | Any) -> Any:
    import torch

    if not isinstance(dtype, str) or dtype == "auto":
        return dtype
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ModelError(f"unknown dtype {dtype!r}", hint="use 'auto', 'float32', 'bfloat16' or 'float16'")
    return value


def _quantization_config(quantization: str) -> Any:
    import torch

    if quantization not in ("4bit", "8bit"):
        raise ModelError(f"unknown quantization {quantization!r}", hint="use '4bit' (QLoRA), '8bit', or None")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DependencyError(
            f"{quantization} loading needs bitsandbytes, which is not installed",
            hint="pip install 'instil[qlora]' (bitsandbytes), or train with adapter: lora",
        )
    from transformers import BitsAndBytesConfig

    cuda = cuda_available()
    if quantization == "8bit":
        if not cuda:  # bitsandbytes' int8 matmul has no CPU path
            raise ModelError("8bit loading needs a CUDA GPU and none is visible", hint="use 4bit (QLoRA) or lora")
        return BitsAndBytesConfig(load_in_8bit=True)
    # bitsandbytes >= 0.45 has CPU kernels for nf4; compute in float32 there (bf16 matmuls are slow on most CPUs).
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32,
    )


def _load_error(
    what: str,
    base: str,
    source: str | Path,
    revision: str | None,
    error: Exception,
    *,
    allow_pickle: bool = False,
) -> InstilError:
    text = str(error)
    where = f"{source}" if isinstance(source, Path) else f"hub id {base!r}{_at(revision)}"
    missing = [m for m in ("sentencepiece", "google.protobuf") if not _installed(m)]
    if ("sentencepiece" in text or "tiktoken" in text or "protobuf" in text) and missing:
        return DependencyError(
            f"cannot load the tokenizer of {where}: it is a SentencePiece model with no tokenizer.json, and "
            f"converting it needs {' and '.join(m.split('.')[-1] for m in missing)}, which is not installed",
            hint="pip install 'instil[slow-tokenizers]' (sentencepiece and protobuf)",
        )
    if "trust_remote_code" in text:
        return ModelError(
            f"{where} needs to run code shipped with the model to load its {what}; instil does not run it by default",
            hint="read that code first; set model.trust_remote_code: true only if you trust its source",
        )
    if "safetensors" in text and not allow_pickle:
        return ModelError(
            f"cannot load the {what} of {where}: no safetensors weights ({text.splitlines()[0]})",
            hint="use a checkpoint with safetensors, or pass allow_pickle=True if you trust its pickle files",
        )
    if isinstance(source, Path) and what == "tokenizer" and "backend tokenizer" in text:
        return ModelError(
            f"{source} has no tokenizer that transformers can read (no tokenizer.json, nor a SentencePiece "
            "tokenizer.model with its tokenizer_config.json)",
            hint="copy the tokenizer files from the model this checkpoint was trained from, then run again",
        )
    if isinstance(source, Path):
        hint = (
            "check the folder is complete (config.json, tokenizer files, *.safetensors) and was written by "
            "save_pretrained"
        )
    else:
        hint = (
            f"check the id on huggingface.co; download it first with `hf download {base}`, or set HF_HOME to the "
            "cache that holds it, or point model.base at a local folder"
        )
    return ModelError(
        f"cannot load the {what} of {where}: {text.splitlines()[0] if text else type(error).__name__}",
        hint=hint,
    )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package ("google") is missing
        return False


def _chat_template(value: str, root: Path | None) -> str:
    """``model.chat_template`` as Jinja text: a built-in name, Jinja text, or a .jinja path (read from ``root``)."""
    relative = Path(value.strip()).expanduser()
    if root is not None and "{" not in value and not relative.is_absolute() and (Path(root) / relative).is_file():
        value = str(Path(root) / relative)
    return resolve_template(value)[0]


# ---- loading for inference: evaluation, serving, export ------------------------------------------------------------
@dataclass(frozen=True)
class LoadedModel:
    """A model ready to generate: the model (a PEFT model for an unmerged adapter), its tokenizer, its renderer."""

    model: Any
    tokenizer: Any
    """The tokenizer with the chat template training rendered with (saved beside a trained version)."""
    renderer: ChatRenderer
    """The one rendering path of training, evaluation and serving."""


def default_dtype() -> str:
    """``auto`` (the checkpoint's own dtype) on CUDA, float32 on CPU, where half precision is slow or unsupported
    for many kernels. Training and inference load with the same choice."""
    return "auto" if cuda_available() else "float32"


def load_for_inference(
    source: ModelVersion | ModelSpec,
    *,
    root: Path | None = None,
    trust_remote_code: bool = False,
    allow_dropped_messages: bool = False,
    merge: bool = False,
    dtype: str | Any | None = None,
    device: str | None = None,
) -> LoadedModel:
    """Load a trained model version, or a base model as a (resolved, not ``tiny``) :class:`ModelSpec` says.

    A version is a PEFT adapter on the base it was trained on (:func:`trained_base`), or a whole model folder; its
    tokenizer is the one saved beside it. ``merge`` folds a LoRA adapter into its base (``merge_and_unload``; for a
    QLoRA adapter into the NF4 base dequantized, the weights the adapter saw in training). ``dtype`` defaults to
    :func:`default_dtype`, ``device`` to ``cuda`` when one is visible; a base spec's own ``trust_remote_code`` and
    ``allow_dropped_messages`` apply too.
    """
    dtype = dtype or default_dtype()
    if isinstance(source, ModelSpec):
        tokenizer = load_tokenizer(source, root=root)
        model = load_model(source, root=root, dtype=dtype)
        allow_dropped_messages = allow_dropped_messages or source.allow_dropped_messages
    else:
        tokenizer, model = _load_version(source, trust_remote_code, merge, dtype, root)
    if device is None and cuda_available():
        device = "cuda"
    if device is not None:
        model = model.to(device)
    return LoadedModel(model, tokenizer, ChatRenderer(tokenizer, allow_dropped_messages=allow_dropped_messages))


def _load_version(
    version: ModelVersion, trust_remote_code: bool, merge: bool, dtype: str | Any, root: Path | None
) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    folder = Path(version.path)
    if not folder.is_dir():
        raise ModelError(f"model {version.ref}: its folder {folder} is gone", hint="retrain it (`instil train`)")
    # Saved beside the weights with the template training rendered with (an adapter folder has no config.json,
    # which load_tokenizer asks of a model folder).
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not (folder / "adapter_config.json").is_file():
        return tokenizer, load_model(folder, dtype=dtype)
    from peft import PeftModel

    qlora = merge and version_kind(version) == "qlora"
    base_path = trained_base(version)
    base = load_model(
        base_path,
        revision=version.revision if isinstance(base_path, str) else None,
        trust_remote_code=trust_remote_code,
        root=root,
        dtype=dtype,
        quantization="4bit" if qlora else None,
    )
    if qlora:
        import torch

        base = base.dequantize(dtype=torch.float32)  # the NF4 weights the adapter was trained against
    try:
        model = PeftModel.from_pretrained(base, folder, is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(
            f"cannot apply the adapter in {folder} to the base {base_path}: "
            f"{str(e).splitlines()[0] if str(e) else e!r}",
            hint="the base must be the model the adapter was trained on; check model_info.path in the model's meta",
        ) from None
    return tokenizer, model.merge_and_unload() if merge else model


def model_kind(folder: Path) -> str:
    """What a training output folder holds: ``lora``, ``qlora``, ``prompt_tuning`` (or another PEFT type, lower
    case) for an adapter, ``full`` for a whole model.

    LoRA and QLoRA adapters look the same on disk; the run's ``instil_train.json`` tells them apart.
    """
    folder = Path(folder)
    config = folder / "adapter_config.json"
    if config.is_file():
        peft_type = str(_read_json(config).get("peft_type", "")).lower()
        if peft_type == "lora" and _trained_adapter(folder) == "qlora":
            return "qlora"
        return peft_type or "unknown"
    if (folder / "config.json").is_file():
        return "full"
    raise ModelError(
        f"{folder} holds neither an adapter (adapter_config.json) nor a model (config.json)",
        hint="check the folder was written by `instil train` and is complete; the store records where each model is",
    )


def version_kind(version: ModelVersion) -> str:
    """What a trained version is: :func:`model_kind` of its folder, told apart as ``qlora`` also by the adapter its
    model version records."""
    kind = model_kind(Path(version.path))
    return "qlora" if kind == "lora" and version.meta.get("adapter") == "qlora" else kind


def trained_base(version: ModelVersion) -> Path | str:
    """The base a trained adapter version was trained on: the folder recorded at training, else the adapter's own
    record.

    In order: the resolved base in the model version's meta (``model_info.path``: for ``tiny``, the built folder in
    the instil home; for a local ``model.base``, its absolute path; for a hub id, its cache snapshot), then PEFT's
    ``base_model_name_or_path`` in ``adapter_config.json``, then the model version's ``base_model`` (a hub id).
    A recorded folder that no longer exists is an error, never a silent switch to another base.
    """
    recorded = (version.meta.get("model_info") or {}).get("path")
    adapter = _read_json(Path(version.path) / "adapter_config.json")
    for value in (recorded, adapter.get("base_model_name_or_path")):
        if not value:
            continue
        path = Path(str(value)).expanduser()
        if path.is_absolute() or path.exists():
            if not path.is_dir():
                raise ModelError(
                    f"the base of {version.ref} was {path} at training time, and that folder is gone",
                    hint="restore the base model folder there (for model.base: tiny, re-run `instil train` once to "
                    "rebuild it), or export with --no-merge to copy the adapter alone",
                )
            return path
        return str(value)  # a hub id: load_model resolves it in the local cache, at the recorded revision
    return version.base_model


def job_base(spec: JobSpec, store: Store) -> Path | str:
    """The base model a job's base candidates run and serve: the folder the latest model was trained from, else
    what training would resolve (for ``tiny``, the model built from the training split as training saw it).

    A recorded ``tiny`` base that is gone is an error: a rebuilt one would be another random model."""
    models = store.list_models(spec.name)
    if models:
        recorded = (models[-1].meta.get("model_info") or {}).get("path")
        if recorded and Path(recorded).exists():
            return Path(recorded)
        if recorded and spec.model.is_tiny:
            raise ModelError(
                f"model {models[-1].ref} was trained from the tiny base at {recorded}, which no longer exists; a "
                "rebuilt one would be a different random model, so the base candidates would mean nothing",
                hint="retrain (`instil train`), or evaluate only the tuned model (--candidate)",
            )
    examples = None
    if spec.model.is_tiny:
        try:
            train = store.get_dataset(dataset_name(spec, "train"))
        except NotFoundError:
            raise ModelError(
                f"model.base is {spec.model.base!r}, whose tokenizer is built from the training split, but "
                f"{dataset_name(spec, 'train')} does not exist yet",
                hint="run `instil data split` first",
            ) from None
        # The tiny base's tokenizer is built from exactly what training saw.
        examples = [e.with_system_prompt(spec.short_prompt) for e in store.iter_examples(train)]
    return resolve_base(spec.model, root=spec.root, examples=examples)


# ---- describing ------------------------------------------------------------------------------------------------------
def model_info(path_or_model: str | Path | Any, *, base: str | None = None, revision: str | None = None) -> ModelInfo:
    """Describe a loaded model, a local folder, or a hub id already in the local cache (this never downloads)."""
    if hasattr(path_or_model, "config") and hasattr(path_or_model, "num_parameters"):
        model = path_or_model
        name = str(getattr(model, "name_or_path", "") or "")
        folder = Path(name) if name and Path(name).is_dir() else None
        config = model.config
        return ModelInfo(
            base=base or name,
            path=str(folder) if folder else name,
            revision=revision or _snapshot_commit(folder),
            weights_sha256=weights_sha256(folder) if folder else None,
            architecture=_architecture(config.to_dict()),
            n_parameters=int(model.num_parameters()),
            dtype=str(model.dtype).removeprefix("torch."),
            is_tiny=bool(folder and (folder / TINY_MARKER).is_file()),
            has_chat_template=bool(folder and _has_chat_template(folder)),
        )
    name = str(path_or_model)
    where = Path(path_or_model).expanduser().absolute() if isinstance(path_or_model, Path) else name
    located = ModelSpec(base=str(where)).locate(None)
    folder = located if isinstance(located, Path) else _cached_snapshot(name, revision)
    if folder is None:
        raise ModelError(
            f"model {name!r}{_at(revision)} is not in the local Hugging Face cache; model_info reads local files only",
            hint=f"download it first with `hf download {name}`, or load it with load_model and pass the model",
        )
    folder = ModelSpec(base=str(folder)).locate(None)
    assert isinstance(folder, Path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return ModelInfo(
        base=base or name,
        path=str(folder),
        revision=revision or _snapshot_commit(folder),
        weights_sha256=weights_sha256(folder),
        architecture=_architecture(config),
        n_parameters=_count_parameters(folder),
        dtype=str(config.get("dtype") or config.get("torch_dtype") or "float32"),
        is_tiny=(folder / TINY_MARKER).is_file(),
        has_chat_template=_has_chat_template(folder),
    )


def weights_sha256(folder: Path) -> str | None:
    """Content hash of the ``*.safetensors`` files in ``folder``, read in 1 MiB blocks; None when there are none.

    One file: its plain sha256 (what ``sha256sum`` prints and the hub shows as the file's LFS oid). Several (a sharded
    checkpoint): the sha256 of the lines ``<name> <sha256>`` in name order.
    """
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    digests = []
    for path in files:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        digests.append((path.name, h.hexdigest()))
    if len(digests) == 1:
        return digests[0][1]
    return sha256_hex("".join(f"{name} {digest}\n" for name, digest in digests))


def _snapshot_commit(folder: Path | None) -> str | None:
    # The hub cache keeps each revision under .../snapshots/<commit hash>/.
    if folder is not None and folder.parent.name == "snapshots" and _COMMIT.fullmatch(folder.name):
        return folder.name
    return None


def _architecture(config: dict[str, Any]) -> str:
    names = config.get("architectures") or []
    return str(names[0]) if names else str(config.get("model_type", "unknown"))


def _count_parameters(folder: Path) -> int:
    """Parameters stored in the safetensors files, read from their headers (no tensor is loaded)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                n = 1
                for dim in entry["shape"]:
                    n *= dim
                total += n
    return total


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, ValueError):
            return False
    return False


def _trained_adapter(folder: Path) -> str | None:
    """The adapter the run's ``instil_train.json`` records (``lora``, ``qlora``...), or None without one."""
    summary = folder / "instil_train.json"
    if not summary.is_file():
        return None
    setting = (_read_json(summary).get("settings") or {}).get("adapter") or {}
    return setting.get("value") if isinstance(setting, dict) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(
            f"{path} is not readable JSON: {e}", hint="the training output is damaged; train the model again"
        ) from None
    return value if isinstance(value, dict) else {}
