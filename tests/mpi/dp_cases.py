"""The data-parallel training cases, shared by the scripts that run under mpiexec (run_cases.py)
and by tests/test_distributed.py, which computes the single-process references and compares.

A case: the model's settings, fit's arguments and the data's. The data are the same on every rank
(replicated mode) or, with "sharded", cut into parts of different sizes, one per rank. The first
feature of every row is its id times 2**-10 (exact in binary), so that a run can report which
examples each step trained on.
"""
import hashlib

import numpy as np

import gpumlp
from gpumlp import schedules

ID_SCALE = 2.0**-10
N, D, Q = 49, 6, 3  # 49 rows in batches of 16: the last batch has 1 row (empty shards on ranks 1, 2)

# name -> (model settings, fit arguments, data settings)
CASES = {
    "sgd": ({"weight_decay": 0.01, "bias": True}, {}, {}),
    "nesterov-weighted": ({"momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "bias": True}, {},
                          {"weights": True}),
    "adam-class-weight": ({"optimizer": "adam", "weight_decay": 0.01, "bias": True}, {"class_weight": "balanced"},
                          {"weights": True}),
    "adamw": ({"optimizer": "adam", "decoupled": True, "weight_decay": 0.05}, {}, {}),
    "squared-momentum": ({"loss": "squared", "momentum": 0.5, "bias": True, "weight_decay": 0.01}, {},
                         {"weights": True}),
    "float32-momentum": ({"momentum": 0.9, "dtype": "float32", "bias": True, "weight_decay": 0.01}, {},
                         {"weights": True}),
    "float32-adam": ({"optimizer": "adam", "dtype": "float32", "bias": True}, {}, {}),
    "batch-below-ranks": ({"momentum": 0.9, "bias": True}, {"batch_size": 2}, {"n": 13}),
    "zero-weight-batch": ({"momentum": 0.9, "weight_decay": 0.1}, {"shuffle": False}, {"weights": "zeros"}),
    "early-stopping": ({"optimizer": "adam", "bias": True},
                       {"early_stopping": True, "validation_fraction": 0.25, "n_iter_no_change": 2, "epochs": 12},
                       {"n": 80, "noise": 3.0}),
    "adaptive": ({"momentum": 0.9, "lr_schedule": "adaptive"},
                 {"n_iter_no_change": 1, "tol": 10.0, "epochs": 8}, {}),
    "cosine-validation": ({"momentum": 0.9, "bias": True, "lr_schedule": "cosine"},
                          {"train_score": True, "validation": True}, {"weights": True}),
    "sharded": ({"momentum": 0.9, "bias": True, "weight_decay": 0.01}, {"batch_size": 12},
                {"sharded": True, "weights": True}),
    "sharded-geometric-weights": ({"momentum": 0.9, "bias": True}, {"batch_size": 12},
                                  {"sharded": True, "weights": "geometric"}),
    "sharded-class-weight": ({"optimizer": "adam", "bias": True}, {"batch_size": 9, "class_weight": "balanced",
                                                                   "train_score": True, "validation": True},
                             {"sharded": True}),
    "sharded-early-stopping": ({"optimizer": "adam", "bias": True},
                               {"batch_size": 9, "early_stopping": True, "validation_fraction": 0.25,
                                "n_iter_no_change": 1, "epochs": 12}, {"sharded": True, "n": 80, "noise": 3.0}),
    "sharded-squared": ({"loss": "squared", "momentum": 0.5}, {"batch_size": 8, "train_score": True,
                                                               "validation": "weighted"}, {"sharded": True}),
}
FIT_DEFAULTS = {"epochs": 4, "batch_size": 16, "lr": 0.1}


def settings(name):
    model, fit, data = CASES[name]
    model = {"dtype": "float64", "backend": "numpy", **model}
    if model.get("lr_schedule") == "cosine":
        model["lr_schedule"] = schedules.Cosine(T_max=4)
    return model, {**FIT_DEFAULTS, **fit}, data


def full_data(name):
    """X, y, w of the whole data set of a case (w None without weights)."""
    model, _, data = settings(name)
    n = data.get("n", N)
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(Q, D)) * 2
    labels = rng.integers(0, Q, n)
    X = centres[labels] + data.get("noise", 1.0) * rng.normal(size=(n, D))
    X[:, 0] = np.arange(n) * ID_SCALE
    if model.get("loss") == "squared":
        y = np.stack([X[:, 1] - X[:, 2], X[:, 3] * 0.5], axis=1) + 0.1 * rng.normal(size=(n, 2))
    else:
        y = labels
    w = None
    if data.get("weights") == "zeros":  # the first global batch (no shuffling) weighs nothing
        w = np.ones(n)
        w[:16] = 0.0
    elif data.get("weights") == "geometric":  # the parts' largest weights lie in different octaves
        w = 1.15 ** np.arange(n)
    elif data.get("weights"):
        w = rng.uniform(0.2, 2.0, n)
    return X, y, w


def parts(n, size):
    """Row ranges of the sharded parts: sizes differ by rank (rank r holds about (2 + r) / Σ of them)."""
    weights = np.arange(2, 2 + size, dtype=float)
    bounds = np.concatenate(([0], np.round(np.cumsum(weights) / weights.sum() * n).astype(int)))
    return [(int(bounds[r]), int(bounds[r + 1])) for r in range(size)]


def validation_data(name):
    """(Xv, yv), or with validation "weighted" (Xv, yv, wv): weights whose parts' largest values lie
    in different octaves."""
    X, y, _ = full_data(name)
    rng = np.random.default_rng(11)
    Xv = X[:20] + 0.3 * rng.normal(size=(20, D))
    Xv[:, 0] = X[:20, 0]
    if settings(name)[1].get("validation") == "weighted":
        return Xv, y[:20], 1.3 ** np.arange(20)
    return Xv, y[:20]


def model(name, seed=0):
    m, _, _ = settings(name)
    sizes = (D, 8, 2 if m.get("loss") == "squared" else Q)
    return gpumlp.MLP(sizes, activation="tanh", seed=seed, **m)


def fit_arguments(name, rank=0, size=1, sharded_part=True):
    """(X, y, fit kwargs) of the rank: its part in sharded mode (``sharded_part``), else all."""
    _, fit, data = settings(name)
    X, y, w = full_data(name)
    kw = {k: v for k, v in fit.items() if k != "validation"}
    if fit.get("validation"):
        val = validation_data(name)
        if data.get("sharded") and sharded_part:
            lo, hi = parts(len(val[0]), size)[rank]
            val = tuple(a[lo:hi] for a in val)
        kw["validation_data"] = val
    if data.get("sharded") and sharded_part:
        lo, hi = parts(len(X), size)[rank]
        X, y, w = X[lo:hi], y[lo:hi], None if w is None else w[lo:hi]
    if w is not None:
        kw["sample_weight"] = w
    return X, y, kw


def theta_digest(model):
    return hashlib.blake2b(np.ascontiguousarray(model.array_backend.to_host(model.theta)).tobytes(),
                           digest_size=16).hexdigest()


def result(model, digests):
    """What a run reports: θ, the curves and decisions, θ's digest after every epoch."""
    h = model.history_
    return {"theta": np.asarray(model.array_backend.to_host(model.theta)), "loss_curve": np.asarray(model.loss_curve_),
            "val_score": np.asarray(h["val_score"]), "val_loss": np.asarray(h["val_loss"]),
            "score": np.asarray(h["score"]), "lr": np.asarray(h["lr"]), "epochs": model.epochs_,
            "stop_reason": str(model.stop_reason_),
            "best_epoch": -1 if model.best_epoch_ is None else model.best_epoch_,
            "digests": np.asarray(digests), "samples_seen": model.samples_seen_}


def run(name, comm=None, rank=0, size=1, seed=0):
    """Fit the case (on ``comm``, or in one process with comm=None); returns (model, result)."""
    m = model(name, seed)
    X, y, kw = fit_arguments(name, rank, size, sharded_part=comm is not None)
    digests = []
    sharded = settings(name)[2].get("sharded", False)
    extra = {} if comm is None else {"comm": comm, "sharded": sharded}
    m.fit(X, y, callbacks=lambda model, record: digests.append(theta_digest(model)), **kw, **extra)
    return m, result(m, digests)
