"""The lecture's model: a multilayer perceptron of any depth, its parameters and its equations.

    Z1 = X W1ᵀ (+b1), H1 = φ(Z1), ..., O = H_k W_{k+1}ᵀ (+b_{k+1}),
    J = L(O, y) + λ/2 Σ_l ‖W_l‖²_F

``forward``/``backward`` are the readable reference (``functions.py``, one named function per
equation) and return every value of the computational graph. Training lives elsewhere and uses
only the model's public state: ``gpumlp.step.Step`` (one step, in two phases: ∂L/∂θ into
``model.grad``, then the update) and ``gpumlp.trainer.Trainer`` (epochs, batches, divergence,
monitor, callbacks); ``fit``, ``partial_fit`` and ``step`` here are thin calls into them.
``state_dict``/``from_state_dict`` (``gpumlp.state``) are what ``gpumlp.io`` writes and reads;
``gpumlp.load`` (``gpumlp.pipeline``) reads a file back as the MLP, or as the ``Pipeline`` of the MLP
and its preprocessing when the file carries some.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import functions as F
from . import io, metrics, onnx_export, optim, schedules, state, streamed
from .backend import is_device_array, resolve
from .data.streaming import as_stream
from .data_parallel import make_trainer
from .graph import graph as computational_graph
from .lbfgs import LBFGSTrainer
from .ops import Layer, Ops
from .step import cached_step
from .state import HISTORY_KEYS
from .trainer import DivergenceError, Trainer
from .validation import (check_classes, check_dtype, check_positive_number, check_sample_weight, check_X, check_y,
                         rescaled_weights)

__all__ = ["MLP", "Forward", "Gradients", "DivergenceError"]

HE_INIT = ("relu", "leaky_relu", "gelu")
# set_params: what defines a model (build a new one to change it), and the optimizers' own settings
ARCHITECTURE = ("sizes", "activation", "loss", "bias", "dtype", "backend", "seed", "optimizer")
OPTIMIZER_PARAMS = ("momentum", "nesterov", "beta1", "beta2", "eps", "decoupled")


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
    # which model computed it, and a digest of its parameters then: backward refuses any other
    model: object = field(default=None, repr=False, compare=False)
    theta_digest: bytes = field(default=b"", repr=False, compare=False)


@dataclass
class Gradients:
    """The lecture's gradients by name: ∂J/∂o, and per hidden layer ∂J/∂h, ∂J/∂z; ∂J/∂W per layer."""

    do: object
    dh: list = field(default_factory=list)
    dz: list = field(default_factory=list)
    dW: list = field(default_factory=list)
    db: list | None = None


def _streamable(method):
    """An MLP method that takes a streamed source in place of X (``gpumlp.streamed``'s function of its name)."""
    @functools.wraps(method)
    def call(self, X, *args, **kw):
        source = as_stream(X)  # a StreamSource or View, or a re-iterable of (X_chunk, y_chunk) pairs
        if source is not None:
            return getattr(streamed, method.__name__)(self, source, *args, **kw)
        return method(self, X, *args, **kw)
    return call


def _exclusive(what):
    """Decorator: run the method under ``MLP.exclusive(what)``."""
    def wrap(method):
        @functools.wraps(method)
        def exclusive(self, *args, **kwargs):
            with self.exclusive(what):
                return method(self, *args, **kwargs)
        return exclusive
    return wrap


class MLP:
    """Multilayer perceptron trained by hand-derived backpropagation.

    Parameters
    ----------
    sizes : (d, h1, ..., hk, q) layer widths; (d, h, q) is the lecture's one-hidden-layer net.
    activation : φ for every hidden layer, or a list of one name per hidden layer
        (relu, leaky_relu, sigmoid, tanh, gelu, softplus, identity).
    loss : "cross_entropy" (softmax), "squared" (½‖o − y‖²), "binary_cross_entropy" (logistic, per label), "poisson".
    weight_decay : λ in s = λ/2 Σ‖W‖²_F; ∂J/∂W includes λW (PyTorch's ``weight_decay``).
        scikit-learn's ``alpha`` penalises alpha/(2·batch) Σ‖W‖², i.e. λ = alpha / batch_size.
    bias : add a bias to every layer (never weight-decayed).
    dtype : "float32" or "float64", end to end.
    backend : "auto" | "numpy" | "cupy" (or $GPUMLP_BACKEND when "auto").
    seed : seeds the initial weights and the shuffling (``rng``); the same seed gives the same
        initial weights on every backend (drawn on the host in float64, then cast).
    optimizer : "sgd" (momentum, nesterov), "adam" (beta1, beta2, eps, decoupled=AdamW), see ``gpumlp.optim``
        (PyTorch's conventions); or "lbfgs": full-batch L-BFGS (``gpumlp.lbfgs``), trained by ``fit`` only.
    lr_schedule : None ("constant"), a name, or a ``gpumlp.schedules.Schedule`` such as
        ``Cosine(T_max=50)``: the learning rate of each epoch from the ``lr`` given to ``fit``.

    State: ``theta`` (every parameter, one flat backend array: all weights, then all biases) with
    ``weights``/``biases`` as views into it, ``grad`` (∂L/∂θ in the same layout, written by a
    training step), ``n_weights`` (the length of θ's weight part, the part λ applies to), ``ops``
    (the backend's step operations), ``array_backend`` (the ``gpumlp.backend.Backend``), ``rng``.
    Training progress: ``epochs_``, ``samples_seen_``, ``loss_curve_``, ``history_``,
    ``stop_reason_``, ``monitor_`` (the plateau monitor of the last run). Preprocessing that a model
    file carries: ``preprocessing_`` (a ``gpumlp.state.Preprocessing``: the imputer, scaler, classes,
    target scaling and header names it was trained with; its ``scaler_`` and ``classes_`` read it) and
    ``training_config_`` (the command line's settings), None unless set.

    Warm starts: like a PyTorch module, an MLP keeps training from where it is (weights, optimizer state,
    schedule position, curves); ``reset_parameters()`` starts over (curves and counters kept; initialisation:
    see there). ``gpumlp.sklearn``'s estimators follow scikit-learn: ``fit`` starts afresh unless ``warm_start``.
    Streamed data (``gpumlp.data.stream``) go where arrays do: fit, predict, score (``gpumlp.streamed``)."""

    def __init__(self, sizes, activation="relu", loss="cross_entropy", weight_decay=0.0, bias=False,
                 dtype="float32", backend="auto", seed=None, optimizer="sgd", momentum=0.0,
                 nesterov=False, beta1=0.9, beta2=0.999, eps=1e-8, decoupled=False, lr_schedule=None):
        sizes = _check_sizes(sizes)
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
        self.array_backend = resolve(backend)
        self.backend = self.array_backend.name
        self.ops = _make_ops(self.array_backend, self.dtype)
        self._reference = Ops(self.array_backend.xp)  # functions.py's math: forward and inference
        self.rng = np.random.default_rng(seed)
        self._alloc_parameters()
        self._steps = {}  # batch size -> Step (full batches and one remainder size)
        self.loss_curve_, self.validation_curve_, self.validation_loss_curve_ = [], [], []
        self.epochs_ = 0
        self.samples_seen_ = 0  # examples trained on (scikit-learn's t_), for the invscaling schedule
        self.history_ = {k: [] for k in HISTORY_KEYS}
        self.stop_reason_ = None
        self.monitor_ = None  # plateau monitor of the current (or last) run
        self.preprocessing_ = self.training_config_ = None  # a state.Preprocessing that a file carries
        self._lock = threading.RLock()  # held while θ is trained or set (``exclusive``)
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters
    def _alloc_parameters(self):
        """One flat buffer θ = [W1, ..., W_{k+1}, b1, ..., b_{k+1}]; weights and biases are views."""
        shapes = list(zip(self.sizes[1:], self.sizes[:-1]))  # W_l is (out, in), as the lecture
        self.n_weights = sum(o * i for o, i in shapes)
        n_bias = sum(self.sizes[1:]) if self.bias else 0
        xp = self.array_backend.xp
        self.theta = xp.zeros(self.n_weights + n_bias, self.dtype)
        self.grad = xp.zeros_like(self.theta)
        self._W, self._gW, self._b, self._gb = [], [], [], []
        pos = 0
        for o, i in shapes:
            self._W.append(self.theta[pos:pos + o * i].reshape(o, i))
            self._gW.append(self.grad[pos:pos + o * i].reshape(o, i))
            pos += o * i
        for o in self.sizes[1:] if self.bias else ():
            self._b.append(self.theta[pos:pos + o])
            self._gb.append(self.grad[pos:pos + o])
            pos += o

    @_exclusive("reset_parameters")
    def reset_parameters(self):
        """Fresh initial weights from ``rng``: W^(l) ~ U(−a, a), a = √(6/fan_in) (He) for relu, leaky_relu
        and gelu hidden layers, a = √(6/(fan_in + fan_out)) (Glorot) otherwise and for the output layer;
        biases 0. Forgets the optimizer's, the schedule's and the monitor's state."""
        host = []
        for l, (fan_out, fan_in) in enumerate(zip(self.sizes[1:], self.sizes[:-1])):
            hidden = l < self.n_layers - 1
            if hidden and self.activations[l] in HE_INIT:
                a = math.sqrt(6.0 / fan_in)
            else:
                a = math.sqrt(6.0 / (fan_in + fan_out))
            host.append(self.rng.uniform(-a, a, size=(fan_out, fan_in)))
        self._copy_in(dict(enumerate(host)), dict(enumerate(np.zeros(n) for n in self.sizes[1:] if self.bias)))
        self.optimizer.reset()
        self.lr_schedule.reset()
        self.monitor_ = None

    def _copy_in(self, weights, biases):  # {layer: host array} each, checked already
        for views, new in ((self._W, weights), (self._b, biases)):
            for l, a in new.items():
                views[l][...] = self.array_backend.asarray(np.asarray(a, dtype=self.dtype))

    @property
    def weights(self):
        """W^(l) shaped (out, in), as backend arrays (views into ``theta``)."""
        return list(self._W)

    @property
    def biases(self):
        return list(self._b) if self.bias else None

    @property
    def weight_grads(self):
        """∂L/∂W^(l) as views into ``grad`` (written by a training step's gradient phase)."""
        return list(self._gW)

    @property
    def bias_grads(self):
        return list(self._gb) if self.bias else None

    @property
    def layers(self):
        """One ``gpumlp.ops.Layer(W, b, activation)`` per layer (activation None for the output)."""
        acts = list(self.activations) + [None]
        return [Layer(W, self._b[l] if self.bias else None, acts[l]) for l, W in enumerate(self._W)]

    @property
    def scaler_(self):
        """The input scaler the model was trained behind (from ``preprocessing_``), or None."""
        s = None if self.preprocessing_ is None else self.preprocessing_.scaler
        return None if s is None or s.kind == "none" else s

    @property
    def classes_(self):
        return None if self.preprocessing_ is None else self.preprocessing_.classes

    @property
    def n_layers(self):
        return len(self.sizes) - 1

    def get_weights(self):
        """Host NumPy copies of the weights."""
        return [np.array(self.array_backend.to_host(W)) for W in self._W]

    def get_biases(self):
        return [np.array(self.array_backend.to_host(b)) for b in self._b] if self.bias else None

    @_exclusive("set_weights")
    def set_weights(self, weights, biases=None):
        """Set every layer's W (and every b, when given), checked as ``set_layers`` does: all, then copied."""
        W = _check_params(weights, self._W, "weights", self.dtype)
        self._copy_in(W, {} if biases is None else _check_params(biases, self.biases, "biases", self.dtype))

    @_exclusive("set_layers")
    def set_layers(self, weights=None, biases=None, *, names=("weights", "biases")):
        """Set some layers by index: ``weights`` maps a layer index (negative from the end) to its W (out, in),
        ``biases`` to its b (out,): host or device arrays of real numbers, cast to the model's dtype. All are
        checked (index, shape, dtype, finite) before any is copied: a ValueError or TypeError names the first
        wrong one as ``names[0 or 1][l]``, and then nothing has changed. Returns self."""
        W = _check_params(weights, self._W, names[0], self.dtype, by_index=True)
        self._copy_in(W, _check_params(biases, self.biases, names[1], self.dtype, by_index=True))
        return self

    # ------------------------------------------------------------------ hyper-parameters
    def get_params(self, deep=True):
        """The constructor's arguments (scikit-learn's convention; ``deep`` is accepted and unused)."""
        others = {k: v for name in ("sgd", "adam") for k, v in optim.make_optimizer(name).hyperparameters().items()}
        return {"sizes": self.sizes, "activation": self.activation, "loss": self.loss,
                "weight_decay": self.weight_decay, "bias": self.bias, "dtype": self.dtype.name,
                "backend": self.backend, "seed": self.seed, "optimizer": self.optimizer.name,
                **others, **self.optimizer.hyperparameters(), "lr_schedule": self.lr_schedule}

    @_exclusive("set_params")
    def set_params(self, **params):
        """Change training hyper-parameters in place: weight_decay, the optimizer's own settings
        (its state is kept) and lr_schedule. The architecture, loss, dtype, backend, seed and the
        optimizer's kind define the model: build a new MLP to change them. Returns self."""
        fixed = [k for k in params if k in ARCHITECTURE]
        unknown = [k for k in params if k not in self.get_params()]
        if unknown or fixed:
            raise ValueError(f"set_params cannot change {sorted(unknown + fixed)}: it changes weight_decay, "
                             f"lr_schedule and the settings of the {self.optimizer.name!r} optimizer; "
                             f"build a new MLP for the rest")
        mine = self.optimizer.hyperparameters()
        foreign = [k for k in params if k in OPTIMIZER_PARAMS and k not in mine]
        if foreign:
            raise ValueError(f"{foreign} do not apply to optimizer={self.optimizer.name!r}")
        # Validate everything before changing anything.
        weight_decay = check_positive_number(params.get("weight_decay", self.weight_decay), "weight_decay",
                                             allow_zero=True)
        new_opt = optim.make_optimizer(self.optimizer.name, **{**mine, **{k: params[k] for k in mine if k in params}})
        schedule = schedules.make_schedule(params["lr_schedule"]) if "lr_schedule" in params else self.lr_schedule
        new_opt.adopt_state(self.optimizer)
        self.weight_decay, self.optimizer, self.lr_schedule = weight_decay, new_opt, schedule
        return self

    # ------------------------------------------------------------------ data
    def to_device(self, X, y=None, sample_weight=None, *, names=("X", "y", "sample_weight")):
        """Validated backend arrays (x, y, w) for X (n, d) and, when given, y and sample_weight (else None): x and w
        in the model's dtype, y int64 labels (cross-entropy) or (n, q) targets; errors name the argument (``names``)."""
        x = self.array_backend.asarray(check_X(X, names[0], self.sizes[0], self.dtype, backend=self.array_backend),
                                       dtype=self.dtype)
        return (x, *self.targets_to_device(y, x.shape[0], sample_weight, names=names[1:]))

    def targets_to_device(self, y, n_samples, sample_weight=None, *, names=("y", "sample_weight")):
        """``to_device`` for y and sample_weight of ``n_samples`` examples alone: (y, w) or None each."""
        b = self.array_backend
        if y is not None:
            y = check_y(y, self.loss, n_samples, self.sizes[-1], names[0], self.dtype, backend=b)
            y = b.asarray(y, dtype=np.int64 if self.loss == "cross_entropy" else self.dtype)
        w = check_sample_weight(sample_weight, n_samples, names[1])
        return y, None if w is None else b.asarray(rescaled_weights(w), dtype=self.dtype)

    # ------------------------------------------------------------------ the lecture's forward/backward
    def forward(self, X, y=None, sample_weight=None):
        """The lecture's forward pass on a batch: z, h per hidden layer, o; with y also L, s, J."""
        x, yy, w = self.to_device(X, y, sample_weight)
        zs, hs, o = self._reference.forward(self.layers, x)  # z = W a (+ b), h = φ(z) per layer, o
        fw = Forward(x=x, z=zs, h=hs, o=o, y=yy, sample_weight=w, model=self, theta_digest=_digest(self))
        if yy is not None:
            fw.L = float(F.LOSSES[self.loss].forward(o, yy, w))
            fw.s = float(F.regulariser(self._W, self.weight_decay))
            fw.J = fw.L + fw.s
        return fw

    def backward(self, fw):
        """The lecture's backward pass: ∂J/∂o, then per layer ∂J/∂W (λW included), ∂J/∂h, ∂J/∂z."""
        if not isinstance(fw, Forward) or fw.y is None:
            raise ValueError("backward needs the result of forward(X, y) called with targets y")
        if fw.model is not self:
            raise ValueError("backward was given the forward pass of another model; call this model's forward")
        if fw.theta_digest != _digest(self):
            raise ValueError("backward was given a forward pass computed before the weights changed; "
                             "call forward again")
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

    @contextlib.contextmanager
    def exclusive(self, what):
        """Hold the model for ``what`` (training, or setting θ); another thread trying meanwhile gets a
        RuntimeError, the holder may re-enter. Inference holds nothing: during training it sees θ in flight."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(f"{what}: this model is being trained or changed by another thread; train "
                               f"one model per thread, or wait for the other call to return")
        try:
            yield
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ inference
    def _outputs(self, x):
        """o for the rows of a validated x (``_infer``: in chunks, host rows moved chunk by chunk)."""
        return _infer(self, x)

    @_streamable
    def outputs(self, X):
        """The outputs o as a backend array (``decision_function`` without the copy); X on host or device."""
        return self._outputs(check_X(X, "X", self.sizes[0], self.dtype, backend=self.array_backend))

    def decision_function(self, X):
        """The outputs o (logits for the classification losses, log μ for poisson) as a host NumPy array."""
        return self.array_backend.to_host(self.outputs(X))

    def predict_proba(self, X):
        """Class probabilities: softmax (cross_entropy), or each output's sigmoid (binary_cross_entropy)."""
        if not F.LOSSES[self.loss].is_classification:
            raise ValueError(f"predict_proba needs loss='cross_entropy' or 'binary_cross_entropy', not {self.loss!r}")
        return self.array_backend.to_host(F.LOSSES[self.loss].output(self.outputs(X)))

    def predict(self, X):
        """NumPy labels, 0/1 per label (binary_cross_entropy), outputs or means e^o (poisson); 1-D when q = 1."""
        p = self.array_backend.to_host(F.LOSSES[self.loss].predict(self.outputs(X)))
        return p[:, 0] if p.ndim == 2 and p.shape[1] == 1 else p

    def _checked(self, X, y, sample_weight):
        x = check_X(X, "X", self.sizes[0], self.dtype, backend=self.array_backend)  # moved by _outputs, in chunks
        return (x, *self.targets_to_device(y, x.shape[0], sample_weight))

    @_streamable
    def objective(self, X, y, sample_weight=None):
        """J = L + s on (X, y) (L weighted by sample_weight when given), as a float."""
        x, yy, w = self._checked(X, y, sample_weight)
        return float(F.LOSSES[self.loss].forward(self._outputs(x), yy, w)) + F.regulariser(self._W, self.weight_decay)

    @_streamable
    def score(self, X, y, sample_weight=None):
        """``metrics.score`` of this loss: accuracy (subset accuracy for binary_cross_entropy) or R² (squared,
        poisson), weighted as scikit-learn's metrics when sample_weight is given."""
        x, yy, w = self._checked(X, y, sample_weight)
        return metrics.score(F.LOSSES[self.loss], self._outputs(x), yy, w)

    # ------------------------------------------------------------------ training: thin calls
    def training_step(self, batch_size):
        """This model's ``gpumlp.step.Step`` for batches of ``batch_size`` rows (kept for two sizes)."""
        return cached_step(self._steps, self, batch_size)

    @_exclusive("step")
    def step(self, X, y, lr, sample_weight=None):
        """One gradient-descent update W ← W − lr·∂J/∂W on this batch; returns J before it."""
        lr = check_positive_number(lr, "lr")
        x, yy, w = self.to_device(X, y, sample_weight)
        return float(self.training_step(x.shape[0]).train(x, yy, w, self.optimizer, lr))

    def fit(self, X, y=None, epochs=10, batch_size=64, lr=0.01, shuffle=True, validation_data=None,
            sample_weight=None, verbose=False, *, class_weight=None, early_stopping=False, validation_fraction=0.1, n_iter_no_change=None,
            tol=1e-4, callbacks=None, train_score=False, comm=None, sharded=False, max_fun=15000):
        """Minibatch training from the current weights (see the class docstring on warm starts), run by a
        ``gpumlp.Trainer``; with ``comm``, ``sharded``: over its ranks (``gpumlp.data_parallel``). Returns self.
        optimizer="lbfgs": ``gpumlp.lbfgs.LBFGSTrainer``, one process (``epochs`` its iterations, max_fun, tol).

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
        early_stopping : monitor the validation score (from ``validation_data``, else from a held-out
            ``validation_fraction`` of X, stratified by class for cross-entropy); stop after more than
            ``n_iter_no_change`` (default 10) epochs in a row not improving the best score by ``tol``; restore the best.
        n_iter_no_change : without early stopping, an integer turns on scikit-learn's convergence rule on the training
            loss (stop after more than n epochs without it falling by more than ``tol``); None (default) trains all
            ``epochs``. With the "adaptive" schedule a plateau divides the lr by 5 instead (``gpumlp.schedules``).
        callbacks : a callable or a list of them, called as ``cb(model, record)`` after each epoch
            (``record`` is that epoch's ``history_`` entry as a dict); returning True stops training.

        X may be a streamed source (``gpumlp.data.stream``; y None), its rows shuffled by chunks and a buffer.
        ``stop_reason_`` says why training ended: "epochs", "plateau", "lr_too_small", "callback" (L-BFGS also
        "converged", "max_fun", "line_search"). Checkpoints saved from a callback resume the run exactly."""
        if self.optimizer.name == "lbfgs" and comm is None:
            return LBFGSTrainer(self, callbacks=callbacks, train_score=train_score, verbose=verbose).fit(
                X, y, epochs, max_fun=max_fun, tol=tol, sample_weight=sample_weight, class_weight=class_weight,
                validation_data=validation_data, early_stopping=early_stopping, n_iter_no_change=n_iter_no_change)
        trainer = make_trainer(self, comm, sharded, batch_size=batch_size, lr=lr, shuffle=shuffle,
                               callbacks=callbacks, train_score=train_score, verbose=verbose)
        return trainer.fit(X, y, epochs, sample_weight=sample_weight, class_weight=class_weight,
                           validation_data=validation_data, early_stopping=early_stopping,
                           validation_fraction=validation_fraction, n_iter_no_change=n_iter_no_change, tol=tol)

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
        trainer = Trainer(self, batch_size=batch_size, lr=lr, shuffle=shuffle, callbacks=callbacks,
                          train_score=train_score, verbose=verbose)
        if classes is not None:
            check_classes(classes, self.loss, self.sizes[-1])
        return trainer.partial_fit(X, y, sample_weight=sample_weight, class_weight=class_weight,
                                   n_iter_no_change=n_iter_no_change, tol=tol)

    @property
    def best_epoch_(self):
        """The epoch (1-based, counted in ``epochs_``) with the best monitored value of the last run."""
        return None if self.monitor_ is None else self.monitor_.best_epoch

    @property
    def best_score_(self):  # the best validation score of the last early-stopping run (else None)
        return self.monitor_.best if self.monitor_ is not None and self.monitor_.mode == "val_score" else None

    @property
    def best_loss_(self):  # the best training loss of the last run that watched it (else None)
        return self.monitor_.best if self.monitor_ is not None and self.monitor_.mode == "loss" else None

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """Everything needed to rebuild this model and continue training exactly, as a
        ``gpumlp.state.ModelState`` (settings, parameters, optimizer, schedule, progress, monitor,
        RNG, preprocessing): what ``gpumlp.io`` writes."""
        return state.capture(self)

    @_exclusive("load_state_dict")
    def load_state_dict(self, model_state):
        """Set parameters, optimizer, schedule, progress and preprocessing from ``model_state`` (of a
        model with the same architecture). Returns self."""
        state.restore(self, model_state)
        return self

    @classmethod
    def from_state_dict(cls, model_state, backend="auto"):
        """A new model built from ``model_state`` on ``backend``."""
        return cls(**state.constructor_arguments(model_state), backend=backend).load_state_dict(model_state)

    def save(self, path):
        """Write this model to ``path`` (``gpumlp.io.save``: an .npz written atomically, no pickle)."""
        io.save(self, path)

    def graph(self, batch_size=None):
        """The lecture's computational graph of this model and its gradients (``gpumlp.graph``)."""
        return computational_graph(self, batch_size)

    def to_onnx(self, path=None, *, dtype=None, opset=None):
        """This model as an ONNX ``ModelProto`` (``gpumlp.onnx_export``; its input: features as ``predict`` takes them)."""
        return onnx_export.export(self, None, path, dtype=dtype, opset=opset)

    def __reduce__(self):
        """Pickling and deepcopy (used by scikit-learn's joblib parallelism) go through the state
        dict, so they carry exactly what a saved file does; the copy lives on the same backend."""
        s = self.state_dict()
        return _unpickle, (s.meta, s.arrays, self.backend)

    def __repr__(self):
        return (f"MLP(sizes={self.sizes}, activation={self.activation!r}, loss={self.loss!r}, "
                f"weight_decay={self.weight_decay}, bias={self.bias}, dtype={self.dtype.name!r}, "
                f"backend={self.backend!r}, optimizer={self.optimizer.name!r})")


INFER_CHUNK = 8192  # rows per forward pass of inference: bounds its memory (the same chunks as ever: no result moves)


def _infer(model, x):
    """The outputs o (n, q) of a validated x, INFER_CHUNK rows at a time (host rows move to the device chunk by
    chunk). On NumPy through the step's NumpyOps: the reference's operations in its order, so its bits
    (tests/test_inference.py holds them to ``forward``), without its temporaries (a new z and h per layer and
    chunk, relu's slow array-and-scalar loop, the concatenation): the hidden layers' z and h go into buffers
    made once per call (concurrent predictions share none), relu's h into its z, and each chunk's o straight
    into its rows of the result (benchmarks/compare_predict.py). On the GPU the reference, as before."""
    b, n, dtype, layers = model.array_backend, x.shape[0], model.dtype, model.layers
    if b.is_gpu:
        outs = [model._reference.forward(layers, b.asarray(x[i:i + INFER_CHUNK], dtype=dtype))[2]
                for i in range(0, n, INFER_CHUNK)]
        return outs[0] if len(outs) == 1 else b.xp.concatenate(outs)
    rows = min(n, INFER_CHUNK)
    o = np.empty((n, model.sizes[-1]), dtype)
    z = [np.empty((rows, width), dtype) for width in model.sizes[1:-1]]
    h = [zl if a == "relu" else np.empty_like(zl) for zl, a in zip(z, model.activations)]
    for i in range(0, n, rows):
        m = min(rows, n - i)
        model.ops.forward(layers, b.asarray(x[i:i + m], dtype=dtype), [zl[:m] for zl in z], [hl[:m] for hl in h],
                          o[i:i + m])
    return o


def _digest(model):
    """A digest of the model's parameters (what a Forward was computed with)."""
    theta = np.ascontiguousarray(model.array_backend.to_host(model.theta))
    return hashlib.blake2b(theta.tobytes(), digest_size=16).digest()


def _make_ops(array_backend, dtype):
    """The step's operations (``gpumlp.ops``) of the backend: CupyOps on the GPU, NumpyOps else."""
    if array_backend.is_gpu:
        from ._cupy_ops import CupyOps

        return CupyOps(dtype)
    from ._numpy_ops import NumpyOps

    return NumpyOps()


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


def _check_params(arrays, views, what, dtype, by_index=False):
    """{layer: host array in ``dtype``}, every one checked against ``views`` (the model's W or b; None when
    it has no biases), from a list of one array per layer, or with ``by_index`` a mapping {layer: array}
    (None: no layers)."""
    if arrays is None and by_index:
        return {}
    if views is None:
        raise ValueError(f"{what} given, but the model was built with bias=False")
    items = _indexed_layers(arrays, len(views), what) if by_index else _all_layers(arrays, len(views), what)
    return {l: _check_array(a, views[l].shape, f"{what}[{l}]", dtype) for l, a in items}


def _all_layers(arrays, n, what):
    if isinstance(arrays, (str, bytes, Mapping)) or not hasattr(arrays, "__len__"):
        raise TypeError(f"{what} must be a list of {n} arrays")
    if len(arrays) != n:
        raise ValueError(f"{what} must hold {n} arrays, got {len(arrays)}")
    return list(enumerate(arrays))


def _indexed_layers(arrays, n, what):
    """[(layer in 0..n-1, array)] of a mapping {layer index (negative from the end): array}."""
    if not isinstance(arrays, Mapping):
        raise TypeError(f"{what} must be a dict {{layer index: array}}, got {type(arrays).__name__}")
    given = {}
    for l in arrays:
        if isinstance(l, bool) or not isinstance(l, (int, np.integer)):
            raise TypeError(f"{what}: layer indices must be integers, got {l!r}")
        if not -n <= l < n:
            raise ValueError(f"{what}: layer index {l} is out of range for {n} layers")
        if int(l) % n in given:
            raise ValueError(f"{what}: layer {int(l) % n} is given twice (as {given[int(l) % n]!r} and {l!r})")
        given[int(l) % n] = l
    return [(l, arrays[key]) for l, key in given.items()]


def _check_array(a, shape, name, dtype):
    try:
        a = np.asarray(a.get() if is_device_array(a) else a)
    except (ValueError, TypeError):  # a ragged list
        raise TypeError(f"{name} must be an array of real numbers shaped {shape}") from None
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    with np.errstate(over="ignore"):
        cast = np.asarray(a, dtype=dtype)
    if not np.isfinite(cast).all():
        beyond = np.isfinite(a).all()
        raise ValueError(f"{name} contains " + (f"values beyond the range of {dtype.name}" if beyond else
                                               "NaN or infinity"))
    return cast


def _unpickle(meta, arrays, backend):
    return MLP.from_state_dict(state.ModelState(meta, arrays), backend=backend)

