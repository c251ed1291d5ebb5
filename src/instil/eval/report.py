"""The evaluation as one self-contained HTML file: tables, plots (inline PNG) and the worst failures, no network.

    from instil.eval.report import write_html, write_report
    report = evaluate(spec, store)
    write_report(report, store)                          # report.html beside the run's examples, recorded
    write_html(report, "eval.html", store=store, decisions=[{**asdict(decision), "candidate": "colors@2+short",
                                                             "reference": "base+full"}])

Sections, in order: the comparison table (each grader's mean with its 95% interval and pass rate, latency p50/p95,
tokens in and out, cost per 1,000 requests and per success, win rate against the first candidate); score bars with
interval whiskers; the label confusion matrices; the latency histogram; each tuned candidate's training loss curve
(read from the store: the train run's ``loss_curve`` PNG, else drawn from its ``history``); the failure-mode checks;
the gate decisions given; the primary grader by tag; the worst failures beside their references. Every text that
comes from a model, an example or a spec is escaped. Plots are drawn on matplotlib's Agg canvas (no pyplot state).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from instil.data.records import sha256_hex
from instil.errors import DependencyError
from instil.eval.results import EvalReport
from instil.files import write_atomic
from instil.store import Store
from instil.train.plots import loss_points

__all__ = ["write_html", "write_report"]

WORST_PER_CANDIDATE = 5
"""Failures shown per candidate, lowest primary score first."""

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #1d232a; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2.2rem;
  border-bottom: 1px solid #d6dbe0; padding-bottom: .2rem; } h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
.meta { color: #5b6570; } table { border-collapse: collapse; margin: .4rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d6dbe0; padding: .25rem .5rem; text-align: right; vertical-align: top; }
th { background: #f2f4f6; } td.l, th.l { text-align: left; } .ci { color: #6b7580; font-size: .85em; }
.flag { color: #b3261e; font-weight: 600; } .ok { color: #1e7b34; } img { max-width: 100%; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font: 12px/1.4 ui-monospace, monospace; }
td.text { text-align: left; max-width: 28rem; } .none { color: #8a939c; font-style: italic; }
"""


def write_report(
    report: EvalReport,
    store: Store,
    *,
    decisions: Sequence[Mapping[str, Any]] = (),
    title: str | None = None,
) -> Path:
    """Write the run's HTML page at ``report.html_path`` and record it as the eval run's ``report_html`` artifact;
    returns the path. Called once per report, when everything that goes on the page is known (the loop passes the
    gate decisions of its run)."""
    title = title or f"{report.job}: eval run {report.run_id}"
    path = write_html(report, report.html_path, store=store, decisions=decisions, title=title)
    store.add_artifact(report.run_id, "report_html", path, sha256=sha256_hex(path.read_bytes()))
    return path


def write_html(
    report: EvalReport,
    path: str | Path,
    *,
    store: Store | None = None,
    decisions: Sequence[Mapping[str, Any]] = (),
    title: str | None = None,
) -> Path:
    """Write ``report`` as one self-contained HTML file at ``path``; returns it.

    ``store`` lets the report show the loss curve of each tuned candidate's training run. ``decisions`` are gate
    decisions shaped like ``dataclasses.asdict(GateDecision)`` plus ``candidate`` and ``reference`` keys.
    """
    path = Path(path)
    title = title or f"{report.job}: evaluation on {report.holdout}"
    sections = [
        _comparison(report),
        _score_bars(report),
        _confusion(report),
        _latency(report),
        _loss_curves(report, store),
        _failure_modes(report),
        _decisions(decisions),
        _slices(report),
        _worst(report),
    ]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(s for s in sections if s)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>\n'
        f'<h1>{escape(title)}</h1>\n<p class="meta">job <b>{escape(report.job)}</b> · holdout '
        f"<b>{escape(report.holdout)}</b> · {report.n_examples} examples · primary grader <b>{escape(report.primary)}"
        f"</b> · eval run {report.run_id} · written {when}</p>\n{body}\n</body></html>\n"
    )
    return write_atomic(path, page)


# ---- small helpers ---------------------------------------------------------------------------------------------------
def _num(x: float | None, digits: int = 3) -> str:
    return '<span class="none">n/a</span>' if x is None else f"{x:.{digits}f}"


def _ci(low: float, high: float) -> str:
    return f' <span class="ci">[{low:.3f}, {high:.3f}]</span>'


def _answer(text: str) -> str:
    return f"<pre>{escape(text)}</pre>" if text.strip() else '<span class="none">(empty answer)</span>'


def _flag(flagged: bool) -> str:
    return '<span class="flag">FLAGGED</span>' if flagged else '<span class="ok">ok</span>'


def _passed(passed: bool) -> str:
    return '<span class="ok">passed</span>' if passed else '<span class="flag">failed</span>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1, text: Sequence[int] = ()) -> str:
    """Cells are HTML already (escaped by the caller); the first ``left`` columns are left-aligned, the ``text`` ones
    are wrapped text."""

    def cls(i: int) -> str:
        return ' class="text"' if i in text else ' class="l"' if i < left else ""

    h = "".join(f"<th{cls(i)}>{c}</th>" for i, c in enumerate(head))
    b = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def _figure(width: float = 7.0, height: float = 3.6) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise DependencyError("the HTML report's plots need matplotlib", hint="pip install matplotlib") from None
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _img(figure_or_png: Any, alt: str) -> str:
    if isinstance(figure_or_png, bytes):
        data = figure_or_png
    else:
        buffer = io.BytesIO()
        figure_or_png.savefig(buffer, format="png")
        data = buffer.getvalue()
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


# ---- sections --------------------------------------------------------------------------------------------------------
def _comparison(report: EvalReport) -> str:
    graders = list(report.candidates[0].graders) if report.candidates else []
    head = [
        "candidate",
        *(f"{escape(g)}{' (primary)' if g == report.primary else ''}<br>mean · pass" for g in graders),
        "latency p50 / p95 (s)",
        "tokens in / out",
        "cost / 1k",
        "cost / success",
        "win rate",
        "note",
    ]
    rows = []
    for c in report.candidates:
        cells = [f"<b>{escape(c.name)}</b>"]
        for g in graders:
            s = c.graders[g]
            cells.append(f"{s.mean:.3f}{_ci(s.low, s.high)}<br>{s.pass_rate:.1%}{_ci(s.pass_low, s.pass_high)}")
        w = c.win_rate
        win = (
            f'{w.win_rate:.3f}{_ci(w.low, w.high)}<br><span class="ci">{w.wins}W {w.ties}T {w.losses}L vs '
            f"{escape(w.against)}</span>"
            if w is not None
            else '<span class="none">—</span>'
        )
        notes = []
        if c.reused_from is not None:
            notes.append(f"reused from eval run {c.reused_from}")
        if c.truncated:
            notes.append(f"{c.truncated} cut off at max_new_tokens")
        cells += [
            f"{c.latency_p50_s:.3f} / {c.latency_p95_s:.3f}",
            f"{c.mean_input_tokens:.1f} / {c.mean_output_tokens:.1f}",
            f"{c.cost_per_1k:.4g}",
            _num(c.cost_per_success, 4) if c.cost_per_success is not None else _num(None),
            win,
            escape("; ".join(notes)),
        ]
        rows.append(cells)
    return (
        '<h2 id="comparison">Comparison</h2><p class="meta">Means with 95% bootstrap intervals; pass rates with 95% '
        "Wilson intervals; success is a pass of the primary grader; the win rate is the pairwise judge's verdict "
        "against the first candidate (ties count half).</p>" + _table(head, rows, left=1)
    )


def _score_bars(report: EvalReport) -> str:
    if not report.candidates:
        return ""
    graders = list(report.candidates[0].graders)
    figure = _figure(max(6.0, 1.2 + 1.1 * len(graders) * len(report.candidates) ** 0.5), 3.8)
    ax = figure.add_subplot()
    width = 0.8 / len(report.candidates)
    for i, c in enumerate(report.candidates):
        xs = [g + (i - (len(report.candidates) - 1) / 2) * width for g in range(len(graders))]
        means = [c.graders[g].mean for g in graders]
        errors = [
            [m - c.graders[g].low for m, g in zip(means, graders, strict=True)],
            [c.graders[g].high - m for m, g in zip(means, graders, strict=True)],
        ]
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=c.name)
    ax.set_xticks(range(len(graders)), graders)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean score")
    ax.set_title("scores with 95% intervals")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return '<h2 id="scores">Scores</h2>' + _img(figure, "score bars with 95% interval whiskers")


def _confusion(report: EvalReport) -> str:
    if not report.confusion:
        return ""
    parts = [
        '<h2 id="confusion">Confusion matrices</h2><p class="meta">Rows: reference label; columns: predicted '
        "label (<code>&lt;invalid&gt;</code>: not one of the labels).</p>"
    ]
    for name, agg in report.confusion.items():
        conf = agg["confusion"]
        most = max((v for row in conf["matrix"] for v in row), default=0) or 1
        rows = []
        for i, (label, row) in enumerate(zip(conf["labels"], conf["matrix"], strict=True)):
            cells = [f"<b>{escape(label)}</b>"]
            for j, v in enumerate(row):
                # Darker blue for more examples; the diagonal (right answers) outlined in green.
                style = f"display:block; background: rgba(31,119,180,{v / most * 0.6:.2f})"
                style += "; outline: 2px solid #1e7b34" if i == j else ""
                cells.append(f'<span style="{style}">{v}</span>')
            rows.append(cells)
        parts.append(
            f'<h3>{escape(name)} <span class="ci">(by {escape(str(agg.get("grader", "labels")))}: accuracy '
            f"{agg['accuracy']:.3f}, macro-F1 {agg['macro_f1']:.3f}, invalid {agg['invalid']})</span></h3>"
            + _table(["reference \\ predicted", *(escape(c) for c in conf["columns"])], rows)
        )
    return "".join(parts)


def _latency(report: EvalReport) -> str:
    if not report.examples:
        return ""
    figure = _figure(7.0, 3.4)
    ax = figure.add_subplot()
    longest = max(r.latency_s for r in report.examples) or 1.0
    per_candidate = max(1, len(report.examples) // max(1, len(report.candidates)))
    # One set of bins for every candidate, from 0: their bars line up and compare.
    n_bins = min(40, max(10, per_candidate // 2))
    bins = [longest * 1.02 * i / n_bins for i in range(n_bins + 1)]
    for c in report.candidates:
        values = [r.latency_s for r in report.examples if r.candidate == c.name]
        ax.hist(values, bins=bins, alpha=0.55, label=c.name)
    ax.set_xlim(0, bins[-1])
    ax.set_xlabel("latency per request (s; a batched request waits for its whole batch)")
    ax.set_ylabel("requests")
    ax.set_title("latency")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return '<h2 id="latency">Latency</h2>' + _img(figure, "latency histogram")


def _loss_curves(report: EvalReport, store: Store | None) -> str:
    tuned = [c for c in report.candidates if c.candidate.get("model_id") is not None]
    if not tuned or store is None:
        return ""
    models = {m.id: m for m in store.list_models(report.job)}
    parts = ['<h2 id="loss">Training loss</h2>']
    for c in tuned:
        model = models.get(c.candidate["model_id"])
        artifacts = {a.kind: a for a in store.list_artifacts(model.run_id)} if model and model.run_id else {}
        image = None
        if "loss_curve" in artifacts and Path(artifacts["loss_curve"].path).is_file():
            image = _img(Path(artifacts["loss_curve"].path).read_bytes(), f"loss curve of {c.name}")
        elif "history" in artifacts and Path(artifacts["history"].path).is_file():
            image = _history_plot(json.loads(Path(artifacts["history"].path).read_text(encoding="utf-8")), c.name)
        run = f"train run {model.run_id}" if model and model.run_id else "no training run recorded"
        parts.append(
            f'<h3>{escape(c.name)} <span class="ci">({run})</span></h3>'
            + (image or '<p class="none">no loss history recorded</p>')
        )
    return "".join(parts)


def _history_plot(history: list[dict[str, Any]], name: str) -> str | None:

    figure = _figure(6.4, 3.6)
    ax = figure.add_subplot()
    drawn = False
    for key, label in (("loss", "train loss"), ("eval_loss", "validation loss")):
        steps, values = loss_points(history, key)
        if values:
            ax.plot(steps, values, label=label, marker="o" if len(values) == 1 else None)
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    return _img(figure, f"loss curve of {name}")


def _failure_modes(report: EvalReport) -> str:
    if not report.failure_modes:
        return ""
    rows = []
    for name, m in report.failure_modes.items():
        o, s, f = m.overfitting, m.style_collapse, m.forgetting
        if o is not None:
            rows.append(
                [
                    escape(name),
                    "overfitting",
                    _flag(o.flagged),
                    f"train {o.train_score:.3f} (n={o.n_train}, {escape(o.train_dataset)}) vs holdout "
                    f"{o.holdout_score:.3f}: gap {o.gap:+.3f} (threshold {o.threshold:g})",
                    escape(o.explanation),
                ]
            )
        rows.append(
            [
                escape(name),
                "style collapse",
                _flag(s.flagged),
                f"length {s.length_mean:.1f}±{s.length_sd:.1f} vs {s.ref_length_mean:.1f}±{s.ref_length_sd:.1f} "
                f"chars; distinct-2 {s.distinct2:.3f} vs {s.ref_distinct2:.3f}; unique {s.unique_ratio:.2f} vs "
                f"{s.ref_unique_ratio:.2f}; most common {s.top_share:.0%} vs {s.ref_top_share:.0%}",
                escape(s.explanation),
            ]
        )
        if f is not None:
            rows.append(
                [
                    escape(name),
                    "forgetting",
                    _flag(f.flagged),
                    f"token F1 vs {escape(f.against)}: tuned {f.tuned_score:.3f}, base {f.base_score:.3f}, drop "
                    f"{f.drop:+.3f} (threshold {f.threshold:g}, n={f.n})",
                    escape(f.explanation),
                ]
            )
        for note in m.notes:
            rows.append([escape(name), "note", "", "", escape(note)])
    return '<h2 id="failure-modes">Failure modes</h2>' + _table(
        ["candidate", "check", "verdict", "numbers", "explanation"], rows, left=2, text=(3, 4)
    )


def _decisions(decisions: Sequence[Mapping[str, Any]]) -> str:
    if not decisions:
        return ""
    parts = ['<h2 id="gate">Gate decisions</h2>']
    for d in decisions:
        verdict = '<span class="ok">PROMOTED</span>' if d.get("promoted") else '<span class="flag">REFUSED</span>'
        parts.append(
            f"<h3>{escape(str(d.get('candidate', '?')))} vs {escape(str(d.get('reference', '?')))}: {verdict}</h3>"
            f'<p class="meta">n={d.get("n")} · alpha {d.get("alpha")} · margin {d.get("margin")} · power '
            f"{_num(d.get('power'))} to detect {d.get('min_effect')} · smallest detectable gain "
            f"{_num(d.get('min_detectable_effect'))}</p>"
        )
        rows = [
            [
                escape(str(c.get("name"))),
                escape(str(c.get("hypothesis"))),
                escape(str(c.get("test"))),
                f"{c.get('estimate', 0):+.3f}{_ci(c.get('low', 0), c.get('high', 0))}",
                f"{c.get('threshold', 0):+.3f}",
                f"{c.get('p_value', 1):.4g}",
                f"{c.get('p_adjusted', 1):.4g}",
                _passed(bool(c.get("passed"))),
            ]
            for c in d.get("comparisons", [])
        ]
        parts.append(
            _table(
                ["grader", "hypothesis", "test", "B − A [interval]", "threshold", "p", "p (Holm)", "result"],
                rows,
                left=3,
            )
        )
        for line in d.get("reasons", []):
            parts.append(f'<p class="flag">{escape(str(line))}</p>')
        for line in d.get("warnings", []):
            parts.append(f'<p class="meta">warning: {escape(str(line))}</p>')
    return "".join(parts)


def _slices(report: EvalReport) -> str:
    tags = sorted({t for c in report.candidates for t in c.slices})
    if not tags:
        return ""
    rows = []
    for tag in tags:
        cells = [escape(tag)]
        for c in report.candidates:
            s = c.slices.get(tag)
            cells.append(
                f'{s.mean:.3f}{_ci(s.low, s.high)}<br><span class="ci">n={s.n}, pass {s.pass_rate:.0%}</span>'
                if s
                else '<span class="none">—</span>'
            )
        rows.append(cells)
    head = ["tag", *(escape(c.name) for c in report.candidates)]
    return f'<h2 id="slices">{escape(report.primary)} by tag</h2>' + _table(head, rows)


def _worst(report: EvalReport) -> str:
    parts = [
        '<h2 id="failures">Worst failures</h2><p class="meta">Per candidate, the examples that fail the primary '
        f"grader, lowest score first (at most {WORST_PER_CANDIDATE}), beside the reference.</p>"
    ]
    shown = False
    for c in report.candidates:
        failed = [r for r in report.examples if r.candidate == c.name and not r.passed.get(report.primary, True)]
        failed.sort(key=lambda r: (r.scores.get(report.primary, 0.0), sum(r.scores.values())))
        if not failed:
            continue
        shown = True
        rows = [
            [
                escape(r.example_id),
                f"<pre>{escape(report.inputs.get(r.example_id, ''))}</pre>",
                f"<pre>{escape(report.references.get(r.example_id, ''))}</pre>",
                _answer(r.output),
                f"{r.scores.get(report.primary, 0.0):.3f}",
                "<br>".join(f"{escape(g)}: {escape(why)}" for g, why in r.reasons.items()),
            ]
            for r in failed[:WORST_PER_CANDIDATE]
        ]
        parts.append(f'<h3>{escape(c.name)} <span class="ci">({len(failed)} of {c.n} fail)</span></h3>')
        parts.append(
            _table(
                ["example", "input", "reference", "output", escape(report.primary), "why"],
                rows,
                text=(1, 2, 3, 5),
            )
        )
    if not shown:
        parts.append('<p class="none">every answer passes the primary grader</p>')
    return "".join(parts)
