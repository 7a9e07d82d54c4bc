"""`dynlp report`: the analyses, the page of each recipe's run (offline: no scripts, nothing
fetched, figures as inline SVG), the command line, and the page in a real headless Chromium
when one is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dynlp import cli
from dynlp.data import read_conllu
from dynlp.report import attachment_breakdown, render, tag_scores, write_report

DATA = Path(__file__).resolve().parent.parent / "data"
RUNS = {
    "tagger": ["--train", str(DATA / "tiny-train.conllu"), "--dev", str(DATA / "tiny-dev.conllu"),
               "--word-dim", "8", "--char-dim", "4", "--char-hidden", "4", "--lstm-layers", "1",
               "--lstm-dim", "8", "--mlp-dim", "8"],
    "parser": ["--train", str(DATA / "tiny-train.conllu"), "--dev", str(DATA / "tiny-dev.conllu"),
               "--word-dim", "8", "--pos-dim", "4", "--lstm-layers", "1", "--lstm-dim", "8",
               "--mlp-dim", "8"],
    "treelstm": ["--train", str(DATA / "tiny-train.trees"), "--dev", str(DATA / "tiny-dev.trees"),
                 "--embedding-dim", "8", "--hidden-dim", "8"],
}
SECTION = {"tagger": "Confusion matrix", "parser": "By gold arc length", "treelstm": "Dev trees"}


def test_tag_scores():
    gold = [["A", "B", "B"], ["A"]]
    predicted = [["A", "A", "B"], ["A"]]
    rows, tags, matrix = tag_scores(gold, predicted)
    by_tag = {r["tag"]: r for r in rows}
    assert tags == ["A", "B"]                       # most frequent gold tag first (a tie: name)
    assert by_tag["A"]["precision"] == pytest.approx(200 / 3)
    assert by_tag["A"]["recall"] == 100.0
    assert by_tag["B"]["precision"] == 100.0 and by_tag["B"]["recall"] == 50.0
    assert by_tag["B"]["f1"] == pytest.approx(200 / 3)
    assert matrix == [[2, 0], [1, 1]]


def test_attachment_breakdown():
    sentence = read_conllu(DATA / "tiny-dev.conllu")[0]
    heads = list(sentence.heads)
    labels = list(sentence.deprels)
    wrong = next(k for k, h in enumerate(heads) if h != 0)
    heads[wrong] = 0
    by_relation, by_length = attachment_breakdown([sentence], [heads], [labels])
    assert sum(r["count"] for r in by_relation) == len(heads)
    assert sum(r["count"] for r in by_length) == len(heads)
    relation = sentence.deprels[wrong].split(":")[0]
    row = next(r for r in by_relation if r["key"] == relation)
    assert row["uas"] < 100.0
    assert next(r for r in by_length if r["key"] == "root")["uas"] == 100.0


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.sources.append(value)


def _check_offline(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    assert "script" not in page.tags
    assert not page.sources                         # no links, images or styles to fetch
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    return page


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run of each recipe through `dynlp train` (which writes report.html)."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for recipe, argv in RUNS.items():
        out = root / recipe
        assert cli.main(["train", recipe, *argv, "--epochs", "2", "--out", str(out)]) == 0
        made[recipe] = out
    return made


@pytest.mark.parametrize("recipe", sorted(RUNS))
def test_train_writes_the_report(runs, recipe):
    text = (runs[recipe] / "report.html").read_text(encoding="utf-8")
    page = _check_offline(text)
    assert page.tags.get("svg", 0) >= 3             # two learning curves and the analysis
    assert "Learning curves" in text and SECTION[recipe] in text
    metrics = json.loads((runs[recipe] / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["environment"]) >= {"dynlp", "numpy", "python"}


def test_report_command(runs, tmp_path, capsys):
    target = tmp_path / "page.html"
    assert cli.main(["report", str(runs["parser"]), "--output", str(target)]) == 0
    assert str(target) in capsys.readouterr().err
    text = target.read_text(encoding="utf-8")
    _check_offline(text)
    assert "Dev sentences" in text and "arc" in text


def test_report_without_model_or_dev(runs, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(runs["tagger"] / "log.jsonl", partial / "log.jsonl")
    text = render(partial)
    _check_offline(text)
    assert "has not finished" in text and "Training loss" in text
    assert write_report(partial).name == "report.html"


def test_report_of_a_missing_folder_is_one_error_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("dynlp: error: ")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
@pytest.mark.parametrize("recipe", sorted(RUNS))
def test_chromium_renders_the_report(runs, recipe, tmp_path):
    """The page loads in a real headless browser without console messages, its SVG figures
    are in the rendered document, and a screenshot is taken."""
    page = (runs[recipe] / "report.html").resolve()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
             "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    done = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ":CONSOLE" not in done.stderr, done.stderr[-2000:]
    dom = done.stdout
    assert dom.count("<svg") >= 3 and "<polyline" in dom
    shot = tmp_path / "page.png"
    subprocess.run([*flags, "--hide-scrollbars", "--window-size=1200,1600",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_a_failing_report_does_not_fail_training(runs, monkeypatch, capsys):
    import dynlp.report as report

    def broken(*args, **kwargs):
        raise ValueError("broken page")

    monkeypatch.setattr(report, "write_report", broken)
    capsys.readouterr()
    report.after_training(runs["tagger"], cli.load_recipe("tagger"), None, None)
    assert "warning: no report written (ValueError: broken page)" in capsys.readouterr().err
