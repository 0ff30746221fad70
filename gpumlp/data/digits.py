"""The embedded data set: the UCI handwritten digits (gpumlp/datasets/digits.npz, CC BY 4.0)."""
from __future__ import annotations

from importlib import resources

import numpy as np


def load_digits():
    """The UCI optical-recognition handwritten digits, as scikit-learn ships them (CC BY 4.0).

    Returns X (1797, 64) uint8 with 8×8 images flattened row by row, values 0..16, and y (1797,)
    int64 labels 0..9. Attribution: E. Alpaydin, C. Kaynak, UCI ML Repository (gpumlp/datasets/DIGITS.txt).
    """
    with resources.files("gpumlp").joinpath("datasets", "digits.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as z:
            return z["X"], z["y"].astype(np.int64)
