"""Promises of a sweep's folder and report, through the real `python train.py -m` command: the default
folder `outputs/sweeps/<date_time>/<job>`, tool runs (mode=lr_find, overfit_batch) left out of the
leaderboard, curves of more than 300 points thinned evenly, the best run's `scripts/reproduce.py` line
(run as shown, it re-runs the run bit for bit), and, while a sweep runs, a page that reloads itself
every 30 s and says the time left.

The sweep of the module fixture runs in a temporary folder, as a user runs it in the checkout: the
command `python /work/main/train.py` with that folder as its working directory, and a copy of
scripts/reproduce.py there so that the page's line runs as it is shown, writing under that folder."""
import csv
import html
import itertools
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from conftest import QUICK, ROOT, TINY, killed_if_left, run_cmd, summary

# the network's job logs every step (400 rows, more than the 300 points a curve is thinned to)
LONG_CURVE = ["train.steps=400", "train.log_interval=1", "train.eval_interval=100"]
TOOLS = ["mode=train,lr_find,overfit_batch", "lr_find.steps=30", "overfit_batch.steps=30"]


def plotly_traces(page: str, div: str) -> list[dict]:
    """The traces of one plotly figure of a dashboard (the data given to Plotly.newPlot for `div`)."""
    found = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div) + r'",\s*', page)
    assert found, f"no figure {div}"
    traces, _ = json.JSONDecoder().raw_decode(page, found.end())
    return traces


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished sweep in the default folder: a network (job 0) and the two tools (jobs 1, 2)."""
    cwd = tmp_path_factory.mktemp("user")
    (cwd / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "reproduce.py", cwd / "scripts" / "reproduce.py")
    before = datetime.now()
    proc = run_cmd([ROOT / "train.py", "-m", *QUICK, *LONG_CURVE, *TOOLS], cwd=cwd)
    after = datetime.now()
    (folder,) = (cwd / "outputs" / "sweeps").iterdir()
    return {"cwd": cwd, "folder": folder, "proc": proc, "before": before, "after": after}


def test_a_sweep_without_hydra_sweep_dir_goes_to_outputs_sweeps_date_time_job(swept):
    folder = swept["folder"]
    assert [p.name for p in (swept["cwd"] / "outputs").iterdir()] == ["sweeps"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}", folder.name), folder.name
    made = datetime.strptime(folder.name, "%Y-%m-%d_%H-%M-%S")
    assert swept["before"].replace(microsecond=0) <= made <= swept["after"]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["0", "1", "2"]
    assert f"sweep folder: outputs/sweeps/{folder.name} " in swept["proc"].stdout  # printed as it starts
    assert f"dashboard: outputs/sweeps/{folder.name}/dashboard.html" in swept["proc"].stdout


def test_tool_runs_are_left_out_of_the_leaderboard(swept):
    folder = swept["folder"]
    records = {job: summary(folder / job) for job in ("0", "1", "2")}
    assert {job: (s["mode"], s["status"]) for job, s in records.items()} == \
        {"0": ("train", "finished"), "1": ("lr_find", "finished"), "2": ("overfit_batch", "finished")}
    assert "suggested_lr" in records["1"] and "overfit_passed" in records["2"]  # the tools did run
    with open(folder / "leaderboard.csv", newline="") as f:
        board = list(csv.DictReader(f))
    assert [(row["job"], row["status"]) for row in board] == [("0", "finished")]
    assert float(board[0]["val_loss"]) == records["0"]["val_loss"]
    md_rows = [line for line in (folder / "leaderboard.md").read_text().splitlines()[2:] if line.strip()]
    assert len(md_rows) == 1 and md_rows[0].split("|")[2].strip() == "0"
    page = (folder / "dashboard.html").read_text()
    table = page[page.index('<table class="sortable">'):]
    assert len(re.findall(r"<tr><td", table)) == 1 and 'href="0"' in table and 'href="1"' not in table
    assert {t["legendgroup"] for t in plotly_traces(page, "curves-plot")} == {f"outputs/sweeps/{folder.name}/0"}


def test_the_ended_page_does_not_call_tool_runs_never_started(swept):
    page = (swept["folder"] / "dashboard.html").read_text()
    status = re.search(r'<p class="status ended">(.*?)</p>', page).group(1)
    assert "never started" not in status, status
    assert status.endswith(": 1 job (1 finished); 2 tool runs (mode=lr_find or overfit_batch), not ranked: their "
                           "plots are in their folders."), status
    assert "<br>\n3 jobs: 1 finished, 2 tool runs.\n" in page


def test_curves_longer_than_300_points_are_thinned_evenly_to_300_not_cut(swept):
    """docs/sweeps.md: curves longer than 300 points are thinned evenly (the last point kept), not cut:
    each point the mean of an equal run of rows (1 or 2 here), at the run's last step."""
    job = swept["folder"] / "0"
    rows = metrics(job)
    train = {int(r["step"]): float(r["train/loss"]) for r in rows}
    assert sorted(train) == list(range(1, 401))
    traces = plotly_traces((swept["folder"] / "dashboard.html").read_text(), "curves-plot")
    (val,) = [t for t in traces if t["xaxis"] == "x"]
    (thinned,) = [t for t in traces if t["xaxis"] == "x2"]
    assert len(thinned["x"]) == len(thinned["y"]) == 300
    assert thinned["x"][0] <= 2 and thinned["x"][-1] == 400  # from the start to the last step: not cut
    edges = [0, *thinned["x"]]
    assert all(b - a in (1, 2) for a, b in itertools.pairwise(edges))  # even runs of rows
    for (a, b), y in zip(itertools.pairwise(edges), thinned["y"], strict=True):
        assert y == pytest.approx(sum(train[s] for s in range(a + 1, b + 1)) / (b - a), rel=1e-12, abs=0), (a, b)
    # a short curve is drawn whole: the val loss at its 4 evaluations
    evaluated = [(int(r["step"]), float(r["val/loss"])) for r in rows if r["val/loss"]]
    assert list(zip(val["x"], val["y"])) == evaluated and len(evaluated) == 4


def test_the_best_runs_reproduce_line_reruns_it_bit_for_bit(swept):
    """The best run's section shows `python scripts/reproduce.py <its folder>`; that very line, run where
    the sweep ran, trains the run again and finds the same numbers (exit 0)."""
    page = (swept["folder"] / "dashboard.html").read_text()
    best = page[page.index('<h2 id="best">'):page.index('<h2 id="leaderboard">')]
    (line,) = [html.unescape(m) for m in re.findall(r"<pre>(python scripts/reproduce\.py [^<]*)</pre>", best)]
    job = f"outputs/sweeps/{swept['folder'].name}/0"
    assert line == f"python scripts/reproduce.py {job}"
    command = shlex.split(line)
    proc = run_cmd([*command[1:]], cwd=swept["cwd"])  # `python` is this interpreter
    (again,) = (swept["cwd"] / "outputs" / "reproduced").iterdir()
    assert f"bit-identical: {again.resolve()} has the same 400 metrics rows and final losses as {job}" in proc.stdout
    assert summary(again)["val_loss"] == summary(swept["cwd"] / job)["val_loss"]
    assert metrics(again) and [r["train/loss"] for r in metrics(again)] == \
        [r["train/loss"] for r in metrics(swept["cwd"] / job)]


@pytest.mark.slow  # 4 s
def test_a_sweep_of_tool_runs_only_ends_with_a_page_that_stops_reloading(tmp_path):
    folder = tmp_path / "tools"
    proc = run_cmd([ROOT / "train.py", "-m", *QUICK, "mode=lr_find", "optim.lr=0.01,0.02", "lr_find.steps=30",
                    f"hydra.sweep.dir={folder}"])
    assert [summary(folder / job)["status"] for job in ("0", "1")] == ["finished", "finished"]
    assert "could not write the sweep report" not in proc.stdout + proc.stderr
    page = (folder / "dashboard.html").read_text()
    assert 'http-equiv="refresh"' not in page and "<b>ended</b>" in page
    assert f"sweep of 2 jobs (2 tool runs); dashboard: {folder / 'dashboard.html'}" in proc.stdout
    assert "0 jobs (none); 2 tool runs (mode=lr_find or overfit_batch), not ranked" in page
    assert "<br>\n2 jobs: 2 tool runs.\n" in page


def test_a_live_page_reloads_every_30_s_and_says_the_time_left_until_the_sweep_ends(tmp_path):
    """Read while the sweep's second job trains (its first progress line is the cue: the page was
    rewritten when that job started): it reloads itself every 30 s and, one job having ended, says about
    how long is left. Ctrl-C ends the sweep (130); its last page says it ended and does not reload."""
    folder = tmp_path / "live"
    settings = [o for o in TINY if not o.startswith(("train.steps=", "train.log_interval=", "train.eval_interval="))]
    proc = subprocess.Popen([sys.executable, ROOT / "train.py", "-m", *settings, "wandb.mode=disabled",
                             "train.log_interval=1", "train.eval_interval=100", "train.steps=400,1000000",
                             f"hydra.sweep.dir={folder}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with killed_if_left(proc):
        for line in proc.stdout:
            if re.search(r"step +1/1000000 \|", line):
                break
        else:
            pytest.fail(f"the second job never trained: {proc.communicate()}")
        live = (folder / "dashboard.html").read_text()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert '<meta http-equiv="refresh" content="30">' in live
    status = re.search(r'<p class="status">(.*?)</p>', live).group(1)
    assert re.fullmatch(r"<b>running</b>: 1 finished, 1 running, 0 failed, 0 waiting; about (\d+ s|\d+ min|\d+\.\d h) "
                        r"left\. Updated \d\d:\d\d:\d\d; this page reloads itself every 30 s until the sweep ends\.",
                        status), status
    thinned = [t for t in plotly_traces(live, "curves-plot") if t["xaxis"] == "x2"]
    assert [(len(t["x"]), t["x"][-1]) for t in thinned] == [(300, 400)]  # the finished job's, thinned live too

    assert proc.returncode == 128 + signal.SIGINT, err
    assert f"to go on, run the same command with hydra.sweep.dir={folder}" in err
    final = (folder / "dashboard.html").read_text()
    assert "http-equiv=\"refresh\"" not in final
    ended = re.search(r'<p class="status ended">(.*?)</p>', final).group(1)
    assert ended.startswith("<b>ended</b> ") and "2 jobs (1 finished, 1 interrupted)" in ended, ended
    assert [summary(folder / job)["status"] for job in ("0", "1")] == ["finished", "interrupted"]
