"""Where a training epoch's minibatches come from: three small sources with one interface.

    source.epoch(order, batch_size)  ->  (x, y, w) for each step, in the order of ``order``
                                         (host row indices: a permutation of the rows, or a subset of
                                         them such as a data-parallel rank's shards; None: every row
                                         in its own order)

    GatheredBatches   CPU: each batch's rows are gathered into one buffer that stays in cache, just
                      before its step (a shuffled copy of the whole set would stream through memory)
    ResidentBatches   GPU, data on the device: one gather kernel shuffles the whole epoch, and the
                      batches are contiguous slices of it
    StreamedBatches   GPU, data too large for the device (kept on the host, ``_stream``): y and w are
                      shuffled on the device once, the rows of x stream through pinned memory,
                      double-buffered on a second stream

    SparseBatches     sparse x (SciPy CSR on the CPU, cupyx CSR on the GPU): each batch's rows are
                      gathered into a CSR batch of their own; the first layer multiplies it as it is
                      (``Ops.linear``, ``Ops.weight_grad``), so neither X nor a batch is densified

    ViewBatches       streamed data (``gpumlp.data.stream``): ``order`` is the epoch's seed (None: file
                      order); the file's chunks in a seeded order, rows shuffled in a buffer, read by a
                      thread ahead of the step (``gpumlp.data.streaming.View.blocks``); on the GPU each
                      block's rows go to the device through the pinned, double-buffered staging of
                      ``_stream``

``batch_source(backend, x, y, w)`` picks the one that fits where ``x`` lives. The shuffle is the same
host permutation on every backend, so a seed gives the same batches everywhere.

``order`` is checked once per epoch (``check_order``): integer row indices in [0, n). The gathers
rely on it: NumPy's ``take(..., mode="clip")`` (which writes straight into its ``out`` buffer, where
the default mode gathers into a temporary first) and CuPy's ``take`` (which wraps) would otherwise
turn a row index out of range into another row, silently.
"""
from __future__ import annotations

import numpy as np

from .backend import is_sparse


def check_order(order, n):
    """``order`` as a 1-D host array of integer row indices in [0, n); ValueError naming what is wrong."""
    order = np.asarray(order)
    if order.ndim != 1 or (order.size and order.dtype.kind not in "iu"):
        raise ValueError(f"order must be a 1-D array of integer row indices, got shape {order.shape} "
                         f"of {order.dtype}")
    if order.size and (int(order.min()) < 0 or int(order.max()) >= n):
        raise ValueError(f"order holds row indices in [{int(order.min())}, {int(order.max())}], "
                         f"outside the {n} rows [0, {n})")
    return order


class GatheredBatches:
    def __init__(self, xp, x, y, w):
        self.xp, self.x, self.y, self.w = xp, x, y, w
        self._buffer = None

    def epoch(self, order, batch_size):
        x, y, w, n = self.x, self.y, self.w, self.x.shape[0]
        if order is None:
            for i in range(0, n, batch_size):
                yield x[i:i + batch_size], y[i:i + batch_size], None if w is None else w[i:i + batch_size]
            return
        order = check_order(order, n)
        rows = min(batch_size, n)
        if self._buffer is None or self._buffer.shape[0] != rows:
            self._buffer = self.xp.empty((rows,) + x.shape[1:], x.dtype)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield (self.xp.take(x, idx, axis=0, out=self._buffer[:len(idx)], mode="clip"), y[idx],
                   None if w is None else w[idx])


class ResidentBatches:
    def __init__(self, backend, x, y, w):
        self.backend, self.x, self.y, self.w = backend, x, y, w

    def epoch(self, order, batch_size):
        x, y, w = self.x, self.y, self.w
        if order is not None:
            xp, perm = self.backend.xp, self.backend.asarray(check_order(order, x.shape[0]))
            x, y = xp.take(x, perm, axis=0), xp.take(y, perm, axis=0)
            w = None if w is None else xp.take(w, perm)
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size], None if w is None else w[i:i + batch_size]


class StreamedBatches:
    def __init__(self, backend, x, y, w):
        self.backend, self.x, self.y, self.w = backend, x, y, w

    def epoch(self, order, batch_size):
        from ._stream import PinnedBatches

        xp, x, y, w = self.backend.xp, self.x, self.y, self.w
        n = x.shape[0] if order is None else len(order)
        if order is not None:  # y and w are on the device: shuffle them there once
            order = check_order(order, x.shape[0])  # before PinnedBatches gathers with mode="clip"
            perm = self.backend.asarray(order)
            y, w = xp.take(y, perm, axis=0), None if w is None else xp.take(w, perm)
        rows = PinnedBatches(xp, x, batch_size).epoch(np.arange(n) if order is None else order, batch_size)
        for i in range(0, n, batch_size):
            yield next(rows), y[i:i + batch_size], None if w is None else w[i:i + batch_size]


class SparseBatches:
    def __init__(self, backend, x, y, w):
        self.backend, self.x, self.y, self.w = backend, x, y, w

    def epoch(self, order, batch_size):
        x, y, w, n = self.x, self.y, self.w, self.x.shape[0]
        perm = None if order is None else self.backend.asarray(check_order(order, n))  # on the data's device, once
        for i in range(0, n if order is None else len(order), batch_size):  # a rank's order: its rows only
            rows = slice(i, i + batch_size) if perm is None else perm[i:i + batch_size]
            yield x[rows], y[rows], None if w is None else w[rows]


class ViewBatches:
    def __init__(self, backend, view):
        self.backend, self.view = backend, view

    def epoch(self, order, batch_size):
        if not self.backend.is_gpu:
            yield from self.view.epoch(order, batch_size)
            return
        from ._stream import PinnedBatches

        asarray, pinned = self.backend.asarray, None
        for x, y, w in self.view.blocks(order, batch_size):
            if pinned is None:
                pinned = PinnedBatches(self.backend.xp, np.empty((batch_size,) + x.shape[1:], x.dtype), batch_size)
            y, w = asarray(y), None if w is None else asarray(w)
            # Run each block's batches to their end: after its last one PinnedBatches records that the step
            # has read its slot, which the next block's first copy into that slot waits for.
            for k, xb in enumerate(pinned.epoch(np.arange(x.shape[0]), batch_size, x=x)):
                i = k * batch_size
                yield xb, y[i:i + batch_size], None if w is None else w[i:i + batch_size]


def batch_source(backend, x, y, w):
    """The source for training data ``x`` (a host array on the GPU backend means: stream it)."""
    from .data.streaming import View

    if isinstance(x, View):
        return ViewBatches(backend, x)
    if is_sparse(x):
        return SparseBatches(backend, x, y, w)
    if not backend.is_gpu:
        return GatheredBatches(backend.xp, x, y, w)
    if isinstance(x, np.ndarray):
        return StreamedBatches(backend, x, y, w)
    return ResidentBatches(backend, x, y, w)
