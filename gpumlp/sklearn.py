"""scikit-learn estimators: ``MLPClassifier`` and ``MLPRegressor`` with scikit-learn's parameter names.

    from gpumlp.sklearn import MLPClassifier      # instead of sklearn.neural_network
    clf = MLPClassifier(hidden_layer_sizes=(256,), solver="adam", early_stopping=True, backend="cupy")

They are thin: each holds a ``gpumlp.MLP`` (``model_``) and maps scikit-learn's settings onto it.
Needs scikit-learn >= 1.6 (``pip install gpumlp[sklearn]``); ``import gpumlp`` never imports it.

Parameters shared with scikit-learn's MLP and what they become:

    hidden_layer_sizes    MLP sizes (n_features, *hidden_layer_sizes, n_outputs); biases always on
    activation            "relu", "tanh", "identity", "logistic" (= our "sigmoid")
    solver                "sgd" | "adam" ("lbfgs" is not offered: it is not a minibatch method)
    alpha                 λ = alpha / (batch_size · mean sample weight). scikit-learn adds
                          alpha/(2 Σ_batch w) ‖W‖² to each batch's loss, i.e. λ = alpha / (size of the
                          batch) without weights: identical for full batches, and for the last,
                          smaller batch of an epoch scikit-learn regularises slightly more.
    batch_size            "auto" = min(200, n_samples); larger values are clipped with a warning
    learning_rate         "constant" | "invscaling" (power_t) | "adaptive", used with solver="sgd"
    learning_rate_init    the base η
    momentum, nesterovs_momentum   SGD momentum (PyTorch's convention: identical iterates to
                          scikit-learn's while η is constant; see ``gpumlp.optim``)
    beta_1, beta_2, epsilon        Adam
    max_iter, tol, n_iter_no_change, early_stopping, validation_fraction, shuffle, random_state,
    warm_start, verbose   as scikit-learn: training stops when the training loss (or, with early
                          stopping, the validation score on a stratified ``validation_fraction``)
                          fails to improve by more than tol for more than n_iter_no_change epochs;
                          early stopping restores the best weights; ConvergenceWarning at max_iter.

Extra parameters: ``class_weight`` (classifier: None, "balanced" or {label: weight}), ``backend``
("auto" | "numpy" | "cupy") and ``dtype`` (None follows X as scikit-learn does: float32 stays
float32, anything else becomes float64; or "float32"/"float64").

Initial weights and intercepts are drawn exactly as scikit-learn draws them (Glorot uniform,
bound √(6/(fan_in + fan_out)), √(2/…) for "logistic", from ``random_state``), and the early-stopping
split is scikit-learn's ``train_test_split`` on the same random stream: with the same random_state,
full batches and shuffle=False, SGD gives scikit-learn's loss curve to rounding (tested). The split
is stratified for every classification problem, as scikit-learn documents; scikit-learn's code
stratifies only binary problems, so for multiclass early stopping the two hold out different rows.

Differences that remain: the shuffling order of minibatches (drawn from the model's seed);
binary problems use two softmax outputs rather than one logistic unit; multilabel
targets are not supported; for multi-output regression ``loss_curve_`` holds ½‖o − y‖² summed over
outputs (scikit-learn divides its reported loss by n_outputs, while its gradient is that of the sum,
as ours). Inputs are host arrays (NumPy, lists, pandas); the model moves them to the device.

warm_start: as scikit-learn. ``fit`` starts from fresh weights unless warm_start=True, in which case
it continues from the fitted weights with a fresh optimizer and schedule (scikit-learn builds a new
optimizer in every fit). ``partial_fit`` always continues, optimizer state included.
"""
from __future__ import annotations

import copy
import numbers
import warnings

import numpy as np

try:  # name the extra instead of a bare "No module named 'sklearn'" (or an old version's missing name)
    import sklearn  # noqa: F401  (its version is named below when an import fails)
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, unique_labels
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:
    found = getattr(globals().get("sklearn"), "__version__", None)
    raise ImportError("gpumlp.sklearn needs scikit-learn >= 1.6, " + (f"found {found}" if found else "which is not "
                      "installed") + ': pip install "gpumlp[sklearn]" (or pip install -U scikit-learn)',
                      name=exc.name) from exc

from . import optim, schedules
from .data import LabelEncoder, class_sample_weights
from .mlp import MLP
from .validation import check_sample_weight

ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "identity": "identity", "logistic": "sigmoid"}
SOLVERS = ("sgd", "adam")
LEARNING_RATES = ("constant", "invscaling", "adaptive")

__all__ = ["MLPClassifier", "MLPRegressor"]


class _BaseMLP(BaseEstimator):
    _loss = None  # the MLP's loss, set by subclasses

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, backend="auto", dtype=None):
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
            raise ValueError(f"solver must be one of {SOLVERS} (gpumlp has no 'lbfgs'), got {self.solver!r}")
        if self.learning_rate not in LEARNING_RATES:
            raise ValueError(f"learning_rate must be one of {LEARNING_RATES}, got {self.learning_rate!r}")
        if not (self.batch_size == "auto" or (isinstance(self.batch_size, numbers.Integral)
                                               and not isinstance(self.batch_size, bool) and self.batch_size >= 1)):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {self.batch_size!r}")
        for name in ("alpha", "tol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0 or not np.isfinite(v):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("max_iter", "n_iter_no_change"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.validation_fraction, numbers.Real) and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")

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

    def _optimizer(self):
        if self.solver == "sgd":
            return optim.make_optimizer("sgd", momentum=self.momentum,
                                        nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
        return optim.make_optimizer("adam", beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon)

    def _schedule(self):
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
        first = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        X, y = validate_data(self, X, y, reset=first, dtype=(np.float64, np.float32),
                             multi_output=self._loss == "squared", y_numeric=self._loss == "squared")
        targets = self._targets(y, first, incremental, classes)
        n_outputs = len(self.classes_) if self._loss == "cross_entropy" else targets.shape[1]
        sw = check_sample_weight(sample_weight, X.shape[0])
        sw = None if sw is None else sw.astype(np.float64)
        if not first and self.model_.sizes[-1] != n_outputs:
            raise ValueError(f"y has {n_outputs} outputs, the fitted model has {self.model_.sizes[-1]}")
        rs = check_random_state(self.random_state)  # one stream per call, as scikit-learn's _fit
        if first:
            sizes = (X.shape[1], *self._hidden(), n_outputs)
            model = MLP(sizes, activation=ACTIVATIONS[self.activation], loss=self._loss, bias=True,
                        dtype=self._model_dtype(X), backend=self.backend, seed=self._seed(rs), optimizer=self.solver)
            self._init_weights(model, rs)  # the seed then drives the shuffling
            self.model_ = model
        model = self.model_
        if first or not incremental or model.optimizer.name != self.solver:
            model.optimizer = self._optimizer()  # a new optimizer per fit, as scikit-learn
            model.lr_schedule = self._schedule()

        val = None
        X_train, y_train, w_train = X, targets, sw
        if self.early_stopping:
            # Stratified for every classification problem, as scikit-learn documents. (Its code
            # stratifies only binary problems: for multiclass it splits without stratification.)
            stratify = targets if self._loss == "cross_entropy" else None
            parts = train_test_split(X, targets, *([] if sw is None else [sw]), test_size=self.validation_fraction,
                                     random_state=rs, stratify=stratify)
            X_train, X_val, y_train, y_val = parts[:4]
            w_train, w_val = (parts[4], parts[5]) if sw is not None else (None, None)
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
        cw = self._class_weight(y_train)
        if cw is not None:  # folded into the sample weights here, so that λ below sees them too
            cw = class_sample_weights(cw, y_train, model.sizes[-1])
            w_train = cw if w_train is None else w_train * cw
        mean_w = 1.0 if w_train is None else float(np.mean(w_train))
        if mean_w <= 0:
            raise ValueError("sample_weight (times class_weight) is all zero: at least one weight must be "
                             "positive")
        model.set_params(weight_decay=self.alpha / (batch * mean_w))

        epochs_before = model.epochs_
        if incremental:
            model.partial_fit(X_train, y_train, batch_size=batch, lr=self.learning_rate_init, shuffle=self.shuffle,
                              sample_weight=w_train, n_iter_no_change=self.n_iter_no_change, tol=self.tol,
                              verbose=self.verbose)
        else:
            model.fit(X_train, y_train, epochs=self.max_iter, batch_size=batch, lr=self.learning_rate_init,
                      shuffle=self.shuffle, validation_data=val, sample_weight=w_train,
                      early_stopping=self.early_stopping,
                      n_iter_no_change=self.n_iter_no_change, tol=self.tol, verbose=self.verbose)
        self.n_iter_ = model.epochs_ - epochs_before
        if not incremental and model.stop_reason_ == "epochs":
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          f"optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def _class_weight(self, y_train):
        return None

    # ------------------------------------------------------------------ fitted attributes
    def __sklearn_is_fitted__(self):
        return hasattr(self, "model_")

    @property
    def loss_curve_(self):
        return list(self.model_.loss_curve_)

    @property
    def loss_(self):
        return self.model_.loss_curve_[-1]

    @property
    def t_(self):
        return self.model_.samples_seen_

    @property
    def history_(self):
        return self.model_.history_

    @property
    def validation_scores_(self):
        return list(self.model_.validation_curve_) if self.early_stopping else None

    @property
    def best_validation_score_(self):
        return self.model_.best_score_ if self.early_stopping else None

    @property
    def best_loss_(self):
        return None if self.early_stopping else self.model_.best_loss_

    @property
    def coefs_(self):
        """Weights in scikit-learn's layout: coefs_[i] is (fan_in, fan_out) (our W transposed)."""
        return [W.T.copy() for W in self.model_.get_weights()]

    @property
    def intercepts_(self):
        return self.model_.get_biases()

    @property
    def n_layers_(self):
        return len(self.model_.sizes)

    @property
    def n_outputs_(self):
        return self.model_.sizes[-1]

    def _device_input(self, X):
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=(np.float64, np.float32))


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multilayer perceptron classifier (softmax outputs, cross-entropy), scikit-learn's interface.

    See the module docstring for the parameters; ``class_weight`` is None, "balanced" or
    {label: weight} and multiplies sample_weight.
    """

    _loss = "cross_entropy"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, class_weight=None,
                 backend="auto", dtype=None):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, backend=backend,
                         dtype=dtype)
        self.class_weight = class_weight

    def _targets(self, y, first, incremental, classes):
        """Labels -> indices into classes_ (fixed by the first fit, or by classes in partial_fit)."""
        check_classification_targets(y)
        if first:
            if incremental:
                if classes is None:
                    raise ValueError("classes must be passed on the first call to partial_fit.")
                self.classes_ = unique_labels(classes)
            else:
                self.classes_ = unique_labels(y)
        elif not incremental and not np.array_equal(unique_labels(y), self.classes_):
            raise ValueError(f"warm_start can only be used where `y` has the same classes as in the previous "
                             f"call to fit. Previously got {self.classes_}, `y` has {unique_labels(y)}")
        elif classes is not None and not np.array_equal(unique_labels(classes), self.classes_):
            raise ValueError(f"`classes={list(classes)}` is not the same as on the first call to partial_fit "
                             f"(classes_={list(self.classes_)})")
        return LabelEncoder(self.classes_).transform(y, "y")

    def _class_weight(self, y_train):
        cw = self.class_weight
        if cw is None or isinstance(cw, str):
            return cw  # "balanced": n / (n_classes · count), over the classes in the training labels
        if not isinstance(cw, dict):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {cw!r}")
        return {int(np.searchsorted(self.classes_, k)): v for k, v in cw.items() if k in set(self.classes_.tolist())}

    def fit(self, X, y, sample_weight=None):
        """Train from scratch (or from the fitted weights with warm_start=True) for up to max_iter epochs."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y); ``classes`` is required on the first call."""
        if self.solver not in SOLVERS:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers; {self.solver!r} is not")
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict(self, X):
        X = self._device_input(X)
        return LabelEncoder(self.classes_).inverse_transform(self.model_.predict(X))

    def predict_proba(self, X):
        """Class probabilities, columns in the order of classes_."""
        X = self._device_input(X)
        return self.model_.predict_proba(X)

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    @property
    def out_activation_(self):
        return "softmax"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multilayer perceptron regressor (identity outputs, squared loss), scikit-learn's interface.

    ``loss`` accepts only "squared_error" (scikit-learn's default; "poisson" is not offered).
    """

    _loss = "squared"

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001,
                 power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 backend="auto", dtype=None):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, backend=backend,
                         dtype=dtype)
        self.loss = loss

    def _targets(self, y, first, incremental, classes):
        if self.loss != "squared_error":
            raise ValueError(f"loss must be 'squared_error' (gpumlp has no {self.loss!r}), got {self.loss!r}")
        return y.reshape(-1, 1) if y.ndim == 1 else y

    def fit(self, X, y, sample_weight=None):
        """Train from scratch (or from the fitted weights with warm_start=True) for up to max_iter epochs."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y)."""
        if self.solver not in SOLVERS:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers; {self.solver!r} is not")
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        X = self._device_input(X)
        o = self.model_.decision_function(X)
        return o[:, 0] if o.shape[1] == 1 else o  # one output: 1-D, as scikit-learn (even for y of shape (n, 1))

    @property
    def out_activation_(self):
        return "identity"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
