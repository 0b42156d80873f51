"""device=cuda where a GPU exists (skipped elsewhere): the same recipe trains and lands near the CPU run."""
import json

import pytest
import torch

from conftest import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def test_cuda_run_matches_cpu_closely(tmp_path):
    train(tmp_path / "cpu", "device=cpu")
    train(tmp_path / "gpu", "device=cuda")
    cpu, gpu = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("cpu", "gpu"))
    assert gpu["device"].startswith("cuda")
    # same draws (the generator lives on the CPU), different kernels: equal up to float rounding
    assert gpu["dev_loss"] == pytest.approx(cpu["dev_loss"], abs=2e-3)


def test_auto_picks_the_gpu(tmp_path):
    train(tmp_path / "r", "device=auto")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["device"].startswith("cuda")


def test_interrupted_cuda_run_resumes(tmp_path):
    """SIGTERM on the GPU, then resume=: the CUDA generator's state comes back too. The GPU's
    scatter-adds (the embedding's gradient) are not bitwise deterministic, so: equal to rounding."""
    from test_resume import RUN, losses, start, summary, wait_for
    from conftest import ROOT, run_cmd
    import signal
    train(tmp_path / "whole", *RUN, "device=cuda")
    run_dir = tmp_path / "run"
    proc = start(run_dir, "device=cuda")
    wait_for(lambda: (run_dir / "last.pt").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143 and summary(run_dir)["status"] == "interrupted"
    run_cmd([ROOT / "train.py", f"resume={run_dir}"])
    s, whole = summary(run_dir), summary(tmp_path / "whole")
    assert s["status"] == "finished" and s["resumed_at"] and s["device"].startswith("cuda")
    assert [r[0] for r in losses(run_dir)] == [r[0] for r in losses(tmp_path / "whole")]
    assert s["dev_loss"] == pytest.approx(whole["dev_loss"], abs=2e-3)


def test_word_level_on_the_gpu_matches_cpu_closely(tmp_path):
    """The paper's setting on the GPU: the word-level model and its mixture with Kneser-Ney (whose
    counts stay on the CPU) train and evaluate there, landing where the CPU run lands."""
    run = ["data=shakespeare", "train.steps=200", "train.eval_interval=100", "model.mix_order=3",
           "train.num_samples=3", "wandb.mode=disabled"]
    train(tmp_path / "cpu", *run, "device=cpu")
    train(tmp_path / "gpu", *run, "device=cuda")
    cpu, gpu = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("cpu", "gpu"))
    assert gpu["device"].startswith("cuda") and gpu["level"] == "word"
    assert gpu["dev_ppl"] == pytest.approx(cpu["dev_ppl"], rel=2e-3)


def test_vectorised_sweep_on_the_gpu(tmp_path):
    """+launcher=vectorized with device=cuda: the stacked steps run eagerly on the GPU (batched
    kernels instead of one small launch per run), landing where the CPU's group lands."""
    from conftest import ROOT, run_cmd
    from test_vector import LECTURE
    for device in ("cpu", "cuda"):
        run_cmd([ROOT / "train.py", "-m", *LECTURE, "seed=1,2", "+launcher=vectorized", f"device={device}",
                 f"hydra.sweep.dir={tmp_path / device}"])
    for job in ("0", "1"):
        cpu, gpu = (json.loads((tmp_path / d / job / "summary.json").read_text()) for d in ("cpu", "cuda"))
        assert gpu["path"] == "vectorized" and gpu["device"].startswith("cuda")
        assert gpu["dev_loss"] == pytest.approx(cpu["dev_loss"], rel=5e-3)
