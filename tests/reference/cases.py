"""Training runs whose results were recorded on main before the code was split into model, step and
trainer (commit 7500802, NumPy backend): ``tests/test_reference_results.py`` replays each one and
compares every number with ``results.npz``.

Each case uses only the public API (``MLP``, ``fit``, ``partial_fit``, weights, optimizer state,
curves), so the same file runs against the old and the new code. To record again (only when a change
of the numbers is intended and explained):

    PYTHONPATH=$PWD python tests/reference/cases.py tests/reference/results.npz

The bits also depend on the machine's BLAS kernels and NumPy's SIMD level: ``results.npz`` is the set
of one such configuration, and ``numerics.py`` records the sets of others, with main's code from
before the split (``numerics.json`` lists them).
"""
from __future__ import annotations

import sys

import numpy as np

import gpumlp
from gpumlp.data import Scaler, load_digits


def digits(n=500):
    X, y = load_digits()
    X, y = X[:n], y[:n]
    return Scaler("standard").fit(X).transform(X, np.float64), y


def regression(n=300, d=6, q=2, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, q))
    return X, np.tanh(X @ W) + 0.1 * rng.normal(size=(n, q))


def _classifier(dtype, epochs=4, batch=37, sizes=(64, 24, 10), fit=None, **kw):
    X, y = digits()
    m = gpumlp.MLP(sizes, backend="numpy", dtype=dtype, seed=5, weight_decay=1e-3, **kw)
    m.fit(X, y, epochs=epochs, batch_size=batch, lr=0.05, **(fit or {}))
    return m


def case_sgd(dtype):
    return _classifier(dtype)


def case_sgd_bias_tanh(dtype):
    return _classifier(dtype, bias=True, activation="tanh")


def case_momentum(dtype):
    return _classifier(dtype, momentum=0.9, bias=True)


def case_nesterov(dtype):
    return _classifier(dtype, momentum=0.9, nesterov=True)


def case_adam(dtype):
    return _classifier(dtype, optimizer="adam", bias=True, fit={"shuffle": True})


def case_adamw(dtype):
    return _classifier(dtype, optimizer="adam", decoupled=True, beta1=0.8, beta2=0.99)


def case_deep(dtype):
    return _classifier(dtype, sizes=(64, 20, 16, 12, 10), activation=["gelu", "sigmoid", "softplus"],
                       momentum=0.5, bias=True)


def case_deep_leaky(dtype):
    return _classifier(dtype, sizes=(64, 18, 14, 10), activation=["leaky_relu", "identity"], optimizer="adam")


def case_early_stopping(dtype):
    return _classifier(dtype, epochs=40, momentum=0.9,
                       fit={"early_stopping": True, "validation_fraction": 0.2, "n_iter_no_change": 3})


def case_validation_data(dtype):
    X, y = digits(700)
    m = gpumlp.MLP((64, 16, 10), backend="numpy", dtype=dtype, seed=2, weight_decay=1e-4, optimizer="adam")
    m.fit(X[:500], y[:500], epochs=5, batch_size=64, lr=0.01, validation_data=(X[500:], y[500:]),
          train_score=True)
    return m


def case_convergence(dtype):
    return _classifier(dtype, epochs=30, fit={"n_iter_no_change": 2, "tol": 1e-2})


def case_adaptive(dtype):
    return _classifier(dtype, epochs=25, lr_schedule="adaptive", momentum=0.9, fit={"n_iter_no_change": 2, "tol": 1e-2})


def case_cosine(dtype):
    return _classifier(dtype, epochs=6, lr_schedule=gpumlp.schedules.Cosine(T_max=6), optimizer="adam")


def case_weights(dtype):
    X, y = digits()
    w = np.random.default_rng(1).uniform(0, 3, size=len(y))
    m = gpumlp.MLP((64, 24, 10), backend="numpy", dtype=dtype, seed=5, weight_decay=1e-3, momentum=0.9)
    m.fit(X, y, epochs=3, batch_size=50, lr=0.05, sample_weight=w, class_weight="balanced")
    return m


def case_class_weight_dict(dtype):
    X, y = digits()
    m = gpumlp.MLP((64, 24, 10), backend="numpy", dtype=dtype, seed=5, weight_decay=1e-3, bias=True)
    m.fit(X, y, epochs=3, batch_size=50, lr=0.05, class_weight={0: 3.0, 7: 0.5})
    return m


def case_partial_fit(dtype):
    X, y = digits()
    m = gpumlp.MLP((64, 24, 10), backend="numpy", dtype=dtype, seed=5, weight_decay=1e-3, optimizer="adam",
                   lr_schedule="adaptive")
    for i in range(0, 500, 100):
        m.partial_fit(X[i:i + 100], y[i:i + 100], batch_size=32, lr=0.01, n_iter_no_change=1, tol=0.5)
    return m


def case_regression(dtype):
    X, Y = regression()
    m = gpumlp.MLP((6, 16, 2), loss="squared", activation="tanh", bias=True, backend="numpy", dtype=dtype,
                   seed=4, weight_decay=1e-4, momentum=0.9)
    m.fit(X, Y, epochs=6, batch_size=40, lr=0.05, early_stopping=True, validation_fraction=0.15,
          n_iter_no_change=20)
    return m


def case_regression_adam(dtype):
    X, Y = regression(q=1)
    m = gpumlp.MLP((6, 12, 1), loss="squared", backend="numpy", dtype=dtype, seed=4, optimizer="adam",
                   lr_schedule="invscaling")
    m.fit(X, Y[:, 0], epochs=5, batch_size=64, lr=0.02, shuffle=False)
    return m


def case_step(dtype):
    X, y = digits(120)
    m = gpumlp.MLP((64, 10, 10), backend="numpy", dtype=dtype, seed=8, weight_decay=1e-2, bias=True)
    for i in range(0, 120, 30):
        m.step(X[i:i + 30], y[i:i + 30], lr=0.1)
    return m


CASES = {name[len("case_"):]: f for name, f in sorted(globals().items()) if name.startswith("case_")}
DTYPES = ("float32", "float64")


def record(m):
    """Every number a run leaves behind, as arrays (NaN where not measured)."""
    out = {"weights": np.concatenate([w.ravel() for w in m.get_weights()])}
    if m.bias:
        out["biases"] = np.concatenate(m.get_biases())
    for k, v in m.optimizer.state_arrays().items():
        out[f"optimizer.{k}"] = np.asarray(v)
    out["optimizer.t"] = np.asarray(m.optimizer.t)
    out["loss_curve"] = np.asarray(m.loss_curve_, np.float64)
    for k, v in m.history_.items():
        out[f"history.{k}"] = np.asarray(v, np.float64)
    out["epochs"] = np.asarray(m.epochs_)
    out["best_epoch"] = np.asarray(-1 if m.best_epoch_ is None else m.best_epoch_)
    out["stop_reason"] = np.asarray(str(m.stop_reason_))
    return out


def record_all():
    flat = {}
    for name, f in CASES.items():
        for dtype in DTYPES:
            for k, v in record(f(dtype)).items():
                flat[f"{name}/{dtype}/{k}"] = v
    return flat


if __name__ == "__main__":
    np.savez_compressed(sys.argv[1], **record_all())
