"""scikit-learn estimators: ``MLPClassifier`` and ``MLPRegressor`` with scikit-learn's parameter names.

    from gpumlp.sklearn import MLPClassifier      # instead of sklearn.neural_network
    clf = MLPClassifier(hidden_layer_sizes=(256,), solver="adam", early_stopping=True, backend="cupy")

They are thin: each holds a ``gpumlp.MLP`` (``model_``) and maps scikit-learn's settings onto it.
Needs scikit-learn >= 1.6 (``pip install gpumlp[sklearn]``); ``import gpumlp`` never imports it.
scikit-learn's own test file for its MLP (sklearn/neural_network/tests/test_mlp.py) runs against
these classes in our suite (tests/test_sklearn_upstream.py).

Parameters shared with scikit-learn's MLP and what they become:

    hidden_layer_sizes    MLP sizes (n_features, *hidden_layer_sizes, n_outputs); biases always on
    activation            "relu", "tanh", "identity", "logistic" (= our "sigmoid")
    solver                "lbfgs": full-batch L-BFGS (``gpumlp.lbfgs``: SciPy's L-BFGS-B with
                          scikit-learn's options, maxiter=max_iter, maxfun=max_fun, gtol=tol);
                          "sgd" | "adam": minibatch training (``gpumlp.Trainer``)
    alpha                 λ = alpha / (batch_size · mean sample weight) (L-BFGS: the batch is all
                          of X). scikit-learn adds alpha/(2 Σ_batch w) ‖W‖² to each batch's loss,
                          i.e. λ = alpha / (size of the batch) without weights: identical for full
                          batches, and for the last, smaller batch of an epoch scikit-learn
                          regularises slightly more.
    batch_size            "auto" = min(200, n_samples); larger values are clipped with a warning
    learning_rate         "constant" | "invscaling" (power_t) | "adaptive", used with solver="sgd"
    learning_rate_init    the base η
    momentum, nesterovs_momentum   SGD momentum (PyTorch's convention: identical iterates to
                          scikit-learn's while η is constant; see ``gpumlp.optim``)
    beta_1, beta_2, epsilon        Adam
    max_iter, max_fun, tol, n_iter_no_change (np.inf: never stop early), early_stopping,
    validation_fraction, shuffle, random_state, warm_start, verbose   as scikit-learn: minibatch
                          training stops when the training loss (or, with early stopping, the
                          validation score on a stratified ``validation_fraction``) fails to improve
                          by more than tol for more than n_iter_no_change epochs; early stopping
                          restores the best weights; ConvergenceWarning at max_iter. L-BFGS stops by
                          SciPy's rules and warns when SciPy reports no convergence (status != 0).
                          verbose prints scikit-learn's "Iteration N, loss = ..." lines.

Outputs, as scikit-learn's: multiclass problems have softmax outputs (cross-entropy); binary
problems one logistic unit (``n_outputs_`` 1, ``out_activation_`` "logistic", binary cross-entropy)
and multilabel indicator targets one logistic unit per label (``predict`` returns the indicator
matrix, ``predict_proba`` the probability of each label); the regressor has identity outputs
(loss="squared_error") or exponential ones (loss="poisson", half the Poisson deviance; y >= 0).

Input: host data, as scikit-learn takes it (NumPy arrays, lists, pandas, SciPy sparse matrices: CSR
and CSC as they are, other formats converted); the model moves X to the device once (a sparse X as a
cupyx.scipy.sparse CSR matrix). Sparse X is never densified: its batches are CSR row subsets and the
first layer multiplies them as they are (``gpumlp.ops``).

Extra parameters: ``class_weight`` (classifier: None, "balanced" or {label: weight}; not for
multilabel targets), ``backend`` ("auto" | "numpy" | "cupy") and ``dtype`` (None follows X as
scikit-learn does: float32 stays float32, anything else becomes float64; or "float32"/"float64").

Initial weights and intercepts are drawn exactly as scikit-learn draws them (Glorot uniform,
bound √(6/(fan_in + fan_out)), √(2/…) for "logistic", from ``random_state``), and the early-stopping
split is scikit-learn's ``train_test_split`` on the same random stream: with the same random_state,
full batches and shuffle=False, SGD gives scikit-learn's loss curve to rounding, binary problems
included (tested). The split is stratified for every single-label classification problem, as
scikit-learn documents; scikit-learn's code stratifies only binary problems, so for multiclass early
stopping the two hold out different rows. Multilabel splits are not stratified (as scikit-learn).

``coefs_`` and ``intercepts_`` (coefs_[i] is (fan_in, fan_out), our W transposed) are the model's
parameters, not copies: with the NumPy backend each array is a view into the model's θ, so an
in-place edit (``coefs_[0][:] = 0``) changes the model at once; with CuPy they are host copies and
an in-place edit of the last lists handed out is written back to the device when the estimator next
uses the model (predict, score, fit, partial_fit). Assigning an element (``coefs_[1] = array``) or
the whole list (``coefs_ = [...]``) checks the shapes and copies the values in. Assigned before any
fit, as scikit-learn allows, they are the starting weights of a later ``partial_fit`` (or a
``fit`` with warm_start=True).

Divergence (a non-finite objective) raises scikit-learn's ValueError, "Solver produced non-finite
parameter weights..." (a ``gpumlp.DivergenceError``, which is a ValueError); with early stopping the
diverged epoch is recorded with a NaN validation score and training goes on, as scikit-learn does.
``partial_fit`` exists only for the stochastic solvers (scikit-learn's ``available_if``).

Names of scikit-learn's private internals that code reads, provided where they are honest:
``_no_improvement_count`` (epochs in a row without improvement, the plateau monitor's count),
``_optimizer.learning_rate`` (the rate of the next epoch; Adam's with its bias correction, as
scikit-learn's AdamOptimizer reports it) and ``_loss_grad_lbfgs(packed, X, Y, sample_weight, ...)``
(J and ∂J/∂θ in scikit-learn's packing, with scikit-learn's binarized targets; its buffers unused).

Differences that remain: the shuffling order of minibatches (drawn from the model's seed); for
multi-output regression ``loss_curve_`` holds ½‖o − y‖² summed over outputs (scikit-learn divides its
reported loss by n_outputs, while its gradient is that of the sum, as ours; its L-BFGS then sees a
value and a gradient of different functions, ours a consistent pair); the logistic loss is computed
from the logits (softplus(o) − y·o) rather than from probabilities clipped to [eps, 1 − eps], so the
two differ for logits beyond about ±36 (float64), where scikit-learn's saturates; L-BFGS on float32
data computes in float32 (scikit-learn's returns float64 coefs_ after L-BFGS); with solver="lbfgs"
``loss_curve_`` holds J after each iteration (scikit-learn sets none).

warm_start: as scikit-learn. ``fit`` starts from fresh weights unless warm_start=True, in which case
it continues from the fitted weights with a fresh optimizer and schedule (scikit-learn builds a new
optimizer in every fit; L-BFGS starts with an empty memory). ``partial_fit`` always continues,
optimizer state included.
"""
from __future__ import annotations

import copy
import numbers
import sys
import warnings

import numpy as np

try:  # name the extra instead of a bare "No module named 'sklearn'" (or an old version's missing name)
    import sklearn  # noqa: F401  (its version is named below when an import fails)
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_array, check_consistent_length, check_random_state, column_or_1d
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:
    found = getattr(globals().get("sklearn"), "__version__", None)
    raise ImportError("gpumlp.sklearn needs scikit-learn >= 1.6, " + (f"found {found}" if found else "which is not "
                      "installed") + ': pip install "gpumlp[sklearn]" (or pip install -U scikit-learn)',
                      name=exc.name) from exc

from . import optim, schedules
from .backend import is_device_array, is_sparse, resolve
from .data import LabelEncoder, class_sample_weights
from .lbfgs import LBFGSTrainer, Objective
from .mlp import MLP
from .trainer import DivergenceError, Trainer
from .validation import check_sample_weight, check_X, imported

ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "identity": "identity", "logistic": "sigmoid"}
SOLVERS = ("lbfgs", "sgd", "adam")
STOCHASTIC = ("sgd", "adam")
LEARNING_RATES = ("constant", "invscaling", "adaptive")
NONFINITE = ("Solver produced non-finite parameter weights. The input data may contain large values and need to "
             "be preprocessed.")

__all__ = ["MLPClassifier", "MLPRegressor"]


class _BaseMLP(BaseEstimator):
    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, backend="auto",
                 dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype

    # ------------------------------------------------------------------ checks
    def _hidden(self):
        h = self.hidden_layer_sizes
        h = [h] if isinstance(h, numbers.Integral) else list(h)
        if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0 for n in h):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        return [int(n) for n in h]

    def _check_settings(self):
        """Validate the settings that gpumlp.MLP does not check itself (it checks the rest)."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.learning_rate not in LEARNING_RATES:
            raise ValueError(f"learning_rate must be one of {LEARNING_RATES}, got {self.learning_rate!r}")
        if not (self.batch_size == "auto" or (isinstance(self.batch_size, numbers.Integral)
                                               and not isinstance(self.batch_size, bool) and self.batch_size >= 1)):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {self.batch_size!r}")
        for name in ("alpha", "tol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0 or not np.isfinite(v):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("max_iter", "n_iter_no_change", "max_fun"):
            v = getattr(self, name)
            if name == "n_iter_no_change" and v == np.inf:
                continue  # scikit-learn's "never stop early"
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive integer" + (" or np.inf" if name == "n_iter_no_change"
                                                                          else "") + f", got {v!r}")
        if not (isinstance(self.validation_fraction, numbers.Real) and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")

    def _check_solver(self):
        """partial_fit's availability (scikit-learn's ``available_if``): stochastic solvers only."""
        if self.solver not in STOCHASTIC:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is not "
                                 f"stochastic.")
        return True

    def _model_dtype(self, X):
        if self.dtype is not None:
            return self.dtype
        return "float32" if X.dtype == np.float32 else "float64"

    def _seed(self, rs):
        """An integer seed for gpumlp.MLP's shuffling: random_state itself, or drawn from a copy of its
        stream, which is left where it is for the initial weights and the early-stopping split (so
        that a RandomState instance gives scikit-learn's weights and split, as an integer does)."""
        if isinstance(self.random_state, numbers.Integral) and not isinstance(self.random_state, bool):
            return int(self.random_state)
        return int(copy.deepcopy(rs).randint(np.iinfo(np.int32).max))

    def _init_weights(self, model, rs):
        """scikit-learn's _init_coef, layer by layer from the same random stream: coef (fan_in, fan_out)
        then intercept, both U(−b, b) with b = √(factor/(fan_in + fan_out)), factor 2 for logistic else 6."""
        factor = 2.0 if self.activation == "logistic" else 6.0
        W, b = [], []
        for fan_in, fan_out in zip(model.sizes[:-1], model.sizes[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            W.append(rs.uniform(-bound, bound, (fan_in, fan_out)).T)
            b.append(rs.uniform(-bound, bound, fan_out))
        model.set_weights(W, b)

    def _make_optimizer(self):
        if self.solver == "sgd":
            return optim.make_optimizer("sgd", momentum=self.momentum,
                                        nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
        if self.solver == "adam":
            return optim.make_optimizer("adam", beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon)
        return optim.make_optimizer("lbfgs")

    def _make_schedule(self):
        if self.solver != "sgd" or self.learning_rate == "constant":
            return schedules.Constant()
        if self.learning_rate == "invscaling":
            return schedules.InvScaling(self.power_t)
        return schedules.Adaptive()

    # ------------------------------------------------------------------ training
    def _fit(self, X, y, sample_weight, incremental, classes=None):
        self._check_settings()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        self._write_back()
        fitted = "model_" in self.__dict__
        assigned = not fitted and "_assigned_coefs" in self.__dict__ and "_assigned_intercepts" in self.__dict__
        first = not (fitted or assigned) or (not self.warm_start and not incremental)
        X, y = self._validated(X, y, reset=first)
        classes = None if classes is None else imported(classes, "classes", host=True)
        if y.ndim == 2 and y.shape[1] == 1 and not self._keeps_2d_y(y):
            y = column_or_1d(y, warn=True)
        targets, loss, labels = self._targets(y, incremental, classes)
        n_outputs = self._n_outputs(targets, loss)
        sw = check_sample_weight(sample_weight, X.shape[0])
        sw = None if sw is None else sw.astype(np.float64)
        rs = check_random_state(self.random_state)  # one stream per call, as scikit-learn's _fit
        if first:
            model = self._new_model(X, n_outputs, loss, rs)
            self._init_weights(model, rs)  # the seed then drives the shuffling
        elif not fitted:
            model = self._model_from_assigned(X, n_outputs, loss, rs)
        else:
            model = self.model_
        if model.sizes[-1] != n_outputs or model.loss != loss:
            raise ValueError(f"y needs {n_outputs} {loss} outputs, the fitted model has {model.sizes[-1]} "
                             f"{model.loss} outputs")
        self.model_ = model
        if first or not incremental or model.optimizer.name != self.solver:
            model.optimizer = self._make_optimizer()  # a new optimizer per fit, as scikit-learn
            model.lr_schedule = self._make_schedule()
        epochs_before = model.epochs_
        try:
            if self.solver == "lbfgs":
                self._fit_lbfgs(model, X, targets, sw, labels)
            else:
                self._fit_stochastic(model, X, targets, sw, labels, incremental, rs)
        except DivergenceError as exc:
            raise DivergenceError(f"{NONFINITE} ({exc})") from None
        self.n_iter_ = model.epochs_ - epochs_before
        self._publish()
        return self

    def _new_model(self, X, n_outputs, loss, rs):
        sizes = (X.shape[1], *self._hidden(), n_outputs)
        return MLP(sizes, activation=ACTIVATIONS[self.activation], loss=loss, bias=True,
                   dtype=self._model_dtype(X), backend=self.backend, seed=self._seed(rs),
                   optimizer="lbfgs" if self.solver == "lbfgs" else self.solver)

    def _model_from_assigned(self, X, n_outputs, loss, rs):
        """The model whose starting weights are coefs_/intercepts_ assigned before any fit (scikit-learn
        then skips its initialisation)."""
        coefs = [np.asarray(c) for c in self.__dict__.pop("_assigned_coefs")]
        intercepts = [np.asarray(b) for b in self.__dict__.pop("_assigned_intercepts")]
        if len(coefs) != len(intercepts) or any(c.ndim != 2 for c in coefs):
            raise ValueError("coefs_ and intercepts_ assigned before fit must hold one (fan_in, fan_out) array and "
                             "one (fan_out,) array per layer")
        sizes = (coefs[0].shape[0], *(c.shape[1] for c in coefs))
        if sizes[0] != X.shape[1] or sizes[-1] != n_outputs:
            raise ValueError(f"the assigned coefs_ are of a net {sizes}: X has {X.shape[1]} features and y needs "
                             f"{n_outputs} outputs")
        model = MLP(sizes, activation=ACTIVATIONS[self.activation], loss=loss, bias=True,
                    dtype=self._model_dtype(X), backend=self.backend, seed=self._seed(rs),
                    optimizer="lbfgs" if self.solver == "lbfgs" else self.solver)
        model.set_weights([c.T for c in coefs], intercepts)
        return model

    def _regularise(self, model, n, w):
        mean_w = 1.0 if w is None else float(np.mean(w))
        if mean_w <= 0:
            raise ValueError("sample_weight (times class_weight) is all zero: at least one weight must be positive")
        model.set_params(weight_decay=self.alpha / (n * mean_w))

    def _fit_lbfgs(self, model, X, targets, sw, labels):
        w = self._with_class_weight(sw, labels)
        self._regularise(model, X.shape[0], w)  # L-BFGS's batch is all of X: λ = alpha / Σw
        trainer = LBFGSTrainer(model, callbacks=self._printer(model.epochs_, None))
        trainer.fit(X, targets, max_iter=self.max_iter, max_fun=self.max_fun, tol=self.tol, sample_weight=w)
        result = self._lbfgs_result = trainer.result
        if result.status != 0:
            n_iter = min(int(result.nit), self.max_iter)
            msg = f"lbfgs failed to converge after {n_iter} iteration(s) (status={result.status}):\n{result.message}\n"
            if n_iter == self.max_iter:
                msg += f"\nIncrease the number of iterations to improve the convergence (max_iter={self.max_iter})."
            msg += ("\nYou might also want to scale the data as shown in:\n"
                    "    https://scikit-learn.org/stable/modules/preprocessing.html")
            warnings.warn(msg, ConvergenceWarning, stacklevel=4)

    def _fit_stochastic(self, model, X, targets, sw, labels, incremental, rs):
        val = None
        X_train, y_train, w_train, labels_train = X, targets, sw, labels
        if self.early_stopping:
            # Stratified for every single-label problem, as scikit-learn documents (its code stratifies
            # only binary problems, on the binarized column, whose error messages we share).
            stratify = None if labels is None else (targets if labels is targets else targets.astype(bool))
            separate = labels is not None and labels is not targets  # binary: the labels beside the 0/1 column
            arrays = [X, targets] + ([] if sw is None else [sw]) + ([labels] if separate else [])
            parts = train_test_split(*arrays, test_size=self.validation_fraction, random_state=rs, stratify=stratify)
            X_train, X_val, y_train, y_val = parts[:4]
            rest = parts[4:]
            w_train, w_val = (rest[0], rest[1]) if sw is not None else (None, None)
            labels_train = rest[-2] if separate else (None if labels is None else y_train)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size "
                                 "of your dataset.")
            val = (X_val, y_val, w_val)
        n = X_train.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
            batch = int(np.clip(self.batch_size, 1, n))
        w_train = self._with_class_weight(w_train, labels_train)  # folded in here, so that λ sees them too
        self._regularise(model, batch, w_train)
        patience = sys.maxsize if self.n_iter_no_change == np.inf else int(self.n_iter_no_change)
        trainer = Trainer(model, batch_size=batch, lr=self.learning_rate_init, shuffle=self.shuffle,
                          callbacks=self._printer(model.epochs_, val), on_divergence="record")
        if incremental:
            trainer.partial_fit(X_train, y_train, sample_weight=w_train, n_iter_no_change=patience, tol=self.tol)
        else:
            trainer.fit(X_train, y_train, self.max_iter, sample_weight=w_train, validation_data=val,
                        early_stopping=self.early_stopping, n_iter_no_change=patience, tol=self.tol)
            if model.stop_reason_ == "epochs":
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                              f"optimization hasn't converged yet.", ConvergenceWarning, stacklevel=4)

    def _with_class_weight(self, w, labels):
        return w

    def _keeps_2d_y(self, y):
        return False

    def _is_multilabel(self):
        return False

    def _printer(self, epochs_before, val):
        """With verbose, a callback printing scikit-learn's progress lines, one per epoch (iteration)."""
        if not self.verbose:
            return None
        state = {"reductions": 0}

        def show(model, record):
            print("Iteration %d, loss = %.8f" % (record["epoch"] - epochs_before, record["loss"]))
            if val is not None:
                print("Validation score: %f" % record["val_score"])
            mon, schedule = model.monitor_, model.lr_schedule
            if mon is None or self.solver == "lbfgs":
                return False
            what = "Validation score" if self.early_stopping else "Training loss"
            msg = f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."
            reductions = getattr(schedule, "n_reductions", 0)
            if mon.count > mon.patience:
                print(msg + (" Learning rate too small. Stopping." if schedule.name == "adaptive" else " Stopping."))
            elif reductions > state["reductions"]:
                print(msg + " Setting learning rate to %f" % schedule.lr(self.learning_rate_init, 0, 0))
            state["reductions"] = reductions
            return False

        return show

    # ------------------------------------------------------------------ fitted attributes
    def __sklearn_is_fitted__(self):
        return "model_" in self.__dict__

    def _publish(self):
        """scikit-learn's fitted attributes, from the model after a fit (plain attributes, as scikit-learn's)."""
        m = self.model_
        self.n_layers_ = len(m.sizes)
        self.n_outputs_ = m.sizes[-1]
        self.out_activation_ = self._out_activation()
        self.t_ = m.samples_seen_
        self.loss_curve_ = list(m.loss_curve_)
        self.history_ = m.history_
        if self.solver == "lbfgs":
            self.loss_ = float(self._lbfgs_result.fun)
            return
        self.loss_ = m.loss_curve_[-1]
        self.validation_scores_ = list(m.validation_curve_) if self.early_stopping else None
        self.best_validation_score_ = m.best_score_ if self.early_stopping else None
        self.best_loss_ = None if self.early_stopping else m.best_loss_
        self._no_improvement_count = 0 if m.monitor_ is None else m.monitor_.count

    @property
    def _optimizer(self):
        """What scikit-learn's private ``_optimizer`` exposes that code reads: ``learning_rate``."""
        if self.solver not in STOCHASTIC or "model_" not in self.__dict__:
            raise AttributeError("_optimizer")
        return _OptimizerView(self)

    @property
    def coefs_(self):
        """Weights in scikit-learn's layout: coefs_[i] is (fan_in, fan_out), our W transposed; the model's
        own parameters (module docstring)."""
        return self._parameters("coefs")

    @coefs_.setter
    def coefs_(self, value):
        self._assign("coefs", value)

    @property
    def intercepts_(self):
        return self._parameters("intercepts")

    @intercepts_.setter
    def intercepts_(self, value):
        self._assign("intercepts", value)

    def _parameters(self, kind):
        if "model_" not in self.__dict__:
            if f"_assigned_{kind}" in self.__dict__:
                return self.__dict__[f"_assigned_{kind}"]
            raise AttributeError(f"{kind}_")  # not fitted: hasattr(est, "coefs_") is False, as scikit-learn's
        self._write_back()
        params = _Parameters(self.model_, kind)
        self.__dict__[f"_handed_out_{kind}"] = params
        return params

    def _assign(self, kind, value):
        if "model_" not in self.__dict__:  # kept as given: filled in item by item, read by the next fit
            self.__dict__[f"_assigned_{kind}"] = value
            return
        self._write_back()
        m = self.model_
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise TypeError(f"{kind}_ must be a list of {m.n_layers} arrays, got {type(value).__name__}")
        if len(value) != m.n_layers:
            raise ValueError(f"{kind}_ must hold {m.n_layers} arrays, got {len(value)}")
        _set_layers(m, kind, dict(enumerate(value)))

    def _write_back(self):
        """Host copies handed out as coefs_/intercepts_ (CuPy backend) and edited in place since: into the model."""
        for kind in ("coefs", "intercepts"):
            handed = self.__dict__.get(f"_handed_out_{kind}")
            if handed is not None and handed.owner_model is self.__dict__.get("model_"):
                handed.write_back()

    def __getstate__(self):
        state = super().__getstate__()
        return {k: v for k, v in state.items() if not k.startswith("_handed_out_")}

    def _device_input(self, X):
        check_is_fitted(self)
        self._write_back()
        return self._validated(X, reset=False)

    def _validated(self, X, y="no_validation", reset=False):
        """X, or (X, y), checked as scikit-learn's ``validate_data`` checks them. An array of another library (with
        ``__dlpack__``: torch, JAX) is read through ``gpumlp.validation.imported``, without a copy, y on the host,
        where scikit-learn's target checks run. X in CUDA memory (CuPy's, or DLPack's for a model on the GPU) stays
        there, out of scikit-learn's checks (NumPy code): its values are checked on the device (``check_X``), its
        feature count and names by ``validate_data(skip_check_array=True)``. For a model on NumPy it is refused.
        ``y`` is scikit-learn's: "no_validation" for X alone, None where one is needed is scikit-learn's error."""
        backend = self.model_.array_backend if "model_" in self.__dict__ else resolve(self.backend)
        X = imported(X, "X", backend)
        alone = isinstance(y, str) and y == "no_validation"
        y = y if alone or y is None else imported(y, "y", backend, host=True)
        checks = dict(dtype=(np.float64, np.float32), accept_sparse=["csr", "csc"])
        targets = dict(multi_output=True, y_numeric=not isinstance(self, ClassifierMixin))
        if not is_device_array(X):
            return validate_data(self, X, reset=reset, **checks) if alone else \
                validate_data(self, X, y, reset=reset, **checks, **targets)
        X = check_X(X, "X", None if reset else getattr(self, "n_features_in_", None))
        if y is None:
            validate_data(self, X, None, reset=False, skip_check_array=True)  # scikit-learn's error: y is required
        if not alone:  # scikit-learn's checks of y alone (validate_data's _check_y), before anything is set
            y = check_array(y, accept_sparse="csr", ensure_2d=False, dtype=None, input_name="y", estimator=self)
            y = y.astype(np.float64) if targets["y_numeric"] and y.dtype.kind == "O" else y
            check_consistent_length(X, y)
        validate_data(self, X, reset=reset, skip_check_array=True)  # feature names and n_features_in_ only
        return X if alone else (X, y)

    def _host_targets(self, y, sample_weight):
        """``score``'s y and sample_weight on the host (arrays of other libraries through DLPack, CuPy's copied)."""
        backend = self.model_.array_backend if "model_" in self.__dict__ else None
        return (imported(y, "y", backend, host=True),
                None if sample_weight is None else imported(sample_weight, "sample_weight", host=True))

    def _loss_grad_lbfgs(self, packed_coef_inter, X, y, sample_weight=None, *unused_buffers):
        """scikit-learn's private L-BFGS objective: J and ∂J/∂θ at ``packed_coef_inter`` in its packing
        (each coefs_[i] raveled, then the intercepts), y as scikit-learn's binarized targets (one-hot
        for multiclass, a 0/1 column for binary). Leaves those parameters in the model, as scikit-learn's.
        The buffers scikit-learn passes (activations, deltas, gradients) are not needed."""
        m = self.model_
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32), accept_sparse=["csr", "csc"])
        y = np.asarray(y)
        targets = y.argmax(axis=1) if m.loss == "cross_entropy" else y.reshape(X.shape[0], -1).astype(np.float64)
        layers, packed, pos = [], np.asarray(packed_coef_inter, np.float64), 0
        for fan_in, fan_out in zip(m.sizes[:-1], m.sizes[1:]):  # scikit-learn's (fan_in, fan_out) -> our W
            layers.append(packed[pos:pos + fan_in * fan_out].reshape(fan_in, fan_out).T.ravel())
            pos += fan_in * fan_out
        theta = np.concatenate(layers + [packed[pos:]])
        lam = m.weight_decay
        total = X.shape[0] if sample_weight is None else float(np.sum(sample_weight))
        m.set_params(weight_decay=self.alpha / total)  # scikit-learn's full-batch λ for this X
        try:
            J, g = Objective(m, *m.to_device(X, targets, sample_weight))(theta)
        finally:
            m.set_params(weight_decay=lam)
        grads, pos = [], 0
        for fan_in, fan_out in zip(m.sizes[:-1], m.sizes[1:]):  # our ∂J/∂W (out, in) -> scikit-learn's
            grads.append(g[pos:pos + fan_in * fan_out].reshape(fan_out, fan_in).T.ravel())
            pos += fan_in * fan_out
        return J, np.concatenate(grads + [g[pos:]])


def _set_layers(model, kind, arrays):
    """{layer: array in scikit-learn's layout} into the model, through ``MLP.set_layers`` (which checks every
    array before it changes anything). A coefs_ array is (fan_in, fan_out), our W transposed: its shape is
    checked here, so that a wrong one is reported in the layout it was given in."""
    if kind == "intercepts":
        return model.set_layers(biases=arrays, names=("coefs_", "intercepts_"))
    weights = {}
    for i, a in arrays.items():
        if not hasattr(a, "shape"):  # a list; NumPy and CuPy arrays stay as they are
            try:
                a = np.asarray(a)
            except (ValueError, TypeError):  # a ragged list
                raise TypeError(f"coefs_[{i}] must be a (fan_in, fan_out) array of real numbers") from None
        expected = (model.sizes[i], model.sizes[i + 1])
        if a.shape != expected:
            raise ValueError(f"coefs_[{i}] must have shape {expected}, got {a.shape}")
        weights[i] = a.T
    return model.set_layers(weights=weights, names=("coefs_", "intercepts_"))


def _layer_arrays(model, kind):
    """(coefs_ or intercepts_ of the model, the host copies' snapshot): NumPy views into θ and no snapshot,
    or (CuPy) host copies and a copy of them to tell in-place edits by."""
    if model.array_backend.is_gpu:
        arrays = [W.T.copy() for W in model.get_weights()] if kind == "coefs" else model.get_biases()
        return arrays, [a.copy() for a in arrays]
    return [W.T for W in model.weights] if kind == "coefs" else model.biases, None


class _Parameters(list):
    """coefs_ or intercepts_ in scikit-learn's layout, bound to the model that handed them out (module
    docstring): NumPy views into its θ, or host copies written back by ``write_back`` when edited in place
    (CuPy). Assigning an item sets that layer of that model (``MLP.set_layers``)."""

    def __init__(self, model, kind):
        self.kind, self.owner_model = kind, model
        arrays, self.snapshot = _layer_arrays(model, kind)
        super().__init__(arrays)

    def __setitem__(self, i, value):
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"{self.kind}_ items are set one layer at a time, by index")
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.kind}_ index {i} is out of range for {len(self)} layers")
        i = int(i) % len(self)
        _set_layers(self.owner_model, self.kind, {i: value})
        arrays, snapshot = _layer_arrays(self.owner_model, self.kind)
        super().__setitem__(i, arrays[i])  # the model's array: a view, or a fresh host copy
        if self.snapshot is not None:
            self.snapshot[i] = snapshot[i]

    def write_back(self):
        if self.snapshot is None:
            return
        changed = {i: a for i, (a, s) in enumerate(zip(self, self.snapshot)) if not np.array_equal(a, s)}
        if changed:
            _set_layers(self.owner_model, self.kind, changed)
            for i, a in changed.items():
                self.snapshot[i] = np.array(a)


class _OptimizerView:
    """scikit-learn's ``_optimizer.learning_rate``: the rate the next epoch uses (Adam: η0 √(1 − β2ᵗ)/(1 − β1ᵗ)
    after t steps, as scikit-learn's AdamOptimizer reports it)."""

    def __init__(self, estimator):
        self.estimator = estimator

    @property
    def learning_rate(self):
        est = self.estimator
        m = est.model_
        if est.solver == "adam":
            t = max(m.optimizer.t, 1)
            return est.learning_rate_init * np.sqrt(1 - est.beta_2**t) / (1 - est.beta_1**t)
        return m.lr_schedule.lr(est.learning_rate_init, m.epochs_, m.samples_seen_)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multilayer perceptron classifier, scikit-learn's interface: softmax outputs for multiclass
    problems, one logistic unit for binary ones and one per label for multilabel indicator targets.

    See the module docstring for the parameters; ``class_weight`` is None, "balanced" or
    {label: weight} and multiplies sample_weight.
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, class_weight=None,
                 backend="auto", dtype=None):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
                         backend=backend, dtype=dtype)
        self.class_weight = class_weight

    def _keeps_2d_y(self, y):
        return type_of_target(y).startswith("multilabel")

    def _targets(self, y, incremental, classes):
        """(targets, loss, label indices): labels -> indices into classes_ (multiclass, cross-entropy),
        a 0/1 column (binary: one logistic unit) or the indicator matrix itself (multilabel)."""
        check_classification_targets(y)
        multilabel = type_of_target(y).startswith("multilabel")
        if incremental and getattr(self, "classes_", None) is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if incremental and classes is not None and getattr(self, "classes_", None) is not None \
                and not np.array_equal(self.classes_, unique_labels(classes)):
            raise ValueError(f"`classes={list(classes)}` is not the same as on the first call to partial_fit "
                             f"(classes_={list(self.classes_)})")
        found = unique_labels(y)
        if getattr(self, "classes_", None) is None or (not self.warm_start and not incremental):
            self.classes_ = found if multilabel or not incremental else unique_labels(classes)
            self._multilabel = multilabel
        elif self.warm_start and not incremental and set(found) != set(self.classes_):
            raise ValueError(f"warm_start can only be used where `y` has the same classes as in the previous call "
                             f"to fit. Previously got {self.classes_}, `y` has {found}")
        if multilabel != self._is_multilabel():
            raise ValueError("y is " + ("" if multilabel else "not ") + "a multilabel indicator matrix, the model's "
                             "targets were " + ("" if self._is_multilabel() else "not ") + "one")
        if multilabel:
            Y = y.toarray() if is_sparse(y) else np.asarray(y)
            if Y.shape[1] != len(self.classes_):
                raise ValueError(f"y has {Y.shape[1]} labels, the model has {len(self.classes_)}")
            return Y.astype(np.float64), "binary_cross_entropy", None
        labels = LabelEncoder(self.classes_).transform(y, "y")
        if len(self.classes_) > 2:
            return labels, "cross_entropy", labels
        return (labels == 1).astype(np.float64)[:, None], "binary_cross_entropy", labels

    def _n_outputs(self, targets, loss):
        return len(self.classes_) if loss == "cross_entropy" else targets.shape[1]

    def _is_multilabel(self):
        return bool(getattr(self, "_multilabel", False))

    def _with_class_weight(self, w, labels):
        cw = self.class_weight
        if cw is None:
            return w
        if labels is None:
            raise ValueError("class_weight is not supported for multilabel targets")
        if not (isinstance(cw, dict) or cw == "balanced"):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {cw!r}")
        if isinstance(cw, dict):  # "balanced": n / (n_classes · count), over the classes in the training labels
            cw = {int(np.searchsorted(self.classes_, k)): v for k, v in cw.items() if k in set(self.classes_.tolist())}
        cw = class_sample_weights(cw, labels, len(self.classes_))
        w = cw if w is None else w * cw
        if not w.sum() > 0:
            raise ValueError("sample_weight times class_weight must have a positive sum")
        return w

    def _out_activation(self):
        return "softmax" if self.model_.loss == "cross_entropy" else "logistic"

    def fit(self, X, y, sample_weight=None):
        """Train from scratch (or from the fitted weights with warm_start=True): up to max_iter epochs
        (L-BFGS: iterations)."""
        return self._fit(X, y, sample_weight, incremental=False)

    @available_if(lambda self: self._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y); ``classes`` is required on the first call (scikit-learn's order of
        arguments: sample_weight before classes)."""
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities, columns in the order of classes_ (binary: [1 − p, p]; multilabel: the
        probability of each label)."""
        X = self._device_input(X)
        p = self.model_.predict_proba(X)
        return np.hstack([1 - p, p]) if p.shape[1] == 1 else p

    def score(self, X, y, sample_weight=None):
        """Accuracy of ``predict`` (scikit-learn's ``ClassifierMixin.score``), y and sample_weight read on the host."""
        return super().score(X, *self._host_targets(y, sample_weight))

    def predict_log_proba(self, X):
        p = self.predict_proba(X)
        return np.log(p, out=p)

    def predict(self, X):
        """Class labels, or the indicator matrix of multilabel targets."""
        X = self._device_input(X)
        p = self.model_.predict(X)
        if self._is_multilabel():
            return p
        if len(self.classes_) == 1:
            return np.repeat(self.classes_, p.shape[0])
        return LabelEncoder(self.classes_).inverse_transform(p)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.input_tags.sparse = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multilayer perceptron regressor, scikit-learn's interface: identity outputs with the squared
    loss (loss="squared_error"), or exponential outputs with half the Poisson deviance (loss="poisson",
    y >= 0; ``predict`` gives the means e^o)."""

    LOSSES = {"squared_error": "squared", "poisson": "poisson"}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001,
                 power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, backend="auto", dtype=None):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
                         backend=backend, dtype=dtype)
        self.loss = loss

    def _targets(self, y, incremental, classes):
        if self.loss not in self.LOSSES:
            raise ValueError(f"loss must be one of {sorted(self.LOSSES)}, got {self.loss!r}")
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        return y, self.LOSSES[self.loss], None

    def _n_outputs(self, targets, loss):
        return targets.shape[1]

    def _out_activation(self):
        return "exp" if self.model_.loss == "poisson" else "identity"

    def fit(self, X, y, sample_weight=None):
        """Train from scratch (or from the fitted weights with warm_start=True): up to max_iter epochs
        (L-BFGS: iterations)."""
        return self._fit(X, y, sample_weight, incremental=False)

    @available_if(lambda self: self._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y)."""
        return self._fit(X, y, sample_weight, incremental=True)

    def score(self, X, y, sample_weight=None):
        """R² of ``predict`` (scikit-learn's ``RegressorMixin.score``), y and sample_weight read on the host."""
        return super().score(X, *self._host_targets(y, sample_weight))

    def predict(self, X):
        """The outputs (squared_error) or the means e^o (poisson); one output comes back 1-D, as
        scikit-learn's (even for y of shape (n, 1))."""
        X = self._device_input(X)
        return self.model_.predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.target_tags.positive_only = self.loss == "poisson"
        tags.input_tags.sparse = True
        return tags
