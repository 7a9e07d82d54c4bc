"""PTB-style bracketed trees as used by the Stanford Sentiment Treebank (SST).

Owns Tree, TreeError and the tree file reader/writer; traversals are iterative.
Imports only the standard library; it must not import anything from dynlp outside dynlp.data.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

from dynlp.data.files import UTF8_BOM, atomic_write, read_input_bytes

FINE_LABELS = 5
_FINE = tuple(str(value) for value in range(FINE_LABELS))


class TreeError(ValueError):
    """A malformed bracketed tree; the message reads ``<source>:<line>:<column>: <problem>``."""

    def __init__(self, source: str, line: int, column: int, problem: str) -> None:
        super().__init__(f"{source}:{line}:{column}: {problem}")
        self.source = source
        self.line = line
        self.column = column
        self.problem = problem

    def __reduce__(self) -> tuple:
        return (type(self), (self.source, self.line, self.column, self.problem))


class Tree:
    """A labelled tree node: a leaf has a ``word`` and no children, an inner node the reverse.

    ``str(tree)`` gives the SST bracketing, e.g. ``(3 (2 It) (4 (2 's) (4 good)))``.
    """

    __slots__ = ("label", "children", "word")

    def __init__(self, label: str, children: list[Tree] | None = None, word: str | None = None):
        self.label = label
        self.children = [] if children is None else children
        self.word = word

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def nodes(self) -> list[Tree]:
        """All nodes in post-order (children before parents, left to right), without recursion."""
        order = []
        stack = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded or not node.children:
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(node.children))
        return order

    def leaves(self) -> list[Tree]:
        """The leaf nodes, left to right."""
        result = []
        stack = [self]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(reversed(node.children))
            else:
                result.append(node)
        return result

    def words(self) -> list[str]:
        """The words at the leaves, left to right (None for a leaf without a word)."""
        return [leaf.word for leaf in self.leaves()]

    def __str__(self) -> str:
        pieces = []
        stack: list[Tree | str] = [self]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                pieces.append(item)
                continue
            if item.word is not None and not item.children:
                pieces.append(f"({item.label} {item.word})")
                continue
            pieces.append(f"({item.label}")
            stack.append(")")
            for child in reversed(item.children):
                stack.append(child)
                stack.append(" ")
        return "".join(pieces)

    def __repr__(self) -> str:
        return f"Tree({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tree):
            return NotImplemented
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def fine_label(tree: Tree | str | int) -> int:
    """The SST fine-grained label 0-4 of a tree (or of a label): exactly one of the strings
    "0" to "4" (or those ints); ValueError for anything else ("03", "3.0", "٣", " 3")."""
    label = tree.label if isinstance(tree, Tree) else tree
    if isinstance(label, str) and label in _FINE:
        return int(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < FINE_LABELS:
        return label
    raise ValueError(f"label {label!r} is not an integer 0-4")


def binary_label(label: Tree | str | int) -> int | None:
    """SST binary view: 0 for labels 0-1, 1 for 3-4, None for neutral 2."""
    value = fine_label(label)
    if value == 2:
        return None
    return 0 if value < 2 else 1


def binarize(tree: Tree) -> Tree:
    """A binary copy of tree: a unary node becomes its child under the upper label (a chain
    keeps its top label), and a node of k > 2 children becomes a right-branching chain of k - 1
    binary nodes that all carry its label. Iterative, so any depth is fine."""
    copies: dict[int, Tree] = {}
    for node in tree.nodes():
        if not node.children:
            copies[id(node)] = Tree(node.label, word=node.word)
            continue
        children = [copies[id(child)] for child in node.children]
        if len(children) == 1:
            only = children[0]
            copies[id(node)] = Tree(node.label, only.children, only.word)
            continue
        right = children[-1]
        for child in reversed(children[1:-1]):
            right = Tree(node.label, [child, right])
        copies[id(node)] = Tree(node.label, [children[0], right])
    return copies[id(tree)]


def _tokens(text: str) -> list[str]:
    spaced = text.replace("\t", " ").replace("(", " ( ").replace(")", " ) ")
    return [piece for piece in spaced.split(" ") if piece]


def _token_columns(text: str) -> list[int]:
    """1-based start column of every token that ``_tokens`` yields, in the same order."""
    columns = []
    position = 0
    length = len(text)
    while position < length:
        character = text[position]
        if character in " \t":
            position += 1
        elif character in "()":
            columns.append(position + 1)
            position += 1
        else:
            columns.append(position + 1)
            while position < length and text[position] not in " \t()":
                position += 1
    return columns


def parse_tree(text: str, source: str = "<string>", line: int = 1, fine_labels: bool = False,
               binary: bool = False) -> Tree:
    """Parse one bracketed tree such as ``(3 (2 It) (4 good))``.

    Labels and words are runs of characters other than space, TAB and parentheses
    (so a word may hold a non-breaking space). fine_labels: every label must be one of
    0-4 (SST); binary: every inner node must have exactly two children. Raises TreeError
    naming source, line, column and the problem.
    """
    tokens = _tokens(text)
    try:
        return _build(tokens, fine_labels, binary)
    except _ParseProblem as problem:
        columns = _token_columns(text)
        if problem.position < len(columns):
            column = columns[problem.position]
        else:
            column = len(text.rstrip("\n")) + 1
        raise TreeError(source, line, column, problem.message) from None


class _ParseProblem(Exception):
    def __init__(self, position: int, message: str) -> None:
        super().__init__(message)
        self.position = position
        self.message = message


def _build(tokens: list[str], fine_labels: bool = False, binary: bool = False) -> Tree:
    if not tokens:
        raise _ParseProblem(0, "empty tree")
    if tokens[0] != "(":
        raise _ParseProblem(0, f"expected '(' at the start of a tree, found {tokens[0]!r}")
    stack: list[Tree] = []
    starts: list[int] = []  # the position of each open node's '('
    position = 0
    count = len(tokens)
    while position < count:
        token = tokens[position]
        if token == "(":
            label = tokens[position + 1] if position + 1 < count else ")"
            if label in ("(", ")"):
                raise _ParseProblem(position + 1 if position + 1 < count else count,
                                    "missing label after '('")
            if fine_labels and label not in _FINE:
                raise _ParseProblem(position + 1, f"label {label!r} is not one of 0, 1, 2, 3, 4")
            node = Tree(label)
            if stack:
                parent = stack[-1]
                if parent.word is not None:
                    raise _ParseProblem(position, "a node cannot have both a word and children")
                parent.children.append(node)
            stack.append(node)
            starts.append(position)
            position += 2
        elif token == ")":
            node = stack.pop()
            start = starts.pop()
            if node.word is None and not node.children:
                raise _ParseProblem(position, f"empty node ({node.label}) has no word or children")
            if binary and node.children and len(node.children) != 2:
                raise _ParseProblem(start, f"node ({node.label} ...) has {len(node.children)} "
                                    "children: a binary tree needs 2 at every inner node")
            if not stack:
                if position + 1 < count:
                    raise _ParseProblem(position + 1, "junk after the tree")
                return node
            position += 1
        else:
            node = stack[-1]
            if node.children:
                raise _ParseProblem(position, f"word {token!r} next to child nodes")
            if node.word is not None:
                raise _ParseProblem(position, f"second word {token!r} in a leaf")
            node.word = token
            position += 1
    raise _ParseProblem(count, f"unbalanced brackets: {len(stack)} '(' not closed")


def read_trees(path: str | os.PathLike, fine_labels: bool = False,
               binary: bool = False) -> list[Tree]:
    """Read one tree per line from a UTF-8 file; blank lines are ignored.

    CR characters (CRLF line endings) are rejected with a TreeError, since they
    cannot round-trip through ``write_trees``; a UTF-8 byte order mark at the start is
    skipped. fine_labels and binary: see ``parse_tree``. A directory, a FIFO or another
    special file is refused with an OSError naming it.
    """
    data = read_input_bytes(path)
    source = str(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = data.count(b"\n", 0, error.start) + 1
        raise TreeError(source, line_number, 1, "not valid UTF-8") from None
    return list(iter_trees(text.removeprefix(UTF8_BOM).split("\n"), source, fine_labels,
                           binary))


def iter_trees(lines: Iterable[str], source: str = "<string>", fine_labels: bool = False,
               binary: bool = False) -> Iterator[Tree]:
    """Parse trees from lines (one per line), skipping blank lines."""
    for number, line in enumerate(lines, start=1):
        if "\r" in line:
            raise TreeError(source, number, line.index("\r") + 1,
                            "carriage return found: CRLF line endings are not supported")
        if line.strip(" \t"):
            yield parse_tree(line, source, number, fine_labels, binary)


def write_trees(trees: Iterable[Tree], path: str | os.PathLike) -> None:
    """Write one tree per line (UTF-8, LF line endings), whole or not at all."""
    text = "".join(f"{tree}\n" for tree in trees)
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)
