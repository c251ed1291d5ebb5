"""A job's datasets in the store: the data stages (validate, curate, split), the frozen holdout and the leak check.

    spec = instil.load_spec("instil.yaml")
    with Store.open(home=home_dir(spec.root)) as store:
        reports = validate_job(spec)
        curated = curate_job(spec, store)
        split = split_job(spec, store)
        assert_no_holdout_leak(spec, store, training_examples)   # training calls this before it starts

Dataset versions are named ``<job>:raw``, ``<job>:curated``, ``<job>:train``, ``<job>:holdout``, ``<job>:pool`` and
``<job>:traces`` (production traffic taken in by :func:`import_traces`, curated with the sources).
The first split freezes the holdout: later splits keep it, put every new example on the train side, and leave out
(and report) any new example that matches a holdout example exactly or nearly.

Layering: this runs :mod:`instil.data`'s pure functions and records their results with :mod:`instil.store`, so it
sits above both, and below training and evaluation, which name datasets and check the holdout through it.
"""

from __future__ import annotations

import json
import typing
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from instil.data.curate import ContradictionRule, CurationReport, curate, fingerprint
from instil.data.formats import read_examples
from instil.data.records import Example, Message
from instil.data.split import HoldoutIndex, LeakageAudit, LeakMatch, split_examples
from instil.data.tokens import TokenCounter
from instil.data.validate import ValidationReport, validate_file
from instil.errors import DataError, HoldoutLeakError, NotFoundError
from instil.spec import DataSource, JobSpec
from instil.store import DatasetVersion, Store, Trace, TraceFilter

__all__ = [
    "CurateOutcome",
    "ImportOutcome",
    "SourceReport",
    "SplitOutcome",
    "assert_no_holdout_leak",
    "curate_job",
    "dataset_name",
    "export_traces",
    "frozen_holdout",
    "holdout_index",
    "import_traces",
    "imported_traces",
    "read_sources",
    "split_job",
    "trace_example",
    "validate_job",
]

CONTRADICTION_RULES = typing.get_args(ContradictionRule)


def dataset_name(spec: JobSpec, kind: str) -> str:
    """The store name of one of a job's datasets (``raw``, ``curated``, ``train``, ``holdout``, ``pool``)."""
    return f"{spec.name}:{kind}"


@dataclass
class SourceReport:
    """The validation report of one data source."""

    source: DataSource
    path: Path
    report: ValidationReport


def validate_job(
    spec: JobSpec, *, rejects_dir: Path | None = None, counter: TokenCounter | None = None
) -> list[SourceReport]:
    """Validate every data source of the job against the spec (output contract, model context)."""
    counter = counter or TokenCounter.from_spec(spec)
    out = []
    names: set[str] = set()
    for src in spec.data:
        path = _existing(spec, src)
        name = path.stem
        while name in names:  # two sources of one name in different folders keep a rejects file each
            name += "_"
        names.add(name)
        rejects = (rejects_dir / f"{name}.rejects.jsonl") if rejects_dir is not None else None
        report = validate_file(
            path,
            format=src.format,
            spec=spec,
            counter=counter,
            max_tokens=spec.model.max_length,
            rejects_path=rejects,
            columns=src.columns,
        )
        out.append(SourceReport(src, path, report))
    return out


def read_sources(spec: JobSpec, roles: tuple[str, ...] = ("train",)) -> Iterator[Example]:
    """Stream the examples of the job's sources with the given roles, each tagged with its source's tags."""
    for src in spec.data:
        if src.role in roles:
            yield from read_examples(_existing(spec, src), format=src.format, columns=src.columns, tags=src.tags)


def _existing(spec: JobSpec, src: DataSource) -> Path:
    path = spec.resolve(src.path)
    if not path.exists():
        where = f"{spec.file}: " if spec.file else ""
        raise DataError(f"{where}data source {src.path!r} not found (looked at {path})")
    return path


# ---- curate ----------------------------------------------------------------------------------------------------------
@dataclass
class CurateOutcome:
    """What :func:`curate_job` recorded."""

    raw: DatasetVersion
    """Every training-role example as read."""
    curated: DatasetVersion
    """What is left after duplicates and contradictions are resolved (the parent of the split)."""
    report: CurationReport
    pool: DatasetVersion | None = None
    """The job's traffic pool, recorded as is, when it has one."""


def curate_job(
    spec: JobSpec,
    store: Store,
    *,
    contradictions: str = "majority",
    choices: dict[str, str] | None = None,
    drop_near_duplicates: bool = False,
    redact_pii: bool = False,
) -> CurateOutcome:
    """Read the training sources, find duplicates, contradictions and PII, and record raw and curated versions."""
    if contradictions not in CONTRADICTION_RULES:
        raise DataError(f"unknown contradiction rule {contradictions!r}; use one of {', '.join(CONTRADICTION_RULES)}")
    traces = imported_traces(spec, store)  # what `instil data import-traces` took from production traffic
    raw = store.put_dataset(dataset_name(spec, "raw"), [*read_sources(spec, ("train",)), *traces], kind="raw")
    result = curate(
        [*read_sources(spec, ("train",)), *traces],  # read again rather than from the blob: findings name file:line
        near_threshold=spec.split.near_duplicate_threshold,
        contradictions=contradictions,
        choices=choices,
        drop_near=drop_near_duplicates,
        redact_pii=redact_pii,
    )
    curated = store.put_dataset(
        dataset_name(spec, "curated"),
        result.examples,
        kind="curated",
        parents=[raw],
        meta={
            "kept": result.report.kept,
            "dropped": result.report.dropped,
            "rule": contradictions,
            "redacted": redact_pii,
        },
    )
    pool = None
    if any(s.role == "pool" for s in spec.data):
        pool = store.put_dataset(dataset_name(spec, "pool"), read_sources(spec, ("pool",)), kind="pool")
    return CurateOutcome(raw=raw, curated=curated, report=result.report, pool=pool)


# ---- split -----------------------------------------------------------------------------------------------------------
@dataclass
class SplitOutcome:
    """What :func:`split_job` recorded."""

    train: DatasetVersion
    holdout: DatasetVersion
    audit: LeakageAudit | None
    """The leakage audit of a fresh split (None when an existing frozen holdout was kept)."""
    index: HoldoutIndex
    reused_holdout: bool
    """True when the job's frozen holdout was kept as it was."""
    left_out: list[LeakMatch] = field(default_factory=list)
    """New examples left out of train because they match the frozen holdout."""


def frozen_holdout(spec: JobSpec, store: Store) -> DatasetVersion | None:
    """The job's frozen holdout, or None before the first split."""
    try:
        version = store.get_dataset(dataset_name(spec, "holdout"))
    except NotFoundError:
        return None
    return version if version.frozen else None


def holdout_index(spec: JobSpec, store: Store, holdout: DatasetVersion) -> HoldoutIndex:
    """The recorded fingerprints of a frozen holdout (rebuilt from its examples if the file went missing)."""
    path = _index_path(store, holdout)
    if path.exists():
        index = HoldoutIndex.load(path)
        if index.content_hash != holdout.sha256:
            raise DataError(f"{path}: holdout index does not match holdout {holdout.sha256[:12]}; delete it to rebuild")
        return index
    index = _build_index(holdout, store.iter_examples(holdout.sha256), spec.split.near_duplicate_threshold)
    index.save(path)
    return index


def _build_index(holdout: DatasetVersion, examples, threshold: float) -> HoldoutIndex:
    fp = fingerprint(examples)
    return HoldoutIndex.build(holdout.sha256, fp, np.arange(len(fp)), threshold)


def _index_path(store: Store, holdout: DatasetVersion) -> Path:
    return Path(store.home) / "holdouts" / holdout.sha256


def split_job(spec: JobSpec, store: Store, *, refreeze: bool = False) -> SplitOutcome:
    """Split the latest curated version into train and a frozen holdout, or keep the frozen holdout if there is one.

    With a ``holdout``-role source the holdout is that source, as given. ``refreeze`` makes a new holdout from the
    current data: evaluations on the old holdout are then no longer comparable with new ones.
    """
    curated = store.get_dataset(dataset_name(spec, "curated"))
    examples = list(store.iter_examples(curated.sha256))
    labels, label_field = spec.output.labels, spec.output.label_field
    existing = None if refreeze else frozen_holdout(spec, store)
    given = [s for s in spec.data if s.role == "holdout"]

    if existing is None and not given:
        result = split_examples(examples, spec.split, label_field=label_field, labels=labels)
        holdout = store.put_dataset(
            dataset_name(spec, "holdout"),
            result.holdout,
            kind="holdout",
            parents=[curated],
            frozen=True,
            meta={"seed": spec.split.seed, "fraction": spec.split.holdout_fraction},
        )
        result.index.save(_index_path(store, holdout))
        train = store.put_dataset(dataset_name(spec, "train"), result.train, kind="train", parents=[curated])
        return SplitOutcome(train, holdout, result.audit, result.index, reused_holdout=False)

    if existing is None:  # the holdout comes from its own source(s): frozen as given
        existing = store.put_dataset(
            dataset_name(spec, "holdout"), read_sources(spec, ("holdout",)), kind="holdout", frozen=True
        )
        index = _build_index(existing, store.iter_examples(existing.sha256), spec.split.near_duplicate_threshold)
        index.save(_index_path(store, existing))
        reused = False
    else:
        index = holdout_index(spec, store, existing)
        reused = True
    matches = index.check(examples)
    leaking = {m.example_key for m in matches}
    train_examples = [e for e in examples if e.key() not in leaking]
    train = store.put_dataset(
        dataset_name(spec, "train"),
        train_examples,
        kind="train",
        parents=[curated, existing],
        meta={"left_out_for_holdout": sorted(leaking)},
    )
    return SplitOutcome(train, existing, None, index, reused_holdout=reused, left_out=matches)


def assert_no_holdout_leak(spec: JobSpec, store: Store, examples: list[Example]) -> None:
    """Refuse training data that holds examples of the job's frozen holdout (exact or near-duplicates).

    Raises :class:`HoldoutLeakError` with the ids of every match. Training calls this before it starts.
    """
    holdout = frozen_holdout(spec, store)
    if holdout is None:
        return
    matches = holdout_index(spec, store, holdout).check(examples)
    if matches:
        shown = ", ".join(f"{m.example_key} ~ holdout {m.holdout_key} ({m.kind})" for m in matches[:20])
        more = f" and {len(matches) - 20} more" if len(matches) > 20 else ""
        raise HoldoutLeakError(
            f"{len(matches)} training example(s) match the frozen holdout of '{spec.name}': {shown}{more}",
            matches,
        )


# ---- traces ----------------------------------------------------------------------------------------------------------
@dataclass
class ImportOutcome:
    """What :func:`import_traces` did."""

    version: DatasetVersion | None
    """The job's ``traces`` dataset version after the import (None when none was ever imported)."""
    read: int
    """Traces that matched the filter (answered with a 200)."""
    imported: int
    """New examples added to the version."""
    invalid: int
    """Traces whose example the job's validation rejects (an output off the schema, a label not allowed...)."""
    duplicates: int
    """Traces already imported, or duplicates of another trace (the curation's exact and near-duplicate groups)."""
    left_out_for_holdout: int
    """Traces that match the frozen holdout exactly or nearly: never training data."""
    validation: ValidationReport | None = None


def trace_example(trace: Trace) -> Example:
    """A trace as a training example: the conversation it was asked, and its answer as the assistant's reply."""
    answer = Message("assistant", trace.output if trace.output or not trace.tool_calls else None)
    answer.tool_calls = trace.tool_calls
    return Example(
        [*(Message.from_dict(m) for m in trace.messages), answer],
        tools=trace.tools,
        id=trace.id,
        tags=["trace", *trace.tags],
        meta={"trace": trace.id, "model": trace.model},
        source=f"trace {trace.id}",
    )


def _traces_version(spec: JobSpec, store: Store) -> DatasetVersion | None:
    try:
        return store.get_dataset(dataset_name(spec, "traces"))
    except NotFoundError:
        return None


def imported_traces(spec: JobSpec, store: Store) -> list[Example]:
    """The examples of the job's latest ``traces`` version (what :func:`import_traces` recorded); [] before any."""
    version = _traces_version(spec, store)
    return list(store.iter_examples(version.sha256)) if version is not None else []


def import_traces(
    spec: JobSpec,
    store: Store,
    where: TraceFilter | None = None,
    *,
    passing: bool = False,
    limit: int | None = None,
) -> ImportOutcome:
    """Turn the job's traces (those ``where`` picks, 200s only) into the next version of its ``traces`` dataset.

    The traces go through the job's validation (as a data file would) and curation (exact and near-duplicates of
    each other and of what was imported before are dropped); those that match the frozen holdout are left out and
    counted. ``passing`` keeps only traces every capture grader passed, so an upstream teacher's good answers become
    training data directly. The version holds the earlier imports plus the new ones; its ``meta`` names every trace.
    The next ``instil run`` (or ``instil data curate``) takes them in with the job's sources.
    """
    base = where or TraceFilter()
    chosen = replace(base, job=spec.name, status=200, passed=True if passing else base.passed)
    traces = [t for t in store.list_traces(chosen, limit=limit, oldest_first=True) if t.output or t.tool_calls]
    previous = _traces_version(spec, store)
    before = list(store.iter_examples(previous.sha256)) if previous is not None else []
    seen = {e.id for e in before}
    fresh = [t for t in traces if t.id not in seen]
    examples = [trace_example(t) for t in fresh]

    # The same validation as a data file: written under the home (never beside the user's files) and checked.
    report = None
    valid = examples
    if examples:
        folder = Path(store.home) / "imports"
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f"traces-{uuid.uuid4().hex[:12]}.jsonl"
        with open(staged, "w", encoding="utf-8") as f:
            for e in examples:
                f.write(json.dumps(e.to_dict(), ensure_ascii=False) + "\n")
        try:
            report = validate_file(
                staged, format="chat", spec=spec, rejects_path=folder / f"{staged.stem}.rejects.jsonl"
            )
        finally:
            staged.unlink(missing_ok=True)
        bad = {f.line for f in report.findings if f.severity == "error" and f.line is not None}
        valid = [e for i, e in enumerate(examples, start=1) if i not in bad]
    invalid = len(examples) - len(valid)

    holdout = frozen_holdout(spec, store)
    leaking: set[str] = set()
    if holdout is not None and valid:
        leaking = {m.example_key for m in holdout_index(spec, store, holdout).check(valid)}
    clean = [e for e in valid if e.key() not in leaking]
    curated = curate([*before, *clean], near_threshold=spec.split.near_duplicate_threshold, drop_near=True)
    kept = curated.examples
    added = len(kept) - len([e for e in kept if e.id in seen])
    duplicates = len(traces) - len(fresh) + (len(clean) - added)
    if added == 0:
        return ImportOutcome(previous, len(traces), 0, invalid, duplicates, len(leaking), report)
    version = store.put_dataset(
        dataset_name(spec, "traces"),
        kept,
        kind="traces",
        parents=[previous] if previous is not None else [],
        meta={
            "traces": [e.id for e in kept if e.id not in seen],
            "filter": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(chosen).items()},
            "passing": passing,
            "invalid": invalid,
            "duplicates": duplicates,
            "left_out_for_holdout": sorted(leaking),
        },
    )
    return ImportOutcome(version, len(traces), added, invalid, duplicates, len(leaking), report)


def export_traces(store: Store, path: str | Path, where: TraceFilter | None = None) -> int:
    """Write the traces ``where`` picks to a Parquet file (one row each, nested fields as JSON text) for a
    warehouse; returns how many. Refuses to write over an existing file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.exists():
        raise DataError(f"{path} exists; give a new file name (nothing is written over)")
    traces = store.list_traces(where, limit=None, oldest_first=True)
    nested = ("messages", "tools", "params", "tool_calls", "error", "meta", "grades")
    rows = []
    for t in traces:
        d = t.to_dict()
        for key in nested:
            d[key] = json.dumps(d[key], ensure_ascii=False) if d[key] is not None else None
        d["created_at"] = t.created_at
        rows.append(d)
    schema = pa.schema(
        [
            ("id", pa.string()), ("job", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
            ("source", pa.string()), ("model", pa.string()), ("messages", pa.string()), ("status", pa.int32()),
            ("output", pa.string()), ("tool_calls", pa.string()), ("finish_reason", pa.string()),
            ("version", pa.int32()), ("upstream", pa.string()), ("stream", pa.bool_()), ("tools", pa.string()),
            ("params", pa.string()), ("error", pa.string()), ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()), ("latency_s", pa.float64()), ("first_token_s", pa.float64()),
            ("cost", pa.float64()), ("user", pa.string()), ("meta", pa.string()), ("tags", pa.list_(pa.string())),
            ("grades", pa.string()), ("passed", pa.bool_()), ("redacted", pa.bool_()),
        ]
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), partial)
    partial.replace(path)  # a reader never sees half a file
    return len(rows)
