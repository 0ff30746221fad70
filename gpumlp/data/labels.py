"""Class labels and output indices (``LabelEncoder``), and per-example weights from class weights."""
from __future__ import annotations

import numbers

import numpy as np

from .base import _short


class LabelEncoder:
    """Class labels ↔ output indices 0..q−1, the classes sorted (as ``np.unique`` and scikit-learn's
    ``unique_labels`` order them). The one label encoder of the command line and the estimators.

    ``fit(y)`` learns the classes (``whole_floats_as_int``: labels read from a CSV as 3.0 become 3);
    ``transform(y, what)`` maps labels to indices and refuses labels it does not know, naming them and
    ``what`` held them; ``inverse_transform(indices)`` maps back.
    """

    def __init__(self, classes=None):
        self.classes_ = None if classes is None else np.asarray(classes)

    def fit(self, y, whole_floats_as_int=False):
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {y.shape}")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("labels contain NaN or infinity")
        if y.dtype.kind not in "biufUS":
            raise TypeError(f"labels must be numbers or strings, got dtype {y.dtype}")
        classes = np.unique(y)
        if whole_floats_as_int and classes.dtype.kind == "f" and np.all(classes == np.round(classes)) \
                and np.abs(classes).max() < 2**53:
            classes = classes.astype(np.int64)
        self.classes_ = classes
        return self

    def transform(self, y, what="the data"):
        classes = self.classes_
        y = np.asarray(y)
        kinds = {y.dtype.kind in "US", classes.dtype.kind in "US"}
        if kinds == {True, False} and {y.dtype.kind, classes.dtype.kind} & set("biuf") and y.size:
            kind = "text" if y.dtype.kind in "US" else "numbers"
            raise ValueError(f"{what} holds labels that are {kind} (e.g. {_short(y[:3].tolist())}), the model's "
                             f"classes are {'text' if kind == 'numbers' else 'numbers'}: {_short(classes.tolist())}")
        idx = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1)
        bad = classes[idx] != y
        if bad.any():
            unknown = sorted(set(np.asarray(y)[bad].tolist()))
            unknown = [int(v) if isinstance(v, float) and v.is_integer() else v for v in unknown]
            raise ValueError(f"{what} holds label(s) {_short(unknown)} not among the model's classes "
                             f"{_short(classes.tolist())}")
        return idx.astype(np.int64)

    def inverse_transform(self, indices):
        return self.classes_[np.asarray(indices)]

    def __repr__(self):
        return "LabelEncoder()" if self.classes_ is None else f"LabelEncoder(classes={_short(self.classes_.tolist())})"


def class_sample_weights(class_weight, y, n_classes):
    """Per-example weights from ``class_weight`` for labels ``y`` in [0, n_classes), as scikit-learn:
    "balanced" gives n / (n_present_classes · count of the class); a dict {label: weight} gives those
    weights (missing labels weigh 1)."""
    from ..validation import check_positive_number

    y = np.asarray(y)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be 'balanced' or a dict, got {class_weight!r}")
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        present = counts > 0
        per_class = np.ones(n_classes)
        per_class[present] = y.shape[0] / (present.sum() * counts[present])
    elif isinstance(class_weight, dict):
        per_class = np.ones(n_classes)
        for label, weight in class_weight.items():
            if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < n_classes:
                raise ValueError(f"class_weight keys must be labels in [0, {n_classes}), got {label!r}")
            per_class[int(label)] = check_positive_number(weight, f"class_weight[{label}]", allow_zero=True)
    else:
        raise TypeError(f"class_weight must be 'balanced' or a dict, got {type(class_weight).__name__}")
    return per_class[y]
