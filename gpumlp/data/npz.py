"""NumPy ``.npz`` archives with arrays X and y; never unpickled."""
from __future__ import annotations

import zipfile
import zlib

import numpy as np

from .base import _dtype_words, _open_regular


def load_npz(path, require_labels=True):
    """An ``.npz`` archive with arrays ``X`` (n, features) and ``y`` (n,); never unpickles."""
    with _open_regular(path) as f:
        try:
            with np.load(f, allow_pickle=False) as z:
                if "X" not in z.files:
                    raise ValueError(f"{path}: no array named 'X' (found {sorted(z.files)})")
                X = z["X"]
                y = z["y"] if "y" in z.files else None
        except ValueError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise ValueError(f"{path}: cannot read arrays (Python objects or a damaged .npy header); "
                             f"X and y must be plain numeric arrays") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error):
            raise ValueError(f"{path}: not a readable .npz archive (damaged or not a zip file)") from None
    if y is None and require_labels:
        raise ValueError(f"{path}: no array named 'y' with the labels")
    _check_npz_arrays(path, X, y)
    return X, y


def _check_npz_arrays(path, X, y):
    if X.ndim != 2:
        raise ValueError(f"{path}: X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{path}: X holds {_dtype_words(X.dtype)}; features must be real numbers")
    if y is None:
        return
    if y.ndim != 1:
        raise ValueError(f"{path}: y must be 1-D (one label per sample), got shape {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"{path}: y has shape {y.shape} but X has {X.shape[0]} rows")
    if y.dtype.kind not in "biufU":
        raise ValueError(f"{path}: y holds {_dtype_words(y.dtype)}; labels must be numbers or text (str)")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise ValueError(f"{path}: y holds {y[i]} (sample {i + 1}); labels must be finite numbers")
