"""Argument checks shared by every public entry point (the model, the trainer, the estimators).

Each check raises ValueError or TypeError naming the argument and what was expected, and runs
before any state changes, so a call that raises leaves the model exactly as it was. Arrays already
on the device (CuPy) are checked there, without a copy to the host.

Arrays of other libraries come in here, and only here (``as_array``), through DLPack when they have
``__dlpack__`` and ``__dlpack_device__`` (torch, JAX, ...): host memory becomes a NumPy view of
the producer's buffer (``np.from_dlpack``: no copy; its shape, strides and dtype as DLPack describes them),
CUDA memory a CuPy array on the same device memory (``cupy.from_dlpack``, through ``gpumlp.backend``). What
cannot be read exactly is refused: a dtype NumPy lacks (bfloat16), a non-native byte order (NumPy does not
export one), a tensor that requires grad (torch: ``.detach()``), another kind of device. Given the model's
``backend``, device memory (CUDA through DLPack, or CuPy) for a model on NumPy is a TypeError that says how
to move it, as PyTorch and scikit-learn refuse a CUDA tensor for CPU work, instead of a hidden copy per call.
Sample weights are read on the host on either backend (``check_sample_weight``), from wherever they are.

    as_array(a, name, backend)                    NumPy, CuPy or DLPack (torch, JAX, ...) -> NumPy or CuPy, no copy
    as_host(a, name, backend)                     the same, then on the host
    imported(a, name, backend)                    as_array for those two kinds, the rest as it is (for scikit-learn)
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

from .backend import array_module, cuda_device, cupy_from_dlpack, is_device_array, is_sparse

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# DLPack's device types (dlpack.h, DLDeviceType): memory NumPy reads, memory CuPy reads, the others by name
DLPACK_HOST = {1: "CPU", 3: "CUDA host (pinned)", 11: "ROCm host"}
DLPACK_CUDA = {2: "CUDA", 13: "CUDA managed"}
DLPACK_OTHER = {4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI", 10: "ROCm", 12: "ext_dev", 14: "oneAPI",
                15: "WebGPU", 16: "Hexagon", 17: "MAIA"}


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


def as_array(a, name, backend=None):
    """``a`` as the arrays gpumlp computes with, without a copy: a NumPy or CuPy array as it is; an array of
    another library with ``__dlpack__`` and ``__dlpack_device__`` (torch, JAX, ...) as a NumPy view of its host
    memory or a CuPy array on its CUDA memory (module docstring); anything else (lists, pandas) through
    ``np.asarray``. ``backend`` (the model's ``gpumlp.backend.Backend``; None: either) on NumPy refuses device
    memory with a TypeError that says how to move it. Sparse matrices are ``check_X``'s, not handled here."""
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    if is_device_array(a):
        if backend is not None and not backend.is_gpu:
            raise TypeError(_device_for_host_model(name, "a CuPy array (GPU memory)", "cupy.asnumpy(a) or a.get()"))
        return a
    if isinstance(a, np.ndarray):
        return a
    if _has_dlpack(a):
        return _from_dlpack(a, name, backend)
    try:
        return np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} could not be read as an array: {exc}") from exc


def imported(a, name, backend=None, *, host=False):
    """``as_array`` for what gpumlp reads itself (CuPy arrays, arrays with ``__dlpack__``), anything else as it is
    (lists, pandas, SciPy matrices: scikit-learn's checks read their column names and formats). ``host``: device
    memory copied to the host, as ``as_host``."""
    if is_sparse(a) or (isinstance(a, np.ndarray) and not is_device_array(a)):
        return a
    if not (is_device_array(a) or _has_dlpack(a)):
        return a
    return as_host(a, name, backend) if host else as_array(a, name, backend)


def as_host(a, name, backend=None):
    """``as_array``, then on the host: device memory copied (``backend`` on NumPy refuses it, as ``as_array``)."""
    a = as_array(a, name, backend)
    return a.get() if is_device_array(a) else a


def _has_dlpack(a):
    return hasattr(type(a), "__dlpack__") and hasattr(type(a), "__dlpack_device__")


def _device_for_host_model(name, what, how):
    return (f"{name} is {what}, and this model computes on the host (backend='numpy'): move it to the host first "
            f"({how}) or use a model on the GPU (backend='cupy')")


def _from_dlpack(a, name, backend):
    """A DLPack producer's memory as a NumPy view (host) or a CuPy array (CUDA), without a copy; else a TypeError."""
    label = f"{type(a).__module__.split('.')[0]}.{type(a).__name__}"
    if getattr(a, "dtype", None) is not None:
        label += f" of dtype {a.dtype}"
    try:
        kind, device = (int(v) for v in a.__dlpack_device__())
    except Exception as exc:  # a torch tensor on the meta device, ...
        raise TypeError(f"{name} ({label}) has __dlpack__, but its __dlpack_device__ failed: {exc}") from exc
    if kind in DLPACK_CUDA:
        where = f"a {label} in {DLPACK_CUDA[kind]} memory (cuda:{device})"
        if backend is not None and not backend.is_gpu:
            raise TypeError(_device_for_host_model(name, where, "tensor.cpu() for torch, jax.device_get(a) for JAX"))
        return _cuda_from_dlpack(a, name, where, device)
    if kind not in DLPACK_HOST:
        device_name = DLPACK_OTHER.get(kind, f"DLPack device type {kind}")
        raise TypeError(f"{name} ({label}) is on a {device_name} device, which gpumlp cannot read (NumPy reads host "
                        f"memory, CuPy CUDA memory): copy it to the host first")
    try:
        return np.from_dlpack(a)
    except Exception as exc:  # BufferError: byte order, requires_grad; an unsupported dtype (bfloat16), ...
        raise TypeError(f"{name} ({label}) could not be read through DLPack: {exc}") from exc


def _cuda_from_dlpack(a, name, where, device):
    try:
        current = cuda_device()
    except Exception as exc:  # ImportError: no CuPy; CUDARuntimeError: no usable driver
        raise TypeError(f"{name} is {where}, which gpumlp reads through CuPy, and CuPy cannot run here "
                        f"({type(exc).__name__}: {exc})") from exc
    if device != current:
        raise ValueError(f"{name} is {where}, and gpumlp computes on cuda:{current} (CuPy's current device): move "
                         f"it there, or make that device current (cupy.cuda.Device({device}).use())")
    try:
        return cupy_from_dlpack(a)
    except Exception as exc:  # the dtype or the layout, as for host memory
        raise TypeError(f"{name} ({where}) could not be read through DLPack: {exc}") from exc


def _all_finite(xp, arr):
    """Whether every element is finite. The sum first: one pass with no temporary, finite exactly when
    nothing is NaN or infinite unless it overflows, and only then (or on NaN/inf) the elementwise scan,
    whose boolean temporary is as many bytes as elements (51 MB for 65,536 rows of 784)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if bool(xp.isfinite(arr.sum())):
            return True
    return bool(xp.isfinite(arr).all())


def _finite_as(arr, xp, dtype, name):
    """``arr`` checked to be finite as it will be used: cast to ``dtype`` first when that narrows the
    range (float64 data for a float32 model), where a value beyond float32's range becomes inf."""
    if dtype is not None and arr.dtype.kind == "f" and np.finfo(arr.dtype).max > np.finfo(dtype).max:
        with np.errstate(over="ignore"):  # an overflow is what is checked for, and reported, here
            cast = arr.astype(dtype)
        if not _all_finite(xp, cast):
            if _all_finite(xp, arr):
                raise ValueError(f"{name} has values beyond the range of {np.dtype(dtype).name} (largest "
                                 f"{np.finfo(dtype).max:.4g}); scale the data or use dtype='float64'")
            raise ValueError(f"{name} contains NaN or infinity")
        return cast
    if arr.dtype.kind == "f" and not _all_finite(xp, arr):
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def check_X(X, name="X", n_features=None, dtype=None, *, backend=None):
    """A 2-D, non-empty, finite, real array. Returns a NumPy view or copy (dtype untouched, except that
    with ``dtype`` given, data of a wider float type come back cast to it, checked finite after the cast).
    A sparse matrix (SciPy or cupyx, any format) is checked on its stored values and comes back in CSR
    (the format whose rows batches and chunks take), where it was; it is never densified. Arrays of other
    libraries come in through ``as_array`` (DLPack; ``backend``: the model's), CuPy's are checked on the device."""
    if is_sparse(X):
        return _check_sparse_X(X, name, n_features, dtype)
    arr = as_array(X, name, backend)
    xp = array_module(arr)  # a device array is validated on the device, without a copy to the host
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


def check_y(y, loss, n_samples, n_outputs, name="y", dtype=None, *, backend=None):
    """Targets for ``loss``: integer labels in [0, q) for cross-entropy; else (n, q) numbers (1-D
    when q = 1), checked finite as ``dtype`` like ``check_X``: any real value for squared, values in
    [0, 1] for binary_cross_entropy (0/1 indicators, or probabilities), values >= 0 for poisson.
    Read as ``check_X`` reads X (``as_array``), where they are."""
    arr = as_array(y, name, backend)
    xp = array_module(arr)
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
    be finite and non-negative with a positive sum (L is the weighted mean Σ wᵢ lᵢ / Σ wᵢ). They are read on
    the host on either backend (``as_host``: arrays of other libraries through DLPack, device memory copied).
    """
    if w is None:
        return None
    arr = as_host(w, name)
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
    c = as_host(classes, "classes")
    if c.ndim != 1 or c.size == 0 or c.dtype.kind not in "iu":
        raise ValueError(f"classes must be a 1-D array of integer labels, got {classes!r}")
    if len(np.unique(c)) != c.size or c.min() < 0 or c.max() >= n_outputs:
        raise ValueError(f"classes must be distinct labels in [0, {n_outputs}), got {c.tolist()}")
