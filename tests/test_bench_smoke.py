"""Smoke tests of scripts/bench_autobatch.py (and scripts/torch_peers.py when torch imports): every
workload trains one step at a tiny size with autobatching on and off, so the benchmark cannot rot.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_autobatch.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_autobatch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(bench):
    return bench.load_data(bench.WORKLOADS, None, np.random.default_rng(0), tiny=True)


@pytest.mark.parametrize("name", ["tagger", "treelstm", "parser", "tagger-paper",
                                  "treelstm-paper", "treenn-user", "tagger-user", "rnnlm-user",
                                  "attention-user", "treenn-cells", "attention-cells"])
def test_workload_trains_one_step_batched_and_not(bench, data, name):
    workload = bench.make_workload(name, data, None, tiny=True)
    batch = workload.examples[:3]
    model = workload.dynlp
    losses, nodes = {}, {}
    for strategy in ("off", "late", "agenda", "depth", "late-unpadded"):
        before = [p.as_array().copy() for p in model.pc.parameters()]
        total = model.batch_loss_value(batch, bench.STRATEGIES[strategy])
        nodes[strategy] = model.step(batch, bench.STRATEGIES[strategy])
        losses[strategy] = total
        after = [p.as_array() for p in model.pc.parameters()]
        assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "no update"
    assert all(math.isfinite(v) and v > 0 for v in losses.values())
    # the same graph whichever way it is scheduled
    assert len(set(nodes.values())) == 1 and nodes["off"] > 10 * len(batch)


def test_treenn_cells_is_treenn_user_under_dn_fused(bench, data):
    """The two workloads build the same model: one step of each from the same seed gives the
    same loss and the same updated parameters, while treenn-cells makes far fewer nodes."""
    plain = bench.make_workload("treenn-user", data, None, tiny=True).dynlp
    cells = bench.make_workload("treenn-cells", data, None, tiny=True).dynlp
    batch = bench.make_workload("treenn-user", data, None, tiny=True).examples[:4]
    assert plain.batch_loss_value(batch, "late") == cells.batch_loss_value(batch, "late")
    nodes = [plain.step(batch, "late"), cells.step(batch, "late")]
    for a, b in zip(plain.pc.parameters(), cells.pc.parameters()):
        np.testing.assert_allclose(a.as_array(), b.as_array(), rtol=1e-5, atol=1e-7)
    assert nodes[1] < nodes[0] / 3


def test_attention_cells_is_attention_user_under_dn_fused(bench, data):
    """As treenn-cells: the same loss and updated parameters, far fewer nodes."""
    plain = bench.make_workload("attention-user", data, None, tiny=True).dynlp
    cells = bench.make_workload("attention-cells", data, None, tiny=True).dynlp
    batch = bench.make_workload("attention-user", data, None, tiny=True).examples[:4]
    assert plain.batch_loss_value(batch, "late") == pytest.approx(
        cells.batch_loss_value(batch, "late"), rel=1e-6)
    nodes = [plain.step(batch, "late"), cells.step(batch, "late")]
    for a, b in zip(plain.pc.parameters(), cells.pc.parameters()):
        np.testing.assert_allclose(a.as_array(), b.as_array(), rtol=1e-5, atol=1e-7)
    assert nodes[1] < nodes[0] * 2 / 3


def test_static_oracle_rebuilds_projective_trees(bench):
    rng = np.random.default_rng(3)
    labels = 4
    for n in (1, 2, 7, 20):
        heads = bench.random_projective_heads(n, rng)
        relations = rng.integers(0, labels, n).tolist()
        derivation = bench.static_oracle(heads, relations, labels)
        assert derivation is not None and len(derivation.actions) == 2 * n
        # replay: the arcs the actions make are the gold tree
        stack, front, got, got_labels = [], 1, [None] * n, [None] * n
        for action, (s0, s1, _, b0), legal in zip(derivation.actions, derivation.features,
                                                  derivation.legal):
            assert s0 == (stack[-1] if stack else -1) and b0 == (front if front <= n else 0)
            if action == 0:
                assert legal & 1
                stack.append(front)
                front += 1
                continue
            kind_left = action <= labels
            assert legal & (2 if kind_left else 4)
            word = stack.pop()
            got[word - 1] = b0 if kind_left else s1
            got_labels[word - 1] = (action - 1) % labels
        assert got == heads and got_labels == relations


def test_static_oracle_rejects_crossing_arcs(bench):
    # 1 -> 3 and 2 -> 4 cross
    assert bench.static_oracle([3, 4, 0, 3], [0, 0, 0, 0], 1) is None


def test_measure_times_every_variant_and_memory(bench, data):
    workload = bench.make_workload("tagger-paper", data, None, tiny=True)
    rows = bench.measure(workload, [1, 2], ["off", "late"], steps=1, repeats=2, sentences=0,
                         memory=True, rng=np.random.default_rng(1), log=lambda m: None)
    assert sorted((r.batch_size, r.variant) for r in rows) == [
        (1, "late"), (1, "off"), (2, "late"), (2, "off")]
    for r in rows:
        assert len(r.rates) == 2 and r.rate > 0 and r.node_rate > 0 and r.cpu_rate > 0
        assert r.nodes_per_sentence > 0 and r.peak_mb is not None and r.peak_mb > 0


def test_report_shows_ratios_references_and_targets(bench, data):
    workload = bench.make_workload("tagger-paper", data, None, tiny=True)
    workload.peers = {"torch padded nn.LSTM": None}
    rows = [bench.Row(64, "off", [90.0, 100.0, 110.0], [200.0]),
            bench.Row(64, "late", [1000.0, 900.0, 1100.0], [1000.0]),
            bench.Row(64, "torch padded nn.LSTM", [500.0], [250.0])]
    text = "\n".join(bench.report(workload, rows, ["off", "late"]))
    assert "late vs off 10.0x wall (target >= 10x: met), 5.0x cpu" in text
    assert "dynlp / torch padded nn.LSTM (same run): late 2.00x wall, 4.00x cpu" in text
    assert "reference, measured elsewhere (not this run): DyNet 2.1 autobatch: 2083" in text
    assert "late 1000 sent/s wall, 1000 per cpu-s (goal ~2000: missed)" in text


def test_main_runs_end_to_end(bench, capsys, tmp_path):
    out = tmp_path / "results.json"
    assert bench.main(["--tiny", "--quick", "--no-torch", "--workloads", "treelstm,parser",
                       "--batch-sizes", "2", "--steps", "1", "--json", str(out),
                       "--blas-threads", "0"]) == 0
    printed = capsys.readouterr().out
    assert "== treelstm" in printed and "== parser" in printed
    assert '"sentences_per_second"' in out.read_text()


def test_main_sets_blas_threads_in_a_new_process(bench, capfd, monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert bench.main(["--tiny", "--quick", "--no-torch", "--workloads", "tagger-paper",
                       "--batch-sizes", "1", "--steps", "1", "--strategies", "off,late"]) == 0
    printed = capfd.readouterr().out
    assert "OPENBLAS_NUM_THREADS 1 when it loaded" in printed and "== tagger-paper" in printed


def test_bad_arguments_exit_with_usage_error(bench):
    with pytest.raises(SystemExit):
        bench.main(["--workloads", "nonsense"])
    with pytest.raises(SystemExit):
        bench.main(["--batch-sizes", "0"])


def test_torch_peers_train_one_step(bench, data):
    pytest.importorskip("torch")
    peers = bench.load_torch_peers()
    peers.setup(0, threads=1)  # the benchmark's two threads crawl on a busy test machine
    for name in ("tagger", "treelstm", "parser"):
        workload = bench.make_workload(name, data, peers, tiny=True)
        assert workload.peers
        for label, peer in workload.peers.items():
            before = [p.detach().clone() for p in peer.parameters()]
            peer.step(workload.examples[:3])
            changed = [not bool((a == b).all()) for a, b in zip(before, peer.parameters())]
            assert any(changed), label


def test_dynet_part_skipped_when_dynet_does_not_import(bench, capfd, monkeypatch, tmp_path):
    # a `dynet` module that fails to import shadows the installed one in every child process
    (tmp_path / "dynet.py").write_text("raise ImportError('no dynet here')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert bench.load_dynet_peers() is None
    assert bench.main(["--tiny", "--quick", "--no-torch", "--workloads", "treelstm-paper",
                       "--batch-sizes", "2", "--steps", "1", "--strategies", "off,late",
                       "--blas-threads", "0"]) == 0
    printed = capfd.readouterr().out
    assert "DyNet not run" in printed and "== treelstm-paper" in printed
    assert "DyNet autobatch " not in printed.split("== treelstm-paper")[1].replace(
        "reference, measured elsewhere (not this run): DyNet 2.1 autobatch", "")


def test_report_compares_with_dynet(bench, data):
    workload = bench.make_workload("treelstm-paper", data, None, tiny=True)
    workload.peers = {"DyNet autobatch": None, "DyNet off, 1 per graph": None}
    rows = [bench.Row(64, "off", [100.0], [100.0]), bench.Row(64, "late", [1200.0], [900.0]),
            bench.Row(64, "DyNet autobatch", [1000.0], [1000.0]),
            bench.Row(64, "DyNet off, 1 per graph", [400.0], [500.0])]
    text = "\n".join(bench.report(workload, rows, ["off", "late"]))
    assert "DyNet autobatch vs DyNet off (1 per graph) 2.50x wall, 2.00x cpu" in text
    assert "late / DyNet autobatch 1.20x wall, 0.90x cpu (goal >= 1x: met)" in text


def test_dynet_peers_train_in_child_processes(bench, data):
    dynet_peers = bench.load_dynet_peers()
    if dynet_peers is None:
        pytest.skip("dynet does not import")
    workload = bench.make_workload("tagger-paper", data, None, True, dynet_peers, seed=0)
    try:
        labels = [label for label in workload.peers if label.startswith("DyNet")]
        assert labels == ["DyNet autobatch", "DyNet off, 1 per graph"]
        for label in labels:
            seconds, cpu, nodes = bench.run_variant(workload, label, [workload.examples[:3]] * 2)
            assert seconds > 0 and cpu > 0 and nodes == 0
    finally:
        for peer in workload.peers.values():
            peer.close()


def test_profile_step_splits_a_step_into_phases(bench, capsys):
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT.parent / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--workload", "treelstm-paper", "--tiny", "--batch", "3",
                        "--steps", "2"]) == 0
    out = capsys.readouterr().out
    for phase in module.PHASES:
        assert phase in out
    assert "examples per CPU second" in out
    # the ops are unwrapped again afterwards
    from dynlp.ops import TABLE
    assert TABLE["lstm_step"].forward.__name__ != "wrapper"


def test_profile_step_times_the_model_code_over_stub_ops(bench, capsys):
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT.parent / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--workload", "treenn-user", "--tiny", "--batch", "3", "--steps", "2",
                        "--model-code"]) == 0
    assert "model code over stub ops" in capsys.readouterr().out
    assert module.bench.dn is __import__("dynlp")  # the real ops are back
    with pytest.raises(SystemExit):
        module.main(["--workload", "tagger-user", "--tiny", "--model-code"])


def test_profile_step_prints_the_floor_of_a_python_engine(bench, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT.parent / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_dynet_imports", lambda: False)
    assert module.main(["--workload", "treenn-user", "--tiny", "--batch", "3", "--steps", "2",
                        "--floor"]) == 0
    out = capsys.readouterr().out
    lines = {line.split("  ")[1].strip(): line for line in out.splitlines()
             if line.startswith("  ") and "  " in line[2:]}
    recorded = float(lines["model code over a minimal recorder"].split()[6])
    numpy_ms = float(lines["the ops' numpy, forward and backward"].split()[6])
    floor = float(lines["floor: recorder + numpy"].split()[4])
    assert recorded > 0 and numpy_ms > 0 and floor == pytest.approx(recorded + numpy_ms, abs=0.02)
    assert "TreeLSTMBuilder's whole step" in out and "DyNet" not in out
    assert module.bench.dn is __import__("dynlp")  # the real ops are back
    with pytest.raises(SystemExit):
        module.main(["--workload", "tagger-user", "--tiny", "--floor"])


ROOT = Path(__file__).resolve().parent.parent
RECIPE_FIXTURES = [("tagger", "tiny-train.conllu"), ("parser", "tiny-train.conllu"),
                   ("treelstm", "tiny-train.trees")]


def _script(name: str):
    """scripts/NAME.py, loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("recipe, fixture", RECIPE_FIXTURES)
def test_profile_recipe_runs_on_the_fixtures(recipe, fixture, capsys):
    module = _script("profile_recipe")
    data = ROOT / "data"
    assert module.main([recipe, "--steps", "2", "--train", str(data / fixture)]) == 0
    out = capsys.readouterr().out
    assert "examples per CPU second" in out and "nodes by op:" in out


def test_user_workloads_run_end_to_end_without_dynet(bench, capsys):
    assert bench.main(["--tiny", "--quick", "--no-torch", "--no-dynet", "--workloads",
                       ",".join(bench.USER_WORKLOADS), "--batch-sizes", "3", "--steps", "1",
                       "--strategies", "off,late", "--blas-threads", "0"]) == 0
    printed = capsys.readouterr().out
    for name in bench.USER_WORKLOADS:
        assert f"== {name}: " in printed
    assert "DyNet not run" in printed


def test_user_data_follows_the_dynet_scripts(bench):
    d = bench.TaggedData("made up", [([5, 6, 5, 7], [0, 1, 0, 2]), ([5, 8], [1, 1])], 9, 3)
    examples, words = bench.unk_rare_words(d, min_count=2)
    assert examples == [([1, 0, 1, 0], [0, 1, 0, 2]), ([1, 0], [1, 1])] and words == 2
    # the 2 most frequent words (ties: first seen) keep ids, the rest are UNK (1); every
    # sentence ends in <s> (0)
    assert bench.lm_sentences(d, 4) == [[2, 3, 2, 1, 0], [2, 1, 0]]


def test_report_gives_round_by_round_ratios(bench, data):
    workload = bench.make_workload("tagger-user", data, None, tiny=True)
    workload.peers = {"DyNet wheel": None, "DyNet native": None}
    rows = [bench.Row(64, "late", [100.0, 90.0, 120.0], [100.0, 90.0, 120.0]),
            bench.Row(64, "DyNet wheel", [200.0, 100.0, 100.0], [200.0, 100.0, 100.0]),
            bench.Row(64, "DyNet native", [400.0, 100.0, 150.0], [400.0, 100.0, 150.0])]
    text = "\n".join(bench.report(workload, rows, ["late"]))
    assert ("batch 64: late / DyNet wheel, round by round: wall median 0.90x, range "
            "0.50-1.20x over 3 rounds") in text
    assert "DyNet native / DyNet wheel, round by round: wall median 1.50x, range 1.00-2.00x" in text


def test_dynet_user_peers_train_in_child_processes(bench, data):
    dynet_peers = bench.load_dynet_peers()
    if dynet_peers is None:
        pytest.skip("dynet does not import")
    for name in bench.USER_WORKLOADS:
        workload = bench.make_workload(name, data, None, True, dynet_peers, seed=0)
        try:
            expected = ["DyNet wheel"] + (["DyNet wheel, hand-batched"] if name == "rnnlm-user"
                                          else [])
            assert list(workload.peers) == expected
            for label in expected:
                seconds, cpu, nodes = bench.run_variant(workload, label,
                                                        [workload.examples[:3]] * 2)
                assert seconds > 0 and cpu > 0 and nodes == 0
        finally:
            for peer in workload.peers.values():
                peer.close()


@pytest.mark.parametrize("recipe, fixture", RECIPE_FIXTURES)
def test_bench_shards_times_the_whole_and_the_shares(recipe, fixture, capsys):
    module = _script("bench_shards")
    data = ROOT / "data"
    module.main(["--recipe", recipe, "--train", str(data / fixture), "--steps", "1",
                 "--step-costs", "0,2,5", "--repeat-shares", "2"])
    out = capsys.readouterr().out
    assert "each share timed 2 times" in out
    for cost in (0, 2, 5):
        line = next(x for x in out.splitlines() if x.startswith(f"step cost {cost}:"))
        assert float(line.split("median ")[1].split("x")[0]) > 0
    with pytest.raises(SystemExit):
        module.main(["--recipe", recipe, "--train", str(data / fixture), "--ranks", "1"])
    with pytest.raises(SystemExit):
        module.main(["--recipe", recipe, "--train", str(data / fixture), "--step-costs", "a"])
    with pytest.raises(SystemExit):
        module.main(["--recipe", recipe, "--train", str(data / fixture), "--repeat-shares", "1"])


def _recording_processes(module, monkeypatch) -> list:
    """The processes the script starts, as they start."""
    started = []
    popen = module.subprocess.Popen

    def recorded(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]
    monkeypatch.setattr(module.subprocess, "Popen", recorded)
    return started


@pytest.mark.parametrize("beside", ["loop", "copy"])
def test_bench_shards_runs_beside_another_process_and_ends_it(beside, capsys, monkeypatch):
    module = _script("bench_shards")
    started = _recording_processes(module, monkeypatch)
    module.main(["--recipe", "tagger", "--train", str(ROOT / "data" / "tiny-train.conllu"),
                 "--steps", "1", "--step-costs", "2", "--repeat-shares", "2",
                 "--beside", beside])
    out = capsys.readouterr().out
    assert f"beside {beside}" in out and "each share's times: " in out
    assert len(started) == 1 and started[0].poll() is not None  # ended with the script


def test_bench_shards_twin_times_each_step_beside_the_same_training(capsys, monkeypatch):
    """--twin: a second process trains the same minibatches (it does work: its CPU time shows
    when it is reaped), each step is timed with it paused and running, and it ends with the
    script."""
    import resource
    module = _script("bench_shards")
    monkeypatch.setattr(module, "_TWIN_WARM_UP", 1.0)
    started = _recording_processes(module, monkeypatch)
    alive = []
    measure = module._beside_twin

    def checked(*args):
        measure(*args)
        alive.append(started[0].poll() is None)  # (a twin that failed would have exited)
    monkeypatch.setattr(module, "_beside_twin", checked)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    module.main(["--recipe", "tagger", "--train", str(ROOT / "data" / "tiny-train.conllu"),
                 "--steps", "2", "--twin"])
    assert alive == [True]
    out = capsys.readouterr().out
    assert f"step cost {module.distributed.STEP_COST};" in out  # (the tagger's own)
    assert out.count("paused") >= 3 and "running" in out
    line = next(x for x in out.splitlines() if x.startswith("whole / costliest share"))
    assert float(line.split("best reach ")[1].split("x")[0]) > 0
    assert len(started) == 1 and started[0].poll() is not None  # ended with the script
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before > 0.2
    with pytest.raises(SystemExit):
        module.main(["--recipe", "tagger", "--train", str(ROOT / "data" / "tiny-train.conllu"),
                     "--twin", "--beside", "loop"])
