"""L-BFGS on the full batch: J(θ) and ∂J/∂θ from the step's gradient phase, minimised by SciPy.

    objective = Objective(model, x, y, w)      # J and the flat ∂J/∂θ as a function of θ
    J, g = objective(theta)                     # θ, g: float64 host vectors (SciPy's side)
    LBFGSTrainer(model).fit(X, y, max_iter=200, max_fun=15000, tol=1e-4)   # what MLP.fit runs

``Objective`` is ``Step.objective_gradient`` on one step whose batch is the whole training set: J = L + s
and ∂J/∂θ = ∂L/∂θ + λθ in the flat layout of θ (weights, then biases). On the GPU, J and ∂J/∂θ are
computed on the device; per evaluation θ crosses to the device and ∂J/∂θ (with J beside it, in the
same copy) back to the host, nothing else: the data, the activations and the gradient's layers stay there.

``LBFGSTrainer.fit`` hands the objective to ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)``
with scikit-learn's settings (sklearn.neural_network.MLPClassifier(solver="lbfgs")):

    options = {"maxiter": max_iter, "maxfun": max_fun, "gtol": tol}

(SciPy's defaults for the rest: 10 correction pairs, ftol 2.2e-9, no bounds). It stops when the
largest component of ∂J/∂θ is at most ``tol`` or J stops falling (status 0, ``stop_reason_``
"converged"), after ``max_iter`` iterations ("epochs"), after ``max_fun`` evaluations of J ("max_fun"),
when the line search fails ("line_search"), or when a callback returns True ("callback"). Each
iteration counts as one epoch of the model: it appends J to ``loss_curve_`` and a record to
``history_`` (lr NaN), validates on ``validation_data`` and calls the callbacks, as the minibatch
trainer does. The model's θ is left at SciPy's result. ``result`` holds SciPy's OptimizeResult (its
``status``, ``message``, ``nit``, ``nfev``): the scikit-learn estimators turn it into their
ConvergenceWarning. A non-finite J at the end raises ``DivergenceError`` with θ at the last finite
iterate.

Each fit starts L-BFGS afresh from the current θ: its curvature memory is not kept between fits (SciPy
does not expose it), as scikit-learn's warm starts. SciPy is optional: ``pip install "gpumlp[lbfgs]"``.
Memory: the step holds the activations of every training example at once (scikit-learn's full batch).

Threads: SciPy's L-BFGS-B does its vector work over θ in SciPy's own BLAS, a second OpenBLAS beside
NumPy's, with its own pool of threads. After each call an OpenBLAS worker spins for a while waiting for
more work, so between SciPy's calls and our GEMMs two spinning workers and the main thread share the
cores, and each of our multi-threaded GEMMs waits for its worker to be scheduled (on two cores a
0.02 ms product took about 1 ms, and a 37-iteration fit 0.3 s instead of 0.02 s). ``fit`` therefore
runs SciPy's BLAS on one thread while it minimises (``scipy_blas_single_threaded``; its work is
O(n·m) vector operations over θ that threads do not speed up) and leaves NumPy's at its setting, so
large problems keep their threaded GEMMs. The limit needs threadpoolctl (in the lbfgs extra); it is
process-wide while the fit runs and restored after it.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from .trainer import DivergenceError, Trainer
from .validation import check_positive_number


class Objective:
    """J(θ) and ∂J/∂θ of ``model`` on the full batch (x, y, w), for SciPy: ``J, grad = objective(theta)``."""

    def __init__(self, model, x, y, w=None):
        self.model, self.x, self.y, self.w = model, x, y, w
        self.step = model.training_step(x.shape[0])
        # ∂J/∂θ and J side by side on the device: one copy to the host per evaluation
        self._out = model.array_backend.xp.empty(model.theta.size + 1, model.dtype)
        self.evaluations = 0

    def set_theta(self, theta):
        """θ ← a host vector (float64 from SciPy), cast to the model's dtype on its device."""
        m = self.model
        m.theta[...] = m.array_backend.asarray(np.asarray(theta, np.float64).astype(m.dtype, copy=False))

    def __call__(self, theta):
        m = self.model
        self.set_theta(theta)
        J = self.step.objective_gradient(self.x, self.y, self.w)  # ∂J/∂θ into m.grad, J on the device
        self._out[:-1] = m.grad
        self._out[-1] = J
        out = np.array(m.array_backend.to_host(self._out), dtype=np.float64)  # a copy SciPy may keep
        self.evaluations += 1
        return float(out[-1]), out[:-1]


def scipy_minimize():
    """scipy.optimize.minimize, or an ImportError that names the extra to install."""
    try:
        from scipy.optimize import minimize
    except ImportError:
        raise ImportError("optimizer='lbfgs' runs SciPy's L-BFGS-B, and SciPy is not installed: "
                          "pip install 'gpumlp[lbfgs]' (or pip install scipy)") from None
    return minimize


_OTHER_BLAS = []  # [the threadpoolctl selection of the BLAS libraries beside NumPy's, or None], found once


def scipy_blas_single_threaded():
    """A context in which every BLAS library loaded beside NumPy's runs one thread (module docstring);
    NumPy's keeps its setting. Does nothing where there is one BLAS (NumPy and SciPy share it: no
    second pool to spin), where NumPy's cannot be told from the others, or without threadpoolctl. The
    libraries are found once per process (a scan costs about a millisecond, a small fit a few)."""
    if not _OTHER_BLAS:
        _OTHER_BLAS.append(_other_blas())
    others = _OTHER_BLAS[0]
    return contextlib.nullcontext() if others is None else others.limit(limits=1)


def _other_blas():
    try:
        import threadpoolctl
    except ImportError:
        return None
    import scipy.linalg  # noqa: F401  (SciPy's BLAS, which its L-BFGS-B calls, is loaded by now)

    controller = threadpoolctl.ThreadpoolController()
    blas = [c for c in controller.lib_controllers if c.user_api == "blas"]
    numpy_dir = Path(np.__file__).resolve().parent
    numpy_libs = (numpy_dir.parent / "numpy.libs", numpy_dir)  # where NumPy's wheels keep their OpenBLAS

    def is_numpy_s(c):
        return any(d in Path(c.filepath).resolve().parents for d in numpy_libs)

    others = [c.filepath for c in blas if not is_numpy_s(c)]
    if len(blas) < 2 or len(others) == len(blas):
        return None
    return controller.select(filepath=others)


class LBFGSTrainer:
    """Full-batch L-BFGS training of ``model`` (a ``gpumlp.MLP`` with optimizer="lbfgs") from its θ.

    callbacks, train_score, verbose : as ``gpumlp.Trainer`` (called once per L-BFGS iteration).
    """

    def __init__(self, model, *, callbacks=None, train_score=False, verbose=False):
        if model.optimizer.name != "lbfgs":
            raise ValueError(f"LBFGSTrainer trains models built with optimizer='lbfgs', not "
                             f"{model.optimizer.name!r} (use gpumlp.Trainer)")
        self.model = model
        # The minibatch trainer's data preparation and per-epoch records, shared (its lr is unused).
        self._epochs = Trainer(model, callbacks=callbacks, train_score=train_score, verbose=verbose)
        self.result = None

    def fit(self, X, y, max_iter=200, *, max_fun=15000, tol=1e-4, sample_weight=None, class_weight=None,
            validation_data=None, early_stopping=False, n_iter_no_change=None):
        """Minimise J over (X, y) from the current θ (module docstring). Returns the model. Another thread
        training the same model meanwhile gets a RuntimeError (``MLP.exclusive``), as with ``gpumlp.Trainer``."""
        from .data.streaming import as_stream

        if as_stream(X) is not None:
            raise ValueError("optimizer='lbfgs' minimises J over the whole training set at once, which a streamed "
                             "source does not hold in memory: use 'sgd' or 'adam' (minibatches), or load the data")
        with self.model.exclusive("fit"):
            return self._fit(X, y, max_iter, max_fun, tol, sample_weight, class_weight, validation_data,
                             early_stopping, n_iter_no_change)

    def _fit(self, X, y, max_iter, max_fun, tol, sample_weight, class_weight, validation_data, early_stopping,
             n_iter_no_change):
        max_iter = check_positive_number(max_iter, "max_iter (epochs)", integer=True)
        max_fun = check_positive_number(max_fun, "max_fun", integer=True)
        tol = check_positive_number(tol, "tol", allow_zero=True)
        if early_stopping or n_iter_no_change is not None:
            raise ValueError("early_stopping and n_iter_no_change apply to the minibatch optimizers ('sgd', "
                             "'adam'); L-BFGS stops by max_iter (epochs), max_fun and tol")
        minimize = scipy_minimize()
        m, trainer = self.model, self._epochs
        data = trainer.prepare(X, y, sample_weight, class_weight)
        if m.array_backend.is_gpu and isinstance(data.x, np.ndarray):
            raise ValueError("L-BFGS evaluates J on the whole training set at once, and it does not fit in "
                             "the device's memory: use a minibatch optimizer ('sgd', 'adam')")
        val = trainer._validation(validation_data)
        objective = Objective(m, data.x, data.y, data.w)
        last = [np.array(m.array_backend.to_host(m.theta), np.float64)]  # the last finite iterate

        def each_iteration(intermediate_result):  # SciPy's callback, after each iteration
            J = float(intermediate_result.fun)
            objective.set_theta(intermediate_result.x)  # records and callbacks see the iterate itself
            if math.isfinite(J):
                last[0] = np.array(intermediate_result.x)
            if trainer.end_epoch(data, J, math.nan, val):
                m.stop_reason_ = "callback"
                raise StopIteration  # SciPy ends the run (status 99)

        m.monitor_ = None
        m.stop_reason_ = None
        with scipy_blas_single_threaded():
            result = minimize(objective, last[0], method="L-BFGS-B", jac=True, callback=each_iteration,
                              options={"maxiter": max_iter, "maxfun": max_fun, "gtol": tol})
        self.result = result
        m.optimizer.t += int(result.nit)
        objective.set_theta(result.x)
        if not (math.isfinite(result.fun) and bool(m.array_backend.xp.isfinite(m.theta).all())):
            objective.set_theta(last[0])
            raise DivergenceError(f"training diverged: L-BFGS ended with J = {result.fun} after {result.nit} "
                                  f"iterations ({result.message}). The weights were restored to its last "
                                  f"finite iterate. Scale the data or use a larger weight_decay.")
        if m.stop_reason_ is None:
            m.stop_reason_ = _stop_reason(result, max_iter)
        return m


def _stop_reason(result, max_iter):
    """stop_reason_ from SciPy's status: 0 converged, 1 a limit (iterations or evaluations), 2 abnormal."""
    if result.status == 0:
        return "converged"
    if result.status == 1:
        return "epochs" if result.nit >= max_iter else "max_fun"
    return "line_search"
