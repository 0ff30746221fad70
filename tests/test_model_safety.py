"""Honest answers from the model itself: weights of any scale, a backward pass only of this model's own
forward pass at its current weights, training refused while another thread trains the model, and
parameters set layer by layer only when every array given is right."""
import threading

import numpy as np
import pytest

import gpumlp


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)), rng.integers(0, 3, n)


# ------------------------------------------------------------------------------ sample weights
@pytest.mark.parametrize("scale", [1e-300, 1e-45, 1e38, 1e300])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sample_weights_of_any_scale_train_as_their_ratios_do(scale, dtype):
    """L is a weighted mean, invariant to the weights' scale: weights of 1e-300 (0 in float32) or 1e300
    (inf) train exactly as the same ratios near 1 do, instead of training nothing or 'diverging'."""
    X, y = _data()
    ratios = np.random.default_rng(1).uniform(0.5, 2.0, len(y))
    runs = []
    for w in (ratios, ratios * scale):
        m = gpumlp.MLP((4, 6, 3), seed=0, backend="numpy", dtype=dtype, momentum=0.9)
        with np.errstate(over="ignore", under="ignore"):
            m.fit(X, y, epochs=2, batch_size=16, lr=0.1, sample_weight=w, validation_data=(X, y, w))
        runs.append(m)
    a, b = runs
    # ratios·scale is itself rounded (float64), so a weight may land one float32 ulp from the ratio's
    # own cast: float32 runs then agree to a few ulps of the weights, float64 runs to rounding.
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(b.theta, a.theta, **tol)
    assert b.loss_curve_ == pytest.approx(a.loss_curve_, rel=1e-6) and np.isfinite(b.loss_curve_).all()
    assert b.validation_curve_ == pytest.approx(a.validation_curve_)
    assert b.score(X, y, sample_weight=ratios * scale) == pytest.approx(a.score(X, y, sample_weight=ratios))


def test_weights_whose_largest_is_in_one_to_two_are_used_as_they_are():
    """The rescaling is by a power of two: ordinary weights keep every bit of the results."""
    from gpumlp.validation import rescaled_weights

    w = np.array([0.5, 1.25, 1.999])
    np.testing.assert_array_equal(rescaled_weights(w), w)
    np.testing.assert_array_equal(rescaled_weights(w * 2.0**-900), w)
    assert rescaled_weights(np.array([3.0, 6.0])).tolist() == [0.75, 1.5]


# ------------------------------------------------------------------------------ backward(fw)
def test_backward_refuses_another_models_forward_pass():
    X, y = _data(8)
    a, b = (gpumlp.MLP((4, 5, 3), seed=s, backend="numpy") for s in (0, 0))
    fw = a.forward(X, y)
    with pytest.raises(ValueError, match="forward pass of another model"):
        b.backward(fw)  # same weights even: still not b's graph
    assert len(a.backward(fw).dW) == 2


@pytest.mark.parametrize("change", ["step", "set_weights", "set_layers", "in place", "fit"])
def test_backward_refuses_a_forward_pass_from_before_the_weights_changed(change):
    X, y = _data(8)
    m = gpumlp.MLP((4, 5, 3), seed=0, backend="numpy")
    fw = m.forward(X, y)
    if change == "step":
        m.step(X, y, lr=0.1)
    elif change == "set_weights":
        m.set_weights([w * 2 for w in m.get_weights()])
    elif change == "set_layers":
        m.set_layers({1: m.get_weights()[1] * 2})
    elif change == "in place":
        m.weights[0][0, 0] += 1.0
    else:
        m.fit(X, y, epochs=1)
    with pytest.raises(ValueError, match="before the weights changed"):
        m.backward(fw)
    m.backward(m.forward(X, y))  # a fresh forward pass is fine


# ------------------------------------------------------------------------------ threads
def _hold_training(m, X, y):
    """Start fit in a thread that stops inside its first epoch's callback until released."""
    inside, release = threading.Event(), threading.Event()

    def callback(model, record):
        inside.set()
        release.wait(10)

    t = threading.Thread(target=m.fit, args=(X, y), kwargs=dict(epochs=2, callbacks=callback))
    t.start()
    assert inside.wait(10)
    return t, release


@pytest.mark.parametrize("call", ["fit", "partial_fit", "step", "set_weights", "set_layers", "set_params",
                                  "reset_parameters", "trainer"])
def test_a_second_thread_cannot_train_or_change_a_model_being_trained(call):
    X, y = _data()
    m = gpumlp.MLP((4, 6, 3), seed=0, backend="numpy", momentum=0.9)
    t, release = _hold_training(m, X, y)
    try:
        calls = {"fit": lambda: m.fit(X, y, epochs=1), "partial_fit": lambda: m.partial_fit(X, y),
                 "step": lambda: m.step(X, y, lr=0.1), "set_weights": lambda: m.set_weights(m.get_weights()),
                 "set_layers": lambda: m.set_layers({0: m.get_weights()[0]}),
                 "set_params": lambda: m.set_params(weight_decay=0.1), "reset_parameters": m.reset_parameters,
                 "trainer": lambda: gpumlp.Trainer(m).run_epoch(gpumlp.Trainer(m).prepare(X, y), 0.1)}
        errors = []

        def other():
            try:
                calls[call]()
            except RuntimeError as exc:
                errors.append(str(exc))
        th = threading.Thread(target=other)
        th.start()
        th.join(10)
        assert errors and "being trained or changed by another thread" in errors[0]
        assert m.weight_decay == 0.0
    finally:
        release.set()
        t.join(10)
    assert m.epochs_ == 2  # the first fit finished undisturbed


def test_the_training_thread_may_change_the_model_from_its_own_callback():
    X, y = _data()
    m = gpumlp.MLP((4, 6, 3), seed=0, backend="numpy")

    def callback(model, record):
        model.set_params(weight_decay=0.01 * record["epoch"])  # returns the model: not a request to stop
        return False

    m.fit(X, y, epochs=2, callbacks=callback)
    assert m.weight_decay == 0.02 and m.epochs_ == 2


def test_concurrent_predictions_are_those_of_one_thread():
    X, y = _data(500)
    m = gpumlp.MLP((4, 16, 3), seed=0, backend="numpy").fit(X, y, epochs=3)
    want = m.predict_proba(X)
    results = [None] * 8

    def work(i):
        results[i] = m.predict_proba(X)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for r in results:
        np.testing.assert_array_equal(r, want)


# ------------------------------------------------------------------------------ set_layers
def _biased(dtype="float32", **kw):
    return gpumlp.MLP((4, 5, 6, 3), seed=0, backend="numpy", dtype=dtype, bias=True, **kw)


def test_set_layers_sets_the_layers_given_and_no_other_entry_of_theta():
    X, y = _data()
    m = _biased(momentum=0.9).fit(X, y, epochs=1, batch_size=16)  # momentum state to keep
    theta, velocity = m.theta.copy(), {k: np.array(v) for k, v in m.optimizer.state_arrays().items()}
    rng = np.random.default_rng(3)
    W1, b2 = rng.normal(size=(6, 5)), rng.normal(size=3)  # float64 into a float32 model: cast
    assert m.set_layers({1: W1}, {-1: b2}) is m
    np.testing.assert_array_equal(m.get_weights()[1], W1.astype(np.float32))
    np.testing.assert_array_equal(m.get_biases()[2], b2.astype(np.float32))
    changed = np.zeros(m.theta.size, bool)
    changed[20:50] = True  # W2 (6, 5) follows W1 (5, 4)
    changed[m.n_weights + 11:] = True  # b3 follows b1 (5) and b2 (6)
    np.testing.assert_array_equal(m.theta[~changed], theta[~changed])
    assert not np.array_equal(m.theta[changed], theta[changed])
    after = m.optimizer.state_arrays()
    assert after.keys() == velocity.keys() == {"velocity"}
    for k in velocity:
        np.testing.assert_array_equal(after[k], velocity[k])


def test_set_layers_with_every_layer_is_set_weights():
    rng = np.random.default_rng(4)
    a, b = _biased(), _biased()
    W = [rng.normal(size=w.shape) for w in a.weights]
    bs = [rng.normal(size=v.shape) for v in a.biases]
    a.set_weights(W, bs)
    b.set_layers(dict(enumerate(W)), {-3: bs[0], -2: bs[1], 2: bs[2]})
    np.testing.assert_array_equal(a.theta, b.theta)


def test_set_layers_takes_integers_of_any_kind_and_an_empty_dict():
    m = _biased("float64")
    theta = m.theta.copy()
    m.set_layers({}, None)
    m.set_layers()
    np.testing.assert_array_equal(m.theta, theta)
    m.set_layers({np.int64(0): np.ones((5, 4), np.int32)})
    np.testing.assert_array_equal(m.get_weights()[0], np.ones((5, 4)))


GOOD_W0, GOOD_B0 = np.ones((5, 4)), np.ones(5)
BAD_LAYERS = {
    "not a dict": (dict(weights=[GOOD_W0]), TypeError, r"weights must be a dict \{layer index: array\}, got list"),
    "index not an int": (dict(weights={"0": GOOD_W0}), TypeError, "layer indices must be integers, got '0'"),
    "index a bool": (dict(weights={True: GOOD_W0}), TypeError, "layer indices must be integers, got True"),
    "index too large": (dict(weights={3: GOOD_W0}), ValueError, "layer index 3 is out of range for 3 layers"),
    "index too small": (dict(biases={-4: GOOD_B0}), ValueError, "biases: layer index -4 is out of range"),
    "a layer twice": (dict(weights={0: GOOD_W0, -3: GOOD_W0}), ValueError, r"layer 0 is given twice \(as 0 and -3\)"),
    "shape": (dict(weights={0: GOOD_W0.T}), ValueError, r"weights\[0\] must have shape \(5, 4\), got \(4, 5\)"),
    "second layer wrong": (dict(weights={0: GOOD_W0, 1: np.ones((5, 6))}), ValueError, r"weights\[1\] must have shape"),
    "biases wrong": (dict(weights={0: GOOD_W0}, biases={2: np.ones(4)}), ValueError,
                     r"biases\[2\] must have shape \(3,\), got \(4,\)"),
    "strings": (dict(weights={0: GOOD_W0.astype(str)}), TypeError, r"weights\[0\] must hold real numbers"),
    "complex": (dict(biases={0: GOOD_B0 * 1j}), TypeError, r"biases\[0\] must hold real numbers"),
    "ragged": (dict(biases={1: [[1.0], [1.0, 2.0]]}), TypeError, r"biases\[1\] must be an array of real numbers"),
    "NaN": (dict(weights={0: GOOD_W0, 2: np.full((3, 6), np.nan)}), ValueError, r"weights\[2\] contains NaN"),
    "beyond float32": (dict(biases={0: np.full(5, 1e300)}), ValueError, "beyond the range of float32"),
}


@pytest.mark.parametrize("case", BAD_LAYERS, ids=str)
def test_set_layers_refuses_a_wrong_array_before_it_changes_anything(case):
    kw, err, match = BAD_LAYERS[case]
    m = _biased()
    theta = m.theta.copy()
    with pytest.raises(err, match=match):
        m.set_layers(**kw)
    np.testing.assert_array_equal(m.theta, theta)  # not even the good layers given beside the wrong one


def test_set_layers_names_the_arrays_as_told_and_refuses_biases_without_bias():
    m = _biased()
    with pytest.raises(ValueError, match=r"intercepts_\[1\] must have shape \(6,\)"):
        m.set_layers(biases={1: np.ones(5)}, names=("coefs_", "intercepts_"))
    plain = gpumlp.MLP((4, 5, 3), backend="numpy")
    with pytest.raises(ValueError, match="biases given, but the model was built with bias=False"):
        plain.set_layers({0: GOOD_W0}, {0: GOOD_B0})
    assert not np.array_equal(plain.get_weights()[0], GOOD_W0)
    m64 = _biased("float64")
    m64.set_layers(biases={0: np.full(5, 1e300)})  # in range of float64
    assert m64.get_biases()[0][0] == 1e300
