"""Every gradient of the lecture against central finite differences of J, in float64.

For each configuration (activation × loss × λ × depth × bias) the named gradients of
``MLP.backward`` — ∂J/∂o, ∂J/∂h and ∂J/∂z per hidden layer, ∂J/∂W and ∂J/∂b per layer — and the
training step's ∂J/∂W, ∂J/∂b are compared with (J(v + ε) − J(v − ε)) / 2ε, where v is perturbed one
entry at a time and J is recomputed from that node of the computational graph onwards with the
reference functions: ``gpumlp.check_gradients``, whose definitions (ε, the relative error, the
central differences, J from a node) these tests use. tests/test_gradcheck.py shows that the check
catches wrong gradients.

Tolerance: ‖fd − analytic‖ / ‖analytic‖ ≤ 1e-6. With ε = 1e-6 in float64 the truncation error is
O(ε²) and the rounding error O(1e-16/ε) = 1e-10, so 1e-6 leaves a wide margin and still catches any
wrong term (a missing λW or a wrong φ′ is off by O(1)).
"""
import itertools

import numpy as np
import pytest

import gpumlp
from gpumlp import functions as F
from gpumlp.gradcheck import THRESHOLD as RTOL, central_differences as fd_of, relative_error as rel_err

ACTS = sorted(F.ACTIVATIONS)


def make_problem(depth, loss, bias, act, lam, seed=0, B=5, d=4, hidden=5, q=3):
    """A small net and batch. For relu/leaky_relu the seed is advanced until no pre-activation lies
    within 1e-3 of the kink at 0, where a central difference straddles two slopes (the kink itself
    is tested with exact values in test_functions.py); a row whose hidden units are all dead would
    otherwise put the next layer's z exactly at 0."""
    while True:
        m, X, y = _problem(depth, loss, bias, act, lam, seed, B, d, hidden, q)
        if act not in ("relu", "leaky_relu") or min(np.abs(z).min() for z in m.forward(X).z) > 1e-3:
            return m, X, y
        seed += 1000


def _problem(depth, loss, bias, act, lam, seed, B, d, hidden, q):
    rng = np.random.default_rng(seed)
    sizes = (d,) + (hidden,) * depth + (q,)
    m = gpumlp.MLP(sizes, activation=act, loss=loss, weight_decay=lam, bias=bias, dtype="float64",
                   backend="numpy", seed=seed)
    if bias:  # non-zero biases, so their gradient paths are exercised
        m.set_weights(m.get_weights(), [rng.normal(size=n) for n in sizes[1:]])
    X = rng.normal(size=(B, d))
    return m, X, targets(loss, rng, B, q)


def targets(loss, rng, B, q):
    """Labels (cross-entropy), reals (squared), 0/1 and soft labels (binary cross-entropy), counts (Poisson)."""
    if loss == "cross_entropy":
        return rng.integers(0, q, size=B)
    if loss == "binary_cross_entropy":
        y = rng.integers(0, 2, size=(B, q)).astype(float)
        y[0, 0] = 0.3
        return y
    if loss == "poisson":
        return rng.poisson(1.5, size=(B, q)).astype(float)
    return rng.normal(size=(B, q))


CONFIGS = list(itertools.product(ACTS, sorted(F.LOSSES), [0.0, 0.1], [1, 2, 3], [False, True]))


@pytest.mark.parametrize("act,loss,lam,depth,bias", CONFIGS)
def test_gradients_match_finite_differences(act, loss, lam, depth, bias):
    m, X, y = make_problem(depth, loss, bias, act, lam)
    result = gpumlp.check_gradients(m, X, y, max_entries=None)
    # every tensor of backward, output layer first (and the step's parameter gradients), entry by entry
    names = ["∂J/∂o"]
    for l in reversed(range(depth + 1)):
        names += [f"∂J/∂W{l + 1}"] + ([f"∂J/∂b{l + 1}"] if bias else [])
        if l:
            hidden = "" if depth == 1 else str(l)
            names += [f"∂J/∂h{hidden}", f"∂J/∂z{hidden}"]
    step = [f"{n} [step]" for n in names if "W" in n or "b" in n]
    assert result.names == tuple(names + step)
    assert all(t.n_checked == np.prod(t.shape) for t in result)
    assert result.passed, str(result)
    assert result.max_rel_error <= RTOL


def test_forward_matches_the_lecture_by_hand():
    """z = W1 x, h = φ(z), o = W2 h, L, s = λ/2(‖W1‖² + ‖W2‖²), J = L + s — written out directly."""
    m, X, y = make_problem(1, "squared", False, "tanh", 0.3)
    W1, W2 = m.get_weights()
    fw = m.forward(X, y)
    z = X @ W1.T
    h = np.tanh(z)
    o = h @ W2.T
    L = np.mean(0.5 * ((o - y) ** 2).sum(axis=1))
    s = 0.3 / 2 * ((W1**2).sum() + (W2**2).sum())
    np.testing.assert_allclose(fw.z[0], z, rtol=1e-14)
    np.testing.assert_allclose(fw.h[0], h, rtol=1e-14)
    np.testing.assert_allclose(fw.o, o, rtol=1e-14)
    assert fw.L == pytest.approx(L, rel=1e-14)
    assert fw.s == pytest.approx(s, rel=1e-14)
    assert fw.J == pytest.approx(L + s, rel=1e-14)


def test_backward_matches_the_lecture_by_hand():
    """The five gradients of the lecture, transcribed for a batch (rows are examples)."""
    lam = 0.2
    m, X, y = make_problem(1, "squared", False, "sigmoid", lam)
    W1, W2 = m.get_weights()
    fw = m.forward(X, y)
    g = m.backward(fw)
    B = X.shape[0]
    dJ_do = (fw.o - y) / B                        # ∂J/∂o = ∂L/∂o
    dJ_dW2 = dJ_do.T @ fw.h[0] + lam * W2         # ∂J/∂o hᵀ + λW2
    dJ_dh = dJ_do @ W2                            # W2ᵀ ∂J/∂o
    dJ_dz = dJ_dh * fw.h[0] * (1 - fw.h[0])       # ∂J/∂h ⊙ φ′(z)
    dJ_dW1 = dJ_dz.T @ X + lam * W1               # ∂J/∂z xᵀ + λW1
    for got, want in [(g.do, dJ_do), (g.dW[1], dJ_dW2), (g.dh[0], dJ_dh), (g.dz[0], dJ_dz), (g.dW[0], dJ_dW1)]:
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("loss", sorted(F.LOSSES))
def test_sample_weight_gradients_match_finite_differences(loss):
    """With per-example weights L is Σ w_i l_i / Σ w_i; the gradients follow."""
    m, X, y = make_problem(2, loss, True, "gelu", 0.05)
    w = np.array([0.5, 2.0, 0.0, 1.0, 3.0])
    fw = m.forward(X, y, sample_weight=w)
    per_example = [m.forward(X[i:i + 1], y[i:i + 1]).L for i in range(5)]
    assert fw.L == pytest.approx(np.dot(w, per_example) / w.sum(), rel=1e-12)
    g = m.backward(fw)
    for l, W in enumerate(m.weights):
        fd = fd_of(lambda: m.forward(X, y, sample_weight=w).J, W)
        assert rel_err(fd, g.dW[l]) <= RTOL


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.01])
def test_step_is_the_lecture_update(lam, bias):
    """step() gives W − lr·∂J/∂W, ∂J/∂W from backward().

    The step folds the update into the weight-gradient product, (1 − ηλ)W − η·dᵀa, which rounds
    differently from W − η(dᵀa + λW); in float64 the two agree to a few ulps, hence rtol 1e-12.
    """
    m, X, y = make_problem(2, "cross_entropy", bias, "relu", lam)
    lr = 0.1
    fw = m.forward(X, y)
    g = m.backward(fw)
    expected_W = [W - lr * dW for W, dW in zip(m.get_weights(), g.dW)]
    expected_b = [b - lr * db for b, db in zip(m.get_biases(), g.db)] if bias else []
    J = m.step(X, y, lr)
    assert J == pytest.approx(fw.J, rel=1e-12)
    for got, want in zip(m.get_weights() + (m.get_biases() or []), expected_W + expected_b):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_step_float32_matches_float64_reference(dtype):
    """The fast step in float32 tracks the float64 reference to float32 precision."""
    m64, X, y = make_problem(2, "cross_entropy", True, "tanh", 0.01)
    m = gpumlp.MLP(m64.sizes, activation="tanh", weight_decay=0.01, bias=True, dtype=dtype, backend="numpy")
    m.set_weights(m64.get_weights(), m64.get_biases())
    g = m64.backward(m64.forward(X, y))
    m.step(X, y, 0.1)
    for got, W, dW in zip(m.get_weights(), m64.get_weights(), g.dW):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, W - 0.1 * dW, rtol=2e-6 if dtype == "float32" else 1e-12, atol=1e-7)


def test_training_lowers_J_and_learns_a_classification_problem():
    rng = np.random.default_rng(1)
    centers = np.array([[0.0, 5.0], [5.0, -3.0], [-5.0, -3.0]])
    y = rng.integers(0, 3, size=600)
    X = centers[y] + rng.normal(size=(600, 2))
    m = gpumlp.MLP((2, 32, 3), weight_decay=1e-4, backend="numpy", seed=3)
    J0 = m.forward(X, y).J
    m.fit(X[:400], y[:400], epochs=40, batch_size=32, lr=0.1)
    assert m.forward(X, y).J < 0.5 * J0
    assert np.mean(m.loss_curve_[-5:]) < 0.5 * m.loss_curve_[0]
    assert m.score(X[400:], y[400:]) >= 0.95


def test_regression_is_learned():
    rng = np.random.default_rng(2)
    X = rng.uniform(-2, 2, size=(500, 1))
    y = np.sin(X)
    m = gpumlp.MLP((1, 32, 1), activation="tanh", loss="squared", bias=True, dtype="float64",
                   backend="numpy", seed=0)
    m.fit(X, y, epochs=200, batch_size=32, lr=0.1)
    assert m.score(X, y) > 0.98
    assert m.predict(X).shape == (500,)
