"""Exact values at the kinks and at extreme inputs, in both dtypes (the reference functions)."""
import math

import numpy as np
import pytest

from gpumlp import functions as F

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_and_leaky_relu_at_the_kink(dtype):
    z = np.array([-1.0, 0.0, 1.0], dtype)
    dh = np.ones(3, dtype)
    assert F.relu_forward(z).tolist() == [0.0, 0.0, 1.0]
    assert F.relu_backward(dh, z, F.relu_forward(z)).tolist() == [0.0, 0.0, 1.0]  # φ′(0) = 0, as PyTorch
    h = F.leaky_relu_forward(z)
    np.testing.assert_array_equal(h, np.array([-0.01, 0.0, 1.0], dtype))
    np.testing.assert_array_equal(F.leaky_relu_backward(dh, z, h), np.array([0.01, 0.01, 1.0], dtype))
    for f in (F.relu_forward(z), h, F.relu_backward(dh, z, h), F.leaky_relu_backward(dh, z, h)):
        assert f.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_softplus_at_extremes(dtype):
    z = np.array([-100.0, -30.0, 0.0, 30.0, 100.0], dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow, not even an intermediate one (underflow to 0 is exact enough)
        s = F.sigmoid_forward(z)
        sp = F.softplus_forward(z)
        ds = F.sigmoid_backward(np.ones_like(z), z, s)
        dsp = F.softplus_backward(np.ones_like(z), z, sp)
    exact_s = [1 / (1 + math.exp(100)), 1 / (1 + math.exp(30)), 0.5, 1 / (1 + math.exp(-30)), 1.0]
    exact_sp = [math.log1p(math.exp(-100)), math.log1p(math.exp(-30)), math.log(2), 30 + math.log1p(math.exp(-30)), 100.0]
    tol = 1e-6 if dtype == np.float32 else 1e-15
    # In float32, e^−100 ≈ 3.7e−44 is subnormal (below 1.2e−38) and carries only a few bits: an
    # absolute tolerance of a few subnormal steps (1.4e−45 each) covers it, and 0 would still fail.
    atol = 1e-45 * 8 if dtype == np.float32 else 0
    np.testing.assert_allclose(s, exact_s, rtol=tol, atol=atol)
    np.testing.assert_allclose(sp, exact_sp, rtol=tol, atol=atol)
    np.testing.assert_allclose(dsp, exact_s, rtol=tol, atol=atol)  # softplus′ = sigmoid
    assert s[0] > 0 and sp[0] > 0  # not flushed to zero
    assert np.isfinite(ds).all() and ds[2] == 0.25
    assert s.dtype == sp.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_gelu_identity_values(dtype):
    z = np.array([-100.0, -1.0, 0.0, 1.0, 100.0], dtype)
    t = F.tanh_forward(z)
    np.testing.assert_allclose(t, np.tanh(z.astype(np.float64)), rtol=1e-6)
    g = F.gelu_forward(z)
    k = math.sqrt(2 / math.pi)
    exact = [0.5 * v * (1 + math.tanh(k * (v + 0.044715 * v**3))) for v in z.astype(float)]
    np.testing.assert_allclose(g, exact, rtol=1e-6, atol=1e-30)
    assert g[0] == 0 and g[-1] == 100  # saturates exactly, no NaN from z³ at ±100
    dg = F.gelu_backward(np.ones_like(z), z, g)
    assert dg[2] == 0.5 and dg[0] == 0 and dg[-1] == 1
    np.testing.assert_array_equal(F.identity_forward(z), z)
    np.testing.assert_array_equal(F.identity_backward(z, z, z), z)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_with_huge_logits_is_finite_and_exact(dtype):
    o = np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], dtype)
    y = np.array([1, 2])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        L = F.cross_entropy_forward(o, y)
        do = F.cross_entropy_backward(o, y)
    # row 0: −log softmax = 1e4 exactly (the others underflow to 0); row 1: log 3
    assert float(L) == pytest.approx((1e4 + math.log(3)) / 2, rel=1e-6)
    np.testing.assert_allclose(do, np.array([[1, -1, 0], [1 / 3, 1 / 3, -2 / 3]]) / 2, atol=1e-7)
    assert do.dtype == dtype


def test_squared_loss_and_gradient():
    o = np.array([[1.0, 2.0], [3.0, 5.0]])
    y = np.array([[0.0, 2.0], [1.0, 1.0]])
    assert float(F.squared_forward(o, y)) == pytest.approx((0.5 * 1 + 0.5 * 20) / 2)
    np.testing.assert_array_equal(F.squared_backward(o, y), (o - y) / 2)


def test_regulariser_is_half_lambda_squared_frobenius():
    W = [np.full((2, 3), 2.0), np.ones((1, 2))]
    assert F.regulariser(W, 0.1) == pytest.approx(0.05 * (24 + 2))
    assert F.regulariser(W, 0.0) == 0.0
