"""Content-addressed example files: a dataset's examples live here, not in database rows.

    blobs = BlobStore(home / "blobs")
    info = blobs.put_examples(examples)          # streams to disk while hashing; returns BlobInfo(sha256, ...)
    for example in blobs.iter_examples(info.sha256):
        ...

A blob is canonical JSONL: one ``canonical_json(example.to_dict())`` per line, each ending in ``\\n``. Its name is the
sha256 of its bytes, which is also the dataset's content hash, so the same examples always land in the same file and
are stored once. Layout: ``<root>/sha256/<first 2 hex>/<hash>.jsonl``.

Writes go to a temp file in the same folder and are moved into place with ``os.replace`` once complete, so a crash
never leaves a half-written blob under a real name. Paths are built only from validated hex hashes, never from
user-supplied names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from instil.data.records import Example, canonical_json
from instil.errors import NotFoundError, StoreError

__all__ = ["BlobInfo", "BlobStore", "check_sha256"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


def check_sha256(value: str) -> str:
    """``value`` if it is a full lowercase sha256 hex digest; StoreError otherwise (it would become a path)."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise StoreError(
            f"not a sha256 digest: {value!r}",
            hint="A blob is named by the 64 lowercase hex digits of its sha256; use the sha256 of a DatasetVersion "
            "the store returned.",
        )
    return value


@dataclass(frozen=True)
class BlobInfo:
    """A blob written to (or found in) the blob store."""

    sha256: str
    """sha256 of the file's bytes: the content hash of the examples it holds."""
    n_examples: int
    """Number of examples (lines)."""
    path: Path
    """Where the file is."""
    bytes: int
    """Size of the file in bytes."""


class BlobStore:
    """Example files under ``root``, named by their sha256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        """Where the blob named ``sha256`` is (or would be)."""
        check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / f"{sha256}.jsonl"

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_examples(self, examples: Iterable[Example]) -> BlobInfo:
        """Write ``examples`` as canonical JSONL, one at a time (never all in memory), and name the file by its hash."""
        tmp_dir = self.root / "sha256"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix=".incoming-", suffix=".jsonl")
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        n = size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for example in examples:
                    line = (canonical_json(example.to_dict()) + "\n").encode("utf-8")
                    digest.update(line)
                    f.write(line)
                    n += 1
                    size += len(line)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name says they are complete
            sha256 = digest.hexdigest()
            final = self.path(sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.is_file() and final.stat().st_size == size:
                tmp.unlink()  # the same content is already stored
            else:
                os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return BlobInfo(sha256=sha256, n_examples=n, path=final, bytes=size)

    def iter_examples(self, sha256: str) -> Iterator[Example]:
        """The blob's examples, streamed. Raises StoreError at the end if the file no longer matches its hash."""
        path = self.path(sha256)
        if not path.is_file():
            raise NotFoundError(
                f"blob {sha256} is missing: {path} does not exist",
                hint="The database names a dataset file that was deleted or never copied; restore the blobs "
                "folder from a backup, or re-import the dataset.",
            )
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for lineno, line in enumerate(f, start=1):
                digest.update(line)
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise StoreError(
                        f"{path}:{lineno}: blob line is not JSON ({e.msg})",
                        hint="The blob file is corrupt; restore it from a backup or re-import the dataset.",
                    ) from None
                yield Example.from_dict(record, source=f"{path}:{lineno}")
        if digest.hexdigest() != sha256:
            raise StoreError(
                f"{path}: blob content does not match its name (sha256 {digest.hexdigest()})",
                hint="The file was changed after it was written; restore it from a backup or re-import the dataset.",
            )

    def verify(self, sha256: str) -> bool:
        """True when the blob exists and its bytes still hash to its name."""
        path = self.path(sha256)
        if not path.is_file():
            return False
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest() == sha256
