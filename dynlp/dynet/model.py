"""DyNet's parameters: `ParameterCollection` (`Model`), `Parameters`, `LookupParameters`, the
initializer classes, and saving and loading: dynlp's `.npz` format (never pickled), and DyNet's
own text model files for reading. Values live in dynlp `Parameter`s, one root dynlp collection
per DyNet model tree; names are DyNet's (`/_0`, `/emb`, `/sub/_1`).
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

from .. import functions as F
from .. import params as P
from .expr import STATE, Expression, _graph, _is_number

DYNET_FORMAT = "dynlp-dynet"


# -- initializers ---------------------------------------------------------------------------------
class PyInitializer:
    """An initializer: `make(shape, is_lookup)` draws an array of that DyNet shape."""

    def make(self, shape: tuple[int, ...], is_lookup: bool) -> np.ndarray:
        raise NotImplementedError


class GlorotInitializer(PyInitializer):
    """Uniform in +-gain * sqrt(6 / sum of dims); a lookup entry: +-sqrt(3 / its size)."""

    def __init__(self, is_lookup: bool = False, gain: float = 1.0) -> None:
        self.is_lookup = is_lookup
        self.gain = float(gain)

    def make(self, shape, is_lookup):
        if is_lookup or self.is_lookup:
            bound = np.sqrt(3.0 / int(np.prod(shape[1:] or (1,))))
        else:
            bound = self.gain * np.sqrt(6.0 / sum(shape))
        return STATE.rng.uniform(-bound, bound, shape)


class UniformInitializer(PyInitializer):
    def __init__(self, scale: float) -> None:
        self.scale = float(scale)

    def make(self, shape, is_lookup):
        return STATE.rng.uniform(-self.scale, self.scale, shape)


class NormalInitializer(PyInitializer):
    """Normal with mean and variance var (DyNet's arguments)."""

    def __init__(self, mean: float = 0.0, var: float = 1.0) -> None:
        self.mean = float(mean)
        self.var = float(var)

    def make(self, shape, is_lookup):
        return STATE.rng.normal(self.mean, np.sqrt(self.var), shape)


class ConstInitializer(PyInitializer):
    def __init__(self, c: float) -> None:
        self.c = float(c)

    def make(self, shape, is_lookup):
        return np.full(shape, self.c)


class IdentityInitializer(PyInitializer):
    def make(self, shape, is_lookup):
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"the identity initializer needs a square matrix, got {shape}")
        return np.eye(shape[0])


class SaxeInitializer(PyInitializer):
    """A random orthogonal matrix times scale."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    def make(self, shape, is_lookup):
        a = STATE.rng.normal(size=(shape[0], int(np.prod(shape[1:] or (1,)))))
        q, r = np.linalg.qr(a if a.shape[0] >= a.shape[1] else a.T)
        q = q * np.sign(np.diag(r))
        q = q if a.shape[0] >= a.shape[1] else q.T
        return self.scale * q.reshape(shape)


class LeCunUniformInitializer(PyInitializer):
    def __init__(self, fan_in: float, scale: float = 1.0) -> None:
        self.bound = float(scale) * np.sqrt(3.0 / float(fan_in))

    def make(self, shape, is_lookup):
        return STATE.rng.uniform(-self.bound, self.bound, shape)


class NumpyInitializer(PyInitializer):
    def __init__(self, array: Any) -> None:
        self.array = np.asarray(array, dtype=np.float64)

    def make(self, shape, is_lookup):
        if self.array.shape != tuple(shape):
            raise ValueError(f"initial array of shape {self.array.shape}, expected {shape}")
        return self.array.copy()


class FromVectorInitializer(PyInitializer):
    """Values in column-major order."""

    def __init__(self, vector: Sequence[float]) -> None:
        self.vector = np.asarray(vector, dtype=np.float64)

    def make(self, shape, is_lookup):
        return self.vector.reshape(shape, order="F")


def _initializer(shape: tuple[int, ...], init: Any, is_lookup: bool, scale: float, mean: float,
                 std: float) -> PyInitializer:
    if init is None or (isinstance(init, str) and init == "glorot"):
        return GlorotInitializer(is_lookup)
    if isinstance(init, PyInitializer):
        return init
    if isinstance(init, np.ndarray):
        return NumpyInitializer(init)
    if _is_number(init):
        return ConstInitializer(float(init))
    if init == "uniform":
        return UniformInitializer(scale)
    if init == "normal":
        return NormalInitializer(mean, std * std)
    if init == "identity":
        return IdentityInitializer()
    if init == "he":
        fan_in = shape[-1] if len(shape) > 1 else shape[0]
        return NormalInitializer(0.0, 2.0 / fan_in)
    if init == "saxe":
        return SaxeInitializer(scale)
    raise ValueError(f"unknown initializer {init!r}")


# -- parameters -----------------------------------------------------------------------------------
class Parameters(P.ExpressionOperators):
    """A DyNet parameter; usable in expressions directly (`W * x`) or through `expr()`."""

    is_lookup = False
    __array_priority__ = 1000

    def __init__(self, p: P.Parameter, shape: tuple[int, ...]) -> None:
        self.p = p
        self._shape = shape
        self._expr: tuple | None = None  # (graph, this parameter's expression in it)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name()!r}, {self._shape})"

    def name(self) -> str:
        return self.p.name

    def shape(self) -> tuple[int, ...]:
        return self._shape

    def dim(self) -> tuple[tuple[int, ...], int]:
        return self._shape, 1

    def expr(self, update: bool = True) -> Expression:
        g = _graph()
        cached = self._expr
        if cached is not None and cached[0] is g and update:
            return cached[1]
        e = g.parameter(self.p)
        out = Expression((e if update else F.nobackprop(e),))
        if update:
            self._expr = (g, out)
        return out

    # a parameter stands for its expression in the current graph (DyNet 2.1)
    def value(self, recalculate: bool = False) -> Any:
        return self.expr().value(recalculate)

    def npvalue(self, recalculate: bool = False) -> np.ndarray:
        return self.expr().npvalue(recalculate)

    def scalar_value(self, recalculate: bool = False) -> float:
        return self.expr().scalar_value(recalculate)

    def vec_value(self, recalculate: bool = False) -> list[float]:
        return self.expr().vec_value(recalculate)

    def forward(self, recalculate: bool = False) -> None:
        self.expr().forward(recalculate)

    def backward(self, full: bool = False) -> None:
        self.expr().backward(full)

    def gradient(self) -> np.ndarray:
        return self.expr().gradient()

    def as_array(self) -> np.ndarray:
        return self.p.value.astype(np.float64).reshape(self._shape)

    def grad_as_array(self) -> np.ndarray:
        return self.p.grad_as_array().astype(np.float64).reshape(self._shape)

    def set_value(self, value: Any) -> None:
        value = np.asarray(value, dtype=np.float64)
        if value.size != int(np.prod(self._shape)):
            raise ValueError(f"{self.name()}: {value.shape} values for shape {self._shape}")
        self.p.set_value(value.reshape(self.p.shape))

    def _store(self, value: np.ndarray) -> None:
        self.p.value[...] = value.reshape(self.p.shape)

    def zero(self) -> None:
        self.p.value[...] = 0.0

    def scale(self, s: float) -> None:
        self.p.value *= float(s)

    def scale_gradient(self, s: float) -> None:
        self.p.grad *= float(s)

    def clip_inplace(self, left: float, right: float) -> None:
        np.clip(self.p.value, left, right, out=self.p.value)

    def set_updated(self, b: bool) -> None:
        self.p.set_updated(bool(b))

    def is_updated(self) -> bool:
        return bool(self.p.updated)

    def save(self, fname: str, key: str = "", append: bool = False) -> None:
        _save_entries(fname, [(key or self.name(), self)], append)

    def populate(self, fname: str, key: str = "") -> None:
        entries = {name: (kind, value) for name, kind, value in read_entries(fname)}
        name = key or self.name()
        if name not in entries:
            raise P.ModelFileError(f"{fname}: no parameter {name!r}")
        _assign(self, entries[name][1], fname, name)

    # an expression's operators (P.ExpressionOperators), on this parameter's node in the
    # current graph
    def __neg__(self):
        return -self.expr()

    def __getitem__(self, index):
        return self.expr()[index]


class _ColumnBlock(Parameters):
    """Columns [start, end) of a dynlp parameter that several DyNet parameters share (a
    builder's Wx and Wh, stored side by side so that a fused step reads one weight)."""

    def __init__(self, p: P.Parameter, start: int, end: int, name: str) -> None:
        super().__init__(p, (p.shape[0], end - start))
        self.start, self.end = start, end
        self._name = name

    def name(self) -> str:
        return self._name

    def expr(self, update: bool = True) -> Expression:
        e = F.pick_range(_graph().parameter(self.p), self.start, self.end, 1)
        return Expression([e if update else F.nobackprop(e)])

    def as_array(self) -> np.ndarray:
        return self.p.value[:, self.start:self.end].astype(np.float64)

    def grad_as_array(self) -> np.ndarray:
        return self.p.grad_as_array()[:, self.start:self.end].astype(np.float64)

    def _store(self, value: np.ndarray) -> None:
        self.p.value[:, self.start:self.end] = value.reshape(self._shape)

    def set_value(self, value: Any) -> None:
        value = np.asarray(value, dtype=np.float64)
        if value.size != int(np.prod(self._shape)):
            raise ValueError(f"{self.name()}: {value.shape} values for shape {self._shape}")
        self._store(value)

    def zero(self) -> None:
        self.p.value[:, self.start:self.end] = 0.0

    def scale(self, s: float) -> None:
        self.p.value[:, self.start:self.end] *= float(s)

    def scale_gradient(self, s: float) -> None:
        self.p.grad[:, self.start:self.end] *= float(s)

    def clip_inplace(self, left: float, right: float) -> None:
        block = self.p.value[:, self.start:self.end]
        np.clip(block, left, right, out=block)


class LookupParameters(Parameters):
    """A table of `shape[0]` entries, each of shape `shape[1:]`; `E[i]` looks entry i up."""

    is_lookup = True

    def expr(self, update: bool = True) -> Expression:
        raise TypeError("a lookup table is used through lookup / E[i], not as one expression")

    def __getitem__(self, index: int) -> Expression:
        return lookup(self, index)

    def batch(self, indices: Sequence[int], update: bool = True) -> Expression:
        return lookup_batch(self, indices, update)

    def row(self, index: int, update: bool = True) -> "Any":
        return lookup(self, index, update)

    def init_row(self, i: int, row: Any) -> None:
        self.p.value[int(i)] = np.asarray(row, dtype=np.float64).reshape(self.p.shape[1:])

    def init_from_array(self, arr: Any) -> None:
        self.set_value(arr)

    def row_as_array(self, i: int) -> np.ndarray:
        return self.as_array()[int(i)]

    def rows_as_array(self, rows: Sequence[int]) -> np.ndarray:
        return self.as_array()[list(rows)]

    def row_grad_as_array(self, i: int) -> np.ndarray:
        return self.grad_as_array()[int(i)]

    def rows_grad_as_array(self, rows: Sequence[int]) -> np.ndarray:
        return self.grad_as_array()[list(rows)]

    def scale_gradient(self, s: float) -> None:
        grad = self.p.grad_as_array() * float(s)
        self.p.clear_grad()
        self.p.accumulate_grad(grad)


def _entry(table: LookupParameters, e: Any) -> Any:
    shape = table._shape[1:]
    return e if len(shape) <= 1 else F.reshape(e, shape)


def lookup(p: LookupParameters, index: int = 0, update: bool = True) -> Expression:
    index = int(index)
    if not 0 <= index < p._shape[0]:
        raise IndexError(f"lookup: index {index} out of range for {p.name()} {p._shape}")
    _graph()
    e = _entry(p, F.lookup(p.p, index))
    return Expression([e if update else F.nobackprop(e)])


def lookup_batch(p: LookupParameters, indices: Sequence[int], update: bool = True) -> Expression:
    return Expression([lookup(p, i, update).es[0] for i in indices])


def const_lookup(p: LookupParameters, index: int) -> Expression:
    return lookup(p, index, update=False)


def parameter(*ps: Parameters, update: bool = True) -> Any:
    """The expression of a parameter (a list for several)."""
    exprs = [p.expr(update) for p in ps]
    return exprs[0] if len(exprs) == 1 else exprs


def const_parameter(*ps: Parameters) -> Any:
    return parameter(*ps, update=False)


# -- collections ----------------------------------------------------------------------------------
class ParameterCollection:
    """Owns parameters, lookup tables and subcollections (DyNet's `Model`)."""

    def __init__(self, parent: "ParameterCollection | None" = None, name: str = "") -> None:
        self._parent = parent
        self._store = P.ParameterCollection(dtype=np.float32) if parent is None \
            else parent._store
        self._prefix = "/" if parent is None else f"{parent._prefix}{name}/"
        self._entries: list[Parameters] = []     # own ones and those of subcollections
        self._counts: dict[str, int] = {}
        self.weight_decay = 0.0

    def name(self) -> str:
        return self._prefix

    def _fullname(self, name: str) -> str:
        base = name or "_"
        k = self._counts.get(base, 0)
        self._counts[base] = k + 1
        if not name:
            return f"{self._prefix}_{k}"
        return f"{self._prefix}{name}" if k == 0 else f"{self._prefix}{name}_{k}"

    def _register(self, entry: Parameters) -> Parameters:
        c: ParameterCollection | None = self
        while c is not None:
            c._entries.append(entry)
            c = c._parent
        return entry

    def add_subcollection(self, name: str | None = None) -> "ParameterCollection":
        base = name or "_"
        k = self._counts.get(base, 0)
        self._counts[base] = k + 1
        full = (f"_{k}" if not name else name if k == 0 else f"{name}_{k}")
        return ParameterCollection(self, full)

    def add_parameters(self, dim: Any, init: Any = None, name: str = "", device: str = "",
                       scale: float = 1.0, mean: float = 0.0, std: float = 1.0) -> Parameters:
        shape = _shape(dim)
        value = _initializer(shape, init, False, scale, mean, std).make(shape, False)
        p = self._store.add_parameters(shape, init=np.asarray(value, np.float32).reshape(shape),
                                       name=self._fullname(name))
        return self._register(Parameters(p, shape))

    def add_lookup_parameters(self, dim: Any, init: Any = None, name: str = "",
                              device: str = "", scale: float = 1.0, mean: float = 0.0,
                              std: float = 1.0) -> LookupParameters:
        shape = _shape(dim)
        if len(shape) < 2:
            raise ValueError(f"a lookup table is (entries, dims...), got {shape}")
        value = _initializer(shape, init, True, scale, mean, std).make(shape, True)
        flat = np.asarray(value, np.float32).reshape(shape[0], -1)
        p = self._store.add_lookup_parameters(flat.shape, init=flat, name=self._fullname(name))
        return self._register(LookupParameters(p, shape))

    def _add_column_blocks(self, rows: int, widths: Sequence[int]) -> list[Parameters]:
        """DyNet parameters (rows, w) for each w of widths, Glorot-initialized each, stored
        side by side in one dynlp parameter."""
        names = [self._fullname("") for _ in widths]
        blocks = [GlorotInitializer().make((rows, w), False) for w in widths]
        value = np.asarray(np.concatenate(blocks, axis=1), np.float32)
        p = self._store.add_parameters(value.shape, init=value, name=names[0])
        out, start = [], 0
        for name, w in zip(names, widths):
            out.append(self._register(_ColumnBlock(p, start, start + w, name)))
            start += w
        return out

    def parameters_from_numpy(self, array: Any, name: str = "", device: str = "") -> Parameters:
        array = np.asarray(array, dtype=np.float64)
        return self.add_parameters(array.shape, init=NumpyInitializer(array), name=name)

    def lookup_parameters_from_numpy(self, array: Any, name: str = "",
                                     device: str = "") -> LookupParameters:
        array = np.asarray(array, dtype=np.float64)
        return self.add_lookup_parameters(array.shape, init=NumpyInitializer(array), name=name)

    def parameters_list(self) -> list[Parameters]:
        return [e for e in self._entries if not e.is_lookup]

    def lookup_parameters_list(self) -> list[LookupParameters]:
        return [e for e in self._entries if e.is_lookup]  # type: ignore[misc]

    def parameter_count(self) -> int:
        return sum(int(np.prod(e.shape())) for e in self._entries)

    def set_weight_decay_lambda(self, lam: float) -> None:
        self.weight_decay = float(lam)

    def get_weight_decay_lambda(self) -> float:
        return self.weight_decay

    # what dynlp's trainers read
    def parameters(self) -> Iterable[P.Parameter]:
        return list({id(e.p): e.p for e in self._entries}.values())

    def clear_grads(self) -> None:
        for e in self._entries:
            e.p.clear_grad()

    # -- files -----------------------------------------------------------------------------------
    def _ordered(self) -> list[Parameters]:
        """DyNet's file order: parameters, then lookup tables."""
        return self.parameters_list() + self.lookup_parameters_list()  # type: ignore[operator]

    def save(self, fname: str, name: str = "", append: bool = False) -> None:
        """Write every parameter to fname (dynlp's `.npz` format); with `name`, the names in
        the file start with that prefix instead of this collection's."""
        entries = []
        for e in self._ordered():
            full = e.name()
            if name:
                full = name.rstrip("/") + "/" + full[len(self._prefix):]
            entries.append((full, e))
        _save_entries(fname, entries, append)

    def populate(self, fname: str, key: str = "") -> None:
        """Load values saved by `save` (or by DyNet, as a text model file) in order: the
        file's parameters whose names start with `key` (all by default), then its tables."""
        stored = [(n, k, v) for n, k, v in read_entries(fname) if n.startswith(key)]
        for kind in ("dense", "lookup"):
            mine = [e for e in self._ordered() if (e.is_lookup == (kind == "lookup"))]
            theirs = [(n, v) for n, k, v in stored if k == kind]
            if len(mine) != len(theirs):
                raise P.ModelFileError(f"{fname}: {len(theirs)} {kind} parameters under "
                                       f"{key!r} in the file, {len(mine)} in the model")
            for e, (n, v) in zip(mine, theirs):
                _assign(e, v, fname, n)


Model = ParameterCollection


def _shape(dim: Any) -> tuple[int, ...]:
    if isinstance(dim, (int, np.integer)):
        return (int(dim),)
    return tuple(int(d) for d in dim)


def _assign(e: Parameters, value: np.ndarray, fname: str, name: str) -> None:
    if tuple(value.shape) != tuple(e.shape()):
        raise P.ModelFileError(f"{fname}: {name!r} has shape {value.shape} in the file, "
                               f"{e.shape()} in the model")
    e._store(value)


def _save_entries(fname: str, entries: list[tuple[str, Parameters]], append: bool) -> None:
    old = read_entries(fname) if append and os.path.exists(fname) else []
    records = [(n, k, v) for n, k, v in old] + [
        (n, "lookup" if e.is_lookup else "dense", e.as_array()) for n, e in entries]
    _write(fname, records, {})


def _write(fname: str, records: list[tuple[str, str, np.ndarray]], extra: dict) -> None:
    header = {"format": P.FORMAT, "version": P.FORMAT_VERSION, "kind": DYNET_FORMAT,
              "parameters": [{"name": n, "kind": k, "shape": list(v.shape), "dtype": "float32"}
                             for n, k, v in records], "metadata": extra}
    P.write_npz(fname, header, {f"p{i}": np.asarray(v, np.float32)
                                for i, (_, _, v) in enumerate(records)})


def _read_npz(fname: str) -> tuple[dict, list[tuple[str, str, np.ndarray]]]:
    header, arrays = P._read(fname)
    records = []
    for i, s in enumerate(header["parameters"]):
        value = np.asarray(arrays[f"p{i}"], dtype=np.float64)
        if s["kind"] == "lookup" and len(s["shape"]) != value.ndim:
            value = value.reshape(s["shape"])
        records.append((s["name"], s["kind"], value.reshape(s["shape"])))
    return header, records


def read_entries(fname: str) -> list[tuple[str, str, np.ndarray]]:
    """(name, "dense" or "lookup", value in DyNet's shape) for each parameter in a file saved
    by `save` or by DyNet itself (its text format)."""
    if not os.path.isfile(fname):
        raise P.ModelFileError(f"{fname}: no such model file")
    with open(fname, "rb") as f:
        start = f.read(1)
    if start == b"#":
        return read_dynet_text(fname)
    return _read_npz(fname)[1]


def read_dynet_text(fname: str) -> list[tuple[str, str, np.ndarray]]:
    """DyNet's text model files: `#Parameter# name {d1,d2} bytes GRAD` lines, each followed
    by the values in column-major order (and the gradient, for FULL_GRAD)."""
    out = []
    with open(fname, encoding="utf-8") as f:
        lines = iter(f)
        for line in lines:
            if not line.startswith("#"):
                continue
            kind_tag, name, dims, _, grad = line.split()
            dims = tuple(int(d) for d in dims.strip("{}").split(",") if d)
            values = np.array(next(lines).split(), dtype=np.float64)
            if grad == "FULL_GRAD":
                next(lines)
            if kind_tag == "#LookupParameter#":  # {entry dims..., entries}
                value = np.moveaxis(values.reshape(dims, order="F"), -1, 0)
                out.append((name, "lookup", value))
            else:
                out.append((name, "dense", values.reshape(dims, order="F")))
    return out


# -- saving objects: dy.save / dy.load ------------------------------------------------------------
def _spec_of(obj: Any) -> dict:
    if isinstance(obj, LookupParameters):
        return {"type": "lookup", "shape": list(obj.shape())}
    if isinstance(obj, Parameters):
        return {"type": "parameters", "shape": list(obj.shape())}
    cls = type(obj)
    if not hasattr(obj, "param_collection") or not hasattr(cls, "from_spec"):
        raise TypeError(f"cannot save a {cls.__name__}: it needs param_collection() and "
                        "from_spec(spec, model), as in DyNet")
    return {"type": "object", "class": f"{cls.__module__}:{cls.__qualname__}",
            "spec": _jsonable(obj.spec)}


def _jsonable(spec: Any) -> Any:
    try:
        json.dumps(spec)
    except TypeError:
        raise TypeError("an object's spec must be made of numbers, strings, lists and dicts "
                        "to be saved (dynlp does not pickle)") from None
    return spec


def _arrays_of(obj: Any) -> list[tuple[str, np.ndarray]]:
    if isinstance(obj, Parameters):
        return [("lookup" if obj.is_lookup else "dense", obj.as_array())]
    pc = obj.param_collection()
    return [("lookup" if e.is_lookup else "dense", e.as_array()) for e in pc._ordered()]


def save(basename: str, objs: Iterable[Any]) -> None:
    """Save parameters, lookup tables, builders and objects that follow DyNet's protocol
    (`param_collection()`, `spec`, static `from_spec(spec, model)`) to one file."""
    specs, records = [], []
    for obj in objs:
        specs.append(_spec_of(obj))
        arrays = _arrays_of(obj)
        specs[-1]["count"] = len(arrays)
        records += [(f"/{len(specs) - 1}/{i}", kind, v) for i, (kind, v) in enumerate(arrays)]
    _write(basename, records, {"objects": specs})


def load_generator(basename: str, m: ParameterCollection) -> Iterable[Any]:
    header, records = _read_npz(basename)
    specs = header["metadata"].get("objects")
    if specs is None:
        raise P.ModelFileError(f"{basename}: not a file written by dynet.save")
    at = 0
    for spec in specs:
        values = [v for _, _, v in records[at:at + spec["count"]]]
        at += spec["count"]
        if spec["type"] == "parameters":
            obj = m.add_parameters(tuple(spec["shape"]))
            targets = [obj]
        elif spec["type"] == "lookup":
            obj = m.add_lookup_parameters(tuple(spec["shape"]))
            targets = [obj]
        else:
            module, _, qualname = spec["class"].partition(":")
            cls: Any = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
            obj = cls.from_spec(_tuples(spec["spec"]), m)
            targets = obj.param_collection()._ordered()
        if len(targets) != len(values):
            raise P.ModelFileError(f"{basename}: {len(values)} arrays stored for a "
                                   f"{spec['type']} that has {len(targets)}")
        for e, v in zip(targets, values):
            _assign(e, v, basename, e.name())
        yield obj


def load(basename: str, m: ParameterCollection) -> list[Any]:
    return list(load_generator(basename, m))


def _tuples(spec: Any) -> Any:
    """JSON gives lists where the spec had tuples; builders' specs are tuples of numbers."""
    return tuple(spec) if isinstance(spec, list) else spec
