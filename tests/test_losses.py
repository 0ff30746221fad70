"""The logistic (binary cross-entropy) and exponential (Poisson) outputs: their losses against the
written-out formulas, scikit-learn's metrics, central finite differences in float64 and PyTorch's
BCEWithLogitsLoss / PoissonNLLLoss(log_input=True); stable at extreme logits; the targets they take;
and what a model with each output predicts. (The whole network's gradients for every loss are in
test_gradients.py and test_torch_autograd.py, the CUDA kernels in test_kernels_*.py.)"""
import math

import numpy as np
import pytest

import gpumlp
from gpumlp import functions as F

NEW = ["binary_cross_entropy", "poisson"]
DTYPES = [np.float32, np.float64]


def problem(loss, B=7, q=3, seed=0):
    rng = np.random.default_rng(seed)
    o = rng.normal(size=(B, q)) * 2
    if loss == "binary_cross_entropy":
        y = rng.integers(0, 2, size=(B, q)).astype(float)
        y[0, 0] = 0.4  # a soft label
    else:
        y = rng.poisson(2.0, size=(B, q)).astype(float)
        y[0, 0] = 0.5  # a rate
    return o, y, rng.uniform(0.1, 2.0, B)


def sigmoid(o):
    return 1 / (1 + np.exp(-o))


def test_binary_cross_entropy_is_the_written_out_formula():
    o, y, w = problem("binary_cross_entropy")
    p = sigmoid(o)
    per_example = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(axis=1)
    assert float(F.binary_cross_entropy_forward(o, y)) == pytest.approx(per_example.mean(), rel=1e-13)
    assert float(F.binary_cross_entropy_forward(o, y, w)) == pytest.approx(np.dot(w, per_example) / w.sum(), rel=1e-13)
    np.testing.assert_allclose(F.binary_cross_entropy_backward(o, y), (p - y) / len(o), rtol=1e-13)
    np.testing.assert_allclose(F.LOSSES["binary_cross_entropy"].output(o), p, rtol=1e-14)


def test_poisson_is_half_the_deviance_with_its_constant():
    o, y, w = problem("poisson")
    mu = np.exp(o)
    xlogy = np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / mu), 0)
    per_example = (xlogy - y + mu).sum(axis=1)
    assert float(F.poisson_forward(o, y)) == pytest.approx(per_example.mean(), rel=1e-12)
    assert float(F.poisson_forward(o, y, w)) == pytest.approx(np.dot(w, per_example) / w.sum(), rel=1e-12)
    np.testing.assert_allclose(F.poisson_backward(o, y, w), (mu - y) * (w / w.sum())[:, None], rtol=1e-13)
    assert float(F.poisson_forward(np.log(y[1:] + (y[1:] == 0) * 1e-300), y[1:])) == pytest.approx(0, abs=1e-12)
    np.testing.assert_allclose(F.LOSSES["poisson"].output(o), mu, rtol=1e-15)


def test_the_losses_are_scikit_learns_metrics():
    metrics = pytest.importorskip("sklearn.metrics")
    o, y, w = problem("poisson", B=50, q=1)
    assert float(F.poisson_forward(o, y, w)) == pytest.approx(
        metrics.mean_poisson_deviance(y[:, 0], np.exp(o[:, 0]), sample_weight=w) / 2, rel=1e-12)
    o, y, w = problem("binary_cross_entropy", B=50, q=1)
    y = (y > 0.5).astype(float)
    assert float(F.binary_cross_entropy_forward(o, y, w)) == pytest.approx(
        metrics.log_loss(y[:, 0], sigmoid(o[:, 0]), sample_weight=w), rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss", NEW)
def test_backward_is_the_derivative_of_forward(loss, weighted):
    """Central differences of L in float64, entry by entry: error O(ε²) + O(1e-16/ε) ≈ 1e-10."""
    o, y, w = problem(loss)
    w = w if weighted else None
    grad, fd, eps = F.LOSSES[loss].backward(o, y, w), np.zeros_like(o), 1e-6
    for i in np.ndindex(o.shape):
        up, down = o.copy(), o.copy()
        up[i] += eps
        down[i] -= eps
        fd[i] = (float(F.LOSSES[loss].forward(up, y, w)) - float(F.LOSSES[loss].forward(down, y, w))) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss", NEW)
def test_against_pytorch(loss, weighted):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: cross-check skipped")
    o, y, w = problem(loss)
    wn = w / w.sum() if weighted else np.full(len(o), 1 / len(o))
    ot, yt = torch.tensor(o, requires_grad=True), torch.tensor(y)
    if loss == "binary_cross_entropy":
        per_element = torch.nn.BCEWithLogitsLoss(reduction="none")(ot, yt)
    else:  # PoissonNLLLoss(log_input=True) = e^o − y·o; ours adds the constant y log y − y
        per_element = torch.nn.PoissonNLLLoss(log_input=True, full=False, reduction="none")(ot, yt) \
            + torch.special.xlogy(yt, yt) - yt
    L = (torch.tensor(wn)[:, None] * per_element).sum()
    L.backward()
    w = w if weighted else None
    assert float(F.LOSSES[loss].forward(o, y, w)) == pytest.approx(L.item(), rel=1e-12)
    np.testing.assert_allclose(F.LOSSES[loss].backward(o, y, w), ot.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_is_exact_and_finite_at_huge_logits(dtype):
    o = np.array([[1e4, -1e4, 40.0, -40.0, 0.0]], dtype)
    y = np.array([[1.0, 1.0, 0.0, 0.0, 1.0]], dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        L = F.binary_cross_entropy_forward(o, y)
        do = F.binary_cross_entropy_backward(o, y)
    # per label: 0 (right and sure), 1e4 (wrong and sure), 40 + log1p(e^−40), log1p(e^−40), log 2
    want = 0 + 1e4 + 40 + 2 * math.log1p(math.exp(-40)) + math.log(2)
    assert float(L) == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(do, np.array([[0, -1, 1, 0, -0.5]]), atol=1e-7)
    assert do.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_with_tiny_means_and_zero_counts(dtype):
    o = np.array([[-1e4, -50.0, 0.0, math.log(3.0)]], dtype)
    y = np.array([[0.0, 0.0, 0.0, 3.0]], dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        L = F.poisson_forward(o, y)
        do = F.poisson_backward(o, y)
    assert float(L) == pytest.approx(math.exp(-50) + 1.0, rel=1e-6)  # y = 0: l = μ; μ = y: l = 0
    np.testing.assert_allclose(do, np.array([[0, math.exp(-50), 1, 0]]), atol=1e-6)


@pytest.mark.parametrize("loss", NEW)
def test_a_batch_of_zero_weights_has_no_loss_and_no_gradient(loss):
    o, y, _ = problem(loss)
    w = np.zeros(len(o))
    assert float(F.LOSSES[loss].forward(o, y, w)) == 0
    assert (F.LOSSES[loss].backward(o, y, w) == 0).all()


@pytest.mark.parametrize("loss,y,match", [
    ("binary_cross_entropy", [[0.0, 1.5]] * 4, r"values in \[0, 1\]"),
    ("binary_cross_entropy", [[0.0, -0.1]] * 4, r"values in \[0, 1\]"),
    ("binary_cross_entropy", [0, 1, 1, 0], r"shape \(n_samples, 2\)"),
    ("poisson", [[1.0, -2.0]] * 4, "non-negative"),
    ("poisson", [[1.0, np.nan]] * 4, "NaN"),
])
def test_targets_are_checked_before_training(loss, y, match):
    m = gpumlp.MLP((3, 4, 2), loss=loss, backend="numpy", seed=0)
    theta = m.theta.copy()
    with pytest.raises(ValueError, match=match):
        m.fit(np.ones((4, 3)), np.array(y), epochs=1)
    np.testing.assert_array_equal(m.theta, theta)


def test_a_binary_model_predicts_labels_and_probabilities():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 2))
    y = (X[:, 0] - X[:, 1] > 0).astype(float)
    m = gpumlp.MLP((2, 8, 1), activation="tanh", loss="binary_cross_entropy", bias=True, dtype="float64",
                   backend="numpy", seed=0).fit(X, y, epochs=60, batch_size=32, lr=0.3)
    p = m.predict_proba(X)
    assert p.shape == (300, 1) and ((p > 0) & (p < 1)).all()
    labels = m.predict(X)
    assert labels.shape == (300,) and labels.dtype.kind == "i"
    np.testing.assert_array_equal(labels, (p[:, 0] > 0.5).astype(int))
    np.testing.assert_array_equal(labels, (m.decision_function(X)[:, 0] > 0).astype(int))
    assert m.score(X, y) == pytest.approx(np.mean(labels == y)) and m.score(X, y) > 0.95


def test_a_multilabel_model_predicts_an_indicator_matrix():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 3))
    Y = np.c_[X[:, 0] > 0, X[:, 1] > 0, X[:, 0] + X[:, 2] > 0].astype(float)
    m = gpumlp.MLP((3, 16, 3), activation="relu", loss="binary_cross_entropy", bias=True, dtype="float64",
                   backend="numpy", seed=0).fit(X, Y, epochs=80, batch_size=32, lr=0.3)
    P, pred = m.predict_proba(X), m.predict(X)
    assert P.shape == pred.shape == (400, 3)
    assert np.abs(P.sum(axis=1) - 1).max() > 0.1  # one sigmoid per label, not a softmax
    np.testing.assert_array_equal(pred, (P > 0.5).astype(int))
    subset = np.mean((pred == Y).all(axis=1))
    assert m.score(X, Y) == pytest.approx(subset) and subset > 0.9
    w = rng.uniform(0, 1, 400)
    assert m.score(X, Y, sample_weight=w) == pytest.approx(np.dot(w, (pred == Y).all(axis=1)) / w.sum())


def test_a_poisson_model_predicts_means():
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, size=(500, 2))
    y = rng.poisson(np.exp(1 + X[:, 0] - 0.5 * X[:, 1])).astype(float)
    m = gpumlp.MLP((2, 8, 1), activation="tanh", loss="poisson", bias=True, dtype="float64", backend="numpy",
                   seed=0).fit(X, y, epochs=100, batch_size=50, lr=0.02)
    mu = m.predict(X)
    assert mu.shape == (500,) and (mu > 0).all()
    np.testing.assert_allclose(mu, np.exp(m.decision_function(X)[:, 0]), rtol=1e-14)
    truth = np.exp(1 + X[:, 0] - 0.5 * X[:, 1])
    assert np.abs(mu - truth).mean() < 0.3 * truth.mean()
    r2 = 1 - ((y - mu) ** 2).sum() / ((y - y.mean()) ** 2).sum()  # score is R² of the means, as scikit-learn's
    assert m.score(X, y) == pytest.approx(r2, rel=1e-12)
    with pytest.raises(ValueError, match="predict_proba needs"):
        m.predict_proba(X)


@pytest.mark.parametrize("loss", NEW)
def test_a_saved_model_keeps_its_output(loss, tmp_path):
    o, y, _ = problem(loss, B=20, q=2)
    X = np.random.default_rng(4).normal(size=(20, 3))
    m = gpumlp.MLP((3, 5, 2), loss=loss, bias=True, backend="numpy", seed=0).fit(X, y, epochs=2)
    m.save(tmp_path / "m.npz")
    back = gpumlp.load(tmp_path / "m.npz", backend="numpy")
    assert back.loss == loss
    np.testing.assert_array_equal(back.predict(X), m.predict(X))
