"""Tests for dynlp.data.trees: parsing, traversal, labels, errors and byte-exact round trips.

Uses the fixtures in data/ and, when present, the real SST files in ../shared/data/sst.
"""

from pathlib import Path

import pytest

from dynlp.data.trees import (
    Tree,
    TreeError,
    binary_label,
    fine_label,
    parse_tree,
    read_trees,
    write_trees,
)

REPO = Path(__file__).resolve().parents[1]
SST = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst"
REAL_FILES = sorted(SST.glob("*.txt")) if SST.is_dir() else []
TEXT = "(3 (2 It) (4 (4 (2 's) (4 good)) (2 .)))"


def test_parse_structure_and_str():
    tree = parse_tree(TEXT)
    assert str(tree) == TEXT
    assert tree.label == "3" and tree.word is None and not tree.is_leaf
    assert tree.children[0].word == "It" and tree.children[0].is_leaf
    assert tree.words() == ["It", "'s", "good", "."]
    assert [leaf.label for leaf in tree.leaves()] == ["2", "2", "4", "2"]
    order = [node.word or node.label for node in tree.nodes()]
    assert order == ["It", "'s", "good", "4", ".", "4", "3"]
    assert tree.nodes()[-1] is tree
    assert parse_tree(TEXT) == tree and hash(parse_tree(TEXT)) == hash(tree)
    assert parse_tree("  (2\tword)  ") == Tree("2", word="word")


def test_word_may_hold_non_breaking_space():
    text = "(2 (2 nearly) (2 2\xa01\\/2))"
    assert str(parse_tree(text)) == text
    assert parse_tree(text).words()[1] == "2\xa01\\/2"


def test_labels():
    tree = parse_tree(TEXT)
    assert fine_label(tree) == 3
    assert [binary_label(label) for label in ("0", "1", "2", "3", "4")] == [0, 0, None, 1, 1]
    assert binary_label(tree) == 1 and binary_label(0) == 0
    with pytest.raises(ValueError):
        fine_label("5")
    with pytest.raises(ValueError):
        fine_label(Tree("NP", word="x"))


@pytest.mark.parametrize(
    "text, column, problem",
    [
        ("(3 (2 a) (2 b)", 15, "unbalanced brackets: 1 '(' not closed"),
        ("(3 (2 a)) x", 11, "junk after the tree"),
        ("(2 a))", 6, "junk after the tree"),
        ("((2 a))", 2, "missing label"),
        ("(", 2, "missing label"),
        ("(3 (2))", 6, "empty node (2)"),
        ("(3 a (2 b))", 6, "both a word and children"),
        ("(3 (2 a) b)", 10, "word 'b' next to child nodes"),
        ("(2 a b)", 6, "second word"),
        ("x (2 a)", 1, "expected '('"),
        ("", 1, "empty tree"),
    ],
)
def test_errors_name_source_line_column(text, column, problem):
    with pytest.raises(TreeError) as caught:
        parse_tree(text, source="t.txt", line=7)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.line, error.column) == (7, column)
    assert problem in error.problem
    assert str(error).startswith(f"t.txt:7:{column}: ")


def test_read_skips_blank_lines_and_reports_lines(tmp_path):
    path = tmp_path / "trees.txt"
    path.write_text(f"{TEXT}\n\n   \n(1 (1 bad) (2 x)\n", encoding="utf-8")
    with pytest.raises(TreeError, match=r"trees\.txt:4:17: unbalanced"):
        read_trees(path)
    path.write_text(f"\n{TEXT}\n\n(1 bad)\n", encoding="utf-8")
    assert [str(tree) for tree in read_trees(path)] == [TEXT, "(1 bad)"]
    path.write_bytes(f"{TEXT}\r\n".encode())
    with pytest.raises(TreeError, match="CRLF"):
        read_trees(path)


def test_deep_tree_without_recursion():
    depth = 20000
    text = "(1 " * depth + "(2 x)" + ")" * depth
    tree = parse_tree(text)
    assert len(tree.nodes()) == depth + 1
    assert tree.words() == ["x"]
    assert str(tree) == text


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_fixture_round_trip(tmp_path, split):
    path = REPO / "data" / f"tiny-{split}.trees"
    trees = read_trees(path)
    assert len(trees) >= 20
    assert all(0 <= fine_label(node) <= 4 for tree in trees for node in tree.nodes())
    output = tmp_path / "out.trees"
    write_trees(trees, output)
    assert output.read_bytes() == path.read_bytes()


def test_real_files_present_or_skip():
    if not REAL_FILES:
        pytest.skip(f"no SST files under {SST}")
    assert [path.name for path in REAL_FILES] == ["dev.txt", "test.txt", "train.txt"]


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda path: path.name)
def test_real_sst_round_trip(tmp_path, path):
    trees = read_trees(path)
    output = tmp_path / path.name
    write_trees(trees, output)
    assert output.read_bytes() == path.read_bytes()
    expected = {"train.txt": (8544, 318582), "dev.txt": (1101, 41447), "test.txt": (2210, 82600)}
    assert (len(trees), sum(len(tree.nodes()) for tree in trees)) == expected[path.name]


def test_strict_labels_binary_trees_and_binarize():
    from dynlp.data import binarize

    for label in ("03", "+3", " 3", "\u0663", "3.0", True, 5):
        with pytest.raises(ValueError):
            fine_label(label)
    assert parse_tree("(x (y a) (z b))", binary=True).label == "x"
    with pytest.raises(TreeError, match="s:4:1: node .* has 3 children"):
        parse_tree("(2 (2 a) (2 b) (2 c))", "s", 4, binary=True)
    with pytest.raises(TreeError, match="s:1:5: label '7'"):
        parse_tree("(2 (7 a) (2 b))", "s", fine_labels=True)
    chain = parse_tree("(1 " * 5000 + "(3 a)" + ")" * 5000)
    assert str(binarize(chain)) == "(1 a)"
    assert str(binarize(parse_tree("(4 (3 (2 a) (1 b) (0 c)) (2 (1 d)))"))) == (
        "(4 (3 (2 a) (3 (1 b) (0 c))) (2 d))")
