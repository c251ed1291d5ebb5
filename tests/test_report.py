"""The self-contained HTML report, on a report built by hand with known numbers: its sections and figures, the
confusion matrix, the gate decisions, embedded images, and hostile model output shown as text, never run."""

from __future__ import annotations

import base64
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path

import pytest

from instil.data.records import Example, Message
from instil.eval import Candidate, ExactMatch, LabelAccuracy, Output
from instil.eval.compare import summarise
from instil.eval.failure_modes import FailureModes, overfitting, style_collapse
from instil.eval.report import write_html
from instil.eval.results import EvalReport, ExampleResult, WinRate
from instil.eval.stats import gate_decision

pytest.importorskip("matplotlib")

HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


class Page(HTMLParser):
    """The parts of a page the tests look at: tags, h2 ids, image sources, tables as rows of cell texts, the text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.sections: list[str] = []
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "h2":
            self.sections.append(a.get("id") or "")
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
            self.tables[-1][-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1][-1] = " ".join("".join(self._cell).split())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def table(self, first_header: str) -> list[list[str]]:
        return next(t for t in self.tables if t and t[0] and t[0][0] == first_header)


def _example(i: int, label: str) -> Example:
    return Example(
        [Message("user", f"ticket {i}"), Message("assistant", label)],
        id=f"e{i}",
        tags=["edge"] if i == 0 else [],
    )


def _rows(name: str, examples: list[Example], outputs: list[str], graders: list, wins: list | None = None) -> list:
    rows = []
    for k, (e, out) in enumerate(zip(examples, outputs, strict=True)):
        scores = {g.name: g.grade(e, Output(out)) for g in graders}
        rows.append(
            ExampleResult(
                example_id=e.key(),
                candidate=name,
                output=out,
                scores={n: s.value for n, s in scores.items()},
                passed={n: s.passed for n, s in scores.items()},
                reasons={n: s.reason for n, s in scores.items() if s.reason},
                tags=list(e.tags),
                latency_s=0.1 * (k + 1),
                input_tokens=10,
                output_tokens=2,
                cost=0.001,
                finish_reason="stop",
                win=None if wins is None else wins[k],
            )
        )
    return rows


@pytest.fixture
def report(tmp_path: Path) -> EvalReport:
    examples = [_example(0, "billing"), _example(1, "refund"), _example(2, "billing"), _example(3, "refund")]
    graders = [LabelAccuracy("label", ("billing", "refund"), primary=True), ExactMatch("em")]
    base = Candidate("base+full", "local", "full", "base")
    tuned = Candidate("job@1+short", "local", "short", "model:job@1")
    base_out = ["billing", "billing", HOSTILE, "refund"]  # 2 of 4 right, one hostile answer
    tuned_out = ["billing", "refund", "billing", "billing"]  # 3 of 4 right
    base_rows = _rows(base.name, examples, base_out, graders)
    tuned_rows = _rows(tuned.name, examples, tuned_out, graders, wins=[0.5, 1.0, 1.0, 0.0])
    win = WinRate("pref", base.name, 4, 0.625, 0.25, 1.0, 2, 1, 1)
    summaries = [
        summarise(base, base_rows, graders, "label"),
        summarise(tuned, tuned_rows, graders, "label", reused_from=7, win_rate=win),
    ]
    label = graders[0]
    confusion = {
        c.name: {
            "grader": "label",
            **label.aggregate([label.grade(e, Output(r.output)) for e, r in zip(examples, rows, strict=True)]),
        }
        for c, rows in ((base, base_rows), (tuned, tuned_rows))
    }
    refs = [e.output_text() for e in examples]
    over = overfitting([1.0, 1.0], [r.scores["label"] for r in tuned_rows], train_dataset="job:train@1")
    modes = {tuned.name: FailureModes(tuned.name, style_collapse(tuned_out, refs), over, None, ["forgetting: no set"])}
    return EvalReport(
        "job",
        12,
        "job:holdout@1",
        "label",
        4,
        None,
        summaries,
        base_rows + tuned_rows,
        tmp_path / "examples.jsonl",
        failure_modes=modes,
        confusion=confusion,
        references={e.key(): e.output_text() for e in examples},
        inputs={e.key(): e.input_text() for e in examples},
    )


def test_the_report_has_every_section_with_the_numbers(tmp_path: Path, report: EvalReport):
    a, b = [1, 0, 1, 0] * 5, [1, 1, 1, 0] * 5
    decision = gate_decision((a, b, "binary"), {"em": (a, b)}, primary_name="label")
    decisions = [{**asdict(decision), "candidate": "job@1+short", "reference": "base+full"}]
    path = write_html(report, tmp_path / "out" / "report.html", decisions=decisions, title="Job <eval>")
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == [
        "comparison",
        "scores",
        "confusion",
        "latency",
        "failure-modes",
        "gate",
        "slices",
        "failures",
    ]
    assert "<title>Job &lt;eval&gt;</title>" in text

    table = page.table("candidate")
    assert table[0][1].startswith("label (primary)") and table[0][-2] == "win rate"
    base, tuned = table[1], table[2]
    assert base[0] == "base+full" and base[1].startswith("0.500 [") and "50.0%" in base[1]
    assert tuned[1].startswith("0.750 [") and "75.0%" in tuned[1]
    assert tuned[-2].startswith("0.625 [0.250, 1.000]") and "2W 1T 1L vs base+full" in tuned[-2]
    assert base[-2] == "—" and tuned[-1] == "reused from eval run 7"
    assert base[3] == "0.250 / 0.385"  # latency p50 / p95 of 0.1, 0.2, 0.3, 0.4
    assert base[5] == "1" and base[6] == "0.0020"  # cost per 1k, per success (0.004 over 2 successes)

    # The confusion matrices: rows are references, columns predictions then <invalid>.
    matrices = [t for t in page.tables if t[0][0] == "reference \\ predicted"]
    assert matrices[0] == [
        ["reference \\ predicted", "billing", "refund", "<invalid>"],
        ["billing", "1", "0", "1"],
        ["refund", "1", "1", "0"],
    ]
    assert matrices[1][1:] == [["billing", "2", "0", "0"], ["refund", "1", "1", "0"]]

    failure = next(t for t in page.tables if t[0][:2] == ["candidate", "check"])
    assert [r[1] for r in failure[1:]] == ["overfitting", "style collapse", "note"]
    assert failure[1][2] == "FLAGGED" and "gap +0.250" in failure[1][3]  # 1.0 on training vs 0.75 on the holdout
    assert failure[3][4] == "forgetting: no set"

    gate = next(t for t in page.tables if t[0][0] == "grader" and "p (Holm)" in t[0])
    assert [r[0] for r in gate[1:]] == ["label", "em"]
    assert ("PROMOTED" if decision.promoted else "REFUSED") in text
    for reason in decision.reasons:
        assert reason.replace("'", "&#x27;") in text or reason in text

    slices = next(t for t in page.tables if t[0][0] == "tag")
    assert slices[1][0] == "edge" and "n=1" in slices[1][1]

    # Images are embedded PNGs; nothing is fetched from anywhere.
    assert len(page.images) == 2
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in text and "https://" not in text and "<link" not in text


def test_hostile_output_is_shown_as_text_and_never_runs(tmp_path: Path, report: EvalReport):
    text = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert "script" not in page.tags and page.tags.count("img") == len(page.images) == 2
    assert HOSTILE in "".join(page.text)  # shown verbatim, as text
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in text
    worst = next(t for t in page.tables if t[0][:4] == ["example", "input", "reference", "output"])
    assert worst[1][0] == "e1" and worst[2][:4] == ["e2", "user: ticket 2", "billing", HOSTILE]
    # Without decisions or failure modes their sections are left out, and the page still stands.
    report.failure_modes = {}
    bare = Page(write_html(report, tmp_path / "bare.html").read_text(encoding="utf-8"))
    assert "gate" not in bare.sections and "failure-modes" not in bare.sections
