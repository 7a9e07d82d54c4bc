"""Hostile input and faults through the `dynlp` command: every bad model folder, tree file,
flag value, treebank and file system fault ends in one `dynlp: error:` line and a non-zero exit
(never a traceback, never silent acceptance), and no write leaves a partial or temporary file.

Each case is a file or an argument list with its expected outcome; the tiny models are trained
once per module (1 epoch, sizes of 4).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import dynlp as dn
from dynlp import cli, train
from dynlp.data import files as data_files
from dynlp.data import read_trees, registry

DATA = Path(__file__).resolve().parent.parent / "data"
ROOT = Path(dn.__file__).resolve().parent.parent  # the source tree under test
CONLLU = {split: DATA / f"tiny-{split}.conllu" for split in ("train", "dev", "test")}
TREES = {split: DATA / f"tiny-{split}.trees" for split in ("train", "dev", "test")}
SMALL = {
    "tagger": ["--word-dim", "4", "--char-dim", "4", "--char-hidden", "4", "--lstm-layers", "1",
               "--lstm-dim", "4", "--mlp-dim", "4"],
    "parser": ["--word-dim", "4", "--pos-dim", "4", "--lstm-layers", "1", "--lstm-dim", "4",
               "--mlp-dim", "4"],
    "treelstm": ["--embedding-dim", "4", "--hidden-dim", "4"],
}


def data_args(recipe: str) -> list[str]:
    files = TREES if recipe == "treelstm" else CONLLU
    return ["--train", str(files["train"]), "--dev", str(files["dev"])]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def refused(capsys, argv: list[str], *words: str) -> str:
    """The command must exit 2 with one `dynlp: error:` line naming every word."""
    code, _, err = run(capsys, argv)
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("dynlp: error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert "allow_pickle" not in lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary files that a write left behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".part")))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A trained run folder of every recipe (1 epoch, tiny sizes)."""
    root = tmp_path_factory.mktemp("runs")
    folders = {}
    for recipe in ("tagger", "parser", "treelstm"):
        out = root / recipe
        argv = ["train", recipe, *data_args(recipe), "--out", str(out), "--epochs", "1",
                *SMALL[recipe]]
        assert cli.main(argv) == 0
        folders[recipe] = out
    return folders


# -------------------------------------------------------------------------------------------------
# 1. Model folders: every array checked against the header, the header's fields, the sizes, the
# references to other models


def read_npz(path: Path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return json.loads(arrays.pop("header").tobytes().decode("utf-8")), arrays


def write_raw(path: Path, header, arrays: dict, raw_header: bytes | None = None) -> None:
    text = raw_header if raw_header is not None else json.dumps(header).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, header=np.frombuffer(text, dtype=np.uint8), **arrays)


def _table(header: dict) -> str:
    """The key of the first lookup table's array."""
    return next(f"p{i}" for i, s in enumerate(header["parameters"]) if s["kind"] == "lookup")


def set_array(key_of, make):
    def mutate(header, arrays):
        key = key_of(header)
        arrays[key] = make(arrays[key])
    return mutate


def set_config(**changes):
    def mutate(header, arrays):
        header["metadata"]["config"].update(changes)
    return mutate


def set_param_field(field, value):
    def mutate(header, arrays):
        header["parameters"][0][field] = value
    return mutate


def set_header(field, value):
    def mutate(header, arrays):
        header[field] = value
    return mutate


def delete_array(header, arrays):
    del arrays[_table(header)]


def set_vocab(field, value):
    def mutate(header, arrays):
        header["metadata"]["vocabs"]["words"][field] = value
    return mutate


def with_nan(a):
    b = a.copy()
    b.flat[1] = np.nan
    return b


def with_inf(a):
    b = a.copy()
    b.flat[0] = -np.inf
    return b


MODEL_CASES = {
    # arrays against the header
    "array of shape (1,)": (set_array(_table, lambda a: np.zeros(1, a.dtype)), "has shape"),
    "array larger": (set_array(_table, lambda a: np.zeros((a.shape[0] * 9, a.shape[1]),
                                                          a.dtype)), "has shape"),
    "array far larger": (set_array(_table, lambda a: np.zeros((a.shape[0] * 999, a.shape[1]),
                                                              a.dtype)), "more than"),
    "array transposed": (set_array(_table, lambda a: np.ascontiguousarray(a.T)), "has shape"),
    "int64 array": (set_array(_table, lambda a: a.astype(np.int64)), "stored as int64"),
    "bool array": (set_array(_table, lambda a: a > 0), "stored as bool"),
    "complex array": (set_array(_table, lambda a: a.astype(np.complex64)), "stored as complex"),
    "float64 array, float32 header": (set_array(_table, lambda a: a.astype(np.float64)),
                                      "stored as float64"),
    "string array": (set_array(_table, lambda a: np.array(["x"] * a.size).reshape(a.shape)),
                     "stored as <U1"),
    "NaN in an array": (set_array(_table, with_nan), "NaN"),
    "inf in an array": (set_array(_table, with_inf), "NaN or infinite"),
    "array missing": (delete_array, "is missing"),
    "scalar array": (set_array(_table, lambda a: np.float32(1.0)), "has shape"),
    # the header's fields
    "parameters not a list": (set_header("parameters", {"a": 1}), "'parameters' is not a list"),
    "parameter entry not an object": (lambda h, a: h["parameters"].__setitem__(0, "p0"),
                                      "is not an object"),
    "name not a string": (set_param_field("name", 3), "'name'"),
    "name missing": (lambda h, a: h["parameters"][0].pop("name"), "'name'"),
    "shape of strings": (set_param_field("shape", ["4", "4"]), "'shape'"),
    "shape negative": (set_param_field("shape", [-4, 4]), "'shape'"),
    "shape of floats": (set_param_field("shape", [4.0, 4]), "'shape'"),
    "shape missing": (lambda h, a: h["parameters"][0].pop("shape"), "'shape'"),
    "kind unknown": (set_param_field("kind", "sparse"), "'kind'"),
    "dtype int64": (set_param_field("dtype", "int64"), "'dtype'"),
    "dtype object": (set_param_field("dtype", "object"), "'dtype'"),
    "metadata a list": (set_header("metadata", [1, 2]), "'metadata' is not an object"),
    "metadata missing": (lambda h, a: h.pop("metadata"), "'metadata'"),
    "format missing": (lambda h, a: h.pop("format"), "not a dynlp model file"),
    "version 99": (set_header("version", 99), "version 99"),
    "version a string": (set_header("version", "1"), "version '1'"),
    # the model description in the metadata
    "recipe missing": (lambda h, a: h["metadata"].pop("recipe"), "None"),
    "config a list": (lambda h, a: h["metadata"].__setitem__("config", [1]), "damaged"),
    "vocabs a string": (lambda h, a: h["metadata"].__setitem__("vocabs", "w"), "damaged"),
    "vocab tokens of numbers": (set_vocab("tokens", [1, 2, 3]), "damaged"),
    "vocab counts negative": (set_vocab("counts", [-1] * 3), "damaged"),
    "vocab counts strings": (set_vocab("counts", "abc"), "damaged"),
    "vocab missing": (lambda h, a: h["metadata"]["vocabs"].pop("words"), "damaged"),
    "word_dim of terabytes": (set_config(word_dim=10**12), "'word_dim'"),
    "word_dim larger than the file": (set_config(word_dim=60000), "do not match"),
    "lstm_dim odd": (set_config(lstm_dim=5), "'lstm_dim'"),
    "max_word_chars negative": (set_config(max_word_chars=-1), "'max_word_chars'"),
    "dropout a string": (set_config(dropout="half"), "'dropout'"),
    "dropout NaN": (set_config(dropout=float("nan")), "'dropout'"),
    "lstm_layers zero": (set_config(lstm_layers=0), "'lstm_layers'"),
    "lstm_layers a bool": (set_config(lstm_layers=True), "'lstm_layers'"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_damaged_model_file(case, runs, tmp_path, capsys):
    mutate, words = MODEL_CASES[case]
    header, arrays = read_npz(runs["tagger"] / "model.npz")
    mutate(header, arrays)
    write_raw(tmp_path / "model.npz", header, arrays)
    refused(capsys, ["evaluate", "tagger", "--model", tmp_path, "--input", CONLLU["dev"]],
            str(tmp_path / "model.npz"), words)


RAW_HEADERS = {
    "header not JSON": b"{not json",
    "header a JSON list": b"[1, 2, 3]",
    "header not UTF-8": b"\xff\xfe{}",
    "header empty": b"",
}


@pytest.mark.parametrize("case", sorted(RAW_HEADERS))
def test_unreadable_model_header(case, runs, tmp_path, capsys):
    _, arrays = read_npz(runs["tagger"] / "model.npz")
    write_raw(tmp_path / "model.npz", None, arrays, RAW_HEADERS[case])
    refused(capsys, ["evaluate", "tagger", "--model", tmp_path, "--input", CONLLU["dev"]],
            "not a dynlp model file")


def _object_header(path: Path) -> None:
    np.savez(path, header=np.array([{"format": "x"}], dtype=object))


def _pickled_array(path: Path) -> None:
    header, arrays = read_npz(Path(os.environ["DYNLP_TEST_TAGGER"]))
    arrays[_table(header)] = np.array([object()], dtype=object)
    write_raw(path, header, arrays)


def _zip_without_header(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")


def _int_header(path: Path) -> None:
    np.savez(path, header=np.arange(5))


NOT_MODELS = {
    "a text file": (lambda p: p.write_text("1 2 3\n"), "not an npz archive"),
    "an empty file": (lambda p: p.write_bytes(b""), "not an npz archive"),
    "a truncated npz": (lambda p: p.write_bytes(
        (Path(os.environ["DYNLP_TEST_TAGGER"])).read_bytes()[:300]), "not a"),
    "a pickle": (lambda p: p.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."),
                 "not an npz archive"),
    "an object-array header": (_object_header, "not a dynlp model file"),
    "a pickled parameter array": (_pickled_array, "cannot be read"),
    "a zip without a header": (_zip_without_header, "no header"),
    "an integer header": (_int_header, "not a dynlp model file"),
    "a directory": (lambda p: p.mkdir(), "no such model file"),
    "a FIFO": (lambda p: os.mkfifo(p), "FIFO"),
}


@pytest.mark.parametrize("case", sorted(NOT_MODELS))
def test_not_a_model_file(case, runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DYNLP_TEST_TAGGER", str(runs["tagger"] / "model.npz"))
    make, words = NOT_MODELS[case]
    target = tmp_path / "model.npz"
    make(target)
    refused(capsys, ["predict", "tagger", "--model", target, "--input", CONLLU["dev"],
                     "--output", tmp_path / "out.conllu"], str(target), words)
    assert not (tmp_path / "out.conllu").exists()


def test_model_folder_without_a_model(tmp_path, capsys):
    refused(capsys, ["evaluate", "tagger", "--model", tmp_path, "--input", CONLLU["dev"]],
            "no such model file")


def _parser_pointing_at(runs: dict, folder: Path, target: str | None) -> Path:
    header, arrays = read_npz(runs["parser"] / "model.npz")
    header["metadata"]["config"]["tagger_model"] = target
    write_raw(folder / "model.npz", header, arrays)
    return folder


@pytest.mark.parametrize("target", ["itself", "parser", "treelstm", "missing", "number"])
def test_parser_tagger_model_must_be_a_tagger(target, runs, tmp_path, capsys):
    folder = tmp_path / "p"
    reference = {"itself": str(folder), "parser": str(runs["parser"]),
                 "treelstm": str(runs["treelstm"]), "missing": str(tmp_path / "nowhere"),
                 "number": 7}[target]
    _parser_pointing_at(runs, folder, reference)
    words = {"missing": "no such model file", "number": "'tagger_model'"}.get(
        target, "must be a tagger model")
    refused(capsys, ["evaluate", "parser", "--model", folder, "--input", CONLLU["dev"]], words)


def test_parser_with_a_tagger_model_loads(runs, tmp_path, capsys):
    folder = _parser_pointing_at(runs, tmp_path / "p", str(runs["tagger"]))
    code, out, _ = run(capsys, ["evaluate", "parser", "--model", folder, "--input",
                                CONLLU["dev"]])
    assert code == 0 and "uas" in out


def test_train_with_a_wrong_tagger_model(runs, tmp_path, capsys):
    refused(capsys, ["train", "parser", *data_args("parser"), "--out", tmp_path / "run",
                     *SMALL["parser"], "--tagger-model", runs["treelstm"]],
            "must be a tagger model")


def test_good_model_still_loads(runs, capsys):
    for recipe in ("tagger", "parser"):
        code, out, _ = run(capsys, ["evaluate", recipe, "--model", runs[recipe], "--input",
                                    CONLLU["dev"]])
        assert code == 0 and json.loads(out)


# -------------------------------------------------------------------------------------------------
# 2. Tree files: labels 0-4 only (ASCII, one digit), binary trees only, deep trees, file and line

TREE_CASES = {
    "label 5": ("(5 (2 a) (2 b))", "label '5'"),
    "label -1": ("(2 (-1 a) (2 b))", "label '-1'"),
    "label 1.0": ("(2 (1.0 a) (2 b))", "label '1.0'"),
    "label a word": ("(good (2 a) (2 b))", "label 'good'"),
    "label 0_3": ("(0_3 (2 a) (2 b))", "label '0_3'"),
    "label Arabic-Indic three": ("(\u0663 (2 a) (2 b))", "label"),
    "label fullwidth three": ("(\uff13 (2 a) (2 b))", "label"),
    "label 03": ("(03 (2 a) (2 b))", "label '03'"),
    "label +3": ("(+3 (2 a) (2 b))", "label '+3'"),
    "label 10": ("(2 (10 a) (2 b))", "label '10'"),
    "unary chain": ("(2 (2 (2 a)))", "1 children"),
    "unary root over a pair": ("(2 (2 (2 a) (2 b)))", "1 children"),
    "ternary node": ("(2 (2 a) (2 b) (2 c))", "3 children"),
    "deep unary chain": ("(1 " * 10000 + "(1 a)" + ")" * 10000, "1 children"),
    "unbalanced": ("(2 (2 a) (2 b)", "unbalanced"),
    "word and children": ("(2 a (2 b) (2 c))", "word"),
    "empty node": ("(2 (2 a) (2))", "empty node"),
}


@pytest.mark.parametrize("case", sorted(TREE_CASES))
def test_bad_training_tree(case, tmp_path, capsys):
    line, words = TREE_CASES[case]
    bad = tmp_path / "bad.trees"
    good = TREES["train"].read_text().splitlines()
    bad.write_text("\n".join(good[:2] + [line] + good[2:]) + "\n")  # the tree on line 3
    refused(capsys, ["train", "treelstm", "--train", bad, "--dev", TREES["dev"], "--out",
                     tmp_path / "run", *SMALL["treelstm"]], f"{bad}:3:", words)
    assert not (tmp_path / "run").exists()


def test_deep_binary_tree_is_read_without_recursion(tmp_path):
    text = "(1 a)"
    for _ in range(10000):
        text = f"(1 {text} (2 b))"
    path = tmp_path / "deep.trees"
    path.write_text(text + "\n")
    [tree] = read_trees(path, fine_labels=True, binary=True)
    assert len(tree.nodes()) == 20001 and str(tree) == text


def test_prediction_trees_need_structure_not_labels(runs, tmp_path, capsys):
    unlabelled = tmp_path / "in.trees"
    unlabelled.write_text("(x (y a) (z film))\n")
    code, _, _ = run(capsys, ["predict", "treelstm", "--model", runs["treelstm"], "--input",
                              unlabelled, "--output", tmp_path / "out.trees"])
    assert code == 0 and (tmp_path / "out.trees").read_text().startswith("(")
    unlabelled.write_text("(x (y a) (z film) (w .))\n")
    refused(capsys, ["predict", "treelstm", "--model", runs["treelstm"], "--input",
                     unlabelled, "--output", tmp_path / "out2.trees"], "3 children")


# -------------------------------------------------------------------------------------------------
# 3. Command-line values: each numeric flag in its range, named in the message

FLAG_CASES = [
    ("tagger", "--dropout", "1"), ("tagger", "--dropout", "2"), ("tagger", "--dropout", "-0.5"),
    ("tagger", "--dropout", "nan"), ("tagger", "--dropout", "inf"),
    ("tagger", "--recurrent-dropout", "1"), ("tagger", "--word-dropout", "-1"),
    ("tagger", "--word-dropout", "nan"), ("tagger", "--word-dim", "0"),
    ("tagger", "--word-dim", "-3"), ("tagger", "--word-dim", "10000000"),
    ("tagger", "--char-dim", "0"), ("tagger", "--char-hidden", "3"),
    ("tagger", "--lstm-dim", "5"), ("tagger", "--lstm-dim", "0"),
    ("tagger", "--lstm-layers", "0"), ("tagger", "--lstm-layers", "-2"),
    ("tagger", "--mlp-dim", "0"), ("tagger", "--max-word-chars", "-1"),
    ("tagger", "--max-word-chars", "0"), ("tagger", "--min-count", "0"),
    ("tagger", "--learning-rate", "nan"), ("tagger", "--learning-rate", "inf"),
    ("tagger", "--learning-rate", "-inf"), ("tagger", "--learning-rate", "1e30"),
    ("tagger", "--learning-rate", "0"), ("tagger", "--learning-rate", "-1"),
    ("tagger", "--learning-rate", "1e400"), ("tagger", "--limit", "-5"),
    ("tagger", "--limit", "0"), ("tagger", "--dev-limit", "0"),
    ("tagger", "--dev-limit", "-1"), ("tagger", "--epochs", "0"),
    ("tagger", "--epochs", "-1"), ("tagger", "--batch-size", "0"),
    ("tagger", "--batch-size", "10000000"), ("tagger", "--seed", "-1"),
    ("tagger", "--patience", "0"), ("tagger", "--eval-every", "0"),
    ("tagger", "--epochs", "0_3"), ("tagger", "--epochs", "\u0663"),
    ("tagger", "--epochs", "1.5"), ("tagger", "--epochs", " 3"),
    ("tagger", "--epochs", "three"), ("tagger", "--learning-rate", "\u0660.\u0661"),
    ("tagger", "--learning-rate", "1_0"), ("tagger", "--dropout", "0x1"),
    ("parser", "--exploration", "5"), ("parser", "--exploration", "-0.1"),
    ("parser", "--lstm-dim", "7"), ("parser", "--pos-dim", "0"),
    ("parser", "--lstm-layers", "0"), ("parser", "--dropout", "1"),
    ("parser", "--word-dropout", "-0.25"), ("parser", "--activation", "sigmoid"),
    ("treelstm", "--hidden-dim", "0"), ("treelstm", "--embedding-dim", "-4"),
    ("treelstm", "--embedding-dropout", "1"), ("treelstm", "--dropout", "-1"),
    ("treelstm", "--word-dropout", "inf"), ("treelstm", "--learning-rate", "0"),
]


@pytest.mark.parametrize("recipe, flag, value", FLAG_CASES)
def test_flag_out_of_range(recipe, flag, value, tmp_path, capsys):
    refused(capsys, ["train", recipe, *data_args(recipe), "--out", tmp_path / "run",
                     *SMALL[recipe], flag, value], flag)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "1.5"])
def test_batch_size_of_evaluate_and_predict(command, value, runs, tmp_path, capsys):
    extra = ["--output", tmp_path / "o.conllu"] if command == "predict" else []
    refused(capsys, [command, "tagger", "--model", runs["tagger"], "--input", CONLLU["dev"],
                     "--batch-size", value, *extra], "--batch-size")
    assert not (tmp_path / "o.conllu").exists()


def test_model_too_large_for_memory(tmp_path, capsys):
    refused(capsys, ["train", "tagger", *data_args("tagger"), "--out", tmp_path / "run",
                     "--word-dim", "60000", "--lstm-dim", "60000", "--lstm-layers", "1"],
            "does not fit in the memory")
    assert not (tmp_path / "run").exists()


def test_memory_budget_is_checked_before_allocating():
    pc = dn.ParameterCollection(max_bytes=1000)
    pc.add_parameters((10, 10))
    with pytest.raises(dn.params.ModelSizeError, match="'param_1'"):
        pc.add_parameters((10**6, 10**6))  # 4 TB: refused without allocating
    with pytest.raises(ValueError, match="negative"):
        pc.add_parameters((-3, 2))


# -------------------------------------------------------------------------------------------------
# 4. Treebank content: trees for parser training, only what the model reads for prediction

WORDS = [("The", "DET", "2", "det"), ("dog", "NOUN", "3", "nsubj"),
         ("barked", "VERB", "0", "root"), (".", "PUNCT", "3", "punct")]


def conllu(words, comment="# sent_id = x") -> str:
    lines = [comment] + [f"{i}\t{form}\t_\t{upos}\t_\t_\t{head}\t{rel}\t_\t_"
                         for i, (form, upos, head, rel) in enumerate(words, start=1)]
    return "\n".join(lines) + "\n\n"


def change(word: int, **fields):
    words = [list(w) for w in WORDS]
    names = ("form", "upos", "head", "deprel")
    for name, value in fields.items():
        words[word - 1][names.index(name)] = value
    return words


TREEBANK_CASES = {
    "self-loop": (change(2, head="2"), "parser", 3, "word 2 is its own head"),
    "two roots": (change(4, head="0"), "parser", 5, "2 words have HEAD 0"),
    "no root": (change(3, head="1"), "parser", 2, "no root"),
    "cycle": ([("a", "X", "2", "dep"), ("b", "X", "1", "dep"), ("c", "X", "0", "root")],
              "parser", 2, "cycle"),
    "HEAD _": (change(1, head="_"), "parser", 2, "no HEAD"),
    "DEPREL _": (change(1, deprel="_"), "parser", 2, "no DEPREL"),
    "parser UPOS _": (change(1, upos="_"), "parser", 2, "no UPOS"),
    "tagger UPOS _": (change(4, upos="_"), "tagger", 5, "no UPOS"),
}


@pytest.mark.parametrize("case", sorted(TREEBANK_CASES))
def test_bad_training_treebank(case, tmp_path, capsys):
    words, recipe, line, message = TREEBANK_CASES[case]
    bad = tmp_path / "bad.conllu"
    bad.write_text(conllu(words))
    refused(capsys, ["train", recipe, "--train", bad, "--dev", CONLLU["dev"], "--out",
                     tmp_path / "run", *SMALL[recipe]], f"{bad}:{line}:", message)
    refused(capsys, ["evaluate", recipe, "--model", tmp_path / "none", "--input", bad],
            "no such model file")


def unannotated(path: Path, keep_upos: bool) -> Path:
    out = []
    for line in CONLLU["test"].read_text().split("\n"):
        cols = line.split("\t")
        if len(cols) == 10:
            cols[3] = cols[3] if keep_upos else "_"
            cols[4:9] = ["_"] * 5
        out.append("\t".join(cols))
    path.write_text("\n".join(out))
    return path


@pytest.mark.parametrize("recipe, keep_upos", [("tagger", False), ("parser", True)])
def test_predict_needs_only_what_the_model_reads(recipe, keep_upos, runs, tmp_path, capsys):
    source = unannotated(tmp_path / "in.conllu", keep_upos)
    code, _, err = run(capsys, ["predict", recipe, "--model", runs[recipe], "--input", source,
                                "--output", tmp_path / "out.conllu"])
    assert code == 0, err
    words = [line.split("\t") for line in (tmp_path / "out.conllu").read_text().splitlines()
             if "\t" in line]
    assert all(w[3] != "_" for w in words)
    if recipe == "parser":
        assert all(w[6] != "_" and w[7] != "_" for w in words)


def test_parser_predict_without_upos_is_refused(runs, tmp_path, capsys):
    source = unannotated(tmp_path / "in.conllu", keep_upos=False)
    refused(capsys, ["predict", "parser", "--model", runs["parser"], "--input", source,
                     "--output", tmp_path / "out.conllu"], f"{source}:", "no UPOS")
    assert not (tmp_path / "out.conllu").exists()


# -------------------------------------------------------------------------------------------------
# 5. Faults: full disk, interrupts and signals during writes and training, reruns


def no_space_after(limit: int):
    """An os.fdopen for atomic_write whose files take `limit` bytes, then fail with ENOSPC."""
    real = os.fdopen

    class Full:
        def __init__(self, handle):
            self.handle, self.left = handle, limit

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    return lambda fd, *a, **k: Full(real(fd, *a, **k))


@pytest.mark.parametrize("recipe", ["tagger", "treelstm"])
def test_predict_onto_a_full_disk(recipe, runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data_files.os, "fdopen", no_space_after(100))
    source = TREES["test"] if recipe == "treelstm" else CONLLU["test"]
    out = tmp_path / "out.txt"
    refused(capsys, ["predict", recipe, "--model", runs[recipe], "--input", source, "--output",
                     out], str(out), "No space left")
    assert not out.exists() and leftovers(tmp_path) == []


def finished_tagger_run(runs: dict, out: Path) -> list[str]:
    """A copy of the module's 1-epoch tagger run in `out`, and the command that made it."""
    shutil.copytree(runs["tagger"], out)
    return ["train", "tagger", *data_args("tagger"), "--out", str(out), *SMALL["tagger"]]


def test_full_disk_during_training_keeps_the_last_checkpoint(runs, tmp_path, capsys,
                                                             monkeypatch):
    out = tmp_path / "run"
    argv = finished_tagger_run(runs, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(data_files.os, "fdopen", no_space_after(2000))
    refused(capsys, [*argv, "--epochs", "2", "--resume"], str(out), "No space left")
    assert leftovers(out) == []
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after["checkpoint.npz"] == before["checkpoint.npz"]
    monkeypatch.undo()
    assert run(capsys, [*argv, "--epochs", "2", "--resume"])[0] == 0
    assert [json.loads(r)["epoch"] for r in (out / "log.jsonl").read_text().splitlines()] == [
        1, 2]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 48 KB tmpfs (as root), else skip: a real full disk."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)],
            capture_output=True, check=False).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_real_full_disk(runs, tiny_tmpfs, capsys):
    refused(capsys, ["train", "tagger", *data_args("tagger"), "--out", tiny_tmpfs / "run",
                     "--epochs", "1", "--word-dim", "64", "--lstm-dim", "64"],
            str(tiny_tmpfs / "run"), "No space left")
    assert leftovers(tiny_tmpfs) == []
    with open(tiny_tmpfs / "filler", "wb", buffering=0) as filler, pytest.raises(OSError):
        for _ in range(100):
            filler.write(b"x" * 4096)
            filler.flush()
    big = tiny_tmpfs / "big.conllu"
    refused(capsys, ["predict", "tagger", "--model", runs["tagger"], "--input",
                     CONLLU["train"], "--output", big], str(big))
    assert not big.exists() and leftovers(tiny_tmpfs) == []


INTERRUPTED = ["train", "tagger", *data_args("tagger"), *SMALL["tagger"], "--epochs", "2",
               "--patience", "5"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The run that the interrupted ones must equal once resumed."""
    out = tmp_path_factory.mktemp("straight")
    assert cli.main([*INTERRUPTED, "--out", str(out), "--overwrite"]) == 0
    return out


@pytest.mark.parametrize("where", ["model", "checkpoint", "log"])
def test_interrupt_during_a_write(where, straight, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the middle of writing a file of epoch 2: the files of epoch 1 stay, nothing
    temporary is left, the message names the right epoch, the resumed run is exact."""
    argv = INTERRUPTED
    out = tmp_path / "run"
    real = data_files.os.fdopen
    target = {"model": "model.npz", "checkpoint": "checkpoint.npz", "log": "log.jsonl"}[where]
    seen = []

    def interrupting(fd, *a, **k):
        handle = real(fd, *a, **k)
        name = Path(handle.name if isinstance(handle.name, str) else "").name
        if f".{target}." in os.readlink(f"/proc/self/fd/{fd}") or target in name:
            seen.append(1)
            if len(seen) == 2:  # the write of epoch 2
                handle.write(b"partial" if "b" in handle.mode else "partial")
                raise KeyboardInterrupt
        return handle

    monkeypatch.setattr(data_files.os, "fdopen", interrupting)
    code, _, err = run(capsys, [*argv, "--out", out])
    monkeypatch.undo()
    assert code == 130
    saved = 2 if where == "log" else 1  # the log comes after the checkpoint
    assert f"after epoch {saved}" in err and leftovers(out) == []
    log = [json.loads(r)["epoch"] for r in (out / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, saved + 1))
    assert run(capsys, [*argv, "--out", out, "--resume"])[0] == 0
    assert (out / "log.jsonl").read_text().count("\n") == 2
    for name in ("checkpoint.npz", "model.npz"):
        a, b = read_npz(straight / name)[1], read_npz(out / name)[1]
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    losses = [[json.loads(r)["train_loss"] for r in (f / "log.jsonl").read_text().splitlines()]
              for f in (straight, out)]
    assert losses[0] == losses[1]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_right_after_a_checkpoint_counts_that_epoch(signum, tmp_path, capsys,
                                                             monkeypatch):
    """A signal that arrives the moment epoch 1's checkpoint is in place (before the run has
    noted it): the message, the log and the checkpoint agree that epoch 1 is saved."""
    from dynlp import train
    real = train.save_checkpoint

    def signalling(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signum)

    monkeypatch.setattr(train, "save_checkpoint", signalling)
    # Ctrl-C as a terminal sends it, whatever an earlier test left as the process's handler
    # (SIGTERM's is the command's own)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, _, err = run(capsys, [*INTERRUPTED, "--out", tmp_path / "run"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == (130 if signum == signal.SIGINT else 143)
    assert "after epoch 1 " in err
    out = tmp_path / "run"
    assert [json.loads(r)["epoch"] for r in (out / "log.jsonl").read_text().splitlines()] == [1]
    assert len(read_npz(out / "checkpoint.npz")[0]["state"]["__dict__"]["records"]) == 1


def test_rerun_without_resume_never_destroys_a_finished_run(runs, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*finished_tagger_run(runs, out), "--epochs", "1"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused(capsys, argv, str(out), "--resume", "--overwrite")
    refused(capsys, [*argv[:-1], "x"], "--epochs")  # a failing rerun
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert run(capsys, [*argv, "--overwrite", "--seed", "2"])[0] == 0
    assert (out / "checkpoint.npz").read_bytes() != before["checkpoint.npz"]
    assert len((out / "log.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])  # Ctrl-C: in-process
def test_signal_at_a_random_point_of_training(signum, tmp_path, capsys):
    """A signal at a random moment after the first checkpoint (perhaps during a write): Ctrl-C
    and SIGTERM exit with a message naming the last checkpoint; after any of them (SIGKILL too)
    nothing temporary is left once the run resumes, and the log holds every epoch once."""
    out = tmp_path / "run"
    flags = [*data_args("tagger"), "--out", str(out), *SMALL["tagger"], "--patience", "1000"]
    process = subprocess.Popen([sys.executable, "-m", "dynlp", "train", "tagger", *flags,
                                "--epochs", "1000"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.3))
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert "Traceback" not in err
    if signum == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == (130 if signum == signal.SIGINT else 143), err
        how = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
        assert f"dynlp: {how} during epoch" in err and "--resume" in err
        assert leftovers(out) == []
    done = len(read_npz(out / "checkpoint.npz")[0]["state"]["__dict__"]["records"])
    if signum != signal.SIGKILL:
        assert f"after epoch {done} " in err
    code, _, err = run(capsys, ["train", "tagger", *flags, "--epochs", str(done + 1),
                                "--resume"])
    assert code == 0, err
    assert leftovers(out) == []
    epochs = [json.loads(r)["epoch"] for r in (out / "log.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, done + 2))


# -------------------------------------------------------------------------------------------------
# 6. Messages: paths named, BOM, special files, empty files, closed pipes, umask


@pytest.mark.parametrize("kind", ["directory", "fifo", "missing"])
def test_special_input_files_are_named_as_such(kind, runs, tmp_path, capsys):
    path = tmp_path / "input.conllu"
    words = {"directory": "is a directory", "fifo": "FIFO", "missing": "no such"}[kind]
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    refused(capsys, ["evaluate", "tagger", "--model", runs["tagger"], "--input", path],
            str(path), words)
    refused(capsys, ["train", "tagger", "--train", path, "--dev", CONLLU["dev"], "--out",
                     tmp_path / "run", *SMALL["tagger"]], str(path), words)


@pytest.mark.parametrize("recipe", ["tagger", "treelstm"])
def test_byte_order_mark_is_skipped(recipe, runs, tmp_path, capsys):
    source = TREES["dev"] if recipe == "treelstm" else CONLLU["dev"]
    bom = tmp_path / ("bom" + source.suffix)
    bom.write_bytes(b"\xef\xbb\xbf" + source.read_bytes())
    plain = run(capsys, ["evaluate", recipe, "--model", runs[recipe], "--input", source])
    with_bom = run(capsys, ["evaluate", recipe, "--model", runs[recipe], "--input", bom])
    assert with_bom[0] == 0 and with_bom[1] == plain[1]


@pytest.mark.parametrize("recipe", ["tagger", "parser", "treelstm"])
@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_training_file_is_named(recipe, content, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text(content)
    files = TREES if recipe == "treelstm" else CONLLU
    if content and recipe != "treelstm":
        words = (str(empty), "blank line")
    else:
        words = (str(empty), "no examples")
    refused(capsys, ["train", recipe, "--train", empty, "--dev", files["dev"], "--out",
                     tmp_path / "run", *SMALL[recipe]], *words)


@pytest.mark.parametrize("where", ["missing folder", "a directory"])
def test_output_errors_name_the_path(where, runs, tmp_path, capsys):
    target = tmp_path / "no" / "out.conllu" if where == "missing folder" else tmp_path
    refused(capsys, ["predict", "tagger", "--model", runs["tagger"], "--input", CONLLU["dev"],
                     "--output", target], str(target))
    assert leftovers(tmp_path) == []


def test_out_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    refused(capsys, ["train", "tagger", *data_args("tagger"), "--out", tmp_path / "f",
                     *SMALL["tagger"]], str(tmp_path / "f"), "is a file")


def test_data_list_into_a_closed_pipe(tmp_path, capsys, monkeypatch):
    """`dynlp data list | head -0`: the reader has gone before anything is written."""
    read, write = os.pipe()
    os.close(read)
    closed = os.fdopen(write, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", closed)
    assert cli.main(["data", "list", "--cache", str(tmp_path)]) == 0
    monkeypatch.undo()
    closed.close()  # the flush at exit: stdout now leads to /dev/null
    assert capsys.readouterr().err == ""


def test_cached_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "file.txt"
        import hashlib
        import io
        data = b"some data\n"
        registry._install(io.BytesIO(data), target, hashlib.sha256(data).hexdigest(), "test")
        data_files.write_text_atomic(tmp_path / "other.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "other.txt").stat().st_mode) == 0o644


def test_atomic_write_removes_its_file_on_any_exception(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    for error in (KeyboardInterrupt, train.Terminated, OSError(errno.EIO, "I/O error")):
        with pytest.raises(type(error) if isinstance(error, Exception) else error):
            with data_files.atomic_write(target) as handle:
                handle.write(b"new, partial")
                raise error
        assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_killed_run_leaves_no_temporary_behind_the_next_run(runs, tmp_path, capsys):
    out = tmp_path / "run"
    argv = finished_tagger_run(runs, out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name in ("checkpoint.npz", "report.html"):  # as a SIGKILL during a write leaves
        (out / f".{name}.{dead}.0a1b2c3d.tmp").write_bytes(b"partial")
    assert run(capsys, [*argv, "--epochs", "2", "--resume"])[0] == 0
    assert leftovers(out) == []


def test_binarize_offers_help_for_non_binary_trees(tmp_path, capsys):
    bad = tmp_path / "nary.trees"
    bad.write_text("(3 (2 (2 a)) (3 (2 b) (3 c) (2 d)))\n" + "(1 " * 3000 + "(1 a)" + ")" * 3000
                   + "\n" + TREES["train"].read_text())
    argv = ["train", "treelstm", "--train", bad, "--dev", TREES["dev"], "--out",
            tmp_path / "run", *SMALL["treelstm"], "--epochs", "1"]
    refused(capsys, argv, f"{bad}:1:", "--binarize")
    assert run(capsys, [*argv, "--binarize"])[0] == 0
    [tree, chain] = dn.data.binarize(read_trees(bad)[0]), dn.data.binarize(read_trees(bad)[1])
    assert str(tree) == "(3 (2 a) (3 (2 b) (3 (3 c) (2 d))))" and str(chain) == "(1 a)"
