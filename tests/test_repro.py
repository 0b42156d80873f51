"""Reproducible mode (nplm/repro.py) and scripts/reproduce.py.

Another CPU is simulated on this one by forcing the code paths from outside, as a different machine
would pick them: torch's AVX2 kernels and MKL's AVX2 branch, against the plain ones the pins choose.
In reproducible mode (the default) the pins override them and metrics.csv is bit-identical; with
reproducible=false the same runs differ, which shows the test can fail. That an Intel and an AMD CPU
give the same numbers was measured, not simulated (docs/reproducibility.md)."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, run_cmd, summary
from nplm import repro

RUN = ["train.steps=200", "train.eval_interval=100", "train.log_interval=50", "train.num_samples=2",
       "wandb.mode=disabled"]
THIS_CPU = {k: v for k, v in repro.PINS.items() if k != "TORCHINDUCTOR_CPP_MARCH"}
OTHER_CPU = {k: v for k, v in repro.AVX2_PATHS.items() if k != "TORCHINDUCTOR_CPP_MARCH"}

# only the tests that force another CPU's code paths (the `runs` fixture) need one; the rest run anywhere
needs_avx2 = pytest.mark.skipif(not repro.expected() or "avx2" not in repro.cpu()["isa"],
                                reason="simulating another CPU needs an x86-64 CPU with AVX2")


def numbers(metrics_csv: str) -> list[list[str]]:
    """metrics.csv's rows as written, without the elapsed seconds (the one column that is a time)."""
    rows = [line.split(",") for line in metrics_csv.splitlines()]
    drop = rows[0].index("elapsed")
    return [row[:drop] + row[drop + 1:] for row in rows]


def train(run_dir, env, *overrides):
    full = {k: v for k, v in os.environ.items() if k not in THIS_CPU and k != "NPLM_PINNED"} | env
    proc = subprocess.run([sys.executable, ROOT / "train.py", *RUN, *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, capture_output=True, text=True, env=full, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return numbers((run_dir / "metrics.csv").read_text()), summary(run_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repro")
    out = {}
    for mode in ("reproducible=true", "reproducible=false"):
        for cpu, env in (("this", THIS_CPU), ("other", OTHER_CPU)):
            out[mode, cpu] = (tmp / f"{mode[13:]}-{cpu}", *train(tmp / f"{mode[13:]}-{cpu}", env, mode))
    return out


@needs_avx2
@pytest.mark.slow  # 23 s: keeps the default suite near 5 minutes (CI runs it)
def test_reproducible_mode_gives_the_same_numbers_whatever_code_paths_the_cpu_would_pick(runs):
    _, this, s = runs["reproducible=true", "this"]
    _, other, s_other = runs["reproducible=true", "other"]
    assert this == other and s["val_loss"] == s_other["val_loss"]
    assert s["pins"] == s_other["pins"] == repro.PINS
    assert s["threads"] == 1 and s["deterministic"] and s["config"]["reproducible"] is True
    assert "avx2" in s["cpu"]["isa"]
    # outside it, the code paths the CPU picks move the numbers: the comparison above can fail
    _, free_this, f = runs["reproducible=false", "this"]
    _, free_other, f_other = runs["reproducible=false", "other"]
    assert free_this != free_other and f["val_loss"] != f_other["val_loss"]
    assert f_other["pins"]["ATEN_CPU_CAPABILITY"] == "avx2" and not f["deterministic"]


@needs_avx2
@pytest.mark.slow  # 8 s: keeps the default suite near 5 minutes (CI runs it)
def test_reproduce_script_says_bit_identical_or_where_the_numbers_part(runs, tmp_path):
    folder = runs["reproducible=true", "other"][0]
    again = run_cmd([ROOT / "scripts/reproduce.py", folder, f"out={tmp_path / 'again'}"])
    assert "bit-identical" in again.stdout and (tmp_path / "again" / "ckpt.pt").is_file()
    assert numbers((tmp_path / "again" / "metrics.csv").read_text()) == numbers((folder / "metrics.csv").read_text())
    assert "note:" not in again.stdout
    # a run made with the pins before 2026-12-01 is said to be one whose numbers will not come back
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    (old / "summary.json").write_text(json.dumps(summary(old) | {"pins": repro.AVX2_PATHS}))
    noted = run_cmd([ROOT / "scripts/reproduce.py", old, f"out={tmp_path / 'again2'}"], check=False)
    assert noted.stdout.startswith(f"note: {old} ran with other pins than this version's reproducible mode")
    # only the record says other pins: its numbers were made with this version's, so they come back (exit 0)
    assert noted.returncode == 0 and f"bit-identical: {tmp_path / 'again2'} has the same" in noted.stdout, noted.stdout
    # two runs of one config on different code paths: the first step they part, the largest gaps, why
    free = runs["reproducible=false", "other"][0]
    proc = run_cmd([ROOT / "scripts/reproduce.py", runs["reproducible=false", "this"][0], f"against={free}"],
                   check=False)
    assert proc.returncode == 1 and proc.stdout.startswith("not identical")
    assert re.search(r"metrics first differ at step \d+: (train|val)/loss \S+ against \S+", proc.stdout)
    assert "largest difference of val/loss" in proc.stdout and "recorded pins" in proc.stdout
    bad = run_cmd([ROOT / "scripts/reproduce.py", tmp_path / "nothing"], check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and len(bad.stderr.splitlines()) == 1


def test_threads_and_a_config_saying_false_need_the_command_line(tmp_path):
    proc = run_cmd([ROOT / "train.py", "train.threads=2", f"hydra.run.dir={tmp_path / 'r'}"], check=False)
    assert proc.returncode == 2 and "train.threads=2 needs reproducible=false" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_benchmark_compare_prints_each_common_figure_as_a_ratio_and_names_another_machine():
    import importlib.util
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    machine = bench.fingerprint()
    assert machine["cpu"]["isa"] and machine["cores"] >= 1 and len(machine["fingerprint"]) == 12
    old = {"machine": machine | {"date": "2026-11-01"},
           "results": {"steps": {"runner_steps_per_s": 1000.0, "all": [1.0, 2.0]}, "load": {"busy": {"one": 400}}}}
    new = {"machine": machine, "results": {"steps": {"runner_steps_per_s": 800.0}, "memory": {"ratio": 1.2}}}
    text = bench.compare(old, new)
    assert "the same machine" in text and "steps.runner_steps_per_s" in text and "0.800x" in text
    assert "memory" not in text and "load" not in text  # only figures measured in both runs
    elsewhere = bench.compare({**old, "machine": {**old["machine"], "fingerprint": "x", "cores": 64}}, new)
    assert "ANOTHER machine" in elsewhere and "cores 64 -> " in elsewhere
