"""The epoch's row order is checked before any gather (gpumlp.batches.check_order): the gathers take
rows with NumPy's mode="clip" (no temporary) or CuPy's take (which wraps), where an index out of range
would silently become another row."""
from types import SimpleNamespace

import numpy as np
import pytest

from gpumlp import batches
from test_stream import FakeCupy

N = 10


def _sources():
    x = np.arange(N * 2.0).reshape(N, 2)
    y, w = np.arange(N), np.ones(N)
    cp = FakeCupy()
    cp.take = np.take
    host = SimpleNamespace(xp=np, asarray=np.asarray)
    return cp, {
        "gathered": batches.GatheredBatches(np, x, y, w),
        "resident": batches.ResidentBatches(host, x, y, w),  # NumPy standing in for the device
        "streamed": batches.StreamedBatches(SimpleNamespace(xp=cp, asarray=np.asarray), x, y, w),
    }


@pytest.mark.parametrize("source", ["gathered", "resident", "streamed", "sparse"])
@pytest.mark.parametrize("order, match", [
    (np.array([0, 3, N]), rf"row indices in \[0, {N}\], outside the {N} rows"),
    (np.array([2, -1, 4]), rf"row indices in \[-1, 4\], outside the {N} rows"),
    (np.array([0.0, 1.0]), "integer row indices"),
    (np.zeros((2, 2), np.int64), "1-D"),
])
def test_an_order_out_of_range_is_refused_before_any_batch(source, order, match):
    if source == "sparse":
        sp = pytest.importorskip("scipy.sparse", reason="SciPy is not installed")
        cp = FakeCupy()
        src = batches.SparseBatches(SimpleNamespace(xp=np, asarray=np.asarray), sp.csr_matrix(np.eye(N)),
                                    np.arange(N), None)
    else:
        cp, sources = _sources()
        src = sources[source]
    with pytest.raises(ValueError, match=match):
        next(src.epoch(order, 3))
    assert ("copy",) not in cp.log  # nothing was sent to the "device"


@pytest.mark.parametrize("source", ["gathered", "resident", "streamed"])
def test_the_last_row_and_an_empty_order_are_fine(source):
    _, sources = _sources()
    src = sources[source]
    got = [np.array(b[0]) for b in src.epoch(np.array([N - 1, 0]), 3)]
    np.testing.assert_array_equal(np.concatenate(got), [[2 * N - 2, 2 * N - 1], [0, 1]])
    assert batches.check_order(np.array([], np.int64), N).size == 0
