"""The bookkeeping of gpumlp._stream.PinnedBatches, on the CPU with a stand-in for CuPy.

Only a GPU shows that the copies really overlap (tests/test_gpu.py checks a streamed run equals a
resident one there); here every batch must hold exactly the rows asked for, in order, including a
remainder batch and a second epoch, and each device buffer must be refilled only after the copy
stream was told to wait for the step that last read it, and each pinned buffer only after the copy
that last read it has finished.
"""
import numpy as np
import pytest

from gpumlp import _stream


class FakeCupy:
    """Just what PinnedBatches uses, recording the order of the synchronisation calls."""

    def __init__(self):
        self.log = []
        fake = self

        class Event:
            count = 0

            def __init__(self, disable_timing=False):
                Event.count += 1
                self.name = f"e{Event.count}"

            def record(self, stream):
                fake.log.append(("record", self.name, stream.name))

            def synchronize(self):
                fake.log.append(("host_wait", self.name))

        class Stream:
            def __init__(self, non_blocking=False, name="copy"):
                assert non_blocking or name == "compute", "the copy stream must not serialise with the null stream"
                self.name = name

            def wait_event(self, event):
                fake.log.append(("wait", self.name, event.name))

        class DeviceArray(np.ndarray):
            def set(self, arr, stream=None):
                assert stream is not None and stream.name == "copy"
                fake.log.append(("copy",))
                self[...] = arr

        class cuda:
            pass

        cuda.Event = Event
        cuda.Stream = Stream
        cuda.alloc_pinned_memory = staticmethod(lambda n: bytearray(n))
        compute = Stream(name="compute")
        cuda.get_current_stream = staticmethod(lambda: compute)
        self.cuda = cuda
        self.empty = lambda shape, dtype: np.full(shape, np.nan, dtype).view(DeviceArray)


@pytest.mark.parametrize("n,batch", [(10, 3), (9, 3), (2, 5), (7, 1)])
def test_batches_hold_the_rows_asked_for(n, batch):
    cp = FakeCupy()
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    stream = _stream.PinnedBatches(cp, x, batch)
    for epoch in range(2):
        order = np.random.default_rng(epoch).permutation(n)
        got = []
        for k, b in enumerate(stream.epoch(order, batch)):
            rows = order[k * batch:(k + 1) * batch]
            np.testing.assert_array_equal(b, x[rows])
            got.append(len(b))
            b[...] = -1  # the step's work may not leak into later batches
        assert got == [min(batch, n - i) for i in range(0, n, batch)]


def test_buffers_are_refilled_only_after_their_last_reader():
    cp = FakeCupy()
    x = np.zeros((12, 2), np.float32)
    stream = _stream.PinnedBatches(cp, x, 3)
    copied, consumed = stream._copied, stream._consumed
    for _ in stream.epoch(np.arange(12), 3):
        pass
    log = cp.log
    copies = [i for i, e in enumerate(log) if e[0] == "copy"]
    assert len(copies) == 4
    for k, at in enumerate(copies):
        slot = k % 2
        if k >= 2:  # the slot was used by batch k − 2: both waits come before this copy
            before = log[copies[k - 1] + 1 if k else 0:at]
            assert ("host_wait", copied[slot].name) in before
            assert ("wait", "copy", consumed[slot].name) in before
        # the step waits for this copy before it gets the batch
        assert ("record", copied[slot].name, "copy") in log[at:]
    compute_waits = [e for e in log if e[0] == "wait" and e[1] == "compute"]
    assert [e[2] for e in compute_waits] == [copied[k % 2].name for k in range(4)]
    consumed_names = {e.name for e in consumed}
    consumed_records = [e for e in log if e[0] == "record" and e[2] == "compute" and e[1] in consumed_names]
    assert [e[1] for e in consumed_records] == [consumed[k % 2].name for k in range(4)]


def test_the_copy_stream_waits_for_the_allocation_of_its_device_buffers():
    """The device buffers come from CuPy's pool on the compute stream, possibly blocks that work still
    queued there uses: before the first copy writes them, the copy stream waits for that work."""
    cp = FakeCupy()
    stream = _stream.PinnedBatches(cp, np.zeros((6, 2), np.float32), 3)
    init_log = list(cp.log)
    recorded = [e[1] for e in init_log if e[0] == "record" and e[2] == "compute"]
    assert len(recorded) == 1
    assert init_log.index(("wait", "copy", recorded[0])) > init_log.index(("record", recorded[0], "compute"))
    next(stream.epoch(np.arange(6), 3))
    assert cp.log.index(("copy",)) > cp.log.index(("wait", "copy", recorded[0]))


def test_fits_on_device_uses_free_memory_and_the_pool():
    class Pool:
        def free_bytes(self):
            return 100

    class cp:
        class cuda:
            class runtime:
                @staticmethod
                def memGetInfo():
                    return 900, 10_000

        get_default_memory_pool = staticmethod(Pool)

    assert _stream.fits_on_device(cp, int(_stream.DEVICE_SHARE * 1000))
    assert not _stream.fits_on_device(cp, int(_stream.DEVICE_SHARE * 1000) + 1)


def test_a_batch_is_gathered_straight_into_pinned_memory():
    """np.take(..., out=pinned) with the default mode="raise" gathers into a temporary of the batch's
    size and copies it into out: a second host copy of every streamed batch. With mode="clip" (the rows
    are checked once per epoch: tests/test_batches.py) nothing of that size is allocated while streaming."""
    import tracemalloc

    cp = FakeCupy()
    x = np.random.default_rng(0).standard_normal((4000, 100))
    batch = 1000
    stream = _stream.PinnedBatches(cp, x, batch)  # its buffers are allocated here, before the count
    order = np.random.default_rng(1).permutation(len(x))
    batches = stream.epoch(order, batch)
    tracemalloc.start()
    try:
        for k in range(len(x) // batch):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            b = next(batches)  # gathers batch k + 1 (and, the first time, batch 0)
            gathered = tracemalloc.get_traced_memory()[1] - before
            assert gathered < x[:batch].nbytes / 10, f"batch {k}: {gathered} bytes allocated while gathering"
            np.testing.assert_array_equal(b, x[order[k * batch:(k + 1) * batch]])
    finally:
        tracemalloc.stop()
