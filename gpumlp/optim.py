"""Update rules over the model's flat parameter buffer.

Every parameter of a model lives in one flat array ``theta`` (all weights first, then all biases),
and the raw loss gradient ∂L/∂θ in a flat array ``grad`` of the same layout. The first ``n_decay``
elements are weights: only they get the λW term of ∂s/∂W (biases are never decayed).

The lecture's update is the plain rule   W ← W − η (∂L/∂W + λW) = W − η ∂J/∂W.

Conventions (PyTorch's, stated once here):
- SGD with momentum μ:   v ← μ v + g,  g = ∂L/∂θ + λθ;   θ ← θ − η v
  (Nesterov: θ ← θ − η (g + μ v) with the new v). scikit-learn folds η into v
  (v ← μ v − η g); the two agree while η is constant and differ when η changes.
- Adam: m ← β1 m + (1−β1) g, v ← β2 v + (1−β2) g², θ ← θ − η m̂ / (√v̂ + ε), with bias-corrected
  m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ). L2 (coupled, g includes λθ) as torch.optim.Adam(weight_decay=λ);
  with ``decoupled=True``, AdamW: θ ← θ(1 − ηλ) before the Adam step, g without λθ.

Each ``update`` here is the readable reference, written with in-place array operations so that it
runs on NumPy and CuPy alike; a backend's ``ops`` may provide a fused version with the same name
(``ops.sgd_update`` / ``ops.adam_update``), which is checked against this one.
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
    if name == "sgd":
        return SGD(kw.get("momentum", 0.0), kw.get("nesterov", False))
    if name == "adam":
        return Adam(kw.get("beta1", 0.9), kw.get("beta2", 0.999), kw.get("eps", 1e-8), kw.get("decoupled", False))
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
