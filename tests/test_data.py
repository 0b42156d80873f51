"""The data pipeline against the counts in docs/reference.md, and its handling of bad files."""
import pytest
import torch

from nplm.data import DataError, Vocab, build_examples, load_dataset, load_words, split_words


@pytest.fixture(scope="module")
def words():
    return load_words()


def test_bundled_names(words):
    assert len(words) == 32033
    assert len(set(words)) == 29494
    assert min(map(len, words)) == 2 and max(map(len, words)) == 15


def test_vocab(words):
    vocab = Vocab.from_words(words)
    assert vocab.size == 27
    assert vocab.itos[0] == "." and vocab.itos[1] == "a" and vocab.itos[26] == "z"


@pytest.mark.parametrize("block_size", [1, 3, 8])
def test_example_count_independent_of_block_size(words, block_size):
    X, Y = build_examples(words, Vocab.from_words(words), block_size)
    assert X.shape == (228146, block_size) and Y.shape == (228146,)
    assert X.dtype == Y.dtype == torch.long


def test_lecture_split_sizes():
    data = load_dataset(None, 0.8, 0.1, 42, block_size=3)
    assert [len(data.words[s]) for s in ("train", "val", "test")] == [25626, 3203, 3204]
    assert [len(data.X[s]) for s in ("train", "val", "test")] == [182625, 22655, 22866]


def test_split_matches_lecture_shuffle(words):
    import random
    expected = list(words)
    random.seed(42)
    random.shuffle(expected)
    splits = split_words(words, 0.8, 0.1, 42)
    assert splits["train"] == expected[:25626] and splits["val"] == expected[25626:28829]
    assert splits["test"] == expected[28829:]


def test_examples_of_one_word():
    vocab = Vocab.from_words(["emma"])
    X, Y = build_examples(["emma"], vocab, 3)
    stoi = vocab.stoi
    assert X.tolist() == [[0, 0, 0], [0, 0, stoi["e"]], [0, stoi["e"], stoi["m"]],
                          [stoi["e"], stoi["m"], stoi["m"]], [stoi["m"], stoi["m"], stoi["a"]]]
    assert Y.tolist() == [stoi["e"], stoi["m"], stoi["m"], stoi["a"], 0]


def test_blank_lines_and_whitespace_are_dropped(tmp_path):
    f = tmp_path / "w.txt"
    f.write_text("  anna \n\n\tbob\r\n\n")
    assert load_words(f) == ["anna", "bob"]


@pytest.mark.parametrize("content, message", [
    (b"", "holds no words"),
    (b"\n  \n", "holds no words"),
    (b"ann\xe9\n", "not UTF-8"),
    (b"anna\nj.r.\n", "boundary character"),
])
def test_bad_files(tmp_path, content, message):
    f = tmp_path / "w.txt"
    f.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_words(f)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_words(tmp_path / "nope.txt")


def test_too_few_words_for_three_splits():
    with pytest.raises(DataError, match="too few"):
        split_words(["ab", "cd", "ef"], 0.8, 0.1, 42)


@pytest.mark.parametrize("block_size", [1, 3, 8])
def test_examples_are_the_lectures_loop_exactly(block_size):
    """build_examples gathers from one stream; it must equal the lecture's loop over characters,
    non-ASCII characters and one-letter words included."""
    words = load_words(None)[:500] + ["zoë", "ñ", "a", "日本"]
    vocab = Vocab.from_words(words)
    xs, ys = [], []
    for w in words:
        context = [0] * block_size
        for ch in w + ".":
            xs.append(context)
            ys.append(vocab.stoi[ch])
            context = context[1:] + [vocab.stoi[ch]]
    X, Y = build_examples(words, vocab, block_size)
    assert X.tolist() == xs and Y.tolist() == ys
