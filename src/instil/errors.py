"""instil's typed errors. The library raises these; the CLI and HTTP layers turn them into friendly messages.

    InstilError                    every error instil raises on purpose
    ├── SpecError                  the job spec (instil.yaml) is invalid; carries every problem at once
    ├── DataError                  a data file cannot be read or is invalid
    │   ├── DataFormatError        a file's format is unknown, or a record does not fit its format
    │   └── HoldoutLeakError       a training set contains examples of the frozen holdout
    ├── StoreError                 the store (database or blob files) cannot be opened or is inconsistent
    │   └── NotFoundError          a named dataset, version, run or model does not exist
    ├── GraderError                a grader is broken (a judge endpoint down, a user function raising)
    ├── NoCheckpointError          ``--resume`` found no complete checkpoint of an earlier run like this one
    ├── ModelError                 a base model cannot be found, resolved or loaded
    │   └── ChatTemplateError      a chat template is missing, or cannot render an example faithfully
    └── DependencyError            an optional dependency is missing; the message says what to install

Every message says what is wrong, where (file, line, field) and what to do next.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DataError",
    "ChatTemplateError",
    "DataFormatError",
    "DependencyError",
    "GraderError",
    "HoldoutLeakError",
    "InstilError",
    "ModelError",
    "NoCheckpointError",
    "NotFoundError",
    "Problem",
    "SpecError",
    "StoreError",
]


class InstilError(Exception):
    """Base class of every error instil raises on purpose."""

    #: A short hint on what to do next, shown by the CLI under the message.
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


@dataclass(frozen=True)
class Problem:
    """One problem in a file: where it is and what is wrong."""

    location: str
    """The path of the field inside the document, such as ``graders[2].schema``."""
    message: str
    """What is wrong, and what to do if it is not obvious."""
    line: int | None = None
    """1-based line in the file, when known."""

    def format(self, file: str | None = None) -> str:
        where = file or ""
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        prefix = f"{where}: " if where else ""
        loc = f"{self.location}: " if self.location else ""
        return f"{prefix}{loc}{self.message}"


class SpecError(InstilError):
    """The job spec is invalid. ``problems`` lists every problem found, not just the first."""

    hint = "Fix the fields above; `instil init` writes a commented starter spec to compare with."

    def __init__(self, problems: list[Problem], *, file: str | None = None) -> None:
        self.problems = list(problems)
        self.file = file
        head = f"{file}: " if file else ""
        count = len(self.problems)
        lines = "\n".join("  " + p.format(file) for p in self.problems)
        super().__init__(f"{head}invalid job spec ({count} problem{'s' if count != 1 else ''}):\n{lines}")


class DataError(InstilError):
    """A data file cannot be read or holds invalid data."""


class DataFormatError(DataError):
    """A data file's format is unknown, or one of its records does not fit the format."""


class HoldoutLeakError(DataError):
    """Examples of the frozen holdout (or near-duplicates of them) were handed to training."""

    hint = "Remove these examples from the training data, or re-split with `instil data split`."

    def __init__(self, message: str, matches: list | None = None) -> None:
        super().__init__(message)
        self.matches = list(matches or [])


class StoreError(InstilError):
    """The store cannot be opened, or what it holds is inconsistent."""


class NotFoundError(StoreError):
    """A named dataset, version, run or model does not exist in the store."""


class GraderError(InstilError):
    """A grader is broken (not the output it grades): a judge endpoint is down, a user function raises.

    Evaluation stops on it rather than record a failing score that would blame the model.
    """

    def __init__(
        self,
        message: str,
        *,
        grader: str | None = None,
        example_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.grader = grader
        self.example_id = example_id
        where = []
        if grader is not None:
            where.append(f"grader '{grader}'")
        if example_id is not None:
            where.append(f"example {example_id}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message, hint=hint)


class NoCheckpointError(InstilError):
    """``--resume`` found no complete checkpoint of an earlier run with the same settings and data."""


class ModelError(InstilError):
    """A base model cannot be found, resolved or loaded."""


class ChatTemplateError(ModelError):
    """A chat template cannot render an example faithfully: it is missing, raises, or drops or rewrites a message."""


class DependencyError(InstilError):
    """An optional dependency is missing."""
