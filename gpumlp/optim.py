"""Update rules over the model's flat parameter buffer.

Every parameter of a model lives in one flat array ``theta`` (all weights first, then all biases),
and the raw loss gradient ∂L/∂θ in a flat array ``grad`` of the same layout. The first ``n_decay``
elements are weights: only they get the λW term of ∂s/∂W (biases are never decayed).

    lecture (plain gradient descent)     W ← W − η (∂L/∂W + λW) = W − η ∂J/∂W

    SGD, momentum μ (PyTorch's rule)     g ← ∂L/∂θ + λθ
                                         v ← μ v + g               (v starts at the first g)
                                         θ ← θ − η v               (Nesterov: θ ← θ − η (g + μ v))

    Adam (Kingma & Ba; PyTorch's form)   g ← ∂L/∂θ + λθ            (coupled L2, torch.optim.Adam)
                                         m ← β1 m + (1 − β1) g,    v ← β2 v + (1 − β2) g²
                                         θ ← θ − (η / c1) m / (√v / √c2 + ε),  c1 = 1 − β1ᵗ, c2 = 1 − β2ᵗ

    AdamW (``decoupled=True``)           θ ← θ (1 − ηλ) first, then Adam with g = ∂L/∂θ (no λθ)
                                         (torch.optim.AdamW; "decoupled weight decay", Loshchilov & Hutter)

With μ = 0 SGD is exactly the lecture's rule, and the model folds it into the weight-gradient GEMM.

Momentum convention: we follow PyTorch, which keeps η outside the velocity. scikit-learn's
MLPClassifier folds η into it, v ← μ v − η g, θ ← θ + v (Nesterov: θ ← θ + μ v − η g) with v
starting at 0. While η is constant the two produce identical iterates (sklearn's v is −η times
ours); they differ when η changes during training: with ours a new η applies at once to the whole
accumulated velocity, with scikit-learn's it applies only to new gradients. scikit-learn's Adam
adds ε to √v rather than to √v̂, i.e. its ε is ours times √c2; with the default ε = 1e-8 the
difference is negligible.

Each ``update`` here is the readable reference, written with in-place array operations so that it
runs on NumPy and CuPy alike; a backend's ``ops`` may provide a fused version with the same name
and the same meaning (one kernel launch over the flat buffer), which is checked against this one:

    ops.sgd_update(theta, grad, velocity, lr, lam, n_decay, momentum, nesterov)
        velocity is None when momentum == 0; otherwise a zero-initialised buffer before the first
        step (μ·0 + g = g, so PyTorch's "v starts at g" holds without a special case).
    ops.adam_update(theta, grad, m, v, lr, lam, n_decay, beta1, beta2, eps, c1, c2, decoupled)
        c1, c2 are the bias corrections of this step (t already incremented).
"""
from __future__ import annotations

import math

from ._validation import check_positive_number

OPTIMIZERS = ("sgd", "adam")


class SGD:
    name = "sgd"

    def __init__(self, momentum=0.0, nesterov=False):
        self.momentum = check_positive_number(momentum, "momentum", allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)
        self.velocity = None  # flat, like theta; made on first use
        self.t = 0

    @property
    def foldable(self):
        """Plain SGD: the update can be folded into the weight-gradient GEMM (no state)."""
        return self.momentum == 0

    def state_arrays(self):
        return {} if self.velocity is None else {"velocity": self.velocity}

    def reset(self):
        """Forget the accumulated state (as a freshly built optimizer)."""
        self.velocity, self.t = None, 0

    def hyperparameters(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}

    def update(self, theta, grad, lr, lam, n_decay, ops=None):
        """θ ← θ − η·d with d as in the module docstring. ``grad`` holds ∂L/∂θ and is overwritten."""
        self.t += 1
        if ops is not None and hasattr(ops, "sgd_update"):
            if self.velocity is None and self.momentum:
                self.velocity = ops.xp.zeros_like(theta)
            return ops.sgd_update(theta, grad, self.velocity, lr, lam, n_decay, self.momentum, self.nesterov)
        if lam:
            grad[:n_decay] += lam * theta[:n_decay]  # g = ∂L/∂θ + λθ  (= ∂J/∂θ)
        if self.momentum:
            if self.velocity is None:
                self.velocity = grad.copy()  # PyTorch: v starts at the first gradient
            else:
                self.velocity *= self.momentum
                self.velocity += grad
            if self.nesterov:
                grad += self.momentum * self.velocity
            else:
                grad[...] = self.velocity
        theta -= lr * grad


class Adam:
    name = "adam"

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-8, decoupled=False):
        for v, n in ((beta1, "beta1"), (beta2, "beta2")):
            check_positive_number(v, n, allow_zero=True)
            if v >= 1:
                raise ValueError(f"{n} must be in [0, 1), got {v!r}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = check_positive_number(eps, "eps")
        self.decoupled = bool(decoupled)
        self.m = self.v = None
        self.t = 0

    foldable = False

    def state_arrays(self):
        return {} if self.m is None else {"m": self.m, "v": self.v}

    def reset(self):
        """Forget the moment estimates and the step count (as a freshly built optimizer)."""
        self.m = self.v = None
        self.t = 0

    def hyperparameters(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "decoupled": self.decoupled}

    def update(self, theta, grad, lr, lam, n_decay, ops=None):
        self.t += 1
        if self.m is None:
            xp = ops.xp if ops is not None else __import__("numpy")
            self.m, self.v = xp.zeros_like(theta), xp.zeros_like(theta)
        c1 = 1 - self.beta1**self.t
        c2 = 1 - self.beta2**self.t
        if ops is not None and hasattr(ops, "adam_update"):
            return ops.adam_update(theta, grad, self.m, self.v, lr, lam, n_decay, self.beta1, self.beta2,
                                   self.eps, c1, c2, self.decoupled)
        if lam and self.decoupled:
            theta[:n_decay] *= 1 - lr * lam
        elif lam:
            grad[:n_decay] += lam * theta[:n_decay]
        self.m *= self.beta1
        self.m += (1 - self.beta1) * grad
        self.v *= self.beta2
        self.v += (1 - self.beta2) * grad * grad
        # θ ← θ − η m̂/(√v̂ + ε), written as PyTorch does: step = η/c1, denom = √v/√c2 + ε
        denom = self.v ** 0.5
        denom /= math.sqrt(c2)
        denom += self.eps
        theta -= (lr / c1) * self.m / denom


def make_optimizer(name, **kw):
    """Build by name: sgd -> SGD(momentum, nesterov); adam -> Adam(beta1, beta2, eps, decoupled)."""
    if name == "sgd":
        return SGD(kw.get("momentum", 0.0), kw.get("nesterov", False))
    if name == "adam":
        return Adam(kw.get("beta1", 0.9), kw.get("beta2", 0.999), kw.get("eps", 1e-8), kw.get("decoupled", False))
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
