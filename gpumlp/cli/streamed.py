"""``--stream``: a run's data read a chunk at a time (``gpumlp.data.stream``, ``prepare_stream``), and a
saved model's predictions and scores over a file of any size, a block of rows at a time.

    check_train_options(args, s)        what --stream refuses, and why (usage errors)
    prepare_run(s, comm, pre)           the run's StreamPrepared: one statistics pass, then the views
    record(s, prep)                     what the model file records of it (split rule, digest, file stamps)
    test_split_score(pipeline, saved)   evaluate MODEL --stream: the run's own test rows, rebuilt
    file_score(pipeline, settings)      evaluate MODEL --data FILE --stream: every row
    predict_blocks(pipeline, settings)  predict --stream: the predictions, block by block, in file order

The test and validation splits are ``StreamSplit``'s seeded window rule (stratified by class within each
chunk); a changed file is caught by its files' sizes and modification times, recorded with the model,
and where those differ by the statistics pass's digest (``check_file``).
"""
from __future__ import annotations

import os

import numpy as np

from .. import data as D
from .. import streamed
from ..data.labels import LabelEncoder
from ..data.split import StreamSplit
from ..data.streaming import STREAM_FORMATS, Transform, View, stream_format as format_of
from .parser import UsageError
from .report import warn

STREAM_ONLY = ("memory_budget", "shuffle_buffer", "sharded")


def check_train_options(args, s, distributed):
    """The usage errors of --stream and its options for ``gpumlp train`` (``s``: the run's settings)."""
    given = [f"--{k.replace('_', '-')}" for k in STREAM_ONLY if getattr(args, k, None) is not None]
    if not s["stream"]:
        if given:
            raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --stream: in "
                             f"memory the data are loaded whole" + (" and every rank holds all of them"
                                                                    if "--sharded" in given else ""))
        return
    if s["optimizer"] == "lbfgs":
        raise UsageError("--optimizer lbfgs is full-batch (every iteration reads all the rows at once); --stream "
                         "trains by minibatches: use --optimizer sgd or adam")
    if s["test_data"] is not None:
        raise UsageError("--stream holds its test rows out of --data by the streamed split rule; a separate "
                         "--test-data file is not streamed: train without it, then score the file with gpumlp "
                         "evaluate MODEL --data TEST --stream")
    if args.sharded and not distributed:
        raise UsageError("--sharded splits the chunks among the ranks of --distributed (mpiexec -n N gpumlp train "
                         "--distributed mpi --stream --sharded ...); one process reads them all")
    if distributed and not args.sharded:
        raise UsageError("--stream --distributed needs --sharded: each rank reads its own chunks (replicated, "
                         "every rank would read the whole file)")
    stream_format(s)


def stream_format(s):
    """The format of the file to stream (a usage error for one that cannot be)."""
    if s["format"] not in ("auto",) + STREAM_FORMATS:
        raise UsageError(f"--format {s['format']} cannot be streamed; --stream reads Parquet, .npy (with --labels) "
                         f"and CSV/TSV files")
    try:
        return format_of(s["data"], s["format"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def open_stream(s, label, budget=None, shuffle=None):
    """``gpumlp.data.stream`` of the file the settings name; ``label``: the label column, or False for none."""
    fmt = stream_format(s)
    if fmt != "csv":
        csv_only = [f"--{k}" for k in ("delimiter", "header") if s.get(k) is not None]
        if csv_only:
            raise UsageError(f"{' and '.join(csv_only)} apply to CSV files; {s['data']} is {fmt} data")
    labels = s.get("labels")
    if fmt == "npy":
        if label is not False and labels is None:
            raise UsageError(f"{s['data']}: .npy features need their labels in a file of their own: --labels y.npy")
        label = None if label is not False else False
    elif labels is not None:
        raise UsageError(f"--labels names the labels of .npy features; {s['data']} is {fmt} data")
    return D.stream(s["data"], label=label, labels=labels if label is not False else None, format=fmt,
                    delimiter=s.get("delimiter"), header=s.get("header"), memory_budget=budget,
                    shuffle_buffer=shuffle)


def check_plan(src, s):
    """The memory plan of the run, refused as a usage error when the budget cannot hold its parts."""
    try:
        src.plan(np.dtype(s["dtype"]).itemsize, s["batch_size"], s["hidden"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def prepare_run(s, comm=None, pre=None):
    """The run's ``StreamPrepared`` (``gpumlp.data.prepare_stream``): one statistics pass over the file (its
    rank's chunks with ``comm``), with the resumed run's preprocessing ``pre`` when given."""
    src = open_stream(s, s["label_column"], s["memory_budget"], s["shuffle_buffer"])
    check_plan(src, s)
    classify = s["loss"] == "cross_entropy"
    fitted = {} if pre is None else {"classes": pre.classes, "scaler": pre.scaler, "imputer": pre.imputer,
                                     "target_scaler": pre.target_scaler}
    return D.prepare_stream(src, missing=s["missing"], test_size=s["test_size"],
                            validation_split=s["validation_split"], seed=s["seed"], classify=classify,
                            scaling=s["scaling"], target_scaling="none" if classify else s["target_scaling"],
                            dtype=np.dtype(s["dtype"]), batch_size=s["batch_size"], hidden=s["hidden"],
                            comm=comm if s["sharded"] else None, **fitted)


# ---------------------------------------------------------------------------------- what the model records
def file_stamps(s):
    """[path, size, mtime_ns] of every file the run reads (a Parquet directory's files, an .npy's labels)."""
    paths = [s["data"]] + ([s["labels"]] if s.get("labels") else [])
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(os.path.join(r, f) for r, _, names in os.walk(p) for f in names)
        else:
            files.append(p)
    return [[f, st.st_size, st.st_mtime_ns] for f, st in ((f, os.stat(f)) for f in files)]


def record(s, prep):
    """The stream's entries of the model file's training settings."""
    return {"stream_split": prep.split.to_json(), "data_digest": prep.digest, "test_data_digest": None,
            "data_files": file_stamps(s), "n_dropped": prep.n_dropped}


def check_resumed(saved, prep, s):
    """--resume of a streamed run: the same data (by the statistics pass's digest), else refused."""
    if saved.get("data_digest") != prep.digest:
        raise ValueError(f"--resume: {s['data']} is not the data the model was trained on: its digest is "
                         f"{prep.digest[:23]}, the model file records {str(saved.get('data_digest'))[:23]}. The "
                         f"run's test split cannot be rebuilt from other data (test samples could end up in "
                         f"training); train a new model, or resume with the original file")


# ---------------------------------------------------------------------------------- a saved model on a file
def model_transform(pipeline, labelled):
    """The pipeline's preprocessing as a ``Transform``: the rows as its MLP takes them."""
    pre, mlp = pipeline.preprocessing, pipeline.named_steps["mlp"]
    classify = mlp.loss == "cross_entropy"
    encoder = LabelEncoder(pre.classes) if classify and labelled and pre.classes is not None else None
    return Transform(np.dtype(mlp.dtype), pre.imputer, pre.scaler, encoder, None if classify else pre.target_scaler,
                     label_dtype=None if classify else np.dtype(mlp.dtype), label_columns=not classify)


def model_view(pipeline, src, part="all", split=None, missing="error", labelled=True):
    """``src``'s rows (one part of ``split``) as the pipeline's MLP takes them, a block at a time."""
    mlp = pipeline.named_steps["mlp"]
    check_columns(pipeline, src)
    plan = src.plan(np.dtype(mlp.dtype).itemsize, 32, mlp.sizes[1:-1])
    policy = "keep" if missing == "impute" else missing
    return View(src.source, part, split, model_transform(pipeline, labelled), policy, None, None, plan, True,
                mlp.loss == "cross_entropy")


def check_columns(pipeline, src):
    """A file's features are the model's: as many, and where both name them, the same names in the same order."""
    d, names = pipeline.n_features_in_, pipeline.preprocessing.feature_names
    path = src.source.path
    if src.n_features != d:
        raise ValueError(f"{path} has {src.n_features} features; the model expects {d}")
    if names is not None and src.feature_names is not None and list(src.feature_names) != list(names):
        raise ValueError(f"{path}: its columns are not the model's, in the model's order ({', '.join(names[:8])}"
                         f"{', ...' if d > 8 else ''}); streamed reading takes the columns as they are: write the "
                         f"file with them in that order")


def label_for(settings, pipeline, given):
    """The label column to read a file with: --label-column, else the training file's label name, else
    the training run's column."""
    if given:
        return settings["label_column"]
    return pipeline.label_name_ if pipeline.label_name_ is not None else settings["label_column"]


def scores(pipeline, view):
    """(score, J, rows) of the pipeline's MLP over ``view``."""
    mlp = pipeline.named_steps["mlp"]
    J = streamed.objective(mlp, view)
    return streamed.score(mlp, view), J, count_rows(view)


def count_rows(view):
    return sum(x.shape[0] for x, _, _ in view.pieces())


def test_split_score(pipeline, saved, budget=None):
    """(score, J, rows, note) of the run's own test rows: rebuilt from the recorded split rule and file; a
    file whose sizes or modification times differ from the recorded ones is checked by its digest."""
    s = dict(saved, memory_budget=budget, shuffle_buffer=None)
    rule = saved.get("stream_split", {})
    if rule.get("rule") != "stream-windows-v1":
        raise ValueError(f"the model file records no streamed split rule this gpumlp knows ({rule.get('rule')!r})")
    note = check_file(pipeline, s)
    split = StreamSplit(rule["test_size"], rule["validation_split"], rule["seed"])
    src = open_stream(s, s["label_column"], budget)
    view = model_view(pipeline, src, "test", split, s["missing"])
    return (*scores(pipeline, view), note)


def check_file(pipeline, s):
    """None when the files are as recorded (size, modification time); else the statistics pass's digest
    decides: the same data (a note), or refused."""
    now = [list(x) for x in file_stamps(s)] if os.path.exists(s["data"]) else None
    if now == s.get("data_files"):
        return None
    pre = pipeline.preprocessing
    src = open_stream(s, s["label_column"], s["memory_budget"])
    prep = D.prepare_stream(src, missing=s["missing"], test_size=s["test_size"], validation_split=0.0,
                            seed=s["seed"], classify=pipeline.named_steps["mlp"].loss == "cross_entropy",
                            dtype=pipeline.named_steps["mlp"].dtype, classes=pre.classes, scaler=pre.scaler,
                            imputer=pre.imputer, target_scaler=pre.target_scaler)
    if prep.digest != s.get("data_digest"):
        raise ValueError(f"evaluate: {s['data']} is not the data the model was trained on: its digest is "
                         f"{prep.digest[:23]}, the model file records {str(s.get('data_digest'))[:23]}. The run's "
                         f"test split cannot be rebuilt from other data; give the file to score with --data, or "
                         f"restore the original")
    return f"{s['data']} was modified (size or time) since training, but its data are the same (digest)"


def file_score(pipeline, settings, label_given, budget=None):
    """(score, J, rows, rows dropped) of every row of the file ``settings`` name."""
    src = open_stream(settings, label_for(settings, pipeline, label_given), budget)
    if not src.has_labels:
        raise ValueError(f"{settings['data']}: scoring needs labels")
    score, J, n = scores(pipeline, model_view(pipeline, src, missing=settings["missing"]))
    return score, J, n, src.n_rows - n


def predict_blocks(pipeline, settings, proba=False, budget=None):
    """The predictions (or class probabilities) of every row of the file, block by block in file order: an
    iterator, the file opened and its columns checked before it is returned."""
    src = open_stream(settings, False, budget)
    d = pipeline.n_features_in_
    if src.n_features == d + 1 or (pipeline.label_name_ is not None and src.feature_names is not None
                                   and pipeline.label_name_ in src.feature_names):
        src = open_stream(settings, label_for(settings, pipeline, False), budget)  # the file has the label column
    view = model_view(pipeline, src, missing=settings["missing"], labelled=False)
    # the rows as read (the missing policy applied): the pipeline imputes, scales and decodes them as predict does
    identity = View(view.source, "all", None, Transform(np.dtype(np.float64)), view.missing, None, None, view.plan)
    rows = view.plan.score_rows

    def blocks():
        for x, _, _ in identity.pieces():
            for i in range(0, x.shape[0], rows):
                block = x[i:i + rows]
                yield pipeline.predict_proba(block) if proba else pipeline.predict(block)
    return blocks()


def warn_note(command, note):
    if note:
        warn(command, note)
