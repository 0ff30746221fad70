"""Optimizers: each against a direct NumPy transcription of its rule, against torch.optim on the same
gradients when PyTorch is importable, and (marked gpu) each fused CuPy kernel against the NumPy rule."""
import numpy as np
import pytest

import gpumlp
from gpumlp import optim
from gpumlp._numpy_ops import NumpyOps
from gpumlp.ops import adam_corrections
from gpumlp.backend import cupy_status

N, N_DECAY, STEPS = 11, 7, 6  # a flat buffer of 7 "weights" then 4 "biases"
LRS = [0.1, 0.1, 0.05, 0.2, 0.02, 0.1]  # a changing η shows the momentum convention


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=N), [rng.normal(size=N) for _ in range(STEPS)]


# ---------------------------------------------------------------------- transcriptions of the rules
def sgd_rule(theta, grads, lrs, lam, mu, nesterov):
    """PyTorch's SGD, element by element as its documentation writes it."""
    theta, v = theta.copy(), None
    decay = np.arange(N) < N_DECAY
    for g, lr in zip(grads, lrs):
        d = g + lam * theta * decay
        if mu:
            v = d.copy() if v is None else mu * v + d
            d = d + mu * v if nesterov else v
        theta = theta - lr * d
    return theta


def sklearn_sgd_rule(theta, grads, lrs, lam, mu, nesterov):
    """scikit-learn's _stochastic_optimizers.SGDOptimizer: η inside the velocity, v starts at 0."""
    theta, v = theta.copy(), np.zeros(N)
    decay = np.arange(N) < N_DECAY
    for g, lr in zip(grads, lrs):
        d = g + lam * theta * decay
        v = mu * v - lr * d
        theta = theta + (mu * v - lr * d if nesterov else v)
    return theta


def adam_rule(theta, grads, lrs, lam, b1, b2, eps, decoupled):
    """Kingma & Ba with bias correction; L2 in the gradient, or AdamW's decoupled decay."""
    theta, m, v = theta.copy(), np.zeros(N), np.zeros(N)
    decay = np.arange(N) < N_DECAY
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        if decoupled:
            theta = theta - lr * lam * theta * decay
        else:
            g = g + lam * theta * decay
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def run(opt, theta, grads, lrs, lam, ops=None):
    theta = theta.copy()
    for g, lr in zip(grads, lrs):
        opt.update(theta, g.copy(), lr, lam, N_DECAY, ops)
    return theta


SGD_CASES = [(0.0, False), (0.9, False), (0.9, True), (0.5, True)]
ADAM_CASES = [(0.9, 0.999, 1e-8, False), (0.9, 0.999, 1e-8, True), (0.5, 0.9, 1e-3, False), (0.0, 0.99, 1e-6, True)]


@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("mu,nesterov", SGD_CASES)
def test_sgd_matches_its_rule(mu, nesterov, lam):
    theta, grads = _problem()
    got = run(optim.SGD(mu, nesterov), theta, grads, LRS, lam)
    np.testing.assert_allclose(got, sgd_rule(theta, grads, LRS, lam, mu, nesterov), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("b1,b2,eps,decoupled", ADAM_CASES)
def test_adam_matches_its_rule(b1, b2, eps, decoupled, lam):
    theta, grads = _problem()
    got = run(optim.Adam(b1, b2, eps, decoupled), theta, grads, LRS, lam)
    # 1e-12: the rule divides by √v̂ + ε, ours (as PyTorch) by √v/√c2 + ε: same value, other rounding
    np.testing.assert_allclose(got, adam_rule(theta, grads, LRS, lam, b1, b2, eps, decoupled), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mu,nesterov", [(0.9, False), (0.9, True)])
def test_momentum_convention_is_pytorchs_not_sklearns(mu, nesterov):
    """The documented convention: equal to scikit-learn's while η is constant, different once it changes."""
    theta, grads = _problem(1)
    const = [0.1] * STEPS
    ours = run(optim.SGD(mu, nesterov), theta, grads, const, 0.2)
    np.testing.assert_allclose(ours, sklearn_sgd_rule(theta, grads, const, 0.2, mu, nesterov), rtol=1e-13)
    ours = run(optim.SGD(mu, nesterov), theta, grads, LRS, 0.2)
    assert not np.allclose(ours, sklearn_sgd_rule(theta, grads, LRS, 0.2, mu, nesterov), rtol=1e-6)


def test_biases_are_never_decayed():
    theta = np.ones(N)
    for opt in (optim.SGD(0.9, True), optim.Adam(decoupled=True), optim.Adam()):
        got = theta.copy()
        opt.update(got, np.zeros(N), 0.1, 0.5, N_DECAY)
        assert np.all(got[N_DECAY:] == 1) and np.all(got[:N_DECAY] < 1)


def test_grad_only_is_overwritten_and_state_resets():
    theta, grads = _problem(2)
    opt = optim.Adam()
    run(opt, theta, grads, LRS, 0.1)
    assert opt.t == STEPS and set(opt.state_arrays()) == {"m", "v"}
    kept = opt.state_arrays()
    opt.reset()  # zeros in the same arrays: what a fresh optimizer's first update starts from
    assert opt.t == 0 and set(opt.state_arrays()) == {"m", "v"}
    assert all(opt.state_arrays()[k] is kept[k] and not kept[k].any() for k in kept)
    np.testing.assert_array_equal(run(opt, theta, grads, LRS, 0.1), run(optim.Adam(), theta, grads, LRS, 0.1))


# ---------------------------------------------------------------------- the state, written in place
STATEFUL = [lambda: optim.SGD(0.9), lambda: optim.SGD(0.5, True), lambda: optim.Adam(), lambda: optim.Adam(0.8, 0.9, 1e-6, True)]
STATEFUL_IDS = ["momentum", "nesterov", "adam", "adamw"]


def _arrays(opt):
    """Every array of the optimizer's state: those a checkpoint stores, and Adam's device step counter."""
    return opt.state_names + (("step",) if isinstance(opt, optim.Adam) else ())


def _addresses(opt):
    """Where each array of the optimizer's state lives (NumPy: .ctypes.data); None where not made yet."""
    return {k: None if getattr(opt, k) is None else getattr(opt, k).ctypes.data for k in _arrays(opt)}


def _is_fresh(opt):
    """A fresh optimizer's state: no step taken, and every array it has made holds zeros."""
    return opt.t == 0 and all(getattr(opt, k) is None or not getattr(opt, k).any() for k in _arrays(opt))


def _trained(make, steps=3, seed=10):
    opt, (theta, grads) = make(), _problem(seed)
    return opt, run(opt, theta, grads[:steps], LRS[:steps], 0.1)


@pytest.mark.parametrize("make", STATEFUL, ids=STATEFUL_IDS)
def test_the_state_is_written_in_place(make):
    """reset, load_state, restore and adopt_state write into the arrays made at the first update (a captured
    CUDA graph holds their addresses), and each gives the state it promises."""
    opt, theta = _trained(make)
    where, names = _addresses(opt), opt.state_names
    assert None not in where.values()
    saved = {k: np.array(v) for k, v in opt.state_arrays().items()}
    snap = opt.snapshot()
    assert all(snap[k] is not getattr(opt, k) for k in _arrays(opt))  # a snapshot is a copy
    run(opt, theta, _problem(11)[1][:2], LRS[:2], 0.1)
    opt.restore(snap)
    assert _addresses(opt) == where and opt.t == 3
    for k in names:
        np.testing.assert_array_equal(getattr(opt, k), saved[k])
    run(opt, theta, _problem(11)[1][:2], LRS[:2], 0.1)
    opt.restore(snap)  # the snapshot was not written by the steps in between: it restores again
    for k in names:
        np.testing.assert_array_equal(getattr(opt, k), saved[k])
    given = {k: v + 1.0 for k, v in saved.items()}
    opt.load_state(7, given)
    assert _addresses(opt) == where and opt.t == 7 and all(getattr(opt, k) is not given[k] for k in names)
    for k in names:
        np.testing.assert_array_equal(getattr(opt, k), saved[k] + 1.0)
    opt.load_state(0, {})  # a checkpoint without state: a fresh optimizer's, in the same arrays
    assert _addresses(opt) == where and _is_fresh(opt)
    other, _ = _trained(make, seed=12)
    theirs = {k: np.array(v) for k, v in other.state_arrays().items()}
    opt.adopt_state(other)  # own arrays exist: other's state is copied into them
    assert _addresses(opt) == where and opt.t == other.t == 3
    for k in names:
        np.testing.assert_array_equal(getattr(opt, k), theirs[k])
    fresh = make()
    fresh.adopt_state(opt)  # none of its own yet: it takes opt's arrays themselves over
    assert _addresses(fresh) == where and fresh.t == 3
    opt.reset()
    assert _addresses(opt) == where and _is_fresh(opt)
    opt.adopt_state(make())  # adopting a fresh optimizer's (absent) state: zeros, in place
    assert _addresses(opt) == where and _is_fresh(opt)


@pytest.mark.parametrize("make", STATEFUL, ids=STATEFUL_IDS)
def test_a_reset_or_restored_optimizer_is_a_fresh_one(make):
    """Zeroed arrays instead of none: the same updates, bit for bit, as an optimizer never used (SGD's
    velocity starts at g, Adam's count at 1), after reset, after restoring a snapshot taken before the
    first update, and after loading a state without arrays."""
    theta, grads = _problem(13)
    want = run(make(), theta, grads, LRS, 0.1)
    reset, _ = _trained(make)
    reset.reset()
    restored = make()
    snap = restored.snapshot()
    run(restored, theta, grads[:2], LRS[:2], 0.1)
    restored.restore(snap)
    loaded, _ = _trained(make)
    loaded.load_state(0, {})
    for opt in (reset, restored, loaded):
        assert _is_fresh(opt)
        np.testing.assert_array_equal(run(opt, theta, grads, LRS, 0.1), want)
        assert opt.t == STEPS


def test_adam_refuses_a_step_count_without_its_moments_and_changes_nothing():
    opt, _ = _trained(lambda: optim.Adam())
    m = opt.m.copy()
    with pytest.raises(ValueError, match="together with its moments"):
        opt.load_state(5, {})
    assert opt.t == 3
    np.testing.assert_array_equal(opt.m, m)


@pytest.mark.parametrize("kw,err", [
    ({"momentum": 1.0}, ValueError), ({"momentum": -0.1}, ValueError), ({"momentum": "0.9"}, TypeError),
    ({"nesterov": True}, ValueError)])
def test_sgd_rejects_bad_settings(kw, err):
    with pytest.raises(err):
        optim.SGD(**kw)


@pytest.mark.parametrize("kw", [{"beta1": 1.0}, {"beta2": -0.5}, {"eps": 0.0}, {"eps": float("nan")}])
def test_adam_rejects_bad_settings(kw):
    with pytest.raises(ValueError):
        optim.Adam(**kw)


def test_make_optimizer_names():
    assert isinstance(optim.make_optimizer("sgd", momentum=0.5), optim.SGD)
    assert optim.make_optimizer("adam", decoupled=True).decoupled
    with pytest.raises(ValueError, match="optimizer must be one of"):
        optim.make_optimizer("rmsprop")


class _RecordingOps(NumpyOps):
    """NumpyOps with fused updates that record their arguments and run the reference rule."""

    def __init__(self):
        super().__init__(gemm=None)
        self.calls = []

    def sgd_update(self, theta, grad, velocity, lr, lam, n_decay, momentum, nesterov):
        self.calls.append(("sgd", velocity is None, lr, lam, n_decay, momentum, nesterov))
        ref = optim.SGD(momentum, nesterov)
        ref.velocity = velocity
        ref.update(theta, grad, lr, lam, n_decay)

    def adam_update(self, theta, grad, m, v, step, lr, lam, n_decay, beta1, beta2, eps, decoupled):
        self.calls.append(("adam", int(step[0]), lr, lam, n_decay, beta1, beta2, eps, decoupled))
        adam_corrections(step, beta1, beta2)  # the contract: the update advances the device counter


def test_fused_op_contract():
    """What a backend's fused kernels receive: documented in gpumlp.optim and implemented in _cupy_ops."""
    ops = _RecordingOps()
    theta, grads = _problem(3)
    got = run(optim.SGD(0.9, True), theta, grads, LRS, 0.3, ops)
    assert ops.calls[0] == ("sgd", False, 0.1, 0.3, N_DECAY, 0.9, True)
    # velocity starts at zero for the fused path: μ·0 + g = g, PyTorch's first step
    np.testing.assert_allclose(got, sgd_rule(theta, grads, LRS, 0.3, 0.9, True), rtol=1e-13)
    ops.calls.clear()
    opt = optim.Adam(0.8, 0.95, 1e-6, True)
    run(opt, theta, grads[:2], LRS[:2], 0.3, ops)
    # Adam's step counter is a device array that the update itself reads (steps so far) and advances
    assert ops.calls[1] == ("adam", 1, 0.1, 0.3, N_DECAY, 0.8, 0.95, 1e-6, True)
    assert opt.t == 2 and opt.step.dtype == np.int64 and opt.step.shape == (1,)


# ---------------------------------------------------------------------- PyTorch
def _torch_run(make, theta, grads, lrs):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: torch.optim cross-check skipped")
    w = torch.tensor(theta[:N_DECAY], requires_grad=True)
    b = torch.tensor(theta[N_DECAY:], requires_grad=True)
    opt = make(torch, w, b)
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad, b.grad = torch.tensor(g[:N_DECAY]), torch.tensor(g[N_DECAY:])
        opt.step()
    return np.concatenate([w.detach().numpy(), b.detach().numpy()])


@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("mu,nesterov", SGD_CASES)
def test_sgd_matches_torch(mu, nesterov, lam):
    theta, grads = _problem(4)
    ref = _torch_run(lambda torch, w, b: torch.optim.SGD(
        [{"params": [w], "weight_decay": lam}, {"params": [b], "weight_decay": 0.0}],
        lr=0.1, momentum=mu, nesterov=nesterov), theta, grads, LRS)
    np.testing.assert_allclose(run(optim.SGD(mu, nesterov), theta, grads, LRS, lam), ref, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("b1,b2,eps,decoupled", ADAM_CASES)
def test_adam_matches_torch(b1, b2, eps, decoupled, lam):
    theta, grads = _problem(5)

    def make(torch, w, b):
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        return cls([{"params": [w], "weight_decay": lam}, {"params": [b], "weight_decay": 0.0}],
                   lr=0.1, betas=(b1, b2), eps=eps, foreach=False)

    ref = _torch_run(make, theta, grads, LRS)
    np.testing.assert_allclose(run(optim.Adam(b1, b2, eps, decoupled), theta, grads, LRS, lam), ref,
                               rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- the model's optimizer path
@pytest.mark.parametrize("kw", [dict(optimizer="sgd", momentum=0.9, nesterov=True),
                                dict(optimizer="adam"), dict(optimizer="adam", decoupled=True)])
def test_model_step_applies_the_rule_to_the_loss_gradient(kw):
    """One fast step on the model = the rule applied to backward()'s ∂L/∂θ (all layers, biases)."""
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(9, 4)), rng.integers(0, 3, 9)
    m = gpumlp.MLP((4, 5, 3), bias=True, dtype="float64", backend="numpy", seed=0, weight_decay=0.2, **kw)
    theta0 = m.theta.copy()
    g = m.backward(m.forward(X, y))
    # ∂L/∂θ in the flat layout (backward's ∂J/∂W includes λW; the optimizer adds it itself)
    flat = np.concatenate([dW.ravel() - 0.2 * W.ravel() for dW, W in zip(g.dW, m.get_weights())] + list(g.db))
    kw = dict(kw)
    ref = optim.make_optimizer(kw.pop("optimizer"), **kw)
    expected = theta0.copy()
    ref.update(expected, flat, 0.05, 0.2, m.n_weights)
    m.step(X, y, lr=0.05)
    np.testing.assert_allclose(m.theta, expected, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- GPU: fused kernels vs NumPy
gpu = pytest.mark.gpu


def _cupy_ops(dtype):
    ok, why = cupy_status()
    if not ok:
        pytest.skip(why)
    from gpumlp._cupy_ops import CupyOps

    return CupyOps(np.dtype(dtype))


@gpu
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-5)])  # fp32: a few ulps per step
@pytest.mark.parametrize("mu,nesterov", SGD_CASES)
def test_fused_sgd_kernel_matches_numpy(mu, nesterov, dtype, rtol):
    ops = _cupy_ops(dtype)
    cp = ops.xp
    theta, grads = _problem(7)
    theta = theta.astype(dtype)
    ref = run(optim.SGD(mu, nesterov), theta, [g.astype(dtype) for g in grads], LRS, 0.3)
    opt, t = optim.SGD(mu, nesterov), cp.asarray(theta)
    for g, lr in zip(grads, LRS):
        opt.update(t, cp.asarray(g.astype(dtype)), lr, 0.3, N_DECAY, ops)
    np.testing.assert_allclose(t.get(), ref, rtol=rtol, atol=rtol)


@gpu
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("b1,b2,eps,decoupled", ADAM_CASES)
def test_fused_adam_kernel_matches_numpy(b1, b2, eps, decoupled, dtype, rtol):
    ops = _cupy_ops(dtype)
    cp = ops.xp
    theta, grads = _problem(8)
    theta = theta.astype(dtype)
    ref = run(optim.Adam(b1, b2, eps, decoupled), theta, [g.astype(dtype) for g in grads], LRS, 0.3)
    opt, t = optim.Adam(b1, b2, eps, decoupled), cp.asarray(theta)
    for g, lr in zip(grads, LRS):
        opt.update(t, cp.asarray(g.astype(dtype)), lr, 0.3, N_DECAY, ops)
    np.testing.assert_allclose(t.get(), ref, rtol=rtol, atol=rtol)


@gpu
@pytest.mark.parametrize("kw", [dict(optimizer="sgd", momentum=0.9, nesterov=True), dict(optimizer="adam"),
                                dict(optimizer="adam", decoupled=True)])
def test_cupy_training_matches_numpy(kw):
    """Whole epochs on both backends in float64: the fused update inside the real training loop."""
    _cupy_ops("float64")
    rng = np.random.default_rng(9)
    X, y = rng.normal(size=(64, 5)), rng.integers(0, 3, 64)
    models = [gpumlp.MLP((5, 8, 3), bias=True, dtype="float64", backend=b, seed=0, weight_decay=1e-3, **kw)
              for b in ("numpy", "cupy")]
    for m in models:
        m.fit(X, y, epochs=3, batch_size=16, lr=0.05)
    np.testing.assert_allclose(models[1].get_weights()[0], models[0].get_weights()[0], rtol=1e-9, atol=1e-12)
