"""Inference on NumPy (mlp._infer, issue 15's speed-up): the step's NumpyOps into per-call buffers, the same
bits as the reference forward it replaced (validation scores and losses are numbers training produces:
they must not move), for every activation, dtype, bias, chunk boundary and sparse X; and calls from
several threads at once share no buffer."""
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import gpumlp
from gpumlp.mlp import INFER_CHUNK


def reference_outputs(m, X):
    """What inference computed before: the reference forward (functions.py) per chunk of INFER_CHUNK rows."""
    return np.concatenate([m.forward(X[i:i + INFER_CHUNK]).o for i in range(0, X.shape[0], INFER_CHUNK)])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", sorted(gpumlp.ACTIVATIONS))
def test_outputs_are_the_reference_forward_to_the_bit(activation, bias, dtype):
    m = gpumlp.MLP((12, 16, 9, 5), activation=[activation, "relu"], bias=bias, dtype=dtype, backend="numpy", seed=0)
    rng = np.random.default_rng(1)
    for n in (1, 7, INFER_CHUNK, INFER_CHUNK + 1, 2 * INFER_CHUNK + 100):
        X = rng.normal(size=(n, 12)) * 3
        o = m.decision_function(X)
        assert o.dtype == m.dtype and o.shape == (n, 5)
        np.testing.assert_array_equal(o, reference_outputs(m, X))
    np.testing.assert_array_equal(m.predict(X), reference_outputs(m, X).argmax(axis=1))


def test_sparse_inputs_and_integer_inputs_too():
    m = gpumlp.MLP((30, 20, 4), activation="tanh", bias=True, backend="numpy", seed=0)
    Xs = sp.random(INFER_CHUNK + 5, 30, density=0.2, random_state=0, format="csr")
    np.testing.assert_array_equal(m.decision_function(Xs), reference_outputs(m, Xs))
    Xi = np.random.default_rng(0).integers(0, 17, size=(50, 30))
    np.testing.assert_array_equal(m.decision_function(Xi), reference_outputs(m, Xi))


def test_predictions_from_several_threads_at_once_are_each_their_own():
    m = gpumlp.MLP((40, 64, 3), bias=True, backend="numpy", seed=0)
    rng = np.random.default_rng(2)
    inputs = [rng.normal(size=(3000 + 17 * k, 40)) for k in range(6)]
    want = [reference_outputs(m, X) for X in inputs]
    got, errors = [None] * len(inputs), []

    def work(k):
        try:
            for _ in range(5):
                got[k] = m.decision_function(inputs[k])
                np.testing.assert_array_equal(got[k], want[k])
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and all(g is not None for g in got)
