"""``instil eval`` end to end on a tiny job: candidates on the frozen holdout, the report, the store, the CLI table,
and an endpoint candidate on a loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import serve_app

try:  # FastAPI resolves the handler's annotations by name in this module's globals
    from fastapi import Request
except ImportError:  # the endpoint test is skipped then
    Request = None  # type: ignore[assignment,misc]

from instil.data.records import Example, Message
from instil.data.stages import curate_job, split_job
from instil.errors import DataError, InstilError
from instil.eval.candidates import default_candidates, default_max_new_tokens, prompt_examples
from instil.eval.compare import evaluate, select_candidates
from instil.spec import JobSpec, load_spec
from instil.store import Store

COLORS = ["red", "green", "blue", "yellow"]
LONG_PROMPT = "You are the colour desk. Answer with one colour name, lower case, nothing else, ever."


WORDS = ["lantern", "orchid", "quartz", "meadow", "harbor", "pepper", "violin", "glacier", "saddle", "thimble",
         "canyon", "biscuit", "marble", "falcon", "juniper", "rocket"]


def _ticket(i: int) -> str:
    # Tickets unlike each other, so that no training example counts as a near-duplicate of a holdout one.
    words = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] + str((i * 31 + k * 17) % 97) for k in range(5))
    return f"{words}: colour of item {i}?"


def write_job(root: Path, endpoint: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)

    def rows(start: int, n: int) -> str:
        out = []
        for i in range(start, start + n):
            ex = Example([Message("system", LONG_PROMPT), Message("user", _ticket(i)),
                          Message("assistant", COLORS[i % len(COLORS)])],
                         id=f"c{i}", tags=["warm"] if COLORS[i % len(COLORS)] in ("red", "yellow") else ["cool"])  # fmt: skip
            out.append(json.dumps(ex.to_dict()))
        return "\n".join(out) + "\n"

    (root / "train.jsonl").write_text(rows(0, 12), encoding="utf-8")
    (root / "holdout.jsonl").write_text(rows(100, 8), encoding="utf-8")
    endpoints = ""
    if endpoint:
        endpoints = (f"\neval:\n  machine_price_per_hour: 3.6\n  endpoints:\n    - {{name: oracle, base_url: '{endpoint}', "
                     "model: fixed, prompt: short, input_price_per_million: 1000, output_price_per_million: 2000}\n")  # fmt: skip
    spec = root / "instil.yaml"
    spec.write_text(
        f"""name: colors
system_prompt: {LONG_PROMPT}
short_prompt: Name the colour.
graders:
  - {{name: em, type: exact_match, primary: true}}
  - {{name: short, type: length, max_chars: 8}}
data:
  - {{path: train.jsonl}}
  - {{path: holdout.jsonl, role: holdout}}
model: {{base: tiny}}
training: {{adapter: lora, batch_size: 4}}
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


def test_evaluate_runs_base_and_tuned_records_and_reports(tmp_path: Path, store: Store):
    spec = prepared(tmp_path / "job", store)
    cands = default_candidates(spec, store)
    assert [c.name for c in cands] == ["base+full", "base+short", "colors@1+short"]
    assert cands[2].model_version is not None and cands[2].model == "model:colors@1"

    report = evaluate(spec, store, limit=6, max_new_tokens=4)
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
        assert set(c.slices) <= {"warm", "cool"} and sum(s.n for s in c.slices.values()) == 6
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


def test_prompts_are_swapped_as_in_training(tmp_path: Path, store: Store):
    spec = load_spec(write_job(tmp_path / "job"))
    ex = Example([Message("system", "old"), Message("user", "hi"), Message("assistant", "red")], id="x")
    by_prompt = {
        c.prompt: prompt_examples(c, spec, [ex])[0].messages for c in default_candidates(spec, store)
    }
    assert by_prompt["full"][0] == Message("system", LONG_PROMPT)
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
def _app(log: list[dict]) -> object:
    import fastapi

    app = fastapi.FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> object:
        body = await request.json()
        log.append(body)
        # A perfect oracle: the colour of the item number in the ticket.
        number = int(body["messages"][-1]["content"].split()[-1].rstrip("?"))  # "...: colour of item 101?"
        return {
            "id": "x", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": COLORS[number % len(COLORS)]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }  # fmt: skip

    return app


@pytest.fixture
def oracle() -> Iterator[tuple[str, list[dict]]]:
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    log: list[dict] = []
    with serve_app(_app(log)) as url:
        yield url, log


def test_an_endpoint_and_the_untrained_base_disagree_and_are_priced(tmp_path: Path, store: Store, oracle):
    url, log = oracle
    spec = prepared(tmp_path / "job", store, endpoint=url, train=False)
    cands = select_candidates(spec, store, ["oracle", "base+full"])
    report = evaluate(spec, store, cands, max_new_tokens=3)
    oracle_row, base = report.candidate("oracle"), report.candidate("base+full")
    assert oracle_row.graders["em"].mean == 1.0 == oracle_row.success_rate
    assert oracle_row.slices["warm"].pass_rate == 1.0 and oracle_row.slices["cool"].pass_rate == 1.0
    assert base.graders["em"].mean < 1.0  # a random tiny model does not name the colours
    # 10 input tokens at 1000 per million and 1 output token at 2000 per million: 0.012 a request.
    assert oracle_row.cost_per_1k == pytest.approx(12.0)
    assert oracle_row.cost_per_success == pytest.approx(0.012)
    assert base.cost_per_1k > 0  # the machine at 3.6 an hour: a thousandth per second of generation
    assert base.cost_per_success is None or base.cost_per_success > 0
    assert len(log) == 8 and log[0]["messages"][0] == {"role": "system", "content": "Name the colour."}
    assert log[0]["model"] == "fixed" and log[0]["max_tokens"] == 3


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
    assert "examples.jsonl" in out
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
