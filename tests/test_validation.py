"""Every public entry point rejects bad input with a ValueError or TypeError that names the argument,
before it changes anything: the model is bit for bit as it was. Divergence keeps finite weights."""
import copy
import math
import warnings

import numpy as np
import pytest

import gpumlp
from gpumlp import DivergenceError, MLP
from gpumlp import data as D

D_IN, Q = 6, 3
RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, D_IN))
Y = RNG.integers(0, Q, size=40)
YR = RNG.normal(size=(40, 2))


def _encode(v):
    """A comparable image of any state: arrays by bytes, NaN by name, objects by their __dict__."""
    if isinstance(v, np.ndarray) or type(v).__module__.startswith("cupy"):
        a = np.asarray(v.get() if hasattr(v, "get") and not isinstance(v, np.ndarray) else v)
        return ("array", a.dtype.str, a.shape, a.tobytes())
    if isinstance(v, np.random.Generator):
        return ("rng", copy.deepcopy(v.bit_generator.state))
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if hasattr(v, "__dict__") and type(v).__module__.startswith("gpumlp"):
        return (type(v).__name__, _encode(vars(v)))
    return v


def snapshot(m):
    skip = {"_steps", "ops", "array_backend", "_reference"}  # scratch buffers and handles, not state
    return {k: _encode(v) for k, v in vars(m).items() if k not in skip}


def model(loss="cross_entropy", **kw):
    q = Q if loss == "cross_entropy" else 2
    m = MLP((D_IN, 8, q), loss=loss, seed=0, backend="numpy", momentum=0.9, bias=True, **kw)
    m.fit(X, Y if loss == "cross_entropy" else YR, epochs=2, batch_size=16, lr=0.05)  # state to lose
    return m


def nan_at(a, i=3):
    a = np.array(a, dtype=float)
    a.flat[i] = np.nan
    return a


# (call on a trained classifier, exception type, message that names the argument)
CLASSIFIER_CASES = {
    "fit X with NaN": (lambda m: m.fit(nan_at(X), Y), ValueError, r"X contains NaN"),
    "fit X with inf": (lambda m: m.fit(np.where(X > 1, np.inf, X), Y), ValueError, r"X contains NaN or inf"),
    "fit X 1-D": (lambda m: m.fit(X[:, 0], Y), ValueError, r"X must be 2-D"),
    "fit X 3-D": (lambda m: m.fit(X[:, :, None], Y), ValueError, r"X must be 2-D"),
    "fit X wrong features": (lambda m: m.fit(X[:, :5], Y), ValueError, r"X has 5 features, the model expects 6"),
    "fit X empty": (lambda m: m.fit(X[:0], Y[:0]), ValueError, r"X is empty"),
    "fit X strings": (lambda m: m.fit(X.astype(str), Y), TypeError, r"X must hold real numbers"),
    "fit X complex": (lambda m: m.fit(X + 1j, Y), TypeError, r"X must hold real numbers"),
    "fit X ragged": (lambda m: m.fit([[1, 2], [3]], Y), TypeError, r"X could not be read as an array"),
    "fit X None": (lambda m: m.fit(None, Y), TypeError, r"X must be an array"),
    "fit y too short": (lambda m: m.fit(X, Y[:-1]), ValueError, r"y has 39 rows, X has 40"),
    "fit y label too big": (lambda m: m.fit(X, np.where(Y == 0, 3, Y)), ValueError, r"y labels must lie in \[0, 3\)"),
    "fit y negative": (lambda m: m.fit(X, np.where(Y == 0, -1, Y)), ValueError, r"y labels must lie in \[0, 3\)"),
    "fit y not integers": (lambda m: m.fit(X, Y + 0.5), ValueError, r"y must hold integer class labels"),
    "fit y NaN": (lambda m: m.fit(X, nan_at(Y)), ValueError, r"y must hold integer class labels"),
    "fit y 2-D": (lambda m: m.fit(X, Y[:, None]), ValueError, r"y must be 1-D integer class labels"),
    "fit y strings": (lambda m: m.fit(X, Y.astype(str)), TypeError, r"y must hold numbers"),
    "fit lr 0": (lambda m: m.fit(X, Y, lr=0), ValueError, r"lr must be finite and > 0"),
    "fit lr negative": (lambda m: m.fit(X, Y, lr=-0.1), ValueError, r"lr must be finite and > 0"),
    "fit lr NaN": (lambda m: m.fit(X, Y, lr=float("nan")), ValueError, r"lr must be finite"),
    "fit lr inf": (lambda m: m.fit(X, Y, lr=float("inf")), ValueError, r"lr must be finite"),
    "fit lr string": (lambda m: m.fit(X, Y, lr="0.1"), TypeError, r"lr must be a number"),
    "fit lr bool": (lambda m: m.fit(X, Y, lr=True), TypeError, r"lr must be a number"),
    "fit epochs 0": (lambda m: m.fit(X, Y, epochs=0), ValueError, r"epochs must be finite and > 0"),
    "fit epochs float": (lambda m: m.fit(X, Y, epochs=2.5), TypeError, r"epochs must be an integer"),
    "fit batch_size 0": (lambda m: m.fit(X, Y, batch_size=0), ValueError, r"batch_size must be finite and > 0"),
    "fit batch_size -3": (lambda m: m.fit(X, Y, batch_size=-3), ValueError, r"batch_size"),
    "fit batch_size float": (lambda m: m.fit(X, Y, batch_size=8.0), TypeError, r"batch_size must be an integer"),
    "fit unknown option": (lambda m: m.fit(X, Y, learning_rate=0.1), TypeError, r"learning_rate"),
    "fit sample_weight shape": (lambda m: m.fit(X, Y, sample_weight=np.ones(3)), ValueError, r"sample_weight must "
                                r"have shape \(40,\)"),
    "fit sample_weight negative": (lambda m: m.fit(X, Y, sample_weight=-np.ones(40)), ValueError,
                                   r"sample_weight must be finite and non-negative"),
    "fit validation_data not a pair": (lambda m: m.fit(X, Y, validation_data=X), TypeError, r"validation_data"),
    "fit validation_data features": (lambda m: m.fit(X, Y, validation_data=(X[:, :2], Y)), ValueError,
                                     r"validation_data\[0\] has 2 features"),
    "fit validation labels": (lambda m: m.fit(X, Y, validation_data=(X, Y + 5)), ValueError,
                              r"validation_data\[1\] labels must lie in"),
    "fit class_weight": (lambda m: m.fit(X, Y, class_weight="weird"), ValueError, r"class_weight"),
    "fit n_iter_no_change": (lambda m: m.fit(X, Y, n_iter_no_change=0), ValueError, r"n_iter_no_change"),
    "fit validation_fraction": (lambda m: m.fit(X, Y, early_stopping=True, validation_fraction=1.5), ValueError,
                                r"validation_fraction"),
    "fit callbacks": (lambda m: m.fit(X, Y, callbacks=[3]), TypeError, r"callbacks"),
    "partial_fit classes": (lambda m: m.partial_fit(X, Y, classes=[0, 1, 7]), ValueError, r"classes"),
    "partial_fit X": (lambda m: m.partial_fit(nan_at(X), Y), ValueError, r"X contains NaN"),
    "step lr": (lambda m: m.step(X, Y, lr=-1), ValueError, r"lr must be finite and > 0"),
    "step X": (lambda m: m.step(X[:, :3], Y, lr=0.1), ValueError, r"X has 3 features"),
    "step y": (lambda m: m.step(X, Y + 3, lr=0.1), ValueError, r"y labels must lie in"),
    "forward X": (lambda m: m.forward(nan_at(X)), ValueError, r"X contains NaN"),
    "forward y": (lambda m: m.forward(X, Y[:5]), ValueError, r"y has 5 rows"),
    "backward": (lambda m: m.backward("not a forward"), ValueError, r"backward needs the result of forward"),
    "backward without y": (lambda m: m.backward(m.forward(X)), ValueError, r"called with targets y"),
    "predict features": (lambda m: m.predict(X[:, :4]), ValueError, r"X has 4 features"),
    "predict NaN": (lambda m: m.predict(nan_at(X)), ValueError, r"X contains NaN"),
    # float64 data for a float32 model: finite as given, inf once cast (predict would argmax NaN rows)
    "fit X beyond float32": (lambda m: m.fit(np.where(X > 2, 1e39, X), Y), ValueError,
                             r"X has values beyond the range of float32"),
    "predict X beyond float32": (lambda m: m.predict(np.where(X > 2, -1e39, X)), ValueError,
                                 r"X has values beyond the range of float32"),
    "validation X beyond float32": (lambda m: m.fit(X, Y, validation_data=(np.where(X > 2, 1e39, X), Y)),
                                    ValueError, r"validation_data\[0\] has values beyond the range of float32"),
    "predict_proba": (lambda m: m.predict_proba(X[0]), ValueError, r"X must be 2-D"),
    "decision_function": (lambda m: m.decision_function(np.empty((0, D_IN))), ValueError, r"X is empty"),
    "score": (lambda m: m.score(X, Y[:3]), ValueError, r"y has 3 rows"),
    "set_weights count": (lambda m: m.set_weights(m.get_weights()[:1]), ValueError, r"weights must hold 2 arrays"),
    "set_weights shape": (lambda m: m.set_weights([np.zeros((8, 5)), np.zeros((3, 8))]), ValueError,
                          r"weights\[0\] must have shape \(8, 6\)"),
    "set_weights NaN": (lambda m: m.set_weights([nan_at(np.zeros((8, 6))), np.zeros((3, 8))]), ValueError,
                        r"weights\[0\] contains NaN"),
    "set_weights strings": (lambda m: m.set_weights([np.zeros((8, 6)).astype(str), np.zeros((3, 8))]), TypeError,
                            r"weights\[0\] must hold real numbers"),
    "set_weights second bad": (lambda m: m.set_weights([np.ones((8, 6)), np.ones((3, 7))]), ValueError,
                               r"weights\[1\] must have shape"),
    "set_weights biases": (lambda m: m.set_weights(m.get_weights(), [np.ones(8), np.ones(4)]), ValueError,
                           r"biases\[1\] must have shape \(3,\)"),
    "set_weights not a list": (lambda m: m.set_weights("W"), TypeError, r"weights must be a list"),
    "set_params unknown": (lambda m: m.set_params(learning_rate=3), ValueError, r"learning_rate"),
    "set_params momentum": (lambda m: m.set_params(momentum=1.5), ValueError, r"momentum must be in \[0, 1\)"),
    "set_params weight_decay": (lambda m: m.set_params(weight_decay=-1, momentum=0.5), ValueError,
                                r"weight_decay must be finite and >= 0"),
    "save path": (lambda m: m.save(None), TypeError, r"path must be a str or os.PathLike"),
}


@pytest.mark.parametrize("case", sorted(CLASSIFIER_CASES))
def test_bad_input_is_rejected_and_the_model_is_unchanged(case):
    call, exc_type, message = CLASSIFIER_CASES[case]
    m = model()
    before = snapshot(m)
    with pytest.raises(exc_type, match=message):
        call(m)
    assert snapshot(m) == before


REGRESSOR_CASES = {
    "fit y shape": (lambda m: m.fit(X, YR[:, :1]), ValueError, r"y must have shape \(n_samples, 2\)"),
    "fit y NaN": (lambda m: m.fit(X, nan_at(YR)), ValueError, r"y contains NaN"),
    "fit y beyond float32": (lambda m: m.fit(X, np.where(YR > 1, 1e39, YR)), ValueError,
                             r"y has values beyond the range of float32"),
    "score y rows": (lambda m: m.score(X, YR[:7]), ValueError, r"y has 7 rows"),
    "predict_proba": (lambda m: m.predict_proba(X), ValueError, r"predict_proba needs loss='cross_entropy' or 'binary_cross_entropy'"),
    "class_weight": (lambda m: m.fit(X, YR, class_weight="balanced"), ValueError, r"class_weight needs"),
}


@pytest.mark.parametrize("case", sorted(REGRESSOR_CASES))
def test_regressor_bad_input_is_rejected_and_unchanged(case):
    call, exc_type, message = REGRESSOR_CASES[case]
    m = model("squared")
    before = snapshot(m)
    with pytest.raises(exc_type, match=message):
        call(m)
    assert snapshot(m) == before


@pytest.mark.parametrize("kw, exc_type, message", [
    ({"sizes": (6,)}, ValueError, r"sizes needs at least an input and an output"),
    ({"sizes": (6, 0, 3)}, ValueError, r"sizes must be positive integers"),
    ({"sizes": 6}, TypeError, r"sizes must be a sequence"),
    ({"activation": "swish"}, ValueError, r"activation must be one of"),
    ({"activation": ["relu", "tanh"]}, ValueError, r"activation lists 2 names for 1 hidden layers"),
    ({"loss": "hinge"}, ValueError, r"loss must be one of"),
    ({"weight_decay": -1e-3}, ValueError, r"weight_decay must be finite and >= 0"),
    ({"weight_decay": float("nan")}, ValueError, r"weight_decay"),
    ({"dtype": "float16"}, ValueError, r"dtype must be 'float32' or 'float64'"),
    ({"dtype": "nonsense"}, TypeError, r"dtype must be"),
    ({"seed": 1.5}, TypeError, r"seed must be an integer or None"),
    ({"seed": -1}, ValueError, r"seed must be >= 0"),
    ({"backend": "tpu"}, ValueError, r"backend must be one of"),
    ({"optimizer": "rmsprop"}, ValueError, r"optimizer must be one of"),
    ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\)"),
    ({"momentum": -0.1}, ValueError, r"momentum must be finite and >= 0"),
    ({"nesterov": True, "momentum": 0.0}, ValueError, r"nesterov=True needs momentum > 0"),
    ({"lr_schedule": "wavy"}, ValueError, r"lr_schedule must be"),
    ({"unknown": 1}, TypeError, r"unknown"),
])
def test_constructor_rejects_bad_settings(kw, exc_type, message):
    args = {"sizes": (6, 8, 3), **kw}
    with pytest.raises(exc_type, match=message):
        MLP(args.pop("sizes"), backend=args.pop("backend", "numpy"), **args)


def test_load_and_data_entry_points_name_their_argument(tmp_path):
    with pytest.raises(TypeError, match="path must be"):
        gpumlp.load(3)
    with pytest.raises(ValueError, match="format must be one of"):
        D.load("digits", format="xls")
    with pytest.raises(ValueError, match="scaling must be one of"):
        D.Scaler("log")
    with pytest.raises(ValueError, match="held-out fraction must lie in"):
        D.split_indices(Y, 0)
    with pytest.raises(ValueError, match="backend must be one of"):
        m = model()
        m.save(tmp_path / "m.npz")
        gpumlp.load(tmp_path / "m.npz", backend="tpu")


# ---------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("settings", [{"momentum": 0.9}, {"momentum": 0.0}, {"momentum": 0.9, "nesterov": True}])
def test_divergence_stops_at_once_and_keeps_the_last_finite_state(settings):
    rng = np.random.default_rng(1)
    Xr, Yr = rng.normal(size=(200, 5)), rng.normal(size=(200, 2))
    m = MLP((5, 16, 2), loss="squared", seed=0, backend="numpy", **settings)
    m.fit(Xr, Yr, epochs=2, batch_size=20, lr=0.01)
    theta, opt = m.theta.copy(), snapshot(m)["optimizer"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow on the way to inf is the point
        with pytest.raises(DivergenceError, match=r"epoch 3, step \d+.*Try a smaller learning rate") as exc:
            m.fit(Xr, Yr, epochs=5, batch_size=20, lr=1e3)
    assert isinstance(exc.value, FloatingPointError)
    assert np.isfinite(m.theta).all()
    np.testing.assert_array_equal(m.theta, theta)  # the weights at the start of the diverged epoch
    assert snapshot(m)["optimizer"] == opt  # and the optimizer's state and step count
    assert m.epochs_ == 2 and len(m.loss_curve_) == 2 and all(map(math.isfinite, m.loss_curve_))
    m.fit(Xr, Yr, epochs=1, batch_size=20, lr=0.01)  # training can go on with a smaller rate
    assert np.isfinite(m.theta).all() and math.isfinite(m.loss_curve_[-1])


@pytest.mark.parametrize("settings", [{}, {"momentum": 0.9}, {"optimizer": "adam"}])
def test_an_update_that_overflows_on_the_last_step_of_an_epoch_is_divergence(settings):
    """J is measured before each update, so when the epoch's last update sends the weights to
    inf/NaN, no J of that epoch shows it: fit must still stop, with the epoch's starting weights."""
    rng = np.random.default_rng(0)
    Xr = rng.normal(size=(64, 5)) * 100
    yr = (Xr[:, 0] > 0).astype(int)
    m = MLP((5, 8, 2), seed=0, backend="numpy", **settings)
    before = snapshot(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(DivergenceError, match=r"weights became NaN or infinite.*epoch 1, step 1\b"):
            m.fit(Xr, yr, epochs=3, batch_size=64, lr=3e38)  # one step per epoch, its J is finite
    assert np.isfinite(m.theta).all()
    assert snapshot(m)["theta"] == before["theta"]
    # the optimizer at a fresh one's start: its state arrays, made at the first update, restored to
    # zeros in place (gpumlp.optim keeps them, for a captured CUDA graph) where they were not made yet
    assert _unstarted(snapshot(m)["optimizer"]) == _unstarted(before["optimizer"])
    assert m.epochs_ == 0 and m.loss_curve_ == []


def _unstarted(optimizer):
    """An optimizer's encoded state with all-zero state arrays read as not made yet (None)."""
    name, fields = optimizer
    return name, {k: None if isinstance(v, tuple) and v[0] == "array" and not any(v[3]) else v
                  for k, v in fields.items()}


def test_the_snapshot_sees_every_kind_of_change():
    """The unchanged-model check above would catch a change in weights, optimizer state, RNG or curves."""
    changes = [lambda m: m.fit(X, Y, epochs=1), lambda m: m.rng.random(),
               lambda m: setattr(m.optimizer, "t", m.optimizer.t + 1), lambda m: m.loss_curve_.append(1.0)]
    for change in changes:
        m = model()
        before = snapshot(m)
        change(m)
        assert snapshot(m) != before
    m = model()
    before = snapshot(m)
    m.optimizer.velocity[0] += 1  # a single element of a state array
    assert snapshot(m) != before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finiteness_is_decided_per_element_when_the_sum_overflows_or_cancels(dtype):
    """check_X tries the sum first (one pass, no temporary): finite values whose sum overflows are still
    accepted, and +inf beside -inf (a NaN sum) or a lone NaN among huge values still refused."""
    from gpumlp.validation import check_X

    big = np.full((4, 3), np.finfo(dtype).max / 2, dtype)
    assert check_X(big) is not None  # the sum is inf, every value finite
    for bad in (np.inf, np.nan):
        X = big.copy()
        X[1, 2] = bad
        X[2, 0] = -np.inf if bad == np.inf else X[2, 0]
        with pytest.raises(ValueError, match="NaN or infinity"):
            check_X(X)
