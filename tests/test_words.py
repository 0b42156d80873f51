"""data.level=word, Bengio et al.'s setting: tokens, the vocabulary with <unk>, splits by position,
perplexity, and the bundled Shakespeare preset end to end."""
import math
import re

import pandas as pd
import pytest
import torch

from conftest import ROOT, run_cmd, summary, train
from nplm.config import DataConfig
from nplm.data import EOS, UNK, DataError, WordVocab, load_data, load_dataset, tokenize
from nplm.ngram import NGram


def run_data(run_dir):
    """The dataset a run trained on, loaded from its recorded config."""
    cfg = summary(run_dir)["config"]
    return load_data(DataConfig(**cfg["data"]), cfg["model"]["block_size"])


def unigram_ppl(data) -> float:
    """Val perplexity of the word frequencies counted on train (add-one): a model that learnt no context."""
    counts = torch.bincount(data.Y["train"], minlength=data.vocab.size).double() + 1
    return math.exp(-(counts / counts.sum()).log()[data.Y["val"]].mean().item())


def check_samples(run_dir, n=3):
    """scripts/sample.py prints n sentences of the run's words (one may be empty: </s> drawn first), each
    labelled as the words are (in train, in val, or new), the same ones for the same seed, others for another."""
    data = run_data(run_dir)
    words, train_lines, val_lines = set(data.vocab.itos) - {EOS}, set(data.words["train"]), set(data.words["val"])
    out = run_cmd([ROOT / "scripts/sample.py", run_dir, f"n={n}", "seed=1"]).stdout
    lines = out.splitlines()
    assert len(lines) == n, out
    for line in lines:
        sentence, where = re.fullmatch(r"(.*?)(?: +\(in (train|val)\))?", line).groups()
        assert set(sentence.split()) <= words, line
        assert where == ("train" if sentence in train_lines else "val" if sentence in val_lines else None), line
    assert sum(len(line.split()) for line in lines) >= n, out  # sentences, not a few stray words
    assert run_cmd([ROOT / "scripts/sample.py", run_dir, f"n={n}", "seed=1"]).stdout == out
    assert run_cmd([ROOT / "scripts/sample.py", run_dir, f"n={n}", "seed=2"]).stdout != out


def test_tokens_are_words_and_single_marks():
    assert tokenize("Why, 'tis the Duke's man!  O--", lowercase=False) == \
        ["Why", ",", "'", "tis", "the", "Duke's", "man", "!", "O", "-", "-"]
    assert tokenize("First Citizen:", lowercase=True) == ["first", "citizen", ":"]


def test_vocabulary_from_training_counts_with_unk():
    lines = [["a", "b", "a"], ["a", "c", "b"], ["d"]]
    v = WordVocab.from_lines(lines, min_count=2, max_size=0)
    assert v.itos == [EOS, UNK, "a", "b"]  # most frequent first; c and d seen once: <unk>
    assert v.encode_tokens(["b", "zebra", "a"]) == [3, 1, 2]
    assert WordVocab.from_lines(lines, min_count=1, max_size=4).itos == [EOS, UNK, "a", "b"]


def test_whitespace_tokenizer_reads_a_tokenised_corpus_as_it_is(tmp_path):
    """data.tokenizer=whitespace: Brown's `` and '' and Penn Treebank's Mr. stay one token each, and
    the corpus's own <unk> is the unknown word (index 1), never a word of the vocabulary."""
    corpus = tmp_path / "tokenised.txt"
    corpus.write_text("`` Mr. Smith said <unk> . ''\n" * 8 + "Mr. <unk> left .\n" * 2)
    d = load_dataset(corpus, 0.8, 0.1, 0, 2, level="word", tokenizer="whitespace")
    assert d.words["train"][0] == "`` Mr. Smith said <unk> . ''"
    assert d.vocab.itos[:2] == [EOS, UNK] and d.vocab.itos.count(UNK) == 1 and "Mr." in d.vocab.itos
    assert d.Y["train"][4].item() == 1  # the corpus's <unk>
    words = load_dataset(corpus, 0.8, 0.1, 0, 2, level="word")  # the default tokenizer splits them
    assert words.words["train"][0] == "` ` Mr . Smith said < unk > . ' '"
    refused = tmp_path / "refused"  # where a run would go if the refusal broke: never the checkout's outputs/
    bad = run_cmd([ROOT / "train.py", "data.tokenizer=whitespace", "train.steps=1", f"hydra.run.dir={refused}"],
                  check=False)
    assert bad.returncode == 2 and "data.tokenizer=whitespace splits sentences into words" in bad.stderr
    assert not refused.exists()  # refused: nothing made


def test_lines_split_in_order_and_examples_reset_at_each_line(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n".join(f"line {i} ends here ." for i in range(10)) + "\n\n")
    d = load_dataset(corpus, 0.6, 0.2, 0, 2, level="word")
    assert d.words["train"][0] == "line 0 ends here ." and d.words["val"] == ["line 6 ends here .",
                                                                                 "line 7 ends here ."]
    assert len(d.X["train"]) == 6 * 6  # 5 tokens and </s> per line
    stoi = d.vocab.stoi
    assert d.X["train"][:3].tolist() == [[0, 0], [0, stoi["line"]], [stoi["line"], stoi["0"]]]
    assert d.Y["val"][1].item() == stoi[UNK]  # "6" never occurs in the training lines
    assert d.Y["train"][5].item() == 0  # each line ends with </s>


@pytest.mark.slow  # the sweep test below covers most of it in the default suite
def test_shakespeare_preset_trains_with_perplexity_and_its_run_can_be_used(tmp_path):
    run_dir = tmp_path / "r"
    proc = train(run_dir, "data=shakespeare", "train.steps=300", "train.eval_interval=150", "train.batch_size=32",
                 "optim.lr=0.01", "optim.warmup_steps=0", "model.n_hidden=16", "wandb.mode=disabled")
    s = summary(run_dir)
    assert s["level"] == "word" and s["vocab_size"] == 5989 and s["status"] == "finished"
    assert s["val_ppl"] == pytest.approx(math.exp(s["val_loss"]))
    # learnt something: from uniform (5989) to near the word frequencies' perplexity (about 238)
    assert s["val_ppl"] < 2 * unigram_ppl(run_data(run_dir)) < 5989 / 10
    assert "(ppl " in proc.stdout and "perplexity train" in proc.stdout
    assert " " in (run_dir / "samples.tsv").read_text().splitlines()[1]  # sampled sentences: words
    out = run_cmd([ROOT / "scripts/evaluate.py", run_dir, "split=val"]).stdout
    assert f"{s['val_loss']:.4f}" in out
    check_samples(run_dir)


@pytest.mark.slow  # 9 s: keeps the default suite near 5 minutes (CI runs it)
def test_kneser_ney_at_word_level(tmp_path):
    """The count baseline on the same tokens and splits, at any order over any vocabulary: a 6-gram
    over 100,000 word types (11,022 ** 5 alone would overflow a 64-bit base-V key) is a proper
    distribution, and a context never seen backs off to the lower orders."""
    run_dir = tmp_path / "kn"
    train(run_dir, "data=shakespeare", "model=ngram", "model.order=3", "wandb.mode=disabled")
    s = summary(run_dir)
    assert s["level"] == "word" and s["status"] == "finished" and 50 < s["val_ppl"] < 400
    # perplexity with and without the boundary predictions (each line's </s>), both recorded
    d = load_data(DataConfig(**s["config"]["data"]), 2)
    lp = NGram(3, d.vocab.size, 2).fit(d.X["train"], d.Y["train"]).log_prob(d.X["val"], d.Y["val"])
    words = d.Y["val"] != 0
    assert s["val_loss"] == pytest.approx(-lp.mean().item(), rel=1e-9)
    assert s["val_loss_without_boundary"] == pytest.approx(-lp[words].mean().item(), rel=1e-9)
    assert s["boundary_share"] == pytest.approx(1 - words.float().mean().item()) and 0 < s["boundary_share"] < 0.2
    assert s["val_ppl_without_boundary"] != s["val_ppl"] and "</s>" in s["ppl_note"]
    out = run_cmd([ROOT / "scripts/evaluate.py", run_dir, "split=val"]).stdout
    assert f"without them {s['val_ppl_without_boundary']:.2f}" in out
    V, g = 100_000, torch.Generator().manual_seed(0)
    stream = torch.randint(0, 50, (3000,), generator=g) * 1999 % V  # 50 word types spread over V
    windows = stream.unfold(0, 6, 1)
    X, Y = windows[:, :5], windows[:, 5]
    model = NGram(6, V, 5).fit(X, Y)
    seen, unseen = X[:2], torch.full((1, 5), V - 1)
    for ctx in (seen, unseen):
        probs = model.log_prob(ctx.repeat_interleave(V, 0), torch.arange(V).repeat(len(ctx))).exp()
        assert probs.view(len(ctx), V).sum(1).tolist() == pytest.approx([1.0] * len(ctx), abs=1e-9)


def test_split_by_token_counts_cuts_at_line_ends(tmp_path):
    """The paper's split: the lines holding the first train_tokens tokens train, the next val_tokens
    val, the rest test, each cut at the end of the line that reaches its count."""
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n".join(" ".join([f"w{i}"] * (i % 3 + 1)) for i in range(30)))  # 1, 2, 3, 1, ... tokens
    d = load_dataset(corpus, 0.5, 0.1, 0, 2, level="word", train_tokens=10, val_tokens=5)
    tokens = {name: sum(len(line.split()) for line in lines) for name, lines in d.words.items()}
    assert tokens == {"train": 12, "val": 6, "test": 60 - 18}  # 1+2+3+1+2 = 9 < 10 takes one more line
    assert d.words["train"][-1] == "w5 w5 w5" and d.words["val"] == ["w6", "w7 w7", "w8 w8 w8"]
    with pytest.raises(DataError, match="60 tokens.*the test split.*data.train_tokens / data.val_tokens"):
        load_dataset(corpus, 0.5, 0.1, 0, 2, level="word", train_tokens=50, val_tokens=10)


@pytest.mark.slow  # ~27 s: a real two-job word-level sweep and its report (CI runs it)
def test_word_level_sweep_reports_perplexity_beside_kneser_ney(tmp_path):
    """A word-level sweep of the Shakespeare preset split by token counts: each job reports perplexity,
    its run can be evaluated and sampled, the leaderboard has perplexity, the dashboard the
    word-level count baseline on the same split, and no character-level 2.17 bar."""
    sweep = tmp_path / "s"
    proc = run_cmd([ROOT / "train.py", "-m", "data=shakespeare", "data.train_tokens=150000", "data.val_tokens=20000",
             "model.n_hidden=0,16", "train.steps=30", "train.eval_interval=30", "train.batch_size=32",
             "train.num_samples=0", "wandb.mode=disabled", f"hydra.sweep.dir={sweep}"])
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert list(board["model.n_hidden"].sort_values()) == [0, 16] and (board["status"] == "finished").all()
    assert board["val_ppl"].tolist() == pytest.approx([math.exp(v) for v in board["val_loss"]], rel=1e-6)
    html = (sweep / "dashboard.html").read_text()
    # the baseline the dashboard names, computed here on the same split
    d = load_dataset(ROOT / "nplm/assets/tinyshakespeare.txt", 0.8, 0.1, 42, 4, level="word", lowercase=True,
                     min_count=2, train_tokens=150000, val_tokens=20000)
    kn = NGram(5, d.vocab.size, 4).fit(d.X["train"], d.Y["train"])
    val = -kn.log_prob(d.X["val"], d.Y["val"]).mean().item()
    assert f"Kneser-Ney 5-gram, val loss <b>{val:.4f}</b> (perplexity {math.exp(val):.1f}" in html
    assert "perplexity <b>" in html and "lecture" not in html
    s = summary(sweep / "1")
    assert s["level"] == "word" and s["vocab_size"] == d.vocab.size and s["status"] == "finished"
    assert s["val_ppl"] == pytest.approx(math.exp(s["val_loss"]))
    assert board.set_index("job").loc[1, "val_ppl"] == pytest.approx(s["val_ppl"], rel=1e-6)  # its row: its run
    assert "perplexity train" in proc.stdout + proc.stderr
    out = run_cmd([ROOT / "scripts/evaluate.py", sweep / "1", "split=val"]).stdout
    assert f"{s['val_loss']:.4f}" in out
    check_samples(sweep / "1")


def test_bengio2003_preset_trains_the_papers_recipe_with_its_trigram_mixture(tmp_path):
    """experiment=bengio2003 end to end on 3,000 lines of Shakespeare: SGD at lr / (1 + r t), decay on
    the weights and the features, epochs evaluated once each, early stopping armed, and the network
    mixed with a Kneser-Ney trigram whose weight is fitted on val."""
    corpus = tmp_path / "shakespeare_3000.txt"
    lines = (ROOT / "nplm/assets/tinyshakespeare.txt").read_text().splitlines()[:3000]
    corpus.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "r"
    proc = run_cmd([ROOT / "train.py", "experiment=bengio2003", "data=shakespeare", f"data.path={corpus}",
                    "train.epochs=3", "wandb.mode=disabled", "device=cpu", f"hydra.run.dir={run_dir}"])
    s = summary(run_dir)
    cfg = s["config"]
    examples = len(load_data(DataConfig(**cfg["data"]), 4).Y["train"])
    per_epoch = -(-examples // 128)
    assert s["status"] == "finished" and s["steps"] == -(-3 * examples // 128) and s["epochs"] == pytest.approx(3, abs=0.01)
    assert cfg["train"]["eval_interval"] == per_epoch and cfg["model"]["n_hidden"] == 100
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert rows["val/loss"].notna().sum() == 3  # once an epoch
    o = cfg["optim"]
    for step, lr in zip(rows["step"], rows["lr"]):  # the lr of the step a row ends: lr / (1 + r t), t = step - 1
        assert lr == pytest.approx(o["lr"] / (1 + o["decay_rate"] * (step - 1)), rel=1e-6)
    assert 0 < s["mix_weight"] < 1 and s["mix_order"] == 3 and "Kneser-Ney 3-gram" in proc.stdout
    assert s["val_loss"] < min(s["nplm_val_loss"], s["ngram_val_loss"])  # the mixture beats both parts


def test_adaptive_softmax_run_evaluates_samples_and_mixes_like_a_full_one(tmp_path):
    """model.softmax_cutoffs end to end on 3,000 lines of Shakespeare: trained and evaluated on its
    targets' clusters (the run's val losses are what scripts/evaluate.py gets from the checkpoint),
    sampled over the whole vocabulary, and mixed with a Kneser-Ney trigram."""
    corpus = tmp_path / "shakespeare_3000.txt"
    lines = (ROOT / "nplm/assets/tinyshakespeare.txt").read_text().splitlines()[:3000]
    corpus.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "r"
    proc = train(run_dir, "data=shakespeare", f"data.path={corpus}", "train.steps=400", "train.eval_interval=200",
                 "model.softmax_cutoffs=[100,500]", "model.softmax_div=2", "model.mix_order=3", "wandb.mode=disabled")
    s = summary(run_dir)
    assert s["status"] == "finished" and "adaptive softmax (cutoffs [100, 500], softmax_div 2)" in proc.stdout
    # learnt something: from uniform (905 words) to near the word frequencies' perplexity (about 93)
    assert math.exp(s["nplm_val_loss"]) < 1.5 * unigram_ppl(run_data(run_dir)) < s["vocab_size"] / 5
    assert 0 <= s["mix_weight"] < 1 and s["val_loss"] <= min(s["nplm_val_loss"], s["ngram_val_loss"]) + 1e-9
    # the network alone, from the mixture's per-example log-probabilities and from split_loss over the checkpoint
    out = run_cmd([ROOT / "scripts/evaluate.py", run_dir, "split=val"]).stdout
    assert f"{s['val_loss']:.4f}" in out and f"{s['nplm_val_loss']:.4f}" in out
    check_samples(run_dir)


KJV = ROOT.parent / "shared" / "data" / "kjv.txt"  # beside the clone in CI and on these machines


@pytest.mark.slow  # ~40 s: a million-word corpus
@pytest.mark.skipif(not KJV.is_file(), reason="needs the King James Bible at ../shared/data/kjv.txt")
def test_kneser_ney_five_gram_on_a_million_word_corpus_split_the_papers_way(tmp_path):
    """The King James Bible split as the paper split Brown (by token counts) with a 7,740-word
    vocabulary: the 5-gram, refused before its keys were context ids, now counts and scores, below the
    3-gram, at the perplexities docs/results.md reports, with and without the line ends."""
    args = [f"data.path={KJV}", "data.level=word", "data.train_tokens=700000", "data.val_tokens=100000",
            "data.min_count=2", "model=ngram", "wandb.mode=disabled"]
    ppl = {}
    for order in (3, 5):
        run_cmd([ROOT / "train.py", *args, f"model.order={order}", f"hydra.run.dir={tmp_path / str(order)}"])
        s = summary(tmp_path / str(order))
        assert s["vocab_size"] == 7740 and s["status"] == "finished"
        ppl[order] = (s["val_ppl"], s["val_ppl_without_boundary"])
    assert ppl[3] == pytest.approx((76.45, 88.31), abs=0.01) and ppl[5] == pytest.approx((73.84, 85.07), abs=0.01)
