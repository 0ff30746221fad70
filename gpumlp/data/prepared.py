"""A run's data (``prepare``): loaded, split, labels encoded, features imputed and scaled, targets
scaled; the digest of the data as loaded, and another file's columns matched to a model's by name."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from .base import _short
from .labels import LabelEncoder
from .loading import load_table
from .preprocessing import MeanImputer, Scaler, scale_targets
from .split import split_indices, split_indices_v1

MISSING = ("error", "drop", "impute")     # what ``prepare`` does with a CSV's missing values
TARGET_SCALINGS = ("standard", "none")    # regression targets: standardised for training, or as they are


@dataclass
class Prepared:
    """The data of one run: split, labels encoded (output indices), features imputed and scaled,
    regression targets scaled; host arrays. ``digest`` and ``test_digest``: ``data_digest`` of the
    files as loaded (before the split); ``n_dropped``: rows left out for missing values."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    X_val: np.ndarray | None
    y_val: np.ndarray | None
    classes: np.ndarray | None  # the label of each output (classification), else None
    scaler: "Scaler"
    imputer: "MeanImputer | None" = None
    target_scaler: "Scaler | None" = None
    feature_names: list | None = None
    label_name: str | None = None
    digest: str | None = None
    test_digest: str | None = None
    n_dropped: int = 0
    n_test_dropped: int = 0


def prepare(data, *, format="auto", labels=None, label_column=-1, delimiter=None, header=None, missing="error",
            test_data=None, test_labels=None, test_size=0.2, validation_split=0.0, seed=0, classify=True,
            scaling="standard", target_scaling="none", dtype=np.float32, classes=None, scaler=None,
            imputer=None, target_scaler=None, split_rule=2):
    """Load ``data`` (``load``'s arguments), hold out a test split (or load ``test_data``) and a
    validation split of the training part, encode class labels, impute and scale the features and
    scale regression targets (each fitted on the training part only).

    ``missing``: "error" or "drop" (passed to the CSV reader), or "impute": missing features become
    their mean over the training part (``MeanImputer``). ``target_scaling``: "standard" fits a
    ``Scaler`` on the training targets (regression only; the model learns standardised targets).
    ``classes``, ``scaler``, ``imputer`` and ``target_scaler`` given (a resumed or evaluated run) are
    used instead of learned. ``split_rule``: 2 = ``split_indices`` (seed for the test split, seed + 1
    for the validation split); 1 = ``split_indices_v1``, for runs saved before it."""
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
    if target_scaling not in TARGET_SCALINGS:
        raise ValueError(f"target_scaling must be one of {TARGET_SCALINGS}, got {target_scaling!r}")
    split = split_indices if split_rule >= 2 else split_indices_v1
    read = dict(format=format, label_column=label_column, delimiter=delimiter, header=header,
                missing="keep" if missing == "impute" else missing)
    table = load_table(data, labels=labels, **read)
    _check_targets(data, table.y, classify)
    X, y, test = table.X, table.y, None
    if test_data is not None:
        test = load_table(test_data, labels=test_labels, **read)
        _check_targets(test_data, test.y, classify)
        if test.X.shape[1:] != X.shape[1:]:
            raise ValueError(f"{test_data} has {test.X.shape[1]} features, {data} has {X.shape[1]}")
        Xte = test.X if table.feature_names is None or test.feature_names is None else \
            align_columns(test.X, test.feature_names, table.feature_names, test_data, f"those of {data}")
        Xtr, ytr, yte = X, y, test.y
    else:
        if X.shape[0] < 2:
            raise ValueError(f"{data} holds {X.shape[0]} sample; a train/test split needs at least 2")
        tr, te = split(y, test_size, seed, stratify=classify)
        Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]
    Xva = yva = None
    if validation_split:
        tr, va = split(ytr, validation_split, seed + 1, stratify=classify)
        Xtr, ytr, Xva, yva = Xtr[tr], ytr[tr], Xtr[va], ytr[va]
    if classify:
        classes = _fit_classes(classes, ytr, yte, yva)
        encoder = LabelEncoder(classes)
        ytr, yte, yva = (None if v is None else encoder.transform(v, f"the {what} data") for v, what in
                         ((ytr, "training"), (yte, "test"), (yva, "validation")))
    else:
        classes = None
        ytr, yte, yva = (None if v is None else v.astype(np.float64) for v in (ytr, yte, yva))
        if target_scaler is None and target_scaling != "none":
            target_scaler = Scaler(target_scaling).fit(ytr.reshape(ytr.shape[0], -1))
        if target_scaler is not None:
            ytr, yte, yva = (None if v is None else scale_targets(target_scaler, v) for v in (ytr, yte, yva))
    if missing == "impute":
        imputer = imputer if imputer is not None else MeanImputer().fit(Xtr, table.feature_names)
        Xtr, Xte, Xva = (None if v is None else imputer.transform(v) for v in (Xtr, Xte, Xva))
    if scaler is None:
        scaler = Scaler(scaling).fit(Xtr)
    Xva = None if Xva is None else scaler.transform(Xva, dtype)
    return Prepared(scaler.transform(Xtr, dtype), ytr, scaler.transform(Xte, dtype), yte, Xva, yva, classes, scaler,
                    imputer if missing == "impute" else None, target_scaler, table.feature_names, table.label_name,
                    data_digest(table), None if test is None else data_digest(test), table.n_dropped,
                    0 if test is None else test.n_dropped)


def _check_targets(path, y, classify):
    if not classify and y.dtype.kind in "US":
        raise ValueError(f"the labels of {path} are text (e.g. {_short(np.unique(y)[:3].tolist())}); "
                         f"regression (--loss squared) needs numbers")
    if classify and y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise ValueError(f"the labels of {path} are not whole numbers, so they are not class labels; "
                         f"for regression use --loss squared")


def _fit_classes(classes, ytr, yte, yva):
    if classes is not None:
        return classes
    seen = [ytr, yte] + ([yva] if yva is not None else [])
    if len({v.dtype.kind in "US" for v in seen}) > 1:
        raise ValueError("the training and test files hold labels of different kinds (text in one, numbers "
                         "in the other)")
    return LabelEncoder().fit(np.concatenate(seen), whole_floats_as_int=True).classes_


def align_columns(X, names, feature_names, path, what="the model's"):
    """X's columns in the order of ``feature_names`` (what the model was trained on), from a file
    whose header names its columns ``names``; a ValueError naming the columns that are missing or
    extra. Repeated names are accepted only in the same order (they cannot be matched by name)."""
    names, feature_names = list(names), list(feature_names)
    if names == feature_names:
        return X
    missing = [n for n in feature_names if n not in names]
    extra = [n for n in names if n not in feature_names]
    if missing or extra:
        parts = ([f"missing {_short(missing)}"] if missing else []) + ([f"not among them {_short(extra)}"]
                                                                      if extra else [])
        raise ValueError(f"{path}: its feature columns differ from {what} ({_short(feature_names)}): "
                         f"{'; '.join(parts)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: its header repeats column names, so its columns cannot be matched to "
                         f"{what} by name; give them in the training file's order")
    return X[:, [names.index(n) for n in feature_names]]


def data_digest(table):
    """A hex digest of a loaded ``Table``: X and y (dtype, shape, bytes) and the header's names. The
    same file read with the same options gives the same digest; any changed value, row or name changes it."""
    h = hashlib.blake2b(digest_size=16, person=b"gpumlp-data-v1")
    for a in (table.X, table.y):
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    h.update(json.dumps([table.feature_names, table.label_name]).encode())
    return h.hexdigest()
