"""Full-batch L-BFGS (gpumlp.lbfgs, MLP(optimizer="lbfgs")): the objective J(θ), ∂J/∂θ as a function of
the flat θ, SciPy's L-BFGS-B run with scikit-learn's settings and stopping rules, the records of each
iteration, and the model's life around it (save/load, errors). scikit-learn's own L-BFGS is compared
in test_sklearn.py."""
import math
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import backend as backend_module
from gpumlp.lbfgs import LBFGSTrainer, Objective

scipy_optimize = pytest.importorskip("scipy.optimize", reason="SciPy is not installed (pip install gpumlp[lbfgs])")


def blobs(n=120, d=4, q=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(q, d)) * 2
    y = rng.integers(0, q, n)
    return centers[y] + rng.normal(size=(n, d)), y


def model(loss="cross_entropy", q=3, **kw):
    kw = {"bias": True, "dtype": "float64", "backend": "numpy", "seed": 0, "weight_decay": 1e-3,
          "activation": "tanh", **kw}
    return gpumlp.MLP((4, 6, q), loss=loss, optimizer="lbfgs", **kw)


def test_the_objective_is_J_and_its_gradient_as_a_function_of_theta():
    X, y = blobs(30)
    m = model()
    x, yy, _ = m.to_device(X, y)
    f = Objective(m, x, yy)
    theta = np.random.default_rng(1).normal(size=m.theta.size) * 0.5
    J, g = f(theta)
    np.testing.assert_array_equal(m.theta, theta)  # θ was set
    assert J == pytest.approx(m.forward(X, y).J, rel=1e-13)
    grad = m.backward(m.forward(X, y))  # the reference: ∂J/∂W with λW, ∂J/∂b
    np.testing.assert_allclose(g, np.concatenate([a.ravel() for a in grad.dW + grad.db]), rtol=1e-12, atol=1e-15)
    eps = 1e-6
    for i in np.random.default_rng(2).choice(theta.size, 20, replace=False):
        up, down = theta.copy(), theta.copy()
        up[i] += eps
        down[i] -= eps
        assert g[i] == pytest.approx((f(up)[0] - f(down)[0]) / (2 * eps), rel=1e-6, abs=1e-9)
    again = g.copy()
    f(theta + 1)  # SciPy keeps the gradient it was handed: the next evaluation must not overwrite it
    np.testing.assert_array_equal(g, again)
    assert g.dtype == np.float64 and f.evaluations == 42


def test_one_evaluation_moves_theta_in_and_the_gradient_out_and_nothing_else(monkeypatch):
    """Per evaluation, one copy to the device (θ) and one back (∂J/∂θ with J beside it): the data and
    the activations stay where they are. Counted through the backend, the only place arrays move."""
    X, y = blobs(30)
    m = model()
    x, yy, _ = m.to_device(X, y)
    f = Objective(m, x, yy)
    calls = []
    for name in ("asarray", "to_host"):
        original = getattr(backend_module.Backend, name)
        monkeypatch.setattr(backend_module.Backend, name,
                            lambda self, a, *args, _f=original, _n=name, **kw: calls.append((_n, a.size)) or _f(self, a, *args, **kw))
    f(np.zeros(m.theta.size))
    assert calls == [("asarray", m.theta.size), ("to_host", m.theta.size + 1)]


def test_fit_runs_scipys_l_bfgs_b_with_scikit_learns_settings():
    """The same run as scipy.optimize.minimize(method="L-BFGS-B", jac=True, options={maxiter, maxfun,
    gtol=tol}) on the objective, as scikit-learn's MLP calls it: the same θ, to the bit."""
    X, y = blobs()
    a, b = model(), model()
    theta0 = b.theta.copy()
    a.fit(X, y, epochs=30, tol=1e-5)
    x, yy, _ = b.to_device(X, y)
    res = scipy_optimize.minimize(Objective(b, x, yy), theta0, method="L-BFGS-B", jac=True,
                                  options={"maxiter": 30, "maxfun": 15000, "gtol": 1e-5})
    np.testing.assert_array_equal(a.theta, res.x)
    assert a.epochs_ == res.nit and a.optimizer.t == res.nit
    assert a.loss_curve_[-1] == pytest.approx(res.fun, rel=1e-14)


def test_it_converges_and_says_so():
    X, y = blobs()
    m = model()
    J0 = m.objective(X, y)
    trainer = LBFGSTrainer(m)
    trainer.fit(X, y, max_iter=500, tol=1e-6)
    assert m.stop_reason_ == "converged" and trainer.result.status == 0
    x, yy, _ = m.to_device(X, y)
    J, g = Objective(m, x, yy)(m.theta.copy())
    message = trainer.result.message  # SciPy's gtol rule, or its ftol rule (J stopped falling)
    assert ("PROJECTED GRADIENT" in message and np.abs(g).max() <= 1e-6) or "RELATIVE REDUCTION OF F" in message
    assert J < 0.2 * J0 and m.score(X, y) > 0.95
    assert len(m.loss_curve_) == m.epochs_ == trainer.result.nit
    assert all(b <= a for a, b in zip(m.loss_curve_, m.loss_curve_[1:]))  # L-BFGS-B's line search descends
    assert math.isnan(m.history_["lr"][-1]) and m.history_["loss"] == m.loss_curve_


def test_max_iter_and_max_fun_stop_it():
    X, y = blobs()
    m = model()
    m.fit(X, y, epochs=3, tol=0)
    assert m.stop_reason_ == "epochs" and m.epochs_ == 3 and len(m.loss_curve_) == 3
    m = model()
    trainer = LBFGSTrainer(m)
    trainer.fit(X, y, max_iter=500, max_fun=7, tol=0)
    assert m.stop_reason_ == "max_fun" and trainer.result.status == 1 and trainer.result.nfev <= 8
    assert m.epochs_ <= 7  # each iteration evaluates J at least once


def test_each_iteration_is_an_epoch_with_validation_and_callbacks():
    X, y = blobs()
    seen = []

    def cb(m, record):
        seen.append(record)
        np.testing.assert_allclose(m.objective(X[:100], y[:100]), record["loss"], rtol=1e-12)  # θ is the iterate
        return record["epoch"] == 4

    m = model()
    m.fit(X[:100], y[:100], epochs=50, validation_data=(X[100:], y[100:]), callbacks=cb, train_score=True)
    assert m.stop_reason_ == "callback" and m.epochs_ == 4 and len(seen) == 4
    assert [r["epoch"] for r in seen] == [1, 2, 3, 4]
    assert m.validation_curve_ == [r["val_score"] for r in seen] and len(m.validation_loss_curve_) == 4
    assert all(0 <= r["score"] <= 1 for r in seen)
    np.testing.assert_allclose(m.loss_curve_[-1], m.objective(X[:100], y[:100]), rtol=1e-12)


def test_weights_count_as_repeated_rows():
    """Integer sample weights give the run on the data with rows repeated, as they should."""
    X, y = blobs(60)
    w = np.random.default_rng(3).integers(1, 4, 60)
    a, b = model(), model()
    a.fit(X, y, epochs=15, sample_weight=w)
    b.fit(np.repeat(X, w, axis=0), np.repeat(y, w), epochs=15)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("loss", ["squared", "binary_cross_entropy", "poisson"])
def test_every_loss_trains(loss):
    X, labels = blobs()
    y = {"squared": lambda: X[:, :2] @ np.array([[1.0], [-2.0]]), "binary_cross_entropy": lambda: np.eye(3)[labels],
         "poisson": lambda: np.random.default_rng(4).poisson(np.exp(0.3 * X[:, :1]))}[loss]().astype(float)
    m = model(loss, q=y.shape[1])
    J0 = m.objective(X, y)
    m.fit(X, y, epochs=100)
    assert m.objective(X, y) < J0 * (0.5 if loss == "poisson" else 0.1)


def test_float32_models_train_in_float32():
    X, y = blobs()
    m = model(dtype="float32")
    m.fit(X, y, epochs=50)
    assert m.theta.dtype == np.float32 and m.score(X, y) > 0.95


def test_the_minibatch_entry_points_refuse_it_and_change_nothing():
    X, y = blobs(20)
    m = model()
    theta = m.theta.copy()
    for call in (lambda: m.partial_fit(X, y), lambda: gpumlp.Trainer(m).fit(X, y), lambda: m.step(X, y, 0.1),
                 lambda: m.fit(X, y, early_stopping=True), lambda: m.fit(X, y, n_iter_no_change=3)):
        with pytest.raises(ValueError, match="lbfgs|L-BFGS"):
            call()
    np.testing.assert_array_equal(m.theta, theta)
    assert m.epochs_ == 0 and m.loss_curve_ == []
    with pytest.raises(ValueError, match="optimizer='lbfgs'"):
        LBFGSTrainer(gpumlp.MLP((4, 3), backend="numpy"))


def test_without_scipy_the_error_names_the_extra(monkeypatch):
    X, y = blobs(20)
    m = model()
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # import scipy.optimize now fails
    with pytest.raises(ImportError, match=r"gpumlp\[lbfgs\]"):
        m.fit(X, y)
    assert m.epochs_ == 0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
def test_divergence_restores_the_last_finite_iterate():
    X, y = blobs(20)
    m = model(activation="identity", weight_decay=0.0)
    theta = m.theta.copy()
    with pytest.raises(gpumlp.DivergenceError, match="L-BFGS") as err:
        m.fit(X * 1e200, y, epochs=5)
    assert isinstance(err.value, ValueError) and isinstance(err.value, FloatingPointError)
    assert np.isfinite(m.theta).all()
    np.testing.assert_array_equal(m.theta, theta)  # no finite iterate: back to the start


def test_a_saved_lbfgs_model_loads_and_trains_on(tmp_path):
    X, y = blobs()
    m = model()
    m.fit(X, y, epochs=5)
    m.save(tmp_path / "m.npz")
    back = gpumlp.load(tmp_path / "m.npz", backend="numpy")
    assert back.optimizer.name == "lbfgs" and back.optimizer.t == 5 and back.epochs_ == 5
    np.testing.assert_array_equal(back.theta, m.theta)
    assert back.loss_curve_ == m.loss_curve_
    back.fit(X, y, epochs=5)  # a fresh L-BFGS from the saved θ (no curvature memory is stored)
    assert back.epochs_ == 10 and back.optimizer.t == 10 and back.loss_curve_[-1] < m.loss_curve_[-1]
    params = back.get_params()
    assert params["optimizer"] == "lbfgs" and "momentum" in params and "beta1" in params
    assert gpumlp.MLP(**{**params, "backend": "numpy"}).optimizer.name == "lbfgs"
    with pytest.raises(ValueError, match="do not apply"):
        back.set_params(momentum=0.5)


def test_a_second_thread_cannot_train_a_model_in_an_l_bfgs_fit():
    X, y = blobs()
    m = model()
    inside, release, errors = threading.Event(), threading.Event(), []

    def hold(model, record):
        inside.set()
        release.wait(10)

    t = threading.Thread(target=m.fit, args=(X, y), kwargs=dict(epochs=2, callbacks=hold))
    t.start()
    try:
        assert inside.wait(10)
        for call in (lambda: m.fit(X, y, epochs=1), lambda: m.set_params(weight_decay=0.5)):
            try:
                call()
            except RuntimeError as exc:
                errors.append(str(exc))
    finally:
        release.set()
        t.join(10)
    assert len(errors) == 2 and all("another thread" in e for e in errors)
    assert m.epochs_ == 2 and m.weight_decay == 1e-3


def test_scipys_blas_runs_one_thread_while_l_bfgs_minimises_and_numpys_keeps_its_own():
    """SciPy's OpenBLAS and NumPy's each spin a worker after a call; with both spinning our threaded GEMMs
    wait for a core (gpumlp.lbfgs' docstring). During the fit every BLAS beside NumPy's runs one thread."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg  # noqa: F401  (SciPy's BLAS loaded, as minimize loads it)
    from gpumlp.lbfgs import scipy_blas_single_threaded

    def counts():
        return {c.filepath: c.num_threads for c in threadpoolctl.ThreadpoolController().lib_controllers
                if c.user_api == "blas"}

    before = counts()
    numpy_dir = str(Path(np.__file__).resolve().parent)
    ours = [f for f in before if f.startswith(numpy_dir)]  # numpy.libs/ sits beside numpy/
    if len(before) < 2 or not ours:
        pytest.skip(f"NumPy and SciPy do not each bring their own BLAS here ({sorted(before)}): nothing to limit")
    during = []
    X, y = blobs(60)
    model().fit(X, y, epochs=3, callbacks=lambda m, record: during.append(counts()))
    assert during
    for seen in during:
        assert {f: n for f, n in seen.items() if f not in ours} == {f: 1 for f in before if f not in ours}
        assert {f: seen[f] for f in ours} == {f: before[f] for f in ours}
    assert counts() == before  # restored after the fit
    with scipy_blas_single_threaded():
        assert all(n == 1 for f, n in counts().items() if f not in ours)
    assert counts() == before
