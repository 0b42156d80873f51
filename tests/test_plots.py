"""The plot worker (nplm/plots.py): draws what this process would, and a failure never costs a plot."""
import logging

import pytest
import torch

from nplm import plots

ROWS = "step,train/loss,val/loss\n0,3.3,3.29\n100,2.6,\n200,2.4,2.45\n"


@pytest.fixture
def worker():
    plots._worker, plots._owed = None, 0
    plots.start_worker()
    if plots._worker is None:
        pytest.skip("no plot worker on one core")
    yield plots._worker
    if plots._worker is not None:
        plots._worker.stdin.close()
        assert plots._worker.wait(timeout=30) == 0  # it ends when this process closes its input
    plots._worker, plots._owed = None, 0


def requests(tmp_path, tag):
    (tmp_path / "metrics.csv").write_text(ROWS)
    xy, how = plots.embedding_2d(torch.randn(27, 10, generator=torch.Generator().manual_seed(0)))
    return [("losses", dict(metrics_csv=str(tmp_path / "metrics.csv"), path=str(tmp_path / f"loss{tag}.png"),
                            title="t")),
            ("embedding", dict(xy=xy.tolist(), how=how, itos=list(".abcdefghijklmnopqrstuvwxyz"),
                               path=str(tmp_path / f"embedding{tag}.png")))]


def test_worker_draws_what_this_process_draws(tmp_path, worker):
    alone = [plots.DRAW[fn](**kw) for fn, kw in requests(tmp_path, "_here")]
    wait = plots.draw(requests(tmp_path, "_worker"))
    drawn = wait()
    assert [p.name for p in drawn] == ["loss_worker.png", "embedding_worker.png"]
    for here, there in zip(alone, drawn):
        assert there.read_bytes() == here.read_bytes()  # the same matplotlib, the same pixels
    plots.draw(requests(tmp_path, "_unwaited"))  # a run stopped before it waited: its answers are skipped
    assert [p.name for p in plots.draw(requests(tmp_path, "_next"))()] == ["loss_next.png", "embedding_next.png"]
    assert plots._worker is worker


def test_a_plot_that_cannot_be_drawn_fails_as_it_would_here(tmp_path, worker, caplog):
    with pytest.raises(FileNotFoundError):
        plots.draw([("losses", dict(metrics_csv=str(tmp_path / "absent.csv"), path=str(tmp_path / "l.png")))])()
    assert "the plot worker could not draw (FileNotFoundError" in caplog.text
    assert plots._worker is worker and worker.poll() is None  # still there for the next run


def test_a_dead_worker_costs_no_plot(tmp_path, worker, caplog):
    worker.kill()
    worker.wait()
    with caplog.at_level(logging.WARNING, logger="nplm"):
        drawn = plots.draw(requests(tmp_path, ""))()
    assert all(p.stat().st_size > 10_000 for p in drawn)
    assert "the plot worker failed" in caplog.text and plots._worker is None
