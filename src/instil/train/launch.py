"""Multi-process training (``instil train --processes N``) through torchrun or ``accelerate launch``.

    from instil.train.launch import launch
    code = launch("instil.yaml", processes=2)                           # torchrun, data parallel (DDP)
    code = launch("instil.yaml", processes=8, config="deepspeed-zero3")  # accelerate launch + a shipped config

instil has no engine of its own: :func:`launch` re-runs this module as the worker entry under
``python -m torch.distributed.run --standalone --nproc_per_node N`` (no config), or under
``accelerate launch --config_file <config> --num_processes N`` when a config is chosen (the shipped ones in
``instil/configs``, listed in :data:`CONFIGS`, or a path to your own accelerate YAML). Each worker runs
:func:`instil.train.sft.train_sft` on rank 0 and :func:`instil.train.sft.follow_sft` on the others; the Trainer
does the rest (DistributedSampler, gradient all-reduce). Only rank 0 records the run in the store, writes the model
and prints; the others train.

**Batch size.** ``training.batch_size`` is the *global* batch, as in a single-process run: each of the N processes
takes ``batch_size / N`` rows a step (:func:`~instil.train.distributed.distributed_settings`), so the optimizer
sees the same number of rows a step and the learning rate keeps its meaning. A batch size that N does not divide is
refused. The loss is averaged over the tokens of the whole global batch (``average_tokens_across_devices``), so a
step over the same rows gives the same update as one process would, up to float rounding. The *order* of rows
differs (each process samples its own shard), so runs match exactly only when a step takes the whole training set.

**CPU.** Without CUDA the workers use the ``gloo`` backend and ``use_cpu=True``. Note that
``accelerate launch --cpu --num_processes 2`` starts a single process; without a config instil uses torchrun,
which starts N.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from instil.env import cuda_available, home_dir
from instil.errors import InstilError
from instil.spec import load_spec
from instil.store import Store
from instil.train.distributed import is_main_process, shutdown, world
from instil.train.sft import follow_sft, train_sft

__all__ = [
    "CONFIGS",
    "LAUNCH_ID_ENV",
    "config_path",
    "launch",
    "launch_command",
    "main",
]

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
"""The accelerate / DeepSpeed / FSDP configs shipped in the package."""
CONFIGS = {
    "ddp": "accelerate-ddp.yaml",
    "deepspeed-zero2": "deepspeed-zero2.yaml",
    "deepspeed-zero3": "deepspeed-zero3.yaml",
    "fsdp": "fsdp.yaml",
}
"""``--config`` names and the accelerate YAML each one launches with."""
DEEPSPEED_JSON = {"deepspeed-zero2": "deepspeed-zero2.json", "deepspeed-zero3": "deepspeed-zero3.json"}
"""The DeepSpeed config each DeepSpeed accelerate YAML uses (passed as an absolute path at launch)."""
LAUNCH_ID_ENV = "INSTIL_LAUNCH_ID"
"""Set by :func:`launch` to one id shared by all its workers: they name their shared checkpoint folder with it."""


# ---- starting the workers --------------------------------------------------------------------------------------------
def config_path(config: str) -> Path:
    """The accelerate YAML for ``config``: a shipped name (:data:`CONFIGS`) or a path to a file."""
    if config in CONFIGS:
        return CONFIGS_DIR / CONFIGS[config]
    path = Path(config).expanduser()
    if not path.is_file():
        raise InstilError(
            f"--config {config!r} is neither a shipped config nor an existing file",
            hint=f"use one of {', '.join(CONFIGS)}, or the path to an accelerate config YAML",
        )
    return path.resolve()


def launch_command(
    spec_path: str | Path, *, processes: int, config: str | None = None, extra_args: Sequence[str] = ()
) -> list[str]:
    """The command line that starts ``processes`` workers; ``extra_args`` go to the worker (see :func:`main`)."""
    if processes < 1:
        raise InstilError(f"--processes is {processes}; it must be 1 or more", hint="pass --processes 2 or more")
    worker = ["-m", "instil.train.launch", str(Path(spec_path).resolve()), *extra_args]
    if config is None:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            *worker,
        ]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_path(config)),
        "--num_processes",
        str(processes),
    ]
    if config in DEEPSPEED_JSON:  # absolute, so the YAML's relative name works from any folder
        cmd += ["--deepspeed_config_file", str(CONFIGS_DIR / DEEPSPEED_JSON[config])]
    return [*cmd, *worker]


def launch(
    spec_path: str | Path,
    *,
    processes: int,
    config: str | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> int:
    """Train the spec with ``processes`` workers and wait for them; returns their exit code (0 on success).

    ``extra_args`` are worker options (``--max-steps N``, ``--output-dir D``, ``--no-progress``, ``--resume``);
    ``env`` adds environment variables for the workers.
    """
    cmd = launch_command(spec_path, processes=processes, config=config, extra_args=extra_args)
    child_env = {**os.environ, **(env or {}), LAUNCH_ID_ENV: uuid.uuid4().hex[:12]}
    if config is None and not cuda_available():
        child_env.setdefault("ACCELERATE_USE_CPU", "true")
    return subprocess.run(cmd, env=child_env, check=False).returncode


# ---- the worker entry ------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """One worker: ``python -m instil.train.launch SPEC [--max-steps N] [--output-dir D] [--no-progress]
    [--resume]``."""
    parser = argparse.ArgumentParser(prog="python -m instil.train.launch", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    try:
        return _work(args)
    finally:
        shutdown()


def _work(args: argparse.Namespace) -> int:
    err = Console(stderr=True, highlight=False)
    try:
        spec = load_spec(args.spec)
        with Store.open(home=home_dir(spec.root)) as store:
            if not is_main_process():
                follow_sft(spec, store, output_dir=args.output_dir, max_steps=args.max_steps, resume=args.resume)
                return 0
            result = train_sft(
                spec,
                store,
                output_dir=args.output_dir,
                max_steps=args.max_steps,
                progress=not args.no_progress,
                resume=args.resume,
            )
    except InstilError as e:
        err.print(
            f"[red]error:[/] {e}" + (f"\n[dim]hint:[/] {e.hint}" if e.hint else ""),
            soft_wrap=True,
            markup=True,
        )
        return 1
    m, (_, size) = result.metrics, world()
    eval_loss = "-" if m.eval_loss is None else f"{m.eval_loss:.4f}"
    Console(highlight=False).print(
        f"run {result.run_id}: [bold]{result.model.ref}[/] on {size} processes; train loss {m.train_loss:.4f}, "
        f"eval loss {eval_loss}, {m.steps} steps, {m.tokens_per_second:,.0f} tokens/s, {m.seconds:.1f}s\n"
        f"model written to [bold]{result.output_dir}[/]",
        soft_wrap=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
