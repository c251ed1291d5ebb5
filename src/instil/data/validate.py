"""`instil data validate`: every problem of a data file, each with its file, line and field, in one pass.

    report = validate_file("train.jsonl", spec=spec, rejects_path=Path("train.rejects.jsonl"))
    print(report.format_findings())      # "train.jsonl:7: messages[2].content: error: ... [empty_content]"
    report.ok                            # no errors (warnings allowed); the CLI exits non-zero otherwise
    report.to_dict()                     # for --json

It streams (one record in memory at a time), performs every check of OpenAI's chat fine-tuning data-preparation
cookbook without its false alarms (an assistant message with ``tool_calls`` and no ``content`` is valid), and checks
the job's contract. A record with an error is a rejected line: it goes to the rejects file (JSONL, one
``{"line", "source", "errors", "raw"}`` per line, ``raw`` being the line's original text). A line with warnings only
is valid. Validation never alters or drops a valid line: it only reads.

    code                          severity  what
    invalid_json                  error     the line is not JSON (or not UTF-8, or a CSV row that does not parse)
    data_type                     error     a record (or a message) is not a JSON object
    record_invalid                error     a non-chat record does not fit its format (missing key, wrong type)
    missing_messages_list         error     no ``messages`` list (``input.messages``, ``preferred_output``...)
    message_missing_key           error     a message lacks ``role``, or ``content`` without ``tool_calls``
    message_unrecognized_key      error     a message key OpenAI does not accept (a misspelt ``weight`` would be lost)
    unrecognized_role             error     a role other than system, user, assistant, tool
    missing_content               error     content is null without tool calls, or not a string / list of parts
    invalid_field                 error     name, tool_call_id, tools or metadata has the wrong type
    empty_content                 error     an assistant message the model learns from is empty or whitespace
                                  warning   any other empty or whitespace-only message
    example_missing_assistant_message error no assistant message at all
    nothing_to_learn              error     no assistant message with weight 1 after a user or tool message
    last_not_assistant            warning   the conversation ends after its last assistant message: the rest is unused
    invalid_weight                error     a weight other than 0 or 1, or a weight on a non-assistant message
    tool_call_invalid             error     a tool call without a function name, with arguments that are not a JSON
                                            object string, an unknown tool, or arguments that miss the tool's schema
    preference_output             error     a preferred / non-preferred output that is not assistant messages
    too_long                      error     the example has more tokens than the model context / max_tokens
    output_schema                 error     a trained assistant output is not JSON fitting ``output.schema``
    output_label                  error     a trained output (or its ``label_field``) is not in ``output.labels``
    unrecognized_key              warning   an unknown top-level key (kept as metadata)
    bom                           warning   the file starts with a UTF-8 byte order mark (accepted)
    crlf                          warning   CRLF line endings (accepted)
    format_unknown                warning   the format could not be detected; the file is checked as chat
    unreadable                    error     the file does not exist or cannot be opened
    rejects_unwritable            warning   the rejects file cannot be written (a read-only folder); findings stand
    encoding                      error     the file is UTF-16 or UTF-32, not UTF-8 (one finding for the file)
    preference_identical          error     a preference pair whose preferred and rejected outputs are the same
    very_long                     warning   with no token limit to check: longer than most small models' context

The rejects file is written under a temporary name and moved into place only when a line was rejected, and an
output that is one of the inputs (the same path or the same file under another name) is refused: validation never
writes over, or deletes, what it reads.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from instil.data.formats import (
    COLUMN_KEYS,
    MESSAGE_KEYS,
    RawRecord,
    RecordError,
    detect_format,
    detect_record_format,
    iter_records,
    to_example,
    valid_content,
)
from instil.data.records import ROLES, Example
from instil.data.tokens import TokenCounter
from instil.errors import DataError, DataFormatError
from instil.files import staging_path
from instil.spec import JobSpec

__all__ = ["Finding", "ValidationReport", "validate_file", "validate_files"]

Severity = Literal["error", "warning"]
VERY_LONG_CHARS = 32_768 * 4
"""Without a token limit to check against, an example past this many characters (about 32k tokens) is flagged."""
_CHAT_KEYS = {"messages", "tools", "parallel_tool_calls", "metadata", "rejected"}
_PREFERENCE_KEYS = {"input", "preferred_output", "non_preferred_output", "metadata"}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found in a data file."""

    file: str
    """The file it is in."""
    line: int | None
    """1-based line of the record (None for a finding about the whole file)."""
    field: str
    """The path of the field inside the record, such as ``messages[2].content`` ('' for the whole record)."""
    code: str
    """A stable code (see the module docstring's table), for filtering and counting."""
    severity: Severity
    """``error`` rejects the line; ``warning`` only reports."""
    message: str
    """What is wrong and what to do."""

    def format(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        loc = f" {self.field}:" if self.field else ""
        return f"{where}:{loc} {self.severity}: {self.message} [{self.code}]"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("file", "line", "field", "code", "severity", "message")}


@dataclass
class ValidationReport:
    """Everything ``validate_file(s)`` found."""

    findings: list[Finding] = field(default_factory=list)
    """The findings, in file and line order (at most ``max_findings``; ``counts`` counts them all)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Findings per code, including those beyond ``max_findings``."""
    n_lines: int = 0
    """Records read (non-blank lines, CSV rows, dataset rows)."""
    n_valid: int = 0
    """Records without errors."""
    n_rejected: int = 0
    """Records with at least one error (written to the rejects file when one was asked for)."""
    n_errors: int = 0
    """Findings of severity error."""
    n_warnings: int = 0
    """Findings of severity warning."""
    rejects_path: Path | None = None
    """Where rejected lines were written, if anywhere."""
    files: list[str] = field(default_factory=list)
    """The files validated."""
    max_findings: int = 10_000
    """How many findings are kept in ``findings``; a huge broken file still gives complete ``counts``."""

    @property
    def ok(self) -> bool:
        """True when nothing is an error (warnings allowed)."""
        return self.n_errors == 0

    def add(self, finding: Finding) -> None:
        self.counts[finding.code] = self.counts.get(finding.code, 0) + 1
        if finding.severity == "error":
            self.n_errors += 1
        else:
            self.n_warnings += 1
        if len(self.findings) < self.max_findings:
            self.findings.append(finding)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (``instil data validate --json``)."""
        return {
            "ok": self.ok,
            "files": list(self.files),
            "n_lines": self.n_lines,
            "n_valid": self.n_valid,
            "n_rejected": self.n_rejected,
            "n_errors": self.n_errors,
            "n_warnings": self.n_warnings,
            "counts": dict(sorted(self.counts.items())),
            "rejects_path": str(self.rejects_path) if self.rejects_path else None,
            "findings": [f.to_dict() for f in self.findings],
            "findings_truncated": self.n_errors + self.n_warnings - len(self.findings),
        }

    def format_findings(self, limit: int | None = None) -> str:
        """One line per finding, then a summary line."""
        shown = self.findings if limit is None else self.findings[:limit]
        lines = [f.format() for f in shown]
        hidden = self.n_errors + self.n_warnings - len(shown)
        if hidden:
            lines.append(f"... and {hidden} more (see --json or the rejects file)")
        lines.append(
            f"{self.n_lines} records: {self.n_valid} valid, {self.n_rejected} rejected; "
            f"{self.n_errors} errors, {self.n_warnings} warnings"
            + (f"; rejected lines written to {self.rejects_path}" if self.rejects_path and self.n_rejected else "")
        )
        return "\n".join(lines)


def validate_file(
    path: str | Path,
    *,
    format: str = "auto",
    spec: JobSpec | None = None,
    counter: TokenCounter | None = None,
    max_tokens: int | None = None,
    rejects_path: Path | None = None,
    columns: dict[str, str] | None = None,
    max_findings: int = 10_000,
) -> ValidationReport:
    """Validate one file; see the module docstring for the checks."""
    return validate_files(
        [path],
        format=format,
        spec=spec,
        counter=counter,
        max_tokens=max_tokens,
        rejects_path=rejects_path,
        columns=columns,
        max_findings=max_findings,
    )


def validate_files(
    paths: Iterable[str | Path],
    *,
    format: str = "auto",
    spec: JobSpec | None = None,
    counter: TokenCounter | None = None,
    max_tokens: int | None = None,
    rejects_path: Path | None = None,
    columns: dict[str, str] | None = None,
    max_findings: int = 10_000,
) -> ValidationReport:
    """Validate several files into one report (and one rejects file, whose lines name their source).

    Token lengths are checked against ``max_tokens``, else ``spec.model.max_length``, else the tokenizer's context;
    counts come from ``counter``, else the spec's tokenizer (an estimate for the ``tiny`` model).
    """
    unknown = sorted(set(columns or {}) - set(COLUMN_KEYS))
    if unknown:
        raise DataFormatError(f"columns: unknown key '{unknown[0]}'; use {', '.join(COLUMN_KEYS)}")
    if counter is None and spec is not None:
        counter = TokenCounter.from_spec(spec)
    limit, limit_name = max_tokens, "max_tokens"
    if limit is None and spec is not None and spec.model.max_length is not None:
        limit, limit_name = spec.model.max_length, "model.max_length"
    if limit is None and counter is not None and counter.context_length is not None:
        limit, limit_name = counter.context_length, f"the context length of {counter.name}"
    if limit is not None and counter is None:
        counter = TokenCounter.estimate()
    paths = [Path(p) for p in paths]
    if rejects_path is not None:
        _refuse_input_as_output(Path(rejects_path), paths)
    report = ValidationReport(rejects_path=None, max_findings=max_findings)
    checker = _Checker(spec, counter, limit, limit_name)
    rejects = _Rejects(Path(rejects_path) if rejects_path is not None else None)
    try:
        for path in paths:
            _validate_one(path, format, columns, checker, report, rejects)
        report.rejects_path = rejects.finish(report)
    finally:
        rejects.discard()
    return report


def _utf16(path: Path) -> str | None:
    """``UTF-16LE``/``UTF-16BE`` (or -32) when the file starts with that byte order mark, or when its first bytes are
    ASCII with a zero byte beside each (UTF-16 without a mark); None otherwise."""
    with path.open("rb") as f:
        head = f.read(4096)
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE")):
        if head.startswith(bom):
            return name
    for bom, name in ((b"\xff\xfe", "UTF-16LE"), (b"\xfe\xff", "UTF-16BE")):
        if head.startswith(bom):
            return name
    pairs = head[: len(head) // 2 * 2]
    if len(pairs) >= 8 and pairs.count(0) >= len(pairs) * 0.4:
        evens, odds = pairs[0::2].count(0), pairs[1::2].count(0)
        return "UTF-16LE" if odds > evens else "UTF-16BE"
    return None


def _refuse_input_as_output(target: Path, inputs: list[Path]) -> None:
    """An output path that is one of the inputs (by path or by inode: a link, a second name) is refused."""
    for path in inputs:
        same = target.resolve() == path.resolve()
        if not same and target.exists() and path.exists():
            try:
                same = os.path.samefile(target, path)
            except OSError:
                same = False
        if same:
            raise DataError(
                f"the rejects file {target} is the input {path}: validating would overwrite it",
                hint="pass another --rejects path (by default rejects go under the job's home, .instil/rejects/)",
            )


class _Rejects:
    """The rejects file, written under a temporary name beside its target and moved into place only when something
    was rejected: no empty file is left, and an existing file at the target is only replaced by a complete one."""

    def __init__(self, target: Path | None) -> None:
        self.target = target
        self.staging: Path | None = None
        self.file: IO[str] | None = None
        self.failed: str | None = None

    def write(self, row: dict[str, Any]) -> None:
        if self.target is None or self.failed is not None:
            return
        if self.file is None:
            try:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                staging = staging_path(self.target)
                self.file = staging.open("w", encoding="utf-8", newline="\n")
                self.staging = staging
            except OSError as e:  # a read-only folder: the report still stands, without the rejects file
                self.failed = f"{e.strerror or e}"
                return
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def finish(self, report: ValidationReport) -> Path | None:
        """Move the rejects into place; the target's path, or None when nothing was written."""
        if self.failed is not None and self.target is not None:
            report.add(
                Finding(
                    str(self.target),
                    None,
                    "",
                    "rejects_unwritable",
                    "warning",
                    f"cannot write the rejects file: {self.failed}; pass --rejects with a writable path",
                )
            )
        if self.file is None or self.staging is None or self.target is None:
            return None
        self.file.close()
        self.file = None
        os.replace(self.staging, self.target)
        self.staging = None
        return self.target

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.staging is not None:
            with contextlib.suppress(OSError):
                self.staging.unlink(missing_ok=True)


def _validate_one(
    path: Path,
    format: str,
    columns: dict[str, str] | None,
    checker: _Checker,
    report: ValidationReport,
    rejects: _Rejects,
) -> None:
    file = str(path)
    report.files.append(file)
    if not path.exists():
        report.add(Finding(file, None, "", "unreadable", "error", "file not found; check the path"))
        return
    if path.is_file() and (encoding := _utf16(path)) is not None:
        report.add(
            Finding(
                file,
                None,
                "",
                "encoding",
                "error",
                f"the file is {encoding}, not UTF-8: re-encode it "
                f"(iconv -f {encoding} -t UTF-8 {path.name} > out.jsonl)",
            )
        )
        return
    fmt = format
    if fmt == "auto":
        try:
            fmt = detect_format(path)
        except DataError as e:
            if path.is_dir() or path.suffix.lower() in (".csv", ".tsv"):
                report.add(Finding(file, None, "", "unreadable", "error", str(e)))
                return
            fmt = "chat"
            report.add(Finding(file, None, "", "format_unknown", "warning", f"{e}; checking it as chat"))
    cols = {k: k for k in COLUMN_KEYS} | dict(columns or {})
    first_crlf: int | None = None
    n_crlf = 0
    try:
        for rec in iter_records(path, fmt, columns):
            if rec.bom:
                report.add(Finding(file, rec.line, "", "bom", "warning", "UTF-8 byte order mark (accepted; ignored)"))
            if rec.crlf:
                n_crlf += 1
                first_crlf = rec.line if first_crlf is None else first_crlf
            findings = checker.check(rec, fmt, cols, columns, file)
            errors = [f for f in findings if f.severity == "error"]
            for f in findings:
                report.add(f)
            report.n_lines += 1
            if errors:
                report.n_rejected += 1
                errs = [{"code": f.code, "field": f.field, "message": f.message} for f in errors]
                rejects.write({"line": rec.line, "source": file, "errors": errs, "raw": rec.raw})
            else:
                report.n_valid += 1
    except (DataError, OSError) as e:
        report.add(Finding(file, None, "", "unreadable", "error", f"cannot read the file: {e}"))
    if n_crlf:
        report.add(Finding(file, first_crlf, "", "crlf", "warning", f"{n_crlf} line(s) end with CRLF (accepted)"))


class _Checker:
    """The checks of one record; holds what is shared across records (spec, counter, compiled schemas)."""

    def __init__(self, spec: JobSpec | None, counter: TokenCounter | None, limit: int | None, limit_name: str):
        self.spec, self.counter, self.limit, self.limit_name = spec, counter, limit, limit_name
        out = spec.output if spec is not None else None
        self.schema = _compile(out.json_schema) if out is not None and out.json_schema is not None else None
        self.labels = set(out.labels) if out is not None and out.labels else None
        self.label_field = out.label_field if out is not None else None
        self.whole_label = out is not None and out.type == "label"
        self.spec_tools = {t.function["name"]: t.function for t in (out.tools or [])} if out is not None else {}

    def check(
        self, rec: RawRecord, fmt: str, cols: dict[str, str], columns: dict[str, str] | None, file: str
    ) -> list[Finding]:
        found: list[Finding] = []

        def add(path: str, code: str, severity: Severity, message: str) -> None:
            found.append(Finding(file, rec.line, path, code, severity, message))

        if rec.error is not None:
            add("", "invalid_json", "error", rec.error)
            return found
        d = rec.data
        if not isinstance(d, dict):
            add("", "data_type", "error", f"a record must be a JSON object, not {type(d).__name__}")
            return found
        kind = detect_record_format(d) if fmt == "hf_disk" else fmt
        if kind == "chat":
            self._chat(d, add)
        elif kind == "preference":
            self._preference(d, add)
        if any(f.severity == "error" for f in found):
            return found
        try:
            ex = to_example(d, kind or "hf_disk", columns=columns)
        except RecordError as e:
            add(e.field, "record_invalid", "error", e.reason)
            return found
        self._example(ex, _locate(kind or "", d, cols, ex), kind in ("chat", "preference"), add)
        return found

    # ---- record-level checks of the two OpenAI formats (every problem, not just the first) ---------------------------
    def _chat(self, d: dict[str, Any], add: Callable[..., None]) -> None:
        for key in sorted(set(d) - _CHAT_KEYS):
            add(key, "unrecognized_key", "warning", "unknown top-level key; it is kept as metadata")
        tools = self._tools(d.get("tools"), "tools", add)
        if not isinstance(d.get("messages"), list):
            add("messages", "missing_messages_list", "error", "a chat record needs a 'messages' list")
        else:
            self._messages(d["messages"], "messages", tools, add)
        if isinstance(d.get("rejected"), list):
            self._messages(d["rejected"], "rejected", tools, add)
            msgs = d["messages"] if isinstance(d.get("messages"), list) else []
            if len(d["rejected"]) == 1 and msgs and msgs[-1] == d["rejected"][0]:
                add(
                    "rejected",
                    "preference_identical",
                    "error",
                    "the rejected output is the same as the final assistant message: the pair teaches nothing",
                )
        elif d.get("rejected") is not None:
            add("rejected", "missing_messages_list", "error", "rejected must be a list of assistant messages")
        if d.get("metadata") is not None and not isinstance(d["metadata"], dict):
            add("metadata", "invalid_field", "error", "metadata must be an object")

    def _preference(self, d: dict[str, Any], add: Callable[..., None]) -> None:
        for key in sorted(set(d) - _PREFERENCE_KEYS):
            add(key, "unrecognized_key", "warning", "unknown top-level key; it is kept as metadata")
        inp = d.get("input")
        tools: set[str] = set()
        if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list):
            add("input.messages", "missing_messages_list", "error", "the input needs a 'messages' list")
        else:
            tools = self._tools(inp.get("tools"), "input.tools", add)
            self._messages(inp["messages"], "input.messages", tools, add)
        for key in ("preferred_output", "non_preferred_output"):
            out = d.get(key)
            if not isinstance(out, list) or not out:
                add(key, "missing_messages_list", "error", "needs a list with the assistant's output message")
                continue
            self._messages(out, key, tools, add)
            for i, m in enumerate(out):
                if isinstance(m, dict) and m.get("role") != "assistant":
                    add(
                        f"{key}[{i}].role",
                        "preference_output",
                        "error",
                        "an output message must be an assistant's",
                    )
        if d.get("preferred_output") and d.get("preferred_output") == d.get("non_preferred_output"):
            add(
                "non_preferred_output",
                "preference_identical",
                "error",
                "the preferred and non-preferred outputs are the same: the pair teaches nothing",
            )

    def _tools(self, tools: Any, path: str, add: Callable[..., None]) -> set[str]:
        names = set(self.spec_tools)
        if tools is None:
            return names
        if not isinstance(tools, list):
            add(path, "invalid_field", "error", "tools must be a list of {type, function} objects")
            return names
        for i, t in enumerate(tools):
            name = (
                t.get("function", {}).get("name")
                if isinstance(t, dict) and isinstance(t.get("function"), dict)
                else None
            )
            if not isinstance(name, str) or not name:
                add(f"{path}[{i}].function.name", "invalid_field", "error", "a tool needs function.name")
            else:
                names.add(name)
        return names

    def _messages(self, msgs: list[Any], path: str, tools: set[str], add: Callable[..., None]) -> None:
        call_ids: set[str] = set()
        for i, m in enumerate(msgs):
            p = f"{path}[{i}]"
            if not isinstance(m, dict):
                add(p, "data_type", "error", f"a message must be an object, not {type(m).__name__}")
                continue
            role, content, calls = m.get("role"), m.get("content"), m.get("tool_calls")
            if "role" not in m:
                add(f"{p}.role", "message_missing_key", "error", "the message has no role")
            elif role not in ROLES:
                add(
                    f"{p}.role",
                    "unrecognized_role",
                    "error",
                    f"unknown role {role!r}; use one of {', '.join(ROLES)}",
                )
            for key in sorted(set(m) - set(MESSAGE_KEYS)):
                add(
                    f"{p}.{key}",
                    "message_unrecognized_key",
                    "error",
                    f"unknown key; use {', '.join(MESSAGE_KEYS)}",
                )
            has_calls = isinstance(calls, list) and len(calls) > 0
            if "content" not in m and not has_calls:
                add(
                    f"{p}.content",
                    "message_missing_key",
                    "error",
                    "the message has no content (and no tool_calls)",
                )
            elif content is None and not has_calls:
                add(f"{p}.content", "missing_content", "error", "content is null; give the message's text")
            elif content is not None and not valid_content(content):
                add(
                    f"{p}.content",
                    "missing_content",
                    "error",
                    "content must be a string or a list of {type, text} parts",
                )
            trained = role == "assistant" and m.get("weight", 1) != 0
            if isinstance(content, str) and not content.strip() and not has_calls:
                if trained:
                    add(
                        f"{p}.content",
                        "empty_content",
                        "error",
                        "an empty answer teaches the model to say nothing",
                    )
                else:
                    add(f"{p}.content", "empty_content", "warning", "empty or whitespace-only content")
            if "weight" in m:
                w = m["weight"]
                if type(w) is not int or w not in (0, 1):
                    add(f"{p}.weight", "invalid_weight", "error", f"weight must be 0 or 1, not {w!r}")
                elif role != "assistant":
                    add(f"{p}.weight", "invalid_weight", "error", "weight applies to assistant messages only")
            for key in ("name", "tool_call_id"):
                if m.get(key) is not None and not isinstance(m[key], str):
                    add(f"{p}.{key}", "invalid_field", "error", f"{key} must be a string")
            if calls is not None:
                call_ids |= self._tool_calls(calls, role, f"{p}.tool_calls", tools, add)
            tcid = m.get("tool_call_id")
            if role == "tool" and isinstance(tcid, str) and call_ids and tcid not in call_ids:
                add(f"{p}.tool_call_id", "tool_call_invalid", "error", f"no earlier tool call has id {tcid!r}")

    def _tool_calls(self, calls: Any, role: Any, p: str, tools: set[str], add: Callable[..., None]) -> set[str]:
        if role != "assistant" or not isinstance(calls, list):
            add(p, "tool_call_invalid", "error", "tool_calls must be a list, on an assistant message")
            return set()
        ids: set[str] = set()
        for j, call in enumerate(calls):
            q = f"{p}[{j}]"
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict):
                add(
                    q,
                    "tool_call_invalid",
                    "error",
                    'a tool call is {"id", "type": "function", "function": {...}}',
                )
                continue
            if isinstance(call.get("id"), str):
                ids.add(call["id"])
            name, args = fn.get("name"), fn.get("arguments")
            if not isinstance(name, str) or not name:
                add(f"{q}.function.name", "tool_call_invalid", "error", "the call names no function")
            elif tools and name not in tools:
                add(
                    f"{q}.function.name",
                    "tool_call_invalid",
                    "error",
                    f"unknown tool {name!r}; the tools are {', '.join(sorted(tools))}",
                )
            if not isinstance(args, str):
                add(f"{q}.function.arguments", "tool_call_invalid", "error", "arguments must be a JSON string")
                continue
            try:
                parsed = json.loads(args)
            except json.JSONDecodeError as e:
                add(
                    f"{q}.function.arguments",
                    "tool_call_invalid",
                    "error",
                    f"arguments are not JSON: {e.msg}",
                )
                continue
            if not isinstance(parsed, dict):
                add(f"{q}.function.arguments", "tool_call_invalid", "error", "arguments must be a JSON object")
                continue
            params = self.spec_tools.get(name, {}).get("parameters") if isinstance(name, str) else None
            problem = _schema_problem(_compile(params), parsed) if params else None
            if problem:
                add(
                    f"{q}.function.arguments",
                    "tool_call_invalid",
                    "error",
                    f"arguments do not fit {name}: {problem}",
                )
        return ids

    # ---- example-level checks (every format) -------------------------------------------------------------------------
    def _example(self, ex: Example, paths: list[str], checked: bool, add: Callable[..., None]) -> None:
        msgs = ex.messages
        if not checked:  # the OpenAI formats had these at record level
            for i, m in enumerate(msgs):
                if isinstance(m.content, str) and not m.content.strip() and not m.tool_calls:
                    trained = m.role == "assistant" and m.weight != 0
                    add(
                        paths[i],
                        "empty_content",
                        "error" if trained else "warning",
                        "an empty answer teaches the model to say nothing" if trained else "empty content",
                    )
        assistant = [i for i, m in enumerate(msgs) if m.role == "assistant"]
        if not assistant:
            add(
                "messages",
                "example_missing_assistant_message",
                "error",
                "no assistant message: nothing to learn",
            )
            return
        prompted = False
        learns = False
        for m in msgs:
            prompted = prompted or m.role in ("user", "tool")
            learns = learns or (prompted and m.role == "assistant" and m.weight != 0)
        if not learns:
            add(
                "messages",
                "nothing_to_learn",
                "error",
                "no assistant message with weight 1 follows a user or tool message; the example trains nothing",
            )
        elif msgs[-1].role != "assistant":
            add(
                paths[-1],
                "last_not_assistant",
                "warning",
                "the conversation continues after its last assistant message; those messages are never learned",
            )
        if self.limit is None:
            # No limit to check against: still warn about what no small model's context holds.
            chars = sum(len(m.text()) for m in msgs)
            if chars > VERY_LONG_CHARS:
                add(
                    "",
                    "very_long",
                    "warning",
                    f"about {chars // 4:,} tokens ({chars:,} characters at ~4 a token): more than most small models' "
                    f"context ({VERY_LONG_CHARS // 4:,} tokens); pass --max-tokens or set model.max_length to check",
                )
        if self.counter is not None and self.limit is not None:
            n = self.counter.count_example(ex).total
            if n > self.limit:
                about = "about " if self.counter.estimated else ""
                how = " (estimated at ~4 characters per token)" if self.counter.estimated else ""
                add(
                    "",
                    "too_long",
                    "error",
                    f"{about}{n} tokens{how}, over the limit of {self.limit} ({self.limit_name}); "
                    "shorten it or raise model.max_length",
                )
        if self.schema is not None or self.labels is not None:
            for i in assistant:
                m = msgs[i]
                if m.weight != 0 and not m.tool_calls and isinstance(m.content, str) and m.content.strip():
                    self._output(m.content, paths[i], add)

    def _output(self, text: str, path: str, add: Callable[..., None]) -> None:
        value: Any = None
        if self.schema is not None or self.label_field is not None:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                add(path, "output_schema", "error", f"the output is not JSON ({e.msg}); output.type is json")
                return
            if self.schema is not None:
                problem = _schema_problem(self.schema, value)
                if problem:
                    add(path, "output_schema", "error", f"the output does not fit output.schema: {problem}")
        if self.labels is None:
            return
        if self.whole_label:
            label: Any = text.strip()
        elif self.label_field is not None:
            label = value
            for part in self.label_field.split("."):
                if not isinstance(label, dict) or part not in label:
                    add(path, "output_label", "error", f"the output has no '{self.label_field}' field")
                    return
                label = label[part]
        else:
            return
        if not isinstance(label, str) or label not in self.labels:
            shown = ", ".join(sorted(self.labels)[:10])
            add(path, "output_label", "error", f"label {label!r} is not in output.labels ({shown})")


def _compile(schema: dict[str, Any]) -> Any:
    from jsonschema import validators

    return validators.validator_for(schema)(schema)


def _schema_problem(validator: Any, value: Any) -> str | None:
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = error.json_path if error.json_path != "$" else "the top level"
    return f"at {where}: {error.message}"


def _locate(kind: str, d: dict[str, Any], cols: dict[str, str], ex: Example) -> list[str]:
    """The field path, inside the record, of each of ``ex.messages``' contents."""
    n = len(ex.messages)
    if kind == "chat":
        return [f"messages[{i}].content" for i in range(n)]
    if kind == "preference":
        k = len(d["input"]["messages"])
        return [f"input.messages[{i}].content" if i < k else f"preferred_output[{i - k}].content" for i in range(n)]
    has_system = ex.messages[0].role == "system" if ex.messages else False
    if kind == "sharegpt":
        off = 1 if has_system and d.get("system") else 0
        return ["system" if i < off else f"conversations[{i - off}].value" for i in range(n)]
    if kind == "alpaca":
        return [{"system": "system", "user": "instruction"}.get(m.role, "output") for m in ex.messages]
    prompt = d.get(cols["prompt"])
    if isinstance(prompt, list):  # conversational prompt/completion
        off = 1 if has_system and d.get(cols["system"]) else 0
        k = len(prompt) + off
        return [
            cols["system"]
            if i < off
            else f"{cols['prompt']}[{i - off}].content"
            if i < k
            else f"{cols['completion']}[{i - k}].content"
            for i in range(n)
        ]
    return [{"system": cols["system"], "user": cols["prompt"]}.get(m.role, cols["completion"]) for m in ex.messages]
