"""The full lecture recipe (200k steps, about two minutes on one core): `slow`, run in CI."""
import json

import pytest

from conftest import ROOT, run_cmd


@pytest.mark.slow
def test_lecture_reproduction(tmp_path):
    run_cmd([ROOT / "train.py", "experiment=lecture", "device=cpu", f"hydra.run.dir={tmp_path}"], timeout=900)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["train_loss"] == pytest.approx(2.1220, abs=0.005)
    assert s["dev_loss"] == pytest.approx(2.1655, abs=0.005)
    assert s["num_params"] == 11897
