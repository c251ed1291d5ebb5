"""`instil serve --engine vllm`: vLLM's OpenAI server runs the job's versions, behind instil's capture and routing.

    plan = vllm_plan(spec, store, port=8101)          # the versions `instil serve` would load
    plan.command    # ['vllm', 'serve', <base>, '--port', '8101', '--served-model-name', 'triage:base',
                    #  '--tokenizer', <v3's folder>, '--enable-lora', '--max-lora-rank', '16', '--max-loras', '2',
                    #  '--lora-modules', 'triage@3=<folder>', 'triage@2=<folder>', ...]
    serve_job(spec, store, engine="vllm")             # vLLM on a loopback port, the proxy in front, until Ctrl-C

For scale, on a CUDA machine with ``pip install vllm``. vLLM serves the base under ``<job>:base`` and each LoRA
version as a LoRA module named ``<job>@<n>`` (multi-LoRA: ``--enable-lora --lora-modules``); the tokenizer is the one
training saved beside the adapters, so the chat template is training's. A single whole-model version (a full
fine-tune, or an export merged with ``instil export``) is served alone under its name. Prompt-tuning versions are not
something vLLM serves: use the default engine for those.

In front of it runs the proxy (:mod:`instil.serve.proxy`): every request is traced (source ``local``, with the
version that answered), and the job's aliases (``<job>`` for production, ``<job>@<pin>``, ``@latest``) are turned into
the canonical ``<job>@<n>`` vLLM knows, as the store says at the time, so a promotion reaches a running server
without a restart. Versions not loaded at start need a restart with ``--version``.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from instil.errors import DependencyError, InstilError, NotFoundError
from instil.registry import resolve
from instil.serve.versions import default_versions
from instil.spec import JobSpec
from instil.store import ModelVersion, Store
from instil.train.models import trained_base, version_kind

__all__ = ["LORA_RANKS", "VllmPlan", "vllm_executable", "vllm_plan"]

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The ``--max-lora-rank`` values vLLM accepts; the plan takes the smallest that holds every adapter's rank."""


@dataclass(frozen=True)
class VllmPlan:
    """The vLLM server to start for a job: its command line and the names it will answer to."""

    command: list[str]
    names: list[str]
    """The models it serves (``<job>:base`` first when the versions are adapters)."""
    port: int
    versions: list[int]


def vllm_executable() -> list[str]:
    """How to start vLLM's CLI here: the ``vllm`` script, else ``python -m vllm.entrypoints.cli.main``; a clear error
    when vLLM is not installed."""
    found = shutil.which("vllm")
    if found:
        return [found]
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise DependencyError(
            "--engine vllm needs vLLM, which runs on a CUDA GPU",
            hint="pip install vllm (on the GPU machine), or serve with the default engine (drop --engine)",
        )
    return [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def vllm_plan(
    spec: JobSpec,
    store: Store,
    *,
    versions: Sequence[int | str] | None = None,
    port: int,
    host: str = "127.0.0.1",
    executable: Sequence[str] = ("vllm",),
    extra_args: Sequence[str] = (),
) -> VllmPlan:
    """The command that serves ``versions`` of the job (default: production or the latest, the pinned versions, the
    latest) with vLLM on ``host:port``. Refuses what vLLM cannot serve together, saying what to do instead."""
    chosen = [resolve(store, spec.name, v) for v in versions] if versions else default_versions(store, spec.name)
    if not chosen:
        raise NotFoundError(f"the job {spec.name!r} has no model to serve yet", hint="train one first (`instil train`)")
    chosen = list({m.version: m for m in chosen}.values())
    kinds = {m.version: version_kind(m) for m in chosen}
    command = [*executable, "serve"]
    common = ["--host", host, "--port", str(port), "--dtype", "auto"]
    if spec.model.trust_remote_code:
        common.append("--trust-remote-code")
    if all(k in ("lora", "qlora") for k in kinds.values()):
        bases = {str(trained_base(m)) for m in chosen}
        if len(bases) > 1:
            raise InstilError(
                f"these versions were trained on different bases ({', '.join(sorted(bases))}); one vLLM server "
                "holds one base",
                hint="serve the versions of one base (--version), or one server per base",
            )
        (base,) = bases
        ranks = [_rank(m) for m in chosen]
        rank = next((r for r in LORA_RANKS if r >= max(ranks)), None)
        if rank is None:
            raise InstilError(
                f"an adapter's rank is {max(ranks)}, more than vLLM's largest ({LORA_RANKS[-1]})",
                hint="merge it (`instil export`) and serve the merged model, or use the default engine",
            )
        names = [f"{spec.name}:base", *(m.ref for m in chosen)]
        command += [base, *common, "--served-model-name", names[0], "--tokenizer", str(chosen[0].path)]
        revision = chosen[0].revision
        if revision and not Path(base).is_absolute():
            command += ["--revision", revision]
        command += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(chosen)), "--lora-modules"]
        command += [f"{m.ref}={m.path}" for m in chosen]
    elif len(chosen) == 1 and kinds[chosen[0].version] == "full":
        (only,) = chosen
        names = [only.ref]
        command += [str(only.path), *common, "--served-model-name", only.ref]
    else:
        shown = ", ".join(f"{m.ref} ({kinds[m.version]})" for m in chosen)
        raise InstilError(
            f"vLLM serves LoRA versions of one base together, or one whole model; these cannot share it: {shown}",
            hint="pick versions with --version (LoRA ones, or a single full or merged one), or use the default "
            "engine, which serves any mix",
        )
    return VllmPlan(command + list(extra_args), names, port, [m.version for m in chosen])


def _rank(version: ModelVersion) -> int:
    config = Path(version.path) / "adapter_config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InstilError(f"{version.ref}: cannot read {config}: {e}") from None
    ranks = [int(data.get("r") or 8), *(int(r) for r in (data.get("rank_pattern") or {}).values())]
    return max(ranks)
