"""The job spec (``instil.yaml``): one file that defines a job; every stage of the loop reads it.

    spec = instil.load_spec("instil.yaml")      # raises SpecError listing every problem, with file:line and path

Every field has a docstring (shown by ``instil spec schema``); unknown keys are rejected; relative paths are resolved
against the spec file's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from instil.errors import InstilError, ModelError, Problem, SpecError

__all__ = [
    "DataSource",
    "EvalEndpointSpec",
    "EvalSpec",
    "GateSpec",
    "GraderSpec",
    "JobSpec",
    "LoraSpec",
    "ModelSpec",
    "MonitorSpec",
    "OutputSpec",
    "RolloutSpec",
    "ServeSpec",
    "SplitSpec",
    "TrainingSpec",
    "UpstreamSpec",
    "describe_fields",
    "load_spec",
    "parse_spec",
    "write_starter_spec",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)


def _check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as e:
        raise ValueError(f"not a valid JSON Schema: {e.message}") from None
    return schema


# ---- the output contract ---------------------------------------------------------------------------------------------
class ToolSpec(_Strict):
    """One tool the model may call, in OpenAI's ``tools`` shape."""

    type: Literal["function"] = "function"
    """Only function tools exist today."""
    function: dict[str, Any]
    """``{"name": ..., "description": ..., "parameters": <JSON Schema>}``."""

    @field_validator("function")
    @classmethod
    def _function(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(v.get("name"), str) or not v["name"]:
            raise ValueError("a tool function needs a non-empty 'name'")
        if "parameters" in v:
            _check_json_schema(v["parameters"])
        return v


class OutputSpec(_Strict):
    """What the model must answer: the contract every output is checked against."""

    type: Literal["text", "json", "label", "tool_calls"] = "text"
    """``text`` (free text), ``json`` (an object that fits ``schema``), ``label`` (one of ``labels``), or
    ``tool_calls`` (calls to ``tools``)."""
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    """The JSON Schema of a ``json`` output (written as ``schema:`` in YAML)."""
    labels: list[str] | None = None
    """The allowed labels: the whole output for ``label``, or the value at ``label_field`` for ``json``."""
    label_field: str | None = None
    """For ``json`` outputs: the dotted path of the field that holds the label (such as ``category``)."""
    tools: list[ToolSpec] | None = None
    """The tools the model may call (for ``tool_calls`` outputs, or any job that offers tools)."""

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else _check_json_schema(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("give at least one label")
            dupes = sorted({x for x in v if v.count(x) > 1})
            if dupes:
                raise ValueError(f"duplicate labels: {dupes}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> OutputSpec:
        if self.type == "json" and self.json_schema is None:
            raise ValueError("type 'json' needs a 'schema' (a JSON Schema of the output)")
        if self.type == "label" and not self.labels:
            raise ValueError("type 'label' needs 'labels'")
        if self.type == "tool_calls" and not self.tools:
            raise ValueError("type 'tool_calls' needs 'tools'")
        if self.label_field is not None and self.type != "json":
            raise ValueError("'label_field' only applies to type 'json'")
        if self.label_field is not None and not self.labels:
            raise ValueError("'label_field' needs 'labels'")
        return self

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """The job's tools as OpenAI ``tools`` dicts, offered to every model alike (evaluation, serving); None when
        the job has none, so each example keeps its own."""
        return [t.model_dump() for t in self.tools] if self.tools else None


# ---- graders: the spec names them; the grader library (instil.eval) implements them ----------------------------------
class _GraderBase(_Strict):
    name: str
    """A unique name, used in reports and by ``gate.primary``."""
    threshold: float = 1.0
    """The pass rule: an output passes when its score is at least this (scores run from 0 to 1)."""
    primary: bool = False
    """The grader that decides promotion. Exactly one grader is primary (or ``gate.primary`` names one)."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '_', '-' and '.' only")
        return v

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be between 0 and 1")
        return v


class ExactMatchGrader(_GraderBase):
    """The output equals the reference."""

    type: Literal["exact_match"]
    normalize: list[Literal["strip", "lower", "whitespace", "punctuation", "json"]] = ["strip"]
    """Normalisations applied to both sides first; ``json`` compares parsed JSON values."""


class ContainsGrader(_GraderBase):
    """The output contains (or, for ``not_contains``, does not contain) every given string."""

    type: Literal["contains", "not_contains"]
    values: list[str]
    """The strings to look for."""
    case_sensitive: bool = False
    """Match case exactly."""


class RegexGrader(_GraderBase):
    """The output matches a regular expression."""

    type: Literal["regex"]
    pattern: str
    """A Python regular expression."""
    full_match: bool = False
    """Require the whole output to match, not just a part of it."""

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
        return v


class JsonValidGrader(_GraderBase):
    """The output parses as JSON."""

    type: Literal["json_valid"]


class JsonSchemaGrader(_GraderBase):
    """The output is JSON that fits a JSON Schema."""

    type: Literal["json_schema"]
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    """The schema (written as ``schema:``); defaults to ``output.schema``."""

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else _check_json_schema(v)


class FieldF1Grader(_GraderBase):
    """Field-level precision, recall and F1 of the output JSON against the reference JSON."""

    type: Literal["field_f1"]
    fields: list[str] | None = None
    """Dotted paths of the fields to compare (``a.b``, ``items[]``); all leaf fields when absent."""
    metric: Literal["f1", "precision", "recall"] = "f1"
    """Which of the three is the score."""


class LabelAccuracyGrader(_GraderBase):
    """The predicted label equals the reference label (reported with macro-F1 and a confusion matrix)."""

    type: Literal["label_accuracy"]
    field: str | None = None
    """Dotted path of the label inside a JSON output; defaults to ``output.label_field``."""


class NumericGrader(_GraderBase):
    """A number in the output is within a tolerance of the reference."""

    type: Literal["numeric"]
    field: str | None = None
    """Dotted path of the number inside a JSON output; the whole output when absent."""
    tolerance: float = 0.0
    """Allowed absolute difference (or relative, with ``relative``)."""
    relative: bool = False
    """Read ``tolerance`` as a fraction of the reference."""


class LengthGrader(_GraderBase):
    """The output's length is within bounds."""

    type: Literal["length"]
    min_chars: int | None = None
    """Fewest characters allowed."""
    max_chars: int | None = None
    """Most characters allowed."""
    min_words: int | None = None
    """Fewest words allowed."""
    max_words: int | None = None
    """Most words allowed."""


class ToolCallMatchGrader(_GraderBase):
    """The output's tool calls match the reference's (names, and arguments unless told otherwise)."""

    type: Literal["tool_call_match"]
    check_arguments: bool = True
    """Compare the arguments (as parsed JSON), not only the tool names."""
    order_matters: bool = False
    """Require the calls in the reference's order."""


class EndpointSpec(_Strict):
    """An OpenAI-compatible endpoint."""

    base_url: str
    """Such as ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``."""
    model: str
    """The model name sent in requests."""
    api_key_env: str | None = None
    """The environment variable holding the API key (never the key itself)."""


class EmbeddingSimilarityGrader(_GraderBase):
    """Cosine similarity of sentence embeddings of the output and the reference (optional extra)."""

    type: Literal["embedding_similarity"]
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    """A sentence-embedding model id or local path."""


class LlmJudgeGrader(_GraderBase):
    """An LLM scores the output against a rubric, through an OpenAI-compatible endpoint."""

    type: Literal["llm_judge"]
    rubric: str
    """What a good answer does; the judge sees the input, the reference and the output."""
    endpoint: EndpointSpec
    """Where the judge runs."""
    scale: int = 5
    """Scores run from 1 to ``scale`` and are mapped to 0..1."""


class PairwiseJudgeGrader(_GraderBase):
    """An LLM says which of two outputs is better (win rate against a reference candidate)."""

    type: Literal["pairwise_judge"]
    rubric: str
    """What makes one answer better than another."""
    endpoint: EndpointSpec
    """Where the judge runs."""


class PythonGrader(_GraderBase):
    """A user function ``grade(example, output) -> float | bool``."""

    type: Literal["python"]
    function: str
    """``module:function`` or ``path/to/file.py:function``."""

    @field_validator("function")
    @classmethod
    def _function(cls, v: str) -> str:
        if ":" not in v:
            raise ValueError("write it as 'module:function' or 'file.py:function'")
        return v


GraderSpec = Annotated[
    ExactMatchGrader
    | ContainsGrader
    | RegexGrader
    | JsonValidGrader
    | JsonSchemaGrader
    | FieldF1Grader
    | LabelAccuracyGrader
    | NumericGrader
    | LengthGrader
    | ToolCallMatchGrader
    | EmbeddingSimilarityGrader
    | LlmJudgeGrader
    | PairwiseJudgeGrader
    | PythonGrader,
    Field(discriminator="type"),
]
"""One grader: its ``type`` picks which fields it takes."""


# ---- data, split, model, training, gate ------------------------------------------------------------------------------
DataFormat = Literal["auto", "chat", "preference", "prompt_completion", "alpaca", "sharegpt", "csv", "hf_disk"]


class DataSource(_Strict):
    """A file (or a Hugging Face dataset saved to disk) of examples."""

    path: str
    """The file or folder, relative to the spec file."""
    format: DataFormat = "auto"
    """The file's format; ``auto`` guesses from the extension and the first record."""
    role: Literal["train", "holdout", "pool"] = "train"
    """``train`` data is split into train/holdout; a ``holdout`` source is used as the holdout as is; a ``pool``
    stands for production traffic that the loop scores and learns from."""
    columns: dict[str, str] | None = None
    """For CSV (and prompt/completion files with other names): maps ``prompt``, ``completion``, ``system``, ``id``,
    ``group``, ``tags`` to the file's column names."""
    tags: list[str] = []
    """Tags added to every example of this source."""


class SplitSpec(_Strict):
    """How the data is split into train and a frozen holdout."""

    holdout_fraction: float = 0.2
    """The share of examples (or groups) held out."""
    holdout_size: int | None = None
    """An exact holdout size; overrides ``holdout_fraction``."""
    seed: int = 0
    """The split's seed: the same data and seed give the same split."""
    stratify: bool = True
    """Keep label proportions equal on both sides when the job has labels."""
    group_by: str | None = None
    """A metadata key whose equal values must stay on one side (such as a customer id)."""
    near_duplicate_threshold: float = 0.8
    """Estimated Jaccard similarity (character 5-grams of the normalised text) at or above which two examples count
    as near-duplicates: they stay on one side of the split and are refused in training when one of them is in the
    holdout."""

    @field_validator("holdout_fraction", "near_duplicate_threshold")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError("must be between 0 and 1 (exclusive)")
        return v


class ModelSpec(_Strict):
    """The base model to fine-tune."""

    base: str = "tiny"
    """A Hugging Face model id, a local folder, or ``tiny`` (a small random-initialised model built locally)."""
    revision: str | None = None
    """The hub revision (commit, tag or branch) to pin; recorded with every run."""
    trust_remote_code: bool = False
    """Run code shipped with the model. Off unless you trust its source."""
    chat_template: str | None = None
    """A chat template (Jinja text, or a path to a ``.jinja`` file) for tokenizers without one, or to override it."""
    max_length: int | None = None
    """Longest example in tokens; defaults to the longest in the data, capped at the model's context."""
    allow_dropped_messages: bool = False
    """Accept a chat template that silently drops messages (some drop the system prompt)."""

    @property
    def is_tiny(self) -> bool:
        """Whether ``base`` names the built-in tiny preset (a random model built from the job's data)."""
        return is_tiny_base(self.base)

    def locate(self, root: Path | None) -> Path | str:
        """Where a base that is not ``tiny`` lives: a local folder (resolved against ``root``, the spec's folder;
        it must exist and hold ``config.json``) or, for a name shaped like ``org/name`` with no such folder, the
        hub id unchanged. Raises :class:`ModelError` for a path that is missing, a file, or no model folder."""
        expanded = Path(self.base).expanduser()
        local = expanded if expanded.is_absolute() or root is None else Path(root) / expanded
        if local.exists():
            local = local.resolve()
        elif not _path_shaped(self.base):
            return self.base
        if not local.exists():
            raise ModelError(
                f"model folder not found: {local} (model.base is {self.base!r})",
                hint="check the path (relative paths are read from the spec's folder), or use a hub id like 'org/name'",
            )
        if not local.is_dir():
            raise ModelError(
                f"model.base {self.base!r} points to a file, {local}; it must be a folder holding config.json and "
                "the weights",
                hint="point model.base at the folder that `save_pretrained` wrote",
            )
        if not (local / "config.json").is_file():
            raise ModelError(
                f"{local} has no config.json, so it is not a Hugging Face model folder (model.base is {self.base!r})",
                hint="point model.base at the folder that `save_pretrained` or `hf download` wrote",
            )
        return local


TINY_BASES = {"tiny": "llama", "tiny-llama": "llama", "tiny-qwen2": "qwen2"}
"""Values of ``model.base`` that build a tiny random model, and the architecture each builds."""


def is_tiny_base(base: str) -> bool:
    """Whether ``model.base`` names the built-in tiny preset."""
    return base in TINY_BASES


def _path_shaped(base: str) -> bool:
    # A hub id is `name` or `org/name`; anything else shaped like a path is a folder the user expected to exist.
    return base.startswith((".", "/", "~")) or "\\" in base or base.count("/") > 1 or base.endswith("/")


class LoraSpec(_Strict):
    """LoRA adapter settings (also used by QLoRA)."""

    r: int = 16
    """The adapter's rank."""
    alpha: int = 32
    """The scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter's input."""
    target_modules: str | list[str] = "all-linear"
    """Modules to adapt: ``all-linear`` or a list of module names."""


class TrainingSpec(_Strict):
    """How the model is trained."""

    method: Literal["sft", "dpo", "grpo"] = "sft"
    """``sft`` (supervised), ``dpo`` (preference pairs), or ``grpo`` (reward from the graders)."""
    adapter: Literal["lora", "qlora", "full", "prompt_tuning"] = "lora"
    """What is trained: a LoRA adapter, a LoRA adapter on a 4-bit base, every weight, or soft prompt tokens."""
    epochs: float | None = None
    """Passes over the training data; chosen from the data size when absent."""
    learning_rate: float | None = None
    """Peak learning rate; chosen by method and adapter when absent."""
    batch_size: int = 8
    """Examples per forward-backward step in all, the global batch: on N processes each takes ``batch_size / N``
    (N must divide it), so the learning rate keeps its meaning. A ``trl: {gradient_accumulation_steps: K}`` makes an
    optimizer step K such batches."""
    seed: int = 0
    """The training seed."""
    lora: LoraSpec = LoraSpec()
    """LoRA settings, for ``lora`` and ``qlora``."""
    num_virtual_tokens: int = 20
    """Soft prompt length, for ``prompt_tuning``."""
    report_to: str | list[str] = "none"
    """Experiment trackers to log to: ``none``, ``auto`` (whichever of tensorboard, mlflow, wandb is installed), or
    names; a named tracker that is not installed is an error."""
    trl: dict[str, Any] = {}
    """Further fields passed as is to TRL's config for the method (``SFTConfig``, ``DPOConfig``, ``GRPOConfig``,
    which include ``transformers.TrainingArguments``); checked against those classes' real fields."""

    @field_validator("trl")
    @classmethod
    def _trl_fields(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method")
        if v and method is not None:
            known = _trl_config_fields(method)
            unknown = sorted(set(v) - known)
            if unknown:
                raise ValueError(f"unknown field(s) {unknown} for method '{method}'" + _suggest(unknown[0], known))
            managed = sorted(set(v) & _MANAGED_TRL_FIELDS)
            if managed:
                raise ValueError(
                    f"{managed} are set by instil; use the spec's own field "
                    "(training.epochs, learning_rate, batch_size, seed) or drop them"
                )
        return v


_MANAGED_TRL_FIELDS = {
    "output_dir",
    "num_train_epochs",
    "learning_rate",
    "per_device_train_batch_size",
    "seed",
}


@cache
def _trl_config_fields(method: str) -> frozenset[str]:
    # Imported lazily: trl pulls torch and transformers, which a spec without a `trl:` section never needs.
    import trl

    cls = {"sft": trl.SFTConfig, "dpo": trl.DPOConfig, "grpo": trl.GRPOConfig}[method]
    return frozenset(f.name for f in dataclasses.fields(cls) if f.init)


def _suggest(name: str, known: set[str] | frozenset[str]) -> str:

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class GateSpec(_Strict):
    """When a new model may replace the current one."""

    primary: str | None = None
    """The grader that must improve; defaults to the grader marked ``primary: true``."""
    alpha: float = 0.05
    """Significance level of the one-sided paired test on the primary grader."""
    non_inferiority_margin: float = 0.02
    """Every other grader may drop by at most this much (lower bound of the paired confidence interval)."""
    min_effect: float = 0.05
    """The smallest improvement worth detecting; a power check warns when the holdout is too small for it."""

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        if not 0.0 < v < 0.5:
            raise ValueError("must be between 0 and 0.5")
        return v


class EvalEndpointSpec(_Strict):
    """An OpenAI-compatible endpoint evaluated as a candidate beside the local models."""

    name: str
    """The candidate's name in reports (letters, digits, '_', '-', '.', '@' and ':')."""
    base_url: str
    """Such as ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``."""
    model: str
    """The model name sent in requests."""
    api_key_env: str | None = None
    """The environment variable holding the API key (never the key itself)."""
    prompt: Literal["full", "short", "none"] = "full"
    """The system prompt it runs with: ``system_prompt``, ``short_prompt``, or none."""
    input_price_per_million: float = 0.0
    """Price of one million input (prompt) tokens, in the currency of the report."""
    output_price_per_million: float = 0.0
    """Price of one million output (completion) tokens."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.@:-]*", v):
            raise ValueError("use letters, digits, '_', '-', '.', '@' and ':' only")
        return v

    @field_validator("input_price_per_million", "output_price_per_million")
    @classmethod
    def _price(cls, v: float) -> float:
        if v < 0:
            raise ValueError("a price cannot be negative")
        return v


class EvalSpec(_Strict):
    """How ``instil eval`` runs the candidates on the frozen holdout, and what they cost."""

    machine_price_per_hour: float = 0.0
    """What the machine running local models costs per hour; local cost is generation time x this price."""
    max_new_tokens: int | None = None
    """Most tokens generated per answer; defaults to 1.5x the longest reference answer plus a margin, capped."""
    batch_size: int = 16
    """Requests generated together by a local model."""
    endpoints: list[EvalEndpointSpec] = []
    """OpenAI-compatible endpoints to evaluate as candidates too."""
    overfit_sample: int = 64
    """Training examples (a seeded sample of the split a tuned model was trained on) scored for the overfitting check;
    0 skips the check."""
    overfit_threshold: float = 0.1
    """The overfitting check flags a primary-grader gap (training sample minus holdout) above this."""
    regression_set: str | None = None
    """A chat JSONL of out-of-domain prompts (reference answers optional), relative to the spec file: the forgetting
    check answers it with the base and each tuned model and compares their token F1 (against the references, or
    against the base's answers when the set has none)."""
    forgetting_threshold: float = 0.25
    """The forgetting check flags a tuned model whose regression-set score is below the base's by more than this."""
    seed: int = 0
    """Seed of the overfitting check's training sample."""
    constrained: bool = False
    """Generate local candidates' answers under constrained decoding: a ``json`` output can only be JSON of
    ``output.schema`` (its ``label_field`` limited to the labels), a ``label`` output only one of the labels, as
    ``instil serve`` enforces ``response_format``. Then what is gated is what a constrained server answers."""

    @field_validator("machine_price_per_hour")
    @classmethod
    def _price(cls, v: float) -> float:
        if v < 0:
            raise ValueError("a price cannot be negative")
        return v

    @field_validator("max_new_tokens", "batch_size")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("overfit_sample")
    @classmethod
    def _sample(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be 0 (no overfitting check) or more")
        return v

    @field_validator("overfit_threshold", "forgetting_threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("a threshold on 0..1 scores must be between 0 and 1")
        return v


class UpstreamSpec(_Strict):
    """An OpenAI-compatible API that ``instil serve --proxy`` forwards requests to (the team's prompted model)."""

    name: str = "default"
    """The upstream's name in traces and metrics (letters, digits, '_', '-' and '.')."""
    base_url: str
    """Such as ``https://api.openai.com/v1``: requests go to ``<base_url>/chat/completions``."""
    api_key_env: str | None = None
    """The environment variable holding the upstream's key, sent in place of the client's. None: the client's own
    ``Authorization`` header is forwarded (when the proxy itself asks for no key)."""
    models: list[str] = []
    """The model names routed to this upstream; empty: every model no other upstream names."""
    input_price_per_million: float = 0.0
    """Price of one million prompt tokens: a trace's cost."""
    output_price_per_million: float = 0.0
    """Price of one million completion tokens."""
    timeout_s: float = 600.0
    """How long an upstream answer may take before the client gets a 504."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError("use 1-64 letters, digits, '_', '-' and '.'")
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"https?://[^/\s]+", v):
            raise ValueError("give an http:// or https:// URL, such as https://api.openai.com/v1")
        return v.rstrip("/")

    @field_validator("input_price_per_million", "output_price_per_million")
    @classmethod
    def _price(cls, v: float) -> float:
        if v < 0:
            raise ValueError("a price cannot be negative")
        return v

    @field_validator("timeout_s")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be more than 0")
        return v


class ServeSpec(_Strict):
    """How ``instil serve`` answers and what it keeps of each request (traces in the store)."""

    upstream: UpstreamSpec | list[UpstreamSpec] | None = None
    """Where ``instil serve --proxy`` forwards requests: one upstream, or a list of named ones routed by model name."""
    capture: bool = True
    """Keep every answered request as a trace in the store (a request with ``store: false`` is never kept)."""
    redact_pii: bool = False
    """Mask emails, phone numbers, cards, keys... (the data layer's PII scan) before a trace is written anywhere."""
    retention_days: int | None = None
    """Delete traces older than this many days (on start, then daily); None keeps them."""

    @field_validator("retention_days")
    @classmethod
    def _days(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("keep traces at least 1 day, or leave it out to keep them all")
        return v

    @model_validator(mode="after")
    def _routes(self) -> ServeSpec:
        ups = self.upstreams
        names = [u.name for u in ups]
        problems = []
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            problems.append(f"upstream names must be unique; repeated: {repeated}")
        catch_all = [u.name for u in ups if not u.models]
        if len(catch_all) > 1:
            problems.append(f"only one upstream may leave out 'models' (the default route); these do: {catch_all}")
        routed = [m for u in ups for m in u.models]
        if len(set(routed)) != len(routed):
            problems.append(f"a model is routed to two upstreams: {sorted({m for m in routed if routed.count(m) > 1})}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def upstreams(self) -> list[UpstreamSpec]:
        """The upstreams as a list (one upstream given alone is a list of one)."""
        if self.upstream is None:
            return []
        return self.upstream if isinstance(self.upstream, list) else [self.upstream]


class RolloutSpec(_Strict):
    """How a new version meets traffic before it is promoted (``instil rollout``): a canary, a shadow, the guard."""

    canary_percent: float = Field(10.0, gt=0, le=100)
    """The share of the job's requests a canary answers (sticky per ``user``: one person stays on one version)."""
    shadow_percent: float = Field(100.0, gt=0, le=100)
    """The share of the job's requests a shadow also answers, in the background (callers get production's answer)."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """The guard's error bound: the chance, at most, that it ever stops a canary no worse than production (for
    independent requests; many requests from one user, all on one arm, make the bound approximate)."""
    margin: float = Field(0.0, ge=0, lt=1)
    """How much higher a canary's online failure rate may be than production's before the guard counts it worse."""
    min_requests: int = Field(200, ge=0)
    """The candidate answers at least this many requests before ``instil rollout promote`` promotes it."""
    max_shadow_inflight: int = Field(32, ge=1)
    """The most shadow requests generating at once; past it a request is not shadowed (and counted so)."""


class MonitorSpec(_Strict):
    """What ``instil monitor`` watches in production traffic, and when it says to train again."""

    window_hours: float = Field(24.0, gt=0)
    """The stretch of recent traffic compared with the training data (and the length of each rated window)."""
    min_traces: int = Field(50, ge=1)
    """A test with fewer traces behind it is shown but never counts as drift."""
    p_value: float = Field(0.01, gt=0, lt=1)
    """A drift test whose p-value is under this counts as drift."""
    max_failure_rate: float | None = Field(None, gt=0, lt=1)
    """When set: a latest window (or schema check) failing more often than this calls for retraining."""
    retrain_after_failures: int = Field(100, ge=1)
    """Retraining is due once this many failed answers came in since the newest version was trained."""


class JobSpec(_Strict):
    """A job: what the model must do, how it is scored, the data, the model, training and the promotion gate."""

    name: str
    """The job's name (letters, digits, '_' and '-'); models and datasets are recorded under it."""
    description: str = ""
    """What the job is, for people."""
    system_prompt: str
    """The best prompt: the long system prompt being distilled into the model."""
    short_prompt: str | None = None
    """The short system prompt the tuned model runs with (none when absent)."""
    output: OutputSpec = OutputSpec()
    """The output contract."""
    graders: list[GraderSpec]
    """How outputs are scored; exactly one is primary."""
    data: list[DataSource]
    """Where the examples come from."""
    split: SplitSpec = SplitSpec()
    """How the frozen holdout is made."""
    model: ModelSpec = ModelSpec()
    """The base model."""
    training: TrainingSpec = TrainingSpec()
    """How the model is trained."""
    gate: GateSpec = GateSpec()
    """The promotion gate."""
    eval: EvalSpec = EvalSpec()
    """How candidates are evaluated and priced (``instil eval``)."""
    serve: ServeSpec = ServeSpec()
    """How ``instil serve`` answers (a local model, or an upstream behind the proxy) and captures traces."""
    rollout: RolloutSpec = RolloutSpec()
    """How a new version is rolled out (canary, shadow) and guarded before promotion."""
    monitor: MonitorSpec = MonitorSpec()
    """What ``instil monitor`` compares and when it says retraining is due."""

    _root: Path = PrivateAttr(default_factory=Path.cwd)
    _file: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", v):
            raise ValueError("use 1-64 letters, digits, '_' and '-', starting with a letter or digit")
        return v

    @field_validator("graders")
    @classmethod
    def _graders(cls, v: list[Any]) -> list[Any]:
        if not v:
            raise ValueError("give at least one grader: what cannot be scored cannot be improved")
        names = [g.name for g in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"grader names must be unique; repeated: {dupes}")
        return v

    @field_validator("data")
    @classmethod
    def _data(cls, v: list[DataSource]) -> list[DataSource]:
        if not v:
            raise ValueError("give at least one data source")
        return v

    @model_validator(mode="after")
    def _cross(self) -> JobSpec:
        problems: list[str] = []
        marked = [g.name for g in self.graders if g.primary]
        if self.gate.primary is not None:
            if self.gate.primary not in {g.name for g in self.graders}:
                problems.append(f"gate.primary names '{self.gate.primary}', which is not a grader")
            elif marked and marked != [self.gate.primary]:
                problems.append(f"gate.primary is '{self.gate.primary}' but graders mark {marked} as primary")
        elif len(marked) != 1:
            problems.append(f"exactly one grader must have 'primary: true' (found {len(marked)}), or set gate.primary")
        for g in self.graders:
            if g.type == "json_schema" and g.json_schema is None and self.output.json_schema is None:
                problems.append(f"grader '{g.name}' needs a 'schema', or set output.schema")
            if g.type == "label_accuracy" and not self.output.labels:
                problems.append(f"grader '{g.name}' needs output.labels")
            if g.type == "tool_call_match" and not self.output.tools:
                problems.append(f"grader '{g.name}' needs output.tools")
        if self.eval.constrained and self.output.type not in ("json", "label"):
            problems.append(
                f"eval.constrained holds answers to a grammar, which a {self.output.type} output does not have "
                "(it applies to json and label outputs)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # ---- derived -----------------------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The folder relative paths are resolved against (the spec file's folder)."""
        return self._root

    @property
    def file(self) -> Path | None:
        """The spec file, when the spec was loaded from one."""
        return self._file

    @property
    def primary_grader(self) -> str:
        """The name of the grader that decides promotion."""
        if self.gate.primary is not None:
            return self.gate.primary
        return next(g.name for g in self.graders if g.primary)

    def resolve(self, path: str | Path) -> Path:
        """A path from the spec, resolved against the spec's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self._root / p

    def paths_outside(self) -> list[str]:
        """The spec's data paths (``data[].path``, ``eval.regression_set``) that lead out of the spec's folder
        (``../``, an absolute path elsewhere, a link): allowed, since data may live anywhere, but worth a look, since
        a spec can point a command at any file the user can read."""
        root = self._root.resolve()
        named = [(f"data[{i}].path", s.path) for i, s in enumerate(self.data)]
        if self.eval.regression_set is not None:
            named.append(("eval.regression_set", self.eval.regression_set))
        out = []
        for field, value in named:
            where = self.resolve(value).resolve()
            if not where.is_relative_to(root):
                out.append(f"{field} {value!r} leads out of the spec's folder, to {where}")
        return out


# ---- loading ---------------------------------------------------------------------------------------------------------
def load_spec(path: str | Path) -> JobSpec:
    """Load and validate a spec file. Raises :class:`SpecError` listing every problem with its line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError([Problem("", "file not found; `instil init` writes a starter spec")], file=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([Problem("", f"cannot read: {e}")], file=str(path)) from None
    return parse_spec(text, file=str(path), root=path.resolve().parent)


def parse_spec(text: str, *, file: str | None = None, root: Path | None = None) -> JobSpec:
    """Validate a spec given as YAML text."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _refuse_alias_bombs(node, file)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SpecError([Problem("", f"not valid YAML: {getattr(e, 'problem', e)}", line)], file=file) from None
    except RecursionError:
        raise SpecError([Problem("", "the YAML is nested too deeply to read", None)], file=file) from None
    if not isinstance(data, dict):
        raise SpecError([Problem("", "the spec must be a YAML mapping (key: value lines)", 1)], file=file)
    lines = _line_index(node)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_problems(e, lines), file=file) from None
    spec._root = root if root is not None else Path.cwd()
    spec._file = Path(file) if file else None
    return spec


MAX_EXPANDED_NODES = 100_000
"""The most YAML nodes a spec may expand to through aliases (``*name``): far past any real spec, far short of a
"billion laughs" document, whose few kilobytes expand to billions of nodes."""


def _refuse_alias_bombs(node: yaml.Node | None, file: str | None) -> None:
    """Count the nodes the document expands to, each shared (aliased) node once per use, without expanding it."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = 1  # a node that contains itself (a recursive alias) counts once
        children = [c for kv in n.value for c in kv] if isinstance(n, yaml.MappingNode) else n.value
        total = 1 + sum(size(c) for c in children) if isinstance(n, yaml.MappingNode | yaml.SequenceNode) else 1
        sizes[id(n)] = total
        if total > MAX_EXPANDED_NODES:
            raise SpecError(
                [
                    Problem(
                        "",
                        f"the YAML expands to more than {MAX_EXPANDED_NODES:,} values through aliases (*name): "
                        "write the values out, or use fewer aliases",
                        n.start_mark.line + 1,
                    )
                ],
                file=file,
            )
        return total

    if node is not None:
        size(node)


def _line_index(node: yaml.Node | None) -> dict[tuple, int]:
    """Map each path in the YAML document (tuples of keys and indices) to the 1-based line where it starts.

    An aliased node is walked where its anchor is and not again at each alias, so the index grows with the text,
    not with what aliases expand to."""
    out: dict[tuple, int] = {}
    walked: set[int] = set()

    def walk(n: yaml.Node, path: tuple) -> None:
        out[path] = n.start_mark.line + 1
        if id(n) in walked:
            return
        walked.add(id(n))
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = k.value
                out[(*path, key)] = k.start_mark.line + 1
                walk(v, (*path, key))
                out[(*path, key)] = k.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*path, i))

    if node is not None:
        walk(node, ())
    return out


def _problems(error: ValidationError, lines: dict[tuple, int]) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for err in error.errors(include_url=False):
        loc = _clean_loc(err["loc"])
        path = _format_loc(loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and indentation)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "union_tag_invalid":
            tag = err.get("ctx", {}).get("tag")
            msg = f"unknown grader type {tag!r}; expected one of: {', '.join(sorted(_GRADER_TAGS))}"
        if (path, msg) in seen:
            continue
        seen.add((path, msg))
        line = None
        for n in range(len(loc), -1, -1):
            line = lines.get(tuple(loc[:n]))
            if line is not None:
                break
        problems.append(Problem(path, msg, line))
    problems.sort(key=lambda p: (p.line or 0, p.location))
    return problems


# Every grader's `type` tag, read off the union so a new grader type needs no second edit here.
_GRADER_TAGS = frozenset(
    tag
    for cls in typing.get_args(typing.get_args(GraderSpec)[0])
    for tag in typing.get_args(cls.model_fields["type"].annotation)
)
_ALIASES = {"json_schema": "schema"}


def _clean_loc(loc: tuple) -> list:
    # pydantic inserts the discriminator value into the path of a tagged union member (graders.2.regex.pattern).
    out: list = []
    for i, part in enumerate(loc):
        tagged = isinstance(part, str) and part in _GRADER_TAGS and i > 0 and isinstance(loc[i - 1], int)
        if tagged and len(out) >= 2 and out[-2] == "graders":
            continue
        out.append(_ALIASES.get(part, part) if isinstance(part, str) else part)
    return out


def _format_loc(loc: list) -> str:
    s = ""
    for part in loc:
        if isinstance(part, int):
            s += f"[{part}]"
        else:
            s += ("." if s else "") + str(part)
    return s


def write_starter_spec(path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the commented starter spec to ``path``; refuses to overwrite unless told to."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InstilError(f"{path} exists already", hint="pass --force (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(files("instil").joinpath("templates/instil.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    return path


def describe_fields(model: type[BaseModel] = JobSpec, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows of (field path, type, default, meaning) for every spec field, nested models expanded."""
    rows: list[tuple[str, str, str, str]] = []
    for name, f in model.model_fields.items():
        key = f.alias or name
        path = f"{prefix}{key}"
        ann = f.annotation
        nested = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        if path == "graders":
            type_name = "list of graders (by type)"
        default = "" if f.is_required() else ("" if nested else repr(f.get_default(call_default_factory=True)))
        rows.append((path, type_name, default, (f.description or "").replace("\n", " ")))
        if nested is not None:
            rows.extend(describe_fields(nested, prefix=path + "."))
    return rows
