"""What the training process does at start-up, watched from inside it: `python train.py` run under an
audit hook (sys.addaudithook) that records every module import and every subprocess started, in
order, and at exit which modules the process holds."""
import json
import sys

import pytest

from conftest import TINY, run_cmd, summary
from nplm.threads import cores
from wandb_records import offline_runs, summarise

# Runs train.py as `python train.py ARGS` would (runpy, as __main__), with the hook installed first.
WATCH = """
import atexit, json, runpy, sys
out, events = sys.argv[1], []

def hook(event, args):
    if event == "import":
        events.append(["import", args[0]])
    elif event == "subprocess.Popen":
        events.append(["popen", [str(a) for a in args[1]] if isinstance(args[1], (list, tuple)) else [str(args[1])]])

def report():
    with open(out, "w") as f:
        json.dump({"events": events, "modules": sorted(sys.modules)}, f)

sys.addaudithook(hook)
atexit.register(report)
sys.argv = ["train.py", *sys.argv[2:]]
runpy.run_path("train.py", run_name="__main__")
"""


def worker(event, name):
    """Whether an event starts this interpreter's `-m nplm.<...name...>` worker."""
    kind, args = event
    return kind == "popen" and args[0] == sys.executable and "-m" in args and \
        args[args.index("-m") + 1].startswith("nplm") and name in args[args.index("-m") + 1]


def test_workers_start_before_torch_is_imported_and_no_compiler_is_loaded(tmp_path):
    run_dir, record = tmp_path / "run", tmp_path / "startup.json"
    run_cmd(["-c", WATCH, record, *TINY, "wandb.mode=offline", f"hydra.run.dir={run_dir}"])
    found = json.loads(record.read_text())
    events, modules = found["events"], set(found["modules"])
    assert "torch" in modules and "nplm" in modules  # the record is the training process's
    assert summary(run_dir)["status"] == "finished"
    # no compiler in the training process of a default run (the fast path builds in a child process)
    compiler = {m for m in modules if m.split(".")[0] in ("sympy", "triton")
                or m.startswith(("torch._dynamo", "torch._inductor"))}
    assert not compiler, sorted(compiler)[:20]

    if cores() < 2:  # os.sched_getaffinity where there is one (Linux), else os.cpu_count()
        pytest.skip("the plot and W&B workers start only where there are 2+ cores")

    first_torch = next(i for i, (kind, what) in enumerate(events)
                       if kind == "import" and (what == "torch" or what.startswith("torch.")))
    plot_workers = [i for i, e in enumerate(events) if worker(e, "plot")]
    wandb_workers = [i for i, e in enumerate(events) if worker(e, "wandb")]
    assert len(plot_workers) == 1 and len(wandb_workers) == 1, [e for e in events if e[0] == "popen"]
    # both workers start first, so that they import matplotlib and wandb while this process imports torch
    assert plot_workers[0] < first_torch and wandb_workers[0] < first_torch

    # the workers did their work: the plots and the W&B run are there, and neither library is in this process
    assert (run_dir / "loss.png").is_file() and (run_dir / "embedding.png").is_file()
    (run,) = offline_runs(run_dir)
    assert summarise(run)["exit_code"] == 0
    assert not {m for m in modules if m == "wandb" or m.startswith("wandb.")}
    assert not {m for m in modules if m == "matplotlib" or m.startswith("matplotlib.")}
