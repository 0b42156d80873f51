"""Sweeps for real: a named sweep without -m, failures that do not stop the others, resume, the report."""
import json
import re

import pandas as pd
import pytest

from conftest import CONF, QUICK, ROOT, TINY, compose_cfg, run_cmd, summary
from nplm.config import to_config
from nplm.sweep.folders import swept_keys
from wandb_records import offline_runs, summarise

SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))


# how many jobs each named sweep launches (optuna: its number of trials), as its header says
SWEEP_JOBS = {"best": 9, "grid": 27, "lr_batch": 16, "seeds": 5, "optuna": 20}


@pytest.mark.parametrize("name", SWEEPS)
def test_named_sweeps_compose_as_multiruns(name):
    """A multirun of the jobs its header announces: those Hydra's basic sweeper makes of its grid
    (Hydra's own expansion of the params), each a valid config; optuna: the trials it is given."""
    import re

    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params
    to_config(compose_cfg([f"+sweep={name}"]))
    assert sorted(SWEEP_JOBS) == SWEEPS
    if name == "optuna":
        assert cfg.hydra.sweeper.n_trials == SWEEP_JOBS[name]
        assert set(cfg.hydra.sweeper.params) == {"model.n_embd", "model.n_hidden", "model.block_size", "optim.lr"}
        return
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    assert len(jobs) == len({tuple(j) for j in jobs}) == SWEEP_JOBS[name], jobs
    header = " ".join((CONF / "sweep" / f"{name}.yaml").read_text().splitlines()[1:3])
    assert re.search(rf"\b{SWEEP_JOBS[name]} (jobs|seeds)\b", header), header
    to_config(compose_cfg([f"+sweep={name}", *jobs[-1]]))


def test_swept_keys():
    assert swept_keys(["model.n_embd=2,10", "seed=3", "optim.lr=range(1,3)"], {"train.batch_size": "32,64"}) == \
        ["model.n_embd", "optim.lr", "train.batch_size"]


@pytest.mark.slow  # ~10 s: keeps the default suite near its time (CI runs it)
def test_named_sweep_runs_without_m_and_writes_report(tmp_path):
    sweep = tmp_path / "seeds"
    proc = run_cmd([ROOT / "train.py", "+sweep=seeds", *QUICK, f"hydra.sweep.dir={sweep}"])
    assert "Launching 5 jobs" in proc.stdout + proc.stderr
    seeds = [summary(sweep / str(j))["seed"] for j in range(5)]
    assert seeds == [1, 2, 3, 4, 5]
    assert json.loads((sweep / "sweep.json").read_text())["swept"] == ["seed"]
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert list(board["val_loss"]) == sorted(board["val_loss"])
    assert {"rank", "job", "seed", "val_loss", "train_loss", "gap", "num_params", "wall_time_s", "status"} <= set(board)
    html = (sweep / "dashboard.html").read_text()
    assert "Seed-to-seed spread" in html and 'href="val_vs_seed.png"' in html
    assert "Kneser-Ney 6-gram, val loss <b>1.9740</b>" in html  # the count baseline on the same split
    from plotly.offline import get_plotlyjs  # inlined; its code holds URLs in strings, loads none
    assert not re.search(r'(src|href)="(https?:)?//', html.replace(get_plotlyjs(), ""))  # self-contained


@pytest.mark.slow  # 9 s, like the diverging job's test: keeps the default suite near 5 min (CI runs it)
def test_failed_job_does_not_stop_the_sweep_and_is_reported(tmp_path):
    sweep = tmp_path / "s"
    proc = run_cmd([ROOT / "train.py", "-m", *QUICK, "optim.lr=0.01,-1,0.02", f"hydra.sweep.dir={sweep}"],
                   check=False)
    assert proc.returncode == 1
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert sorted(board["status"]) == ["failed", "finished", "finished"]
    failed = board[board["status"] == "failed"].iloc[0]
    assert failed["optim.lr"] == -1 and "optim.lr=-1.0 must be positive" in failed["error"]
    assert board.iloc[-1]["status"] == "failed"  # failures sort last
    assert "1 failed" in (sweep / "dashboard.html").read_text()


def test_diverging_job_stops_at_once_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "s"
    proc = run_cmd([ROOT / "train.py", "-m", *TINY, "train.steps=40", "optim.name=sgd", "optim.lr=3e38,0.01",
                    "wandb.mode=offline", f"hydra.sweep.dir={sweep}"], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out  # a diverged job is a result, not a failure (docs/sweeps.md)
    assert "diverged: the training loss is" in out and "lower optim.lr" in out
    bad, good = (summary(sweep / j) for j in "01")
    assert bad["status"] == "diverged" and bad["diverged_step"] <= 5 and bad["val_loss"] is None
    assert good["status"] == "finished"
    (run,) = offline_runs(sweep / "0")
    assert summarise(run)["summary"]["status"] == "diverged"  # W&B says so too
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert list(board["status"]) == ["finished", "diverged"]


@pytest.mark.slow  # 18 s: keeps the default suite near 5 minutes (CI runs it)
def test_resume_skips_finished_jobs(tmp_path):
    sweep = tmp_path / "s"
    args = [ROOT / "train.py", "-m", *QUICK, "seed=1,2,3", f"hydra.sweep.dir={sweep}"]
    run_cmd(args)
    first = {j: (sweep / j / "summary.json").read_text() for j in "012"}
    (sweep / "2" / "summary.json").unlink()  # job 2 was interrupted
    out = run_cmd(args)
    text = out.stdout + out.stderr
    assert "skipping job 0" in text and "skipping job 1" in text and "skipping job 2" not in text
    assert (sweep / "0" / "summary.json").read_text() == first["0"]  # untouched
    again = summary(sweep / "2")
    assert again["status"] == "finished" and again["val_loss"] == json.loads(first["2"])["val_loss"]


@pytest.mark.slow  # ~10 s: run in CI
def test_finished_run_of_another_config_is_never_overwritten(tmp_path):
    sweep = tmp_path / "s"
    run_cmd([ROOT / "train.py", "-m", *QUICK, "seed=1", f"hydra.sweep.dir={sweep}"])
    record = ["summary.json", "config.yaml", "metrics.csv", ".hydra/config.yaml", ".hydra/overrides.yaml"]
    before = [(sweep / "0" / name).read_text() for name in record]
    proc = run_cmd([ROOT / "train.py", "-m", *QUICK, "seed=9", f"hydra.sweep.dir={sweep}"], check=False)
    # that job fails (exit 1, docs/sweeps.md), saying why; the folder is left as it was
    assert proc.returncode == 1 and "never overwritten" in proc.stderr.splitlines()[-1], proc.stdout + proc.stderr
    assert [(sweep / "0" / name).read_text() for name in record] == before


def test_wandb_sweep_config_drives_train_py():
    """Syntax of the W&B sweep file, and every parameter it sets is a valid override of train.py."""
    import yaml
    spec = yaml.safe_load((ROOT / "scripts" / "wandb_sweep.yaml").read_text())
    assert spec["program"] == "train.py" and (ROOT / spec["program"]).is_file()
    assert spec["method"] in ("grid", "random", "bayes")
    assert spec["metric"] == {"name": "val_loss", "goal": "minimize"}  # a key of the run's W&B summary
    assert spec["command"] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    overrides = []
    for key, p in spec["parameters"].items():
        assert len({"values", "value", "distribution"} & set(p)) == 1, key
        if "distribution" in p:
            assert p["distribution"] in ("uniform", "log_uniform_values", "int_uniform", "q_log_uniform_values")
            assert p["min"] < p["max"]
            overrides.append(f"{key}={p['min']}")
        else:
            overrides.append(f"{key}={p['values'][0] if 'values' in p else p['value']}")
    to_config(compose_cfg(overrides))  # unknown keys or wrong types would fail here


@pytest.mark.slow
def test_optional_launchers_and_optuna(tmp_path):
    """The presets with the optional plugins (pip install -e '.[parallel,slurm,optuna]', which [test] includes)."""
    import importlib
    for plugin in ("hydra_joblib_launcher", "hydra_optuna_sweeper", "hydra_submitit_launcher"):
        importlib.import_module(f"hydra_plugins.{plugin}")  # [test] installs them: a broken install fails, not skips
    for preset in ("parallel", "local"):
        sweep = tmp_path / preset
        run_cmd([ROOT / "train.py", "-m", *QUICK, "seed=1,2", f"+launcher={preset}", f"hydra.sweep.dir={sweep}"])
        summaries = [summary(sweep / j) for j in "01"]
        assert [s["status"] for s in summaries] == ["finished", "finished"]
        assert all(s["threads"] == 1 for s in summaries)
        assert (sweep / "leaderboard.csv").is_file()
    sweep = tmp_path / "optuna"
    proc = run_cmd([ROOT / "train.py", "+sweep=optuna", "hydra.sweeper.n_trials=3", *QUICK, "optim.lr=3e38",
                    "optim.name=sgd", f"hydra.sweep.dir={sweep}"], check=False)
    # optim.lr=3e38 makes every trial diverge: the sweep still ends, with inf, not NaN, and exit 0
    assert proc.returncode == 0 and "Best value: inf" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert set(pd.read_csv(sweep / "leaderboard.csv")["status"]) == {"diverged"}


@pytest.mark.slow
def test_fifty_jobs_in_one_process_all_recorded_memory_flat_wandb_finished(tmp_path):
    sweep = tmp_path / "s50"
    # each job's model holds 16 MB (a hashed n-gram table of 4.1M weights; cheap to train and evaluate), so
    # that a job that left its model behind would show in the process's memory
    run_cmd([ROOT / "train.py", "-m", "seed=range(50)", *TINY, "train.steps=20", "train.eval_interval=10",
             "train.log_interval=10", "model.maxent_order=4", "wandb.mode=offline", f"hydra.sweep.dir={sweep}"],
            timeout=600)
    summaries = [summary(sweep / str(j)) for j in range(50)]
    assert [s["status"] for s in summaries] == ["finished"] * 50
    assert sorted(s["seed"] for s in summaries) == list(range(50))
    for j in (0, 25, 49):
        (run,) = offline_runs(sweep / str(j))
        assert summarise(run)["exit_code"] == 0
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert len(board) == 50 and (board["status"] == "finished").all()

    # memory flat: the last 25 jobs (past the first ones' one-off imports and caches, which depend on the
    # machine and the libraries) add less than two jobs' weights in all, where jobs that each kept their
    # model would add 25 times it, more with its optimiser (on a 2-core Linux machine the 25 jobs added
    # 5 MB; the weights are 16 MB)
    weights_mb = summaries[0]["num_params"] * 4 / 2**20
    rss = [s["rss_mb"] for s in summaries]
    if rss[0] is None:  # nplm/tracking.py reads it from /proc (Linux)
        pytest.skip("no resident memory recorded on this system")
    assert rss[49] - rss[24] < 2 * weights_mb, (weights_mb, rss)
