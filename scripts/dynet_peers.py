"""DyNet 2.1 peers of the two paper workloads of scripts/bench_autobatch.py (BiLSTM tagger, binary
Tree-LSTM), written as the DyNet autobatching benchmark writes them, and of its four "-user"
workloads, written line by line as the DyNet benchmark suite's dynet-py scripts (the attention
model as DyNet's attention example), run with autobatching in the dyNET38 wheel or in DyNet
built from source for this CPU (`DynetPeer(..., build="native")`). DyNet reads its autobatch flag
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
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
WORKLOADS = ("tagger-paper", "treelstm-paper")
USER_WORKLOADS = ("treenn-user", "tagger-user", "rnnlm-user", "attention-user")
LABELS = {1: "DyNet autobatch", 0: "DyNet off, 1 per graph"}
# the DyNet builds a "-user" workload runs against: the dyNET38 wheel from PyPI, and DyNet built
# from source for this CPU (docs/DYNET_PEER.md, recipe B; -Ofast -march=native), found at
# $DYNET_NATIVE_BUILD or the recipe's build directory
BUILDS = ("wheel", "native")
NATIVE_BUILD = Path(os.environ.get("DYNET_NATIVE_BUILD",
                                   "/tmp/dynet_src/dyNET-2.1.2/build/py3.11-64bit"))
# DyNet's arena (--dynet-mem, MB) per "-user" workload, the setting with the best median of 256,
# 512, 1024 and 2048 MB (512 to 4096 for rnnlm-user and attention-user) over both builds, on a
# busy 2-core machine where the differences stayed within the run-to-run spread;
# scripts/bench_autobatch.py --dynet-mem overrides it. With autobatching DyNet cannot grow its
# arena (rnnlm-user fails at 256 MB), and it touches all of it (4096 MB: 4.2 GB resident). The
# paper workloads keep 1024.
DEFAULT_MEM = 1024
TINY_MEM = 64
USER_MEM = {"treenn-user": 512, "tagger-user": 1024, "rnnlm-user": 2048,
            "attention-user": 4096}
SIZES = {"tagger-paper": {"word_dim": 128, "hidden": 50, "mlp_dim": 32},
         "treelstm-paper": {"word_dim": 128, "hidden": 128}}
TINY = {"tagger-paper": {"word_dim": 8, "hidden": 8, "mlp_dim": 8},
        "treelstm-paper": {"word_dim": 8, "hidden": 8}}


def build_env(build: str = "wheel", native: Path | None = None) -> dict[str, str]:
    """The environment of a child process that imports the given DyNet build: the native build's
    modules and libdynet.so ahead of everything else, or the environment as it is (the wheel)."""
    env = dict(os.environ)
    if build == "native":
        native = NATIVE_BUILD if native is None else native
        for name, path in (("PYTHONPATH", native / "python"), ("LD_LIBRARY_PATH",
                                                                native / "dynet")):
            env[name] = os.pathsep.join([str(path)] + [p for p in [env.get(name)] if p])
    elif build != "wheel":
        raise ValueError(f"unknown DyNet build {build!r}; use wheel or native")
    return env


def dynet_imports(timeout: float = 120.0, build: str = "wheel",
                  native: Path | None = None) -> bool:
    """Whether `import dynet` works (from the native build's directory when build is "native"),
    tried in a child so this process stays free of it."""
    check = "import dynet_config, dynet"
    if build == "native":
        native = NATIVE_BUILD if native is None else native
        # dynet.py only imports _dynet, the compiled module: that is the one to check
        check += f"; import _dynet; assert _dynet.__file__.startswith({str(native)!r})"
    try:
        done = subprocess.run([sys.executable, "-c", check], env=build_env(build, native),
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
                 seed: int = 0, tiny: bool = False, sizes: dict | None = None,
                 build: str = "wheel", native: Path | None = None, mem: int | None = None,
                 hand_batched: bool = False) -> None:
        command = [sys.executable, str(SCRIPTS / "dynet_peers.py"), "--serve",
                   "--workload", workload, "--autobatch", str(autobatch), "--words", str(words),
                   "--tags", str(tags), "--seed", str(seed),
                   "--mem", str(mem or USER_MEM.get(workload, DEFAULT_MEM))]
        command += (["--tiny"] if tiny else []) + (["--sizes", json.dumps(sizes)] if sizes else [])
        command += ["--hand-batched"] if hand_batched else []
        self.errors = tempfile.TemporaryFile(mode="w+")  # DyNet's messages, shown on failure
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.errors, text=True, bufsize=1,
                                        env=build_env(build, native))
        self.ready = self._answer()
        native = str(NATIVE_BUILD if native is None else native)
        if build == "native" and not self.ready.get("module", "").startswith(native):
            self.close()
            raise RuntimeError(f"the native DyNet child loaded {self.ready.get('module')}")

    def _answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        code = self.process.wait()
        self.errors.seek(0)
        last = self.errors.read()[-1000:].strip()
        raise RuntimeError(f"the DyNet child stopped (exit code {code}): {last}")

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
        self.errors.close()


def make_peers(workload: str, words: int, tags: int, seed: int,
               tiny: bool = False) -> dict[str, DynetPeer]:
    """Both variants of a paper workload, each in its own child process."""
    return {LABELS[a]: DynetPeer(workload, a, words, tags, seed, tiny) for a in (1, 0)}


def make_user_peers(workload: str, words: int, tags: int, sizes: dict, seed: int,
                    builds: Sequence[str] = ("wheel",), native: Path | None = None,
                    mem: int | None = None, tiny: bool = False) -> dict[str, DynetPeer]:
    """A "-user" workload with autobatching in each DyNet build, each in its own child process,
    labelled "DyNet wheel" and "DyNet native"; for rnnlm-user also rnnlm-batch.py as written,
    batched by hand without autobatching, in each build ("DyNet wheel, hand-batched"). Tiny
    models get a 64 MB arena unless mem says otherwise."""
    mem = mem or (TINY_MEM if tiny else None)
    peers = {f"DyNet {build}": DynetPeer(workload, 1, words, tags, seed, sizes=sizes, build=build,
                                         native=native, mem=mem) for build in builds}
    if workload == "rnnlm-user":
        for build in builds:
            peers[f"DyNet {build}, hand-batched"] = DynetPeer(
                workload, 0, words, tags, seed, sizes=sizes, build=build, native=native, mem=mem,
                hand_batched=True)
    return peers


# -------------------------------------------------------------------------------------------------
# the child's side: DyNet models (dynet is imported by `configure`, after dynet_config.set)


def configure(autobatch: int, seed: int, mem: int = DEFAULT_MEM) -> Any:
    import dynet_config
    dynet_config.set(mem=mem, autobatch=autobatch, random_seed=seed + 1)
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


# the "-user" workloads of scripts/bench_autobatch.py, line by line as in the DyNet benchmark
# suite's dynet-py scripts (parameters turned into expressions with dy.parameter, as there)


class DynetUserTreeNN:
    """dynet-py/treenn.py's TreeLSTMBuilder and loss; a tree arrives in post-order."""

    def __init__(self, dy: Any, words: int, word_dim: int, hidden: int) -> None:
        self.dy = dy
        self.model = model = dy.ParameterCollection()
        self.WS = [model.add_parameters((hidden, word_dim)) for _ in "iou"]
        self.US = [model.add_parameters((hidden, 2 * hidden)) for _ in "iou"]
        self.UFS = [model.add_parameters((hidden, hidden)) for _ in "ff"]
        self.BS = [model.add_parameters(hidden) for _ in "iouf"]
        self.E = model.add_lookup_parameters((words, word_dim))
        self.W_ = model.add_parameters((5, hidden))
        self.trainer = dy.AdamTrainer(model)
        self.trainer.set_clip_threshold(-1.0)
        self.trainer.set_sparse_updates(True)

    def loss(self, example: Sequence) -> Any:
        dy = self.dy
        word_ids, left, right, labels = example
        W = dy.parameter(self.W_)
        hs, cs, losses = [], [], []
        for word, a, b, label in zip(word_ids, left, right, labels):
            if word >= 0:
                emb = self.E[word]
                Wi, Wo, Wu = [dy.parameter(w) for w in self.WS]
                bi, bo, bu, _ = [dy.parameter(b) for b in self.BS]
                i = dy.logistic(dy.affine_transform([bi, Wi, emb]))
                o = dy.logistic(dy.affine_transform([bo, Wo, emb]))
                u = dy.tanh(dy.affine_transform([bu, Wu, emb]))
                c = dy.cmult(i, u)
            else:
                e1, c1, e2, c2 = hs[a], cs[a], hs[b], cs[b]
                Ui, Uo, Uu = [dy.parameter(u) for u in self.US]
                Uf1, Uf2 = [dy.parameter(u) for u in self.UFS]
                bi, bo, bu, bf = [dy.parameter(b) for b in self.BS]
                e = dy.concatenate([e1, e2])
                i = dy.logistic(dy.affine_transform([bi, Ui, e]))
                o = dy.logistic(dy.affine_transform([bi, Uo, e]))
                f1 = dy.logistic(dy.affine_transform([bf, Uf1, e1]))
                f2 = dy.logistic(dy.affine_transform([bf, Uf2, e2]))
                u = dy.tanh(dy.affine_transform([bu, Uu, e]))
                c = dy.cmult(i, u) + dy.cmult(f1, c1) + dy.cmult(f2, c2)
            h = dy.cmult(o, dy.tanh(c))
            hs.append(h)
            cs.append(c)
            losses.append(dy.pickneglogsoftmax(W * h, label))
        return dy.esum(losses)


class DynetUserTagger:
    """dynet-py/bilstm-tagger.py's build_tagging_graph and sent_loss (without renew_cg)."""

    def __init__(self, dy: Any, words: int, tags: int, word_dim: int, hidden: int,
                 mlp_dim: int) -> None:
        self.dy = dy
        self.model = model = dy.ParameterCollection()
        self.trainer = dy.AdamTrainer(model)
        self.trainer.set_clip_threshold(-1.0)
        self.trainer.set_sparse_updates(True)
        self.WORDS_LOOKUP = model.add_lookup_parameters((words, word_dim))
        self.pH = model.add_parameters((mlp_dim, hidden * 2))
        self.pO = model.add_parameters((tags, mlp_dim))
        self.fwdRNN = dy.VanillaLSTMBuilder(1, word_dim, hidden, model)
        self.bwdRNN = dy.VanillaLSTMBuilder(1, word_dim, hidden, model)

    def loss(self, example: Sequence) -> Any:
        dy = self.dy
        words, tags = example
        H = dy.parameter(self.pH)
        O = dy.parameter(self.pO)  # noqa: E741 (the names of bilstm-tagger.py)
        f_init = self.fwdRNN.initial_state()
        b_init = self.bwdRNN.initial_state()
        wembs = [self.WORDS_LOOKUP[w] for w in words]
        fw_exps = f_init.transduce(wembs)
        bw_exps = b_init.transduce(reversed(wembs))
        bi_exps = [dy.concatenate([f, b]) for f, b in zip(fw_exps, reversed(bw_exps))]
        exps = [O * (dy.tanh(H * x)) for x in bi_exps]
        return dy.esum([dy.pickneglogsoftmax(v, t) for v, t in zip(exps, tags)])


class DynetUserRNNLM:
    """dynet-py/rnnlm-batch.py's calc_lm_loss for one sentence (autobatching does the rest)."""

    def __init__(self, dy: Any, words: int, embed: int, hidden: int) -> None:
        self.dy = dy
        self.model = model = dy.ParameterCollection()
        self.trainer = dy.AdamTrainer(model)
        self.trainer.set_clip_threshold(-1.0)
        self.trainer.set_sparse_updates(True)
        self.WORDS_LOOKUP = model.add_lookup_parameters((words, embed))
        self.RNN = dy.VanillaLSTMBuilder(1, embed, hidden, model)
        self.W_sm = model.add_parameters((words, hidden))
        self.b_sm = model.add_parameters(words)
        self.S = 0

    def loss(self, sent: Sequence[int]) -> Any:
        dy = self.dy
        W_exp = dy.parameter(self.W_sm)
        b_exp = dy.parameter(self.b_sm)
        s = self.RNN.initial_state().add_input(self.WORDS_LOOKUP[self.S])
        losses = []
        for wid in sent:
            score = dy.affine_transform([b_exp, W_exp, s.output()])
            losses.append(dy.pickneglogsoftmax(score, wid))
            s = s.add_input(self.WORDS_LOOKUP[wid])
        return dy.esum(losses)


class DynetUserRNNLMBatched(DynetUserRNNLM):
    """dynet-py/rnnlm-batch.py's calc_lm_loss as written: the minibatch (longest sentence first,
    as the script's length-sorted minibatches are) run in lockstep with DyNet's batch dimension
    (lookup_batch, pickneglogsoftmax_batch), the finished sentences' losses masked to 0, without
    autobatching. On the benchmark's random minibatches every sentence is padded to the longest
    one; the script's minibatches, cut from its length-sorted corpus, pad far less."""

    def batch_loss(self, sents: list) -> Any:
        dy = self.dy
        sents = sorted(sents, key=lambda x: -len(x))
        S = self.S
        W_exp = dy.parameter(self.W_sm)
        b_exp = dy.parameter(self.b_sm)
        f_init = self.RNN.initial_state()
        wids = []
        masks = []
        for i in range(len(sents[0])):
            wids.append([(sent[i] if len(sent) > i else S) for sent in sents])
            mask = [(1 if len(sent) > i else 0) for sent in sents]
            masks.append(mask)
        init_ids = [S] * len(sents)
        s = f_init.add_input(dy.lookup_batch(self.WORDS_LOOKUP, init_ids))
        losses = []
        for wid, mask in zip(wids, masks):
            score = dy.affine_transform([b_exp, W_exp, s.output()])
            loss = dy.pickneglogsoftmax_batch(score, wid)
            if mask[-1] != 1:
                mask_expr = dy.inputVector(mask)
                mask_expr = dy.reshape(mask_expr, (1,), len(sents))
                loss = loss * mask_expr
            losses.append(loss)
            wemb = dy.lookup_batch(self.WORDS_LOOKUP, wid)
            s = s.add_input(wemb)
        return dy.sum_batches(dy.esum(losses))


class DynetUserAttention:
    """The attention-user encoder-decoder of scripts/bench_autobatch.py, as in DyNet's attention
    example (colwise_add, softmax over the transposed scores, input_mat * weights)."""

    def __init__(self, dy: Any, words: int, tags: int, word_dim: int, hidden: int,
                 attention: int, tag_dim: int) -> None:
        self.dy = dy
        self.model = model = dy.ParameterCollection()
        self.src_lookup = model.add_lookup_parameters((words, word_dim))
        self.tgt_lookup = model.add_lookup_parameters((tags + 1, tag_dim))
        self.enc_fwd = dy.VanillaLSTMBuilder(1, word_dim, hidden, model)
        self.enc_bwd = dy.VanillaLSTMBuilder(1, word_dim, hidden, model)
        self.dec = dy.VanillaLSTMBuilder(1, 2 * hidden + tag_dim, 2 * hidden, model)
        self.attention_w1 = model.add_parameters((attention, 2 * hidden))
        self.attention_w2 = model.add_parameters((attention, 2 * hidden))
        self.attention_v = model.add_parameters((1, attention))
        self.decoder_w = model.add_parameters((tags + 1, 2 * hidden))
        self.decoder_b = model.add_parameters(tags + 1)
        self.eos = tags
        self.state = 2 * hidden
        self.trainer = dy.AdamTrainer(model)
        self.trainer.set_clip_threshold(-1.0)
        self.trainer.set_sparse_updates(True)

    def attend(self, input_mat: Any, w1dt: Any, state: Any) -> Any:
        dy = self.dy
        w2 = dy.parameter(self.attention_w2)
        v = dy.parameter(self.attention_v)
        w2dt = w2 * state.output()
        unnormalized = dy.transpose(v * dy.tanh(dy.colwise_add(w1dt, w2dt)))
        att_weights = dy.softmax(unnormalized)
        return input_mat * att_weights

    def loss(self, example: Sequence) -> Any:
        dy = self.dy
        words, tags = example
        embedded = [self.src_lookup[w] for w in words]
        fwd = self.enc_fwd.initial_state().transduce(embedded)
        bwd = self.enc_bwd.initial_state().transduce(reversed(embedded))
        encoded = [dy.concatenate([f, b]) for f, b in zip(fwd, reversed(bwd))]
        w = dy.parameter(self.decoder_w)
        b = dy.parameter(self.decoder_b)
        w1 = dy.parameter(self.attention_w1)
        input_mat = dy.concatenate_cols(encoded)
        w1dt = w1 * input_mat
        last = self.tgt_lookup[self.eos]
        s = self.dec.initial_state().add_input(dy.concatenate([dy.vecInput(self.state), last]))
        losses = []
        for tag in list(tags) + [self.eos]:
            vector = dy.concatenate([self.attend(input_mat, w1dt, s), last])
            s = s.add_input(vector)
            out = dy.affine_transform([b, w, s.output()])
            losses.append(dy.pickneglogsoftmax(out, tag))
            last = self.tgt_lookup[tag]
        return dy.esum(losses)


def make_model(dy: Any, workload: str, words: int, tags: int, tiny: bool,
               sizes: dict | None = None, hand_batched: bool = False) -> Any:
    if workload in USER_WORKLOADS:
        kind = {"treenn-user": DynetUserTreeNN, "tagger-user": DynetUserTagger,
                "rnnlm-user": DynetUserRNNLMBatched if hand_batched else DynetUserRNNLM,
                "attention-user": DynetUserAttention}[workload]
        if workload in ("treenn-user", "rnnlm-user"):
            return kind(dy, words, **sizes)
        return kind(dy, words, tags, **sizes)
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
        if hasattr(model, "batch_loss"):  # batched by hand: one graph per minibatch
            dy.renew_cg()
            total = model.batch_loss(batch)
            total.value()
            total.backward()
        elif autobatch:
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
    dy = configure(args.autobatch, args.seed, args.mem)
    model = make_model(dy, args.workload, args.words, args.tags, args.tiny,
                       json.loads(args.sizes) if args.sizes else None, args.hand_batched)
    print(json.dumps({"ready": True, "dynet": getattr(dy, "__version__", "?"),
                      "module": sys.modules["_dynet"].__file__}), flush=True)
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
    dy = configure(args.autobatch, args.seed, args.mem)
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
    parser.add_argument("--workload", choices=WORKLOADS + USER_WORKLOADS, required=True)
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
    parser.add_argument("--sizes", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hand-batched", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mem", type=int, default=DEFAULT_MEM,
                        help="DyNet's arena in MB (--dynet-mem; default %(default)s)")
    args = parser.parse_args(argv)
    return serve(args) if args.serve else standalone(args)


if __name__ == "__main__":
    sys.exit(main())
