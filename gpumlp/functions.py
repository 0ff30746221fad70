"""The lecture's equations, each in one named place (NumPy reference).

Shapes follow the lecture with examples as rows: a batch X is (B, d), so the lecture's column form
z = W1 x becomes Z = X W1ᵀ (B, h). Every function works on NumPy and CuPy arrays alike (the array
module is taken from the arguments); the CuPy backend's fused kernels are checked against these
functions, and so is the C++ device math in ``kernels/``.

    lecture                         here
    z = W1 x                        linear_forward
    h = φ(z)                        ACTIVATIONS[name].forward
    o = W2 h                        linear_forward
    L = l(o, y)                     LOSSES[name].forward  (mean over the batch)
    ŷ = ψ(o)                        LOSSES[name].output   (the output unit: softmax, sigmoid, exp, identity)
    s = λ/2 (‖W1‖² + ‖W2‖²)         regulariser
    J = L + s                       MLP.forward
    ∂J/∂o = ∂L/∂o                   LOSSES[name].backward
    ∂J/∂W2 = ∂J/∂o hᵀ + λ W2        linear_backward (weight part)
    ∂J/∂h = W2ᵀ ∂J/∂o               linear_backward (input part)
    ∂J/∂z = ∂J/∂h ⊙ φ′(z)           ACTIVATIONS[name].backward
    ∂J/∂W1 = ∂J/∂z xᵀ + λ W1        linear_backward (weight part)
    W ← W − η ∂J/∂W                 gpumlp.optim.SGD (plain)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .backend import array_module

# ---------------------------------------------------------------------------------------------
# Linear layer:  z = W x (+ b)        forward and backward side by side
# ---------------------------------------------------------------------------------------------


def linear_forward(x, W, b=None):
    """Z = X Wᵀ (+ b).   x (B, in), W (out, in), b (out,) -> (B, out)."""
    z = x @ W.T
    if b is not None:
        z += b
    return z


def linear_backward(dz, x, W, lam=0.0):
    """Given ∂J/∂z (B, out): ∂J/∂W = ∂J/∂zᵀ x + λW (out, in), ∂J/∂x = ∂J/∂z W (B, in), ∂J/∂b (out,).

    The lecture's dJ/dW2 = dJ/do hᵀ + λW2 summed over the examples of the batch (rows).
    """
    dW = dz.T @ x
    if lam:
        dW += lam * W
    return dW, dz @ W, dz.sum(axis=0)


def regulariser(weights, lam):
    """s = λ/2 Σ_l ‖W^(l)‖²_F  (biases are never decayed)."""
    if not lam:
        return 0.0
    return 0.5 * lam * sum(float((W * W).sum()) for W in weights)


# ---------------------------------------------------------------------------------------------
# Activations: forward h = φ(z); backward ∂J/∂z = ∂J/∂h ⊙ φ′(z).
# backward receives h = φ(z) as well, since several φ′ are cheapest from h.
# ---------------------------------------------------------------------------------------------

LEAKY_SLOPE = 0.01
GELU_K = math.sqrt(2.0 / math.pi)  # tanh approximation, as torch.nn.GELU(approximate="tanh")
GELU_C = 0.044715


def relu_forward(z):
    xp = array_module(z)
    return xp.maximum(z, 0)


def relu_backward(dh, z, h):  # φ′(0) = 0, as PyTorch
    return dh * (z > 0)


def leaky_relu_forward(z):
    xp = array_module(z)
    return xp.where(z > 0, z, z * LEAKY_SLOPE)


def leaky_relu_backward(dh, z, h):  # φ′(0) = slope, as PyTorch
    xp = array_module(z)
    return dh * xp.where(z > 0, 1, LEAKY_SLOPE).astype(z.dtype)


def sigmoid_forward(z):
    xp = array_module(z)
    # Stable at ±large z: exp only ever sees −|z|.
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(dh, z, h):
    return dh * h * (1 - h)


def tanh_forward(z):
    xp = array_module(z)
    return xp.tanh(z)


def tanh_backward(dh, z, h):
    return dh * (1 - h * h)


def gelu_forward(z):
    xp = array_module(z)
    t = xp.tanh(GELU_K * (z + GELU_C * z**3))
    return 0.5 * z * (1 + t)


def gelu_backward(dh, z, h):
    xp = array_module(z)
    t = xp.tanh(GELU_K * (z + GELU_C * z**3))
    return dh * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * GELU_K * (1 + 3 * GELU_C * z * z))


def softplus_forward(z):
    xp = array_module(z)
    # log(1 + e^z) = max(z, 0) + log1p(e^−|z|): exact and finite for every z (no threshold trick).
    return xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))


def softplus_backward(dh, z, h):  # φ′ = sigmoid
    return dh * sigmoid_forward(z)


def identity_forward(z):
    return z.copy()


def identity_backward(dh, z, h):
    return dh.copy()


@dataclass(frozen=True)
class Activation:
    name: str
    forward: Callable
    backward: Callable


ACTIVATIONS = {
    name: Activation(name, globals()[f"{name}_forward"], globals()[f"{name}_backward"])
    for name in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softplus", "identity")
}

# ---------------------------------------------------------------------------------------------
# Losses: L = mean over the batch of l(o_i, y_i), optionally a weighted mean Σ w_i l_i / Σ w_i
# (a batch whose weights are all zero has L = 0 and ∂L/∂o = 0: it holds nothing to learn from).
# forward returns L (a 0-d array); backward returns ∂L/∂o (B, q).
# ---------------------------------------------------------------------------------------------


def _batch_weights(w, B, dtype):
    """Per-example weights normalised to sum to one (the plain mean when w is None); all zero when
    every weight of the batch is zero (a shuffled batch of zero-weight examples), not 0/0 = NaN."""
    if w is None:
        return None
    xp = array_module(w)
    total = w.sum()
    return (w / xp.where(total > 0, total, 1)).astype(dtype, copy=False)


def squared_forward(o, y, w=None):
    """l = ½‖o − y‖²."""
    per_example = 0.5 * ((o - y) ** 2).sum(axis=1)
    wn = _batch_weights(w, o.shape[0], o.dtype)
    return per_example.mean() if wn is None else (wn * per_example).sum()


def squared_backward(o, y, w=None):
    """∂L/∂o = (o − y)/B (or w_i (o − y)/Σw)."""
    wn = _batch_weights(w, o.shape[0], o.dtype)
    r = o - y
    return r / o.shape[0] if wn is None else r * wn[:, None]


def log_softmax(o):
    """Row-wise log softmax, stable for logits of any size (max subtracted first)."""
    xp = array_module(o)
    m = o.max(axis=1, keepdims=True)
    shifted = o - m
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax(o):
    xp = array_module(o)
    return xp.exp(log_softmax(o))


def cross_entropy_forward(o, y, w=None):
    """l = −log softmax(o)_y, y integer labels in [0, q)."""
    xp = array_module(o)
    per_example = -log_softmax(o)[xp.arange(o.shape[0]), y]
    wn = _batch_weights(w, o.shape[0], o.dtype)
    return per_example.mean() if wn is None else (wn * per_example).sum()


def cross_entropy_backward(o, y, w=None):
    """∂L/∂o = (softmax(o) − onehot(y))/B (or weighted)."""
    xp = array_module(o)
    g = softmax(o)
    g[xp.arange(o.shape[0]), y] -= 1
    wn = _batch_weights(w, o.shape[0], o.dtype)
    return g / o.shape[0] if wn is None else g * wn[:, None]


def binary_cross_entropy_forward(o, y, w=None):
    """Logistic outputs, one per label: l = Σ_j −[y_j log σ(o_j) + (1 − y_j) log(1 − σ(o_j))], y_j in [0, 1].

    Written as l = Σ_j softplus(o_j) − y_j o_j = Σ_j max(o_j, 0) − y_j o_j + log1p(e^−|o_j|): exact and
    finite for logits of any size (PyTorch's BCEWithLogitsLoss, summed over labels). One label is a
    binary problem, several are multilabel targets (an indicator matrix)."""
    xp = array_module(o)
    per_example = (xp.maximum(o, 0) - y * o + xp.log1p(xp.exp(-xp.abs(o)))).sum(axis=1)
    wn = _batch_weights(w, o.shape[0], o.dtype)
    return per_example.mean() if wn is None else (wn * per_example).sum()


def binary_cross_entropy_backward(o, y, w=None):
    """∂L/∂o = (σ(o) − y)/B (or weighted): the logistic unit and its loss taken together."""
    wn = _batch_weights(w, o.shape[0], o.dtype)
    r = sigmoid_forward(o) - y
    return r / o.shape[0] if wn is None else r * wn[:, None]


def poisson_forward(o, y, w=None):
    """Exponential outputs μ = e^o (o is log μ), half the Poisson deviance, y_j >= 0 (counts or rates):
    l = Σ_j y_j log(y_j/μ_j) − y_j + μ_j = Σ_j (e^{o_j} − y_j) − y_j (o_j − log y_j)   (0 log 0 = 0).

    scikit-learn's MLPRegressor(loss="poisson"), constant term y log y − y included, so l >= 0 and
    l = 0 at μ = y. Written with the differences taken first (e^o − y, o − log y): each is small near
    the fit, where y log y and y·o apart would be large and cancel. PyTorch's PoissonNLLLoss(
    log_input=True) is the same l without the constant."""
    xp = array_module(o)
    log_y = xp.log(xp.where(y > 0, y, 1))  # y = 0 contributes y (o − log y) = 0
    per_example = ((xp.exp(o) - y) - y * (o - log_y)).sum(axis=1)
    wn = _batch_weights(w, o.shape[0], o.dtype)
    return per_example.mean() if wn is None else (wn * per_example).sum()


def poisson_backward(o, y, w=None):
    """∂L/∂o = (e^o − y)/B (or weighted)."""
    xp = array_module(o)
    wn = _batch_weights(w, o.shape[0], o.dtype)
    r = xp.exp(o) - y
    return r / o.shape[0] if wn is None else r * wn[:, None]


def exp_output(o):
    xp = array_module(o)
    return xp.exp(o)


# What a loss's outputs predict: class labels (the index of the largest logit), 0/1 per label
# (probability above ½), or the mean ψ(o) itself (regression).
def _argmax_labels(o):
    return o.argmax(axis=1)


def _indicators(o):
    return (sigmoid_forward(o) > 0.5).astype("int64")


@dataclass(frozen=True)
class Loss:
    """A loss with its output unit. ``output`` is ψ, the model's prediction from the outputs o (class
    probabilities, or the mean of y); ``predict`` the decision (labels, indicators, or ψ(o)); ``targets``
    what y holds: "labels" (integers in [0, q)), "binary" (values in [0, 1]), "real", "counts" (>= 0)."""

    name: str
    forward: Callable
    backward: Callable
    output: Callable = identity_forward
    predict: Callable = identity_forward
    targets: str = "real"

    @property
    def is_classification(self):
        return self.targets in ("labels", "binary")


LOSSES = {
    "squared": Loss("squared", squared_forward, squared_backward),
    "cross_entropy": Loss("cross_entropy", cross_entropy_forward, cross_entropy_backward, softmax, _argmax_labels,
                          "labels"),
    "binary_cross_entropy": Loss("binary_cross_entropy", binary_cross_entropy_forward, binary_cross_entropy_backward,
                                 sigmoid_forward, _indicators, "binary"),
    "poisson": Loss("poisson", poisson_forward, poisson_backward, exp_output, exp_output, "counts"),
}
