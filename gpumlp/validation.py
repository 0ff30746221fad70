"""Argument checks shared by every public entry point (the model, the trainer, the estimators).

Each check raises ValueError or TypeError naming the argument and what was expected, and runs
before any state changes, so a call that raises leaves the model exactly as it was. Arrays already
on the device (CuPy) are checked there, without a copy to the host.

    check_X(X, name, n_features, dtype)           2-D, non-empty, real, finite as ``dtype`` (dense or sparse)
    check_y(y, loss, n, n_outputs, name, dtype)   labels in [0, q), or (n, q) targets: real (squared),
                                                  in [0, 1] (binary_cross_entropy), >= 0 (poisson)
    check_sample_weight(w, n, name)               (n,) finite, >= 0, positive sum (a number: n copies)
    rescaled_weights(w)                           w · 2ᵏ with max ∈ [1, 2): safe to cast to float32
    check_positive_number(v, name, ...)           a finite number (or integer) > 0 or >= 0
    check_dtype(dtype)                            float32 or float64
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import array_module, is_device_array, is_sparse

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dt.name!r}")
    return dt


def check_positive_number(value, name, *, allow_zero=False, integer=False):
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return int(value) if integer else float(value)


def _as_host_array(a, name):
    """Anything array-like (NumPy, CuPy, lists) -> NumPy array without copying NumPy input."""
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    if is_device_array(a):
        return a.get()
    try:
        return np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} could not be read as an array: {exc}") from exc


def _finite_as(arr, xp, dtype, name):
    """``arr`` checked to be finite as it will be used: cast to ``dtype`` first when that narrows the
    range (float64 data for a float32 model), where a value beyond float32's range becomes inf."""
    if dtype is not None and arr.dtype.kind == "f" and np.finfo(arr.dtype).max > np.finfo(dtype).max:
        with np.errstate(over="ignore"):  # an overflow is what is checked for, and reported, here
            cast = arr.astype(dtype)
        if not bool(xp.isfinite(cast).all()):
            if bool(xp.isfinite(arr).all()):
                raise ValueError(f"{name} has values beyond the range of {np.dtype(dtype).name} (largest "
                                 f"{np.finfo(dtype).max:.4g}); scale the data or use dtype='float64'")
            raise ValueError(f"{name} contains NaN or infinity")
        return cast
    if arr.dtype.kind == "f" and not bool(xp.isfinite(arr).all()):
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def check_X(X, name="X", n_features=None, dtype=None):
    """A 2-D, non-empty, finite, real array. Returns a NumPy view or copy (dtype untouched, except that
    with ``dtype`` given, data of a wider float type come back cast to it, checked finite after the cast).
    A sparse matrix (SciPy or cupyx, any format) is checked on its stored values and comes back in CSR
    (the format whose rows batches and chunks take), where it was; it is never densified."""
    if is_sparse(X):
        return _check_sparse_X(X, name, n_features, dtype)
    if is_device_array(X):
        arr, xp = X, array_module(X)  # validated on the device, without a copy to the host
    else:
        arr, xp = _as_host_array(X, name), np
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features, the model expects {n_features}")
    return _finite_as(arr, xp, dtype, name)


def _check_sparse_X(X, name, n_features, dtype):
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
    if len(X.shape) != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features, the model expects {n_features}")
    X = X.tocsr()
    data = _finite_as(X.data, array_module(X), dtype, name)  # cupyx: on the device
    if data.dtype != X.data.dtype:
        X = X.astype(data.dtype)
    return X


def check_y(y, loss, n_samples, n_outputs, name="y", dtype=None):
    """Targets for ``loss``: integer labels in [0, q) for cross-entropy; else (n, q) numbers (1-D
    when q = 1), checked finite as ``dtype`` like ``check_X``: any real value for squared, values in
    [0, 1] for binary_cross_entropy (0/1 indicators, or probabilities), values >= 0 for poisson."""
    if is_device_array(y):
        arr, xp = y, array_module(y)
    else:
        arr, xp = _as_host_array(y, name), np
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if arr.shape[:1] != (n_samples,):
        raise ValueError(f"{name} has {arr.shape[0] if arr.ndim else 0} rows, X has {n_samples}")
    if loss == "cross_entropy":
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D integer class labels for cross_entropy, got shape {arr.shape}")
        if arr.dtype.kind == "f":
            if not bool(xp.isfinite(arr).all()) or not bool((arr == xp.round(arr)).all()):
                raise ValueError(f"{name} must hold integer class labels, got non-integer values")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n_outputs:
            raise ValueError(f"{name} labels must lie in [0, {n_outputs}), got values in [{lo}, {hi}]")
        return arr
    if arr.ndim == 1 and n_outputs == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n_outputs:
        raise ValueError(f"{name} must have shape (n_samples, {n_outputs}) for the {loss} loss, got {arr.shape}")
    arr = _finite_as(arr, xp, dtype, name)
    if loss == "binary_cross_entropy" and not bool(((arr >= 0) & (arr <= 1)).all()):
        raise ValueError(f"{name} must hold values in [0, 1] for binary_cross_entropy (0/1 per label, or "
                         f"probabilities), got values in [{float(arr.min())}, {float(arr.max())}]")
    if loss == "poisson" and bool((arr < 0).any()):
        raise ValueError(f"{name} must be non-negative for the poisson loss, got a minimum of {float(arr.min())}")
    return arr


def check_sample_weight(w, n_samples, name="sample_weight"):
    """Per-example weights as a host array of shape (n_samples,) (its dtype kept), or None.

    A single number stands for that weight on every example (scikit-learn's convention). Weights must
    be finite and non-negative with a positive sum (L is the weighted mean Σ wᵢ lᵢ / Σ wᵢ).
    """
    if w is None:
        return None
    arr = _as_host_array(w, name)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if arr.ndim == 0:
        arr = np.full(n_samples, arr)
    if arr.shape != (n_samples,):
        raise ValueError(f"{name} must have shape ({n_samples},), got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    if not arr.sum() > 0:
        raise ValueError(f"{name} is all zero: at least one weight must be positive (L is the weighted mean)")
    return arr


def rescaled_weights(w):
    """``w`` (float64) times the power of two that puts its largest value in [1, 2).

    L is the weighted mean Σ wᵢ lᵢ / Σ wᵢ, invariant to the scale of w, and a power of two changes no
    bit of the ratios: so the results are those of w itself, except that casting to float32 afterwards
    neither underflows (weights of 1e-300 would all become 0: nothing trained) nor overflows (1e300
    would become inf, and report a divergence).
    """
    w = np.asarray(w, dtype=np.float64)
    _, exponent = np.frexp(w.max())
    return np.ldexp(w, 1 - int(exponent))


def check_classes(classes, loss, n_outputs):
    """``partial_fit``'s classes: distinct integer labels in [0, n_outputs) (cross-entropy only)."""
    if loss != "cross_entropy":
        raise ValueError("classes is only meaningful for loss='cross_entropy'")
    c = np.asarray(classes)
    if c.ndim != 1 or c.size == 0 or c.dtype.kind not in "iu":
        raise ValueError(f"classes must be a 1-D array of integer labels, got {classes!r}")
    if len(np.unique(c)) != c.size or c.min() < 0 or c.max() >= n_outputs:
        raise ValueError(f"classes must be distinct labels in [0, {n_outputs}), got {c.tolist()}")
