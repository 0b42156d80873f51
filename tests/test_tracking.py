"""W&B logging for real, in offline mode: the offline run's records hold what the run folder holds."""
import csv
import json
import os

import pytest

from conftest import ROOT, TINY, run_cmd, summary, train
from wandb_records import offline_runs, summarise


def test_offline_run_records_config_metrics_summary_media(tiny_run):
    (run,) = offline_runs(tiny_run)
    wb = summarise(run)
    assert wb["exit_code"] == 0
    assert wb["run"].project == "nplm"
    assert wb["config"]["model"]["n_embd"] == 4 and wb["config"]["train"]["steps"] == 60
    assert "${" not in json.dumps(wb["config"])

    train_steps = [h["_step"] for h in wb["history"] if "train/loss" in h]
    val = {h["_step"]: h["val/loss"] for h in wb["history"] if "val/loss" in h}
    with open(tiny_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert train_steps == [int(r["step"]) for r in rows]  # the same rows as metrics.csv, same steps
    assert val == {int(r["step"]): pytest.approx(float(r["val/loss"])) for r in rows if r["val/loss"]}
    assert all("lr" in h and "steps_per_s" in h for h in wb["history"] if "train/loss" in h)
    # steps/s counts training only: the steps since the last row over the training time since then
    # (evaluations at steps 30 and 60 are not in it)
    logged = [h for h in wb["history"] if "train/loss" in h]
    for before, row in zip(logged, logged[1:]):
        assert row["steps_per_s"] == pytest.approx((row["_step"] - before["_step"]) / (row["elapsed"] - before["elapsed"]),
                                                   rel=1e-6)

    record = summary(tiny_run)
    for key in ("best_val_loss", "val_loss", "train_loss", "num_params", "wall_time_s"):
        assert wb["summary"][key] == pytest.approx(record[key])
    assert wb["summary"]["samples/_type"] == "table-file"
    media = {p.parent.name for p in (run / "files" / "media").rglob("*") if p.is_file()}
    assert {"table", "images"} <= media
    assert len(list((run / "files" / "media" / "images").glob("*.png"))) == 2  # loss curve, embedding
    assert "done: train loss" in (run / "files" / "output.log").read_text()  # the console record: train.log


def test_disabled_mode_writes_no_wandb_folder(tmp_path):
    train(tmp_path / "r", "wandb.mode=disabled")
    assert not (tmp_path / "r" / "wandb").exists()
    assert summary(tmp_path / "r")["status"] == "finished"


def test_wandb_that_cannot_start_does_not_stop_training(tmp_path):
    env_backup = dict(os.environ)
    try:
        os.environ.pop("WANDB_API_KEY", None)
        os.environ["WANDB_BASE_URL"] = "http://127.0.0.1:9"  # nothing listens there
        proc = train(tmp_path / "r", "wandb.mode=online")
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    assert "W&B could not start" in proc.stdout + proc.stderr
    assert summary(tmp_path / "r")["status"] == "finished"


@pytest.mark.slow  # 9 s: keeps the default suite near 5 minutes (CI runs it)
def test_failed_job_finishes_its_wandb_run_and_the_next_job_gets_its_own(tmp_path):
    sweep = tmp_path / "sweep"
    # job 0 fails inside training (its W&B run has started): a folder where its training state goes
    # cannot be written over (IsADirectoryError at its first save); job 1 trains
    (sweep / "0" / "last.pt").mkdir(parents=True)
    (sweep / "0" / "last.pt" / "keep").write_text("")
    proc = run_cmd([ROOT / "train.py", "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}"], check=False)
    assert proc.returncode == 1  # the sweep reports the failed job at the end
    failed, ok = (summary(sweep / j) for j in ("0", "1"))
    assert failed["status"] == "failed" and "IsADirectoryError" in failed["error"]
    assert ok["status"] == "finished"
    (run0,), (run1,) = offline_runs(sweep / "0"), offline_runs(sweep / "1")
    wb0, wb1 = summarise(run0), summarise(run1)
    assert wb0["exit_code"] == 1 and wb1["exit_code"] == 0
    assert wb0["run"].run_id != wb1["run"].run_id
    assert wb0["run"].run_group == wb1["run"].run_group == str(sweep)
    assert wb1["run"].display_name == "seed=2"
    assert wb1["config"]["seed"] == 2
    assert wb1["summary"]["status"] == "finished" and wb0["summary"]["status"] == "failed"


SECRETS = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567", "MY_SERVICE_TOKEN": "hunter2-hunter2"}


def assert_no_secret_in(run_dir, *texts):
    for path in [p for p in run_dir.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert not any(v.encode() in data for v in SECRETS.values()), f"a secret is in {path}"
    assert not any(v in t for v in SECRETS.values() for t in texts)


def run_with_secrets(run_dir, *overrides):
    env_backup = dict(os.environ)
    try:
        os.environ.update(SECRETS)
        return train(run_dir, *overrides)
    finally:
        os.environ.clear()
        os.environ.update(env_backup)


def test_secrets_in_the_environment_end_up_nowhere(tmp_path):
    """An API key and another secret in the environment: not in the config, logs, summary, checkpoint
    or the offline W&B run (its transaction log, metadata and output included)."""
    proc = run_with_secrets(tmp_path / "r", "wandb.mode=offline")
    assert offline_runs(tmp_path / "r")
    assert_no_secret_in(tmp_path / "r", proc.stdout, proc.stderr)


@pytest.mark.slow
def test_secrets_end_up_nowhere_when_online_wandb_cannot_start(tmp_path):
    """Online, with the key set and no server (W&B gives up after its 60 s timeout)."""
    os.environ["WANDB_BASE_URL"] = "http://127.0.0.1:9"  # nothing listens there
    try:
        proc = run_with_secrets(tmp_path / "r", "wandb.mode=online")
    finally:
        del os.environ["WANDB_BASE_URL"]
    assert "W&B could not start" in proc.stdout + proc.stderr
    assert_no_secret_in(tmp_path / "r", proc.stdout, proc.stderr)


def test_wandb_that_cannot_write_its_folder_does_not_stop_training(tmp_path):
    """W&B's folder cannot be made (as when its disk is full or it is not writable): one warning, and
    the run's own files are the whole record."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "wandb").write_text("not a folder")
    proc = train(run_dir, "wandb.mode=offline")
    assert "W&B could not start" in proc.stdout + proc.stderr
    assert summary(run_dir)["status"] == "finished"
    assert len((run_dir / "metrics.csv").read_text().splitlines()) > 1 and (run_dir / "ckpt.pt").is_file()
