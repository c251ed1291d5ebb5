"""Export a trained model version as a standalone folder (``instil export``): a merged model, or the adapter as is.

    with Store.open(home=home_dir(spec.root)) as store:
        folder = export_model(store, "colors", dest=Path("exported/colors"))           # LoRA merged into its base
        folder = export_model(store, "colors", version=2, dest=out, merge=False)       # the adapter, copied

What is written, by the kind of model version:

* **LoRA**: the base model is loaded in float32 (from the folder recorded with the model version, see
  :func:`~instil.train.models.trained_base`) through the one inference loader
  (:func:`~instil.train.models.load_for_inference`), the adapter applied with PEFT and folded in with
  ``merge_and_unload()``; the result is saved with ``save_pretrained(safe_serialization=True)`` in the base's own
  dtype (merging itself runs in float32, so a bf16 base loses nothing to rounding before the final cast). The
  merged folder loads with plain transformers (``AutoModelForCausalLM.from_pretrained``), no PEFT needed, and gives
  the logits base+adapter gave.
* **QLoRA**: the adapter was trained against the 4-bit NF4 base, so it is merged into that base *dequantized* to
  float (``load_in_4bit`` then ``model.dequantize()``): the merged weights are the weights the adapter actually saw
  during training, rounding of NF4 included, rather than the original full-precision ones. Needs bitsandbytes.
* **Full fine-tune**: already a whole model; its folder is copied as it is.
* **Prompt tuning**: virtual tokens are an input, not a weight delta, so there is nothing to merge:
  :class:`ModelError`; export it with ``merge=False`` (the adapter folder, loadable with PEFT).

Beside the weights go the tokenizer with the chat template training used (so serving renders exactly what training
rendered), the run's ``instil_train.json`` and ``loss_history.json``, and ``instil_export.json``: the source model
version, the base, the sha256 of every adapter file, whether it was merged, and the library versions. The folder is
built under a temp name next to ``dest`` and renamed into place, so a crash never leaves a half-written export.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from instil.env import library_versions
from instil.errors import InstilError, ModelError, StoreError
from instil.files import replacing
from instil.store import ModelVersion, Store
from instil.train.models import load_for_inference, trained_base, version_kind, weights_sha256

__all__ = ["EXPORT_FILE", "export_model"]

EXPORT_FILE = "instil_export.json"
"""The provenance file written into every exported folder."""
_CARRIED = ("instil_train.json", "loss_history.json", "loss_curve.png")
"""Files of the training output carried into a merged export, when present."""
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def export_model(store: Store, job: str, *, version: int | None = None, dest: Path, merge: bool = True) -> Path:
    """Write model version ``version`` of ``job`` (the latest when None) to the new folder ``dest``; returns it.

    With ``merge`` (the default) a LoRA or QLoRA adapter is merged into its base; without it, or for a full
    fine-tune, the trained folder is copied as it is. Raises :class:`NotFoundError` for an unknown job or version,
    :class:`ModelError` for a prompt-tuning adapter with ``merge`` or a base that cannot be loaded, and
    :class:`InstilError` when ``dest`` exists.
    """
    model = store.get_model(job, version)
    source = Path(model.path)
    if not source.is_dir():
        raise StoreError(
            f"model {model.ref} is recorded at {source}, and that folder is gone",
            hint="restore the folder, or train again with `instil train`",
        )
    dest = Path(dest)
    if dest.exists():
        raise InstilError(f"export folder {dest} exists already", hint="pick a new --out folder or remove this one")
    kind = version_kind(model)  # LoRA and QLoRA are the same files on disk; the model version tells them apart
    if merge and kind not in ("lora", "qlora", "full"):
        raise ModelError(
            f"model {model.ref} is a {kind} adapter, which cannot be merged into its base: its virtual tokens are "
            "an input to the model, not a change to its weights",
            hint="export it with --no-merge (the adapter folder, loaded with peft's AutoPeftModelForCausalLM)",
        )

    record: dict[str, Any] = {
        "source": {
            "job": model.job,
            "version": model.version,
            "ref": model.ref,
            "path": str(source),
            "run_id": model.run_id,
            "kind": kind,
        },
        "base": {"base_model": model.base_model, "revision": model.revision},
    }
    with replacing(dest) as staging:  # a crash never leaves a half-written export
        if kind in ("lora", "qlora") and merge:
            record["base"]["path"] = str(trained_base(model))
            record["adapter_files"] = _file_hashes(source, _ADAPTER_FILES)
            record["dtype"] = _merge(model, staging)
            for name in _CARRIED:
                if (source / name).is_file():
                    shutil.copy2(source / name, staging / name)
            merged = True
        else:
            shutil.copytree(source, staging)
            if kind != "full":
                record["adapter_files"] = _file_hashes(source, _ADAPTER_FILES)
            merged = False
        pickles = sorted(p.name for p in staging.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise ModelError(f"the export of {model.ref} holds pickle files {pickles}; instil ships safetensors only")
        record.update(merged=merged, weights_sha256=weights_sha256(staging), library_versions=library_versions())
        (staging / EXPORT_FILE).write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    return dest


def _merge(model: ModelVersion, out: Path) -> str:
    """Merge the LoRA adapter of ``model`` into its base and save model and tokenizer to ``out``; returns the dtype.

    Merging runs in float32; the merged model is saved, from the CPU, in the base's own dtype.
    """
    import torch

    loaded = load_for_inference(model, merge=True, dtype="float32", device="cpu")
    merged = loaded.model
    saved_dtype = _config_dtype(merged.config)
    if saved_dtype != torch.float32:
        merged = merged.to(saved_dtype)
    merged.save_pretrained(out, safe_serialization=True)
    # The adapter folder's tokenizer carries the chat template training rendered with (a base may have none).
    loaded.tokenizer.save_pretrained(out)
    return str(saved_dtype).removeprefix("torch.")


def _config_dtype(config: Any) -> Any:
    """The dtype the base checkpoint was stored in (``config.json``), float32 when it names none."""
    import torch

    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else torch.float32


def _file_hashes(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        path = folder / name
        if path.is_file():
            h = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            out[name] = h.hexdigest()
    return out
