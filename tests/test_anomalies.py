"""Training anomalies: LossWatch on hand-written losses, a real diverging run stopped by the callback, report_to."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from instil.data.records import Example, Message
from instil.errors import DependencyError, InstilError
from instil.spec import parse_spec
from instil.store import Store
from instil.train import anomalies
from instil.train.anomalies import Anomaly, AnomalyCallback, LossWatch, resolve_report_to


def feed(watch: LossWatch, losses: list[float], **extra: float) -> list[Anomaly]:
    found = []
    for step, loss in enumerate(losses, start=1):
        found += watch.observe(step, loss=loss, **extra)
    return found


def decreasing(n: int, start: float = 5.0) -> list[float]:
    """A healthy noisy curve: falls geometrically, with a +-3% wiggle."""
    return [start * 0.97**i * (1 + 0.03 * math.sin(7 * i)) for i in range(n)]


# ---- LossWatch -------------------------------------------------------------------------------------------------------
def test_a_healthy_decreasing_loss_shows_nothing():
    watch = LossWatch(max_steps=200, vocab_size=320)
    assert feed(watch, decreasing(200), grad_norm=1.2) == []
    assert len(watch.losses) == 200


def test_a_nan_loss_or_gradient_norm_is_an_error_naming_the_step():
    watch = LossWatch()
    assert feed(watch, [3.0, 2.9, 2.8]) == []
    [nan] = watch.observe(4, loss=float("nan"))
    assert (nan.step, nan.kind, nan.level) == (4, "nan", "error")
    assert "step 4" in nan.message and "learning rate" in nan.message and "bf16" in nan.message
    [inf] = watch.observe(5, loss=2.7, grad_norm=float("inf"))
    assert inf.kind == "nan" and inf.value == math.inf and "gradient norm" in inf.message
    assert watch.observe(6, eval_loss=float("nan"))[0].kind == "nan"
    assert [v for _, v in watch.losses] == [3.0, 2.9, 2.8]  # non-finite steps are not kept as losses


def test_a_spike_above_three_times_the_rolling_median_is_a_warning_with_the_values():
    losses = decreasing(30, start=2.0)
    spike_at = 31
    watch = LossWatch()
    assert feed(watch, losses) == []
    median = sorted(losses[-20:])[9:11]
    [spike] = watch.observe(spike_at, loss=10.0)
    assert (spike.step, spike.kind, spike.level, spike.value) == (spike_at, "spike", "warning", 10.0)
    assert "step 31" in spike.message and "10" in spike.message
    assert f"{(median[0] + median[1]) / 2:.4g}" in spike.message  # the median it was compared with
    assert watch.observe(32, loss=losses[-1] * 2.5) == []  # 2.5x the median is below the 3x threshold


def test_no_spike_before_enough_points_nor_for_tiny_absolute_jumps():
    watch = LossWatch()
    assert feed(watch, [1.0, 9.0]) == []  # too few points for a median
    near_zero = LossWatch()
    assert feed(near_zero, [0.01] * 10 + [0.05]) == []  # 5x, but only 0.04 above: noise, not a spike


def test_a_flat_loss_early_in_training_is_reported_once():
    watch = LossWatch(max_steps=100)
    flat = [2.0 + 0.01 * (-1) ** i for i in range(40)]
    found = feed(watch, flat)
    assert [(a.step, a.kind, a.level) for a in found] == [(20, "flat", "warning")]
    assert "last 20 logged steps" in found[0].message


def test_a_flat_loss_late_in_training_is_convergence_not_an_anomaly():
    watch = LossWatch(max_steps=100)
    assert feed(watch, decreasing(60)) == []
    assert [watch.observe(step, loss=0.8) for step in range(61, 101)] == [[]] * 40


def test_a_loss_stuck_at_ln_vocab_is_random_guessing():
    vocab = 320
    watch = LossWatch(max_steps=1000, vocab_size=vocab, flat_eps=-1.0)  # only the chance check can fire
    chance = math.log(vocab)
    found = feed(watch, [chance * (1 + 0.01 * math.sin(i)) for i in range(25)])
    assert [(a.step, a.kind) for a in found] == [(20, "flat")]
    assert f"ln({vocab})" in found[0].message


# ---- AnomalyCallback on a real run -----------------------------------------------------------------------------------
def test_a_diverging_run_is_stopped_at_the_nan_and_reported(tmp_path: Path, store: Store):
    import torch
    from transformers import TrainerCallback

    from instil.train.sft import build_trainer, prepare_sft

    class _BlowUpAt(TrainerCallback):
        """Poisons the weights after a given step, as a diverging run does. (A huge learning rate is not a reliable
        way there: with some optimizer and torch builds the tiny model saturates to a flat, finite loss instead.)"""

        def __init__(self, step: int):
            self.step = step

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == self.step:
                with torch.no_grad():
                    model.get_input_embeddings().weight.fill_(float("nan"))

    spec = parse_spec(
        """
name: colors
system_prompt: Name the colour.
graders: [{name: em, type: exact_match, primary: true}]
data: [{path: data.jsonl}]
model: {base: tiny}
training: {adapter: full, batch_size: 4}
""",
        root=tmp_path,
    )
    colours = ["red", "green", "blue", "black"]
    exs = [Example([Message("user", f"Colour of item {i}?"), Message("assistant", colours[i % 4])]) for i in range(8)]
    store.put_dataset("colors:train", exs, kind="train")
    plan = prepare_sft(spec, store, max_steps=10)
    live: list[Anomaly] = []
    callback = AnomalyCallback(on_anomaly=live.append)
    trainer = build_trainer(plan, tmp_path / "checkpoints", callbacks=[_BlowUpAt(3), callback])
    trainer.train()

    assert callback.stopped is not None and callback.stopped.kind == "nan"
    step = callback.stopped.step
    assert step == 4  # the first step after the weights went bad
    assert trainer.state.global_step == step < 10  # stopped where the NaN appeared, not at max_steps
    assert live == callback.anomalies and callback.anomalies[-1] is callback.stopped
    assert callback.to_list()[-1]["step"] == step and callback.to_list()[-1]["level"] == "error"
    assert callback.watch is not None and callback.watch.vocab_size == plan.model.config.vocab_size
    with pytest.raises(InstilError, match=f"training diverged: step {step}: ") as caught:
        callback.raise_if_stopped()
    assert "learning_rate" in (caught.value.hint or "")


def test_the_callback_can_collect_without_stopping():
    callback = AnomalyCallback(stop_on_nan=False, watch=LossWatch())

    class Control:
        should_training_stop = False

    class State:
        global_step, max_steps = 3, 10

    control = Control()
    callback.on_log(None, State(), control, logs={"loss": 1.0, "grad_norm": float("nan"), "learning_rate": 1e-3})
    assert [a.kind for a in callback.anomalies] == ["nan"] and callback.stopped is None
    assert control.should_training_stop is False
    callback.raise_if_stopped()  # nothing stopped: nothing raised


# ---- report_to -------------------------------------------------------------------------------------------------------
@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """Pretend exactly the given top-level modules are installed (others are looked up for real)."""
    real = importlib.util.find_spec
    present: set[str] = set()
    trackers = {"tensorboard", "tensorboardX", "mlflow", "wandb"}

    def find_spec(name: str, package: str | None = None):
        if name in trackers:
            return real("json") if name in present else None  # any real spec stands for "found"
        return real(name, package)

    monkeypatch.setattr(anomalies.importlib.util, "find_spec", find_spec)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent/.netrc")
    return present


def test_auto_picks_the_installed_trackers(installed: set[str], monkeypatch: pytest.MonkeyPatch):
    assert resolve_report_to("auto") == []
    installed.update({"tensorboardX", "mlflow", "wandb"})
    assert resolve_report_to("auto") == ["tensorboard", "mlflow"]  # wandb without a login would stop to ask
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_report_to("auto") == ["tensorboard", "mlflow", "wandb"]


def test_none_and_explicit_names(installed: set[str]):
    installed.update({"mlflow", "wandb"})
    assert resolve_report_to("none") == resolve_report_to(None) == resolve_report_to([]) == []
    assert resolve_report_to("mlflow, wandb") == ["mlflow", "wandb"]
    assert resolve_report_to(["wandb", "wandb"]) == ["wandb"]


def test_a_named_tracker_that_is_missing_says_what_to_install(installed: set[str]):
    with pytest.raises(DependencyError, match="tensorboard, which is not installed") as caught:
        resolve_report_to(["tensorboard"])
    assert caught.value.hint.startswith("pip install tensorboard")
    with pytest.raises(InstilError, match="unknown tracker.*'comet'") as unknown:
        resolve_report_to("comet")
    assert "auto" in (unknown.value.hint or "")
