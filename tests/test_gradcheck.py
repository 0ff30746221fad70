"""gpumlp.check_gradients: it catches wrong gradients (each planted bug fails exactly the tensors it
reaches), it checks in float64 without touching the model, and it says why when it cannot judge.
(tests/test_gradients.py runs it over every configuration of the lecture's net.)"""
import json

import numpy as np
import pytest

import gpumlp
from gpumlp import functions as F
from gpumlp._numpy_ops import NumpyOps
from gpumlp.data import Scaler
from gpumlp.gradcheck import central_differences, objective_from, relative_error


def problem(sizes=(4, 5, 3), activation="tanh", loss="cross_entropy", bias=True, lam=0.1, dtype="float64", B=6,
            seed=0):
    rng = np.random.default_rng(seed)
    m = gpumlp.MLP(sizes, activation=activation, loss=loss, weight_decay=lam, bias=bias, dtype=dtype,
                   backend="numpy", seed=seed)
    if bias:
        m.set_weights(m.get_weights(), [rng.normal(size=n) for n in sizes[1:]])
    X = rng.normal(size=(B, sizes[0]))
    y = rng.integers(0, sizes[-1], B) if loss == "cross_entropy" else rng.normal(size=(B, sizes[-1]))
    return m, X, y


def failing(result):
    return {name for name, t in zip(result.names, result) if not t.passed}


def test_a_correct_backward_passes_with_float64_errors():
    m, X, y = problem()
    result = gpumlp.check_gradients(m, X, y)
    assert result.passed and result.max_rel_error < 1e-7, str(result)
    assert result.names == ("∂J/∂o", "∂J/∂W2", "∂J/∂b2", "∂J/∂h", "∂J/∂z", "∂J/∂W1", "∂J/∂b1",
                            "∂J/∂W2 [step]", "∂J/∂b2 [step]", "∂J/∂W1 [step]", "∂J/∂b1 [step]")
    assert result["∂J/∂W1"].shape == (5, 4) and result["∂J/∂h"].shape == (6, 5)
    assert result["∂J/∂W1 [step]"].source == "Step (NumpyOps)"


# ------------------------------------------------------------------------------ planted bugs
def test_a_missing_phi_prime_fails_dz_and_what_is_computed_from_it(monkeypatch):
    """∂J/∂z = ∂J/∂h (φ′ forgotten) in the reference; NumpyOps' own tanh path is still right."""
    m, X, y = problem(activation="tanh")
    act = F.ACTIVATIONS["tanh"]
    monkeypatch.setitem(F.ACTIVATIONS, "tanh", F.Activation("tanh", act.forward, lambda dh, z, h: dh.copy()))
    result = gpumlp.check_gradients(m, X, y)
    assert failing(result) == {"∂J/∂z", "∂J/∂W1", "∂J/∂b1"}
    assert "FAILED" in str(result) and "∂J/∂z" in str(result).splitlines()[-1]


def test_a_missing_lambda_w_fails_every_weight_gradient_and_nothing_else(monkeypatch):
    real = F.linear_backward
    monkeypatch.setattr(F, "linear_backward", lambda dz, x, W, lam=0.0: real(dz, x, W, 0.0))
    m, X, y = problem(sizes=(4, 5, 6, 3), lam=0.1)
    result = gpumlp.check_gradients(m, X, y, step=False)
    assert failing(result) == {"∂J/∂W1", "∂J/∂W2", "∂J/∂W3"}
    assert result["∂J/∂W1"].rel_error > 1e-3  # an O(1) term, not a rounding difference


def test_a_wrong_input_gradient_fails_from_h_down(monkeypatch):
    real = F.linear_backward

    def doubled_input_part(dz, x, W, lam=0.0):
        dW, dx, db = real(dz, x, W, lam)
        return dW, 2 * dx, db

    monkeypatch.setattr(F, "linear_backward", doubled_input_part)
    m, X, y = problem()
    result = gpumlp.check_gradients(m, X, y, step=False)
    assert failing(result) == {"∂J/∂h", "∂J/∂z", "∂J/∂W1", "∂J/∂b1"}
    assert result["∂J/∂h"].rel_error == pytest.approx(0.5, rel=1e-6)  # fd = g, backward 2g: ‖g‖/‖2g‖


def test_a_loss_gradient_without_the_batch_mean_fails_everything(monkeypatch):
    real = F.LOSSES["squared"]
    monkeypatch.setitem(F.LOSSES, "squared", F.Loss("squared", real.forward,
                                                    lambda o, y, w=None: o - y))  # sum, not mean
    m, X, y = problem(loss="squared", lam=0.0)
    result = gpumlp.check_gradients(m, X, y, step=False)
    assert failing(result) == set(result.names)


def test_sample_weights_reach_the_finite_differences(monkeypatch):
    """With weights the check passes; a backward that ignores them fails (so objective_from weighs them)."""
    m, X, y = problem(loss="squared")
    w = np.array([0.5, 2.0, 0.0, 1.0, 3.0, 1.5])
    assert gpumlp.check_gradients(m, X, y, sample_weight=w).passed
    real = F.LOSSES["squared"]
    monkeypatch.setitem(F.LOSSES, "squared", F.Loss("squared", real.forward,
                                                    lambda o, y, w=None: real.backward(o, y)))
    assert "∂J/∂o" in failing(gpumlp.check_gradients(m, X, y, sample_weight=w, step=False))


def test_a_wrong_training_step_fails_only_the_steps_rows(monkeypatch):
    real = NumpyOps.bias_grad
    monkeypatch.setattr(NumpyOps, "bias_grad", lambda self, d, out: real(self, 1.5 * d, out))
    m, X, y = problem()
    assert failing(gpumlp.check_gradients(m, X, y)) == {"∂J/∂b1 [step]", "∂J/∂b2 [step]"}


# ------------------------------------------------------------------------------ the definitions
@pytest.mark.parametrize("kind,layer", [("o", None), ("h", 0), ("z", 0), ("h", 1), ("z", 1), ("x", None)])
def test_j_from_any_node_is_the_forward_pass_j(kind, layer):
    m, X, y = problem(sizes=(4, 5, 6, 3), activation="gelu")
    w = np.linspace(0.5, 2, 6)
    fw = m.forward(X, y, w)
    value = {"o": fw.o, "x": fw.x}.get(kind) if layer is None else getattr(fw, kind)[layer]
    assert objective_from(m, fw, kind, layer, value) == pytest.approx(fw.J, rel=1e-14)


def test_central_differences_of_a_known_function():
    v = np.array([[1.0, -2.0], [0.5, 3.0]])
    fd = central_differences(lambda: float((v**3).sum()), v)
    np.testing.assert_allclose(fd, 3 * v**2, rtol=1e-8)
    np.testing.assert_array_equal(v, [[1.0, -2.0], [0.5, 3.0]])  # restored exactly
    assert central_differences(lambda: float((v**3).sum()), v, [(1, 1), (0, 0)]) == pytest.approx([27.0, 3.0])
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert relative_error(np.array([2.0, 4.0]), np.array([1.0, 2.0])) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ precision and the model
def test_a_float32_model_is_checked_through_a_float64_copy_and_left_untouched():
    m, X, y = problem(dtype="float32")
    theta, grad = m.theta.copy(), m.grad.copy()
    result = gpumlp.check_gradients(m, X, y)
    # float32 central differences would be off by ~1e-2 (rounding 1e-7/ε); these are float64's
    assert result.passed and result.max_rel_error < 1e-7
    np.testing.assert_array_equal(m.theta, theta)
    np.testing.assert_array_equal(m.grad, grad)
    assert m.dtype == np.float32 and "float64 copy" in str(result)


def test_a_pipeline_is_checked_on_raw_data_as_it_preprocesses_it():
    m, X, y = problem()
    scaler = Scaler("standard").fit(X * 10 + 3)
    labels = np.array(["ant", "bee", "cat"])
    pipeline = gpumlp.Pipeline(m, scaler=scaler, classes=labels)
    raw = X * 10 + 3
    a = gpumlp.check_gradients(pipeline, raw, labels[y])
    b = gpumlp.check_gradients(m, scaler.transform(raw, np.float64), y)
    assert a.passed and [t.rel_error for t in a] == [t.rel_error for t in b]


def test_large_tensors_are_sampled_reproducibly():
    m, X, y = problem(sizes=(30, 40, 3), B=4)
    a = gpumlp.check_gradients(m, X, y, max_entries=50, seed=3)
    b = gpumlp.check_gradients(m, X, y, max_entries=50, seed=3)
    assert a["∂J/∂W1"].n_checked == 50 and a["∂J/∂o"].n_checked == 12  # 4 × 3 ≤ 50: all of it
    assert a == b and a.passed
    assert "50 of 1200" in str(a)


def test_a_relu_kink_is_reported():
    """A row of zeros without bias puts z exactly at relu's kink: its central difference is the mean
    slope 0.5, backward says φ′(0) = 0 (PyTorch's convention); the result says why it fails."""
    m, X, y = problem(activation="relu", bias=False, lam=0.0)
    X[2] = 0.0
    result = gpumlp.check_gradients(m, X, y)
    assert "∂J/∂z" in failing(result)
    assert any("kink" in note and "5 entries of z" in note for note in result.notes)
    assert "kink" in str(result)


def test_a_gradient_below_the_resolution_of_central_differences_says_so():
    m, X, _ = problem(bias=False, lam=0.0)
    m.set_weights([30 * W for W in m.get_weights()])
    result = gpumlp.check_gradients(m, X, m.predict(X))  # saturated softmax: ∂J/∂o ≈ 1e-70, J ≈ 0
    assert result["∂J/∂o"].unresolved and "below resolution" in str(result)
    assert any("rounding noise" in note for note in result.notes)


def test_the_threshold_decides_and_the_result_serialises():
    m, X, y = problem()
    strict = gpumlp.check_gradients(m, X, y, threshold=1e-13)
    assert not strict.passed and strict.threshold == 1e-13
    assert "gradients disagree" in str(strict)
    d = json.loads(json.dumps(strict.to_dict()))
    assert d["passed"] is False and len(d["tensors"]) == len(strict)
    assert {t["name"] for t in d["tensors"]} >= {"∂J/∂o", "∂J/∂W1"}


@pytest.mark.parametrize("kw,err,match", [
    ({"threshold": 0}, ValueError, "threshold"), ({"threshold": float("nan")}, ValueError, "threshold"),
    ({"eps": -1e-6}, ValueError, "eps"), ({"eps": 1.0}, ValueError, "eps"),
    ({"max_entries": 0}, ValueError, "max_entries"), ({"max_entries": True}, ValueError, "max_entries"),
    ({"max_entries": 2.5}, ValueError, "max_entries"),
])
def test_bad_arguments_are_refused(kw, err, match):
    m, X, y = problem()
    with pytest.raises(err, match=match):
        gpumlp.check_gradients(m, X, y, **kw)


def test_bad_models_and_data_are_refused():
    m, X, y = problem()
    with pytest.raises(TypeError, match="gpumlp.MLP or gpumlp.Pipeline"):
        gpumlp.check_gradients("model", X, y)
    with pytest.raises(ValueError, match="needs targets y"):
        gpumlp.check_gradients(m, X, None)
    with pytest.raises(ValueError, match="X"):
        gpumlp.check_gradients(m, X[:, :3], y)
    with pytest.raises(ValueError, match="y"):
        gpumlp.check_gradients(m, X, y[:3])


@pytest.mark.gpu
def test_a_cupy_model_is_checked_on_the_gpu_with_its_kernels():
    m, X, y = problem(sizes=(4, 5, 6, 3), activation="gelu", dtype="float32")
    g = gpumlp.MLP(m.sizes, activation="gelu", weight_decay=0.1, bias=True, dtype="float32", backend="cupy")
    g.set_weights(m.get_weights(), m.get_biases())
    result = gpumlp.check_gradients(g, X, y)
    assert result.passed and result.backend == "cupy", str(result)
    assert result["∂J/∂W1 [step]"].source == "Step (CupyOps)"
    cpu = gpumlp.check_gradients(m, X, y)
    for a, b in zip(result, cpu):
        assert a.name == b.name and a.rel_error < 1e-7 and b.rel_error < 1e-7
