"""The `instil` command: a thin shell over the Python API. Each command parses, calls one API function, renders.

instil init                      write a commented starter spec (instil.yaml)
instil spec check instil.yaml    validate a spec, reporting every problem with file:line and field
instil data validate FILE...     check data files line by line (rejects file, --json)
instil --help                    everything else

Each command imports the API it calls inside its own function, on purpose: ``instil --help`` and ``instil spec check``
then start in a fraction of a second rather than the seconds the data, training and evaluation stack take to import.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from instil.errors import InstilError

if TYPE_CHECKING:
    from instil.eval.results import EvalReport
    from instil.loop import LoopResult, StageResult

app = typer.Typer(
    name="instil",
    help="Turn your team's best prompt into a fine-tuned model that provably beats it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
spec_app = typer.Typer(help="Check and describe job specs (instil.yaml).", no_args_is_help=True)
data_app = typer.Typer(help="Validate, inspect, curate and split data.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
traces_app = typer.Typer(help="List, show and export the traces instil serve captured.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(traces_app, name="traces")
rollout_app = typer.Typer(
    help="Roll a new version out: a canary or a shadow on live traffic, guarded, then promoted or aborted.",
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")
review_app = typer.Typer(help="The review queue: failures, disagreements and feedback become training data.")
app.add_typer(review_app, name="review")

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

SpecArg = Annotated[Path, typer.Argument(help="The job spec file.", show_default=True)]


# ---- top level -------------------------------------------------------------------------------------------------------
@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the spec.")] = Path("instil.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter job spec."""
    from instil.spec import write_starter_spec

    write_starter_spec(path, overwrite=force)
    console.print(f"Wrote [bold]{path}[/]. Edit it, then run [bold]instil spec check {path}[/].")


@app.command()
def version() -> None:
    """Print the versions of instil and the libraries it records with every run."""
    from instil.env import library_versions

    table = Table(show_header=False, box=None)
    for name, ver in library_versions().items():
        table.add_row(name, ver)
    console.print(table)


@app.command("run")
def run_cmd(
    spec: SpecArg = Path("instil.yaml"),
    iterations: Annotated[
        int,
        typer.Option(
            help="Turns of the loop; from the second on, the production model's failures on the pool are "
            "corrected into training data first."
        ),
    ] = 1,
    max_steps: Annotated[
        int | None, typer.Option(help="Cap each training run's optimizer steps (a quick try).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Stop after this stage (split: the data stages only).")] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Instead of one turn on the job's data: watch production, retraining from reviewed corrections when "
            "the monitor says so, then gate, canary and promote (--max-steps applies; --iterations/--until do not).",
        ),
    ] = False,
    interval: Annotated[float, typer.Option(min=1, help="With --watch: seconds between looks.")] = 300.0,
    turns: Annotated[int | None, typer.Option(help="With --watch: stop after this many looks.")] = None,
) -> None:
    """Run the loop on a job: validate, curate, split, baseline, train, evaluate, promote (unchanged ones skipped)."""
    from instil.loop import run

    if watch:
        _watch(spec, interval, turns, max_steps)
        return

    result = _run_loop(
        lambda on_stage: run(
            spec, iterations=iterations, on_stage=on_stage, max_steps=max_steps, progress=True, until=until
        )
    )
    _print_loop_result(result)


def _replay():
    """How the quickstart's second turn reaches v1: through the served API with the openai client, each answer a
    trace (in process when the serve extra is not installed)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return None
    from instil.serve.replay import replay

    return replay


def _watch(spec: Path, interval: float, turns: int | None, max_steps: int | None) -> None:
    from instil.watch import watch

    job = _load(spec)

    def say(outcome) -> None:
        colour = {"promoted": "green", "refused": "red", "canary started": "cyan"}.get(outcome.action, "white")
        console.print(f"[{colour}]{outcome.action}[/]: {_escape(outcome.detail)}", soft_wrap=True)

    console.print(f"watching {job.name} every {interval:g} s (Ctrl-C stops)")
    with _open_store(job) as store:
        watch(job, store, interval_s=interval, max_turns=turns, on_turn=say, max_steps=max_steps, progress=True)


@app.command()
def quickstart(
    dest: Annotated[Path, typer.Argument(help="Where to copy the example job (reused if it is there).")] = Path(
        "quickstart"
    ),
    model: Annotated[
        str | None,
        typer.Option(help="Any Hugging Face causal LM id or local path instead of the tiny random model."),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Cap each training run's optimizer steps (a quick try).")
    ] = None,
) -> None:
    """Copy the support-ticket triage example into DEST and turn the loop twice: train v1 and gate it against the
    prompted base, then correct v1's failures on the traffic pool, train v2 and gate it against v1."""
    from instil.loop import quickstart as run_quickstart

    console.print(f"[bold]instil quickstart[/]: the support-ticket triage example, in [bold]{dest}/[/]")
    result = _run_loop(
        lambda on_stage: run_quickstart(
            dest, model=model, on_stage=on_stage, max_steps=max_steps, progress=True, traffic=_replay()
        )
    )
    _print_loop_result(result)
    if model is None:
        console.print(
            "\n[yellow]note:[/] the base here is a tiny random-initialised model: with any prompt it scores near zero, "
            "so the first gate is easy. The second gate (v2 against v1) is the real test. Run with [bold]--model[/] "
            "and a pretrained causal LM for results worth shipping.",
            soft_wrap=True,
        )
    console.print(f"Try: [bold]cd {dest} && instil models[/], [bold]instil datasets[/], [bold]instil eval[/].")


def _run_loop(call: Callable[[Callable[[StageResult], None]], LoopResult]) -> LoopResult:

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the stage lines and training's own bar show progress; loading bars are noise

    started = time.perf_counter()
    with console.status("running the loop...") as status:

        def on_stage(stage: StageResult) -> None:
            mark = "[dim]-[/]" if stage.skipped else "[green]✓[/]"
            skipped = " [dim](unchanged, skipped)[/]" if stage.skipped else f" [dim]({stage.seconds:.1f}s)[/]"
            console.print(
                f"{mark} [dim]{stage.iteration}[/] [bold]{stage.name:<9}[/] {_escape(stage.summary)}{skipped}",
                soft_wrap=True,
            )
            status.update("next stage...")

        result = call(on_stage)
    console.print(f"[dim]loop finished in {time.perf_counter() - started:.1f}s; store: {result.home}[/]")
    return result


def _print_loop_result(result: LoopResult) -> None:
    """The last evaluation's table, each gate decision with its numbers, and the report's path."""
    if result.report is not None:
        _print_eval_report(result.report)
        _print_failure_modes(result.report)
    for p in result.promotions:
        colour = "green" if p.promoted else "red"
        console.print(
            f"\n[bold {colour}]gate: {p.candidate} {'promoted' if p.promoted else 'refused'} over {p.reference}[/]",
            soft_wrap=True,
        )
        console.print(_escape(p.summary()), soft_wrap=True)
    if result.report is not None:
        console.print(f"\nHTML report: [bold]{result.report.html_path}[/]", soft_wrap=True)


@app.command()
def train(
    spec: SpecArg = Path("instil.yaml"),
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps (a smoke run).")] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Where the model goes (default: the store's models/ folder).")
    ] = None,
    show_mask: Annotated[
        bool, typer.Option("--show-mask", help="Print what the loss is taken on for one example, then stop.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from the newest complete checkpoint of a run that stopped early."),
    ] = False,
    processes: Annotated[
        int,
        typer.Option(
            help="Training processes (data parallel through torchrun; training.batch_size stays the global batch)."
        ),
    ] = 1,
    config: Annotated[
        str | None,
        typer.Option(
            help="With --processes: ddp, deepspeed-zero2, deepspeed-zero3, fsdp, or an accelerate config file."
        ),
    ] = None,
) -> None:
    """Fine-tune the job's base model on its training split (SFT; LoRA, QLoRA, full or prompt tuning)."""
    if processes > 1 or config is not None:
        from instil.train.launch import launch

        worker = [
            *(["--max-steps", str(max_steps)] if max_steps is not None else []),
            *(["--output-dir", str(output_dir)] if output_dir is not None else []),
            *([] if progress else ["--no-progress"]),
            *(["--resume"] if resume else []),
        ]
        raise typer.Exit(launch(spec, processes=processes, config=config, extra_args=worker))
    from transformers.utils import logging as hf_logging

    from instil.train.sft import prepare_sft, train_sft

    hf_logging.disable_progress_bar()  # our own bar shows training; loading bars are noise here

    job = _load(spec)
    with _open_store(job) as store:
        if show_mask:
            from instil.train.masking import mask_preview

            plan = prepare_sft(job, store, max_steps=1)
            example = next(iter(store.iter_examples(plan.dataset))).with_system_prompt(job.short_prompt)
            console.print(
                f"[bold]{plan.dataset.ref}[/], first example; [green]green[/] is trained, [dim]dim[/] is not:"
            )
            console.print(mask_preview(plan.renderer, example))
            return
        from instil.train.checkpoints import TrainingInterrupted

        try:
            result = train_sft(job, store, output_dir=output_dir, max_steps=max_steps, progress=progress, resume=resume)
        except TrainingInterrupted as e:
            err.print(f"[yellow]interrupted:[/] {e}", soft_wrap=True)
            if e.checkpoint is not None:
                err.print(
                    "run [bold]instil train --resume[/] (with the same options) to continue from it",
                    soft_wrap=True,
                )
            raise typer.Exit(130) from None
    if result.notice:
        err.print(f"[yellow]note:[/] {result.notice}", soft_wrap=True)
    title = f"run {result.run_id}: {result.model.ref}" + (f" ({result.resumed})" if result.resumed else "")
    table = Table("setting", "value", "from", title=title, title_justify="left")
    for name, value, source in result.rows():
        table.add_row(name, str(value), source)
    m = result.metrics
    for name, value in (
        ("train loss", f"{m.train_loss:.4f}"),
        ("eval loss", "-" if m.eval_loss is None else f"{m.eval_loss:.4f}"),
        ("steps", str(m.steps)),
        ("trained tokens", f"{m.trained_tokens:,}"),
        ("tokens/s", f"{m.tokens_per_second:,.0f}"),
        ("padding", f"{m.padding_fraction:.1%}"),
        ("time", f"{m.seconds:.1f}s"),
    ):
        table.add_row(f"[bold]{name}[/]", value, "result")
    console.print(table)
    for anomaly in m.anomalies:
        err.print(
            f"[yellow]anomaly[/] ({anomaly['kind']}, step {anomaly['step']}): {anomaly['message']}",
            soft_wrap=True,
        )
    console.print(f"model written to [bold]{result.output_dir}[/]", soft_wrap=True)


@app.command("eval")
def eval_cmd(
    spec: SpecArg = Path("instil.yaml"),
    candidate: Annotated[
        list[str] | None,
        typer.Option(
            "--candidate",
            help="Evaluate only this candidate (repeatable): base+full, base+short, <job>@<n>+short, or an "
            "endpoint's name.",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(help="Evaluate only the holdout's first N examples (a quick look; intervals widen)."),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(help="Most tokens per answer (default: eval.max_new_tokens, else 1.5x the longest reference)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of tables.")] = False,
    reuse: Annotated[
        bool,
        typer.Option(
            "--reuse",
            help="Take a candidate's results from an earlier eval run with the same holdout, settings and "
            "candidate instead of generating them again.",
        ),
    ] = False,
) -> None:
    """Run the candidates on the frozen holdout and print one table: scores with 95% intervals, latency and cost."""
    from transformers.utils import logging as hf_logging

    from instil.eval.compare import evaluate, select_candidates
    from instil.eval.report import write_report

    hf_logging.disable_progress_bar()
    job = _load(spec)
    with _open_store(job) as store:
        report = evaluate(
            job,
            store,
            select_candidates(job, store, candidate),
            limit=limit,
            max_new_tokens=max_new_tokens,
            reuse=reuse,
        )
        write_report(report, store)
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
        return
    _print_eval_report(report)
    tags = sorted({t for c in report.candidates for t in c.slices})
    if tags:
        slices = Table(
            "tag",
            *(c.name for c in report.candidates),
            title=f"{report.primary} by tag",
            title_justify="left",
        )
        for tag in tags:
            row = [tag]
            for c in report.candidates:
                s = c.slices.get(tag)
                row.append("-" if s is None else f"{s.mean:.2f} [{s.low:.2f}, {s.high:.2f}] n={s.n}")
            slices.add_row(*row)
        console.print(slices)
    truncated = [f"{c.name} ({c.truncated})" for c in report.candidates if c.truncated]
    if truncated:
        err.print(f"[yellow]note:[/] answers cut off at max_new_tokens: {', '.join(truncated)}", soft_wrap=True)
    _print_failure_modes(report)
    console.print(f"per-example results: [bold]{report.examples_path}[/]", soft_wrap=True)
    console.print(f"HTML report: [bold]{report.html_path}[/]", soft_wrap=True)


@app.command()
def export(
    spec: SpecArg = Path("instil.yaml"),
    out: Annotated[Path, typer.Option("--out", help="The folder to write (must not exist yet).")] = ...,  # type: ignore[assignment]
    version: Annotated[int | None, typer.Option(help="The model version to export (default: the latest).")] = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge/--no-merge",
            help="Merge a LoRA/QLoRA adapter into its base (default), or copy the adapter as is.",
        ),
    ] = True,
) -> None:
    """Export a trained model: a LoRA adapter merged into its base (safetensors), with tokenizer and chat template."""
    from transformers.utils import logging as hf_logging

    from instil.train.export import EXPORT_FILE, export_model

    hf_logging.disable_progress_bar()
    job = _load(spec)
    with _open_store(job) as store:
        folder = export_model(store, job.name, version=version, dest=out, merge=merge)
    record = json.loads((folder / EXPORT_FILE).read_text(encoding="utf-8"))
    what = "merged into its base" if record["merged"] else "copied as is"
    console.print(f"{record['source']['ref']} ({record['source']['kind']}) {what}: [bold]{folder}[/]", soft_wrap=True)


@app.command()
def serve(
    spec: SpecArg = Path("instil.yaml"),
    version: Annotated[
        list[str] | None,
        typer.Option(
            help="A model version to serve: 3, <job>@3, a pin name, latest; repeat it for several side by side "
            "(default: production or the latest, every pinned version, the latest)."
        ),
    ] = None,
    base: Annotated[
        bool,
        typer.Option(
            "--base",
            help="Serve the base model as <job>:base (the full prompt is its default system prompt): alone, or "
            "beside the --version ones.",
        ),
    ] = False,
    max_adapters: Annotated[
        int, typer.Option(min=1, help="The most LoRA adapters loaded into one base (each version asked for by name).")
    ] = 16,
    engine: Annotated[
        str,
        typer.Option(
            help="transformers (the default, any model on CPU or GPU) or vllm (vLLM's server on a CUDA GPU, "
            "multi-LoRA, behind the same capture and routing)."
        ),
    ] = "transformers",
    engine_arg: Annotated[
        list[str] | None,
        typer.Option(help="An argument passed to vLLM as it is (repeat it): --engine-arg=--gpu-memory-utilization=0.8"),
    ] = None,
    host: Annotated[str, typer.Option(help="The address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to listen on.")] = 8000,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="The environment variable holding the API key clients must send (default: no key)."),
    ] = None,
    max_body_kb: Annotated[
        int, typer.Option(min=1, help="The largest request body read, in KiB; a larger one is answered 413.")
    ] = 2048,
    max_queue: Annotated[
        int, typer.Option(min=1, help="The most requests waiting for the model; past it, 429 with Retry-After.")
    ] = 256,
    proxy: Annotated[
        bool,
        typer.Option("--proxy", help="Forward to the spec's serve.upstream (the team's current model) instead."),
    ] = False,
    capture: Annotated[
        bool | None,
        typer.Option(
            "--capture/--no-capture", help="Keep every request as a trace (default: the spec's serve.capture)."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="torch threads for generation (default on a CPU: every core but one, for HTTP)."),
    ] = None,
) -> None:
    """Serve the job's models behind an OpenAI-compatible API: /v1/chat/completions, /v1/models.

    Clients pick a version by model name: <job> (production), <job>@3, <job>@<pin>, <job>:base. LoRA versions share
    one copy of their base and are batched together; a promotion reaches the running server within a second. With
    --proxy, forward every request to the spec's upstream instead. Either way each answer is kept as a trace
    (instil traces lists them)."""
    from transformers.utils import logging as hf_logging

    from instil.serve import serve_job

    hf_logging.disable_progress_bar()
    job = _load(spec)
    keeping = job.serve.capture if capture is None else capture

    def ready(name: str, url: str) -> None:
        console.print(f"serving [bold]{_escape(name)}[/] at [bold]{url}[/]; Ctrl-C stops", soft_wrap=True)
        console.print(
            "traces are kept in the store (instil traces list)" if keeping else "no traces are kept (--no-capture)",
            style="dim",
        )
        if api_key_env is None and host not in ("127.0.0.1", "localhost", "::1"):
            err.print(f"[yellow]warning:[/] listening on {host} without an API key (--api-key-env)", soft_wrap=True)

    with _open_store(job) as store:
        stats = serve_job(
            job,
            store,
            versions=version or None,
            base=base,
            max_adapters=max_adapters,
            engine=engine,
            engine_args=engine_arg or (),
            proxy=proxy,
            host=host,
            port=port,
            api_key_env=api_key_env,
            ready=ready,
            max_body_bytes=max_body_kb * 1024,
            max_queue=max_queue,
            capture=capture,
            threads=threads,
        )
    if stats is not None:
        left = f", {stats.spool_bytes:,} bytes still spooled for the next start" if stats.spool_bytes else ""
        console.print(f"{stats.captured:,} traces captured, {stats.stored:,} stored{left}", style="dim", soft_wrap=True)


# ---- registry --------------------------------------------------------------------------------------------------------
@app.command()
def promote(
    spec: SpecArg = Path("instil.yaml"),
    version: Annotated[int | None, typer.Option(help="The model version to gate (default: the newest).")] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            help="Compare against this instead of production (or, before the first promotion, the prompted "
            "baseline): base+full, an endpoint's name, a version (3, <job>@3, a pin)."
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(help="Use only the holdout's first N examples (a smoke test: the gate loses power)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide and print, but record no decision and change no status.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision and its numbers as JSON.")] = False,
) -> None:
    """Gate a model version against production: promote it only when it is provably better.

    Exit code: 0 promoted (or would be, with --dry-run), 1 refused, 2 error.
    """
    from transformers.utils import logging as hf_logging

    from instil.registry import promote as gate

    hf_logging.disable_progress_bar()
    try:
        job = _load(spec)
        with _open_store(job) as store:
            result = gate(job, store, version, reference=reference, limit=limit, dry_run=dry_run)
    except InstilError as e:  # exit 1 means "refused" here, so errors take 2
        _print_error(e)
        raise typer.Exit(2) from None
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
    else:
        colour = "green" if result.decision.promoted else "red"
        lines = _escape(result.summary()).split("\n")
        lines[0] = f"[bold {colour}]{lines[0]}[/]"
        console.print("\n".join(lines), soft_wrap=True)
    raise typer.Exit(0 if result.decision.promoted else 1)


@app.command("models")
def models_cmd(
    spec: SpecArg = Path("instil.yaml"),
    decisions: Annotated[bool, typer.Option("--decisions", help="Also list every gate decision and rollback.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the versions (and decisions) as JSON.")] = False,
) -> None:
    """List the job's model versions: status, pins, base model, training data, last decision and primary score."""
    from instil.registry import list_decisions, list_versions

    job = _load(spec)
    with _open_store(job) as store:
        versions = list_versions(store, job.name)
        history = list_decisions(store, job.name) if decisions else []
        trains = store.list_runs(job.name, kind="train")
    resumed = {r.resumed_from[0] for r in trains if r.resumed_from}
    stranded = [r for r in trains if r.status == "interrupted" and r.id not in resumed]
    for r in stranded:  # a training run that died and was never continued: say so where models are listed
        err.print(
            f"[yellow]run {r.id} (train) was interrupted[/] ({_escape(r.error or 'its process is gone')}): "
            "[bold]instil train --resume[/] continues it; [bold]instil runs[/] lists every run",
            soft_wrap=True,
        )
    if as_json:
        out: dict = {"job": job.name, "versions": [v.to_dict() for v in versions]}
        if decisions:
            out["decisions"] = [{**asdict(d), "created_at": d.created_at.isoformat()} for d in history]
        console.print_json(json.dumps(out))
        return
    if not versions:
        console.print(f"{job.name} has no model versions yet: run [bold]instil train[/]")
        return

    short = lambda ref: (ref or "-").removeprefix(f"{job.name}:")  # noqa: E731
    holdouts = {v.scored_on for v in versions if v.scored_on}
    one = short(holdouts.pop()) if len(holdouts) == 1 else None  # the usual case: named once, in the title
    title = f"{job.name} models" + (f" ({job.primary_grader} on {one})" if one else "")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("v", "status", "pins", "base", "data", "created", "last decision", job.primary_grader):
        table.add_column(
            col,
            no_wrap=col in ("v", "status", "created", job.primary_grader),
            min_width=14 if col == "last decision" else None,
        )
    styles = {"production": "bold green", "refused": "red", "rolled_back": "yellow"}
    for v in versions:
        m = v.model
        score = "-" if v.primary_score is None else f"{v.primary_score:.3f}"
        if v.primary_score is not None and one is None:
            score += f" {short(v.scored_on)}"
        last = v.describe_last_decision(when=False) or "-"
        table.add_row(
            str(m.version),
            f"[{styles.get(m.status, 'default')}]{m.status}[/]",
            ", ".join(v.pins),
            _escape(m.base_model),
            short(v.train_dataset),
            m.created_at.strftime("%Y-%m-%d"),
            _escape(last),
            score,
        )
    console.print(table)
    if history:
        log = Table(
            "#",
            "when",
            "kind",
            "version",
            "verdict",
            "against",
            "eval run",
            title="decisions",
            title_justify="left",
        )
        for d in history:
            verdict = "rolled back" if d.kind == "rollback" else "promoted" if d.promoted else "refused"
            against = d.reference or (f"from {job.name}@{d.reference_version}" if d.reference_version else "-")
            log.add_row(
                str(d.id),
                d.created_at.strftime("%Y-%m-%d %H:%M"),
                d.kind,
                str(d.version),
                verdict,
                _escape(against),
                str(d.run_id or "-"),
            )
        console.print(log)


@app.command()
def rollback(
    spec: SpecArg = Path("instil.yaml"),
    to: Annotated[
        int | None,
        typer.Option(
            "--to", help="The earlier production version to go back to (default: the one before the current)."
        ),
    ] = None,
) -> None:
    """Put the previous production version back in production (recorded as a decision)."""
    from instil.registry import production
    from instil.registry import rollback as roll_back

    job = _load(spec)
    with _open_store(job) as store:
        before = production(store, job.name)
        now = roll_back(store, job.name, to=to)
    console.print(f"production: [bold]{now.ref}[/] (was {before.ref if before else '-'})")


@app.command()
def pin(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="[SPEC] NAME [VERSION]",
            help="The spec (default instil.yaml), the pin's name, and the version to pin: 3, <job>@3, production, "
            "or another pin.",
            show_default=False,
        ),
    ],
    remove: Annotated[bool, typer.Option("--remove", help="Remove the pin instead.")] = False,
) -> None:
    """Pin a model version under a name (stable, canary...), or remove a pin with --remove."""
    from instil.registry import pin as set_pin
    from instil.registry import unpin

    spec = Path("instil.yaml")
    if args and _is_spec(Path(args[0])):
        spec, args = Path(args[0]), args[1:]
    if len(args) != (1 if remove else 2):
        raise typer.BadParameter(
            "give NAME --remove" if remove else "give NAME VERSION", param_hint="[SPEC] NAME [VERSION]"
        )
    job = _load(spec)
    with _open_store(job) as store:
        if remove:
            was = unpin(store, job.name, args[0])
            console.print(f"removed pin [bold]{was.name}[/] (was {was.ref})")
        else:
            now = set_pin(store, job.name, args[0], args[1])
            console.print(f"pin [bold]{now.name}[/] -> {now.ref}")


@app.command("monitor")
def monitor_cmd(
    spec: SpecArg = Path("instil.yaml"),
    window_hours: Annotated[
        float | None, typer.Option(help="The stretch of recent traffic to compare (default: monitor.window_hours).")
    ] = None,
    embeddings: Annotated[
        str | None, typer.Option(help="Compare inputs by this sentence-transformers model instead of TF-IDF.")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 3 when retraining is due (for a scheduler), 0 otherwise.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Drift of production traffic from the training data, online pass rates per window, and whether to retrain."""
    from instil.monitor import monitor

    job = _load(spec)
    with _open_store(job) as store:
        report = monitor(job, store, window_hours=window_hours, embeddings=embeddings)
    if as_json:
        console.print_json(json.dumps(report.to_dict(), default=str))
    else:
        lo, hi = report.window
        console.print(f"{job.name}: {report.traces} answers from {lo:%Y-%m-%d %H:%M} to {hi:%Y-%m-%d %H:%M} UTC")
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("check", "p-value", "training", "now", "verdict", "detail"):
            table.add_column(col, overflow="fold")
        for c in report.checks:
            verdict = "[red]drift[/]" if c.drifted else ("-" if c.p_value is None and not c.drifted else "ok")
            p = "-" if c.p_value is None else f"{c.p_value:.3g}"
            table.add_row(c.name, p, str(c.n_reference), str(c.n_recent), verdict, _escape(c.detail))
        console.print(table)
        rates = [
            f"{w.start:%m-%d %H:%M} {w.rate.estimate:.0%} of {w.graded}" if w.rate else f"{w.start:%m-%d %H:%M} -"
            for w in report.windows
        ]
        console.print("online pass rate per window: " + " | ".join(rates))
        console.print(f"failed answers since the newest version was trained: {report.failures_since_training}")
        if report.retrain_due:
            console.print("[bold yellow]retraining is due:[/] " + _escape("; ".join(report.reasons)), soft_wrap=True)
        else:
            console.print("[green]no drift, no call to retrain[/]")
    if check and report.retrain_due:
        raise typer.Exit(3)


# ---- rollout ---------------------------------------------------------------------------------------------------------
@rollout_app.command("start")
def rollout_start(
    spec: SpecArg = Path("instil.yaml"),
    version: Annotated[str, typer.Option(help="The version to roll out: 3, <job>@3, latest, a pin.")] = "latest",
    canary: Annotated[
        float | None,
        typer.Option(help="A canary: this percent of requests answered by the version (default: the spec's)."),
    ] = None,
    shadow: Annotated[
        bool, typer.Option("--shadow", help="A shadow instead: the version also answers, unseen by callers.")
    ] = False,
    percent: Annotated[
        float | None, typer.Option(help="With --shadow: the percent of requests also sent to it (default: the spec's).")
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="The guard's error bound (default: rollout.alpha).")] = None,
    margin: Annotated[
        float | None, typer.Option(help="How much worse than production a canary may fail (default: rollout.margin).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Roll out a version even though the guard stopped its canary before.")
    ] = False,
) -> None:
    """Start a canary (or a shadow) of a version; a running server routes by it within a second."""
    from instil import rollout

    if shadow and canary is not None:
        raise typer.BadParameter("give --canary PCT or --shadow, not both", param_hint="--canary/--shadow")
    if not shadow and percent is not None:
        raise typer.BadParameter("--percent is for --shadow; a canary's share is --canary PCT", param_hint="--percent")
    job = _load(spec)
    with _open_store(job) as store:
        r = rollout.start(
            job, store, version, mode="shadow" if shadow else "canary", percent=percent if shadow else canary,
            alpha=alpha, margin=margin, force=force,
        )  # fmt: skip
    what = (
        f"a canary: {r.percent:g}% of requests for {job.name!r} go to {r.ref}"
        if r.mode == "canary"
        else f"a shadow: {r.ref} also answers {r.percent:g}% of the requests for {job.name!r}, unseen"
    )
    console.print(f"rollout {r.id} started, {what} (production: {job.name}@{r.production_version})")
    if r.mode == "canary":
        console.print(
            f"[dim]the guard stops it if it fails more often than production (alpha {r.settings['alpha']:g}); "
            "`instil rollout status` shows the figures, `instil rollout promote` gates and promotes it[/]"
        )


@rollout_app.command("status")
def rollout_status(
    spec: SpecArg = Path("instil.yaml"),
    rollout_id: Annotated[
        int | None, typer.Option("--id", help="A past rollout (default: the running one, else the latest).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """A rollout's figures per arm: online pass rates with intervals, agreement, latency, cost; the guard."""
    from instil import rollout

    job = _load(spec)
    with _open_store(job) as store:
        s = rollout.status(job, store, rollout_id)
    if as_json:
        console.print_json(json.dumps(s.to_dict()))
        return
    _print_rollout(s)


def _print_rollout(s) -> None:
    r = s.rollout
    state = {"running": "[green]running[/]", "stopped": "[red]stopped by the guard[/]"}.get(r.status, r.status)
    console.print(
        f"rollout {r.id}: {r.ref} as a {r.mode} on {r.percent:g}% against production {r.job}@{r.production_version}, "
        f"{state}, since {r.started_at:%Y-%m-%d %H:%M} UTC"
    )
    if r.reason:
        console.print("  " + _escape(r.reason), soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ("arm", "versions", "requests", "errors", "pass rate (95%)", "p50", "p95", "first token", "per 1k",
               "per success")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("arm", "versions") else "right")

    def rate(i) -> str:
        return "-" if i is None else f"{i.estimate:.1%} [{i.low:.1%}, {i.high:.1%}]"

    def ms(x) -> str:
        return "-" if x is None else f"{x * 1000:.0f} ms"

    def cost(x) -> str:
        return "-" if x is None else f"{x:.4g}"

    for a in s.arms:
        table.add_row(
            a.arm, ",".join(str(v) for v in a.versions) or "-", str(a.requests), str(a.errors),
            rate(a.pass_rate) + (f" of {a.graded}" if a.graded else ""), ms(a.latency_p50_s), ms(a.latency_p95_s),
            ms(a.first_token_p50_s), cost(a.cost_per_1k), cost(a.cost_per_success),
        )  # fmt: skip
    console.print(table)
    if not s.graded:
        console.print("[yellow]no trace was graded: the job has no reference-free graders, so the guard sees only "
                      "server errors[/]")  # fmt: skip
    if r.mode == "shadow":
        console.print(f"agreement with production: {rate(s.agreement)} of {s.pairs} pairs")
        for prod, shadow in s.disagreements[:5]:
            console.print(f"  [dim]differs: instil traces show {prod}  /  {shadow}[/]")
    else:
        console.print("guard: " + _escape(s.guard.reason()), soft_wrap=True)


@rollout_app.command("promote")
def rollout_promote(
    spec: SpecArg = Path("instil.yaml"),
    min_requests: Annotated[
        int | None, typer.Option(help="Answers the candidate must have given first (default: rollout.min_requests).")
    ] = None,
) -> None:
    """Promote the running rollout's version: enough online evidence, the guard not stopped, and the gate passed.

    Exit code: 0 promoted, 1 otherwise (refused by the gate, not ready, stopped, or an error).
    """
    from transformers.utils import logging as hf_logging

    from instil import rollout

    hf_logging.disable_progress_bar()
    job = _load(spec)
    try:
        with _open_store(job) as store:
            done = rollout.promote(job, store, min_requests=min_requests)
    except InstilError as e:
        _print_error(e)
        raise typer.Exit(1) from None
    p = done.promotion
    colour = "green" if p.decision.promoted else "red"
    lines = _escape(p.summary()).split("\n")
    lines[0] = f"[bold {colour}]{lines[0]}[/]"
    console.print("\n".join(lines), soft_wrap=True)
    console.print(f"rollout {done.rollout.id}: {done.rollout.status}")
    raise typer.Exit(0 if p.decision.promoted else 1)


@rollout_app.command("abort")
def rollout_abort(
    spec: SpecArg = Path("instil.yaml"),
    reason: Annotated[str, typer.Option(help="Why, for the record.")] = "aborted by hand",
) -> None:
    """End the running rollout: production answers every request again (a running server, within a second)."""
    from instil import rollout

    job = _load(spec)
    with _open_store(job) as store:
        r = rollout.abort(store, job.name, reason)
    console.print(f"rollout {r.id} of {r.ref} aborted; production answers every request")


# ---- review ----------------------------------------------------------------------------------------------------------
def _reviewer(by: str | None) -> str:
    import getpass

    return by or getpass.getuser()


@review_app.callback(invoke_without_command=True)
def review_cmd(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Option(help="The job spec file.")] = Path("instil.yaml"),
    by: Annotated[str | None, typer.Option(help="Who decides (kept with each decision; default: your login).")] = None,
) -> None:
    """Review what went wrong in production: failed graders, shadow disagreements, feedback (a terminal UI).

    Without a subcommand: collect new items, then open the queue, grouped, in the terminal.
    """
    if ctx.invoked_subcommand is not None:
        return
    from instil.tui import run_review

    job = _load(spec)
    with _open_store(job) as store:
        decided = run_review(job, store, _reviewer(by))
        counts = store.count_review_items(job.name)
    console.print(
        f"{decided} decided; queue: {counts['open']} open, {counts['accepted']} accepted, {counts['corrected']} "
        f"corrected, {counts['discarded']} discarded. `instil review export` makes them training data"
    )


@review_app.command("list")
def review_list(
    spec: SpecArg = Path("instil.yaml"),
    status: Annotated[str, typer.Option(help="open, accepted, corrected, discarded, or all.")] = "open",
    group: Annotated[bool, typer.Option("--group", help="Show the open items grouped, as the UI does.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the items as JSON.")] = False,
) -> None:
    """Collect new items from the traces, then list the queue."""
    from instil import review

    job = _load(spec)
    with _open_store(job) as store:
        found = review.collect(job, store)
        if group:
            groups = review.groups(job, store)
            items = [i for g in groups for i in g.items]
        else:
            items = store.list_review_items(job.name, status=None if status == "all" else status)
    if as_json:
        console.print_json(json.dumps({"added": found.added, "items": [asdict(i) for i in items]}, default=str))
        return
    if found.total:
        console.print(f"collected {found.total} new: " + ", ".join(f"{n} {k}" for k, n in found.added.items() if n))
    if group:
        for g in groups:
            console.print(f"[bold]{len(g.items):>4}[/]  {_escape(g.label)}  [dim]ids {_ids(g.ids)}[/]")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("id", "kind", "status", "version", "asked", "answer", "why", "on offer"):
        table.add_column(
            col, overflow="ellipsis", max_width=40 if col in ("asked", "answer", "why", "on offer") else None
        )
    for i in items:
        asked = next((str(m.get("content")) for m in reversed(i.messages) if m.get("role") == "user"), "")
        table.add_row(
            str(i.id), i.kind, i.status, str(i.version or "-"), _escape(" ".join(asked.split())[:80]),
            _escape(" ".join((i.output or "").split())[:80]), _escape(i.reason or "-"), _escape(i.suggestion or "-"),
        )  # fmt: skip
    console.print(table)


def _ids(ids: list[int]) -> str:
    return ",".join(map(str, ids[:12])) + (f",... ({len(ids)})" if len(ids) > 12 else "")


@review_app.command("decide")
def review_decide(
    ids: Annotated[list[int], typer.Argument(help="The items' ids (`instil review list`).")],
    spec: Annotated[Path, typer.Option(help="The job spec file.")] = Path("instil.yaml"),
    accept: Annotated[bool, typer.Option("--accept", help="The answer was right.")] = False,
    correct: Annotated[str | None, typer.Option(help="The right answer.")] = None,
    discard: Annotated[bool, typer.Option("--discard", help="Not worth learning from.")] = False,
    by: Annotated[str | None, typer.Option(help="Who decides (default: your login).")] = None,
) -> None:
    """Decide items from the command line (a script's review): --accept, --correct TEXT or --discard."""
    from instil import review

    chosen = [a for a, on in (("accept", accept), ("correct", correct is not None), ("discard", discard)) if on]
    if len(chosen) != 1:
        raise typer.BadParameter("give exactly one of --accept, --correct TEXT, --discard", param_hint="decision")
    job = _load(spec)
    with _open_store(job) as store:
        done = review.decide(job, store, ids, chosen[0], by=_reviewer(by), correction=correct)
    console.print(f"{len(done)} item(s) {done[0].status if done else 'decided'} by {_reviewer(by)}")


@review_app.command("export")
def review_export(spec: SpecArg = Path("instil.yaml")) -> None:
    """Accepted and corrected items into the job's corrections (SFT) and preferences (pairs), the holdout kept out."""
    from instil import review

    job = _load(spec)
    with _open_store(job) as store:
        out = review.corrections(job, store)
    console.print(out.summary())
    if out.corrections is not None:
        console.print(
            f"corrections: {out.corrections.ref}" + (f", preferences: {out.preferences.ref}" if out.preferences else "")
        )


# ---- spec ------------------------------------------------------------------------------------------------------------
@spec_app.command("check")
def spec_check(spec: SpecArg = Path("instil.yaml")) -> None:
    """Validate a job spec and summarise it."""
    from instil.spec import load_spec

    job = load_spec(spec)
    table = Table(title=f"{job.name}: {spec}", show_header=False, title_justify="left")
    table.add_row(
        "output",
        job.output.type + (f" (labels: {', '.join(job.output.labels)})" if job.output.labels else ""),
    )
    table.add_row(
        "graders",
        ", ".join(
            f"[bold]{g.name}[/] ({g.type}, primary)" if g.name == job.primary_grader else f"{g.name} ({g.type})"
            for g in job.graders
        ),
    )
    missing = []
    for src in job.data:
        path = job.resolve(src.path)
        table.add_row(
            f"data ({src.role})",
            f"{src.path} [{src.format}]" + ("" if path.exists() else " [red](missing)[/]"),
        )
        if not path.exists():
            missing.append(src.path)
    table.add_row("model", job.model.base + (f" @ {job.model.revision}" if job.model.revision else ""))
    table.add_row("training", f"{job.training.method} / {job.training.adapter}")
    table.add_row("gate", f"alpha {job.gate.alpha}, margin {job.gate.non_inferiority_margin}")
    console.print(table)
    if missing:
        err.print(f"[yellow]warning:[/] data file(s) not found yet: {', '.join(missing)}")
    for outside in job.paths_outside():
        err.print(f"[yellow]warning:[/] {_escape(outside)}", soft_wrap=True)
    console.print("[green]spec is valid[/]")


@spec_app.command("schema")
def spec_schema(
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON Schema instead of a field list.")] = False,
) -> None:
    """List every spec field with its meaning (or print the JSON Schema)."""
    from instil.spec import JobSpec, describe_fields

    if as_json:
        console.print_json(json.dumps(JobSpec.model_json_schema(by_alias=True)))
        return
    table = Table("field", "type", "default", "meaning", show_lines=False)
    for row in describe_fields():
        table.add_row(*row)
    console.print(table)


# ---- data ------------------------------------------------------------------------------------------------------------
def _load(spec: Path):
    from instil.spec import load_spec

    return load_spec(spec)


def _is_spec(path: Path) -> bool:
    return path.suffix in {".yaml", ".yml"}


def _open_store(job):
    from instil.env import home_dir
    from instil.store import Store

    return Store.open(home=home_dir(job.root))


@data_app.command("validate")
def data_validate(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Data files; the spec's sources when none is given.")
    ] = None,
    spec: Annotated[
        Path | None, typer.Option(help="Check outputs against this job spec (schema, labels, context).")
    ] = None,
    format: Annotated[
        str,
        typer.Option("--format", help="auto, chat, preference, prompt_completion, alpaca, sharegpt, csv, hf_disk."),
    ] = "auto",
    rejects: Annotated[
        Path | None,
        typer.Option(
            help="Where rejected lines go (default: rejects/<first file's stem>.rejects.jsonl in the instil home, "
            "$INSTIL_HOME or .instil beside the spec or in the current folder)."
        ),
    ] = None,
    tokenizer: Annotated[str | None, typer.Option(help="A local tokenizer folder to count tokens with.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest example allowed, in tokens.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    limit: Annotated[int, typer.Option(help="Findings shown (all are counted).")] = 50,
) -> int:
    """Check data files line by line; every finding names its file, line and field. Exit 1 on errors."""
    from instil.data.tokens import TokenCounter
    from instil.data.validate import validate_files
    from instil.env import home_dir

    job = None
    if spec is None and not files and Path("instil.yaml").exists():
        spec = Path("instil.yaml")
    if spec is not None:
        job = _load(spec)
    if not files:
        if job is None:
            raise typer.BadParameter("give data files, or --spec with data sources", param_hint="FILES")
        files = [job.resolve(src.path) for src in job.data]
        if format == "auto" and len({s.format for s in job.data}) == 1:
            format = job.data[0].format
    counter = TokenCounter.from_tokenizer(tokenizer) if tokenizer else None
    # Outputs go under the instil home, never beside an input (which may be read-only, or anywhere).
    home = home_dir(job.root if job is not None else Path.cwd())
    rejects = rejects or home / "rejects" / f"{files[0].stem}.rejects.jsonl"
    report = validate_files(
        files, format=format, spec=job, counter=counter, max_tokens=max_tokens, rejects_path=rejects
    )
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
        return 0 if report.ok else 1
    _print_findings(report, limit)
    return 0 if report.ok else 1


def _print_findings(report, limit: int) -> None:

    for f in report.findings[:limit]:
        colour = "red" if f.severity == "error" else "yellow"
        where = f.file if f.line is None else f"{f.file}:{f.line}"
        field = f" {escape(f.field)}:" if f.field else ""
        console.print(
            rf"{escape(where)}:{field} [{colour}]{f.severity}[/]: {escape(f.message)} [dim]\[{f.code}][/]",
            soft_wrap=True,
        )
    hidden = report.n_errors + report.n_warnings - min(limit, len(report.findings))
    if hidden > 0:
        console.print(f"[dim]... and {hidden} more (use --json, or read the rejects file)[/]")
    if report.counts:
        table = Table("finding", "count", title="findings by kind", title_justify="left")
        for code, n in sorted(report.counts.items(), key=lambda kv: -kv[1]):
            table.add_row(code, str(n))
        console.print(table)
    verdict = "[green]ok[/]" if report.ok else "[red]errors found[/]"
    console.print(
        f"{report.n_lines} records: {report.n_valid} valid, {report.n_rejected} rejected; "
        f"{report.n_errors} errors, {report.n_warnings} warnings: {verdict}"
    )
    if report.rejects_path and report.n_rejected:
        console.print(f"rejected lines (with reasons) written to [bold]{report.rejects_path}[/]", soft_wrap=True)


@data_app.command("stats")
def data_stats(
    target: Annotated[Path, typer.Argument(help="A job spec (its training sources) or a data file.")] = Path(
        "instil.yaml"
    ),
    dataset: Annotated[
        str | None,
        typer.Option(help="With a spec: a recorded dataset instead (raw, curated, train, holdout, pool)."),
    ] = None,
    epochs: Annotated[float, typer.Option(help="Epochs for the training-token estimate.")] = 3.0,
    price: Annotated[float | None, typer.Option(help="Price per million training tokens, for a cost estimate.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="A local tokenizer folder to count tokens with.")] = None,
    format: Annotated[str, typer.Option("--format", help="The data file's format.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Counts, token distributions, label balance, output lengths, training tokens and cost for N epochs."""
    from instil.data.formats import read_examples
    from instil.data.stats import compute_stats
    from instil.data.tokens import TokenCounter
    from instil.jobdata import dataset_name, read_sources

    labels = label_field = None
    counter = TokenCounter.from_tokenizer(tokenizer) if tokenizer else None
    if _is_spec(target):
        job = _load(target)
        labels, label_field = job.output.labels, job.output.label_field
        counter = counter or TokenCounter.from_spec(job)
        if dataset:
            with _open_store(job) as store:
                version = store.get_dataset(dataset_name(job, dataset))
                examples = list(store.iter_examples(version.sha256))
        else:
            examples = read_sources(job)
        stats = compute_stats(
            examples,
            counter=counter,
            labels=labels,
            label_field=label_field,
            epochs=epochs,
            price_per_million=price,
            max_tokens=job.model.max_length,
        )
    else:
        stats = compute_stats(
            read_examples(target, format=format), counter=counter, epochs=epochs, price_per_million=price
        )
    if as_json:
        console.print_json(json.dumps(stats.to_dict()))
        return
    _print_stats(stats)


def _print_stats(stats) -> None:
    est = " (estimated: no tokenizer)" if stats.tokens_estimated else ""
    table = Table(
        "per example",
        "min",
        "p50",
        "p90",
        "p99",
        "max",
        "mean",
        title=f"{stats.n_examples} examples",
        title_justify="left",
    )
    for name, d in (
        ("messages", stats.messages),
        ("tokens" + est, stats.total_tokens),
        ("assistant tokens", stats.assistant_tokens),
        ("answer characters", stats.output_chars),
    ):
        table.add_row(name, *(f"{v:,.0f}" for v in (d.min, d.p50, d.p90, d.p99, d.max)), f"{d.mean:,.1f}")
    console.print(table)
    if stats.labels:
        lab = Table("label", "examples", "share", title="labels", title_justify="left")
        for name, n in stats.labels.items():
            lab.add_row(name, str(n), f"{n / max(stats.n_examples, 1):.1%}")
        console.print(lab)
    if stats.tags:
        console.print("tags: " + ", ".join(f"{t} ({n})" for t, n in stats.tags.items()))
    line = f"training tokens for {stats.epochs:g} epochs: [bold]{stats.training_tokens:,}[/]"
    if stats.estimated_cost is not None:
        line += f", about [bold]{stats.estimated_cost:,.2f}[/] at {stats.price_per_million:g} per million"
    console.print(line)
    if stats.n_preference or stats.n_with_tools:
        console.print(f"{stats.n_preference} preference pairs, {stats.n_with_tools} examples with tools")
    for note in stats.notes:
        err.print(f"[yellow]note:[/] {note}")


@data_app.command("convert")
def data_convert(
    source: Annotated[Path, typer.Argument(help="The file to read.")],
    dest: Annotated[Path, typer.Argument(help="The file (or folder, for hf_disk) to write.")],
    from_format: Annotated[str, typer.Option("--from", help="The source's format.")] = "auto",
    to_format: Annotated[
        str, typer.Option("--to", help="chat, preference, prompt_completion, alpaca, sharegpt, csv, hf_disk.")
    ] = "chat",
) -> None:
    """Convert a data file between formats (through instil's one record type)."""
    from instil.data.formats import read_examples
    from instil.data.writers import write_examples

    n = write_examples(read_examples(source, format=from_format), dest, format=to_format)
    console.print(f"wrote {n} examples to [bold]{dest}[/] ({to_format})")


@data_app.command("curate")
def data_curate(
    spec: Annotated[Path, typer.Argument(help="A job spec (its training sources), or a data file.")] = Path(
        "instil.yaml"
    ),
    out: Annotated[
        Path | None, typer.Option(help="With a data file: where to write the kept examples (chat JSONL).")
    ] = None,
    contradictions: Annotated[
        str,
        typer.Option(help="How contradictions are resolved: report (keep all), drop, majority, first, last."),
    ] = "majority",
    choose: Annotated[
        list[str] | None,
        typer.Option(help="GROUP=KEY: keep this example of a contradiction group (repeatable; overrides the rule)."),
    ] = None,
    drop_near: Annotated[
        bool, typer.Option("--drop-near", help="Drop near-duplicates too (the first of each group is kept).")
    ] = False,
    redact: Annotated[bool, typer.Option("--redact", help="Redact PII and secrets in the kept examples.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    limit: Annotated[int, typer.Option(help="Groups shown per kind.")] = 10,
) -> None:
    """Find exact and near duplicates, contradictions and PII; with a spec, record the raw and curated versions."""
    from instil.jobdata import curate_job

    choices = {}
    for item in choose or []:
        group, sep, key = item.partition("=")
        if not sep or not group or not key:
            raise typer.BadParameter(f"{item!r}: write GROUP=KEY", param_hint="--choose")
        choices[group] = key
    recorded = None
    if _is_spec(spec):
        job = _load(spec)
        with _open_store(job) as store:
            recorded = curate_job(
                job,
                store,
                contradictions=contradictions,
                choices=choices,
                drop_near_duplicates=drop_near,
                redact_pii=redact,
            )
        report = recorded.report
    else:
        from instil.data.curate import curate_file
        from instil.data.formats import read_examples

        report = curate_file(
            spec,
            out,
            contradictions=contradictions,
            choices=choices,
            drop_near=drop_near,
            redact_pii=redact,
            reader=read_examples,
        )
    if as_json:
        hashes = {"raw": recorded.raw.sha256, "curated": recorded.curated.sha256} if recorded else {}
        console.print_json(json.dumps({**hashes, **report.to_dict()}))
        return
    _print_groups("exact duplicates (first kept)", report.exact_groups, limit)
    _print_groups(
        "near duplicates (kept)" if not drop_near else "near duplicates (first kept)",
        report.near_groups,
        limit,
    )
    _print_groups(
        f"contradictions (rule: {report.contradiction_rule})",
        report.contradiction_groups,
        limit,
        resolved=report.resolved,
    )
    if report.pii:
        table = Table(
            "example",
            "field",
            "kind",
            "match",
            title=f"PII and secrets ({len(report.pii)})",
            title_justify="left",
        )
        for f in report.pii[:limit]:
            table.add_row(_short_source(f.source) if f.source else f.example_key, f.field, f.kind, f.preview)
        console.print(table)
        if not redact:
            err.print("[yellow]note:[/] PII was found and kept; pass --redact to mask it in the curated data")
    dropped = ", ".join(f"{n} {why}" for why, n in report.dropped.items()) or "none"
    console.print(f"{report.total} examples read, [bold]{report.kept}[/] kept (dropped: {dropped})")
    if recorded is not None:
        console.print(
            f"recorded [bold]{recorded.raw.ref}[/] {recorded.raw.short_hash} -> [bold]{recorded.curated.ref}[/] "
            f"{recorded.curated.short_hash}" + (f"; pool [bold]{recorded.pool.ref}[/]" if recorded.pool else "")
        )
    elif out is not None:
        console.print(f"kept examples written to [bold]{out}[/]", soft_wrap=True)
    if report.contradiction_groups and report.contradiction_rule == "report":
        err.print("[yellow]note:[/] contradictions were kept; choose with --choose GROUP=KEY or a rule")


def _short_source(source: str | None) -> str:
    """``file:line`` relative to the cwd when the file is under it."""
    if not source:
        return "?"
    path, _, line = source.rpartition(":")
    with contextlib.suppress(ValueError):
        path = str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    return f"{path}:{line}"


def _print_groups(title: str, groups, limit: int, resolved: dict | None = None) -> None:
    if not groups:
        console.print(f"{title}: none")
        return
    table = Table(
        "group",
        "examples",
        "kept" if resolved is not None else "where",
        title=f"{title}: {len(groups)}",
        title_justify="left",
    )
    for g in groups[:limit]:
        members = ", ".join(g.keys[:4]) + (f" (+{len(g.keys) - 4})" if len(g.keys) > 4 else "")
        if resolved is not None:
            table.add_row(g.id, members, ", ".join(resolved.get(g.id, [])) or "[red]none[/]")
        else:
            table.add_row(g.id, members, ", ".join(_short_source(s) for s in g.sources[:2]))
    console.print(table)
    if len(groups) > limit:
        console.print(f"[dim]... and {len(groups) - limit} more (--json for all)[/]")


@data_app.command("split")
def data_split(
    spec: SpecArg = Path("instil.yaml"),
    refreeze: Annotated[
        bool, typer.Option("--refreeze", help="Make a new holdout (old evaluations become incomparable).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Split the curated data into train and a frozen holdout (or keep the frozen one), with a leakage audit."""
    from instil.jobdata import split_job

    job = _load(spec)
    with _open_store(job) as store:
        out = split_job(job, store, refreeze=refreeze)
    leaks = out.audit.pairs if out.audit is not None else []
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "train": {"ref": out.train.ref, "sha256": out.train.sha256, "n": out.train.n_examples},
                    "holdout": {
                        "ref": out.holdout.ref,
                        "sha256": out.holdout.sha256,
                        "n": out.holdout.n_examples,
                    },
                    "reused_holdout": out.reused_holdout,
                    "left_out": [m.__dict__ for m in out.left_out],
                    "leaks": [m.__dict__ for m in leaks],
                }
            )
        )
        return
    how = "kept (frozen)" if out.reused_holdout else "frozen now"
    console.print(f"train   [bold]{out.train.ref}[/] {out.train.short_hash}: {out.train.n_examples} examples")
    console.print(
        f"holdout [bold]{out.holdout.ref}[/] {out.holdout.short_hash}: {out.holdout.n_examples} examples, {how}"
    )
    for m in out.left_out[:20]:
        err.print(f"[yellow]left out of train[/] (matches the holdout): {m.format()}", soft_wrap=True)
    if out.audit is not None:
        console.print("leakage audit: " + ("[green]clean[/]" if out.audit.clean else f"[red]{len(leaks)} pair(s)[/]"))
        for m in leaks[:20]:
            err.print(f"[red]leak:[/] {m.format()}")


@app.command()
def datasets(
    spec: SpecArg = Path("instil.yaml"),
    name: Annotated[str | None, typer.Option(help="Show every version of one dataset, with its lineage.")] = None,
) -> None:
    """List the job's dataset versions with their hashes and parents."""
    job = _load(spec)
    with _open_store(job) as store:
        versions = (
            store.list_versions(name)
            if name
            else [v for v in store.list_datasets() if v.name.startswith(job.name + ":")]
        )
        by_id = {}
        table = Table(title=f"{job.name} datasets in {store.home}", title_justify="left")
        table.add_column("dataset", no_wrap=True)
        for col in ("kind", "examples", "sha256", "parents", "frozen"):
            table.add_column(col, no_wrap=True)
        for v in versions:
            parents = [by_id.get(p) or store.get_version(p) for p in v.parents]
            by_id[v.id] = v
            table.add_row(
                v.ref.removeprefix(job.name + ":"),
                v.kind,
                str(v.n_examples),
                v.short_hash[:8],
                ", ".join(p.ref.removeprefix(job.name + ":") for p in parents),
                "yes" if v.frozen else "",
            )
    console.print(table)


@app.command()
def runs(
    spec: SpecArg = Path("instil.yaml"),
    kind: Annotated[str | None, typer.Option(help="Only runs of this stage (train, eval, curate, split...).")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only runs with this status (running, succeeded, failed, interrupted...).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show the newest this many.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """List the job's runs, newest first: status (a run whose process died is [yellow]interrupted[/]), when, how long,
    where, and what resumed what."""
    job = _load(spec)
    with _open_store(job) as store:  # opening marks runs whose process is gone as interrupted
        every = store.list_runs(job.name)
    resumed_by: dict[int, int] = {}
    for r in every:
        if r.resumed_from and r.resumed_from[0] is not None:
            resumed_by.setdefault(r.resumed_from[0], r.id)
    shown = [r for r in every if (kind is None or r.kind == kind) and (status is None or r.status == status)]
    shown = shown[::-1][:limit]
    if as_json:
        out = [
            {
                **{k: v for k, v in asdict(r).items() if k not in ("config", "datasets")},
                "created_at": r.created_at.isoformat(),
                "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                "heartbeat_at": r.heartbeat_at.isoformat() if r.heartbeat_at else None,
                "resumed_from": {"run_id": r.resumed_from[0], "step": r.resumed_from[1]} if r.resumed_from else None,
                "resumed_by": resumed_by.get(r.id),
                "datasets": [{"version_id": v, "role": role} for v, role in r.datasets],
            }
            for r in shown
        ]
        console.print_json(json.dumps({"job": job.name, "runs": out}))
        return
    if not shown:
        console.print(f"{job.name} has no runs" + (" like that" if kind or status else " yet: run [bold]instil run[/]"))
        return
    styles = {"succeeded": "green", "failed": "red", "interrupted": "yellow", "cancelled": "yellow", "running": "cyan"}
    table = Table(title=f"{job.name} runs", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("run", "kind", "status", "started", "took", "where", "note"):
        table.add_column(col, no_wrap=col != "note")
    for r in shown:
        end = r.finished_at or r.heartbeat_at
        took = "-" if end is None else _duration((end - r.created_at).total_seconds())
        if r.status == "interrupted":  # it died some time after its last heartbeat
            took = f"≥{took}" if end is not None and end > r.created_at else "?"
        notes = []
        if r.resumed_from:
            run_id, step = r.resumed_from
            notes.append(f"resumed from {f'run {run_id}' if run_id is not None else 'a checkpoint'} at step {step}")
        if r.id in resumed_by:
            notes.append(f"resumed by run {resumed_by[r.id]}")
        elif r.status == "interrupted" and r.kind == "train":
            notes.append("instil train --resume continues it")
        if r.error and r.status == "interrupted":
            notes.insert(0, r.error.split(";")[0].replace(f" (pid {r.pid} on {r.host})", ""))  # "where" has those
        elif r.error and r.status != "succeeded":
            notes.append(r.error.splitlines()[0][:160])
        table.add_row(
            str(r.id),
            r.kind,
            f"[{styles.get(r.status, 'default')}]{r.status}[/]",
            r.created_at.strftime("%m-%d %H:%M:%S"),
            took + ("…" if r.status == "running" else ""),
            _escape(f"{r.host} pid {r.pid}" if r.host else "-"),
            _escape("; ".join(notes)),
        )
    console.print(table)


# ---- traces ----------------------------------------------------------------------------------------------------------
Since = Annotated[
    str | None, typer.Option(help="Only traces from then on: an ISO time (2026-12-01T09:00) or an age (30m, 2h, 7d).")
]
Until = Annotated[str | None, typer.Option(help="Only traces before then: an ISO time or an age (30m, 2h, 7d).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Only traces this model answered (triage@3, gpt-4o).")]
TagOpt = Annotated[str | None, typer.Option(help="Only traces with this tag (from the X-Instil-Tags header).")]
UserOpt = Annotated[str | None, typer.Option(help="Only traces of this user (the request's user field).")]


def _when(value: str | None, option: str):
    """A time from an ISO string or an age before now; a bad value is a usage error that names the option."""
    import re
    from datetime import UTC, datetime, timedelta

    if value is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", value.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: float(m.group(1))})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            "give an ISO time (2026-12-01T09:00) or an age (30m, 2h, 7d)", param_hint=option
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _trace_filter(job, model, version, since, until, failed, passing, tag, user, source, status=None):
    from instil.store import TraceFilter

    if failed and passing:
        raise typer.BadParameter("--failed and --passing exclude each other", param_hint="--failed")
    return TraceFilter(
        job=job.name,
        model=model,
        version=version,
        source=source,
        since=_when(since, "--since"),
        until=_when(until, "--until"),
        passed=False if failed else (True if passing else None),
        tag=tag,
        user=user,
        status=status,
    )


@traces_app.command("list")
def traces_list(
    spec: SpecArg = Path("instil.yaml"),
    model: ModelOpt = None,
    version: Annotated[int | None, typer.Option(help="Only traces this model version of the job answered.")] = None,
    since: Since = None,
    until: Until = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only traces some grader failed.")] = False,
    passing: Annotated[bool, typer.Option("--passing", help="Only traces every grader passed.")] = False,
    tag: TagOpt = None,
    user: UserOpt = None,
    source: Annotated[str | None, typer.Option(help="Only 'local' (a served model) or 'proxy' (an upstream).")] = None,
    status: Annotated[int | None, typer.Option(help="Only traces answered with this HTTP status.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show the newest this many.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the traces as JSON (whole).")] = False,
) -> None:
    """List the job's traces, newest first: who answered, how fast, at what cost, and what the graders said."""
    job = _load(spec)
    where = _trace_filter(job, model, version, since, until, failed, passing, tag, user, source, status)
    with _open_store(job) as store:
        total = store.count_traces(where)
        shown = store.list_traces(where, limit=limit)
    if as_json:
        console.print_json(json.dumps({"job": job.name, "total": total, "traces": [t.to_dict() for t in shown]}))
        return
    if not shown:
        from instil.store import TraceFilter

        filtered = where != TraceFilter(job=job.name)
        console.print(f"{job.name} has no traces" + (" like that" if filtered else " yet: instil serve keeps them"))
        return
    table = Table(
        title=f"{job.name} traces ({len(shown)} of {total:,}, newest first)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col in ("id", "time", "model", "status", "latency", "tokens", "graders", "user", "tags", "output"):
        table.add_column(
            col, no_wrap=col not in ("output",), overflow="ellipsis", max_width=60 if col == "output" else None
        )
    for t in shown:
        graded = (
            "-"
            if t.passed is None
            else (
                "[green]pass[/]"
                if t.passed
                else "[red]fail: "
                + _escape(", ".join(n for n, g in (t.grades or {}).items() if g.get("passed") is False))
                + "[/]"
            )
        )
        tokens = f"{t.prompt_tokens}+{t.completion_tokens}" if t.prompt_tokens is not None else "-"
        output = t.output if t.output is not None else (json.dumps(t.tool_calls) if t.tool_calls else "")
        if t.status != 200:
            output = json.dumps(t.error)[:200] if t.error else ""
        table.add_row(
            _escape(t.id[:20]),
            t.created_at.strftime("%m-%d %H:%M:%S"),
            _escape(t.model + (f" via {t.upstream}" if t.upstream else "")),
            str(t.status) if t.status == 200 else f"[red]{t.status}[/]",
            f"{t.latency_s * 1000:.0f} ms",
            tokens,
            graded,
            _escape(t.user or "-"),
            _escape(",".join(t.tags) or "-"),
            _escape(" ".join(output.split())[:200]),
        )
    console.print(table)


@traces_app.command("show")
def traces_show(
    trace_id: Annotated[str, typer.Argument(help="The trace's id (chatcmpl-...), or its first 8 characters or more.")],
    spec: SpecArg = Path("instil.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
) -> None:
    """Show one trace whole: the conversation as the model saw it, the answer, usage, latency, cost and grades."""
    job = _load(spec)
    with _open_store(job) as store:
        t = store.get_trace(trace_id)
    if as_json:
        console.print_json(json.dumps(t.to_dict()))
        return
    where = f"{t.model}" + (f" via upstream {t.upstream}" if t.upstream else "") + f" ({t.source})"
    console.print(f"[bold]{_escape(t.id)}[/]  {t.created_at.isoformat()}  {_escape(where)}  status {t.status}")
    first = f", first token {t.first_token_s * 1000:.0f} ms" if t.first_token_s is not None else ""
    cost = f", cost {t.cost:.6f}" if t.cost is not None else ""
    console.print(
        f"latency {t.latency_s * 1000:.0f} ms{first}; tokens {t.prompt_tokens} in, {t.completion_tokens} out{cost}"
        + (f"; user {_escape(t.user)}" if t.user else "")
        + (f"; tags {_escape(', '.join(t.tags))}" if t.tags else ""),
        soft_wrap=True,
    )
    for m in t.messages:
        content = m.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        console.print(f"[dim]{_escape(str(m.get('role')))}:[/] {_escape(text or '')}", soft_wrap=True)
    if t.status == 200:
        console.print(f"[bold]answer:[/] {_escape(t.output or '')}", soft_wrap=True)
        for call in t.tool_calls or []:
            console.print(f"[bold]tool call:[/] {_escape(json.dumps(call, ensure_ascii=False))}", soft_wrap=True)
    else:
        console.print(f"[red]error:[/] {_escape(json.dumps(t.error, ensure_ascii=False))}", soft_wrap=True)
    for name, g in (t.grades or {}).items():
        verdict = "error" if "error" in g else ("[green]pass[/]" if g.get("passed") else "[red]fail[/]")
        why = g.get("error") or g.get("reason") or ""
        console.print(f"  {_escape(name)}: {verdict} {_escape(str(why))}", soft_wrap=True)


@traces_app.command("export")
def traces_export(
    out: Annotated[Path, typer.Argument(help="The Parquet file to write (it must not exist).")],
    spec: SpecArg = Path("instil.yaml"),
    model: ModelOpt = None,
    since: Since = None,
    until: Until = None,
    tag: TagOpt = None,
    user: UserOpt = None,
) -> None:
    """Export the job's traces to a Parquet file for a warehouse (nested fields as JSON text)."""
    from instil.jobdata import export_traces

    job = _load(spec)
    where = _trace_filter(job, model, None, since, until, False, False, tag, user, None)
    with _open_store(job) as store:
        n = export_traces(store, out, where)
    console.print(f"wrote {n:,} traces to {_escape(str(out))}")


@traces_app.command("prune")
def traces_prune(
    spec: SpecArg = Path("instil.yaml"),
    older_than_days: Annotated[
        int | None,
        typer.Option(min=1, help="Delete traces older than this (default: the spec's serve.retention_days)."),
    ] = None,
) -> None:
    """Delete the job's traces older than the retention period (a running server also does this daily)."""
    from datetime import UTC, datetime, timedelta

    from instil.store import TraceFilter

    job = _load(spec)
    days = older_than_days or job.serve.retention_days
    if days is None:
        raise typer.BadParameter(
            "give --older-than-days, or set serve.retention_days in the spec", param_hint="--older-than-days"
        )
    with _open_store(job) as store:
        gone = store.delete_traces(TraceFilter(job=job.name, until=datetime.now(UTC) - timedelta(days=days)))
    console.print(f"deleted {gone:,} traces older than {days} days")


@data_app.command("refresh-holdout")
def data_refresh_holdout(
    spec: SpecArg = Path("instil.yaml"),
    since_days: Annotated[
        float | None, typer.Option(help="Only answers reviewed in the last this many days (default: all).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many reviewed answers, the newest.")] = None,
) -> None:
    """A new frozen holdout: the current one plus reviewed production answers no training version holds."""
    from datetime import UTC, datetime, timedelta

    from instil.review import refresh_holdout

    job = _load(spec)
    since = datetime.now(UTC) - timedelta(days=since_days) if since_days is not None else None
    with _open_store(job) as store:
        out = refresh_holdout(job, store, since=since, limit=limit)
    console.print(out.summary(), soft_wrap=True)
    if out.added:
        console.print("[dim]gates run on it from now on; decisions on the older holdout keep naming it[/]")


@data_app.command("import-traces")
def data_import_traces(
    spec: SpecArg = Path("instil.yaml"),
    passing: Annotated[
        bool, typer.Option("--passing", help="Only traces every grader passed (a teacher's good answers).")
    ] = False,
    model: ModelOpt = None,
    version: Annotated[int | None, typer.Option(help="Only traces this model version of the job answered.")] = None,
    since: Since = None,
    until: Until = None,
    tag: TagOpt = None,
    user: UserOpt = None,
    source: Annotated[str | None, typer.Option(help="Only 'local' or 'proxy' traces.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Take at most this many (the oldest first).")] = None,
) -> None:
    """Turn chosen traces into training data: validated and curated as the job's data, the frozen holdout kept out.

    They become the next version of the job's traces dataset, which the next instil run takes in with the sources."""
    from instil.jobdata import import_traces

    job = _load(spec)
    where = _trace_filter(job, model, version, since, until, False, False, tag, user, source)
    with _open_store(job) as store:
        got = import_traces(job, store, where, passing=passing, limit=limit)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_header=False)
    table.add_column("what")
    table.add_column("n", justify="right")
    for what, n in (
        ("traces read" + (" (passing only)" if passing else ""), got.read),
        ("imported", got.imported),
        ("rejected by validation", got.invalid),
        ("duplicates (already imported, or of each other)", got.duplicates),
        ("left out: they match the frozen holdout", got.left_out_for_holdout),
    ):
        table.add_row(what, f"{n:,}")
    console.print(table)
    if got.version is not None:
        v = got.version
        console.print(
            f"{_escape(v.ref)} holds {v.n_examples:,} examples ({v.short_hash}); "
            "the next [bold]instil run[/] trains on them",
            soft_wrap=True,
        )
    if got.validation is not None and got.invalid:
        _print_findings(got.validation, 5)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


# ---- entry point -----------------------------------------------------------------------------------------------------
def _print_eval_report(report: EvalReport) -> None:
    """One evaluation as two tables that fit 80 columns: quality (every grader with its 95% interval, the pass rate),
    then speed and cost; win rates and reuse on lines of their own."""
    title = f"run {report.run_id}: {report.holdout}, {report.n_examples} examples (primary: {report.primary})"
    graders = list(report.candidates[0].graders)
    quality = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    quality.add_column("candidate", no_wrap=True)
    for g in graders:
        quality.add_column(f"{g} (primary)" if g == report.primary else g, no_wrap=True)
    quality.add_column("pass rate", justify="right")
    speed = Table(
        title="speed and cost (prices from the spec's eval section)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col in ("candidate", "p50/p95 s", "tokens in/out", "$ / 1k", "$ / success"):
        speed.add_column(col, no_wrap=True, justify="left" if col == "candidate" else "right")
    for c in report.candidates:
        # The interval under the mean: three graders side by side still fit 80 columns.
        quality.add_row(
            c.name,
            *(f"{g.mean:.2f}\n[{g.low:.2f}, {g.high:.2f}]" for g in c.graders.values()),
            f"{c.success_rate:.0%}",
        )
        speed.add_row(
            c.name,
            f"{c.latency_p50_s:.2f}/{c.latency_p95_s:.2f}",
            f"{c.mean_input_tokens:,.0f} / {c.mean_output_tokens:,.0f}",
            f"{c.cost_per_1k:.3g}",
            "-" if c.cost_per_success is None else f"{c.cost_per_success:.3g}",
        )
    console.print(quality)
    console.print(speed)
    for c in report.candidates:
        if (w := c.win_rate) is not None:
            console.print(
                f"win rate of {_escape(c.name)} against {_escape(w.against)} (judge {_escape(w.judge)}, ties "
                f"half): {w.win_rate:.2f} [{w.low:.2f}, {w.high:.2f}], {w.wins} won, {w.ties} tied, "
                f"{w.losses} lost",
                soft_wrap=True,
            )
    reused = [f"{c.name} (run {c.reused_from})" for c in report.candidates if c.reused_from is not None]
    if reused:
        console.print(f"[dim]reused from earlier eval runs: {_escape(', '.join(reused))}[/]", soft_wrap=True)


def _print_failure_modes(report: EvalReport) -> None:
    for name, modes in report.failure_modes.items():
        for check in (modes.overfitting, modes.style_collapse, modes.forgetting):
            if check is not None:
                mark = "[bold red]FLAG[/]" if check.flagged else "[green]ok[/]"
                console.print(f"{mark} {_escape(name)}: {_escape(check.explanation)}", soft_wrap=True)


def _print_error(e: InstilError) -> None:
    err.print("[bold red]error:[/] " + _escape(str(e)), soft_wrap=True)
    if e.hint:
        err.print("[dim]hint:[/] " + _escape(e.hint), soft_wrap=True)


def _escape(text: str) -> str:

    return escape(text)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 error, 2 usage)."""
    # bitsandbytes warns at import (PEFT imports it) that an optional CPU kernel package is missing: noise here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="instil")
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # usage errors: typer's bundled click raises subclasses of this
        show = getattr(e, "show", None)
        show() if show else err.print(_escape(e.format_message()))
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        return 130
    except InstilError as e:
        _print_error(e)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
