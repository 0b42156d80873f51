"""The shipped recipes (conf/experiment/), each trained through `python train.py experiment=...` for a
short length on a small corpus: the run finishes, its loss falls well below the uniform guess
(ln vocab_size), and the recipe's own features ran (deep layers and LayerNorm, hashed n-gram features,
the Kneser-Ney mixture, the adaptive softmax, the paper's SGD schedule, ...), as its summary, metrics
and log say. Only the length (train.steps, or train.epochs for the recipes set in epochs), the
logging interval and the data are changed; the full recipes take minutes to hours.

The character recipes train on the first 3,000 bundled names; the word recipes on the first 3,000
lines of Tiny Shakespeare (words_large: 8,000 lines with every word kept, a vocabulary larger than its
adaptive softmax's last cutoff, 3,000)."""
import csv
import math
import re

import pytest

from conftest import ROOT, run_cmd, summary

ASSETS = ROOT / "nplm" / "assets"
SHORT = ["train.num_samples=3", "wandb.mode=disabled", "device=cpu"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpora")
    out = {}
    for name, source, lines in (("names", "names.txt", 3000), ("shakespeare", "tinyshakespeare.txt", 3000),
                                ("shakespeare_large", "tinyshakespeare.txt", 8000)):
        text = (ASSETS / source).read_text().splitlines()[:lines]
        out[name] = folder / f"{name}.txt"
        out[name].write_text("\n".join(text) + "\n")
    return out


def recipe(run_dir, *overrides):
    """Train a recipe through the command; (its summary, its metrics rows, what it printed)."""
    proc = run_cmd([ROOT / "train.py", *overrides, *SHORT, f"hydra.run.dir={run_dir}"], timeout=600)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    s = summary(run_dir)
    assert s["status"] == "finished" and s["mode"] == "train", s.get("error")
    return s, rows, proc.stdout


def assert_learned(s: dict, rows: list[dict], margin: float = 0.5) -> None:
    """The final (recorded) val loss is below the uniform guess, and the training minibatch loss falls
    well below it (by `margin` nats; the recipes evaluate a slow moving average of the weights, which
    after a few dozen steps is still mostly the untrained network)."""
    uniform = math.log(s["vocab_size"])
    assert s["val_loss"] < uniform, (s["val_loss"], uniform)
    losses = [float(r["train/loss"]) for r in rows]
    assert losses[-1] < uniform - margin and losses[-1] < losses[0], (losses, uniform)


def epochs_line(stdout: str) -> tuple[float, int, int, int, int]:
    """(epochs, steps, batch size, training examples, eval interval) from the run's train.epochs line."""
    found = re.search(r"train\.epochs=([\d.]+): (\d+) steps of (\d+) over (\d+) training examples, "
                      r"evaluated every (\d+) steps", stdout)
    assert found, stdout
    return float(found.group(1)), *map(int, found.groups()[1:])


def assert_in_epochs(s: dict, stdout: str, epochs: float) -> None:
    """A recipe set in epochs: train.epochs given sets its length, and evaluation is once an epoch."""
    given, steps, batch, examples, every = epochs_line(stdout)
    assert given == epochs and batch == s["batch_size"]
    assert s["steps"] == steps == math.ceil(epochs * examples / batch)
    assert s["config"]["train"]["eval_interval"] == every == math.ceil(examples / batch)  # eval_interval=0


@pytest.mark.slow  # 5 s (quiet 2 cores; 15 s beside other work): an 11M-row n-gram table, 3 x 384 units
def test_experiment_best_trains_a_deep_nplm_with_hashed_ngram_features(tmp_path, corpora):
    s, rows, out = recipe(tmp_path / "r", "experiment=best", f"data.path={corpora['names']}", "train.steps=60",
                          "train.eval_interval=30", "train.log_interval=10")
    assert s["steps"] == 60 and s["vocab_size"] == 27
    m = s["config"]["model"]
    assert (m["n_layer"], m["n_hidden"], m["norm"], m["dropout"], m["block_size"], m["maxent_order"]) == \
        (3, 384, "layernorm", 0.25, 8, 6)
    assert "3 x n_hidden 384, norm layernorm, dropout 0.25" in out
    assert s["num_params"] == 407_931 + 11_168_685  # README: the network and its n-gram table
    assert re.search(r"keep_best: ending with the weights of step \d+, the best evaluation", out)
    assert s["config"]["train"]["ema"] == 0.999 and s["best_val_step"] in (30, 60)
    assert_learned(s, rows)


@pytest.mark.slow  # 5 s (15 s beside other work)
def test_experiment_mixture_mixes_a_deep_nplm_with_a_kneser_ney_6gram(tmp_path, corpora):
    s, rows, out = recipe(tmp_path / "r", "experiment=mixture", f"data.path={corpora['names']}", "train.steps=60",
                          "train.eval_interval=30", "train.log_interval=10")
    assert s["steps"] == 60 and s["num_params"] == 407_931  # README: the deep NPLM of the mixture
    m = s["config"]["model"]
    assert (m["n_layer"], m["norm"], m["block_size"], m["mix_order"]) == (3, "layernorm", 8, 6)
    assert s["mix_order"] == 6 and 0 < s["mix_weight"] < 1 and s["ngram_counts"] > 0
    assert re.search(r"mixture: [\d.]+ x network \(val [\d.]+\) \+ [\d.]+ x Kneser-Ney 6-gram", out)
    # the weight is fitted on val: the mixture is no worse there than either of its parts
    assert s["val_loss"] <= min(s["nplm_val_loss"], s["ngram_val_loss"]) + 1e-9
    assert_learned(s, rows)


@pytest.mark.slow  # 4 s (11 s beside other work)
def test_experiment_words_trains_the_word_level_network_for_the_epochs_given(tmp_path, corpora):
    s, rows, out = recipe(tmp_path / "r", "data=shakespeare", f"data.path={corpora['shakespeare']}",
                          "experiment=words", "train.epochs=0.5", "train.log_interval=10")
    assert s["level"] == "word" and s["val_ppl"] == pytest.approx(math.exp(s["val_loss"]))
    assert_in_epochs(s, out, 0.5)
    V, m = s["vocab_size"], s["config"]["model"]
    assert (m["n_embd"], m["block_size"], m["n_hidden"], m["dropout"], m["direct"]) == (80, 6, 256, 0.5, False)
    assert s["num_params"] == V * 80 + 6 * 80 * 256 + 256 + 256 * V + V  # features, tanh layer, softmax
    assert s["config"]["train"]["keep_best"] and s["config"]["train"]["ema"] == 0.999
    assert "val_ppl_without_boundary" in s and 0 < s["boundary_share"] < 1
    assert_learned(s, rows)


@pytest.mark.slow  # 7 s (18 s beside other work)
def test_experiment_words_large_trains_an_adaptive_softmax_mixed_with_a_5gram(tmp_path, corpora):
    s, rows, out = recipe(tmp_path / "r", "data=shakespeare", f"data.path={corpora['shakespeare_large']}",
                          "data.min_count=1", "experiment=words_large", "train.epochs=0.2", "train.log_interval=5")
    assert_in_epochs(s, out, 0.2)
    V, m = s["vocab_size"], s["config"]["model"]
    assert V > 3000 and m["softmax_cutoffs"] == [1000, 3000] and m["word_dropout"] == 0.1
    assert "adaptive softmax (cutoffs [1000, 3000], softmax_div 4)" in out
    full_softmax = V * 96 + 9 * 96 * 256 + 256 + 256 * V + V
    assert s["num_params"] < full_softmax - 256 * 2000  # the rare words' clusters read a narrower projection
    assert s["mix_order"] == 5 and 0 < s["mix_weight"] < 1
    assert re.search(r"mixture: [\d.]+ x network \(val [\d.]+\) \+ [\d.]+ x Kneser-Ney 5-gram", out)
    assert s["val_loss"] <= min(s["nplm_val_loss"], s["ngram_val_loss"]) + 1e-9
    assert_learned(s, rows)


def test_experiment_bengio2003_trains_the_papers_network_with_its_schedule_and_trigram(tmp_path, corpora):
    s, rows, out = recipe(tmp_path / "r", "data=shakespeare", f"data.path={corpora['shakespeare']}",
                          "experiment=bengio2003", "train.epochs=0.5", "train.log_interval=10")
    assert_in_epochs(s, out, 0.5)
    V, o = s["vocab_size"], s["config"]["optim"]
    assert s["num_params"] == V * 30 + 4 * 30 * 100 + 100 + 100 * V + V  # MLP9: no direct connections
    assert (o["name"], o["schedule"], o["weight_decay"], o["decay_features"]) == ("sgd", "inverse", 1e-4, True)
    for r in rows:  # lr / (1 + r t), t the updates done before this one
        assert float(r["lr"]) == pytest.approx(1.0 / (1 + 1e-5 * (int(r["step"]) - 1)), rel=1e-9), r
    assert s["config"]["train"]["patience"] == 2 and "train.patience=2 (not reached" in out
    assert s["mix_order"] == 3 and 0 < s["mix_weight"] < 1
    assert re.search(r"mixture: [\d.]+ x network \(val [\d.]+\) \+ [\d.]+ x Kneser-Ney 3-gram", out)
    assert s["val_loss"] <= min(s["nplm_val_loss"], s["ngram_val_loss"]) + 1e-9
    assert_learned(s, rows)


BOTH_PATHS = {  # recipe: (its overrides on a small corpus, the length, the loss both paths end below)
    "default": ([], ["train.steps=600", "train.eval_interval=300"], 2.45),
    "fast": (["experiment=fast"], ["train.steps=300"], 2.3),
    "best": (["experiment=best"], ["train.steps=300", "train.eval_interval=150"], 2.9),
    "mixture": (["experiment=mixture"], ["train.steps=300", "train.eval_interval=150"], 3.0),
    "words": (["data=shakespeare", "experiment=words"], ["train.steps=300", "train.eval_interval=150"], 7.0),
    "words_large": (["data=shakespeare", "data.min_count=1", "experiment=words_large"],
                    ["train.steps=300", "train.eval_interval=150"], 7.8),
    "bengio2003": (["data=shakespeare", "experiment=bengio2003"], ["train.steps=300", "train.eval_interval=150"], 6.6),
}


@pytest.mark.slow  # each recipe builds its package once (20-90 s) and trains twice
@pytest.mark.parametrize("name", BOTH_PATHS)
def test_every_recipe_trains_on_the_compiled_path_as_on_the_plain_one(tmp_path, corpora, name):
    """Each shipped recipe through `python train.py`, with train.fast=on (its compiled step) and
    train.fast=off (the plain path), same seed: both learn (val below the stated loss; the uniform
    guess is ln vocab_size: 3.30 for names, 8.0-9.3 for these word corpora), and they end close (the
    compiled step is the same arithmetic to float rounding; dropout's masks are drawn in another
    order, which moves a short run by about what another seed does). The lecture's own comparison
    is tests/test_fast.py's."""
    overrides, length, below = BOTH_PATHS[name]
    data = corpora["shakespeare_large" if "data=shakespeare" in overrides else "names"]
    runs = {}
    for fast in ("on", "off"):
        runs[fast] = recipe(tmp_path / fast, *overrides, f"data.path={data}", *length, "train.log_interval=50",
                            f"train.fast={fast}")[0]
    on, off = runs["on"], runs["off"]
    assert on["path"] == "compiled" and off["path"] == "plain", on["path_reason"]
    key = "nplm_val_loss" if "nplm_val_loss" in on else "val_loss"  # the network's, before any mixture
    assert on[key] < below and off[key] < below, (on[key], off[key])
    assert abs(on[key] - off[key]) < 0.05 * below, (on[key], off[key])
    # Reproducible mode gives these numbers on any x86-64 CPU with AVX2 (docs/reproducibility.md,
    # where they are tabled with the CPU they came from); CI runs on whatever CPU it gets.
    assert (on[key], off[key]) == EXACT[name], (on[key], off[key])


# each recipe's val loss above (the network's), compiled and plain, in reproducible mode: measured on
# a 2-core AMD EPYC (Zen 4), torch 2.13.0, 2026-12-07
EXACT = {
    "default": (1.9107436525726675, 1.9107437670314698),
    "fast": (1.9306679540992733, 1.9306681830168777),
    "best": (2.793713647884435, 2.793509911216596),
    "mixture": (2.8688401163211186, 2.8683147285110895),
    "words": (6.722126212868604, 6.730952034095837),
    "words_large": (7.52624524415108, 7.543140673327218),
    "bengio2003": (4.6624059972407395, 4.662406007662506),
}
