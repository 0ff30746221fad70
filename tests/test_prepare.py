"""gpumlp.data.prepare on ordinary files: missing values imputed (fitted on the training split only) or
dropped (counted), regression targets standardised, the data's digest, columns matched by name."""
import numpy as np
import pytest

from gpumlp import data as D


def write_csv(path, X, y, header=None, fmt="%.6g"):
    lines = [] if header is None else [",".join(header)]
    for row, label in zip(X, y):
        lines.append(",".join("" if np.isnan(v) else fmt % v for v in row) + f",{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)) * [1, 10, 100]
    y = np.where(X[:, 0] > 0, "yes", "no")
    X[[3, 17, 30], [1, 0, 2]] = np.nan
    return X, y, write_csv(tmp_path / "t.csv", X, y, header=["a", "b", "c", "answer"])


def test_impute_uses_the_training_split_means_only(table):
    X, y, path = table
    d = D.prepare(str(path), missing="impute", scaling="none", dtype=np.float64, seed=1)
    train, test = D.split_indices(y, 0.2, seed=1)
    loaded = D.load_table(str(path), missing="keep").X  # the file holds 6 significant digits
    np.testing.assert_allclose(d.imputer.mean, np.nanmean(loaded[train], axis=0), rtol=1e-14)
    assert not np.allclose(d.imputer.mean, np.nanmean(loaded, axis=0), rtol=1e-6)  # not the whole file's
    assert not np.isnan(d.X_train).any() and not np.isnan(d.X_test).any()
    # a missing test value gets the training mean, not the test split's
    rows = np.flatnonzero(np.isnan(X[test]).any(axis=1))
    for i in rows:
        j = int(np.flatnonzero(np.isnan(X[test][i]))[0])
        assert d.X_test[i, j] == d.imputer.mean[j]
    assert d.classes.tolist() == ["no", "yes"] and d.feature_names == ["a", "b", "c"] and d.label_name == "answer"


def test_drop_counts_the_rows_it_drops_and_error_names_row_and_column(table):
    _, _, path = table
    d = D.prepare(str(path), missing="drop")
    assert d.n_dropped == 3 and d.X_train.shape[0] + d.X_test.shape[0] == 37
    with pytest.raises(ValueError, match=r"line 5, column 2 \('b'\)"):  # line 5 of the file: header + 4
        D.prepare(str(path))
    with pytest.raises(ValueError, match="missing must be one of"):
        D.prepare(str(path), missing="keep")


def test_an_all_missing_training_feature_cannot_be_imputed(tmp_path):
    X = np.ones((10, 2))
    X[:, 1] = np.nan
    path = write_csv(tmp_path / "x.csv", X, [0, 1] * 5, header=["p", "q", "y"])
    with pytest.raises(ValueError, match=r"feature 2 \('q'\) has no value in the training split"):
        D.prepare(str(path), missing="impute")


def test_target_scaling_is_fitted_on_the_training_split_and_inverts_exactly(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 2))
    t = 150 + 60 * rng.normal(size=50)
    np.savez(tmp_path / "r.npz", X=X, y=t)
    d = D.prepare(str(tmp_path / "r.npz"), classify=False, target_scaling="standard", dtype=np.float64)
    train, _ = D.split_indices(t, 0.2, seed=0, stratify=False)
    assert d.target_scaler.offset[0] == pytest.approx(t[train].mean())
    assert d.target_scaler.scale[0] == pytest.approx(t[train].std())
    assert abs(d.y_train.mean()) < 1e-12 and d.y_train.shape == (40,)
    back = d.target_scaler.inverse_transform(d.y_test[:, None])[:, 0]
    _, test = D.split_indices(t, 0.2, seed=0, stratify=False)
    np.testing.assert_allclose(back, t[test], rtol=1e-14)
    assert D.prepare(str(tmp_path / "r.npz"), classify=False).target_scaler is None  # "none", the default


def test_text_labels_for_regression_are_a_clear_error(table):
    with pytest.raises(ValueError, match=r"labels of .* are text .*'no'.*needs numbers"):
        D.prepare(str(table[2]), classify=False, missing="drop")


def test_the_digest_follows_the_data_and_its_names(tmp_path):
    X = np.arange(12.0).reshape(4, 3)
    a = write_csv(tmp_path / "a.csv", X, [0, 1, 0, 1], header=["x", "y", "z", "label"])
    same = write_csv(tmp_path / "same.csv", X, [0, 1, 0, 1], header=["x", "y", "z", "label"])
    X2 = X.copy()
    X2[2, 1] += 1
    changed = write_csv(tmp_path / "changed.csv", X2, [0, 1, 0, 1], header=["x", "y", "z", "label"])
    renamed = write_csv(tmp_path / "renamed.csv", X, [0, 1, 0, 1], header=["x", "y", "w", "label"])
    digest = [D.data_digest(D.load_table(str(p))) for p in (a, same, changed, renamed)]
    assert digest[0] == digest[1] and len(set(digest)) == 3 and len(digest[0]) == 32
    assert D.prepare(str(a), test_size=0.5).digest == digest[0]


def test_align_columns_reorders_by_name_and_names_what_differs():
    X = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(D.align_columns(X, ["c", "a", "b"], ["a", "b", "c"], "f.csv"), [[2.0, 3.0, 1.0]])
    with pytest.raises(ValueError, match=r"f.csv: .*missing \['b'\]; not among them \['d'\]"):
        D.align_columns(X, ["a", "d", "c"], ["a", "b", "c"], "f.csv")
    with pytest.raises(ValueError, match="repeats column names"):
        D.align_columns(X, ["a", "a", "b"], ["a", "b", "a"], "f.csv")


def test_csv_columns_reads_the_header_only(tmp_path):
    p = tmp_path / "h.tsv"
    p.write_text("a\tb\tlabel\n1\t2\tx\n")
    assert D.csv_columns(str(p)) == (["a", "b", "label"], 3)
    assert D.csv_columns(str(p), header=False) == (None, 3)


def test_labels_of_another_kind_than_the_classes_are_a_clear_error():
    with pytest.raises(ValueError, match=r"labels that are text .*classes are numbers: \[0, 1\]"):
        D.LabelEncoder(np.array([0, 1])).transform(np.array(["a", "b"]), "the data")


def test_inverse_transform_undoes_transform_near_the_float_limit():
    X = np.array([[1e308, -3.0], [-1e308, 5.0], [5e307, 1.0]])
    s = D.Scaler("standard").fit(X)
    np.testing.assert_allclose(s.inverse_transform(s.transform(X, np.float64)), X, rtol=1e-15)
    assert np.isfinite(s.inverse_transform(s.transform(X, np.float64))).all()
