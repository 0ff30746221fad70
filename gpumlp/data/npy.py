"""Streamed .npy files: a features file (n, d) and a labels file (n,), memory-mapped.

The header is read by NumPy (``np.load(mmap_mode="r")``: no pickle, object arrays refused) and checked
against the file's size. Rows are read from one read-only memory map of each file; after a slice is
copied out, ``madvise(MADV_DONTNEED)`` drops the map's pages for it, so that the process's resident memory
(which counts a map's file-backed pages) holds only the slice being read, however large the file.
"""
from __future__ import annotations

import mmap
import os

import numpy as np

from .base import _dtype_words, _open_regular
from .chunks import Chunk, Slice, Source, chunk_rows_for

FAULT_AROUND = 1 << 20  # bytes dropped beyond a slice's pages on each side: more than the kernel's fault-around


class _Mapped:
    """One .npy file's array header and a read-only map of its bytes."""

    def __init__(self, path, what):
        self.path = os.fspath(path)
        with _open_regular(self.path) as f:  # a FIFO or device is refused before a byte is read
            size = os.fstat(f.fileno()).st_size
            try:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"format version {version[0]}.{version[1]} (1.0 and 2.0 are read)")
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                self.shape, fortran, self.dtype = read_header(f)
            except (ValueError, OSError, EOFError, SyntaxError) as exc:
                raise ValueError(f"{self.path}: not a readable .npy file ({exc})") from None
            self.offset = f.tell()
            if fortran and len(self.shape) > 1:
                raise ValueError(f"{self.path}: the array is stored in Fortran (column) order, so its rows are not "
                                 f"contiguous; save it C-ordered: np.save(path, np.ascontiguousarray(a))")
            if self.dtype.hasobject or self.dtype.fields is not None:
                raise ValueError(f"{self.path}: holds {_dtype_words(self.dtype)}; an .npy file here holds plain "
                                 f"numbers (or text labels)")
            self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
            if self.offset + self.nbytes > size:
                raise ValueError(f"{self.path}: truncated .npy file ({size} bytes; its header says "
                                 f"{self.offset + self.nbytes})")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.nbytes else None
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        self.what = what

    def rows(self, a, b):
        """Rows a..b as a new array (a copy), then the map's pages of them released."""
        if self._map is None or b <= a:
            return np.zeros((0,) + self.shape[1:], self.dtype)
        start = self.offset + a * self.row_bytes
        count = (b - a) * (self.row_bytes // self.dtype.itemsize)
        view = np.frombuffer(self._map, self.dtype, count=count, offset=start).reshape((b - a,) + self.shape[1:])
        out = np.array(view, copy=True)
        del view
        # Whole pages from the one holding the slice's first byte to the one holding its last, and
        # FAULT_AROUND more on each side: a partial last page kept would stay resident for every slice,
        # and on a fault the kernel maps the cached pages around it too (fault-around, 64 KiB by default),
        # which in a shuffled chunk order lands in chunks already read this epoch: 24 GiB of chunks
        # kept 350 MiB resident that way. Pages dropped are read again from the page cache if needed.
        page = max(0, start - start % mmap.PAGESIZE - FAULT_AROUND)
        end = min(len(self._map),
                  -(-(start + (b - a) * self.row_bytes) // mmap.PAGESIZE) * mmap.PAGESIZE + FAULT_AROUND)
        if hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED, page, end - page)
        return out

    def close(self):
        if self._map is not None:
            self._map.close()
            self._map = None


class NpySource(Source):
    """An .npy features file (n, d) of real numbers, with an .npy labels file (n,) of numbers or text."""

    format = "npy"

    def __init__(self, path, labels=None):
        self.path = os.fspath(path)
        self._x, self._y = _Mapped(self.path, "features"), None
        try:
            self._check(labels)
        except BaseException:
            self.close()  # the maps of a refused file are not left open
            raise

    def _check(self, labels):
        if len(self._x.shape) != 2:
            raise ValueError(f"{self.path}: the features must be 2-D (n_samples, n_features), got shape {self._x.shape}")
        if self._x.dtype.kind not in "biuf":
            raise ValueError(f"{self.path}: holds {_dtype_words(self._x.dtype)}; features must be real numbers")
        self.n_features = int(self._x.shape[1])
        if not self.n_features:
            raise ValueError(f"{self.path}: the features have shape {self._x.shape}: no feature columns")
        if labels is not None:
            self._y = _Mapped(labels, "labels")
            if len(self._y.shape) != 1:
                raise ValueError(f"{self._y.path}: the labels must be 1-D (one per sample), got shape {self._y.shape}")
            if self._y.dtype.kind not in "biufU":
                raise ValueError(f"{self._y.path}: holds {_dtype_words(self._y.dtype)}; labels must be numbers or text")
            if self._y.shape[0] != self._x.shape[0]:
                raise ValueError(f"{self._y.path} holds {self._y.shape[0]} labels but {self.path} holds "
                                 f"{self._x.shape[0]} rows")
        self.has_labels = self._y is not None
        self.labels_path = None if self._y is None else self._y.path
        per = chunk_rows_for(self.n_features)
        n = int(self._x.shape[0])
        self.chunks = [Chunk(i, min(per, n - a), 0, a) for i, a in enumerate(range(0, n, per))]

    def read(self, chunk, slice_rows):
        for a in range(chunk.first_row, chunk.first_row + chunk.rows, max(int(slice_rows), 1)):
            b = min(a + max(int(slice_rows), 1), chunk.first_row + chunk.rows)
            X = self._x.rows(a, b).astype(np.float64)
            y = missing = None
            if self._y is not None:
                y = self._y.rows(a, b)
                if y.dtype.kind in "biuf":
                    y = y.astype(np.float64)
                    missing = np.isnan(y)
                else:
                    y = y.astype(str)
                    missing = np.zeros(y.shape[0], bool)
            yield Slice(X, y, missing, np.arange(a + 1, b + 1, dtype=np.int64), self.path)

    def describe_column(self, j):
        return f"column {j + 1}"

    def describe_label(self):
        return f"the label in {self.labels_path}"

    def close(self):
        self._x.close()
        if self._y is not None:
            self._y.close()
