"""data.level=word, Bengio et al.'s setting: tokens, the vocabulary with <unk>, splits by position,
perplexity, and the bundled Shakespeare preset end to end."""
import json
import math

import pytest
import torch

from conftest import ROOT, run_cmd, train
from nplm.config import ConfigError
from nplm.data import EOS, UNK, WordVocab, load_dataset, tokenize
from nplm.ngram import NGram


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


def test_lines_split_in_order_and_examples_reset_at_each_line(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n".join(f"line {i} ends here ." for i in range(10)) + "\n\n")
    d = load_dataset(corpus, 0.6, 0.2, 0, 2, level="word")
    assert d.words["train"][0] == "line 0 ends here ." and d.words["dev"] == ["line 6 ends here .",
                                                                                 "line 7 ends here ."]
    assert len(d.X["train"]) == 6 * 6  # 5 tokens and </s> per line
    stoi = d.vocab.stoi
    assert d.X["train"][:3].tolist() == [[0, 0], [0, stoi["line"]], [stoi["line"], stoi["0"]]]
    assert d.Y["dev"][1].item() == stoi[UNK]  # "6" never occurs in the training lines
    assert d.Y["train"][5].item() == 0  # each line ends with </s>


def test_shakespeare_preset_trains_with_perplexity_and_its_run_can_be_used(tmp_path):
    run_dir = tmp_path / "r"
    proc = train(run_dir, "data=shakespeare", "train.steps=40", "train.eval_interval=20", "train.batch_size=32",
                 "model.n_hidden=16", "wandb.mode=disabled")
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["level"] == "word" and s["vocab_size"] == 5989 and s["status"] == "finished"
    assert s["dev_ppl"] == pytest.approx(math.exp(s["dev_loss"])) and s["dev_ppl"] < 5989  # learnt something
    assert "(ppl " in proc.stdout and "perplexity train" in proc.stdout
    assert " " in (run_dir / "samples.tsv").read_text().splitlines()[1]  # sampled sentences: words
    out = run_cmd([ROOT / "scripts/evaluate.py", run_dir, "split=dev"]).stdout
    assert f"{s['dev_loss']:.4f}" in out
    assert run_cmd([ROOT / "scripts/sample.py", run_dir, "n=3", "seed=1"]).returncode == 0


def test_kneser_ney_at_word_level(tmp_path):
    """The count baseline on the same tokens and splits; orders whose keys would overflow are refused."""
    run_dir = tmp_path / "kn"
    train(run_dir, "data=shakespeare", "model=ngram", "model.order=3", "wandb.mode=disabled")
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["level"] == "word" and s["status"] == "finished" and 50 < s["dev_ppl"] < 400
    with pytest.raises(ConfigError, match="use model.order <= 4"):
        NGram(5, 11_022, 4).fit(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, dtype=torch.long))
