"""Sparse X (SciPy CSR/CSC/COO...): accepted by every entry point without densifying it. The batches
are CSR row subsets and the first layer's two products with X stay sparse-dense (``Ops.linear``,
``Ops.weight_grad``); so a sparse run is the dense run to rounding. (On the GPU, cupyx.scipy.sparse:
tests/test_gpu.py.)"""
import numpy as np
import pytest

import gpumlp
from gpumlp._numpy_ops import NumpyOps
from gpumlp.ops import Ops

sp = pytest.importorskip("scipy.sparse", reason="SciPy is not installed")


def data(n=200, d=30, q=3, density=0.15, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=seed, data_rvs=rng.standard_normal)
    return X, rng.integers(0, q, n)


def never_densified(monkeypatch):
    """From here on, any densification of a SciPy sparse matrix or array fails the test."""
    def boom(self, *args, **kwargs):
        raise AssertionError("a sparse X was densified")

    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array, sp.csc_array):
        for name in ("toarray", "todense", "__array__"):
            monkeypatch.setattr(cls, name, boom, raising=False)


CASES = [dict(), dict(momentum=0.9, nesterov=True), dict(optimizer="adam"), dict(optimizer="lbfgs")]


@pytest.fixture
def problem():
    X, y = data()
    return X, X.toarray(), y, np.random.default_rng(1).uniform(0.5, 2.0, len(y))


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: kw.get("optimizer", "sgd") + ("-momentum" if "momentum" in kw else ""))
def test_training_on_sparse_X_follows_the_dense_run(problem, kw, monkeypatch):
    X, Xd, y, w = problem
    models = [gpumlp.MLP((30, 16, 3), bias=True, dtype="float64", backend="numpy", seed=0, weight_decay=1e-3,
                         activation="tanh", **kw) for _ in range(2)]
    fit = dict(epochs=4, batch_size=32, lr=0.05, sample_weight=w)
    models[1].fit(Xd, y, **fit)
    never_densified(monkeypatch)
    models[0].fit(X, y, **fit)
    np.testing.assert_allclose(models[0].theta, models[1].theta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(models[0].loss_curve_, models[1].loss_curve_, rtol=1e-12)
    assert models[0].loss_curve_[-1] < models[0].loss_curve_[0]
    np.testing.assert_allclose(models[0].predict_proba(X), models[1].predict_proba(Xd), rtol=1e-12)
    assert models[0].score(X, y, w) == models[1].score(Xd, y, w)
    assert models[0].objective(X, y) == pytest.approx(models[1].objective(Xd, y), rel=1e-13)


def test_every_format_is_accepted_and_early_stopping_splits_it(problem, monkeypatch):
    X, Xd, y, _ = problem
    a, b = (gpumlp.MLP((30, 8, 3), bias=True, dtype="float64", backend="numpy", seed=0) for _ in range(2))
    b.fit(Xd, y, epochs=3, early_stopping=True, validation_fraction=0.2)
    never_densified(monkeypatch)
    a.fit(sp.csc_matrix(X), y, epochs=3, early_stopping=True, validation_fraction=0.2)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-12, atol=1e-14)
    assert a.validation_curve_ == pytest.approx(b.validation_curve_, rel=1e-12)
    for fmt in (sp.coo_matrix, sp.csr_array, sp.csc_array, sp.lil_matrix):
        np.testing.assert_array_equal(a.predict(fmt(X)), b.predict(Xd))


def test_a_float32_model_takes_float64_sparse_data():
    X, y = data()
    m = gpumlp.MLP((30, 8, 3), backend="numpy", seed=0).fit(X, y, epochs=2)
    assert m.theta.dtype == np.float32 and m.predict(X).shape == (200,)
    x, _, _ = m.to_device(X)
    assert sp.issparse(x) and x.format == "csr" and x.dtype == np.float32 and x.nnz == X.nnz


@pytest.mark.parametrize("bad,err,match", [
    (lambda X: X.multiply(np.nan).tocsr(), ValueError, "NaN"),
    (lambda X: X[:, :10], ValueError, "10 features"),
    (lambda X: X[:0], ValueError, "empty"),
    (lambda X: (X * 1e300).tocsr(), ValueError, "beyond the range of float32"),
    (lambda X: X.astype(np.complex128), TypeError, "real numbers"),
])
def test_bad_sparse_input_is_refused_before_anything_changes(bad, err, match):
    X, y = data()
    m = gpumlp.MLP((30, 8, 3), backend="numpy", seed=0)
    theta = m.theta.copy()
    Xb = bad(X)
    with pytest.raises(err, match=match):
        m.fit(Xb, y[:Xb.shape[0]], epochs=1)
    np.testing.assert_array_equal(m.theta, theta)


@pytest.mark.parametrize("ops", [Ops(np), NumpyOps(), NumpyOps(gemm=None)], ids=["reference", "numpy", "fallback"])
def test_the_first_layer_products_stay_sparse(ops, monkeypatch):
    X, _ = data(n=40)
    Xd = X.toarray()
    rng = np.random.default_rng(2)
    W, b, d = rng.normal(size=(16, 30)), rng.normal(size=16), rng.normal(size=(40, 16))
    never_densified(monkeypatch)
    np.testing.assert_allclose(ops.linear(X, W, b, np.full((40, 16), np.nan)), Xd @ W.T + b, rtol=1e-13, atol=1e-13)  # other summation orders
    np.testing.assert_allclose(ops.weight_grad(d, X, np.full((16, 30), np.nan)), d.T @ Xd, rtol=1e-13, atol=1e-15)
    W2 = W.copy()  # plain SGD's folded update, W ← β W + α dᵀx, in W itself
    assert ops.weight_grad(d, X, W2, alpha=-0.1, beta=0.99) is W2
    np.testing.assert_allclose(W2, 0.99 * W - 0.1 * d.T @ Xd, rtol=1e-13, atol=1e-15)
