"""Candidates: what ``instil eval`` compares. A candidate is a model plus a prompt.

    from instil.eval.candidates import default_candidates, run_candidate
    candidates = default_candidates(spec, store)   # base+full, base+short, <job>@<n>+short, the spec's endpoints
    gens = run_candidate(candidates[0], spec, store, holdout_examples, max_new_tokens=64)
    gens[0].text, gens[0].latency_s, gens[0].input_tokens, gens[0].output_tokens

Prompts are rendered exactly as in training: the example's system messages are replaced by the candidate's prompt
(:meth:`Example.with_system_prompt`, as training swaps in the short prompt), then the model's chat template
renders the rest. ``full`` is the spec's ``system_prompt``, ``short`` its ``short_prompt`` (no system message when the
spec has none, as the tuned model was trained), ``none`` drops the system message.

Local candidates load through :func:`instil.train.models.load_for_inference`, the loader serving and export use. The
base model is the folder the latest model was trained from (:func:`~instil.train.models.job_base`), so a ``tiny`` base
is the very same random model, not one rebuilt; with no model trained yet it is resolved as training would resolve it.
Endpoint candidates go through the ``openai`` client with the same messages, one request at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from instil.data.records import Example
from instil.errors import DependencyError, InstilError
from instil.eval.constrain import output_grammar
from instil.eval.generate import MAX_NEW_TOKENS_CAP, Generation, generate_local, parse_tool_calls
from instil.spec import EvalEndpointSpec, JobSpec
from instil.store import ModelVersion, Store
from instil.train.models import LoadedModel, job_base, load_for_inference

__all__ = [
    "Candidate",
    "default_candidates",
    "default_max_new_tokens",
    "load_candidate",
    "model_candidate",
    "prompted_baselines",
    "prompt_examples",
    "run_candidate",
]

PromptKind = Literal["full", "short", "none"]

MAX_NEW_TOKENS_MARGIN = 16
"""Tokens added to 1.5x the longest reference answer: room for an answer a little longer than any reference."""


@dataclass(frozen=True)
class Candidate:
    """One model plus one prompt, evaluated on the holdout."""

    name: str
    """How reports and the store name it: ``base+full``, ``base+short``, ``<job>@<n>+short``, or an endpoint's name."""
    kind: Literal["local", "endpoint"]
    """``local`` runs here with transformers; ``endpoint`` is an OpenAI-compatible server."""
    prompt: PromptKind
    """The system prompt it runs with: the spec's ``system_prompt`` (full), ``short_prompt`` (short), or none."""
    model: str
    """What runs: ``base``, ``model:<job>@<n>`` (a trained model of the store), or ``endpoint:<model name>``."""
    model_version: ModelVersion | None = None
    """The trained model, for a tuned candidate."""
    endpoint: EvalEndpointSpec | None = None
    """The endpoint, for an endpoint candidate."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "prompt": self.prompt, "model": self.model}
        if self.model_version is not None:
            d["model_id"] = self.model_version.id
        if self.endpoint is not None:
            d["base_url"] = self.endpoint.base_url
        return d


def default_candidates(spec: JobSpec, store: Store) -> list[Candidate]:
    """The base model with the full prompt and with the short one, the latest trained model with the short prompt
    (when one exists), and every endpoint of ``eval.endpoints``."""
    short: PromptKind = "short" if spec.short_prompt is not None else "none"
    out = [
        Candidate("base+full", "local", "full", "base"),
        Candidate(f"base+{short}", "local", short, "base"),
    ]
    models = store.list_models(spec.name)
    if models:
        latest = models[-1]
        out.append(model_candidate(spec, latest))
    for e in spec.eval.endpoints:
        out.append(Candidate(e.name, "endpoint", e.prompt, f"endpoint:{e.model}", endpoint=e))
    names = [c.name for c in out]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise InstilError(
            f"{spec.file or 'the spec'}: eval.endpoints: candidate name(s) {clash} are taken by a built-in candidate",
            hint="rename the endpoint (eval.endpoints[].name)",
        )
    return out


def model_candidate(spec: JobSpec, model: ModelVersion) -> Candidate:
    """A trained model version of the job with the prompt it was trained with (the short prompt, or none)."""
    short: PromptKind = "short" if spec.short_prompt is not None else "none"
    return Candidate(f"{model.ref}+{short}", "local", short, f"model:{model.ref}", model_version=model)


def prompted_baselines(spec: JobSpec) -> list[Candidate]:
    """What a first model must beat: the spec's endpoints that run with the full prompt (the production model, a
    teacher) where any are configured, otherwise the base model with the full prompt."""
    endpoints = [
        Candidate(e.name, "endpoint", e.prompt, f"endpoint:{e.model}", endpoint=e)
        for e in spec.eval.endpoints
        if e.prompt == "full"
    ]
    return endpoints or [Candidate("base+full", "local", "full", "base")]


def prompt_examples(candidate: Candidate, spec: JobSpec, examples: Sequence[Example]) -> list[Example]:
    """The examples as the candidate sees them: system messages replaced by its prompt, exactly as training does."""
    prompt = {"full": spec.system_prompt, "short": spec.short_prompt, "none": None}[candidate.prompt]
    return [e.with_system_prompt(prompt) for e in examples]


def default_max_new_tokens(examples: Sequence[Example], count: Callable[[str], int]) -> int:
    """1.5x the longest reference answer (in tokens as ``count`` counts them) plus a margin, capped."""
    longest = max((count(e.output_text()) for e in examples), default=0)
    return max(1, min(MAX_NEW_TOKENS_CAP, int(longest * 1.5) + MAX_NEW_TOKENS_MARGIN))


def run_candidate(
    candidate: Candidate,
    spec: JobSpec,
    store: Store,
    examples: Sequence[Example],
    *,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
) -> list[Generation]:
    """The candidate's answers to ``examples`` (in order), with latency and token counts per request.

    ``max_new_tokens`` defaults to ``eval.max_new_tokens``, else :func:`default_max_new_tokens` with the candidate's
    tokenizer; ``batch_size`` to ``eval.batch_size``.
    """
    shown = prompt_examples(candidate, spec, examples)
    max_new_tokens = max_new_tokens or spec.eval.max_new_tokens
    if candidate.kind == "endpoint":
        assert candidate.endpoint is not None
        if max_new_tokens is None:
            # No tokenizer here: 2 characters per token over-counts every common tokenizer, which is the safe side.
            max_new_tokens = default_max_new_tokens(examples, lambda text: len(text) // 2 + 1)
        return _run_endpoint(candidate.endpoint, spec, shown, max_new_tokens)
    loaded = load_candidate(candidate, spec, store)
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(
            examples, lambda text: len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
        )
    return generate_local(
        loaded.model,
        loaded.tokenizer,
        loaded.renderer,
        shown,
        system_prompt=None,
        tools=spec.output.tool_dicts(),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size or spec.eval.batch_size,
        grammar=output_grammar(spec.output) if spec.eval.constrained else None,
    )


# ---- local models ---------------------------------------------------------------------------------------------------
def load_candidate(candidate: Candidate, spec: JobSpec, store: Store) -> LoadedModel:
    """The loaded model of a local candidate: the job's base (:func:`~instil.train.models.job_base`), or the trained
    version, through the one inference loader serving and export use too."""
    if candidate.model_version is None:
        return load_for_inference(spec.model.model_copy(update={"base": str(job_base(spec, store))}), root=spec.root)
    return load_for_inference(
        candidate.model_version,
        root=spec.root,
        trust_remote_code=spec.model.trust_remote_code,
        allow_dropped_messages=spec.model.allow_dropped_messages,
    )


# ---- endpoints -------------------------------------------------------------------------------------------------------
def _run_endpoint(
    endpoint: EvalEndpointSpec, spec: JobSpec, examples: Sequence[Example], max_new_tokens: int
) -> list[Generation]:
    try:
        import openai
    except ImportError:
        raise DependencyError("endpoint candidates need the openai package", hint="pip install openai") from None
    key = None
    if endpoint.api_key_env is not None:
        key = os.environ.get(endpoint.api_key_env)
        if not key:
            raise InstilError(
                f"eval.endpoints '{endpoint.name}': the environment variable {endpoint.api_key_env} is not set",
                hint=f"export {endpoint.api_key_env}=<the endpoint's API key>",
            )
    # Local OpenAI-compatible servers need no key, but the client refuses to start without one.
    client = openai.OpenAI(base_url=endpoint.base_url, api_key=key or "no-key", max_retries=3, timeout=120.0)
    tools = spec.output.tool_dicts()
    out: list[Generation] = []
    for e in examples:
        request: dict[str, Any] = {
            "model": endpoint.model,
            "messages": [m.to_dict() for m in e.prompt_messages()],
            "max_tokens": max_new_tokens,
            "temperature": 0,
        }
        if tools or e.tools:
            request["tools"] = tools or e.tools
        began = time.perf_counter()
        try:
            response = client.chat.completions.create(**request)
        except openai.APIError as err:
            raise InstilError(
                f"eval.endpoints '{endpoint.name}' ({endpoint.base_url}), example {e.key()}: the request failed "
                f"after retries: {err}",
                hint="check that the endpoint is up and the model name is right, or leave it out with --candidate",
            ) from None
        latency = time.perf_counter() - began
        choice = response.choices[0]
        text = (choice.message.content or "").strip()
        calls = [c.model_dump() for c in choice.message.tool_calls] if choice.message.tool_calls else None
        usage = response.usage
        out.append(
            Generation(
                text=text,
                input_tokens=int(usage.prompt_tokens) if usage else 0,
                output_tokens=int(usage.completion_tokens) if usage else 0,
                latency_s=latency,
                first_token_s=latency,  # a non-streamed request: the first token arrives with the last
                finish_reason="length" if choice.finish_reason == "length" else "stop",
                batch_size=1,
                tool_calls=calls if calls is not None else parse_tool_calls(text),
            )
        )
    return out
