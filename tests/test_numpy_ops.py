"""The NumPy step ops against the reference math of functions.py, on both GEMM paths: NumPy's
bundled OpenBLAS cblas (when this NumPy has it) and the pure-NumPy fallback."""
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import _numpy_ops
from gpumlp import functions as F
from gpumlp._numpy_ops import NumpyOps

DTYPES = [np.float32, np.float64]
# float32: a few ulps per product term over sums of ≤ 64 terms; float64: the same at 1e-16.
RTOL = {np.float32: 2e-5, np.float64: 1e-12}
GEMM = _numpy_ops.default_gemm()


@pytest.fixture(params=["openblas", "fallback"])
def ops(request):
    if request.param == "openblas":
        if GEMM is None:
            pytest.skip("this NumPy has no bundled OpenBLAS cblas (MKL/Accelerate/source build)")
        return NumpyOps(gemm=GEMM)
    return NumpyOps(gemm=None)


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _close(got, want, dtype):
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * max(1.0, float(np.abs(want).max())))


def test_numpy_wheel_openblas_is_found_when_bundled():
    """Guards against the fast path silently switching off: a NumPy wheel that bundles ILP64 OpenBLAS
    must give us its GEMM."""
    pkg = Path(np.__file__).parent
    bundled = list(pkg.parent.glob("numpy.libs/*openblas64*")) + list(pkg.glob(".dylibs/*openblas64*"))
    if not bundled:
        pytest.skip("this NumPy bundles no OpenBLAS")
    assert GEMM is not None


def test_cblas_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("GPUMLP_CBLAS", "0")
    assert _numpy_ops.find_openblas_gemm() is None


def test_self_test_rejects_a_wrong_gemm():
    def wrong(a, b, out, alpha, beta):
        out[...] = alpha * (a @ b)  # forgets beta
        return True
    assert not _numpy_ops._self_test(wrong)
    assert not _numpy_ops._self_test(lambda *args: False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-0.1, 0.99), (2.0, 0.0), (-0.5, 1.0), (1.0, 1.0)])
def test_weight_grad_in_place_alpha_beta(ops, dtype, alpha, beta):
    rng = np.random.default_rng(0)
    d, x = _rand(rng, (64, 7), dtype), _rand(rng, (64, 5), dtype)
    theta = _rand(rng, 7 * 5 + 6, dtype)  # W is a view into a flat buffer, as in the model
    before = theta.copy()
    W = theta[3:3 + 35].reshape(7, 5)
    want = beta * W.astype(np.float64) + alpha * (d.astype(np.float64).T @ x)
    out = ops.weight_grad(d, x, W, alpha=alpha, beta=beta)
    assert np.shares_memory(out, W)
    _close(W, want, dtype)
    np.testing.assert_array_equal(theta[:3], before[:3])  # nothing outside W is touched
    np.testing.assert_array_equal(theta[38:], before[38:])
    assert W.dtype == dtype


@pytest.mark.parametrize("layout", ["x column-major", "x strided rows", "x every other column", "d transposed copy"])
def test_weight_grad_any_layout(ops, layout):
    """Layouts BLAS takes directly (with a transpose flag or a leading dimension) and layouts it
    cannot take (then the fallback runs): the result is the same."""
    rng = np.random.default_rng(1)
    dtype = np.float32
    d, x = _rand(rng, (32, 6), dtype), _rand(rng, (32, 5), dtype)
    if layout == "x column-major":
        x = np.asfortranarray(x)
    elif layout == "x strided rows":
        x = _rand(rng, (64, 5), dtype)[::2]
    elif layout == "x every other column":
        x = _rand(rng, (32, 10), dtype)[:, ::2]
    else:
        d = np.ascontiguousarray(d.T).T
    W = _rand(rng, (6, 5), dtype)
    want = 0.9 * W.astype(np.float64) - 0.3 * (d.astype(np.float64).T @ x)
    ops.weight_grad(d, x, W, alpha=-0.3, beta=0.9)
    _close(W, want, dtype)


def test_openblas_gemm_declines_what_it_cannot_do():
    if GEMM is None:
        pytest.skip("no bundled OpenBLAS")
    a, b = np.ones((4, 3), np.float32), np.ones((3, 2), np.float32)
    out = np.zeros((4, 2), np.float32)
    assert not GEMM(a, b.astype(np.float64), out, 1.0, 0.0)  # mixed dtypes
    assert not GEMM(a.astype(np.int32), b, out, 1.0, 0.0)  # not a float type BLAS has
    assert not GEMM(a, b, np.zeros((2, 4), np.float32).T, 1.0, 0.0)  # column-major out
    assert not GEMM(a[:, ::2], b[::2], out, 1.0, 0.0)  # no unit stride
    assert not GEMM(a[:0], b, out[:0], 1.0, 0.0)  # empty
    shared = np.zeros((4, 4), np.float32)
    assert not GEMM(shared[:, :3], b, shared[:, 2:], 1.0, 0.0)  # out overlaps an input
    assert (out == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_input_bias_grad_sq_norm(ops, dtype):
    rng = np.random.default_rng(2)
    x, W, b, d = _rand(rng, (16, 5), dtype), _rand(rng, (3, 5), dtype), _rand(rng, 3, dtype), _rand(rng, (16, 3), dtype)
    out = np.full((16, 3), np.nan, dtype)  # poisoned: an unwritten element shows
    _close(ops.linear(x, W, b, out), F.linear_forward(x, W, b), dtype)
    _close(ops.linear(x, W, None, out), F.linear_forward(x, W), dtype)
    _, dx, db = F.linear_backward(d, x, W)
    _close(ops.input_grad(d, W, np.full((16, 5), np.nan, dtype)), dx, dtype)
    _close(ops.bias_grad(d, np.full(3, np.nan, dtype)), db, dtype)
    theta = _rand(rng, 100, dtype)
    _close(ops.sq_norm(theta), (theta.astype(np.float64) ** 2).sum(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(F.ACTIVATIONS))
def test_activations_match_reference(dtype, name):
    ops = NumpyOps(gemm=None)
    rng = np.random.default_rng(3)
    z = _rand(rng, (8, 6), dtype) * 3
    z[0, :3] = [0.0, -0.0, 1e-30]  # the kink and its neighbourhood
    act = F.ACTIVATIONS[name]
    h = ops.act_forward(name, z, np.full_like(z, np.nan))
    np.testing.assert_allclose(h, act.forward(z), rtol=RTOL[dtype], atol=0)
    dh = _rand(rng, z.shape, dtype)
    want = act.backward(dh, z, act.forward(z))
    dz = ops.act_backward(name, dh, z, h, np.full_like(z, np.nan))
    np.testing.assert_allclose(dz, want, rtol=RTOL[dtype], atol=0)
    inplace = dh.copy()
    ops.act_backward(name, inplace, z, h, inplace)  # "dz may be dh"
    np.testing.assert_allclose(inplace, want, rtol=RTOL[dtype], atol=0)
    assert h.dtype == dz.dtype == dtype


def test_relu_at_the_kink_is_exact():
    ops = NumpyOps(gemm=None)
    z = np.array([[-1.0, 0.0, 1.0]], np.float32)
    h = ops.act_forward("relu", z, np.empty_like(z))
    assert h.tolist() == [[0.0, 0.0, 1.0]]
    assert ops.act_backward("relu", np.ones_like(z), z, h, np.empty_like(z)).tolist() == [[0.0, 0.0, 1.0]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", sorted(F.LOSSES))
def test_loss_grad_matches_reference(dtype, weighted, name):
    ops = NumpyOps(gemm=None)
    rng = np.random.default_rng(4)
    B, q = 9, 4
    o = _rand(rng, (B, q), dtype) * 5
    y = {"cross_entropy": lambda: rng.integers(0, q, B), "squared": lambda: _rand(rng, (B, q), dtype),
         "binary_cross_entropy": lambda: rng.uniform(0, 1, (B, q)).round(1).astype(dtype),
         "poisson": lambda: rng.poisson(3.0, (B, q)).astype(dtype)}[name]()
    w = rng.random(B).astype(dtype) + 0.1 if weighted else None
    do = np.full_like(o, np.nan)
    L = ops.loss_grad(name, o, y, w, do)
    loss = F.LOSSES[name]
    np.testing.assert_allclose(float(L), float(loss.forward(o, y, w)), rtol=RTOL[dtype])
    _close(do, loss.backward(o, y, w), dtype)
    assert do.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_with_huge_logits_is_finite(dtype):
    ops = NumpyOps(gemm=None)
    o = np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], dtype)
    y = np.array([1, 2])
    do = np.empty_like(o)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        L = ops.loss_grad("cross_entropy", o, y, None, do)
    np.testing.assert_allclose(float(L), float(F.cross_entropy_forward(o, y)), rtol=1e-6)
    np.testing.assert_allclose(do, F.cross_entropy_backward(o, y), atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", ["openblas", "fallback"])
def test_train_step_is_the_reference_update(path, dtype):
    """One fast step (the update folded into the GEMM) equals W − η(∂L/∂W + λW) from the reference
    backward pass, on both GEMM paths."""
    if path == "openblas" and GEMM is None:
        pytest.skip("no bundled OpenBLAS")
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((40, 12)), rng.integers(0, 3, 40)
    m = gpumlp.MLP((12, 16, 8, 3), weight_decay=1e-2, dtype=dtype, backend="numpy", seed=0)
    m.ops = NumpyOps(gemm=GEMM if path == "openblas" else None)
    g = m.backward(m.forward(X, y))
    want = [W.astype(np.float64) - 0.1 * dW for W, dW in zip(m.get_weights(), g.dW)]
    m.step(X, y, lr=0.1)
    for got, w in zip(m.get_weights(), want):
        _close(got, w, np.dtype(dtype).type)


def test_epoch_gathers_batches_exactly_as_a_shuffled_copy():
    """The CPU epoch gathers each batch from the permutation; it must train exactly as slicing a
    shuffled copy of the data (the GPU path) would."""
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((70, 10)).astype(np.float32), rng.integers(0, 3, 70)
    a = gpumlp.MLP((10, 8, 3), weight_decay=1e-3, backend="numpy", seed=1)
    b = gpumlp.MLP((10, 8, 3), weight_decay=1e-3, backend="numpy", seed=1)
    trainer = gpumlp.Trainer(a, batch_size=32, lr=0.05, shuffle=True)
    J = trainer.run_epoch(trainer.prepare(X, y), 0.05)
    perm = b.rng.permutation(70)  # the same draw run_epoch makes
    xs, ys = X[perm], y[perm]
    total = 0.0
    for i in range(0, 70, 32):
        x, yy, _ = b.to_device(xs[i:i + 32], ys[i:i + 32])
        total += float(b.training_step(32).train(x, yy, None, b.optimizer, 0.05)) * len(x)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert J == pytest.approx(total / 70, rel=1e-6)


# -- the in-place optimizer updates NumpyOps gives gpumlp.optim --------------------------------------

OPTIMIZER_CASES = [("sgd", dict(momentum=0.9)), ("sgd", dict(momentum=0.8, nesterov=True)),
                   ("adam", dict()), ("adam", dict(decoupled=True))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lam", [0.0, 0.01])
@pytest.mark.parametrize("name,kw", OPTIMIZER_CASES)
def test_in_place_optimizer_updates_equal_the_reference_to_the_bit(name, kw, lam, dtype):
    from gpumlp import optim
    from gpumlp._numpy_ops import NumpyOps

    rng = np.random.default_rng(3)
    theta0 = rng.normal(size=300).astype(dtype)
    ref_opt, ops_opt = optim.make_optimizer(name, **kw), optim.make_optimizer(name, **kw)
    ref_theta, ops_theta = theta0.copy(), theta0.copy()
    ops = NumpyOps()
    for step, lr in enumerate([0.1, 0.05, 0.05, 0.2]):  # a changing rate, as schedules give
        g = rng.normal(size=300).astype(dtype)
        ref_opt.update(ref_theta, g.copy(), lr, lam, 200)
        ops_opt.update(ops_theta, g.copy(), lr, lam, 200, ops)
        np.testing.assert_array_equal(ops_theta, ref_theta, err_msg=f"step {step}")
        for k, v in ref_opt.state_arrays().items():
            np.testing.assert_array_equal(ops_opt.state_arrays()[k], v, err_msg=f"{k} at step {step}")
    assert ops_theta.dtype == dtype


@pytest.mark.parametrize("name,kw", OPTIMIZER_CASES)
def test_in_place_optimizer_updates_allocate_nothing_of_parameter_size(name, kw):
    import tracemalloc

    from gpumlp import optim
    from gpumlp._numpy_ops import NumpyOps

    n = 200_000  # 800 kB of float32 parameters: any parameter-sized temporary shows
    theta, grad = np.ones(n, np.float32), np.full(n, 0.5, np.float32)
    opt, ops = optim.make_optimizer(name, **kw), NumpyOps()
    opt.update(theta, grad, 0.1, 0.01, n // 2, ops)  # first call makes the state and scratch
    tracemalloc.start()
    try:
        opt.update(theta, grad, 0.1, 0.01, n // 2, ops)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < theta.nbytes // 4, f"{peak} bytes allocated during an update of {theta.nbytes} bytes"
