"""``gpumlp evaluate`` and ``gpumlp predict``: a saved model on data."""
from __future__ import annotations

import os
import sys

import numpy as np

from .. import data as D
from ..io import atomic_write
from ..pipeline import load
from .parser import DEFAULTS, UsageError
from .report import Printer, json_line
from .settings import csv_layout, data_settings, load_xy, prepare


def _load_model(args):
    return load(args.model, backend=args.backend or "auto", model_only=True)


def _features(model, X):
    """X as the model was trained on it: scaled by the run's scaler, in the model's dtype."""
    dtype = model.dtype
    if model.scaler_ is not None:
        return model.scaler_.transform(X, dtype)
    return np.asarray(X).astype(dtype)


def cmd_evaluate(args):
    model = _load_model(args)
    saved = model.training_config_ or {}
    printer = Printer(args)
    if args.data is None and saved:
        s = dict(DEFAULTS, **saved)
        if any(getattr(args, k) is not None for k in ("format", "labels", "label_column", "delimiter")):
            raise UsageError("data options need --data")
        d = prepare(s, model.classes_, model.scaler_, model.dtype)
        X, y, source = d.X_test, d.y_test, f"the test split of {s['data']}"
    else:
        settings = data_settings(args, saved if args.data is None else csv_layout(saved))
        if args.data is None:
            raise UsageError("this model holds no training settings; give --data")
        X, y = load_xy(settings)
        if model.classes_ is not None:
            y = D.LabelEncoder(model.classes_).transform(y, "the evaluation data")
        X, source = _features(model, X), settings["data"]
    score = model.score(X, y)
    fw_loss = model.objective(X, y)
    metric = "accuracy" if model.loss == "cross_entropy" else "R²"
    printer.result(f"{metric} {score:.4f}, loss {fw_loss:.4f} on {X.shape[0]} samples of {source}")
    if args.json:
        key = "accuracy" if metric == "accuracy" else "r2"
        print(json_line({key: score, "score": score, "metric": key, "loss": fw_loss, "n_samples": int(X.shape[0]),
                          "backend": model.backend, "model": args.model}), flush=True)
    return 0


def cmd_predict(args):
    model = _load_model(args)
    if args.data is None:
        raise UsageError("predict needs --data FILE (or --data digits)")
    settings = data_settings(args, csv_layout(model.training_config_))
    X = _predict_features(settings, args.label_column, model.sizes[0])
    if args.proba:
        out = model.predict_proba(_features(model, X))
    else:
        out = model.predict(_features(model, X))
        if model.classes_ is not None:
            out = D.LabelEncoder(model.classes_).inverse_transform(out)
    if args.output:
        if args.output.endswith(".npy"):
            atomic_write(args.output, lambda f: np.save(f, out, allow_pickle=False))
        else:
            atomic_write(args.output, lambda f: np.savetxt(f, out, fmt=_fmt(out), delimiter=","))
        if not args.quiet:
            print(f"wrote {X.shape[0]} predictions to {args.output}", file=sys.stderr)
    else:
        np.savetxt(sys.stdout, out, fmt=_fmt(out), delimiter=",")
    if args.json:
        print(json_line({"n_samples": int(X.shape[0]), "output": args.output, "backend": model.backend}))
    return 0


def _predict_features(settings, label_column, d):
    """X for prediction: a CSV's label column is dropped when it has one (d + 1 columns), or when
    --label-column names it; other formats ignore their labels."""
    path, fmt = settings["data"], settings["format"]
    is_csv = fmt == "csv" or (fmt == "auto" and os.path.exists(path) and D.detect_format(path) == "csv")
    if not is_csv:
        return load_xy(settings, require_labels=False)[0]
    if label_column is not None:
        return load_xy(settings)[0]
    X, _ = load_xy(settings, require_labels=False, label_column=False)
    if X.shape[1] == d + 1:  # the label column (by index or header name) goes, as in training
        return load_xy(settings)[0]
    if X.shape[1] != d:
        raise ValueError(f"{path} has {X.shape[1]} columns; the model expects {d} features "
                         f"(or {d + 1} columns with a label column)")
    return X


def _fmt(a):
    a = np.asarray(a)
    return "%d" if a.dtype.kind in "biu" or (a.dtype.kind == "f" and np.all(a == np.round(a))
                                            and a.ndim == 1 and np.abs(a).max(initial=0) < 2**53) else "%.7g"

