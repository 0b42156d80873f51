"""The sweep dashboard for real: sweeps run by train.py, the page rendered by headless Chromium (tests/browser.py),
while the sweep runs and after; unreadable job folders; comparisons of sweeps and of single runs."""
import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser

import pandas as pd
import pytest
from omegaconf import OmegaConf

from browser import render
from conftest import CONF, QUICK, ROOT, TINY, compose_cfg, run_cmd, summary, train
from holds import release, start_held, wait_held
from nplm.sweep.dashboard import _colours, _parallel, importance
from nplm.sweep.jobs import _groups_selected, rerun_command
from nplm.sweep.pngs import axis_kind
from nplm.sweep.report import write_live


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished 8-job sweep over a log-spaced learning rate, an embedding size and two seeds."""
    folder = tmp_path_factory.mktemp("dash") / "sweep"
    run_cmd([ROOT / "train.py", "-m", *QUICK, "model.n_embd=2,4", "optim.lr=0.003,0.03", "seed=1,2",
             f"hydra.sweep.dir={folder}"])
    return folder


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        self.hrefs += [v for k, v in attrs if tag == "a" and k == "href"]


RUN_FILES = ["train.log", "metrics.csv", "summary.json", "config.yaml", "loss.png", "embedding.png", "samples.tsv"]


def test_finished_sweep_dashboard_links_every_job_and_plot(sweep):
    """Without a browser: the page links each job's folder and files (the best job's folder once more,
    from its own section) and the sweep's PNGs, nothing else, and every link reaches a file or folder."""
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert jobs == [str(j) for j in range(8)] and json.loads((sweep / "sweep.json").read_text())["jobs"] == 8
    swept = json.loads((sweep / "sweep.json").read_text())["swept"]
    assert swept == ["model.n_embd", "optim.lr", "seed"]
    best = str(pd.read_csv(sweep / "leaderboard.csv")["job"][0])
    links = Links()
    links.feed((sweep / "dashboard.html").read_text())
    local = [h for h in links.hrefs if not h.startswith("#")]
    expected = [best, *(f for j in jobs for f in (j, *(f"{j}/{name}" for name in RUN_FILES))), "best_curves.png",
                *(f"val_vs_{key.replace('.', '_')}.png" for key in swept)]
    assert sorted(local) == sorted(expected)
    assert all((sweep / h).exists() for h in local), local


def test_finished_sweep_dashboard_in_chromium(sweep, tmp_path):
    page = render(sweep / "dashboard.html", tmp_path)  # skips where there is no Chromium
    assert page["errors"] == [] and not page["reloads"]  # an ended sweep's page stays still
    jobs = {str(p) for p in sweep.iterdir() if (p / "summary.json").is_file()}
    plots = page["plots"]

    # every run's curves: one val trace (left) and one train trace (right) per run, grouped by run
    curves = plots["curves-plot"]["traces"]
    for axis in ("x", "x2"):
        assert sorted(t["legendgroup"] for t in curves if t["xaxis"] == axis) == sorted(jobs)
    assert len(curves) == plots["curves-plot"]["drawn"] == 16  # each one drawn
    baseline = json.loads((sweep / "baseline.json").read_text())["val_loss"]
    assert {2.17, baseline} <= set(plots["curves-plot"]["shapes"])  # on every loss view

    # val loss against each swept key: one trace per run in each subplot, and the means
    values = plots["values-plot"]
    swept = json.loads((sweep / "sweep.json").read_text())["swept"]
    for n, key in enumerate(swept, 1):
        axis = "x" if n == 1 else f"x{n}"
        traces = [t for t in values["traces"] if t["xaxis"] == axis]
        assert sorted(t["legendgroup"] for t in traces if t["legendgroup"] != "mean") == sorted(jobs), key
    assert len(values["traces"]) == values["drawn"] == 3 * (8 + 1)  # each run and the mean, in each subplot
    assert values["axes"]["xaxis2"] == "log" and values["axes"]["xaxis3"] == "category"  # lr, seed
    assert {2.17, baseline} <= set(values["shapes"])

    (parallel,) = plots["parallel-plot"]["traces"]
    assert parallel["type"] == "parcoords"
    assert parallel["dims"] == [["model.n_embd", 8], ["optim.lr (log)", 8], ["seed", 8], ["val loss", 8]]
    # each run has one colour: its line across the axes is the colour of its curves
    curve_colour = {t["legendgroup"]: t["colour"] for t in curves if t["xaxis"] == "x"}
    job_of = {summary(j)["val_loss"]: j for j in jobs}
    assert len(job_of) == 8 and all(colour for colour in curve_colour.values())
    assert sorted(map(tuple, parallel["lines"])) == sorted((loss, curve_colour[j]) for loss, j in job_of.items())
    assert [t["type"] for t in plots["importance-plot"]["traces"]] == ["bar"]

    # the leaderboard sorts by a header's click, both ways, failed or empty cells last
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert page["sorted"]["asc"] == [str(j) for j in board["job"]]
    assert page["sorted"]["desc"] == [str(j) for j in board["job"]][::-1]


def test_best_run_command_trains_the_same_run(sweep, tmp_path):
    """The command the dashboard shows for the best job trains it again to the same val loss."""
    best = pd.read_csv(sweep / "leaderboard.csv").iloc[0]
    job = sweep / str(best["job"])
    command = rerun_command(job)
    assert command in (sweep / "dashboard.html").read_text()
    args = command.split()[2:]
    assert f"model.n_embd={best['model.n_embd']}" in args and f"seed={best['seed']}" in args
    run_cmd([ROOT / "train.py", *args, f"hydra.run.dir={tmp_path / 'again'}"])
    assert summary(tmp_path / "again")["val_loss"] == summary(job)["val_loss"]


@pytest.mark.slow  # 10 s: keeps the default suite near 5 minutes (CI runs it)
def test_live_dashboard_during_a_sweep(tmp_path):
    """Written when the sweep starts and as jobs start and end: a page read mid-sweep shows the partial
    sweep and reloads itself; the page at the end does not. The page is read where the sweep is held
    (tests/holds.py): right after it started, and in its second job; no timing."""
    folder, gate = tmp_path / "live", tmp_path / "gate"
    proc = start_held([ROOT / "train.py", "-m", *TINY, "wandb.mode=disabled", "seed=1,2,3", f"hydra.sweep.dir={folder}"],
                      gate, r"^sweep folder: ", (r"^step +20/60 ", 2), stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    pages = []
    for hold in (0, 1):
        wait_held(proc, gate, hold)
        pages.append((folder / "dashboard.html").read_text())
        release(gate, hold)
    assert proc.wait(timeout=300) == 0

    def status(text):
        found = re.search(r"<b>running</b>: (\d+) finished, (\d+) running, (\d+) failed, (\d+) waiting", text)
        return found and tuple(map(int, found.groups()))
    assert status(pages[0]) == (0, 0, 0, 3)  # at the start
    assert status(pages[1]) == (1, 1, 0, 1)  # mid-sweep: the first job finished, the second running
    snapshot = tmp_path / "snapshot.html"
    snapshot.write_text(pages[1])
    page = render(snapshot, tmp_path)
    assert page["errors"] == [] and page["reloads"]
    val = [t for t in page["plots"]["curves-plot"]["traces"] if t["xaxis"] == "x"]
    assert len(val) == 1  # the finished run's (the page was written when the second job started)
    final = (folder / "dashboard.html").read_text()
    assert "http-equiv=\"refresh\"" not in final and "<b>ended</b>" in final and "3 finished" in final


def test_live_updates_wait_for_a_vectorised_group_and_never_touch_an_ended_sweep(sweep, tmp_path):
    """While jobs of a vectorised group still hold their training (vectorized.pt), the group's last
    job writes the page, not each one; an ended sweep's report is never rewritten by a late job."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    state = json.loads((copy / "sweep.json").read_text())
    (copy / "dashboard.html").write_text("the report")
    write_live(copy)  # ended
    assert (copy / "dashboard.html").read_text() == "the report"
    del state["ended"]
    (copy / "sweep.json").write_text(json.dumps(state))
    (copy / "3" / "vectorized.pt").write_bytes(b"")
    write_live(copy)  # a group's job is still to take its training
    assert (copy / "dashboard.html").read_text() == "the report"
    (copy / "3" / "vectorized.pt").unlink()
    write_live(copy)
    assert "<b>running</b>: 8 finished, 0 running, 0 failed, 0 waiting" in (copy / "dashboard.html").read_text()


def test_live_dashboard_of_a_sweep_without_jobs_yet(tmp_path, caplog):
    """The page written as a sweep starts, before its first job has a folder: every job waiting."""
    (tmp_path / "sweep.json").write_text(json.dumps({"swept": ["seed"], "command": ["train.py", "-m", "seed=1,2,3"],
                                                     "started": time.time(), "jobs": 3}))
    write_live(tmp_path)
    assert "could not update" not in caplog.text
    assert "<b>running</b>: 0 finished, 0 running, 0 failed, 3 waiting" in (tmp_path / "dashboard.html").read_text()


@pytest.mark.slow  # 14 s: keeps the default suite near 5 minutes (CI runs it)
def test_unreadable_job_folders_are_listed_and_the_rest_shown(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    (copy / "1" / "summary.json").write_text('{"status": "fini')  # cut short
    (copy / "2" / "summary.json").unlink()
    run_cmd([ROOT / "scripts/report.py", copy])
    board = pd.read_csv(copy / "leaderboard.csv")
    bad = board[board["job"].isin([1, 2])]
    assert list(bad["status"]) == ["unreadable", "unreadable"] and list(bad.index) == [6, 7]  # listed last
    assert "cannot be read" in bad.iloc[0]["error"] + bad.iloc[1]["error"]
    assert (board["status"] == "finished").sum() == 6
    page = render(copy / "dashboard.html", tmp_path)
    assert page["errors"] == []
    assert len(page["plots"]["parallel-plot"]["traces"][0]["dims"]) == 4
    assert page["plots"]["parallel-plot"]["traces"][0]["dims"][-1] == ["val loss", 6]


@pytest.mark.slow  # 30 s: another sweep and a run (CI runs it)
def test_comparing_sweeps_shows_only_hyperparameters_that_differ_and_runs_side_by_side(sweep, tmp_path, tiny_run):
    other = tmp_path / "other"
    run_cmd([ROOT / "train.py", "-m", *QUICK, "train.log_interval=5", "model.n_embd=2", "optim.lr=0.003,0.03",
             f"hydra.sweep.dir={other}"])
    out = tmp_path / "compare"
    proc = run_cmd([ROOT / "scripts/report.py", sweep, other, "--out", out])
    assert f"leaderboard: {out / 'leaderboard.md'}" in proc.stdout
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board["sweep"]) == ["other"] * 2 + ["sweep"] * 8
    assert sorted(board["model.n_embd"]) == [2] * 6 + [4] * 4
    assert "train.log_interval" in board  # it differs: shown in the table
    assert not (out / "val_vs_train_log_interval.png").exists()  # but it is not a hyperparameter
    assert all((out / f"val_vs_{key}.png").is_file() for key in ("model_n_embd", "optim_lr", "seed"))
    html = (out / "dashboard.html").read_text()
    assert "Swept: model.n_embd, optim.lr, seed." in html

    second = tmp_path / "run2"
    train(second, "model.n_embd=6")
    runs = tmp_path / "runs"
    run_cmd([ROOT / "scripts/report.py", tiny_run, second, "--out", runs])
    board = pd.read_csv(runs / "leaderboard.csv")
    assert sorted(board["model.n_embd"]) == [4, 6] and (board["status"] == "finished").all()
    assert "Swept: model.n_embd." in (runs / "dashboard.html").read_text()
    bad = run_cmd([ROOT / "scripts/report.py", tmp_path / "nope"], check=False)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert bad.stderr.startswith(f"error: {str(tmp_path / 'nope')!r} does not exist; give a sweep folder"), bad.stderr


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "sweep").glob("*.yaml")))
def test_rerun_command_of_a_named_sweeps_job_composes_its_config(name, tmp_path):
    """A named sweep's job: +sweep=NAME and one value of each of its keys. The command shown for it,
    without +sweep (which would start a sweep), composes the same config."""
    sweep_conf = OmegaConf.load(CONF / "sweep" / f"{name}.yaml")
    params = {k: str(v).split(",")[0] for k, v in sweep_conf.hydra.sweeper.params.items()}
    if name == "optuna":
        params = {"model.n_embd": "10", "optim.lr": "0.01"}
    overrides = [f"+sweep={name}", "train.steps=100", *(f"{k}={v}" for k, v in params.items())]
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    command = rerun_command(job).split()
    assert command[:2] == ["python", "train.py"] and not any(a.startswith("+sweep") for a in command)

    def task(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    assert task(compose_cfg(command[2:])) == task(compose_cfg(overrides))
    assert _groups_selected(CONF / "sweep" / f"{name}.yaml") == (["experiment=best"] if name == "best" else [])


def test_axes_and_importance():
    lr = pd.Series([0.003, 0.01, 0.03, 0.1])
    assert axis_kind(lr, "optim.lr") == "log"
    assert axis_kind(pd.Series([100, 200, 300]), "model.n_hidden") == "linear"
    assert axis_kind(pd.Series([1, 2, 3]), "seed") == "category"
    assert axis_kind(pd.Series(["none", "layernorm"]), "model.norm") == "category"
    assert axis_kind(pd.Series([True, False]), "model.direct") == "category"
    # val loss set by the learning rate alone: it explains all of it, the seed nothing
    done = pd.DataFrame({"optim.lr": [0.01, 0.01, 0.1, 0.1], "seed": [1, 2, 1, 2], "val_loss": [2.3, 2.3, 2.1, 2.1]})
    table = importance(done, ["seed", "optim.lr"]).set_index("key")
    assert table.loc["optim.lr", "share"] == pytest.approx(1.0) and table.loc["seed", "share"] == pytest.approx(0.0)
    assert table.loc["optim.lr", "rank_corr"] == pytest.approx(-1.0)
    assert list(table.index) == ["optim.lr", "seed"]


def test_parallel_val_loss_axis_labels_do_not_overlap_a_reference():
    """The val-loss axis: evenly spaced ticks, and the lecture's 2.17 in place of a tick drawn on it."""
    done = pd.DataFrame({"path": ["a", "b", "c"], "model.n_embd": [2, 4, 8], "val_loss": [2.169, 2.3, 2.6]})
    (trace,) = _parallel(done, ["model.n_embd"], [(2.17, "lecture 2.17", {})], _colours(done))["data"]
    axis = trace["dimensions"][-1]
    assert "lecture 2.17" in axis["ticktext"] and "2.169" not in axis["ticktext"]
    assert sorted(axis["ticktext"]) == sorted(["lecture 2.17", "2.277", "2.385", "2.492", "2.600"])
