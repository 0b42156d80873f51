"""Bad input, through the real commands: every mistake gets one line saying what is wrong and how to
fix it, exit code 2, no traceback, and no training. The commands run a few at a time in parallel
(each is a separate process that stops within seconds); the longer lists are `slow` (run in CI).
The config mistakes are one table, each checked in-process too (the default suite), and
tests/test_data.py checks the data messages in-process."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest
import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from conftest import ROOT, TINY, compose_cfg, summary
from nplm import repro
from nplm.cli import USER_ERRORS, config_error_line
from nplm.config import to_config
from nplm.preflight import preflight, with_epochs


def run_all(commands: dict) -> dict:
    """{name: argv} -> {name: CompletedProcess}, three at a time."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "disabled"}

    def one(argv):
        return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env=env)
    with ThreadPoolExecutor(3) as pool:
        return dict(zip(commands, pool.map(one, commands.values())))


def assert_one_line_error(proc, message, where=None):
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    last = out.splitlines()[-1]
    assert message in last and "error" in last.lower(), out
    if where is not None:  # no training happened: at most a record saying the run failed, and why
        assert not (where / "ckpt.pt").exists() and not (where / "last.pt").exists()
        if (where / "summary.json").exists():
            record = summary(where)
            assert record["status"] == "failed" and message in record["error"]


# The config mistakes, one table: override(s) -> what the one line must say. Each is refused in-process
# (the default suite) and by the real command (three in the default suite, every one in the slow one).
CONFIG_ERRORS = {
    "model.n_embd=0": "model.n_embd=0 must be at least 1",
    "model.n_hidden=-3": "model.n_hidden=-3 must be 0 (no hidden layer) or more",
    "model.block_size=0": "model.block_size=0 must be at least 1",
    "optim.lr=0": "optim.lr=0.0 must be positive",
    "optim.lr=-0.1": "optim.lr=-0.1 must be positive",
    "data.train_frac=1.2": "data.train_frac=1.2 must be between 0 and 1",
    "data.val_frac=0.3": "must be below 1 so the test split is not empty",
    "train.eval_interval=0": "train.eval_interval=0 must be at least 1",
    "train.batch_size=1000000": "larger than the 182625 training examples; lower train.batch_size",
    "optim.name=adam": "optim.name='adam' is not known; use one of: sgd, adamw",
    "optim.schedule=linear": "use one of: constant, step, cosine, onecycle, inverse",
    "model.init=xavier": "model.init='xavier' is not known; use one of: lecture, scaled",
    "device=tpu": "device='tpu' is not known; use auto, cpu, cuda or cuda:N",
    "model.n_embed=10": "Key 'n_embed' not in 'ModelConfig'",
    "data.train_tokens=800000": "data.train_tokens / data.val_tokens split sentences by token counts; they need",
    "train.steps=many": "Value 'many' of type 'str' could not be converted to Integer",
    "model.maxent_order=5 model.maxent_buckets=999999999": "weights (rows x vocab_size 27), more than 50,000,000: "
                                                           "set model.maxent_buckets=370370 or less",
    "model.maxent_order=6": "or an order from 1 to model.block_size",
    "model.maxent_buckets=0": "model.maxent_buckets=0 must be at least 1",
    "optim.maxent_lr_scale=0": "optim.maxent_lr_scale=0.0 must be positive",
    "model.softmax_cutoffs=[20,10]": "must be token ids in increasing order",
    "model.softmax_cutoffs=[0,10]": "each at least 1",
}
# one refused by composition, one by the schema's checks, one by the checks against the data
COMMAND_IN_DEFAULT_SUITE = ["model.n_embed=10", "model.n_embd=0", "train.batch_size=1000000"]


def refusal(override: str) -> str:
    """The line train.py refuses `override` with (after TINY), found in-process as train.py finds it:
    composing, the schema's checks (to_config), then the checks against the data (preflight, without
    the process-wide settings it makes: the pins, tested through the command, and the thread count);
    '' when nothing refuses it."""
    with mock.patch.object(repro, "check", lambda reproducible: ""), mock.patch.object(repro, "settle"), \
            mock.patch.object(torch, "set_num_threads"):
        try:
            preflight(with_epochs(to_config(compose_cfg([*TINY, *override.split()]))))
        except USER_ERRORS as e:
            return str(e)
        except (HydraException, OmegaConfBaseException) as e:
            return config_error_line(e)
    return ""


@pytest.mark.parametrize("override", CONFIG_ERRORS)
def test_config_mistake_in_process(override):
    assert CONFIG_ERRORS[override] in refusal(override)


def check_config_mistakes_through_the_command(overrides, tmp_path):
    """Exit 2, stdout empty, stderr the in-process line alone, and no run folder left."""
    runs = run_all({o: [ROOT / "train.py", *TINY, *o.split(), f"hydra.run.dir={tmp_path / str(i)}"]
                    for i, o in enumerate(overrides)})
    for override in overrides:
        proc = runs[override]
        assert_one_line_error(proc, CONFIG_ERRORS[override])
        assert (proc.stdout, proc.stderr) == ("", f"error: {refusal(override)}\n"), override
    assert list(tmp_path.iterdir()) == []


def test_config_mistakes_through_the_command(tmp_path):
    check_config_mistakes_through_the_command(COMMAND_IN_DEFAULT_SUITE, tmp_path)


@pytest.mark.slow  # ~60 s on 2 cores: the rest of the table through the command (CI runs it)
def test_every_config_mistake_through_the_command(tmp_path):
    check_config_mistakes_through_the_command([o for o in CONFIG_ERRORS if o not in COMMAND_IN_DEFAULT_SUITE],
                                              tmp_path)


@pytest.mark.slow
def test_data_mistakes(tmp_path):
    files = {
        "empty": (b"", "holds no words; it needs one word per line"),
        "blank": (b"\n   \n\n", "holds no words"),
        "latin1": (b"anna\nren\xe9e\n", "is not UTF-8 text (line 2, byte 8); convert it to UTF-8"),
        "boundary": (b"anna\nj.r.\nbob\n", "contain the boundary character '.' (first: 'j.r.'); remove it"),
        "three": (b"anna\nbob\ncarl\n", "3 words are too few"),
    }
    commands = {}
    for name, (content, _) in files.items():
        (tmp_path / f"{name}.txt").write_bytes(content)
        commands[name] = [ROOT / "train.py", *TINY, f"data.path={tmp_path / name}.txt",
                          f"hydra.run.dir={tmp_path / name}"]
    (tmp_path / "folder.txt").mkdir()  # a path that cannot be read as a file
    commands["missing"] = [ROOT / "train.py", *TINY, f"data.path={tmp_path / 'nope.txt'}",
                           f"hydra.run.dir={tmp_path / 'missing'}"]
    commands["folder"] = [ROOT / "train.py", *TINY, f"data.path={tmp_path / 'folder.txt'}",
                          f"hydra.run.dir={tmp_path / 'folder'}"]
    runs = run_all(commands)
    for name, (_, message) in files.items():
        assert_one_line_error(runs[name], message, tmp_path / name)
    assert_one_line_error(runs["missing"], "does not exist", tmp_path / "missing")  # tested here only
    assert not (tmp_path / "missing").exists()  # a refused run leaves no folder
    assert_one_line_error(runs["folder"], "is a directory; point it at a text file", tmp_path / "folder")


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow  # ~17 s: run in CI
def test_checkpoint_mistakes_and_a_malicious_pickle(tiny_run, tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"format": "nplm-checkpoint-1", "model": RunsCode(marker)}, evil / "ckpt.pt")
    (evil / "last.pt").write_bytes((evil / "ckpt.pt").read_bytes())
    torch.load(evil / "ckpt.pt", weights_only=False)  # loaded unsafely, the file does run code ...
    assert marker.exists()
    marker.unlink()
    truncated, foreign = tmp_path / "truncated", tmp_path / "foreign"
    truncated.mkdir()
    foreign.mkdir()
    data = (tiny_run / "ckpt.pt").read_bytes()
    (truncated / "ckpt.pt").write_bytes(data[:len(data) // 3])
    (truncated / "last.pt").write_bytes(data[:len(data) // 3])
    torch.save({"weights": torch.zeros(3)}, foreign / "ckpt.pt")  # a torch file of another program
    (foreign / "last.pt").write_bytes((foreign / "ckpt.pt").read_bytes())
    commands = {}
    for name, folder in (("evil", evil), ("truncated", truncated), ("foreign", foreign),
                         ("missing", tmp_path / "none")):
        commands["sample " + name] = [ROOT / "scripts/sample.py", folder]
        commands["evaluate " + name] = [ROOT / "scripts/evaluate.py", folder, "split=val"]
        commands["resume " + name] = [ROOT / "train.py", f"resume={folder}"]
    runs = run_all(commands)
    for tool in ("sample", "evaluate", "resume"):
        assert_one_line_error(runs[f"{tool} evil"], "not a readable nplm checkpoint")
        assert_one_line_error(runs[f"{tool} truncated"], "not a readable nplm checkpoint")
        assert_one_line_error(runs[f"{tool} foreign"], "not an nplm")
    assert_one_line_error(runs["sample missing"], "no checkpoint at")
    assert_one_line_error(runs["evaluate missing"], "no checkpoint at")
    assert_one_line_error(runs["resume missing"], "no such run folder")
    assert not marker.exists()  # ... but never here: every command loads with weights_only=True
    assert not (tmp_path / "none").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(tmp_path):
    (proc,) = run_all({"cuda": [ROOT / "train.py", *TINY, "device=cuda", f"hydra.run.dir={tmp_path}"]}).values()
    assert_one_line_error(proc, "device=cuda but torch sees no CUDA GPU here; use device=cpu or device=auto")
