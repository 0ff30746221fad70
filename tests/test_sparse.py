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


# ------------------------------------------------------------------ to the GPU: cupyx's dtype rule
# cupyx.scipy.sparse holds bool, float32, float64 and complex data only (its constructor raises
# ValueError for anything else, before any cast it is asked for), so an integer matrix, such as
# CountVectorizer's int64 counts, must be cast on the host before the copy. (float16 cannot reach it:
# SciPy's sparse matrices refuse float16 themselves.) The
# stand-in below enforces that rule and keeps the data on the host; the real copy runs in tests/test_gpu.py.
CUPYX_DTYPES = {np.dtype(t) for t in (np.bool_, np.float32, np.float64, np.complex64, np.complex128)}


class StandInCupyxCSR:
    """What Backend._csr builds on the GPU: cupyx.scipy.sparse.csr_matrix(host CSR)."""

    made = []  # the dtype each construction received

    def __init__(self, host):
        StandInCupyxCSR.made.append(host.dtype)
        if host.dtype not in CUPYX_DTYPES:  # cupyx/scipy/sparse/_compressed.py
            raise ValueError("Only bool, float32, float64, complex64 and complex128 are supported")
        self._host = host.tocsr().copy()

    dtype = property(lambda self: self._host.dtype)
    shape = property(lambda self: self._host.shape)
    nnz = property(lambda self: self._host.nnz)

    def tocsr(self):
        return self

    def astype(self, dtype):
        return StandInCupyxCSR(self._host.astype(dtype))

    def get(self):
        return self._host.copy()


StandInCupyxCSR.__module__ = "cupyx.scipy.sparse._csr"  # what backend.is_sparse / is_device_array read


@pytest.fixture
def gpu_backend(monkeypatch):
    """A CuPy Backend whose sparse matrices are the stand-in's (cuSPARSE taken as loadable)."""
    import sys
    import types

    from gpumlp import backend

    sparse = types.ModuleType("cupyx.scipy.sparse")
    sparse.csr_matrix = StandInCupyxCSR
    scipy_ = types.ModuleType("cupyx.scipy")
    scipy_.sparse = sparse
    cupyx = types.ModuleType("cupyx")
    cupyx.scipy = scipy_
    for name, module in (("cupyx", cupyx), ("cupyx.scipy", scipy_), ("cupyx.scipy.sparse", sparse)):
        monkeypatch.setitem(sys.modules, name, module)
    if hasattr(backend, "CUDA_LIBRARIES"):  # (so that this file also runs against the code before it)
        monkeypatch.setitem(backend.CUDA_LIBRARIES, "cuSPARSE", ("sparse X on the GPU", lambda: None))
    StandInCupyxCSR.made.clear()
    return backend.Backend("cupy", types.SimpleNamespace(asarray=np.asarray), "stand-in")


def test_the_stand_in_enforces_cupyxs_rule():
    with pytest.raises(ValueError, match="Only bool, float32, float64"):
        StandInCupyxCSR(sp.csr_matrix(np.eye(2, dtype=np.int64)))


@pytest.mark.parametrize("source", [np.int64, np.int32, np.uint8, np.float64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_integer_sparse_X_is_cast_on_the_host_for_the_gpu(gpu_backend, source, dtype):
    counts = sp.random(20, 7, density=0.3, format="csr", random_state=1, data_rvs=lambda k: np.arange(1, k + 1))
    X = counts.astype(source)
    x = gpu_backend.asarray(X, dtype=dtype)
    assert isinstance(x, StandInCupyxCSR) and x.dtype == dtype and x.nnz == X.nnz
    assert StandInCupyxCSR.made == [np.dtype(dtype)]  # one copy, of data already in the model's dtype
    np.testing.assert_array_equal(x.get().toarray(), X.toarray().astype(dtype))


@pytest.mark.parametrize("source, expected", [(np.int64, np.float64), (np.int16, np.float32), (np.uint8, np.float32),
                                              (np.float32, np.float32), (np.bool_, np.bool_)])
def test_without_a_dtype_the_cast_is_to_a_float_that_holds_the_values_exactly(gpu_backend, source, expected):
    X = sp.csr_matrix(np.array([[0, 3], [250, 0]], dtype=source))
    x = gpu_backend.asarray(X)
    assert x.dtype == expected
    np.testing.assert_array_equal(x.get().toarray(), X.toarray().astype(expected))


def test_a_models_int64_counts_go_to_the_gpu_as_its_dtype(gpu_backend):
    """MLP.to_device on the GPU with CountVectorizer-like int64 counts: validated on the host (the
    NumPy backend takes them as they are) and cast there, then moved."""
    counts = sp.random(30, 12, density=0.2, format="csr", random_state=2, dtype=np.float64)
    X = (counts * 5).ceil().astype(np.int64)
    m = gpumlp.MLP((12, 4, 3), backend="numpy", seed=0)
    m.array_backend = gpu_backend
    x, y, _ = m.to_device(X, np.arange(30) % 3)
    assert isinstance(x, StandInCupyxCSR) and x.dtype == np.float32
    np.testing.assert_array_equal(x.get().toarray(), X.toarray().astype(np.float32))
    np.testing.assert_array_equal(y, np.arange(30) % 3)


def test_sparse_X_without_cusparse_names_it(gpu_backend, monkeypatch):
    from gpumlp import backend

    def missing():
        raise ImportError('Failure finding "libcusparse.so.12": No such file: libcusparse.so.12')

    monkeypatch.setitem(backend.CUDA_LIBRARIES, "cuSPARSE", ("sparse X on the GPU", missing))
    with pytest.raises(backend.BackendUnavailable, match=r"sparse X on the GPU needs cuSPARSE.*libcusparse"):
        gpu_backend.asarray(data()[0], dtype=np.float32)
    assert StandInCupyxCSR.made == []  # refused before any device matrix was made
