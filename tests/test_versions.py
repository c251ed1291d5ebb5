"""Several versions of a job side by side (instil.serve.versions): LoRA adapters loaded once into one base and picked
per request by name, batched together, answering exactly as each version does alone; aliases that follow the registry
on a running server; a version loaded the first time it is asked for; names that are not the job's refused."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import pytest

from colour_jobs import PROMPT
from servers import serve_app

torch = pytest.importorskip("torch")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from instil.data.records import Example, Message  # noqa: E402
from instil.eval.candidates import load_candidate, model_candidate  # noqa: E402
from instil.eval.generate import generate_local  # noqa: E402
from instil.registry import pin  # noqa: E402
from instil.serve import JobCatalog, ServedRequest, job_app  # noqa: E402
from instil.spec import JobSpec  # noqa: E402
from instil.store import Store  # noqa: E402
from test_serve import client, colour_job, item  # noqa: E402

KEY = "sk-test-key"


def _randomise_adapter(folder: Path, seed: int) -> None:
    """Redraw a trained adapter's LoRA B matrices (a 1-step adapter is nearly the base), so each version answers
    visibly differently; the file stays the safetensors instil wrote, under the same names."""
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    weights = load_file(path)
    g = torch.Generator().manual_seed(seed)
    for name, w in weights.items():
        weights[name] = torch.randn(w.shape, generator=g) * 0.5 if "lora_B" in name else w
    save_file(weights, path)


@pytest.fixture(scope="module")
def lora_job(tmp_path_factory) -> tuple[JobSpec, Store]:
    from instil.jobdata import curate_job, split_job
    from instil.train.sft import train_sft

    root = tmp_path_factory.mktemp("versions")
    home = root / "home"
    spec = colour_job(root / "job")
    spec.file.write_text(spec.file.read_text().replace("adapter: full", "adapter: lora"), encoding="utf-8")
    from instil.spec import load_spec

    spec = load_spec(spec.file)
    with Store.open(home=home) as store:
        curate_job(spec, store)
        split_job(spec, store)
        for seed in (1, 2, 3):
            result = train_sft(spec, store, max_steps=1, progress=False)
            _randomise_adapter(Path(store.get_model(spec.name, result.model.version).path), seed)
        yield spec, store


def _messages(i: int) -> list[dict]:
    return [{"role": "user", "content": item(i)}]


def _alone(spec: JobSpec, store: Store, version: int | None, messages: list[dict], n: int) -> str:
    """What evaluation answers for this version loaded on its own (the base with the full prompt for None)."""
    from instil.eval.candidates import Candidate

    if version is None:
        candidate, prompt = Candidate("base+full", "local", "full", "base"), PROMPT
    else:
        candidate, prompt = model_candidate(spec, store.get_model(spec.name, version)), spec.short_prompt
    loaded = load_candidate(candidate, spec, store)
    example = Example([Message("system", prompt), *(Message.from_dict(m) for m in messages), Message("assistant", "x")])
    gen = generate_local(
        loaded.model, loaded.tokenizer, loaded.renderer, [example], system_prompt=None, max_new_tokens=n
    )
    return gen[0].text


def test_versions_share_one_base_batch_together_and_answer_as_alone(lora_job):
    spec, store = lora_job
    catalog = JobCatalog(spec, store, versions=[2, 3], base=True)
    one, two, base = (catalog.lookup(n) for n in ("colors@2", "colors@3", "colors:base"))
    assert one.model is two.model is base.model  # one copy of the base for all three
    assert (one.adapter, two.adapter, base.adapter) == ("default", "v3", "__base__")
    records: list[ServedRequest] = []
    app = job_app(spec, store, catalog=catalog, api_key=KEY, on_request=records.append, max_new_tokens_cap=12)
    names = ["colors@2", "colors@3", "colors:base"]
    with serve_app(app) as url:
        c = client(url, KEY)
        listed = {m.id: m for m in c.models.list().data}
        assert {"colors@2", "colors@3", "colors:base", "colors", "colors@latest"} <= set(listed)
        assert listed["colors"].model_extra["instil"]["alias_of"] == "colors@3"  # no production yet: the latest
        assert listed["colors@2"].model_extra["parent"] == "colors:base"

        def ask(k: int) -> tuple[str, str, str]:
            r = c.chat.completions.create(model=names[k % 3], messages=_messages(k % 4), max_tokens=12)
            return names[k % 3], r.model, r.choices[0].message.content

        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            answers = list(pool.map(ask, range(9)))
    assert all(asked == answered for asked, answered, _ in answers)
    assert max(r.batch_size for r in records) > 1  # requests of different versions were generated together
    assert len({(r.model, r.batch_size) for r in records}) >= 2
    expected = {
        (name, k % 4): _alone(
            spec, store, {"colors@2": 2, "colors@3": 3, "colors:base": None}[name], _messages(k % 4), 12
        )
        for k, name in ((k, names[k % 3]) for k in range(9))
    }
    for k, (name, _, text) in enumerate(answers):
        assert text == expected[(name, k % 4)], (name, k)
    assert len({text for _, _, text in answers[:3]}) == 3  # and the versions do answer differently
    by_model = {r.model: r.version for r in records}
    assert by_model == {"colors@2": 2, "colors@3": 3, "colors:base": None}


def test_aliases_follow_the_registry_and_a_version_loads_when_first_asked_for(lora_job):
    spec, store = lora_job
    catalog = JobCatalog(spec, store, versions=[1], refresh_s=0.2)
    records: list[ServedRequest] = []
    app = job_app(spec, store, catalog=catalog, api_key=KEY, on_request=records.append, max_new_tokens_cap=6)
    with serve_app(app) as url:
        c = client(url, KEY)
        ids = {m.id for m in c.models.list().data}
        assert "colors@1" in ids and "colors@2" not in ids
        # `colors` is the latest (3) before any promotion: not loaded, so loaded now, as an adapter on the base.
        r = c.chat.completions.create(model="colors", messages=_messages(1), max_tokens=6)
        assert r.model == "colors@3" and records[-1].asked_model == "colors"
        assert catalog.lookup("colors@3").model is catalog.lookup("colors@1").model
        assert r.choices[0].message.content == _alone(spec, store, 3, _messages(1), 6)

        # A promotion and a pin reach the running server, no restart.
        current = store.production_model(spec.name)
        store.record_decision(
            spec.name, kind="gate", model=store.get_model(spec.name, 1), promoted=True, production_before=current
        )
        pin(store, spec.name, "stable", 2)
        time.sleep(0.3)
        assert c.chat.completions.create(model="colors", messages=_messages(1), max_tokens=6).model == "colors@1"
        assert c.chat.completions.create(model="colors@stable", messages=_messages(1), max_tokens=6).model == "colors@2"
        assert c.chat.completions.create(model="colors@production", messages=_messages(1), max_tokens=2).model == (
            "colors@1"
        )
        listed = {m.id: m.model_extra["instil"] for m in c.models.list().data}
        assert listed["colors@stable"]["alias_of"] == "colors@2" and listed["colors"]["alias_of"] == "colors@1"

        for bad in ("colors@9", "other@1", "colors@../../etc/passwd", "colors:base", "colors@", "gpt-4o"):
            with pytest.raises(openai.NotFoundError) as e:
                c.chat.completions.create(model=bad, messages=_messages(1), max_tokens=2)
            assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_found", bad


def test_the_adapter_limit_is_said_as_a_404_with_what_to_do(lora_job):
    spec, store = lora_job
    catalog = JobCatalog(spec, store, versions=[1], max_adapters=1)
    app = job_app(spec, store, catalog=catalog, api_key=KEY, max_new_tokens_cap=4)
    with serve_app(app) as url, pytest.raises(openai.NotFoundError) as e:
        client(url, KEY).chat.completions.create(model="colors@2", messages=_messages(1), max_tokens=2)
    assert "holds 1 adapters" in e.value.body["message"] and "--version 2" in e.value.body["message"]


def test_the_default_set_is_production_the_pins_and_the_latest(lora_job):
    spec, store = lora_job
    names = JobCatalog(spec, store).names()
    production = store.production_model(spec.name)
    pins = {p.version for p in store.list_pins(spec.name)}
    latest = store.list_models(spec.name)[-1].version
    wanted = {v for v in (production.version if production else None, *pins, latest) if v is not None}
    assert sorted(names) == sorted(f"colors@{v}" for v in wanted)


# ---- --engine vllm: the command line it builds, and the proxy's aliases in front of it ------------------------------
def test_the_vllm_command_serves_the_lora_versions_on_their_base(lora_job):
    import importlib.util

    from instil.errors import DependencyError
    from instil.serve.vllm import vllm_executable, vllm_plan

    spec, store = lora_job
    plan = vllm_plan(spec, store, versions=[1, 3], port=8123, extra_args=["--gpu-memory-utilization", "0.8"])
    v1, v3 = store.get_model(spec.name, 1), store.get_model(spec.name, 3)
    cmd = plan.command
    assert cmd[:3] == ["vllm", "serve", str(Path(v1.meta["model_info"]["path"]))]
    assert cmd[cmd.index("--port") + 1] == "8123" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--served-model-name") + 1] == "colors:base"
    assert cmd[cmd.index("--tokenizer") + 1] == v1.path  # training's chat template, saved beside the adapter
    rank = json.loads((Path(v1.path) / "adapter_config.json").read_text())["r"]
    assert int(cmd[cmd.index("--max-lora-rank") + 1]) == min(r for r in (8, 16, 32, 64, 128) if r >= rank)
    at = cmd.index("--lora-modules")
    assert cmd[at + 1 : at + 3] == [f"colors@1={v1.path}", f"colors@3={v3.path}"]
    assert "--enable-lora" in cmd and cmd[-2:] == ["--gpu-memory-utilization", "0.8"]
    assert "--trust-remote-code" not in cmd
    assert plan.names == ["colors:base", "colors@1", "colors@3"] and plan.versions == [1, 3]
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(DependencyError, match="needs vLLM"):
            vllm_executable()


def test_cli_serve_engine_vllm_says_what_is_missing(lora_job, capsys, monkeypatch):
    import importlib.util

    from instil.cli import main

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    spec, store = lora_job
    monkeypatch.setenv("INSTIL_HOME", str(store.home))
    assert main(["serve", str(spec.file), "--engine", "vllm"]) == 1
    err = capsys.readouterr().err
    assert "needs vLLM" in err and "pip install vllm" in err and "Traceback" not in err
    assert main(["serve", str(spec.file), "--engine", "vllm", "--base"]) == 1
    assert "takes no --proxy or --base" in capsys.readouterr().err


def test_the_proxy_turns_aliases_into_the_names_an_engine_knows(lora_job):
    """An engine that knows only canonical names (vLLM's LoRA modules; here an instil server playing it) behind the
    proxy: `colors` reaches production, a pin its version, as the store says now; traces name the version."""
    from instil.serve import Catalog, create_catalog_app
    from instil.serve.proxy import create_proxy_app
    from instil.serve.versions import Aliases
    from instil.spec import UpstreamSpec

    spec, store = lora_job
    loaded = JobCatalog(spec, store, versions=[1, 2])
    engine = Catalog(loaded.targets())  # no aliases: colors@1 and colors@2 only
    traces: list = []
    with serve_app(create_catalog_app(engine, max_new_tokens_cap=4)) as inner:
        upstream = UpstreamSpec(name="vllm", base_url=inner)
        proxy = create_proxy_app(
            [upstream], job="colors", on_trace=traces.append, rename=Aliases(store, "colors", 0.0), source="local"
        )
        with serve_app(proxy) as url:
            c = client(url, "unused")
            pin(store, spec.name, "canary", 2)
            production = store.production_model(spec.name)
            if production is None or production.version != 1:
                store.record_decision(
                    spec.name, kind="gate", model=store.get_model(spec.name, 1), promoted=True,
                    production_before=production,
                )  # fmt: skip
                production = store.production_model(spec.name)
            for name, expected in (("colors", production.ref), ("colors@canary", "colors@2"), ("colors@1", "colors@1")):
                r = c.chat.completions.create(model=name, messages=_messages(1), max_tokens=2)
                assert r.model == expected, name
            with pytest.raises(openai.NotFoundError):  # not a name of the job: sent as it is, and refused upstream
                c.chat.completions.create(model="colors@7", messages=_messages(1), max_tokens=2)
    assert [t.version for t in traces[:3]] == [production.version, 2, 1]
    assert {t.source for t in traces} == {"local"}


def test_whole_model_versions_are_served_beside_the_base_and_never_loaded_on_a_whim(tmp_path: Path):
    from instil.jobdata import curate_job, split_job
    from instil.train.sft import train_sft

    spec = colour_job(tmp_path / "job")  # adapter: full
    with Store.open(home=tmp_path / "home") as store:
        curate_job(spec, store)
        split_job(spec, store)
        for _ in range(2):
            train_sft(spec, store, max_steps=1, progress=False)
        catalog = JobCatalog(spec, store, versions=[1], base=True)
        one, base = catalog.lookup("colors@1"), catalog.lookup("colors:base")
        assert one.model is not base.model and one.adapter is None and base.adapter is None
        app = job_app(spec, store, catalog=catalog, api_key=KEY, max_new_tokens_cap=4)
        with serve_app(app) as url:
            c = client(url, KEY)
            for name in ("colors@1", "colors:base"):
                r = c.chat.completions.create(model=name, messages=_messages(2), max_tokens=4)
                assert r.model == name and r.choices[0].message.content == _alone(
                    spec, store, 1 if name == "colors@1" else None, _messages(2), 4
                )
            with pytest.raises(openai.NotFoundError) as e:  # a whole model is loaded at start only
                c.chat.completions.create(model="colors@2", messages=_messages(2), max_tokens=2)
            assert "--version 2" in e.value.body["message"] and "full" in e.value.body["message"]
