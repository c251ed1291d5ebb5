"""``instil eval`` end to end on a tiny job: candidates on the frozen holdout, the report, the store, the CLI table,
and an endpoint candidate on a loopback OpenAI-compatible server."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from colour_jobs import COLORS, PROMPT, SPEC_HEAD, ticket
from instil.data.records import Example, Message
from instil.errors import DataError, InstilError
from instil.eval.candidates import default_candidates, default_max_new_tokens, prompt_examples
from instil.eval.compare import evaluate, select_candidates
from instil.eval.report import write_report
from instil.jobdata import curate_job, split_job
from instil.spec import JobSpec, load_spec
from instil.store import Store
from servers import between


def write_job(root: Path, endpoint: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)

    def rows(start: int, n: int) -> str:
        out = []
        for i in range(start, start + n):
            ex = Example(
                [
                    Message("system", PROMPT),
                    Message("user", ticket(i)),
                    Message("assistant", COLORS[i % len(COLORS)]),
                ],
                id=f"c{i}",
                tags=["warm"] if COLORS[i % len(COLORS)] in ("red", "yellow") else ["cool"],
            )
            out.append(json.dumps(ex.to_dict()))
        return "\n".join(out) + "\n"

    (root / "train.jsonl").write_text(rows(0, 12), encoding="utf-8")
    (root / "holdout.jsonl").write_text(rows(100, 8), encoding="utf-8")
    endpoints = ""
    if endpoint:
        endpoints = (
            f"\neval:\n  machine_price_per_hour: 3.6\n  endpoints:\n    - {{name: oracle, base_url: '{endpoint}', "
            "model: fixed, prompt: short, input_price_per_million: 1000, output_price_per_million: 2000}\n"
        )
    spec = root / "instil.yaml"
    spec.write_text(
        f"""{SPEC_HEAD}training: {{adapter: lora, batch_size: 4}}
{endpoints}""",
        encoding="utf-8",
    )
    return spec


def prepared(root: Path, store: Store, endpoint: str | None = None, train: bool = True) -> JobSpec:
    spec = load_spec(write_job(root, endpoint))
    curate_job(spec, store)
    split_job(spec, store)
    if train:
        from instil.train.sft import train_sft

        train_sft(spec, store, max_steps=2, progress=False)
    return spec


def test_evaluate_runs_base_and_tuned_records_and_reports(tmp_path: Path, store: Store, capsys):
    spec = prepared(tmp_path / "job", store)
    cands = default_candidates(spec, store)
    assert [c.name for c in cands] == ["base+full", "base+short", "colors@1+short"]
    assert cands[2].model_version is not None and cands[2].model == "model:colors@1"

    report = evaluate(spec, store, limit=6, max_new_tokens=4)
    write_report(report, store)  # the caller writes the HTML page, once
    assert report.n_examples == 6 and report.primary == "em" and report.holdout == "colors:holdout@1"
    assert [c.name for c in report.candidates] == [c.name for c in cands]
    assert len(report.examples) == 3 * 6
    for c in report.candidates:
        assert c.n == 6 and list(c.graders) == ["em", "short"]
        for g in c.graders.values():
            assert 0.0 <= g.low <= g.mean <= g.high <= 1.0
            assert 0.0 <= g.pass_low <= g.pass_rate <= g.pass_high <= 1.0
        assert c.success_rate == c.graders["em"].pass_rate
        assert 0 < c.latency_p50_s <= c.latency_p95_s
        assert c.mean_output_tokens <= 4 and c.mean_input_tokens > 0
        assert c.cost_per_1k == 0.0  # eval.machine_price_per_hour defaults to 0
        assert set(c.slices) == {"warm", "cool"} and sum(s.n for s in c.slices.values()) == 6  # 4 of each in all
    # The full prompt is longer than the short one, and the model sees it: more input tokens.
    assert report.candidate("base+full").mean_input_tokens > report.candidate("base+short").mean_input_tokens

    run = store.get_run(report.run_id)
    assert run.kind == "eval" and run.status == "succeeded"
    holdout = store.get_dataset("colors:holdout")
    assert run.datasets == ((holdout.id, "eval"),)
    evals = store.list_evaluations(run_id=report.run_id)
    assert [e.candidate for e in evals] == [c.name for c in cands]
    assert evals[2].model_id == cands[2].model_version.id and evals[0].model_id is None
    assert evals[0].metrics["graders"]["em"]["mean"] == report.candidates[0].graders["em"].mean
    kinds = {a.kind: a for a in store.list_artifacts(report.run_id)}
    lines = Path(kinds["examples"].path).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 18 and json.loads(lines[0])["candidate"] == "base+full"
    assert json.loads(Path(kinds["report"].path).read_text())["run_id"] == report.run_id
    json.dumps(report.to_dict(with_examples=True))  # JSON all the way down
    assert all(c.reused_from is None for c in report.candidates)

    # reuse=True: the tuned model's rows come from that run, not from a new generation; a new run is still recorded.
    again = evaluate(spec, store, [cands[2]], limit=6, max_new_tokens=4, reuse=True)
    assert again.run_id != report.run_id and store.get_run(again.run_id).status == "succeeded"
    assert again.candidates[0].reused_from == report.run_id
    assert again.examples == [r for r in report.examples if r.candidate == cands[2].name]  # latencies included
    assert store.list_evaluations(run_id=again.run_id)[0].metrics["reused_from"] == report.run_id
    # Another limit is another measurement: generated afresh.
    other = evaluate(spec, store, [cands[2]], limit=5, max_new_tokens=4, reuse=True)
    assert other.candidates[0].reused_from is None

    # The HTML report beside report.json, recorded, with the tuned model's loss curve from its training run.
    assert report.html_path == report.examples_path.with_name("report.html")
    assert Path(kinds["report_html"].path) == report.html_path
    page = report.html_path.read_text(encoding="utf-8")
    assert 'id="loss"' in page and "colors@1+short <span" in page and page.count("data:image/png;base64,") == 3
    assert json.loads(Path(kinds["report"].path).read_text())["html_path"] == str(report.html_path)

    # The CLI prints the tuned model's failure-mode checks and the HTML report's path.
    from instil.cli import main

    capsys.readouterr()
    args = ["eval", str(spec.file), "--candidate", "colors@1+short", "--limit", "3", "--max-new-tokens", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ok colors@1+short: no overfitting: 0.000 on" in out
    assert "style collapse" in out and "HTML report:" in out and "report.html" in out
    assert "win rate" not in out  # no pairwise judge in this spec


def test_prompts_are_swapped_as_in_training(tmp_path: Path, store: Store):
    spec = load_spec(write_job(tmp_path / "job"))
    ex = Example([Message("system", "old"), Message("user", "hi"), Message("assistant", "red")], id="x")
    by_prompt = {c.prompt: prompt_examples(c, spec, [ex])[0].messages for c in default_candidates(spec, store)}
    assert by_prompt["full"][0] == Message("system", PROMPT)
    assert by_prompt["short"][0] == Message("system", "Name the colour.")
    assert default_max_new_tokens([ex], len) == int(3 * 1.5) + 16


def test_evaluate_refuses_without_a_holdout_and_unknown_candidates(tmp_path: Path, store: Store):
    spec = load_spec(write_job(tmp_path / "job"))
    with pytest.raises(DataError, match="no frozen holdout") as info:
        evaluate(spec, store)
    assert "instil data split" in info.value.hint
    with pytest.raises(InstilError, match="no candidate named"):
        select_candidates(spec, store, ["gpt-9"])


# ---- an endpoint candidate on loopback -------------------------------------------------------------------------------
def _oracle(body: dict, request: object) -> str:
    # A perfect oracle: the colour of the item number in the ticket.
    number = int(body["messages"][-1]["content"].split()[-1].rstrip("?"))  # "...: colour of item 101?"
    return COLORS[number % len(COLORS)]


@pytest.fixture
def oracle(fake_openai) -> tuple[str, list[dict]]:
    return fake_openai(_oracle)


def test_an_endpoint_and_the_untrained_base_disagree_and_are_priced(tmp_path: Path, store: Store, oracle):
    url, log = oracle
    spec = prepared(tmp_path / "job", store, endpoint=url, train=False)
    cands = select_candidates(spec, store, ["oracle", "base+full"])
    report = evaluate(spec, store, cands, max_new_tokens=3)
    oracle_row, base = report.candidate("oracle"), report.candidate("base+full")
    assert oracle_row.graders["em"].mean == 1.0 == oracle_row.success_rate
    assert oracle_row.slices["warm"].pass_rate == 1.0 and oracle_row.slices["cool"].pass_rate == 1.0
    assert base.graders["em"].mean == 0.0 == base.success_rate  # a random tiny model does not name the colours
    # 10 input tokens at 1000 per million and 1 output token at 2000 per million: 0.012 a request.
    assert oracle_row.cost_per_1k == pytest.approx(12.0)
    assert oracle_row.cost_per_success == pytest.approx(0.012)
    assert base.cost_per_1k > 0  # the machine at 3.6 an hour: a thousandth per second of generation
    assert base.cost_per_success is None  # no success to price
    assert len(log) == 8 and log[0]["messages"][0] == {"role": "system", "content": "Name the colour."}
    assert log[0]["model"] == "fixed" and log[0]["max_tokens"] == 3

    # Reused: no request reaches the endpoint, and the rows name the run that generated them, even reused twice.
    for _ in range(2):
        again = evaluate(spec, store, cands, max_new_tokens=3, reuse=True)
        assert len(log) == 8
        assert [c.reused_from for c in again.candidates] == [report.run_id, report.run_id]
        assert again.examples == report.examples and again.candidates == [
            dataclasses.replace(c, reused_from=report.run_id) for c in report.candidates
        ]
    # A price change is another candidate identity (its costs came from the old price): asked again.
    endpoint = spec.eval.endpoints[0].model_copy(update={"input_price_per_million": 10.0})
    repriced = dataclasses.replace(cands[0], endpoint=endpoint)
    fresh = evaluate(spec, store, [repriced], max_new_tokens=3, reuse=True)
    assert len(log) == 16 and fresh.candidates[0].reused_from is None
    # A changed grader set changes eval_inputs_sha256: nothing is reused.
    regraded = spec.model_copy(update={"graders": spec.graders[:1]})
    assert evaluate(regraded, store, cands[:1], max_new_tokens=3, reuse=True).candidates[0].reused_from is None
    assert len(log) == 24


# ---- a pairwise judge on loopback: win rates against the first candidate ---------------------------------------------
def _oracle_and_judge(judged: list[dict]):
    def answer(body: dict, request: object) -> str:
        user = body["messages"][-1]["content"]
        if body["model"] == "judge":
            judged.append(body)
            # The answer equal to the reference wins; without a reference shown, or both alike, a tie.
            ref, a, b = between("reference", user), between("answer_a", user), between("answer_b", user)
            winner = "tie" if ref is None or (a == ref) == (b == ref) else ("A" if a == ref else "B")
            return json.dumps({"winner": winner, "reason": f"{winner} matches the reference"})
        # An oracle that is wrong on every third item: answers that disagree with the base's on some examples.
        number = int(user.split()[-1].rstrip("?"))
        return "purple" if number % 3 == 0 else COLORS[number % len(COLORS)]

    return answer


def test_win_rate_against_the_first_candidate_by_a_pairwise_judge(tmp_path: Path, store: Store, capsys, fake_openai):
    judged: list[dict] = []
    url, _ = fake_openai(_oracle_and_judge(judged))
    spec_file = prepared(tmp_path / "job", store, endpoint=url, train=False).file
    text = spec_file.read_text(encoding="utf-8").replace(
        "  - {name: short, type: length, max_chars: 8}\n",
        "  - {name: short, type: length, max_chars: 8}\n"
        "  - {name: pref, type: pairwise_judge, rubric: Right wins., "
        f"endpoint: {{base_url: '{url}', model: judge}}}}\n",
    )
    spec_file.write_text(text, encoding="utf-8")
    spec = load_spec(spec_file)
    assert spec.graders[-1].type == "pairwise_judge"
    cands = select_candidates(spec, store, ["base+full", "oracle"])
    report = evaluate(spec, store, cands, max_new_tokens=3)
    base, oracle = report.candidate("base+full"), report.candidate("oracle")
    assert base.win_rate is None and oracle.win_rate is not None
    # The expected verdicts from the answers themselves: right beats wrong, alike is a tie.
    right = {(r.candidate, r.example_id): r.scores["em"] == 1.0 for r in report.examples}
    expected = [
        1.0
        if right["oracle", k] > right["base+full", k]
        else 0.0
        if right["oracle", k] < right["base+full", k]
        else 0.5
        for k in report.references
    ]
    w = oracle.win_rate
    assert (w.judge, w.against, w.n) == ("pref", "base+full", 8)
    assert w.win_rate == pytest.approx(sum(expected) / 8) and w.win_rate == pytest.approx(7 / 8)
    assert w.wins == expected.count(1.0) and w.ties == expected.count(0.5) and w.losses == expected.count(0.0)
    # The base is never right: the oracle wins where it is, and ties on items 102 and 105, where it is wrong too.
    assert (w.wins, w.ties, w.losses) == (6, 2, 0) and w.low <= w.win_rate <= w.high
    assert [r.win for r in report.examples if r.candidate == "oracle"] == expected
    # The judge as a grader (against the reference, not shown it) plus the head-to-head, both orders each time.
    assert len(judged) == 2 * 8 * 2 + 2 * 8
    assert f"{w.wins}W {w.ties}T {w.losses}L vs base+full" in write_report(report, store).read_text(encoding="utf-8")

    # Reused: neither the candidates nor the judge are asked again, and the verdicts stand.
    again = evaluate(spec, store, cands, max_new_tokens=3, reuse=True)
    assert len(judged) == 48 and again.candidate("oracle").win_rate == w
    # In the other order the first candidate changes: the verdicts are asked afresh, from the other side; back in
    # the first order, the first run's verdicts are found again.
    flipped = evaluate(spec, store, cands[::-1], max_new_tokens=3, reuse=True)
    assert len(judged) == 48 + 16 and flipped.candidate("oracle").win_rate is None
    assert flipped.candidate("base+full").win_rate.win_rate == pytest.approx(1 - w.win_rate)

    from instil.cli import main

    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(spec_file),
                "--candidate",
                "base+full",
                "--candidate",
                "oracle",
                "--max-new-tokens",
                "3",
                "--reuse",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        f"win rate of oracle against base+full (judge pref, ties half): {w.win_rate:.2f} [{w.low:.2f}, "
        f"{w.high:.2f}], {w.wins} won, {w.ties} tied, {w.losses} lost"
    ) in out
    assert f"reused from earlier eval runs: base+full (run {report.run_id})" in out and len(judged) == 64


# ---- the CLI ---------------------------------------------------------------------------------------------------------
def test_cli_prints_the_table_and_the_tag_slices_and_json(tmp_path: Path, store: Store, capsys):
    from instil.cli import main

    spec = prepared(tmp_path / "job", store, train=False)
    args = ["eval", str(spec.file), "--candidate", "base+short", "--limit", "4", "--max-new-tokens", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "colors:holdout@1, 4 examples (primary: em)" in out
    assert "base+short" in out and "base+full" not in out
    assert "em by tag" in out and "warm" in out and "cool" in out
    assert "examples.jsonl" in out and "HTML report:" in out
    html = Path(out.split("HTML report:")[1].split()[0])
    assert html.name == "report.html" and html.is_file()
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in data["candidates"]] == ["base+short"]
    assert set(data["candidates"][0]["graders"]) == {"em", "short"}
    assert [r.kind for r in store.list_runs("colors", "eval")] == ["eval", "eval"]


def test_cli_refuses_without_a_holdout_with_the_next_step(tmp_path: Path, capsys):
    from instil.cli import main

    spec = write_job(tmp_path / "job")
    assert main(["eval", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "no frozen holdout" in err and "instil data split" in err and "Traceback" not in err
