"""Parameters: `ParameterCollection`, `Parameter`, `LookupParameter`, initializers, save/load.

Values and gradients live here; graphs see a parameter through one leaf node per graph, and the
engine hands gradients back through `accumulate_grad` / `accumulate_sparse`. Saved as `.npz`
with names, shapes and a format version; loading never unpickles. Must not import trainers.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import graph
from .data.files import atomic_write, input_problem
from .seeding import generator

FORMAT = "dynlp-parameters"
_new = object.__new__
FORMAT_VERSION = 1


# the header must be small; arrays may exceed the size their header gives by their npy header
MAX_HEADER_BYTES = 1 << 28
NPY_HEADER_SLACK = 1 << 16
FLOAT_DTYPES = ("float16", "float32", "float64")


class ModelFileError(ValueError):
    """A model file is missing, damaged, from another format version, or of another structure."""


class ModelSizeError(ValueError):
    """Adding a parameter would take a collection past its `max_bytes`."""


class ExpressionOperators:
    """Arithmetic on an object that stands for an expression: each operator delegates to
    `self.expr()`, its expression in the current graph (a parameter's node)."""

    def expr(self) -> Any:
        raise NotImplementedError

    def __add__(self, o):
        return self.expr() + o

    def __radd__(self, o):
        return o + self.expr()

    def __sub__(self, o):
        return self.expr() - o

    def __rsub__(self, o):
        return o - self.expr()

    def __mul__(self, o):
        return self.expr() * o

    def __rmul__(self, o):
        return o * self.expr()

    def __truediv__(self, o):
        return self.expr() / o


class Parameter(ExpressionOperators):
    """A trainable array. Usable wherever an expression is: `W @ x + b`.

    `W.value` is the live array itself (an attribute, not a method: trainers update it in
    place); `W.npvalue()` and `W.as_array()` return a copy, `W.grad_as_array()` the gradient.
    """

    is_lookup = False

    def __init__(self, name: str, value: np.ndarray) -> None:
        self.name = name
        self.value = value
        self.grad = np.zeros_like(value)
        self.updated = True  # False freezes the parameter (trainers skip it)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, shape={self.shape})"

    # -- graph side ------------------------------------------------------------------------------
    def to_expression(self, g: "graph.Graph | None" = None) -> "graph.Expression":
        """This parameter's node in graph g (the current graph by default)."""
        return (g if g is not None else graph.current_graph()).parameter(self)

    def expr(self) -> "graph.Expression":
        return self.to_expression()

    def accumulate_grad(self, dense: np.ndarray) -> None:
        self.grad += dense

    # -- DyNet-style accessors ---------------------------------------------------------------------
    def as_array(self) -> np.ndarray:
        return self.value.copy()

    def npvalue(self) -> np.ndarray:
        """A copy of the value, as `Expression.npvalue()` gives."""
        return self.value.copy()

    def grad_as_array(self) -> np.ndarray:
        return self.grad.copy()

    def set_value(self, value: Any) -> None:
        value = np.asarray(value, dtype=self.value.dtype)
        if value.shape != self.value.shape:
            raise ValueError(f"{self.name}: value of shape {value.shape}, expected {self.shape}")
        self.value[...] = value

    def clear_grad(self) -> None:
        self.grad[...] = 0.0

    def set_updated(self, updated: bool) -> None:
        self.updated = updated

    def __matmul__(self, o):
        return graph.matmul(self, o)

    def __neg__(self):
        return -self.expr()

    __array_priority__ = 1000


class LookupParameter(Parameter):
    """A table of rows (vocabulary, dim); `E[i]` looks up row i with a sparse gradient."""

    is_lookup = True

    def __init__(self, name: str, value: np.ndarray) -> None:
        super().__init__(name, value)
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self._reduced = True  # the chunks list holds at most one chunk of unique rows
        self._dense_used = False

    def __getitem__(self, index: Any) -> "graph.Expression":
        """`E[i]`: row i (dim,); `E[[i, j, ...]]`: those rows as a matrix (k, dim), each row
        a lookup with a sparse gradient."""
        if isinstance(index, (list, tuple, np.ndarray)):
            return lookup_rows(self, index)
        return lookup(self, index)

    def accumulate_grad(self, dense: np.ndarray) -> None:
        self._dense_used = True
        self.grad += dense

    def accumulate_sparse(self, indices: np.ndarray, values: np.ndarray) -> None:
        self._chunks.append((indices, values))
        self._reduced = False

    def sparse_grad(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, gradient rows): the touched rows, each once, with their summed gradients."""
        self._fold_chunks()
        if self._dense_used:
            rows = np.flatnonzero(np.any(self.grad != 0, axis=1))
            return rows, self.grad[rows]
        if not self._chunks:
            return np.zeros(0, dtype=np.int64), np.zeros((0,) + self.shape[1:], self.grad.dtype)
        return self._chunks[0]

    def _fold_chunks(self) -> None:
        """Merge gradient chunks by sort-and-reduce (faster than np.add.at)."""
        if not self._chunks or (self._reduced and not self._dense_used):
            return
        idx = np.concatenate([c[0] for c in self._chunks])
        vals = np.concatenate([c[1] for c in self._chunks]).astype(self.grad.dtype, copy=False)
        order = np.argsort(idx, kind="stable")
        idx, vals = idx[order], vals[order]
        starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
        rows, sums = idx[starts], np.add.reduceat(vals, starts, axis=0)
        if self._dense_used:
            self.grad[rows] += sums
            self._chunks = []
        else:
            self._chunks = [(rows, sums)]
        self._reduced = True

    def grad_as_array(self) -> np.ndarray:
        self._fold_chunks()
        out = self.grad.copy()
        if not self._dense_used:
            rows, vals = self.sparse_grad()
            out[rows] += vals
        return out

    def clear_grad(self) -> None:
        if self._dense_used:
            self.grad[...] = 0.0
        self._chunks = []
        self._reduced = True
        self._dense_used = False

    def to_expression(self, g: "graph.Graph | None" = None) -> "graph.Expression":
        return (g if g is not None else graph.current_graph()).parameter(self)


def lookup(table: LookupParameter, index: int) -> "graph.Expression":
    """Row `index` of a lookup table, (dim,); its gradient touches only that row. A deferred
    `Row`: the cells that read rows themselves take it without a lookup node."""
    g = graph._current
    if g is None or not g.alive:
        g = graph.current_graph()
    index = int(index)
    if not 0 <= index < len(table.value):  # (its rows)
        raise IndexError(f"lookup: index {index} out of range for {table.name} {table.shape}")
    node = g.param_nodes.get(id(table))  # (`g.param_node(table)`, the short way)
    if node is None:
        node = g.parameter(table).i
    row = _new(graph.Row)  # (as `graph.Row(g, node, index)`, without its calls)
    row.g = g
    row.table = node
    row.index = index
    row._node = -1
    row._fused = False
    row.counted = False
    return row


def lookup_rows(table: LookupParameter, indices: Any) -> "graph.Expression":
    """Rows `indices` of a lookup table as a matrix (k, dim): each a lookup (sparse gradient),
    joined as the rows of one matrix."""
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    if not indices:
        raise IndexError(f"lookup: no indices for {table.name}")
    rows = [graph.apply("reshape", lookup(table, i), attrs=(("shape", (1, table.shape[1])),))
            for i in indices]
    return rows[0] if len(rows) == 1 else graph.apply("concatenate", *rows)


# -------------------------------------------------------------------------------------------------
# Initializers


def initialize(shape: tuple[int, ...], init: Any, rng: np.random.Generator, dtype: Any,
               is_lookup: bool = False, scale: float | None = None) -> np.ndarray:
    """glorot | uniform | normal | zeros | ones | a number | an array."""
    if isinstance(init, np.ndarray) or isinstance(init, (list, tuple)):
        value = np.array(init, dtype=dtype)
        if value.shape != shape:
            raise ValueError(f"initial array of shape {value.shape}, expected {shape}")
        return value
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return np.full(shape, init, dtype=dtype)
    if init == "zeros":
        return np.zeros(shape, dtype=dtype)
    if init == "ones":
        return np.ones(shape, dtype=dtype)
    if init == "glorot":
        if is_lookup:
            bound = np.sqrt(3.0 / shape[-1])
        else:
            fan = sum(shape) if len(shape) > 1 else shape[0]
            bound = np.sqrt(6.0 / fan)
        return (rng.uniform(-bound, bound, size=shape) * (scale or 1.0)).astype(dtype)
    if init == "uniform":
        bound = 0.1 if scale is None else scale
        return rng.uniform(-bound, bound, size=shape).astype(dtype)
    if init == "normal":
        return rng.normal(0.0, 1.0 if scale is None else scale, size=shape).astype(dtype)
    raise ValueError(f"unknown initializer {init!r}: use glorot, uniform, normal, zeros, ones, "
                     "a number or an array")


def _shape(shape: Any) -> tuple[int, ...]:
    dims = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ValueError(f"a parameter shape has no negative sizes, got {dims}")
    return dims


def _gigabytes(size: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


class ParameterCollection:
    """Owns parameters and lookup tables. seed: for initializers (None: from the global seed,
    `dn.seed`, when set); dtype: float32 by default; max_bytes: adding a parameter that would
    take the values past this size raises ModelSizeError before anything is allocated (None:
    no limit)."""

    def __init__(self, seed: int | None = None, dtype: Any = np.float32, *,
                 max_bytes: int | None = None,
                 _root: "ParameterCollection | None" = None, _prefix: str = "") -> None:
        self._root = _root or self
        self._prefix = _prefix
        if _root is None:
            self.rng = generator(seed)  # without a seed: the global one's (dn.seed), if set
            self.dtype = np.dtype(dtype)
            self._params: dict[str, Parameter] = {}
            self.max_bytes = max_bytes
            self.bytes = 0  # of all values

    def _reserve(self, name: str, shape: tuple[int, ...]) -> None:
        root = self._root
        size = math.prod(shape) * root.dtype.itemsize
        if root.max_bytes is not None and root.bytes + size > root.max_bytes:
            raise ModelSizeError(f"parameter {name!r} {shape} would bring the parameters to "
                                 f"{_gigabytes(root.bytes + size)}, more than the "
                                 f"{_gigabytes(root.max_bytes)} allowed")
        root.bytes += size

    def add_subcollection(self, name: str) -> "ParameterCollection":
        """A view whose parameter names start with `name/`; parameters live in the root."""
        return ParameterCollection(_root=self._root, _prefix=f"{self._prefix}{name}/")

    def _name(self, name: str | None, kind: str) -> str:
        root = self._root
        if name is None:
            name = f"{kind}_{len(root._params)}"
        full = self._prefix + name
        if full in root._params:
            raise ValueError(f"a parameter named {full!r} exists already")
        return full

    def add_parameters(self, shape: Any, init: Any = "glorot", name: str | None = None,
                       scale: float | None = None) -> Parameter:
        """A new parameter of `shape`, initialized by `init` (see `initialize`). `name` must
        be new in the collection (ValueError otherwise); builders, by contrast, take a free
        subcollection name as DyNet does (a second `MLP(pc, ..., name="mlp")` lives under
        `mlp_1/`), so that the same builder can be made twice."""
        root = self._root
        shape = _shape(shape)
        name = self._name(name, "param")
        self._reserve(name, shape)
        p = Parameter(name, initialize(shape, init, root.rng, root.dtype, scale=scale))
        root._params[p.name] = p
        return p

    def add_lookup_parameters(self, shape: Any, init: Any = "glorot", name: str | None = None,
                              scale: float | None = None) -> LookupParameter:
        root = self._root
        shape = _shape(shape)
        if len(shape) != 2:
            raise ValueError(f"a lookup table is (vocabulary, dim), got {shape}")
        name = self._name(name, "lookup")
        self._reserve(name, shape)
        p = LookupParameter(name, initialize(shape, init, root.rng, root.dtype, True, scale))
        root._params[p.name] = p
        return p

    def parameters(self) -> Iterator[Parameter]:
        """All parameters and lookup tables under this collection, in creation order (what is
        saved and trained); `parameters_list()` holds the dense ones only and
        `lookup_parameters_list()` the tables, as in DyNet."""
        return (p for n, p in self._root._params.items() if n.startswith(self._prefix))

    def parameters_list(self) -> list[Parameter]:
        """The dense parameters, without the lookup tables (DyNet's meaning)."""
        return [p for p in self.parameters() if not p.is_lookup]

    def lookup_parameters_list(self) -> list[LookupParameter]:
        return [p for p in self.parameters() if p.is_lookup]  # type: ignore[misc]

    def __getitem__(self, name: str) -> Parameter:
        return self._root._params[self._prefix + name]

    def clear_grads(self) -> None:
        for p in self.parameters():
            p.clear_grad()

    # -- save and load ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write every parameter to an `.npz` with names, shapes, kinds and the format version.

        `metadata` (JSON-serializable) is stored beside them; read it with `read_metadata`.
        The file is written to a temporary name and moved into place.
        """
        params = list(self.parameters())
        header = {
            "format": FORMAT, "version": FORMAT_VERSION,
            "parameters": [{"name": p.name, "shape": list(p.shape),
                            "kind": "lookup" if p.is_lookup else "dense",
                            "dtype": str(p.value.dtype)} for p in params],
            "metadata": metadata or {},
        }
        write_npz(path, header, {f"p{i}": p.value for i, p in enumerate(params)})

    def populate(self, path: str | os.PathLike) -> dict:
        """Load values saved by `save` into this collection of the same structure.

        Checks the format, version, names, kinds and shapes, and every array against the
        header (present, of the stated float dtype and shape, finite) before changing any
        value; returns the stored metadata. ModelFileError names the file and the problem.
        """
        header, npz = _read(path)
        with npz:
            values = _checked_arrays(path, header, npz, list(self.parameters()))
        for p, value in zip(self.parameters(), values):
            p.value[...] = value
        return header["metadata"]


def _checked_arrays(path: Any, header: dict, npz: Any, params: list[Parameter]) -> list:
    stored = header["parameters"]
    names = [s["name"] for s in stored]
    ours = [p.name for p in params]
    if names != ours:
        missing = sorted(set(ours) - set(names))
        extra = sorted(set(names) - set(ours))
        raise ModelFileError(f"{path}: the file's parameters do not match the model "
                             f"(missing from the file: {missing[:5]}, not in the model: "
                             f"{extra[:5]})")
    values = []
    for i, (p, s) in enumerate(zip(params, stored)):
        kind = "lookup" if p.is_lookup else "dense"
        if tuple(s["shape"]) != p.shape or s["kind"] != kind:
            raise ModelFileError(f"{path}: parameter {p.name!r} is {s['kind']} "
                                 f"{tuple(s['shape'])} in the file, {kind} {p.shape} "
                                 "in the model")
        key = f"p{i}"
        where = f"{path}: parameter {p.name!r} (array {key})"
        if key not in npz.files:
            raise ModelFileError(f"{where} is missing from the file")
        dtype = np.dtype(s["dtype"])
        size = npz.zip.getinfo(key + ".npy").file_size
        if size > math.prod(p.shape) * dtype.itemsize + NPY_HEADER_SLACK:
            raise ModelFileError(f"{where} holds {size} bytes, more than its header's "
                                 f"{s['dtype']} {p.shape}")
        try:
            value = npz[key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            raise ModelFileError(f"{where} cannot be read (not a plain numeric array)") from None
        if value.dtype != dtype:
            raise ModelFileError(f"{where} is stored as {value.dtype}, the header says "
                                 f"{s['dtype']}")
        if value.shape != p.shape:
            raise ModelFileError(f"{where} has shape {value.shape}, the header says {p.shape}")
        bad = value.size - int(np.count_nonzero(np.isfinite(value)))
        if bad:
            raise ModelFileError(f"{where} holds {bad} NaN or infinite values")
        values.append(value)
    return values


def write_npz(path: str | os.PathLike, header: dict, arrays: dict[str, np.ndarray]) -> None:
    """Arrays plus a JSON header (stored as bytes, so loading never unpickles), written to a
    temporary file in the same folder and moved into place: a crash, a full disk or a signal
    leave the old file or the new one, and no temporary file."""
    arrays = dict(arrays, header=np.frombuffer(json.dumps(header).encode("utf-8"),
                                               dtype=np.uint8))
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def open_npz(path: str | os.PathLike, what: str = "dynlp model file") -> tuple[dict, Any]:
    """(JSON header, open NpzFile) of an npz written by `write_npz`, reading no other array;
    ModelFileError (naming path) for anything else. Never unpickles."""
    path = Path(path)
    problem = input_problem(path)
    if problem == "no such file":
        raise ModelFileError(f"{path}: no such model file")
    if problem is not None:
        raise ModelFileError(f"{path}: {problem}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a {what} (not an npz archive)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise ModelFileError(f"{path}: not a {what} (a damaged npz archive)") from None
    try:
        if "header" not in npz.files:
            raise ModelFileError(f"{path}: not a {what} (no header)")
        if npz.zip.getinfo("header.npy").file_size > MAX_HEADER_BYTES:
            raise ModelFileError(f"{path}: not a {what} (a header of absurd size)")
        raw = npz["header"]
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ModelFileError(f"{path}: not a {what} (a header of the wrong kind)")
        header = json.loads(raw.tobytes().decode("utf-8"))
    except ModelFileError:
        npz.close()
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, RecursionError):
        # numpy's own messages may advise allow_pickle: never pass them on
        npz.close()
        raise ModelFileError(f"{path}: not a {what} (its header cannot be read)") from None
    if not isinstance(header, dict):
        npz.close()
        raise ModelFileError(f"{path}: not a {what} (the header is not a JSON object)")
    return header, npz


def _read(path: str | os.PathLike) -> tuple[dict, Any]:
    header, npz = open_npz(path)
    try:
        _check_header(path, header)
    except ModelFileError:
        npz.close()
        raise
    return header, npz


def _check_header(path: Any, header: dict) -> None:
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a dynlp model file")
    if header.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: model file format version {header.get('version')!r}, "
                             f"this dynlp reads version {FORMAT_VERSION}")
    stored = header.get("parameters")
    if not isinstance(stored, list):
        raise ModelFileError(f"{path}: header field 'parameters' is not a list")
    names = set()
    for i, s in enumerate(stored):
        where = f"{path}: header entry parameters[{i}]"
        if not isinstance(s, dict):
            raise ModelFileError(f"{where} is not an object")
        if not isinstance(s.get("name"), str) or s["name"] in names:
            raise ModelFileError(f"{where}: 'name' is not a string, or a repeated one")
        names.add(s["name"])
        shape = s.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ModelFileError(f"{where}: 'shape' is not a list of non-negative integers")
        if s.get("kind") not in ("dense", "lookup"):
            raise ModelFileError(f"{where}: 'kind' is not 'dense' or 'lookup'")
        if s.get("dtype") not in FLOAT_DTYPES:
            raise ModelFileError(f"{where}: 'dtype' is not one of {', '.join(FLOAT_DTYPES)}")
    if not isinstance(header.get("metadata"), dict):
        raise ModelFileError(f"{path}: header field 'metadata' is not an object")


def read_header(path: str | os.PathLike) -> dict:
    """The checked JSON header of a model file: format, version, parameters (name, shape, kind,
    dtype of each) and metadata. ModelFileError for anything else."""
    header, npz = _read(path)
    npz.close()
    return header


def stored_elements(header: dict) -> int:
    """How many numbers the parameters of a model file's header hold."""
    return sum(math.prod(s["shape"]) for s in header["parameters"])


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata dict stored with `ParameterCollection.save`, checking the format version."""
    return read_header(path)["metadata"]
