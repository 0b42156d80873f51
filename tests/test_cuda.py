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
