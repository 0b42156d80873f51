"""A newcomer's first commands, for real: --help, refused commands that leave nothing behind, warnings
for settings that cannot help, runs that diverge by value, the thread count and its speed watch."""
import json
import math

import pytest

from conftest import ROOT, TINY, compose_cfg, run_cmd, train
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
    """Refused after Hydra starts (the data, a batch larger than the data, every job of a sweep, a swept
    value of the wrong type): one line, exit 2, and no run folder, sweep folder or W&B run; a sweep where
    only some jobs are refused runs the others and lists the refused one."""
    runs, sweeps = tmp_path / "outputs" / "runs", tmp_path / "outputs" / "sweeps"
    common = [*TINY, "wandb.mode=offline", f"hydra.run.dir={runs}/${{now:%H-%M-%S-%f}}",
              f"hydra.sweep.dir={sweeps}/${{now:%H-%M-%S-%f}}"]
    procs = run_all({
        "batch": [ROOT / "train.py", *common, "train.batch_size=10000000"],
        "data": [ROOT / "train.py", *common, f"data.path={tmp_path / 'nope.txt'}"],
        "sweep": [ROOT / "train.py", "-m", *common, "model.n_embd=0,-1"],
        "key": [ROOT / "train.py", "-m", *common, "model.n_embdd=1,2"],
        "type": [ROOT / "train.py", "-m", *common, "model.n_embd=4,abc"],
        # the wrong value in a grid with a group's choices: checked without composing every job
        "type_grid": [ROOT / "train.py", "-m", *common, "model=ngram,nplm", "optim.lr=0.1,abc"],
    })
    assert_one_line_error(procs["batch"], "train.batch_size=10000000 is larger than the 182625 training examples")
    assert_one_line_error(procs["data"], "does not exist")
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
    jobs = {json.loads((sweep / j / "summary.json").read_text())["status"] for j in ("0", "1")}
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
        s = json.loads((sweep / job / "summary.json").read_text())
        assert s["status"] == "diverged" and s["diverged_step"] == 30 and s["val_loss"] is None
        assert s["diverged_loss"] > s["divergence_limit"] and "diverged at step 30: the training loss is" in s["error"]
        assert not (sweep / job / "ckpt.pt").exists()
    board = (sweep / "leaderboard.md").read_text().splitlines()
    assert "finished" in board[2] and "diverged" in board[3] and "diverged" in board[4]


def test_the_default_thread_count_follows_the_model_size(tmp_path):
    """reproducible=false: one thread for small models, every core for large ones; reproducible mode
    (the default): one thread, as on every machine."""
    train(tmp_path / "r", "wandb.mode=disabled", "train.threads=0", "train.steps=20", "reproducible=false")
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["threads"] == 1 and "multiply-adds a step: one thread" in s["threads_reason"]
    default = to_config(compose_cfg(["reproducible=false"]))
    n, why = threads.choose(default, 27)
    assert n == 1 and "5.5M multiply-adds a step: one thread" in why
    assert threads.choose(to_config(compose_cfg(["experiment=lecture", "reproducible=false"])), 27)[0] == 1
    big = to_config(compose_cfg(["experiment=best", "reproducible=false"]))
    n, why = threads.choose(big, 27)
    if threads.cores() > 1:
        assert n == threads.cores() and why == (f"103.3M multiply-adds a step: large enough to share among the "
                                                f"{n} cores (train.threads=1 if other work is running)")
    assert threads.choose(to_config(compose_cfg(["experiment=best"])), 27) == (1, "reproducible=true: one thread, "
                                                                               "as on every machine")
    assert threads.choose(to_config(compose_cfg(["experiment=best", "train.threads=3", "reproducible=false"])),
                          27) == (3, "train.threads")
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


def test_a_run_slowed_from_outside_warns_once(tmp_path):
    """The real command, stopped (SIGSTOP) for 0.4 s of every 0.5 s from outside, as a busy core would
    slow it: one warning that names the cause and what to set."""
    import os
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "output"
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, ROOT / "train.py", *TINY, "wandb.mode=disabled", "train.steps=1000000",
                                 "train.log_interval=200", "train.eval_interval=1000000", f"hydra.run.dir={tmp_path / 'r'}"],
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 120
            while out.read_text().count("steps/s |") < 5:  # its own speed first
                assert time.monotonic() < deadline and proc.poll() is None, out.read_text()
                time.sleep(0.05)
            while "training slowed" not in out.read_text():
                assert time.monotonic() < deadline and proc.poll() is None, out.read_text()
                proc.send_signal(signal.SIGSTOP)
                time.sleep(0.4)
                proc.send_signal(signal.SIGCONT)
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(timeout=60)
    text = out.read_text()
    assert text.count("training slowed") == 1
    line = next(ln for ln in text.splitlines() if "training slowed" in ln)
    assert "other processes are using this run's CPU cores; stop the other work" in line
