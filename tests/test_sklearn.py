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

import gpumlp  # noqa: E402
from gpumlp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Short runs stop at max_iter on purpose; the tests that are about the warning catch it themselves.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Every check applies and passes for these settings, but one: check_regressor_multioutput draws its
# targets from make_regression, negative ones included, whatever the positive_only tag says, and the
# Poisson loss refuses them (scikit-learn's PoissonRegressor is single-output, so it never meets that
# check). (Settings outside this list can fail checks for reasons scikit-learn's own MLP shares:
# early_stopping=True cannot hold out a validation set from the checks' 1-10-sample data and forbids
# partial_fit; minibatches smaller than the data break check_sample_weight_equivalence, since
# repeated rows change the batches.)
ESTIMATORS = [MLPClassifier(max_iter=50, backend="numpy"), MLPRegressor(max_iter=50, backend="numpy"),
              MLPClassifier(solver="sgd", learning_rate="adaptive", max_iter=50, backend="numpy"),
              MLPClassifier(solver="lbfgs", max_iter=50, backend="numpy"),
              MLPRegressor(solver="lbfgs", loss="poisson", max_iter=50, backend="numpy")]


def _expected_failures(estimator):
    if getattr(estimator, "loss", None) == "poisson":
        return {"check_regressor_multioutput": "its targets are negative regardless of the positive_only tag; "
                                               "the Poisson loss needs y >= 0"}
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failures)
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


def _task(task):
    """(our estimator, scikit-learn's, X, y) for a kind of problem."""
    X, yc, yr = _data()
    y = {"multiclass": yc, "binary": (yc == 1).astype(int), "multilabel": np.c_[yc == 1, yc != 2, X[:, 0] > 0].astype(int),
         "regression": yr, "poisson": np.random.default_rng(5).poisson(np.exp(0.5 * X[:, 0]))}[task]
    if task in ("regression", "poisson"):
        return MLPRegressor, SkRegressor, X, y
    return MLPClassifier, SkClassifier, X, y


@pytest.mark.parametrize("params", SGD_SETTINGS)
@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression", "poisson"])
def test_sgd_reproduces_sklearn(params, task):
    """Same initial weights (drawn from random_state as scikit-learn draws them), same rule, same
    schedule and plateau counting, same early-stopping split: the same loss curve to rounding. Binary
    problems have one logistic unit, multilabel targets one per label, as scikit-learn's. (Multiclass
    early stopping is left out: scikit-learn does not stratify that split.)"""
    if task == "multiclass" and params.get("early_stopping"):
        pytest.skip("scikit-learn's multiclass early-stopping split is not stratified; ours is")
    ours_cls, theirs_cls, X, y = _task(task)
    extra = {"loss": "poisson"} if task == "poisson" else {}
    ours, theirs = _pair(ours_cls, theirs_cls, X, y, **params, **extra)
    assert ours.out_activation_ == theirs.out_activation_ and ours.n_outputs_ == theirs.n_outputs_
    assert [c.shape for c in ours.coefs_] == [c.shape for c in theirs.coefs_]
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-10)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    if params.get("early_stopping"):
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-10)
        assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_, rel=1e-10)
    else:
        assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=1e-10)
    if ours_cls is MLPClassifier:
        np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-8, atol=1e-12)
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    else:
        np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression", "poisson"])
@pytest.mark.parametrize("weighted", [False, True])
def test_lbfgs_reproduces_sklearn(task, weighted):
    """The same objective (value and gradient, λ = alpha/Σw) from the same initial weights, handed to
    the same SciPy L-BFGS-B with the same options: scikit-learn's iterates, loss and n_iter_ to
    rounding over a few iterations (further on, rounding differences grow along the path)."""
    ours_cls, theirs_cls, X, y = _task(task)
    w = np.random.default_rng(6).uniform(0.5, 2.0, len(X)) if weighted else None
    params = dict(hidden_layer_sizes=(7, 5), activation="tanh", solver="lbfgs", random_state=3, max_iter=6,
                  alpha=0.01, **({"loss": "poisson"} if task == "poisson" else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = ours_cls(**params, backend="numpy").fit(X, y, sample_weight=w)
        theirs = theirs_cls(**params).fit(X, y, sample_weight=w)
    assert ours.n_iter_ == theirs.n_iter_ == 6
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression", "poisson"])
def test_the_lbfgs_objective_is_sklearns(task):
    """_loss_grad_lbfgs (scikit-learn's private name, provided) against scikit-learn's own at the same
    θ in its packing: J and ∂J/∂θ to rounding, regulariser included."""
    ours_cls, theirs_cls, X, y = _task(task)
    params = dict(hidden_layer_sizes=(6,), activation="logistic", solver="lbfgs", random_state=0, max_iter=2,
                  alpha=0.3, **({"loss": "poisson"} if task == "poisson" else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, theirs = ours_cls(**params, backend="numpy").fit(X, y), theirs_cls(**params).fit(X, y)
    theta = np.random.default_rng(1).normal(size=sum(c.size for c in theirs.coefs_ + theirs.intercepts_)) * 0.5
    Y = y.reshape(len(y), -1) if ours_cls is MLPRegressor else \
        sklearn.preprocessing.LabelBinarizer().fit_transform(y)
    J, g = ours._loss_grad_lbfgs(theta, X, Y, None, [], [], [], [])
    J_ref, g_ref = theirs._loss_grad_lbfgs(theta, X, Y.astype(float), None, [X] + [None] * 2, [None] * 2,
                                           [np.empty_like(c) for c in theirs.coefs_],
                                           [np.empty_like(b) for b in theirs.intercepts_])
    assert J == pytest.approx(J_ref, rel=1e-12)  # Poisson: both include the deviance's constant y log y − y
    np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-13)


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
    (dict(solver="newton"), "solver"), (dict(activation="softplus"), "activation"),
    (dict(max_fun=0), "max_fun"), (dict(n_iter_no_change=-np.inf), "n_iter_no_change"),
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
        MLPRegressor(loss="absolute_error").fit(X, yr)
    with pytest.raises(ValueError, match="non-negative"):
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
    from sklearn.exceptions import DataConversionWarning

    X, _, yr = _data()
    for y in (yr, yr[:, None]):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always", DataConversionWarning)  # both warn that they ravel y of shape (n, 1)
            ours = MLPRegressor(max_iter=3, backend="numpy").fit(X, y).predict(X)
            theirs = SkRegressor(max_iter=3).fit(X, y).predict(X)
        assert ours.shape == theirs.shape == (len(X),)
        assert sum(r.category is DataConversionWarning for r in record) == (2 if y.ndim == 2 else 0)


# ------------------------------------------------------------------------------ the smaller differences
def _fitted(**kw):
    X, yc, _ = _data()
    kw = {"hidden_layer_sizes": (5,), "max_iter": 3, "random_state": 0, "backend": "numpy", **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MLPClassifier(**kw).fit(X, yc), X, yc


def test_coefs_and_intercepts_are_the_models_parameters():
    clf, X, _ = _fitted()
    before = clf.predict_proba(X)
    clf.coefs_[1][:] = 0  # in place: a view into the model's θ
    clf.intercepts_[1][:] = [1.0, 2.0, 3.0]
    np.testing.assert_allclose(clf.predict_proba(X), np.tile(np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum(), (60, 1)))
    assert not np.allclose(before, clf.predict_proba(X))
    coefs = clf.coefs_
    coefs[0] = np.ones((4, 5))  # item assignment: checked and copied in
    np.testing.assert_array_equal(clf.model_.get_weights()[0], np.ones((5, 4)))
    np.testing.assert_array_equal(clf.coefs_[0], np.ones((4, 5)))
    clf.coefs_ = [np.full((4, 5), 0.5), np.full((5, 3), 0.25)]  # the whole list
    np.testing.assert_array_equal(clf.model_.get_weights()[1], np.full((3, 5), 0.25))
    theta = clf.model_.theta.copy()
    for bad, match in [([np.ones((5, 4)), np.ones((5, 3))], r"coefs_\[0\] must have shape \(4, 5\), got \(5, 4\)"),
                       ([np.ones((4, 5))], "2 arrays"),
                       ([np.full((4, 5), np.nan), np.ones((5, 3))], "NaN")]:
        with pytest.raises(ValueError, match=match):
            clf.coefs_ = bad
    with pytest.raises(ValueError, match=r"intercepts_\[1\] must have shape \(3,\)"):
        clf.intercepts_[1] = np.ones(4)
    np.testing.assert_array_equal(clf.model_.theta, theta)  # nothing changed


def test_coefs_items_are_set_in_range_and_by_the_layout_given_or_not_at_all():
    """An index past the end is an IndexError, as a list's (it used to wrap around onto another layer and
    change it before the list refused); a wrong array is named in scikit-learn's layout; nothing changes."""
    clf, X, _ = _fitted()
    coefs, intercepts = clf.coefs_, clf.intercepts_
    theta = clf.model_.theta.copy()
    for i in (2, -3):
        with pytest.raises(IndexError, match=f"coefs_ index {i} is out of range for 2 layers"):
            coefs[i] = np.zeros((5, 3))
    for i, value, err, match in [
            (0, np.full((4, 5), np.inf), ValueError, r"coefs_\[0\] contains NaN or infinity"),
            (1, [[1.0] * 3] * 4, ValueError, r"coefs_\[1\] must have shape \(5, 3\), got \(4, 3\)"),
            (1, [[1.0], [1.0, 2.0]], TypeError, r"coefs_\[1\] must be a \(fan_in, fan_out\) array"),
            (slice(0, 1), [np.zeros((4, 5))], TypeError, "one layer at a time")]:
        with pytest.raises(err, match=match):
            coefs[i] = value
    with pytest.raises(TypeError, match=r"intercepts_\[0\] must hold real numbers"):
        intercepts[0] = np.array(["a"] * 5)
    with pytest.raises(TypeError, match="coefs_ must be a list of 2 arrays, got int"):
        clf.coefs_ = 3
    np.testing.assert_array_equal(clf.model_.theta, theta)
    coefs[-1] = np.arange(15.0).reshape(5, 3)  # negative indices count from the end, as a list's
    np.testing.assert_array_equal(clf.model_.get_weights()[1], np.arange(15.0).reshape(5, 3).T)
    np.testing.assert_array_equal(coefs[1], np.arange(15.0).reshape(5, 3))
    assert np.shares_memory(coefs[1], clf.model_.theta)  # the item is the model's view again
    np.testing.assert_array_equal(clf.model_.theta[:20], theta[:20])  # the other layer kept


def test_coefs_handed_out_before_a_new_fit_set_the_model_they_came_from():
    """As scikit-learn's: a fit without warm_start builds new parameters, and the lists read before it
    belong to the old ones; setting their items does not reach the refitted estimator."""
    clf, X, yc = _fitted()
    old_coefs, old_model = clf.coefs_, clf.model_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, yc)
    assert clf.model_ is not old_model
    theta = clf.model_.theta.copy()
    old_coefs[0] = np.zeros((4, 5))
    np.testing.assert_array_equal(clf.model_.theta, theta)
    np.testing.assert_array_equal(old_model.get_weights()[0], np.zeros((5, 4)))


def test_coefs_assigned_before_fit_are_where_partial_fit_starts():
    X, yc, _ = _data()
    rng = np.random.default_rng(0)
    coefs, intercepts = [rng.normal(size=(4, 6)), rng.normal(size=(6, 3))], [rng.normal(size=6), rng.normal(size=3)]
    kw = dict(hidden_layer_sizes=(6,), solver="sgd", momentum=0.0, learning_rate_init=0.1, batch_size=60,
              shuffle=False, alpha=0.0, backend="numpy")
    a = MLPClassifier(**kw)
    a.coefs_, a.intercepts_ = [c.copy() for c in coefs], [b.copy() for b in intercepts]
    assert a.coefs_[0] is not None and not hasattr(a, "model_")
    a.partial_fit(X, yc, classes=[0, 1, 2])
    b = MLPClassifier(**kw).partial_fit(X, yc, classes=[0, 1, 2])  # its own initial weights, then ours
    b.coefs_, b.intercepts_ = coefs, intercepts
    assert not np.allclose(a.coefs_[0], coefs[0])
    b2 = gpumlp.MLP((4, 6, 3), bias=True, dtype="float64", backend="numpy")
    b2.set_weights([c.T for c in coefs], intercepts)
    b2.partial_fit(X, yc, batch_size=60, lr=0.1)
    np.testing.assert_allclose(a.coefs_[0], b2.get_weights()[0].T, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
def test_divergence_is_scikit_learns_value_error():
    X, yc, _ = _data()
    import gpumlp as g

    with pytest.raises(ValueError, match="Solver produced non-finite parameter weights") as err:
        MLPClassifier(solver="sgd", learning_rate_init=1e10, max_iter=5, backend="numpy").fit(X * 1e150, yc)
    assert isinstance(err.value, g.DivergenceError) and "diverged" in str(err.value)


def test_partial_fit_takes_scikit_learns_arguments_and_is_hidden_for_lbfgs():
    X, yc, yr = _data()
    w = np.ones(len(X))
    clf = MLPClassifier(solver="sgd", backend="numpy").partial_fit(X, yc, w, [0, 1, 2])  # sample_weight, classes
    assert list(clf.classes_) == [0, 1, 2]
    MLPRegressor(solver="adam", backend="numpy").partial_fit(X, yr, w)
    for est in (MLPClassifier(solver="lbfgs"), MLPRegressor(solver="lbfgs")):
        assert not hasattr(est, "partial_fit")
        with pytest.raises(AttributeError, match="has no attribute 'partial_fit'") as err:
            est.partial_fit(X, yr)
        assert "lbfgs is not stochastic" in str(err.value.__cause__)


def test_verbose_prints_scikit_learns_lines(capsys):
    X, yc, _ = _data()
    common = dict(hidden_layer_sizes=(5,), solver="sgd", batch_size=60, shuffle=False, random_state=0, max_iter=4,
                  learning_rate_init=0.05, verbose=True, n_iter_no_change=1, tol=10.0)
    lines = []
    for cls in (MLPClassifier, SkClassifier):
        cls(**common).fit(X, yc)
        lines.append(capsys.readouterr().out.splitlines())
    assert lines[0] == lines[1] and lines[0][0].startswith("Iteration 1, loss = ") and "Stopping." in lines[0][-1]


def test_lbfgs_warns_as_scikit_learn_when_it_does_not_converge():
    X, yc, _ = _data()
    messages = []
    for cls, kw in ((MLPClassifier, {"backend": "numpy"}), (SkClassifier, {})):
        with pytest.warns(ConvergenceWarning) as record:
            cls(solver="lbfgs", max_iter=3, random_state=0, **kw).fit(X, yc)
        messages.append([str(r.message) for r in record if r.category is ConvergenceWarning])
    assert messages[0] == messages[1] and "failed to converge after 3 iteration(s)" in messages[0][0]


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_sparse_X_gives_the_dense_fit(solver):
    sp = pytest.importorskip("scipy.sparse")
    X, yc, _ = _data(n=80, d=10)
    X[np.abs(X) < 1] = 0
    kw = dict(solver=solver, hidden_layer_sizes=(6,), random_state=0, max_iter=20, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dense = MLPClassifier(**kw).fit(X, yc)
        sparse = MLPClassifier(**kw).fit(sp.csr_matrix(X), yc)
    for a, b in zip(dense.coefs_ + dense.intercepts_, sparse.coefs_ + sparse.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(sparse.predict(sp.csc_matrix(X)), dense.predict(X))


def test_multilabel_outputs_are_scikit_learns():
    X, yc, _ = _data()
    Y = np.c_[yc == 1, yc != 2, X[:, 0] > 0].astype(int)
    kw = dict(solver="lbfgs", hidden_layer_sizes=(8,), random_state=0, max_iter=50)  # both still on one path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, theirs = MLPClassifier(**kw, backend="numpy").fit(X, Y), SkClassifier(**kw).fit(X, Y)
    assert ours.out_activation_ == "logistic" and ours.n_outputs_ == 3 and list(ours.classes_) == [0, 1, 2]
    assert ours.predict(X).shape == (60, 3) and ours.predict(X).dtype == theirs.predict(X).dtype
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-6, atol=1e-9)
    assert ours.score(X, Y) == theirs.score(X, Y) and ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)
