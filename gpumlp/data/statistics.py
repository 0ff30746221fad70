"""The statistics pass of streamed data, and a run's streamed data (``prepare_stream``).

    stats = scan(source, split=StreamSplit(0.2, 0.1, seed), missing="error", classify=True)
    stats.counts        rows of each part (train, validation, test) and the rows dropped
    stats.labels        the label set of every part; stats.moments / stats.target_moments: the
                        training rows' features and targets (``Moments``); stats.digest
    prep = prepare_stream(source, test_size=0.2, ...)   the in-memory ``prepare``'s result, streamed

One pass over the file, a slice at a time (memory: the reader's slice), computes what the in-memory
path computes from the whole array: the label set, the feature means and standard deviations of the
training rows (per-chunk moments merged, ``Moments``), the imputation means, the targets' moments
for their scaling, the digest of the data as read, and the size of every part of the split. With a
communicator (``comm``) each rank scans its own chunks and the results are combined over the ranks
(counts summed, label sets united, moments merged in rank order, chunk digests in chunk order), so
that every rank ends with the statistics of the whole file.

What is wrong with a row (a missing value under missing="error", an infinite value, a label that is
not a class label) is found here, before the first epoch, naming the file, the row (the file's line
for a CSV, the header being line 1) and the column.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from .labels import LabelEncoder
from .preprocessing import Moments, Scaler, imputer_from_moments, scaler_from_moments
from .rows import _where, apply_missing, split_parts
from .split import StreamSplit
from .streaming import StreamSource, Transform, View, sequential

MAX_CLASSES = 65536  # distinct labels of a classification file at most: more are not class labels


@dataclass
class Statistics:
    """What ``scan`` found (see the module docstring). ``counts``: rows of [train, validation, test]."""

    counts: np.ndarray
    n_dropped: int
    labels: np.ndarray | None
    moments: Moments | None
    target_moments: Moments | None
    chunk_digests: dict = field(default_factory=dict)
    signature: list = field(default_factory=list)
    label_range: tuple = (np.inf, -np.inf)  # the smallest and largest numeric label (present)
    local_counts: np.ndarray | None = None  # ``counts`` of this rank's chunks alone (a sharded scan)

    @property
    def digest(self):
        h = hashlib.blake2b(digest_size=16, person=b"gpumlp-stream-v1")
        h.update(json.dumps(self.signature).encode())
        for k in sorted(self.chunk_digests):
            h.update(bytes.fromhex(self.chunk_digests[k]))
        return "stream-" + h.hexdigest()


def _slice_bytes(h, piece):
    """A slice into a chunk's digest: the features as read (float64, NaN where missing) and the labels."""
    h.update(np.ascontiguousarray(piece.X).view(np.uint8))
    if piece.y is not None:
        if piece.y.dtype.kind in "US":
            h.update("\0".join(piece.y.tolist()).encode() + b"\1")
        else:
            h.update(np.ascontiguousarray(piece.y, np.float64).view(np.uint8))


def _check_labels(source, piece, classify):
    """Classification labels must be whole numbers or text; regression targets numbers."""
    y = piece.y
    if y is None:
        return
    present = ~piece.y_missing if piece.y_missing is not None else np.ones(len(piece), bool)
    if not classify and y.dtype.kind in "US":
        i = int(np.flatnonzero(present)[0]) if present.any() else 0
        raise ValueError(f"{_where(source, piece, i)}, {source.describe_label()}: the label {y[i]!r} is text; "
                         f"regression (--loss squared) needs numbers")
    if classify and y.dtype.kind == "f":
        bad = present & (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{_where(source, piece, i)}, {source.describe_label()}: the label {y[i]} is not a "
                             f"whole number, so not a class label; for regression use --loss squared")


def scan(source, *, split=None, missing="error", classify=True, stratify=None, moments=True, slice_rows=65536,
         chunks=None, comm=None, labels_known=None):
    """One pass over ``source`` (a ``gpumlp.data.chunks.Source``; ``chunks``: only those indices, a rank's),
    returning ``Statistics``; with ``comm``, of every rank's chunks together. ``labels_known``: a
    ``LabelEncoder`` whose classes every label must be among (a resumed or evaluated run's)."""
    stratify = classify if stratify is None else stratify
    counts, dropped = np.zeros(3, np.int64), [0]
    labels, feature_m, target_m = set(), Moments(source.n_features) if moments else None, None
    digests, current, h, counters = {}, None, None, {}
    lo, hi = np.inf, -np.inf
    for chunk, piece in sequential(source, slice_rows, None if chunks is None else set(chunks)):
        if chunk.index != current:
            if h is not None:
                digests[current] = h.hexdigest()
            current, h, counters = chunk.index, hashlib.blake2b(digest_size=16), {}
        _slice_bytes(h, piece)
        _check_labels(source, piece, classify)
        piece = apply_missing(source, piece, missing, dropped)
        if not len(piece):
            continue
        parts = split_parts(split, chunk, piece, counters, stratify) if split is not None else \
            np.zeros(len(piece), np.int8)
        counts += np.bincount(parts, minlength=3)[:3]
        if piece.y is not None and piece.y.dtype.kind == "f":
            lo, hi = (min(lo, float(np.min(piece.y))), max(hi, float(np.max(piece.y)))) if len(piece) else (lo, hi)
        if piece.y is not None and classify:
            labels.update(np.unique(piece.y).tolist())
            if len(labels) > MAX_CLASSES:
                raise ValueError(f"{piece.file}: more than {MAX_CLASSES} distinct labels; these are not class "
                                 f"labels (for regression use --loss squared)")
            if labels_known is not None:
                labels_known.transform(piece.y, piece.file)
        train = parts == StreamSplit.TRAIN
        if feature_m is not None and train.any():
            feature_m.add(piece.X[train])
            if piece.y is not None and not classify:
                target_m = target_m or Moments(1)
                target_m.add(np.asarray(piece.y[train], np.float64)[:, None])
    if h is not None:
        digests[current] = h.hexdigest()
    stats = Statistics(counts, dropped[0], None, feature_m, target_m, digests, source.signature(), (lo, hi))
    stats.local_counts = counts.copy()
    if comm is not None and comm.size > 1:
        stats, labels = _combine(stats, labels, comm)
        stats.local_counts = counts.copy()
    if classify and labels:
        stats.labels = _label_array(labels, source.path)
    return stats


def _combine(stats, labels, comm):
    """The statistics of every rank's chunks, identical on every rank."""
    mine = (stats.counts.tolist(), stats.n_dropped, sorted(labels, key=lambda v: (isinstance(v, str), v)),
            None if stats.moments is None else stats.moments.to_json(),
            None if stats.target_moments is None else stats.target_moments.to_json(), stats.chunk_digests)
    parts = comm.exchange(mine)
    counts = np.sum([np.asarray(p[0], np.int64) for p in parts], axis=0)
    labels = set().union(*(set(p[2]) for p in parts))
    moments = targets = None
    for p in parts:
        if p[3] is not None:
            moments = Moments.from_json(p[3]) if moments is None else moments.merge(Moments.from_json(p[3]))
        if p[4] is not None:
            targets = Moments.from_json(p[4]) if targets is None else targets.merge(Moments.from_json(p[4]))
    digests = {}
    for p in parts:
        digests.update({int(k): v for k, v in p[5].items()})
    ranges = comm.exchange(stats.label_range)
    label_range = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    return Statistics(counts, sum(p[1] for p in parts), None, moments, targets, digests, stats.signature,
                      label_range), labels


def _label_array(labels, path):
    kinds = {isinstance(v, str) for v in labels}
    if len(kinds) > 1:
        raise ValueError(f"{path}: holds labels of different kinds (text and numbers)")
    values = np.array(sorted(labels))
    return LabelEncoder().fit(values, whole_floats_as_int=True).classes_


# ---------------------------------------------------------------------------------- a run's streamed data
@dataclass
class StreamPrepared:
    """A run's streamed data: the ``View``s of its parts (the validation part held in memory, as arrays),
    and what the in-memory ``Prepared`` carries. ``n_train``, ``n_validation``, ``n_test``: rows per part."""

    source: StreamSource
    train: View
    test: View | None
    X_val: np.ndarray | None
    y_val: np.ndarray | None
    classes: np.ndarray | None
    scaler: Scaler
    imputer: object
    target_scaler: object
    split: StreamSplit
    statistics: Statistics
    feature_names: list | None = None
    label_name: str | None = None

    @property
    def n_train(self):
        return int(self.statistics.counts[0])

    @property
    def n_validation(self):
        return int(self.statistics.counts[1])

    @property
    def n_test(self):
        return int(self.statistics.counts[2])

    @property
    def digest(self):
        return self.statistics.digest

    @property
    def n_dropped(self):
        return self.statistics.n_dropped


def rank_chunks(source, comm):
    """The chunks a rank reads when sharded: every P-th chunk from its rank, or None for all."""
    if comm is None or comm.size == 1:
        return None
    return tuple(c.index for c in source.chunks if c.index % comm.size == comm.rank)


def prepare_stream(source, *, missing="error", test_size=0.2, validation_split=0.0, seed=0, classify=True,
                   scaling="standard", target_scaling="none", dtype=np.float32, classes=None, scaler=None,
                   imputer=None, target_scaler=None, batch_size=32, hidden=(), comm=None):
    """``prepare`` for a streamed ``source`` (``gpumlp.data.stream``): one statistics pass, then the parts
    as ``View``s with the learned (or given) label encoding, imputation and scaling. With ``comm`` each
    rank reads its own chunks (``rank_chunks``); the statistics are those of the whole file on every rank."""
    if missing not in ("error", "drop", "impute"):
        raise ValueError(f"missing must be one of ('error', 'drop', 'impute'), got {missing!r}")
    if not source.has_labels:
        raise ValueError(f"{source.source.path}: training needs labels")
    dtype = np.dtype(dtype)
    split = StreamSplit(test_size, validation_split, seed)
    inner, chunks = source.source, rank_chunks(source.source, comm)
    plan = source.plan(dtype.itemsize, batch_size, hidden)
    known = None if classes is None else LabelEncoder(classes)
    stats = scan(inner, split=split, missing=missing, classify=classify, slice_rows=plan.slice_rows,
                 chunks=chunks, comm=comm, labels_known=known)
    counts = stats.counts
    names = (("training", counts[0]), ("test", counts[2]) if test_size else ("test", 1),
             ("validation", counts[1]) if validation_split else ("validation", 1))
    for what, n in names:
        if n == 0:
            raise ValueError(f"{inner.path}: the split leaves no {what} rows (of {int(counts.sum())})")
    if classify:
        classes = stats.labels if classes is None else np.asarray(classes)
        encoder = LabelEncoder(classes)
    else:
        classes = encoder = None
        if target_scaler is None and target_scaling != "none":
            target_scaler = scaler_from_moments(target_scaling, stats.target_moments)
    if missing == "impute" and imputer is None:
        imputer = imputer_from_moments(stats.moments, inner.feature_names)
    if scaler is None:
        scaler = scaler_from_moments(scaling, stats.moments, imputed=missing == "impute") if scaling != "none" \
            else Scaler("none")
    transform = Transform(dtype, imputer if missing == "impute" else None, scaler, encoder, target_scaler,
                          label_dtype=None if classify else dtype, label_columns=not classify)
    policy = "keep" if missing == "impute" else missing
    mine = stats.local_counts  # a rank's views hold its chunks' rows (all of them with one process)
    base = View(inner, "train", split, transform, policy, int(mine[0]), chunks, plan, True, classify)
    test = base.with_part("test", int(mine[2])) if test_size else None
    X_val = y_val = None
    if validation_split:
        X_val, y_val = materialise(base.with_part("validation", int(mine[1])), plan.validation_bytes,
                                   "the validation split")
    return StreamPrepared(source, base, test, X_val, y_val, classes, scaler,
                          imputer if missing == "impute" else None, target_scaler, split, stats,
                          inner.feature_names, inner.label_name)


def materialise(view, budget, what):
    """The rows of ``view`` as in-memory arrays (x, y), refused as soon as they take more than ``budget`` bytes."""
    xs, ys, need = [], [], 0
    for x, y, _ in view.pieces():
        need += x.nbytes + y.nbytes
        if need > budget:
            raise ValueError(f"{what} is kept in memory for the per-epoch scores, and its rows take more than its "
                             f"share of the memory budget ({budget / 2**20:.3g} MiB): give a larger memory budget "
                             f"(--memory-budget) or a smaller fraction")
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros((0, view.n_features), view.transform.dtype), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys)


def training_view(source, loss, n_outputs, dtype, batch_size=32, hidden=(), chunks=None, n_inputs=None):
    """A ``StreamSource`` given to ``MLP.fit``: its rows as they are (no split, no scaling: as arrays are
    taken), counted and checked in one pass: labels are output indices in [0, n_outputs) (cross-entropy),
    0/1 (binary cross-entropy) or numbers (regression); a missing value is an error. ``n_inputs``: the
    features the model takes (checked before anything is read)."""
    check_features(source, n_inputs)
    if isinstance(source, View):
        return source
    if not source.has_labels:
        raise ValueError(f"{source.source.path}: training needs labels (the source has none)")
    if n_outputs != 1 and loss != "cross_entropy":
        raise ValueError(f"a streamed source has one label column; a {loss} model with {n_outputs} outputs needs "
                         f"{n_outputs} targets per row: train it from arrays")
    classify = loss == "cross_entropy"
    dtype = np.dtype(dtype)
    plan = source.plan(dtype.itemsize, batch_size, hidden)
    stats = scan(source.source, classify=classify, moments=False, slice_rows=plan.slice_rows, chunks=chunks)
    path, column = source.source.path, source.source.describe_label()
    if classify and stats.labels is not None:
        labels = stats.labels
        if labels.dtype.kind in "US" or labels.min() < 0 or labels.max() >= n_outputs:
            raise ValueError(f"{path}: {column} holds labels {labels[:5].tolist()}{'...' if labels.size > 5 else ''}; "
                             f"this model takes output indices in [0, {n_outputs}) (encode them, e.g. with "
                             f"gpumlp.data.LabelEncoder, or use the command line, which does)")
    lo, hi = stats.label_range
    if loss == "binary_cross_entropy" and (lo < 0 or hi > 1):
        raise ValueError(f"{path}: {column} holds values in [{lo}, {hi}]; binary_cross_entropy takes values in [0, 1]")
    if loss == "poisson" and lo < 0:
        raise ValueError(f"{path}: {column} holds negative values (down to {lo}); the poisson loss needs counts >= 0")
    transform = Transform(dtype, label_dtype=np.int64 if classify else dtype, label_columns=not classify)
    return View(source.source, "all", None, transform, "error", int(stats.counts.sum()), chunks, plan, True, classify)


def check_features(source, n_inputs):
    """ValueError unless the streamed ``source`` (a ``StreamSource`` or ``View``) has ``n_inputs`` features."""
    if n_inputs is not None and source.n_features != n_inputs:
        raise ValueError(f"{source.source.path} has {source.n_features} features, the model expects {n_inputs}")


__all__ = ["Statistics", "StreamPrepared", "apply_missing", "materialise", "prepare_stream", "rank_chunks",
           "scan", "split_parts", "training_view"]
