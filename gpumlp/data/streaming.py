"""Streamed data: files larger than memory, read a chunk at a time.

    src = stream("data.parquet")                       # a Parquet file or directory (the last column the label)
    src = stream("X.npy", labels="y.npy")              # memory-mapped .npy features and labels
    src = stream("data.csv", label="target")           # a CSV/TSV, read in chunks with read_csv's rules
    src.n_rows, src.n_features, src.feature_names
    model.fit(src, epochs=5); model.predict(src)       # in place of arrays (also any re-iterable of
                                                       # (X_chunk, y_chunk) pairs)

A ``StreamSource`` is the file with its memory budget; a ``View`` is the rows of one part of it (all,
or the training, validation or test rows of a ``StreamSplit``) through a ``Transform`` (imputation,
scaling, label encoding, the model's dtype). A view is what the trainer and the scorers take: it
yields the pieces (x, y, w) of its chunks, in file order or in a seeded order, and an epoch's batches
from the shuffle buffer (``gpumlp.data.reader``), a reader thread ahead of the step.

Memory (``MemoryPlan``): the budget is shared between the reader (the slice being read and decoded),
the shuffle buffer with its blocks and prefetch queue, a validation split kept in memory and the
forward pass of scoring; ``MemoryPlan`` sizes each from the budget and says why when a part cannot fit.
A format whose decoder holds more than the slice (a Parquet reader keeps a page and a dictionary of
every column of the row group it is in: ``source.decode_bytes``) has that taken off the budget first.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .base import EMBEDDED
from .chunks import Chunk, Slice, Source
from .reader import ShuffleBuffer, prefetch, shuffled_blocks
from .rows import apply_missing, split_parts
from .split import StreamSplit

DEFAULT_BUDGET = 512 * 2**20
MIN_BUDGET = 32 * 2**20
# What reading a slice costs per value besides its output: the decoded data (pyarrow's table, the
# mapped rows) and the float64 copy that is imputed and scaled; a CSV's field-by-field reader (text
# labels, missing values) holds each field as Python text and a NumPy string.
READ_BYTES_PER_VALUE = {"parquet": 32, "npy": 24, "csv": 160, "chunks": 32}
SHARES = {"reader": 0.25, "shuffle": 0.55, "validation": 0.10, "scoring": 0.10}
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_size(text):
    """Bytes from '256MiB', '2GiB', '1.5G', '500MB' (binary K/M/G/T, KiB..TiB; decimal KB..TB); ValueError."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m and m.group(2).lower()
    if not m or unit not in _UNITS:
        raise ValueError(f"a size reads like 256MiB or 2GiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n):
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


# ---------------------------------------------------------------------------------- opening a file
STREAM_FORMATS = ("parquet", "npy", "csv")


def stream_format(path, format="auto"):
    """'parquet' (a .parquet/.pq file or a directory), 'npy' or 'csv' for a file to stream; else ValueError."""
    p = os.fspath(path)
    if format not in ("auto",) + STREAM_FORMATS:
        raise ValueError(f"{p}: {format} files cannot be streamed; streaming reads Parquet, .npy (with labels) "
                         f"and CSV/TSV files (convert it: e.g. gpumlp.data.load, then pyarrow.parquet.write_table)")
    if format != "auto":
        return format
    if p in EMBEDDED and not os.path.exists(p):
        raise ValueError(f"{p!r} is the embedded data set, held in memory; streaming reads Parquet, .npy and "
                         f"CSV/TSV files")
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such data file: {p}")
    name = os.path.basename(p.rstrip("/")).lower()
    if os.path.isdir(p) or name.endswith((".parquet", ".pq", ".parq")):
        return "parquet"
    if name.endswith(".npy"):
        return "npy"
    from .loading import detect_format

    fmt = detect_format(p)
    if fmt != "csv":
        raise ValueError(f"{p}: {fmt} files cannot be streamed; streaming reads Parquet, .npy (with labels) and "
                         f"CSV/TSV files (convert it: e.g. gpumlp.data.load, then numpy.save or "
                         f"pyarrow.parquet.write_table)")
    return "csv"


def open_source(path, *, format="auto", label_column=-1, labels=None, delimiter=None, header=None,
                require_labels=True, chunk_rows=None):
    """The ``Source`` of a file to stream (``gpumlp.data.chunks``), its columns checked, nothing read yet
    but its header (and a Parquet file's footer)."""
    fmt = stream_format(path, format)
    if fmt != "csv" and (header is not None or delimiter is not None):
        raise ValueError(f"header and delimiter apply to CSV files; {path} is {fmt} data")
    if labels is not None and fmt != "npy":
        raise ValueError(f"a separate labels file is used with .npy features, not {fmt}")
    if fmt == "parquet":
        from .parquet import ParquetSource

        return ParquetSource(path, label_column, require_labels=require_labels)
    if fmt == "npy":
        from .npy import NpySource

        if labels is None and require_labels:
            raise ValueError(f"{path}: .npy features need their labels in a file of their own (labels=..., "
                             f"--labels y.npy)")
        src = NpySource(path, labels)
    else:
        from .csvfile import CsvSource

        src = CsvSource(path, label_column, delimiter, header=header, require_labels=require_labels)
    if chunk_rows is not None:
        _rechunk(src, chunk_rows)
    return src


def _rechunk(src, chunk_rows):
    """Chunks of ``chunk_rows`` rows for an .npy file (a CSV's chunk_records); Parquet keeps its row groups."""
    chunk_rows = int(chunk_rows)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows}")
    if src.format == "npy":
        n = src.n_rows
        src.chunks = [Chunk(i, min(chunk_rows, n - a), 0, a) for i, a in enumerate(range(0, n, chunk_rows))]
    elif src.format == "csv":
        src.chunk_records = chunk_rows


class PairsSource(Source):
    """Any re-iterable of (X_chunk, y_chunk) pairs (y_chunk None for prediction) as a source: each pair a
    chunk. A sequence (list, tuple) is read in any order; another iterable in its own order."""

    format = "chunks"

    def __init__(self, pairs):
        if isinstance(pairs, (str, bytes, np.ndarray)) or not hasattr(pairs, "__iter__"):
            raise TypeError(f"expected a re-iterable of (X_chunk, y_chunk) pairs, got {type(pairs).__name__}")
        if isinstance(pairs, Iterator):  # a generator or iterator: the check pass would use it up before the epochs
            raise TypeError(f"a {type(pairs).__name__} of (X_chunk, y_chunk) pairs can be read only once; streamed "
                            f"training reads its chunks again every epoch: give a re-iterable (a list, or an "
                            f"object whose __iter__ starts over)")
        self.pairs, self.random_access = pairs, isinstance(pairs, Sequence)
        self.chunks, d, labelled = [], None, None
        for i, pair in enumerate(pairs):
            X, y = self._pair(pair, i)
            d = X.shape[1] if d is None else d
            if X.shape[1] != d:
                raise ValueError(f"chunk {i + 1} has {X.shape[1]} features, chunk 1 has {d}")
            if labelled is not None and (y is None) != (not labelled):
                raise ValueError(f"chunk {i + 1} {'has no' if y is None else 'has'} labels, chunk 1 "
                                 f"{'has' if labelled else 'has none'}")
            labelled = y is not None
            self.chunks.append(Chunk(i, X.shape[0], 0, sum(c.rows for c in self.chunks)))
        if not self.chunks:
            raise ValueError("the iterable of (X_chunk, y_chunk) pairs is empty")
        self.n_features, self.has_labels, self.path = d, bool(labelled), f"<{type(pairs).__name__} of chunks>"

    @staticmethod
    def _pair(pair, i):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"chunk {i + 1} is not an (X_chunk, y_chunk) pair")
        X = np.asarray(pair[0])
        if X.ndim != 2 or X.dtype.kind not in "biuf":
            raise ValueError(f"chunk {i + 1}: X_chunk must be a 2-D array of real numbers, got {X.dtype} {X.shape}")
        y = None if pair[1] is None else np.asarray(pair[1])
        if y is not None and y.shape[0] != X.shape[0]:
            raise ValueError(f"chunk {i + 1}: y_chunk has {y.shape[0]} rows, X_chunk {X.shape[0]}")
        return X, y

    def read(self, chunk, slice_rows):
        if self.random_access:
            pair = self.pairs[chunk.index]
        else:  # an iterable that is not a sequence: read from its start (chunks come in file order)
            pair = next(p for i, p in enumerate(self.pairs) if i == chunk.index)
        X, y = self._pair(pair, chunk.index)
        for a in range(0, X.shape[0], max(int(slice_rows), 1)):
            b = min(a + max(int(slice_rows), 1), X.shape[0])
            yy = None if y is None else y[a:b]
            missing = None if yy is None else (np.isnan(yy) if yy.dtype.kind == "f" and yy.ndim == 1 else
                                               np.zeros(b - a, bool))
            yield Slice(np.asarray(X[a:b], np.float64), yy, missing,
                        np.arange(chunk.first_row + a + 1, chunk.first_row + b + 1), self.path)

    def sequential(self, slice_rows, chunks=None):
        if self.random_access:
            yield from _sequential(self, slice_rows, chunks)
            return
        for i, pair in enumerate(self.pairs):  # one pass over the iterable
            if chunks is None or i in chunks:
                c = self.chunks[i]
                for piece in self.read_pair(pair, c, slice_rows):
                    yield c, piece

    def read_pair(self, pair, chunk, slice_rows):
        saved, self.pairs, self.random_access = self.pairs, [None] * chunk.index + [pair], True
        try:
            yield from self.read(chunk, slice_rows)
        finally:
            self.pairs, self.random_access = saved, False


def _sequential(src, slice_rows, chunks=None):
    for c in src.chunks:
        if chunks is None or c.index in chunks:
            for piece in src.read(c, slice_rows):
                yield c, piece


def sequential(src, slice_rows, chunks=None):
    """(chunk, slice) of the source's chunks (``chunks``: those indices only) in file order."""
    if hasattr(src, "sequential"):
        return src.sequential(slice_rows, chunks)
    return _sequential(src, slice_rows, chunks)


# ---------------------------------------------------------------------------------- memory
@dataclass
class MemoryPlan:
    """How a memory budget is spent (bytes): see the module docstring. ``capacity``: the shuffle
    buffer's rows; ``block``: rows handed on at a time; ``slice_rows``: rows read and decoded at a time."""

    budget: int
    slice_rows: int
    capacity: int
    block: int
    depth: int
    validation_bytes: int
    score_rows: int
    row_bytes: int
    decode_bytes: int = 0  # the decoder's own, taken off the budget before it is shared

    def shuffle_bytes(self, capacity=None):
        c = self.capacity if capacity is None else capacity
        return _shuffle_bytes(c, self.block, self.depth, self.row_bytes)

    def describe(self):
        decoder = f" (the decoder's pages {format_size(self.decode_bytes)})" if self.decode_bytes else ""
        return (f"memory budget {format_size(self.budget)}: reading {self.slice_rows} rows at a time{decoder}, a "
                f"shuffle buffer of {self.capacity} rows ({format_size(self.shuffle_bytes())})")


def _shuffle_bytes(capacity, block, depth, row_bytes):
    """The buffer, the permutation of its rows, the rows moved into the holes, the blocks in the queue,
    the one in use and the one being made."""
    return capacity * (row_bytes + 8) + block * row_bytes * (depth + 3)


def plan_memory(budget, n_features, *, columns=None, itemsize=4, label_bytes=8, weighted=False, batch_size=32,
                shuffle_rows=None, hidden=(), fmt="parquet", max_slice_rows=None, decode_bytes=0, decode_what=None):
    """The ``MemoryPlan`` for a budget of ``budget`` bytes; ValueError saying which part does not fit.
    ``decode_bytes`` (what the format's decoder holds whatever the slice, ``decode_what`` saying why) is
    taken off the budget first and must leave at least half of the smallest budget for the rest."""
    whole = budget = int(budget)
    if budget < MIN_BUDGET:
        raise ValueError(f"the memory budget must be at least {format_size(MIN_BUDGET)}, got {format_size(budget)}")
    decode_bytes = int(decode_bytes)
    if budget - decode_bytes < MIN_BUDGET // 2:
        raise ValueError(f"the memory budget {format_size(budget)} is too small for this file: "
                         f"{decode_what or 'its decoder'} takes about {format_size(decode_bytes)}, and the rest "
                         f"needs {format_size(MIN_BUDGET // 2)}; give a budget of at least "
                         f"{format_size(decode_bytes + MIN_BUDGET // 2)} (or write the file in smaller parts)")
    budget -= decode_bytes
    spent = f", less the decoder's {format_size(decode_bytes)}," if decode_bytes else ""
    columns = n_features + 1 if columns is None else columns
    row_bytes = n_features * itemsize + label_bytes + (itemsize if weighted else 0)
    per_row_read = READ_BYTES_PER_VALUE.get(fmt, 32) * columns + row_bytes
    slice_rows = int(SHARES["reader"] * budget // per_row_read)
    if max_slice_rows:
        slice_rows = min(slice_rows, int(max_slice_rows))
    if slice_rows < 1:
        raise ValueError(f"one row of {columns} columns takes {format_size(per_row_read)} to read, more than the "
                         f"reader's share of the budget")
    shuffle = SHARES["shuffle"] * budget
    block_of = lambda c: max(batch_size, c // 8 // batch_size * batch_size)  # noqa: E731
    most = int(shuffle // (row_bytes * (1 + 5 / 8) + 8))
    while most > 0 and _shuffle_bytes(most, block_of(most), 2, row_bytes) > shuffle:
        most = int(most * 0.95)
    if most < 2 * batch_size:
        raise ValueError(f"the memory budget {format_size(whole)}{spent} leaves room for a shuffle buffer of {most} rows "
                         f"({n_features} features), fewer than two batches of {batch_size}: give a larger budget "
                         f"or a smaller batch size")
    capacity = most if shuffle_rows is None else int(shuffle_rows)
    if capacity > most:
        raise ValueError(f"a shuffle buffer of {capacity} rows ({n_features} features) needs "
                         f"{format_size(_shuffle_bytes(capacity, block_of(capacity), 2, row_bytes))} with its blocks; "
                         f"the memory budget {format_size(whole)}{spent} leaves it {format_size(shuffle)}: at most "
                         f"{most} rows")
    if capacity < batch_size:
        raise ValueError(f"the shuffle buffer must hold at least one batch ({batch_size} rows), got {capacity}")
    widest = max([n_features, *hidden, 1])
    score_rows = max(1, min(8192, int(SHARES["scoring"] * budget // (3 * widest * max(itemsize, 8)))))
    return MemoryPlan(whole, slice_rows, capacity, block_of(capacity), 2, int(SHARES["validation"] * budget),
                      score_rows, row_bytes, decode_bytes)


# ---------------------------------------------------------------------------------- views
@dataclass
class Transform:
    """A slice's rows as the model takes them: missing values imputed (``imputer``), features scaled
    (``scaler``), class labels encoded (``encoder``) or targets scaled (``target_scaler``), in ``dtype``;
    ``class_weights`` (per output index) give each row its weight. None everywhere: the rows as read,
    cast to ``dtype`` (a source given to ``MLP.fit``)."""

    dtype: np.dtype = np.dtype(np.float32)
    imputer: object = None
    scaler: object = None
    encoder: object = None
    target_scaler: object = None
    class_weights: np.ndarray | None = None
    label_dtype: object = None  # y's dtype when neither encoder nor target_scaler: int64 labels, or dtype
    label_columns: bool = False  # y as (rows, 1), the targets of a one-output regression or logistic model

    def apply(self, piece, what="the data"):
        X = piece.X
        if self.imputer is not None:
            X = self.imputer.transform(X)
        x = self.scaler.transform(X, self.dtype) if self.scaler is not None else X.astype(self.dtype)
        y = piece.y
        if y is not None:
            if self.encoder is not None:
                y = self.encoder.transform(y, what)
            elif self.target_scaler is not None:
                from .preprocessing import scale_targets

                y = scale_targets(self.target_scaler, y).astype(self.dtype)
            elif self.label_dtype is not None:
                y = np.asarray(y).astype(self.label_dtype)
            if self.label_columns:
                y = y.reshape(-1, 1)
        w = None if self.class_weights is None or y is None else self.class_weights[y].astype(self.dtype)
        return x, y, w


@dataclass
class View:
    """The rows of one ``part`` of ``source`` ("all", or the StreamSplit's "train", "validation", "test")
    through ``transform``; ``chunks``: only these chunk indices (a rank's), None for all.

    ``n_rows`` is known once the statistics pass (``gpumlp.data.statistics``) has counted the part;
    ``missing`` is the run's policy ("error", "drop", "impute"/"keep"), applied again as the rows are read."""

    source: Source
    part: str = "all"
    split: StreamSplit | None = None
    transform: Transform = field(default_factory=Transform)
    missing: str = "error"
    n_rows: int | None = None
    chunks: tuple | None = None
    plan: MemoryPlan | None = None
    shuffle_chunks: bool = True
    stratify: bool = True  # the split's strata are the labels (classification), else one stratum

    PARTS = {"train": StreamSplit.TRAIN, "validation": StreamSplit.VALIDATION, "test": StreamSplit.TEST}

    @property
    def n_features(self):
        return self.source.n_features

    @property
    def feature_names(self):
        return self.source.feature_names

    @property
    def shape(self):
        return (self.n_rows, self.n_features)

    def with_part(self, part, n_rows=None, transform=None):
        return View(self.source, part, self.split, self.transform if transform is None else transform, self.missing,
                    n_rows, self.chunks, self.plan, self.shuffle_chunks, self.stratify)

    def _chunk_list(self, order_seed):
        chunks = [c for c in self.source.chunks if self.chunks is None or c.index in self.chunks]
        if order_seed is not None and self.shuffle_chunks and self.source.random_access:
            chunks = [chunks[i] for i in np.random.default_rng(order_seed).permutation(len(chunks))]
        return chunks

    def rows(self, chunk, piece, counters):
        """The slice's rows of this part: the missing policy, then the split (ranks carried in ``counters``)."""
        piece = apply_missing(self.source, piece, self.missing, count=None)
        if self.part == "all" or self.split is None or len(piece) == 0:
            return piece
        parts = split_parts(self.split, chunk, piece, counters, self.stratify)
        return piece.take(parts == self.PARTS[self.part])

    def pieces(self, order_seed=None):
        """(x, y, w) host arrays of this part's rows, chunk by chunk (in a seeded order when ``order_seed``)."""
        slice_rows = self.plan.slice_rows if self.plan is not None else 65536
        if order_seed is None or not self.source.random_access:  # file order: one pass (an iterable's only one)
            reads = sequential(self.source, slice_rows, self.chunks)
        else:
            reads = ((c, p) for c in self._chunk_list(order_seed) for p in self.source.read(c, slice_rows))
        counters, current = {}, None
        for chunk, piece in reads:
            if chunk.index != current:
                counters, current = {}, chunk.index
            piece = self.rows(chunk, piece, counters)
            if len(piece):
                yield self.transform.apply(piece, f"{piece.file}")

    def prefetched(self, order_seed=None, depth=2):
        return prefetch(lambda: self.pieces(order_seed), depth)

    def blocks(self, seed, batch_size):
        """The epoch's blocks: chunks in the order of ``seed`` (None: file order, unshuffled), rows shuffled
        in the buffer, each block a multiple of ``batch_size`` rows but the last."""
        plan = self.plan or plan_memory(DEFAULT_BUDGET, self.n_features, batch_size=batch_size)
        rng = None if seed is None else np.random.default_rng([int(seed), 1])
        capacity = plan.capacity if rng is not None else plan.block

        def make_buffer(x, y, w):
            return ShuffleBuffer(max(capacity, batch_size), 0, x.shape[1:], x.dtype, y.shape[1:], y.dtype,
                                 w is not None)

        def produce():
            return shuffled_blocks(self.pieces(seed), capacity, plan.block, batch_size, rng, make_buffer)
        return prefetch(produce, plan.depth)

    def epoch(self, order, batch_size):
        """The trainer's batch source (``gpumlp.batches``): the host batches (x, y, w) of one epoch, every
        one of ``batch_size`` rows but the last; ``order`` is the epoch's seed (None: unshuffled)."""
        for x, y, w in self.blocks(order, batch_size):
            for i in range(0, x.shape[0], batch_size):
                yield x[i:i + batch_size], y[i:i + batch_size], None if w is None else w[i:i + batch_size]


def is_stream(x):
    return isinstance(x, (View, StreamSource))


# ---------------------------------------------------------------------------------- the public source
class StreamSource:
    """A file (or directory, or iterable of chunks) to stream, with its memory budget: what
    ``stream(...)`` returns. ``n_rows``, ``n_features``, ``feature_names`` (None without names),
    ``label_name``; ``view()`` its rows as a ``View`` (cast to the model's dtype, labels as they are)."""

    def __init__(self, source, memory_budget=None, shuffle_buffer=None):
        self.source = source
        self.memory_budget = DEFAULT_BUDGET if memory_budget is None else (
            parse_size(memory_budget) if isinstance(memory_budget, str) else int(memory_budget))
        if self.memory_budget < MIN_BUDGET:
            raise ValueError(f"memory_budget must be at least {format_size(MIN_BUDGET)}, got "
                             f"{format_size(self.memory_budget)}")
        self.shuffle_buffer = shuffle_buffer
        self.checked = {}  # what a check pass found, by what it was checked for

    @property
    def n_rows(self):
        return self.source.n_rows

    @property
    def n_features(self):
        return self.source.n_features

    @property
    def shape(self):
        return (self.n_rows, self.n_features)

    @property
    def feature_names(self):
        return self.source.feature_names

    @property
    def label_name(self):
        return self.source.label_name

    @property
    def has_labels(self):
        return self.source.has_labels

    def plan(self, itemsize=4, batch_size=32, hidden=(), label_bytes=8, weighted=False):
        return plan_memory(self.memory_budget, self.n_features, itemsize=itemsize, batch_size=batch_size,
                           shuffle_rows=self.shuffle_buffer, hidden=hidden, fmt=self.source.format,
                           label_bytes=label_bytes, weighted=weighted,
                           columns=self.n_features + (1 if self.has_labels else 0),
                           decode_bytes=getattr(self.source, "decode_bytes", 0),
                           decode_what=getattr(self.source, "decode_what", None))

    def view(self, dtype=np.float32, label_dtype=None, batch_size=32, hidden=()):
        dtype = np.dtype(dtype)
        plan = self.plan(dtype.itemsize, batch_size, hidden)
        return View(self.source, transform=Transform(dtype, label_dtype=label_dtype), n_rows=self.n_rows, plan=plan)

    def __repr__(self):
        return (f"StreamSource({self.source.path!r}, {self.source.format}, {self.n_features} features, "
                f"budget {format_size(self.memory_budget)})")


def stream(path, *, label=None, labels=None, chunk_rows=None, memory_budget=None, shuffle_buffer=None,
           format="auto", delimiter=None, header=None):
    """A streamed source for ``MLP.fit``, ``Trainer.fit``, ``DataParallelTrainer`` and ``MLP.predict``.

    ``path``: a Parquet file or directory of Parquet files (one dataset), an .npy features file (with
    ``labels``, an .npy of labels), or a CSV/TSV file (``delimiter``, ``header`` as ``read_csv``); or any
    re-iterable of (X_chunk, y_chunk) pairs. ``label``: the label column (a name or an index; default the
    last; None for a file without labels is ``label=False``). ``chunk_rows``: the rows of an .npy or CSV
    chunk (the unit read in a seeded order; default about 2**20 values); Parquet's are its row groups.
    ``memory_budget`` (bytes or "256MiB"; default 512 MiB) and ``shuffle_buffer`` (rows; default what the
    budget allows): see ``MemoryPlan``."""
    if not isinstance(path, (str, os.PathLike)):
        if label is not None or labels is not None or chunk_rows is not None:
            raise ValueError("label, labels and chunk_rows apply to a file; an iterable of chunks brings its own")
        return StreamSource(PairsSource(path), memory_budget, shuffle_buffer)
    fmt = stream_format(path, format)
    require = label is not False and not (fmt == "npy" and labels is None)
    label_column = None if label is False else (-1 if label is None else label)
    src = open_source(path, format=fmt, label_column=label_column, labels=labels, delimiter=delimiter,
                      header=header, require_labels=require, chunk_rows=chunk_rows)
    return StreamSource(src, memory_budget, shuffle_buffer)


def as_stream(X):
    """``X`` as a ``StreamSource`` or ``View`` when it is one (or a re-iterable of (X_chunk, y_chunk)
    pairs: a list or tuple whose first item is such a pair), else None."""
    if is_stream(X):
        return X
    if isinstance(X, (list, tuple)) and X and isinstance(X[0], (tuple, list)) and len(X[0]) == 2 and \
            np.ndim(X[0][0]) == 2:
        return StreamSource(PairsSource(X))
    if not isinstance(X, (list, tuple, np.ndarray, str, bytes)) and hasattr(X, "__iter__") and \
            not hasattr(X, "shape") and not hasattr(X, "__array__") and not hasattr(X, "__dlpack__"):
        return StreamSource(PairsSource(X))
    return None

