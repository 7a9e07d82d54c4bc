"""Small SVG figures for run reports, as strings: line charts, a heat map, horizontal bars, arc
diagrams of dependency trees and drawings of labelled trees. No scripts, no fonts to fetch.
Imports nothing of dynlp.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

FONT = "font-family:system-ui,sans-serif;font-size:11px"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
RIGHT, WRONG, GOLD = "#2ca02c", "#d62728", "#7f7f7f"
# sentiment 0 (very negative) .. 4 (very positive)
SENTIMENT = ("#b2182b", "#ef8a62", "#d9d9d9", "#67a9cf", "#2166ac")


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" style="{FONT}">'
            f"<title>{escape(title)}</title>" + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>'
            f"{escape(str(text))}</text>")


def _ticks(low: float, high: float, count: int = 5, whole: bool = False) -> list[float]:
    """About `count` round numbers covering [low, high]; whole: integers only."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * step:
            step *= factor
            break
    if whole:
        step = max(1.0, round(step))
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def line_chart(series: dict[str, Sequence[tuple[float, float]]], title: str, x_label: str,
               y_label: str, width: int = 420, height: int = 260) -> str:
    """Lines through (x, y) points, one per series, with axes, ticks and a legend."""
    points = [p for values in series.values() for p in values
              if p[1] is not None and math.isfinite(p[1])]
    left, right, top, bottom = 56, 12, 28, 42
    body = [_text(width / 2, 16, title, extra=' font-weight="bold"')]
    if not points:
        body.append(_text(width / 2, height / 2, "no data"))
        return _svg(width, height, body, title)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    whole = all(float(x).is_integer() for x in xs)
    x_ticks, y_ticks = _ticks(min(xs), max(xs), whole=whole), _ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1.0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y0) / ((y1 - y0) or 1.0) * plot_h

    for t in y_ticks:
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" '
                    'stroke="#e5e5e5"/>')
        body.append(_text(left - 6, sy(t) + 4, f"{t:g}", anchor="end"))
    for t in x_ticks:
        body.append(_text(sx(t), top + plot_h + 16, f"{t:g}"))
    body.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
                'stroke="#999"/>')
    body.append(_text(left + plot_w / 2, height - 6, x_label))
    body.append(_text(14, top + plot_h / 2, y_label,
                      extra=f' transform="rotate(-90 14 {top + plot_h / 2:.1f})"'))
    for k, (name, values) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        good = [(x, y) for x, y in values if y is not None and math.isfinite(y)]
        if not good:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        body.append(f'<polyline class="series" points="{path}" fill="none" stroke="{color}" '
                    'stroke-width="2"/>')
        for x, y in good:
            body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}">'
                        f"<title>{escape(name)}: epoch {x:g}, {y:.4g}</title></circle>")
        body.append(f'<rect x="{left + 8}" y="{top + 6 + 14 * k}" width="10" height="3" '
                    f'fill="{color}"/>')
        body.append(_text(left + 22, top + 11 + 14 * k, name, anchor="start"))
    return _svg(width, height, body, title)


def heat_map(labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str,
             row_label: str = "gold", column_label: str = "predicted", cell: int = 26) -> str:
    """A square matrix of counts: rows gold, columns predicted; the diagonal in green, errors in
    red, darker for more (off-diagonal cells scaled to the largest error)."""
    n = len(labels)
    left, top = 70, 78
    width, height = left + n * cell + 10, top + n * cell + 10
    body = [_text(width / 2, 14, title, extra=' font-weight="bold"'),
            _text(left + n * cell / 2, 30, f"{column_label} →"),
            _text(12, top + n * cell / 2, f"{row_label} →",
                  extra=f' transform="rotate(-90 12 {top + n * cell / 2:.1f})"')]
    worst = max([matrix[i][j] for i in range(n) for j in range(n) if i != j] or [0]) or 1
    best = max([matrix[i][i] for i in range(n)] or [0]) or 1
    for j, name in enumerate(labels):
        x = left + j * cell + cell / 2
        body.append(_text(x, top - 6, name, anchor="start",
                          extra=f' transform="rotate(-60 {x:.1f} {top - 6})"'))
    for i, name in enumerate(labels):
        y = top + i * cell
        body.append(_text(left - 4, y + cell / 2 + 4, name, anchor="end"))
        for j in range(n):
            count = matrix[i][j]
            if i == j and count:
                shade = 0.15 + 0.85 * count / best
                fill = f"rgba(44,160,44,{shade:.2f})"
            elif count:
                shade = 0.15 + 0.85 * count / worst
                fill = f"rgba(214,39,40,{shade:.2f})"
            else:
                fill = "#fafafa"
            body.append(f'<rect class="cell" x="{left + j * cell}" y="{y}" width="{cell - 1}" '
                        f'height="{cell - 1}" fill="{fill}"><title>{escape(name)} → '
                        f"{escape(labels[j])}: {count}</title></rect>")
            if count:
                body.append(_text(left + j * cell + cell / 2, y + cell / 2 + 4,
                                  count if count < 1000 else f"{count / 1000:.0f}k",
                                  extra=' font-size="9"'))
    return _svg(width, height, body, title)


def bar_chart(rows: Sequence[tuple[str, dict[str, float]]], title: str, keys: Sequence[str],
              maximum: float = 100.0, width: int = 460) -> str:
    """Horizontal bars: one group per row (a label and {key: value}), one bar per key."""
    bar, gap, left = 9, 6, 110
    group = bar * len(keys) + gap
    height = 40 + group * len(rows) + 14 * len(keys)
    plot_w = width - left - 50
    body = [_text(width / 2, 14, title, extra=' font-weight="bold"')]
    for k, key in enumerate(keys):
        body.append(f'<rect x="{left + 90 * k}" y="22" width="10" height="8" '
                    f'fill="{COLORS[k % len(COLORS)]}"/>')
        body.append(_text(left + 14 + 90 * k, 30, key, anchor="start"))
    for r, (name, values) in enumerate(rows):
        y = 40 + r * group
        body.append(_text(left - 6, y + group / 2, name, anchor="end"))
        for k, key in enumerate(keys):
            value = values.get(key)
            if value is None:
                continue
            w = max(0.0, min(1.0, value / maximum)) * plot_w
            body.append(f'<rect class="bar" x="{left}" y="{y + k * bar}" width="{w:.1f}" '
                        f'height="{bar - 1}" fill="{COLORS[k % len(COLORS)]}">'
                        f"<title>{escape(name)} {escape(key)}: {value:.2f}</title></rect>")
            body.append(_text(left + w + 4, y + k * bar + bar - 1, f"{value:.1f}",
                              anchor="start", extra=' font-size="9"'))
    return _svg(width, height, body, title)


def arc_diagram(words: Sequence[str], gold_heads: Sequence[int], gold_labels: Sequence[str],
                heads: Sequence[int], labels: Sequence[str], title: str) -> str:
    """A sentence with its predicted arcs above the words (green: right head and relation,
    orange: right head, wrong relation, red: wrong head) and, for the wrong heads, the gold
    arcs below in grey. Heads are 1-based, 0 the root."""
    step = max(44, 7 * max((len(w) for w in words), default=1) + 10)
    n = len(words)
    span = max([abs(h - (i + 1)) for i, h in enumerate(heads) if h] +
               [abs(h - (i + 1)) for i, h in enumerate(gold_heads) if h] + [1])
    up = min(160, 18 + 14 * span)
    width, base = 30 + step * (n + 1), up + 30
    height = base + 30 + min(120, 12 + 10 * span)

    def x(position: int) -> float:
        return 20 + step * position + step / 2

    body = [_text(10, 14, title, anchor="start", extra=' font-weight="bold"')]
    body.append(_text(x(0), base + 16, "ROOT", extra=' fill="#999"'))
    for i, word in enumerate(words):
        body.append(_text(x(i + 1), base + 16, word))
    for i, (head, label) in enumerate(zip(heads, labels)):
        gold_head, gold_label = gold_heads[i], gold_labels[i]
        right_head = head == gold_head
        color = (RIGHT if label.split(":")[0] == gold_label.split(":")[0] else "#ff7f0e") \
            if right_head else WRONG
        body.append(_arc(x(head), x(i + 1), base, -1, color, label,
                         f"{words[i]} ← {'ROOT' if head == 0 else words[head - 1]} ({label})"
                         + ("" if right_head else f"; gold head "
                            f"{'ROOT' if gold_head == 0 else words[gold_head - 1]}")))
        if not right_head:
            body.append(_arc(x(gold_head), x(i + 1), base + 24, 1, GOLD, gold_label,
                             f"gold: {words[i]} ← "
                             f"{'ROOT' if gold_head == 0 else words[gold_head - 1]} "
                             f"({gold_label})", dashed=True))
    return _svg(width, height, body, title)


def _arc(x_head: float, x_dep: float, base: float, direction: int, color: str, label: str,
         tip: str, dashed: bool = False) -> str:
    """A half-ellipse from head to dependent above (direction -1) or below (1) the line
    `base`, with an arrowhead at the dependent and the relation at the top."""
    lift = min(150.0, 16 + abs(x_dep - x_head) * 0.28)
    mid = (x_head + x_dep) / 2
    peak = base + direction * lift
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    tip_y = base + (2 if direction > 0 else -2)
    return (f'<g class="arc"><title>{escape(tip)}</title>'
            f'<path d="M{x_head:.1f},{base:.1f} C{x_head:.1f},{peak:.1f} {x_dep:.1f},'
            f'{peak:.1f} {x_dep:.1f},{tip_y:.1f}" fill="none" stroke="{color}" '
            f'stroke-width="1.6"{dash}/>'
            f'<path d="M{x_dep - 3:.1f},{tip_y - direction * 6:.1f} L{x_dep:.1f},{tip_y:.1f} '
            f'L{x_dep + 3:.1f},{tip_y - direction * 6:.1f}" fill="none" stroke="{color}"/>'
            + _text(mid, base + direction * (lift * 0.75 + 3), label,
                    extra=f' fill="{color}" font-size="9"') + "</g>")


class TreeNode:
    """What `tree_drawing` needs of a tree: children (empty for a leaf), the leaf's word, the
    predicted label and the gold one."""

    __slots__ = ("children", "word", "predicted", "gold")

    def __init__(self, children: list["TreeNode"], word: str | None, predicted: int,
                 gold: int) -> None:
        self.children, self.word = children, word
        self.predicted, self.gold = predicted, gold


def tree_drawing(root: TreeNode, title: str) -> str:
    """A tree with its leaves' words at the bottom, each node a disc coloured by its predicted
    sentiment (0 red .. 4 blue); a node whose prediction is wrong has a black ring and shows
    the gold label beside it."""
    leaves: list[TreeNode] = []
    depth: dict[int, int] = {}

    def walk(node: TreeNode, d: int) -> None:
        depth[id(node)] = d
        if not node.children:
            leaves.append(node)
        for child in node.children:
            walk(child, d + 1)

    walk(root, 0)
    step = max(48, 7 * max((len(leaf.word or "") for leaf in leaves), default=1) + 10)
    height_of: dict[int, int] = {}

    def level(node: TreeNode) -> int:  # leaves 0, parents above their highest child
        if id(node) not in height_of:
            height_of[id(node)] = 0 if not node.children else 1 + max(
                level(c) for c in node.children)
        return height_of[id(node)]

    top_level = level(root)
    row = 34
    width, height = 20 + step * len(leaves), 40 + row * (top_level + 1) + 24
    x_of: dict[int, float] = {}
    for k, leaf in enumerate(leaves):
        x_of[id(leaf)] = 10 + step * k + step / 2

    def place(node: TreeNode) -> float:
        if id(node) not in x_of:
            xs = [place(c) for c in node.children]
            x_of[id(node)] = sum(xs) / len(xs)
        return x_of[id(node)]

    place(root)

    def y(node: TreeNode) -> float:
        return 34 + row * (top_level - level(node))

    body = [_text(10, 14, title, anchor="start", extra=' font-weight="bold"')]
    nodes: list[TreeNode] = []
    stack = [root]
    while stack:
        node = stack.pop()
        nodes.append(node)
        for child in node.children:
            body.append(f'<line x1="{x_of[id(node)]:.1f}" y1="{y(node):.1f}" '
                        f'x2="{x_of[id(child)]:.1f}" y2="{y(child):.1f}" stroke="#bbb"/>')
            stack.append(child)
    for node in nodes:
        cx, cy = x_of[id(node)], y(node)
        wrong = node.predicted != node.gold
        ring = ' stroke="#000" stroke-width="2"' if wrong else ' stroke="#fff"'
        tip = f"predicted {node.predicted}, gold {node.gold}"
        body.append(f'<circle class="node" cx="{cx:.1f}" cy="{cy:.1f}" r="8" '
                    f'fill="{SENTIMENT[node.predicted % 5]}"{ring}><title>{tip}</title>'
                    "</circle>")
        ink = "#fff" if node.predicted % 5 in (0, 4) else "#000"
        body.append(_text(cx, cy + 3.5, node.predicted, extra=f' font-size="9" fill="{ink}"'))
        if wrong:
            body.append(_text(cx + 11, cy - 6, f"gold {node.gold}", anchor="start",
                              extra=' font-size="8" fill="#555"'))
        if not node.children:
            body.append(_text(cx, cy + 22, node.word or ""))
    return _svg(width, height, body, title)
