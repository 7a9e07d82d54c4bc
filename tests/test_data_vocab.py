"""Tests for dynlp.data.vocab: ordering, specials, UNK handling, word dropout and JSON I/O."""

import json

import numpy as np
import pytest

from dynlp.data.vocab import Vocab

SENTENCES = [["the", "dog", "barks"], ["the", "cat", "sleeps"], ["a", "dog", "runs"]]


def test_build_order_specials_and_counts():
    vocab = Vocab.build(SENTENCES)
    assert vocab.tokens == ["<pad>", "<unk>", "dog", "the", "a", "barks", "cat", "runs", "sleeps"]
    assert (vocab.pad_index, vocab.unk_index) == (0, 1)
    assert len(vocab) == 9 and "dog" in vocab and "bird" not in vocab
    assert vocab.index("the") == 3 and vocab.token(3) == "the"
    assert vocab.index("bird") == vocab.unk_index
    assert vocab.indices(["a", "bird"]) == [4, 1]
    assert vocab.count("dog") == 2 and vocab.count("bird") == 0 and vocab.count("<unk>") == 0
    assert list(vocab) == vocab.tokens
    with pytest.raises(IndexError):
        vocab.token(9)


def test_tokens_constructor_min_count_and_max_size():
    tokens = [token for sentence in SENTENCES for token in sentence]
    assert Vocab(tokens) == Vocab.build(SENTENCES)
    assert Vocab(tokens, min_count=2).tokens == ["<pad>", "<unk>", "dog", "the"]
    assert Vocab(tokens, max_size=3).tokens == ["<pad>", "<unk>", "dog", "the", "a"]
    with pytest.raises(TypeError):
        Vocab("dog")
    with pytest.raises(ValueError):
        Vocab(tokens, specials=("<unk>", "<unk>"))


def test_label_vocab_without_specials():
    labels = Vocab(["NOUN", "VERB", "NOUN"], specials=())
    assert labels.tokens == ["NOUN", "VERB"]
    assert labels.unk_index is None and labels.pad_index is None
    with pytest.raises(KeyError):
        labels.index("ADJ")
    with pytest.raises(ValueError):
        labels.index_with_dropout("NOUN", np.random.default_rng(0))


def test_word_dropout_probability_and_determinism():
    vocab = Vocab(["rare"] + ["common"] * 99)
    rng = np.random.default_rng(0)
    draws = [vocab.index_with_dropout("rare", rng, alpha=0.25) for _ in range(20000)]
    rate = np.mean(np.array(draws) == vocab.unk_index)
    assert abs(rate - 0.25 / 1.25) < 0.015
    draws = [vocab.index_with_dropout("common", rng, alpha=0.25) for _ in range(20000)]
    assert np.mean(np.array(draws) == vocab.unk_index) < 0.01
    assert vocab.index_with_dropout("unseen", rng) == vocab.unk_index
    first = vocab.indices_with_dropout(["rare"] * 50, np.random.default_rng(3))
    second = vocab.indices_with_dropout(["rare"] * 50, np.random.default_rng(3))
    assert first == second and set(first) == {vocab.unk_index, vocab.index("rare")}


def test_characters():
    characters = Vocab.characters(["abc", "ab"], specials=("<pad>", "<unk>", "<w>", "</w>"))
    assert characters.tokens == ["<pad>", "<unk>", "<w>", "</w>", "a", "b", "c"]
    assert characters.count("a") == 2


def test_json_round_trip(tmp_path):
    vocab = Vocab.build(SENTENCES + [["ünïcode"]], min_count=1)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocab.load(path)
    assert loaded == vocab and loaded.tokens == vocab.tokens
    assert loaded.count("dog") == 2 and loaded.unk_index == vocab.unk_index
    assert json.loads(path.read_text(encoding="utf-8"))["format"] == "dynlp-vocab"
    assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    with pytest.raises(ValueError):
        Vocab.from_dict({"format": "other"})
    broken = vocab.to_dict()
    broken["counts"] = broken["counts"][:-1]
    with pytest.raises(ValueError):
        Vocab.from_dict(broken)
