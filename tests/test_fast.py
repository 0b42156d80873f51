"""The compiled fast path (nplm/fast.py): the plain path's math, taken where it covers the run and
pays, deterministic, and resumable like the plain path."""
import copy
import signal
import subprocess

import pytest
import torch

from conftest import ROOT, compose_cfg, run_cmd, summary
from holds import start_held, wait_held
from nplm.checkpoint import STATE_NAME
from nplm.config import ConfigError, ModelConfig, to_config
from nplm.data import load_dataset
from nplm import fast
from nplm.fast import MIN_RECIPE_STEPS, MIN_STEPS, GraphSteps, choose, graph_steps, pad, sgd_steps, stacked_sgd_steps
from nplm.model import NPLM
from nplm.optim import SGD
from test_resume import gate, logged_step, losses

LECTURE = ["experiment=lecture", "train.steps=2000", "optim.decay_steps=[1000]", "train.eval_interval=500",
           "train.log_interval=100", "train.num_samples=0", "wandb.mode=disabled"]


def lecture_run(run_dir, *overrides):
    run_cmd([ROOT / "train.py", *LECTURE, *overrides, f"hydra.run.dir={run_dir}"])
    return summary(run_dir)


def interrupted_lecture_run(run_dir, at_step, *overrides):
    """lecture_run, held at the progress line of step `at_step` (tests/holds.py) and sent SIGTERM there,
    whatever the machine's speed: it saves that step and stops, recorded as interrupted; then resumed
    to its end. Returns its summary."""
    args = [ROOT / "train.py", *LECTURE, *overrides, f"hydra.run.dir={run_dir}"]
    proc = start_held(args, gate(run_dir), rf"^step +{at_step}/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
    wait_held(proc, gate(run_dir))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and f"interrupted by SIGTERM at step {at_step};" in err, err
    assert summary(run_dir)["status"] == "interrupted"
    assert torch.load(run_dir / STATE_NAME, weights_only=True)["step"] == at_step
    assert logged_step(run_dir) == at_step  # the step it was held at finished, then it saved
    out = run_cmd([ROOT / "train.py", f"resume={run_dir}"]).stdout
    assert f"resuming at step {at_step} of " in out
    s = summary(run_dir)
    assert s["status"] == "finished" and s["resumed_at"] == [at_step]
    return s


def test_hand_written_steps_equal_autograd():
    """Ten steps of the hand-written forward, backward and update (uncompiled) against the model,
    autograd and the optimiser, from the lecture's initialisation: equal to float rounding."""
    data = load_dataset(None, 0.8, 0.1, 42, 3)
    X, Y = data.X["train"], data.Y["train"]
    model = NPLM(ModelConfig(type="nplm", block_size=3, n_embd=10, n_hidden=200), 27)
    model.init_weights("lecture", torch.Generator().manual_seed(2147483647))
    fast = copy.deepcopy(model)
    ix = torch.randint(0, len(X), (10, 32), generator=torch.Generator().manual_seed(0))
    lrs = [0.1] * 5 + [0.01] * 5
    optimizer = SGD([{"params": list(model.parameters())}], lr=0.1)
    plain_losses = []
    for k in range(10):
        optimizer.param_groups[0]["lr"] = lrs[k]
        _, loss = model(X[ix[k]], Y[ix[k]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        plain_losses.append(loss.item())
    with torch.no_grad():
        *params, fast_losses = sgd_steps(fast.C, fast.hidden[0].weight, fast.hidden[0].bias, fast.out.weight,
                                         fast.out.bias, X[ix], Y[ix], torch.tensor(lrs))
    assert fast_losses.tolist() == pytest.approx(plain_losses, rel=1e-5)
    names = ["C", "hidden.0.weight", "hidden.0.bias", "out.weight", "out.bias"]
    assert [n for n, _ in model.named_parameters()] == names
    for p, new in zip(model.parameters(), params, strict=True):
        torch.testing.assert_close(new, p, rtol=1e-5, atol=1e-5)
    # padded as the compiled steps run them (32 inputs, 32 outputs): the same steps, the pads untouched
    W1, W2, b2 = (t[0] for t in pad(fast.hidden[0].weight[None], fast.out.weight[None], fast.out.bias[None]))
    with torch.no_grad():
        *padded, padded_losses = sgd_steps(fast.C, W1, fast.hidden[0].bias, W2, b2, X[ix], Y[ix], torch.tensor(lrs))
    assert padded_losses.tolist() == pytest.approx(plain_losses, rel=1e-5)
    assert padded[1].shape == (32, 200) and padded[3].shape == (200, 32) and padded[4].shape == (32,)
    for p, new in zip(model.parameters(), [padded[0], padded[1][:30], padded[2], padded[3][:, :27], padded[4][:27]],
                      strict=True):
        torch.testing.assert_close(new, p, rtol=1e-5, atol=1e-5)
    assert not padded[1][30:].any() and not padded[3][:, 27:].any() and (padded[4][27:] == -1e30).all()


@pytest.mark.parametrize("overrides, takes, why", [
    (["experiment=lecture"], True, "20 SGD steps per call of an AOTInductor package"),
    (["experiment=lecture", "train.steps=20000"], False, f"too few to pay for building the compiled package "
                                                         f"(~1 minute once per shape, cached or not; "
                                                         f"train.fast=auto takes it from {MIN_STEPS:,} steps"),
    (["experiment=lecture", "train.steps=20000", "train.fast=on"], True, "AOTInductor package"),
    (["experiment=lecture", "train.fast=off"], False, "train.fast=off"),
    ([], True, "the recipe's whole step"),  # the default recipe: AdamW, 5,000 steps
    (["train.steps=1999"], False, f"1,999 steps are too few to pay for building the compiled package (20-90 s once "
                                  f"per shape, cached or not; train.fast=auto takes it from {MIN_RECIPE_STEPS:,} steps"),
    (["experiment=lecture", "model.dropout=0.1", "optim.momentum=0.9"], True, "the recipe's whole step"),
    (["model=ngram"], False, "does not cover model=ngram"),
    (["mode=lr_find"], False, "does not cover mode=lr_find"),
])
def test_the_runner_chooses_the_path_and_says_why(overrides, takes, why):
    cfg = to_config(compose_cfg(overrides))
    assert choose(cfg, torch.device("cpu"))[0] is takes
    assert why in choose(cfg, torch.device("cpu"))[1]


@pytest.mark.parametrize("overrides, takes, why", [
    (["experiment=lecture", "train.steps=2000"], True, "20 SGD steps per replay of a CUDA graph"),
    (["experiment=lecture", "train.steps=2000", "train.fast=on"], True, "CUDA graph"),
    (["experiment=lecture", "train.fast=off"], False, "train.fast=off"),
    ([], False, "does not cover optim.name=adamw (on a GPU it covers the lecture's network and SGD"),
])
def test_on_a_gpu_the_runner_chooses_a_cuda_graph_at_any_length(overrides, takes, why):
    """The choice alone (no GPU needed): capturing a graph takes milliseconds, so auto takes it for
    short runs too; the graphs themselves are tested in tests/test_cuda.py where a GPU exists."""
    cfg = to_config(compose_cfg(overrides))
    taken, reason = choose(cfg, torch.device("cuda"))
    assert taken is takes and why in reason


def test_graph_steps_without_capture_are_the_step_functions():
    """GraphSteps with capture=False (the CPU; the vectorised sweep's eager steps) runs sgd_steps
    and writes the new weights into the tensors it was given."""
    g = torch.Generator().manual_seed(0)
    shapes = [(27, 10), (30, 64), (64,), (64, 27), (27,)]
    weights = [torch.randn(*s, generator=g) for s in shapes]
    mine = [w.clone() for w in weights]
    steps = GraphSteps(mine, 20, 8, 3, capture=False)
    X, Y = torch.randint(0, 27, (5, 8, 3), generator=g), torch.randint(0, 27, (5, 8), generator=g)
    losses = steps(X, Y, torch.full((5,), 0.1))
    *new, want = sgd_steps(*weights, X, Y, torch.full((5,), 0.1))
    assert steps.graph is None and torch.equal(losses, want)
    assert all(torch.equal(a, b) for a, b in zip(mine, new, strict=True))


@pytest.mark.parametrize("runs", [0, 3])
def test_the_gpu_path_checks_its_steps_and_falls_back_when_they_are_wrong(runs, caplog):
    """The CUDA graph's self-check, on the CPU: the graph's stand-in is GraphSteps without capture
    (the same steps), trusted; with its step function made wrong (learning rates x 1.5, what a bad
    capture could do silently) it is refused with one warning and the reason the summary records.
    The weights are unchanged by the check either way."""
    cfg = to_config(compose_cfg(["experiment=lecture", "train.batch_size=8"]))
    g = torch.Generator().manual_seed(0)
    lead = (runs,) if runs else ()
    weights = [torch.randn(*lead, *s, generator=g) * 0.1 for s in [(27, 10), (30, 64), (64,), (64, 27), (27,)]]
    fn = stacked_sgd_steps if runs else sgd_steps

    def wrong(*args):
        return fn(*args[:-1], args[-1] * 1.5)

    for bad in (False, True):
        tensors = [w.clone() for w in weights]
        caplog.clear()
        fast._checked.clear()  # checked once per shape and process: here, each time

        def make(*args, **kwargs):
            steps = GraphSteps(*args, capture=False, **kwargs)
            if bad:
                steps.fn = wrong
            return steps
        steps, why = graph_steps(cfg, tensors, 27, runs, "20 SGD steps per replay of a CUDA graph", make=make)
        assert all(torch.equal(a, b) for a, b in zip(tensors, weights, strict=True))
        if bad:
            assert steps is None and why.startswith("the CUDA graph failed its check against eager steps: losses off by")
            assert len(caplog.records) == 1 and "differ from the same steps run eagerly" in caplog.text
        else:
            assert steps is not None and why.endswith("(checked against eager steps)") and not caplog.records


@pytest.mark.slow  # 10 s: keeps the default suite near 5 minutes (CI runs it)
def test_a_failed_build_falls_back_to_the_plain_path(tmp_path):
    """Where the package cannot be built (here: its cache folder cannot be made), the run says so
    in one warning and trains on the plain path."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    import os
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, ROOT / "train.py", *LECTURE, "train.steps=100", "train.fast=on",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NPLM_CACHE": str(blocker)})
    assert proc.returncode == 0, proc.stderr
    assert "the fast path is not available (building the compiled package failed" in proc.stdout + proc.stderr
    s = summary(tmp_path / "run")
    assert s["status"] == "finished" and s["path"] == "plain" and "failed" in s["path_reason"]


def test_fast_on_where_it_does_not_cover_the_run_is_an_error():
    cfg = to_config(compose_cfg(["train.fast=on"]))  # the default recipe: on a GPU, not covered
    with pytest.raises(ConfigError, match="train.fast=on but the fast path does not cover optim.name=adamw"):
        choose(cfg, torch.device("cuda"))
    for refused, what in ((["model=ngram"], "model=ngram"), (["mode=lr_find"], "mode=lr_find")):
        with pytest.raises(ConfigError, match=f"train.fast=on compiles training steps, and {what} takes none; "
                                              "drop train.fast=on"):
            to_config(compose_cfg(["train.fast=on", *refused]))
    with pytest.raises(ConfigError, match="use one of: auto, on, off"):
        to_config(compose_cfg(["train.fast=yes"]))


@pytest.mark.slow  # the first compilation on a machine takes ~35 s
def test_fast_run_lands_where_the_plain_run_lands(tmp_path):
    """The lecture recipe, 2,000 steps, through train.py: the compiled path follows the plain one to
    float rounding (the lecture's raw initialisation amplifies it a little), and records which ran."""
    plain = lecture_run(tmp_path / "plain", "train.fast=off")
    fast = lecture_run(tmp_path / "fast", "train.fast=on")
    assert plain["path"] == "plain" and fast["path"] == "compiled"
    assert fast["path_reason"] in ("20 SGD steps per call of an AOTInductor package, " + how
                                   for how in ("built once for this shape, then cached", "loaded from the cache"))
    rows = {k: [(int(s), float(v)) for s, _, v in losses(tmp_path / k) if v] for k in ("plain", "fast")}
    assert [s for s, _ in rows["fast"]] == [500, 1000, 1500, 2000]
    # val losses 4.9 .. 3.3: chaotic early training; strict: a missing row on either side fails
    for (_, a), (_, b) in zip(rows["plain"], rows["fast"], strict=True):
        assert b == pytest.approx(a, rel=0.01)
    # the full 200k-step recipe lands within 0.01 of the lecture's numbers: tests/test_lecture.py (slow)


@pytest.mark.slow
def test_fast_run_is_deterministic_and_resumes_exactly(tmp_path):
    """SIGTERM in the middle of a compiled run, then resume=: the same losses as the run left alone,
    which are the same in every process."""
    run = ["train.steps=30000", "optim.decay_steps=[15000]", "train.eval_interval=3000", "train.log_interval=500",
           "train.fast=on"]
    whole = lecture_run(tmp_path / "whole", *run)
    again = lecture_run(tmp_path / "again", *run)
    assert losses(tmp_path / "whole") == losses(tmp_path / "again") and whole["val_loss"] == again["val_loss"]
    resumed = interrupted_lecture_run(tmp_path / "run", 7000, *run)
    assert losses(tmp_path / "run") == losses(tmp_path / "whole")
    assert resumed["val_loss"] == whole["val_loss"] and resumed["path"] == "compiled"
