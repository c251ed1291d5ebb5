"""The LLM and pairwise judges against a real OpenAI-compatible server on loopback (FastAPI + uvicorn).

The fake judge answers deterministically from the request: the rubric judge gives the top score when the candidate
contains the reference, else 1; the pairwise judge prefers the answer that says "correct". Magic candidates make it
misbehave: GARBLE (a verdict that is not JSON), ERROR500 (HTTP 500), NOSCORE (JSON without a score).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from servers import between, free_port, openai_server, serve_app

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

from instil.data.records import Example, Message  # noqa: E402
from instil.eval import GraderError, LlmJudge, PairwiseJudge, build_graders  # noqa: E402
from instil.spec import parse_spec  # noqa: E402


def judge_answer(log: list[dict]):
    """The fake judge's answers (for ``servers.openai_server``); each request's body and key go to ``log``."""

    def answer(body: dict, request: fastapi.Request) -> object:
        log.append({"body": body, "auth": request.headers.get("authorization")})
        user = body["messages"][-1]["content"]
        candidate = between("candidate", user)
        if candidate is not None:
            if "ERROR500" in candidate:
                return fastapi.responses.JSONResponse({"error": {"message": "judge overloaded"}}, status_code=500)
            reference = between("reference", user) or ""
            top = int(re.search(r"integer from 1 to (\d+)", body["messages"][0]["content"]).group(1))
            score = top if reference.casefold() in candidate.casefold() else 1
            verdict = {
                "score": score,
                "reason": "contains the reference" if score == top else "misses the reference",
            }
            content = "I think it is fine." if "GARBLE" in candidate else "```json\n" + json.dumps(verdict) + "\n```"
            if "NOSCORE" in candidate:
                content = json.dumps({"reason": "no score here"})
        else:
            a, b = between("answer_a", user) or "", between("answer_b", user) or ""
            winner = "tie" if ("correct" in a) == ("correct" in b) else ("A" if "correct" in a else "B")
            content = json.dumps({"winner": winner, "reason": f"{winner} says correct"})
        return content

    return answer


@pytest.fixture(scope="module")
def judge_server() -> Iterator[tuple[str, list[dict]]]:
    log: list[dict] = []
    with openai_server(judge_answer(log)) as (url, _):
        yield url, log


def ex(answer: str = "Paris", id: str = "q1") -> Example:
    return Example([Message("user", "Capital of France?"), Message("assistant", answer)], id=id)


def judge(url: str, **kw: object) -> LlmJudge:
    kw = {"max_retries": 0, "timeout": 5.0, **kw}
    return LlmJudge("judge", rubric="Names the right city.", base_url=url, model="judge-model", **kw)


def test_llm_judge_scores_and_maps_the_scale(judge_server: tuple[str, list[dict]]) -> None:
    url, log = judge_server
    good = judge(url, threshold=0.75).grade(ex(), "It is Paris.")
    assert (good.value, good.passed, good.reason) == (1.0, True, None)
    assert good.details == {"judge_score": 5, "judge_reason": "contains the reference"}
    bad = judge(url, scale=3).grade(ex(), "Lyon")
    assert (bad.value, bad.passed, bad.reason) == (0.0, False, "misses the reference")
    request = log[-1]["body"]
    assert request["model"] == "judge-model" and request["temperature"] == 0
    assert "<rubric>\nNames the right city.\n</rubric>" in request["messages"][1]["content"]
    assert "<input>\nuser: Capital of France?\n</input>" in request["messages"][1]["content"]


def test_llm_judge_does_not_call_for_missing_output(judge_server: tuple[str, list[dict]]) -> None:
    url, log = judge_server
    before = len(log)
    assert judge(url).grade(ex(), None).reason == "no output (the model returned None)"
    assert judge(url).grade(ex(), "  ").reason == "the output is empty"
    assert len(log) == before


def test_a_broken_judge_stops_with_grader_error(judge_server: tuple[str, list[dict]]) -> None:
    url, log = judge_server
    with pytest.raises(GraderError, match=r"grader 'judge', example q1: the judge .* did not answer a JSON verdict"):
        judge(url).grade(ex(), "GARBLE")
    with pytest.raises(GraderError, match="has no score from 1 to 5"):
        judge(url).grade(ex(), "NOSCORE")
    before = len(log)
    with pytest.raises(GraderError, match="answered HTTP 500: judge overloaded"):
        judge(url, max_retries=1).grade(ex(), "ERROR500")
    assert len(log) - before == 2  # the client retried once before giving up


def test_judge_down_fails_fast_with_grader_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(GraderError, match=r"cannot reach the judge at .* after 1 retries: APIConnectionError"):
        judge(url, max_retries=1).grade(ex(), "Paris")
    assert time.monotonic() - start < 5


def test_pairwise_judge_swaps_positions(judge_server: tuple[str, list[dict]]) -> None:
    url, log = judge_server
    pair = PairwiseJudge("pref", rubric="The correct answer wins.", base_url=url, model="m", max_retries=0)
    e = ex("Paris")
    win = pair.grade(e, "Paris, correct")
    assert (win.value, win.passed, win.details["verdicts"]) == (1.0, True, ["A", "B"])
    first, second = (entry["body"]["messages"][1]["content"] for entry in log[-2:])
    assert between("answer_a", first) == "Paris, correct" and between("answer_b", second) == "Paris, correct"
    assert "<reference>" not in first  # against the reference itself, the judge is not shown it twice
    loss = pair.compare(e, "Lyon", "Paris, correct")
    assert loss.value == 0.0 and "<reference>\nParis\n</reference>" in log[-1]["body"]["messages"][1]["content"]
    tie = pair.grade(e, "Paris")
    assert (tie.value, tie.passed) == (0.5, False)
    assert pair.aggregate([win, loss, tie]) == {"n": 3, "win_rate": 0.5, "wins": 1, "ties": 1, "losses": 1}


def test_judges_from_spec_read_the_key_from_the_environment(
    judge_server: tuple[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, log = judge_server
    text = f"""
name: t
system_prompt: s
data: [{{path: d.jsonl}}]
graders:
  - {{name: j, type: llm_judge, primary: true, rubric: r, scale: 4,
      endpoint: {{base_url: "{url}", model: m, api_key_env: TEST_JUDGE_KEY}}}}
  - {{name: p, type: pairwise_judge, rubric: r, endpoint: {{base_url: "{url}", model: m}}}}
"""
    monkeypatch.delenv("TEST_JUDGE_KEY", raising=False)
    with pytest.raises(GraderError, match="TEST_JUDGE_KEY .* is not set"):
        build_graders(parse_spec(text))
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    j, p = build_graders(parse_spec(text))
    assert "sk-test-123" not in repr(j)
    assert j.grade(ex(), "Paris").value == 1.0 and log[-1]["auth"] == "Bearer sk-test-123"
    assert p.grade(ex(), "Paris, correct").value == 1.0


# ---- against a real model: a tiny model trained to answer a verdict, served by instil.serve --------------------------
VERDICT = '{"score": 4, "winner": "A"}'
"""The one reply the tiny judge learns: both judges parse it (the rubric judge reads the score, the pairwise one the
winner), so one model trained for seconds serves both."""


@pytest.fixture(scope="module")
def verdict_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, object]]:
    """A job whose tiny model (full fine-tuning, 30 steps) answers VERDICT to judge prompts; (spec, store)."""
    pytest.importorskip("torch")
    from instil.eval.graders.judges import JUDGE_SYSTEM, PAIRWISE_SYSTEM
    from instil.store import Store
    from instil.train.sft import train_sft

    def section(tag: str, text: str) -> str:
        return f"<{tag}>\n{text}\n</{tag}>"

    qa = [
        ("Capital of France?", "Paris", "It is Paris."),
        ("Two plus two?", "4", "Four"),
        ("Largest planet?", "Jupiter", "Saturn"),
        ("Opposite of hot?", "cold", "cool"),
    ]
    examples = []
    for (
        q,
        reference,
        candidate,
    ) in qa:  # prompts shaped as LlmJudge and PairwiseJudge write them; 8 rows (no validation)
        rubric = "\n\n".join(
            [
                section("rubric", "Right and brief."),
                section("input", f"user: {q}"),
                section("reference", reference),
                section("candidate", candidate),
            ]
        )
        pair = "\n\n".join(
            [
                section("rubric", "The right answer wins."),
                section("input", f"user: {q}"),
                section("answer_a", candidate),
                section("answer_b", reference),
            ]
        )
        examples.append(
            Example(
                [
                    Message("system", JUDGE_SYSTEM.format(scale=5)),
                    Message("user", rubric),
                    Message("assistant", VERDICT),
                ]
            )
        )
        examples.append(
            Example([Message("system", PAIRWISE_SYSTEM), Message("user", pair), Message("assistant", VERDICT)])
        )
    root = tmp_path_factory.mktemp("verdict-job")
    spec = parse_spec(
        f"""
name: judge
system_prompt: Judge the answer.
short_prompt: {json.dumps(JUDGE_SYSTEM.format(scale=5))}
graders: [{{name: em, type: exact_match, primary: true}}]
data: [{{path: data.jsonl}}]
model: {{base: tiny}}
training: {{adapter: full, batch_size: 8, learning_rate: 5.0e-3,
            trl: {{lr_scheduler_type: constant, save_steps: 1000}}}}
""",
        root=root,
    )
    with pytest.MonkeyPatch.context() as mp:  # a module fixture runs outside the per-test home
        mp.setenv("INSTIL_HOME", str(root / "home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        with Store.open(home=root / "home") as store:
            store.put_dataset("judge:train", examples, kind="train")
            train_sft(spec, store, max_steps=30, progress=False)
            yield spec, store


def test_judges_parse_a_real_models_verdicts_through_the_server(verdict_job) -> None:
    from instil.serve import job_app

    spec, store = verdict_job
    served: list = []
    with serve_app(job_app(spec, store, api_key="sk-judge", on_request=served.append)) as url:
        kw = {"base_url": url, "model": "judge@1", "api_key": "sk-judge", "max_retries": 0}
        score = LlmJudge("judge", rubric="Names the right city.", threshold=0.75, **kw).grade(ex("Rome"), "Rome.")
        pair = PairwiseJudge("pref", rubric="The right city wins.", **kw)
        verdict = pair.grade(ex("Rome"), "Milan")
    assert (score.value, score.passed, score.details["judge_score"]) == (0.75, True, 4)
    # The model always names the first answer: asked in both orders, that is a tie, not a win.
    assert (verdict.value, verdict.details["verdicts"]) == (0.5, ["A", "A"])
    assert [r.text for r in served] == [VERDICT] * 3
    assert served[0].messages[0]["content"].startswith("You grade one candidate answer against a rubric")
    assert "<answer_a>\nMilan\n</answer_a>" in served[1].messages[1]["content"]
    assert "<answer_b>\nMilan\n</answer_b>" in served[2].messages[1]["content"]


def test_a_real_judge_without_a_verdict_is_a_grader_error(verdict_job) -> None:
    from instil.serve import job_app

    spec, store = verdict_job
    served: list = []
    # The untrained base model of the same job answers noise.
    app = job_app(spec, store, base=True, api_key="sk-judge", max_new_tokens_cap=16, on_request=served.append)
    with serve_app(app) as url:
        kw = {"base_url": url, "api_key": "sk-judge", "max_retries": 2}
        with pytest.raises(
            GraderError, match=r"grader 'judge', example q1: the judge .* did not answer a JSON verdict"
        ):
            LlmJudge("judge", rubric="r", model="judge:base", **kw).grade(ex(), "Paris")
        with pytest.raises(GraderError, match="did not answer a JSON verdict"):
            PairwiseJudge("pref", rubric="r", model="judge:base", **kw).grade(ex(), "Paris")
        assert len(served) == 2  # an answer is final: the client retries failures, not bad verdicts
        with pytest.raises(GraderError, match="answered HTTP 401: incorrect API key"):
            LlmJudge("judge", rubric="r", model="judge:base", **{**kw, "api_key": "sk-wrong"}).grade(ex(), "Paris")
        with pytest.raises(
            GraderError, match="HTTP 404: the model 'judge@1' is judge@1, which this server does not hold"
        ):
            LlmJudge("judge", rubric="r", model="judge@1", **kw).grade(ex(), "Paris")
    assert len(served) == 2
