"""The `instil` command: a thin shell over the Python API. Each command parses, calls one API function, renders.

    instil init                      write a commented starter spec (instil.yaml)
    instil spec check instil.yaml    validate a spec, reporting every problem with file:line and field
    instil data validate FILE...     check data files line by line (rejects file, --json)
    instil --help                    everything else
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from instil import __version__
from instil.errors import InstilError

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
app.add_typer(data_app, name="data")

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

SpecArg = Annotated[Path, typer.Argument(help="The job spec file.", show_default=True)]


# ---- top level ----------------------------------------------------------------------------------------------------
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


# ---- spec -----------------------------------------------------------------------------------------------------------
@spec_app.command("check")
def spec_check(spec: SpecArg = Path("instil.yaml")) -> None:
    """Validate a job spec and summarise it."""
    from instil.spec import load_spec

    job = load_spec(spec)
    table = Table(title=f"{job.name}: {spec}", show_header=False, title_justify="left")
    table.add_row("output", job.output.type + (f" (labels: {', '.join(job.output.labels)})" if job.output.labels else ""))
    table.add_row(
        "graders",
        ", ".join(f"[bold]{g.name}[/] ({g.type}, primary)" if g.name == job.primary_grader else f"{g.name} ({g.type})"
                  for g in job.graders),
    )
    missing = []
    for src in job.data:
        path = job.resolve(src.path)
        table.add_row(f"data ({src.role})", f"{src.path} [{src.format}]" + ("" if path.exists() else " [red](missing)[/]"))
        if not path.exists():
            missing.append(src.path)
    table.add_row("model", job.model.base + (f" @ {job.model.revision}" if job.model.revision else ""))
    table.add_row("training", f"{job.training.method} / {job.training.adapter}")
    table.add_row("gate", f"alpha {job.gate.alpha}, margin {job.gate.non_inferiority_margin}")
    console.print(table)
    if missing:
        err.print(f"[yellow]warning:[/] data file(s) not found yet: {', '.join(missing)}")
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


# ---- entry point ------------------------------------------------------------------------------------------------------
def _print_error(e: InstilError) -> None:
    err.print("[bold red]error:[/] " + _escape(str(e)), soft_wrap=True)
    if e.hint:
        err.print("[dim]hint:[/] " + _escape(e.hint), soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 error, 2 usage)."""
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
