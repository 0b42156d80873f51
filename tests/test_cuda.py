"""device=cuda where a GPU exists (skipped elsewhere): the same recipe trains and lands near the CPU run."""

import pytest
import torch

from conftest import summary, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def test_cuda_run_matches_cpu_closely(tmp_path):
    train(tmp_path / "cpu", "device=cpu")
    train(tmp_path / "gpu", "device=cuda")
    cpu, gpu = (summary(tmp_path / d) for d in ("cpu", "gpu"))
    assert gpu["device"].startswith("cuda")
    # same draws (the generator lives on the CPU), different kernels: equal up to float rounding
    assert gpu["val_loss"] == pytest.approx(cpu["val_loss"], abs=2e-3)


def test_auto_picks_the_gpu(tmp_path):
    train(tmp_path / "r", "device=auto")
    assert summary(tmp_path / "r")["device"].startswith("cuda")


def test_interrupted_cuda_run_resumes(tmp_path):
    """SIGTERM on the GPU at step 120 (held there, tests/holds.py), then resume=: the CUDA generator's
    state comes back too. The GPU's scatter-adds (the embedding's gradient) are not bitwise
    deterministic, so: equal to rounding."""
    from test_resume import RUN, gate, logged_step, losses, start, summary
    from conftest import ROOT, run_cmd
    from holds import wait_held
    from nplm.checkpoint import STATE_NAME
    import signal
    train(tmp_path / "whole", *RUN, "device=cuda")
    run_dir = tmp_path / "run"
    proc = start(run_dir, "device=cuda", at=120)  # not a step that evaluates: the signal's own save
    wait_held(proc, gate(run_dir))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted by SIGTERM at step 120;" in err, err
    assert summary(run_dir)["status"] == "interrupted"
    assert torch.load(run_dir / STATE_NAME, weights_only=True)["step"] == 120 and logged_step(run_dir) == 120
    out = run_cmd([ROOT / "train.py", f"resume={run_dir}"]).stdout
    assert "resuming at step 120 of 300" in out
    s, whole = summary(run_dir), summary(tmp_path / "whole")
    assert s["status"] == "finished" and s["resumed_at"] == [120] and s["device"].startswith("cuda")
    assert [r[0] for r in losses(run_dir)] == [r[0] for r in losses(tmp_path / "whole")]
    assert s["val_loss"] == pytest.approx(whole["val_loss"], abs=2e-3)


def test_word_level_on_the_gpu_matches_cpu_closely(tmp_path):
    """The paper's setting on the GPU: the word-level model and its mixture with Kneser-Ney (whose
    counts stay on the CPU) train and evaluate there, landing where the CPU run lands."""
    run = ["data=shakespeare", "train.steps=200", "train.eval_interval=100", "model.mix_order=3",
           "train.num_samples=3", "wandb.mode=disabled"]
    train(tmp_path / "cpu", *run, "device=cpu")
    train(tmp_path / "gpu", *run, "device=cuda")
    cpu, gpu = (summary(tmp_path / d) for d in ("cpu", "gpu"))
    assert gpu["device"].startswith("cuda") and gpu["level"] == "word"
    assert gpu["val_ppl"] == pytest.approx(cpu["val_ppl"], rel=2e-3)


def test_vectorised_sweep_on_the_gpu(tmp_path):
    """+launcher=vectorized with device=cuda: the stacked steps run as a CUDA graph on the GPU
    (batched kernels, launched by one replay per 20 steps), landing where the CPU's group lands."""
    from conftest import ROOT, run_cmd
    from test_vector import LECTURE
    for device in ("cpu", "cuda"):
        run_cmd([ROOT / "train.py", "-m", *LECTURE, "seed=1,2", "+launcher=vectorized", f"device={device}",
                 f"hydra.sweep.dir={tmp_path / device}"])
    for job in ("0", "1"):
        cpu, gpu = (summary(tmp_path / d / job) for d in ("cpu", "cuda"))
        assert gpu["path"] == "vectorized" and gpu["device"].startswith("cuda")
        assert "a CUDA graph of 20 steps per replay" in gpu["path_reason"]
        assert gpu["val_loss"] == pytest.approx(cpu["val_loss"], rel=5e-3)


@pytest.mark.parametrize("runs", [0, 3])
def test_graph_steps_equal_the_same_steps_run_eagerly(runs):
    """K steps as one CUDA graph replay (one model, or 3 stacked) against sgd_steps run eagerly on
    a copy, call after call: the graph reads each call's minibatches and learning rates and
    updates the weights in place; capturing changes nothing; a call of fewer steps runs eagerly.
    (index_add_'s atomics make the GPU's sums order-dependent: equal to rounding.)"""
    from nplm.fast import GraphSteps, sgd_steps, stacked_sgd_steps
    V, E, T, H, B, K = 27, 10, 3, 200, 32, 20
    lead = (runs,) if runs else ()

    def weights():
        g = torch.Generator().manual_seed(1)
        return [torch.randn(*lead, *s, generator=g).cuda() for s in ((V, E), (T * E, H), (H,), (H, V), (V,))]
    graphed, eager = weights(), weights()
    steps = GraphSteps(graphed, K, B, T, runs=runs)
    assert steps.graph is not None
    assert all(torch.equal(a, b) for a, b in zip(graphed, eager, strict=True))
    g = torch.Generator().manual_seed(2)
    fn = stacked_sgd_steps if runs else sgd_steps
    for n, lr in ((K, 0.1), (K, 0.05), (7, 0.01), (K, 0.01)):
        X, Y = torch.randint(0, V, (n, *lead, B, T), generator=g), torch.randint(0, V, (n, *lead, B), generator=g)
        lrs = torch.full((n, *lead), lr)
        got = steps(X.cuda(), Y.cuda(), lrs)
        with torch.no_grad():
            *eager, want = fn(*eager, X.cuda(), Y.cuda(), lrs.cuda())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        for a, b in zip(graphed, eager, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_lecture_on_the_gpu_trains_through_a_cuda_graph(tmp_path):
    """experiment=lecture on the GPU takes the CUDA graph (train.fast=auto, any length) and follows
    the plain path on the GPU and on the CPU to float rounding; the summary says which path ran."""
    from test_fast import lecture_run
    from test_resume import losses
    graph = lecture_run(tmp_path / "graph", "device=cuda")
    plain = lecture_run(tmp_path / "plain", "device=cuda", "train.fast=off")
    lecture_run(tmp_path / "cpu", "device=cpu", "train.fast=off")
    assert graph["path"] == "cuda_graph"
    assert graph["path_reason"] == "20 SGD steps per replay of a CUDA graph (checked against eager steps)"
    assert plain["path"] == "plain" and graph["device"].startswith("cuda")
    rows = {k: [(int(s), float(v)) for s, _, v in losses(tmp_path / k) if v] for k in ("graph", "plain", "cpu")}
    assert [s for s, _ in rows["graph"]] == [500, 1000, 1500, 2000]
    for other in ("plain", "cpu"):  # val losses 4.9 .. 3.3: chaotic early training amplifies rounding
        for (_, a), (_, b) in zip(rows[other], rows["graph"], strict=True):  # a missing row fails
            assert b == pytest.approx(a, rel=0.01)


@pytest.mark.slow  # two 100,000-step runs
def test_a_cuda_graph_run_resumes(tmp_path):
    """SIGTERM during a CUDA-graph run, then resume=: it goes on through the graph (captured again
    on the resumed weights) and lands where the run left alone lands."""
    from test_fast import interrupted_lecture_run, lecture_run
    from test_resume import losses
    run = ["device=cuda", "train.steps=100000", "optim.decay_steps=[50000]", "train.eval_interval=10000",
           "train.log_interval=1000"]
    whole = lecture_run(tmp_path / "whole", *run)
    s = interrupted_lecture_run(tmp_path / "run", 30000, *run)  # held at step 30000: it stops there
    assert s["status"] == "finished" and s["resumed_at"] == [30000] and s["path"] == "cuda_graph"
    assert [r[0] for r in losses(tmp_path / "run")] == [r[0] for r in losses(tmp_path / "whole")]
    assert s["val_loss"] == pytest.approx(whole["val_loss"], abs=0.02)  # chaotic at lr 0.1: rounding spreads
