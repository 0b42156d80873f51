"""The sweep report for real: a small sweep over two keys, one job failing, then its report files as
a reader gets them (leaderboard.md and .csv, the plots, dashboard.html), and scripts/report.py
writing them again."""
import struct

import pandas as pd

from conftest import QUICK, ROOT, run_cmd, summary

REPORT = ["leaderboard.md", "leaderboard.csv", "dashboard.html", "heatmap.png", "val_vs_model_n_embd.png",
          "val_vs_optim_lr.png", "best_curves.png"]


def png_size(path):
    """(width, height) of a PNG file, read from its IHDR chunk; fails if the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path} has no IHDR chunk first"
    return struct.unpack(">II", data[16:24])


def markdown_rows(path):
    """The cells of a Markdown table, header row first (the |---| line checked and left out)."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    assert set("".join(rows[1])) <= set("-:"), lines[1]
    return [rows[0], *rows[2:]]


def test_sweep_report_lists_every_job_sorted_with_plots_and_is_rewritten_by_the_script(tmp_path):
    sweep = tmp_path / "sweep"
    # job 3 fails once training has begun: the folder where its training state goes cannot be written over
    (sweep / "3" / "last.pt").mkdir(parents=True)
    (sweep / "3" / "last.pt" / "keep").write_text("")
    proc = run_cmd([ROOT / "train.py", "-m", *QUICK, "model.n_embd=2,4", "optim.lr=0.01,0.03",
                    f"hydra.sweep.dir={sweep}"], check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"sweep folder: {sweep} (if interrupted, resume with: python " in proc.stdout + proc.stderr
    summaries = {j: summary(sweep / j) for j in "0123"}
    assert [summaries[j]["status"] for j in "0123"] == ["finished", "finished", "finished", "failed"]
    finished = sorted((s["val_loss"], j) for j, s in summaries.items() if s["status"] == "finished")

    def check_report():
        header, *rows = markdown_rows(sweep / "leaderboard.md")
        assert header[:2] == ["rank", "job"]
        assert {"model.n_embd", "optim.lr", "val_loss", "train_loss", "status", "error"} <= set(header)
        col = {name: i for i, name in enumerate(header)}
        assert len(rows) == 4  # one row per job
        assert [r[col["rank"]] for r in rows] == ["1", "2", "3", "4"]
        # sorted by val loss, ascending; the failed job last, with its status and error
        assert [r[col["job"]] for r in rows] == [j for _, j in finished] + ["3"]
        for r, (val, j) in zip(rows, finished):
            assert float(r[col["val_loss"]]) == round(val, 4) and r[col["status"]] == "finished"
            assert int(r[col["model.n_embd"]]) == summaries[j]["config"]["model"]["n_embd"]
            assert float(r[col["optim.lr"]]) == summaries[j]["config"]["optim"]["lr"]
        failed = rows[-1]
        assert failed[col["status"]] == "failed"
        assert failed[col["val_loss"]] == ""  # no val loss: an empty cell
        assert "IsADirectoryError" in failed[col["error"]]
        assert (int(failed[col["model.n_embd"]]), float(failed[col["optim.lr"]])) == (4, 0.03)

        board = pd.read_csv(sweep / "leaderboard.csv")  # the same table
        assert list(board["rank"]) == [1, 2, 3, 4]
        assert [str(j) for j in board["job"]] == [j for _, j in finished] + ["3"]
        assert list(board["val_loss"][:3]) == [val for val, _ in finished] and pd.isna(board["val_loss"][3])
        assert list(board["status"]) == ["finished"] * 3 + ["failed"]

        for name in REPORT:
            if name.endswith(".png"):
                width, height = png_size(sweep / name)
                assert width >= 200 and height >= 150, (name, width, height)
        html = (sweep / "dashboard.html").read_text()
        assert "4 jobs: 3 finished, 1 failed" in html and "Swept: model.n_embd, optim.lr" in html
        pngs = [n for n in REPORT if n.endswith(".png")]
        assert all(f'href="{n}"' in html for n in pngs)  # linked from the interactive page
        assert f"best val loss <b>{finished[0][0]:.4f}</b>" in html

    check_report()
    written = {name: (sweep / name).read_bytes() for name in REPORT}
    for name in REPORT:
        (sweep / name).unlink()
    out = run_cmd([ROOT / "scripts" / "report.py", sweep])
    assert f"leaderboard: {sweep / 'leaderboard.md'}" in out.stdout
    check_report()
    for name in ("leaderboard.md", "leaderboard.csv"):
        assert (sweep / name).read_bytes() == written[name], name
