"""DyNet 2.1 peers of the two paper workloads of scripts/bench_autobatch.py (BiLSTM tagger, binary
Tree-LSTM), written as the DyNet autobatching benchmark writes them. DyNet reads its autobatch flag
once per process, so every variant runs in its own child process; the parent talks to it through
`DynetPeer`. Benchmark-only: dynlp never imports this module or dynet.

    python scripts/dynet_peers.py --workload tagger-paper --autobatch 1 [--batch-size 64]
        [--sentences 96] [--repeats 3] [--data DIR] [--seed 0]

prints one JSON line per timed run: training sentences per second, wall and per CPU second.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
WORKLOADS = ("tagger-paper", "treelstm-paper")
LABELS = {1: "DyNet autobatch", 0: "DyNet off, 1 per graph"}
SIZES = {"tagger-paper": {"word_dim": 128, "hidden": 50, "mlp_dim": 32},
         "treelstm-paper": {"word_dim": 128, "hidden": 128}}
TINY = {"tagger-paper": {"word_dim": 8, "hidden": 8, "mlp_dim": 8},
        "treelstm-paper": {"word_dim": 8, "hidden": 8}}


def dynet_imports(timeout: float = 120.0) -> bool:
    """Whether `import dynet` works, tried in a child so this process stays free of it."""
    try:
        done = subprocess.run([sys.executable, "-c", "import dynet_config, dynet"],
                              capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


# -------------------------------------------------------------------------------------------------
# the parent's side: one child process per variant, fed minibatches through a pipe


class DynetPeer:
    """A DyNet variant in a child process. `timed_run(batches)` sends the minibatches, the child
    trains on them and answers with its own wall and CPU seconds (pipe and JSON not included)."""

    def __init__(self, workload: str, autobatch: int, words: int, tags: int = 0,
                 seed: int = 0, tiny: bool = False) -> None:
        command = [sys.executable, str(SCRIPTS / "dynet_peers.py"), "--serve",
                   "--workload", workload, "--autobatch", str(autobatch), "--words", str(words),
                   "--tags", str(tags), "--seed", str(seed)] + (["--tiny"] if tiny else [])
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.ready = self._answer()

    def _answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the DyNet child stopped (exit code {self.process.wait()})")

    def timed_run(self, batches: list[list]) -> tuple[float, float, int]:
        """Wall seconds, CPU seconds of the child, graph nodes (0: not counted)."""
        self.process.stdin.write(json.dumps(batches) + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        return answer["seconds"], answer["cpu"], 0

    def step(self, batch: list) -> None:
        self.timed_run([batch])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def make_peers(workload: str, words: int, tags: int, seed: int,
               tiny: bool = False) -> dict[str, DynetPeer]:
    """Both variants of a paper workload, each in its own child process."""
    return {LABELS[a]: DynetPeer(workload, a, words, tags, seed, tiny) for a in (1, 0)}


# -------------------------------------------------------------------------------------------------
# the child's side: DyNet models (dynet is imported by `configure`, after dynet_config.set)


def configure(autobatch: int, seed: int) -> Any:
    import dynet_config
    dynet_config.set(mem=1024, autobatch=autobatch, random_seed=seed + 1)
    import dynet
    return dynet


class DynetTagger:
    """Lookup 128 -> forward and backward VanillaLSTM of 50 -> tanh MLP 32 -> softmax per word."""

    def __init__(self, dy: Any, words: int, tags: int, word_dim: int, hidden: int,
                 mlp_dim: int) -> None:
        self.dy = dy
        self.model = dy.ParameterCollection()
        self.lookup = self.model.add_lookup_parameters((words, word_dim))
        self.forward_rnn = dy.VanillaLSTMBuilder(1, word_dim, hidden, self.model)
        self.backward_rnn = dy.VanillaLSTMBuilder(1, word_dim, hidden, self.model)
        self.hidden_weight = self.model.add_parameters((mlp_dim, 2 * hidden))
        self.hidden_bias = self.model.add_parameters(mlp_dim)
        self.output_weight = self.model.add_parameters((tags, mlp_dim))
        self.output_bias = self.model.add_parameters(tags)
        self.trainer = dy.AdamTrainer(self.model)

    def loss(self, example: Sequence) -> Any:
        dy = self.dy
        words, tags = example
        # DyNet 2.1 turns parameters into expressions itself: no dy.parameter() calls
        hidden_weight, hidden_bias = self.hidden_weight, self.hidden_bias
        output_weight, output_bias = self.output_weight, self.output_bias
        embeddings = [self.lookup[w] for w in words]
        forward = self.forward_rnn.initial_state().transduce(embeddings)
        backward = self.backward_rnn.initial_state().transduce(embeddings[::-1])[::-1]
        losses = []
        for f, b, tag in zip(forward, backward, tags):
            h = dy.tanh(dy.affine_transform([hidden_bias, hidden_weight, dy.concatenate([f, b])]))
            losses.append(dy.pickneglogsoftmax(
                dy.affine_transform([output_bias, output_weight, h]), tag))
        return dy.esum(losses)


class DynetTreeLSTM:
    """Lookup 128 -> binary Tree-LSTM 128 (Tai et al., one forget gate per child) -> softmax over
    5 labels at every node; the cell as in the DyNet benchmark's treenn.py."""

    def __init__(self, dy: Any, words: int, word_dim: int, hidden: int) -> None:
        self.dy = dy
        self.model = m = dy.ParameterCollection()
        self.lookup = m.add_lookup_parameters((words, word_dim))
        self.leaf_weights = [m.add_parameters((hidden, word_dim)) for _ in "iou"]
        self.node_weights = [m.add_parameters((hidden, 2 * hidden)) for _ in "iou"]
        self.forget_weights = [m.add_parameters((hidden, 2 * hidden)) for _ in "ff"]
        self.biases = [m.add_parameters(hidden) for _ in "iouf"]
        self.output_weight = m.add_parameters((5, hidden))
        self.output_bias = m.add_parameters(5)
        self.trainer = dy.AdamTrainer(m)

    def loss(self, example: Sequence) -> Any:
        dy = self.dy
        word_ids, left, right, labels = example
        wi, wo, wu = self.leaf_weights
        ui, uo, uu = self.node_weights
        uf1, uf2 = self.forget_weights
        bi, bo, bu, bf = self.biases
        output_weight, output_bias = self.output_weight, self.output_bias
        hs, cs, losses = [], [], []
        for word, a, b, label in zip(word_ids, left, right, labels):
            if word >= 0:
                x = self.lookup[word]
                i = dy.logistic(dy.affine_transform([bi, wi, x]))
                o = dy.logistic(dy.affine_transform([bo, wo, x]))
                u = dy.tanh(dy.affine_transform([bu, wu, x]))
                c = dy.cmult(i, u)
            else:
                e = dy.concatenate([hs[a], hs[b]])
                i = dy.logistic(dy.affine_transform([bi, ui, e]))
                o = dy.logistic(dy.affine_transform([bo, uo, e]))
                f1 = dy.logistic(dy.affine_transform([bf, uf1, e]))
                f2 = dy.logistic(dy.affine_transform([bf, uf2, e]))
                u = dy.tanh(dy.affine_transform([bu, uu, e]))
                c = dy.cmult(i, u) + dy.cmult(f1, cs[a]) + dy.cmult(f2, cs[b])
            h = dy.cmult(o, dy.tanh(c))
            hs.append(h)
            cs.append(c)
            losses.append(dy.pickneglogsoftmax(
                dy.affine_transform([output_bias, output_weight, h]), label))
        return dy.esum(losses)


def make_model(dy: Any, workload: str, words: int, tags: int, tiny: bool) -> Any:
    sizes = (TINY if tiny else SIZES)[workload]
    if workload == "tagger-paper":
        return DynetTagger(dy, words, tags, **sizes)
    return DynetTreeLSTM(dy, words, **sizes)


def train(model: Any, batches: list[list], autobatch: int) -> tuple[float, float]:
    """Wall and CPU seconds to train on the minibatches: with autobatch one graph per minibatch
    (losses summed); without, one graph and one backward per sentence, gradients accumulating
    until the minibatch's update (the same updates either way)."""
    dy = model.dy
    cpu = time.process_time()
    start = time.perf_counter()
    for batch in batches:
        if autobatch:
            dy.renew_cg()
            total = dy.esum([model.loss(example) for example in batch])
            total.value()
            total.backward()
        else:
            for example in batch:
                dy.renew_cg()
                total = model.loss(example)
                total.value()
                total.backward()
        model.trainer.update()
    return time.perf_counter() - start, time.process_time() - cpu


def serve(args: argparse.Namespace) -> int:
    """Child mode: one JSON list of minibatches per stdin line, one JSON timing per stdout line."""
    dy = configure(args.autobatch, args.seed)
    model = make_model(dy, args.workload, args.words, args.tags, args.tiny)
    print(json.dumps({"ready": True, "dynet": getattr(dy, "__version__", "?")}), flush=True)
    for line in sys.stdin:
        batches = json.loads(line)
        seconds, cpu = train(model, batches, args.autobatch)
        print(json.dumps({"seconds": seconds, "cpu": cpu}), flush=True)
    return 0


def standalone(args: argparse.Namespace) -> int:
    """Load the workload's data with the benchmark's loaders, train, print JSON lines."""
    import numpy as np
    spec = importlib.util.spec_from_file_location("bench_autobatch", SCRIPTS / "bench_autobatch.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(args.seed)
    data = bench.load_data([args.workload], args.data, rng, args.tiny)
    if args.workload == "tagger-paper":
        examples, words, tags = data["sentences"].sentences, data["sentences"].words, \
            data["sentences"].tags
    else:
        examples, words, tags = data["trees"].trees, data["trees"].words, 0
    dy = configure(args.autobatch, args.seed)
    model = make_model(dy, args.workload, words, tags, args.tiny)
    b = args.batch_size
    steps = max(1, -(-args.sentences // b))

    def draw() -> list[list]:
        return [[examples[i] for i in rng.integers(0, len(examples), b)] for _ in range(steps)]

    train(model, draw()[:1], args.autobatch)  # warm-up
    for _ in range(args.repeats):
        seconds, cpu = train(model, draw(), args.autobatch)
        count = steps * b
        print(json.dumps({"workload": args.workload, "variant": LABELS[args.autobatch],
                          "batch_size": b, "sentences_per_second": count / seconds,
                          "sentences_per_cpu_second": count / max(cpu, 1e-9)}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=WORKLOADS, required=True)
    parser.add_argument("--autobatch", type=int, choices=(0, 1), default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sentences", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "DYNLP_DATA_MIRROR", SCRIPTS.parent.parent / "shared" / "data")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--words", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tags", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return serve(args) if args.serve else standalone(args)


if __name__ == "__main__":
    sys.exit(main())
