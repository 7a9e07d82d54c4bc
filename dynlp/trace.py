"""Teaching traces of automatic differentiation: a small formula language (hand-written parser),
its forward primal, forward tangent and reverse adjoint traces laid out as in Baydin et al. (2018),
Graphviz DOT drawings of formulas and of any dynlp graph, and the `dynlp trace` command.
Every number comes from a float64 dynlp graph. Must not import cli, trainers or recipes.
"""

from __future__ import annotations

import argparse
import math
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import functions as fn
from .autodiff import jvp
from .graph import Expression, Graph

__all__ = [
    "Formula", "FormulaError", "Node", "Trace", "TraceRow", "cli_trace", "evaluation_trace",
    "format_trace", "parse_assignments", "parse_formula", "to_dot", "trace_to_dot",
]

_DIGITS = "0123456789"
_OPERATORS = "+-*/^()"
CONSTANTS = {"pi": math.pi, "e": math.e}

# precedence levels of the printer: sum, product, unary minus, power, atom
_SUM, _PRODUCT, _NEGATION, _POWER, _ATOM = 1, 2, 3, 4, 5
# per binary operator: its level, the least level of its left and of its right operand
_BINARY = {"+": (_SUM, _SUM, _PRODUCT), "-": (_SUM, _SUM, _PRODUCT),
           "*": (_PRODUCT, _PRODUCT, _NEGATION), "/": (_PRODUCT, _PRODUCT, _NEGATION),
           "^": (_POWER, _ATOM, _NEGATION)}


class FormulaError(ValueError):
    """A formula (or a value for it) that cannot be parsed or evaluated.

    `reason` is the bare message, `formula` the text it is about, `column` the 1-based column it
    points at (None when the problem has no place); str() shows the formula with a caret.
    """

    def __init__(self, reason: str, formula: str | None = None, offset: int | None = None) -> None:
        self.reason = reason
        self.formula = formula
        self.column = None if offset is None else offset + 1
        super().__init__(self._render())

    def _render(self) -> str:
        if self.formula is None:
            return self.reason
        shown = self.formula.replace("\t", " ")
        if self.column is None:
            return f"{self.reason}\n  {shown}"
        return f"{self.reason} (column {self.column})\n  {shown}\n  {' ' * (self.column - 1)}^"


# -- functions of the formula language -----------------------------------------------------------
@dataclass(frozen=True)
class _Function:
    shown: str                              # the name in traces (log is shown as ln)
    build: Callable[[Expression], Expression]
    partial: str                            # d out / d a, in terms of {a} (argument), {v} (out)
    partial_value: Callable[[float, float], float]


_FUNCTION_TABLE = {
    "log": _Function("ln", fn.log, "1 / {a}", lambda a, out: 1.0 / a),
    "exp": _Function("exp", fn.exp, "{v}", lambda a, out: out),
    "sin": _Function("sin", fn.sin, "cos {a}", lambda a, out: np.cos(a)),
    "cos": _Function("cos", fn.cos, "-sin {a}", lambda a, out: -np.sin(a)),
    "tanh": _Function("tanh", fn.tanh, "1 - {v} ^ 2", lambda a, out: 1.0 - out * out),
    "sqrt": _Function("sqrt", fn.sqrt, "1 / (2 * {v})", lambda a, out: 0.5 / out),
    "logistic": _Function("logistic", fn.logistic, "{v} * (1 - {v})",
                          lambda a, out: out * (1.0 - out)),
    "abs": _Function("abs", fn.absolute, "sign {a}", lambda a, out: np.sign(a)),
    "square": _Function("square", fn.square, "2 * {a}", lambda a, out: 2.0 * a),
}
# the names a formula may call, with their aliases
FUNCTIONS = {name: name for name in _FUNCTION_TABLE} | {"ln": "log", "sigmoid": "logistic"}


# -- tokens and parse trees ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Token:
    kind: str      # number, name, operator, end
    text: str
    offset: int


def _scan_number(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _DIGITS:
        i += 1
    if i < n and text[i] == ".":
        i += 1
        while i < n and text[i] in _DIGITS:
            i += 1
    if i < n and text[i] in "eE":
        j = i + 1
        if j < n and text[j] in "+-":
            j += 1
        if j < n and text[j] in _DIGITS:
            while j < n and text[j] in _DIGITS:
                j += 1
            i = j
    return i


def _is_name_char(ch: str) -> bool:
    return ch.isalpha() or ch in _DIGITS or ch == "_"


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in _DIGITS or (ch == "." and i + 1 < n and text[i + 1] in _DIGITS):
            j = _scan_number(text, i)
            tokens.append(_Token("number", text[i:j], i))
            i = j
        elif ch.isalpha() or ch == "_":
            j = i + 1
            while j < n and _is_name_char(text[j]):
                j += 1
            tokens.append(_Token("name", text[i:j], i))
            i = j
        elif text.startswith("**", i):  # Python's power, the same operator as '^'
            tokens.append(_Token("operator", "^", i))
            i += 2
        elif ch in _OPERATORS:
            tokens.append(_Token("operator", ch, i))
            i += 1
        elif ch == ",":
            raise FormulaError("unexpected ',': a function takes one argument", text, i)
        else:
            raise FormulaError(f"unexpected character {ch!r}", text, i)
    tokens.append(_Token("end", "", n))
    return tokens


@dataclass(frozen=True, eq=False)
class Node:
    """One node of a parse tree.

    op: "number", "constant" (pi, e), "variable", "neg", one of + - * / ^, or a function name
    (canonical: log, exp, sin, cos, tanh, sqrt, logistic, abs, square). `text` is the source token
    of a leaf, `offset` where the node's token starts, `constant` whether no variable is below.
    """

    op: str
    args: tuple[Node, ...]
    offset: int
    text: str = ""
    value: float = 0.0
    constant: bool = True
    depth: int = 1


MAX_DEPTH = 200   # deeper trees are refused, so that the recursive walks over them stay safe


def _operation(op: str, args: tuple[Node, ...], offset: int, text: str) -> Node:
    depth = 1 + max(a.depth for a in args)
    if depth > MAX_DEPTH:
        raise FormulaError(f"the formula nests too deeply (more than {MAX_DEPTH} levels)", text,
                           offset)
    return Node(op, args, offset, constant=all(a.constant for a in args), depth=depth)


class _Parser:
    """Recursive descent over: sum := product (('+'|'-') product)*;
    product := unary (('*'|'/') unary)*; unary := '-' unary | power; power := atom ('^' unary)?;
    atom := number | constant | variable | function '(' sum ')' | '(' sum ')'."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.position = 0

    def peek(self) -> _Token:
        return self.tokens[self.position]

    def take(self) -> _Token:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def at_operator(self, symbols: str) -> bool:
        token = self.peek()
        return token.kind == "operator" and token.text in symbols

    def operation(self, op: str, args: tuple[Node, ...], offset: int) -> Node:
        return _operation(op, args, offset, self.text)

    def error(self, reason: str, offset: int) -> FormulaError:
        return FormulaError(reason, self.text, offset)

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.error("the formula is empty", 0)
        node = self.sum()
        token = self.peek()
        if token.kind != "end":
            if token.text == ")":
                raise self.error("unmatched ')'", token.offset)
            missing = " (is a '*' missing?)" if token.kind in ("name", "number") \
                or token.text == "(" else ""
            raise self.error(f"expected an operator or the end of the formula, found "
                             f"{token.text!r}{missing}", token.offset)
        return node

    def sum(self) -> Node:
        node = self.product()
        while self.at_operator("+-"):
            token = self.take()
            node = self.operation(token.text, (node, self.product()), token.offset)
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.at_operator("*/"):
            token = self.take()
            node = self.operation(token.text, (node, self.unary()), token.offset)
        return node

    def unary(self) -> Node:
        if self.at_operator("-"):
            token = self.take()
            return self.operation("neg", (self.unary(),), token.offset)
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.at_operator("^"):
            token = self.take()
            return self.operation("^", (base, self.unary()), token.offset)
        return base

    def close(self, opening: _Token) -> None:
        token = self.peek()
        if not (token.kind == "operator" and token.text == ")"):
            found = "the end of the formula" if token.kind == "end" else repr(token.text)
            raise self.error(f"expected ')' to close the '(' of column {opening.offset + 1}, "
                             f"found {found}", token.offset)
        self.take()

    def atom(self) -> Node:
        token = self.take()
        if token.kind == "number":
            return Node("number", (), token.offset, token.text, float(token.text))
        if token.kind == "name":
            return self.name(token)
        if token.kind == "operator" and token.text == "(":
            node = self.sum()
            self.close(token)
            return node
        if token.kind == "end":
            raise self.error("unexpected end of the formula", token.offset)
        raise self.error(f"expected a number, a variable, a function or '(', found "
                         f"{token.text!r}", token.offset)

    def name(self, token: _Token) -> Node:
        name = token.text
        calls = self.at_operator("(")
        if name in FUNCTIONS:
            if not calls:
                raise self.error(f"{name} is a function: write {name}(...)", token.offset)
            opening = self.take()
            argument = self.sum()
            self.close(opening)
            return self.operation(FUNCTIONS[name], (argument,), token.offset)
        if calls:
            known = ", ".join(sorted(FUNCTIONS))
            raise self.error(f"unknown function {name!r} (known: {known})", token.offset)
        if name in CONSTANTS:
            return Node("constant", (), token.offset, name, CONSTANTS[name])
        return Node("variable", (), token.offset, name, constant=False)


def _level(node: Node) -> int:
    if node.op in _BINARY:
        return _BINARY[node.op][0]
    return _NEGATION if node.op == "neg" else _ATOM


def _show(node: Node, least: int = 0) -> str:
    """The node as formula text, parenthesized where its level is below `least`."""
    if not node.args:
        return node.text
    if node.op == "neg":
        text = "-" + _show(node.args[0], _NEGATION)
    elif node.op in _BINARY:
        _, left, right = _BINARY[node.op]
        text = f"{_show(node.args[0], left)} {node.op} {_show(node.args[1], right)}"
    else:
        text = f"{_FUNCTION_TABLE[node.op].shown}({_show(node.args[0])})"
    return f"({text})" if _level(node) < least else text


def _postorder(node: Node, out: list[Node]) -> list[Node]:
    for a in node.args:
        _postorder(a, out)
    out.append(node)
    return out


class Formula:
    """A parsed formula: `text`, the tree `root`, `variables` (in order of first appearance) and
    `steps`, the operations that become v_1, v_2, ... in the traces.

    Steps are numbered as in the classic tables: by height above the inputs (the longest path
    from a variable), ties left to right; constant subexpressions are folded into their users.
    """

    def __init__(self, text: str, root: Node) -> None:
        self.text = text
        self.root = root
        nodes = _postorder(root, [])
        first: dict[str, int] = {}
        for n in sorted((n for n in nodes if n.op == "variable"), key=lambda n: n.offset):
            first.setdefault(n.text, n.offset)
        self.first_offset = first
        self.variables: tuple[str, ...] = tuple(first)
        height: dict[Node, int] = {}
        for n in nodes:
            if not n.constant:
                height[n] = 1 + max((height[a] for a in n.args if not a.constant), default=-1)
        order = {n: k for k, n in enumerate(nodes)}
        self.steps: tuple[Node, ...] = tuple(sorted(
            (n for n in nodes if not n.constant and n.op != "variable"),
            key=lambda n: (height[n], order[n])))
        self._index = {n: k + 1 for k, n in enumerate(self.steps)}
        self._variable_index = {name: k + 1 - len(self.variables)
                                for k, name in enumerate(self.variables)}

    @property
    def output_name(self) -> str:
        """What the traces call the result: y, unless a variable has that name."""
        return next(n for n in ("y", "f", "out", "result_") if n not in self.variables)

    def index(self, node: Node) -> int:
        """i of the trace variable v_i standing for a non-constant node."""
        if node.op == "variable":
            return self._variable_index[node.text]
        return self._index[node]

    def variable_index(self, name: str) -> int:
        return self._variable_index[name]

    def __str__(self) -> str:
        return _show(self.root)

    def __repr__(self) -> str:
        return f"Formula({str(self)!r})"


def parse_formula(text: str) -> Formula:
    """Parse a formula: numbers, variables, + - * / ^ (right-associative, above unary minus),
    parentheses, unary minus, functions log (ln) exp sin cos tanh sqrt logistic (sigmoid) abs
    square, constants pi and e. Raises FormulaError pointing at the offending column."""
    try:
        return Formula(text, _Parser(text).parse())
    except RecursionError:
        raise FormulaError("the formula nests too deeply", text) from None


# -- evaluation in a dynlp graph -----------------------------------------------------------------
def _lift(x: Expression | float) -> Expression:
    return x if isinstance(x, Expression) else fn.scalar(x)


def _power(base: Expression | float, exponent: Expression | float, node: Node,
           text: str) -> Expression:
    if not isinstance(exponent, Expression):
        return _lift(base) ** exponent
    base_value = base.value() if isinstance(base, Expression) else base
    if not base_value > 0:
        raise FormulaError(f"a power with a varying exponent needs a positive base, and the base "
                           f"is {base_value:g} here", text, node.offset)
    if isinstance(base, Expression):
        return fn.exp(exponent * fn.log(base))
    return fn.exp(exponent * fn.log(fn.scalar(base)).value())


def _arithmetic(op: str, x: Expression | float, y: Expression | float) -> Expression:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    return x / y


def _build(node: Node, leaves: Mapping[str, Expression], exprs: dict[Node, Expression],
           constants: dict[Node, float], text: str) -> Expression | float:
    """The node's expression in the current graph; a constant subtree is evaluated there too and
    comes back as a float, so that its users fold it (x * 2.0 becomes one mul_const node)."""
    if node.op in ("number", "constant"):
        constants[node] = node.value
        return node.value
    if node.op == "variable":
        exprs[node] = leaves[node.text]
        return exprs[node]
    xs = [_build(a, leaves, exprs, constants, text) for a in node.args]
    if node.op == "neg":
        out = -_lift(xs[0])
    elif node.op == "^":
        out = _power(xs[0], xs[1], node, text)
    elif node.op in _BINARY:
        x, y = xs
        if node.op == "/" and not isinstance(y, Expression) and y == 0:
            raise FormulaError("division by a constant zero", text, node.offset)
        if not isinstance(x, Expression) and not isinstance(y, Expression):
            x = fn.scalar(x)
        out = _arithmetic(node.op, x, y)
    else:
        out = _FUNCTION_TABLE[node.op].build(_lift(xs[0]))
    if node.constant:
        constants[node] = float(out.value())
        return constants[node]
    exprs[node] = out
    return out


def _constant_value(formula: Formula) -> float:
    with Graph(dtype=np.float64, autobatch=False, fuse=False), np.errstate(all="ignore"):
        value = _build(formula.root, {}, {}, {}, formula.text)
        return float(value.value() if isinstance(value, Expression) else value)


def parse_assignments(items: Sequence[str]) -> dict[str, float]:
    """["x1=2", "x2=pi/4", "a=1,b=2"] -> {"x1": 2.0, ...}; a value may be any constant formula."""
    values: dict[str, float] = {}
    for item in items:
        for part in item.split(","):
            name, equals, text = (s.strip() for s in part.partition("="))
            if not equals or not name or not text:
                raise FormulaError(f"expected NAME=VALUE, got {part.strip()!r}")
            if not (name[0].isalpha() or name[0] == "_") or not all(map(_is_name_char, name)):
                raise FormulaError(f"{name!r} is not a variable name")
            if name in CONSTANTS or name in FUNCTIONS:
                kind = "constant" if name in CONSTANTS else "function"
                raise FormulaError(f"{name} is a {kind}, not a variable: it takes no value")
            if name in values:
                raise FormulaError(f"{name} is given a value twice")
            try:
                formula = parse_formula(text)
            except FormulaError as err:
                raise FormulaError(f"the value of {name}: {err.reason}", err.formula,
                                   None if err.column is None else err.column - 1) from None
            if formula.variables:
                raise FormulaError(f"the value of {name} must be a number or a constant "
                                   f"formula, not {text!r}")
            values[name] = _constant_value(formula)
    return values


# -- traces --------------------------------------------------------------------------------------
class _Notation:
    """How the traces write tangents and adjoints: Unicode dots and bars, or ASCII ' and bar."""

    def __init__(self, ascii: bool) -> None:
        self.ascii = ascii

    def _mark(self, name: str, mark: str, suffix: str) -> str:
        # a dot or bar sits on a one-letter name (x1, v_3); longer names take the ASCII suffix
        simple = name[:1].isalpha() and all(ch in _DIGITS + "_-" for ch in name[1:])
        if self.ascii or not simple:
            return name + suffix
        return name[0] + mark + name[1:]

    def tangent(self, name: str) -> str:
        return self._mark(name, "\u0307", "'")

    def adjoint(self, name: str) -> str:
        return self._mark(name, "\u0304", "bar")

    def dot(self, i: int) -> str:
        return self.tangent(f"v_{i}")

    def bar(self, i: int) -> str:
        return self.adjoint(f"v_{i}")

    def partial(self, i: int, j: int) -> str:
        d = "d" if self.ascii else "\u2202"
        return f"{d}v_{i}/{d}v_{j}"


def _top_level_sum(text: str) -> bool:
    depth = 0
    for k, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and ch in "+-" and 0 < k < len(text) - 1 and text[k - 1] == " " \
                and text[k + 1] == " ":
            return True
    return False


def _tangent_term(partial: str, tangent: str) -> str:
    """partial * tangent, written plainly: 1 * t is t, (1 / x) * t is t / x."""
    if partial == "1":
        return tangent
    if partial == "-1":
        return "-" + tangent
    if _top_level_sum(partial):
        return f"({partial}) * {tangent}"
    if partial.startswith("1 / "):
        return f"{tangent} / {partial[4:]}"
    return f"{partial} * {tangent}"


def _adjoint_term(adjoint: str, partial: str) -> str:
    """adjoint * partial with the partial kept visible, as in the tables: v5bar * (-1)."""
    if _top_level_sum(partial) or partial.startswith("-"):
        return f"{adjoint} * ({partial})"
    if partial.startswith("1 / "):
        return f"{adjoint} / {partial[4:]}"
    return f"{adjoint} * {partial}"


def _join_terms(terms: Sequence[str]) -> str:
    text = terms[0]
    for term in terms[1:]:
        text += f" - {term[1:]}" if term.startswith("-") else f" + {term}"
    return text


@dataclass(frozen=True)
class TraceRow:
    """One line of a trace: `target = steps[0] = steps[1] ... = value`."""

    target: str
    steps: tuple[str, ...]
    value: float


@dataclass
class Trace:
    """The three traces of a formula at a point, with the numbers read off a dynlp graph.

    value: y; derivative: dy/d wrt by forward mode; gradient: {variable: dy/d variable} by
    reverse mode; primals, tangents, adjoints: {i: v_i}, {i: dv_i/d wrt}, {i: dy/dv_i}, as the
    graph computed them (`value()`, `jvp`, `gradient()`).
    """

    formula: Formula
    values: dict[str, float]
    wrt: str
    forward: list[TraceRow]
    tangent: list[TraceRow]
    adjoint: list[TraceRow]
    value: float
    derivative: float
    gradient: dict[str, float]
    primals: dict[int, float]
    tangents: dict[int, float]
    adjoints: dict[int, float]


class _Tracer:
    """Writes the rows of one formula; `number(node)` gives a node's value (v_i or constant)."""

    def __init__(self, formula: Formula, number: Callable[[Node], float]) -> None:
        self.formula = formula
        self._number = number

    def number(self, node: Node) -> np.float64:
        # numpy scalars, so that a partial outside its domain is nan or inf, not an exception
        return np.float64(self._number(node))

    def ref(self, node: Node) -> str:
        return f"v_{self.formula.index(node)}"

    def operand(self, node: Node, least: int) -> str:
        return _show(node, least) if node.constant else self.ref(node)

    def rule(self, node: Node) -> str:
        """The primal rule of a step: v_1 + v_2, ln v_-1, v_3 ^ 2."""
        if node.op == "neg":
            return "-" + self.operand(node.args[0], _NEGATION)
        if node.op in _BINARY:
            _, left, right = _BINARY[node.op]
            return (f"{self.operand(node.args[0], left)} {node.op} "
                    f"{self.operand(node.args[1], right)}")
        return f"{_FUNCTION_TABLE[node.op].shown} {self.ref(node.args[0])}"

    def partials(self, node: Node) -> list[tuple[int, str, float]]:
        """(argument position, d node / d argument as text, its value) per varying argument."""
        with np.errstate(all="ignore"):
            return self._partials(node)

    def _partials(self, node: Node) -> list[tuple[int, str, float]]:
        out_text, out = self.ref(node), self.number(node)
        name, number = self.operand, self.number
        if node.op == "neg":
            return [(0, "-1", -1.0)]
        if node.op in _FUNCTION_TABLE:
            f, a = _FUNCTION_TABLE[node.op], node.args[0]
            text = f.partial.format(a=self.ref(a), v=out_text)
            return [(0, text, float(f.partial_value(number(a), out)))]
        a, b = node.args
        if node.op == "+":
            parts = [("1", 1.0), ("1", 1.0)]
        elif node.op == "-":
            parts = [("1", 1.0), ("-1", -1.0)]
        elif node.op == "*":
            parts = [(name(b, 0), number(b)), (name(a, 0), number(a))]
        elif node.op == "/":
            parts = [(f"1 / {name(b, _NEGATION)}", 1.0 / number(b)),
                     (f"-{out_text} / {name(b, _NEGATION)}", -out / number(b))]
        elif b.constant:
            # d a^c / da = c a^(c - 1), with the lowered exponent written as a number
            c = number(b)
            lowered = c - 1.0
            if lowered == 0:
                text = name(b, 0)
            elif lowered == 1:
                text = f"{name(b, _PRODUCT)} * {self.ref(a)}"
            else:
                text = f"{name(b, _PRODUCT)} * {self.ref(a)} ^ {lowered:.6g}"
            parts = [(text, c * number(a) ** lowered), ("", 0.0)]
        else:
            by_base = (f"{name(b, _PRODUCT)} * {out_text} / {name(a, _NEGATION)}",
                       number(b) * out / number(a))
            by_exponent = (f"{out_text} * {_call('ln', name(a, _ATOM))}", out * np.log(number(a)))
            parts = [by_base, by_exponent]
        return [(k, text, float(value)) for k, ((text, value), arg)
                in enumerate(zip(parts, node.args)) if not arg.constant]


def _call(function: str, argument: str) -> str:
    return f"{function}{argument}" if argument.startswith("(") else f"{function} {argument}"


def _check_point(formula: Formula, values: Mapping[str, float], wrt: str | None) -> str:
    text, variables = formula.text, formula.variables
    if not variables:
        raise FormulaError("the formula has no variables: there is nothing to differentiate", text)
    for name in values:
        if name not in variables:
            raise FormulaError(f"{name} is not a variable of the formula (its variables: "
                               f"{', '.join(variables)})", text)
    for name in variables:
        if name not in values:
            raise FormulaError(f"no value for {name} (give one with --at {name}=VALUE)", text,
                               formula.first_offset[name])
    wrt = variables[0] if wrt is None else wrt
    if wrt not in variables:
        raise FormulaError(f"cannot differentiate with respect to {wrt!r}: the formula's "
                           f"variables are {', '.join(variables)}", text)
    return wrt


@dataclass
class _Numbers:
    """What the graph says: per trace index i, v_i, its tangent and its adjoint; constants."""

    primal: dict[int, float]
    tangent: dict[int, float]
    adjoint: dict[int, float]
    constants: dict[Node, float]


def _evaluate(formula: Formula, values: Mapping[str, float], wrt: str) -> _Numbers:
    exprs: dict[Node, Expression] = {}
    constants: dict[Node, float] = {}
    with Graph(dtype=np.float64, autobatch=False, fuse=False), np.errstate(all="ignore"):
        leaves = {name: fn.inputs(float(values[name])) for name in formula.variables}
        output = _build(formula.root, leaves, exprs, constants, formula.text)
        # one expression per trace variable: each step's node, and each variable's leaf
        by_index = {formula.index(node): e for node, e in exprs.items()}
        seed = {leaves[wrt]: 1.0}
        primal = {i: float(e.value()) for i, e in by_index.items()}
        tangent = {i: float(jvp(e, seed)) for i, e in by_index.items()}
        output.backward()
        adjoint = {i: float(e.gradient()) for i, e in by_index.items()}
    return _Numbers(primal, tangent, adjoint, constants)


def evaluation_trace(formula: Formula | str, values: Mapping[str, float], wrt: str | None = None,
                     *, ascii: bool = False) -> Trace:
    """Build the formula as a float64 dynlp graph at `values` and read off its primal trace
    (`value()`), tangent trace along `wrt` (`jvp`; default: the first variable) and adjoint
    trace (`backward()`, then `gradient()` of every node). ascii: write v_1' and v_1bar."""
    if isinstance(formula, str):
        formula = parse_formula(formula)
    wrt = _check_point(formula, values, wrt)
    numbers = _evaluate(formula, values, wrt)
    tracer = _Tracer(formula, lambda node: numbers.constants[node] if node.constant
                     else numbers.primal[formula.index(node)])
    notation = _Notation(ascii)
    variables = {name: formula.variable_index(name) for name in formula.variables}
    last = formula.index(formula.root)
    y = formula.output_name
    primal, tangent, adjoint = numbers.primal, numbers.tangent, numbers.adjoint

    forward = [TraceRow(f"v_{i}", (name,), primal[i]) for name, i in variables.items()]
    forward += [TraceRow(f"v_{formula.index(s)}", (tracer.rule(s),), primal[formula.index(s)])
                for s in formula.steps]
    forward.append(TraceRow(y, (f"v_{last}",), primal[last]))

    tangents = [TraceRow(notation.dot(i), (notation.tangent(name),), tangent[i])
                for name, i in variables.items()]
    for s in formula.steps:
        terms = [_tangent_term(p, notation.dot(formula.index(s.args[k])))
                 for k, p, _ in tracer.partials(s)]
        i = formula.index(s)
        tangents.append(TraceRow(notation.dot(i), (_join_terms(terms),), tangent[i]))
    tangents.append(TraceRow(notation.tangent(y), (notation.dot(last),), tangent[last]))

    adjoints = [TraceRow(notation.bar(last), (notation.adjoint(y),), adjoint[last])]
    adjoints += _adjoint_rows(formula, tracer, notation, adjoint)
    adjoints += [TraceRow(notation.adjoint(name), (notation.bar(i),), adjoint[i])
                 for name, i in variables.items()]

    return Trace(formula=formula, values={n: float(values[n]) for n in variables}, wrt=wrt,
                 forward=forward, tangent=tangents, adjoint=adjoints, value=primal[last],
                 derivative=tangent[last], gradient={n: adjoint[i] for n, i in variables.items()},
                 primals=dict(primal), tangents=dict(tangent), adjoints=dict(adjoint))


def _adjoint_rows(formula: Formula, tracer: _Tracer, notation: _Notation,
                  adjoint: dict[int, float]) -> list[TraceRow]:
    """Steps from the last to the first, one row per argument: v_j-bar (+)= v_i-bar dv_i/dv_j.
    A row's number is its rule evaluated: the running sum of the graph's v_i-bar times the
    local partial derivative, which ends at the graph's own v_j-bar."""
    running: dict[int, float] = {}
    rows = []
    for s in reversed(formula.steps):
        i = formula.index(s)
        for k, p, local in tracer.partials(s):
            j = formula.index(s.args[k])
            symbolic = f"{notation.bar(i)} * {notation.partial(i, j)}"
            numeric = _adjoint_term(notation.bar(i), p)
            if j in running:
                symbolic = f"{notation.bar(j)} + {symbolic}"
                numeric = f"{notation.bar(j)} + {numeric}"
            running[j] = running.get(j, 0.0) + adjoint[i] * local
            rows.append(TraceRow(notation.bar(j), (symbolic, numeric), running[j]))
    return rows


# -- printing ------------------------------------------------------------------------------------
def _format_number(x: float, precision: int) -> str:
    """Fixed point with `precision` decimals, trailing zeros dropped (10, 5.5, 0.693); numbers
    that would round to 0 or are huge fall back to exponent notation."""
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x != 0 and (abs(x) < 0.5 * 10.0 ** -precision or abs(x) >= 1e15):
        return f"{x:.{max(precision, 1)}g}"
    text = f"{x:.{precision}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _width(text: str) -> int:
    return sum(1 for ch in text if not unicodedata.combining(ch))


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def _format_rows(rows: Sequence[TraceRow], precision: int) -> list[str]:
    """Aligned columns: the target, each step (a row's last step fills the rest), the value."""
    columns = max(len(r.steps) for r in rows)
    widths = [max((_width(r.steps[c]) for r in rows if len(r.steps) > c + 1), default=0)
              for c in range(columns)]
    last = max(_width(r.steps[-1]) + sum(widths[:len(r.steps) - 1]) + 3 * (len(r.steps) - 1)
               for r in rows)
    target = max(_width(r.target) for r in rows)
    lines = []
    for r in rows:
        cells = [_pad(step, width) for step, width in zip(r.steps[:-1], widths)]
        used = sum(widths[:len(cells)]) + 3 * len(cells)
        cells.append(_pad(r.steps[-1], last - used))
        lines.append(f"  {_pad(r.target, target)} = {' = '.join(cells)} = "
                     f"{_format_number(r.value, precision)}")
    return lines


def format_trace(trace: Trace, precision: int = 3) -> str:
    """The three traces as aligned tables, numbers with `precision` decimals."""
    point = ", ".join(f"{n} = {x:.12g}" for n, x in trace.values.items())
    lines = [f"{trace.formula.output_name} = {trace.formula.text.strip()}   at {point}", "",
             "Forward primal trace", *_format_rows(trace.forward, precision), "",
             f"Forward tangent trace (derivative with respect to {trace.wrt})",
             *_format_rows(trace.tangent, precision), "",
             "Reverse adjoint trace", *_format_rows(trace.adjoint, precision)]
    if not all(math.isfinite(r.value) for r in trace.forward + trace.tangent + trace.adjoint):
        lines += ["", "note: some values are not finite: an operation left its domain"]
    return "\n".join(lines) + "\n"


# -- Graphviz ------------------------------------------------------------------------------------
def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def trace_to_dot(trace: Trace, precision: int = 3) -> str:
    """The formula's computation graph as Graphviz DOT: a node `v_i = rule` (with its value) per
    input and operation, an edge from each argument; the output has a double border."""
    formula = trace.formula
    tracer = _Tracer(formula, lambda node: 0.0)
    last = formula.index(formula.root)
    lines = ["digraph formula {", "  rankdir=LR;", "  node [shape=ellipse];"]

    def node_line(i: int, rule: str, shape: str) -> str:
        label = f"v_{i} = {rule}\n= {_format_number(trace.primals[i], precision)}"
        extra = ", peripheries=2" if i == last else ""
        return f"  {_quote(f'v_{i}')} [label={_quote(label)}, shape={shape}{extra}];"

    for name in formula.variables:
        lines.append(node_line(formula.variable_index(name), name, "box"))
    for step in formula.steps:
        lines.append(node_line(formula.index(step), tracer.rule(step), "ellipse"))
    for step in formula.steps:
        for arg in step.args:
            if not arg.constant:
                lines.append(f"  {_quote(tracer.ref(arg))} -> {_quote(tracer.ref(step))};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _attribute_text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def to_dot(expr: Expression, name: str = "dynlp") -> str:
    """Graphviz DOT of every ancestor of `expr` in its graph: one node per graph node labelled
    with its number, op (or parameter name), attributes and shape; an edge from each argument.
    Reads the graph's structure only, so it also works after the graph has ended."""
    g = expr.g
    seen, stack = {expr.i}, [expr.i]
    while stack:
        for a in g.args[stack.pop()]:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    lines = [f"digraph {_quote(name)} {{", "  node [shape=box];"]
    for n in sorted(seen):
        op = g.ops[n]
        title = f"parameter {g.node_params[n].name}" if n in g.node_params else op.name
        attrs = [f"{k}={_attribute_text(v)}" for k, v in g.attrs[n]]
        battrs = g.battrs[n] or ()
        attrs += [f"{k}={v}" for k, v in zip(op.batched_attrs, battrs)
                  if isinstance(v, (int, np.integer))]
        label = "\n".join([f"n{n}: {title}", *([" ".join(attrs)] if attrs else []),
                           str(g.shapes[n])])
        extra = ", peripheries=2" if n == expr.i else ""
        lines.append(f"  n{n} [label={_quote(label)}{extra}];")
    for n in sorted(seen):
        lines.extend(f"  n{a} -> n{n};" for a in g.args[n])
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- command line --------------------------------------------------------------------------------
_EXAMPLE = """example:
  dynlp trace 'log(x1) + x1*x2 - sin(x2)' --at x1=2 x2=5 --wrt x1

formulas: numbers, variables, + - * / ^ (right-associative; -x^2 is -(x^2)), parentheses,
functions log (ln) exp sin cos tanh sqrt logistic (sigmoid) abs square, constants pi and e.
A formula that starts with '-' needs a leading space: ' -x^2'."""


def cli_trace(argv: list[str]) -> int:
    """`dynlp trace FORMULA --at NAME=VALUE ... [--wrt NAME] [--precision N] [--dot FILE]`."""
    parser = argparse.ArgumentParser(
        prog="dynlp trace", epilog=_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the forward primal, forward tangent and reverse adjoint traces of a\n"
                    "formula, with every number computed by a float64 dynlp graph.")
    parser.add_argument("formula", help="the formula, quoted")
    parser.add_argument("--at", nargs="+", default=[], metavar="NAME=VALUE",
                        help="the point: a value for every variable (x1=2 x2=5 or x1=2,x2=5)")
    parser.add_argument("--wrt", metavar="NAME",
                        help="the variable of the tangent trace (default: the first variable)")
    parser.add_argument("--precision", type=int, default=3, metavar="N",
                        help="decimals shown (default 3)")
    parser.add_argument("--dot", metavar="FILE", help="also write the graph as Graphviz DOT")
    parser.add_argument("--ascii", action="store_true",
                        help="write tangents and adjoints as v_1' and v_1bar")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 2
    if not 0 <= args.precision <= 17:
        print("dynlp trace: error: --precision must be between 0 and 17", file=sys.stderr)
        return 2
    try:
        values = parse_assignments(args.at)
        trace = evaluation_trace(parse_formula(args.formula), values, args.wrt, ascii=args.ascii)
    except FormulaError as err:
        print(f"dynlp trace: error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(format_trace(trace, args.precision))
    if args.dot:
        try:
            with open(args.dot, "w", encoding="utf-8") as f:
                f.write(trace_to_dot(trace, args.precision))
        except OSError as err:
            print(f"dynlp trace: error: cannot write {args.dot}: {err}", file=sys.stderr)
            return 1
        print(f"graph written to {args.dot}")
    return 0
