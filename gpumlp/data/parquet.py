"""Streamed Parquet: a file, or a directory of files read as one pyarrow dataset (``pip install
"gpumlp[parquet]"``).

Every file's schema must be the first file's (the same column names and types, in the same order): a
file that differs is refused, naming it and the first difference. Feature columns hold numbers
(integers, floats, booleans); nulls and NaN are missing values. The label column (the last unless
named) holds numbers, booleans or text. A chunk is a row group: pyarrow decodes a row group at a time
(``ParquetFile.read_row_group``, one thread); a row group too large for the reader's share of the
memory budget is read in record batches of the slices' size instead (``iter_batches``), whose buffers
grow with the columns (a page each), not with the rows.

What the decoder holds besides the slice is taken off the memory budget (``decode_bytes``): for each
column of a row group, its dictionary and its current page, decoded and not, which is at most twice the
column chunk's uncompressed size and, for pages of the writers' default 1 MiB and dictionaries of at
most 1 MiB, at most 4 MiB; the largest row group's sum counts. Measured on float32 columns of 65,536
rows written by pyarrow (dictionary tried, then plain): pyarrow held 1.8 times the row group's size
where this counts 2. After each row group the memory pool gives its free pages back to the OS
(``release_unused``): mimalloc otherwise kept 80 MiB more resident than pyarrow had allocated.
"""
from __future__ import annotations

import os

import numpy as np

from .csvfile import _is_int  # a label column given as '3' is an index, as for CSV
from .chunks import Chunk, Slice, Source

EXTRA_HINT = 'pip install "gpumlp[parquet]" (or pip install pyarrow)'


def import_pyarrow():
    """pyarrow and pyarrow.parquet, or an ImportError naming the extra that brings them."""
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading Parquet files needs pyarrow, which is not installed: {EXTRA_HINT}") from None
    return pyarrow, pq


def parquet_files(path):
    """The Parquet files of ``path`` (a file, or a directory read as one dataset), sorted."""
    pa, _ = import_pyarrow()
    import pyarrow.dataset as ds

    if not os.path.isdir(path):
        return [os.fspath(path)]
    try:
        files = sorted(ds.dataset(os.fspath(path), format="parquet").files)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a directory of Parquet files ({exc})") from None
    if not files:
        raise ValueError(f"{path}: a directory with no Parquet files")
    return files


def _numeric(pa, t):
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _to_tensor_type(pa, t):
    """A type RecordBatch.to_tensor converts (it cannot cast half floats, booleans or dictionaries)."""
    return pa.types.is_integer(t) or (pa.types.is_floating(t) and not pa.types.is_float16(t))


def _label_type(pa, t):
    if pa.types.is_dictionary(t):
        t = t.value_type
    return _numeric(pa, t) or pa.types.is_string(t) or pa.types.is_large_string(t)


class ParquetSource(Source):
    """A Parquet file or directory; ``label`` names the label column (name, or index as for CSV: -1 the
    last), None for none (prediction)."""

    format = "parquet"

    def __init__(self, path, label=-1, require_labels=True):
        self.pa, self.pq = import_pyarrow()
        self.path = os.fspath(path)
        self.files = parquet_files(self.path)
        schemas, self.chunks = [], []
        self.decode_bytes, self.decode_what = 0, None  # see the module docstring
        for i, f in enumerate(self.files):
            opened = self._open(f)
            meta = opened.metadata
            if hasattr(opened, "close"):  # one file open at a time, however many the directory holds
                opened.close()
            schema = meta.schema.to_arrow_schema()
            if schemas and _first_difference(schemas[0], schema):
                raise ValueError(f"{f}: its columns differ from those of {self.files[0]} ("
                                 f"{_first_difference(schemas[0], schema)}); the files of a data set must agree")
            schemas.append(schema)
            first = 0
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                need = _decode_need(meta.row_group(g))
                if need > self.decode_bytes:
                    self.decode_bytes = need
                    self.decode_what = (f"the Parquet reader's pages for row group {g + 1} of {f} ({rows} rows of "
                                        f"{meta.num_columns} columns)")
                if rows:
                    self.chunks.append(Chunk(len(self.chunks), rows, i, first, g))
                first += rows
        self.schema = schemas[0]
        self._columns(label, require_labels)
        self._file = (None, None)

    def _columns(self, label, require_labels):
        names = list(self.schema.names)
        if label is None:
            col = None
        elif isinstance(label, str) and not _is_int(label):
            if label.strip() not in names:
                raise ValueError(f"label column {label!r} is not a column of {self.path}; columns: {names}")
            col = names.index(label.strip())
        else:
            col = int(label)
            if not -len(names) <= col < len(names):
                raise ValueError(f"label column {label} is out of range for {self.path}, which has {len(names)} columns")
            col %= len(names)
        if col is None and require_labels:
            raise ValueError("label_column is None but labels are required")
        if col is not None and len(names) < 2:
            raise ValueError(f"{self.path}: has a single column; it needs features and a label column")
        for j, field in enumerate(self.schema):
            if j != col and not _numeric(self.pa, field.type):
                raise ValueError(f"{self.path}: column {j + 1} ({field.name!r}) holds {field.type}; feature columns "
                                 f"must hold numbers")
        if col is not None and not _label_type(self.pa, self.schema.field(col).type):
            raise ValueError(f"{self.path}: the label column {col + 1} ({names[col]!r}) holds "
                             f"{self.schema.field(col).type}; labels must be numbers or text")
        self.label_column = col
        self.label_name = None if col is None else names[col]
        self.feature_names = [n for j, n in enumerate(names) if j != col]
        self.n_features = len(self.feature_names)
        self.has_labels = col is not None
        self._feature_indices = [j for j in range(len(names)) if j != col]
        self._tensor = all(_to_tensor_type(self.pa, self.schema.field(j).type) for j in self._feature_indices)

    def _open(self, path):
        try:
            return self.pq.ParquetFile(path, buffer_size=1 << 16, pre_buffer=False)
        except (self.pa.ArrowException, OSError) as exc:
            raise ValueError(f"{path}: not a readable Parquet file (damaged or truncated: {exc})") from None

    def _cached(self, i):
        if self._file[0] != i:
            self._file = (i, self._open(self.files[i]))
        return self._file[1]

    def read(self, chunk, slice_rows):
        path, f = self.files[chunk.file], self._cached(chunk.file)
        columns = list(self.schema.names)
        try:
            if chunk.rows <= slice_rows:
                batches = [f.read_row_group(chunk.locator, columns=columns, use_threads=False)]
            else:
                batches = f.iter_batches(batch_size=int(slice_rows), row_groups=[chunk.locator], columns=columns,
                                         use_threads=False)
            first = chunk.first_row
            for batch in batches:
                piece = self._slice(batch, path, first)
                first += batch.num_rows
                del batch
                yield piece
            del batches
            self.pa.default_memory_pool().release_unused()
        except self.pa.ArrowException as exc:
            raise ValueError(f"{path}: row group {chunk.locator + 1} (rows {chunk.first_row + 1} to "
                             f"{chunk.first_row + chunk.rows}) cannot be read (damaged or truncated: {exc})") from None

    def _slice(self, batch, path, first):
        n = batch.num_rows
        y = missing = None
        if self.label_column is not None:
            y, missing = self._labels(batch.column(self.label_column))
        if self._tensor:  # integers and floats only: one call, to (n, d) column-major, nulls NaN
            X = np.asarray(batch.select(self._feature_indices).to_tensor(null_to_nan=True, row_major=False))
            X = X.astype(np.float64, copy=False)
        else:
            # Column-major too: each column one contiguous write (a row-major fill writes each value
            # n_features * 8 bytes from the last, six times slower). X is the transpose, an F-ordered
            # (n, d) view; the transform keeps that order and the shuffle buffer's copy lays out the rows.
            Xt = np.empty((self.n_features, n), np.float64)
            for k, j in enumerate(self._feature_indices):
                # in Arrow, to float64 (nulls NaN): booleans, integers and dictionary-encoded values alike
                Xt[k] = batch.column(j).cast(self.pa.float64(), safe=False).to_numpy(zero_copy_only=False)
            X = Xt.T
        return Slice(X, y, missing, np.arange(first + 1, first + n + 1, dtype=np.int64), path)

    def _labels(self, column):
        pa = self.pa
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type) if hasattr(column, "cast") else column
        nulls = np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)
        if _numeric(pa, column.type):
            y = np.array(column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False), np.float64)
            y[nulls] = np.nan
            return y, np.isnan(y)
        values = column.fill_null("").to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=str), nulls

    def close(self):
        self._file = (None, None)


PAGE_BOUND = 4 * 2**20  # a column's dictionary (<= 1 MiB) and data page (1 MiB), compressed and decoded


def _decode_need(rg):
    """What the decoder holds for row group ``rg`` (its metadata): see the module docstring."""
    return sum(min(2 * rg.column(c).total_uncompressed_size, PAGE_BOUND) for c in range(rg.num_columns))


def _first_difference(a, b):
    """How schema ``b`` differs from ``a`` in what the reader uses (the columns' names, order and types),
    or None: whether a column may hold nulls, whether its values are dictionary-encoded and the files'
    metadata may differ."""
    if a.names != b.names:
        return f"column names {b.names} against {a.names}"

    def plain(t):
        return t.value_type if hasattr(t, "value_type") and hasattr(t, "index_type") else t

    for fa, fb in zip(a, b):
        if not plain(fa.type).equals(plain(fb.type)):
            return f"column {fa.name!r} holds {fb.type}, not {fa.type}"
    return None
