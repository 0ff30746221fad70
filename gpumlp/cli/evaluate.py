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
from . import streamed as stream_cli
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
    printer = Printer(args)
    if args.memory_budget is not None and not args.stream:
        raise UsageError("--memory-budget applies to --stream: in memory the data are loaded whole")
    score, J, n, n_dropped, source = measure(args, pipeline)
    L = data_loss(mlp, J)
    metric = "accuracy" if mlp.loss == "cross_entropy" else "R²"
    units = "" if pipeline.preprocessing.target_scaler is None else " (on standardised targets)"
    printer.result(f"{metric} {score:.4f}, data loss L {L:.4f}, objective J {J:.4f}{units} on {n} "
                   f"samples of {source}")
    if args.json:
        key = "accuracy" if metric == "accuracy" else "r2"
        print(json_line({key: score, "score": score, "metric": key, "loss": J, "objective": J, "data_loss": L,
                         "n_samples": int(n), "n_dropped": n_dropped, "test_set": source,
                         "backend": mlp.backend, "model": args.model}), flush=True)
    return 0


def measure(args, pipeline):
    """(score, J, rows, rows dropped, which rows in words): the run's test split, or every row of --data."""
    mlp = pipeline.named_steps["mlp"]
    saved = mlp.training_config_ or {}
    if args.data is not None:
        settings = file_settings(args, pipeline)
        if args.stream:
            score, J, n, n_dropped = stream_cli.file_score(pipeline, settings, "label_column" in given_options(args),
                                                           args.memory_budget)
        else:
            X, y, n_dropped = read_for_model(settings, pipeline, labels=True, given=given_options(args),
                                             command="evaluate")
            score, J, n = pipeline.score(X, y), pipeline.objective(X, y), X.shape[0]
        source = f"{settings['data']} (every row" + ("" if not n_dropped else
                                                     f" but the {n_dropped} with missing values") + ")"
        return score, J, n, n_dropped, source
    if not saved:
        raise UsageError("this model holds no training settings (not saved by 'gpumlp train'); give --data")
    if given_options(args):
        raise UsageError("data options need --data")
    s = {k: saved_value(saved, k) for k in saved if k != "history"}
    s.update({k: saved_value(saved, k) for k in ("header", "missing", "target_scaling")})
    if s.get("stream"):  # the test rows are the streamed split's: rebuilt by its rule, with or without --stream
        score, J, n, note = stream_cli.test_split_score(pipeline, s, args.memory_budget)
        stream_cli.warn_note("evaluate", note)
        return score, J, n, s.get("n_dropped", 0), describe_test_set(s, n)
    if args.stream:
        raise UsageError("the model was trained in memory: its test split is the in-memory rule's; evaluate it "
                         "without --stream, or score a file with --data FILE --stream")
    d = prepare(s, pipeline.preprocessing, mlp.dtype)
    note = check_digests(saved, s, d, "evaluate")
    if note:
        warn("evaluate", f"{note}; the test split was rebuilt from the file as it is now")
    X, y, n_dropped = d.X_test, d.y_test, d.n_test_dropped if s["test_data"] else d.n_dropped
    return mlp.score(X, y), mlp.objective(X, y), X.shape[0], n_dropped, describe_test_set(s, X.shape[0])


def cmd_predict(args):
    pipeline = load_pipeline(args.model, args.backend)
    if args.data is None:
        raise UsageError("predict needs --data FILE (or --data digits)")
    if args.proba and pipeline.named_steps["mlp"].loss != "cross_entropy":
        raise UsageError("--proba needs a classification model (--loss cross_entropy)")
    settings = file_settings(args, pipeline)
    if args.stream:
        if args.output and args.output.endswith(".npy"):
            raise UsageError("--stream writes its predictions block by block to .csv (text) or .parquet; an .npy "
                             "file's header needs their count before the first row")
        blocks = stream_cli.predict_blocks(pipeline, settings, args.proba, args.memory_budget)
    else:
        if args.memory_budget is not None:
            raise UsageError("--memory-budget applies to --stream: in memory the data are loaded whole")
        X, _, _ = read_for_model(settings, pipeline, labels=False, given=given_options(args))
        blocks = [pipeline.predict_proba(X) if args.proba else pipeline.predict(X)]
    names = [str(c) for c in pipeline.classes_] if args.proba else None
    if args.output:
        counted = {}
        if args.output.endswith(".npy"):
            out = blocks[0]
            counted["n"] = out.shape[0]
            atomic_write(args.output, lambda f: np.save(f, out, allow_pickle=False))
        elif args.output.endswith((".parquet", ".pq")):
            atomic_write(args.output, lambda f: counted.update(n=write_parquet(f, blocks, names)))
        else:
            atomic_write(args.output, lambda f: counted.update(n=_write_text(f, blocks)))
        n = counted["n"]
        if not args.quiet:
            print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
    else:
        n = sum(_write_lines(sys.stdout, out) for out in blocks)
    if args.json:
        print(json_line({"n_samples": int(n), "output": args.output,
                         "backend": pipeline.named_steps["mlp"].backend}))
    return 0


def write_parquet(binary, blocks, names=None):
    """Predictions block by block as one Parquet row group each: a column "prediction" (or one per output,
    "prediction_1", ...), or with ``names`` (--proba) one column per class. Returns the rows written."""
    from ..data.parquet import import_pyarrow

    pa, pq = import_pyarrow()
    writer, n = None, 0
    try:
        for out in blocks:
            cols = [out] if out.ndim == 1 else [out[:, j] for j in range(out.shape[1])]
            labels = names or (["prediction"] if out.ndim == 1 else [f"prediction_{j + 1}" for j in range(len(cols))])
            table = pa.table({name: pa.array(c.tolist() if c.dtype.kind in "US" else c) for name, c in zip(labels, cols)})
            writer = writer or pq.ParquetWriter(binary, table.schema)
            writer.write_table(table)
            n += out.shape[0]
    finally:
        if writer is not None:
            writer.close()
    return n


def _write_text(binary, blocks):
    """The blocks' lines into the binary file; returns the rows written."""
    import io as _io

    text = _io.TextIOWrapper(binary, encoding="utf-8", newline="")
    n = sum(_write_lines(text, out) for out in blocks)
    text.flush()
    text.detach()  # the binary file stays open: atomic_write flushes it to disk and renames it
    return n


def _write_lines(text, out):
    """One line per sample: text labels as CSV fields (quoted when they hold a comma), numbers by ``_fmt``."""
    if out.dtype.kind in "US":
        writer = csv.writer(text, lineterminator="\n")
        writer.writerows([label] for label in out.tolist())
    else:
        np.savetxt(text, out, fmt=_fmt(out), delimiter=",")
    return out.shape[0]


def _fmt(a):
    a = np.asarray(a)
    return "%d" if a.dtype.kind in "biu" or (a.dtype.kind == "f" and np.all(a == np.round(a))
                                            and a.ndim == 1 and np.abs(a).max(initial=0) < 2**53) else "%.7g"
