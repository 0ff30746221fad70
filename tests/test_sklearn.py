"""gpumlp.sklearn: scikit-learn's estimator checks, and the same numbers as scikit-learn's own MLP
where the two are meant to agree (same random_state, full batches, no shuffling)."""
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install gpumlp[sklearn])")

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from gpumlp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Short runs stop at max_iter on purpose; the tests that are about the warning catch it themselves.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Every check applies and passes for these settings: no expected failures. (Settings outside this
# list can fail checks for reasons scikit-learn's own MLP shares: early_stopping=True cannot hold out
# a validation set from the checks' 1-10-sample data and forbids partial_fit; minibatches smaller
# than the data break check_sample_weight_equivalence, since repeated rows change the batches.)
ESTIMATORS = [MLPClassifier(max_iter=50, backend="numpy"), MLPRegressor(max_iter=50, backend="numpy"),
              MLPClassifier(solver="sgd", learning_rate="adaptive", max_iter=50, backend="numpy")]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def _data(seed=0, n=60, d=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, rng.integers(0, 3, n), X @ rng.normal(size=d) + 0.1 * rng.normal(size=n)


def _pair(ours, theirs, X, y, **params):
    common = {**dict(hidden_layer_sizes=(7, 5), activation="tanh", batch_size=len(X), shuffle=False,
                     random_state=3, max_iter=40, alpha=0.01), **params}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", "Got `batch_size`")  # full batches after a validation split
        return ours(**common).fit(X, y), theirs(**common).fit(X, y)


SGD_SETTINGS = [
    dict(solver="sgd", momentum=0.9, nesterovs_momentum=True, learning_rate_init=0.05),
    dict(solver="sgd", momentum=0.5, nesterovs_momentum=False, learning_rate_init=0.05),
    dict(solver="sgd", momentum=0.0, learning_rate="invscaling", power_t=0.3, learning_rate_init=0.5),
    dict(solver="sgd", momentum=0.0, learning_rate="adaptive", learning_rate_init=0.2, tol=1e-3, n_iter_no_change=2),
    dict(solver="sgd", momentum=0.9, learning_rate_init=0.05, early_stopping=True, n_iter_no_change=3),
]


@pytest.mark.parametrize("params", SGD_SETTINGS)
@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_sgd_reproduces_sklearn(params, task):
    """Same initial weights (drawn from random_state as scikit-learn draws them), same rule, same
    schedule and plateau counting, same early-stopping split: the same loss curve to rounding.
    (Binary classification is left out: scikit-learn uses one logistic unit there, we two softmax
    outputs. Multiclass early stopping is left out: scikit-learn does not stratify that split.)"""
    if task == "multiclass" and params.get("early_stopping"):
        pytest.skip("scikit-learn's multiclass early-stopping split is not stratified; ours is")
    X, yc, yr = _data()
    ours, theirs = _pair(*((MLPClassifier, SkClassifier, X, yc) if task == "multiclass"
                          else (MLPRegressor, SkRegressor, X, yr)), **params)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-10)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    if params.get("early_stopping"):
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-10)
        assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_, rel=1e-10)
    else:
        assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=1e-10)
    if task == "multiclass":
        np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-8, atol=1e-12)


def test_adam_is_close_to_sklearn():
    """scikit-learn's Adam puts ε beside √v rather than √v̂ (ε·√c2 in our terms): close, not equal."""
    X, yc, _ = _data()
    ours, theirs = _pair(MLPClassifier, SkClassifier, X, yc, solver="adam", learning_rate_init=0.01)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-5)


def test_initial_weights_are_sklearns():
    X, yc, _ = _data()
    ours, theirs = _pair(MLPClassifier, SkClassifier, X, yc, solver="sgd", learning_rate_init=1e-300, max_iter=1,
                         activation="logistic")
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-14)


def test_initial_weights_are_sklearns_for_a_random_state_instance():
    """random_state may be a RandomState: the weights come from its stream exactly as scikit-learn
    draws them (drawing the shuffling seed from it first would shift every weight)."""
    X, yc, _ = _data()
    params = dict(hidden_layer_sizes=(7, 5), solver="sgd", learning_rate_init=1e-300, max_iter=1)
    ours = MLPClassifier(**params, random_state=np.random.RandomState(5), backend="numpy").fit(X, yc)
    theirs = SkClassifier(**params, random_state=np.random.RandomState(5)).fit(X, yc)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-14)


def test_parameters_reach_the_model():
    X, yc, _ = _data()
    clf = MLPClassifier(hidden_layer_sizes=(6,), activation="logistic", solver="sgd", alpha=0.3, batch_size=20,
                        momentum=0.7, nesterovs_momentum=False, learning_rate="invscaling", power_t=0.25,
                        max_iter=2, random_state=0, backend="numpy").fit(X, yc)
    m = clf.model_
    assert m.sizes == (4, 6, 3) and m.activations == ["sigmoid"] and m.bias and m.loss == "cross_entropy"
    assert m.weight_decay == pytest.approx(0.3 / 20)  # λ = alpha / batch_size
    assert m.optimizer.name == "sgd" and m.optimizer.momentum == 0.7 and not m.optimizer.nesterov
    assert m.lr_schedule.name == "invscaling" and m.lr_schedule.power_t == 0.25
    assert clf.n_iter_ == 2 and clf.t_ == 120 and len(clf.loss_curve_) == 2 and clf.n_layers_ == 3
    reg = MLPRegressor(solver="adam", beta_1=0.8, beta_2=0.99, epsilon=1e-6, learning_rate="adaptive",
                       max_iter=1, backend="numpy").fit(X, yc.astype(float))
    o = reg.model_.optimizer
    assert (o.beta1, o.beta2, o.eps) == (0.8, 0.99, 1e-6)
    assert reg.model_.lr_schedule.name == "constant"  # as scikit-learn, learning_rate applies to sgd only


def test_dtype_follows_X_unless_given():
    X, yc, _ = _data()
    assert MLPClassifier(max_iter=1, backend="numpy").fit(X.astype(np.float32), yc).model_.dtype == np.float32
    assert MLPClassifier(max_iter=1, backend="numpy").fit(X, yc).model_.dtype == np.float64
    assert MLPClassifier(max_iter=1, dtype="float32", backend="numpy").fit(X, yc).model_.dtype == np.float32


def test_string_labels_and_probabilities():
    X, yc, _ = _data()
    labels = np.array(["cat", "dog", "emu"])[yc]
    clf = MLPClassifier(max_iter=300, random_state=0, backend="numpy").fit(X, labels)
    assert list(clf.classes_) == ["cat", "dog", "emu"]
    p = clf.predict_proba(X)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[p.argmax(axis=1)])
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(p))


def test_partial_fit():
    X, yc, _ = _data()
    clf = MLPClassifier(solver="sgd", learning_rate_init=0.05, batch_size=len(X), shuffle=False, random_state=0,
                        backend="numpy")
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, yc)
    for _ in range(3):
        clf.partial_fit(X, yc, classes=[0, 1, 2])
    assert clf.n_iter_ == 1 and len(clf.loss_curve_) == 3
    full = MLPClassifier(solver="sgd", learning_rate_init=0.05, batch_size=len(X), shuffle=False, random_state=0,
                         max_iter=3, n_iter_no_change=100, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full.fit(X, yc)
    for a, b in zip(clf.coefs_, full.coefs_):  # three partial_fits = three epochs of fit
        np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(ValueError, match="not among the model's classes"):
        clf.partial_fit(X, np.full(len(X), 7))
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, yc, classes=[0, 1, 2])


def test_warm_start():
    X, _, yr = _data()
    kw = dict(solver="sgd", momentum=0.0, learning_rate_init=0.01, batch_size=len(X), shuffle=False,
              random_state=0, n_iter_no_change=100, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ten = MLPRegressor(max_iter=10, **kw).fit(X, yr)
        warm = MLPRegressor(max_iter=4, warm_start=True, **kw).fit(X, yr)
        warm.set_params(max_iter=6).fit(X, yr)  # continues (plain SGD has no optimizer state to lose)
        cold = MLPRegressor(max_iter=4, **kw).fit(X, yr)
        first = cold.coefs_
        cold.fit(X, yr)  # starts over: the same 4 epochs again
    np.testing.assert_allclose(warm.coefs_[0], ten.coefs_[0], rtol=1e-12)
    assert len(warm.loss_curve_) == 10 and warm.n_iter_ == 6
    np.testing.assert_array_equal(cold.coefs_[0], first[0])
    assert len(cold.loss_curve_) == 4


def test_convergence_warning_only_at_max_iter():
    X, yc, _ = _data()
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier(max_iter=2, backend="numpy").fit(X, yc)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        MLPClassifier(max_iter=100, learning_rate_init=1e-12, n_iter_no_change=2, backend="numpy").fit(X, yc)


def test_class_weight():
    X, yc, _ = _data()
    labels = np.array(["a", "b", "c"])[yc]
    a = MLPClassifier(max_iter=3, random_state=0, class_weight={"a": 3.0, "c": 0.5}, backend="numpy")
    b = MLPClassifier(max_iter=3, random_state=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a.fit(X, labels)
        b.fit(X, labels, sample_weight=np.array([3.0, 1.0, 0.5])[yc])
    np.testing.assert_allclose(a.coefs_[0], b.coefs_[0], rtol=1e-12)


def test_pipeline_and_grid_search():
    X, yc, _ = _data(n=90)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, random_state=0, backend="numpy"))
    search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1], "mlpclassifier__solver": ["sgd", "adam"]},
                          cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, yc)
    assert set(search.best_params_) == {"mlpclassifier__alpha", "mlpclassifier__solver"}
    assert 0 <= search.score(X, yc) <= 1


@pytest.mark.parametrize("params,match", [
    (dict(solver="lbfgs"), "lbfgs"), (dict(activation="softplus"), "activation"),
    (dict(learning_rate="optimal"), "learning_rate"), (dict(batch_size=0), "batch_size"),
    (dict(validation_fraction=1.0), "validation_fraction"), (dict(hidden_layer_sizes=(3, 0)), "hidden_layer_sizes"),
    (dict(max_iter=0), "max_iter"), (dict(alpha=-1.0), "alpha")])
def test_bad_settings_raise_at_fit(params, match):
    X, yc, _ = _data()
    with pytest.raises(ValueError, match=match):
        MLPClassifier(backend="numpy", **params).fit(X, yc)


def test_regressor_loss_and_multioutput():
    X, _, yr = _data()
    with pytest.raises(ValueError, match="squared_error"):
        MLPRegressor(loss="poisson").fit(X, yr)
    Y = np.c_[yr, -yr]
    reg = MLPRegressor(max_iter=5, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, Y)
    assert reg.predict(X).shape == (len(X), 2) and reg.n_outputs_ == 2


def test_regressor_predicts_one_output_as_1d_like_sklearn():
    """scikit-learn's MLPRegressor returns (n,) for a single output even when fitted on y of shape
    (n, 1); code written against it (metrics, np.c_, pandas columns) relies on that."""
    X, _, yr = _data()
    for y in (yr, yr[:, None]):
        ours = MLPRegressor(max_iter=3, backend="numpy").fit(X, y).predict(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn warns that it ravels y of shape (n, 1)
            theirs = SkRegressor(max_iter=3).fit(X, y).predict(X)
        assert ours.shape == theirs.shape == (len(X),)
