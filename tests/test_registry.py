"""The registry and the promotion gate: a tiny model trained for real, gated against the prompted base, production,
rollback, pins, the recorded numbers, endpoints as baselines on loopback, PostgreSQL, and the CLI's exit codes.

One tiny model is trained once for the module (a constant answer it learns in a few steps); each test copies that
instil home into its own, so tests never see each other's decisions.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from colour_jobs import PROMPT, SPEC_HEAD, ticket
from instil import registry
from instil.cli import main
from instil.data.records import Example, Message
from instil.errors import DataError, InstilError, NotFoundError
from instil.eval.results import ExampleResult
from instil.jobdata import curate_job, split_job
from instil.registry import Promotion, decide, promote
from instil.spec import JobSpec, load_spec
from instil.store import ModelVersion, Store


def write_job(root: Path, endpoints: str = "") -> Path:
    """A job whose answer is always ``red``: a tiny model learns it in a few steps, the untrained base never says it."""
    root.mkdir(parents=True, exist_ok=True)

    def rows(start: int, n: int) -> str:
        return "".join(
            json.dumps(
                Example(
                    [Message("system", PROMPT), Message("user", ticket(i)), Message("assistant", "red")],
                    id=f"c{i}",
                ).to_dict()
            )
            + "\n"
            for i in range(start, start + n)
        )

    (root / "train.jsonl").write_text(rows(0, 16), encoding="utf-8")
    (root / "holdout.jsonl").write_text(rows(100, 12), encoding="utf-8")
    spec = root / ("instil.yaml" if not endpoints else "with-endpoints.yaml")
    spec.write_text(
        f"""{SPEC_HEAD}training: {{adapter: full, batch_size: 8, learning_rate: 0.01}}
eval:
  max_new_tokens: 4
{endpoints}""",
        encoding="utf-8",
    )
    return spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(spec file, instil home) of the job with its holdout frozen and version 1 trained: 8 steps, a few seconds."""
    from instil.train.sft import train_sft

    root = tmp_path_factory.mktemp("registry")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INSTIL_HOME", str(home))  # the tiny base is cached under the home
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("INSTIL_DB_URL", raising=False)
        spec = load_spec(write_job(root / "job"))
        with Store.open(home=home) as store:
            curate_job(spec, store)
            split_job(spec, store)
            train_sft(spec, store, max_steps=8, progress=False)
    return root / "job" / "instil.yaml", home


@pytest.fixture
def job(trained: tuple[Path, Path], instil_home: Path) -> JobSpec:
    """The trained job in this test's own home (a copy: the models and the tiny base stay where they were trained)."""
    spec_file, home = trained
    shutil.copytree(home, instil_home)
    return load_spec(spec_file)


@pytest.fixture
def store(instil_home: Path, job: JobSpec) -> Iterator[Store]:
    with Store.open(home=instil_home) as opened:
        yield opened


def _clone(store: Store, model: ModelVersion) -> ModelVersion:
    """A new version with the very same weights: a candidate no better than the model it copies."""
    return store.register_model(
        model.job,
        base_model=model.base_model,
        path=model.path,
        run_id=model.run_id,
        revision=model.revision,
        meta=model.meta,
    )


def _check_numbers(p: Promotion, alpha: float) -> None:
    """The recorded numbers agree with the verdict: every test passes exactly when its Holm p-value is below alpha,
    and the candidate is promoted exactly when every test passes."""
    gate = p.to_dict()["gate"]
    for c in gate["comparisons"]:
        assert c["passed"] == (c["p_adjusted"] < alpha)
        assert c["low"] <= c["estimate"] <= c["high"]
    assert p.decision.promoted == all(c["passed"] for c in gate["comparisons"]) == (not gate["reasons"])
    assert p.promoted == (p.decision.promoted and not p.dry_run)


# ---- the gate, end to end --------------------------------------------------------------------------------------------
def test_a_trained_model_beats_the_prompted_base_then_an_identical_one_is_refused(job: JobSpec, store: Store):
    v1 = store.get_model("colors")
    assert registry.production(store, "colors") is None

    first = promote(job, store)
    assert (first.candidate, first.version, first.reference, first.reference_version) == (
        "colors@1+short",
        1,
        "base+full",
        None,
    )
    assert first.promoted and first.decision.promoted and first.decision_id is not None
    assert (first.holdout, first.primary, first.primary_kind, first.decision.n) == (
        "colors:holdout@1",
        "em",
        "binary",
        12,
    )
    assert first.means["em"] == (0.0, 1.0)  # the base never answers "red"; the tuned model always does
    primary = first.decision.comparisons[0]
    assert (primary.name, primary.test, primary.estimate) == ("em", "mcnemar_exact", 1.0)
    assert primary.p_value == pytest.approx(0.5**12)
    _check_numbers(first, job.gate.alpha)
    assert registry.production(store, "colors") == store.get_model("colors", 1)
    assert store.get_model("colors", 1).status == "production"

    [info] = registry.list_decisions(store, "colors")
    assert (info.kind, info.model_id, info.promoted, info.reference, info.run_id) == (
        "gate",
        v1.id,
        True,
        "base+full",
        first.eval_run_id,
    )
    assert info.dataset_version_id == store.get_dataset("colors:holdout").id
    assert info.numbers["gate"]["comparisons"][0]["p_value"] == primary.p_value
    assert registry.find_decision(job, store, info.id).to_dict() == first.to_dict()
    evals = store.list_evaluations(run_id=first.eval_run_id)
    assert [e.candidate for e in evals] == ["base+full", "colors@1+short"]
    text = first.summary()
    assert text.startswith("colors@1+short vs base+full on colors:holdout@1 (12 examples): PROMOTED")
    assert "mcnemar_exact" in text and "0.000 -> 1.000" in text and "+1.0000" in text and "power" in text

    # A second version with the very same weights: no gain over production, so the gate refuses it.
    _clone(store, v1)
    second = promote(job, store)
    assert (second.version, second.reference, second.reference_version) == (2, "colors@1+short", 1)
    assert not second.promoted and second.decision.comparisons[0].estimate == 0.0
    assert second.decision.reasons[0].startswith("em: no significant gain")
    _check_numbers(second, job.gate.alpha)
    assert [m.status for m in store.list_models("colors")] == ["production", "refused"]
    assert registry.production(store, "colors").id == v1.id
    assert "REFUSED" in second.summary() and "refused because:" in second.summary()
    recorded = store.get_decision(second.decision_id)
    assert recorded.promoted is False and recorded.reference_model_id == v1.id
    assert recorded.numbers["promoted"] is False and recorded.numbers["eval_inputs_sha256"]

    # Gated again as a dry run: both sides' results are reused, nothing is recorded, nothing moves.
    again = promote(job, store, 2, dry_run=True)
    assert again.dry_run and not again.promoted and again.decision_id is None and again.verdict == "would refuse"
    reused = {e.candidate: e.metrics.get("reused_from") for e in store.list_evaluations(run_id=again.eval_run_id)}
    assert reused == {"colors@1+short": first.eval_run_id, "colors@2+short": second.eval_run_id}
    assert len(registry.list_decisions(store, "colors")) == 2 and store.get_model("colors", 2).status == "refused"

    with pytest.raises(InstilError, match="already the production model") as e:
        promote(job, store, 1)
    assert "instil rollback" in e.value.hint
    with pytest.raises(InstilError, match="against itself"):
        promote(job, store, 2, reference="colors@2")

    rows = {v.model.version: v for v in registry.list_versions(store, "colors")}
    assert rows[1].model.status == "production" and rows[1].train_dataset == "colors:train@1"
    assert rows[1].primary_score == 1.0 and rows[1].scored_on == "colors:holdout@1"
    assert rows[1].last_decision_text.startswith("promoted over base+full")
    assert rows[2].last_decision_text.startswith("refused vs colors@1+short")


def test_refusals_say_what_to_do_next(tmp_path: Path, instil_home: Path):
    spec = load_spec(write_job(tmp_path / "job"))
    with Store.open(home=instil_home) as store:
        with pytest.raises(DataError, match="no frozen holdout") as e:
            promote(spec, store)
        assert "instil data split" in e.value.hint
        curate_job(spec, store)
        split_job(spec, store)
        with pytest.raises(NotFoundError, match="no model trained yet") as e:
            promote(spec, store)
        assert "instil train" in e.value.hint
        with pytest.raises(NotFoundError, match="no model version 4"):
            promote(spec, store, 4)


# ---- endpoints as the prompted baseline ------------------------------------------------------------------------------
def _answer(body: dict, request: object) -> str:
    return "red" if body["model"] == "oracle" else "blue"  # the oracle is perfect on this job; the dud never


@pytest.fixture
def endpoints(fake_openai) -> tuple[str, list[dict]]:
    return fake_openai(_answer)


def test_the_strongest_prompted_endpoint_is_the_reference(job: JobSpec, store: Store, endpoints, tmp_path: Path):
    url, log = endpoints
    listed = "".join(f"    - {{name: {n}, base_url: '{url}', model: {n}}}\n" for n in ("dud", "oracle"))
    spec = load_spec(write_job(job.root, endpoints=f"  endpoints:\n{listed}"))

    # The model is as good as the best prompted endpoint, not better: refused.
    p = promote(spec, store)
    assert (p.reference, p.reference_version, p.baselines) == ("oracle", None, {"dud": 0.0, "oracle": 1.0})
    assert not p.promoted and p.means["em"] == (1.0, 1.0)
    _check_numbers(p, spec.gate.alpha)
    assert "reference chosen as the strongest of: dud 0.000, oracle 1.000" in p.summary()
    assert store.get_model("colors", 1).status == "refused" and registry.production(store, "colors") is None
    assert {r["messages"][0]["content"] for r in log} == {PROMPT}  # the endpoints ran with the full prompt

    # An explicit reference overrides the choice; a refused version can be gated again.
    with pytest.raises(InstilError, match="names no candidate") as e:
        promote(spec, store, reference="gpt-9")
    assert "base+full" in e.value.hint and "oracle" in e.value.hint
    p = promote(spec, store, reference="dud")
    assert p.reference == "dud" and p.promoted and store.get_model("colors", 1).status == "production"
    _check_numbers(p, spec.gate.alpha)


# ---- the gate on constructed results ---------------------------------------------------------------------------------
def _rows(candidate: str, em: list[float], short: list[float], ids: list[str] | None = None) -> list[ExampleResult]:
    ids = ids or [f"e{i}" for i in range(len(em))]
    return [
        ExampleResult(
            example_id=i,
            candidate=candidate,
            output="",
            scores={"em": a, "short": b},
            passed={"em": a >= 0.5, "short": b >= 0.5},
            reasons={},
            tags=[],
            latency_s=0.0,
            input_tokens=0,
            output_tokens=0,
            cost=0.0,
            finish_reason="stop",
        )
        for i, a, b in zip(ids, em, short, strict=True)
    ]


def test_decide_pairs_by_example_and_picks_the_test_from_the_scores(tmp_path: Path):
    spec = load_spec(write_job(tmp_path / "job"))
    a = _rows("A", [0.0] * 30, [1.0] * 30)
    b = _rows("B", [1.0] * 30, [1.0] * 30)
    decision, kind, means = decide(spec, a, list(reversed(b)))  # paired by id, not by position
    assert kind == "binary" and decision.promoted and means == {"em": (0.0, 1.0), "short": (1.0, 1.0)}
    assert [c.name for c in decision.comparisons] == ["em", "short"]

    # A regression on the other grader beyond the margin refuses, whatever the primary gain.
    decision, kind, _ = decide(spec, a, _rows("B", [1.0] * 30, [0.5] * 30))
    assert not decision.promoted and decision.reasons[0].startswith("short: possible regression")

    decision, kind, _ = decide(spec, _rows("A", [0.2] * 30, [1.0] * 30), _rows("B", [0.6] * 30, [1.0] * 30))
    assert kind == "continuous" and decision.comparisons[0].test == "paired_bootstrap" and decision.promoted

    with pytest.raises(DataError, match="not scored on the same holdout examples"):
        decide(spec, a, _rows("B", [1.0] * 30, [1.0] * 30, ids=[f"x{i}" for i in range(30)]))
    with pytest.raises(DataError, match="two results for holdout example e0"):
        decide(spec, a, _rows("B", [1.0] * 2, [1.0] * 2, ids=["e0", "e0"]))


# ---- production, rollback, pins (on SQLite and PostgreSQL) -----------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_rollback_walks_back_the_production_history_and_pins_resolve(
    backend: str, request: pytest.FixtureRequest, instil_home: Path
):
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    with Store.open(url, home=instil_home) as s:
        v1, v2, v3 = (s.register_model("colors", base_model="tiny", path=f"/m/{i}") for i in (1, 2, 3))

        def promoted(m: ModelVersion) -> None:  # what promote() records when the gate passes
            s.record_decision(
                "colors",
                kind="gate",
                model=m,
                promoted=True,
                production_before=s.production_model("colors"),
                reference="base+full",
            )

        with pytest.raises(InstilError, match="no production model") as e:
            registry.rollback(s, "colors")
        assert "instil promote" in e.value.hint
        promoted(v1)
        with pytest.raises(InstilError, match="first production version"):
            registry.rollback(s, "colors")
        promoted(v2)
        promoted(v3)
        assert [m.version for m in registry.production_history(s, "colors")] == [1, 2, 3]

        assert registry.rollback(s, "colors").version == 2
        assert [m.status for m in s.list_models("colors")] == ["retired", "production", "rolled_back"]
        assert registry.rollback(s, "colors").version == 1
        with pytest.raises(InstilError, match="first production version"):
            registry.rollback(s, "colors")
        promoted(v3)  # v3 gated again, over v1
        with pytest.raises(InstilError, match="not an earlier production version") as e:
            registry.rollback(s, "colors", to=2)  # rolled back from earlier: it must pass the gate again
        assert "instil promote --version 2" in e.value.hint
        assert registry.rollback(s, "colors", to=1).version == 1
        kinds = [(d.kind, d.version, d.reference_version) for d in registry.list_decisions(s, "colors")]
        assert kinds[-1] == ("rollback", 1, 3) and len(kinds) == 7

        assert registry.resolve(s, "colors", "production").version == 1
        assert registry.resolve(s, "colors", "latest").version == 3
        assert (
            registry.resolve(s, "colors", "2") == registry.resolve(s, "colors", "colors@2") == s.get_model("colors", 2)
        )
        registry.pin(s, "colors", "stable", "production")
        registry.pin(s, "colors", "canary", 3)
        assert (
            registry.resolve(s, "colors", "stable").version == 1
            and registry.resolve(s, "colors", "colors@canary").version == 3
        )
        assert registry.pin(s, "colors", "stable", "canary").ref == "colors@3"  # moved
        assert registry.unpin(s, "colors", "canary").ref == "colors@3"
        with pytest.raises(NotFoundError, match="names no model version") as e:
            registry.resolve(s, "colors", "canary")
        assert "stable" in e.value.hint
        with pytest.raises(NotFoundError, match="job 'other'"):
            registry.resolve(s, "colors", "other@1")
        with pytest.raises(InstilError, match="cannot be a pin name"):
            registry.pin(s, "colors", "production", 2)
        rows = {v.model.version: v for v in registry.list_versions(s, "colors")}
        assert rows[3].pins == ("stable",) and rows[1].pins == ()
        assert rows[1].last_decision_text.startswith("back in production: rollback from colors@3")
        assert rows[3].last_decision_text.startswith("rolled back to colors@1")
        assert rows[2].primary_score is None and rows[2].train_dataset is None


# ---- the CLI ---------------------------------------------------------------------------------------------------------
def test_cli_promote_models_pin_rollback(job: JobSpec, store: Store, capsys, monkeypatch: pytest.MonkeyPatch):
    spec = str(job.file)
    assert main(["promote", spec, "--dry-run", "--json"]) == 0  # would promote
    data = json.loads(capsys.readouterr().out)
    assert data["dry_run"] and not data["promoted"] and data["gate"]["promoted"] and data["decision_id"] is None
    assert data["means"]["em"] == {"reference": 0.0, "candidate": 1.0}

    assert main(["promote", spec]) == 0
    out = capsys.readouterr().out
    assert "PROMOTED" in out and "mcnemar_exact" in out and "p Holm" in out
    assert main(["promote", spec]) == 2
    err = capsys.readouterr().err
    assert "already the production model" in err and "Traceback" not in err

    _clone(store, store.get_model("colors", 1))
    assert main(["promote", spec]) == 1  # refused
    captured = capsys.readouterr()
    assert "REFUSED" in captured.out and "no significant gain" in captured.out
    assert main(["promote", spec, "--reference", "nope"]) == 2

    monkeypatch.chdir(job.root)  # SPEC defaults to ./instil.yaml
    assert main(["pin", "stable", "1"]) == 0 and "stable" in capsys.readouterr().out
    assert main(["pin", spec, "canary", "colors@2"]) == 0
    assert main(["pin", "canary", "--remove"]) == 0 and "was colors@2" in capsys.readouterr().out
    assert main(["pin", "lonely"]) == 2  # no version
    assert main(["models", "--json", "--decisions"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["status"], v["pins"]) for v in data["versions"]] == [
        (1, "production", ["stable"]),
        (2, "refused", []),
    ]
    assert [d["promoted"] for d in data["decisions"]] == [True, False]
    assert main(["models", "--decisions"]) == 0
    out = capsys.readouterr().out
    assert "production" in out and "refused" in out and "decisions" in out
    assert main(["rollback"]) == 1
    assert "first production version" in capsys.readouterr().err
