"""Teaching traces: the lecture example of Baydin et al. (2018), a Gaussian log-density against its
closed form, the formula grammar (precedence, associativity, errors with columns), DOT output and
the `dynlp trace` command."""

import math
import re
import unicodedata

import numpy as np
import pytest

import dynlp as dn
from dynlp.trace import (
    FormulaError,
    cli_trace,
    evaluation_trace,
    format_trace,
    parse_assignments,
    parse_formula,
    to_dot,
    trace_to_dot,
)

LECTURE = "log(x1) + x1*x2 - sin(x2)"
GAUSSIAN = "-((y-mu)/sigma)^2/2 - log(sigma) - log(2*pi)/2"


def display_width(text):
    return sum(1 for ch in text if not unicodedata.combining(ch))


def rows(table):
    return [(r.target, r.steps, round(r.value, 3)) for r in table]


# -- the lecture example ---------------------------------------------------------------------------
def test_lecture_forward_trace():
    trace = evaluation_trace(LECTURE, {"x1": 2, "x2": 5})
    assert rows(trace.forward) == [
        ("v_-1", ("x1",), 2.0), ("v_0", ("x2",), 5.0), ("v_1", ("ln v_-1",), 0.693),
        ("v_2", ("v_-1 * v_0",), 10.0), ("v_3", ("sin v_0",), -0.959),
        ("v_4", ("v_1 + v_2",), 10.693), ("v_5", ("v_4 - v_3",), 11.652),
        ("y", ("v_5",), 11.652)]
    assert trace.value == pytest.approx(math.log(2) + 10 - math.sin(5), abs=1e-14)
    assert trace.primals[3] == pytest.approx(math.sin(5), abs=1e-14)


def test_lecture_tangent_trace():
    trace = evaluation_trace(LECTURE, {"x1": 2, "x2": 5}, ascii=True)
    assert trace.wrt == "x1"
    assert [(r.target, r.value) for r in trace.tangent] == [
        ("v_-1'", 1.0), ("v_0'", 0.0), ("v_1'", 0.5), ("v_2'", 5.0), ("v_3'", 0.0),
        ("v_4'", 5.5), ("v_5'", 5.5), ("y'", 5.5)]
    assert trace.tangent[3].steps == ("v_0 * v_-1' + v_-1 * v_0'",)
    assert trace.tangent[4].steps == ("cos v_0 * v_0'",)
    assert trace.derivative == pytest.approx(5.5, abs=1e-14)
    other = evaluation_trace(LECTURE, {"x1": 2, "x2": 5}, wrt="x2")
    assert other.derivative == pytest.approx(2 - math.cos(5), abs=1e-14)


def test_lecture_adjoint_trace():
    trace = evaluation_trace(LECTURE, {"x1": 2, "x2": 5}, ascii=True)
    assert [(r.target, r.steps[-1], round(r.value, 3)) for r in trace.adjoint] == [
        ("v_5bar", "ybar", 1.0),
        ("v_4bar", "v_5bar * 1", 1.0),
        ("v_3bar", "v_5bar * (-1)", -1.0),
        ("v_1bar", "v_4bar * 1", 1.0),
        ("v_2bar", "v_4bar * 1", 1.0),
        ("v_0bar", "v_3bar * cos v_0", -0.284),
        ("v_-1bar", "v_2bar * v_0", 5.0),
        ("v_0bar", "v_0bar + v_2bar * v_-1", 1.716),
        ("v_-1bar", "v_-1bar + v_1bar / v_-1", 5.5),
        ("x1bar", "v_-1bar", 5.5),
        ("x2bar", "v_0bar", 1.716)]
    assert trace.adjoint[7].steps[0] == "v_0bar + v_2bar * dv_2/dv_0"
    assert trace.gradient["x1"] == pytest.approx(5.5, abs=1e-14)
    assert trace.gradient["x2"] == pytest.approx(2 - math.cos(5), abs=1e-14)


def test_lecture_formatted_tables():
    text = format_trace(evaluation_trace(LECTURE, {"x1": 2, "x2": 5}))
    assert "Forward primal trace" in text and "Reverse adjoint trace" in text
    assert re.search(r"v_1 += ln v_-1 += 0\.693$", text, re.MULTILINE)
    assert re.search("^  y\u0307 += v\u0307_5 += 5\\.5$", text, re.MULTILINE)
    assert re.search("^  x\u03041 += v\u0304_-1 += 5\\.5$", text, re.MULTILINE)
    assert "= 10\n" in text and "= -0.959\n" in text
    # every table's values start in one column (combining dots and bars take no room)
    for block in text.split("\n\n")[1:]:
        lines = block.splitlines()[1:]
        starts = {display_width(line[:line.rfind(" = ")]) for line in lines}
        assert len(starts) == 1, block
    assert "0.69315" in format_trace(evaluation_trace(LECTURE, {"x1": 2, "x2": 5}), precision=5)


# -- a Gaussian log-density against its closed form ----------------------------------------------
@pytest.mark.parametrize("y,mu,sigma", [(1.5, 0.5, 2.0), (-0.3, 0.7, 0.4), (2.0, 2.0, 1.0),
                                        (10.0, -3.0, 5.5)])
def test_gaussian_log_density(y, mu, sigma):
    point = {"y": y, "mu": mu, "sigma": sigma}
    z = (y - mu) / sigma
    value = -z * z / 2 - math.log(sigma) - math.log(2 * math.pi) / 2
    gradient = {"y": -(y - mu) / sigma ** 2, "mu": (y - mu) / sigma ** 2,
                "sigma": (y - mu) ** 2 / sigma ** 3 - 1 / sigma}
    for wrt in point:
        trace = evaluation_trace(GAUSSIAN, point, wrt=wrt)
        assert trace.value == pytest.approx(value, rel=1e-12, abs=1e-12)
        assert trace.derivative == pytest.approx(gradient[wrt], rel=1e-12, abs=1e-12)
        for name in point:
            assert trace.gradient[name] == pytest.approx(gradient[name], rel=1e-12, abs=1e-12)


def test_gaussian_trace_folds_constants():
    trace = evaluation_trace(GAUSSIAN, {"y": 1.5, "mu": 0.5, "sigma": 2.0})
    rules = [r.steps[0] for r in trace.forward]
    assert rules[:3] == ["y", "mu", "sigma"]
    assert "v_3 ^ 2" in rules and "v_5 / 2" in rules and "v_7 - ln(2 * pi) / 2" in rules
    assert len(trace.formula.steps) == 8   # constants are no steps of their own
    # a variable named y: the result is called f
    assert trace.forward[-1].target == "f"


# -- the grammar -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [
    ("-2^2", -4.0), ("(-2)^2", 4.0), ("2^3^2", 512.0), ("(2^3)^2", 64.0), ("2^-1", 0.5),
    ("8/4/2", 1.0), ("8-4-2", 2.0), ("2+3*4", 14.0), ("(2+3)*4", 20.0), ("-2*3", -6.0),
    ("2*-3", -6.0), ("--3", 3.0), ("2-3^2*2", -16.0), ("1.5e3", 1500.0), (".5", 0.5),
    ("2E-2", 0.02), ("3.", 3.0), ("ln(e)", 1.0), ("sqrt(16)", 4.0), ("abs(-2.5)", 2.5),
    ("square(3)", 9.0), ("sigmoid(0)", 0.5), ("logistic(0)", 0.5), ("cos(pi)", -1.0),
    ("exp(0) + tanh(0)", 1.0), ("sin(pi/2)", 1.0),
])
def test_constant_formulas(text, value):
    assert parse_assignments([f"c={text}"])["c"] == pytest.approx(value, abs=1e-15)


@pytest.mark.parametrize("text,shown", [
    ("a-(b-c)", "a - (b - c)"), ("(a-b)-c", "a - b - c"), ("-x^2", "-x ^ 2"),
    ("(-x)^2", "(-x) ^ 2"), ("x^y^z", "x ^ y ^ z"), ("(x^y)^z", "(x ^ y) ^ z"),
    ("a/(b*c)", "a / (b * c)"), ("a*b/c", "a * b / c"), ("log(x)*-y", "ln(x) * -y"),
])
def test_tree_printing(text, shown):
    assert str(parse_formula(text)) == shown
    assert str(parse_formula(shown)) == shown


def test_variables_and_numbering():
    formula = parse_formula("b*a + sin(b) - c")
    assert formula.variables == ("b", "a", "c")
    assert [formula.variable_index(v) for v in formula.variables] == [-2, -1, 0]
    # numbered by height above the inputs, ties left to right, as in the tables
    trace = evaluation_trace(formula, {"a": 1, "b": 2, "c": 3})
    assert [r.steps[0] for r in trace.forward[3:-1]] == [
        "v_-2 * v_-1", "sin v_-2", "v_1 + v_2", "v_3 - v_0"]


def test_unary_minus_below_power():
    trace = evaluation_trace("-x^2", {"x": 3})
    assert trace.value == -9.0 and trace.derivative == pytest.approx(-6.0)
    assert evaluation_trace("(-x)^2", {"x": 3}).value == pytest.approx(9.0)


def test_shared_variable_accumulates():
    trace = evaluation_trace("x*x", {"x": 3}, ascii=True)
    assert [(r.target, r.steps[-1], r.value) for r in trace.adjoint[1:]] == [
        ("v_0bar", "v_1bar * v_0", 3.0), ("v_0bar", "v_0bar + v_1bar * v_0", 6.0),
        ("xbar", "v_0bar", 6.0)]


@pytest.mark.parametrize("text", [
    "x^y + 2^x - x^2.5", "sqrt(x)*tanh(y) / exp(cos(x*y))", "logistic(x - y) * abs(y) + square(x)",
    "x/y - 3/x + (x + 1)/(y - 2)", "-(x - y)^3 + pi*e*x", "log(x*y) * (2 - x) + 1/y^2",
])
def test_forward_and_reverse_agree_with_differences(text):
    point = {"x": 0.8, "y": 1.3}
    trace = evaluation_trace(text, point)
    step = 1e-6
    for name, at in point.items():
        up = evaluation_trace(text, {**point, name: at + step}).value
        down = evaluation_trace(text, {**point, name: at - step}).value
        numeric = (up - down) / (2 * step)
        assert trace.gradient[name] == pytest.approx(numeric, rel=1e-6, abs=1e-7)
        assert evaluation_trace(text, point, wrt=name).derivative == pytest.approx(
            trace.gradient[name], rel=1e-12, abs=1e-12)
    # each node's rows sum local partials times the graph's adjoints: the last row of a node
    # (its sum complete) must be the graph's own adjoint; every step's tangent is the graph's
    finals = {r.target: r.value for r in trace.adjoint[1:] if r.target.startswith("v\u0304_")}
    assert len(finals) == len(trace.adjoints) - 1
    for i, adjoint in trace.adjoints.items():
        if i != trace.formula.index(trace.formula.root):
            assert finals[f"v\u0304_{i}"] == pytest.approx(adjoint, rel=1e-12, abs=1e-12)
    for row in trace.tangent[:-1]:
        assert row.value == trace.tangents[int(row.target.split("_")[1])]


@pytest.mark.parametrize("text,column,words", [
    ("", 1, "empty"), ("   ", 1, "empty"), ("x +", 4, "end of the formula"),
    ("sinh(x)", 1, "unknown function 'sinh'"), ("2x", 2, "'*' missing"),
    ("x y", 3, "found 'y'"), ("(x + 1", 7, "')' to close the '(' of column 1"),
    ("x + 1)", 6, "unmatched ')'"), ("sin x", 1, "sin(...)"),
    ("x $ 2", 3, "unexpected character '$'"), ("x + ()", 6, "found ')'"),
    ("log(x, 2)", 6, "one argument"),
])
def test_errors_point_at_the_column(text, column, words):
    with pytest.raises(FormulaError) as info:
        parse_formula(text)
    err = info.value
    assert err.column == column and words in err.reason
    lines = str(err).splitlines()
    assert f"column {column}" in lines[0]
    assert lines[2].index("^") - 2 == column - 1   # the caret sits under the column


def test_errors_about_values():
    formula = parse_formula("x1 + 2*x2")
    with pytest.raises(FormulaError, match="no value for x2") as info:
        evaluation_trace(formula, {"x1": 1.0})
    assert info.value.column == 8
    with pytest.raises(FormulaError, match="z is not a variable"):
        evaluation_trace(formula, {"x1": 1.0, "x2": 2.0, "z": 3.0})
    with pytest.raises(FormulaError, match="differentiate with respect to 'z'"):
        evaluation_trace(formula, {"x1": 1.0, "x2": 2.0}, wrt="z")
    with pytest.raises(FormulaError, match="no variables"):
        evaluation_trace("2 + 3", {})
    with pytest.raises(FormulaError, match="positive base") as info:
        evaluation_trace("(-x)^y", {"x": 1.0, "y": 2.0})
    assert info.value.column == 5
    with pytest.raises(FormulaError, match="division by a constant zero") as info:
        evaluation_trace("x + x/(1 - 1)", {"x": 1.0})
    assert info.value.column == 6
    for items, message in [(["x"], "NAME=VALUE"), (["x=abc"], "constant formula"),
                           (["pi=3"], "pi is a constant"), (["x=1", "x=2"], "twice"),
                           (["1x=2"], "not a variable name"), (["x=(1"], "the value of x")]:
        with pytest.raises(FormulaError, match=re.escape(message)):
            parse_assignments(items)
    assert parse_assignments(["a=1,b=-2.5", "c=pi/4"]) == {"a": 1.0, "b": -2.5,
                                                          "c": math.pi / 4}


def test_outside_the_domain_gives_nan_and_a_note():
    for text, point in [("log(x)", {"x": -1.0}), ("x^0.5", {"x": -1.0}),
                        ("x/y", {"x": 1.0, "y": 0.0})]:
        trace = evaluation_trace(text, point)
        assert not math.isfinite(trace.value)
        assert "note: some values are not finite" in format_trace(trace)
    assert "note" not in format_trace(evaluation_trace("x/y", {"x": 1.0, "y": 2.0}))


def test_too_deep_is_an_error():
    with pytest.raises(FormulaError, match="deeply"):
        parse_formula("+".join(["x"] * 400))
    with pytest.raises(FormulaError, match="deeply"):
        parse_formula("(" * 600 + "x" + ")" * 600)


# -- Graphviz --------------------------------------------------------------------------------------
_DOT_TOKEN = re.compile(r'\s*(?:("(?:\\.|[^"\\])*")|(->)|([{}\[\];,=])|([A-Za-z_][A-Za-z0-9_]*'
                        r'|-?[0-9.]+))')


def parse_dot(text):
    """A strict reader of the DOT subset we write: returns (name, {node: attrs}, [edges])."""
    tokens, pos = [], 0
    while text[pos:].strip():
        m = _DOT_TOKEN.match(text, pos)
        assert m, f"bad DOT at {text[pos:pos + 20]!r}"
        tokens.append(next(t for t in m.groups() if t is not None))
        pos = m.end()

    def unquote(t):
        return t[1:-1].replace('\\"', '"') if t.startswith('"') else t

    assert tokens[0] == "digraph" and tokens[-1] == "}"
    k = 1 if tokens[1] == "{" else 2
    name = unquote(tokens[1]) if k == 2 else None
    assert tokens[k] == "{"
    body = " ".join(tokens[k + 1:-1])
    nodes, edges = {}, []
    for stmt in (s.strip() for s in body.split(" ; ")):
        stmt = stmt.rstrip(" ;")
        if not stmt:
            continue
        head, _, attrs = stmt.partition(" [ ")
        pairs = dict(re.findall(r'(\w+) = ("(?:\\.|[^"\\])*"|[\w.]+)', attrs))
        parts = head.split(" -> ")
        if len(parts) > 1:
            edges.extend(zip(map(unquote, parts), map(unquote, parts[1:])))
        elif head in ("graph", "node", "edge") or " = " in head:
            continue
        else:
            assert re.fullmatch(r'"(?:\\.|[^"\\])*"|\w+', head), stmt
            nodes[unquote(head)] = {a: unquote(v) for a, v in pairs.items()}
    for a, b in edges:
        assert a in nodes and b in nodes
    return name, nodes, edges


def test_trace_dot_is_the_formula_graph():
    trace = evaluation_trace(LECTURE, {"x1": 2, "x2": 5})
    _, nodes, edges = parse_dot(trace_to_dot(trace))
    assert len(nodes) == 7 and len(edges) == 8
    assert nodes["v_2"]["label"] == "v_2 = v_-1 * v_0\\n= 10"
    assert ("v_-1", "v_2") in edges and ("v_3", "v_5") in edges
    assert [n for n, a in nodes.items() if a.get("peripheries") == "2"] == ["v_5"]


def test_to_dot_draws_any_graph():
    pc = dn.ParameterCollection(seed=1)
    weight = pc.add_parameters((3, 4))
    with dn.Graph(fuse=False):  # the nodes as written (fusion would join matmul and tanh)
        x = dn.inputs(np.ones(4))
        hidden = dn.tanh(weight @ x) * 2.0
        loss = dn.pick_neg_log_softmax(hidden, 1)
        unrelated = dn.exp(x)
        text = to_dot(loss)
    assert unrelated.i > loss.i
    name, nodes, edges = parse_dot(text)
    assert name == "dynlp"
    # input, parameter, matmul, tanh, mul_const, pick_neg_log_softmax; exp is not an ancestor
    assert len(nodes) == 6 and len(edges) == 5
    labels = " | ".join(a["label"] for a in nodes.values())
    for part in ("matmul", "tanh", "mul_const", "c=2", "(3, 4)", "(4,)", "pick_neg_log_softmax",
                 "index=1"):
        assert part in labels
    assert "exp" not in labels
    assert sum(a.get("peripheries") == "2" for a in nodes.values()) == 1


# -- the command -----------------------------------------------------------------------------------
def test_cli_trace_end_to_end(capsys, tmp_path):
    dot = tmp_path / "lecture.dot"
    code = cli_trace([LECTURE, "--at", "x1=2", "x2=5", "--dot", str(dot)])
    out = capsys.readouterr()
    assert code == 0 and out.err == ""
    assert "derivative with respect to x1" in out.out
    assert re.search(r"v_5 += v_4 - v_3 += 11\.652", out.out)
    assert re.search(r"= 1\.716$", out.out, re.MULTILINE)
    assert len(parse_dot(dot.read_text())[1]) == 7

    code = cli_trace([LECTURE, "--at", "x1=2,x2=5", "--wrt", "x2", "--ascii", "--precision", "1"])
    out = capsys.readouterr().out
    assert code == 0 and re.search(r"^  y' += v_5' += 1\.7$", out, re.MULTILINE)


@pytest.mark.parametrize("argv,words", [
    (["sin(x) +", "--at", "x=1"], "end of the formula"),
    (["foo(x)", "--at", "x=1"], "unknown function 'foo'"),
    (["x + y", "--at", "x=1"], "no value for y"),
    (["x", "--at", "x=1", "z=2"], "z is not a variable"),
    (["x", "--at", "x:1"], "NAME=VALUE"),
    (["x", "--at", "x=1", "--wrt", "q"], "'q'"),
    (["x", "--at", "x=1", "--precision", "-2"], "--precision"),
])
def test_cli_trace_errors(capsys, argv, words):
    assert cli_trace(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and words in out.err and "Traceback" not in out.err
    assert out.err.startswith("dynlp trace: error:")


def test_cli_trace_shows_the_caret(capsys):
    assert cli_trace(["x1 + * x2", "--at", "x1=1", "x2=2"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[1:] == ["  x1 + * x2", "       ^"]


def test_cli_trace_usage_errors_return_two(capsys):
    assert cli_trace([]) == 2
    assert "usage: dynlp trace" in capsys.readouterr().err
    assert cli_trace(["--help"]) == 0
    assert "--at NAME=VALUE" in capsys.readouterr().out


def test_python_power_operator():
    """`**` is read as `^`, as Python users type it."""
    assert evaluation_trace("x**2 + x", {"x": 3}).value == pytest.approx(12.0)
    assert str(parse_formula("x1 ** 2")) == str(parse_formula("x1 ^ 2"))
    trace = evaluation_trace("-((y-mu)/sigma)**2/2", {"y": 1.0, "mu": 0.0, "sigma": 2.0})
    assert trace.value == pytest.approx(-0.125)
