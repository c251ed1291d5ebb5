"""Where instil keeps its state, and what makes a result reproducible.

The home folder holds the store (``instil.db``) and the content-addressed blobs. It is ``$INSTIL_HOME`` when set
(tests point it at a temp dir), else ``.instil`` in the project folder (the spec file's folder).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["TRACKED_PACKAGES", "cuda_available", "home_dir", "instil_version", "library_versions"]

TRACKED_PACKAGES = (
    "instil",
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "safetensors",
    "tokenizers",
    "bitsandbytes",
    "pydantic",
    "sqlalchemy",
    "alembic",
    "rensa",
    "numpy",
)
"""Packages whose versions are recorded with every run."""


def home_dir(project_dir: str | Path | None = None) -> Path:
    """The instil home: ``$INSTIL_HOME``, else ``<project_dir>/.instil`` (project_dir defaults to the cwd)."""
    env = os.environ.get("INSTIL_HOME")
    if env:
        return Path(env).expanduser()
    return Path(project_dir if project_dir is not None else Path.cwd()) / ".instil"


def library_versions() -> dict[str, str]:
    """Python, platform and the versions of the packages in :data:`TRACKED_PACKAGES` that are installed."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def instil_version() -> str:
    """The installed instil's version (from its package metadata, so nothing imports the package to ask)."""
    try:
        return metadata.version("instil")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def cuda_available() -> bool:
    """Whether a CUDA device is visible: the one place device and dtype choices ask."""
    import torch  # at call time: importing torch costs seconds, and most commands never need it

    return bool(torch.cuda.is_available())
