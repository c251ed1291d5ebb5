"""The CLI as a user runs it: exit codes, messages on stderr, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from instil.cli import main


def test_init_then_check(tmp_path: Path, capsys):
    spec = tmp_path / "instil.yaml"
    assert main(["init", str(spec)]) == 0
    assert main(["spec", "check", str(spec)]) == 0
    out = capsys.readouterr()
    assert "spec is valid" in out.out
    assert "not found yet" in out.err  # the starter's data file does not exist yet


def test_init_refuses_to_overwrite(tmp_path: Path, capsys):
    spec = tmp_path / "instil.yaml"
    spec.write_text("mine")
    assert main(["init", str(spec)]) == 1
    assert "exists already" in capsys.readouterr().err
    assert spec.read_text() == "mine"


def test_bad_spec_is_one_clear_error(tmp_path: Path, capsys):
    spec = tmp_path / "instil.yaml"
    spec.write_text("name: x\nsystem_prompt: y\ngraders: []\ndata: []\nbogus: 1\n")
    assert main(["spec", "check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{spec}:5: bogus: unknown key" in err
    assert "graders: " in err and "data: " in err


def test_schema_lists_fields(capsys):
    assert main(["spec", "schema"]) == 0
    assert "system_prompt" in capsys.readouterr().out
    assert main(["spec", "schema", "--json"]) == 0
    assert '"system_prompt"' in capsys.readouterr().out


def test_console_script_runs_and_usage_errors_exit_2(tmp_path: Path):
    exe = Path(sys.executable).parent / "instil"
    done = subprocess.run([str(exe), "version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "transformers" in done.stdout
    done = subprocess.run([str(exe), "spec", "check", "--nope"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
