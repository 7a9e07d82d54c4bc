"""The course in docs/tutorial/ runs as written: each page's ```python blocks are executed in
order in one namespace (from the repository's root), and a ```output block right after a
python block must equal what that block printed. The assignment's checker fails the starter
and passes a reference solution."""

import contextlib
import io
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

import dynlp as dn

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial"
PAGES = sorted(TUTORIAL.glob("[0-9]*.md"))
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)


def blocks(text: str) -> list[tuple[str, str, str | None]]:
    """(language, code, expected output or None) for each python block of a page."""
    found = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
    result = []
    for k, (language, code, _, end) in enumerate(found):
        if language != "python":
            continue
        expected = None
        if k + 1 < len(found) and found[k + 1][0] == "output" \
                and not text[end:found[k + 1][2]].strip():
            expected = found[k + 1][1]
        result.append((language, code, expected))
    return result


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text)  # a dot above, composed or not
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def test_the_course_has_five_pages_and_an_index():
    assert [p.name[:2] for p in PAGES] == ["01", "02", "03", "04", "05"]
    index = (TUTORIAL / "README.md").read_text(encoding="utf-8")
    for page in PAGES:
        assert page.name in index


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_runs_and_prints_what_it_shows(page, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # for the pages' subprocesses
    namespace: dict = {"__name__": "__tutorial__"}
    code_blocks = blocks(page.read_text(encoding="utf-8"))
    assert code_blocks, f"{page.name} has no python blocks"
    try:
        for k, (_, code, expected) in enumerate(code_blocks):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"{page.name} block {k + 1}", "exec"), namespace)
            if expected is not None:
                assert _clean(out.getvalue()) == _clean(expected), \
                    f"{page.name}, block {k + 1} printed something else"
    finally:
        dn.seed(None)


def _check(module: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's dynlp, installed or not
    return subprocess.run([sys.executable, str(TUTORIAL / "assignment" / "check_op.py"),
                           str(module)], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)


def test_assignment_checker_fails_the_starter():
    done = _check(TUTORIAL / "assignment" / "my_op.py")
    assert done.returncode == 1
    assert "not written yet" in done.stdout


def test_assignment_checker_passes_a_solution():
    done = _check(Path(__file__).resolve().parent / "tutorial_solution.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout


def test_readme_first_model_runs():
    """The README's first Python block (the second is a sketch with a `model` of the reader's)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = blocks(text)[0][1]
    exec(compile(first, "README.md", "exec"), {"__name__": "__readme__"})
