"""The multilayer perceptron: the lecture's net generalised to any depth.

    Z1 = X W1ᵀ (+b1), H1 = φ(Z1), ..., O = H_k W_{k+1}ᵀ (+b_{k+1}),
    J = L(O, y) + λ/2 Σ_l ‖W_l‖²_F

``forward``/``backward`` are the readable reference (``functions.py``, one named function per
equation) and return every value of the computational graph. ``step``/``fit`` run the fast path
(``_train_step``): preallocated buffers, the backend's fused ops, and for plain SGD the update folded
into the weight-gradient product, W ← (1 − ηλ) W − η dᵀa, so ∂J/∂W is never materialised.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from . import functions as F
from . import optim
from . import schedules
from ._validation import (check_dtype, check_positive_number, check_sample_weight, check_X,
                          check_y)
from .backend import resolve

HE_INIT = ("relu", "leaky_relu", "gelu")
HISTORY_KEYS = ("epoch", "lr", "loss", "score", "val_loss", "val_score")


class DivergenceError(FloatingPointError):
    """Training produced a non-finite objective; the model keeps its last finite weights."""


@dataclass
class Forward:
    """Values of the computational graph for one batch (backend arrays; L, s, J as floats)."""

    x: object
    z: list  # pre-activations, one per hidden layer
    h: list  # activations, one per hidden layer
    o: object  # outputs (logits for cross-entropy)
    y: object = None
    sample_weight: object = None
    L: float | None = None
    s: float | None = None
    J: float | None = None


@dataclass
class Gradients:
    """The lecture's gradients by name: ∂J/∂o, and per hidden layer ∂J/∂h, ∂J/∂z; ∂J/∂W per layer."""

    do: object
    dh: list = field(default_factory=list)
    dz: list = field(default_factory=list)
    dW: list = field(default_factory=list)
    db: list | None = None


class _Workspace:
    """Buffers of one batch size, made once and reused by every step of that size."""

    def __init__(self, xp, dtype, B, sizes, activations=()):
        hidden = sizes[1:-1]
        self.z = [xp.empty((B, n), dtype) for n in hidden]
        # relu runs in place (h is z): relu′ needs only the sign, and h > 0 exactly where z > 0. An
        # in-place pass moves a third fewer bytes than writing a second (B, h) tensor.
        self.h = [z if act == "relu" else xp.empty_like(z) for z, act in zip(self.z, activations)] \
            if activations else [xp.empty((B, n), dtype) for n in hidden]
        self.o = xp.empty((B, sizes[-1]), dtype)
        # d[l] = ∂J/∂(pre-activation of layer l): dz for hidden layers, do for the output layer.
        self.d = [xp.empty((B, n), dtype) for n in sizes[1:]]
        # ∂J/∂h shares d's buffers: act_backward turns it into ∂J/∂z = ∂J/∂h ⊙ φ′(z) in place, one
        # (B, h) tensor fewer to keep in cache (ops allow dz is dh).
        self.dh = self.d[:-1]


class MLP:
    """Multilayer perceptron trained by hand-derived backpropagation.

    Parameters
    ----------
    sizes : (d, h1, ..., hk, q) layer widths; (d, h, q) is the lecture's one-hidden-layer net.
    activation : φ for every hidden layer, or a list of one name per hidden layer
        (relu, leaky_relu, sigmoid, tanh, gelu, softplus, identity).
    loss : "cross_entropy" (integer labels, softmax outputs) or "squared" (l = ½‖o − y‖²).
    weight_decay : λ in s = λ/2 Σ‖W‖²_F; ∂J/∂W includes λW (PyTorch's ``weight_decay``).
        scikit-learn's ``alpha`` penalises alpha/(2·batch) Σ‖W‖², i.e. λ = alpha / batch_size.
    bias : add a bias to every layer (never weight-decayed).
    dtype : "float32" or "float64", end to end.
    backend : "auto" | "numpy" | "cupy" (or $GPUMLP_BACKEND when "auto").
    seed : seeds the initial weights and the shuffling; the same seed gives the same initial weights
        on every backend (drawn on the host in float64, then cast).
    optimizer : "sgd" (momentum, nesterov) or "adam" (beta1, beta2, eps, decoupled=AdamW);
        see ``gpumlp.optim`` for the update rules (PyTorch's conventions).
    lr_schedule : None ("constant"), a name, or a ``gpumlp.schedules.Schedule`` such as
        ``Cosine(T_max=50)``: the learning rate of each epoch from the ``lr`` given to ``fit``.

    Warm starts: like a PyTorch module, an MLP keeps training from where it is. Each ``fit`` and
    ``partial_fit`` continues from the current weights, optimizer state (velocity, Adam moments and
    step), schedule position (``epochs_``, ``samples_seen_``) and curves. ``reset_parameters()``
    starts over: fresh weights, optimizer and schedule state (curves and counters are kept). The
    scikit-learn estimators in ``gpumlp.sklearn`` follow scikit-learn instead: every ``fit``
    starts from scratch unless ``warm_start=True``.

    Initialisation: W^(l) ~ U(−a, a) with a = √(6/fan_in) (He) for relu/leaky_relu/gelu hidden layers
    and a = √(6/(fan_in + fan_out)) (Glorot) otherwise and for the output layer; biases start at 0.
    """

    def __init__(self, sizes, activation="relu", loss="cross_entropy", weight_decay=0.0, bias=False,
                 dtype="float32", backend="auto", seed=None, optimizer="sgd", momentum=0.0,
                 nesterov=False, beta1=0.9, beta2=0.999, eps=1e-8, decoupled=False, lr_schedule=None):
        sizes = self._check_sizes(sizes)
        n_hidden = len(sizes) - 2
        activations = [activation] * n_hidden if isinstance(activation, str) else list(activation)
        if len(activations) != n_hidden:
            raise ValueError(f"activation lists {len(activations)} names for {n_hidden} hidden layers")
        for a in activations:
            if a not in F.ACTIVATIONS:
                raise ValueError(f"activation must be one of {sorted(F.ACTIVATIONS)}, got {a!r}")
        if loss not in F.LOSSES:
            raise ValueError(f"loss must be one of {sorted(F.LOSSES)}, got {loss!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an integer or None, got {seed!r}")
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be >= 0 (a NumPy random seed), got {seed!r}")
        self.sizes = sizes
        self.activations = activations
        self.activation = activation if isinstance(activation, str) else list(activation)
        self.loss = loss
        self.weight_decay = check_positive_number(weight_decay, "weight_decay", allow_zero=True)
        self.bias = bool(bias)
        self.dtype = check_dtype(dtype)
        self.seed = None if seed is None else int(seed)  # a NumPy integer would not go into a JSON checkpoint
        self.optimizer = optim.make_optimizer(optimizer, momentum=momentum, nesterov=nesterov, beta1=beta1,
                                              beta2=beta2, eps=eps, decoupled=decoupled)
        self.lr_schedule = schedules.make_schedule(lr_schedule)
        self._backend = resolve(backend)
        self.backend = self._backend.name
        self._ops = self._make_ops()
        self._rng = np.random.default_rng(seed)
        self._alloc_parameters()
        self.reset_parameters()
        self._workspaces = {}
        self.loss_curve_ = []
        self.validation_curve_ = []
        self.validation_loss_curve_ = []
        self.epochs_ = 0
        self.samples_seen_ = 0  # examples trained on (scikit-learn's t_), for the invscaling schedule
        self.history_ = {k: [] for k in HISTORY_KEYS}
        self.stop_reason_ = None
        # Plateau monitor of the current (or last) run: early stopping, convergence, "adaptive" lr.
        self._monitor = None
        self._best_theta = None

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _check_sizes(sizes):
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise TypeError(f"sizes must be a sequence of layer widths like (d, h, q), got {sizes!r}") from None
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least an input and an output width, got {sizes!r}")
        for n in sizes:
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"sizes must be positive integers, got {sizes!r}")
        return tuple(int(n) for n in sizes)

    def _make_ops(self):
        if self._backend.is_gpu:
            from ._cupy_ops import CupyOps

            return CupyOps(self.dtype)
        from ._numpy_ops import NumpyOps

        return NumpyOps()

    @property
    def _xp(self):
        return self._backend.xp

    def _alloc_parameters(self):
        """One flat buffer θ = [W1, ..., W_{k+1}, b1, ..., b_{k+1}]; weights and biases are views."""
        shapes = list(zip(self.sizes[1:], self.sizes[:-1]))  # W_l is (out, in), as the lecture
        self._n_weights = sum(o * i for o, i in shapes)
        n_bias = sum(self.sizes[1:]) if self.bias else 0
        xp = self._xp
        self._theta = xp.zeros(self._n_weights + n_bias, self.dtype)
        self._grad = xp.zeros_like(self._theta)
        self._W, self._gW, self._b, self._gb = [], [], [], []
        pos = 0
        for o, i in shapes:
            self._W.append(self._theta[pos:pos + o * i].reshape(o, i))
            self._gW.append(self._grad[pos:pos + o * i].reshape(o, i))
            pos += o * i
        if self.bias:
            for o in self.sizes[1:]:
                self._b.append(self._theta[pos:pos + o])
                self._gb.append(self._grad[pos:pos + o])
                pos += o

    def reset_parameters(self):
        """Draw fresh initial weights from the model's RNG (documented in the class docstring)."""
        host = []
        n_layers = len(self.sizes) - 1
        for l, (fan_out, fan_in) in enumerate(zip(self.sizes[1:], self.sizes[:-1])):
            hidden = l < n_layers - 1
            if hidden and self.activations[l] in HE_INIT:
                a = math.sqrt(6.0 / fan_in)
            else:
                a = math.sqrt(6.0 / (fan_in + fan_out))
            host.append(self._rng.uniform(-a, a, size=(fan_out, fan_in)))
        self._copy_in(host, [np.zeros(n) for n in self.sizes[1:]] if self.bias else None)
        self.optimizer.reset()
        if hasattr(self, "lr_schedule"):  # not yet during __init__
            self.lr_schedule.reset()
            self._monitor = self._best_theta = None

    def _optimizer_kwargs(self):
        return self.optimizer.hyperparameters()

    def _copy_in(self, weights, biases):
        for W, new in zip(self._W, weights):
            W[...] = self._backend.asarray(np.asarray(new, dtype=self.dtype))
        if biases is not None:
            for b, new in zip(self._b, biases):
                b[...] = self._backend.asarray(np.asarray(new, dtype=self.dtype))

    # ------------------------------------------------------------------ parameters
    @property
    def weights(self):
        """W^(l) shaped (out, in), as backend arrays (views into the model's parameter buffer)."""
        return list(self._W)

    @property
    def biases(self):
        return list(self._b) if self.bias else None

    @property
    def n_layers(self):
        return len(self.sizes) - 1

    def get_weights(self):
        """Host NumPy copies of the weights."""
        return [np.array(self._backend.to_host(W)) for W in self._W]

    def get_biases(self):
        return [np.array(self._backend.to_host(b)) for b in self._b] if self.bias else None

    def _check_params(self, arrays, shapes, what):
        if isinstance(arrays, (str, bytes)) or not hasattr(arrays, "__len__"):
            raise TypeError(f"{what} must be a list of {len(shapes)} arrays")
        if len(arrays) != len(shapes):
            raise ValueError(f"{what} must hold {len(shapes)} arrays, got {len(arrays)}")
        checked = []
        for l, (a, shape) in enumerate(zip(arrays, shapes)):
            a = np.asarray(a.get() if type(a).__module__.startswith("cupy") else a)
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{what}[{l}] must hold real numbers, got dtype {a.dtype}")
            if a.shape != shape:
                raise ValueError(f"{what}[{l}] must have shape {shape}, got {a.shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"{what}[{l}] contains NaN or infinity")
            checked.append(a)
        return checked

    def set_weights(self, weights, biases=None):
        """Validate every array first, then copy all of them in (nothing changes if one is wrong)."""
        W = self._check_params(weights, [w.shape for w in self._W], "weights")
        b = None
        if biases is not None:
            if not self.bias:
                raise ValueError("biases given, but the model was built with bias=False")
            b = self._check_params(biases, [v.shape for v in self._b], "biases")
        self._copy_in(W, b)

    # ------------------------------------------------------------------ hyper-parameters
    _ARCHITECTURE = ("sizes", "activation", "loss", "bias", "dtype", "backend", "seed", "optimizer")
    _OPTIMIZER_PARAMS = ("momentum", "nesterov", "beta1", "beta2", "eps", "decoupled")

    def get_params(self, deep=True):
        """The constructor's arguments (scikit-learn's convention; ``deep`` is accepted and unused)."""
        o = optim.make_optimizer("sgd" if self.optimizer.name == "adam" else "adam")  # the other's defaults
        params = {"sizes": self.sizes, "activation": self.activation, "loss": self.loss,
                  "weight_decay": self.weight_decay, "bias": self.bias, "dtype": self.dtype.name,
                  "backend": self.backend, "seed": self.seed, "optimizer": self.optimizer.name,
                  **o.hyperparameters(), **self.optimizer.hyperparameters(), "lr_schedule": self.lr_schedule}
        return params

    def set_params(self, **params):
        """Change training hyper-parameters in place: weight_decay, the optimizer's own settings
        (its state is kept) and lr_schedule. The architecture, loss, dtype, backend, seed and the
        optimizer's kind define the model: build a new MLP to change them. Returns self."""
        fixed = [k for k in params if k in self._ARCHITECTURE]
        unknown = [k for k in params if k not in self.get_params()]
        if unknown or fixed:
            raise ValueError(f"set_params cannot change {sorted(unknown + fixed)}: it changes weight_decay, "
                             f"lr_schedule and the settings of the {self.optimizer.name!r} optimizer; "
                             f"build a new MLP for the rest")
        mine = self.optimizer.hyperparameters()
        foreign = [k for k in params if k in self._OPTIMIZER_PARAMS and k not in mine]
        if foreign:
            raise ValueError(f"{foreign} do not apply to optimizer={self.optimizer.name!r}")
        # Validate everything before changing anything.
        weight_decay = check_positive_number(params.get("weight_decay", self.weight_decay), "weight_decay",
                                             allow_zero=True)
        new_opt = optim.make_optimizer(self.optimizer.name, **{**mine, **{k: params[k] for k in mine if k in params}})
        schedule = schedules.make_schedule(params["lr_schedule"]) if "lr_schedule" in params else self.lr_schedule
        for k, v in self.optimizer.state_arrays().items():
            setattr(new_opt, k, v)
        new_opt.t = self.optimizer.t
        self.weight_decay, self.optimizer, self.lr_schedule = weight_decay, new_opt, schedule
        return self

    # ------------------------------------------------------------------ reference forward/backward
    def _device_X(self, X, name="X"):
        X = check_X(X, name, self.sizes[0], self.dtype)
        return self._backend.asarray(X, dtype=self.dtype)

    def _device_y(self, y, n, name="y"):
        y = check_y(y, self.loss, n, self.sizes[-1], name, self.dtype)
        dtype = np.int64 if self.loss == "cross_entropy" else self.dtype
        return self._backend.asarray(y, dtype=dtype)

    def forward(self, X, y=None, sample_weight=None):
        """The lecture's forward pass on a batch: z, h per hidden layer, o; with y also L, s, J."""
        x = self._device_X(X)
        yy = None if y is None else self._device_y(y, x.shape[0])
        w = check_sample_weight(sample_weight, x.shape[0])
        w = None if w is None else self._backend.asarray(w, dtype=self.dtype)
        zs, hs, a = [], [], x
        for l in range(self.n_layers - 1):
            z = F.linear_forward(a, self._W[l], self._b[l] if self.bias else None)
            a = F.ACTIVATIONS[self.activations[l]].forward(z)
            zs.append(z)
            hs.append(a)
        o = F.linear_forward(a, self._W[-1], self._b[-1] if self.bias else None)
        fw = Forward(x=x, z=zs, h=hs, o=o, y=yy, sample_weight=w)
        if yy is not None:
            fw.L = float(F.LOSSES[self.loss].forward(o, yy, w))
            fw.s = float(F.regulariser(self._W, self.weight_decay))
            fw.J = fw.L + fw.s
        return fw

    def backward(self, fw):
        """The lecture's backward pass: ∂J/∂o, then per layer ∂J/∂W (λW included), ∂J/∂h, ∂J/∂z."""
        if not isinstance(fw, Forward) or fw.y is None:
            raise ValueError("backward needs the result of forward(X, y) called with targets y")
        do = F.LOSSES[self.loss].backward(fw.o, fw.y, fw.sample_weight)
        g = Gradients(do=do, dW=[None] * self.n_layers, dh=[None] * (self.n_layers - 1),
                      dz=[None] * (self.n_layers - 1), db=[None] * self.n_layers if self.bias else None)
        d = do
        for l in reversed(range(self.n_layers)):
            a_prev = fw.x if l == 0 else fw.h[l - 1]
            g.dW[l], dh, db = F.linear_backward(d, a_prev, self._W[l], self.weight_decay)
            if self.bias:
                g.db[l] = db
            if l > 0:
                g.dh[l - 1] = dh
                g.dz[l - 1] = F.ACTIVATIONS[self.activations[l - 1]].backward(dh, fw.z[l - 1], fw.h[l - 1])
                d = g.dz[l - 1]
        return g

    # ------------------------------------------------------------------ the fast training step
    def _workspace(self, B):
        ws = self._workspaces.get(B)
        if ws is None:
            if len(self._workspaces) >= 2:  # full batches and one remainder size
                self._workspaces.pop(next(iter(self._workspaces)))
            ws = self._workspaces[B] = _Workspace(self._xp, self.dtype, B, self.sizes, self.activations)
        return ws

    def _train_step(self, x, y, w, lr):
        """One update on a device batch; returns J before the update as a 0-d backend array.

        Allocation-free in the steady state: every intermediate goes into the workspace of this
        batch size, and the update is either folded into the weight-gradient GEMM (plain SGD) or
        one pass of the optimizer over the flat parameter buffer.
        """
        ops, ws, lam = self._ops, self._workspace(x.shape[0]), self.weight_decay
        n = self.n_layers
        a = x
        for l in range(n - 1):  # forward: Z = A Wᵀ (+b), H = φ(Z)
            ops.linear(a, self._W[l], self._b[l] if self.bias else None, ws.z[l])
            a = ops.act_forward(self.activations[l], ws.z[l], ws.h[l])
        ops.linear(a, self._W[-1], self._b[-1] if self.bias else None, ws.o)
        J = ops.loss_grad(self.loss, ws.o, y, w, ws.d[-1])  # L, and ∂L/∂o into d[-1]
        if lam:  # s = λ/2 ‖W‖², before the update; in place, so that a GPU step allocates nothing
            s = ops.sq_norm(self._theta[:self._n_weights])
            s *= 0.5 * lam
            J += s
        fold = self.optimizer.foldable
        for l in reversed(range(n)):  # backward, output layer first
            a_prev = x if l == 0 else ws.h[l - 1]
            d = ws.d[l]
            if l > 0:  # ∂J/∂h = d W, from W before it is updated
                ops.input_grad(d, self._W[l], ws.dh[l - 1])
            if fold:  # W ← (1 − ηλ) W − η dᵀa: the lecture's update inside the GEMM
                ops.weight_grad(d, a_prev, self._W[l], alpha=-lr, beta=1.0 - lr * lam)
                if self.bias:  # b ← b − η Σ_rows d, in place (no temporary)
                    ops.bias_grad(d, self._gb[l])
                    self._gb[l] *= lr
                    self._b[l] -= self._gb[l]
            else:
                ops.weight_grad(d, a_prev, self._gW[l])
                if self.bias:
                    ops.bias_grad(d, self._gb[l])
            if l > 0:  # ∂J/∂z = ∂J/∂h ⊙ φ′(z)
                ops.act_backward(self.activations[l - 1], ws.dh[l - 1], ws.z[l - 1], ws.h[l - 1], ws.d[l - 1])
        if not fold:
            self.optimizer.update(self._theta, self._grad, lr, lam, self._n_weights, ops)
        return J

    def step(self, X, y, lr, sample_weight=None):
        """One gradient-descent update W ← W − lr·∂J/∂W on this batch; returns J before it."""
        lr = check_positive_number(lr, "lr")
        x = self._device_X(X)
        yy = self._device_y(y, x.shape[0])
        w = check_sample_weight(sample_weight, x.shape[0])
        w = None if w is None else self._backend.asarray(w, dtype=self.dtype)
        return float(self._train_step(x, yy, w, lr))

    # ------------------------------------------------------------------ training loop
    def fit(self, X, y, epochs=10, batch_size=64, lr=0.01, shuffle=True, validation_data=None,
            sample_weight=None, verbose=False, *, class_weight=None, early_stopping=False,
            validation_fraction=0.1, n_iter_no_change=None, tol=1e-4, callbacks=None, train_score=False):
        """Minibatch training from the current weights (see the class docstring on warm starts).
        Returns self.

        Each epoch appends to ``loss_curve_`` (mean J over the epoch's steps) and to ``history_``,
        a dict of per-epoch lists: ``epoch``, ``lr``, ``loss``, ``score`` (training accuracy or R²
        at the end of the epoch, only with ``train_score=True``: it costs a forward pass over X),
        ``val_loss`` and ``val_score`` (with validation data); NaN where not measured.

        sample_weight : per-example weights; L becomes the weighted mean Σ wᵢ lᵢ / Σ wᵢ of each batch
            (L = 0, no gradient, for a batch whose weights are all zero).
        class_weight : "balanced" (n / (n_classes · count of the class), over the classes in y) or
            a dict {label: weight} (missing labels weigh 1); multiplies sample_weight. Cross-entropy only.
        validation_data : (X_val, y_val) or (X_val, y_val, w_val); records ``validation_loss_curve_``
            and ``validation_curve_`` (score per epoch).
        early_stopping : monitor the validation score (from ``validation_data``, else from a
            held-out ``validation_fraction`` of X, stratified by class for cross-entropy); stop
            after more than ``n_iter_no_change`` (default 10) consecutive epochs without an
            improvement greater than ``tol`` over the best score, and restore the best weights.
        n_iter_no_change : without early stopping, an integer turns on scikit-learn's convergence
            rule on the training loss (stop after more than n epochs without it falling by more
            than ``tol``); None (default) trains all ``epochs``. With the "adaptive" schedule a
            plateau divides the learning rate by 5 instead of stopping (see ``gpumlp.schedules``).
        callbacks : a callable or a list of them, called as ``cb(model, record)`` after each epoch
            (``record`` is that epoch's ``history_`` entry as a dict); returning True stops training.

        The data are validated and moved to the device once; each epoch shuffles them once (seeded
        host permutation, identical on every backend) into a device buffer whose contiguous slices
        are the batches; J is read back once per epoch. ``stop_reason_`` says why training ended:
        "epochs", "plateau", "lr_too_small" or "callback".

        A checkpoint saved during fit (from a callback) holds the early-stopping state (best score
        and weights, epochs without improvement, the validation split's seed): loading it and calling
        fit with the same settings and the remaining epochs continues that run exactly.
        """
        epochs = check_positive_number(epochs, "epochs", integer=True)
        batch_size = check_positive_number(batch_size, "batch_size", integer=True)
        lr = check_positive_number(lr, "lr")
        early_stopping = bool(early_stopping)
        if n_iter_no_change is not None:
            n_iter_no_change = check_positive_number(n_iter_no_change, "n_iter_no_change", integer=True)
        tol = check_positive_number(tol, "tol", allow_zero=True)
        callbacks = self._check_callbacks(callbacks)
        x, yy, w = self._device_data(X, y, sample_weight, class_weight)
        val = self._device_validation(validation_data)
        if early_stopping and val is None:
            validation_fraction = check_positive_number(validation_fraction, "validation_fraction")
            if validation_fraction >= 1:
                raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
            self._validation_size(x.shape[0], validation_fraction)  # raises before anything changes
        watch = early_stopping or n_iter_no_change is not None or isinstance(self.lr_schedule, schedules.Adaptive)
        cfg = None
        if watch:
            cfg = {"mode": "val_score" if early_stopping else "loss",
                   "patience": 10 if n_iter_no_change is None else n_iter_no_change, "tol": tol,
                   "incremental": False, "split": early_stopping and val is None,
                   "validation_fraction": validation_fraction if early_stopping and val is None else None}
        self._open_monitor(cfg)
        if cfg is not None and cfg["split"]:
            x, yy, w, val = self._split_validation(x, yy, w, validation_fraction, self._monitor["split_seed"])
        return self._train(x, yy, w, epochs, batch_size, lr, shuffle, val, callbacks, train_score, verbose)

    def partial_fit(self, X, y, classes=None, *, batch_size=64, lr=0.01, shuffle=False, sample_weight=None,
                    class_weight=None, n_iter_no_change=10, tol=1e-4, callbacks=None, train_score=False,
                    verbose=False):
        """One pass over (X, y) in minibatches (scikit-learn's partial_fit): counts as one epoch.

        Over the batches of an epoch, ``partial_fit(X[i:i+B], y[i:i+B], batch_size=B)`` gives the
        same weights as one epoch of ``fit(X, y, batch_size=B, shuffle=False)``. ``classes`` (labels
        that may appear in any call, for cross-entropy) is checked against the model's outputs.
        With the "adaptive" schedule the training loss is watched across calls, as scikit-learn does
        (``n_iter_no_change``, ``tol``); no early stopping.
        """
        batch_size = check_positive_number(batch_size, "batch_size", integer=True)
        lr = check_positive_number(lr, "lr")
        n_iter_no_change = check_positive_number(n_iter_no_change, "n_iter_no_change", integer=True)
        tol = check_positive_number(tol, "tol", allow_zero=True)
        callbacks = self._check_callbacks(callbacks)
        if classes is not None:
            self._check_classes(classes)
        x, yy, w = self._device_data(X, y, sample_weight, class_weight)
        cfg = None
        if isinstance(self.lr_schedule, schedules.Adaptive):
            cfg = {"mode": "loss", "patience": n_iter_no_change, "tol": tol, "incremental": True,
                   "split": False, "validation_fraction": None}
        self._open_monitor(cfg)
        return self._train(x, yy, w, 1, batch_size, lr, shuffle, None, callbacks, train_score, verbose)

    def _check_classes(self, classes):
        if self.loss != "cross_entropy":
            raise ValueError("classes is only meaningful for loss='cross_entropy'")
        c = np.asarray(classes)
        if c.ndim != 1 or c.size == 0 or c.dtype.kind not in "iu":
            raise ValueError(f"classes must be a 1-D array of integer labels, got {classes!r}")
        if len(np.unique(c)) != c.size or c.min() < 0 or c.max() >= self.sizes[-1]:
            raise ValueError(f"classes must be distinct labels in [0, {self.sizes[-1]}), got {c.tolist()}")

    @staticmethod
    def _check_callbacks(callbacks):
        if callbacks is None:
            return []
        callbacks = [callbacks] if callable(callbacks) else list(callbacks)
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be callables cb(model, record), got {cb!r}")
        return callbacks

    def _device_data(self, X, y, sample_weight, class_weight):
        """Validated device copies of X, y and the combined per-example weights (or None).

        On the GPU, host data too large for the device (``_stream.fits_on_device``) stay on the host
        as one contiguous array of the model's dtype, and ``_run_epoch`` streams their batches."""
        x = self._training_X(X)
        n = x.shape[0]
        yy = self._device_y(y, n)
        w = check_sample_weight(sample_weight, n)
        if class_weight is not None:
            cw = self._class_weights(class_weight, np.asarray(self._backend.to_host(yy)))
            w = cw if w is None else w * cw
            if not w.sum() > 0:
                raise ValueError("sample_weight times class_weight must have a positive sum")
        w = None if w is None else self._backend.asarray(w, dtype=self.dtype)
        return x, yy, w

    def _training_X(self, X):
        if not self._backend.is_gpu or type(X).__module__.startswith("cupy"):
            return self._device_X(X)
        from ._stream import fits_on_device

        X = check_X(X, "X", self.sizes[0], self.dtype)
        if fits_on_device(self._xp, X.shape[0] * X.shape[1] * self.dtype.itemsize):
            return self._backend.asarray(X, dtype=self.dtype)
        return np.ascontiguousarray(X, dtype=self.dtype)

    def _class_weights(self, class_weight, y):
        """Per-example weights from class_weight ("balanced" or {label: weight}), as scikit-learn."""
        if self.loss != "cross_entropy":
            raise ValueError("class_weight needs loss='cross_entropy'")
        q = self.sizes[-1]
        if isinstance(class_weight, str):
            if class_weight != "balanced":
                raise ValueError(f"class_weight must be 'balanced' or a dict, got {class_weight!r}")
            counts = np.bincount(y, minlength=q).astype(np.float64)
            present = counts > 0
            per_class = np.ones(q)
            per_class[present] = y.shape[0] / (present.sum() * counts[present])
        elif isinstance(class_weight, dict):
            per_class = np.ones(q)
            for label, weight in class_weight.items():
                if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < q:
                    raise ValueError(f"class_weight keys must be labels in [0, {q}), got {label!r}")
                per_class[int(label)] = check_positive_number(weight, f"class_weight[{label}]", allow_zero=True)
        else:
            raise TypeError(f"class_weight must be 'balanced' or a dict, got {type(class_weight).__name__}")
        return per_class[y]

    def _device_validation(self, validation_data):
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise TypeError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, w_val)")
        xv = self._device_X(validation_data[0], "validation_data[0]")
        yv = self._device_y(validation_data[1], xv.shape[0], "validation_data[1]")
        wv = None
        if len(validation_data) == 3 and validation_data[2] is not None:
            wv = check_sample_weight(validation_data[2], xv.shape[0], "validation_data[2]")
            wv = self._backend.asarray(wv, dtype=self.dtype)
        return xv, yv, wv

    def _split_validation(self, x, y, w, fraction, seed):
        """Hold out ceil(fraction·n) examples (stratified by class for cross-entropy, each class in
        proportion by largest remainders), drawn from ``seed``; both parts keep the original order."""
        n = x.shape[0]
        n_val = self._validation_size(n, fraction)
        perm = np.random.default_rng(seed).permutation(n)
        if self.loss == "cross_entropy":
            labels = np.asarray(self._backend.to_host(y))[perm]
            classes, idx = np.unique(labels, return_inverse=True)
            counts = np.bincount(idx)
            quota = counts * n_val / n
            take = np.floor(quota).astype(int)
            extra = n_val - take.sum()
            take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
            val_idx = np.concatenate([perm[idx == c][:take[c]] for c in range(len(classes))])
        else:
            val_idx = perm[:n_val]
        is_val = np.zeros(n, bool)
        is_val[val_idx] = True
        tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)

        def pick(a, rows):  # x may be on the host (streamed training data), y and w are on the device
            if a is None or isinstance(a, np.ndarray):
                return None if a is None else np.take(a, rows, axis=0)
            return self._xp.take(a, self._backend.asarray(rows), axis=0)

        return pick(x, tr), pick(y, tr), pick(w, tr), (pick(x, va), pick(y, va), pick(w, va))

    @staticmethod
    def _validation_size(n, fraction):
        n_val = math.ceil(fraction * n)
        if n_val < 2 or n - n_val < 1:
            raise ValueError(f"validation_fraction={fraction} of {n} examples leaves {n_val} for validation "
                             f"and {n - n_val} for training; use more data or another validation_fraction")
        return n_val

    def _open_monitor(self, cfg):
        """Start the plateau monitor for this run, or continue the one a mid-fit checkpoint left open."""
        m = self._monitor
        if cfg is not None and m is not None and m["open"] and all(m[k] == v for k, v in cfg.items()):
            return  # resume the interrupted run (fit) or the incremental one (partial_fit)
        if cfg is None:
            self._monitor = self._best_theta = None
            return
        self._monitor = {**cfg, "open": True, "best": None, "best_epoch": None, "count": 0,
                         "split_seed": int(self._rng.integers(2**63)) if cfg["split"] else None}
        self._best_theta = self._theta.copy() if cfg["mode"] == "val_score" else None

    def _watch(self, value, lr):
        """scikit-learn's plateau rule on this epoch's value; returns a stop reason or None."""
        m = self._monitor
        best, finite = m["best"], math.isfinite(value)
        if m["mode"] == "val_score":  # higher is better; improvement must exceed tol
            worse = not finite or (best is not None and value < best + m["tol"])
            better = finite and (best is None or value > best)
        else:
            worse = not finite or (best is not None and value > best - m["tol"])
            better = finite and (best is None or value < best)
        m["count"] = m["count"] + 1 if worse else 0
        if better:
            m["best"], m["best_epoch"] = value, self.epochs_
            if self._best_theta is not None:
                self._best_theta[...] = self._theta
        if m["count"] > m["patience"]:
            if self.lr_schedule.on_plateau(lr):
                return "lr_too_small" if isinstance(self.lr_schedule, schedules.Adaptive) else "plateau"
            m["count"] = 0
        return None

    def _train(self, x, y, w, epochs, batch_size, lr, shuffle, val, callbacks, train_score, verbose):
        """The epoch loop shared by fit and partial_fit."""
        n = x.shape[0]
        self.stop_reason_ = "epochs"
        finished = False
        try:
            for _ in range(epochs):
                lr_epoch = self.lr_schedule.lr(lr, self.epochs_, self.samples_seen_)
                J = self._run_epoch(x, y, w, lr_epoch, batch_size, shuffle)
                self.loss_curve_.append(J)
                self.epochs_ += 1
                self.samples_seen_ += n
                record = {"epoch": self.epochs_, "lr": lr_epoch, "loss": J, "score": math.nan,
                          "val_loss": math.nan, "val_score": math.nan}
                if train_score:
                    record["score"] = self._score_device(x, y, w)
                if val is not None:
                    record["val_loss"] = self._objective(*val)
                    record["val_score"] = self._score_device(*val)
                    self.validation_loss_curve_.append(record["val_loss"])
                    self.validation_curve_.append(record["val_score"])
                for k in HISTORY_KEYS:
                    self.history_[k].append(record[k])
                stop = None
                if self._monitor is not None:
                    stop = self._watch(record["val_score" if self._monitor["mode"] == "val_score" else "loss"], lr)
                if verbose:
                    print(f"epoch {self.epochs_}: lr = {lr_epoch:.4g}, J = {J:.6g}"
                          + (f", validation score = {record['val_score']:.4f}" if val is not None else "")
                          + (f"; stopping ({stop})" if stop else ""))
                for cb in callbacks:  # every callback sees every epoch, even after one asks to stop
                    if cb(self, dict(record)):
                        stop = stop or "callback"
                if stop:
                    self.stop_reason_ = stop
                    break
            finished = True
        finally:
            m = self._monitor
            if m is not None and not m["incremental"]:
                m["open"] = False
                if finished and self._best_theta is not None and m["best"] is not None:
                    self._theta[...] = self._best_theta  # early stopping: back to the best epoch
        return self

    @property
    def best_epoch_(self):
        """The epoch (1-based, counted in ``epochs_``) with the best monitored value of the last run."""
        return None if self._monitor is None else self._monitor["best_epoch"]

    @property
    def best_score_(self):
        """Best validation score of the last early-stopping run (None otherwise)."""
        m = self._monitor
        return m["best"] if m is not None and m["mode"] == "val_score" else None

    @property
    def best_loss_(self):
        """Best training loss of the last run that watched it (None otherwise)."""
        m = self._monitor
        return m["best"] if m is not None and m["mode"] == "loss" else None

    def _run_epoch(self, x, y, w, lr, batch_size, shuffle):
        """One pass over (x, y); returns the mean J over the epoch's steps, weighted by batch size.

        Where the batches come from: on the CPU each is gathered just before its step into a buffer
        that stays in cache; on the GPU one gather kernel shuffles the resident data for the whole
        epoch and the batches are contiguous slices; for data left on the host because it does not
        fit on the device (``x`` a NumPy array on the GPU backend) they stream through pinned memory.
        Each step's J goes into a preallocated vector, read back once at the end of the epoch.
        """
        xp, n = self._xp, x.shape[0]
        order = self._rng.permutation(n) if shuffle else None
        streamed = self._backend.is_gpu and isinstance(x, np.ndarray)
        gather = order is not None and not self._backend.is_gpu
        if streamed:  # GPU, data on the host: y and w are on the device, so shuffle them there once
            if order is not None:
                dev_order = self._backend.asarray(order)
                y, w = xp.take(y, dev_order, axis=0), None if w is None else xp.take(w, dev_order)
            from ._stream import PinnedBatches

            batches = PinnedBatches(xp, x, batch_size).epoch(np.arange(n) if order is None else order, batch_size)
        elif gather:
            x_batch = xp.empty((min(batch_size, n),) + x.shape[1:], x.dtype)
        elif order is not None:
            perm = self._backend.asarray(order)
            x, y = xp.take(x, perm, axis=0), xp.take(y, perm, axis=0)
            w = None if w is None else xp.take(w, perm)
        # The state at the start of the epoch, restored if it diverges: weights and optimizer state
        # (a non-finite momentum/Adam buffer would poison any later training with a smaller rate).
        opt = self.optimizer
        snapshot = (self._theta.copy(), opt.t, {k: v.copy() for k, v in opt.state_arrays().items()})
        starts = range(0, n, batch_size)
        Js = xp.empty(len(starts) + 1, self.dtype)  # each step's J, then whether θ ended finite
        for step, i in enumerate(starts):
            j = min(i + batch_size, n)
            if streamed:
                J = self._train_step(next(batches), y[i:j], None if w is None else w[i:j], lr)
            elif gather:
                rows = order[i:j]
                J = self._train_step(xp.take(x, rows, axis=0, out=x_batch[:j - i], mode="clip"), y[rows],
                                     None if w is None else w[rows], lr)
            else:
                J = self._train_step(x[i:j], y[i:j], None if w is None else w[i:j], lr)
            Js[step] = J
            if not self._backend.is_gpu and not math.isfinite(Js[step]):
                self._diverged(snapshot, step, f"the objective J became {float(J)}")
        # J is taken before each update, so an update that overflows shows in no J of this epoch
        # (it would only in the next one, whose snapshot would then hold the non-finite weights).
        Js[-1] = xp.isfinite(self._theta).all()
        Js = self._backend.to_host(Js).astype(np.float64)  # the epoch's one read-back
        theta_finite, Js = Js[-1] == 1, Js[:-1]
        bad = np.flatnonzero(~np.isfinite(Js))
        if bad.size:
            self._diverged(snapshot, int(bad[0]), f"the objective J became {float(Js[bad[0]])}")
        if not theta_finite:
            self._diverged(snapshot, len(starts) - 1, "the weights became NaN or infinite in the update")
        sizes = np.minimum(batch_size, n - np.arange(0, n, batch_size))
        return float(Js @ sizes) / n

    def _diverged(self, snapshot, step, what):
        theta, t, state = snapshot
        self._theta[...] = theta
        self.optimizer.t = t
        for k in self.optimizer.state_arrays():
            if k in state:
                getattr(self.optimizer, k)[...] = state[k]
            else:  # made during the diverged epoch
                setattr(self.optimizer, k, None)
        where = f"epoch {self.epochs_ + 1}" + ("" if step is None else f", step {step + 1}")
        raise DivergenceError(
            f"training diverged: {what} in {where}. The weights were restored to "
            f"those at the start of that epoch. Try a smaller learning rate.")

    # ------------------------------------------------------------------ inference
    def _outputs(self, x, chunk=8192):
        """O for the rows of x, in chunks to bound memory (host rows are moved chunk by chunk)."""
        xp = self._xp
        outs = []
        for i in range(0, x.shape[0], chunk):
            a = self._backend.asarray(x[i:i + chunk])
            for l in range(self.n_layers - 1):
                a = F.ACTIVATIONS[self.activations[l]].forward(
                    F.linear_forward(a, self._W[l], self._b[l] if self.bias else None))
            outs.append(F.linear_forward(a, self._W[-1], self._b[-1] if self.bias else None))
        return outs[0] if len(outs) == 1 else xp.concatenate(outs)

    def _objective(self, x, y, w=None):
        o = self._outputs(x)
        return float(F.LOSSES[self.loss].forward(o, y, w)) + F.regulariser(self._W, self.weight_decay)

    def decision_function(self, X):
        """The outputs o (logits for cross-entropy) as a host NumPy array."""
        return self._backend.to_host(self._outputs(self._device_X(X)))

    def predict_proba(self, X):
        if self.loss != "cross_entropy":
            raise ValueError("predict_proba needs loss='cross_entropy'")
        return self._backend.to_host(F.softmax(self._outputs(self._device_X(X))))

    def predict(self, X):
        """Class labels (cross-entropy) or outputs (squared; 1-D when q = 1), as NumPy arrays."""
        o = self._outputs(self._device_X(X))
        if self.loss == "cross_entropy":
            return self._backend.to_host(o.argmax(axis=1))
        o = self._backend.to_host(o)
        return o[:, 0] if o.shape[1] == 1 else o

    def _score_device(self, x, y, w=None):
        """Accuracy or R² (weighted by w when given, as scikit-learn's sample_weight)."""
        o = self._outputs(x)
        if self.loss == "cross_entropy":
            hit = o.argmax(axis=1) == y
            return float(hit.mean() if w is None else (w * hit).sum() / w.sum())
        # R², averaged uniformly over outputs, as sklearn.metrics.r2_score
        xp = self._xp
        wc = xp.ones((y.shape[0], 1), y.dtype) if w is None else w[:, None]
        ss_res = (wc * (y - o) ** 2).sum(axis=0)
        ss_tot = (wc * (y - (wc * y).sum(axis=0) / wc.sum()) ** 2).sum(axis=0)
        r2 = xp.where(ss_tot > 0, 1 - ss_res / xp.where(ss_tot > 0, ss_tot, 1), xp.where(ss_res > 0, 0.0, 1.0))
        return float(r2.mean())

    def score(self, X, y, sample_weight=None):
        """Accuracy for cross-entropy, R² (uniform average over outputs) for squared; weighted as
        scikit-learn's metrics when sample_weight is given."""
        x = self._device_X(X)
        yy = self._device_y(y, x.shape[0])
        w = check_sample_weight(sample_weight, x.shape[0])
        return self._score_device(x, yy, None if w is None else self._backend.asarray(w, dtype=self.dtype))

    # ------------------------------------------------------------------ persistence
    def _checkpoint_state(self):
        """(meta, arrays): everything needed to rebuild this model and continue training exactly.

        ``meta`` is JSON-serialisable (architecture, settings, optimizer hyper-parameters and step,
        learning-rate schedule and its state, epoch and sample counts, curves and history, the
        plateau monitor of early stopping, the RNG state); ``arrays`` maps names to host NumPy arrays
        (weights and biases as ``theta``, optimizer state, the best weights of early stopping).
        ``gpumlp.io`` writes both without pickle. Non-finite floats in ``history`` are stored as None.
        """
        o = self.optimizer
        meta = {
            "sizes": list(self.sizes), "activation": self.activation, "loss": self.loss,
            "weight_decay": self.weight_decay, "bias": self.bias, "dtype": self.dtype.name, "seed": self.seed,
            "optimizer": {"name": o.name, "t": o.t, **self._optimizer_kwargs()},
            "epochs": self.epochs_, "loss_curve": list(self.loss_curve_),
            "validation_curve": list(self.validation_curve_),
            "validation_loss_curve": list(self.validation_loss_curve_),
            "rng_state": self._rng.bit_generator.state,
            "lr_schedule": schedules.to_json(self.lr_schedule), "samples_seen": self.samples_seen_,
            "history": {k: [v if math.isfinite(v) else None for v in vs] for k, vs in self.history_.items()},
            "stop_reason": self.stop_reason_,
            "monitor": None if self._monitor is None else dict(self._monitor),
        }
        arrays = {"theta": np.array(self._backend.to_host(self._theta))}
        if self._best_theta is not None:
            arrays["best_theta"] = np.array(self._backend.to_host(self._best_theta))
        for k, v in o.state_arrays().items():
            arrays[f"optimizer.{k}"] = np.array(self._backend.to_host(v))
        return meta, arrays

    @classmethod
    def _from_checkpoint_state(cls, meta, arrays, backend="auto"):
        """Inverse of ``_checkpoint_state`` (``gpumlp.io.load`` validates before calling this)."""
        opt = dict(meta["optimizer"])
        name, t = opt.pop("name"), opt.pop("t")
        schedule = schedules.from_json(meta["lr_schedule"]) if meta.get("lr_schedule") else None
        m = cls(meta["sizes"], activation=meta["activation"], loss=meta["loss"],
                weight_decay=meta["weight_decay"], bias=meta["bias"], dtype=meta["dtype"], backend=backend,
                seed=meta["seed"], optimizer=name, lr_schedule=schedule, **opt)
        m._theta[...] = m._backend.asarray(arrays["theta"].astype(m.dtype, copy=False))
        m.optimizer.t = t
        for k in m.optimizer.__dict__:
            if f"optimizer.{k}" in arrays:
                setattr(m.optimizer, k, m._backend.asarray(arrays[f"optimizer.{k}"].astype(m.dtype, copy=False)))
        m.epochs_ = meta["epochs"]
        m.loss_curve_ = list(meta["loss_curve"])
        m.validation_curve_ = list(meta["validation_curve"])
        m.validation_loss_curve_ = list(meta["validation_loss_curve"])
        m._rng.bit_generator.state = meta["rng_state"]
        # Keys added after format version 1 (files without them load as models that never trained with them).
        m.samples_seen_ = int(meta.get("samples_seen", 0))
        history = meta.get("history") or {}
        m.history_ = {k: [math.nan if v is None else v for v in history.get(k, [])] for k in HISTORY_KEYS}
        m.stop_reason_ = meta.get("stop_reason")
        m._monitor = None if meta.get("monitor") is None else dict(meta["monitor"])
        if "best_theta" in arrays:
            m._best_theta = m._backend.asarray(arrays["best_theta"].astype(m.dtype, copy=False))
        return m

    def save(self, path):
        from .io import save

        save(self, path)

    def __reduce__(self):
        """Pickling and deepcopy (used by scikit-learn's joblib parallelism) go through the checkpoint
        state, so they carry exactly what a saved file does (with the ``scaler_``, ``classes_`` and
        ``training_config_`` that ``gpumlp.load`` sets); the copy lives on the same backend."""
        meta, arrays = self._checkpoint_state()
        extra = {k: getattr(self, k) for k in _SAVED_EXTRAS if hasattr(self, k)}
        return _unpickle, (meta, arrays, self.backend), extra or None

    def __repr__(self):
        return (f"MLP(sizes={self.sizes}, activation={self.activation!r}, loss={self.loss!r}, "
                f"weight_decay={self.weight_decay}, bias={self.bias}, dtype={self.dtype.name!r}, "
                f"backend={self.backend!r}, optimizer={self.optimizer.name!r})")


# Attributes a model file carries besides the checkpoint state (``gpumlp.io.load`` sets them).
_SAVED_EXTRAS = ("scaler_", "classes_", "training_config_")


def _unpickle(meta, arrays, backend):
    return MLP._from_checkpoint_state(meta, arrays, backend=backend)
