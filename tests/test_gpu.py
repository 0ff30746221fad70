"""The CuPy backend on a GPU against the NumPy reference. Marked ``gpu``: skipped (tests/conftest.py)
where CuPy or a CUDA device is missing; nothing here touches CuPy at import.

- every kernel of ``CupyOps`` (GEMMs, φ forward/backward, the fused losses of every loss, Σ/Σ², and the TF32 opt-in)
  against gpumlp.functions in float32 and float64, outputs poisoned first so an unwritten element shows;
  (the fused optimizer kernels are checked against gpumlp.optim in tests/test_optim.py);
- a full training step and a few epochs of ``fit`` against the NumPy backend from the same initial weights;
- a steady-state step allocates nothing from CuPy's memory pool and does not wait for the GPU;
- CuPy still generates, for our ElementwiseKernels, the code that tests/test_kernels_nvrtc.py compiles.

Tolerances, |gpu − reference| ≤ atol + rtol·|reference| per dtype, and why:
- elementwise φ/φ′ and the loss terms: same formulas, CUDA's libdevice vs NumPy's libm differ by ≤ 2 ulp;
  CuPy compiles with -ftz=true, so float32 results below 1.2e-38 become 0 (covered by atol) and float32
  subnormal inputs are read as ±0 (the activations' reference is evaluated at the flushed inputs, since
  relu′ of a subnormal is then φ′(0)); NVRTC fuses multiply-adds (1 − h² of tanh′ off by ≤ ½ ulp of h²,
  atol); gelu′'s amplified rounding near its tail as in tests/test_kernels_host.py (atol).
- sums (loss over the batch, Σa²): another summation order, error ~ log2(n)·eps relative.
- a training step: cuBLAS and OpenBLAS sum the k products in other orders and blockings,
  ~ √k·eps relative, so float32 ~1e-5, float64 ~1e-13 (k ≤ 1000 here).
- the GEMM kernels on their own: a product's rounding error scales with Σ_k |a_ik b_kj|, not with
  |Σ_k a_ik b_kj|, so a tolerance relative to each element fails on elements near zero (float32,
  k = 70: cuBLAS's one-FMA-per-k accumulation exceeds rtol 2e-5 + atol 2e-6 on some elements of
  this test's data). They are held to the worst-case bound of any summation order instead,
  |out − ref| ≤ (k + 2)·u·(|op(a)| |op(b)| + |terms added|), u = eps/2 (Higham, γ_k): no correct
  GEMM exceeds it, and a wrong transpose, leading dimension or unwritten element misses it by orders.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import gpumlp
from gpumlp import _kernels
from gpumlp import functions as F

pytestmark = pytest.mark.gpu

DTYPES = ["float32", "float64"]
ELEMENTWISE_TOL = {"float32": (1e-5, 5e-6), "float64": (1e-12, 1e-13)}  # (rtol, atol)
SUM_TOL = {"float32": (2e-6, 1e-7), "float64": (1e-13, 1e-15)}
GEMM_TOL = {"float32": (2e-5, 2e-6), "float64": (1e-12, 1e-14)}
POISON = 1.2345e20  # finite in both dtypes, far from any result


@pytest.fixture(scope="module")
def cp():
    import cupy

    return cupy


def make_ops(dtype, **kw):
    from gpumlp._cupy_ops import CupyOps

    return CupyOps(np.dtype(dtype), **kw)


def poisoned(cp, shape, dtype):
    return cp.full(shape, POISON, dtype)


def assert_close(got, want, tol, what=""):
    rtol, atol = tol
    got = got.get() if hasattr(got, "get") else np.asarray(got)
    np.testing.assert_allclose(got, np.asarray(want), rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


# Subnormal inputs, and inputs where tanh and sigmoid come within a few ulps of ±1 and gelu's tanh
# saturates (as tests/test_kernels_host.py's SUBNORMAL and SATURATING).
SUBNORMAL = {"float32": [1e-40, -1e-40, 1.4e-45, -1.4e-45, 1.1754942e-38, -1.1754942e-38],
             "float64": [1e-310, -1e-310, 5e-324, -5e-324, 2.2250738585072e-308, -2.2250738585072e-308]}
SATURATING = {"float32": [4, -4, 4.5, -4.5, 5.5, -5.5, 8, -8, 8.5, -8.5, 9, -9, 9.1, -9.1, 14, -14, 16, -16, 16.5,
                          -16.5, 17, -17],
              "float64": [8, -8, 9, -9, 17, -17, 18, -18, 18.5, -18.5, 19, -19, 19.5, -19.5, 33, -33, 36, -36, 36.5,
                          -36.5, 37, -37, 38, -38]}


def edge_and_random(dtype, rng):
    """5000 inputs (so that they reshape to (1000, 5)): the edges, then random values of two scales."""
    edges = [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.5, -0.5, 1, -1, 5, -5, 20, -20, 88, -88, 100, -100,
             1e4, -1e4, 1e30, -1e30, np.inf, -np.inf, np.nan] + SUBNORMAL[np.dtype(dtype).name] \
        + SATURATING[np.dtype(dtype).name]
    return np.concatenate([np.array(edges), rng.standard_normal(4000) * 3,
                           rng.standard_normal(1000 - len(edges)) * 50]).astype(dtype)


def flush_subnormals(a):
    """The values as a kernel compiled with CuPy's -ftz=true sees them: float32 subnormals as ±0."""
    a = np.array(a)
    if a.dtype == np.float32:
        sub = np.abs(a) < np.finfo(np.float32).tiny
        a[sub] = np.copysign(np.float32(0), a[sub])
    return a


# ------------------------------------------------------------------------------ φ and φ′
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", _kernels.ACTIVATIONS)
def test_activation_kernels_match_functions(cp, activation, dtype):
    ops = make_ops(dtype)
    rng = np.random.default_rng(0)
    z = edge_and_random(dtype, rng).reshape(-1, 5)  # (B, h) as in a step
    dh = rng.standard_normal(z.shape).astype(dtype)
    with np.errstate(all="ignore"):
        # The reference at the inputs as the kernel sees them: CuPy's -ftz=true reads float32 subnormals as
        # ±0, so relu′ and leaky_relu′ of a subnormal z are φ′(0) on the GPU (0 and the slope, where NumPy
        # says 1: no tolerance covers that, the flushed reference has it exactly); float32 results below
        # FLT_MIN become ±0, inside atol. NVRTC fuses 1 − h·h of tanh′ (and the products of gelu′) into
        # FMAs: ≤ ½ ulp of h² times |dh|, inside atol (tests/test_kernels_host.py's
        # test_activation_kernels_under_the_gpus_float_rules runs this comparison on a host build that
        # flushes and fuses; tests/test_kernels_nvrtc.py shows NVRTC's code does both).
        h_ref = F.ACTIVATIONS[activation].forward(flush_subnormals(z))
        dz_ref = F.ACTIVATIONS[activation].backward(dh, flush_subnormals(z), flush_subnormals(h_ref))
    zd, dhd = cp.asarray(z), cp.asarray(dh)
    h = poisoned(cp, z.shape, dtype)
    assert ops.act_forward(activation, zd, h) is h
    assert_close(h, h_ref, ELEMENTWISE_TOL[dtype], f"{activation} forward")
    dz = poisoned(cp, z.shape, dtype)
    assert ops.act_backward(activation, dhd, zd, cp.asarray(h_ref), dz) is dz
    assert_close(dz, dz_ref, ELEMENTWISE_TOL[dtype], f"{activation} backward")
    # in place, dz = dh, as Step calls it when a layer's d buffer is reused
    ops.act_backward(activation, dhd, zd, cp.asarray(h_ref), dhd)
    assert_close(dhd, dz_ref, ELEMENTWISE_TOL[dtype], f"{activation} backward in place")


def test_activation_kernels_on_strided_views(cp):
    # Non-contiguous 2-D arrays take CuPy's other template arguments (ndim 2, not contiguous).
    ops = make_ops("float64")
    z = np.random.default_rng(1).standard_normal((64, 40))
    zd = cp.asarray(z)[:, ::2]
    h = cp.asarray(np.full((64, 40), POISON))
    ops.act_forward("gelu", zd, h[:, 1::2])
    assert_close(h[:, 1::2], F.gelu_forward(z[:, ::2]), ELEMENTWISE_TOL["float64"])
    assert (h[:, ::2] == POISON).all()  # only the view was written


# ------------------------------------------------------------------------------ losses
def targets(loss, rng, B, q, dtype=np.float64):
    """Labels (cross-entropy), reals (squared), 0/1 with soft labels (binary cross-entropy), counts (Poisson)."""
    if loss == "cross_entropy":
        return rng.integers(0, q, B).astype(np.int64)
    if loss == "binary_cross_entropy":
        y = rng.integers(0, 2, (B, q)).astype(dtype)
        y.flat[::7] = 0.25
        return y
    if loss == "poisson":
        return rng.poisson(2.0, (B, q)).astype(dtype)
    return rng.standard_normal((B, q)).astype(dtype)


LOSS_SHAPES = [(1, 1), (7, 3), (33, 10), (256, 33), (9000, 10), (64, 1000)]  # q > 32 loops lanes; 9000 rows > one grid


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss", sorted(F.LOSSES))
@pytest.mark.parametrize("B,q", LOSS_SHAPES)
def test_loss_kernel_matches_functions(cp, loss, B, q, weighted, dtype):
    ops = make_ops(dtype)
    rng = np.random.default_rng(B * 1000 + q)
    o = (rng.standard_normal((B, q)) * {"cross_entropy": 30, "binary_cross_entropy": 10}.get(loss, 1)).astype(dtype)
    y = targets(loss, rng, B, q, dtype)
    if loss in ("cross_entropy", "binary_cross_entropy"):
        o[0] += 1e4  # huge logits in one row: exp would overflow without the max-shift / the stable softplus
    elif loss == "poisson":
        o[0] -= 50  # means that underflow
    w = rng.uniform(0.0, 2.0, B).astype(dtype) if weighted else None
    # reference in float64 from the same inputs: what both dtypes should approximate
    L_ref = F.LOSSES[loss].forward(o.astype(np.float64), y if loss == "cross_entropy" else y.astype(np.float64),
                                   None if w is None else w.astype(np.float64))
    do_ref = F.LOSSES[loss].backward(o.astype(np.float64), y if loss == "cross_entropy" else y.astype(np.float64),
                                     None if w is None else w.astype(np.float64))
    do = poisoned(cp, (B, q), dtype)
    args = (cp.asarray(o), cp.asarray(y), None if w is None else cp.asarray(w))
    L = ops.loss_grad(loss, *args, do)
    assert L.shape == () and L.dtype == np.dtype(dtype)
    rtol, atol = ELEMENTWISE_TOL[dtype]
    assert_close(do, do_ref, (rtol, atol / max(B, 1)), f"{loss} dL/do")
    L_first = float(L)
    assert_close(L_first, L_ref, (10 * SUM_TOL[dtype][0] + rtol, atol), f"{loss} L")
    # deterministic: the same bits again (fixed-order reduction), and the grid counter was reset
    assert float(ops.loss_grad(loss, *args, do)) == L_first


@pytest.mark.parametrize("loss", sorted(F.LOSSES))
def test_loss_kernel_of_a_batch_of_zero_weights_is_zero(cp, loss):
    # Σw = 0: L = 0 and ∂L/∂o = 0 as NumPy's loss_grad, not 0/0 = NaN.
    ops = make_ops("float32")
    rng = np.random.default_rng(12)
    B, q = 50, 3
    o = rng.standard_normal((B, q)).astype(np.float32)
    y = targets(loss, rng, B, q, np.float32)
    do = poisoned(cp, (B, q), "float32")
    L = ops.loss_grad(loss, cp.asarray(o), cp.asarray(y), cp.zeros(B, np.float32), do)
    assert float(L) == 0 and bool((do == 0).all())


def test_loss_after_a_larger_grid_is_still_right(cp):
    # The last-block counter is shared by every reducing launch; a small launch after a large one
    # must start from zero again.
    ops = make_ops("float64")
    rng = np.random.default_rng(3)
    for B in (9000, 3, 1, 500):
        o, y = rng.standard_normal((B, 4)), rng.integers(0, 4, B)
        L = ops.loss_grad("cross_entropy", cp.asarray(o), cp.asarray(y), None, cp.empty((B, 4)))
        assert_close(float(L), F.cross_entropy_forward(o, y), SUM_TOL["float64"], f"B={B}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 255, 256, 257, 100_003, 3_000_001])
def test_sq_norm_and_sum_kernels(cp, n, dtype):
    ops = make_ops(dtype)
    a = np.random.default_rng(n).standard_normal(n).astype(dtype)
    ad = cp.asarray(a)
    s = ops.sq_norm(ad)
    assert s.shape == ()
    ref = float(np.dot(a.astype(np.float64), a.astype(np.float64)))
    rtol = SUM_TOL[dtype][0] * max(1.0, np.log2(n))
    assert_close(float(s), ref, (rtol, 0), "Σa²")
    total = ops._sum(ad, square=False, out=cp.empty((), dtype))
    assert_close(float(total), float(a.astype(np.float64).sum()), (rtol, rtol * np.abs(a).sum()), "Σa")


# ------------------------------------------------------------------------------ GEMMs
def assert_gemm_close(got, ref, magnitude, k, dtype, what=""):
    """|got − ref| ≤ (k + 2)·u·magnitude per element, magnitude = |op(a)||op(b)| (+ |added terms|)
    in float64: the rounding bound of a length-k dot product in any order, plus two roundings for
    the bias or the alpha/beta combination."""
    got = got.get() if hasattr(got, "get") else np.asarray(got)
    bound = (k + 2) * np.finfo(dtype).eps / 2 * np.asarray(magnitude)
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= bound)  # NaN or poison fails too
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements off by more than the rounding bound; "
                           f"worst |err|/bound = {np.nanmax(err / np.maximum(bound, 1e-300)):.3g}")


# (B, n_in, n_out): B = 1 and n_out = 1 make (1, n) and (n, 1) arrays that are both C- and F-contiguous,
# so cupy.cublas.gemm/gemv take their column-major branch with leading dimension shape[0] = 1 or n.
GEMM_SHAPES = [(96, 70, 33), (1, 70, 33), (96, 70, 1), (1, 70, 1), (96, 1, 33)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,n_in,n_out", GEMM_SHAPES)
def test_gemm_ops_match_numpy_and_write_in_place(cp, dtype, B, n_in, n_out):
    ops = make_ops(dtype)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B, n_in)).astype(dtype)
    d = rng.standard_normal((B, n_out)).astype(dtype)
    theta = rng.standard_normal(5 + n_out * n_in + n_out + 7).astype(dtype)  # W and b inside a flat buffer
    td = cp.asarray(theta)
    W = td[5:5 + n_out * n_in].reshape(n_out, n_in)
    b = td[5 + n_out * n_in:5 + n_out * n_in + n_out]
    W0, b0 = W.get().astype(np.float64), b.get().astype(np.float64)
    x64, d64 = x.astype(np.float64), d.astype(np.float64)
    xd, dd = cp.asarray(x), cp.asarray(d)

    ax, ad, aW = np.abs(x64), np.abs(d64), np.abs(W0)

    out = poisoned(cp, (B, n_out), dtype)
    assert_gemm_close(ops.linear(xd, W, b, out), x64 @ W0.T + b0, ax @ aW.T + np.abs(b0), n_in, dtype, "linear")
    assert_gemm_close(ops.linear(xd, W, None, out), x64 @ W0.T, ax @ aW.T, n_in, dtype, "linear without bias")
    dx = poisoned(cp, (B, n_in), dtype)
    assert_gemm_close(ops.input_grad(dd, W, dx), d64 @ W0, ad @ aW, n_out, dtype, "input_grad")
    gb = poisoned(cp, (n_out,), dtype)
    assert_gemm_close(ops.bias_grad(dd, gb), d64.sum(axis=0), ad.sum(axis=0), B, dtype, "bias_grad")
    gW = poisoned(cp, (n_out, n_in), dtype)
    assert_gemm_close(ops.weight_grad(dd, xd, gW), d64.T @ x64, ad.T @ ax, B, dtype, "weight_grad")

    # The folded plain-SGD update lands in W itself, a view of θ; nothing else of θ moves.
    lr, lam = 0.05, 0.01
    ptr = W.data.ptr
    assert ops.weight_grad(dd, xd, W, alpha=-lr, beta=1.0 - lr * lam) is W and W.data.ptr == ptr
    assert_gemm_close(W, (1 - lr * lam) * W0 - lr * d64.T @ x64, (1 - lr * lam) * aW + lr * ad.T @ ax, B, dtype,
                      "folded update")
    after = td.get()
    np.testing.assert_array_equal(after[:5], theta[:5])
    np.testing.assert_array_equal(after[5 + n_out * n_in:], theta[5 + n_out * n_in:])


def test_tf32_is_opt_in_and_changes_float32_products_only_at_the_1e3_level(cp):
    major = int(cp.cuda.Device().compute_capability[:-1])
    if major < 8:
        pytest.skip("TF32 tensor cores need compute capability 8.0 or newer")
    from cupy.cuda import device
    from cupy_backends.cuda.libs import cublas

    rng = np.random.default_rng(5)
    x, W = rng.standard_normal((512, 1024)).astype(np.float32), rng.standard_normal((768, 1024)).astype(np.float32)
    ref = x.astype(np.float64) @ W.astype(np.float64).T
    errs = {}
    for tf32 in (False, True):
        ops = make_ops("float32", tf32=tf32)
        assert ops.tf32 is tf32
        handle = device.get_cublas_handle()
        mode = cublas.getMathMode(handle)
        out = ops.linear(cp.asarray(x), cp.asarray(W), None, cp.empty((512, 768), np.float32)).get()
        assert cublas.getMathMode(handle) == mode  # restored: other CuPy code is unaffected
        errs[tf32] = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert errs[False] < 1e-5
    assert 10 * errs[False] < errs[True] < 1e-2, errs  # TF32 engaged, with its documented cost
    assert make_ops("float64", tf32=True).tf32 is False  # no effect on float64


# ------------------------------------------------------------------------------ training
STEP_CASES = [
    dict(activation=a) for a in _kernels.ACTIVATIONS
] + [
    dict(loss="squared"),
    dict(loss="binary_cross_entropy"),
    dict(loss="poisson", sizes=(20, 48, 1), activation="tanh"),
    dict(optimizer="sgd", momentum=0.9),
    dict(optimizer="sgd", momentum=0.9, nesterov=True),
    dict(optimizer="adam"),
    dict(optimizer="adam", decoupled=True),
    dict(bias=False, weight_decay=0.0),
    dict(sizes=(20, 32, 16, 3), activation=["tanh", "gelu"]),
]


def _pair(dtype, **kw):
    kw = dict(kw)
    sizes = kw.pop("sizes", (20, 48, 5))
    base = dict(bias=True, weight_decay=1e-2, seed=3, dtype=dtype)
    base.update(kw)
    return [gpumlp.MLP(sizes, backend=b, **base) for b in ("numpy", "cupy")]


def _data(m, B, rng, weighted=False):
    X = rng.standard_normal((B, m.sizes[0]))
    y = targets(m.loss, rng, B, m.sizes[-1])
    w = rng.uniform(0.2, 2.0, B) if weighted else None
    return X, y, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", STEP_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_training_steps_match_the_numpy_backend(kw, dtype):
    ref, gpu = _pair(dtype, **kw)
    for a, b in zip(ref.get_weights(), gpu.get_weights()):
        np.testing.assert_array_equal(a, b)  # the same initial weights on both backends
    rng = np.random.default_rng(6)
    tol = GEMM_TOL[dtype]
    for step in range(3):
        X, y, w = _data(ref, 40, rng, weighted=step == 1)
        J_ref = ref.step(X, y, lr=0.05, sample_weight=w)
        J_gpu = gpu.step(X, y, lr=0.05, sample_weight=w)
        np.testing.assert_allclose(J_gpu, J_ref, rtol=10 * tol[0], err_msg=f"J at step {step}")
        for l, (a, b) in enumerate(zip(ref.get_weights(), gpu.get_weights())):
            np.testing.assert_allclose(b, a, rtol=10 * tol[0], atol=10 * tol[1], err_msg=f"W{l + 1} after step {step}")
        if ref.bias:
            for a, b in zip(ref.get_biases(), gpu.get_biases()):
                np.testing.assert_allclose(b, a, rtol=10 * tol[0], atol=10 * tol[1], err_msg=f"b after step {step}")


def test_fit_epochs_match_the_numpy_backend():
    """A few shuffled epochs of fit (plain SGD: the update folded into the GEMM, biases, λ, sample
    weights, a remainder batch) in float64 follow the NumPy backend's trajectory."""
    ref, gpu = _pair("float64", activation="relu")
    rng = np.random.default_rng(7)
    X, y, w = _data(ref, 203, rng, weighted=True)
    for m in (ref, gpu):
        m.fit(X, y, epochs=4, batch_size=32, lr=0.1, sample_weight=w)
    np.testing.assert_allclose(gpu.loss_curve_, ref.loss_curve_, rtol=1e-10)
    for a, b in zip(ref.get_weights(), gpu.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    assert ref.loss_curve_[-1] < ref.loss_curve_[0]  # it trained: the comparison is not of a no-op


def test_fit_float32_tracks_numpy(cp):
    ref, gpu = _pair("float32", activation="gelu", optimizer="sgd", momentum=0.9)
    X, y, _ = _data(ref, 256, np.random.default_rng(8))
    for m in (ref, gpu):
        m.fit(X, y, epochs=3, batch_size=64, lr=1e-2)
    np.testing.assert_allclose(gpu.loss_curve_, ref.loss_curve_, rtol=1e-4)


def test_backward_api_still_returns_every_gradient_on_the_gpu():
    ref, gpu = _pair("float64")
    X, y, _ = _data(ref, 16, np.random.default_rng(9))
    g_ref, g_gpu = (m.backward(m.forward(X, y)) for m in (ref, gpu))
    for name in ("dW", "dh", "dz", "db"):
        for a, b in zip(getattr(g_ref, name), getattr(g_gpu, name)):
            np.testing.assert_allclose(b.get(), a, rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(g_gpu.do.get(), g_ref.do, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------ L-BFGS and sparse inputs
def test_lbfgs_on_the_gpu_follows_the_numpy_backend():
    """Full-batch L-BFGS in float64, J and ∂J/∂θ computed on the device: the NumPy run's iterates (the
    two backends' products round differently, so the line searches see slightly different values)."""
    pytest.importorskip("scipy.optimize", reason="SciPy is not installed (pip install gpumlp[lbfgs])")
    ref, gpu = _pair("float64", optimizer="lbfgs", activation="tanh")
    X, y, w = _data(ref, 300, np.random.default_rng(13), weighted=True)
    for m in (ref, gpu):
        m.fit(X, y, epochs=15, sample_weight=w)
    assert gpu.epochs_ == ref.epochs_ == 15
    np.testing.assert_allclose(gpu.loss_curve_, ref.loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(gpu.theta.get(), ref.theta, rtol=1e-6, atol=1e-8)


def test_an_lbfgs_evaluation_moves_theta_in_and_the_gradient_out(monkeypatch):
    from gpumlp import backend as backend_module
    from gpumlp.lbfgs import Objective

    m = gpumlp.MLP((20, 32, 5), backend="cupy", optimizer="lbfgs", bias=True, seed=0)
    x, y, _ = m.to_device(*_data(m, 64, np.random.default_rng(14))[:2])
    f = Objective(m, x, y)
    f(np.zeros(m.theta.size))  # warm-up: kernels compiled
    calls = []
    for name in ("asarray", "to_host"):
        original = getattr(backend_module.Backend, name)
        monkeypatch.setattr(backend_module.Backend, name,
                            lambda self, a, *args, _f=original, _n=name, **kw: calls.append(_n) or _f(self, a, *args, **kw))
    J, g = f(np.full(m.theta.size, 0.01))
    assert calls == ["asarray", "to_host"] and np.isfinite(J) and g.shape == (m.theta.size,)


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_sparse_training_on_the_gpu_follows_the_dense_run(cp, optimizer):
    """Host SciPy CSR (moved once as a cupyx CSR) and cupyx CSR given directly: cuSPARSE products for
    the first layer, the dense run's weights to rounding."""
    sp = pytest.importorskip("scipy.sparse", reason="SciPy is not installed")
    if optimizer == "lbfgs":
        pytest.importorskip("scipy.optimize", reason="SciPy is not installed (pip install gpumlp[lbfgs])")
    import cupyx.scipy.sparse as csp

    rng = np.random.default_rng(15)
    X = sp.random(300, 40, density=0.1, format="csr", random_state=15, data_rvs=rng.standard_normal)
    y = rng.integers(0, 5, 300)
    runs = []
    for Xin in (X.toarray(), X, csp.csr_matrix(X)):
        m = gpumlp.MLP((40, 32, 5), backend="cupy", dtype="float64", optimizer=optimizer, bias=True, seed=3,
                       weight_decay=1e-3, activation="tanh")
        m.fit(Xin, y, epochs=5, batch_size=32, lr=0.05)
        runs.append(m)
    assert isinstance(runs[1].to_device(X)[0], csp.csr_matrix)  # moved to the device as it is: sparse
    for m in runs[1:]:
        np.testing.assert_allclose(m.theta.get(), runs[0].theta.get(), rtol=1e-9, atol=1e-11)
        np.testing.assert_array_equal(m.predict(X), runs[0].predict(X.toarray()))


def test_integer_sparse_counts_train_on_the_gpu_as_their_float_values(cp):
    """cupyx holds no integer data: an int64 CSR matrix (CountVectorizer's output) is cast on the host and
    trains as the dense float matrix of the same counts does."""
    sp = pytest.importorskip("scipy.sparse", reason="SciPy is not installed")
    rng = np.random.default_rng(17)
    counts = sp.random(200, 30, density=0.2, format="csr", random_state=17,
                       data_rvs=lambda k: rng.integers(1, 6, k)).astype(np.int64)
    y = rng.integers(0, 3, 200)
    runs = []
    for Xin in (counts, counts.toarray().astype(np.float64)):
        m = gpumlp.MLP((30, 16, 3), backend="cupy", dtype="float64", bias=True, seed=4, weight_decay=1e-3)
        m.fit(Xin, y, epochs=3, batch_size=32, lr=0.05)
        runs.append(m)
    np.testing.assert_allclose(runs[0].theta.get(), runs[1].theta.get(), rtol=1e-9, atol=1e-11)


def test_the_estimators_parameters_on_the_gpu_are_written_back_when_edited():
    """With CuPy, coefs_/intercepts_ are host copies: an in-place edit reaches the device before the
    estimator next uses the model; assignment copies in at once; a fresh fit forgets the old lists."""
    pytest.importorskip("sklearn")
    from gpumlp.sklearn import MLPClassifier

    rng = np.random.default_rng(16)
    X, y = rng.standard_normal((60, 4)), rng.integers(0, 3, 60)
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0, backend="cupy").fit(X, y)
    coefs, intercepts = clf.coefs_, clf.intercepts_
    assert isinstance(coefs[0], np.ndarray)
    coefs[1][:] = 0
    intercepts[1][:] = [1.0, 2.0, 3.0]
    np.testing.assert_allclose(clf.predict_proba(X), np.tile(np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum(), (60, 1)),
                               rtol=1e-6)
    np.testing.assert_array_equal(clf.model_.get_weights()[1], 0)
    clf.coefs_[0] = np.ones((4, 5))
    np.testing.assert_array_equal(clf.model_.get_weights()[0], 1)


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_the_estimators_on_the_gpu_follow_the_numpy_backend(solver):
    pytest.importorskip("sklearn")
    from gpumlp.sklearn import MLPClassifier

    rng = np.random.default_rng(17)
    X, y = rng.standard_normal((200, 8)), rng.integers(0, 2, 200)
    fits = [MLPClassifier(solver=solver, hidden_layer_sizes=(16,), max_iter=10, random_state=0, backend=b,
                          batch_size=50).fit(X, y) for b in ("numpy", "cupy")]
    assert fits[1].n_outputs_ == 1 and fits[1].out_activation_ == "logistic"
    np.testing.assert_allclose(fits[1].loss_curve_, fits[0].loss_curve_, rtol=1e-9)
    for a, b in zip(fits[0].coefs_, fits[1].coefs_):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------------------ no allocation, no sync
ALLOC_CASES = [dict(), dict(optimizer="sgd", momentum=0.9), dict(optimizer="adam"), dict(loss="squared"),
               dict(weighted=True), dict(loss="binary_cross_entropy", weighted=True)]


@pytest.mark.parametrize("phases", ["train", "gradients+apply"])
@pytest.mark.parametrize("kw", ALLOC_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "sgd")
def test_a_training_step_allocates_nothing(cp, kw, phases):
    """Step.train (plain SGD fused) and the two phases taken apart (the seam a data-parallel trainer
    uses) ask CuPy's pool for nothing after warm-up."""
    kw = dict(kw)
    weighted = kw.pop("weighted", False)
    m = gpumlp.MLP((30, 64, 32, 4), backend="cupy", bias=True, weight_decay=1e-3, seed=0, **kw)
    X, y, w = _data(m, 128, np.random.default_rng(10), weighted)
    x, yy, wd = m.to_device(X, y, w)
    step = m.training_step(128)

    def one():
        if phases == "train":
            return step.train(x, yy, wd, m.optimizer, 0.01)
        J = step.gradients(x, yy, wd)
        step.apply(m.optimizer, 0.01)
        return J

    for _ in range(2):  # warm-up: kernels compiled, workspace and optimizer state made
        one()
    cp.cuda.get_current_stream().synchronize()

    class CountMallocs(cp.cuda.MemoryHook):
        name = "gpumlp_count_mallocs"

        def __init__(self):
            self.sizes = []

        def malloc_preprocess(self, **kwargs):  # every request to CuPy's pool, cached or not
            self.sizes.append(kwargs["size"])

    pool = cp.get_default_memory_pool()
    used = pool.used_bytes()
    with CountMallocs() as hook:
        for _ in range(3):
            J = one()
    assert hook.sizes == [], f"a step asked CuPy's memory pool for {hook.sizes} bytes"
    assert pool.used_bytes() == used
    assert np.isfinite(float(J))


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_adam_update_replays_from_a_cuda_graph(cp, dtype):
    """Adam's step count and bias corrections live on the device (kernels/optim.cu), so its update
    launch can be captured once in a CUDA graph and replayed: two replays after one direct launch must
    give what three direct launches give, and the counter must read 3 (a host-side count would stay
    frozen).

    The streams are ordered explicitly: the uploads, the zeroed state and the first update run on the
    current (legacy default) stream, the graph on a non-blocking stream, which does not wait for the
    default stream by itself. The capture stream waits on an event recorded after that work, before
    the capture and so before each launch queued behind it."""
    from gpumlp._cupy_ops import CupyOps

    ops = CupyOps(dtype)
    rng = np.random.default_rng(12)
    n, n_decay = 5000, 4000
    theta0, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    runs = []
    for replay in (False, True):
        theta, grad = cp.asarray(theta0), cp.asarray(g)
        m, v, step = cp.zeros_like(theta), cp.zeros_like(theta), cp.zeros(1, np.int64)
        args = (theta, grad, m, v, step, 1e-3, 1e-2, n_decay, 0.9, 0.999, 1e-8, False)
        if not replay:
            for _ in range(3):
                ops.adam_update(*args)
        else:
            ops.adam_update(*args)  # compiled, and step 1 taken outside the graph (on the default stream)
            uploaded = cp.cuda.Event(disable_timing=True)
            uploaded.record(cp.cuda.get_current_stream())
            stream = cp.cuda.Stream(non_blocking=True)
            stream.wait_event(uploaded)  # queued before the capture: every launch below waits for it
            with stream:
                stream.begin_capture()
                ops.adam_update(*args)
                graph = stream.end_capture()
            graph.launch(stream)
            graph.launch(stream)
            stream.synchronize()
        runs.append((theta.get(), int(step.get()[0])))
    (direct, t_direct), (replayed, t_replayed) = runs
    assert t_direct == t_replayed == 3
    np.testing.assert_array_equal(replayed, direct)


SPIN = r"""
extern "C" __global__ void gpumlp_test_spin(long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < (unsigned long long)ns);
}
"""


def test_a_training_step_does_not_wait_for_the_gpu(cp):
    """Queue 0.5 s of GPU work, then a step: the step must return while that work still runs."""
    spin = cp.RawKernel(SPIN, "gpumlp_test_spin")
    m = gpumlp.MLP((30, 64, 4), backend="cupy", bias=True, weight_decay=1e-3, seed=0, optimizer="adam")
    X, y, _ = _data(m, 64, np.random.default_rng(11))
    x, yy, _ = m.to_device(X, y)
    step = m.training_step(64)
    spin((1,), (1,), (np.int64(0),))
    step.train(x, yy, None, m.optimizer, 0.01)
    cp.cuda.get_current_stream().synchronize()
    spun = cp.cuda.Event(disable_timing=True)
    t0 = time.perf_counter()
    spin((1,), (1,), (np.int64(500_000_000),))
    spun.record()
    for _ in range(3):
        step.train(x, yy, None, m.optimizer, 0.01)
    host = time.perf_counter() - t0
    still_running = not spun.done
    cp.cuda.get_current_stream().synchronize()
    assert still_running and host < 0.4, f"the step waited for the GPU ({host:.3f} s on the host)"


def test_the_progress_hook_is_called_while_the_gpu_still_works(cp):
    """Trainer(on_step=...) reads nothing from the device: its calls come while queued work still runs."""
    spin = cp.RawKernel(SPIN, "gpumlp_test_spin")
    m = gpumlp.MLP((30, 64, 4), backend="cupy", seed=0, momentum=0.9)
    X, y, _ = _data(m, 640, np.random.default_rng(12))
    spun = cp.cuda.Event(disable_timing=True)
    seen = []
    # shuffle=False: the epoch uploads no permutation (a pageable copy that may wait), so what is timed
    # here is the steps and the hook alone
    trainer = gpumlp.Trainer(m, batch_size=64, lr=0.01, shuffle=False, step_interval=1,
                             on_step=lambda k, n: seen.append((k, n, spun.done)))
    data = trainer.prepare(X, y)
    trainer.run_epoch(data, 0.01)  # warm-up: workspaces, kernels
    spun.record()
    cp.cuda.get_current_stream().synchronize()
    seen.clear()
    spin((1,), (1,), (np.int64(500_000_000),))
    spun.record()
    trainer.run_epoch(data, 0.01)  # its one read-back, at the end, waits for the spin and the steps
    assert [k for k, _, _ in seen] == list(range(1, 11)) and all(n == 10 for _, n, _ in seen)
    assert not any(done for _, _, done in seen), "on_step waited for the GPU"


def test_a_command_line_run_on_the_gpu_predicts_from_python_on_either_backend(tmp_path):
    from gpumlp import cli

    X, y = gpumlp.data.load_digits()
    path = tmp_path / "m.npz"
    assert cli.main(["train", "--backend", "cupy", "--epochs", "5", "--progress", "bar", "--save", str(path)]) == 0
    gpu, cpu = gpumlp.load(path, backend="cupy"), gpumlp.load(path, backend="numpy")
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), rtol=1e-4, atol=1e-6)
    assert np.mean(gpu.predict(X) == cpu.predict(X)) > 0.995 and gpu.score(X, y) > 0.95


# ------------------------------------------------------------------------------ kernels as built
def test_cupy_generates_the_code_the_nvrtc_test_compiles(cp):
    """tests/test_kernels_nvrtc.py compiles our ElementwiseKernels in a hand-written copy of CuPy's
    wrapper; here CuPy's own generated code (for contiguous float arrays) must be that copy."""
    from test_kernels_nvrtc import cupy_style_source  # tests/ is on sys.path under pytest

    assert _kernels.elementwise("gpumlp_gelu_forward") is _kernels.elementwise("gpumlp_gelu_forward")  # once per device
    kernel = _kernels.make_elementwise("gpumlp_gelu_forward")  # a fresh object: its first call fills cached_code
    z = cp.asarray(np.linspace(-3, 3, 64, dtype=np.float32).reshape(8, 8))  # contiguous: CuPy makes it 1-D
    kernel(z, cp.empty_like(z))
    ours = cupy_style_source([kernel], "float", ndim=1, c_contiguous=True, index_32_bits=True)
    ours = "\n".join(line for line in ours.splitlines() if not line.startswith("#include <cupy/"))
    assert " ".join(kernel.cached_code.split()) == " ".join(ours.split())


@pytest.mark.parametrize("shuffle,early_stopping", [(True, False), (False, False), (True, True)])
def test_streamed_training_data_give_the_same_run_as_resident_data(cp, monkeypatch, shuffle, early_stopping):
    """Data that do not fit on the device stream through pinned memory (gpumlp._stream): forced here
    by a zero device share, the run must be the resident run bit for bit (same batches, same kernels;
    only where the rows come from differs), including a remainder batch and the early-stopping split."""
    from gpumlp import _stream

    X, y, w = _data(gpumlp.MLP((12, 16, 4), backend="numpy"), 203, np.random.default_rng(11), weighted=True)
    kw = dict(epochs=3, batch_size=32, lr=0.1, shuffle=shuffle, sample_weight=w, early_stopping=early_stopping)
    runs = []
    for share in (_stream.DEVICE_SHARE, 0.0):
        monkeypatch.setattr(_stream, "DEVICE_SHARE", share)
        m = gpumlp.MLP((12, 16, 4), backend="cupy", dtype="float32", seed=5, weight_decay=1e-3, momentum=0.9)
        m.fit(X, y, **kw)
        runs.append(m)
    resident, streamed = runs
    assert streamed.loss_curve_ == resident.loss_curve_
    for a, b in zip(resident.get_weights(), streamed.get_weights()):
        np.testing.assert_array_equal(b, a)
