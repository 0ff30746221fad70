"""``gpumlp evaluate`` and ``gpumlp predict``: a saved model on data.

Both load the file as a ``gpumlp.Pipeline`` (a bare model's file as a pipeline that adds nothing), so
that a file's columns are matched to the model's inputs (``settings.read_for_model``) and predictions
are exactly what ``gpumlp.load(path).predict(X)`` gives in Python."""
from __future__ import annotations

import csv
import sys

import numpy as np

from .. import functions
from ..io import atomic_write
from ..pipeline import Pipeline, load
from .parser import UsageError
from .report import Printer, json_line, warn
from .settings import (DATA_OPTIONS, check_digests, csv_layout, data_settings, describe_test_set, prepare,
                       read_for_model, saved_value)


def load_pipeline(path, backend):
    model = load(path, backend=backend or "auto")
    return model if isinstance(model, Pipeline) else Pipeline(model)


def given_options(args):
    return {k for k in DATA_OPTIONS if getattr(args, k, None) is not None}


def file_settings(args, pipeline):
    """The settings to read another file with: the command line's, else the training run's layout;
    missing values imputed by default when the model can."""
    mlp = pipeline.named_steps["mlp"]
    settings = data_settings(args, csv_layout(mlp.training_config_))
    imputer = pipeline.preprocessing.imputer
    if args.missing is None:
        settings["missing"] = "impute" if imputer is not None else "error"
    elif args.missing == "impute" and imputer is None:
        raise UsageError("--missing impute needs a model trained with --missing impute: this one holds no "
                         "training means to fill in with")
    return settings


def data_loss(mlp, J):
    """L = J − λ/2 Σ‖W‖² (the data loss) of the model's current weights."""
    return J - functions.regulariser(mlp.weights, mlp.weight_decay)


def cmd_evaluate(args):
    pipeline = load_pipeline(args.model, args.backend)
    mlp = pipeline.named_steps["mlp"]
    saved = mlp.training_config_ or {}
    printer = Printer(args)
    if args.data is None:
        if not saved:
            raise UsageError("this model holds no training settings (not saved by 'gpumlp train'); give --data")
        if given_options(args):
            raise UsageError("data options need --data")
        s = {k: saved_value(saved, k) for k in saved if k != "history"}
        s.update({k: saved_value(saved, k) for k in ("header", "missing", "target_scaling")})
        d = prepare(s, pipeline.preprocessing, mlp.dtype)
        note = check_digests(saved, s, d, "evaluate")
        if note:
            warn("evaluate", f"{note}; the test split was rebuilt from the file as it is now")
        X, y, n_dropped = d.X_test, d.y_test, d.n_test_dropped if s["test_data"] else d.n_dropped
        score, J = mlp.score(X, y), mlp.objective(X, y)
        source = describe_test_set(s, X.shape[0])
    else:
        settings = file_settings(args, pipeline)
        X, y, n_dropped = read_for_model(settings, pipeline, labels=True, given=given_options(args),
                                         command="evaluate")
        score, J = pipeline.score(X, y), pipeline.objective(X, y)
        source = f"{settings['data']} (every row" + ("" if not n_dropped else
                                                     f" but the {n_dropped} with missing values") + ")"
    L = data_loss(mlp, J)
    metric = "accuracy" if mlp.loss == "cross_entropy" else "R²"
    units = "" if pipeline.preprocessing.target_scaler is None else " (on standardised targets)"
    printer.result(f"{metric} {score:.4f}, data loss L {L:.4f}, objective J {J:.4f}{units} on {X.shape[0]} "
                   f"samples of {source}")
    if args.json:
        key = "accuracy" if metric == "accuracy" else "r2"
        print(json_line({key: score, "score": score, "metric": key, "loss": J, "objective": J, "data_loss": L,
                         "n_samples": int(X.shape[0]), "n_dropped": n_dropped, "test_set": source,
                         "backend": mlp.backend, "model": args.model}), flush=True)
    return 0


def cmd_predict(args):
    pipeline = load_pipeline(args.model, args.backend)
    if args.data is None:
        raise UsageError("predict needs --data FILE (or --data digits)")
    settings = file_settings(args, pipeline)
    X, _, _ = read_for_model(settings, pipeline, labels=False, given=given_options(args))
    if args.proba:
        if pipeline.named_steps["mlp"].loss != "cross_entropy":
            raise UsageError("--proba needs a classification model (--loss cross_entropy)")
        out = pipeline.predict_proba(X)
    else:
        out = pipeline.predict(X)
    if args.output:
        if args.output.endswith(".npy"):
            atomic_write(args.output, lambda f: np.save(f, out, allow_pickle=False))
        else:
            atomic_write(args.output, lambda f: _write_text(f, out))
        if not args.quiet:
            print(f"wrote {X.shape[0]} predictions to {args.output}", file=sys.stderr)
    else:
        _write_lines(sys.stdout, out)
    if args.json:
        print(json_line({"n_samples": int(X.shape[0]), "output": args.output,
                         "backend": pipeline.named_steps["mlp"].backend}))
    return 0


def _write_text(binary, out):
    import io as _io

    text = _io.TextIOWrapper(binary, encoding="utf-8", newline="")
    _write_lines(text, out)
    text.flush()
    text.detach()  # the binary file stays open: atomic_write flushes it to disk and renames it


def _write_lines(text, out):
    """One line per sample: text labels as CSV fields (quoted when they hold a comma), numbers by ``_fmt``."""
    if out.dtype.kind in "US":
        writer = csv.writer(text, lineterminator="\n")
        writer.writerows([label] for label in out.tolist())
    else:
        np.savetxt(text, out, fmt=_fmt(out), delimiter=",")


def _fmt(a):
    a = np.asarray(a)
    return "%d" if a.dtype.kind in "biu" or (a.dtype.kind == "f" and np.all(a == np.round(a))
                                            and a.ndim == 1 and np.abs(a).max(initial=0) < 2**53) else "%.7g"
