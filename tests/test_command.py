"""Promises of the `python train.py` command itself, each checked through the real command in a
subprocess: `--cfg job`, the default folders (`outputs/runs/<date_time>`, a named sweep's
`outputs/sweeps/<name>/<date_time>/<n>`; a sweep's `outputs/sweeps/<date_time>/<n>` is in
tests/test_sweep_command.py), where W&B logs ($WANDB_MODE against wandb.mode, and
wandb.project/entity/tags/group/name in the offline run), a second Ctrl-C, the default recipe beating
the lecture's 2.17, `scripts/benchmark.py`, and a vectorised group compiled from 100,000 steps.

Commands whose folders are not given run with a temporary folder as their working directory, so
nothing is written into the checkout's outputs/. Nothing here waits on time: a test that signals a
run waits for a line it prints, or for where it waits in the kernel."""
import dataclasses
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import QUICK, ROOT, compose_cfg, killed_if_left, run_cmd, summary
from nplm.config import to_config
from wandb_records import offline_runs, summarise

DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")


def run_env(args, env: dict, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    """train.py (or a script) with this environment's variables changed: a value of None removes one."""
    full = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full, check=False)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def stamped(folder: Path, before: datetime, after: datetime) -> None:
    """`folder` is named by the date and time the command made it: YYYY-MM-DD_HH-MM-SS, in [before, after]."""
    assert DATE_TIME.fullmatch(folder.name), folder.name
    made = datetime.strptime(folder.name, "%Y-%m-%d_%H-%M-%S")
    assert before.replace(microsecond=0) <= made <= after, (folder.name, before, after)


# --- python train.py --cfg job --------------------------------------------------------------------

def test_cfg_job_prints_the_composed_config_and_trains_nothing(tmp_path):
    """`--cfg job` prints the config the command would train, preset and overrides applied, every key
    of the schema with its default, and exits 0 without making a folder."""
    overrides = ["experiment=lecture", "optim.lr=0.05", "model.n_hidden=64"]
    proc = run_cmd([ROOT / "train.py", "--cfg", "job", *overrides], cwd=tmp_path)
    printed = yaml.safe_load(proc.stdout)
    assert printed == OmegaConf.to_container(compose_cfg(overrides))  # exactly what a run of it composes
    assert printed["optim"]["lr"] == 0.05 and printed["model"]["n_hidden"] == 64  # the command line
    assert printed["model"]["init"] == "lecture" and printed["seed"] == 2147483647  # the preset
    assert printed["optim"]["decay_steps"] == [100000] and printed["train"]["steps"] == 200000
    assert printed["train"]["eval_chunk"] == 4096 and printed["wandb"]["mode"] is None  # conf/config.yaml
    assert printed["mode"] == "train" and printed["lr_find"]["steps"] == 1000  # the schema's defaults too
    assert "hydra" not in printed
    assert list(tmp_path.iterdir()) == []  # no outputs/, no run


# --- the default folders --------------------------------------------------------------------------

def test_a_run_without_hydra_run_dir_goes_to_outputs_runs_date_time(tmp_path):
    before = datetime.now()
    proc = run_cmd([ROOT / "train.py", *QUICK], cwd=tmp_path)
    after = datetime.now()
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["runs"]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    stamped(run_dir, before, after)
    assert f"saved to {run_dir.resolve()}" in proc.stdout
    s = summary(run_dir)
    assert s["status"] == "finished" and s["steps"] == 20
    assert {"config.yaml", "metrics.csv", "ckpt.pt", "samples.tsv", "train.log", ".hydra"} <= \
        {p.name for p in run_dir.iterdir()}


@pytest.mark.slow  # 5 s
def test_a_named_sweep_goes_to_outputs_sweeps_name_date_time_job(tmp_path):
    before = datetime.now()
    run_cmd([ROOT / "train.py", "+sweep=seeds", 'hydra.sweeper.params.seed="1,2"', *QUICK], cwd=tmp_path)
    after = datetime.now()
    (sweep,) = (tmp_path / "outputs" / "sweeps" / "seeds").iterdir()
    stamped(sweep, before, after)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert [summary(sweep / job)["seed"] for job in ("0", "1")] == [1, 2]


# --- where W&B logs: wandb.mode, $WANDB_MODE, and the run's project, entity, tags, group, name --------

def test_wandb_is_offline_by_default_with_the_configured_project_entity_tags_group_and_name(tmp_path):
    """Neither wandb.mode nor $WANDB_MODE: an offline W&B run, where wandb.* say."""
    run_dir = tmp_path / "r"
    overrides = [o for o in QUICK if not o.startswith("wandb.mode=")]
    run_env([ROOT / "train.py", *overrides, "wandb.project=proj-x", "wandb.entity=team-y",
             "wandb.tags=[alpha,beta]", "wandb.group=grp-z", "wandb.name=run-n", f"hydra.run.dir={run_dir}"],
            {"WANDB_MODE": None, "WANDB_DISABLED": None})
    (offline,) = offline_runs(run_dir)
    wb = summarise(offline)
    run = wb["run"]
    assert (run.project, run.entity, list(run.tags), run.run_group, run.display_name) == \
        ("proj-x", "team-y", ["alpha", "beta"], "grp-z", "run-n")
    assert wb["exit_code"] == 0 and wb["summary"]["status"] == "finished"
    assert wb["summary"]["val_loss"] == pytest.approx(summary(run_dir)["val_loss"], rel=1e-12)
    assert wb["config"]["wandb"]["project"] == "proj-x" and wb["config"]["wandb"]["mode"] is None


def test_wandb_mode_unset_follows_wandb_mode_in_the_environment(tmp_path):
    """wandb.mode not given: $WANDB_MODE decides (disabled: no W&B run). A wandb.mode given beats it:
    wandb.mode=disabled under this suite's WANDB_MODE=offline (tests/test_tracking.py) and the test below."""
    run_dir = tmp_path / "r"
    overrides = [o for o in QUICK if not o.startswith("wandb.mode=")]
    run_env([ROOT / "train.py", *overrides, f"hydra.run.dir={run_dir}"], {"WANDB_MODE": "disabled"})
    s = summary(run_dir)
    assert s["status"] == "finished" and s["config"]["wandb"]["mode"] is None
    assert not (run_dir / "wandb").exists()


@pytest.mark.slow  # 3 s: W&B offline costs a few seconds
def test_wandb_mode_offline_given_beats_wandb_mode_disabled_in_the_environment(tmp_path):
    run_dir = tmp_path / "r"
    overrides = [o for o in QUICK if not o.startswith("wandb.mode=")]
    run_env([ROOT / "train.py", *overrides, "wandb.mode=offline", f"hydra.run.dir={run_dir}"],
            {"WANDB_MODE": "disabled"})
    (offline,) = offline_runs(run_dir)
    assert summarise(offline)["summary"]["status"] == "finished"


# --- a second Ctrl-C stops at once ----------------------------------------------------------------
# The first SIGINT lets the step finish, then the run saves its training state and stops; a second
# one while it saves stops it at once (exit 130). Deterministic: the state's temporary file is a named
# pipe, so the save that the first SIGINT starts (the only save: the first evaluation is a million
# steps away) waits in the kernel, on this test, which sees where it waits (Linux: /proc/<pid>/wchan).

LINUX_WCHAN = pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux's /proc/<pid>/wchan")


def start_saving_on_ctrl_c(run_dir: Path) -> subprocess.Popen:
    """A long run of the default model (its state and AdamW's ~270 kB, more than a pipe holds) whose
    state file is a named pipe, sent SIGINT once it trains (its first progress line)."""
    run_dir.mkdir()
    os.mkfifo(run_dir / "last.pt.tmp")
    proc = subprocess.Popen([sys.executable, ROOT / "train.py", "train.steps=1000000", "train.eval_interval=1000000",
                             "train.log_interval=10", "train.batch_size=32", "train.num_samples=0", "device=cpu",
                             "train.threads=1", "wandb.mode=disabled", f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    for line in proc.stdout:
        if re.search(r"step +10/1000000 \|", line):
            proc.send_signal(signal.SIGINT)
            return proc
    pytest.fail(f"the run ended before its first progress line: {proc.communicate()}")


def wait_in_kernel(proc: subprocess.Popen, where: str) -> None:
    """Until the run's main thread waits in the kernel function `where` (its wchan). The bound only
    ends a test whose run never gets there (it gets there within a step of the first SIGINT)."""
    deadline = time.monotonic() + 120
    while where not in (wchan := Path(f"/proc/{proc.pid}/wchan").read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the run never waited in {where} (it waits in {wchan!r})"
        select.select([], [], [], 0.001)


def assert_stopped_at_once(proc: subprocess.Popen, err: str, run_dir: Path) -> None:
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err
    (message,) = [line for line in err.splitlines() if line.startswith("error: ")]
    # stopped inside the save: not the loop's orderly stop ("... at step N; its state is saved ...")
    assert message == ("error: interrupted by SIGINT; nothing to resume: it stopped before its state was saved; "
                       "run the command again to start afresh"), message
    assert not (run_dir / "last.pt").exists()  # the save the first Ctrl-C began did not complete
    s = summary(run_dir)
    assert s["status"] == "interrupted" and s["error"] == "Interrupted: interrupted by SIGINT"
    assert len((run_dir / "metrics.csv").read_text().splitlines()) > 1  # it had trained


@LINUX_WCHAN
def test_a_second_ctrl_c_stops_at_once_while_the_first_one_saves(tmp_path):
    """The second SIGINT comes while the save waits to open its file (no reader yet on the pipe)."""
    run_dir = tmp_path / "run"
    proc = start_saving_on_ctrl_c(run_dir)
    with killed_if_left(proc):
        wait_in_kernel(proc, "wait_for_partner")  # opening the state file: the save the first Ctrl-C began
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert_stopped_at_once(proc, err, run_dir)


@pytest.mark.slow  # 4 s
@LINUX_WCHAN
def test_a_second_ctrl_c_stops_at_once_in_the_middle_of_writing_the_state(tmp_path):
    """The second SIGINT comes while the save waits to write more of its data into a full pipe."""
    run_dir = tmp_path / "run"
    proc = start_saving_on_ctrl_c(run_dir)
    with killed_if_left(proc):
        wait_in_kernel(proc, "wait_for_partner")  # opening the state file: the save the first Ctrl-C began
        reader = os.open(run_dir / "last.pt.tmp", os.O_RDONLY)  # the save opens it and writes
        wait_in_kernel(proc, "pipe_write")  # the pipe is full: the save waits in the middle of its data
        proc.send_signal(signal.SIGINT)
        drain = threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(reader, 1 << 16), b"")],
                                 daemon=True)
        drain.start()  # whatever it still writes goes somewhere: only the signal can stop it at once
        _, err = proc.communicate(timeout=120)
        drain.join(timeout=60)  # the run's end closed the pipe
        os.close(reader)
    assert_stopped_at_once(proc, err, run_dir)


# --- the default recipe ---------------------------------------------------------------------------

@pytest.mark.slow  # 15 s (quiet 2 cores; 30-60 s beside other work): the default recipe in full
def test_the_default_recipe_beats_the_lectures_val_loss(tmp_path):
    """README: `python train.py`, the default recipe, beats the lecture's best val loss, 2.17."""
    run_dir = tmp_path / "run"
    run_cmd([ROOT / "train.py", f"hydra.run.dir={run_dir}"], timeout=900)
    s = summary(run_dir)
    assert s["status"] == "finished" and s["config"] == dataclasses.asdict(to_config(compose_cfg([])))
    assert s["steps"] == 5000 and s["num_params"] == 22059  # README: 22,059 parameters
    assert s["val_loss"] < 2.17, s["val_loss"]


# --- scripts/benchmark.py -------------------------------------------------------------------------

@pytest.mark.slow  # 40 s (quiet 2 cores): the first run builds the lecture's compiled package, cached for the second
def test_benchmark_prints_its_ratio_table_writes_its_json_and_compares_with_an_earlier_run(tmp_path):
    """scripts/benchmark.py, its smallest part (`memory`: peak RSS of the lecture recipe against the
    reference loop), once, then again with --compare against the first run's JSON."""
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    proc = run_cmd([ROOT / "scripts" / "benchmark.py", "--only", "memory", "--repeats", "1", "--steps", "2",
                    "--out", first], timeout=900)
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| figure"))
    assert [c.strip() for c in lines[header].strip("|").split("|")] == \
        ["figure", "reference loop", "runner", "ratio", "target"]
    assert set(lines[header + 1]) <= set("|-")
    (row,) = [line for line in lines if line.startswith("| peak RSS MB, lecture recipe 2 steps")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    results = json.loads(first.read_text())
    memory = results["results"]["memory"]
    assert cells[1:] == [f"{memory['reference_peak_rss_mb']:.0f}", f"{memory['runner_peak_rss_mb']:.0f}",
                         f"{memory['ratio']:.2f}x", "<= 400 MB"]
    assert memory["ratio"] == pytest.approx(memory["runner_peak_rss_mb"] / memory["reference_peak_rss_mb"])
    assert memory["steps"] == 2 and memory["reference_peak_rss_mb"] > 0
    assert results["machine"]["repeats"] == 1 and re.fullmatch(r"[0-9a-f]{12}", results["machine"]["fingerprint"])
    assert f"written: {first}" in proc.stdout

    proc = run_cmd([ROOT / "scripts" / "benchmark.py", "--only", "memory", "--repeats", "1", "--steps", "2",
                    "--out", second, "--compare", first], timeout=900)
    then = results["results"]["memory"]
    now = json.loads(second.read_text())["results"]["memory"]
    assert f"compared with {results['machine']['date']} ({results['machine']['fingerprint']}): the same machine" \
        in proc.stdout
    (ratio_line,) = [line for line in proc.stdout.splitlines() if line.strip().startswith("memory.ratio ")]
    _, was, _, is_now, factor = ratio_line.split()
    assert float(was) == pytest.approx(then["ratio"], rel=1e-5)
    assert float(is_now) == pytest.approx(now["ratio"], rel=1e-5)
    assert float(factor.rstrip("x")) == pytest.approx(now["ratio"] / then["ratio"], abs=1e-3)


# --- a vectorised group is compiled from 100,000 steps in all -------------------------------------

LECTURE_GROUP = ["-m", "experiment=lecture", "+launcher=vectorized", "seed=1,2", "train.num_samples=0",
                 "device=cpu", "wandb.mode=disabled"]


@pytest.mark.slow  # 50 s (quiet 2 cores): builds the package for 2 stacked lecture runs, trains 2 x 50,000 steps
def test_a_vectorised_group_of_100k_steps_in_all_is_compiled(tmp_path):
    """docs/sweeps.md: with train.fast=auto (the default) a group's stacked steps are compiled when it
    trains at least 100,000 steps in all (2 runs x 50,000 here), and run eagerly below that."""
    sweep = tmp_path / "compiled"
    run_cmd([ROOT / "train.py", *LECTURE_GROUP, "train.steps=50000", "train.eval_interval=50000",
             "train.log_interval=10000", f"hydra.sweep.dir={sweep}"], timeout=900)
    for job, seed in (("0", 1), ("1", 2)):
        s = summary(sweep / job)
        assert s["status"] == "finished" and s["steps"] == 50000 and s["seed"] == seed
        assert s["path"] == "vectorized" and s["vector_runs"] == 2
        assert s["path_reason"] == "trained with 1 other run(s) of the sweep as one stacked model " \
                                   "(compiled, 20 steps per call)"
        assert s["config"]["train"]["fast"] == "auto"
        assert s["val_loss"] < math.log(27) - 0.5  # it learned (uniform: ln 27 = 3.30; here about 2.3-2.4)


@pytest.mark.slow  # 3 s: stopped once it says how it trains
def test_a_vectorised_group_of_fewer_steps_in_all_runs_eagerly(tmp_path):
    """The other side of the line: 2 x 49,999 steps run eagerly (no package built). Stopped with
    SIGTERM as soon as the group says how it trains."""
    sweep = tmp_path / "eager"
    proc = subprocess.Popen([sys.executable, ROOT / "train.py", *LECTURE_GROUP, "train.steps=49999",
                             "train.log_interval=10000", f"hydra.sweep.dir={sweep}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    said = None
    with killed_if_left(proc):
        for line in proc.stdout:
            assert "building the compiled package" not in line
            if "train as one stacked model" in line:
                said = line
                proc.send_signal(signal.SIGTERM)
                break
        proc.communicate(timeout=120)
    assert said is not None and "vectorised: 2 runs" in said and "batched matrix products, eagerly" in said, said
    assert proc.returncode == 128 + signal.SIGTERM
