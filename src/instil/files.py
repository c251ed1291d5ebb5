"""Writing files so that a crash never leaves a half-written one: what instil writes whole goes through here.

    write_atomic(path, text)                  # a str or bytes, in one rename
    with replacing(folder) as staging:        # a file or folder built at `staging`, renamed onto `folder` at the end
        save_pretrained(staging)

The work happens under a temporary name beside the target (same folder, so the rename is atomic on POSIX and
Windows) and is moved into place with ``os.replace`` only when it finished; on any error the temporary is removed
and the target is left as it was. (Content-addressed blobs, whose name is their hash, are named only once written:
:mod:`instil.store.blobs` moves them into place itself.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing", "staging_path", "write_atomic"]


def staging_path(target: Path) -> Path:
    """The temporary name beside ``target`` that this process builds it under (hidden, tagged with the pid)."""
    return target.parent / f".{target.name}.{os.getpid()}.tmp"


@contextmanager
def replacing(target: str | Path, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; when the block ends without error, what was written there (a file
    or a folder) is renamed onto ``target``. With ``keep_existing``, a ``target`` folder that appeared meanwhile (a
    concurrent build that finished first) is kept and this one dropped."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(target)
    _remove(staging)
    try:
        yield staging
        try:
            os.replace(staging, target)
        except OSError:  # a folder cannot replace a non-empty folder
            if not (keep_existing and target.exists()):
                raise
    finally:
        _remove(staging)


def write_atomic(path: str | Path, data: str | bytes, *, durable: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` in one rename; returns the path. ``durable`` syncs the bytes to
    disk before the rename, for a file whose presence promises that (a checkpoint's completion marker)."""
    path = Path(path)
    with replacing(path) as staging, staging.open("wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
