"""Inside a launched worker (``instil train --processes N``): rank, world size, and the few collectives training needs.

    rank, size = world()                  # (0, 1) in a plain single-process run
    seen, trained = all_sum(seen, trained)   # summed over every process; unchanged in a single process
    barrier()                             # wait for every process (a no-op in a single process)

Launching the workers is :mod:`instil.train.launch`; this module only reads what torchrun or accelerate set, so a
training method imports it without importing the launcher.
"""

from __future__ import annotations

import os
from typing import Any

from instil.errors import InstilError
from instil.train.settings import Setting

__all__ = ["all_sum", "barrier", "distributed_settings", "is_main_process", "shutdown", "world"]


def world() -> tuple[int, int]:
    """(rank, world size) of this process, from the variables torchrun and accelerate set; (0, 1) when not launched."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single-process run): the process that records, saves and prints."""
    return world()[0] == 0


def distributed_settings(batch_size: int, *, cuda: bool) -> dict[str, Any]:
    """The settings a launched worker adds (``{}`` in a single process), as
    :class:`~instil.train.settings.Setting` values.

    ``per_device_batch_size`` = ``batch_size / N`` keeps the global batch equal to ``training.batch_size``.
    """
    rank, size = world()
    if size <= 1:
        return {}
    if batch_size % size:
        raise InstilError(
            f"training.batch_size is {batch_size}, which {size} processes cannot split evenly: each process takes "
            "batch_size / processes rows a step so that the global batch stays training.batch_size",
            hint=f"set training.batch_size to a multiple of {size}, or launch a number of processes that divides it",
        )
    s = {
        "processes": Setting(size, "argument", "instil train --processes"),
        "per_device_batch_size": Setting(
            batch_size // size, "data", f"global batch {batch_size} over {size} processes"
        ),
    }
    if not cuda:
        s["use_cpu"] = Setting(True, "default", "no CUDA: processes on CPU")
        s["ddp_backend"] = Setting("gloo", "default", "the CPU backend of torch.distributed")
    return s


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_sum(*values: int) -> tuple[int, ...]:
    """Each integer summed over all processes (unchanged in a single process); every process must call it."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tuple(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return tuple(int(v) for v in t.cpu().tolist())


def shutdown() -> None:
    """Tear the process group down before exit: a gloo thread left running aborts the process ("terminate called
    without an active exception"), which torchrun reports as a failed worker."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
