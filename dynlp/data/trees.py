"""PTB-style bracketed trees as used by the Stanford Sentiment Treebank (SST).

Owns Tree, TreeError and the tree file reader/writer; traversals are iterative.
Imports only the standard library; it must not import anything from dynlp outside dynlp.data.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

FINE_LABELS = 5


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
    """The SST fine-grained label 0-4 of a tree (or of a label)."""
    label = tree.label if isinstance(tree, Tree) else tree
    try:
        value = int(label)
    except ValueError:
        raise ValueError(f"label {label!r} is not an integer 0-4") from None
    if not 0 <= value < FINE_LABELS:
        raise ValueError(f"label {label!r} is not an integer 0-4")
    return value


def binary_label(label: Tree | str | int) -> int | None:
    """SST binary view: 0 for labels 0-1, 1 for 3-4, None for neutral 2."""
    value = fine_label(label)
    if value == 2:
        return None
    return 0 if value < 2 else 1


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


def parse_tree(text: str, source: str = "<string>", line: int = 1) -> Tree:
    """Parse one bracketed tree such as ``(3 (2 It) (4 good))``.

    Labels and words are runs of characters other than space, TAB and parentheses
    (so a word may hold a non-breaking space). Raises TreeError naming source, line,
    column and the problem.
    """
    tokens = _tokens(text)
    try:
        return _build(tokens)
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


def _build(tokens: list[str]) -> Tree:
    if not tokens:
        raise _ParseProblem(0, "empty tree")
    if tokens[0] != "(":
        raise _ParseProblem(0, f"expected '(' at the start of a tree, found {tokens[0]!r}")
    stack: list[Tree] = []
    position = 0
    count = len(tokens)
    while position < count:
        token = tokens[position]
        if token == "(":
            label = tokens[position + 1] if position + 1 < count else ")"
            if label in ("(", ")"):
                raise _ParseProblem(position + 1 if position + 1 < count else count,
                                    "missing label after '('")
            node = Tree(label)
            if stack:
                parent = stack[-1]
                if parent.word is not None:
                    raise _ParseProblem(position, "a node cannot have both a word and children")
                parent.children.append(node)
            stack.append(node)
            position += 2
        elif token == ")":
            node = stack.pop()
            if node.word is None and not node.children:
                raise _ParseProblem(position, f"empty node ({node.label}) has no word or children")
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


def read_trees(path: str | os.PathLike) -> list[Tree]:
    """Read one tree per line from a UTF-8 file; blank lines are ignored.

    CR characters (CRLF line endings) are rejected with a TreeError, since they
    cannot round-trip through ``write_trees``.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    source = str(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = data.count(b"\n", 0, error.start) + 1
        raise TreeError(source, line_number, 1, "not valid UTF-8") from error
    return list(iter_trees(text.split("\n"), source))


def iter_trees(lines: Iterable[str], source: str = "<string>") -> Iterator[Tree]:
    """Parse trees from lines (one per line), skipping blank lines."""
    for number, line in enumerate(lines, start=1):
        if "\r" in line:
            raise TreeError(source, number, line.index("\r") + 1,
                            "carriage return found: CRLF line endings are not supported")
        if line.strip(" \t"):
            yield parse_tree(line, source, number)


def write_trees(trees: Iterable[Tree], path: str | os.PathLike) -> None:
    """Write one tree per line (UTF-8, LF line endings)."""
    text = "".join(f"{tree}\n" for tree in trees)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
