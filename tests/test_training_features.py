"""Training controls of MLP.fit: early stopping, the plateau rule, partial_fit, warm starts, sample and
class weights, callbacks, history_, checkpoints that resume a run exactly, get/set_params."""
import math
import pickle

import numpy as np
import pytest

import gpumlp
from gpumlp import schedules
from gpumlp.monitor import PlateauMonitor

KW = dict(dtype="float64", backend="numpy")


def blobs(n=90, d=4, q=3, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, q, n)
    centres = rng.normal(scale=2.0, size=(q, d))
    return centres[y] + noise * rng.normal(size=(n, d)), y


def assert_same_history(a, b):
    assert set(a.history_) == set(b.history_)
    for k in a.history_:  # NaN (not measured) compares equal here
        np.testing.assert_array_equal(a.history_[k], b.history_[k])


def snapshots():
    """A callback that keeps θ after every epoch, and the dict it fills."""
    seen = {}
    return (lambda m, r: seen.__setitem__(r["epoch"], m.theta.copy())), seen


# ---------------------------------------------------------------------- early stopping
def test_early_stopping_restores_the_best_epoch():
    X, y = blobs(60, noise=2.5, seed=1)  # noisy and small: the validation score peaks, then wanders
    Xv, yv = blobs(200, noise=2.5, seed=1)
    keep, seen = snapshots()
    m = gpumlp.MLP((4, 64, 3), seed=0, bias=True, optimizer="adam", **KW)
    m.fit(X, y, epochs=300, batch_size=8, lr=0.05, validation_data=(Xv, yv), early_stopping=True,
          n_iter_no_change=5, tol=1e-4, callbacks=keep)
    scores = m.history_["val_score"]
    best = m.best_epoch_
    assert m.stop_reason_ == "plateau" and m.epochs_ < 300
    assert scores[best - 1] == max(scores) and scores.index(max(scores)) == best - 1  # first best
    assert m.best_score_ == max(scores)
    np.testing.assert_array_equal(m.theta, seen[best])  # the weights of that epoch, not the last
    assert not np.array_equal(m.theta, seen[m.epochs_])
    assert m.score(Xv, yv) == max(scores)
    # scikit-learn's rule: it stopped after more than 5 epochs none of which beat best + tol
    assert all(s < max(scores) + 1e-4 for s in scores[-6:])


def test_early_stopping_holds_out_a_stratified_fraction():
    X, y = blobs(100)
    m = gpumlp.MLP((4, 8, 3), seed=0, **KW)
    m.fit(X, y, epochs=3, early_stopping=True, validation_fraction=0.2, n_iter_no_change=50)
    assert m.samples_seen_ == 3 * 80 and len(m.validation_curve_) == 3
    kept, held = gpumlp.data.split_indices(y, 0.2, seed=7)  # the rule fit holds out with
    xs, ys, xv, yv = X[kept], y[kept], X[held], y[held]
    assert len(yv) == 20 and len(ys) == 80
    counts, val_counts = np.bincount(y, minlength=3), np.bincount(yv, minlength=3)
    assert np.all(np.abs(val_counts - 0.2 * counts) < 1)  # each class in proportion (largest remainders)
    rows = {tuple(r) for r in xs} | {tuple(r) for r in xv}
    assert len(rows) == 100  # disjoint and complete
    again = X[gpumlp.data.split_indices(y, 0.2, seed=7)[1]]
    np.testing.assert_array_equal(again, xv)  # the seed decides the split
    # fit held out exactly that split, with the seed its monitor drew
    seed = m.monitor_.split_seed
    m2 = gpumlp.MLP((4, 8, 3), seed=0, **KW)
    assert int(m2.rng.integers(2**63)) == seed  # the one draw fit made before its first shuffle
    kept, held = gpumlp.data.split_indices(y, 0.2, seed=seed)
    m2.fit(X[kept], y[kept], epochs=3, validation_data=(X[held], y[held]), early_stopping=True, n_iter_no_change=50)
    assert m2.validation_curve_ == m.validation_curve_


def test_split_too_small_raises():
    X, y = blobs(10)
    with pytest.raises(ValueError, match="validation_fraction"):
        gpumlp.MLP((4, 3, 3), **KW).fit(X, y, early_stopping=True, validation_fraction=0.05)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        gpumlp.MLP((4, 3, 3), **KW).fit(X, y, early_stopping=True, validation_fraction=1.0)


def test_convergence_rule_counts_as_sklearn():
    """Nothing improves by tol: epoch 1 sets the best, and training stops once more than
    n_iter_no_change further epochs have failed, i.e. after epoch n_iter_no_change + 2."""
    X, y = blobs()
    for n in (1, 3):
        m = gpumlp.MLP((4, 5, 3), seed=0, **KW).fit(X, y, epochs=100, lr=1e-9, n_iter_no_change=n, tol=1e-3)
        assert m.epochs_ == n + 2 and m.stop_reason_ == "plateau" and m.best_epoch_ == n + 2
        assert m.best_loss_ == min(m.loss_curve_)
    m = gpumlp.MLP((4, 5, 3), seed=0, **KW).fit(X, y, epochs=7, lr=1e-9)  # off by default
    assert m.epochs_ == 7 and m.stop_reason_ == "epochs"


# ---------------------------------------------------------------------- partial_fit and warm starts
@pytest.mark.parametrize("kw", [dict(optimizer="sgd"), dict(optimizer="sgd", momentum=0.9, nesterov=True),
                                dict(optimizer="adam", decoupled=True)])
@pytest.mark.parametrize("weighted", [False, True])
def test_partial_fit_over_the_batches_equals_one_epoch_of_fit(kw, weighted):
    X, y = blobs(50)
    w = np.random.default_rng(1).uniform(0.2, 3.0, 50) if weighted else None
    a = gpumlp.MLP((4, 7, 3), seed=2, bias=True, weight_decay=0.01, **kw, **KW)
    b = gpumlp.MLP((4, 7, 3), seed=2, bias=True, weight_decay=0.01, **kw, **KW)
    a.fit(X, y, epochs=1, batch_size=16, lr=0.1, shuffle=False, sample_weight=w)
    for i in range(0, 50, 16):
        b.partial_fit(X[i:i + 16], y[i:i + 16], classes=[0, 1, 2], batch_size=16, lr=0.1,
                      sample_weight=None if w is None else w[i:i + 16])
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-13, atol=1e-15)
    assert b.optimizer.t == a.optimizer.t


def test_partial_fit_is_one_pass_over_its_data():
    X, y = blobs(40)
    m = gpumlp.MLP((4, 5, 3), seed=0, **KW)
    m.partial_fit(X, y, batch_size=10)
    assert m.epochs_ == 1 and m.samples_seen_ == 40 and len(m.loss_curve_) == 1 and m.optimizer.t == 0
    with pytest.raises(ValueError, match="classes"):
        m.partial_fit(X, y, classes=[0, 1, 5])
    with pytest.raises(ValueError, match="classes"):
        gpumlp.MLP((4, 5, 1), loss="squared", **KW).partial_fit(X, X[:, :1], classes=[0])


@pytest.mark.parametrize("kw", [dict(optimizer="sgd", momentum=0.9), dict(optimizer="adam")])
def test_fit_continues_where_it_stopped(kw):
    """MLP is PyTorch-like: two fits of 4 and 3 epochs = one fit of 7 (weights, optimizer state,
    shuffling stream, schedule position and curves all continue)."""
    X, y = blobs()
    sched = schedules.Cosine(7, 0.001)
    a = gpumlp.MLP((4, 6, 3), seed=1, lr_schedule=sched, **kw, **KW).fit(X, y, epochs=7, batch_size=16, lr=0.1)
    b = gpumlp.MLP((4, 6, 3), seed=1, lr_schedule=schedules.Cosine(7, 0.001), **kw, **KW)
    b.fit(X, y, epochs=4, batch_size=16, lr=0.1).fit(X, y, epochs=3, batch_size=16, lr=0.1)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.loss_curve_ == b.loss_curve_
    assert_same_history(a, b)


def test_reset_parameters_starts_over():
    X, y = blobs()
    m = gpumlp.MLP((4, 6, 3), seed=1, optimizer="sgd", momentum=0.9, lr_schedule="adaptive", **KW)
    m.fit(X, y, epochs=3, lr=0.1)
    m.lr_schedule.n_reductions = 2
    velocity = m.optimizer.velocity
    m.reset_parameters()
    # the optimizer's state is a fresh one's: no step taken, and its velocity zeroed in place (the buffer a
    # captured step writes stays the optimizer's; zeros are what a fresh one's first update starts from)
    assert m.optimizer.t == 0 and m.lr_schedule.n_reductions == 0
    assert m.optimizer.velocity is velocity and not velocity.any()
    assert m.epochs_ == 3 and len(m.loss_curve_) == 3  # the record of what happened is kept


@pytest.mark.parametrize("kw", [dict(optimizer="sgd", momentum=0.9), dict(optimizer="sgd", momentum=0.9, nesterov=True),
                                dict(optimizer="adam"), dict(optimizer="adam", decoupled=True)])
def test_a_reset_model_trains_exactly_as_a_fresh_one(kw):
    """After reset_parameters the optimizer keeps its arrays (zeroed in place) but must behave exactly as a
    freshly built one, whose arrays are made at its first update: SGD's velocity starting at g, Adam's
    step count at 1. Same weights, same random state: the same run, bit for bit; and so does a model
    resumed from the reset one's checkpoint (its zeros load as a fresh optimizer's state)."""
    X, y = blobs()
    a = gpumlp.MLP((4, 6, 3), seed=1, bias=True, weight_decay=0.01, **kw, **KW).fit(X, y, epochs=2, lr=0.1)
    a.reset_parameters()
    b = gpumlp.MLP((4, 6, 3), seed=7, bias=True, weight_decay=0.01, **kw, **KW)
    b.set_weights(a.get_weights(), a.get_biases())
    b.rng.bit_generator.state = a.rng.bit_generator.state
    assert a.optimizer.t == b.optimizer.t == 0 and b.optimizer.state_arrays() == {}
    assert all(not v.any() for v in a.optimizer.state_arrays().values())
    c = gpumlp.MLP.from_state_dict(a.state_dict(), backend="numpy")
    for m in (a, b, c):
        m.fit(X, y, epochs=3, batch_size=16, lr=0.1)
    for m in (a, c):
        np.testing.assert_array_equal(m.theta, b.theta)
        assert m.loss_curve_[-3:] == b.loss_curve_ and m.optimizer.t == b.optimizer.t
        for k, v in b.optimizer.state_arrays().items():
            np.testing.assert_array_equal(m.optimizer.state_arrays()[k], v)


def _state_addresses(m):
    """Where θ, ∂L/∂θ and every array of the optimizer's state live (NumPy: .ctypes.data)."""
    o = m.optimizer
    names = o.state_names + (("step",) if o.name == "adam" else ())  # Adam's step counter is a device array too
    return {k: getattr(o, k).ctypes.data for k in names} | {"theta": m.theta.ctypes.data, "grad": m.grad.ctypes.data}


@pytest.mark.parametrize("kw", [dict(optimizer="sgd", momentum=0.9), dict(optimizer="adam")])
def test_the_training_state_keeps_its_addresses(kw, tmp_path):
    """A CUDA graph of a step would hold the addresses of θ, the gradient and the optimizer's arrays: every
    way of replacing the state writes into them instead (reset, load_state_dict, a resumed file, set_params,
    a divergence restore inside fit), and the values are those asked for."""
    X, y = blobs()
    m = gpumlp.MLP((4, 6, 3), seed=1, bias=True, **kw, **KW).fit(X, y, epochs=2, lr=0.1)
    where = _state_addresses(m)
    saved = m.state_dict()
    m.fit(X, y, epochs=1, lr=0.1)
    m.load_state_dict(saved)  # back to the saved state, in place
    assert _state_addresses(m) == where and m.optimizer.t == saved.meta["optimizer"]["t"]
    for k, v in m.optimizer.state_arrays().items():
        np.testing.assert_array_equal(v, saved.arrays[f"optimizer.{k}"])
    m.fit(X, y, epochs=1, lr=0.1)  # training must not write into the state it was loaded from
    assert not np.array_equal(m.optimizer.state_arrays()[m.optimizer.state_names[0]],
                              saved.arrays[f"optimizer.{m.optimizer.state_names[0]}"])
    m.save(tmp_path / "m.npz")
    m.fit(X, y, epochs=1, lr=0.1)
    m.load_state_dict(gpumlp.load(tmp_path / "m.npz", backend="numpy").state_dict())
    assert _state_addresses(m) == where
    m.set_params(weight_decay=0.1, **({"momentum": 0.5} if kw["optimizer"] == "sgd" else {"beta1": 0.8}))
    assert _state_addresses(m) == where  # the new optimizer took the old one's arrays over
    before = {k: np.array(v) for k, v in m.optimizer.state_arrays().items()}
    theta, t = m.theta.copy(), m.optimizer.t
    with pytest.warns(RuntimeWarning), pytest.raises(gpumlp.DivergenceError):
        m.fit(X * 1e300, y, epochs=1, lr=1e10)
    assert _state_addresses(m) == where and m.optimizer.t == t
    np.testing.assert_array_equal(m.theta, theta)
    for k, v in m.optimizer.state_arrays().items():
        np.testing.assert_array_equal(v, before[k])
    m.reset_parameters()
    assert _state_addresses(m) == where


@pytest.mark.parametrize("kw", [dict(optimizer="sgd", momentum=0.9), dict(optimizer="adam")])
def test_a_model_built_from_a_state_does_not_write_into_it(kw):
    """load_state_dict copies: training the model (the optimizer's arrays, early stopping's best weights)
    leaves the ModelState it was built from as it was, so that it can build a second, identical model."""
    X, y = blobs()
    states = []
    a = gpumlp.MLP((4, 6, 3), seed=1, **kw, **KW)
    a.fit(X, y, epochs=4, lr=0.1, validation_data=(X[:30], y[:30]), early_stopping=True,
          callbacks=lambda m, r: states.append(m.state_dict()) if r["epoch"] == 2 else None)
    saved = states[0]
    assert "best_theta" in saved.arrays and len(saved.arrays) > 2
    kept = {k: v.copy() for k, v in saved.arrays.items()}
    runs = []
    for _ in range(2):
        b = gpumlp.MLP.from_state_dict(saved, backend="numpy")
        b.fit(X, y, epochs=2, lr=0.1, validation_data=(X[:30], y[:30]), early_stopping=True)
        runs.append(b.theta.copy())
        for k, v in kept.items():
            np.testing.assert_array_equal(saved.arrays[k], v, err_msg=f"{k} was written by training")
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
@pytest.mark.parametrize("kw", [dict(optimizer="sgd", momentum=0.9), dict(optimizer="adam")])
def test_a_divergence_in_the_first_epoch_leaves_a_fresh_optimizer(kw):
    """The epoch's snapshot predates the optimizer's arrays (made at its first update): the restore zeroes
    them in place, and the model then trains exactly as one that never diverged."""
    X, y = blobs()
    a = gpumlp.MLP((4, 6, 3), seed=1, **kw, **KW)
    b = gpumlp.MLP((4, 6, 3), seed=1, **kw, **KW)
    with pytest.raises(gpumlp.DivergenceError):
        a.fit(X * 1e300, y, epochs=1, lr=1e10, shuffle=False)
    where = _state_addresses(a)
    assert a.optimizer.t == 0 and all(not v.any() for v in a.optimizer.state_arrays().values())
    np.testing.assert_array_equal(a.theta, b.theta)
    for m in (a, b):
        m.fit(X, y, epochs=2, lr=0.1, shuffle=False)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert _state_addresses(a) == where and a.optimizer.t == b.optimizer.t


# ---------------------------------------------------------------------- sample and class weights
def _flat_fd_grad(m, X, y, w, eps=1e-6):
    """Central differences of J over every entry of θ (weights and biases), float64."""
    theta = m.theta
    g = np.empty_like(theta)
    for i in range(theta.size):
        old = theta[i]
        theta[i] = old + eps
        jp = m.forward(X, y, sample_weight=w).J
        theta[i] = old - eps
        jm = m.forward(X, y, sample_weight=w).J
        theta[i] = old
        g[i] = (jp - jm) / (2 * eps)
    return g


@pytest.mark.parametrize("loss", ["cross_entropy", "squared"])
def test_weighted_fast_step_follows_finite_differences(loss):
    """The fast training step with sample weights moves θ by −η ∂J/∂θ, J the weighted-mean loss
    (+ λ/2‖W‖²), with ∂J/∂θ from central differences (rel. error ≤ 1e-6, as test_gradients.py)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(7, 4))
    y = rng.integers(0, 3, 7) if loss == "cross_entropy" else rng.normal(size=(7, 3))
    w = rng.uniform(0.1, 4.0, 7)
    m = gpumlp.MLP((4, 5, 3), activation="tanh", loss=loss, bias=True, weight_decay=0.05, seed=0, **KW)
    fd = _flat_fd_grad(m, X, y, w)
    before = m.theta.copy()
    J = m.step(X, y, lr=0.1, sample_weight=w)
    step = (before - m.theta) / 0.1
    assert np.linalg.norm(step - fd) <= 1e-6 * np.linalg.norm(fd)
    m.theta[...] = before
    assert J == pytest.approx(m.forward(X, y, sample_weight=w).J, rel=1e-12)
    # and it is a weighted mean: scaling every weight changes nothing
    m.step(X, y, lr=0.1, sample_weight=5 * w)
    np.testing.assert_allclose(m.theta, before - 0.1 * step, rtol=1e-12, atol=1e-15)


def test_integer_weights_equal_repeated_rows():
    X, y = blobs(20)
    w = np.random.default_rng(0).integers(1, 4, 20)
    a = gpumlp.MLP((4, 6, 3), seed=0, optimizer="adam", bias=True, **KW)
    b = gpumlp.MLP((4, 6, 3), seed=0, optimizer="adam", bias=True, **KW)
    a.fit(X, y, epochs=5, batch_size=20, lr=0.05, sample_weight=w)  # one full batch per epoch
    b.fit(np.repeat(X, w, axis=0), np.repeat(y, w), epochs=5, batch_size=int(w.sum()), lr=0.05)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", ["cross_entropy", "squared"])
def test_a_batch_whose_weights_are_all_zero_contributes_nothing(loss):
    """Zero weights are valid (the sum over the data is positive), but a batch may hold only zero-weight
    examples: its weighted mean is L = 0 with no gradient, not 0/0 = NaN reported as divergence."""
    from gpumlp import functions as F
    from gpumlp._numpy_ops import NumpyOps

    X, y = blobs(64)
    t = y if loss == "cross_entropy" else X[:, :3] - X[:, 1:]
    q = 3
    o = np.random.default_rng(1).normal(size=(16, q)).astype(np.float32)
    tb = t[:16] if loss == "cross_entropy" else t[:16].astype(np.float32)
    w0 = np.zeros(16, np.float32)
    assert float(F.LOSSES[loss].forward(o, tb, w0)) == 0.0
    assert not F.LOSSES[loss].backward(o, tb, w0).any()
    do = np.full_like(o, np.nan)
    for gemm in ("auto", None):
        assert float(NumpyOps(gemm).loss_grad(loss, o, tb, w0, do)) == 0.0 and not do.any()

    w = np.r_[np.zeros(32), np.ones(32)]  # shuffle=False: the first two batches weigh nothing
    a = gpumlp.MLP((4, 6, q), loss=loss, seed=0, bias=True, **KW)
    b = gpumlp.MLP((4, 6, q), loss=loss, seed=0, bias=True, **KW)
    a.fit(X, t, epochs=2, batch_size=16, lr=0.1, shuffle=False, sample_weight=w)
    b.fit(X[32:], t[32:], epochs=2, batch_size=16, lr=0.1, shuffle=False)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a.loss_curve_, np.array(b.loss_curve_) / 2)  # the empty batches add J = 0


def test_class_weight_balanced_and_dict():
    X, y = blobs(60)
    y[:40] = 0  # imbalanced
    counts = np.bincount(y, minlength=3)
    balanced = (60 / (3 * counts))[y]
    sw = np.random.default_rng(2).uniform(0.5, 2, 60)
    for cw, w in [("balanced", balanced), ({0: 0.5, 2: 3.0}, np.array([0.5, 1.0, 3.0])[y])]:
        a = gpumlp.MLP((4, 5, 3), seed=0, **KW).fit(X, y, epochs=2, batch_size=16, class_weight=cw, sample_weight=sw)
        b = gpumlp.MLP((4, 5, 3), seed=0, **KW).fit(X, y, epochs=2, batch_size=16, sample_weight=w * sw)
        np.testing.assert_array_equal(a.theta, b.theta)
    with pytest.raises(ValueError, match="balanced"):
        gpumlp.MLP((4, 5, 3), **KW).fit(X, y, class_weight="auto")
    with pytest.raises(ValueError, match="keys"):
        gpumlp.MLP((4, 5, 3), **KW).fit(X, y, class_weight={7: 1.0})
    with pytest.raises(ValueError, match="cross_entropy"):
        gpumlp.MLP((4, 5, 1), loss="squared", **KW).fit(X, X[:, 0], class_weight="balanced")


def test_weighted_validation_score_and_loss():
    X, y = blobs(40)
    m = gpumlp.MLP((4, 5, 3), seed=0, **KW).fit(X, y, epochs=1)
    w = np.random.default_rng(0).uniform(0, 1, 40)
    hit = m.predict(X) == y
    assert m.score(X, y, sample_weight=w) == pytest.approx((w * hit).sum() / w.sum())
    m.fit(X, y, epochs=1, validation_data=(X, y, w))
    assert m.validation_curve_[-1] == pytest.approx(m.score(X, y, sample_weight=w))
    assert m.validation_loss_curve_[-1] == pytest.approx(m.forward(X, y, sample_weight=w).J)


# ---------------------------------------------------------------------- callbacks and history
def test_callback_can_stop_and_sees_each_record():
    X, y = blobs()
    records = []

    def stop_at_3(model, record):
        records.append(record)
        return record["epoch"] == 3

    also = []
    m = gpumlp.MLP((4, 5, 3), seed=0, **KW).fit(X, y, epochs=10, callbacks=[stop_at_3, lambda m, r: also.append(r)])
    assert m.epochs_ == 3 and m.stop_reason_ == "callback" and len(also) == 3
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[-1]["loss"] == m.loss_curve_[-1]
    with pytest.raises(TypeError, match="callbacks"):
        m.fit(X, y, callbacks=[3])


def test_history_records_every_epoch():
    X, y = blobs()
    Xv, yv = blobs(30, seed=5)
    m = gpumlp.MLP((4, 5, 3), seed=0, **KW)
    m.fit(X, y, epochs=2, lr=0.1)
    m.fit(X, y, epochs=3, lr=0.05, validation_data=(Xv, yv), train_score=True)
    h = m.history_
    assert set(h) == {"epoch", "lr", "loss", "score", "val_loss", "val_score"}
    assert all(len(v) == 5 for v in h.values())
    assert h["epoch"] == [1, 2, 3, 4, 5] and h["lr"] == [0.1, 0.1, 0.05, 0.05, 0.05]
    assert h["loss"] == m.loss_curve_
    assert all(math.isnan(v) for v in h["score"][:2] + h["val_score"][:2] + h["val_loss"][:2])
    assert h["val_score"][2:] == m.validation_curve_ and h["val_loss"][2:] == m.validation_loss_curve_
    assert h["score"][-1] == m.score(X, y) and h["val_score"][-1] == m.score(Xv, yv)
    assert h["val_loss"][-1] == pytest.approx(m.forward(Xv, yv).J, rel=1e-12)


# ---------------------------------------------------------------------- checkpoints and copies
def test_checkpoint_taken_mid_fit_resumes_exactly(tmp_path):
    """A run with early stopping on a held-out split, Adam and a cosine schedule, saved from a
    callback after epoch 5 and resumed from the file, ends exactly like the uninterrupted run."""
    X, y = blobs(80, noise=2.0)
    path = tmp_path / "mid.gpumlp"

    def save_at_5(model, record):
        if record["epoch"] == 5:
            gpumlp.io.save(model, str(path))

    args = dict(batch_size=8, lr=0.05, early_stopping=True, validation_fraction=0.25, n_iter_no_change=4)
    a = gpumlp.MLP((4, 32, 3), seed=0, optimizer="adam", bias=True, lr_schedule=schedules.Cosine(30), **KW)
    a.fit(X, y, epochs=30, callbacks=save_at_5, **args)
    b = gpumlp.load(str(path), backend="numpy")
    assert b.monitor_.open and b.epochs_ == 5
    b.fit(X, y, epochs=25, **args)
    np.testing.assert_array_equal(b.theta, a.theta)
    assert b.epochs_ == a.epochs_ and b.best_epoch_ == a.best_epoch_ and b.stop_reason_ == a.stop_reason_
    assert_same_history(a, b)
    assert not a.monitor_.open and not b.monitor_.open


def test_a_finished_fit_does_not_leak_into_the_next():
    X, y = blobs()
    m = gpumlp.MLP((4, 5, 3), seed=0, **KW)
    m.fit(X, y, epochs=100, lr=1e-9, n_iter_no_change=1, tol=1.0)
    assert m.epochs_ == 3
    m.fit(X, y, epochs=2, lr=1e-9)  # a fresh run: no plateau rule unless asked for
    assert m.epochs_ == 5 and m.stop_reason_ == "epochs"


def test_pickle_and_deepcopy_carry_the_training_state():
    import copy

    X, y = blobs()
    m = gpumlp.MLP((4, 5, 3), seed=0, optimizer="adam", lr_schedule="adaptive", **KW)
    m.fit(X, y, epochs=3, validation_data=(X, y), early_stopping=True)
    for c in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        np.testing.assert_array_equal(c.theta, m.theta)
        np.testing.assert_array_equal(c.optimizer.m, m.optimizer.m)
        assert c.optimizer.t == m.optimizer.t
        assert_same_history(c, m)
        c.fit(X, y, epochs=2)
        assert not np.array_equal(c.theta, m.theta)  # independent copies


def test_pickle_and_deepcopy_carry_what_a_model_file_carries(tmp_path):
    """A loaded model's scaler_, classes_ and training_config_ are part of the file: copies keep them."""
    import copy

    from gpumlp import io
    from gpumlp.data import Scaler

    X, y = blobs()
    m = gpumlp.MLP((4, 5, 3), seed=0, **KW).fit(X, y, epochs=1)
    io.save(m, tmp_path / "m.npz", scaler=Scaler("standard").fit(X), classes=np.array([2, 4, 8]),
                   training={"lr": 0.1})
    loaded = gpumlp.load(tmp_path / "m.npz", backend="numpy", model_only=True)
    for c in (pickle.loads(pickle.dumps(loaded)), copy.deepcopy(loaded)):
        assert c.classes_.tolist() == [2, 4, 8] and c.training_config_ == {"lr": 0.1}
        np.testing.assert_array_equal(c.scaler_.transform(X), loaded.scaler_.transform(X))
        assert c.scaler_ is not loaded.scaler_
        np.testing.assert_array_equal(c.predict(c.scaler_.transform(X)), loaded.predict(loaded.scaler_.transform(X)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
def test_divergence_closes_the_run():
    X, y = blobs()
    m = gpumlp.MLP((4, 5, 3), seed=0, **KW)
    with pytest.raises(gpumlp.DivergenceError):
        m.fit(X * 1e150, y, epochs=5, lr=1e10, validation_data=(X, y), early_stopping=True)
    assert not m.monitor_.open


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
def test_divergence_with_early_stopping_can_be_recorded_while_training_goes_on():
    """on_divergence="record" (what the scikit-learn estimators ask for): a diverged epoch is restored
    and recorded with a NaN loss and validation score, the monitor counts it, and the run goes on."""
    X, y = blobs()
    m = gpumlp.MLP((4, 5, 3), seed=0, **KW)
    theta = m.theta.copy()
    trainer = gpumlp.Trainer(m, lr=1e10, on_divergence="record")
    trainer.fit(X * 1e150, y, epochs=30, validation_data=(X, y), early_stopping=True, n_iter_no_change=3)
    assert m.epochs_ == 4 and m.stop_reason_ == "plateau"  # four epochs in a row without improvement > 3
    assert all(math.isnan(v) for v in m.validation_curve_ + m.loss_curve_ + m.history_["val_loss"])
    np.testing.assert_array_equal(m.theta, theta)  # each diverged epoch was restored to its start
    assert not m.monitor_.open
    with pytest.raises(gpumlp.DivergenceError):  # without early stopping nothing keeps good weights: it raises
        gpumlp.Trainer(m, lr=1e10, on_divergence="record").fit(X * 1e150, y, epochs=3)
    with pytest.raises(ValueError, match="on_divergence"):
        gpumlp.Trainer(m, on_divergence="ignore")


# ---------------------------------------------------------------------- get_params / set_params
def test_get_and_set_params():
    m = gpumlp.MLP((4, 5, 3), optimizer="sgd", momentum=0.9, seed=3, **KW)
    p = m.get_params()
    assert p["sizes"] == (4, 5, 3) and p["momentum"] == 0.9 and p["optimizer"] == "sgd" and p["seed"] == 3
    assert gpumlp.MLP(**{k: v for k, v in p.items()}).get_params() == p
    X, y = blobs()
    m.fit(X, y, epochs=1)
    v = m.optimizer.velocity.copy()
    m.set_params(momentum=0.5, weight_decay=0.1, lr_schedule=schedules.StepDecay(2))
    assert m.optimizer.momentum == 0.5 and m.weight_decay == 0.1 and isinstance(m.lr_schedule, schedules.StepDecay)
    np.testing.assert_array_equal(m.optimizer.velocity, v)  # state kept
    with pytest.raises(ValueError, match="sizes"):
        m.set_params(sizes=(4, 6, 3))
    with pytest.raises(ValueError, match="do not apply"):
        m.set_params(beta1=0.5)
    with pytest.raises(ValueError):
        m.set_params(momentum=2.0)
    assert m.optimizer.momentum == 0.5  # nothing changed by a failed call


@pytest.mark.parametrize("kw,err", [(dict(n_iter_no_change=0), ValueError), (dict(tol=-1.0), ValueError),
                                    (dict(callbacks="print"), TypeError), (dict(epochs=0), ValueError)])
def test_fit_rejects_bad_settings(kw, err):
    X, y = blobs()
    with pytest.raises(err):
        gpumlp.MLP((4, 5, 3), **KW).fit(X, y, **kw)


def _sklearn_plateau_epochs(values, mode, patience, tol):
    """scikit-learn's _update_no_improvement_count + `count > n_iter_no_change`, transcribed:
    the 1-based epochs at which it reports a plateau (and resets the count, as with "adaptive")."""
    best = -np.inf if mode == "val_score" else np.inf
    count, out = 0, []
    for e, v in enumerate(values, start=1):
        if mode == "val_score":
            count = count + 1 if v < best + tol else 0
            best = max(best, v)
        else:
            count = count + 1 if v > best - tol else 0
            best = min(best, v)
        if count > patience:
            out.append(e)
            count = 0
    return out


@pytest.mark.parametrize("mode", ["loss", "val_score"])
@pytest.mark.parametrize("seed", range(5))
def test_plateau_rule_matches_sklearns_transcription(mode, seed):
    rng = np.random.default_rng(seed)
    values = list(np.cumsum(rng.normal(-0.02 if mode == "loss" else 0.02, 0.05, 60)))
    schedule = schedules.Adaptive(min_lr=0.0)  # never stops: counts plateaus
    monitor = PlateauMonitor(mode=mode, patience=2, tol=0.01)
    plateaus = []
    for e, v in enumerate(values, start=1):
        before = schedule.n_reductions
        assert monitor.watch(v, e, None, schedule, 1.0) is None
        if schedule.n_reductions > before:
            plateaus.append(e)
    assert plateaus == _sklearn_plateau_epochs(values, mode, 2, 0.01) and plateaus


def test_a_rejected_fit_changes_nothing():
    X, y = blobs(10)
    m = gpumlp.MLP((4, 3, 3), seed=0, **KW).fit(X, y, epochs=1, early_stopping=True, validation_fraction=0.3)
    theta, rng, monitor = m.theta.copy(), m.rng.bit_generator.state, m.monitor_.to_json()
    with pytest.raises(ValueError, match="validation_fraction"):
        m.fit(X, y, early_stopping=True, validation_fraction=0.05)
    np.testing.assert_array_equal(m.theta, theta)
    assert m.rng.bit_generator.state == rng and m.monitor_.to_json() == monitor


@pytest.mark.gpu
def test_training_features_agree_on_cupy():
    """Early stopping, a schedule, Adam, sample weights and partial_fit on CuPy give NumPy's run (float64)."""
    ok, why = gpumlp.backend.cupy_status()
    if not ok:
        pytest.skip(why)
    X, y = blobs(120, noise=2.0)
    w = np.random.default_rng(0).uniform(0.5, 2.0, 120)
    runs = []
    for backend in ("numpy", "cupy"):
        m = gpumlp.MLP((4, 16, 3), seed=0, bias=True, optimizer="adam", dtype="float64", backend=backend,
                       lr_schedule=schedules.Cosine(20))
        m.fit(X, y, epochs=20, batch_size=16, lr=0.05, sample_weight=w, early_stopping=True,
              validation_fraction=0.2, n_iter_no_change=3, train_score=True)
        m.partial_fit(X[:32], y[:32], batch_size=16, lr=0.01)
        runs.append(m)
    a, b = runs
    assert a.epochs_ == b.epochs_ and a.best_epoch_ == b.best_epoch_
    np.testing.assert_allclose(b.get_weights()[0], a.get_weights()[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.history_["val_score"], a.history_["val_score"], rtol=1e-12)
    np.testing.assert_allclose(b.history_["loss"], a.history_["loss"], rtol=1e-9)
