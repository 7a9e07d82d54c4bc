"""Smoke test of scripts/bench_engine.py: its floor (the smallest Python engine over the op
table) computes what dynlp computes, and the script runs to its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_engine.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_engine", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_equals_dynlp(bench):
    bench.check_floor(300, 4)  # raises when the loss or the gradient differs


def test_script_prints_every_row(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_engine.py", "--nodes", "90", "--repeats", "1"])
    bench.main()
    out = capsys.readouterr().out
    for row in ("dynlp autobatch", "dynlp no batching", "floor (Python)", "bare numpy"):
        assert row in out
