"""The same forward and gradients as PyTorch's autograd, when PyTorch is importable."""
import itertools

import numpy as np
import pytest

import gpumlp

torch = pytest.importorskip("torch", reason="PyTorch is not installed: autograd cross-check skipped")

TORCH_ACT = {
    "relu": torch.relu,
    "leaky_relu": lambda z: torch.nn.functional.leaky_relu(z, 0.01),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
    "softplus": lambda z: torch.nn.functional.softplus(z, threshold=1e9),  # exact, as ours
    "identity": lambda z: z,
}


LOSSES = ["squared", "cross_entropy", "binary_cross_entropy", "poisson"]


def torch_loss(loss, o, y):
    """PyTorch's own losses, as ours: mean over the batch of the per-example sum over outputs."""
    B = o.shape[0]
    if loss == "cross_entropy":
        return torch.nn.functional.cross_entropy(o, y)
    if loss == "binary_cross_entropy":
        return torch.nn.BCEWithLogitsLoss(reduction="sum")(o, y) / B
    if loss == "poisson":  # PoissonNLLLoss(log_input=True) is e^o − y·o; ours adds the constant y log y − y
        return torch.nn.PoissonNLLLoss(log_input=True, full=False, reduction="sum")(o, y) / B \
            + (torch.special.xlogy(y, y) - y).sum() / B
    return 0.5 * ((o - y) ** 2).sum(dim=1).mean()


@pytest.mark.parametrize("act,loss,lam,depth,bias", list(itertools.product(
    sorted(TORCH_ACT), LOSSES, [0.0, 0.1], [1, 2, 3], [False, True])))
def test_matches_torch_autograd(act, loss, lam, depth, bias):
    rng = np.random.default_rng(7)
    sizes = (4,) + (6,) * depth + (3,)
    m = gpumlp.MLP(sizes, activation=act, loss=loss, weight_decay=lam, bias=bias, dtype="float64",
                   backend="numpy", seed=1)
    if bias:
        m.set_weights(m.get_weights(), [rng.normal(size=n) for n in sizes[1:]])
    X = rng.normal(size=(8, 4))
    y = {"cross_entropy": lambda: rng.integers(0, 3, size=8), "squared": lambda: rng.normal(size=(8, 3)),
         "binary_cross_entropy": lambda: rng.uniform(0, 1, size=(8, 3)).round(),
         "poisson": lambda: rng.poisson(2.0, size=(8, 3)).astype(float)}[loss]()
    fw = m.forward(X, y)
    g = m.backward(fw)

    Ws = [torch.tensor(W, requires_grad=True) for W in m.get_weights()]
    bs = [torch.tensor(b, requires_grad=True) for b in m.get_biases()] if bias else [None] * len(Ws)
    a = torch.tensor(X)
    hs = []
    for l in range(depth):
        z = a @ Ws[l].T + (bs[l] if bias else 0)
        a = TORCH_ACT[act](z)
        a.retain_grad()
        hs.append(a)
    o = a @ Ws[-1].T + (bs[-1] if bias else 0)
    o.retain_grad()
    L = torch_loss(loss, o, torch.tensor(y))
    J = L + lam / 2 * sum((W**2).sum() for W in Ws)
    J.backward()

    assert fw.J == pytest.approx(J.item(), rel=1e-12)
    np.testing.assert_allclose(g.do, o.grad.numpy(), rtol=1e-10, atol=1e-14)
    for l in range(depth):
        np.testing.assert_allclose(g.dh[l], hs[l].grad.numpy(), rtol=1e-10, atol=1e-14)
    for l, W in enumerate(Ws):
        np.testing.assert_allclose(g.dW[l], W.grad.numpy(), rtol=1e-10, atol=1e-14)
    if bias:
        for l, b in enumerate(bs):
            np.testing.assert_allclose(g.db[l], b.grad.numpy(), rtol=1e-10, atol=1e-14)
