"""CoNLL-U reading and writing with a byte-for-byte round trip (Universal Dependencies format).

Owns Token, Sentence, SentenceList and CoNLLUError. Imports only the standard library;
it must not import anything from dynlp outside dynlp.data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Sequence

from dynlp.data.files import UTF8_BOM, atomic_write, read_input_bytes

COLUMNS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")
EDITABLE_COLUMNS = COLUMNS[1:]


class CoNLLUError(ValueError):
    """A malformed CoNLL-U input; the message reads ``<source>:<line>: <problem>``."""

    def __init__(self, source: str, line: int, problem: str) -> None:
        super().__init__(f"{source}:{line}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem

    def __reduce__(self) -> tuple:
        return (type(self), (self.source, self.line, self.problem))


class Token(NamedTuple):
    """One CoNLL-U line: the ten columns as strings, exactly as they appear in the file."""

    id: str
    form: str
    lemma: str
    upos: str
    xpos: str
    feats: str
    head: str
    deprel: str
    deps: str
    misc: str

    @property
    def is_word(self) -> bool:
        """True for syntactic words (integer IDs)."""
        return self.id.isdigit()

    @property
    def is_multiword(self) -> bool:
        """True for multiword-token lines such as ``3-4``."""
        return "-" in self.id

    @property
    def is_empty_node(self) -> bool:
        """True for empty nodes such as ``8.1``."""
        return "." in self.id

    def to_line(self) -> str:
        """The tab-separated line, without the newline."""
        return "\t".join(self)

    @classmethod
    def from_line(cls, line: str) -> Token:
        """Split one line on TABs only (forms may contain spaces)."""
        fields = line.split("\t")
        if len(fields) != 10:
            raise ValueError(f"expected 10 tab-separated columns, found {len(fields)}")
        return tuple.__new__(cls, fields)


@dataclass
class Sentence:
    """A sentence: raw comment lines plus every token line in file order.

    ``tokens`` holds words, multiword tokens and empty nodes, so writing gives the
    input back unchanged. ``words`` and the column views (``forms``, ``upos``,
    ``heads``, ``deprels``...) see only the integer-ID words; ``len(sentence)`` is the
    number of words. Sentences are treated as values: ``with_columns`` returns a new
    Sentence with some word columns replaced (for writing predictions).
    """

    tokens: list[Token]
    comments: list[str] = field(default_factory=list)
    line: int = field(default=0, compare=False)  # of its first line in the file (0: unknown)

    @property
    def words(self) -> list[Token]:
        """Only the syntactic words (integer IDs), in order."""
        return [token for token in self.tokens if token.id.isdigit()]

    def __len__(self) -> int:
        return sum(1 for token in self.tokens if token.id.isdigit())

    @property
    def forms(self) -> list[str]:
        return [token.form for token in self.words]

    @property
    def lemmas(self) -> list[str]:
        return [token.lemma for token in self.words]

    @property
    def upos(self) -> list[str]:
        return [token.upos for token in self.words]

    @property
    def xpos(self) -> list[str]:
        return [token.xpos for token in self.words]

    @property
    def heads(self) -> list[int]:
        """HEAD of every word as an int (0 is the root); ValueError when a HEAD is `_`."""
        words = self.words
        for number, token in enumerate(words, start=1):
            if not (token.head.isascii() and token.head.isdigit()):
                raise ValueError(f"word {number} has no HEAD ({token.head!r})")
        return [int(token.head) for token in words]

    @property
    def deprels(self) -> list[str]:
        return [token.deprel for token in self.words]

    @property
    def metadata(self) -> dict[str, str]:
        """``# key = value`` comments as a dict (comments without ``=`` are left out)."""
        result = {}
        for comment in self.comments:
            key, equals, value = comment[1:].partition("=")
            if equals:
                result[key.strip()] = value.strip()
        return result

    @property
    def sent_id(self) -> str | None:
        return self.metadata.get("sent_id")

    @property
    def text(self) -> str | None:
        return self.metadata.get("text")

    def with_columns(self, **columns: Sequence[str | int]) -> Sentence:
        """Return a copy with whole word columns replaced, e.g. ``with_columns(upos=tags)``.

        Keywords are column names (form, lemma, upos, xpos, feats, head, deprel, deps,
        misc); each value gives one entry per word (ints are written with ``str``).
        Multiword-token lines, empty nodes and comments are kept as they are.
        """
        word_count = len(self)
        replacements = {}
        for name, values in columns.items():
            if name not in EDITABLE_COLUMNS:
                raise TypeError(
                    f"unknown column {name!r}; expected one of {', '.join(EDITABLE_COLUMNS)}"
                )
            if len(values) != word_count:
                raise ValueError(f"{name}: {len(values)} values for {word_count} words")
            replacements[name] = [str(value) for value in values]
        tokens = []
        position = 0
        for token in self.tokens:
            if token.id.isdigit():
                changes = {name: values[position] for name, values in replacements.items()}
                token = token._replace(**changes)
                position += 1
            tokens.append(token)
        return Sentence(tokens, list(self.comments), self.line)

    def to_conllu(self) -> str:
        """The sentence block: comments, token lines and the closing blank line."""
        if not self.tokens:
            raise ValueError("cannot write a sentence without tokens")
        lines = []
        for comment in self.comments:
            if not comment.startswith("#") or "\n" in comment or "\r" in comment:
                raise ValueError(f"bad comment line {comment!r}")
            lines.append(comment)
        for token in self.tokens:
            line = "\t".join(token)
            if len(token) != 10 or line.count("\t") != 9 or "\n" in line or "\r" in line:
                raise ValueError(f"token {tuple(token)!r} would not make one 10-column line")
            if "" in token:
                raise ValueError(f"token {tuple(token)!r} has an empty column (use '_')")
            lines.append(line)
        lines.append("\n")
        return "\n".join(lines)


class SentenceList(list):
    """The sentences read from one input, plus what ``skip_bad=True`` left out.

    ``skipped`` counts the sentences dropped; ``errors`` holds every CoNLLUError met
    (one per skipped sentence, plus spurious blank lines, which drop no sentence).
    """

    def __init__(self, sentences: Iterable[Sentence] = (), errors: Iterable[CoNLLUError] = ()):
        super().__init__(sentences)
        self.errors: list[CoNLLUError] = list(errors)
        self.skipped = 0


def parse_conllu(text: str, source: str = "<string>", skip_bad: bool = False) -> SentenceList:
    """Parse CoNLL-U text; see ``read_conllu`` for the rules and ``skip_bad``."""
    if "\r" in text:
        line_number = text.count("\n", 0, text.index("\r")) + 1
        raise CoNLLUError(
            source, line_number, "carriage return found: CRLF line endings are not supported "
            "(convert the file to LF)"
        )
    result = SentenceList()
    lines = text.split("\n")
    terminated = lines[-1] == ""
    if terminated:
        lines.pop()
    start = 0
    for index, line in enumerate(lines):
        if line:
            continue
        if index == start:
            error = CoNLLUError(
                source, index + 1,
                "spurious blank line (sentences are separated by exactly one blank line)"
            )
            if not skip_bad:
                raise error
            result.errors.append(error)
        else:
            _add_block(result, lines, start, index, source, skip_bad)
        start = index + 1
    if start < len(lines):
        if _add_block(result, lines, start, len(lines), source, skip_bad):
            result.pop()
            problem = "missing blank line at end of file" if terminated else (
                "missing newline and blank line at end of file"
            )
            error = CoNLLUError(source, len(lines), problem)
            if not skip_bad:
                raise error
            result.errors.append(error)
            result.skipped += 1
    return result


def _add_block(
    result: SentenceList, lines: list[str], start: int, end: int, source: str, skip_bad: bool
) -> bool:
    """Parse lines[start:end] into result; return False when the block was skipped."""
    try:
        result.append(_parse_block(lines, start, end, source))
    except CoNLLUError as error:
        if not skip_bad:
            raise
        result.errors.append(error)
        result.skipped += 1
        return False
    return True


def _parse_block(lines: list[str], start: int, end: int, source: str) -> Sentence:
    index = start
    while index < end and lines[index].startswith("#"):
        index += 1
    comments = lines[start:index]
    tokens = []
    word_count = 0
    heads = []
    range_ends = []
    for number in range(index, end):
        line = lines[number]
        fields = line.split("\t")
        if len(fields) != 10:
            if line.startswith("#"):
                _fail(source, number, "comment line after token lines")
            _fail(source, number, f"expected 10 tab-separated columns, found {len(fields)}")
        if "" in fields:
            _fail(source, number, f"empty {COLUMNS[fields.index('')].upper()} column")
        ident = fields[0]
        if ident == str(word_count + 1):
            word_count += 1
            head = fields[6]
            if head != "_":
                if not (head.isascii() and head.isdigit()):
                    _fail(source, number, f"HEAD {head!r} is not a non-negative integer or _")
                heads.append((int(head), number))
        elif "-" in ident:
            range_ends.append((_check_range(ident, word_count, source, number), number))
        elif "." in ident:
            _check_empty_node(ident, word_count, source, number)
        elif ident.isascii() and ident.isdigit():
            _fail(source, number, f"word ID {ident} out of order (expected {word_count + 1})")
        else:
            _fail(
                source, number,
                f"bad ID {ident!r} (expected an integer, a range like 3-4 or a decimal like 8.1)"
            )
        tokens.append(tuple.__new__(Token, fields))
    if word_count == 0:
        _fail(source, start, "sentence has no words")
    for head, number in heads:
        if head > word_count:
            _fail(source, number, f"HEAD {head} out of range 0..{word_count}")
    for last, number in range_ends:
        if last > word_count:
            _fail(source, number, f"multiword range ends at {last}, after the last word")
    return Sentence(tokens, comments, start + 1)


def _check_range(ident: str, word_count: int, source: str, number: int) -> int:
    first, _, last = ident.partition("-")
    if not (first.isascii() and first.isdigit() and last.isascii() and last.isdigit()):
        _fail(source, number, f"bad ID {ident!r} (a range must look like 3-4)")
    if int(first) != word_count + 1:
        _fail(source, number, f"multiword range {ident} must come right before word {first}")
    if int(last) <= int(first):
        _fail(source, number, f"multiword range {ident} must end after it starts")
    return int(last)


def _check_empty_node(ident: str, word_count: int, source: str, number: int) -> None:
    whole, _, part = ident.partition(".")
    if not (whole.isascii() and whole.isdigit() and part.isascii() and part.isdigit()):
        _fail(source, number, f"bad ID {ident!r} (an empty node must look like 8.1)")
    if int(part) == 0:
        _fail(source, number, f"bad ID {ident!r} (empty node numbers start at 1)")
    if int(whole) != word_count:
        _fail(source, number, f"empty node {ident} must follow word {whole}")


def _fail(source: str, index: int, problem: str) -> None:
    raise CoNLLUError(source, index + 1, problem)


def read_conllu(path: str | os.PathLike, skip_bad: bool = False) -> SentenceList:
    """Read a UTF-8 CoNLL-U file strictly.

    Every sentence must end with one blank line (so the file ends with ``\\n\\n``);
    comments come before the token lines; word IDs run 1..n; HEAD is an integer in
    0..n or ``_`` (unannotated input; ``check_annotation`` says what a task needs).
    Multiword tokens and empty nodes are kept. CRLF line endings are rejected
    with a CoNLLUError (even with ``skip_bad``), because they cannot round-trip; a
    UTF-8 byte order mark at the start is skipped (and not written back). A directory,
    a FIFO or another special file is refused with an OSError naming it.
    With ``skip_bad=True`` bad sentences are dropped instead of raising: the returned
    SentenceList has ``.skipped`` (count) and ``.errors`` (the CoNLLUErrors).
    """
    data = read_input_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = data.count(b"\n", 0, error.start) + 1
        raise CoNLLUError(str(path), line_number, "not valid UTF-8") from None
    return parse_conllu(text.removeprefix(UTF8_BOM), source=str(path), skip_bad=skip_bad)


def check_annotation(sentences: Sequence[Sentence], columns: Iterable[str] = (),
                     tree: bool = False, source: str = "<string>") -> None:
    """CoNLLUError (naming source and line) unless every word has the given columns filled
    (not ``_``) and, with ``tree``, the HEADs of each sentence form a tree: exactly one word
    attached to 0, no word its own head, no cycle. What a task reads, it checks here."""
    columns = tuple(columns) + (("head",) if tree and "head" not in columns else ())
    for name in columns:
        if name not in EDITABLE_COLUMNS:
            raise ValueError(f"unknown column {name!r}")
    position = {name: COLUMNS.index(name) for name in columns}
    for sentence in sentences:
        first = sentence.line + len(sentence.comments) if sentence.line else 0
        lines = []  # the line of every word
        for offset, token in enumerate(sentence.tokens):
            if not token.id.isdigit():
                continue
            line = first + offset
            lines.append(line)
            for name, index in position.items():
                if token[index] == "_":
                    raise CoNLLUError(source, line, f"word {token.id} has no {name.upper()} "
                                      "(_), which this task needs")
        if tree:
            _check_tree(sentence.heads, lines, source)


def _check_tree(heads: list[int], lines: list[int], source: str) -> None:
    roots = [word for word, head in enumerate(heads, start=1) if head == 0]
    if not roots:
        raise CoNLLUError(source, lines[0], "no word has HEAD 0: the sentence has no root")
    if len(roots) > 1:
        raise CoNLLUError(source, lines[roots[1] - 1], f"{len(roots)} words have HEAD 0 "
                          f"(words {', '.join(map(str, roots))}): a sentence has one root")
    for word, head in enumerate(heads, start=1):
        if head == word:
            raise CoNLLUError(source, lines[word - 1], f"word {word} is its own head")
    reaches_root = [False] * (len(heads) + 1)
    reaches_root[0] = True
    for word in range(1, len(heads) + 1):
        path = []
        seen = set()
        current = word
        while not reaches_root[current]:
            if current in seen:
                cycle = path[path.index(current):] + [current]
                raise CoNLLUError(source, lines[current - 1], "the heads form a cycle "
                                  f"({' -> '.join(map(str, cycle))})")
            seen.add(current)
            path.append(current)
            current = heads[current - 1]
        for visited in path:
            reaches_root[visited] = True


def format_conllu(sentences: Iterable[Sentence]) -> str:
    """The CoNLL-U text of the sentences (each ends with a blank line)."""
    return "".join(sentence.to_conllu() for sentence in sentences)


def write_conllu(sentences: Iterable[Sentence], path: str | os.PathLike) -> None:
    """Write sentences as UTF-8 CoNLL-U with LF line endings."""
    text = format_conllu(sentences)
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)
