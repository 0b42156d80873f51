"""The full lecture recipe (200k steps): `slow`, run in CI. `experiment=lecture` takes the compiled
fast path (~25 s), `train.fast=off` the plain one that equals the lecture's loop (~2 minutes).
The plain path within 0.015: 200,000 chaotic SGD steps amplify the last bits, which differ between CPUs
even with the code paths pinned (val: 2.1655 on an AMD EPYC, 2.1751 on an Intel Xeon with AVX-512); the
compiled path landed within 0.01 on both (Xeon: train 2.1273, val 2.1687)."""
import json

import pytest

from conftest import ROOT, run_cmd


@pytest.mark.slow
@pytest.mark.parametrize("path, within", [("plain", 0.015), ("compiled", 0.01)])
def test_lecture_reproduction(tmp_path, path, within):
    run_cmd([ROOT / "train.py", "experiment=lecture", "device=cpu", f"hydra.run.dir={tmp_path}",
             f"train.fast={'off' if path == 'plain' else 'auto'}"], timeout=900)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["path"] == path
    assert s["train_loss"] == pytest.approx(2.1220, abs=within)
    assert s["val_loss"] == pytest.approx(2.1655, abs=within)
    assert s["num_params"] == 11897
