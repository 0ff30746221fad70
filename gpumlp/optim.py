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

``update(theta, grad, lr, lam, n_decay, ops)`` runs the rule through the backend's ops
(``gpumlp.ops.Ops``: the readable reference there, in place on NumPy, one fused kernel launch over the
flat buffer on CuPy); ``ops`` defaults to the reference for the array's module. ``grad`` holds ∂L/∂θ
on entry (the λθ term is added inside the update pass) and is overwritten.

State: SGD keeps ``velocity`` (made at the first momentum step, zero-initialised, so μ·0 + g = g gives
PyTorch's "v starts at g"); Adam keeps ``m``, ``v`` and ``step``, its step counter, a one-element
int64 array on the device that the update kernel reads and advances (``t`` reads it). Plain SGD
(μ = 0) has no state and no update call of its own: the step folds it into the weight-gradient GEMM.
``LBFGS`` is the name of full-batch L-BFGS (``gpumlp.lbfgs``): no update rule, no state.

The state arrays keep their addresses from the first update on, so that a captured CUDA graph of a
step (``gpumlp.step`` lists what a graph executor needs) keeps updating the optimizer's own state:
``reset`` zeroes them in place (zeros and a zero count are exactly a fresh optimizer's start: SGD's
velocity then starts at g, Adam's count at 1), ``load_state`` (a checkpoint, a resumed run) and
``restore`` (a divergence) copy into them, ``adopt_state`` (``MLP.set_params``) copies into its own or
takes the other optimizer's arrays over. Snapshots and loaded states are copies, never aliases: training
writes neither into the snapshot it may restore again nor into the ``ModelState`` it was loaded from.
Host-side counts are not replayed by a graph: SGD's ``t`` is one (Adam's is the device counter).
"""
from __future__ import annotations

import numpy as np

from .backend import array_module, to_host
from .ops import Ops
from .validation import check_positive_number

OPTIMIZERS = ("sgd", "adam", "lbfgs")


def _copy(value):
    return value.copy() if hasattr(value, "copy") else value


def _write(own, value, xp=None):
    """``value`` in ``own``'s memory when ``own`` is an array of its shape (``own`` keeps its address),
    otherwise a new copy of it; never ``value`` itself (what was handed in stays the caller's). ``xp``:
    the module to move ``value`` to first (a host array into device state); None: it is on ``own``'s."""
    if own is None or tuple(own.shape) != tuple(value.shape):
        return value.copy() if xp is None else xp.array(value, copy=True)
    own[...] = value if xp is None else xp.asarray(value)
    return own


def _zero(own):
    if own is not None:
        own[...] = 0


class Optimizer:
    """An update rule over the flat θ, with its state (arrays beside θ on its device, and a step count).

    The state arrays are made once, at the first update, and from then on only written in place:
    ``reset``, ``load_state``, ``restore`` (a divergence) and ``adopt_state`` copy into them (module
    docstring: what a CUDA graph needs). A fresh or reset optimizer holds zeros in them (or none yet):
    exactly what the first update of a fresh one starts from. What the device arrays hold is the whole
    state (no host flag says "fresh"), so a checkpoint reads what a replayed graph wrote."""

    name = ""
    foldable = False  # can the update be folded into the weight-gradient GEMM? (plain SGD only)
    state_names = ()  # the state arrays a checkpoint stores, None until the first update
    _buffers = ()  # every device array of the state (state_names and a device step counter): written in place
    _scalars = ()  # the host values of the state, copied as they are

    def state_arrays(self):
        """The state a checkpoint stores (flat arrays like θ), by name; empty before the first update (after
        a ``reset`` they are zeros, which load as the state of a fresh optimizer)."""
        return {k: getattr(self, k) for k in self.state_names if getattr(self, k) is not None}

    def load_state(self, t, arrays, xp=np):
        """Set the step count and the state arrays (named as ``state_arrays`` names them, host or device
        arrays): copied into this optimizer's own arrays where it has them, so that they keep their
        addresses, else into new ones on ``xp``; without arrays, the state of a fresh optimizer."""
        for k in self.state_names:
            if k in arrays:
                setattr(self, k, _write(getattr(self, k), arrays[k], xp))
            else:
                _zero(getattr(self, k))
        self.t = t

    def snapshot(self):
        """Copies of the whole state, taken without waiting for the device (divergence restores them)."""
        return {k: _copy(getattr(self, k)) for k in self._buffers + self._scalars}

    def restore(self, snapshot):
        """Go back to a ``snapshot``: copied into this optimizer's arrays (in place; the snapshot stays
        as it was, to be restored again). An array the snapshot predates is zeroed, as a fresh one's."""
        for k in self._buffers:
            value = snapshot[k]
            if value is None:
                _zero(getattr(self, k))
            else:
                setattr(self, k, _write(getattr(self, k), value))
        for k in self._scalars:
            setattr(self, k, snapshot[k])

    def adopt_state(self, other):
        """Take over the state of ``other`` (same kind, e.g. before new hyper-parameters): copied into this
        optimizer's own arrays where it has them, else ``other``'s arrays themselves become its own (no
        copy: their addresses carry over; ``other`` is not to be used afterwards)."""
        for k in self._buffers:
            mine, theirs = getattr(self, k), getattr(other, k)
            if mine is None:
                setattr(self, k, theirs)
            elif theirs is None:
                _zero(mine)
            else:
                _write(mine, theirs)
        for k in self._scalars:
            setattr(self, k, getattr(other, k))

    def reset(self):
        """Forget the accumulated state: that of a freshly built optimizer (its arrays, where made, zeroed
        in place; the step count 0)."""
        raise NotImplementedError

    def hyperparameters(self):
        raise NotImplementedError

    def update(self, theta, grad, lr, lam, n_decay, ops=None):
        raise NotImplementedError


def _reference_ops(theta):
    return Ops(array_module(theta))


class SGD(Optimizer):
    name = "sgd"
    state_names = ("velocity",)
    _buffers = ("velocity",)
    _scalars = ("t",)

    def __init__(self, momentum=0.0, nesterov=False):
        self.momentum = check_positive_number(momentum, "momentum", allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)
        self.velocity = None  # flat, like theta; made on first use (with momentum)
        self.reset()

    @property
    def foldable(self):
        """Plain SGD: the update can be folded into the weight-gradient GEMM (no state)."""
        return self.momentum == 0

    def reset(self):
        _zero(self.velocity)  # zeros: μ·0 + g = g, the first step of a fresh optimizer
        self.t = 0  # update calls (the folded plain-SGD step makes none)

    def hyperparameters(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}

    def update(self, theta, grad, lr, lam, n_decay, ops=None):
        """θ ← θ − η·d with d as in the module docstring. ``grad`` holds ∂L/∂θ and is overwritten."""
        ops = ops or _reference_ops(theta)
        self.t += 1
        if self.velocity is None and self.momentum:
            self.velocity = ops.xp.zeros_like(theta)
        ops.sgd_update(theta, grad, self.velocity, lr, lam, n_decay, self.momentum, self.nesterov)


class Adam(Optimizer):
    name = "adam"
    state_names = ("m", "v")
    _buffers = ("m", "v", "step")

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-8, decoupled=False):
        for v, n in ((beta1, "beta1"), (beta2, "beta2")):
            check_positive_number(v, n, allow_zero=True)
            if v >= 1:
                raise ValueError(f"{n} must be in [0, 1), got {v!r}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = check_positive_number(eps, "eps")
        self.decoupled = bool(decoupled)
        self.m = self.v = None  # flat, like theta; made at the first update
        self.step = None  # int64 (1,) on θ's device: steps taken, advanced by the update itself
        self.reset()

    def reset(self):
        for a in (self.m, self.v, self.step):
            _zero(a)  # zeros and a zero count: the first update is step 1, as a fresh optimizer's

    @property
    def t(self):
        """Steps taken, read from the device counter (a synchronisation on the GPU: for checkpoints)."""
        return 0 if self.step is None else int(to_host(self.step)[0])

    @t.setter
    def t(self, t):
        if self.step is None:
            if t:
                raise ValueError("Adam's step count can only be set together with its moments m and v")
            return
        self.step[...] = t

    def load_state(self, t, arrays, xp=np):
        if "m" not in arrays:
            if t:
                raise ValueError("Adam's step count can only be set together with its moments m and v")
            self.reset()
            return
        self.m, self.v = _write(self.m, arrays["m"], xp), _write(self.v, arrays["v"], xp)
        if self.step is None:
            self.step = xp.zeros(1, np.int64)
        self.t = t

    def hyperparameters(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "decoupled": self.decoupled}

    def update(self, theta, grad, lr, lam, n_decay, ops=None):
        ops = ops or _reference_ops(theta)
        if self.m is None:
            xp = ops.xp
            self.m, self.v, self.step = xp.zeros_like(theta), xp.zeros_like(theta), xp.zeros(1, np.int64)
        ops.adam_update(theta, grad, self.m, self.v, self.step, lr, lam, n_decay, self.beta1, self.beta2, self.eps,
                        self.decoupled)


class LBFGS(Optimizer):
    """L-BFGS is not a per-step rule: ``MLP.fit`` minimises J over the full batch with SciPy's L-BFGS-B
    (``gpumlp.lbfgs``). It keeps no state between fits (each starts with an empty curvature memory,
    as scikit-learn's warm starts) and has no settings of its own: max_iter (``epochs``), max_fun and
    tol are ``fit``'s. ``t`` counts its iterations over all fits."""

    name = "lbfgs"
    _scalars = ("t",)

    def __init__(self):
        self.reset()

    def reset(self):
        self.t = 0

    def hyperparameters(self):
        return {}

    def update(self, theta, grad, lr, lam, n_decay, ops=None):
        raise ValueError("optimizer='lbfgs' has no per-step update: MLP.fit runs L-BFGS on the full batch "
                         "(gpumlp.lbfgs); step and partial_fit need optimizer='sgd' or 'adam'")


def make_optimizer(name, **kw):
    """Build by name: sgd -> SGD(momentum, nesterov); adam -> Adam(beta1, beta2, eps, decoupled);
    lbfgs -> LBFGS() (the others' settings are ignored)."""
    if name == "lbfgs":
        return LBFGS()
    if name == "sgd":
        return SGD(kw.get("momentum", 0.0), kw.get("nesterov", False))
    if name == "adam":
        return Adam(kw.get("beta1", 0.9), kw.get("beta2", 0.999), kw.get("eps", 1e-8), kw.get("decoupled", False))
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
