"""A gradient check for people who learn backpropagation: every gradient of ``MLP.backward`` against
central finite differences of J, in float64, on either backend.

    result = gpumlp.check_gradients(model, X[:16], y[:16])
    print(result)                      # one line per tensor: shape, entries compared, relative error, ok
    result.passed                      # every tensor within the threshold
    result["∂J/∂W1"].rel_error         # by the lecture's name (the graph's: gpumlp.graph)

What is compared. The gradients of ``MLP.backward`` by the lecture's names, in the order it computes
them: ∂J/∂o, then per layer from the output down ∂J/∂W (λW included), ∂J/∂b (with biases) and for the
hidden layers ∂J/∂h and ∂J/∂z; then the training step's ∂J/∂W and ∂J/∂b
(``Step.objective_gradient``: the backend's ``Ops``, on a GPU cuBLAS and our kernels). Each entry v of
a tensor gives the central difference (J(v + ε) − J(v − ε)) / 2ε. For a parameter, v is changed in the
model and J recomputed from x; for an intermediate value (o, h, z), J is recomputed from that node of
the graph onwards with the reference functions (``objective_from``), everything before it held fixed:
that is what ∂J/∂h means.

Precision. The check runs on a float64 copy of the model on the model's backend (a float32 model's
weights are exact in float64); the model itself is not touched. With ε = 1e-6 the truncation error is
O(ε²) and the rounding error O(1e-16/ε) = 1e-10, so the default threshold 1e-6 on the relative error
‖fd − g‖ / ‖g‖ leaves a wide margin and still catches any wrong term (a missing λW or a wrong φ′ is
off by O(1)). The error is taken over the tensor as a whole, as the project's tests do
(tests/test_gradients.py uses this module): entry by entry, an entry whose gradient is ~0 would divide
rounding noise by nearly nothing.

Two limits, reported in the result rather than hidden: relu and leaky_relu have a kink at 0, where a
central difference straddles two slopes (pre-activations within 100ε of 0 are counted), and a
gradient smaller than the rounding noise of J/ε (a saturated, well-fitted batch) cannot be resolved.

Cost: two evaluations of J per entry compared. ``max_entries`` (default 1000 per tensor) compares a
seeded sample of the entries of larger tensors; give a batch of tens of rows, not a data set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import functions as F
from .backend import array_module
from .graph import gradient_name, lecture_name
from .mlp import MLP
from .pipeline import Pipeline

__all__ = ["EPS", "THRESHOLD", "GradientCheck", "TensorCheck", "central_differences", "check_gradients",
           "objective_from", "relative_error"]

EPS = 1e-6  # the step of the central differences (see the module docstring)
THRESHOLD = 1e-6  # the largest relative error that passes
KINKS = ("relu", "leaky_relu")  # activations with a kink at 0
UNIT_ROUNDOFF = 2.0**-53


def relative_error(fd, analytic):
    """‖fd − analytic‖ / ‖analytic‖ (Frobenius norms; the denominator at least 1e-300)."""
    xp = array_module(analytic)
    return float(xp.linalg.norm(fd - analytic)) / max(float(xp.linalg.norm(analytic)), 1e-300)


def central_differences(f, v, entries=None, eps=EPS):
    """(f() at v + ε·e_i − f() at v − ε·e_i) / 2ε for every entry i of the array ``v`` (changed in place
    and restored exactly): an array shaped like v; or for the index tuples in ``entries`` only, a
    vector in their order."""
    every = entries is None
    entries = list(np.ndindex(v.shape)) if every else entries
    out = np.empty(len(entries))
    for k, i in enumerate(entries):
        old = v[i].copy()
        v[i] = old + eps
        up = f()
        v[i] = old - eps
        down = f()
        v[i] = old
        out[k] = (up - down) / (2 * eps)
    return out.reshape(v.shape) if every else out


def objective_from(model, fw, kind, layer, value):
    """J = L + s recomputed with node (kind, layer) of the graph replaced by ``value``, from there on
    with the reference functions: kind "o"; "h" or "z" of hidden layer ``layer`` (0-based); "x" for the
    whole forward pass with the model's current parameters. L uses fw's targets and sample weights."""
    W, b = model.weights, model.biases
    n_hidden = model.n_layers - 1

    def linear(a, l):
        return F.linear_forward(a, W[l], b[l] if model.bias else None)

    if kind == "o":
        o = value
    else:
        if kind == "x":
            a, start = value, 0
        elif kind == "z":
            a, start = F.ACTIVATIONS[model.activations[layer]].forward(value), layer + 1
        elif kind == "h":
            a, start = value, layer + 1
        else:
            raise ValueError(f"kind must be 'o', 'h', 'z' or 'x', got {kind!r}")
        for l in range(start, n_hidden):
            a = F.ACTIVATIONS[model.activations[l]].forward(linear(a, l))
        o = linear(a, n_hidden)
    return float(F.LOSSES[model.loss].forward(o, fw.y, fw.sample_weight)) + F.regulariser(W, model.weight_decay)


# ------------------------------------------------------------------------------ the result
@dataclass(frozen=True)
class TensorCheck:
    """One gradient compared: its lecture name, who computed it (``source``), its shape, how many
    entries were compared, the relative error over them, the entry with the largest difference
    (index, finite difference, analytic value), and whether it passed the threshold."""

    name: str
    source: str
    shape: tuple
    n_checked: int
    rel_error: float
    worst_index: tuple
    worst_fd: float
    worst_analytic: float
    passed: bool
    unresolved: bool = False  # the gradient is below the rounding noise of central differences

    def to_dict(self):
        """JSON-ready (a non-finite number as None)."""
        return {"name": self.name, "source": self.source, "shape": list(self.shape), "n_checked": self.n_checked,
                "size": math.prod(self.shape), "rel_error": _finite(self.rel_error), "passed": self.passed,
                "worst_index": list(self.worst_index), "worst_fd": _finite(self.worst_fd),
                "worst_analytic": _finite(self.worst_analytic), "unresolved": self.unresolved}


@dataclass(frozen=True)
class GradientCheck:
    """The outcome of ``check_gradients``: ``tensors`` (``TensorCheck``, in backward order), the
    ``threshold`` and ``eps`` used, the model and batch described, J, and ``notes`` (kinks, resolution)."""

    tensors: tuple
    threshold: float
    eps: float
    model: str
    backend: str
    n_samples: int
    J: float
    notes: tuple = ()

    @property
    def passed(self):
        return all(t.passed for t in self.tensors)

    @property
    def max_rel_error(self):
        return max(t.rel_error for t in self.tensors)

    @property
    def failed(self):
        return tuple(t for t in self.tensors if not t.passed)

    def __getitem__(self, name):
        """The backward pass's check of the tensor ``name`` ("∂J/∂W1"); "name [step]" for the step's."""
        for t in self.tensors:
            if (t.name if t.source == "MLP.backward" else f"{t.name} [step]") == name:
                return t
        raise KeyError(f"{name!r}: the checked gradients are {', '.join(self.names)}")

    @property
    def names(self):
        return tuple(t.name if t.source == "MLP.backward" else f"{t.name} [step]" for t in self.tensors)

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self):
        return len(self.tensors)

    def to_dict(self):
        """JSON-ready (a non-finite number as None)."""
        return {"passed": self.passed, "max_rel_error": _finite(self.max_rel_error), "threshold": self.threshold,
                "eps": self.eps, "model": self.model, "backend": self.backend, "n_samples": self.n_samples,
                "J": _finite(self.J), "notes": list(self.notes), "tensors": [t.to_dict() for t in self.tensors]}

    def __str__(self):
        head = [(f"gradient check of {self.model} on {self.n_samples} examples ({self.backend}, float64 copy; "
                 f"J = {self.J:.6g})"),
                f"central differences with ε = {self.eps:g}; a gradient passes when ‖fd − g‖/‖g‖ ≤ {self.threshold:g}",
                ""]
        rows = [("gradient", "computed by", "shape", "entries", "rel. error", "")]
        for t in self.tensors:
            size = math.prod(t.shape)
            checked = f"{t.n_checked}" if t.n_checked == size else f"{t.n_checked} of {size}"
            verdict = "ok" if t.passed else "FAILED"
            if t.unresolved:
                verdict += " (below resolution)"
            rows.append((t.name, t.source, str(t.shape), checked, f"{t.rel_error:.2e}", verdict))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(head + lines + ["", self.summary] + [f"note: {n}" for n in self.notes])

    @property
    def summary(self):
        """The verdict in one line (the worst entry named when a gradient disagrees)."""
        bad = self.failed
        if not bad:
            return (f"all {len(self.tensors)} gradients agree with central differences (largest relative error "
                    f"{self.max_rel_error:.2e})")
        worst = max(bad, key=lambda t: t.rel_error)
        return (f"{len(bad)} of {len(self.tensors)} gradients disagree with central differences: "
                f"{', '.join(dict.fromkeys(t.name for t in bad))}; the worst entry of {worst.name} is "
                f"{list(worst.worst_index)}: finite difference {worst.worst_fd:.6g}, {worst.source} "
                f"{worst.worst_analytic:.6g}")


# ------------------------------------------------------------------------------ the check
def check_gradients(model, X, y, sample_weight=None, *, threshold=THRESHOLD, eps=EPS, max_entries=1000,
                    seed=0, step=True):
    """Compare every gradient of ``model.backward`` (and, with ``step``, of the training step) with
    central finite differences of J on the batch (X, y[, sample_weight]); see the module docstring.

    model : a ``gpumlp.MLP`` (checked through a float64 copy on its backend; never changed), or a
        ``gpumlp.Pipeline`` (its MLP, on X and y as the pipeline preprocesses them: raw features, labels
        as saved).
    threshold : the largest relative error ‖fd − g‖/‖g‖ that passes (default 1e-6).
    eps : the step ε of the central differences (default 1e-6).
    max_entries : entries compared per tensor at most (a seeded sample of larger ones); None: all.
    seed : seeds that sample.
    Returns a ``GradientCheck``; print it for the table.
    """
    mlp, X, y = _unwrap(model, X, y)
    threshold = _positive(threshold, "threshold")
    eps = _positive(eps, "eps")
    if eps >= 1:
        raise ValueError(f"eps must be small (a finite-difference step, e.g. 1e-6), got {eps!r}")
    if max_entries is not None and (isinstance(max_entries, bool) or not isinstance(max_entries, (int, np.integer))
                                    or max_entries < 1):
        raise ValueError(f"max_entries must be a positive integer or None, got {max_entries!r}")
    m = _float64_copy(mlp)
    fw = m.forward(X, y, sample_weight)  # checks X, y and sample_weight, naming them
    g = m.backward(fw)
    rng = np.random.default_rng(seed)
    checks, param_fd = [], {}

    def compare(name, source, analytic, fd, entries):
        checks.append(_tensor_check(name, source, analytic, fd, entries, threshold, fw.J, eps))

    def check(name, v, f, analytic):
        entries = _entries(v.shape, max_entries, rng)
        fd = central_differences(f, v, entries, eps)
        compare(name, "MLP.backward", analytic, fd, entries)
        return fd, entries

    def full_pass():
        return objective_from(m, fw, "x", None, fw.x)

    o = fw.o.copy()
    check(gradient_name("o"), o, lambda: objective_from(m, fw, "o", None, o), g.do)
    for l in reversed(range(m.n_layers)):
        W = lecture_name("W", l, m.n_layers)
        param_fd[W] = check(gradient_name(W), m.weights[l], full_pass, g.dW[l])
        if m.bias:
            b = lecture_name("b", l, m.n_layers)
            param_fd[b] = check(gradient_name(b), m.biases[l], full_pass, g.db[l])
        if l == 0:
            break
        h, z = fw.h[l - 1].copy(), fw.z[l - 1].copy()
        check(gradient_name(lecture_name("h", l - 1, m.n_layers)), h,
              lambda l=l, h=h: objective_from(m, fw, "h", l - 1, h), g.dh[l - 1])
        check(gradient_name(lecture_name("z", l - 1, m.n_layers)), z,
              lambda l=l, z=z: objective_from(m, fw, "z", l - 1, z), g.dz[l - 1])
    if step:
        _check_step(m, fw, param_fd, compare)
    return GradientCheck(tuple(checks), threshold, eps, repr(mlp), mlp.backend, int(fw.x.shape[0]), fw.J,
                         _notes(m, fw, eps, checks))


def _check_step(m, fw, param_fd, compare):
    """The training step's ∂J/∂θ (Step.objective_gradient) against the same finite differences."""
    step = m.training_step(int(fw.x.shape[0]))
    step.objective_gradient(fw.x, fw.y, fw.sample_weight)
    source = f"Step ({type(m.ops).__name__})"
    for l in reversed(range(m.n_layers)):
        W = lecture_name("W", l, m.n_layers)
        compare(gradient_name(W), source, m.weight_grads[l], *param_fd[W])
        if m.bias:
            b = lecture_name("b", l, m.n_layers)
            compare(gradient_name(b), source, m.bias_grads[l], *param_fd[b])


def _tensor_check(name, source, analytic, fd, entries, threshold, J, eps):
    host = np.asarray(analytic.get() if hasattr(analytic, "get") else analytic, dtype=np.float64)
    picked = np.array([host[i] for i in entries])
    error = relative_error(fd, picked)
    worst = int(np.argmax(np.abs(fd - picked))) if len(entries) else 0
    # Rounding: J(v ± ε) are each off by about u·max(|J|, 1) (a loss term near 0 is rounded against the
    # terms of size 1 it is computed from: log Σ e^(o − max) ≈ log 1), so each difference by that over ε,
    # and sqrt(n) of it over n entries. Where this noise comes within a tenth of the threshold, the
    # relative error says little.
    noise = math.sqrt(len(entries)) * UNIT_ROUNDOFF * max(abs(J), 1.0) / eps
    unresolved = noise >= 0.1 * threshold * float(np.linalg.norm(picked))
    return TensorCheck(name, source, tuple(int(n) for n in host.shape), len(entries), error,
                       tuple(int(i) for i in entries[worst]), float(fd[worst]), float(picked[worst]),
                       bool(math.isfinite(error) and error <= threshold), bool(unresolved))


def _entries(shape, max_entries, rng):
    """All index tuples of ``shape`` in order, or a seeded sample of ``max_entries`` of them (sorted)."""
    n = math.prod(shape)
    if max_entries is None or n <= max_entries:
        return list(np.ndindex(shape))
    flat = np.sort(rng.choice(n, size=max_entries, replace=False))
    return [tuple(int(i) for i in idx) for idx in zip(*np.unravel_index(flat, shape))]


def _notes(m, fw, eps, checks):
    notes = []
    for l, act in enumerate(m.activations):
        if act in KINKS:
            z = fw.z[l]
            near = int((abs(z) <= 100 * eps).sum())
            if near:
                notes.append(f"{near} entries of {lecture_name('z', l, m.n_layers)} lie within {100 * eps:g} of "
                             f"{act}'s kink at 0, where a central difference straddles two slopes: an error there "
                             f"may come from the kink rather than from backward (try another batch or seed)")
    unresolved = [t.name for t in checks if t.unresolved]
    if unresolved:
        notes.append(f"{', '.join(dict.fromkeys(unresolved))}: the gradient is close to the rounding noise of "
                     f"central differences (about 1e-16·max(|J|, 1)/ε per entry), so its relative error says little; "
                     f"check on a batch the model fits less well")
    return tuple(notes)


def _unwrap(model, X, y):
    if isinstance(model, Pipeline):
        return model.named_steps["mlp"], model.transform(X), model.encode_targets(y)
    if not isinstance(model, MLP):
        raise TypeError(f"check_gradients needs a gpumlp.MLP or gpumlp.Pipeline, got {type(model).__name__}")
    if y is None:
        raise ValueError("check_gradients needs targets y: J = L + s depends on them")
    return model, X, y


def _float64_copy(model):
    """The same net in float64 on the same backend, with the model's weights (exact in float64)."""
    copy = MLP(model.sizes, activation=list(model.activations), loss=model.loss, weight_decay=model.weight_decay,
               bias=model.bias, dtype="float64", backend=model.backend)
    copy.set_weights(model.get_weights(), model.get_biases())
    return copy


def _finite(v):
    return v if math.isfinite(v) else None


def _positive(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, got {v!r}")
    return float(v)
