"""A newcomer's first commands, for real: --help, refused commands that leave nothing behind, warnings
for settings that cannot help, runs that diverge by value, the thread count and its speed watch."""
import math
import os

import pytest

from conftest import ROOT, TINY, compose_cfg, run_cmd, summary, train
from test_errors import assert_one_line_error, run_all

from nplm import threads
from nplm.config import CHOICES, to_config
from nplm.help import field_comments


@pytest.mark.slow  # 18 s: keeps the default suite shorter (CI runs it)
def test_help_lists_every_key_with_its_meaning_choices_and_default():
    out = run_cmd([ROOT / "train.py", "--help"]).stdout
    cfg = to_config(compose_cfg())
    comments = field_comments()
    for section in ("data", "model", "optim", "train", "wandb", "lr_find", "overfit_batch"):
        for key in vars(getattr(cfg, section)):
            assert f"  {section}.{key} = " in out, key
    sections = ("Config.data", "Config.model", "Config.optim", "Config.train", "Config.wandb", "Config.lr_find",
                "Config.overfit_batch")
    assert not [k for k, v in comments.items() if not v and k not in sections]  # every key says what it is
    for key, choices in CHOICES.items():
        line = out[out.index(f"  {key} = "):].split("\n  ", 2)[:2]
        assert all(c in " ".join(line) for c in choices), key
    assert "  optim.lr = 0.01   (float)" in out and "  train.steps = 5000   (int)" in out
    for shipped in ("experiment=lecture", "experiment=best", "+sweep=grid", "+sweep=seeds", "+launcher=slurm",
                    "model=ngram", "data=shakespeare", "scripts/report.py", "scripts/evaluate.py"):
        assert shipped in out, shipped
    assert out.count("python train.py ") >= 3  # examples
    lecture = run_cmd([ROOT / "train.py", "experiment=lecture", "--help"]).stdout
    assert "  optim.lr = 0.1   (float)" in lecture and "  train.steps = 200000   (int)" in lecture
    bad = run_cmd([ROOT / "train.py", "optim.lr=0", "--help"], check=False)
    assert bad.returncode == 2 and "optim.lr=0.0 must be positive" in bad.stderr


@pytest.mark.slow  # 39 s: keeps the default suite shorter (CI runs it)
def test_refused_commands_leave_nothing(tmp_path):
    """Refused after Hydra starts (a batch larger than the data, every job of a sweep, a swept value of
    the wrong type; a missing data file: tests/test_errors.py): one line, exit 2, and no run folder,
    sweep folder or W&B run; a sweep where only some jobs are refused runs the others and lists the
    refused one."""
    runs, sweeps = tmp_path / "outputs" / "runs", tmp_path / "outputs" / "sweeps"
    common = [*TINY, "wandb.mode=offline", f"hydra.run.dir={runs}/${{now:%H-%M-%S-%f}}",
              f"hydra.sweep.dir={sweeps}/${{now:%H-%M-%S-%f}}"]
    procs = run_all({
        "batch": [ROOT / "train.py", *common, "train.batch_size=10000000"],
        "sweep": [ROOT / "train.py", "-m", *common, "model.n_embd=0,-1"],
        "key": [ROOT / "train.py", "-m", *common, "model.n_embdd=1,2"],
        "type": [ROOT / "train.py", "-m", *common, "model.n_embd=4,abc"],
        # the wrong value in a grid with a group's choices: checked without composing every job
        "type_grid": [ROOT / "train.py", "-m", *common, "model=ngram,nplm", "optim.lr=0.1,abc"],
    })
    assert_one_line_error(procs["batch"], "train.batch_size=10000000 is larger than the 182625 training examples")
    assert_one_line_error(procs["sweep"], "every job of the sweep was refused: model.n_embd=0 must be at least 1; "
                                          "model.n_embd=-1 must be at least 1")
    assert_one_line_error(procs["key"], "Key 'n_embdd' not in 'ModelConfig'")
    assert_one_line_error(procs["type"], "Value 'abc' of type 'str' could not be converted to Integer")
    assert_one_line_error(procs["type_grid"], "Value 'abc' of type 'str' could not be converted to Float")
    for case in ("type", "type_grid"):  # no folder to resume is announced
        assert "sweep folder" not in procs[case].stdout + procs[case].stderr
    assert not list(runs.glob("*")) and not list(sweeps.glob("*"))
    partly = run_cmd([ROOT / "train.py", "-m", *common, "wandb.mode=disabled", "model.n_embd=0,4"], check=False)
    assert partly.returncode == 1 and "a job of the sweep failed" in partly.stderr
    (sweep,) = sweeps.iterdir()
    jobs = {summary(sweep / j)["status"] for j in ("0", "1")}
    assert jobs == {"failed", "finished"} and (sweep / "leaderboard.md").is_file()


def test_a_refused_first_run_leaves_no_empty_outputs_folder(tmp_path):
    """Hydra makes outputs/runs/ for the run's folder; a refusal removes the parents it made too, once
    empty, and never a folder that was there before."""
    outputs = tmp_path / "outputs"
    cmd = [ROOT / "train.py", *TINY, "model.n_embd=-1", f"hydra.run.dir={outputs / 'runs' / 'r'}"]
    assert run_cmd(cmd, check=False).returncode == 2 and not outputs.exists()
    (outputs / "runs" / "earlier").mkdir(parents=True)
    assert run_cmd(cmd, check=False).returncode == 2
    assert [p.name for p in (outputs / "runs").iterdir()] == ["earlier"]


@pytest.mark.slow  # 13 s: keeps the default suite near 5 minutes (CI runs it)
def test_settings_that_cannot_help_warn_and_a_home_path_gets_a_hint(tmp_path):
    procs = run_all({
        "context": [ROOT / "train.py", *TINY, "model.block_size=20", "train.steps=10", f"hydra.run.dir={tmp_path / 'a'}"],
        "schedule": [ROOT / "train.py", *TINY, "optim.warmup_steps=100", "train.steps=10",
                     f"hydra.run.dir={tmp_path / 'b'}"],
        "decay": [ROOT / "train.py", *TINY, "optim.schedule=step", "optim.decay_steps=[5,10,50]", "train.steps=10",
                  f"hydra.run.dir={tmp_path / 'c'}"],
        "home": [ROOT / "train.py", *TINY, "data.path=~/words.txt", f"hydra.run.dir={tmp_path / 'd'}"],
    })
    for name in ("context", "schedule", "decay"):
        assert procs[name].returncode == 0, procs[name].stderr
    assert "model.block_size=20 is longer than the longest word (15 characters) plus one: the extra 4 positions" \
        in procs["context"].stdout and "model.block_size=16 reads every one whole" in procs["context"].stdout
    assert "optim.warmup_steps=100 is not below train.steps=10" in procs["schedule"].stdout
    assert "optim.decay_steps [10, 50] are not below train.steps=10" in procs["decay"].stdout
    assert_one_line_error(procs["home"], "the shell does not expand '~' inside key=value")
    assert "data.path=$HOME/words.txt" in procs["home"].stderr and not (tmp_path / "d").exists()


@pytest.mark.slow  # 9 s: keeps the default suite near 5 minutes (CI runs it)
def test_a_sweep_whose_loss_explodes_records_each_run_diverged(tmp_path):
    """Finite but absurd losses (lr 1000 and 1e9) stop the run at the second logged step above the
    limit (rows at 20 and 30): status diverged, with the step and why, inf to the sweeper, last in the leaderboard; the
    sweep itself ends normally (exit 0: a diverged job is a result, not a failure)."""
    sweep = tmp_path / "sweep"
    proc = run_cmd([ROOT / "train.py", "-m", *TINY, "wandb.mode=disabled", "optim.lr=0.01,1000,1e9",
                    f"hydra.sweep.dir={sweep}"])
    assert "sweep of 3 jobs (2 diverged, 1 finished)" in proc.stdout
    for job in ("1", "2"):
        s = summary(sweep / job)
        assert s["status"] == "diverged" and s["diverged_step"] == 30 and s["val_loss"] is None
        assert s["diverged_loss"] > s["divergence_limit"] and "diverged at step 30: the training loss is" in s["error"]
        assert not (sweep / job / "ckpt.pt").exists()
    board = (sweep / "leaderboard.md").read_text().splitlines()
    assert "finished" in board[2] and "diverged" in board[3] and "diverged" in board[4]


def test_the_default_thread_count_follows_the_model_size(tmp_path, monkeypatch):
    """reproducible=false: one thread for small models, every core for large ones; reproducible mode
    (the default): one thread, as on every machine. Both branches, whatever cores this machine has."""
    train(tmp_path / "r", "wandb.mode=disabled", "train.threads=0", "train.steps=20", "reproducible=false")
    s = summary(tmp_path / "r")
    assert s["threads"] == 1 and "multiply-adds a step: one thread" in s["threads_reason"]
    default = to_config(compose_cfg(["reproducible=false"]))
    n, why = threads.choose(default, 27)
    assert n == 1 and "5.5M multiply-adds a step: one thread" in why
    assert threads.choose(to_config(compose_cfg(["experiment=lecture", "reproducible=false"])), 27)[0] == 1
    big = to_config(compose_cfg(["experiment=best", "reproducible=false"]))
    monkeypatch.setattr(threads, "cores", lambda: 4)
    assert threads.choose(big, 27) == (4, ("103.3M multiply-adds a step: large enough to share among the 4 cores "
                                           "(train.threads=1 if other work is running)"))
    assert threads.choose(default, 27) == (1, ("5.5M multiply-adds a step: one thread is about as fast as 4 and is "
                                               "never stalled by other busy processes"))
    monkeypatch.setattr(threads, "cores", lambda: 1)
    assert threads.choose(big, 27) == (1, ("103.3M multiply-adds a step: one thread is about as fast as 1 and is "
                                           "never stalled by other busy processes"))
    monkeypatch.undo()
    assert threads.choose(to_config(compose_cfg(["experiment=best"])), 27) == (1, "reproducible=true: one thread, "
                                                                               "as on every machine")
    assert threads.choose(to_config(compose_cfg(["experiment=best", "train.threads=3", "reproducible=false"])),
                          27) == (3, "train.threads")
    if hasattr(os, "sched_setaffinity"):  # the cores counted are those the process may use
        allowed = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, {min(allowed)})
            assert threads.cores() == 1
        finally:
            os.sched_setaffinity(0, allowed)
        assert threads.cores() == len(allowed)
    # an adaptive softmax's output: its head, then each cluster through its projection (as evaluated)
    assert threads.output_macs(256, 7740, [], 4.0) == 256 * 7740
    assert threads.output_macs(256, 7740, [2000, 4000], 2.0) == 256 * 2002 + (256 * 128 + 128 * 2000) + (
        256 * 64 + 64 * 3740)


def test_the_speed_watch_warns_once_when_training_slows_far_below_its_best():
    watch = threads.SpeedWatch(2)
    assert [watch.update(r) for r in (400, 550, 500, 300, 520, 160)] == [None] * 6  # noise, one slow interval
    warning = watch.update(9)
    assert warning == ("training slowed from 550 to 9 steps/s: other processes are using this run's CPU cores; "
                       "with 2 threads one busy core stalls them all: set train.threads=1")
    assert watch.update(8) is None and watch.update(math.inf) is None  # once
    assert "stop the other work" in next(w for w in map(threads.SpeedWatch(1).update, (500, 100, 100)) if w)


class Clock:
    """nplm/loop.py's clock in the tests: each reading is `tick` seconds after the one before, so a
    training step takes `tick` seconds (the loop reads the clock once before and once after a step)."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def fit_on_clock(tmp_path, monkeypatch, caplog, slow_after: int | None) -> list:
    """The training loop of a tiny run (200 steps, a progress line every 20) on a Clock of 1 ms a step,
    that runs 20 times slower from the `slow_after`-th progress line on (as other processes on its
    cores would slow it), or never (None); the loop's log records, from its own logger."""
    import logging

    import torch

    from nplm import loop
    from nplm.data import load_data
    from nplm.resume import StopSignals
    from nplm.tracking import Tracker
    from nplm.train import build

    cfg = to_config(compose_cfg([*TINY, "wandb.mode=disabled", "train.steps=200", "train.eval_interval=100"]))
    data = load_data(cfg.data, cfg.model.block_size)
    X, Y = ({s: d[s] for s in ("train", "val")} for d in (data.X, data.Y))
    clock = Clock(0.001)
    monkeypatch.setattr(loop, "time", clock)  # the loop's clock only: nothing else is timed by it

    class Slower(logging.Handler):  # the event: the program's own progress line
        seen = 0

        def emit(self, record):
            if record.getMessage().startswith("step "):
                self.seen += 1
                if self.seen == slow_after:
                    clock.tick = 0.02

    slower, log, threads_before = Slower(), logging.getLogger("nplm"), torch.get_num_threads()
    caplog.set_level(logging.INFO, logger="nplm")
    log.addHandler(slower)
    torch.set_num_threads(1)  # the warning's advice depends on the thread count: one, as train.threads=1
    try:
        s = build(cfg, data.vocab.size, X, Y, torch.device("cpu"))
        (tmp_path / "run").mkdir(parents=True)
        tracker = Tracker(tmp_path / "run", cfg.wandb, {})
        with StopSignals() as stop:
            loop.fit(s, tracker, stop, None, 0.0)
        tracker.close()
    finally:
        log.removeHandler(slower)
        torch.set_num_threads(threads_before)
    return [r for r in caplog.records if r.name == "nplm"]


def test_a_run_slowed_from_outside_warns_once(tmp_path, monkeypatch, caplog):
    """The training loop measures its speed and warns once when it drops far below its best: on a
    clock of the test's (nothing here depends on the machine's speed or load), 1,000 steps/s for five
    progress lines, then 50 steps/s; a run that keeps its pace says nothing."""
    records = fit_on_clock(tmp_path, monkeypatch, caplog, slow_after=5)
    lines = [r.getMessage() for r in records]
    assert [ln.split(" | ")[0] for ln in lines if ln.startswith("step")] == [f"step {n:3d}/200" for n in
                                                                               range(20, 201, 20)]
    assert [ln.split(" | ")[-2] for ln in lines if ln.startswith("step")] == ["1000 steps/s"] * 5 + ["50 steps/s"] * 5
    warnings = [r for r in records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in warnings] == [
        ("training slowed from 1,000 to 50 steps/s: other processes are using this run's CPU cores; stop the other "
         "work or expect the run to take longer")]
    # once, at the second slow progress line (step 140): one slow interval alone is noise
    assert lines[lines.index(warnings[0].getMessage()) - 1].startswith("step 140/200")
    caplog.clear()
    assert not [r for r in fit_on_clock(tmp_path / "steady", monkeypatch, caplog, slow_after=None)
                if r.levelname == "WARNING"]
