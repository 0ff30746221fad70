"""Arrays of other libraries (torch, JAX, ...) through DLPack (gpumlp.validation.as_array), into fit, partial_fit,
predict, predict_proba and score of the model, the Pipeline and the estimators.

- Host memory becomes a NumPy view of the producer's buffer: the array the model computes with shares its memory
  (where the model's dtype is the array's; a cast makes one copy, in the model's dtype), and every layout DLPack
  describes (transposed, strided, reversed, broadcast) gives the results of the same values as a NumPy array.
- CUDA memory goes to CuPy (``cupy.from_dlpack``) and stays on the device; here on the strict CuPy stand-in
  (tests/cupy_standin.py), whose ``from_dlpack`` takes CUDA memory only, as real CuPy's. A producer whose
  ``__dlpack_device__`` says CUDA but whose capsule holds host memory shows which way an array was routed: the
  NumPy reader would read it all the same, so every routing is asserted, not inferred from the values.
- A model on NumPy refuses CUDA memory (a TypeError saying how to move it), as PyTorch and scikit-learn do.
"""
from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest

import cupy_standin
import gpumlp
from gpumlp import backend as backend_module
from gpumlp import validation
from test_kernels_host import grid_lib, lib, standin  # noqa: F401 (fixtures: the stand-in with its kernels)

torch = pytest.importorskip("torch")  # in the test extra: installed wherever the suite runs in CI

CPU, CUDA = (1, 0), (2, 0)


class DLPackOnly:
    """An array of some other library as gpumlp meets it: nothing but ``__dlpack__`` and ``__dlpack_device__``
    (no ``__array__``, no shape, no dtype), over a NumPy array's memory; ``device`` is what it reports."""

    def __init__(self, a, device=CPU):
        self.a, self.device, self.exports = a, device, 0

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        self.exports += 1
        return self.a.__dlpack__(max_version=max_version, dl_device=dl_device, copy=copy)

    def __dlpack_device__(self):
        return self.device


def _data(n=60, d=5, q=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, q, n), rng.uniform(0.5, 2.0, n)


KINDS = {
    "dlpack": lambda a: DLPackOnly(a),
    "torch": lambda a: torch.from_numpy(a),  # shares a's memory
}


# ------------------------------------------------------------------------------ reading: as_array
LAYOUTS = ["contiguous", "transposed", "strided", "reversed", "broadcast"]


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # torch.from_numpy of a broadcast
@pytest.mark.parametrize("kind,layout", [(k, lay) for k in sorted(KINDS) for lay in LAYOUTS
                                         if (k, lay) != ("torch", "reversed")])  # torch has no negative strides
def test_host_memory_is_read_as_a_view_of_the_producers_buffer_in_any_layout(kind, layout):
    base = np.arange(48.0).reshape(6, 8)
    a = {"contiguous": base, "transposed": base.T, "strided": base[:, ::3], "reversed": base[::-1],
         "broadcast": np.broadcast_to(base[0], (5, 8))}[layout]
    got = validation.as_array(KINDS[kind](a), "X")
    assert type(got) is np.ndarray and np.shares_memory(got, base)
    np.testing.assert_array_equal(got, a)  # the values where DLPack says they are, never reinterpreted
    assert got.strides == a.strides


def test_what_cannot_be_read_exactly_is_refused_naming_the_argument():
    a = np.arange(12.0).reshape(3, 4)
    cases = [
        (DLPackOnly(a.astype(">f8")), TypeError, r"X \(test_dlpack.DLPackOnly\) could not be read.*byte order"),
        (torch.zeros(3, 4, dtype=torch.bfloat16), TypeError, r"X \(torch.Tensor of dtype torch.bfloat16\)"),
        (torch.zeros(3, 4, requires_grad=True), TypeError, r"X \(torch.Tensor.*detach"),
        (DLPackOnly(a, (8, 0)), TypeError, r"X \(test_dlpack.DLPackOnly\) is on a Metal device"),
        (DLPackOnly(a, (10, 0)), TypeError, "ROCm device"),
        (torch.zeros(3, 4, device="meta"), TypeError, r"X \(torch.Tensor.*"),
    ]
    for producer, error, message in cases:
        with pytest.raises(error, match=message):
            gpumlp.MLP((4, 2), backend="numpy").predict(producer)


def test_a_model_on_numpy_refuses_device_memory_and_says_how_to_move_it():
    m = gpumlp.MLP((4, 3), backend="numpy", seed=0)
    X, y, w = _data(d=4)
    cuda = DLPackOnly(X, CUDA)
    calls = [lambda: m.predict(cuda), lambda: m.predict_proba(cuda), lambda: m.score(cuda, y),
             lambda: m.score(X, DLPackOnly(y, CUDA)), lambda: m.fit(cuda, y, epochs=1),
             lambda: m.partial_fit(cuda, y), lambda: m.fit(X, y, validation_data=(cuda, y), epochs=1),
             lambda: gpumlp.Pipeline(m).predict(cuda), lambda: gpumlp.Pipeline(m).score(X, DLPackOnly(y, CUDA))]
    theta = m.theta.copy()
    for call in calls:
        with pytest.raises(TypeError, match=r"in CUDA memory \(cuda:0\).*backend='numpy'.*tensor.cpu\(\).*"
                                            r"backend='cupy'"):
            call()
    np.testing.assert_array_equal(m.theta, theta)
    assert m.epochs_ == 0 and cuda.exports == 0  # refused from __dlpack_device__ alone: nothing was read
    standin_array = type("ndarray", (np.ndarray,), {"__module__": "cupy._core.core"})
    with pytest.raises(TypeError, match=r"a CuPy array \(GPU memory\).*cupy.asnumpy"):
        m.predict(X.view(standin_array))


def test_cuda_memory_without_cupy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(TypeError, match="reads through CuPy, and CuPy cannot run here"):
        validation.as_array(DLPackOnly(np.ones((2, 2)), CUDA), "X")


# ------------------------------------------------------------------------------ the model on NumPy
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_inference_from_other_libraries_equals_numpys(kind):
    X, y, w = _data()
    wrap = KINDS[kind]
    for loss, target in (("cross_entropy", y), ("squared", X[:, :3].copy()), ("binary_cross_entropy", (X[:, :3] > 0)
                                                                                  .astype(np.float64))):
        m = gpumlp.MLP((5, 7, 3), loss=loss, bias=True, backend="numpy", dtype="float64", seed=1)
        np.testing.assert_array_equal(m.predict(wrap(X)), m.predict(X))
        np.testing.assert_array_equal(m.decision_function(wrap(X)), m.decision_function(X))
        assert m.score(wrap(X), wrap(target), wrap(w)) == m.score(X, target, w)
        assert m.objective(wrap(X), wrap(target)) == m.objective(X, target)
        if loss != "squared":
            np.testing.assert_array_equal(m.predict_proba(wrap(X)), m.predict_proba(X))


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "lbfgs"])
def test_training_from_other_libraries_equals_numpys_bit_for_bit(kind, optimizer):
    X, y, w = _data()
    wrap = KINDS[kind]
    runs = []
    for convert in (lambda a: a, wrap):
        m = gpumlp.MLP((5, 7, 3), bias=True, backend="numpy", dtype="float64", seed=1, optimizer=optimizer)
        m.fit(convert(X), convert(y), epochs=3, batch_size=16, sample_weight=convert(w),
              validation_data=(convert(X[:20]), convert(y[:20]), convert(w[:20])))
        if optimizer != "lbfgs":
            m.partial_fit(convert(X), convert(y), classes=convert(np.arange(3)), sample_weight=convert(w))
        runs.append(m)
    np.testing.assert_array_equal(runs[1].theta, runs[0].theta)
    assert runs[1].validation_loss_curve_ == runs[0].validation_loss_curve_


@pytest.fixture
def computed_with(monkeypatch):
    """The arrays the model computes with: fit's prepared training data (what Trainer.run gets) and the x that
    inference runs its forward pass on (MLP._outputs), recorded as they pass."""
    seen = {"fit": [], "predict": []}
    run, outputs = gpumlp.Trainer.run, gpumlp.MLP._outputs

    def record_run(self, data, *args, **kwargs):
        seen["fit"].append(data)
        return run(self, data, *args, **kwargs)

    def record_outputs(self, x, *args, **kwargs):
        seen["predict"].append(x)
        return outputs(self, x, *args, **kwargs)

    monkeypatch.setattr(gpumlp.Trainer, "run", record_run)
    monkeypatch.setattr(gpumlp.MLP, "_outputs", record_outputs)
    return seen


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_host_memory_is_not_copied_where_the_dtype_allows(kind, dtype, computed_with):
    """fit and predict compute on the producer's buffer itself when it holds the model's dtype (labels: int64).
    Otherwise fit trains on one cast copy in the model's dtype; predict casts float32 data for a float64 model
    chunk by chunk (8192 rows) from the view, and float64 data for a float32 model at once (the range check)."""
    X, y, _ = _data()
    x32 = X.astype(np.float32)
    wrap = KINDS[kind]
    for data in (X, x32):
        m = gpumlp.MLP((5, 7, 3), backend="numpy", dtype=dtype, seed=0)
        m.fit(wrap(data), wrap(y), epochs=1)
        m.predict(wrap(data))
        m.predict(wrap(data.T.copy().T))  # a Fortran-ordered buffer: a strided view, read as it is
        prepared, (x_predict, x_fortran) = computed_with["fit"][-1], computed_with["predict"][-2:]
        same, wider = data.dtype == m.dtype, data.dtype.itemsize > m.dtype.itemsize
        assert np.shares_memory(prepared.x, data) is same and prepared.x.dtype == m.dtype
        assert np.shares_memory(x_predict, data) is not wider
        assert x_predict.dtype == (m.dtype if wider else data.dtype)
        assert np.shares_memory(prepared.y, y)  # int64 labels, as the model keeps them
        assert wider or not x_fortran.flags.c_contiguous
    assert np.shares_memory(gpumlp.MLP((5, 3), backend="numpy", dtype="float64").forward(wrap(X)).x, X)


def test_read_only_memory_is_never_written():
    """JAX arrays and broadcast views come in read-only: training and inference only read X, y and w."""
    X, y, w = _data()
    frozen = [a.copy() for a in (X, y, w)]
    for a in frozen:
        a.flags.writeable = False
    m = gpumlp.MLP((5, 7, 3), backend="numpy", dtype="float64", seed=0)
    m.fit(DLPackOnly(frozen[0]), DLPackOnly(frozen[1]), epochs=2, sample_weight=DLPackOnly(frozen[2]))
    row = np.broadcast_to(X[0], (4, 5))
    np.testing.assert_array_equal(m.predict(DLPackOnly(row)), m.predict(np.ascontiguousarray(row)))


def test_torch_tensors_of_other_dtypes_and_layouts():
    X, y, _ = _data()
    m = gpumlp.MLP((5, 7, 3), backend="numpy", dtype="float32", seed=0)
    t = torch.from_numpy(X)
    np.testing.assert_array_equal(m.predict(t.half()), m.predict(t.half().numpy()))  # float16: cast on the host
    np.testing.assert_array_equal(m.predict(t.T.contiguous().T), m.predict(X))  # column-major storage
    np.testing.assert_array_equal(m.predict(torch.from_numpy(np.ascontiguousarray(X[:, ::-1])).flip(1)), m.predict(X))
    assert m.score(t, torch.from_numpy(y).int()) == m.score(X, y)  # int32 labels
    assert m.score(t, torch.from_numpy(y).double()) == m.score(X, y)  # float labels holding integers
    with pytest.raises(ValueError, match=r"y labels must lie in \[0, 3\)"):
        m.score(t, torch.from_numpy(y) + 5)


# ------------------------------------------------------------------------------ the Pipeline and the estimators
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_pipeline_reads_other_libraries(kind):
    X, y, w = _data()
    wrap = KINDS[kind]
    scaler = gpumlp.data.Scaler("standard").fit(X)
    m = gpumlp.MLP((5, 7, 3), backend="numpy", dtype="float64", seed=0)
    p = gpumlp.Pipeline(m, scaler=scaler, classes=np.array([3, 7, 11]))
    labels = np.array([3, 7, 11])[y]
    np.testing.assert_array_equal(p.predict(wrap(X)), p.predict(X))
    np.testing.assert_array_equal(p.predict_proba(wrap(X)), p.predict_proba(X))
    assert p.score(wrap(X), wrap(labels), wrap(w)) == p.score(X, labels, w)
    r = gpumlp.Pipeline(gpumlp.MLP((5, 7, 2), loss="squared", backend="numpy", dtype="float64", seed=0),
                        target_scaler=gpumlp.data.Scaler("standard").fit(X[:, :2]))
    assert r.score(wrap(X), wrap(X[:, :2].copy()), wrap(w)) == r.score(X, X[:, :2], w)


def _quiet_fit(est, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after a few iterations
        return est.fit(*args, **kwargs)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_estimators_read_other_libraries_without_a_copy(kind, computed_with):
    pytest.importorskip("sklearn")
    from gpumlp.sklearn import MLPClassifier, MLPRegressor

    X, y, w = _data()
    wrap = KINDS[kind]
    results = []
    for convert in (lambda a: a, wrap):
        c = _quiet_fit(MLPClassifier(hidden_layer_sizes=(6,), max_iter=3, backend="numpy", random_state=0),
                       convert(X), convert(y), sample_weight=convert(w))
        c.partial_fit(convert(X), convert(y))
        r = _quiet_fit(MLPRegressor(hidden_layer_sizes=(6,), max_iter=3, backend="numpy", random_state=0),
                       convert(X), convert(X[:, 0].copy()))
        results.append((c.predict(convert(X)), c.predict_proba(convert(X)), c.score(convert(X), convert(y),
                        convert(w)), r.predict(convert(X)), r.score(convert(X), convert(X[:, 0].copy()))))
        assert np.shares_memory(computed_with["fit"][-1].x, X)  # the regressor's fit: X itself
        assert np.shares_memory(computed_with["predict"][-1], X)
    for ours, theirs in zip(*results):
        np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(TypeError, match=r"in CUDA memory.*backend='numpy'"):
        c.predict(DLPackOnly(X, CUDA))
    c2 = MLPClassifier(hidden_layer_sizes=(6,), max_iter=3, backend="numpy", random_state=0)
    with pytest.raises(TypeError, match=r"in CUDA memory.*backend='numpy'"):
        c2.fit(DLPackOnly(X, CUDA), y)
    assert not hasattr(c2, "n_features_in_") and not hasattr(c2, "classes_")


def test_partial_fit_classes_from_another_library():
    pytest.importorskip("sklearn")
    from gpumlp.sklearn import MLPClassifier

    X, y, _ = _data()
    c = MLPClassifier(hidden_layer_sizes=(6,), backend="numpy", random_state=0)
    c.partial_fit(DLPackOnly(X), DLPackOnly(y), classes=DLPackOnly(np.arange(3)))
    np.testing.assert_array_equal(c.classes_, [0, 1, 2])


# ------------------------------------------------------------------------------ CUDA memory: the CuPy stand-in
def _from_dlpack(calls):
    def from_dlpack(a):
        """cupy.from_dlpack on the stand-in: CUDA memory only (a host producer is CuPy's error), the same memory."""
        kind, _ = a.__dlpack_device__()
        if int(kind) not in (2, 13):
            raise TypeError(f"the stand-in's from_dlpack reads CUDA memory, not device type {int(kind)}")
        calls.append(a)
        return cupy_standin.DeviceArray(np.from_dlpack(a))

    return from_dlpack


def _no_kernels(*args):
    raise AssertionError("inference and validation launch no kernel")


@pytest.fixture
def device(monkeypatch):
    """The strict CuPy stand-in (no kernels: inference runs functions.py's reference on it) as ``cupy``, with its
    ``from_dlpack``; ``.model(sizes, **kw)`` an MLP on it, ``.calls`` what from_dlpack read."""
    from gpumlp import _kernels

    cupy = cupy_standin.make_cupy(_no_kernels, lambda code, name: _no_kernels)
    calls = []
    cupy.from_dlpack = _from_dlpack(calls)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cublas", cupy.cublas)
    caches = [c for c in (_kernels._elementwise, _kernels._module) if hasattr(c, "cache_clear")]
    for c in caches:
        c.cache_clear()
    stand_in = backend_module.Backend("cupy", cupy, "the host stand-in for CuPy")
    real = backend_module.resolve
    for module in [m for name, m in sys.modules.items() if name.startswith("gpumlp")]:
        if getattr(module, "resolve", None) is real:
            monkeypatch.setattr(module, "resolve", lambda name="auto": stand_in if name == "cupy" else real(name))
    yield types.SimpleNamespace(cupy=cupy, calls=calls, model=lambda sizes, **kw: gpumlp.MLP(sizes, backend="cupy",
                                                                                               **kw))
    for c in caches:
        c.cache_clear()


def test_cuda_memory_stays_on_the_device(device):
    X, y, w = _data()
    m = device.model((5, 7, 3), bias=True, dtype="float64", seed=1)
    host = gpumlp.MLP((5, 7, 3), bias=True, backend="numpy", dtype="float64", seed=1)
    cx, cy = DLPackOnly(X, CUDA), DLPackOnly(y, CUDA)
    x = m.to_device(cx)[0]
    assert isinstance(x, cupy_standin.DeviceArray) and np.shares_memory(x._a, X)  # CuPy's view: no copy
    data = gpumlp.Trainer(m).prepare(cx, cy, DLPackOnly(w, CUDA))  # what fit trains on
    assert isinstance(data.x, cupy_standin.DeviceArray) and np.shares_memory(data.x._a, X)
    assert isinstance(data.y, cupy_standin.DeviceArray) and np.shares_memory(data.y._a, y)
    np.testing.assert_allclose(m.predict_proba(cx), host.predict_proba(X), rtol=1e-13)
    np.testing.assert_array_equal(m.predict(cx), host.predict(X))
    assert m.score(cx, cy, DLPackOnly(w, CUDA)) == pytest.approx(host.score(X, y, w), rel=1e-13)
    assert cx in device.calls and cy in device.calls  # both read by cupy.from_dlpack
    p = gpumlp.Pipeline(m, classes=np.array([3, 7, 11]))  # preprocessing on the host: one copy there and back
    np.testing.assert_array_equal(p.predict(cx), np.array([3, 7, 11])[host.predict(X)])


def test_host_memory_for_a_model_on_the_gpu_is_copied_to_it_once(device):
    X, y, _ = _data()
    m = device.model((5, 7, 3), dtype="float64", seed=1)
    x = m.to_device(DLPackOnly(X))[0]
    assert isinstance(x, cupy_standin.DeviceArray) and not np.shares_memory(x._a, X)
    np.testing.assert_array_equal(x.get(), X)
    assert device.calls == []  # host memory is NumPy's to read, never CuPy's from_dlpack


def test_cuda_memory_of_another_device_is_refused(device):
    m = device.model((5, 3), seed=0)
    with pytest.raises(ValueError, match=r"X is a test_dlpack.DLPackOnly in CUDA memory \(cuda:1\), and gpumlp "
                                         r"computes on cuda:0"):
        m.predict(DLPackOnly(np.ones((2, 5)), (2, 1)))
    m.predict(DLPackOnly(np.ones((2, 5)), (13, 0)))  # managed memory of the current device: CuPy's too


@pytest.fixture
def trained_device(standin, monkeypatch):
    """The stand-in with its kernels (tests/test_kernels_host.py: training runs on it) and from_dlpack."""
    calls = []
    monkeypatch.setattr(standin.cupy, "from_dlpack", _from_dlpack(calls), raising=False)
    standin.calls = calls
    return standin


def test_training_on_cuda_memory_equals_the_numpy_backends(trained_device):
    X, y, w = _data()
    a = gpumlp.MLP((5, 7, 3), backend="numpy", dtype="float64", seed=1, bias=True, momentum=0.9)
    b = trained_device.model((5, 7, 3), dtype="float64", seed=1, bias=True, momentum=0.9)
    a.fit(X, y, epochs=2, batch_size=16, sample_weight=w).partial_fit(X, y)
    b.fit(DLPackOnly(X, CUDA), DLPackOnly(y, CUDA), epochs=2, batch_size=16, sample_weight=DLPackOnly(w, CUDA))
    b.partial_fit(DLPackOnly(X, CUDA), DLPackOnly(y, CUDA))
    np.testing.assert_allclose(b.theta.get(), a.theta, rtol=1e-10, atol=1e-13)
    # X and y of each call read by CuPy where they are; the weights by CuPy too, then copied to the host,
    # where they are checked and rescaled (validation.check_sample_weight)
    assert len(trained_device.calls) == 5


@pytest.mark.parametrize("early_stopping", [False, True])
def test_the_estimators_keep_cuda_memory_on_the_device(trained_device, early_stopping):
    pytest.importorskip("sklearn")
    from gpumlp.sklearn import MLPClassifier

    X, y, w = _data()
    fitted = []
    for backend, convert in (("numpy", lambda a: a), ("cupy", lambda a: DLPackOnly(a, CUDA))):
        c = MLPClassifier(hidden_layer_sizes=(6,), max_iter=3, backend=backend, random_state=0,
                          early_stopping=early_stopping)
        _quiet_fit(c, convert(X), convert(y), sample_weight=None if early_stopping else convert(w))
        if not early_stopping:
            c.partial_fit(convert(X), convert(y))
        fitted.append((c, convert))
    (a, _), (b, convert) = fitted
    assert b.n_features_in_ == 5 and not hasattr(b, "feature_names_in_")
    np.testing.assert_allclose(b.predict_proba(convert(X)), a.predict_proba(X), rtol=1e-9, atol=1e-12)
    assert b.score(convert(X), convert(y)) == a.score(X, y)
    with pytest.raises(ValueError, match="X has 4 features, the model expects 5"):
        b.predict(DLPackOnly(X[:, :4].copy(), CUDA))
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MLPClassifier(backend="cupy").fit(DLPackOnly(bad, CUDA), y)


class _Forwarding:
    """A real CUDA producer behind nothing but the protocol: every argument forwarded (CuPy passes its stream)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


@pytest.mark.gpu
def test_cuda_memory_of_another_library_stays_on_a_real_gpu():
    """Where a GPU answers: real cupy.from_dlpack, the model computing on the producer's device memory itself
    (the same address), and its results those of the NumPy backend."""
    import cupy

    X, y, w = _data()
    Xd, yd = cupy.asarray(X), cupy.asarray(y)
    m = gpumlp.MLP((5, 7, 3), backend="cupy", dtype="float64", seed=1, bias=True)
    host = gpumlp.MLP((5, 7, 3), backend="numpy", dtype="float64", seed=1, bias=True)
    x = m.to_device(_Forwarding(Xd))[0]
    assert isinstance(x, cupy.ndarray) and x.data.ptr == Xd.data.ptr
    data = gpumlp.Trainer(m).prepare(_Forwarding(Xd), _Forwarding(yd))
    assert data.x.data.ptr == Xd.data.ptr and data.y.data.ptr == yd.data.ptr
    np.testing.assert_allclose(m.predict_proba(_Forwarding(Xd)), host.predict_proba(X), rtol=1e-12)
    m.fit(_Forwarding(Xd), _Forwarding(yd), epochs=2, batch_size=16, sample_weight=w)
    host.fit(X, y, epochs=2, batch_size=16, sample_weight=w)
    np.testing.assert_allclose(m.theta.get(), host.theta, rtol=1e-10, atol=1e-12)
    if torch.cuda.is_available():
        t = torch.from_numpy(X).cuda()
        assert m.to_device(t)[0].data.ptr == t.data_ptr()
        np.testing.assert_array_equal(m.predict(t), host.predict(X))
