"""Sweeps on a real one-node SLURM cluster (tests/slurm_cluster.py) through `train.py +launcher=slurm`:
a failing job reported with the others, a job requeued mid-run and a job stopped at its time limit
resuming to the loss of the uninterrupted run, a cancelled sweep resumed by its own command."""
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import ROOT, TINY, run_cmd, summary
from holds import start_held, wait_held
from nplm.checkpoint import STATE_NAME
from slurm_cluster import sh, slurm  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm")]
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

SLURM = ["+launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "train.threads=1", "wandb.mode=disabled"]
QUICK = [*TINY, "train.steps=20", "train.eval_interval=10", "train.log_interval=10"]
# A job that SLURM stops part-way: held at its first progress line (step 5000, before its first save)
# until a signal comes (tests/holds.py), so it is still training when SLURM signals it however fast the
# machine is (a 150,000-step job without the hold took 95 s on an idle Xeon, and a 60,000-step one
# finished before its time limit). Resumed, it trains the other 15,000 steps.
LONG = [*TINY, "train.steps=20000", "train.eval_interval=5000", "train.log_interval=5000", "train.num_samples=0",
        "seed=1", "wandb.mode=disabled"]
HELD = r"^step +5000/20000 "  # the hold: only the first try of a job gets there (a resumed one starts at 5000)


def sweep_cmd(sweep, *overrides):
    return [sys.executable, ROOT / "train.py", "-m", *overrides, *SLURM, f"hydra.sweep.dir={sweep}"]


def wait_for(check, timeout=240, what="it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def jobs() -> dict[str, str]:
    """The test cluster's jobs in squeue: {job id: state}."""
    return dict(line.split() for line in sh("squeue", "-h", "-o", "%i %T").splitlines())


def start_when_requeued(job_id: str) -> None:
    """Once SLURM requeued the job (PENDING again), start it now: SLURM holds a requeued job ~2 minutes."""
    wait_for(lambda: jobs().get(job_id) == "PENDING", what=f"job {job_id} to be requeued")
    start_now(job_id)


def start_now(job_id: str) -> None:
    """Start a pending job now; one that SLURM started in the meantime is fine (a race, not a failure)."""
    proc = subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True,
                          text=True, timeout=30)
    if proc.returncode != 0 and "no longer pending" not in proc.stderr:
        raise AssertionError(f"scontrol update JobId={job_id} StartTime=now exited {proc.returncode}: "
                             f"{proc.stderr.strip()}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final val loss of the LONG run trained in one go, here."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    run_cmd([ROOT / "train.py", *LONG, f"hydra.run.dir={run_dir}"], timeout=600)
    return summary(run_dir)["val_loss"]


def test_sweep_with_a_failing_job_ends_with_the_report_and_one_sacct_warning(tmp_path):
    sweep = tmp_path / "s"
    proc = run_cmd(sweep_cmd(sweep, *QUICK, "optim.lr=0.01,-1,0.02")[1:], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert sorted(board["status"]) == ["failed", "finished", "finished"]
    assert "optim.lr=-1.0 must be positive" in board[board["status"] == "failed"].iloc[0]["error"]
    logs = sorted(p.name.split("_")[1] for p in (sweep / ".submitit").glob("*_*") if p.is_dir())
    assert logs == ["0", "1", "2"]  # one job array: each job's SLURM log in .submitit/<array>_<job>/
    # no accounting here: submitit's sacct warning once (each poll logged one before), with the note
    assert "Call #1 - Bypassing sacct error" in out and "Call #2 - Bypassing" not in out
    assert "SLURM accounting is probably off" in out


def test_job_requeued_mid_run_resumes_to_the_uninterrupted_loss(tmp_path, uninterrupted):
    sweep = tmp_path / "s"
    proc = start_held(sweep_cmd(sweep, *LONG)[1:], tmp_path / "gate", HELD, stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True)
    wait_held(proc, tmp_path / "gate")  # the job is training (held at step 5000)
    (job_id,) = jobs()
    sh("scontrol", "requeue", job_id)  # what a pre-emption does: SIGTERM now, the job queued again
    start_when_requeued(job_id)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    done = summary(sweep / "0")
    assert done["status"] == "finished" and done["resumed_at"] == [5000], done
    assert done["val_loss"] == uninterrupted


def test_job_at_its_time_limit_saves_is_requeued_and_resumes_to_the_uninterrupted_loss(tmp_path, uninterrupted):
    """SLURM's minimum time limit, 1 minute: SLURM sends USR2 about signal_delay_s before it (up to
    ~30 s early, by its checking interval); nplm saves, submitit requeues (max_num_timeout)."""
    sweep = tmp_path / "s"
    proc = start_held(sweep_cmd(sweep, *LONG, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10",
                                "hydra.launcher.max_num_timeout=10")[1:], tmp_path / "gate", HELD,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_held(proc, tmp_path / "gate")  # held at step 5000 until SLURM's signal, at most a minute away
    (job_id,) = jobs()
    deadline = time.monotonic() + 600  # a bound only: the job ends in a few minutes
    while proc.poll() is None:  # requeued at each time limit (on a busy machine, more than once)
        assert time.monotonic() < deadline, "the sweep did not end"
        if jobs().get(job_id) == "PENDING":
            start_now(job_id)
        time.sleep(1)
    out = proc.stdout.read()
    assert proc.returncode == 0, out
    done = summary(sweep / "0")
    assert done["status"] == "finished" and done["resumed_at"][0] == 5000, done  # stopped where it was held
    log = (sweep / "0" / "train.log").read_text()
    assert "Caught signal SIGUSR2" in log and "resuming at step" in log
    assert done["val_loss"] == uninterrupted


def test_cancelled_sweep_resumes_with_its_own_command(tmp_path):
    """Job 1 held at its progress line of step 2000 (tests/holds.py), after its save at step 1000, until
    scancel's SIGTERM: it saves step 2000 and stops there, however fast the machine is."""
    sweep = tmp_path / "s"
    args = sweep_cmd(sweep, *TINY, "train.steps=200,20000", "train.eval_interval=1000", "train.log_interval=1000",
                     "train.num_samples=0")
    proc = start_held(args[1:], tmp_path / "gate", r"^step +2000/20000 ", stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True)
    wait_held(proc, tmp_path / "gate")  # job 1 is training (held at step 2000)
    (job1,) = [j for j in jobs() if j.endswith("_1")]
    wait_for(lambda: list(jobs()) == [job1], what="job 0 to end")  # the 200 steps of job 0: not held
    assert summary(sweep / "0")["status"] == "finished"
    sh("scancel", "--partition", "debug")  # the whole sweep: SIGTERM to the running job
    wait_for(lambda: not jobs(), what="the jobs to end")
    assert summary(sweep / "1")["status"] == "interrupted"
    assert torch.load(sweep / "1" / STATE_NAME, weights_only=True)["step"] == 2000  # where it was held
    finished = (sweep / "0" / "summary.json").read_text()
    # without accounting submitit cannot tell that a job ended without a result: the launching
    # command waits; its user stops it (Ctrl-C)
    proc.terminate()
    proc.communicate(timeout=60)
    run_cmd(args[1:])
    assert (sweep / "0" / "summary.json").read_text() == finished  # skipped: not run again
    assert "resuming at step 2000 of 20000" in (sweep / "1" / "train.log").read_text()
    assert summary(sweep / "1")["status"] == "finished" and summary(sweep / "1")["resumed_at"] == [2000]
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert list(board["status"]) == ["finished", "finished"]


def test_a_partition_that_does_not_exist_is_one_line_and_leaves_nothing(tmp_path):
    sweep = tmp_path / "s"
    args = sweep_cmd(sweep, *QUICK, "seed=1,2")
    args[args.index("hydra.launcher.partition=debug")] = "hydra.launcher.partition=nope"
    proc = run_cmd(args[1:], check=False)
    assert proc.returncode == 1
    assert "the sweep failed before any job ran" in proc.stderr and "invalid partition" in proc.stderr
    assert not sweep.exists()
