"""Run reports: `dynlp report RUN_DIR [--output FILE]` writes one offline HTML page (inline SVG
from dynlp.svg, no scripts, nothing fetched) about a training run: its settings and scores,
learning curves, and an analysis of the best model on the dev set (per-tag scores and a
confusion matrix for a tagger; UAS/LAS by relation and arc length and arc diagrams for a
parser; drawn trees for a Tree-LSTM). A recipe arrives as a module; this module must not
import recipes.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from html import escape
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

from . import svg
from .data.files import write_text_atomic
from .metrics import universal_relation

REPORT_FILE = "report.html"
SHOWN_EXAMPLES = 5
LENGTH_BINS = ((1, 1), (2, 2), (3, 4), (5, 7), (8, 12), (13, 10**9))


# -------------------------------------------------------------------------------------------------
# Analyses (plain data in, plain data out)


def tag_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
               ) -> tuple[list[dict], list[str], list[list[int]]]:
    """Per-tag precision, recall and F1 (percent) with support, most frequent gold tag first;
    and the confusion matrix (rows gold, columns predicted) over those tags."""
    pairs = [(g, p) for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)]
    gold_count = Counter(g for g, _ in pairs)
    predicted_count = Counter(p for _, p in pairs)
    right = Counter(g for g, p in pairs if g == p)
    tags = sorted(set(gold_count) | set(predicted_count), key=lambda t: (-gold_count[t], t))
    rows = []
    for tag in tags:
        precision = 100.0 * right[tag] / predicted_count[tag] if predicted_count[tag] else 0.0
        recall = 100.0 * right[tag] / gold_count[tag] if gold_count[tag] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"tag": tag, "precision": precision, "recall": recall, "f1": f1,
                     "support": gold_count[tag]})
    index = {tag: k for k, tag in enumerate(tags)}
    matrix = [[0] * len(tags) for _ in tags]
    for g, p in pairs:
        matrix[index[g]][index[p]] += 1
    return rows, tags, matrix


def _length_bin(length: int) -> str:
    for low, high in LENGTH_BINS:
        if low <= length <= high:
            return str(low) if low == high else (f"{low}-{high}" if high < 10**9 else f"{low}+")
    return "?"


def attachment_breakdown(sentences: Sequence[Any], heads: Sequence[Sequence[int]],
                         labels: Sequence[Sequence[str]]) -> tuple[list[dict], list[dict]]:
    """UAS and LAS (percent) by gold relation (universal part; most frequent first) and by gold
    arc length (|head - dependent|, 0 for the root), with counts."""
    by_relation: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    by_length: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for sentence, hs, ls in zip(sentences, heads, labels):
        for k, (gold_head, gold_label, head, label) in enumerate(
                zip(sentence.heads, sentence.deprels, hs, ls)):
            relation = universal_relation(gold_label)
            length = "root" if gold_head == 0 else _length_bin(abs(gold_head - (k + 1)))
            for table, key in ((by_relation, relation), (by_length, length)):
                entry = table[key]
                entry[0] += 1
                if int(head) == gold_head:
                    entry[1] += 1
                    if universal_relation(label) == relation:
                        entry[2] += 1

    def rows(table: dict[str, list[int]], order: list[str]) -> list[dict]:
        return [{"key": key, "count": table[key][0], "uas": 100.0 * table[key][1] / table[key][0],
                 "las": 100.0 * table[key][2] / table[key][0]} for key in order]

    relations = sorted(by_relation, key=lambda r: (-by_relation[r][0], r))
    lengths = [key for key in ["root"] + [_length_bin(low) for low, _ in LENGTH_BINS]
               if key in by_length]
    return rows(by_relation, relations), rows(by_length, lengths)


# -------------------------------------------------------------------------------------------------
# Reading a run


def read_run(run_dir: Path) -> tuple[dict | None, list[dict]]:
    """(metrics.json or None, the records of log.jsonl)."""
    metrics_path, log_path = run_dir / "metrics.json", run_dir / "log.jsonl"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() \
        else None
    log = []
    if log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                log.append(json.loads(line))
    return metrics, log


def dev_file(config: dict) -> Path | None:
    """The run's dev file: its --dev, or its dataset's dev file in the local cache (never
    fetched), or None."""
    if config.get("dev"):
        path = Path(config["dev"])
        return path if path.is_file() else None
    name = config.get("dataset")
    if not name:
        return None
    from .data.registry import DataError, cache_root, get_dataset
    try:
        dataset = get_dataset(name)
    except DataError:
        return None
    path = cache_root() / dataset.folder / dataset.splits.get("dev", "")
    return path if path.is_file() else None


# -------------------------------------------------------------------------------------------------
# The page


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"<td class='num'>{value:.2f}</td>"
        if isinstance(value, int):
            return f"<td class='num'>{value}</td>"
        return f"<td>{escape(str(value))}</td>"
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(content: str, caption: str) -> str:
    return f"<figure>{content}<figcaption>{escape(caption)}</figcaption></figure>"


def _scores(value: Any) -> str:
    if not isinstance(value, dict):
        return "—"
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in value.items())


def _summary(metrics: dict | None, log: list[dict], run_dir: Path) -> str:
    if metrics is None:
        return (f"<p class='warn'>No metrics.json in {escape(str(run_dir))}: the run has not "
                f"finished; {len(log)} epoch(s) logged.</p>")
    config = metrics.get("config", {})
    env = metrics.get("environment") or {}
    rows = [("recipe", metrics.get("recipe")), ("test", _scores(metrics.get("test"))),
            ("dev", _scores(metrics.get("dev"))),
            ("best epoch", f"{metrics.get('best_epoch')} of {metrics.get('epochs_trained')}"),
            ("training speed", f"{metrics.get('train_examples_per_second') or 0:.0f} examples/s"),
            ("seed", metrics.get("seed")), ("commit", metrics.get("git_commit") or "unknown"),
            ("versions", ", ".join(f"{k} {v}" for k, v in env.items()) or "not recorded")]
    settings = ", ".join(f"{k}={v}" for k, v in sorted(config.items()) if v is not None)
    return (_table(["", ""], [(k, str(v)) for k, v in rows]) +
            "<details><summary>all settings</summary><p class='mono'>"
            f"{escape(settings)}</p></details>")


def _curves(log: list[dict], main_metric: str | None) -> str:
    if not log:
        return "<p>No epochs logged.</p>"
    loss = {"train loss": [(r["epoch"], r.get("train_loss")) for r in log]}
    dev: dict[str, list] = defaultdict(list)
    for record in log:
        for key, value in (record.get("dev") or {}).items():
            if isinstance(value, (int, float)) and key not in ("words", "examples"):
                dev[key].append((record["epoch"], float(value)))
    if main_metric in dev:
        dev = {main_metric: dev.pop(main_metric), **dev}
    figures = [_figure(svg.line_chart(loss, "Training loss", "epoch", "loss per example"),
                       "Mean training loss per example, by epoch.")]
    if dev:
        figures.append(_figure(svg.line_chart(dict(dev), "Dev scores", "epoch", "percent"),
                               "Scores on the dev set (as evaluated during training)."))
    return "<div class='row'>" + "".join(figures) + "</div>"


def _tagger_section(model: Any, examples: list) -> str:
    predicted = model.predict(examples)
    gold = [s.upos for s in examples]
    rows, tags, matrix = tag_scores(gold, predicted)
    table = _table(["tag", "precision", "recall", "F1", "gold count"],
                   [(r["tag"], r["precision"], r["recall"], r["f1"], r["support"])
                    for r in rows])
    bars = svg.bar_chart([(r["tag"], {"F1": r["f1"]}) for r in rows], "F1 by tag", ["F1"])
    heat = svg.heat_map(tags, matrix, "Confusion matrix (dev)")
    return ("<h2>Tags on the dev set</h2><div class='row'>" + table +
            _figure(bars, "F1 per tag, most frequent first.") + "</div>" +
            _figure(heat, "Rows: gold tag; columns: predicted tag. Hover a cell for its "
                          "count."))


def _parser_section(model: Any, examples: list) -> str:
    predicted = model.predict(examples)
    heads = [p[0] for p in predicted]
    labels = [p[1] for p in predicted]
    by_relation, by_length = attachment_breakdown(examples, heads, labels)
    relation_table = _table(["relation", "words", "UAS", "LAS"],
                            [(r["key"], r["count"], r["uas"], r["las"]) for r in by_relation])
    length_chart = svg.bar_chart([(r["key"], {"UAS": r["uas"], "LAS": r["las"]})
                                  for r in by_length], "By gold arc length", ["UAS", "LAS"])
    relation_chart = svg.bar_chart([(r["key"], {"UAS": r["uas"], "LAS": r["las"]})
                                    for r in by_relation[:20]],
                                   "By gold relation (20 most frequent)", ["UAS", "LAS"])
    shown = _pick_examples(examples, lambda k: sum(
        h != g for h, g in zip(heads[k], examples[k].heads)), lambda s: len(s), 15)
    diagrams = "".join(_figure(svg.arc_diagram(
        examples[k].forms, examples[k].heads, examples[k].deprels, heads[k], labels[k],
        f"dev sentence {k + 1}"), "") for k in shown)
    return ("<h2>Attachment on the dev set</h2><div class='row'>" + relation_table +
            "<div>" + _figure(relation_chart, "") +
            _figure(length_chart, "Arc length |head - dependent|; root: words whose head is "
                                  "the root.") + "</div></div>"
            "<h2>Dev sentences</h2><p>Predicted arcs above the words: <span style='color:"
            f"{svg.RIGHT}'>right</span>, <span style='color:#ff7f0e'>right head, wrong "
            f"relation</span>, <span style='color:{svg.WRONG}'>wrong head</span>; the gold "
            "arc of each wrong head below, dashed.</p>" + diagrams)


def _treelstm_section(model: Any, examples: list) -> str:
    predicted = model.predict(examples)

    def build(tree: Any, labels: list[int]) -> svg.TreeNode:
        made: dict[int, svg.TreeNode] = {}
        for node, label in zip(tree.nodes(), labels):
            made[id(node)] = svg.TreeNode([made[id(c)] for c in node.children], node.word,
                                          int(label), int(node.label))
        return made[id(tree)]

    roots_right = sum(int(labels[-1]) == int(tree.label)
                      for tree, labels in zip(examples, predicted))
    shown = _pick_examples(examples, lambda k: int(int(predicted[k][-1]) !=
                                                   int(examples[k].label)),
                           lambda t: len(t.leaves()), 14)
    drawings = "".join(_figure(svg.tree_drawing(build(examples[k], predicted[k]),
                                                f"dev tree {k + 1}"), "") for k in shown)
    legend = " ".join(f"<span class='chip' style='background:{c};color:"
                      f"{'#fff' if k in (0, 4) else '#000'}'>{k}</span>"
                      for k, c in enumerate(svg.SENTIMENT))
    return (f"<h2>Dev trees</h2><p>Root sentiment right on {roots_right} of {len(examples)} "
            f"dev trees. Each node shows its predicted sentiment, 0 (very negative) to 4 (very "
            f"positive): {legend}; a black ring marks a wrong node, with its gold label.</p>"
            + drawings)


def _pick_examples(examples: list, errors: Callable[[int], int], size: Callable[[Any], int],
                   longest: int) -> list[int]:
    """A few short examples, those with errors first, in corpus order."""
    short = [k for k, e in enumerate(examples) if 3 <= size(e) <= longest]
    wrong = [k for k in short if errors(k)]
    right = [k for k in short if not errors(k)]
    return sorted((wrong[:SHOWN_EXAMPLES - 1] + right)[:SHOWN_EXAMPLES])


SECTIONS = {"tagger": _tagger_section, "parser": _parser_section,
            "treelstm": _treelstm_section}

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:6px 16px 6px 0;align-self:flex-start}
td,th{border-bottom:1px solid #eee;padding:2px 8px;text-align:left}td.num{text-align:right}
figure{margin:8px 16px 8px 0}figcaption{font-size:12px;color:#555;max-width:460px}
.row{display:flex;flex-wrap:wrap;align-items:flex-start}.warn{color:#a33}
.mono{font-family:monospace;font-size:12px}.chip{padding:0 6px;border-radius:3px}
svg{max-width:100%;height:auto;overflow:visible}
"""


def render(run_dir: Path, recipe: ModuleType | None = None,
           loader: Callable[[str], Any] | None = None, dev: str | Path | None = None) -> str:
    """The report page of a run folder as a string. With `recipe` (the module that trained
    it) and a dev file (`dev`, or the run's own when it can be found), the page also analyses
    the best model's predictions on the dev set."""
    metrics, log = read_run(run_dir)
    name = (metrics or {}).get("recipe") or (recipe.NAME if recipe else "run")
    main_metric = (metrics or {}).get("main_metric")
    parts = [f"<h1>dynlp run report: {escape(name)} — {escape(str(run_dir))}</h1>",
             _summary(metrics, log, run_dir), "<h2>Learning curves</h2>",
             _curves(log, main_metric)]
    parts.append(_analysis(run_dir, metrics, recipe, loader, dev))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>dynlp report: {escape(name)}</title><style>{STYLE}</style></head><body>"
            + "".join(parts) + "</body></html>\n")


def _analysis(run_dir: Path, metrics: dict | None, recipe: ModuleType | None,
              loader: Callable[[str], Any] | None, dev: str | Path | None) -> str:
    section = SECTIONS.get(recipe.NAME) if recipe is not None else None
    if section is None:
        return ""
    path = Path(dev) if dev else dev_file((metrics or {}).get("config", {}))
    if path is None or not path.is_file():
        return ("<p class='warn'>No dev file found for the analysis of predictions: pass "
                "<code>--dev FILE</code>.</p>")
    model_file = run_dir / "model.npz"
    if not model_file.is_file():
        return "<p class='warn'>No model.npz in the run folder: no analysis of predictions.</p>"
    from .train import load_model
    model = load_model(recipe, model_file, loader)
    examples = recipe.read_examples(path)
    return section(model, examples)


def write_report(run_dir: str | os.PathLike, output: str | os.PathLike | None = None,
                 recipe: ModuleType | None = None, loader: Callable[[str], Any] | None = None,
                 dev: str | Path | None = None) -> Path:
    """Write the report of `run_dir` to `output` (default RUN_DIR/report.html); its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    target = Path(output) if output is not None else run_dir / REPORT_FILE
    page = render(run_dir, recipe, loader, dev)
    write_text_atomic(target, page)  # (a killed run's temporary is cleared by the next)
    return target


def cli_report(argv: list[str]) -> int:
    """`dynlp report RUN_DIR [--output FILE] [--dev FILE]`."""
    from .cli import _Parser, load_any_model, load_recipe
    parser = _Parser(prog="dynlp report",
                     description="Write one offline HTML page about a training run: scores, "
                     "learning curves and an analysis of the best model on the dev set.")
    parser.add_argument("run", metavar="RUN_DIR", help="the --out folder of 'dynlp train'")
    parser.add_argument("--output", metavar="FILE", help="where to write (RUN_DIR/report.html)")
    parser.add_argument("--dev", metavar="FILE",
                        help="dev file to analyse (default: the run's own, if it is on disk)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run)
    metrics, _ = read_run(run_dir) if run_dir.is_dir() else (None, [])
    name = (metrics or {}).get("recipe")
    if name is None and (run_dir / "model.npz").is_file():
        from .params import read_metadata
        name = read_metadata(run_dir / "model.npz").get("recipe")
    recipe = load_recipe(name) if name else None
    path = write_report(run_dir, args.output, recipe, load_any_model, args.dev)
    print(f"dynlp report: wrote {path}", file=sys.stderr)
    return 0



def after_training(run_dir: str | os.PathLike, recipe: ModuleType,
                   loader: Callable[[str], Any] | None, dev: str | None) -> None:
    """The end of `dynlp train`: write the run's report and say where to go next (stderr). A
    report that cannot be written is a warning: the training itself succeeded."""
    try:
        path = write_report(run_dir, recipe=recipe, loader=loader, dev=dev)
    except Exception as error:  # noqa: BLE001 (any failure of the page must not fail the run)
        print(f"dynlp: warning: no report written ({type(error).__name__}: {error})",
              file=sys.stderr)
        return
    print(f"dynlp: report {path} (open it in a browser); next: the tutorial in "
          "docs/tutorial/README.md, every flag in 'dynlp train "
          f"{recipe.NAME} --help', full runs in docs/RESULTS.md", file=sys.stderr)
