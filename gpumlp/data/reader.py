"""The prefetching reader and the shuffle buffer of streamed training.

    prefetch(make_items, depth)       iterate ``make_items()`` in a thread, ``depth`` items ahead
    shuffled_blocks(pieces, ...)      blocks of rows shuffled inside a buffer of ``capacity`` rows

A reader thread reads, parses and transforms the next chunks while the training step runs on the
current ones (pyarrow's decoding, NumPy's copies and casts and hashlib release the GIL). Its items pass
through a queue of at most ``depth``; an exception in the thread is raised where the items are taken,
and leaving the iteration early (an error in training, early stopping, Ctrl-C) stops the thread at its
next item: nothing is left running, and the queue's items are dropped.

The shuffle buffer (the epoch's chunks come in a seeded order): rows are appended until the buffer
holds ``capacity`` rows; then ``block`` rows drawn at random from all it holds are handed on as one
block (a multiple of the batch size, so every batch but the epoch's last is full), and the rows left
move into the holes. At the end of the epoch what remains goes out shuffled. Each emission permutes the
whole buffer, so a row leaves it after a geometric number of emissions: rows of chunks read up to about
capacity / block emissions apart are mixed.
"""
from __future__ import annotations

import queue
import threading

import numpy as np

_DONE = object()


class _Failure:
    def __init__(self, exc):
        self.exc = exc


def prefetch(make_items, depth=2):
    """Yield the items of ``make_items()``, produced by a thread that runs up to ``depth`` ahead."""
    q = queue.Queue(maxsize=max(int(depth), 1))
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run():
        try:
            for item in make_items():
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Failure(exc))

    thread = threading.Thread(target=run, name="gpumlp-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
            del item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class ShuffleBuffer:
    """Rows (x, y, w) collected into preallocated arrays of ``capacity + slack`` rows."""

    def __init__(self, capacity, slack, row_shape, dtype, y_shape, y_dtype, weighted):
        rows = capacity + slack
        self.x = np.empty((rows,) + row_shape, dtype)
        self.y = np.empty((rows,) + y_shape, y_dtype)
        self.w = np.empty(rows, dtype) if weighted else None
        self.fill = 0

    def add(self, x, y, w, at=0):
        """Append the rows of x, y (and w) from row ``at`` on."""
        n = x.shape[0] - at
        end = self.fill + n
        if end > self.x.shape[0]:
            raise ValueError(f"{n} rows do not fit a shuffle buffer holding {self.fill} of {self.x.shape[0]}")
        self.x[self.fill:end], self.y[self.fill:end] = x[at:], y[at:]
        if self.w is not None:
            self.w[self.fill:end] = w[at:]
        self.fill = end

    def take(self, rows):
        """A block of the buffer's ``rows`` (new arrays); the remaining rows are moved to the front."""
        block = (self.x[rows], self.y[rows], None if self.w is None else self.w[rows])
        k, n = rows.size, self.fill
        keep = n - k
        mask = np.zeros(n, bool)
        mask[rows] = True
        holes = np.flatnonzero(mask[:keep])          # taken rows within the part that stays
        movers = keep + np.flatnonzero(~mask[keep:])  # kept rows beyond it
        for a in (self.x, self.y) + (() if self.w is None else (self.w,)):
            a[holes] = a[movers]
        self.fill = keep
        return block


def shuffled_blocks(pieces, capacity, block, batch_size, rng, make_buffer):
    """Blocks (x, y, w) of the rows of ``pieces`` (an iterable of (x, y, w) host arrays), shuffled in a
    buffer of ``capacity`` rows (``rng`` None: in their order, no buffer needed beyond a block).
    ``block`` rows per block at most, a multiple of ``batch_size``; the last block holds the rest."""
    block = max(batch_size, block // batch_size * batch_size)
    capacity = max(capacity, block)
    buffer = None
    for x, y, w in pieces:
        if buffer is None:
            buffer = make_buffer(x, y, w)
        at = 0
        while at < x.shape[0]:
            room = capacity - buffer.fill if rng is not None else block - buffer.fill
            n = min(room, x.shape[0] - at)
            buffer.add(x[at:at + n], y[at:at + n], None if w is None else w[at:at + n], 0)
            at += n
            if rng is not None and buffer.fill >= capacity:
                yield buffer.take(rng.permutation(buffer.fill)[:block])
            elif rng is None and buffer.fill >= block:
                yield buffer.take(np.arange(block))
    if buffer is None:
        return
    while buffer.fill:
        k = min(block, buffer.fill)
        rows = rng.permutation(buffer.fill)[:k] if rng is not None else np.arange(k)
        yield buffer.take(rows)
