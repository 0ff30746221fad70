"""Honest answers from the model itself: weights of any scale, a backward pass only of this model's own
forward pass at its current weights, and training refused while another thread trains the model."""
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


@pytest.mark.parametrize("change", ["step", "set_weights", "in place", "fit"])
def test_backward_refuses_a_forward_pass_from_before_the_weights_changed(change):
    X, y = _data(8)
    m = gpumlp.MLP((4, 5, 3), seed=0, backend="numpy")
    fw = m.forward(X, y)
    if change == "step":
        m.step(X, y, lr=0.1)
    elif change == "set_weights":
        m.set_weights([w * 2 for w in m.get_weights()])
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


@pytest.mark.parametrize("call", ["fit", "partial_fit", "step", "set_weights", "set_params", "reset_parameters",
                                  "trainer"])
def test_a_second_thread_cannot_train_or_change_a_model_being_trained(call):
    X, y = _data()
    m = gpumlp.MLP((4, 6, 3), seed=0, backend="numpy", momentum=0.9)
    t, release = _hold_training(m, X, y)
    try:
        calls = {"fit": lambda: m.fit(X, y, epochs=1), "partial_fit": lambda: m.partial_fit(X, y),
                 "step": lambda: m.step(X, y, lr=0.1), "set_weights": lambda: m.set_weights(m.get_weights()),
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
