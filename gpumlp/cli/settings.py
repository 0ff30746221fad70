"""A run's settings: from the command line, else from the saved run (``--resume``, ``evaluate``),
else the defaults; the data files they name, and how a saved model reads a new file's columns."""
from __future__ import annotations

import os

import numpy as np

from .. import data as D
from .parser import DEFAULTS, FIXED_ON_RESUME, OPTIMIZER_OPTIONS, SAVED_BEFORE, UsageError
from .report import warn

# The hold-out rule of the run's test and validation splits: 2 is ``data.split_indices``; files saved
# before it (no "split_rule" in their settings) keep the rule they were split with, ``split_indices_v1``.
SPLIT_RULE = 2
DATA_OPTIONS = ("data", "format", "labels", "label_column", "delimiter", "header", "missing")


def saved_value(saved, key):
    """A saved run's setting; for a key it predates, what that run did (``SAVED_BEFORE``)."""
    return saved[key] if key in saved else SAVED_BEFORE.get(key, DEFAULTS[key])


def data_settings(args, saved=None):
    """Data options from the command line, else from the saved run (evaluate), else the defaults."""
    saved = saved or {}
    out = {}
    for key in DATA_OPTIONS:
        v = getattr(args, key, None)
        out[key] = v if v is not None else (saved_value(saved, key) if key in saved else DEFAULTS[key])
    return out


def csv_layout(saved):
    """The training run's CSV layout (label column, delimiter): the defaults for another file given
    to evaluate or predict, which has the training file's columns. Not its path, format or labels file."""
    return {k: v for k, v in (saved or {}).items() if k in ("label_column", "delimiter")}


def abspath(path):
    return path if path is None or (path in D.EMBEDDED and not os.path.exists(path)) else os.path.abspath(path)


def train_settings(args, saved):
    """The run's settings: the command line, else the resumed run's, else DEFAULTS."""
    s, changed = {}, []
    for key, default in DEFAULTS.items():
        given = getattr(args, key, None)
        if key == "hidden" and given is not None:
            given = [n for group in given for n in group]
        before = None if saved is None else saved_value(saved, key)
        if given is not None and saved is not None and key in FIXED_ON_RESUME and given != before:
            changed.append((key, before))
        s[key] = given if given is not None else (before if saved is not None else default)
    check_options_apply(args, s)  # first: "--momentum applies to sgd" says more than "cannot be changed"
    if changed:
        key, before = changed[0]
        raise UsageError(f"--{key.replace('_', '-')} cannot be changed when resuming: the model was "
                         f"trained with {before!r}")
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


def check_options_apply(args, s):
    """An option given that the run does not use is an error, not silently ignored."""
    for optimizer, options in OPTIMIZER_OPTIONS.items():
        given = [f"--{k}" for k in options if getattr(args, k, None) is not None]
        if given and s["optimizer"] != optimizer:
            raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --optimizer "
                             f"{optimizer}, and this run uses {s['optimizer']}")
    if getattr(args, "target_scaling", None) is not None and s["loss"] == "cross_entropy":
        raise UsageError("--target-scaling applies to --loss squared (regression targets); class labels are not scaled")


def prepare(s, pre=None, dtype=None):
    """``data.prepare`` for the settings ``s``: the run's data split, encoded, imputed and scaled;
    ``pre`` (a saved ``Preprocessing``) is used instead of fitting one."""
    classify = s["loss"] == "cross_entropy"
    fitted = {} if pre is None else {"classes": pre.classes, "scaler": pre.scaler, "imputer": pre.imputer,
                                     "target_scaler": pre.target_scaler}
    if pre is not None and s["missing"] == "impute" and pre.imputer is None:
        raise ValueError("the model's settings say --missing impute, but the file holds no imputer")
    return D.prepare(s["data"], format=s["format"], labels=s["labels"], label_column=s["label_column"],
                     delimiter=s["delimiter"], header=s["header"], missing=s["missing"], test_data=s["test_data"],
                     test_labels=s["test_labels"], test_size=s["test_size"], validation_split=s["validation_split"],
                     seed=s["seed"], classify=classify, scaling=s["scaling"],
                     target_scaling="none" if classify else s["target_scaling"],
                     dtype=np.dtype(dtype or s["dtype"]), split_rule=s.get("split_rule", 1), **fitted)


def check_digests(saved, s, d, what):
    """Refuse data that differ from the data the model was trained on (their digests): its test split
    could not be rebuilt. Returns a note for files that record no digest (saved by gpumlp 0.1), else None."""
    if "data_digest" not in saved:
        return ("the model file records no digest of its training data (saved before gpumlp 0.2), so the "
                "data could not be checked against it")
    for key, now in (("data", d.digest), ("test_data", d.test_digest)):
        then = saved.get(f"{key}_digest")
        if then != now:
            raise ValueError(
                f"{what}: {s[key]} is not the data the model was trained on: its digest is {_short(now)}, the "
                f"model file records {_short(then)} for {saved.get(key)}. The run's test split cannot be rebuilt "
                f"from other data (test samples could end up in training); "
                + ("train a new model, or resume with the original file" if what == "--resume" else
                   "give the file to score with --data, or restore the original"))
    return None


def _short(digest):
    return "none" if digest is None else digest[:16]


def describe_test_set(s, n_test):
    """Which samples a run's test score is on, in words."""
    if s["test_data"] is not None:
        return f"{s['test_data']} (the run's --test-data)"
    rule = ", the streamed split rule" if s.get("stream") else "" if s.get("split_rule", 1) >= 2 else \
        ", gpumlp 0.1's split rule"
    return f"the test split of {s['data']} ({n_test} rows held out by --seed {s['seed']}, --test-size " \
           f"{s['test_size']}{rule})"


# ---------------------------------------------------------------------------------- another file's columns
def read_for_model(settings, pipeline, labels, given=(), command="predict"):
    """(X, y or None, rows dropped) of the file ``settings`` name, its feature columns in the model's
    order: by name when the model was trained on a header (reordered, refused when names are missing
    or differ), else by count (d columns, or d + 1 with the label column). ``labels``: y is required;
    ``given``: the options the user gave (a CSV-only one given for other data is an error)."""
    path, fmt = settings["data"], settings["format"]
    d = pipeline.n_features_in_
    if fmt == "csv" or (fmt == "auto" and path not in D.EMBEDDED and os.path.isfile(path)
                        and D.detect_format(path) == "csv"):
        return _read_csv_for_model(settings, pipeline, labels, "label_column" in given)
    csv_only = [f"--{k.replace('_', '-')}" for k in ("header", "missing", "delimiter") if k in given]
    if csv_only:
        raise UsageError(f"{' and '.join(csv_only)} apply to CSV files; {path} is not one")
    table = D.load_table(path, format=fmt, labels=settings["labels"], require_labels=labels)
    if table.X.shape[1] != d:
        raise ValueError(f"{path} has {table.X.shape[1]} features; the model expects {d}")
    names = pipeline.preprocessing.feature_names
    if names is not None:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        warn(command, f"{path} names no columns; they are taken to be the model's ({shown}) in that order")
    return table.X, table.y, 0


def _read_csv_for_model(settings, pipeline, labels, label_given):
    path, d = settings["data"], pipeline.n_features_in_
    names_saved, label_name = pipeline.preprocessing.feature_names, pipeline.label_name_
    given_label = settings["label_column"] if label_given else None
    names, n_cols = D.csv_columns(path, settings["delimiter"], settings["header"],
                                  given_label if label_given else label_name)
    if names_saved is not None and names is None:
        shown = ", ".join(names_saved[:6]) + (", ..." if len(names_saved) > 6 else "")
        raise ValueError(f"{path} has no header line, but the model was trained on named columns ({shown}); "
                         f"give a file whose first line names them (or --header if its first line does)")
    col = _label_column(path, names, n_cols, d, given_label, label_name, names_saved, settings["label_column"],
                        labels)
    missing = "keep" if settings["missing"] == "impute" else settings["missing"]
    table = D.load_table(path, format="csv", label_column=col, delimiter=settings["delimiter"],
                         require_labels=labels, header=names is not None, missing=missing)
    X = table.X
    if names_saved is not None:
        X = D.align_columns(X, table.feature_names, names_saved, path)
    elif X.shape[1] != d:
        raise ValueError(f"{path} has {n_cols} columns; the model expects {d} features "
                         f"(or {d + 1} columns with the label column)")
    return X, table.y, table.n_dropped


def _label_column(path, names, n_cols, d, given, label_name, names_saved, saved_column, labels):
    """The label column to read (index or name), or None when the file has none."""
    if given is not None:
        return given
    if names_saved is not None:  # matched by name
        if label_name is not None and label_name in names:
            return label_name
        if labels:
            raise ValueError(f"{path} has no column {label_name!r} (the training file's label column); "
                             f"name its label column with --label-column")
        return None
    if n_cols == d + 1:
        return saved_column
    if n_cols == d and not labels:
        return None
    raise ValueError(f"{path} has {n_cols} columns; the model expects {d} features "
                     + (f"and a label column ({d + 1} columns)" if labels else
                        f"(or {d + 1} columns with the label column)"))
