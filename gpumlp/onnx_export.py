"""ONNX export: a model, or a pipeline with its preprocessing, as one ONNX graph (``gpumlp.to_onnx``).

    p.to_onnx("model.onnx")                  # or gpumlp.to_onnx(p, "model.onnx"), m.to_onnx(...) for an MLP
    s = onnxruntime.InferenceSession("model.onnx")
    label, proba = s.run(None, {"X": X.astype(np.float32)})

The graph, built with ``onnx.helper`` alone (no converter library), computes what ``predict`` and
``predict_proba`` do, in the export's dtype, from one input ``X`` [N, d] (N symbolic):

    a = X                                     a Pipeline's preprocessing first:
    a = Where(IsNaN(a), mean, a)                  its imputer (NaN -> the training means)
    a = (a - offset) / scale                      its feature scaling ("standard", "max"; nothing for "none")
    z = Gemm(a, W, b, transB=1), a = φ(z)     per hidden layer; W kept (out, in), as ours
    o = Gemm(a, W, b, transB=1)               the output layer
    cross_entropy         label = ArgMax(o) [N] (a Pipeline's classes: Gather(classes, ·): int64, double,
                          bool or string, as the classes are); probabilities = Softmax(o) [N, q]
    binary_cross_entropy  p = Sigmoid(o); label = Cast(p > ½, int64) [N, q] ([N] for one unit);
                          probabilities = p, or [1 − p, p] [N, 2] for one logistic unit
    squared               predictions = o (· scale + offset: a Pipeline's target scaling undone)
    poisson               predictions = Exp(o)                     ([N] for one output, else [N, q])

φ per activation (``functions.ACTIVATIONS``: our formulas are the ones that count):

    relu, sigmoid, tanh   Relu, Sigmoid, Tanh (onnxruntime has float32 and float64 kernels, accurate to
                          a few ulps)
    identity              no node
    leaky_relu            float32: LeakyRelu(alpha=0.01); float64: Where(z > 0, z, z · 0.01) (onnxruntime
                          has no float64 LeakyRelu)
    softplus              float32: Softplus; float64: max(z, 0) + log1p(e^−|z|), ours, with log1p composed
                          exactly (no float64 Softplus in onnxruntime, and ONNX has no Log1p)
    gelu                  float32 at opset >= 20: Gelu(approximate="tanh"); otherwise composed as ours,
                          ½z(1 + tanh(√(2/π)(z + 0.044715 z³))): before opset 20 there is no Gelu, and
                          onnxruntime's float64 Gelu is off by ~4e-10 relative, beyond the 1e-10 we hold it to

The default opset is 20, the first with Gelu: onnxruntime has loaded it since 1.17 (early 2024), so
every release of the last two years does; the file's IR version is the oldest that opset allows (9),
since a newer IR version is what older onnxruntime releases refuse. Any opset from 13 (Softmax over one
axis, Squeeze's axes as an input) to the newest the installed onnx knows is accepted.

Metadata (``metadata_props``, strings; lists as JSON): gpumlp_version, loss, sizes, activations, and
when known classes, feature_names, label_name, data_digest (the digest of the training data that
``gpumlp train`` records).

Every value written into the graph is checked finite in the export's dtype (a float64 model's
weights or a scaling beyond float32's range cannot become a float32 file that computes infinities).
``onnx`` is optional (``pip install "gpumlp[onnx]"``): it is imported when an export runs, never by
``import gpumlp``.
"""
from __future__ import annotations

import json
import operator

import numpy as np

from . import functions as F
from . import io
from ._version import __version__

__all__ = ["export", "DEFAULT_OPSET", "MIN_OPSET"]

DEFAULT_OPSET = 20  # the first with Gelu(approximate="tanh"); onnxruntime >= 1.17 loads it
MIN_OPSET = 13  # Softmax over one axis, Squeeze's axes as an input
GELU_OPSET = 20
EXTRA = 'pip install "gpumlp[onnx]"'


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx package, which is not installed: {EXTRA} "
                          f"(or pip install onnx)") from exc
    return onnx


def check_dtype(dtype):
    """The export's dtype: "float32" (the default, None) or "float64"."""
    if dtype is None:
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dt.name!r}")
    return dt


def check_opset(opset, newest):
    """The opset to write: DEFAULT_OPSET (None), or an integer from MIN_OPSET to ``newest``."""
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an integer, got {opset!r}")
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be from {MIN_OPSET} to {newest} (the newest this onnx knows), got {opset}")
    return int(opset)


class _Graph:
    """Nodes and initializers of one graph in one dtype; each method adds a node and returns its output."""

    def __init__(self, onnx, dtype, opset):
        self.onnx, self.h, self.dtype, self.opset = onnx, onnx.helper, dtype, opset
        self.elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
        self.nodes, self.initializers, self._names = [], [], {}

    def _name(self, base):
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def const(self, name, values, cast=True):
        """An initializer of ``values``: real numbers in the graph's dtype (unless not ``cast``), checked
        finite there; integers, booleans and text as they are."""
        a = np.asarray(values)
        if a.dtype.kind == "f":
            with np.errstate(over="ignore"):
                cast_values = a.astype(self.dtype) if cast else a
            if not np.isfinite(cast_values).all():
                beyond = np.isfinite(a).all()
                raise ValueError(f"{name} has values that are not finite in {cast_values.dtype.name}"
                                 + (" (beyond its range: export with dtype='float64')" if beyond else ""))
            a = cast_values
        name = self._name(name)
        if a.dtype.kind in "US":
            text = [s.encode("utf-8") for s in a.ravel()] if a.dtype.kind == "U" else list(a.ravel())
            t = self.h.make_tensor(name, self.onnx.TensorProto.STRING, a.shape, text)
        else:
            t = self.onnx.numpy_helper.from_array(np.ascontiguousarray(a), name)
        self.initializers.append(t)
        return name

    def scalar(self, value, name="c"):
        return self.const(name, np.asarray(value, dtype=self.dtype).reshape(()))

    def op(self, op_type, *inputs, name=None, out=None, **attrs):
        base = name or op_type
        out = out or self._name(base)
        self.nodes.append(self.h.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


# ----------------------------------------------------------------------------------- activations
def _relu(g, z, name):
    return g.op("Relu", z, name=name)


def _sigmoid(g, z, name):
    return g.op("Sigmoid", z, name=name)


def _tanh(g, z, name):
    return g.op("Tanh", z, name=name)


def _identity(g, z, name):
    return z


def _leaky_relu(g, z, name):
    if g.dtype == np.float32:
        return g.op("LeakyRelu", z, name=name, alpha=F.LEAKY_SLOPE)
    positive = g.op("Greater", z, g.scalar(0.0, "zero"), name=f"{name}/positive")
    return g.op("Where", positive, z, g.op("Mul", z, g.scalar(F.LEAKY_SLOPE, "leaky_slope")), name=name)


def _log1p(g, u, name):
    """log(1 + u) to full precision from Log alone: with w = 1 + u rounded, log(w)·u/(w − 1), or u where
    w == 1 (Goldberg, "What every computer scientist should know about floating-point arithmetic")."""
    one = g.scalar(1.0, "one")
    w = g.op("Add", one, u, name=f"{name}/w")
    ratio = g.op("Div", g.op("Mul", g.op("Log", w), u), g.op("Sub", w, one), name=f"{name}/ratio")
    return g.op("Where", g.op("Equal", w, one), u, ratio, name=name)


def _softplus(g, z, name):
    if g.dtype == np.float32:
        return g.op("Softplus", z, name=name)
    tail = _log1p(g, g.op("Exp", g.op("Neg", g.op("Abs", z))), f"{name}/log1p")
    return g.op("Add", g.op("Max", z, g.scalar(0.0, "zero")), tail, name=name)


def _gelu(g, z, name):
    if g.dtype == np.float32 and g.opset >= GELU_OPSET:
        return g.op("Gelu", z, name=name, approximate="tanh")
    # ours: t = tanh(K (z + C z³)), ½ z (1 + t), in this order
    z3 = g.op("Mul", z, g.op("Mul", z, z))
    inner = g.op("Mul", g.scalar(F.GELU_K, "gelu_k"), g.op("Add", z, g.op("Mul", g.scalar(F.GELU_C, "gelu_c"), z3)))
    t = g.op("Tanh", inner, name=f"{name}/tanh")
    return g.op("Mul", g.op("Mul", g.scalar(0.5, "half"), z), g.op("Add", g.scalar(1.0, "one"), t), name=name)


ACTIVATIONS = {"relu": _relu, "leaky_relu": _leaky_relu, "sigmoid": _sigmoid, "tanh": _tanh, "gelu": _gelu,
               "softplus": _softplus, "identity": _identity}
assert set(ACTIVATIONS) == set(F.ACTIVATIONS), "every activation needs its ONNX form"


# ----------------------------------------------------------------------------------- the graph
def _preprocess(g, x, pre):
    """The pipeline's imputer and feature scaling on the input."""
    if pre is None:
        return x
    if pre.imputer is not None:
        x = g.op("Where", g.op("IsNaN", x), g.const("imputer_mean", pre.imputer.mean), x, name="imputed")
    s = pre.scaler
    if s is not None and s.kind != "none":
        if np.any(s.offset != 0):
            x = g.op("Sub", x, g.const("scaler_offset", s.offset), name="centred")
        x = g.op("Div", x, g.const("scaler_scale", s.scale), name="scaled")
    return x


def _layers(g, a, mlp):
    """The MLP's forward chain: o [N, q]."""
    weights, biases = mlp.get_weights(), mlp.get_biases()
    n = len(weights)
    for l, W in enumerate(weights):
        inputs = [a, g.const(f"W{l + 1}", W)] + ([g.const(f"b{l + 1}", biases[l])] if biases is not None else [])
        a = g.op("Gemm", *inputs, name="o" if l == n - 1 else f"z{l + 1}", transB=1)
        if l < n - 1:
            act = mlp.activations[l]
            a = ACTIVATIONS[act](g, a, f"h{l + 1}")
    return a


def _squeezed(g, a, q, out):
    """[N, 1] -> [N] for one output, else ``a`` as it is, under the output's name."""
    if q == 1:
        return g.op("Squeeze", a, g.const("axis_1", np.array([1], np.int64)), out=out)
    return g.op("Identity", a, out=out)


def _label_type(classes):
    """(ONNX element type name, the classes as they go into the graph) for a pipeline's labels."""
    kind = classes.dtype.kind
    if kind in "US":
        return "STRING", classes
    if kind == "b":
        return "BOOL", classes
    if kind in "iu":
        if kind == "u" and classes.max() > np.iinfo(np.int64).max:
            raise ValueError("classes beyond int64's range cannot be ONNX labels")
        return "INT64", classes.astype(np.int64)
    if kind == "f":  # exact class values, whatever the export's dtype
        return "DOUBLE", classes.astype(np.float64)
    raise TypeError(f"classes of dtype {classes.dtype} cannot be ONNX labels")


def _head(g, o, mlp, pre):
    """The outputs: [(name, element type name, shape)], nodes added."""
    q, loss = mlp.sizes[-1], mlp.loss
    elem = "FLOAT" if g.dtype == np.float32 else "DOUBLE"
    rows = ["N"] if q == 1 else ["N", q]
    if loss == "cross_entropy":
        classes = None if pre is None else pre.classes
        if classes is None:
            g.op("ArgMax", o, out="label", axis=1, keepdims=0)
            label_elem = "INT64"
        else:
            label_elem, values = _label_type(np.asarray(classes))
            g.op("Gather", g.const("classes", values, cast=False),
                 g.op("ArgMax", o, name="index", axis=1, keepdims=0), out="label", axis=0)
        g.op("Softmax", o, out="probabilities", axis=1)
        return [("label", label_elem, ["N"]), ("probabilities", elem, ["N", q])]
    if loss == "binary_cross_entropy":
        p = g.op("Sigmoid", o, name="p")
        above = g.op("Cast", g.op("Greater", p, g.scalar(0.5, "half")), name="indicators", to=g.onnx.TensorProto.INT64)
        _squeezed(g, above, q, "label")
        if q == 1:
            g.op("Concat", g.op("Sub", g.scalar(1.0, "one"), p, name="p0"), p, out="probabilities", axis=1)
        else:
            g.op("Identity", p, out="probabilities")
        return [("label", "INT64", rows), ("probabilities", elem, ["N", max(q, 2)])]
    target = None if pre is None else pre.target_scaler
    if loss == "poisson":
        o = g.op("Exp", o, name="mean")
    if target is not None and target.kind != "none":
        o = g.op("Add", g.op("Mul", o, g.const("target_scale", target.scale)), g.const("target_offset", target.offset),
                 name="unscaled")
    _squeezed(g, o, q, "predictions")
    return [("predictions", elem, rows)]


def _check_exportable(mlp, pre):
    if mlp.loss not in ("cross_entropy", "binary_cross_entropy", "squared", "poisson"):
        raise ValueError(f"no ONNX export for loss {mlp.loss!r}")
    for a in mlp.activations:
        if a not in ACTIVATIONS:
            raise ValueError(f"no ONNX form for activation {a!r}")
    target = None if pre is None else pre.target_scaler
    if target is not None and target.kind != "none" and mlp.loss != "squared":
        # Pipeline.predict applies it to the outputs o themselves, which no ONNX output could mean
        raise ValueError(f"the pipeline scales the targets of a {mlp.loss} model; the ONNX export undoes a "
                         f"target scaling only for loss='squared'")


def _metadata(mlp, pre):
    meta = {"gpumlp_version": __version__, "loss": mlp.loss, "sizes": json.dumps(list(mlp.sizes)),
            "activations": json.dumps(list(mlp.activations))}
    if mlp.loss == "cross_entropy":
        classes = None if pre is None else pre.classes
        meta["classes"] = json.dumps(list(range(mlp.sizes[-1])) if classes is None else np.asarray(classes).tolist())
    if pre is not None and pre.feature_names is not None:
        meta["feature_names"] = json.dumps(list(pre.feature_names))
    if pre is not None and pre.label_name is not None:
        meta["label_name"] = pre.label_name
    training = mlp.training_config_
    if isinstance(training, dict) and isinstance(training.get("data_digest"), str):
        meta["data_digest"] = training["data_digest"]
    return meta


def export(mlp, preprocessing=None, path=None, *, dtype=None, opset=None):
    """The ``onnx.ModelProto`` of ``mlp`` (a ``gpumlp.MLP``, read through its public attributes) behind
    ``preprocessing`` (a ``gpumlp.state.Preprocessing``, or None for the bare model), written to ``path``
    when given (atomically, as model files are). What ``MLP.to_onnx`` and ``Pipeline.to_onnx`` call."""
    dt = check_dtype(dtype)
    onnx = _onnx()
    opset = check_opset(opset, onnx.defs.onnx_opset_version())
    _check_exportable(mlp, preprocessing)
    g = _Graph(onnx, dt, opset)
    x = _preprocess(g, "X", preprocessing)
    outputs = _head(g, _layers(g, x, mlp), mlp, preprocessing)
    h, T = onnx.helper, onnx.TensorProto
    graph = h.make_graph(g.nodes, "gpumlp_" + "_".join(map(str, mlp.sizes)),
                         [h.make_tensor_value_info("X", g.elem, ["N", mlp.sizes[0]])],
                         [h.make_tensor_value_info(n, getattr(T, e), shape) for n, e, shape in outputs],
                         initializer=g.initializers)
    opsets = [h.make_opsetid("", opset)]
    model = h.make_model(graph, opset_imports=opsets, ir_version=h.find_min_ir_version_for(opsets),
                         producer_name="gpumlp", producer_version=__version__,
                         doc_string=f"gpumlp {'-'.join(map(str, mlp.sizes))} MLP ({', '.join(mlp.activations) or 'linear'}; "
                                    f"{mlp.loss}), {dt.name}" + (", with its preprocessing" if preprocessing else ""))
    h.set_model_props(model, _metadata(mlp, preprocessing))
    if model.ByteSize() > 2**31 - 1:
        raise ValueError(f"the model's ONNX file would be {model.ByteSize() / 2**30:.1f} GiB, beyond ONNX's 2 GiB "
                         f"limit for one file")
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        data = model.SerializeToString()
        io.atomic_write(path, operator.methodcaller("write", data))
    return model
