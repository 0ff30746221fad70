"""Training data larger than the GPU: batches streamed through pinned host memory.

``MLP.fit`` keeps the training set on the device whenever it fits (``fits_on_device``). When it does
not, the data stay on the host and :class:`PinnedBatches` feeds the step, double-buffered so that
gathering and copying batch k+1 overlaps the GPU's work on batch k:

    host      gather rows of batch k+1 into pinned[k+1 mod 2]     (after copy k−1 has left it)
    copy      pinned[j] → device[j] on a non-blocking stream      (after step k−1 has read device[j])
    compute   wait for copy k only, then run step k on device[k mod 2]

Only CUDA events order the three; the host never waits for the GPU's compute, and the host waits
for a copy only when it wants to refill a pinned buffer that the copy before last still reads.
"""
from __future__ import annotations

import numpy as np

# Keep the training set on the device when it takes at most this share of the free device memory
# (the rest is for the model, its work buffers and the epoch's shuffled copy of the data).
DEVICE_SHARE = 0.4


def fits_on_device(cupy, nbytes):
    """Whether ``nbytes`` of training data should live on the current device."""
    free, _ = cupy.cuda.runtime.memGetInfo()
    free += cupy.get_default_memory_pool().free_bytes()  # blocks CuPy holds but no array uses
    return nbytes <= DEVICE_SHARE * free


class PinnedBatches:
    """Device batches ``x[rows]`` of a host array, for consecutive row sets of one epoch."""

    def __init__(self, cupy, x_host, batch_size):
        self._cp = cupy
        rows = min(batch_size, x_host.shape[0])
        shape = (rows,) + x_host.shape[1:]
        size = int(np.prod(shape))
        self._x = x_host
        self._memory = [cupy.cuda.alloc_pinned_memory(size * x_host.dtype.itemsize) for _ in range(2)]
        self._pinned = [np.frombuffer(m, x_host.dtype, size).reshape(shape) for m in self._memory]
        self._device = [cupy.empty(shape, x_host.dtype) for _ in range(2)]
        self._copy_stream = cupy.cuda.Stream(non_blocking=True)
        # CuPy's pool hands out memory freed on the current stream as soon as it is freed, relying on
        # that stream's order: work queued there may still use these blocks. The copy stream writes
        # them, so it first waits for everything queued on the current stream so far.
        allocated = cupy.cuda.Event(disable_timing=True)
        allocated.record(cupy.cuda.get_current_stream())
        self._copy_stream.wait_event(allocated)
        self._copied = [cupy.cuda.Event(disable_timing=True) for _ in range(2)]
        self._consumed = [cupy.cuda.Event(disable_timing=True) for _ in range(2)]
        self._busy = [False, False]  # whether a copy/step has used slot j since the last epoch

    def _issue(self, j, rows, x):
        """Gather ``x[rows]`` on the host into slot j and start its copy to the device."""
        slot, b = j % 2, len(rows)
        if self._busy[slot]:
            self._copied[slot].synchronize()  # copy j−2 still reading pinned[slot]?
            self._copy_stream.wait_event(self._consumed[slot])  # step j−2 still reading device[slot]?
        # mode="clip": with the default "raise", NumPy gathers into a temporary and copies that into
        # out (a second host copy of every batch). The rows are checked in range once per epoch, by
        # batches.check_order, so clipping never moves an index.
        np.take(x, rows, axis=0, out=self._pinned[slot][:b], mode="clip")
        self._device[slot][:b].set(self._pinned[slot][:b], stream=self._copy_stream)
        self._copied[slot].record(self._copy_stream)
        self._busy[slot] = True

    def epoch(self, order, batch_size, x=None):
        """Yield the device batch of each ``order[i:i + batch_size]`` in turn. The caller enqueues
        its work on the current stream before asking for the next batch. ``x``: rows of another host
        array of the same row shape and dtype (a streamed block, ``batches.ViewBatches``)."""
        x = self._x if x is None else x
        compute = self._cp.cuda.get_current_stream()
        starts = list(range(0, len(order), batch_size))
        self._issue(0, order[:batch_size], x)
        for k, i in enumerate(starts):
            if k + 1 < len(starts):
                self._issue(k + 1, order[starts[k + 1]:starts[k + 1] + batch_size], x)
            slot = k % 2
            compute.wait_event(self._copied[slot])
            yield self._device[slot][:min(batch_size, len(order) - i)]
            self._consumed[slot].record(compute)
