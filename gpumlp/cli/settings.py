"""A run's settings: from the command line, else from the saved run (``--resume``, ``evaluate``),
else the defaults; and the data files they name."""
from __future__ import annotations

import os

from .. import data as D
from .parser import DEFAULTS, FIXED_ON_RESUME, UsageError

# The hold-out rule of the run's test and validation splits: 2 is ``data.split_indices``; files saved
# before it (no "split_rule" in their settings) keep the rule they were split with, ``split_indices_v1``.
SPLIT_RULE = 2


def data_settings(args, saved=None):
    """Data options from the command line, else from the saved run (evaluate), else the defaults."""
    saved = saved or {}
    out = {}
    for key in ("data", "format", "labels", "label_column", "delimiter"):
        v = getattr(args, key, None)
        out[key] = v if v is not None else saved.get(key, DEFAULTS[key])
    return out


def csv_layout(saved):
    """The training run's CSV layout (label column, delimiter): the defaults for another file given
    to evaluate or predict, which has the training file's columns. Not its path, format or labels file."""
    return {k: v for k, v in (saved or {}).items() if k in ("label_column", "delimiter")}


def load_xy(settings, require_labels=True, label_column=True):
    """X, y of the data file the settings name; ``label_column=False``: every column is a feature."""
    col = settings["label_column"] if label_column else None
    return D.load(settings["data"], format=settings["format"], labels=settings["labels"], label_column=col,
                  delimiter=settings["delimiter"], require_labels=require_labels)


def abspath(path):
    return path if path is None or (path in D.EMBEDDED and not os.path.exists(path)) else os.path.abspath(path)


def train_settings(args, saved):
    """The run's settings: the command line, else the resumed run's, else DEFAULTS."""
    s = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key, None)
        if key == "hidden" and given is not None:
            given = [n for group in given for n in group]
        if given is not None and saved is not None and key in FIXED_ON_RESUME and given != saved.get(key, given):
            raise UsageError(f"--{key.replace('_', '-')} cannot be changed when resuming: the model was "
                             f"trained with {saved[key]!r}")
        s[key] = given if given is not None else (saved.get(key, default) if saved else default)
    if s["early_stopping"] and not s["validation_split"]:
        s["validation_split"] = 0.1
    if s["test_labels"] is not None and s["test_data"] is None:
        raise UsageError("--test-labels needs --test-data")
    if s["optimizer"] == "sgd" and s["nesterov"] and not s["momentum"]:
        raise UsageError("--nesterov needs --momentum > 0")
    for key in ("data", "labels", "test_data", "test_labels"):
        s[key] = abspath(s[key])
    s["split_rule"] = saved.get("split_rule", 1) if saved is not None else SPLIT_RULE
    return s


def prepare(s, classes=None, scaler=None, dtype=None):
    """``data.prepare`` for the settings ``s``: the run's data split, encoded and scaled."""
    import numpy as np

    return D.prepare(s["data"], format=s["format"], labels=s["labels"], label_column=s["label_column"],
                     delimiter=s["delimiter"], test_data=s["test_data"], test_labels=s["test_labels"],
                     test_size=s["test_size"], validation_split=s["validation_split"], seed=s["seed"],
                     classify=s["loss"] == "cross_entropy", scaling=s["scaling"],
                     dtype=np.dtype(dtype or s["dtype"]), classes=classes, scaler=scaler,
                     split_rule=s.get("split_rule", 1))

