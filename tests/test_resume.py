"""Interruption and resume for real: a training process is sent SIGTERM or SIGINT, or killed with
SIGKILL (also in the middle of writing its checkpoint), then resumed with `train.py resume=<folder>`;
it must end with exactly the losses of the same run left alone. Each signal comes at a known step,
whatever the machine's speed: the run is held at that step's progress line (tests/holds.py) until
the signal comes."""
import copy
import csv
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, compose_cfg, run_cmd, summary, train
from holds import release, start_held, wait_held
from nplm.checkpoint import STATE_NAME
from nplm.config import ConfigError, to_config
from nplm.resume import claim, resume_config
from wandb_records import offline_runs, summarise

# Dropout, weight averaging, keep_best and the hashed n-gram table (sparse, lazily updated, shared by
# the average, saved as its rows in use: order 4 hashes into 131,072 rows): every piece of state a
# resumed run must get back. The wide layer makes each save take long enough to be caught in the
# middle of one.
RUN = ["train.steps=300", "train.eval_interval=50", "train.log_interval=10", "model.n_hidden=1000",
       "model.dropout=0.1", "train.ema=0.9", "train.keep_best=true", "model.maxent_order=4", "wandb.mode=disabled"]


def losses(run_dir):
    """(step, train/loss, val/loss) of every metrics row: all that must match (not the timings)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(r["step"], r["train/loss"], r["val/loss"]) for r in csv.DictReader(f)]


def metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def start(run_dir, *overrides, at=None):
    """The RUN in run_dir; with `at`, held at the progress line of step `at` until a signal comes (or
    gate(run_dir)/go-0 appears): wait for it with wait_held(proc, gate(run_dir))."""
    args = [ROOT / "train.py", *TINY, *RUN, *overrides, f"hydra.run.dir={run_dir}"]
    if at is not None:
        return start_held(args, gate(run_dir), rf"^step +{at}/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def gate(run_dir):
    """Where a run started with `at` says it is held (tests/holds.py)."""
    return run_dir.parent / f"{run_dir.name}-gate"


def logged_step(run_dir):
    try:
        rows = losses(run_dir)
    except (OSError, KeyError):
        return 0
    return int(rows[-1][0]) if rows else 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resume") / "whole"
    train(run_dir, *RUN)
    return run_dir


@pytest.mark.slow  # 17 s: keeps the default suite near 5 min (CI runs it); Ctrl-C's test stays
def test_sigterm_saves_and_resume_ends_with_the_same_losses(uninterrupted, tmp_path):
    sig = signal.SIGTERM
    run_dir = tmp_path / "run"
    proc = start(run_dir, at=120)  # not a step that evaluates: the signal's own save
    wait_held(proc, gate(run_dir))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {sig.name} at step 120;" in err and f"python train.py resume={run_dir}" in err
    assert "Traceback" not in err
    s = summary(run_dir)
    assert s["status"] == "interrupted" and s["resume_command"] == f"python train.py resume={run_dir}"
    stopped = torch.load(run_dir / STATE_NAME, weights_only=True)["step"]
    assert stopped == 120 and logged_step(run_dir) == 120  # the step it was in finished, then it saved

    # what does not change the results may change on resuming: threads, logging, samples
    proc = run_cmd([ROOT / "train.py", f"resume={run_dir}", "train.num_samples=3", "train.threads=1"])
    assert f"resuming at step {stopped} of 300" in proc.stdout
    assert losses(run_dir) == losses(uninterrupted)
    s = summary(run_dir)
    assert s["status"] == "finished" and s["resumed_at"] == [stopped]
    assert s["wall_time_s"] >= s["train_time_s"]  # both count the time before the interruption
    assert s["config"]["train"]["num_samples"] == 3 and len((run_dir / "samples.tsv").read_text().splitlines()) == 4
    assert s["val_loss"] == summary(uninterrupted)["val_loss"]
    assert not (run_dir / STATE_NAME).exists()  # finished: ckpt.pt is the record


@pytest.mark.slow  # 11 s: keeps the default suite near 5 minutes (CI runs it)
def test_sigkill_during_a_checkpoint_write_loses_nothing_saved(uninterrupted, tmp_path):
    """SIGKILL while last.pt.tmp is being written: the previous state survives whole, and resuming
    from it still ends exactly as the run left alone. Deterministic: after the first save, the
    temporary file is a named pipe, so the next save blocks in the middle of its write until this
    test reads from it; the test reads a part, kills the run, and leaves that part as the file."""
    run_dir = tmp_path / "run"
    tmp = run_dir / (STATE_NAME + ".tmp")
    proc = start(run_dir, at=60)  # between the saves of steps 50 and 100, make the temporary file a pipe
    wait_held(proc, gate(run_dir))
    os.mkfifo(tmp)
    release(gate(run_dir))
    saved = (run_dir / STATE_NAME).read_bytes()
    with open(tmp, "rb") as pipe:  # returns once the run opens it to write its next state
        part = pipe.read(4096)  # the run is now blocked in the middle of writing
        proc.kill()
        proc.communicate(timeout=60)
    assert len(part) == 4096 and (run_dir / STATE_NAME).read_bytes() == saved  # the saved state is untouched
    assert not (run_dir / "summary.json").exists()  # killed: no chance to write anything
    tmp.unlink()
    tmp.write_bytes(part)  # what a write killed half-way leaves

    proc = run_cmd([ROOT / "train.py", f"resume={run_dir}"])
    assert "resuming at step" in proc.stdout
    assert losses(run_dir) == losses(uninterrupted)


@pytest.mark.slow
def test_sigkill_between_checkpoints_drops_the_rows_after_the_last_save(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, at=180)  # killed where rows were logged after the last save (step 150)
    wait_held(proc, gate(run_dir))
    proc.kill()
    proc.communicate(timeout=60)
    saved = torch.load(run_dir / STATE_NAME, weights_only=True)["step"]
    assert saved == 150 and logged_step(run_dir) == 180  # rows 160-180: logged again on resume
    run_cmd([ROOT / "train.py", f"resume={run_dir}"])
    assert losses(run_dir) == losses(uninterrupted)


@pytest.fixture(scope="module")
def interrupted_with_wandb(tmp_path_factory):
    """The run of `uninterrupted` with W&B offline, stopped with SIGTERM part-way (as the SIGTERM test
    stops it); (its folder, the step its state was saved at). Tests resume copies of the folder."""
    run_dir = tmp_path_factory.mktemp("resume") / "wandb"
    proc = start(run_dir, "wandb.mode=offline", at=120)
    wait_held(proc, gate(run_dir))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = torch.load(run_dir / STATE_NAME, weights_only=True)["step"]
    assert stopped == 120 and summary(run_dir)["status"] == "interrupted"
    return run_dir, stopped


def wandb_steps(wb):
    """The steps of an offline W&B run's metrics rows (those with a training loss), in order."""
    return [h["_step"] for h in wb["history"] if "train/loss" in h]


def check_wandb_continues(run_dir, stopped, steps):
    """The resumed run logged to the interrupted run's W&B run (its id, kept in last.pt), from where
    the saved state was: two offline records of one W&B run, whose metrics rows are metrics.csv's."""
    first, resumed = (summarise(r) for r in offline_runs(run_dir))
    assert first["run"].run_id == resumed["run"].run_id
    assert first["exit_code"] != 0 and first["summary"]["status"] == "interrupted"
    assert resumed["exit_code"] == 0 and resumed["summary"]["status"] == "finished"
    rows = [(int(step), float(loss), val) for step, loss, val in losses(run_dir)]
    assert [step for step, _, _ in rows] == list(range(10, steps + 1, 10))
    assert wandb_steps(first) == [step for step, _, _ in rows if step <= stopped]
    assert wandb_steps(resumed) == [step for step, _, _ in rows if step > stopped]
    history = {h["_step"]: h for wb in (first, resumed) for h in wb["history"] if "train/loss" in h}
    for step, loss, val in rows:
        assert history[step]["train/loss"] == pytest.approx(loss, rel=1e-12), step
        assert history[step].get("val/loss") == (pytest.approx(float(val), rel=1e-12) if val else None), step
    s = summary(run_dir)
    assert resumed["summary"]["val_loss"] == pytest.approx(s["val_loss"], rel=1e-12)
    assert resumed["summary"]["steps"] == s["steps"] == steps
    assert resumed["config"]["train"]["steps"] == steps
    return first, resumed


@pytest.mark.slow  # 16 s: keeps the default suite near 5 minutes (CI runs it)
def test_resume_continues_the_same_wandb_run(uninterrupted, interrupted_with_wandb, tmp_path):
    saved, stopped = interrupted_with_wandb
    run_dir = tmp_path / "run"
    shutil.copytree(saved, run_dir)
    (before,) = offline_runs(run_dir)
    wandb_id = torch.load(run_dir / STATE_NAME, weights_only=True)["wandb_id"]
    assert summarise(before)["run"].run_id == wandb_id and before.name.endswith(f"-{wandb_id}")

    proc = run_cmd([ROOT / "train.py", f"resume={run_dir}"])
    assert f"resuming at step {stopped} of 300" in proc.stdout
    assert losses(run_dir) == losses(uninterrupted)  # W&B changes nothing of the training
    assert summary(run_dir)["status"] == "finished" and summary(run_dir)["resumed_at"] == [stopped]
    first, _ = check_wandb_continues(run_dir, stopped, 300)
    assert first["run"].run_id == wandb_id and offline_runs(run_dir)[0] == before
    media = {p.parent.name for p in (offline_runs(run_dir)[1] / "files" / "media").rglob("*") if p.is_file()}
    assert {"table", "images"} <= media  # the samples and plots went to the resumed W&B run


@pytest.mark.slow  # ~15 s: another resume of the RUN model
def test_resume_with_more_steps_continues_the_same_wandb_run_to_the_new_end(uninterrupted, interrupted_with_wandb,
                                                                           tmp_path):
    saved, stopped = interrupted_with_wandb
    run_dir = tmp_path / "run"
    shutil.copytree(saved, run_dir)
    proc = run_cmd([ROOT / "train.py", f"resume={run_dir}", "train.steps=400"])
    assert f"resuming at step {stopped} of 400" in proc.stdout
    s = summary(run_dir)
    assert s["status"] == "finished" and s["steps"] == 400 and s["config"]["train"]["steps"] == 400
    first, resumed = check_wandb_continues(run_dir, stopped, 400)
    wandb_id = summarise(offline_runs(saved)[0])["run"].run_id
    assert first["run"].run_id == resumed["run"].run_id == wandb_id
    # up to the interruption, the run is the one of 300 steps; after it, the schedule follows the new length
    head = [row for row in losses(run_dir) if int(row[0]) <= stopped]
    assert head == [row for row in losses(uninterrupted) if int(row[0]) <= stopped]
    lr = {int(r["step"]): float(r["lr"]) for r in metrics(run_dir)}
    lr300 = {int(r["step"]): float(r["lr"]) for r in metrics(uninterrupted)}
    min_lr = s["config"]["optim"]["min_lr"]
    assert lr300[300] == pytest.approx(min_lr) and lr[400] == pytest.approx(min_lr) and lr[300] > 2 * min_lr
    assert {h["_step"]: h["lr"] for h in resumed["history"] if "train/loss" in h} == \
        {step: pytest.approx(v, rel=1e-12) for step, v in lr.items() if step > stopped}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run stopped with Ctrl-C (SIGINT) at step 60, after its first save (step 50), as a user would stop it."""
    run_dir = tmp_path_factory.mktemp("resume") / "interrupted"
    proc = start(run_dir, at=60)
    wait_held(proc, gate(run_dir))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return run_dir, proc.returncode, err


def test_ctrl_c_saves_and_says_how_to_resume(interrupted):
    run_dir, code, err = interrupted
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: interrupted by SIGINT at step 60; ")
    assert torch.load(run_dir / STATE_NAME, weights_only=True)["step"] == 60
    assert err.strip().endswith(f"to go on: python train.py resume={run_dir}")
    assert summary(run_dir)["status"] == "interrupted"


def test_a_run_resumed_after_ctrl_c_ends_with_the_losses_of_one_never_stopped(uninterrupted, interrupted, tmp_path):
    """Everything a resumed run needs comes back from its saved state: the weights, AdamW's moments,
    the weights' average, the best evaluation, the generators (each loss row the same, to the bit)."""
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted[0], run_dir)  # the fixture's folder stays as it was, for the other tests
    proc = run_cmd([ROOT / "train.py", f"resume={run_dir}"])
    assert "resuming at step 60 of 300" in proc.stdout
    assert losses(run_dir) == losses(uninterrupted) and len(losses(run_dir)) == 30
    s = summary(run_dir)
    assert (s["status"], s["resumed_at"], s["val_loss"]) == ("finished", [60], summary(uninterrupted)["val_loss"])


@pytest.mark.parametrize("args, message", [
    (["resume={tmp}/nowhere"], "no such run folder"),
    pytest.param(["resume={tmp}"], "holds no saved training state", marks=pytest.mark.slow),
    pytest.param(["resume={truncated}"], "not a readable nplm checkpoint", marks=pytest.mark.slow),
    pytest.param(["resume={finished}"], "finished already", marks=pytest.mark.slow),
    (["resume={interrupted}", "model.n_embd=8"], "model.n_embd cannot be changed"),
    pytest.param(["-m", "resume={interrupted}"], "to resume a sweep", marks=pytest.mark.slow),
])
def test_bad_resume_is_one_line_and_exit_2(uninterrupted, interrupted, tmp_path, args, message):
    run_dir = interrupted[0]
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.name != "train.log"}
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (run_dir / STATE_NAME).read_bytes()
    (truncated / STATE_NAME).write_bytes(data[:len(data) // 2])
    args = [a.format(tmp=tmp_path, finished=uninterrupted, interrupted=run_dir, truncated=truncated) for a in args]
    proc = run_cmd([ROOT / "train.py", *args], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert message in out.strip().splitlines()[-1] and "Traceback" not in out
    assert not (tmp_path / "nowhere").exists()  # nothing made for a bad command
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.name != "train.log"} == before  # untouched


def test_resume_keeps_the_saved_config_and_allows_only_what_changes_no_result():
    saved, given = to_config(compose_cfg(["model.n_embd=8"])), to_config(compose_cfg(TINY))
    with pytest.raises(ConfigError, match="model.n_embd, experiment cannot be changed"):
        resume_config(saved, given, ["resume=x", "model.n_embd=4", "experiment=fast"])
    cfg = resume_config(saved, given, ["resume=x", "train.steps=60", "train.threads=1"])
    assert (cfg.model.n_embd, cfg.train.steps, cfg.train.threads, cfg.resume) == (8, 60, 1, None)
    by_epochs = to_config(compose_cfg(["train.epochs=2"]))  # a run measured in epochs, resumed for longer:
    assert resume_config(copy.deepcopy(by_epochs), to_config(compose_cfg(["train.epochs=3"])),
                         ["resume=x", "train.epochs=3"]).train.epochs == 3  # more epochs (steps worked out later)
    cfg = resume_config(copy.deepcopy(by_epochs), to_config(compose_cfg(["train.steps=9000"])),
                        ["resume=x", "train.steps=9000"])
    assert (cfg.train.epochs, cfg.train.steps) == (0, 9000)  # or a number of steps, which then rules


def test_one_process_at_a_time_trains_in_a_folder(tmp_path):
    """Two runs started in the same second (or a resume while the run goes on) would share a folder:
    the second gets an error and the first's files are left alone."""
    with claim(tmp_path):  # as a running training process holds it
        proc = train(tmp_path, "wandb.mode=disabled", check=False)
    assert proc.returncode == 2 and "another process is training in" in proc.stdout + proc.stderr
    assert not {"config.yaml", "metrics.csv", "summary.json"} & {p.name for p in tmp_path.iterdir()}


@pytest.mark.slow
def test_interrupted_sweep_goes_on_with_its_own_command(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [ROOT / "train.py", "-m", "seed=1,2", *TINY, *RUN, f"hydra.sweep.dir={sweep}"]
    # held in job 1 (the second step 60 of the sweep), after its first save
    proc = start_held(cmd, tmp_path / "gate", (r"^step +60/", 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
    wait_held(proc, tmp_path / "gate")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and f"run the same command with hydra.sweep.dir={sweep}" in err
    assert summary(sweep / "0")["status"] == "finished" and summary(sweep / "1")["status"] == "interrupted"
    proc = run_cmd(cmd)
    assert "skipping job 0" in proc.stdout and "resuming at step" in proc.stdout
    assert summary(sweep / "1")["status"] == "finished" and summary(sweep / "1")["resumed_at"] == [60]
    assert (sweep / "leaderboard.csv").exists()
