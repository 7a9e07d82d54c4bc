"""Tests for dynlp.data.conllu: parsing, views, strict errors, skip_bad and round trips.

Uses the fixtures in data/ and, when present, the real UD files in ../shared/data.
"""

from pathlib import Path

import pytest

from dynlp.data.conllu import (
    CoNLLUError,
    Sentence,
    Token,
    format_conllu,
    parse_conllu,
    read_conllu,
    write_conllu,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_FILES = sorted(SHARED.glob("ud_*/*.conllu")) if SHARED.is_dir() else []

SAMPLE = (
    "# sent_id = s1\n"
    "# text = I don't know.\n"
    "1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t4:nsubj\t_\n"
    "2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
    "2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t4:aux\t_\n"
    "3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t4:advmod\t_\n"
    "4\tknow\tknow\tVERB\tVB\t_\t0\troot\t0:root\tSpaceAfter=No\n"
    "4.1\tknow\tknow\tVERB\tVB\t_\t_\t_\t4:conj\t_\n"
    "5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t4:punct\t_\n"
    "\n"
    "1\tchủ tịch\tchủ tịch\tNOUN\tN\t_\t0\troot\t_\t_\n"
    "\n"
)


def word_line(ident: str, form: str = "x", head: str = "0") -> str:
    return f"{ident}\t{form}\tx\tX\tX\t_\t{head}\tdep\t_\t_"


def test_parse_views_and_comments():
    sentences = parse_conllu(SAMPLE)
    assert len(sentences) == 2
    first = sentences[0]
    assert first.comments == ["# sent_id = s1", "# text = I don't know."]
    assert first.sent_id == "s1" and first.text == "I don't know."
    assert len(first.tokens) == 7 and len(first) == 5
    assert first.forms == ["I", "do", "n't", "know", "."]
    assert first.upos == ["PRON", "AUX", "PART", "VERB", "PUNCT"]
    assert first.heads == [4, 4, 4, 0, 4]
    assert first.deprels == ["nsubj", "aux", "advmod", "root", "punct"]
    assert [token.is_multiword for token in first.tokens].count(True) == 1
    assert [token.is_empty_node for token in first.tokens].count(True) == 1
    assert all(token.is_word for token in first.words)
    assert sentences[1].forms == ["chủ tịch"]
    assert sentences.skipped == 0 and sentences.errors == []


def test_string_round_trip_and_token_line():
    sentences = parse_conllu(SAMPLE)
    assert format_conllu(sentences) == SAMPLE
    line = "1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t4:nsubj\t_"
    assert Token.from_line(line).to_line() == line
    assert parse_conllu("") == []


def test_with_columns_returns_new_sentence():
    sentence = parse_conllu(SAMPLE)[0]
    tagged = sentence.with_columns(upos=["A", "B", "C", "D", "E"], head=[0, 1, 1, 1, 1],
                                   deprel=["root", "x", "x", "x", "x"])
    assert tagged.upos == ["A", "B", "C", "D", "E"]
    assert tagged.heads == [0, 1, 1, 1, 1]
    assert tagged.deprels[0] == "root"
    assert sentence.upos[0] == "PRON"
    assert tagged.tokens[1] == sentence.tokens[1]
    assert tagged.tokens[5] == sentence.tokens[5]
    assert tagged.comments == sentence.comments
    with pytest.raises(ValueError, match="5 words"):
        sentence.with_columns(upos=["A"])
    with pytest.raises(TypeError, match="unknown column"):
        sentence.with_columns(id=["1"] * 5)


def test_write_rejects_unwritable_values(tmp_path):
    sentence = parse_conllu(SAMPLE)[1]
    with pytest.raises(ValueError):
        write_conllu([sentence.with_columns(form=["a\tb"])], tmp_path / "x.conllu")
    with pytest.raises(ValueError):
        write_conllu([sentence.with_columns(lemma=[""])], tmp_path / "x.conllu")
    with pytest.raises(ValueError):
        Sentence([], ["# x"]).to_conllu()


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("1\tx\tx\n\n", 1, "expected 10 tab-separated columns, found 3"),
        (word_line("a") + "\n\n", 1, "bad ID 'a'"),
        (word_line("1") + "\n" + word_line("3", head="1") + "\n\n", 2, "out of order"),
        (word_line("1", head="x") + "\n\n", 1, "HEAD 'x' is not"),
        (word_line("1", head="-1") + "\n\n", 1, "HEAD '-1' is not"),
        (word_line("1", head="2") + "\n\n", 1, "HEAD 2 out of range 0..1"),
        (word_line("1", form="") + "\n\n", 1, "empty FORM"),
        (word_line("1") + "\n", 1, "missing blank line at end of file"),
        (word_line("1"), 1, "missing newline and blank line at end of file"),
        (word_line("1") + "\n\n\n", 3, "spurious blank line"),
        ("\n" + word_line("1") + "\n\n", 1, "spurious blank line"),
        (word_line("1") + "\n# late\n\n", 2, "comment line after token lines"),
        ("# only a comment\n\n", 1, "sentence has no words"),
        (word_line("1-2") + "\n" + word_line("1") + "\n\n", 1, "multiword range ends at 2"),
        (word_line("2-3") + "\n" + word_line("1") + "\n\n", 1, "must come right before"),
        (word_line("1-1") + "\n" + word_line("1") + "\n\n", 1, "must end after"),
        (word_line("1-x") + "\n\n", 1, "range must look like"),
        (word_line("1") + "\n" + word_line("2.1") + "\n\n", 2, "must follow word 2"),
        (word_line("1") + "\n" + word_line("1.0") + "\n\n", 2, "start at 1"),
        (word_line("1") + "\n" + word_line("1.a") + "\n\n", 2, "must look like 8.1"),
        (word_line("1") + "\r\n\r\n", 1, "CRLF"),
    ],
)
def test_strict_errors_name_source_line_and_problem(text, line, problem):
    with pytest.raises(CoNLLUError) as caught:
        parse_conllu(text, source="f.conllu")
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.line == line
    assert problem in error.problem
    assert str(error).startswith(f"f.conllu:{line}: ")


def test_skip_bad_counts_and_keeps_good_sentences():
    good = word_line("1") + "\n\n"
    bad = word_line("1", head="9") + "\n\n"
    text = good + bad + "\n" + good + bad + word_line("1")
    sentences = parse_conllu(text, source="f", skip_bad=True)
    assert len(sentences) == 2
    assert sentences.skipped == 3
    assert [error.line for error in sentences.errors] == [3, 5, 8, 10]
    with pytest.raises(CoNLLUError, match="f:3: HEAD 9"):
        parse_conllu(text, source="f")


def test_read_reports_file_name_and_bad_utf8(tmp_path):
    path = tmp_path / "bad.conllu"
    path.write_bytes((word_line("1") + "\n\n" + word_line("1", form="\xff")).encode("latin-1"))
    with pytest.raises(CoNLLUError, match=r"bad\.conllu:3: not valid UTF-8"):
        read_conllu(path)


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_fixture_round_trip(tmp_path, split):
    path = REPO / "data" / f"tiny-{split}.conllu"
    sentences = read_conllu(path)
    assert len(sentences) >= 20
    assert all(sentence.heads.count(0) == 1 for sentence in sentences)
    output = tmp_path / "out.conllu"
    write_conllu(sentences, output)
    assert output.read_bytes() == path.read_bytes()
    if split == "train":
        tokens = [token for sentence in sentences for token in sentence.tokens]
        assert any(token.is_multiword for token in tokens)
        assert any(token.is_empty_node for token in tokens)


def test_real_files_present_or_skip():
    if not REAL_FILES:
        pytest.skip(f"no real UD files under {SHARED}")
    assert len(REAL_FILES) == 6


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda path: path.name)
def test_real_file_round_trip(tmp_path, path):
    sentences = read_conllu(path)
    output = tmp_path / path.name
    write_conllu(sentences, output)
    assert output.read_bytes() == path.read_bytes()
    expected = {
        "en_ewt-ud-train.conllu": (12544, 204577, 2614, 37),
        "en_ewt-ud-dev.conllu": (2001, 25147, 359, 4),
        "en_ewt-ud-test.conllu": (2077, 25094, 354, 2),
        "vi_vtb-ud-train.conllu": (1400, 20215, 0, 0),
    }.get(path.name)
    if expected:
        tokens = [token for sentence in sentences for token in sentence.tokens]
        counts = (
            len(sentences),
            sum(len(sentence) for sentence in sentences),
            sum(token.is_multiword for token in tokens),
            sum(token.is_empty_node for token in tokens),
        )
        assert counts == expected


def test_check_annotation_names_the_line_of_the_problem():
    from dynlp.data import check_annotation

    def sentence(*rows):
        lines = ["# c"] + [f"{i}\tw\t_\t{upos}\t_\t_\t{head}\t{rel}\t_\t_"
                           for i, (upos, head, rel) in enumerate(rows, start=1)]
        return "\n".join(lines) + "\n\n"

    good = sentence(("X", "2", "dep"), ("X", "0", "root"))
    text = good + sentence(("X", "_", "_"), ("_", "0", "root"))
    sentences = parse_conllu(text, "f")
    check_annotation(sentences[:1], ("upos", "deprel"), tree=True, source="f")
    with pytest.raises(CoNLLUError, match="f:6: word 1 has no HEAD"):
        check_annotation(sentences, tree=True, source="f")
    with pytest.raises(CoNLLUError, match="f:7: word 2 has no UPOS"):
        check_annotation(sentences, ("upos",), source="f")
    check_annotation(sentences, ("form",), source="f")  # unannotated input is fine to read
    for rows, message in [((("X", "1", "a"), ("X", "0", "r")), "f:2: word 1 is its own head"),
                          ((("X", "0", "a"), ("X", "0", "r")), "f:3: 2 words have HEAD 0"),
                          ((("X", "2", "a"), ("X", "1", "r")), "f:2: no word has HEAD 0"),
                          ((("X", "2", "a"), ("X", "3", "b"), ("X", "2", "c"), ("X", "0", "r")),
                           r"cycle \(2 -> 3 -> 2\)")]:
        with pytest.raises(CoNLLUError, match=message):
            check_annotation(parse_conllu(sentence(*rows), "f"), tree=True, source="f")
