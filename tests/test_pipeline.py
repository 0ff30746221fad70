"""gpumlp.Pipeline: a model with its preprocessing, saved and loaded as one, predicting from raw data;
the model-file format 2 entries it needs (text classes, imputation, target scaling, header names)."""
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import io
from gpumlp.data import MeanImputer, Scaler, load_digits

REFERENCE = Path(__file__).parent / "reference"
KW = {"backend": "numpy", "seed": 0}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()
    scaler = Scaler("standard").fit(X[:1200])
    m = gpumlp.MLP((64, 24, 10), momentum=0.9, **KW).fit(scaler.transform(X[:1200]), y[:1200], epochs=4, lr=0.02,
                                                           batch_size=32)
    return X, y, scaler, m


def read_raw(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(arrays.pop("meta").tobytes()), arrays


def write_raw(path, meta, arrays):
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


# ---------------------------------------------------------------------------------- raw data in, labels out
def test_predict_on_raw_data_is_the_model_on_scaled_data_with_the_labels_as_saved(digits):
    X, y, scaler, m = digits
    words = np.array([f"digit {i}" for i in range(10)])
    p = gpumlp.Pipeline(m, scaler=scaler, classes=words)
    expected = words[m.predict(scaler.transform(X))]
    np.testing.assert_array_equal(p.predict(X), expected)
    np.testing.assert_array_equal(p.predict_proba(X), m.predict_proba(scaler.transform(X)))
    np.testing.assert_array_equal(p.decision_function(X), m.decision_function(scaler.transform(X)))
    assert p.score(X, words[y]) == pytest.approx(np.mean(expected == words[y]))
    assert p.score(X, words[y]) > 0.9
    assert p.classes_.tolist() == words.tolist() and p.n_features_in_ == 64
    assert [name for name, _ in p.steps] == ["scaler", "mlp", "labels"]
    assert p.named_steps["mlp"] is m and p["scaler"] is scaler and p[1] is m and len(p) == 3


def test_the_pipeline_refuses_scaler_and_points_at_the_right_calls(digits):
    """The old recipe m.scaler_.transform(X) before m.predict would scale twice on a Pipeline."""
    _, _, scaler, m = digits
    p = gpumlp.Pipeline(m, scaler=scaler)
    with pytest.raises(AttributeError, match=r"no scaler_.*pipeline.predict\(X_raw\).*scale it twice"):
        _ = p.scaler_
    with pytest.raises(AttributeError, match=r"named_steps\['mlp'\].epochs_"):
        _ = p.epochs_
    with pytest.raises(AttributeError, match="no attribute 'frobnicate'"):
        _ = p.frobnicate
    assert not hasattr(p, "scaler_")


def test_a_missing_value_without_an_imputer_names_row_and_column_from_1(digits):
    X, _, scaler, m = digits
    Xn = X[:4].astype(float)
    Xn[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"row 3, column 6.*--missing impute"):
        gpumlp.Pipeline(m, scaler=scaler).predict(Xn)
    with pytest.raises(ValueError, match="X has 63 features, the pipeline expects 64"):
        gpumlp.Pipeline(m, scaler=scaler).predict(X[:, 1:])


def test_an_imputer_fills_missing_values_with_the_training_means(digits):
    X, _, scaler, m = digits
    imputer = MeanImputer().fit(X[:1200].astype(float))
    p = gpumlp.Pipeline(m, scaler=scaler, imputer=imputer)
    Xn = X[:6].astype(float)
    Xn[1, 10] = np.nan
    filled = Xn.copy()
    filled[1, 10] = X[:1200, 10].mean()
    np.testing.assert_array_equal(p.predict(Xn), m.predict(scaler.transform(filled)))
    assert [name for name, _ in p.steps][:2] == ["imputer", "scaler"]


def test_regression_outputs_come_back_in_the_targets_units():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    t = 1000 + 300 * (X[:, 0] - 0.5 * X[:, 1])
    target = Scaler("standard").fit(t[:, None])
    m = gpumlp.MLP((3, 16, 1), loss="squared", bias=True, dtype="float64", **KW)
    m.fit(X, target.transform(t[:, None], np.float64), epochs=40, lr=0.01, batch_size=16)
    p = gpumlp.Pipeline(m, target_scaler=target)
    np.testing.assert_allclose(p.predict(X), m.predict(X) * target.scale[0] + target.offset[0], rtol=1e-12)
    assert p.predict(X).shape == (300,) and abs(p.predict(X).mean() - 1000) < 50
    r2 = 1 - ((t - p.predict(X)) ** 2).sum() / ((t - t.mean()) ** 2).sum()
    assert p.score(X, t) == pytest.approx(r2, rel=1e-12) and r2 > 0.9
    assert [name for name, _ in p.steps] == ["scaler", "mlp", "target_scaler"]
    with pytest.raises(AttributeError, match="has no classes_"):
        _ = p.classes_


@pytest.mark.parametrize("kw, err, match", [
    ({"classes": [1, 2]}, ValueError, "classes must be 10 sorted labels"),
    ({"classes": list(range(10))[::-1]}, ValueError, "sorted labels without repeats"),
    ({"target_scaler": Scaler("standard")}, ValueError, "applies to models with the squared loss"),
    ({"scaler": Scaler("standard")}, ValueError, "scaler is not fitted"),
    ({"scaler": "standard"}, TypeError, "scaler must be a gpumlp.data.Scaler"),
    ({"feature_names": ["a", "b"]}, ValueError, "must name the model's 64 inputs"),
])
def test_the_pipeline_checks_its_parts(digits, kw, err, match):
    with pytest.raises(err, match=match):
        gpumlp.Pipeline(digits[3], **kw)


# ---------------------------------------------------------------------------------- files
def test_load_returns_what_was_saved(tmp_path, digits):
    X, _, scaler, m = digits
    m.save(tmp_path / "bare.npz")
    assert type(gpumlp.load(tmp_path / "bare.npz")) is gpumlp.MLP
    names = [f"px{i}" for i in range(64)]
    p = gpumlp.Pipeline(m, scaler=scaler, classes=np.array(list("abcdefghij")), feature_names=names,
                        label_name="digit")
    p.save(tmp_path / "p.npz")
    q = gpumlp.load(tmp_path / "p.npz", backend="numpy")
    assert type(q) is gpumlp.Pipeline
    np.testing.assert_array_equal(q.predict(X), p.predict(X))
    assert q.classes_.dtype.kind == "U" and q.feature_names_in_.tolist() == names and q.label_name_ == "digit"
    only = gpumlp.load(tmp_path / "p.npz", model_only=True)
    assert type(only) is gpumlp.MLP and only.classes_.tolist() == list("abcdefghij")
    # a Pipeline around a bare model still comes back as a Pipeline
    gpumlp.Pipeline(m).save(tmp_path / "plain.npz")
    assert type(gpumlp.load(tmp_path / "plain.npz")) is gpumlp.Pipeline
    with pytest.raises(AttributeError, match="without a header"):
        _ = gpumlp.load(tmp_path / "plain.npz").feature_names_in_
    assert read_raw(tmp_path / "p.npz")[0]["format_version"] == 2


def test_pickling_a_pipeline_keeps_everything(digits):
    import copy

    X, _, scaler, m = digits
    p = gpumlp.Pipeline(m, scaler=scaler, imputer=MeanImputer().fit(X.astype(float)), classes=np.arange(10) * 10)
    for c in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p)):
        assert type(c) is gpumlp.Pipeline and c.named_steps["mlp"] is not m
        np.testing.assert_array_equal(c.predict(X), p.predict(X))
        assert [n for n, _ in c.steps] == ["imputer", "scaler", "mlp", "labels"]


def test_a_format_1_command_line_file_loads_as_a_pipeline_that_predicts_as_its_model_did(tmp_path):
    """cli_main.npz was written by gpumlp train on main (format 1: scaling and classes, no flag)."""
    X, _ = load_digits()
    f = tmp_path / "m.npz"
    shutil.copy(REFERENCE / "cli_main.npz", f)
    assert read_raw(f)[0]["format_version"] == 1
    p = gpumlp.load(f, backend="numpy")
    m = gpumlp.load(f, backend="numpy", model_only=True)
    assert type(p) is gpumlp.Pipeline
    np.testing.assert_array_equal(p.predict(X), m.classes_[m.predict(m.scaler_.transform(X, m.dtype))])


def test_text_classes_imputation_and_target_scaling_are_checked_on_reading(tmp_path, digits):
    X, _, scaler, m = digits
    gpumlp.Pipeline(m, scaler=scaler, imputer=MeanImputer().fit(X.astype(float)),
                    classes=np.array(list("abcdefghij")), feature_names=[f"f{i}" for i in range(64)]).save(
        tmp_path / "ok.npz")
    meta, arrays = read_raw(tmp_path / "ok.npz")

    def refused(match, meta=meta, **changes):
        a = {k: v for k, v in dict(arrays, **changes).items() if v is not None}
        write_raw(tmp_path / "bad.npz", meta, a)
        with pytest.raises(io.ModelFileError, match=match):
            gpumlp.load(tmp_path / "bad.npz")

    refused("strictly increasing", classes=np.array(list("abcdefghji")))
    refused(r"'impute.mean' must be \(64,\) floats", **{"impute.mean": np.zeros(63)})
    refused("'impute.mean' contains NaN", **{"impute.mean": np.full(64, np.nan)})
    refused("no 'impute.mean' entry", **{"impute.mean": None})
    pre = dict(meta["preprocessing"])
    refused("feature_names.*a list of 64 names", meta=dict(meta, preprocessing=dict(pre, feature_names=["a"])))
    refused("feature_names", meta=dict(meta, preprocessing=dict(pre, feature_names=[1] * 64)))
    refused("target_scaling.*null for a cross_entropy model",
            meta=dict(meta, preprocessing=dict(pre, target_scaling="standard")),
            **{"target.offset": np.zeros(10), "target.scale": np.ones(10)})
    refused(r"\['impute'\] is not true", meta=dict(meta, preprocessing=dict(pre, impute=False)))
    refused(r"preprocessing.pipeline.*true or false", meta=dict(meta, preprocessing=dict(pre, pipeline="yes")))
    refused("newer gpumlp", meta=dict(meta, format_version=3))


def test_saving_refuses_preprocessing_that_does_not_fit_the_model(tmp_path, digits):
    m = digits[3]
    p = gpumlp.Pipeline(m)
    p.preprocessing.feature_names = ["only one"]  # changed behind the constructor's back
    with pytest.raises(io.ModelFileError, match="feature_names"):
        p.save(tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_a_bare_model_from_a_pipeline_file_saved_alone_keeps_all_its_preprocessing(tmp_path):
    """Loaded with model_only=True (or taken out of a loaded pipeline), trained on and saved on its own,
    a model keeps its imputer, its targets' scaling and its header's names: loading that file predicts
    from raw data exactly as the pipeline does (not in standardised units, without an error)."""
    from gpumlp.data import MeanImputer, Scaler

    rng = np.random.default_rng(4)
    X = rng.normal(50.0, 10.0, size=(120, 3))
    Y = (X @ np.array([0.5, -0.2, 0.1]) * 100.0 + 7.0).reshape(-1, 1)
    imputer, scaler = MeanImputer(X.mean(axis=0)), Scaler("standard").fit(X)
    target = Scaler("standard").fit(Y)
    m = gpumlp.MLP((3, 8, 1), loss="squared", backend="numpy", dtype="float64", seed=0)
    m.fit(scaler.transform(X, np.float64), target.transform(Y, np.float64), epochs=3, lr=0.05)
    gpumlp.Pipeline(m, scaler=scaler, imputer=imputer, target_scaler=target,
                    feature_names=["a", "b", "c"]).save(tmp_path / "p.npz")
    want = gpumlp.load(tmp_path / "p.npz").predict(X)
    for take in (lambda: gpumlp.load(tmp_path / "p.npz", model_only=True),
                 lambda: gpumlp.load(tmp_path / "p.npz").named_steps["mlp"]):
        bare = take()
        assert bare.preprocessing_.target_scaler is not None and bare.scaler_.kind == "standard"
        bare.save(tmp_path / "again.npz")
        again = gpumlp.load(tmp_path / "again.npz")
        assert type(again) is gpumlp.Pipeline and again.feature_names_in_.tolist() == ["a", "b", "c"]
        np.testing.assert_array_equal(again.predict(X), want)
    # in the targets' units (a mean in the thousands), not standardised ones (a mean near 0)
    assert abs(want.mean() - Y.mean()) < 3 * Y.std() < abs(Y.mean())


@pytest.mark.parametrize("loss", ["poisson", "binary_cross_entropy"])
def test_a_target_scaler_is_refused_where_the_outputs_are_not_the_scaled_targets(loss):
    """predict inverts the target scaling on the raw outputs o: right for the squared loss only (a Poisson
    model's o is log μ, a logistic one's a logit), so another loss with a target scaler would predict nonsense."""
    from gpumlp.data import Scaler

    m = gpumlp.MLP((3, 4, 1), loss=loss, backend="numpy", seed=0)
    ts = Scaler("standard").fit(np.arange(6.0).reshape(-1, 1))
    with pytest.raises(ValueError, match="squared loss"):
        gpumlp.Pipeline(m, target_scaler=ts)
