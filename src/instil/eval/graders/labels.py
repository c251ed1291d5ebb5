"""Label accuracy: the predicted label equals the reference's; over a dataset, macro-F1 and a confusion matrix.

    grader = LabelAccuracy("label", labels=("billing", "refund"), field="category")
    scores = [grader.grade(ex, out) for ex, out in zip(examples, outputs)]
    grader.aggregate(scores)   # {"accuracy", "macro_f1", "per_label", "confusion": {"labels", "columns", "matrix"}}

The label is the whole output (stripped) for ``label`` jobs, or the string at ``field`` of a JSON output. An output
that is not JSON, lacks the field, or names a label outside ``labels`` is wrong, and lands in the confusion matrix's
``<invalid>`` column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from instil.data.records import Example
from instil.errors import DataError
from instil.eval.graders.score import MISSING, NO_OUTPUT, Score, as_output, get_path, parse_json, scored

__all__ = ["INVALID", "LabelAccuracy"]

INVALID = "<invalid>"
"""The confusion-matrix column of predictions that are not one of the labels (or could not be read at all)."""


@dataclass(frozen=True)
class LabelAccuracy:
    """The predicted label equals the reference label; :meth:`aggregate` adds macro-F1 and a confusion matrix."""

    name: str
    """The grader's name, used in reports."""
    labels: tuple[str, ...]
    """The allowed labels, in the order the confusion matrix shows them."""
    threshold: float = 1.0
    """The pass rule: value >= threshold."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""
    field: str | None = None
    """Dotted path of the label in a JSON output; None when the whole output is the label."""

    def _read(self, text: str) -> tuple[str | None, str | None]:
        """(label, None) or (None, why it cannot be read)."""
        if self.field is None:
            label = text.strip()
            return (label, None) if label else (None, "the output is empty")
        value, reason = parse_json(text)
        if reason is not None:
            return None, reason
        label = get_path(value, self.field)
        if label is MISSING:
            return None, f"field '{self.field}' is missing"
        if not isinstance(label, str):
            return None, f"field '{self.field}' is {type(label).__name__}, not a string label"
        return label.strip(), None

    def grade(self, example: Example, output: Any) -> Score:
        reference, why = self._read(example.output_text())
        if reference is None or reference not in self.labels:
            why = why or f"'{reference}' is not one of {list(self.labels)}"
            raise DataError(
                f"example {example.key()} ({example.source or 'no source'}): grader '{self.name}' cannot "
                f"read the reference label: {why}. Fix the example, or output.labels in the spec."
            )
        out = as_output(output)
        predicted, reason = (None, NO_OUTPUT) if out is None else self._read(out.text)
        if predicted is not None and predicted not in self.labels:
            reason = f"'{predicted[:60]}' is not one of the labels {list(self.labels)}"
        details = {"reference": reference, "predicted": predicted if reason is None else INVALID}
        if reason is not None:
            return Score(0.0, False, reason, details)
        if predicted != reference:
            return scored(0.0, self.threshold, f"predicted '{predicted}', expected '{reference}'", details)
        return scored(1.0, self.threshold, details=details)

    def aggregate(self, scores: Sequence[Score]) -> dict[str, Any]:
        """Accuracy, macro-F1, per-label precision / recall / F1 / support, and the confusion matrix.

        Rows are reference labels, columns predicted labels then ``<invalid>``. An invalid prediction counts against
        the reference label's recall but no label's precision. Macro-F1 averages the labels that occur as reference
        or prediction (a label seen on neither side has no F1 to average).
        """
        columns = [*self.labels, INVALID]
        index = {label: i for i, label in enumerate(columns)}
        matrix = [[0] * len(columns) for _ in self.labels]
        for s in scores:
            ref, pred = s.details.get("reference"), s.details.get("predicted")
            if ref not in self.labels or pred not in index:
                raise ValueError(
                    f"grader '{self.name}': aggregate() takes scores from this grader's grade(); "
                    f"got details {s.details}"
                )
            matrix[index[ref]][index[pred]] += 1
        n = len(scores)
        correct = sum(matrix[i][i] for i in range(len(self.labels)))
        per_label: dict[str, dict[str, float]] = {}
        f1s = []
        for i, label in enumerate(self.labels):
            tp = matrix[i][i]
            support = sum(matrix[i])
            predicted = sum(row[i] for row in matrix)
            precision = tp / predicted if predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
            if support or predicted:
                f1s.append(f1)
        return {
            "n": n,
            "accuracy": correct / n if n else 0.0,
            "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
            "invalid": sum(row[-1] for row in matrix),
            "per_label": per_label,
            "confusion": {"labels": list(self.labels), "columns": columns, "matrix": matrix},
        }
